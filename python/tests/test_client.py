"""hierarchicalvlm.client without an hvlm server: tensor encoding (byte layouts, bfloat16
rounding, NaN), argument checks, stub generation into a fresh cache, and the Client's RPC
plumbing against an in-process fake AttentionService (echoes features back)."""

import json
import os
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from hierarchicalvlm.client import (Client, ClientError, from_tensor, pb, to_tensor,
                                    wait_for_ready_file)
from hierarchicalvlm import _proto

PYTHON_DIR = Path(__file__).resolve().parents[1]


# --- to_tensor / from_tensor -----------------------------------------------------------

def bf16_bits(value: float) -> int:
    """The uint16 bfloat16 encoding to_tensor gives a single float32 value."""
    raw = to_tensor(np.array([value], dtype=np.float32), "bfloat16").raw_data
    return int.from_bytes(raw, "little")


def f32(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def test_float32_layout_and_round_trip():
    t = to_tensor(np.array([1.0, -2.0], dtype=np.float32))
    assert t.dtype == pb.FLOAT32 and list(t.shape) == [2]
    assert t.raw_data == b"\x00\x00\x80\x3f" + b"\x00\x00\x00\xc0"
    a = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    back = from_tensor(to_tensor(a))
    assert back.dtype == np.float32 and back.shape == (2, 3, 5)
    np.testing.assert_array_equal(back, a)


def test_float16_layout_and_round_trip():
    t = to_tensor(np.array([1.0, -2.0], dtype=np.float16))
    assert t.dtype == pb.FLOAT16 and t.raw_data == b"\x00\x3c\x00\xc0"
    a = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float16)
    back = from_tensor(to_tensor(a))
    assert back.dtype == np.float16
    np.testing.assert_array_equal(back, a)
    halved = from_tensor(to_tensor(np.array([1 / 3]), "float16"))
    assert halved.dtype == np.float16 and halved[0] == np.float16(1 / 3)


def test_bfloat16_layout_and_decodes_to_float32():
    t = to_tensor(np.array([[1.0, -2.0]], dtype=np.float32), "bfloat16")
    assert t.dtype == pb.BFLOAT16 and list(t.shape) == [1, 2]
    assert t.raw_data == b"\x80\x3f\x00\xc0"
    back = from_tensor(t)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, [[1.0, -2.0]])


def test_bfloat16_rounds_to_nearest_even():
    # bf16 neighbours of 1.0: 0x3F80 = 1, 0x3F81 = 1 + 2^-7, 0x3F82 = 1 + 2^-6.
    assert bf16_bits(1 + 2**-8) == 0x3F80              # halfway, ties to even (down)
    assert bf16_bits(1 + 3 * 2**-8) == 0x3F82          # halfway, ties to even (up)
    assert bf16_bits(1 + 2**-8 + 2**-20) == 0x3F81     # just above halfway
    assert bf16_bits(1 + 2**-8 - 2**-20) == 0x3F80     # just below halfway
    assert bf16_bits(-(1 + 2**-8 + 2**-20)) == 0xBF81  # sign symmetric
    assert bf16_bits(f32(0x7F7FFFFF)) == 0x7F80        # float32 max rounds up to inf
    assert bf16_bits(np.inf) == 0x7F80 and bf16_bits(-np.inf) == 0xFF80


@pytest.mark.parametrize("bits", [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF])
def test_bfloat16_nan_stays_nan(bits):
    value = np.array([bits], dtype=np.uint32).view(np.float32)
    encoded = int.from_bytes(to_tensor(value, "bfloat16").raw_data, "little")
    assert encoded & 0x7F80 == 0x7F80 and encoded & 0x007F  # exponent all ones, mantissa set
    assert encoded >> 15 == bits >> 31                        # sign kept
    assert np.isnan(from_tensor(to_tensor(value, "bfloat16"))[0])


def test_layout_is_row_major_little_endian_for_any_input_layout():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = a.astype("<f4").tobytes(order="C")
    assert to_tensor(np.asfortranarray(a)).raw_data == expected
    assert to_tensor(a.astype(">f4")).raw_data == expected
    assert to_tensor(a[:, ::-1][:, ::-1]).raw_data == expected


def test_float64_is_sent_as_float32():
    t = to_tensor(np.array([0.1, 2.5]))
    assert t.dtype == pb.FLOAT32
    np.testing.assert_array_equal(from_tensor(t), np.array([0.1, 2.5], dtype=np.float32))


@pytest.mark.parametrize("value, message", [
    ([1.0, 2.0], "must be a numpy.ndarray, got list"),
    (np.zeros((2, 3), dtype=np.int64), "dtype int64"),
    (np.zeros(3, dtype=bool), "dtype bool"),
    (np.zeros((0, 4), dtype=np.float32), "is empty (shape (0, 4))"),
    (np.float32(1.0), "must be a numpy.ndarray"),
    (np.array(1.0, dtype=np.float32), "0-d array"),
])
def test_to_tensor_rejects_bad_arrays(value, message):
    with pytest.raises(ValueError) as info:
        to_tensor(value, name="features")
    assert "features" in str(info.value) and message in str(info.value)


def test_to_tensor_rejects_unknown_dtype_and_allows_empty_on_request():
    with pytest.raises(ValueError, match="unknown tensor dtype 'int8'"):
        to_tensor(np.ones(2, dtype=np.float32), "int8")
    t = to_tensor(np.zeros((0, 4), dtype=np.float32), allow_empty=True)
    assert list(t.shape) == [0, 4] and t.raw_data == b""
    assert from_tensor(t).shape == (0, 4)


@pytest.mark.parametrize("tensor, message", [
    (pb.Tensor(dtype=pb.FLOAT32, shape=[2, 2], raw_data=b"\0" * 12), "holds 12 bytes"),
    (pb.Tensor(dtype=pb.DTYPE_UNSPECIFIED, shape=[1], raw_data=b"\0" * 4),
     "DTYPE_UNSPECIFIED is not supported"),
    (pb.Tensor(dtype=7, shape=[1], raw_data=b"\0" * 4), "dtype 7 is not supported"),
    (pb.Tensor(dtype=pb.BFLOAT16, shape=[-1], raw_data=b""), "negative dimension"),
])
def test_from_tensor_rejects_malformed_tensors(tensor, message):
    with pytest.raises(ValueError, match=message):
        from_tensor(tensor)


def test_client_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="unknown tensor dtype 'float64'"):
        Client(dtype="float64")


# --- stub generation -------------------------------------------------------------------

PROBE = """
import json, os
from hierarchicalvlm import _proto
r = _proto.pb.ForwardRequest(sequence=0)
print(json.dumps({"stub_dir": str(_proto.STUB_DIR), "pb": _proto.pb.__file__,
                  "stub": _proto.pb_grpc.AttentionServiceStub.__module__,
                  "presence": r.HasField("sequence"), "wire": r.SerializeToString().hex()}))
"""


def run_probe(env_overrides: dict) -> subprocess.CompletedProcess:
    """Imports hierarchicalvlm._proto in a fresh interpreter with the given environment."""
    env = {**os.environ, "PYTHONPATH": str(PYTHON_DIR), **env_overrides}
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=120)


def probe(env_overrides: dict) -> dict:
    result = run_probe(env_overrides)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_stubs_generate_into_a_fresh_cache_and_are_reused(tmp_path):
    cache = tmp_path / "cache"
    first = probe({"HVLM_PROTO_CACHE": str(cache)})
    stub_dir = Path(first["stub_dir"])
    assert stub_dir.parent == cache and len(stub_dir.name) == 16
    int(stub_dir.name, 16)
    assert Path(first["pb"]) == stub_dir / "hvlm" / "v1" / "attention_service_pb2.py"
    assert (stub_dir / "hvlm" / "v1" / "attention_service_pb2_grpc.py").is_file()
    assert first["stub"] == "hvlm.v1.attention_service_pb2_grpc"
    assert [p.name for p in cache.iterdir()] == [stub_dir.name]  # no temp dirs left
    # proto3 `optional` keeps presence: sequence 0 is sent (field 5, varint 0).
    assert first["presence"] and first["wire"] == "2800"
    mtime = (stub_dir / "hvlm" / "v1" / "attention_service_pb2.py").stat().st_mtime_ns
    assert probe({"HVLM_PROTO_CACHE": str(cache)})["stub_dir"] == str(stub_dir)
    assert (stub_dir / "hvlm" / "v1" / "attention_service_pb2.py").stat().st_mtime_ns == mtime


def test_cache_key_follows_the_proto_content(tmp_path):
    proto = tmp_path / "proto" / _proto.PROTO_FILE
    proto.parent.mkdir(parents=True)
    proto.write_bytes(_proto.proto_path().read_bytes() + b"\n// changed\n")
    cache = tmp_path / "cache"
    changed = probe({"HVLM_PROTO_CACHE": str(cache), "HVLM_PROTO_DIR": str(tmp_path / "proto")})
    original = probe({"HVLM_PROTO_CACHE": str(cache)})
    assert changed["stub_dir"] != original["stub_dir"]
    assert Path(changed["stub_dir"]).name == _proto.stub_key(proto.read_bytes())


def test_xdg_cache_home_is_the_default_root(tmp_path):
    env = {"HVLM_PROTO_CACHE": "", "XDG_CACHE_HOME": str(tmp_path)}
    assert Path(probe(env)["stub_dir"]).parent == tmp_path / "hvlm" / "proto"


def test_missing_proto_names_the_override(tmp_path):
    result = run_probe({"HVLM_PROTO_CACHE": str(tmp_path), "HVLM_PROTO_DIR": str(tmp_path)})
    assert result.returncode != 0 and "HVLM_PROTO_DIR" in result.stderr


# --- the Client against a fake server --------------------------------------------------

class FakeService(_proto.pb_grpc.AttentionServiceServicer):
    """Echoes features back; one stack "echo"; sessions count their segments."""

    def __init__(self):
        self.sessions = {}
        self.received = []

    def ListStacks(self, request, context):
        return pb.ListStacksResponse(stacks=[pb.StackInfo(name="echo", dim=4)])

    def Forward(self, request, context):
        if request.stack != "echo" and not request.session_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown stack '{request.stack}'")
        self.received.append(request)
        return pb.ForwardResponse(output=request.features)

    def OpenSession(self, request, context):
        session_id = request.session_id or f"s{len(self.sessions)}"
        self.sessions[session_id] = 0
        return pb.OpenSessionResponse(session=pb.SessionInfo(session_id=session_id,
                                                             stack=request.stack))

    def CloseSession(self, request, context):
        if self.sessions.pop(request.session_id, None) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such session")
        return pb.CloseSessionResponse()

    def StreamSegments(self, request_iterator, context):
        for request in request_iterator:
            if request.sequence != self.sessions[request.session_id]:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "bad sequence")
            self.sessions[request.session_id] += 1
            yield pb.SegmentResponse(session_id=request.session_id, sequence=request.sequence,
                                     output=request.features,
                                     timings=pb.StageTimings(compute_micros=7))


@pytest.fixture
def fake():
    service = FakeService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    _proto.pb_grpc.add_AttentionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with Client(f"127.0.0.1:{port}", timeout=30) as client:
        client.wait_ready()
        yield client, service
    server.stop(None)


def test_forward_round_trip_with_memories_and_sequence(fake):
    client, service = fake
    features = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = client.forward(features, stack="echo",
                         memories={1: np.ones((3, 4), np.float32), 2: np.zeros((0, 4))})
    np.testing.assert_array_equal(out, features)
    request = service.received[-1]
    assert [(m.block_index, list(m.tokens.shape)) for m in request.memories] == [
        (1, [3, 4]), (2, [0, 4])]
    assert not request.HasField("sequence")
    client.forward(features, session_id="s", sequence=0)
    assert service.received[-1].HasField("sequence") and service.received[-1].sequence == 0


def test_rpc_failures_raise_client_error(fake):
    client, _ = fake
    with pytest.raises(ClientError) as info:
        client.forward(np.ones((2, 4), np.float32), stack="nope")
    assert info.value.code == grpc.StatusCode.NOT_FOUND and info.value.rpc == "Forward"
    assert "unknown stack 'nope'" in str(info.value)
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_stream_yields_in_order_and_reports_a_bad_segment_after_the_good_ones(fake):
    client, service = fake
    session = client.open_session("echo")
    segments = [np.full((2, 4), i, np.float32) for i in range(3)]
    results = list(client.stream(session.session_id, segments, max_in_flight=1))
    assert [seq for seq, _, _ in results] == [0, 1, 2]
    assert all(np.all(out == seq) for seq, out, _ in results)
    assert results[0][2].compute_micros == 7
    seen = []
    with pytest.raises(ValueError, match="segment 4 has dtype int64"):
        for seq, _, _ in client.stream(session.session_id,
                                       [segments[0], np.ones((2, 4), np.int64)], 3):
            seen.append(seq)
    assert seen == [3] and service.sessions[session.session_id] == 4


def test_stream_errors_from_the_server_raise_client_error(fake):
    client, _ = fake
    session = client.open_session("echo")
    with pytest.raises(ClientError) as info:
        list(client.stream(session.session_id, [np.ones((1, 4), np.float32)], 5))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.rpc == "StreamSegments"


def test_stream_video_splits_time_and_closes_the_session(fake):
    client, service = fake
    video = np.random.default_rng(2).standard_normal((2, 10, 4)).astype(np.float32)
    outputs, latencies = client.stream_video("echo", video, segment_frames=4, session_id="v")
    np.testing.assert_array_equal(outputs, video)
    assert len(latencies) == 3 and all(t > 0 for t in latencies)
    assert "v" not in service.sessions
    with pytest.raises(ValueError, match="segment_frames must be at least 1"):
        client.stream_video("echo", video, 0)
    with pytest.raises(ValueError, match=r"\[N, D\] or \[B, N, D\]"):
        client.stream_video("echo", video[0, :, 0], 4)


def test_unreachable_server_is_unavailable():
    with Client("127.0.0.1:1", timeout=5) as client:
        with pytest.raises(ClientError) as info:
            client.list_stacks()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_wait_for_ready_file(tmp_path):
    path = tmp_path / "ready"
    writer = threading.Timer(0.1, path.write_text, args=("127.0.0.1:4321\n",))
    writer.start()
    assert wait_for_ready_file(path, timeout=10) == "127.0.0.1:4321"
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    with pytest.raises(RuntimeError, match="status 3"):
        wait_for_ready_file(tmp_path / "never", process=exited)
    with pytest.raises(TimeoutError):
        wait_for_ready_file(tmp_path / "never", timeout=0.05)


def test_leaving_a_stream_early_stops_pulling_segments(fake):
    client, _ = fake
    session = client.open_session("echo")
    pulled = []

    def endless():
        while True:
            pulled.append(len(pulled))
            yield np.ones((1, 4), np.float32)

    for seq, _, _ in client.stream(session.session_id, endless(), max_in_flight=1):
        if seq == 1:
            break
    assert len(pulled) <= 3
    assert client.list_stacks()[0].name == "echo"  # the channel still works


def test_the_client_does_not_need_torch():
    code = ("import sys, hierarchicalvlm.client; "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "from hierarchicalvlm import MambaLayer; assert 'torch' in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(PYTHON_DIR)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
