"""Performer against the quadratic formula with explicit phi, Mamba against a step-by-step
recurrence and against itself streamed in random segments, and the linear block."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from hierarchicalvlm.attention.linear import (LinearAttentionBlock, MambaLayer,
                                              PerformerAttention)
from reference import mamba_naive, performer_oracle, perturb_

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["softmax", "relu", "elu"])
@pytest.mark.parametrize("n,m", [(37, 32), (5, 7), (1, 16), (20, 50)])
def test_performer_matches_quadratic_formula(kernel, n, m):
    attn = perturb_(PerformerAttention(dim=32, num_heads=4, num_random_features=m,
                                       kernel_type=kernel)).eval()
    x = torch.randn(2, n, 32)
    torch.testing.assert_close(attn(x), performer_oracle(attn, x), rtol=1e-4, atol=1e-5)


def test_performer_projection_matrix_is_a_persistent_buffer():
    attn = PerformerAttention(dim=32, num_heads=4, num_random_features=20)
    assert "projection_matrix" in attn.state_dict()
    assert "projection_matrix" not in dict(attn.named_parameters())
    w = attn.projection_matrix
    assert w.shape == (20, 8)
    # blocks of hd rows are orthogonal once each row's chi-distributed norm is divided out
    unit = w / w.norm(dim=1, keepdim=True)
    for start in range(0, 20, 8):
        blk = unit[start:start + 8]
        torch.testing.assert_close(blk @ blk.t(), torch.eye(blk.shape[0]), atol=1e-5, rtol=0)


def test_performer_softmax_kernel_approximates_softmax_attention():
    torch.manual_seed(0)
    attn = PerformerAttention(dim=8, num_heads=1, num_random_features=4096).eval()
    q, k, v = (0.5 * torch.randn(1, 1, 16, 8) for _ in range(3))
    exact = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
    approx = attn._core(q, k, v)
    assert (approx - exact).abs().max() < 0.1


@pytest.mark.parametrize("make,match", [
    (lambda: PerformerAttention(dim=32, num_heads=4, kernel_type="gelu"), "kernel_type"),
    (lambda: PerformerAttention(dim=32, num_heads=3), "must divide dim"),
    (lambda: PerformerAttention(dim=32, num_heads=4, num_random_features=0), "num_random_features"),
    (lambda: MambaLayer(dim=32, state_size=0), "state_size"),
    (lambda: MambaLayer(dim=32, expand_factor=0.01), "expand_factor"),
    (lambda: MambaLayer(dim=32, expand_factor=-1.0), "expand_factor"),
    (lambda: MambaLayer(dim=32, d_conv=0), "d_conv"),
    (lambda: MambaLayer(dim=32, dt_rank="big"), "dt_rank"),
    (lambda: MambaLayer(dim=32, dt_rank=-1), "dt_rank"),
    (lambda: MambaLayer(dim=32, dt_init="zeros"), "dt_init"),
    (lambda: MambaLayer(dim=32, dt_min=0.2, dt_max=0.1), "dt_min"),
    (lambda: MambaLayer(dim=32, dropout=-0.1), "dropout"),
    (lambda: LinearAttentionBlock(dim=32, attention_type="lstm"), "attention_type"),
    (lambda: LinearAttentionBlock(dim=32, attention_type="mamba", kernel_type="elu"),
     "unknown option.*kernel_type"),
])
def test_bad_options_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mamba_parameters_follow_the_table():
    layer = MambaLayer(dim=40, state_size=6, expand_factor=1.5, d_conv=3)
    e, n, r = 60, 6, 3  # ceil(40 / 16) = 3
    assert layer.dt_rank == r
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (2 * e, 40), "conv1d.weight": (e, 1, 3), "conv1d.bias": (e,),
        "x_proj.weight": (r + 2 * n, e), "dt_proj.weight": (e, r), "dt_proj.bias": (e,),
        "A_log": (e, n), "D": (e,), "out_proj.weight": (40, e)}
    torch.testing.assert_close(layer.A_log, torch.log(torch.arange(1.0, 7.0)).expand(e, n))
    assert torch.equal(layer.D, torch.ones(e))
    dt = F.softplus(layer.dt_proj.bias)
    assert (dt >= 1e-3 * 0.999).all() and (dt <= 0.1 * 1.001).all()
    assert layer.dt_proj.weight.abs().max() <= r ** -0.5
    const = MambaLayer(dim=40, dt_init="constant", dt_rank=5)
    assert torch.equal(const.dt_proj.weight, torch.full((80, 5), 5 ** -0.5))
    assert MambaLayer(dim=40, dt_rank=0).dt_rank == 3


def _state(layer, b):
    return (torch.randn(b, layer.inner_dim, layer.d_conv - 1),
            0.5 * torch.randn(b, layer.inner_dim, layer.state_size))


@pytest.mark.parametrize("d_conv", [4, 1, 2])
def test_mamba_matches_step_by_step_reference(d_conv):
    layer = perturb_(MambaLayer(dim=16, state_size=5, expand_factor=1.5, d_conv=d_conv)).eval()
    x = torch.randn(2, 11, 16)
    conv_state, ssm_state = _state(layer, 2)
    y, (c, s) = layer.forward_stream(x, (conv_state, ssm_state))
    ry, rc, rs = mamba_naive(layer, x, conv_state, ssm_state)
    torch.testing.assert_close(y, ry, **TOL)
    torch.testing.assert_close(c, rc, **TOL)
    torch.testing.assert_close(s, rs, **TOL)
    y0 = layer(x)
    torch.testing.assert_close(y0, mamba_naive(layer, x)[0], **TOL)


@pytest.mark.parametrize("trial", range(4))
def test_mamba_streaming_equals_full_sequence(trial):
    rng = random.Random(trial)
    layer = perturb_(MambaLayer(dim=16, state_size=4, d_conv=rng.choice([1, 3, 4]),
                                dt_init=rng.choice(["random", "constant"]))).eval()
    total = rng.randint(5, 30)
    x = torch.randn(2, total, 16)
    start = _state(layer, 2) if trial % 2 else None
    full, (fc, fs) = layer.forward_stream(x, start)
    cuts = sorted(rng.sample(range(1, total), rng.randint(1, min(6, total - 1))))
    state, pieces = start, []
    for a, b in zip([0] + cuts, cuts + [total]):
        y, state = layer.forward_stream(x[:, a:b], state)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), full, **TOL)
    torch.testing.assert_close(state[0], fc, **TOL)
    torch.testing.assert_close(state[1], fs, **TOL)


def test_mamba_one_token_at_a_time():
    layer = perturb_(MambaLayer(dim=8, state_size=3, d_conv=4)).eval()
    x = torch.randn(1, 6, 8)
    state, ys = None, []
    for t in range(6):
        y, state = layer.forward_stream(x[:, t:t + 1], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), layer(x), **TOL)


def test_mamba_zero_state_equals_no_state():
    layer = MambaLayer(dim=8, state_size=3).eval()
    x = torch.randn(2, 5, 8)
    y, (c, s) = layer.forward_stream(x)
    assert c.shape == (2, 16, 3) and s.shape == (2, 16, 3) and s.dtype == torch.float32
    torch.testing.assert_close(layer.forward_stream(x, layer.initial_state(2))[0], y)
    torch.testing.assert_close(layer(x), y)


def test_mamba_gradients_are_finite():
    layer = MambaLayer(dim=8, state_size=3)
    x = torch.randn(2, 7, 8, requires_grad=True)
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("state,match", [
    ((torch.zeros(2, 16, 2), torch.zeros(2, 16, 3)), r"conv_state must be \[2, 16, 3\], got \[2, 16, 2\]"),
    ((torch.zeros(2, 16, 3), torch.zeros(1, 16, 3)), r"ssm_state must be \[2, 16, 3\]"),
    ((torch.zeros(2, 16, 3),), "pair"),
    ("state", "pair"),
])
def test_mamba_rejects_bad_states(state, match):
    layer = MambaLayer(dim=8, state_size=3)
    with pytest.raises(ValueError, match=match):
        layer.forward_stream(torch.randn(2, 4, 8), state)


def test_mamba_rejects_bad_input():
    with pytest.raises(ValueError, match=r"x must be \[B, T, 8\], got \[4, 8\]"):
        MambaLayer(dim=8)(torch.randn(4, 8))


def test_linear_block_mamba():
    block = perturb_(LinearAttentionBlock(dim=16, attention_type="mamba", state_size=4,
                                          mlp_ratio=2.0)).eval()
    # num_heads is ignored for mamba (the default 12 does not divide 16)
    assert block.attn.dim == 16
    x = torch.randn(2, 9, 16)
    state = _state(block.attn, 2)
    y, new_state = block.forward_stream(x, state)
    normed = F.layer_norm(x, (16,), block.norm1.weight, block.norm1.bias, 1e-5)
    attn, want_state = block.attn.forward_stream(normed, state)
    h = x + attn
    want = h + block.mlp(F.layer_norm(h, (16,), block.norm2.weight, block.norm2.bias, 1e-5))
    torch.testing.assert_close(y, want, **TOL)
    torch.testing.assert_close(new_state[1], want_state[1], **TOL)
    torch.testing.assert_close(block(x, state=state), y, **TOL)
    assert isinstance(block(x), torch.Tensor)
    # streaming the block equals running it whole
    a, st = block.forward_stream(x[:, :4])
    b, st = block.forward_stream(x[:, 4:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), block(x), **TOL)


def test_linear_block_performer():
    block = perturb_(LinearAttentionBlock(dim=16, num_heads=2, num_random_features=8)).eval()
    assert block.attention_type == "performer" and block.attn.kernel_type == "softmax"
    x = torch.randn(2, 9, 16)
    y, state = block.forward_stream(x)
    assert state is None
    torch.testing.assert_close(block(x), y)
    with pytest.raises(ValueError, match="takes no recurrent state"):
        block(x, state=_state(MambaLayer(dim=16), 2))
    assert "attn.projection_matrix" in block.state_dict()
