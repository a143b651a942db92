"""Support for hvlm's end-to-end tests: real hvlm-server processes on loopback, driven by the
Python client, raw gRPC and the hvlm-client CLI. conftest.py turns this into fixtures.

Environment:
  HVLM_SERVER  the hvlm-server binary (default: build/server/hvlm-server of this checkout)
  HVLM_CLIENT  the hvlm-client binary (default: build/client/hvlm-client); the CLI tests are
               skipped only when HVLM_CLIENT is unset and the default does not exist.

Servers are started with `--listen 127.0.0.1:0 --ready-file F` (the port is the kernel's
choice) and stopped on teardown with SIGTERM, which must end them with exit status 0 within
15 s. Each server's stderr goes to a file under the test's tmp_path and is attached to the
report of a failing test.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "python") not in sys.path:
    sys.path.insert(0, str(REPO / "python"))

from hierarchicalvlm.client import wait_for_ready_file  # noqa: E402

SERVER_BIN = Path(os.environ.get("HVLM_SERVER")
                  or REPO / "build" / "server" / "hvlm-server").resolve()
DEFAULT_CLIENT_BIN = REPO / "build" / "client" / "hvlm-client"

# Seconds a server gets to exit after SIGTERM / SIGINT before it is killed and the test fails.
STOP_TIMEOUT = 15.0
# Seconds a server gets to write its ready file.
START_TIMEOUT = 60.0

# A small stack with all five block types (dim 64, 4 heads): cheap to build and to run.
SMALL_SPEC = {
    "dim": 64,
    "blocks": [
        {"type": "local_global", "num_heads": 4, "local_window": 8, "num_global_tokens": 2},
        {"type": "cross_memory", "num_heads": 4},
        {"type": "mamba", "state_size": 8, "expand_factor": 2.0},
        {"type": "strided", "num_heads": 4, "stride": 4},
        {"type": "performer", "num_heads": 4, "num_random_features": 32,
         "kernel_type": "softmax"},
    ],
}
SMALL_TYPES = [b["type"] for b in SMALL_SPEC["blocks"]]
SMALL_SEED = 7
SMALL_MEMORY = {"policy": "fifo", "capacity": 32, "tokens_per_segment": 4}


def small_stack(seed: int = SMALL_SEED, **extra) -> dict:
    """A `stacks:` entry for SMALL_SPEC, inline."""
    entry = {"spec": copy.deepcopy(SMALL_SPEC), "seed": seed,
             "memory": dict(SMALL_MEMORY)}
    entry.update(extra)
    return entry


def make_config(stacks: dict | None = None, limits: dict | None = None, **top) -> dict:
    """A server config (a dict, written as YAML): one `small` stack unless `stacks` is given,
    one intra-op thread (the test machine has two cores), a short shutdown grace."""
    config = {
        "listen": "127.0.0.1:0",
        "metrics": {"listen": "127.0.0.1:0"},
        "device": "cpu",
        "intra_op_threads": 1,
        "workers": 1,
        "log_level": "info",
        "shutdown_grace_seconds": 2,
    }
    if limits:
        config["limits"] = dict(limits)
    config["stacks"] = stacks if stacks is not None else {"small": small_stack()}
    config.update(top)
    return config


def write_config(path: Path, config: dict | str) -> Path:
    """Writes `config` (a dict, as YAML; or YAML text) to `path`."""
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


def require_server_bin() -> None:
    if not SERVER_BIN.is_file():
        pytest.fail(f"no hvlm-server binary at {SERVER_BIN}: build it (cmake --build build "
                    "--target hvlm-server) or set HVLM_SERVER", pytrace=False)


def server_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def client_bin() -> Path | None:
    """The hvlm-client binary: $HVLM_CLIENT when set (it must exist then), else the build
    tree's; None when neither is there."""
    if os.environ.get("HVLM_CLIENT"):
        return Path(os.environ["HVLM_CLIENT"]).resolve()
    return DEFAULT_CLIENT_BIN if DEFAULT_CLIENT_BIN.exists() else None


class ServerProcess:
    """One hvlm-server process. Unpacks as (address, process, config_path)."""

    def __init__(self, workdir: Path, name: str, config: dict | str | Path, extra_args=()):
        """`config`: a dict (written as YAML), YAML text, or the Path of an existing file."""
        self.name = name
        self.workdir = workdir
        self.ready_file = workdir / f"{name}.ready"
        self.stderr_path = workdir / f"{name}.stderr"
        if isinstance(config, Path):
            self.config_path = config
        else:
            self.config_path = write_config(workdir / f"{name}.yaml", config)
        require_server_bin()
        self.ready_file.unlink(missing_ok=True)  # a stale address must not be mistaken for ours
        self.args = [str(SERVER_BIN), "--config", str(self.config_path),
                     "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                     "--ready-file", str(self.ready_file),
                     *extra_args]
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                        stdout=self._stderr, stderr=subprocess.STDOUT,
                                        env=server_env())
        self.address: str | None = None
        self.stopped_returncode: int | None = None

    def __iter__(self):
        return iter((self.address, self.process, self.config_path))

    def wait_ready(self) -> str:
        try:
            self.address = wait_for_ready_file(self.ready_file, timeout=START_TIMEOUT,
                                               process=self.process)
        except (RuntimeError, TimeoutError) as err:
            self.kill()
            pytest.fail(f"hvlm-server '{self.name}' did not start: {err}\n"
                        f"--- stderr ---\n{self.stderr_text()}", pytrace=False)
        return self.address

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if the process is still running after `timeout` s."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Sends `signum` and returns the exit status; kills the process (and fails the test)
        if it has not exited within `timeout` seconds."""
        if self.running():
            self.send_signal(signum)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill()
            pytest.fail(f"hvlm-server '{self.name}' still running {timeout} s after "
                        f"{signal.Signals(signum).name}; killed it\n--- stderr ---\n"
                        f"{self.stderr_text()}", pytrace=False)
        self.stopped_returncode = rc
        return rc

    def kill(self) -> None:
        """SIGKILL, for a server that is failing the test anyway."""
        if self.running():
            self.process.kill()
            self.process.wait(timeout=10)
        self.stopped_returncode = self.process.returncode

    def close(self) -> None:
        self._stderr.close()


class ServerFactory:
    """Starts servers for one test; stops the ones still running at teardown."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.servers: list[ServerProcess] = []

    def __call__(self, config: dict | str | Path | None = None, name: str | None = None,
                 extra_args=(), wait: bool = True) -> ServerProcess:
        name = name or f"server{len(self.servers)}"
        server = ServerProcess(self.workdir, name, make_config() if config is None else config,
                               extra_args)
        self.servers.append(server)
        if wait:
            server.wait_ready()
        return server

    def teardown(self) -> list[str]:
        """SIGTERM to every server the test did not stop itself; returns the problems: a
        server that exited on its own (crashed) before, or did not exit 0 within
        STOP_TIMEOUT."""
        problems, pending = [], []
        for server in self.servers:
            if server.stopped_returncode is not None:
                continue  # the test stopped it (and checked its status) itself
            if not server.running():
                problems.append(f"hvlm-server '{server.name}' exited by itself during the "
                                f"test, status {server.process.returncode}")
                continue
            server.send_signal(signal.SIGTERM)
            pending.append(server)
        for server in pending:
            rc = server.wait_exit(STOP_TIMEOUT)
            if rc is None:
                server.kill()
                problems.append(f"hvlm-server '{server.name}' did not exit within "
                                f"{STOP_TIMEOUT} s of SIGTERM (killed)")
            elif rc != 0:
                problems.append(f"hvlm-server '{server.name}' exited with status {rc} after "
                                "SIGTERM, expected 0")
        for server in self.servers:
            server.close()
        return problems


@dataclass
class OneShot:
    """The outcome of run_server_once: `returncode` None means the server started (and was
    stopped again)."""
    returncode: int | None
    stderr: str
    seconds: float


def run_server_once(config_path: Path, extra_args=(), listen: str | None = "127.0.0.1:0",
                    timeout: float = 30.0) -> OneShot:
    """Runs hvlm-server on a config that should not start. Returns its exit status, stderr
    and run time; a server that does start (writes its ready file) is stopped with SIGTERM and
    reported with returncode None."""
    require_server_bin()
    ready = config_path.with_suffix(".ready")
    ready.unlink(missing_ok=True)
    args = [str(SERVER_BIN), "--config", str(config_path), "--ready-file", str(ready)]
    if listen is not None:
        args += ["--listen", listen, "--metrics-listen", "127.0.0.1:0"]
    args += list(extra_args)
    start = time.monotonic()
    with open(config_path.with_suffix(".stderr"), "w+b") as err:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err,
                                   stderr=subprocess.STDOUT, env=server_env())
        returncode = None
        while time.monotonic() - start < timeout:
            returncode = process.poll()
            if returncode is not None:
                break
            if ready.exists():
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                break
            time.sleep(0.01)
        else:
            process.kill()
            process.wait()
            pytest.fail(f"hvlm-server neither started nor exited within {timeout} s")
        seconds = time.monotonic() - start
        err.seek(0)
        text = err.read().decode(errors="replace")
    return OneShot(returncode, text, seconds)


def rng_features(seed: int, *shape: int) -> np.ndarray:
    """Standard-normal float32 features of `shape`, reproducible from `seed`."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def wait_detached(client, session_id: str, timeout: float = 5.0):
    """The session's SessionInfo once no stream is attached to it (or after `timeout` s).
    Works around the detach race shown by test_session_is_free_as_soon_as_its_stream_ends:
    a session can still be attached for a moment after its stream ended."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.get_session(session_id)
        if not info.streaming or time.monotonic() > deadline:
            return info
        time.sleep(0.005)
