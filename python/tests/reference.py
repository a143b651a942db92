"""Slow, obviously-correct references the tests compare the efficient modules against:
dense attention with an explicit T x T mask built straight from docs/attention.md, the
quadratic Performer formula, and a step-by-step Mamba recurrence."""

import torch
import torch.nn.functional as F


def heads(x, h):
    b, t, d = x.shape
    return x.reshape(b, t, h, d // h).permute(0, 2, 1, 3)


def unheads(x):
    b, h, t, hd = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, t, h * hd)


def dense_masked(q, k, v, allowed=None):
    """softmax(q k^T / sqrt(hd)) v with an explicit [Tq, Tk] boolean mask."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ v


def strided_mask(n, stride):
    i = torch.arange(n).view(n, 1)
    j = torch.arange(n).view(1, n)
    return (i - j) % stride == 0


def global_set(n, g):
    return sorted({(t * n) // g for t in range(g)}) if g > 0 else []


def local_global_mask(n, w, g):
    gs = global_set(n, g)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            allowed[i, j] = i in gs or abs(i - j) <= w // 2 or j in gs
    return allowed


def self_attention_oracle(module, x, allowed):
    h = module.num_heads
    q, k, v = heads(module.q_proj(x), h), heads(module.k_proj(x), h), heads(module.v_proj(x), h)
    return module.out_proj(unheads(dense_masked(q, k, v, allowed)))


def cross_attention_oracle(module, local, memory):
    h = module.num_heads
    if memory.shape[0] == 1 and local.shape[0] > 1:
        memory = memory.expand(local.shape[0], -1, -1)
    q = heads(module.q_proj(local), h)
    k, v = heads(module.k_proj(memory), h), heads(module.v_proj(memory), h)
    return module.out_proj(unheads(dense_masked(q, k, v)))


def performer_phi(x, w, kernel, is_query):
    """phi from the docs, written out per token."""
    hd = x.shape[-1]
    m = w.shape[0]
    xs = x * hd ** -0.25
    u = xs @ w.t()
    if kernel == "relu":
        return torch.relu(u) + 1e-3
    if kernel == "elu":
        return F.elu(u) + 1
    sq = (xs ** 2).sum(-1, keepdim=True) / 2
    if is_query:
        s = u.max(-1, keepdim=True).values
    else:
        s = u.flatten(-2).max(-1).values[..., None, None]
    return m ** -0.5 * (torch.exp(u - sq - s) + 1e-4)


def performer_oracle(module, x):
    """Quadratic form: A = phi(q) phi(k)^T, out = A v / rowsum(A)."""
    h = module.num_heads
    q, k, v = heads(module.q_proj(x), h), heads(module.k_proj(x), h), heads(module.v_proj(x), h)
    w = module.projection_matrix
    a = performer_phi(q, w, module.kernel_type, True) @ performer_phi(k, w, module.kernel_type,
                                                                       False).transpose(-1, -2)
    out = (a @ v) / a.sum(-1, keepdim=True)
    return module.out_proj(unheads(out))


def mamba_naive(layer, x, conv_state=None, ssm_state=None):
    """Token-by-token Mamba recurrence with the conv window kept by hand."""
    b, t, _ = x.shape
    e, n, r, dc = layer.inner_dim, layer.state_size, layer.dt_rank, layer.d_conv
    window = (torch.zeros(b, e, dc - 1) if conv_state is None else conv_state.clone())
    h = torch.zeros(b, e, n) if ssm_state is None else ssm_state.clone()
    wconv = layer.conv1d.weight[:, 0, :]  # [E, d_conv]
    a = -torch.exp(layer.A_log)
    outs = []
    for step in range(t):
        xz = x[:, step] @ layer.in_proj.weight.t()
        xi, z = xz[:, :e], xz[:, e:]
        full = torch.cat([window, xi[:, :, None]], dim=2)  # [B, E, d_conv], oldest first
        conv = layer.conv1d.bias.clone().expand(b, e).clone()
        for tap in range(dc):
            conv = conv + wconv[:, tap] * full[:, :, tap]
        window = full[:, :, 1:]
        u = conv * torch.sigmoid(conv)
        xd = u @ layer.x_proj.weight.t()
        dt, bm, cm = xd[:, :r], xd[:, r:r + n], xd[:, r + n:]
        delta = F.softplus(dt @ layer.dt_proj.weight.t() + layer.dt_proj.bias)  # [B, E]
        h = torch.exp(delta[:, :, None] * a) * h + delta[:, :, None] * bm[:, None, :] * u[:, :, None]
        y = (h * cm[:, None, :]).sum(-1) + layer.D * u
        y = y * (z * torch.sigmoid(z))
        outs.append(y @ layer.out_proj.weight.t())
    return torch.stack(outs, 1), window, h


def perturb_(module, scale=0.2):
    """Moves every parameter away from its initial value (LayerNorm, D, A_log, biases...)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale * (p.abs().mean() + 0.05))
    return module
