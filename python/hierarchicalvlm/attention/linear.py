"""Linear-time mixers: Performer (FAVOR+) attention, the Mamba selective state space layer,
and the block that hosts them. Semantics: docs/attention.md; parameter names match the C++
library (and, for Mamba, the reference implementation)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (PreNormBlock, QkvAttention, check_dropout, check_int,
                      check_number, check_tokens, shape_string)

__all__ = [
    "PerformerAttention",
    "MambaLayer",
    "LinearAttentionBlock",
    "orthogonal_random_features",
    "performer_features",
    "KERNEL_TYPES",
]

KERNEL_TYPES = ("softmax", "relu", "elu")


def orthogonal_random_features(num_features, head_dim):
    """`[m, hd]`: blocks of `hd` orthogonal rows (transposed Q of the QR decomposition of a
    standard normal matrix), stacked and cut to `m` rows; row `r` scaled by the norm of a fresh
    standard normal vector of length `hd`."""
    blocks = []
    for _ in range(0, num_features, head_dim):
        q, r = torch.linalg.qr(torch.randn(head_dim, head_dim))
        # Fixing the signs by diag(R) makes Q uniformly (Haar) distributed; raw QR output
        # leans towards the axes.
        blocks.append((q * torch.sign(torch.diagonal(r)).unsqueeze(0)).t())
    w = torch.cat(blocks, dim=0)[:num_features]
    norms = torch.randn(num_features, head_dim).norm(dim=1, keepdim=True)
    return (w * norms).contiguous()


def performer_features(x, projection, kernel_type, is_query):
    """phi(x) for `x [..., n, hd]` and `projection [m, hd]` -> `[..., n, m]`."""
    xs = x * (x.shape[-1] ** -0.25)
    u = torch.matmul(xs, projection.t())
    if kernel_type == "relu":
        return F.relu(u) + 1e-3
    if kernel_type == "elu":
        return F.elu(u) + 1.0
    diag = 0.5 * (xs * xs).sum(dim=-1, keepdim=True)
    if is_query:
        stab = u.amax(dim=-1, keepdim=True)            # per token
    else:
        stab = u.amax(dim=(-2, -1), keepdim=True)      # per (batch, head)
    # The stabilisers cancel in the ratio; detached as they are constants of the estimator.
    stab = stab.detach()
    return (torch.exp(u - diag - stab) + 1e-4) * (projection.shape[0] ** -0.5)


class PerformerAttention(QkvAttention):
    """FAVOR+ non-causal linear attention per head:
    `out = phi(q) (phi(k)^T v) / (phi(q) . sum_j phi(k_j))`, `O(T * m)` time and memory.
    `projection_matrix [m, hd]` is a persistent buffer (saved with the weights)."""

    def __init__(self, dim, num_heads, num_random_features=256, kernel_type="softmax",
                 dropout=0.0):
        super().__init__("PerformerAttention", dim, num_heads, dropout)
        self.num_random_features = check_int("PerformerAttention", "num_random_features",
                                             num_random_features, minimum=1)
        if kernel_type not in KERNEL_TYPES:
            raise ValueError("PerformerAttention: kernel_type must be one of softmax, relu, elu, "
                             f"got {kernel_type!r}")
        self.kernel_type = kernel_type
        self.register_buffer(
            "projection_matrix",
            orthogonal_random_features(self.num_random_features, self.head_dim),
            persistent=True)

    def extra_repr(self):
        return (f"dim={self.dim}, num_heads={self.num_heads}, "
                f"num_random_features={self.num_random_features}, "
                f"kernel_type={self.kernel_type!r}")

    def _core(self, q, k, v):
        w = self.projection_matrix.to(q.dtype)
        phi_k = performer_features(k, w, self.kernel_type, is_query=False)   # [B, H, n, m]
        phi_q = performer_features(q, w, self.kernel_type, is_query=True)    # [B, H, n, m]
        kv = torch.matmul(phi_k.transpose(-1, -2), v)                        # [B, H, m, hd]
        k_sum = phi_k.sum(dim=-2).unsqueeze(-1)                              # [B, H, m, 1]
        return torch.matmul(phi_q, kv) / torch.matmul(phi_q, k_sum)


def _inverse_softplus(y):
    return y + torch.log(-torch.expm1(-y))


class MambaLayer(nn.Module):
    """Mamba selective SSM layer (docs/attention.md, reference parameter names).

    `forward(x)` runs from the zero state; `forward_stream(x, state)` takes and returns the
    per-sequence state `(conv_state [B, E, d_conv - 1], ssm_state [B, E, N])`, so that running
    segments one after another equals running their concatenation.
    """

    def __init__(self, dim, state_size=16, expand_factor=2.0, d_conv=4, dt_rank="auto",
                 dt_init="random", dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, dropout=0.0):
        super().__init__()
        owner = "MambaLayer"
        self.dim = check_int(owner, "dim", dim, minimum=1)
        self.state_size = check_int(owner, "state_size", state_size, minimum=1)
        self.expand_factor = check_number(owner, "expand_factor", expand_factor)
        if self.expand_factor <= 0:
            raise ValueError(f"{owner}: expand_factor must be positive, got {expand_factor}")
        self.inner_dim = int(self.expand_factor * self.dim)
        if self.inner_dim < 1:
            raise ValueError(f"{owner}: int(expand_factor * dim) must be >= 1, got "
                             f"{expand_factor} * {dim}")
        self.d_conv = check_int(owner, "d_conv", d_conv, minimum=1)
        if dt_rank == "auto":
            rank = 0
        elif isinstance(dt_rank, str):
            raise ValueError(f"{owner}: dt_rank must be an integer or 'auto', got {dt_rank!r}")
        else:
            rank = check_int(owner, "dt_rank", dt_rank, minimum=0)
        self.dt_rank = rank if rank > 0 else -(-self.dim // 16)
        if dt_init not in ("constant", "random"):
            raise ValueError(f"{owner}: dt_init must be 'constant' or 'random', got {dt_init!r}")
        self.dt_init = dt_init
        self.dt_min = check_number(owner, "dt_min", dt_min)
        self.dt_max = check_number(owner, "dt_max", dt_max)
        self.dt_init_floor = check_number(owner, "dt_init_floor", dt_init_floor)
        if not (0 < self.dt_min <= self.dt_max and self.dt_init_floor > 0):
            raise ValueError(f"{owner}: need 0 < dt_min <= dt_max and dt_init_floor > 0, got "
                             f"dt_min={dt_min} dt_max={dt_max} dt_init_floor={dt_init_floor}")
        self.dropout = check_dropout(owner, dropout)

        e, n, r = self.inner_dim, self.state_size, self.dt_rank
        self.in_proj = nn.Linear(self.dim, 2 * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, self.d_conv, groups=e, padding=self.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.A_log = nn.Parameter(torch.empty(e, n))
        self.D = nn.Parameter(torch.empty(e))
        self.out_proj = nn.Linear(e, self.dim, bias=False)
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self):
        """dt_proj, A_log and D initialisation (the Linear/Conv layers keep PyTorch's)."""
        with torch.no_grad():
            std = self.dt_rank ** -0.5
            if self.dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            lo, hi = math.log(self.dt_min), math.log(self.dt_max)
            dt = torch.exp(torch.rand(self.inner_dim, dtype=torch.float64) * (hi - lo) + lo)
            dt = dt.clamp(min=self.dt_init_floor)
            self.dt_proj.bias.copy_(_inverse_softplus(dt))
            a = torch.arange(1, self.state_size + 1, dtype=torch.float32)
            self.A_log.copy_(torch.log(a).expand(self.inner_dim, self.state_size))
            self.D.fill_(1.0)

    def extra_repr(self):
        return (f"dim={self.dim}, state_size={self.state_size}, inner_dim={self.inner_dim}, "
                f"d_conv={self.d_conv}, dt_rank={self.dt_rank}")

    def initial_state(self, batch, device=None, dtype=torch.float32):
        """The zero state `(conv_state [B, E, d_conv - 1], ssm_state [B, E, N])`."""
        device = device if device is not None else self.A_log.device
        return (torch.zeros(batch, self.inner_dim, self.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch, self.inner_dim, self.state_size, device=device, dtype=dtype))

    def _check_state(self, state, batch):
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError("state must be a (conv_state, ssm_state) pair, got "
                             f"{type(state).__name__}")
        conv_state, ssm_state = state
        want_conv = (batch, self.inner_dim, self.d_conv - 1)
        want_ssm = (batch, self.inner_dim, self.state_size)
        for name, t, want in (("conv_state", conv_state, want_conv),
                              ("ssm_state", ssm_state, want_ssm)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a {shape_string(want)} tensor, got "
                                 f"{type(t).__name__}")
            if tuple(t.shape) != want:
                raise ValueError(f"{name} must be {shape_string(want)}, got "
                                 f"{shape_string(t.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"{name} must be a floating point tensor, got {t.dtype}")
        return conv_state, ssm_state

    def forward(self, x):
        return self.forward_stream(x, None)[0]

    def forward_stream(self, x, state=None):
        """`x [B, T, D]`, `state` None (zeros) or `(conv_state, ssm_state)` ->
        `(y [B, T, D], (conv_state, ssm_state))`."""
        check_tokens(x, self.dim, "x")
        bsz, length, _ = x.shape
        if state is None:
            conv_state, ssm_state = self.initial_state(bsz, x.device, x.dtype)
        else:
            conv_state, ssm_state = self._check_state(state, bsz)
            conv_state = conv_state.to(x.dtype)
            ssm_state = ssm_state.to(x.dtype)
        e, n, r = self.inner_dim, self.state_size, self.dt_rank

        xz = self.in_proj(x)                                # [B, T, 2E]
        xi, z = xz[..., :e], xz[..., e:]
        # Causal depthwise conv over [previous d_conv - 1 inputs, this segment].
        seq = torch.cat([conv_state, xi.transpose(1, 2)], dim=2)  # [B, E, d_conv - 1 + T]
        conv = F.conv1d(seq, self.conv1d.weight, self.conv1d.bias, groups=e)  # [B, E, T]
        new_conv_state = seq[:, :, seq.shape[2] - (self.d_conv - 1):]
        u = F.silu(conv).transpose(1, 2)                    # [B, T, E]

        x_dbl = self.x_proj(u)                              # [B, T, R + 2N]
        dt, bmat, cmat = x_dbl[..., :r], x_dbl[..., r:r + n], x_dbl[..., r + n:]
        delta = F.softplus(self.dt_proj(dt))                # [B, T, E]
        a = -torch.exp(self.A_log.to(x.dtype))              # [E, N]
        decay = torch.exp(delta.unsqueeze(-1) * a)          # [B, T, E, N]
        drive = (delta * u).unsqueeze(-1) * bmat.unsqueeze(2)  # [B, T, E, N]
        h = ssm_state
        ys = []
        for t in range(length):
            h = decay[:, t] * h + drive[:, t]
            ys.append(torch.matmul(h, cmat[:, t].unsqueeze(-1)).squeeze(-1))  # [B, E]
        y = torch.stack(ys, dim=1) + u * self.D.to(x.dtype)
        y = y * F.silu(z)
        out = F.dropout(self.out_proj(y), self.dropout, self.training)
        return out, (new_conv_state.contiguous(), h.contiguous())


_LINEAR_OPTIONS = {
    "performer": {"num_random_features": 256, "kernel_type": "softmax"},
    "mamba": {"state_size": 16, "expand_factor": 2.0, "d_conv": 4, "dt_rank": "auto",
              "dt_init": "random", "dt_min": 1e-3, "dt_max": 0.1, "dt_init_floor": 1e-4},
}


class LinearAttentionBlock(PreNormBlock):
    """Pre-norm residual block around a Performer attention or a Mamba layer:

        x = x + dropout(attn(norm1(x)))
        x = x + dropout(mlp(norm2(x)))

    Type options (keyword only): performer `num_random_features`, `kernel_type`; mamba
    `state_size`, `expand_factor`, `d_conv`, `dt_rank`, `dt_init`, `dt_min`, `dt_max`,
    `dt_init_floor` (`num_heads` is ignored for mamba). `forward(x, state=None)` returns the
    output tensor; `forward_stream(x, state=None)` also returns the Mamba state (None for
    performer).
    """

    TYPES = tuple(_LINEAR_OPTIONS)

    def __init__(self, dim=768, attention_type="performer", num_heads=12, mlp_ratio=4.0,
                 dropout=0.0, **options):
        def make_attention(block):
            if attention_type == "performer":
                return PerformerAttention(block.dim, num_heads, dropout=block.dropout,
                                          **block.options)
            return MambaLayer(block.dim, dropout=block.dropout, **block.options)

        super().__init__("LinearAttentionBlock", _LINEAR_OPTIONS, dim, attention_type,
                         mlp_ratio, dropout, options, make_attention)

    def forward(self, x, state=None):
        return self.forward_stream(x, state)[0]

    def forward_stream(self, x, state=None):
        """-> `(y, new_state)`; `new_state` is the Mamba state, None for a performer block."""
        check_tokens(x, self.dim, "x")
        normed = self.norm1(x)
        if self.attention_type == "mamba":
            attn, new_state = self.attn.forward_stream(normed, state)
        else:
            if state is not None:
                raise ValueError("a performer block takes no recurrent state; only mamba "
                                 "blocks do")
            attn, new_state = self.attn(normed), None
        return self.residual(x, attn), new_state
