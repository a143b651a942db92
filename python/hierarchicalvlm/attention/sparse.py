"""Sparse attention patterns (strided, local+global), cross-memory attention and the block
that hosts them. Semantics: docs/attention.md; parameter names match the C++ library."""

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (PreNormBlock, QkvAttention, check_dropout, check_heads, check_int,
                      check_number, check_tokens, masked_softmax_attention, merge_heads,
                      shape_string, split_heads)

__all__ = [
    "StridedAttention",
    "LocalGlobalAttention",
    "CrossMemoryAttention",
    "HierarchicalAttentionBlock",
    "global_positions",
]


class StridedAttention(QkvAttention):
    """Query `i` attends to key `j` iff `(i - j) mod stride == 0`.

    Positions are regrouped into `stride` residue classes (`[B, H, s, ceil(T/s), hd]`) and each
    class runs dense softmax attention; slots padding `T` up to a multiple of the stride are
    masked out as keys. No `T x T` mask is ever built.
    """

    def __init__(self, dim, num_heads, stride, dropout=0.0):
        super().__init__("StridedAttention", dim, num_heads, dropout)
        self.stride = check_int("StridedAttention", "stride", stride, minimum=1)

    def extra_repr(self):
        return f"dim={self.dim}, num_heads={self.num_heads}, stride={self.stride}"

    def _core(self, q, k, v):
        b, h, n, hd = q.shape
        s = min(self.stride, n)  # stride >= n: every class holds one token
        length = -(-n // s)
        pad = length * s - n

        def regroup(t):
            if pad:
                t = F.pad(t, (0, 0, 0, pad))
            # position c * s + r -> [B, H, r, c, hd]
            return t.reshape(b, h, length, s, hd).transpose(2, 3)

        allowed = None
        if pad:
            pos = torch.arange(length * s, device=q.device).view(length, s).t()  # [s, len]
            allowed = (pos < n).view(s, 1, length)  # key slot (r, c) is a real token
        out = masked_softmax_attention(regroup(q), regroup(k), regroup(v), allowed)
        return out.transpose(2, 3).reshape(b, h, length * s, hd)[:, :, :n]


def global_positions(n, num_global_tokens, device=None):
    """Sorted distinct global positions `floor(t * n / g)`, `t = 0..g-1` (LongTensor)."""
    g = int(num_global_tokens)
    if g <= 0 or n <= 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if g >= n:  # steps of n/g <= 1 reach every position; never loop over a huge g
        return torch.arange(n, dtype=torch.long, device=device)
    positions = sorted({(t * n) // g for t in range(g)})
    return torch.tensor(positions, dtype=torch.long, device=device)


class LocalGlobalAttention(QkvAttention):
    """Sliding window `|i - j| <= w/2` plus global tokens (docs/attention.md).

    Queries are processed in blocks of `w` (at most `T`): each block is scored against the
    `block + w` keys its windows span and against the global keys (a global key inside the
    window counts once, through the window). Global queries attend to every key and are
    computed separately. Working memory is `O(T * (w + g))`.
    """

    def __init__(self, dim, num_heads, local_window=64, num_global_tokens=4, dropout=0.0):
        super().__init__("LocalGlobalAttention", dim, num_heads, dropout)
        w = check_int("LocalGlobalAttention", "local_window", local_window, minimum=2)
        if w % 2:
            raise ValueError(f"LocalGlobalAttention: local_window must be even and >= 2, got {w}")
        self.local_window = w
        self.num_global_tokens = check_int("LocalGlobalAttention", "num_global_tokens",
                                           num_global_tokens, minimum=0)

    def extra_repr(self):
        return (f"dim={self.dim}, num_heads={self.num_heads}, local_window={self.local_window}, "
                f"num_global_tokens={self.num_global_tokens}")

    def _core(self, q, k, v, block_size=None):
        b, h, n, hd = q.shape
        w = self.local_window
        half = w // 2
        bs = max(1, min(block_size or w, n))
        nb = -(-n // bs)
        npad = nb * bs
        span = bs + w
        dev = q.device
        scale = hd ** -0.5

        # Keys padded by `half` in front: padded key index p is token p - half. The window of
        # query block j covers padded keys [j * bs, j * bs + span).
        right = npad - n + half
        k_win = F.pad(k, (0, 0, half, right)).unfold(2, span, bs)                  # [B,H,nb,hd,span]
        v_win = F.pad(v, (0, 0, half, right)).unfold(2, span, bs).transpose(3, 4)  # [B,H,nb,span,hd]
        qb = F.pad(q, (0, 0, 0, npad - n)).reshape(b, h, nb, bs, hd)
        local = torch.matmul(qb, k_win) * scale                                    # [B,H,nb,bs,span]

        qi = torch.arange(bs, device=dev).view(1, bs, 1)
        kj = torch.arange(span, device=dev).view(1, 1, span)
        start = torch.arange(nb, device=dev).view(nb, 1, 1) * bs
        key_pos = start - half + kj
        query_pos = start + qi
        # Query offset qi sees slot kj iff qi <= kj <= qi + w, i.e. |i - j| <= w/2, and the key
        # is a real token; rows of padding queries allow everything (dropped afterwards).
        allowed = ((kj >= qi) & (kj <= qi + w) & (key_pos >= 0) & (key_pos < n)) | (query_pos >= n)
        local = local.masked_fill(~allowed, float("-inf"))

        gpos = global_positions(n, self.num_global_tokens, dev)
        ng = gpos.numel()
        if ng == 0:
            out = torch.matmul(torch.softmax(local, dim=-1), v_win).reshape(b, h, npad, hd)
            return out[:, :, :n]

        kg = k.index_select(2, gpos)
        vg = v.index_select(2, gpos)
        glob = torch.matmul(qb.reshape(b, h, npad, hd), kg.transpose(-1, -2)) * scale  # [B,H,npad,ng]
        in_window = (torch.arange(npad, device=dev).view(npad, 1) - gpos.view(1, ng)).abs() <= half
        glob = glob.masked_fill(in_window, float("-inf"))
        probs = torch.softmax(torch.cat([local.reshape(b, h, npad, span), glob], dim=-1), dim=-1)
        out = torch.matmul(probs[..., :span].reshape(b, h, nb, bs, span), v_win)
        out = out.reshape(b, h, npad, hd) + torch.matmul(probs[..., span:], vg)
        out = out[:, :, :n]
        # Global queries attend to all keys.
        full = masked_softmax_attention(q.index_select(2, gpos), k, v)
        return out.index_copy(2, gpos, full)


class CrossMemoryAttention(nn.Module):
    """Queries from `local` `[B, n, D]`, keys and values from `memory` `[B or 1, m, D]`.

    An empty memory (`m = 0`) gives a zero attention term: `forward(residual=True)` and
    `fuse_with_memory` return `local`, `forward(residual=False)` returns zeros.
    """

    def __init__(self, dim, num_heads, dropout=0.0):
        super().__init__()
        self.dim, self.num_heads = check_heads("CrossMemoryAttention", dim, num_heads)
        self.head_dim = self.dim // self.num_heads
        self.dropout = check_dropout("CrossMemoryAttention", dropout)
        self.q_proj = nn.Linear(self.dim, self.dim)
        self.k_proj = nn.Linear(self.dim, self.dim)
        self.v_proj = nn.Linear(self.dim, self.dim)
        self.out_proj = nn.Linear(self.dim, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}, num_heads={self.num_heads}"

    def _check(self, local, memory):
        check_tokens(local, self.dim, "local")
        if memory is None:
            raise ValueError(f"memory must be a [B or 1, m, {self.dim}] tensor, got None")
        check_tokens(memory, self.dim, "memory", min_tokens=0)
        if memory.shape[0] not in (1, local.shape[0]):
            raise ValueError(f"memory batch must be 1 or match local's batch ({local.shape[0]}), "
                             f"got {shape_string(memory.shape)}")

    def attend(self, local, memory):
        """The attention term alone (zeros for an empty memory); inputs already checked."""
        if memory.shape[1] == 0:
            return torch.zeros_like(local)
        q = split_heads(self.q_proj(local), self.num_heads)
        k = split_heads(self.k_proj(memory), self.num_heads)
        v = split_heads(self.v_proj(memory), self.num_heads)
        if k.shape[0] != q.shape[0]:
            k = k.expand(q.shape[0], -1, -1, -1)
            v = v.expand(q.shape[0], -1, -1, -1)
        out = merge_heads(masked_softmax_attention(q, k, v))
        return self.out_proj(F.dropout(out, self.dropout, self.training))

    def forward(self, local, memory, residual=True):
        self._check(local, memory)
        if memory.shape[1] == 0:
            return local if residual else torch.zeros_like(local)
        attn = self.attend(local, memory)
        return local + attn if residual else attn

    def fuse_with_memory(self, local, memory, fusion_ratio=0.5):
        r = check_number("CrossMemoryAttention", "fusion_ratio", fusion_ratio)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"fusion_ratio must be in [0, 1], got {r}")
        self._check(local, memory)
        if memory.shape[1] == 0:
            return local
        return local * (1.0 - r) + self.attend(local, memory) * r


_HIERARCHICAL_OPTIONS = {
    "strided": {"stride": 4},
    "local_global": {"local_window": 64, "num_global_tokens": 4},
    "cross_memory": {},
}


class HierarchicalAttentionBlock(PreNormBlock):
    """Pre-norm residual block around a strided, local_global or cross_memory attention:

        x = x + dropout(attn(norm1(x)))      # cross_memory: attn(norm1(x), memory, residual=False)
        x = x + dropout(mlp(norm2(x)))

    Type options (keyword only): `stride` (strided, default 4); `local_window` (default 64) and
    `num_global_tokens` (default 4) for local_global. An option of another type is an error.
    """

    TYPES = tuple(_HIERARCHICAL_OPTIONS)

    def __init__(self, dim=768, num_heads=12, attention_type="strided", mlp_ratio=4.0,
                 dropout=0.0, **options):
        def make_attention(block):
            opts = block.options
            if attention_type == "strided":
                return StridedAttention(block.dim, num_heads, opts["stride"],
                                        dropout=block.dropout)
            if attention_type == "local_global":
                return LocalGlobalAttention(block.dim, num_heads, opts["local_window"],
                                            opts["num_global_tokens"], dropout=block.dropout)
            return CrossMemoryAttention(block.dim, num_heads, dropout=block.dropout)

        super().__init__("HierarchicalAttentionBlock", _HIERARCHICAL_OPTIONS, dim,
                         attention_type, mlp_ratio, dropout, options, make_attention)

    def forward(self, x, memory=None):
        check_tokens(x, self.dim, "x")
        normed = self.norm1(x)
        if self.attention_type == "cross_memory":
            # No memory, or an empty one, adds nothing.
            attn = None if memory is None else self.attn(normed, memory, residual=False)
        else:
            if memory is not None:
                raise ValueError(f"a {self.attention_type} block takes no memory; only "
                                 "cross_memory blocks do")
            attn = self.attn(normed)
        return self.residual(x, attn)
