"""The hvlm-client CLI (list, stream, load) against a real server. Skipped when HVLM_CLIENT is
unset and build/client/hvlm-client does not exist."""

import json
import subprocess

import numpy as np
import pytest

from e2e_support import client_bin, rng_features
from hierarchicalvlm.client import Client

CLIENT = client_bin()
pytestmark = pytest.mark.skipif(CLIENT is None, reason="no hvlm-client (set HVLM_CLIENT or "
                                "build build/client/hvlm-client)")


def cli(*args, cwd, timeout=60):
    assert CLIENT.is_file(), f"HVLM_CLIENT={CLIENT} does not exist"
    return subprocess.run([str(CLIENT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_list_prints_the_stacks(server, tmp_path):
    done = cli("list", "--server", server.address, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with Client(server.address, timeout=10) as client:
        (stack,) = client.list_stacks()
    assert stack.name in done.stdout
    assert stack.fingerprint in done.stdout
    for block in stack.blocks:
        assert block.type in done.stdout


def test_stream_writes_outputs_and_summary(server, tmp_path):
    done = cli("stream", "--server", server.address, "--stack", "small", "--frames", "64",
               "--segment", "16", "--warmup", "0", "--output", "out.npy", "--json", "s.json",
               cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert np.isfinite(out).all()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["mode"] == "stream"
    assert summary["segments"] == 4
    assert summary["errors"] == 0
    assert summary["dim"] == 64


def test_stream_of_a_file_equals_the_python_client(server, tmp_path):
    features = rng_features(9, 40, 64)
    np.save(tmp_path / "in.npy", features)
    done = cli("stream", "--server", server.address, "--stack", "small", "--input", "in.npy",
               "--segment", "16", "--output", "out.npy", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    with Client(server.address, timeout=30) as client:
        expected, _ = client.stream_video("small", features, segment_frames=16)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_load_runs_sessions_without_errors(server, tmp_path):
    done = cli("load", "--server", server.address, "--stack", "small", "--sessions", "4",
               "--segment", "16", "--segments-per-session", "3", "--json", "l.json",
               cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "l.json").read_text())
    assert summary["mode"] == "load"
    assert summary["sessions"] == 4
    assert summary["segments"] == 4 * 3  # measured segments; warmup ones are excluded
    assert summary["errors"] == 0 and summary["first_error"] == ""


def test_failures_exit_1_and_bad_command_lines_2(server, tmp_path):
    done = cli("stream", "--server", server.address, "--stack", "nope", "--frames", "16",
               "--segment", "8", cwd=tmp_path)
    assert done.returncode == 1
    assert "nope" in done.stderr
    done = cli("stream", "--server", server.address, "--stack", "small", "--frames", "16",
               "--segment", "zero", cwd=tmp_path)
    assert done.returncode == 2
    assert "--segment" in done.stderr
