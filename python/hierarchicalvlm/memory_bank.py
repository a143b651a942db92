"""Memory banks: the tokens a cross_memory block attends to, and the policies that fold each
new video segment into them. The twin of the C++ library's attention/memory_bank.h, with the
same semantics (docs/attention.md, "Memory banks"):

- `fifo`: pool the segment's T tokens to P = min(T, tokens_per_segment) by adaptive average
  pooling over time (output i averages rows floor(i*T/P) .. ceil((i+1)*T/P)-1, its count is
  that window's length), append them, keep the last `capacity` tokens.
- `merge` (MA-LMM's memory bank compression): append all T tokens with count 1, then while more
  than `capacity` remain, each batch item replaces its adjacent pair (j, j+1) of highest cosine
  similarity (ties: lowest j) by the count-weighted mean, with the summed count. Cosine
  similarity is a.b / max(|a| |b|, 1e-8), in float64 on the float32 tokens; each merged token
  is rounded to float32. Other dtypes merge in float32 and convert back.

A bank is a pair `(tokens [B, M, D], counts [B, M] float32)`. Updates return new tensors and
never modify their inputs; nothing records autograd history.
"""

import torch
import torch.nn.functional as F

from .attention._common import shape_string

__all__ = ["POLICIES", "COSINE_EPS", "empty_memory_bank", "update_memory_bank",
           "pooling_windows"]

POLICIES = ("fifo", "merge")
COSINE_EPS = 1e-8


def empty_memory_bank(batch, dim, dtype=torch.float32, device=None):
    """An empty bank: tokens `[batch, 0, dim]` of `dtype`, counts `[batch, 0]` float32."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if not dtype.is_floating_point:
        raise ValueError(f"memory bank dtype must be floating point, got {dtype}")
    return (torch.empty(batch, 0, dim, dtype=dtype, device=device),
            torch.empty(batch, 0, dtype=torch.float32, device=device))


def pooling_windows(t, p):
    """Lengths of adaptive average pooling's P windows over T rows."""
    return [((i + 1) * t + p - 1) // p - (i * t) // p for i in range(p)]


def _check(tokens, counts, segment, policy, capacity, tokens_per_segment):
    if policy not in POLICIES:
        raise ValueError(f'memory policy must be "fifo" or "merge", got "{policy}"')
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if tokens_per_segment < 1:
        raise ValueError(f"tokens_per_segment must be >= 1, got {tokens_per_segment}")
    if tokens.dim() != 3 or tokens.shape[0] < 1 or tokens.shape[2] < 1:
        raise ValueError(
            f"bank.tokens must be [B, M, D] with B, D >= 1, got {shape_string(tokens.shape)}")
    if not tokens.is_floating_point():
        raise ValueError(f"bank.tokens must have a floating dtype, got {tokens.dtype}")
    b, m, d = tokens.shape
    if tuple(counts.shape) != (b, m):
        raise ValueError(f"bank.counts must be [B, M] = [{b}, {m}] like bank.tokens, got "
                         f"{shape_string(counts.shape)}")
    if counts.dtype != torch.float32:
        raise ValueError(f"bank.counts must have dtype float32, got {counts.dtype}")
    if segment.dim() != 3 or segment.shape[2] != d:
        raise ValueError(
            f"segment must be [B, T, {d}] (the bank's dim), got {shape_string(segment.shape)}")
    if segment.shape[0] != b:
        raise ValueError(
            f"segment batch must match the bank's ({b}), got {shape_string(segment.shape)}")
    if segment.shape[1] < 1:
        raise ValueError(f"segment must have at least 1 token, got {shape_string(segment.shape)}")
    if segment.dtype != tokens.dtype:
        raise ValueError(f"segment dtype must match the bank's ({tokens.dtype}), got "
                         f"{segment.dtype}")
    if segment.device != tokens.device or counts.device != tokens.device:
        raise ValueError(f"segment and bank.counts must be on bank.tokens' device "
                         f"({tokens.device}), got {segment.device} and {counts.device}")
    if m > 0 and not bool(((counts > 0) & torch.isfinite(counts)).all()):
        raise ValueError("bank.counts must be positive and finite")
    if not bool(torch.isfinite(segment).all()):
        raise ValueError("segment contains non-finite values (NaN or Inf); inputs must be finite")
    if not bool(torch.isfinite(tokens).all()):
        raise ValueError(
            "bank.tokens contains non-finite values (NaN or Inf); inputs must be finite")


def _fifo(tokens, counts, segment, capacity, tokens_per_segment):
    b, t, _ = segment.shape
    p = min(t, tokens_per_segment)
    pooled = segment
    if p < t:
        by_time = segment.transpose(1, 2)
        if by_time.dtype == torch.float16 and by_time.device.type == "cpu":
            by_time = by_time.float()  # no CPU float16 adaptive pooling in torch 1.13
        pooled = F.adaptive_avg_pool1d(by_time, p).transpose(1, 2).to(segment.dtype)
    pooled_counts = torch.tensor(pooling_windows(t, p), dtype=torch.float32,
                                 device=counts.device).expand(b, p)
    tokens = torch.cat([tokens, pooled], dim=1)[:, -capacity:]
    counts = torch.cat([counts, pooled_counts], dim=1)[:, -capacity:]
    return tokens.clone(), counts.clone()


def _dot(a, b):
    return float(torch.dot(a.double(), b.double()))


def _cosine(a, b, norm_a, norm_b):
    return _dot(a, b) / max(norm_a * norm_b, COSINE_EPS)


def _merge_item(rows, counts, capacity):
    """rows: [N, D] float32, counts: N floats -> the item's merged rows and counts."""
    rows = list(rows)
    norms = [_dot(r, r) ** 0.5 for r in rows]
    sims = torch.tensor([_cosine(rows[i], rows[i + 1], norms[i], norms[i + 1])
                         for i in range(len(rows) - 1)], dtype=torch.float64)
    while len(rows) > capacity:
        j = int(torch.argmax(sims))  # the first of equal maxima: the lowest j
        cj, ck = counts[j], counts[j + 1]
        merged = ((cj * rows[j].double() + ck * rows[j + 1].double()) / (cj + ck)).float()
        rows[j:j + 2] = [merged]
        counts[j:j + 2] = [cj + ck]
        norms[j:j + 2] = [_dot(merged, merged) ** 0.5]
        # Only the pairs touching the merged token change.
        if j > 0:
            sims[j - 1] = _cosine(rows[j - 1], rows[j], norms[j - 1], norms[j])
        right = ([_cosine(rows[j], rows[j + 1], norms[j], norms[j + 1])]
                 if j + 1 < len(rows) else [])
        sims = torch.cat([sims[:j], torch.tensor(right, dtype=torch.float64), sims[j + 2:]])
    return torch.stack(rows), counts


def _merge(tokens, counts, segment, capacity):
    b, t, _ = segment.shape
    all_counts = torch.cat([counts, torch.ones(b, t, dtype=torch.float32, device=counts.device)],
                           dim=1)
    if tokens.shape[1] + t <= capacity:
        return torch.cat([tokens, segment], dim=1), all_counts
    rows = torch.cat([tokens, segment], dim=1).to("cpu", torch.float32)
    all_counts = all_counts.cpu().double()
    out_tokens, out_counts = [], []
    for i in range(b):
        item_rows, item_counts = _merge_item(rows[i], all_counts[i].tolist(), capacity)
        out_tokens.append(item_rows)
        out_counts.append(torch.tensor(item_counts, dtype=torch.float32))
    return (torch.stack(out_tokens).to(tokens.device, tokens.dtype),
            torch.stack(out_counts).to(counts.device))


def update_memory_bank(tokens, counts, segment, policy, capacity=256, tokens_per_segment=16):
    """The bank `(tokens [B, M, D], counts [B, M])` after taking in `segment [B, T, D]` by
    `policy` ("fifo" or "merge"); returns new `(tokens, counts)` with at most `capacity` tokens.
    ValueError naming the problem for bad options or mismatched inputs."""
    _check(tokens, counts, segment, policy, capacity, tokens_per_segment)
    with torch.no_grad():
        if policy == "fifo":
            return _fifo(tokens, counts, segment, capacity, tokens_per_segment)
        return _merge(tokens, counts, segment, capacity)
