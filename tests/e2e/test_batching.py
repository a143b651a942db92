"""Cross-session batching (config `batching:`): concurrent sessions' segments run as one
forward pass and every session still gets exactly what it gets alone, across segments (memory
banks and mamba states gathered in and scattered back), in the order it sent them."""

import threading
import urllib.request

import numpy as np
import pytest

from e2e_support import make_config, rng_features, small_stack
from hierarchicalvlm.client import Client

SESSIONS = 6
SEGMENTS = 5
DIM = 64


def features(session: int, segment: int) -> np.ndarray:
    # Sessions 0..2 send [T, D], 3..5 send [2, T, D] (two batch rows): both kinds batch.
    if session < 3:
        return rng_features(100 * session + segment, 16, DIM)
    return rng_features(100 * session + segment, 2, 16, DIM)


def run_sessions(address: str) -> dict[int, list[np.ndarray]]:
    """SESSIONS concurrent streams, each SEGMENTS segments; the outputs by session."""
    outputs: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(SESSIONS)

    def one(session: int) -> None:
        try:
            with Client(address, timeout=60) as client:
                sid = client.open_session("small", session_id=f"s{session}").session_id
                start.wait()
                outs = [out for _, out, _ in client.stream(
                    sid, (features(session, k) for k in range(SEGMENTS)))]
                outputs[session] = outs
                client.close_session(sid)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=one, args=(s,)) for s in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return outputs


def scrape_value(metrics_address: str, name: str) -> float:
    body = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_batched_sessions_get_their_unbatched_results(start_server):
    alone = start_server(make_config(stacks={"small": small_stack()}), name="alone")
    batched = start_server(make_config(stacks={"small": small_stack()}, workers=2,
                                       batching={"enabled": True, "max_batch_size": 4,
                                                 "max_queue_delay_ms": 50}),
                           name="batched")
    want = run_sessions(alone.address)
    got = run_sessions(batched.address)
    for session in range(SESSIONS):
        assert len(got[session]) == SEGMENTS
        for k in range(SEGMENTS):
            np.testing.assert_allclose(got[session][k], want[session][k], rtol=1e-4, atol=1e-5,
                                       err_msg=f"session {session} segment {k}")
    # Segments really were batched: more segments than forward passes, none over the cap.
    metrics = batched.ready_file.read_text().splitlines()[1]
    passes = scrape_value(metrics, "hvlm_batch_size_count")
    segments = scrape_value(metrics, "hvlm_batch_size_sum")
    assert segments == SESSIONS * SEGMENTS
    assert passes < segments, (passes, segments)
    assert scrape_value(metrics, 'hvlm_batch_size_bucket{stack="small",le="4"}') == passes


@pytest.mark.parametrize("bad, message", [
    ({"max_batch_size": 0}, "batching.max_batch_size"),
    ({"max_queue_delay_ms": -1}, "batching.max_queue_delay_ms"),
    ({"enabled": "sometimes"}, "batching.enabled"),
    ({"max_batch": 4}, "batching.max_batch: unknown key"),
])
def test_bad_batching_config_names_the_key(tmp_path, bad, message):
    from e2e_support import run_server_once, write_config
    path = write_config(tmp_path / "bad.yaml", make_config(batching=bad))
    outcome = run_server_once(path)
    assert outcome.returncode == 2, outcome.stderr
    assert message in outcome.stderr


def test_a_failing_segment_fails_alone(start_server):
    """A session closed while its segment waits for company fails with ABORTED; the segments
    batched with it are answered as if alone."""
    import time
    from hierarchicalvlm.client import ClientError
    alone = start_server(make_config(stacks={"small": small_stack()}), name="alone")
    with Client(alone.address, timeout=60) as client:
        want = {}
        for session in (0, 2):
            sid = client.open_session("small").session_id
            want[session] = next(iter(client.stream(sid, [features(session, 0)])))[1]
    batched = start_server(make_config(stacks={"small": small_stack()}, workers=3,
                                       batching={"enabled": True, "max_batch_size": 8,
                                                 "max_queue_delay_ms": 1500}),
                           name="batched")
    results: dict[int, object] = {}

    def one(session: int) -> None:
        with Client(batched.address, timeout=60) as client:
            try:
                results[session] = next(iter(client.stream(f"s{session}", [features(session, 0)])))[1]
            except ClientError as err:
                results[session] = err

    with Client(batched.address, timeout=60) as client:
        for session in range(3):
            client.open_session("small", session_id=f"s{session}")
        threads = [threading.Thread(target=one, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # all three wait in the batcher for company (1.5 s)
        client.close_session("s1")
        for t in threads:
            t.join(60)
        for session in (0, 2):
            np.testing.assert_allclose(results[session], want[session], rtol=1e-4, atol=1e-5)
            assert client.get_session(f"s{session}").segments_seen == 1
    assert isinstance(results[1], ClientError), results[1]
    assert results[1].code.name in ("ABORTED", "NOT_FOUND"), results[1]


def test_a_segment_whose_caller_gave_up_does_not_run(start_server):
    """A segment still waiting for its batch when its deadline passes is dropped: its session
    does not advance, and the next stream starts again at sequence 0."""
    import time
    from hierarchicalvlm.client import ClientError
    server = start_server(make_config(stacks={"small": small_stack()},
                                      batching={"enabled": True, "max_batch_size": 8,
                                                "max_queue_delay_ms": 1500}))
    with Client(server.address, timeout=0.4) as impatient:
        impatient.open_session("small", session_id="gone")
        with pytest.raises(ClientError) as err:
            list(impatient.stream("gone", [features(0, 0)]))
        assert err.value.code.name == "DEADLINE_EXCEEDED"
    time.sleep(1.6)  # the batch it was waiting for has formed by now
    with Client(server.address, timeout=30) as client:
        assert client.get_session("gone").segments_seen == 0
        sequence, out, _ = next(iter(client.stream("gone", [features(0, 0)])))
        assert sequence == 0 and out.shape == (16, DIM)
