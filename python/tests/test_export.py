"""export_module / load_weights and the `python3 -m hierarchicalvlm.export` command line."""

import json
import os
import subprocess
import sys

import pytest
import torch

from hierarchicalvlm.attention import AttentionStack, PerformerAttention
from hierarchicalvlm.export import export_module, load_weights, main
from hierarchicalvlm.safetensors import load_file, load_file_with_metadata, save_file

SPEC = {"dim": 16, "blocks": [{"type": "strided", "num_heads": 2, "stride": 2},
                              {"type": "mamba", "state_size": 3},
                              {"type": "performer", "num_heads": 2, "num_random_features": 8}]}
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_export_writes_state_dict_and_spec(tmp_path):
    stack = AttentionStack(SPEC)
    path = tmp_path / "w.safetensors"
    export_module(stack, path)
    tensors, metadata = load_file_with_metadata(path)
    state = stack.state_dict()
    assert sorted(tensors) == sorted(state)
    for name, t in state.items():
        assert tensors[name].dtype == torch.float32 and torch.equal(tensors[name], t)
    assert metadata["format"] == "pt"
    assert json.loads(metadata["hvlm.spec"]) == stack.spec
    assert "blocks.2.attn.projection_matrix" in tensors


def test_export_plain_module_and_double_weights(tmp_path):
    attn = PerformerAttention(dim=8, num_heads=2, num_random_features=4).double()
    export_module(attn, tmp_path / "a.safetensors")
    tensors, metadata = load_file_with_metadata(tmp_path / "a.safetensors")
    assert metadata == {"format": "pt"}
    assert all(t.dtype == torch.float32 for t in tensors.values())
    export_module(attn, tmp_path / "b.safetensors", spec=SPEC)
    assert "hvlm.spec" in load_file_with_metadata(tmp_path / "b.safetensors")[1]


def test_load_weights_round_trip(tmp_path):
    a, b = AttentionStack(SPEC).eval(), AttentionStack(SPEC).eval()
    export_module(a, tmp_path / "w.safetensors")
    load_weights(b, tmp_path / "w.safetensors")
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=0)


def test_load_weights_reports_every_mismatch(tmp_path):
    stack = AttentionStack(SPEC)
    tensors = {k: v.clone() for k, v in stack.state_dict().items()}
    del tensors["blocks.0.norm1.weight"]
    tensors["blocks.9.extra"] = torch.zeros(1)
    tensors["blocks.1.attn.D"] = torch.zeros(5)
    tensors["blocks.0.norm2.bias"] = tensors["blocks.0.norm2.bias"].double()
    save_file(tensors, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as err:
        load_weights(stack, tmp_path / "bad.safetensors")
    message = str(err.value)
    for part in ("missing: blocks.0.norm1.weight", "unexpected: blocks.9.extra",
                 "blocks.1.attn.D: shape [5]", "blocks.0.norm2.bias: dtype torch.float64"):
        assert part in message


def test_cli_in_process_is_deterministic(tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    for name in ("a", "b"):
        assert main(["--spec", str(spec_path), "--seed", "3",
                     "--out", str(tmp_path / f"{name}.safetensors")]) == 0
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert main(["--spec", str(spec_path), "--seed", "4",
                 "--out", str(tmp_path / "c.safetensors")]) == 0
    assert (tmp_path / "a.safetensors").read_bytes() != (tmp_path / "c.safetensors").read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dim": 16, "blocks": [{"type": "strided", "strid": 2}]}))
    assert main(["--spec", str(bad), "--out", str(tmp_path / "d.safetensors")]) == 2
    assert "blocks[0].strid" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    out = tmp_path / "w.safetensors"
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    result = subprocess.run([sys.executable, "-m", "hierarchicalvlm.export", "--spec",
                             str(spec_path), "--seed", "0", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(load_file(out)) == sorted(AttentionStack(SPEC).state_dict())
