"""No input crashes the server or alters another session: hundreds of malformed requests, made
from a fixed seed (random dtypes, shapes, byte lengths, ids, sequence numbers, memories and
import blobs), each must fail with a client-error status and leave a bystander session exactly
as it was, and the server must still serve correct results afterwards."""

import random

import grpc
import numpy as np

from e2e_support import SMALL_SPEC, rng_features
from hierarchicalvlm.client import Client, pb

DIM = SMALL_SPEC["dim"]
# Codes a malformed request may get; never INTERNAL, UNKNOWN or UNAVAILABLE (a crash).
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED}


def random_tensor(rng: random.Random) -> pb.Tensor:
    """Half garbage, half a valid [T, D] / [B, T, D] tensor with at most one defect."""
    if rng.random() < 0.5:
        return garbage_tensor(rng)
    dtype, itemsize = rng.choice([(1, 4), (2, 2), (3, 2)])
    shape = [rng.choice([1, 2]), rng.choice([1, 5, 17]), DIM][rng.choice([0, 1]):]
    n = int(np.prod(shape))
    raw = bytearray(np.random.default_rng(rng.getrandbits(32)).standard_normal(n)
                    .astype({4: "<f4", 2: "<f2"}[itemsize]).tobytes())
    defect = rng.choice(["none", "short", "long", "nan", "inf", "dim", "tokens", "zero_t"])
    if defect == "short":
        raw = raw[:-1]
    elif defect == "long":
        raw += b"\0" * itemsize
    elif defect in ("nan", "inf") and itemsize == 4:
        raw[0:4] = np.array([np.nan if defect == "nan" else np.inf], "<f4").tobytes()
    elif defect == "dim":
        shape[-1] = DIM // 2
        raw = raw[: len(raw) // 2]
    elif defect == "tokens":
        shape[-2] = 1 << 20
    elif defect == "zero_t":
        shape[-2], raw = 0, bytearray()
    return pb.Tensor(dtype=dtype, shape=shape, raw_data=bytes(raw))


def garbage_tensor(rng: random.Random) -> pb.Tensor:
    dtype = rng.choice([0, 1, 2, 3, 4, 99, -1])
    rank = rng.choice([0, 1, 2, 3, 4])
    shape = [rng.choice([-5, 0, 1, 3, DIM, DIM + 1, 1 << 31, 1 << 62]) for _ in range(rank)]
    nbytes = rng.choice([0, 3, 4 * DIM, 4 * 3 * DIM, 2 * 3 * DIM, 1000])
    raw = bytes(rng.getrandbits(8) for _ in range(nbytes))
    return pb.Tensor(dtype=dtype, shape=shape, raw_data=raw)


def random_id(rng: random.Random, real: str) -> str:
    return rng.choice(["", real, "nope", "a b", "../x", "x" * 200, "ünïcode", real + "\x00"])


def test_malformed_requests_never_crash_or_touch_another_session(server):
    rng = random.Random(1234)
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "bystander")
        list(client.stream("bystander", [rng_features(1, 6, DIM), rng_features(2, 9, DIM)]))
        before = client.export_session("bystander")
        client.open_session("small", "target")
        stub = client._stub  # raw requests: the Client would refuse most of these itself
        codes = {}
        for i in range(300):
            kind = rng.choice(["forward", "session_forward", "stream", "import"])
            try:
                if kind == "forward":
                    req = pb.ForwardRequest(stack=rng.choice(["small", "", "nope"]),
                                            features=random_tensor(rng))
                    for _ in range(rng.choice([0, 0, 1, 2])):
                        req.memories.add(block_index=rng.choice([-1, 0, 1, 2, 99]),
                                         tokens=random_tensor(rng))
                    stub.Forward(req, timeout=30)
                elif kind == "session_forward":
                    req = pb.ForwardRequest(session_id=random_id(rng, "target"),
                                            features=random_tensor(rng))
                    if rng.random() < 0.5:
                        req.sequence = rng.choice([0, 1, 5, 2 ** 64 - 1])
                    stub.Forward(req, timeout=30)
                elif kind == "stream":
                    reqs = [pb.SegmentRequest(session_id=random_id(rng, "target"),
                                              sequence=rng.choice([0, 1, 7]),
                                              features=random_tensor(rng))
                            for _ in range(rng.choice([1, 2]))]
                    list(stub.StreamSegments(iter(reqs), timeout=30))
                else:
                    blob = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 7, 8, 64, 4096])))
                    if rng.random() < 0.5 and len(blob) >= 8:  # a plausible header length
                        blob = (len(blob) - 8).to_bytes(8, "little") + blob[8:]
                    stub.ImportSession(pb.ImportSessionRequest(state=blob, session_id="imp"),
                                       timeout=30)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as e:  # noqa: PERF203
                assert e.code() in CLIENT_ERRORS, f"request {i} ({kind}): {e.code()} {e.details()}"
                codes[e.code().name] = codes.get(e.code().name, 0) + 1
        # Some random requests are valid (e.g. a 3 x DIM float32 Forward); most are not.
        assert sum(v for k, v in codes.items() if k != "OK") > 150, codes
        assert client.export_session("bystander") == before
        # The server still computes: the bystander continues and matches a fresh replay.
        out = [y for _, y, _ in client.stream("bystander", [rng_features(3, 5, DIM)], 2)]
        client.open_session("small", "replay")
        replay = [y for _, y, _ in client.stream(
            "replay", [rng_features(1, 6, DIM), rng_features(2, 9, DIM), rng_features(3, 5, DIM)])]
        np.testing.assert_array_equal(out[0], replay[2])
