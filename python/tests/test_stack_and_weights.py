"""Stack specs, safetensors files and export."""
import json
import os

import pytest
import torch

from hierarchicalvlm.attention import AttentionStack
from hierarchicalvlm.export import export_module, main as export_main
from hierarchicalvlm.safetensors import load_file, load_metadata, parse, save_file, serialize

SPEC = {"dim": 32, "blocks": [
    {"type": "local_global", "num_heads": 4, "local_window": 8, "num_global_tokens": 2},
    {"type": "cross_memory", "num_heads": 4},
    {"type": "mamba", "state_size": 4, "dt_rank": "auto"},
    {"type": "strided", "num_heads": 4, "stride": 3},
    {"type": "performer", "num_heads": 4, "num_random_features": 16},
]}


def test_stack_param_paths_and_state_routing():
    stack = AttentionStack(SPEC).eval()
    assert "blocks.0.attn.q_proj.weight" in stack.state_dict()
    assert "blocks.2.attn.A_log" in stack.state_dict()
    assert "blocks.4.attn.projection_matrix" in stack.state_dict()
    x = torch.randn(1, 20, 32)
    with torch.no_grad():
        memories = [None, torch.randn(1, 6, 32), None, None, None]
        full, states = stack(x, memories)
        assert states[2] is not None and states[0] is None
        with pytest.raises(ValueError, match=r"blocks\[0\].*only mamba"):
            stack(x, states=[states[2], None, None, None, None])
        with pytest.raises(ValueError, match=r"blocks\[3\].*only cross_memory"):
            stack(x, memories=[None, None, None, torch.randn(1, 2, 32), None])


@pytest.mark.parametrize("block,match", [
    ({"type": "strided", "stride": "x"}, r"blocks\[0\]\.stride must be an integer"),
    ({"type": "strided", "foo": 1}, r"blocks\[0\]: unknown option.*foo"),
    ({"type": "lsh"}, r"blocks\[0\]\.type must be one of"),
    ({"type": "strided", "num_heads": 5}, r"blocks\[0\] \(strided\).*must divide"),
])
def test_spec_errors_name_the_key(block, match):
    with pytest.raises(ValueError, match=match):
        AttentionStack({"dim": 32, "blocks": [block]})


def test_safetensors_round_trip_all_dtypes(tmp_path):
    tensors = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(),
               "bf16": torch.randn(2, 2).bfloat16(), "f64": torch.randn(1).double(),
               "i64": torch.arange(6), "i32": torch.arange(3, dtype=torch.int32),
               "u8": torch.arange(4, dtype=torch.uint8), "b": torch.tensor([True, False]),
               "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, path, {"k": "v"})
    back = load_file(path)
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t)
    assert load_metadata(path) == {"k": "v"}


def test_every_truncation_is_a_clear_error():
    data = serialize({"a": torch.randn(3), "b": torch.arange(2)})
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            parse(data[:cut], "cut")


def test_export_cli_writes_a_loadable_stack(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    out = tmp_path / "w.safetensors"
    export_main(["--spec", str(spec_path), "--seed", "3", "--out", str(out)])
    torch.manual_seed(3)
    stack = AttentionStack(SPEC)
    loaded = load_file(out)
    assert set(loaded) == set(stack.state_dict())
    for k, v in stack.state_dict().items():
        assert torch.equal(loaded[k], v)
    assert json.loads(load_metadata(out)["hvlm.spec"]) == stack.spec
    export_module(stack, tmp_path / "again.safetensors")
    assert os.path.getsize(tmp_path / "again.safetensors") == os.path.getsize(out)
