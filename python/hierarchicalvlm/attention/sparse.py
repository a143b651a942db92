"""Sparse attention patterns: strided, local+global, cross-memory, and their block.

Semantics: docs/attention.md. Each module mirrors the C++ class of the same name in
attention/ (same options, same parameter names), so a state_dict() exported with
hierarchicalvlm.export loads into hvlm.
"""
import torch
from torch import nn

from ._common import (Mlp, SelfAttentionBase, check_dropout, check_heads, check_tokens,
                      dense_attention, merge_heads, mlp_hidden_dim, split_heads)


class StridedAttention(SelfAttentionBase):
    """Query i attends to key j iff (i - j) mod stride == 0, computed within residue classes."""

    def __init__(self, dim=768, num_heads=12, stride=4, dropout=0.0):
        super().__init__("StridedAttention", dim, num_heads, dropout)
        if stride < 1:
            raise ValueError(f"StridedAttention: stride must be >= 1, got {stride}")
        self.stride = stride

    def attention_core(self, q, k, v):
        b, h, n, hd = q.shape
        s = min(self.stride, n)
        length = -(-n // s)
        pad = length * s - n

        def regroup(t):
            t = nn.functional.pad(t, (0, 0, 0, pad)) if pad else t
            return t.reshape(b, h, length, s, hd).transpose(2, 3)  # [B, H, s, len, hd]

        allowed = None
        if pad:
            pos = torch.arange(length * s, device=q.device).view(length, s).t()
            allowed = (pos < n).view(s, 1, length)
        out = dense_attention(regroup(q), regroup(k), regroup(v), allowed)
        return out.transpose(2, 3).reshape(b, h, length * s, hd)[:, :, :n]


def global_positions(n, num_global_tokens, device=None):
    """The sorted distinct positions floor(t * n / g), t < g."""
    if num_global_tokens <= 0 or n <= 0:
        return torch.empty(0, dtype=torch.long, device=device)
    pos = torch.div(torch.arange(num_global_tokens, device=device) * n, num_global_tokens,
                    rounding_mode="floor")
    return torch.unique_consecutive(pos)


class LocalGlobalAttention(SelfAttentionBase):
    """Window |i - j| <= w/2 plus g global tokens; global tokens attend everywhere."""

    def __init__(self, dim=768, num_heads=12, local_window=64, num_global_tokens=4, dropout=0.0):
        super().__init__("LocalGlobalAttention", dim, num_heads, dropout)
        if local_window < 2 or local_window % 2:
            raise ValueError("LocalGlobalAttention: local_window must be even and >= 2, "
                             f"got {local_window}")
        if num_global_tokens < 0:
            raise ValueError("LocalGlobalAttention: num_global_tokens must be >= 0, "
                             f"got {num_global_tokens}")
        self.local_window = local_window
        self.num_global_tokens = num_global_tokens

    def attention_core(self, q, k, v, block_size=None):
        b, h, n, hd = q.shape
        w, half = self.local_window, self.local_window // 2
        bs = max(1, min(block_size or w, n))
        nb = -(-n // bs)
        npad = nb * bs
        span = bs + w
        scale = hd ** -0.5
        dev = q.device
        kp = nn.functional.pad(k, (0, 0, half, npad - n + half))
        vp = nn.functional.pad(v, (0, 0, half, npad - n + half))
        k_win = kp.unfold(2, span, bs)                  # [B, H, nb, hd, span]
        v_win = vp.unfold(2, span, bs).transpose(3, 4)  # [B, H, nb, span, hd]
        qb = nn.functional.pad(q, (0, 0, 0, npad - n)).view(b, h, nb, bs, hd)
        local = torch.matmul(qb, k_win) * scale         # [B, H, nb, bs, span]
        qi = torch.arange(bs, device=dev).view(1, bs, 1)
        kj = torch.arange(span, device=dev).view(1, 1, span)
        block0 = torch.arange(nb, device=dev).view(nb, 1, 1) * bs
        key_pos = block0 - half + kj
        query_pos = block0 + qi
        allowed = ((kj >= qi) & (kj <= qi + w) & (key_pos >= 0) & (key_pos < n)) | (query_pos >= n)
        local = local.masked_fill(~allowed, float("-inf"))
        gpos = global_positions(n, self.num_global_tokens, dev)
        ng = gpos.numel()
        if ng == 0:
            out = torch.matmul(torch.softmax(local, -1), v_win).reshape(b, h, npad, hd)
        else:
            kg, vg = k[:, :, gpos], v[:, :, gpos]
            glob = torch.matmul(qb.reshape(b, h, npad, hd), kg.transpose(-1, -2)) * scale
            dist = (torch.arange(npad, device=dev).view(npad, 1) - gpos.view(1, ng)).abs()
            glob = glob.masked_fill(dist <= half, float("-inf"))
            probs = torch.softmax(torch.cat([local.reshape(b, h, npad, span), glob], -1), -1)
            out = torch.matmul(probs[..., :span].reshape(b, h, nb, bs, span), v_win)
            out = out.reshape(b, h, npad, hd) + torch.matmul(probs[..., span:], vg)
        out = out[:, :, :n]
        if ng:
            out = out.clone()
            out[:, :, gpos] = dense_attention(q[:, :, gpos], k, v)
        return out


class CrossMemoryAttention(nn.Module):
    """Queries from the local tokens, keys and values from memory tokens of earlier segments."""

    def __init__(self, dim=768, num_heads=12, dropout=0.0):
        super().__init__()
        check_heads("CrossMemoryAttention", dim, num_heads)
        check_dropout("CrossMemoryAttention", dropout)
        self.dim, self.num_heads = dim, num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _check(self, local, memory):
        check_tokens(local, self.dim, "local")
        check_tokens(memory, self.dim, "memory", min_tokens=0)
        if memory.shape[0] not in (1, local.shape[0]):
            raise ValueError(f"memory batch must be 1 or match local's batch ({local.shape[0]}), "
                             f"got {list(memory.shape)}")

    def attend(self, local, memory):
        """The attention term alone; zeros for an empty memory."""
        if memory.shape[1] == 0:
            return torch.zeros_like(local)
        h = self.num_heads
        q = split_heads(self.q_proj(local), h)
        k = split_heads(self.k_proj(memory), h)
        v = split_heads(self.v_proj(memory), h)
        if k.shape[0] != q.shape[0]:
            k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
        return self.out_proj(self.dropout(merge_heads(dense_attention(q, k, v))))

    def forward(self, local, memory, residual=True):
        self._check(local, memory)
        if residual and memory.shape[1] == 0:
            return local
        attn = self.attend(local, memory)
        return local + attn if residual else attn

    def fuse_with_memory(self, local, memory, fusion_ratio=0.5):
        if not 0.0 <= fusion_ratio <= 1.0:
            raise ValueError(f"fusion_ratio must be in [0, 1], got {fusion_ratio}")
        self._check(local, memory)
        if memory.shape[1] == 0:
            return local
        return local * (1.0 - fusion_ratio) + self.attend(local, memory) * fusion_ratio


class HierarchicalAttentionBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    TYPES = ("strided", "local_global", "cross_memory")

    def __init__(self, dim=768, num_heads=12, attention_type="strided", stride=4,
                 local_window=64, num_global_tokens=4, mlp_ratio=4.0, dropout=0.0):
        super().__init__()
        if attention_type not in self.TYPES:
            raise ValueError("HierarchicalAttentionBlock: attention_type must be strided, "
                             f"local_global or cross_memory, got '{attention_type}'")
        check_dropout("HierarchicalAttentionBlock", dropout)
        self.dim, self.attention_type = dim, attention_type
        self.norm1 = nn.LayerNorm(dim)
        if attention_type == "strided":
            self.attn = StridedAttention(dim, num_heads, stride, dropout)
        elif attention_type == "local_global":
            self.attn = LocalGlobalAttention(dim, num_heads, local_window, num_global_tokens,
                                             dropout)
        else:
            self.attn = CrossMemoryAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden_dim(dim, mlp_ratio), dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, memory=None):
        check_tokens(x, self.dim)
        normed = self.norm1(x)
        if self.attention_type == "cross_memory":
            attn = None if memory is None else self.attn(normed, memory, residual=False)
        else:
            if memory is not None:
                raise ValueError(f"a {self.attention_type} block takes no memory; "
                                 "only cross_memory blocks do")
            attn = self.attn(normed)
        h = x if attn is None else x + self.dropout(attn)
        return h + self.mlp(self.norm2(h))
