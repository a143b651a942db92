"""AttentionStack: spec validation (errors name blocks[i].key), the normalised spec,
parameter paths, and forward with per-block memories and Mamba states."""

import json

import pytest
import torch

from hierarchicalvlm.attention import (AttentionStack, HierarchicalAttentionBlock,
                                       LinearAttentionBlock)
from hierarchicalvlm.attention.stack import normalize_spec
from reference import perturb_

TOL = dict(rtol=1e-5, atol=1e-5)

SPEC = {"dim": 32, "blocks": [
    {"type": "local_global", "num_heads": 4, "local_window": 4, "num_global_tokens": 2},
    {"type": "cross_memory", "num_heads": 4},
    {"type": "mamba", "state_size": 4, "expand_factor": 1.5},
    {"type": "strided", "num_heads": 4, "stride": 3},
    {"type": "performer", "num_heads": 4, "num_random_features": 16, "kernel_type": "elu"},
]}


def test_docs_example_spec_builds():
    spec = {"dim": 96, "blocks": [dict(b, num_heads=12) if "num_heads" in b else b
                                  for b in SPEC["blocks"]]}
    stack = AttentionStack.from_spec(spec)
    assert [type(b) for b in stack.blocks] == [HierarchicalAttentionBlock] * 2 + [
        LinearAttentionBlock, HierarchicalAttentionBlock, LinearAttentionBlock]


def test_normalised_spec_lists_every_option():
    stack = AttentionStack(SPEC)
    spec = stack.spec
    assert spec["blocks"][0] == {"type": "local_global", "num_heads": 4, "local_window": 4,
                                 "num_global_tokens": 2, "mlp_ratio": 4.0, "dropout": 0.0}
    assert spec["blocks"][2] == {"type": "mamba", "state_size": 4, "expand_factor": 1.5,
                                 "d_conv": 4, "dt_rank": "auto", "dt_init": "random",
                                 "dt_min": 1e-3, "dt_max": 0.1, "dt_init_floor": 1e-4,
                                 "mlp_ratio": 4.0, "dropout": 0.0}
    assert normalize_spec(spec) == spec
    assert AttentionStack(json.dumps(SPEC)).spec == spec
    spec["dim"] = 7  # a copy: the stack's spec is unchanged
    assert stack.spec["dim"] == 32


def test_parameter_paths():
    names = list(AttentionStack(SPEC).state_dict())
    assert "blocks.0.attn.q_proj.weight" in names
    assert "blocks.2.attn.A_log" in names and "blocks.2.attn.dt_proj.bias" in names
    assert "blocks.4.attn.projection_matrix" in names
    assert "blocks.3.mlp.fc2.bias" in names and "blocks.1.norm1.weight" in names


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s["blocks"][1].update(foo=1), r"blocks\[1\]\.foo"),
    (lambda s: s["blocks"][3].update(stride="8"), r"blocks\[3\]\.stride must be an integer"),
    (lambda s: s["blocks"][3].update(stride=2.0), r"blocks\[3\]\.stride must be an integer"),
    (lambda s: s["blocks"][3].update(stride=True), r"blocks\[3\]\.stride must be an integer"),
    (lambda s: s["blocks"][3].update(stride=0), r"blocks\[3\]\.stride must be >= 1"),
    (lambda s: s["blocks"][0].update(local_window=5), r"blocks\[0\]\.local_window"),
    (lambda s: s["blocks"][0].update(num_global_tokens=-2), r"blocks\[0\]\.num_global_tokens"),
    (lambda s: s["blocks"][0].update(num_heads=5), r"blocks\[0\]\.num_heads"),
    (lambda s: s["blocks"][2].update(num_heads=4), r"blocks\[2\]\.num_heads"),
    (lambda s: s["blocks"][2].update(dt_rank="x"), r"blocks\[2\]\.dt_rank"),
    (lambda s: s["blocks"][2].update(dt_init="zero"), r"blocks\[2\]\.dt_init"),
    (lambda s: s["blocks"][2].update(expand_factor="2"), r"blocks\[2\]\.expand_factor must be a number"),
    (lambda s: s["blocks"][2].update(dt_max=1e-4), r"blocks\[2\]\.dt_max"),
    (lambda s: s["blocks"][4].update(kernel_type="gelu"), r"blocks\[4\]\.kernel_type"),
    (lambda s: s["blocks"][4].update(num_random_features=0), r"blocks\[4\]\.num_random_features"),
    (lambda s: s["blocks"][4].update(dropout=1.0), r"blocks\[4\]\.dropout"),
    (lambda s: s["blocks"][1].update(mlp_ratio=-1), r"blocks\[1\]\.mlp_ratio"),
    (lambda s: s["blocks"][1].update(type="dense"), r"blocks\[1\]\.type must be one of"),
    (lambda s: s["blocks"][1].pop("type"), r"blocks\[1\]\.type must be one of"),
    (lambda s: s["blocks"].__setitem__(1, "strided"), r"blocks\[1\] must be an object"),
    (lambda s: s.update(blocks=[]), "blocks must be a non-empty list"),
    (lambda s: s.pop("dim"), "dim must be a positive integer"),
    (lambda s: s.update(dim=0), "dim must be a positive integer"),
    (lambda s: s.update(layers=3), "unknown key"),
])
def test_spec_errors_name_the_key(mutate, match):
    spec = json.loads(json.dumps(SPEC))
    mutate(spec)
    with pytest.raises(ValueError, match=match):
        AttentionStack(spec)


def test_invalid_json_text():
    with pytest.raises(ValueError, match="not valid JSON"):
        AttentionStack("{dim: 3")


def _inputs(stack, b=2):
    memories = [None] * 5
    memories[1] = torch.randn(b, 6, 32)
    states = [None] * 5
    layer = stack.blocks[2].attn
    states[2] = (torch.randn(b, layer.inner_dim, 3), torch.randn(b, layer.inner_dim, 4))
    return memories, states


def test_forward_applies_blocks_in_order():
    stack = perturb_(AttentionStack(SPEC)).eval()
    x = torch.randn(2, 13, 32)
    memories, states = _inputs(stack)
    y, new_states = stack(x, memories, states)
    h = stack.blocks[0](x)
    h = stack.blocks[1](h, memory=memories[1])
    h, st = stack.blocks[2].forward_stream(h, states[2])
    h = stack.blocks[4](stack.blocks[3](h))
    torch.testing.assert_close(y, h, **TOL)
    assert new_states[0] is None and new_states[1] is None and new_states[3] is None
    assert new_states[4] is None
    torch.testing.assert_close(new_states[2][1], st[1], **TOL)
    # no memories / states: empty memory adds nothing, Mamba starts from zeros
    y0, s0 = stack(x)
    assert s0[2] is not None and s0[2][0].shape == (2, 48, 3)


def test_streaming_a_causal_stack():
    spec = {"dim": 16, "blocks": [{"type": "mamba", "state_size": 3},
                                  {"type": "cross_memory", "num_heads": 2},
                                  {"type": "mamba", "state_size": 2, "d_conv": 2}]}
    stack = perturb_(AttentionStack(spec)).eval()
    x = torch.randn(2, 10, 16)
    memories = [None, torch.randn(1, 4, 16), None]
    full, full_states = stack(x, memories)
    a, states = stack(x[:, :3], memories)
    b, states = stack(x[:, 3:], memories, states)
    torch.testing.assert_close(torch.cat([a, b], 1), full, **TOL)
    for got, want in zip(states, full_states):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got[1], want[1], **TOL)


@pytest.mark.parametrize("memories,states,match", [
    ([None] * 4, None, "memories must be None or a list with one entry per block"),
    (None, [None] * 6, "states must be None or a list"),
    ([torch.randn(2, 3, 32)] + [None] * 4, None, r"memories\[0\] must be None"),
    (None, [None, (torch.zeros(1), torch.zeros(1))] + [None] * 3, r"states\[1\] must be None"),
])
def test_forward_rejects_misplaced_entries(memories, states, match):
    stack = AttentionStack(SPEC)
    with pytest.raises(ValueError, match=match):
        stack(torch.randn(2, 5, 32), memories, states)
