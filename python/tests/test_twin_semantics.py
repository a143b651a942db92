"""The Python twin against dense masked-attention oracles and its own streaming form."""
import pytest
import torch

from hierarchicalvlm.attention._common import dense_attention, merge_heads, split_heads
from hierarchicalvlm.attention.linear import (LinearAttentionBlock, MambaLayer,
                                              PerformerAttention, performer_features)
from hierarchicalvlm.attention.sparse import (CrossMemoryAttention, HierarchicalAttentionBlock,
                                              LocalGlobalAttention, StridedAttention,
                                              global_positions)

torch.manual_seed(0)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def oracle(module, x, allowed):
    h = module.num_heads
    q, k, v = (split_heads(p(x), h) for p in (module.q_proj, module.k_proj, module.v_proj))
    return module.out_proj(merge_heads(dense_attention(q, k, v, allowed)))


@pytest.mark.parametrize("n,stride", [(50, 3), (48, 4), (37, 64), (1, 2), (41, 1)])
def test_strided_matches_residue_class_mask(n, stride):
    m = StridedAttention(dim=32, num_heads=4, stride=stride).eval()
    x = torch.randn(2, n, 32)
    i = torch.arange(n)
    allowed = ((i.view(-1, 1) - i.view(1, -1)) % stride) == 0
    assert rel(m(x), oracle(m, x, allowed)) < 1e-5


@pytest.mark.parametrize("n,w,g", [(45, 8, 3), (53, 16, 0), (9, 16, 2), (7, 4, 12), (1, 2, 1),
                                   (64, 8, 4)])
def test_local_global_matches_window_plus_global_mask(n, w, g):
    m = LocalGlobalAttention(dim=32, num_heads=4, local_window=w, num_global_tokens=g).eval()
    x = torch.randn(2, n, 32)
    i = torch.arange(n)
    allowed = (i.view(-1, 1) - i.view(1, -1)).abs() <= w // 2
    gpos = global_positions(n, g)
    allowed[:, gpos] = True
    allowed[gpos, :] = True
    assert rel(m(x), oracle(m, x, allowed)) < 1e-5


def test_global_positions_are_distinct_and_floor_spaced():
    assert global_positions(10, 4).tolist() == [0, 2, 5, 7]
    assert global_positions(3, 5).tolist() == [0, 1, 2]
    assert global_positions(10, 0).numel() == 0


def test_cross_memory_fusion_ratio_ends_and_empty_memory():
    m = CrossMemoryAttention(dim=32, num_heads=4).eval()
    local, memory = torch.randn(2, 10, 32), torch.randn(2, 6, 32)
    attn = m(local, memory, residual=False)
    assert torch.allclose(m(local, memory), local + attn)
    assert torch.equal(m.fuse_with_memory(local, memory, fusion_ratio=0.0), local)
    assert rel(m.fuse_with_memory(local, memory, fusion_ratio=1.0), attn) < 1e-6
    empty = torch.zeros(2, 0, 32)
    assert torch.equal(m(local, empty), local)
    assert torch.equal(m.fuse_with_memory(local, empty, 0.5), local)
    assert torch.count_nonzero(m(local, empty, residual=False)) == 0
    with pytest.raises(ValueError, match="fusion_ratio"):
        m.fuse_with_memory(local, memory, 1.5)


@pytest.mark.parametrize("kernel", ["softmax", "relu", "elu"])
def test_performer_equals_explicit_quadratic_formula(kernel):
    m = PerformerAttention(dim=32, num_heads=4, num_random_features=16, kernel_type=kernel).eval()
    q, k, v = torch.randn(3, 2, 4, 20, 8).unbind(0)
    w = m.projection_matrix
    a = performer_features(q, w, kernel, True) @ performer_features(k, w, kernel, False).transpose(-1, -2)
    expected = (a @ v) / a.sum(-1, keepdim=True)
    assert rel(m.attention_core(q, k, v), expected) < 1e-5
    assert "projection_matrix" in m.state_dict()


def test_performer_softmax_kernel_approximates_softmax_attention():
    torch.manual_seed(1)
    m = PerformerAttention(dim=16, num_heads=1, num_random_features=4096).eval()
    q, k, v = (0.3 * torch.randn(1, 1, 30, 16) for _ in range(3))
    assert rel(m.attention_core(q, k, v), dense_attention(q, k, v)) < 0.1


@pytest.mark.parametrize("dt_init", ["random", "constant"])
def test_mamba_streaming_equals_full_sequence(dt_init):
    m = MambaLayer(dim=16, state_size=4, expand_factor=2.0, dt_init=dt_init).eval()
    with torch.no_grad():
        x = torch.randn(2, 40, 16)
        full, (conv_full, ssm_full) = m.forward_stream(x)
        state, parts = None, []
        for a, b in [(0, 1), (1, 9), (9, 10), (10, 33), (33, 40)]:
            y, state = m.forward_stream(x[:, a:b], state)
            parts.append(y)
        assert rel(torch.cat(parts, 1), full) < 1e-5
        assert rel(state[0], conv_full) < 1e-6 and rel(state[1], ssm_full) < 1e-5


def test_mamba_parameter_names_and_shapes_follow_reference():
    m = MambaLayer(dim=32, state_size=8, expand_factor=2.0)
    shapes = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"A_log": [64, 8], "D": [64], "in_proj.weight": [128, 32],
                      "conv1d.weight": [64, 1, 4], "conv1d.bias": [64],
                      "x_proj.weight": [2 + 16, 64], "dt_proj.weight": [64, 2],
                      "dt_proj.bias": [64], "out_proj.weight": [32, 64]}
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6


def test_seed_signatures_work_as_written():
    StridedAttention(stride=4, dim=64, num_heads=4, dropout=0.1)
    LocalGlobalAttention(local_window=64, num_global_tokens=4, dim=64, num_heads=4, dropout=0.1)
    cross = CrossMemoryAttention(dim=64, num_heads=4, dropout=0.1).eval()
    out = cross.fuse_with_memory(torch.randn(2, 8, 64), torch.randn(2, 3, 64), fusion_ratio=0.5)
    assert out.shape == (2, 8, 64)
    PerformerAttention(dim=64, num_heads=4, num_random_features=32, kernel_type="elu", dropout=0.1)
    MambaLayer(dim=64, state_size=16, expand_factor=2.0, dropout=0.1)
    block = HierarchicalAttentionBlock(attention_type="cross_memory", dim=64, num_heads=4).eval()
    assert block(torch.randn(2, 5, 64), memory=torch.randn(2, 4, 64)).shape == (2, 5, 64)
    assert HierarchicalAttentionBlock(attention_type="local_global", local_window=128,
                                      num_global_tokens=8).attn.local_window == 128
    assert LinearAttentionBlock(attention_type="mamba", state_size=32).attn.state_size == 32
    assert LinearAttentionBlock(attention_type="performer",
                                num_random_features=512).attn.num_random_features == 512


@pytest.mark.parametrize("make,bad,match", [
    (lambda: StridedAttention(dim=32, num_heads=4), torch.randn(2, 5, 16), r"\[B, T, 32\]"),
    (lambda: StridedAttention(dim=32, num_heads=4), torch.randn(5, 32), r"\[B, T, 32\]"),
])
def test_bad_inputs_name_the_problem(make, bad, match):
    with pytest.raises(ValueError, match=match):
        make()(bad)


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="must divide dim"):
        StridedAttention(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="local_window"):
        LocalGlobalAttention(dim=32, num_heads=4, local_window=5)
    with pytest.raises(ValueError, match="kernel_type"):
        PerformerAttention(dim=32, num_heads=4, kernel_type="cosine")
    with pytest.raises(ValueError, match="dt_init"):
        MambaLayer(dim=32, dt_init="fancy")
