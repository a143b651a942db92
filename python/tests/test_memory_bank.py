"""Memory bank policies against a naive implementation (plain Python lists, every similarity
recomputed at each merge) and hand-computed examples."""

import math
import struct

import pytest
import torch
import torch.nn.functional as F

from hierarchicalvlm.memory_bank import empty_memory_bank, update_memory_bank


def f32(x):
    """x rounded to float32, as a Python float."""
    return struct.unpack("f", struct.pack("f", x))[0]


def naive_fifo(rows, counts, segment, capacity, per_segment):
    t = len(segment)
    p = min(t, per_segment)
    for i in range(p):
        begin, end = (i * t) // p, -(-((i + 1) * t) // p)
        rows.append([sum(segment[r][e] for r in range(begin, end)) / (end - begin)
                     for e in range(len(segment[0]))])
        counts.append(float(end - begin))
    del rows[:-capacity]
    del counts[:-capacity]


def naive_cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / max(norms, 1e-8)


def naive_merge(rows, counts, segment, capacity):
    rows.extend(list(r) for r in segment)
    counts.extend([1.0] * len(segment))
    while len(rows) > capacity:
        sims = [naive_cosine(rows[j], rows[j + 1]) for j in range(len(rows) - 1)]
        j = sims.index(max(sims))
        cj, ck = counts[j], counts[j + 1]
        rows[j:j + 2] = [[f32((cj * x + ck * y) / (cj + ck)) for x, y in zip(rows[j], rows[j + 1])]]
        counts[j:j + 2] = [cj + ck]


def bank(rows, counts):
    return (torch.tensor([rows], dtype=torch.float32), torch.tensor([counts], dtype=torch.float32))


def assert_bank(got, rows, counts, atol=1e-7):
    tokens, got_counts = got
    torch.testing.assert_close(tokens, torch.tensor([rows], dtype=torch.float32), rtol=0,
                               atol=atol)
    assert got_counts.tolist() == [counts]


def test_fifo_pools_like_adaptive_avg_pool1d():
    segment = torch.randn(2, 11, 5)
    tokens, counts = update_memory_bank(*empty_memory_bank(2, 5), segment, "fifo", 64, 4)
    torch.testing.assert_close(tokens, F.adaptive_avg_pool1d(segment.transpose(1, 2), 4)
                               .transpose(1, 2))
    assert counts.tolist() == [[3.0, 4.0, 4.0, 3.0]] * 2


def test_fifo_keeps_short_segments_and_drops_oldest():
    first, second = torch.randn(2, 3, 4), torch.randn(2, 4, 4)
    tokens, counts = update_memory_bank(*empty_memory_bank(2, 4), first, "fifo", 5, 8)
    assert torch.equal(tokens, first) and torch.equal(counts, torch.ones(2, 3))
    tokens, counts = update_memory_bank(tokens, counts, second, "fifo", 5, 8)
    assert torch.equal(tokens, torch.cat([first[:, 2:], second], dim=1))


@pytest.mark.parametrize("policy", ["fifo", "merge"])
def test_successive_segments_match_naive(policy):
    b, d, capacity, per_segment = 3, 6, 8, 3
    tokens, counts = empty_memory_bank(b, d)
    naive = [([], []) for _ in range(b)]
    for t in [5, 9, 1, 12, 3, 7, 20]:
        segment = torch.randn(b, t, d)
        tokens, counts = update_memory_bank(tokens, counts, segment, policy, capacity,
                                            per_segment)
        for i, (rows, item_counts) in enumerate(naive):
            if policy == "fifo":
                naive_fifo(rows, item_counts, segment[i].tolist(), capacity, per_segment)
            else:
                naive_merge(rows, item_counts, segment[i].tolist(), capacity)
        torch.testing.assert_close(tokens, torch.tensor([rows for rows, _ in naive]),
                                   rtol=1e-6, atol=1e-6)
        assert counts.tolist() == [c for _, c in naive]


def test_merge_hand_example_weights_by_counts():
    # Cosines 0, 1, -1/sqrt(2): (0, 4) with count 3 meets (0, 2) with count 1.
    tokens, counts = bank([[2, 0], [0, 4]], [1, 3])
    segment = torch.tensor([[[0.0, 2.0], [1.0, -1.0]]])
    assert_bank(update_memory_bank(tokens, counts, segment, "merge", 3),
                [[2, 0], [0, 3.5], [1, -1]], [1, 4, 1])
    # Then cosines 0, -1/sqrt(2): (2, 0) with count 1 meets (0, 3.5) with count 4.
    assert_bank(update_memory_bank(tokens, counts, segment, "merge", 2),
                [[0.4, 2.8], [1, -1]], [5, 1])


def test_merge_ties_pick_lowest_pair_and_zero_tokens_have_similarity_zero():
    segment = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]]])
    empty = empty_memory_bank(1, 2)
    assert_bank(update_memory_bank(*empty, segment, "merge", 3),
                [[1.5, 0], [3, 0], [4, 0]], [2, 1, 1])
    assert_bank(update_memory_bank(*empty, segment, "merge", 2), [[2, 0], [4, 0]], [3, 1])
    zero = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]])
    assert_bank(update_memory_bank(*empty, zero, "merge", 2), [[1, 0], [-0.5, 0]], [1, 2])


def test_merge_treats_batch_items_independently():
    first = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    second = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.1]])
    tokens, counts = update_memory_bank(*empty_memory_bank(2, 2), torch.stack([first, second]),
                                        "merge", 3)
    assert counts.tolist() == [[2, 1, 1], [1, 1, 2]]
    for i, item in enumerate([first, second]):
        alone = update_memory_bank(*empty_memory_bank(1, 2), item[None], "merge", 3)
        assert torch.equal(alone[0], tokens[i:i + 1]) and torch.equal(alone[1], counts[i:i + 1])


@pytest.mark.parametrize("policy,capacity", [("fifo", 4), ("fifo", 20), ("merge", 4),
                                             ("merge", 20)])
def test_inputs_are_never_modified(policy, capacity):
    with torch.inference_mode():
        tokens, counts = update_memory_bank(*empty_memory_bank(2, 3), torch.randn(2, 5, 3),
                                            policy, capacity, 2)
        segment = torch.randn(2, 6, 3)
        before = [x.clone() for x in (tokens, counts, segment)]
        new_tokens, _ = update_memory_bank(tokens, counts, segment, policy, capacity, 2)
        for x, y in zip((tokens, counts, segment), before):
            assert torch.equal(x, y)
        assert new_tokens.data_ptr() not in (tokens.data_ptr(), segment.data_ptr())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("policy", ["fifo", "merge"])
def test_other_dtypes_come_back_in_their_own_dtype(dtype, policy):
    first, second = torch.randn(2, 9, 4).to(dtype), torch.randn(2, 6, 4).to(dtype)
    got = empty_memory_bank(2, 4, dtype)
    want = empty_memory_bank(2, 4)
    for segment in (first, second):
        got = update_memory_bank(*got, segment, policy, 6, 4)
        want = update_memory_bank(*want, segment.float(), policy, 6, 4)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    torch.testing.assert_close(got[0].float(), want[0], rtol=1e-2, atol=1e-2)
    assert torch.equal(got[1], want[1])


def test_long_segment_merges_into_capacity():
    tokens, counts = update_memory_bank(*empty_memory_bank(1, 64), torch.randn(1, 1024, 64),
                                        "merge", 32)
    assert tokens.shape == (1, 32, 64) and counts.sum().item() == 1024


@pytest.mark.parametrize("args,message", [
    (dict(policy="lru"), 'memory policy must be "fifo" or "merge", got "lru"'),
    (dict(capacity=0), "capacity must be >= 1, got 0"),
    (dict(tokens_per_segment=0), "tokens_per_segment must be >= 1, got 0"),
    (dict(segment=torch.randn(3, 5, 4)), r"segment batch must match the bank's \(2\)"),
    (dict(segment=torch.randn(2, 5, 3)), r"segment must be \[B, T, 4\] \(the bank's dim\)"),
    (dict(segment=torch.randn(2, 0, 4)), "segment must have at least 1 token"),
    (dict(segment=torch.randn(2, 5, 4).double()), "segment dtype must match the bank's"),
    (dict(segment=torch.full((2, 5, 4), float("nan"))), "segment contains non-finite values"),
    (dict(counts=torch.ones(2, 4)), r"bank.counts must be \[B, M\] = \[2, 3\]"),
    (dict(counts=torch.zeros(2, 3)), "bank.counts must be positive"),
    (dict(counts=torch.ones(2, 3).double()), "bank.counts must have dtype float32"),
])
def test_rejects_bad_options_and_mismatched_inputs(args, message):
    call = dict(tokens=torch.randn(2, 3, 4), counts=torch.ones(2, 3),
                segment=torch.randn(2, 5, 4), policy="merge", capacity=8, tokens_per_segment=2)
    call.update(args)
    with pytest.raises(ValueError, match=message):
        update_memory_bank(**call)
