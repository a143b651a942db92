"""A Python client for hvlm's gRPC AttentionService (proto/hvlm/v1/attention_service.proto).

    from hierarchicalvlm.client import Client

    with Client("127.0.0.1:50051", timeout=30) as client:
        stack = client.list_stacks()[0]
        out = client.forward(features, stack=stack.name)          # features: [T, D] numpy
        outputs, latencies = client.stream_video(stack.name, video, segment_frames=16)

Arrays: requests take numpy arrays of a floating dtype; `to_tensor` encodes them as
little-endian raw bytes. The wire dtype is the Client's `dtype` when given ("float32",
"float16" or "bfloat16"), else float16 for float16 arrays and float32 for everything else
(float64 is narrowed). The server answers in the request's dtype; `from_tensor` decodes
float32 and float16 to arrays of that dtype and bfloat16 to float32. bfloat16 encoding
rounds float32 to nearest even on the upper 16 bits; NaN stays NaN.

Messages: `list_stacks`, `open_session`, `get_session` and `import_session` return the
generated protobuf messages (hvlm.v1 StackInfo and SessionInfo; `pb` re-exports the
module); `stream` yields the StageTimings message of each segment.

Errors: arguments the client can check itself (non-arrays, empty arrays, non-floating
dtypes, unknown dtype names, bad segment lengths) raise ValueError naming the problem,
before anything is sent. A failed RPC raises ClientError, which keeps the status `.code`
(a grpc.StatusCode), the server's `.details` and the `.rpc` name, and has the original
grpc.RpcError as its `__cause__`. A server that cannot be reached gives code UNAVAILABLE.

Timeouts: `Client(timeout=...)` is the deadline, in seconds, of every call, including a
whole StreamSegments call; None means no deadline.

Testing against a server process: start it with `--listen 127.0.0.1:0 --ready-file PATH`,
then `Client(wait_for_ready_file(PATH, process=proc))`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from subprocess import Popen

import grpc
import numpy as np

from ._proto import pb, pb_grpc

__all__ = ["Client", "ClientError", "from_tensor", "pb", "to_tensor", "wait_for_ready_file"]

# Wire dtype name -> (hvlm.v1.DType value, little-endian numpy dtype of the raw elements).
_WIRE = {
    "float32": (pb.FLOAT32, "<f4"),
    "float16": (pb.FLOAT16, "<f2"),
    "bfloat16": (pb.BFLOAT16, "<u2"),
}
_WIRE_BY_ENUM = {enum: (name, storage) for name, (enum, storage) in _WIRE.items()}


class ClientError(Exception):
    """A failed RPC: `.code` (grpc.StatusCode), `.details` (the server's message) and `.rpc`
    (the method name, e.g. "Forward")."""

    def __init__(self, code: grpc.StatusCode, details: str, rpc: str):
        super().__init__(f"{rpc} failed: {code.name}: {details}")
        self.code = code
        self.details = details
        self.rpc = rpc

    @classmethod
    def from_rpc_error(cls, rpc: str, error: grpc.RpcError) -> ClientError:
        """Wraps the error a gRPC call raised (a grpc.Call with code() and details())."""
        return cls(error.code(), error.details() or "", rpc)


# ---------------------------------------------------------------------------------------
# Tensors


def _check_array(array: object, name: str, allow_empty: bool) -> np.ndarray:
    """Returns `array` if it is a non-scalar floating-point ndarray (non-empty unless
    `allow_empty`), else raises ValueError naming the problem."""
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} has dtype {array.dtype}; expected a floating-point array "
                         "(float16, float32 or float64)")
    if array.ndim == 0:
        raise ValueError(f"{name} is a 0-d array; a tensor needs at least one dimension")
    if array.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {array.shape}); every dimension must be "
                         "at least 1")
    return array


def _wire_name(array: np.ndarray, dtype: str | None) -> str:
    """The wire dtype for `array`: `dtype`, else float16 for float16 arrays, else float32."""
    if dtype is None:
        return "float16" if array.dtype == np.float16 else "float32"
    if dtype not in _WIRE:
        raise ValueError(f"unknown tensor dtype {dtype!r}; expected one of {', '.join(_WIRE)}")
    return dtype


def _bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of `values` taken as float32: round to nearest even;
    a NaN becomes a quiet NaN of the same sign."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    quiet_nan = (bits >> 16) | np.uint32(0x0040)
    return np.where(np.isnan(values), quiet_nan, rounded).astype("<u2")


def to_tensor(array: np.ndarray, dtype: str | None = None, *, name: str = "array",
              allow_empty: bool = False) -> pb.Tensor:
    """Encodes a floating-point array as an hvlm.v1.Tensor (row-major, little-endian).

    `dtype`: "float32", "float16" or "bfloat16"; None picks float16 for float16 arrays and
    float32 otherwise. `name` is used in error messages; `allow_empty` admits zero-size
    arrays (memory tokens may have m = 0)."""
    array = _check_array(array, name, allow_empty)
    wire = _wire_name(array, dtype)
    enum, storage = _WIRE[wire]
    if wire == "bfloat16":
        raw = _bfloat16_bits(array.astype(np.float32, copy=False))
    else:
        raw = np.ascontiguousarray(array, dtype=storage)
    return pb.Tensor(dtype=enum, shape=array.shape, raw_data=raw.tobytes())


def _dtype_label(value: int) -> str:
    """A DType enum value's name, or the number if this stub does not know it."""
    try:
        return pb.DType.Name(value)
    except ValueError:
        return str(value)


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    """Decodes an hvlm.v1.Tensor: FLOAT32 and FLOAT16 to arrays of that dtype, BFLOAT16 to
    float32. Raises ValueError for an unknown dtype, a negative dimension, or raw_data whose
    length does not match the shape."""
    if tensor.dtype not in _WIRE_BY_ENUM:
        raise ValueError(f"tensor dtype {_dtype_label(tensor.dtype)} is not supported")
    wire, storage = _WIRE_BY_ENUM[tensor.dtype]
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor shape {list(shape)} has a negative dimension")
    expected = int(np.prod(shape)) * np.dtype(storage).itemsize
    if len(tensor.raw_data) != expected:
        raise ValueError(f"tensor raw_data holds {len(tensor.raw_data)} bytes; shape "
                         f"{list(shape)} of {wire} needs {expected}")
    values = np.frombuffer(tensor.raw_data, dtype=storage).reshape(shape)
    if wire == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float16 if wire == "float16" else np.float32)


# ---------------------------------------------------------------------------------------
# Streaming


class _SegmentFeed:
    """The request iterator of one StreamSegments call.

    gRPC pulls it from its own thread. It encodes segments lazily, keeps at most `window`
    of them unanswered (None: no limit beyond gRPC's flow control), and when the segments
    iterable or an encoding fails it records the error in `.error` and ends the stream
    cleanly (raising into gRPC's thread would only cancel the call)."""

    def __init__(self, session_id: str, segments: Iterable[np.ndarray], start_sequence: int,
                 encode: Callable[[np.ndarray, str], pb.Tensor], window: int | None):
        self.error: Exception | None = None
        self._session_id = session_id
        self._segments = iter(segments)
        self._sequence = start_sequence
        self._encode = encode
        self._window = window
        self._in_flight = 0
        self._finished = False
        self._cond = threading.Condition()

    def __iter__(self) -> _SegmentFeed:
        return self

    def __next__(self) -> pb.SegmentRequest:
        self._wait_for_room()
        try:
            features = next(self._segments)
            request = pb.SegmentRequest(
                session_id=self._session_id, sequence=self._sequence,
                features=self._encode(features, f"segment {self._sequence}"))
        except StopIteration:
            raise
        except Exception as err:  # reported by Client.stream once the stream ends
            self.error = err
            raise StopIteration from None
        self._sequence += 1
        return request

    def _wait_for_room(self) -> None:
        with self._cond:
            while (self._window is not None and self._in_flight >= self._window
                   and not self._finished):
                self._cond.wait()
            if self._finished:
                raise StopIteration
            self._in_flight += 1

    def answered(self) -> None:
        """One response arrived: room for one more segment."""
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def finish(self) -> None:
        """Sends nothing more (the call ended or its consumer left)."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()


def _time_axis_segments(features: np.ndarray, segment_frames: int) -> list[np.ndarray]:
    """Splits [N, D] or [B, N, D] features along N into segments of `segment_frames`
    (the last one may be shorter)."""
    _check_array(features, "features", allow_empty=False)
    if features.ndim not in (2, 3):
        raise ValueError(f"features must be [N, D] or [B, N, D], got shape {features.shape}")
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be at least 1, got {segment_frames}")
    frames = features.shape[-2]
    return [features[..., start:start + segment_frames, :]
            for start in range(0, frames, segment_frames)]


# ---------------------------------------------------------------------------------------
# Client


def wait_for_ready_file(path: str | Path, timeout: float = 30.0,
                        process: Popen | None = None) -> str:
    """Waits until a server started with `--ready-file PATH` has written its bound gRPC
    address ("host:port", the file's first line; a second line has the metrics address) there,
    and returns it. Raises RuntimeError if `process` exits first and TimeoutError after
    `timeout` seconds."""
    path = Path(path)
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().split("\n") if path.is_file() else [""]
        address = lines[0].strip()
        if address.rpartition(":")[2].isdigit():
            return address
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before "
                               f"writing {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no address in {path} after {timeout} s")
        time.sleep(0.02)


class Client:
    """A connection to an hvlm server; a context manager that closes its channel.

    `timeout`: deadline of each call in seconds (None: none). `max_message_bytes`: largest
    message sent or received. `dtype`: wire dtype of every tensor sent ("float32",
    "float16", "bfloat16"); None picks it from each array (see to_tensor)."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout: float | None = None,
                 max_message_bytes: int = 64 << 20, *, dtype: str | None = None):
        if dtype is not None and dtype not in _WIRE:
            raise ValueError(f"unknown tensor dtype {dtype!r}; expected one of "
                             f"{', '.join(_WIRE)}")
        self.address = address
        self.timeout = timeout
        self.dtype = dtype
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ])
        self._stub = pb_grpc.AttentionServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in progress are cancelled."""
        self._channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel connects; TimeoutError after `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"no hvlm server reachable at {self.address} after "
                               f"{timeout} s") from None

    def _call(self, rpc: str, request: object) -> object:
        """Runs unary method `rpc`, turning a failure into ClientError."""
        try:
            return getattr(self._stub, rpc)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise ClientError.from_rpc_error(rpc, err) from err

    def _encode(self, array: np.ndarray, name: str, allow_empty: bool = False) -> pb.Tensor:
        return to_tensor(array, self.dtype, name=name, allow_empty=allow_empty)

    def list_stacks(self) -> list[pb.StackInfo]:
        """Every hosted stack, sorted by name."""
        return list(self._call("ListStacks", pb.ListStacksRequest()).stacks)

    def forward(self, features: np.ndarray, stack: str | None = None,
                memories: Mapping[int, np.ndarray] | None = None,
                session_id: str | None = None, sequence: int | None = None) -> np.ndarray:
        """One forward pass of [T, D] or [B, T, D] `features`: stateless through `stack`
        (with `memories`: cross_memory block index -> [m, D] or [B or 1, m, D] tokens), or
        as the next segment of session `session_id` (`sequence`, if given, must equal its
        segments_seen). Returns the output, same shape as `features`."""
        request = pb.ForwardRequest(stack=stack or "", session_id=session_id or "",
                                    features=self._encode(features, "features"))
        for index, tokens in (memories or {}).items():
            request.memories.add(block_index=index, tokens=self._encode(
                tokens, f"memories[{index}]", allow_empty=True))
        if sequence is not None:
            request.sequence = sequence
        return from_tensor(self._call("Forward", request).output)

    def open_session(self, stack: str, session_id: str | None = None) -> pb.SessionInfo:
        """Opens a session bound to `stack`, with the given id or one the server issues."""
        request = pb.OpenSessionRequest(stack=stack, session_id=session_id or "")
        return self._call("OpenSession", request).session

    def close_session(self, session_id: str) -> None:
        """Closes a session, freeing its state."""
        self._call("CloseSession", pb.CloseSessionRequest(session_id=session_id))

    def get_session(self, session_id: str) -> pb.SessionInfo:
        """A session's current counters and sizes."""
        return self._call("GetSession", pb.GetSessionRequest(session_id=session_id)).session

    def export_session(self, session_id: str) -> bytes:
        """A session's whole state, for import_session on this or another server."""
        request = pb.ExportSessionRequest(session_id=session_id)
        return self._call("ExportSession", request).state

    def import_session(self, state: bytes, session_id: str | None = None) -> pb.SessionInfo:
        """Recreates an exported session, under `session_id` or its exported id."""
        request = pb.ImportSessionRequest(state=state, session_id=session_id or "")
        return self._call("ImportSession", request).session

    def stream(self, session_id: str, segments: Iterable[np.ndarray], start_sequence: int = 0,
               max_in_flight: int | None = None
               ) -> Iterator[tuple[int, np.ndarray, pb.StageTimings]]:
        """Streams `segments` ([T, D] or [B, T, D] arrays) through session `session_id` in
        one StreamSegments call, numbering them from `start_sequence` (the session's
        segments_seen), and yields (sequence, output, timings) per segment, in order.

        Segments are pulled and encoded lazily, at most `max_in_flight` ahead of the last
        response (None: as fast as gRPC sends them). A failure of the call raises
        ClientError; a failure of `segments` or of encoding a segment ends the stream after
        the segments before it, then is raised. Leaving the generator early cancels the
        call."""
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be None or >= 1, got {max_in_flight}")
        feed = _SegmentFeed(session_id, segments, start_sequence, self._encode, max_in_flight)
        call = self._stub.StreamSegments(feed, timeout=self.timeout)
        expected = start_sequence
        try:
            for response in call:
                if response.sequence != expected:
                    raise ClientError(grpc.StatusCode.INTERNAL, f"the server answered sequence "
                                      f"{response.sequence}, expected {expected}", "StreamSegments")
                expected += 1
                yield response.sequence, from_tensor(response.output), response.timings
                # Only now may the next segment go: a caller that leaves the generator here
                # has had every segment the server processed.
                feed.answered()
        except grpc.RpcError as err:
            raise ClientError.from_rpc_error("StreamSegments", err) from err
        finally:
            feed.finish()
            call.cancel()
        if feed.error is not None:
            raise feed.error

    def stream_video(self, stack: str, features: np.ndarray, segment_frames: int,
                     session_id: str | None = None, close: bool = True,
                     max_in_flight: int | None = 1) -> tuple[np.ndarray, list[float]]:
        """Streams a whole video, [N, D] or [B, N, D] features, through a new session on
        `stack` in segments of `segment_frames` frames (the last may be shorter); closes the
        session afterwards unless `close` is False.

        Returns the outputs concatenated over time (the shape of `features`) and each
        segment's latency in seconds: from the moment gRPC takes the segment to send until
        its output has arrived. With the default `max_in_flight=1` segments go one at a
        time, so a latency is one segment's round trip; larger windows pipeline segments
        and latencies then include waiting behind earlier ones."""
        segments = _time_axis_segments(features, segment_frames)
        session = self.open_session(stack, session_id)
        try:
            outputs, latencies = self._timed_stream(session, segments, max_in_flight)
        except BaseException:
            if close:  # best effort: the stream's error is the one to report
                with contextlib.suppress(ClientError):
                    self.close_session(session.session_id)
            raise
        if close:
            self.close_session(session.session_id)
        return np.concatenate(outputs, axis=-2), latencies

    def _timed_stream(self, session: pb.SessionInfo, segments: list[np.ndarray],
                      max_in_flight: int | None) -> tuple[list[np.ndarray], list[float]]:
        """Streams `segments` through `session`; returns the outputs and the latencies."""
        sent: list[float] = []

        def timed() -> Iterator[np.ndarray]:
            for segment in segments:
                sent.append(time.perf_counter())
                yield segment

        outputs, latencies = [], []
        first = session.segments_seen
        for sequence, output, _ in self.stream(session.session_id, timed(), first,
                                               max_in_flight):
            latencies.append(time.perf_counter() - sent[sequence - first])
            outputs.append(output)
        return outputs, latencies
