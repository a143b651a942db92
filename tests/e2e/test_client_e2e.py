"""The Python client against a real hvlm-server: ListStacks reports the configured stacks,
StreamSegments carries session state, and a session's first segment equals a stateless
Forward."""

import json
import time

import grpc
import numpy as np
import pytest

from e2e_support import (REPO, SMALL_MEMORY, SMALL_SEED, SMALL_SPEC, SMALL_TYPES, make_config,
                         rng_features, small_stack, wait_detached)
from hierarchicalvlm.client import Client, ClientError, pb

# A second stack: two cross_memory blocks, the second with its own memory settings.
PAIR_SPEC = {
    "dim": 32,
    "blocks": [
        {"type": "cross_memory", "num_heads": 2},
        {"type": "performer", "num_heads": 2, "num_random_features": 16},
        {"type": "cross_memory", "num_heads": 4},
    ],
}


@pytest.fixture
def two_stack_server(start_server):
    config = make_config(stacks={
        "small": small_stack(),
        "pair": {"spec": PAIR_SPEC, "seed": 3,
                 "memory": {"policy": "fifo", "capacity": 12, "tokens_per_segment": 3},
                 "memory_blocks": {2: {"policy": "merge", "capacity": 5}}},
    })
    return start_server(config, name="two-stacks")


def test_list_stacks_reports_the_configured_stacks(two_stack_server):
    with Client(two_stack_server.address, timeout=30) as client:
        stacks = client.list_stacks()

    assert [s.name for s in stacks] == ["pair", "small"]  # sorted by name
    pair, small = stacks

    assert small.dim == 64
    assert small.weights_loaded is False
    assert small.weights_source == f"random init (seed {SMALL_SEED})"
    assert small.dtype == "float32"
    assert small.device == "cpu"
    assert [b.index for b in small.blocks] == list(range(5))
    assert [b.type for b in small.blocks] == SMALL_TYPES
    for block, spec in zip(small.blocks, SMALL_SPEC["blocks"]):
        options = json.loads(block.options_json)
        assert options["type"] == spec["type"]
        for key, value in spec.items():  # what the config said, ...
            assert options[key] == value, (block.index, key)
        assert options["mlp_ratio"] == 4.0  # ... and the defaults written out
        assert block.HasField("memory") == (spec["type"] == "cross_memory"), block.index
    memory = small.blocks[1].memory
    assert (memory.policy, memory.capacity, memory.tokens_per_segment) == (
        pb.FIFO, SMALL_MEMORY["capacity"], SMALL_MEMORY["tokens_per_segment"])

    assert pair.dim == 32
    assert pair.weights_source == "random init (seed 3)"
    assert [b.type for b in pair.blocks] == ["cross_memory", "performer", "cross_memory"]
    first, second = pair.blocks[0].memory, pair.blocks[2].memory
    assert (first.policy, first.capacity, first.tokens_per_segment) == (pb.FIFO, 12, 3)
    # memory_blocks overrides block 2 and inherits the rest from `memory`.
    assert (second.policy, second.capacity, second.tokens_per_segment) == (pb.MERGE, 5, 3)
    assert not pair.blocks[1].HasField("memory")

    assert len(small.fingerprint) == 16 and int(small.fingerprint, 16) >= 0
    assert small.fingerprint != pair.fingerprint


def test_shipped_default_config_serves(start_server):
    """configs/default.yaml as shipped (its 768-dim video stack, spec_file relative to it)."""
    server = start_server(REPO / "configs" / "default.yaml", name="default")
    with Client(server.address, timeout=60) as client:
        (stack,) = client.list_stacks()
        assert (stack.name, stack.dim, len(stack.blocks)) == ("video", 768, 5)
        assert stack.weights_source == "random init (seed 0)"
        assert sorted(b.type for b in stack.blocks) == sorted(SMALL_TYPES)
        memory = next(b.memory for b in stack.blocks if b.type == "cross_memory")
        assert (memory.policy, memory.capacity, memory.tokens_per_segment) == (pb.FIFO, 256, 16)
        video = rng_features(3, 48, 768)
        out, _ = client.stream_video("video", video, segment_frames=16)
        assert out.shape == video.shape and np.isfinite(out).all()
        np.testing.assert_array_equal(out[:16], client.forward(video[:16], stack="video"))


def test_stream_video_shapes_and_first_segment_equals_stateless_forward(server):
    frames, seg = 40, 16  # segments of 16, 16 and 8 frames
    video = rng_features(1, frames, 64)
    with Client(server.address, timeout=60) as client:
        out, latencies = client.stream_video("small", video, segment_frames=seg,
                                             session_id="video-1")
        assert out.shape == (frames, 64) and out.dtype == np.float32
        assert len(latencies) == 3
        assert np.isfinite(out).all()
        # stream_video closed the session.
        with pytest.raises(ClientError) as err:
            client.get_session("video-1")
        assert err.value.code == grpc.StatusCode.NOT_FOUND

        # Segment 0 of a session: no memory, zero mamba state, the same as a stateless Forward.
        first = client.forward(video[:seg], stack="small")
        assert first.shape == (seg, 64)
        np.testing.assert_array_equal(out[:seg], first)

        # Later segments see the session's memory bank and mamba state: they differ from
        # stateless passes of the same frames.
        second = client.forward(video[seg:2 * seg], stack="small")
        assert np.abs(out[seg:2 * seg] - second).max() > 1e-4

        # The same video in a fresh session gives the same outputs, bit for bit.
        again, _ = client.stream_video("small", video, segment_frames=seg)
        np.testing.assert_array_equal(out, again)


def test_batched_stream_matches_per_item_streams(server):
    """[B, N, D] features: B independent videos in one session."""
    video = rng_features(2, 2, 24, 64)
    with Client(server.address, timeout=60) as client:
        batched, _ = client.stream_video("small", video, segment_frames=8)
        assert batched.shape == (2, 24, 64)
        for b in range(2):
            single, _ = client.stream_video("small", video[b], segment_frames=8)
            np.testing.assert_allclose(batched[b], single, rtol=0,
                                       atol=1e-5 * np.abs(single).max())


def test_session_counters_follow_the_stream(server):
    with Client(server.address, timeout=60) as client:
        session = client.open_session("small", "counted")
        assert session.segments_seen == 0 and session.batch_size == 0
        assert [b.block_index for b in session.memory_banks] == [1]
        assert session.memory_banks[0].length == 0

        segments = [rng_features(10 + i, 16, 64) for i in range(3)]
        sequences = [seq for seq, _, _ in client.stream("counted", segments)]
        assert sequences == [0, 1, 2]

        info = wait_detached(client, "counted")
        assert info.segments_seen == 3
        assert info.batch_size == 1
        # fifo: each 16-frame segment pooled to tokens_per_segment tokens.
        assert info.memory_banks[0].length == 3 * SMALL_MEMORY["tokens_per_segment"]
        assert info.state_bytes > 0
        assert info.total_bytes >= info.state_bytes + info.memory_banks[0].bytes

        # A replayed sequence number is refused and leaves the session unchanged.
        with pytest.raises(ClientError) as err:
            client.forward(segments[0], session_id="counted", sequence=1)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "expects sequence 3" in err.value.details
        assert client.get_session("counted").segments_seen == 3
        # The right one continues the session, through Forward.
        client.forward(segments[0], session_id="counted", sequence=3)
        assert client.get_session("counted").segments_seen == 4
        client.close_session("counted")


def test_session_is_free_as_soon_as_its_stream_ends(server):
    """Rounds of: a one-segment stream, then at once GetSession and a Forward on the same
    session, for 2 s; the first round that finds the session still attached fails."""
    segment = rng_features(20, 4, 64)
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "busy")
        sequence, deadline = 0, time.monotonic() + 2
        while time.monotonic() < deadline:
            assert [s for s, _, _ in client.stream("busy", [segment], sequence)] == [sequence]
            assert not client.get_session("busy").streaming, f"after segment {sequence}"
            client.forward(segment, session_id="busy", sequence=sequence + 1)
            sequence += 2


def test_leaving_a_stream_early_leaves_only_the_segments_taken(server):
    segments = [rng_features(30 + i, 5, 64) for i in range(4)]
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "early")
        stream = client.stream("early", segments, 0, max_in_flight=1)
        assert next(stream)[0] == 0
        stream.close()
        wait_detached(client, "early")
        assert client.get_session("early").segments_seen == 1
        with pytest.raises(ValueError, match="max_in_flight"):
            next(client.stream("early", segments, 1, max_in_flight=0))
