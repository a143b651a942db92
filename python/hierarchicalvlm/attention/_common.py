"""Shared pieces of the attention modules: option and shape validation, the q/k/v/out
projections of the self- and cross-attention modules, head splitting, the block MLP and a
plain masked softmax attention used by the sparse patterns (docs/attention.md)."""

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "block_options",
    "PreNormBlock",
    "shape_string",
    "check_tokens",
    "check_int",
    "check_number",
    "check_dropout",
    "check_heads",
    "QkvAttention",
    "Mlp",
    "mlp_hidden_dim",
    "split_heads",
    "merge_heads",
    "masked_softmax_attention",
]


def shape_string(shape):
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def check_tokens(x, dim, name="x", min_tokens=1, batch_one_ok=True):
    """Checks that `x` is a `[B, T, dim]` tensor with `T >= min_tokens` (ValueError if not)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a [B, T, {dim}] tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[2] != dim:
        raise ValueError(f"{name} must be [B, T, {dim}], got {shape_string(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must have a batch of at least 1, got {shape_string(x.shape)}")
    if x.shape[1] < min_tokens:
        raise ValueError(
            f"{name} must have at least {min_tokens} token(s), got {shape_string(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {x.dtype}")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(owner, name, value, minimum=None):
    """Returns `value` as int; ValueError naming it when it is not an integer >= minimum."""
    if not _is_int(value):
        raise ValueError(f"{owner}: {name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def check_number(owner, name, value):
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


def check_dropout(owner, value):
    value = check_number(owner, "dropout", value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: dropout must be in [0, 1), got {value}")
    return value


def check_heads(owner, dim, num_heads):
    dim = check_int(owner, "dim", dim, minimum=1)
    num_heads = check_int(owner, "num_heads", num_heads, minimum=1)
    if dim % num_heads != 0:
        raise ValueError(f"{owner}: num_heads ({num_heads}) must divide dim ({dim})")
    return dim, num_heads


def split_heads(x, num_heads):
    """[B, T, D] -> [B, H, T, D / H]."""
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x):
    """[B, H, T, hd] -> [B, T, H * hd]."""
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


def masked_softmax_attention(q, k, v, allowed=None):
    """softmax(q k^T / sqrt(hd), masked to `allowed`) v over the last two dims."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class QkvAttention(nn.Module):
    """Base of the four attention modules: `q_proj`, `k_proj`, `v_proj`, `out_proj`, each a
    `Linear(D, D)` with bias. Subclasses implement `_core(q, k, v)` on `[B, H, T, hd]`.
    Dropout (training only) is applied to the merged head outputs, before `out_proj`."""

    def __init__(self, owner, dim, num_heads, dropout):
        super().__init__()
        self.dim, self.num_heads = check_heads(owner, dim, num_heads)
        self.head_dim = self.dim // self.num_heads
        self.dropout = check_dropout(owner, dropout)
        self.q_proj = nn.Linear(self.dim, self.dim)
        self.k_proj = nn.Linear(self.dim, self.dim)
        self.v_proj = nn.Linear(self.dim, self.dim)
        self.out_proj = nn.Linear(self.dim, self.dim)

    def _core(self, q, k, v):  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self, heads):
        out = F.dropout(merge_heads(heads), self.dropout, self.training)
        return self.out_proj(out)

    def forward(self, x):
        check_tokens(x, self.dim, "x")
        q = split_heads(self.q_proj(x), self.num_heads)
        k = split_heads(self.k_proj(x), self.num_heads)
        v = split_heads(self.v_proj(x), self.num_heads)
        return self._finish(self._core(q, k, v))


def mlp_hidden_dim(owner, dim, mlp_ratio):
    ratio = check_number(owner, "mlp_ratio", mlp_ratio)
    if ratio <= 0:
        raise ValueError(f"{owner}: mlp_ratio must be positive, got {ratio}")
    hidden = int(dim * ratio)
    if hidden < 1:
        raise ValueError(f"{owner}: mlp_ratio * dim must be >= 1, got {ratio} * {dim}")
    return hidden


class Mlp(nn.Module):
    """`fc2(gelu(fc1(x)))` with exact (erf) GELU."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def block_options(owner, table, attention_type, options):
    """The options of a block's attention_type: its defaults from `table` overridden by
    `options`; an unknown type or an option of another type is a ValueError."""
    if attention_type not in table:
        raise ValueError(f"{owner}: attention_type must be one of {', '.join(table)}, got "
                         f"{attention_type!r}")
    known = table[attention_type]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{owner}: unknown option(s) for attention_type "
                         f"{attention_type!r}: {', '.join(unknown)}")
    return dict(known, **options)


class PreNormBlock(nn.Module):
    """What both block types share: norm1, the attention, norm2 and the MLP (registered in that
    order, as in C++), combined as x + dropout(attn), then x + dropout(mlp(norm2(x))).
    `make_attention(block)` builds the attention once block.dim, .options and .dropout are set."""

    def __init__(self, owner, table, dim, attention_type, mlp_ratio, dropout, options,
                 make_attention):
        super().__init__()
        self.options = block_options(owner, table, attention_type, options)
        self.dim = check_int(owner, "dim", dim, minimum=1)
        self.attention_type = attention_type
        self.dropout = check_dropout(owner, dropout)
        hidden = mlp_hidden_dim(owner, self.dim, mlp_ratio)
        self.norm1 = nn.LayerNorm(self.dim, eps=1e-5)
        self.attn = make_attention(self)
        self.norm2 = nn.LayerNorm(self.dim, eps=1e-5)
        self.mlp = Mlp(self.dim, hidden)

    def extra_repr(self):
        return f"dim={self.dim}, attention_type={self.attention_type!r}"

    def residual(self, x, attn):
        """x + dropout(attn) (attn None adds nothing), then the MLP half."""
        if attn is not None:
            x = x + F.dropout(attn, self.dropout, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training)
