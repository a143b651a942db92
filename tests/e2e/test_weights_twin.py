"""Weights exported by the Python twin (`python3 -m hierarchicalvlm.export`) served by
hvlm-server: the server computes what the twin computes, stateless and across a session's
segments (memory bank and mamba state carried)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from e2e_support import REPO, SMALL_MEMORY, SMALL_SPEC, make_config, rng_features
from hierarchicalvlm.attention.stack import AttentionStack
from hierarchicalvlm.client import Client
from hierarchicalvlm.export import load_weights
from hierarchicalvlm.memory_bank import empty_memory_bank, update_memory_bank

EXPORT_SEED = 11
REL_TOL = 1e-5


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(spec path, weights path) written by the twin's exporter."""
    tmp_path = tmp_path_factory.mktemp("export")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SMALL_SPEC))
    weights = tmp_path / "W.safetensors"
    env = {"PYTHONPATH": str(REPO / "python"), "PATH": "/usr/bin:/bin",
           "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "hierarchicalvlm.export", "--spec",
                           str(spec_path), "--seed", str(EXPORT_SEED), "--out", str(weights)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert weights.is_file()
    return spec_path, weights


@pytest.fixture(scope="module")
def twin(exported):
    _, weights = exported
    stack = AttentionStack(SMALL_SPEC)
    load_weights(stack, str(weights))
    return stack.eval()


@pytest.fixture
def weighted_server(start_server, exported, tmp_path):
    # Relative paths resolve against the config file's directory (tmp_path).
    spec_path, weights = exported
    config = make_config(stacks={"small": {
        "spec_file": os.path.relpath(spec_path, tmp_path),
        "weights": os.path.relpath(weights, tmp_path), "memory": dict(SMALL_MEMORY)}})
    return start_server(config, name="weighted")


def test_server_with_twin_weights_matches_the_twin(weighted_server, twin):
    x = rng_features(5, 24, 64)
    memory = rng_features(6, 10, 64)
    with Client(weighted_server.address, timeout=60) as client:
        (info,) = client.list_stacks()
        assert info.weights_loaded is True
        assert info.weights_source.endswith("W.safetensors")
        assert "random init" not in info.weights_source
        served = client.forward(x, stack="small")
        served_mem = client.forward(x, stack="small", memories={1: memory})

    with torch.no_grad():
        expected, _ = twin(torch.from_numpy(x)[None])
        expected_mem, _ = twin(torch.from_numpy(x)[None],
                               memories=[None, torch.from_numpy(memory)[None], None, None, None])
    expected, expected_mem = expected[0].numpy(), expected_mem[0].numpy()
    assert served.shape == expected.shape == (24, 64)
    assert rel_err(served, expected) <= REL_TOL
    assert rel_err(served_mem, expected_mem) <= REL_TOL
    assert np.abs(expected - expected_mem).max() > 1e-3  # the memory mattered


def twin_session(twin, segments, policy, capacity, tokens_per_segment):
    """The twin run as a session: each cross_memory block attends to its bank, which then
    takes in the hidden states that entered the block; mamba blocks carry their state."""
    types = twin.block_types
    banks = {i: empty_memory_bank(1, twin.dim) for i, t in enumerate(types) if t == "cross_memory"}
    states = [None] * len(types)
    outputs = []
    with torch.no_grad():
        for segment in segments:
            x = torch.from_numpy(segment)[None]
            entered = {}
            for i, (block, t) in enumerate(zip(twin.blocks, types)):
                if t == "cross_memory":
                    entered[i] = x
                    x = block(x, memory=banks[i][0])
                elif t == "mamba":
                    x, states[i] = block.forward_stream(x, states[i])
                else:
                    x = block(x)
            for i, segment_tokens in entered.items():
                banks[i] = update_memory_bank(*banks[i], segment_tokens, policy, capacity,
                                              tokens_per_segment)
            outputs.append(x[0].numpy())
    return outputs, banks


def test_session_stream_matches_the_twin_with_banks_and_states(weighted_server, twin):
    segments = [rng_features(30 + i, n, 64) for i, n in enumerate([16, 16, 12, 16])]
    with Client(weighted_server.address, timeout=60) as client:
        client.open_session("small", "twin")
        served = [out for _, out, _ in client.stream("twin", segments)]
        info = client.get_session("twin")
    expected, banks = twin_session(twin, segments, **SMALL_MEMORY)
    for k, (a, b) in enumerate(zip(served, expected)):
        assert a.shape == b.shape
        assert rel_err(a, b) <= REL_TOL, f"segment {k}"
    assert info.memory_banks[0].length == banks[1][0].shape[1]
    # The bank made later segments differ from a memoryless pass.
    with torch.no_grad():
        alone = twin(torch.from_numpy(segments[3])[None])[0][0].numpy()
    assert np.abs(alone - expected[3]).max() > 1e-3
