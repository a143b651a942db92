"""Linear-time mixers: Performer (FAVOR+) attention, the Mamba layer, and their block.

Semantics: docs/attention.md. Each module mirrors the C++ class of the same name in
attention/ (same options, same parameter names and shapes).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from ._common import Mlp, SelfAttentionBase, check_dropout, check_tokens, mlp_hidden_dim

KERNELS = ("softmax", "relu", "elu")


def orthogonal_random_features(num_features, head_dim, generator=None):
    """W [m, hd]: stacked orthogonal blocks, rows scaled by chi-distributed norms."""
    blocks = []
    for _ in range(0, num_features, head_dim):
        q, _ = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=generator))
        blocks.append(q.t())
    w = torch.cat(blocks, 0)[:num_features]
    norms = torch.randn(num_features, head_dim, generator=generator).norm(dim=1, keepdim=True)
    return (w * norms).contiguous()


def performer_features(x, projection, kernel, is_query):
    """phi(x) for x [..., n, hd] and W [m, hd] -> [..., n, m]."""
    xs = x * (x.shape[-1] ** -0.25)
    u = torch.matmul(xs, projection.t())
    if kernel == "relu":
        return F.relu(u) + 1e-3
    if kernel == "elu":
        return F.elu(u) + 1.0
    diag = xs.pow(2).sum(-1, keepdim=True) * 0.5
    if is_query:
        stab = u.max(dim=-1, keepdim=True).values
    else:
        stab = u.amax(dim=(-2, -1), keepdim=True)
    return (torch.exp(u - diag - stab) + 1e-4) * (projection.shape[0] ** -0.5)


class PerformerAttention(SelfAttentionBase):
    """FAVOR+: out = phi(q) (phi(k)^T v) / (phi(q) . sum_j phi(k_j)), O(n m) per head."""

    def __init__(self, dim=768, num_heads=12, num_random_features=256, kernel_type="softmax",
                 dropout=0.0):
        super().__init__("PerformerAttention", dim, num_heads, dropout)
        if num_random_features < 1:
            raise ValueError("PerformerAttention: num_random_features must be >= 1, "
                             f"got {num_random_features}")
        if kernel_type not in KERNELS:
            raise ValueError(f"kernel_type must be one of softmax, relu, elu, got '{kernel_type}'")
        self.num_random_features, self.kernel_type = num_random_features, kernel_type
        self.register_buffer("projection_matrix",
                             orthogonal_random_features(num_random_features, dim // num_heads))

    def redraw_projection(self, generator=None):
        """Draws a fresh W (e.g. between training steps); export saves the one in use."""
        self.projection_matrix.copy_(orthogonal_random_features(
            self.num_random_features, self.dim // self.num_heads, generator))

    def attention_core(self, q, k, v):
        w = self.projection_matrix
        phi_k = performer_features(k, w, self.kernel_type, is_query=False)
        kv = torch.matmul(phi_k.transpose(-1, -2), v)
        k_sum = phi_k.sum(-2).unsqueeze(-1)
        phi_q = performer_features(q, w, self.kernel_type, is_query=True)
        return torch.matmul(phi_q, kv) / torch.matmul(phi_q, k_sum)


class MambaLayer(nn.Module):
    """Mamba-1 selective SSM with the reference implementation's parameter names."""

    def __init__(self, dim=768, state_size=16, expand_factor=2.0, d_conv=4, dt_rank="auto",
                 dt_init="random", dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, dropout=0.0):
        super().__init__()
        if dim <= 0 or state_size < 1 or d_conv < 1:
            raise ValueError(f"MambaLayer: need dim > 0, state_size >= 1, d_conv >= 1, got "
                             f"{dim}, {state_size}, {d_conv}")
        if dt_init not in ("constant", "random"):
            raise ValueError(f"MambaLayer: dt_init must be 'constant' or 'random', got '{dt_init}'")
        if not (0 < dt_min <= dt_max and dt_init_floor > 0):
            raise ValueError("MambaLayer: need 0 < dt_min <= dt_max and dt_init_floor > 0")
        check_dropout("MambaLayer", dropout)
        inner = int(expand_factor * dim)
        if inner < 1:
            raise ValueError(f"MambaLayer: expand_factor * dim must be >= 1, got {expand_factor} * {dim}")
        rank = math.ceil(dim / 16) if dt_rank in ("auto", 0, None) else int(dt_rank)
        if rank < 1:
            raise ValueError(f"MambaLayer: dt_rank must be 'auto' or >= 1, got {dt_rank}")
        self.dim, self.state_size, self.inner_dim, self.dt_rank = dim, state_size, inner, rank
        self.d_conv = d_conv
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state_size + 1, dtype=torch.float32))
                                  .repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():
            std = rank ** -0.5
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(torch.rand(inner, dtype=torch.float64)
                           * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def initial_state(self, batch, device=None):
        return (torch.zeros(batch, self.inner_dim, self.d_conv - 1, device=device),
                torch.zeros(batch, self.inner_dim, self.state_size, device=device))

    def forward(self, x):
        return self.forward_stream(x)[0]

    def forward_stream(self, x, state=None):
        """x [B, T, D] continuing from state (conv_state, ssm_state) -> (y, next_state)."""
        check_tokens(x, self.dim)
        b, t, _ = x.shape
        if state is None:
            state = self.initial_state(b, x.device)
        conv_state, ssm_state = state
        e, n, k = self.inner_dim, self.state_size, self.d_conv
        if tuple(conv_state.shape) != (b, e, k - 1) or tuple(ssm_state.shape) != (b, e, n):
            raise ValueError(f"state must be ([{b}, {e}, {k - 1}], [{b}, {e}, {n}]), got "
                             f"({list(conv_state.shape)}, {list(ssm_state.shape)})")
        xz = self.in_proj(x)
        xs, z = xz[..., :e], xz[..., e:]
        seq = torch.cat([conv_state, xs.transpose(1, 2)], dim=2)      # [B, E, k-1+T]
        u = F.silu(F.conv1d(seq, self.conv1d.weight, self.conv1d.bias, groups=e))  # [B, E, T]
        next_conv = seq[:, :, seq.shape[2] - (k - 1):]
        u = u.transpose(1, 2)                                          # [B, T, E]
        x_dbl = self.x_proj(u)
        dt, bm, cm = x_dbl.split([self.dt_rank, n, n], dim=-1)
        delta = F.softplus(self.dt_proj(dt))                           # [B, T, E]
        a = -torch.exp(self.A_log.float())                             # [E, N]
        h = ssm_state.float()
        ys = []
        for i in range(t):
            d_i = delta[:, i].unsqueeze(-1)                            # [B, E, 1]
            h = torch.exp(d_i * a) * h + d_i * bm[:, i].unsqueeze(1) * u[:, i].unsqueeze(-1)
            ys.append((h * cm[:, i].unsqueeze(1)).sum(-1))             # [B, E]
        y = torch.stack(ys, dim=1) + u * self.D
        y = y * F.silu(z)
        return self.dropout(self.out_proj(y)), (next_conv.contiguous(), h)


class LinearAttentionBlock(nn.Module):
    """Pre-norm residual block around a Performer or a Mamba layer."""

    TYPES = ("performer", "mamba")

    def __init__(self, dim=768, attention_type="performer", num_heads=12, num_random_features=256,
                 kernel_type="softmax", state_size=16, expand_factor=2.0, d_conv=4, dt_rank="auto",
                 dt_init="random", dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, mlp_ratio=4.0,
                 dropout=0.0):
        super().__init__()
        if attention_type not in self.TYPES:
            raise ValueError("LinearAttentionBlock: attention_type must be performer or mamba, "
                             f"got '{attention_type}'")
        check_dropout("LinearAttentionBlock", dropout)
        self.dim, self.attention_type = dim, attention_type
        self.norm1 = nn.LayerNorm(dim)
        if attention_type == "performer":
            self.attn = PerformerAttention(dim, num_heads, num_random_features, kernel_type, dropout)
        else:
            self.attn = MambaLayer(dim, state_size, expand_factor, d_conv, dt_rank, dt_init,
                                   dt_min, dt_max, dt_init_floor, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden_dim(dim, mlp_ratio), dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.forward_stream(x)[0]

    def forward_stream(self, x, state=None):
        """(y, next_state); next_state is None for performer blocks."""
        check_tokens(x, self.dim)
        normed = self.norm1(x)
        if self.attention_type == "mamba":
            attn, next_state = self.attn.forward_stream(normed, state)
        else:
            if state is not None:
                raise ValueError("a performer block takes no recurrent state; only mamba blocks do")
            attn, next_state = self.attn(normed), None
        h = x + self.dropout(attn)
        return h + self.mlp(self.norm2(h)), next_state
