"""The `limits:` of a config, enforced by a real server process: the session count (reject
or evict the least recently used), the idle TTL, and gRPC's message size limit."""

import threading
import time

import grpc
import numpy as np
import pytest

from e2e_support import make_config, rng_features
from hierarchicalvlm.client import Client, ClientError


def error_code(call, *args, **kwargs):
    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    return err.value.code


def test_max_sessions_rejects_the_third(start_server):
    server = start_server(make_config(limits={"max_sessions": 2}), name="max2")
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "one")
        client.open_session("small", "two")
        with pytest.raises(ClientError) as err:
            client.open_session("small", "three")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "session limit" in err.value.details
        # Nothing was evicted, and a closed session makes room.
        client.get_session("one")
        client.get_session("two")
        client.close_session("one")
        client.open_session("small", "three")


def test_evict_lru_drops_the_least_recently_used(start_server):
    server = start_server(make_config(limits={"max_sessions": 2, "on_full": "evict_lru"}),
                          name="lru")
    segment = rng_features(1, 8, 64)
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "older")
        client.open_session("small", "newer")
        time.sleep(0.01)
        client.forward(segment, session_id="older")  # now "newer" is the least recently used
        client.open_session("small", "third")
        assert error_code(client.get_session, "newer") == grpc.StatusCode.NOT_FOUND
        assert client.get_session("older").segments_seen == 1
        assert client.get_session("third").segments_seen == 0
        # And again: "older" (used before "third" was opened) goes next.
        client.open_session("small", "fourth")
        assert error_code(client.get_session, "older") == grpc.StatusCode.NOT_FOUND
        client.get_session("third")


def test_evict_lru_spares_a_session_with_a_stream_attached(start_server):
    server = start_server(make_config(limits={"max_sessions": 2, "on_full": "evict_lru"}),
                          name="lru-stream")
    segment = rng_features(5, 8, 64)
    release = threading.Event()

    def segments():
        yield segment
        release.wait(20)  # keeps the stream open, idle

    with Client(server.address, timeout=30) as client:
        client.open_session("small", "streamer")
        stream = client.stream("streamer", segments())
        try:
            assert next(stream)[0] == 0
            client.open_session("small", "other")  # used after "streamer"
            client.open_session("small", "third")  # evicts "other": "streamer" is in use
            assert client.get_session("streamer").streaming
            assert error_code(client.get_session, "other") == grpc.StatusCode.NOT_FOUND
        finally:
            release.set()
            assert [sequence for sequence, _, _ in stream] == []


def test_idle_sessions_expire(start_server):
    server = start_server(make_config(limits={"session_idle_ttl_seconds": 0.5}), name="ttl")
    segment = rng_features(2, 8, 64)
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "idle")
        client.open_session("small", "active")
        start = time.monotonic()
        while time.monotonic() - start < 2.0:  # "active" is used every 0.1 s
            client.forward(segment, session_id="active")
            time.sleep(0.1)
        assert error_code(client.get_session, "idle") == grpc.StatusCode.NOT_FOUND
        assert client.get_session("active").segments_seen >= 10
        assert error_code(client.forward, segment, session_id="idle") == (
            grpc.StatusCode.NOT_FOUND)
    assert "session expired session_id=idle" in server.stderr_text()


def test_max_message_bytes_limits_requests(start_server):
    server = start_server(make_config(limits={"max_message_bytes": 65536}), name="small-msgs")
    with Client(server.address, timeout=30) as client:  # the client itself allows 64 MiB
        fits = rng_features(3, 128, 64)  # 32 KiB of float32
        assert client.forward(fits, stack="small").shape == (128, 64)
        too_big = rng_features(4, 512, 64)  # 128 KiB
        with pytest.raises(ClientError) as err:
            client.forward(too_big, stack="small")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The server is still fine afterwards.
        np.testing.assert_array_equal(client.forward(fits, stack="small"),
                                      client.forward(fits, stack="small"))


def test_transport_memory_quota_refuses_what_does_not_fit(start_server):
    server = start_server(make_config(limits={"max_transport_memory_bytes": 1 << 20,
                                              "max_tokens_per_segment": 100000}),
                          name="small-quota")
    with Client(server.address, timeout=30) as client:
        fits = rng_features(5, 1000, 64)  # 250 KiB
        assert client.forward(fits, stack="small").shape == (1000, 64)
        with pytest.raises(ClientError) as err:
            client.forward(rng_features(6, 16000, 64), stack="small")  # 4 MiB > the 1 MiB quota
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.forward(fits, stack="small").shape == (1000, 64)
