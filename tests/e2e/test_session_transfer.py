"""ExportSession on one server process, ImportSession on another: the session continues
there exactly as it would have on the first; a stack with other weights refuses it."""

import grpc
import numpy as np
import pytest

from e2e_support import make_config, rng_features, small_stack, wait_detached
from hierarchicalvlm.client import Client, ClientError


def bank_lengths(info):
    return [(b.block_index, b.length, b.bytes) for b in info.memory_banks]


def test_exported_session_continues_identically_on_another_server(start_server):
    a = start_server(make_config(), name="A")
    b = start_server(make_config(), name="B")
    first = [rng_features(40 + i, 16, 64) for i in range(3)]
    after = [rng_features(50 + i, n, 64) for i, n in enumerate([16, 9])]
    with Client(a.address, timeout=60) as ca, Client(b.address, timeout=60) as cb:
        assert ca.list_stacks()[0].fingerprint == cb.list_stacks()[0].fingerprint

        ca.open_session("small", "travel")
        assert [s for s, _, _ in ca.stream("travel", first)] == [0, 1, 2]
        info_a = wait_detached(ca, "travel")
        state = ca.export_session("travel")
        assert isinstance(state, bytes) and len(state) > info_a.total_bytes

        imported = cb.import_session(state)
        assert imported.session_id == "travel" and imported.stack == "small"
        info_b = cb.get_session("travel")
        assert info_b.segments_seen == info_a.segments_seen == 3
        assert info_b.batch_size == info_a.batch_size == 1
        assert bank_lengths(info_b) == bank_lengths(info_a)
        assert info_b.memory_banks[0].length > 0
        assert info_b.state_bytes == info_a.state_bytes > 0
        assert info_b.total_bytes == info_a.total_bytes

        # The same next segments on both servers: the same outputs.
        out_a = [out for _, out, _ in ca.stream("travel", after, start_sequence=3)]
        out_b = [out for _, out, _ in cb.stream("travel", after, start_sequence=3)]
        for k, (x, y) in enumerate(zip(out_a, out_b)):
            assert x.shape == y.shape == after[k].shape
            np.testing.assert_array_equal(x, y, err_msg=f"segment {3 + k}")  # bit for bit
        info_a, info_b = wait_detached(ca, "travel"), wait_detached(cb, "travel")
        assert info_a.segments_seen == info_b.segments_seen == 5
        assert bank_lengths(info_a) == bank_lengths(info_b)

        # The import carried state: a fresh session on B computes something else.
        cb.open_session("small", "fresh")
        fresh = [out for _, out, _ in cb.stream("fresh", after)]
        assert np.abs(fresh[0] - out_b[0]).max() > 1e-4

        # Importing again: under a new id it works (at segments_seen 3), under the same
        # id it is ALREADY_EXISTS.
        copy = cb.import_session(state, session_id="travel-copy")
        assert copy.session_id == "travel-copy" and copy.segments_seen == 3
        with pytest.raises(ClientError) as err:
            cb.import_session(state)
        assert err.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_import_into_a_stack_with_other_weights_is_refused(start_server):
    a = start_server(make_config(), name="A")
    other = start_server(make_config(stacks={"small": small_stack(seed=8)}), name="seed8")
    with Client(a.address, timeout=60) as ca, Client(other.address, timeout=60) as co:
        assert ca.list_stacks()[0].fingerprint != co.list_stacks()[0].fingerprint
        ca.open_session("small", "mover")
        ca.forward(rng_features(60, 16, 64), session_id="mover")
        state = ca.export_session("mover")
        with pytest.raises(ClientError) as err:
            co.import_session(state)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "fingerprint" in err.value.details
        with pytest.raises(ClientError) as err:
            co.get_session("mover")
        assert err.value.code == grpc.StatusCode.NOT_FOUND

        # Bytes that are not an export at all are INVALID_ARGUMENT.
        with pytest.raises(ClientError) as err:
            co.import_session(b"not a safetensors file")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
