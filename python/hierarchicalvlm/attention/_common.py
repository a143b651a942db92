"""Pieces shared by the attention modules: input checks, the q/k/v/out projections, the block
MLP, and plain masked softmax attention (docs/attention.md)."""
import torch
from torch import nn


def check_tokens(x, dim, name="x", min_tokens=1):
    """x must be a [B, T, dim] floating-point tensor with B >= 1 and T >= min_tokens."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[2] != dim:
        raise ValueError(f"{name} must be [B, T, {dim}], got {list(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < min_tokens:
        raise ValueError(f"{name} must have B >= 1 and at least {min_tokens} token(s), "
                         f"got {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")


def check_heads(module, dim, num_heads):
    if dim <= 0:
        raise ValueError(f"{module}: dim must be positive, got {dim}")
    if num_heads <= 0:
        raise ValueError(f"{module}: num_heads must be positive, got {num_heads}")
    if dim % num_heads:
        raise ValueError(f"{module}: num_heads ({num_heads}) must divide dim ({dim})")


def check_dropout(module, dropout):
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{module}: dropout must be in [0, 1), got {dropout}")


def split_heads(x, num_heads):
    """[B, T, H * hd] -> [B, H, T, hd]"""
    b, t, d = x.shape
    return x.view(b, t, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x):
    """[B, H, T, hd] -> [B, T, H * hd]"""
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


def dense_attention(q, k, v, allowed=None):
    """softmax(q k^T / sqrt(hd)) v; `allowed` (bool, broadcastable to [..., Tq, Tk]) masks keys."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class SelfAttentionBase(nn.Module):
    """q_proj, k_proj, v_proj, out_proj (Linear(dim, dim)) around an attention core."""

    def __init__(self, name, dim, num_heads, dropout):
        super().__init__()
        check_heads(name, dim, num_heads)
        check_dropout(name, dropout)
        self.dim, self.num_heads = dim, num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def attention_core(self, q, k, v):
        """q, k, v [B, H, T, hd] -> [B, H, T, hd]; defined by each mechanism."""
        raise NotImplementedError

    def forward(self, x):
        check_tokens(x, self.dim)
        h = self.num_heads
        q = split_heads(self.q_proj(x), h)
        k = split_heads(self.k_proj(x), h)
        v = split_heads(self.v_proj(x), h)
        return self.out_proj(self.dropout(merge_heads(self.attention_core(q, k, v))))


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2, dropout after the activation and after fc2."""

    def __init__(self, dim, hidden, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(self.dropout(nn.functional.gelu(self.fc1(x)))))


def mlp_hidden_dim(dim, mlp_ratio):
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
    hidden = int(dim * mlp_ratio)
    if hidden < 1:
        raise ValueError(f"mlp_ratio * dim must be >= 1, got {mlp_ratio} * {dim}")
    return hidden
