"""Observability end to end: the /metrics exposition (promtool), a real Prometheus scraping a
server under traffic, the Grafana dashboard's queries, JSON logs, /readyz and /healthz while
loading and draining, and the metrics port's configuration (docs/observability.md).

Prometheus and promtool must be installed (Debian: apt-get install prometheus); $PROMETHEUS
and $PROMTOOL name other binaries. Without them the tests that need them fail, naming the
binary. The Prometheus tests come last: their server and Prometheus live for the rest of the
module, and scraping every 500 ms should not disturb the timing-sensitive tests before them.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import astuple, dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from e2e_support import (REPO, ServerFactory, make_config, rng_features, run_server_once,
                         write_config)
from hierarchicalvlm.client import Client, ClientError

DASHBOARD = REPO / "deploy" / "grafana" / "hvlm-dashboard.json"
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
# Lines gRPC's core library writes itself ("E1129 05:54:17.8 ..."), not hvlm's logger.
GRPC_CORE_LINE = re.compile(r"^[EWID]\d{4} ")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
# Six or more numbers in a row, comma or space separated: what a printed tensor looks like.
NUMBER_RUN = re.compile(r"(?:[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?[,\s]+){5,}[-+]?\d+\.\d+", re.I)
# A value put into tensors we send: it must never appear in a log.
MARKER = 1234.5678
# A session id the server must refuse, and must not write to its log.
MALFORMED_ID = "no spaces allowed: {'tensor': [0.5, 0.25]} " + "x" * 200

# No proxy for loopback, whatever the environment says.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------------------
# Helpers


@dataclass
class HttpAnswer:
    status: int
    content_type: str
    body: str


def http_get(url: str, timeout: float = 5.0) -> HttpAnswer:
    """GET `url`; a 4xx/5xx answer is returned, not raised. Connection failures raise
    OSError (URLError is one)."""
    try:
        with _HTTP.open(url, timeout=timeout) as r:
            return HttpAnswer(r.status, r.headers.get("Content-Type", ""), r.read().decode())
    except urllib.error.HTTPError as err:
        return HttpAnswer(err.code, err.headers.get("Content-Type", ""), err.read().decode())


def probe(url: str, timeout: float = 1.0) -> HttpAnswer | None:
    """http_get, or None while nothing answers (not listening yet, or gone)."""
    try:
        return http_get(url, timeout)
    except (OSError, http.client.HTTPException):  # refused, reset, timed out, cut short
        return None


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_address(server) -> str:
    """The metrics host:port a server wrote to its ready file (second line)."""
    lines = server.ready_file.read_text().splitlines()
    assert len(lines) == 2, f"ready file {server.ready_file}: {lines}"
    return lines[1]


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (from /proc: its socket inodes in LISTEN)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if match:
            inodes.add(match.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Exposition:
    """A parsed text exposition: `types` by family name, sample values by (name, labels)."""
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, frozenset], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def names(self) -> set[str]:
        """Every series name a query may use: families, plus _bucket/_sum/_count of
        histograms."""
        names = set()
        for family, kind in self.types.items():
            names.add(family)
            if kind == "histogram":
                names |= {family + "_bucket", family + "_sum", family + "_count"}
        return names


def parse_exposition(text: str) -> Exposition:
    out = Exposition()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out.types[name] = kind
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"unparsable exposition line: {line!r}"
            name, labels, value = match.groups()
            key = frozenset(_LABEL.findall(labels or ""))
            out.samples[(name, key)] = float(value)
    return out


def scrape(server) -> Exposition:
    answer = http_get(f"http://{metrics_address(server)}/metrics")
    assert answer.status == 200, answer
    return parse_exposition(answer.body)


def log_records(text: str) -> list[dict]:
    """hvlm's JSON log lines as objects; asserts every line is one (gRPC core's own lines
    excepted) with the common fields."""
    records = []
    for line in text.splitlines():
        if not line.strip() or GRPC_CORE_LINE.match(line):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"log line is not JSON: {line!r}", pytrace=False)
        assert isinstance(record, dict), line
        assert {"ts", "level", "msg"} <= record.keys(), line
        assert TIMESTAMP.match(record["ts"]), line
        assert record["level"] in ("trace", "debug", "info", "warn", "error"), line
        assert all(isinstance(v, str) for v in record.values()), f"non-string field: {line}"
        records.append(record)
    return records


def assert_no_tensor_contents(text: str) -> None:
    for line in text.splitlines():
        assert len(line) < 2000, f"log line of {len(line)} characters: {line[:300]}..."
        assert not NUMBER_RUN.search(line), f"log line holds a list of numbers: {line}"
    assert "1234.5" not in text, "a tensor value was logged"


def marked(features: np.ndarray) -> np.ndarray:
    """`features` with MARKER as its first element."""
    features = features.copy()
    features.flat[0] = MARKER
    return features


# ---------------------------------------------------------------------------------------
# Tools


def tool(env: str, name: str) -> str:
    """A Prometheus tool: $env, else `name` on PATH, else /usr/bin/name; fails the test
    (no skip: these tests are the point) when it is not installed."""
    if os.environ.get(env):
        path, where = os.environ[env], f"${env}={os.environ[env]}"
    else:
        path, where = shutil.which(name) or f"/usr/bin/{name}", f"PATH and /usr/bin/{name}"
    if not Path(path).is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"{name} is needed and not installed (looked at {where}): install it "
                    f"(Debian/Ubuntu: apt-get install prometheus) or set ${env}", pytrace=False)
    return path


class Prometheus:
    """A real Prometheus server scraping `targets` (job name -> host:port) every 500 ms, with
    its data under `workdir`."""

    SCRAPE_INTERVAL = 0.5

    def __init__(self, workdir: Path, targets: dict[str, str]):
        self.binary = tool("PROMETHEUS", "prometheus")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        interval = f"{int(self.SCRAPE_INTERVAL * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }
        write_config(self.config_path, config)
        self.process: subprocess.Popen | None = None
        self.url = ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        """Starts Prometheus on a free loopback port and waits until /-/ready says 200."""
        for _ in range(3):  # the free port may be taken between our pick and its bind
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [self.binary, f"--config.file={self.config_path}",
                     f"--storage.tsdb.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                answer = probe(f"{self.url}/-/ready")
                if answer is not None and answer.status == 200:
                    return
                time.sleep(0.05)
            if self.process.poll() is None:
                self.stop()
                pytest.fail(f"Prometheus not ready after {timeout} s:\n{self.log_text()}",
                            pytrace=False)
            if "address already in use" not in self.log_text():
                break
        pytest.fail(f"Prometheus exited with status {self.process.returncode}:\n"
                    f"{self.log_text()}", pytrace=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, path: str, **params) -> HttpAnswer:
        query = urllib.parse.urlencode(params, doseq=True)
        return http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10)

    def query(self, expr: str) -> list[dict]:
        """The result vector of instant query `expr` (asserts the query succeeded)."""
        answer = self.api("query", query=expr)
        reply = json.loads(answer.body)
        assert answer.status == 200 and reply["status"] == "success", (expr, answer.body)
        assert reply["data"]["resultType"] == "vector", (expr, reply["data"]["resultType"])
        return reply["data"]["result"]

    def value(self, expr: str) -> float:
        """The value of an instant query that must give exactly one series."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def wait_for_scrape(self, job: str, after: float, timeout: float = 15.0) -> None:
        """Waits until `job` has been scraped successfully at a time after `after` (Unix
        seconds)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            # timestamp() of a plain selector is the scrape's time (of an expression, the
            # evaluation time): keep it only where the scrape succeeded.
            result = self.query(f'timestamp(up{{job="{job}"}}) and up{{job="{job}"}} == 1')
            if result:
                last = float(result[0]["value"][1])
                if last > after:
                    return
            time.sleep(0.1)
        pytest.fail(f"Prometheus did not scrape job {job} after {after} (last scrape: {last})"
                    f"\n{self.api('targets').body}\n{self.log_text()}", pytrace=False)


# ---------------------------------------------------------------------------------------
# Traffic


@dataclass
class Traffic:
    """What drive_traffic sent, as the server should count it."""
    segments: int       # hvlm_segments_total{stack="small"}
    tokens: int         # hvlm_tokens_total{stack="small"}
    stream_ok: int      # hvlm_requests_total{rpc="StreamSegments",code="OK"}
    session_segments: int
    bank_length_sum: int
    sessions: int       # opened and closed
    errors: int         # NOT_FOUND: one Forward, one StreamSegments

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(*(a + b for a, b in zip(astuple(self), astuple(other))))


def drive_traffic(address: str, tag: str = "") -> Traffic:
    """Two sessions x 4 streamed segments (one of batch 2), a stateless Forward, and two
    failures: a Forward to an unknown stack and a stream to an unknown session (NOT_FOUND)."""
    with Client(address, timeout=30) as client:
        client.open_session("small", f"obs-a{tag}")
        client.open_session("small", f"obs-b{tag}")
        a = [marked(rng_features(k, 8, 64)) for k in range(4)]
        b = [rng_features(10 + k, 2, 8, 64) for k in range(4)]
        assert [s for s, _, _ in client.stream(f"obs-a{tag}", a)] == [0, 1, 2, 3]
        assert [s for s, _, _ in client.stream(f"obs-b{tag}", b)] == [0, 1, 2, 3]
        client.forward(rng_features(20, 8, 64), stack="small")
        with pytest.raises(ClientError) as err:
            client.forward(rng_features(21, 8, 64), stack="no-such-stack")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ClientError) as err:
            list(client.stream("never-opened", [rng_features(22, 8, 64)]))
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        client.close_session(f"obs-a{tag}")
        client.close_session(f"obs-b{tag}")
    # Each session's bank (one cross_memory block, 4 tokens per segment, capacity 32) holds
    # 4, 8, 12, 16 tokens after its 4 segments.
    return Traffic(segments=9, tokens=4 * 8 + 4 * 2 * 8 + 8, stream_ok=8, session_segments=8,
                   bank_length_sum=2 * (4 + 8 + 12 + 16), sessions=2, errors=2)



# ---------------------------------------------------------------------------------------
# a. The exposition


def test_exposition_after_mixed_traffic_passes_promtool(server):
    promtool = tool("PROMTOOL", "promtool")
    traffic = drive_traffic(server.address)
    address = metrics_address(server)
    answer = http_get(f"http://{address}/metrics")
    assert answer.status == 200
    assert answer.content_type == TEXT_FORMAT

    check = subprocess.run([promtool, "check", "metrics"], input=answer.body,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}"
    assert not (check.stdout + check.stderr).strip(), check.stdout + check.stderr

    metrics = parse_exposition(answer.body)
    assert metrics.value("hvlm_segments_total", stack="small") == traffic.segments
    assert metrics.value("hvlm_requests_total", rpc="Forward", code="NOT_FOUND") == 1
    assert metrics.value("hvlm_requests_total", rpc="StreamSegments", code="NOT_FOUND") == 1
    # Every family is typed, and every sample belongs to a typed family.
    for name, _ in metrics.samples:
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in metrics.types or metrics.types.get(family) == "histogram", name
    # HEAD answers like GET, without a body; other paths are 404.
    request = urllib.request.Request(f"http://{address}/metrics", method="HEAD")
    with _HTTP.open(request, timeout=5) as head:
        assert head.status == 200 and head.read() == b""
        assert head.headers["Content-Type"] == TEXT_FORMAT
    assert http_get(f"http://{address}/nothing-here").status == 404
    # Two listening ports: gRPC and metrics.
    assert listening_ports(server.process.pid) == {
        int(server.address.rpartition(":")[2]), int(address.rpartition(":")[2])}


# ---------------------------------------------------------------------------------------
# c. JSON logs


def test_json_logs_carry_session_ids_and_no_tensors(start_server):
    ttl = 1.5
    config = make_config(log_format="json", log_level="debug",
                         limits={"max_sessions": 1, "on_full": "evict_lru",
                                 "session_idle_ttl_seconds": ttl})
    server = start_server(config, name="json-lifecycle")
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "json-a")
        list(client.stream("json-a", [marked(rng_features(k, 8, 64)) for k in range(2)]))
        client.forward(marked(rng_features(3, 8, 64)), session_id="json-a", sequence=2)
        with pytest.raises(ClientError) as err:  # a failure of a request naming a session
            client.forward(rng_features(4, 8, 64), session_id="json-a", sequence=99)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        client.get_session("json-a")
        with pytest.raises(ClientError) as err:  # a malformed id is client input: not logged
            client.get_session(MALFORMED_ID)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        client.forward(marked(rng_features(5, 8, 64)), stack="small")  # no session
        client.close_session("json-a")
        client.open_session("small", "json-b")
        client.open_session("small", "json-c")  # evicts json-b (max_sessions 1, json-b idle)
        start = time.monotonic()
        while "session expired" not in server.stderr_text():  # json-c, after the TTL
            assert time.monotonic() - start < ttl + 10, "json-c did not expire"
            time.sleep(0.05)
    metrics = scrape(server)
    assert server.stop() == 0

    text = server.stderr_text()
    records = log_records(text)
    assert_no_tensor_contents(text)
    assert MALFORMED_ID[:40] not in text

    def lifecycle(msg):
        return [r for r in records if r["msg"] == msg]

    assert [r["session_id"] for r in lifecycle("session opened")] == ["json-a", "json-b", "json-c"]
    assert [r["session_id"] for r in lifecycle("session closed")] == ["json-a"]
    assert [r["session_id"] for r in lifecycle("session evicted")] == ["json-b"]
    expired = lifecycle("session expired")
    assert [r["session_id"] for r in expired] == ["json-c"]
    assert float(expired[0]["idle_seconds"]) >= ttl
    for r in records:
        if r["msg"].startswith("session "):
            assert r["level"] == "info" and r["stack"] == "small", r
    assert metrics.value("hvlm_sessions_evicted_total") == 1
    assert metrics.value("hvlm_sessions_expired_total") == 1
    assert metrics.value("hvlm_sessions_closed_total") == 1

    requests = [r for r in records if r["msg"] == "request"]
    for r in requests:
        assert r["level"] == "debug", r
        assert {"rpc", "code", "duration_ms"} <= r.keys(), r
        assert float(r["duration_ms"]) >= 0, r
    by_session = [(r["rpc"], r["code"]) for r in requests if r.get("session_id") == "json-a"]
    assert by_session == [("OpenSession", "OK"), ("StreamSegments", "OK"),
                          ("StreamSegments", "OK"), ("Forward", "OK"),
                          ("Forward", "FAILED_PRECONDITION"), ("GetSession", "OK"),
                          ("CloseSession", "OK")], requests
    failed = [r for r in requests if r["code"] == "FAILED_PRECONDITION"]
    assert len(failed) == 1 and "sequence" in failed[0]["error"], failed
    malformed = [r for r in requests if r["code"] == "INVALID_ARGUMENT"]
    assert len(malformed) == 1 and malformed[0]["rpc"] == "GetSession", requests
    assert "session_id" not in malformed[0], malformed
    stateless = [r for r in requests if r["rpc"] == "Forward" and "session_id" not in r]
    assert len(stateless) == 1 and stateless[0]["stack"] == "small", requests
    # Nothing here is a server-side failure.
    assert not [r for r in records if r["level"] in ("warn", "error")
                and "no weights file" not in r["msg"]], records


def test_repeated_server_side_failures_are_rate_limited(start_server):
    config = make_config(log_format="json", log_level="debug",
                         limits={"max_sessions": 1, "on_full": "reject"})
    server = start_server(config, name="json-ratelimit")
    attempts = 25
    start = time.monotonic()
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "holder")
        for k in range(attempts):
            with pytest.raises(ClientError) as err:
                client.open_session("small", f"extra-{k}")
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    elapsed = time.monotonic() - start
    metrics = scrape(server)
    assert server.stop() == 0

    records = log_records(server.stderr_text())
    rejected = [r for r in records if r["msg"] == "request"
                and r["code"] == "RESOURCE_EXHAUSTED"]
    # Debug request lines are per request: not limited.
    assert [r["session_id"] for r in rejected] == [f"extra-{k}" for k in range(attempts)]
    warned = [r for r in records if r["msg"] == "request failed"]
    assert warned, "no 'request failed' line for RESOURCE_EXHAUSTED"
    assert all(r["level"] == "warn" and r["rpc"] == "OpenSession"
               and r["code"] == "RESOURCE_EXHAUSTED" for r in warned), warned
    assert "session limit reached" in warned[0]["error"]
    assert "suppressed" not in warned[0], warned[0]
    # One line, then at most one per 10 s, each saying how many it held back.
    assert len(warned) <= 1 + int(elapsed // 10), (elapsed, warned)
    assert all(int(r["suppressed"]) > 0 for r in warned[1:]), warned
    # The metrics still count every one.
    assert metrics.value("hvlm_sessions_rejected_total") == attempts
    assert metrics.value("hvlm_requests_total", rpc="OpenSession",
                         code="RESOURCE_EXHAUSTED") == attempts


# ---------------------------------------------------------------------------------------
# d. /readyz and /healthz


def slow_stack() -> dict:
    """A stack that takes 1.5-2 s to build, fingerprint and warm up on a 2-core machine."""
    blocks = [{"type": "local_global", "num_heads": 8, "local_window": 8, "num_global_tokens": 2},
              {"type": "mamba", "state_size": 16, "expand_factor": 2.0}] * 8
    return {"spec": {"dim": 1024, "blocks": blocks}, "seed": 1}


def test_readyz_is_503_while_the_stacks_load(start_server):
    metrics = f"127.0.0.1:{free_port()}"
    server = start_server(make_config(stacks={"wide": slow_stack()}), name="slow-start",
                          extra_args=("--metrics-listen", metrics), wait=False)
    loading: list[tuple[float, HttpAnswer, HttpAnswer | None]] = []
    metrics_while_loading = None
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "never ready"
        assert server.running(), f"exited with {server.process.returncode}"
        ready = probe(f"http://{metrics}/readyz")
        if ready is None:  # the metrics port is not up yet
            time.sleep(0.01)
            continue
        if ready.status == 200:
            break
        loading.append((time.monotonic(), ready, probe(f"http://{metrics}/healthz")))
        if metrics_while_loading is None:
            metrics_while_loading = probe(f"http://{metrics}/metrics")
        time.sleep(0.02)
    assert ready.body == "ready\n"
    server.wait_ready()
    assert metrics_address(server) == metrics

    assert len(loading) >= 5, f"saw only {len(loading)} not-ready answers before the first 200"
    for _, answer, health in loading:
        assert answer.status == 503, answer
        assert answer.body == "not ready: loading and warming up the stacks\n", answer
        assert health is not None and health.status == 200 and health.body == "ok\n", health
    assert loading[-1][0] - loading[0][0] > 0.5, "the loading window was not observed"
    assert metrics_while_loading is not None and metrics_while_loading.status == 200
    assert "hvlm_build_info{" in metrics_while_loading.body
    # The stack was loaded in that window: its line comes after the metrics port's.
    text = server.stderr_text()
    assert text.index("metrics listening") < text.index("stack ready")


def test_readyz_is_503_while_draining_and_healthz_stays_200(start_server):
    server = start_server(make_config(shutdown_grace_seconds=30), name="draining")
    metrics = metrics_address(server)
    assert http_get(f"http://{metrics}/readyz").status == 200

    release = threading.Event()
    outputs, errors = [], []

    def segments():
        yield rng_features(1, 8, 64)
        release.wait(30)  # the stream stays open, idle, until the test lets it finish
        yield rng_features(2, 8, 64)

    def stream():
        try:
            with Client(server.address, timeout=60) as client:
                client.open_session("small", "draining")
                for sequence, output, _ in client.stream("draining", segments(),
                                                         max_in_flight=1):
                    outputs.append((sequence, output.shape))
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not outputs:
        assert time.monotonic() < deadline and thread.is_alive(), errors
        time.sleep(0.01)

    server.send_signal(signal.SIGTERM)
    start = time.monotonic()
    # The drain begins once the main thread has taken the signal (a busy machine may take a
    # moment); the server logs "shutting down" right after /readyz turns 503.
    while "shutting down" not in server.stderr_text():
        assert time.monotonic() - start < 10, "no 'shutting down' 10 s after SIGTERM"
        time.sleep(0.005)
    draining: list[tuple[HttpAnswer | None, HttpAnswer | None]] = []
    while time.monotonic() - start < 1.0 or len([d for d in draining if d[0]]) < 5:
        assert time.monotonic() - start < 20, "no answers from the metrics port while draining"
        assert server.running(), "exited while a stream was open"
        draining.append((probe(f"http://{metrics}/readyz"), probe(f"http://{metrics}/healthz")))
        time.sleep(0.02)
    release.set()  # the stream sends its last segment and finishes
    while server.running():  # keep asking until the process is gone
        draining.append((probe(f"http://{metrics}/readyz"), probe(f"http://{metrics}/healthz")))
        time.sleep(0.02)
        assert time.monotonic() - start < 40, "still running 40 s after SIGTERM"
    assert server.stop() == 0
    thread.join(10)
    assert not thread.is_alive() and not errors, errors
    assert outputs == [(0, (8, 64)), (1, (8, 64))]

    answers = [d for d in draining if d[0] is not None or d[1] is not None]
    assert len(answers) >= 5
    for ready, health in answers:
        if ready is not None:
            assert ready.status == 503 and ready.body == "not ready: shutting down\n", ready
        if health is not None:
            assert health.status == 200 and health.body == "ok\n", health
    assert "received SIGTERM" in server.stderr_text()


# ---------------------------------------------------------------------------------------
# e. The metrics port's configuration


def test_metrics_disabled_serves_grpc_without_a_metrics_port(start_server):
    server = start_server(make_config(metrics={"enabled": False, "listen": "127.0.0.1:0"}),
                          name="no-metrics")
    assert server.ready_file.read_text().splitlines() == [server.address]
    with Client(server.address, timeout=30) as client:
        assert [s.name for s in client.list_stacks()] == ["small"]
        assert client.forward(rng_features(1, 8, 64), stack="small").shape == (8, 64)
    assert listening_ports(server.process.pid) == {int(server.address.rpartition(":")[2])}
    assert "metrics listening" not in server.stderr_text()


@pytest.mark.parametrize("how", ["config", "flag"])
def test_a_busy_metrics_port_is_a_start_failure(tmp_path, how):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        config = make_config(metrics={"listen": address if how == "config" else "127.0.0.1:0"})
        path = write_config(tmp_path / "busy.yaml", config)
        if how == "config":  # no --listen / --metrics-listen flags: the config's addresses
            result = run_server_once(path, listen=None)
        else:
            result = run_server_once(path, extra_args=("--metrics-listen", address))
    assert result.returncode == 1, result.stderr
    assert f"cannot serve metrics on {address}" in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------
# b. A real Prometheus, and the Grafana dashboard's queries against it


@pytest.fixture(scope="module")
def monitored_server(tmp_path_factory):
    """(factory, server): one small-stack server for the Prometheus tests."""
    factory = ServerFactory(tmp_path_factory.mktemp("monitored"))
    server = factory(make_config(), name="monitored")
    yield factory, server
    problems = factory.teardown()
    if problems:
        pytest.fail("\n".join(problems) + f"\n--- stderr ---\n{server.stderr_text()}",
                    pytrace=False)


@pytest.fixture(scope="module")
def prometheus(monitored_server, tmp_path_factory):
    """A Prometheus scraping the monitored server as job "hvlm", up and scraping."""
    _, server = monitored_server
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"),
                      {"hvlm": metrics_address(server)})
    prom.start()
    try:
        # Prometheus applies new targets every 5 s, so its first scrape takes that long.
        prom.wait_for_scrape("hvlm", after=0, timeout=60)
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def traffic(monitored_server, prometheus):
    """Drives the traffic twice, each time waiting until Prometheus has scraped after it.
    Twice, because a series the server creates on its first use (hvlm_requests_total's
    rpc/code children, the request latency histogram's rpc/stack children) enters Prometheus
    with its first value already counted: rate() only sees the second round."""
    _, server = monitored_server
    rounds = []
    for tag in ("-1", "-2"):
        rounds.append(drive_traffic(server.address, tag))
        # A stream's end reaches the gauge in OnDone, which may trail the status a little.
        deadline = time.monotonic() + 10
        while scrape(server).value("hvlm_active_streams") != 0:
            assert time.monotonic() < deadline, "hvlm_active_streams stays above 0"
            time.sleep(0.01)
        prometheus.wait_for_scrape("hvlm", after=time.time())
    return rounds[0] + rounds[1]


@pytest.fixture
def monitored(request, monitored_server):
    """(server, Prometheus, the traffic sent): the module's; a failing test's report, set-up
    included, gets the server's stderr."""
    factory, server = monitored_server
    request.node._hvlm_factory = factory
    return server, request.getfixturevalue("prometheus"), request.getfixturevalue("traffic")


def test_prometheus_scrapes_the_counts_of_the_traffic(monitored):
    server, prom, sent = monitored
    job = 'job="hvlm"'
    assert prom.value(f"up{{{job}}}") == 1
    assert prom.value(f'hvlm_segments_total{{{job},stack="small"}}') == sent.segments
    assert prom.value(f'hvlm_tokens_total{{{job},stack="small"}}') == sent.tokens

    def requests(rpc, code):
        return prom.value(f'hvlm_requests_total{{{job},rpc="{rpc}",code="{code}"}}')

    assert requests("StreamSegments", "OK") == sent.stream_ok
    assert requests("StreamSegments", "NOT_FOUND") == sent.errors / 2
    assert requests("Forward", "OK") == sent.segments - sent.session_segments
    assert requests("Forward", "NOT_FOUND") == sent.errors / 2
    assert requests("OpenSession", "OK") == sent.sessions
    assert requests("CloseSession", "OK") == sent.sessions
    assert prom.value(f'sum(hvlm_requests_total{{{job},code!="OK"}})') == sent.errors
    assert prom.value(
        f'hvlm_request_duration_seconds_count{{{job},rpc="StreamSegments",stack="small"}}'
    ) == sent.stream_ok

    assert prom.value(f"hvlm_sessions_created_total{{{job}}}") == sent.sessions
    assert prom.value(f"hvlm_sessions_closed_total{{{job}}}") == sent.sessions
    for gauge in ("hvlm_sessions_active", "hvlm_session_memory_bytes", "hvlm_active_streams",
                  "hvlm_queued_requests"):
        assert prom.value(f"{gauge}{{{job}}}") == 0, gauge
    for counter in ("expired", "evicted", "rejected"):
        assert prom.value(f"hvlm_sessions_{counter}_total{{{job}}}") == 0, counter
    assert prom.value(f"hvlm_session_memory_limit_bytes{{{job}}}") == 4 << 30

    def stage(name):
        return prom.value(f'hvlm_stage_duration_seconds_count{{{job},stage="{name}"}}')

    assert stage("compute") == stage("queue") == stage("encode") == sent.segments
    assert stage("memory_update") == sent.session_segments  # session segments only
    assert prom.value(f"hvlm_batch_size_count{{{job}}}") == sent.segments
    assert prom.value(f"hvlm_batch_size_sum{{{job}}}") == sent.segments
    assert prom.value(f"hvlm_memory_bank_length_tokens_count{{{job}}}") == sent.session_segments
    assert prom.value(f"hvlm_memory_bank_length_tokens_sum{{{job}}}") == sent.bank_length_sum

    build = prom.query(f"hvlm_build_info{{{job}}}")
    assert len(build) == 1 and build[0]["value"][1] == "1", build
    labels = build[0]["metric"]
    assert labels["device"] == "cpu" and labels["version"] and labels["libtorch_version"], labels
    assert prom.value(f"process_resident_memory_bytes{{{job}}}") > 0
    assert prom.value(f"process_cpu_seconds_total{{{job}}}") > 0
    assert prom.value(f"process_open_fds{{{job}}}") > 0

    for expr in (
            f"histogram_quantile(0.9, sum by (le) (hvlm_request_duration_seconds_bucket{{{job}}}))",
            "histogram_quantile(0.5, sum by (le) (rate(hvlm_request_duration_seconds_bucket"
            f'{{{job},rpc="StreamSegments"}}[1m])))'):
        quantile = prom.value(expr)
        assert math.isfinite(quantile) and 0 < quantile < 60, (expr, quantile)


def _panels(dashboard: dict) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _runnable(expr: str) -> str:
    """A panel's expression with Grafana's variables replaced: every stack, a 5 s rate
    window."""
    expr = expr.replace("${stack}", ".*").replace("$stack", ".*")
    expr = expr.replace("${__rate_interval}", "5s").replace("$__rate_interval", "5s")
    assert "$" not in expr, f"unreplaced variable in {expr}"
    return expr


# Series registered only on a GPU server (docs/observability.md).
GPU_ONLY = {"hvlm_device_memory_bytes"}


def test_dashboard_queries_run_against_prometheus(monitored):
    server, prom, _ = monitored
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 40
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    stack = variables["stack"]
    assert stack["type"] == "query"
    assert stack["query"]["query"] == "label_values(hvlm_segments_total, stack)"
    assert stack["datasource"]["uid"] == "${datasource}"
    # "All" must also match series whose stack label is empty (calls without a stack).
    assert stack["includeAll"] and stack["allValue"] == ".*"
    # What that variable lists, asked the way Grafana asks.
    answer = prom.api("label/stack/values", **{"match[]": "hvlm_segments_total"})
    assert json.loads(answer.body)["data"] == ["small"]

    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    titles = " | ".join(p["title"] for p in panels).lower()
    for word in ("segments/s", "tokens/s", "request rate", "error ratio", "latency",
                 "stage", "queued", "streams", "sessions active", "session lifecycle",
                 "memory vs limit", "bank length", "batch size", "device memory", "cpu",
                 "memory", "build info"):
        assert word in titles, f"no panel about {word!r}: {titles}"

    builds = prom.query("hvlm_build_info")
    assert builds and all(b["metric"]["device"] == "cpu" for b in builds)
    exposed = scrape(server).names()
    checked = 0
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            where = f"panel {panel['title']!r} target {target['refId']}"
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}", where
            expr = _runnable(target["expr"])
            names = set(re.findall(r"\b(?:hvlm|process)_[a-zA-Z0-9_]*", expr))
            assert names, f"{where}: no hvlm_ or process_ series in {expr}"
            unknown = names - exposed - GPU_ONLY
            assert not unknown, f"{where}: the server exposes no {sorted(unknown)}"
            result = prom.query(expr)  # asserts Prometheus accepted it
            if not names & GPU_ONLY:  # a CPU server has no device memory to show
                assert result, f"{where}: no series for {expr}"
            checked += 1
    assert checked >= 20
