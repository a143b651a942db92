"""Graceful shutdown: SIGTERM or SIGINT ends hvlm-server with exit status 0; streams in flight
keep being served during shutdown_grace_seconds and then end with an error status."""

import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from e2e_support import make_config, rng_features
from hierarchicalvlm.client import Client, ClientError

GRACE = 1.0


class EndlessStream(threading.Thread):
    """Streams the same segment through a new session until the call ends."""

    def __init__(self, address, session_id, segment):
        super().__init__(daemon=True)
        self.address, self.session_id, self.segment = address, session_id, segment
        self.sequences, self.outputs_ok, self.error = [], True, None

    def run(self):
        def segments():
            while True:
                yield self.segment

        try:
            with Client(self.address, timeout=60) as client:
                client.open_session("small", self.session_id)
                for sequence, output, _ in client.stream(self.session_id, segments(),
                                                         max_in_flight=1):
                    self.sequences.append(sequence)
                    self.outputs_ok &= output.shape == self.segment.shape and bool(
                        np.isfinite(output).all())
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_stream_exits_0_after_the_grace(start_server, signum):
    server = start_server(make_config(shutdown_grace_seconds=GRACE), name="streaming")
    streams = [EndlessStream(server.address, f"long-{k}", rng_features(k, 16, 64))
               for k in range(2)]
    for s in streams:
        s.start()
    deadline = time.monotonic() + 30
    while min(len(s.sequences) for s in streams) < 5:
        assert time.monotonic() < deadline, "the streams did not get going"
        assert all(s.is_alive() for s in streams), [repr(s.error) for s in streams]
        time.sleep(0.01)

    at_signal = [len(s.sequences) for s in streams]
    signalled = time.monotonic()
    server.send_signal(signum)
    # New calls are refused from the signal on (the streams in flight go on being served).
    with Client(server.address, timeout=5) as client:
        while True:
            try:
                client.list_stacks()
            except ClientError as err:  # gRPC cancels calls that race with the shutdown
                assert err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err
                break
            assert time.monotonic() - signalled < 5, "new calls still served after 5 s"
            time.sleep(0.02)

    rc = server.stop(signum, timeout=GRACE + 14)
    elapsed = time.monotonic() - signalled
    assert rc == 0
    assert elapsed <= GRACE + 5, f"exited {elapsed:.1f} s after the signal"
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    assert f"received {name}" in server.stderr_text()

    for s in streams:
        s.join(15)
        assert not s.is_alive(), "the client's stream did not end"
        assert s.sequences == list(range(len(s.sequences)))  # in order, none lost
        assert len(s.sequences) > at_signal[streams.index(s)], "not served during the grace"
        assert s.outputs_ok
        assert isinstance(s.error, ClientError), repr(s.error)
        assert s.error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), (
            s.error.code, s.error.details)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_server_exits_0_at_once(start_server, signum):
    """Nothing in flight: no need to wait out the (long) grace."""
    server = start_server(make_config(shutdown_grace_seconds=30), name="idle")
    with Client(server.address, timeout=10) as client:
        client.open_session("small", "left-open")
        client.forward(rng_features(1, 8, 64), session_id="left-open")
    start = time.monotonic()
    assert server.stop(signum) == 0
    assert time.monotonic() - start < 5
    assert "stopped" in server.stderr_text()


def test_the_process_keeps_its_name_for_pkill(server):
    # The server re-executes itself once (OMP_WAIT_POLICY=PASSIVE); the name must survive.
    _, process, _ = server
    assert Path(f"/proc/{process.pid}/comm").read_text().strip() == "hvlm-server"
