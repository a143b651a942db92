"""The parity case generator (tests/parity/gen_cases.py): every case replays from its files
alone (module rebuilt from the JSON, weights loaded from safetensors), and recomputing it in
float64 stays far inside the 1e-5 parity tolerance, so the cases are well conditioned."""

import importlib.util
import json
import os

import pytest
import torch

from hierarchicalvlm.attention import (AttentionStack, CrossMemoryAttention,
                                       HierarchicalAttentionBlock, LinearAttentionBlock,
                                       LocalGlobalAttention, MambaLayer, PerformerAttention,
                                       StridedAttention)
from hierarchicalvlm.export import load_weights
from hierarchicalvlm.safetensors import load_file, load_file_with_metadata

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = {"strided": StridedAttention, "local_global": LocalGlobalAttention,
           "cross_memory": CrossMemoryAttention, "performer": PerformerAttention,
           "mamba": MambaLayer}
GEN = os.path.join(REPO, "tests", "parity", "gen_cases.py")


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("gen_cases", GEN)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    out = tmp_path_factory.mktemp("parity")
    assert gen.main(["gen_cases.py", str(out)]) == 0
    return out


def rel_err(got, want):
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    return diff / scale if scale > 0 else diff


def replay(case, io, weights, dtype):
    kind = case["kind"]
    io = {k: v.to(dtype) for k, v in io.items()}
    if kind == "stack":
        module = AttentionStack(case["spec"])
    elif kind == "block":
        cls = (LinearAttentionBlock if case["type"] in ("performer", "mamba")
               else HierarchicalAttentionBlock)
        module = cls(attention_type=case["type"], **case["options"])
    else:
        module = MODULES[case["type"]](**case["options"])
    load_weights(module, weights)
    module = module.to(dtype).eval()
    x = io["x"]
    states = {}
    if kind == "stack":
        n = len(module.blocks)
        memories = [io.get(f"memory.{i}") for i in range(n)]
        st = [(io[f"conv_state.{i}"], io[f"ssm_state.{i}"]) if f"conv_state.{i}" in io else None
              for i in range(n)]
        y, new_states = module(x, memories, st)
        for i, s in enumerate(new_states):
            if s is not None:
                states[f"expected_conv_state.{i}"], states[f"expected_ssm_state.{i}"] = s
        return y, states
    call = case["call"]
    state = (io["conv_state"], io["ssm_state"]) if "conv_state" in io else None
    if case["type"] == "mamba":
        y, (c, s) = module.forward_stream(x, state)
        return y, {"expected_conv_state": c, "expected_ssm_state": s}
    if kind == "block":
        return (module(x, memory=io["memory"]) if "memory" in io else module(x)), states
    if case["type"] == "cross_memory":
        if call["method"] == "fuse_with_memory":
            return module.fuse_with_memory(x, io["memory"], call["fusion_ratio"]), states
        return module(x, io["memory"], residual=call["residual"]), states
    return module(x), states


def test_cases_replay_from_their_files(case_dir):
    names = json.loads((case_dir / "index.json").read_text())["cases"]
    assert len(names) >= 20 and len(set(names)) == len(names)
    kinds = set()
    for name in names:
        case = json.loads((case_dir / f"{name}.json").read_text())
        kinds.add((case["kind"], case.get("type")))
        io = load_file(case_dir / f"{name}.io.safetensors")
        weights = case_dir / f"{name}.weights.safetensors"
        assert load_file_with_metadata(weights)[1]["format"] == "pt"
        assert all(t.dtype == torch.float32 for t in io.values())
        with torch.no_grad():
            y32, s32 = replay(case, io, weights, torch.float32)
            y64, s64 = replay(case, io, weights, torch.float64)
        assert rel_err(y32, io["expected"]) < 1e-6, name
        assert rel_err(y64, io["expected"].double()) < 2e-6, name
        for key, value in s64.items():
            assert key in io, (name, key)
            assert rel_err(s32[key], io[key]) < 1e-6, (name, key)
            assert rel_err(value, io[key].double()) < 2e-6, (name, key)
    types = ("strided", "local_global", "cross_memory", "performer", "mamba")
    assert {("module", t) for t in types} <= kinds
    assert {("block", t) for t in types} <= kinds
    assert ("stack", None) in kinds
