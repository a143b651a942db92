"""Strided, local+global and cross-memory attention against dense masked-attention oracles
built straight from docs/attention.md, plus their block and input validation."""

import pytest
import torch
import torch.nn.functional as F

from hierarchicalvlm.attention import sparse
from hierarchicalvlm.attention.sparse import (CrossMemoryAttention, HierarchicalAttentionBlock,
                                              LocalGlobalAttention, StridedAttention,
                                              global_positions)
from reference import (cross_attention_oracle, global_set, local_global_mask, perturb_,
                       self_attention_oracle, strided_mask)

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,stride", [(37, 3), (12, 4), (13, 4), (5, 8), (1, 3), (9, 1),
                                      (10, 10), (23, 7)])
def test_strided_matches_dense_oracle(n, stride):
    m = perturb_(StridedAttention(dim=32, num_heads=4, stride=stride)).eval()
    x = torch.randn(2, n, 32)
    torch.testing.assert_close(m(x), self_attention_oracle(m, x, strided_mask(n, stride)), **TOL)


def test_strided_never_builds_a_full_mask(monkeypatch):
    shapes = []
    real = sparse.masked_softmax_attention

    def spy(q, k, v, allowed=None):
        shapes.append((tuple(q.shape), None if allowed is None else tuple(allowed.shape)))
        return real(q, k, v, allowed)

    monkeypatch.setattr(sparse, "masked_softmax_attention", spy)
    m = StridedAttention(dim=16, num_heads=2, stride=4).eval()
    m(torch.randn(1, 50, 16))
    (q_shape, mask_shape), = shapes
    assert q_shape == (1, 2, 4, 13, 8)   # 4 residue classes of ceil(50/4) = 13 slots
    assert mask_shape == (4, 1, 13)      # key padding only


def test_global_positions_follow_the_docs():
    assert global_positions(10, 3).tolist() == [0, 3, 6]
    assert global_positions(5, 9).tolist() == [0, 1, 2, 3, 4]   # duplicates count once
    assert global_positions(7, 0).tolist() == []
    assert global_positions(5, 1 << 40).tolist() == [0, 1, 2, 3, 4]  # bounded by n, not g
    for n, g in [(37, 3), (5, 9), (64, 64), (11, 4)]:
        assert global_positions(n, g).tolist() == global_set(n, g)


@pytest.mark.parametrize("n,w,g", [
    (37, 8, 3),     # n not a multiple of the window
    (45, 16, 0),    # no global tokens
    (11, 16, 2),    # n < w
    (5, 64, 1),     # n much smaller than w
    (7, 4, 7),      # g == n: every token is global
    (5, 4, 9),      # g > n: duplicate global positions
    (40, 2, 1),     # smallest window
    (64, 8, 4),     # multiple of the window
    (1, 2, 0),
    (1, 2, 3),
])
def test_local_global_matches_dense_oracle(n, w, g):
    m = perturb_(LocalGlobalAttention(dim=32, num_heads=4, local_window=w,
                                      num_global_tokens=g)).eval()
    x = torch.randn(2, n, 32)
    torch.testing.assert_close(m(x), self_attention_oracle(m, x, local_global_mask(n, w, g)),
                               **TOL)


@pytest.mark.parametrize("block_size", [1, 3, 5, 8, 100])
def test_local_global_block_size_does_not_change_the_result(block_size):
    m = LocalGlobalAttention(dim=16, num_heads=2, local_window=6, num_global_tokens=3).eval()
    q, k, v = (torch.randn(2, 2, 29, 8) for _ in range(3))
    torch.testing.assert_close(m._core(q, k, v, block_size=block_size), m._core(q, k, v), **TOL)


def test_local_global_working_memory_is_blocked(monkeypatch):
    shapes = []
    real = sparse.masked_softmax_attention

    def spy(q, k, v, allowed=None):
        shapes.append((q.shape[-2], k.shape[-2]))
        return real(q, k, v, allowed)

    monkeypatch.setattr(sparse, "masked_softmax_attention", spy)
    m = LocalGlobalAttention(dim=16, num_heads=2, local_window=8, num_global_tokens=3).eval()
    m(torch.randn(1, 200, 16))
    assert shapes == [(3, 200)]  # only the 3 global queries see all keys


def test_local_global_gradients_are_finite():
    m = LocalGlobalAttention(dim=16, num_heads=2, local_window=4, num_global_tokens=2)
    x = torch.randn(2, 13, 16, requires_grad=True)
    m(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_strided_gradients_are_finite():
    m = StridedAttention(dim=16, num_heads=2, stride=3)
    x = torch.randn(2, 13, 16, requires_grad=True)
    m(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mem_batch", [2, 1])
def test_cross_memory_matches_oracle(mem_batch):
    m = perturb_(CrossMemoryAttention(dim=32, num_heads=4)).eval()
    local, memory = torch.randn(2, 9, 32), torch.randn(mem_batch, 7, 32)
    attn = cross_attention_oracle(m, local, memory)
    torch.testing.assert_close(m(local, memory, residual=False), attn, **TOL)
    torch.testing.assert_close(m(local, memory, residual=True), local + attn, **TOL)
    torch.testing.assert_close(m(local, memory), local + attn, **TOL)
    torch.testing.assert_close(m.fuse_with_memory(local, memory, fusion_ratio=0.3),
                               0.7 * local + 0.3 * attn, **TOL)


def test_cross_memory_fusion_ratio_ends():
    m = CrossMemoryAttention(dim=16, num_heads=2).eval()
    local, memory = torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    torch.testing.assert_close(m.fuse_with_memory(local, memory, fusion_ratio=0.0), local)
    torch.testing.assert_close(m.fuse_with_memory(local, memory, fusion_ratio=1.0),
                               m(local, memory, residual=False))


def test_cross_memory_length_may_change_between_calls():
    m = CrossMemoryAttention(dim=16, num_heads=2).eval()
    local = torch.randn(2, 5, 16)
    for length in (1, 8, 3):
        memory = torch.randn(2, length, 16)
        torch.testing.assert_close(m(local, memory), local + cross_attention_oracle(m, local, memory),
                                   **TOL)


def test_cross_memory_empty_memory():
    m = CrossMemoryAttention(dim=16, num_heads=2).eval()
    local = torch.randn(2, 5, 16)
    for memory in (torch.zeros(2, 0, 16), torch.zeros(1, 0, 16)):
        assert torch.equal(m(local, memory, residual=True), local)
        assert torch.equal(m(local, memory, residual=False), torch.zeros_like(local))
        assert torch.equal(m.fuse_with_memory(local, memory, fusion_ratio=0.5), local)


@pytest.mark.parametrize("call,match", [
    (lambda m: m(torch.randn(2, 5, 16), torch.randn(3, 4, 16)), "memory batch"),
    (lambda m: m(torch.randn(2, 5, 16), torch.randn(2, 4, 8)), r"memory must be \[B, T, 16\]"),
    (lambda m: m(torch.randn(2, 5, 16), torch.randn(4, 16)), "memory must be"),
    (lambda m: m(torch.randn(2, 5, 16), None), "memory must be"),
    (lambda m: m(torch.randn(5, 16), torch.randn(2, 4, 16)), r"local must be \[B, T, 16\], got \[5, 16\]"),
    (lambda m: m.fuse_with_memory(torch.randn(2, 5, 16), torch.randn(2, 4, 16), 1.5), "fusion_ratio"),
    (lambda m: m.fuse_with_memory(torch.randn(2, 5, 16), torch.randn(2, 4, 16), -0.1), "fusion_ratio"),
])
def test_cross_memory_rejects_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(CrossMemoryAttention(dim=16, num_heads=2))


@pytest.mark.parametrize("make,match", [
    (lambda: StridedAttention(dim=30, num_heads=4, stride=2), r"num_heads \(4\) must divide dim \(30\)"),
    (lambda: StridedAttention(dim=32, num_heads=4, stride=0), "stride must be >= 1, got 0"),
    (lambda: StridedAttention(dim=32, num_heads=4, stride=2.5), "stride must be an integer"),
    (lambda: StridedAttention(dim=32, num_heads=0, stride=2), "num_heads must be >= 1"),
    (lambda: StridedAttention(dim=32, num_heads=4, stride=2, dropout=1.0), "dropout"),
    (lambda: LocalGlobalAttention(dim=32, num_heads=4, local_window=7), "local_window must be even"),
    (lambda: LocalGlobalAttention(dim=32, num_heads=4, local_window=0), "local_window must be >= 2"),
    (lambda: LocalGlobalAttention(dim=32, num_heads=4, num_global_tokens=-1), "num_global_tokens"),
    (lambda: CrossMemoryAttention(dim=32, num_heads=5), "must divide dim"),
    (lambda: HierarchicalAttentionBlock(dim=32, num_heads=4, attention_type="dense"), "attention_type"),
    (lambda: HierarchicalAttentionBlock(dim=32, num_heads=4, attention_type="local_global",
                                        stride=4), "unknown option.*stride"),
    (lambda: HierarchicalAttentionBlock(dim=32, num_heads=4, mlp_ratio=0), "mlp_ratio"),
])
def test_bad_options_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("x,match", [
    (torch.randn(12, 32), r"x must be \[B, T, 32\], got \[12, 32\]"),
    (torch.randn(2, 5, 31), r"x must be \[B, T, 32\], got \[2, 5, 31\]"),
    (torch.randn(1, 2, 5, 32), r"x must be \[B, T, 32\]"),
    (torch.randn(2, 0, 32), "at least 1 token"),
])
@pytest.mark.parametrize("module", [
    lambda: StridedAttention(dim=32, num_heads=4, stride=3),
    lambda: LocalGlobalAttention(dim=32, num_heads=4, local_window=4, num_global_tokens=2),
    lambda: HierarchicalAttentionBlock(dim=32, num_heads=4, attention_type="strided"),
])
def test_bad_shapes_raise_value_error(module, x, match):
    with pytest.raises(ValueError, match=match):
        module()(x)


def _block_by_hand(block, x, attn):
    h = x + attn
    return h + block.mlp.fc2(F.gelu(block.mlp.fc1(F.layer_norm(h, (h.shape[-1],),
                                                               block.norm2.weight,
                                                               block.norm2.bias, 1e-5))))


@pytest.mark.parametrize("attention_type,options", [
    ("strided", {"stride": 3}),
    ("local_global", {"local_window": 4, "num_global_tokens": 2}),
])
def test_block_is_prenorm_residual(attention_type, options):
    block = perturb_(HierarchicalAttentionBlock(dim=32, num_heads=4, attention_type=attention_type,
                                                mlp_ratio=2.0, **options)).eval()
    assert block.mlp.fc1.out_features == 64
    x = torch.randn(2, 11, 32)
    attn = block.attn(F.layer_norm(x, (32,), block.norm1.weight, block.norm1.bias, 1e-5))
    torch.testing.assert_close(block(x), _block_by_hand(block, x, attn), **TOL)


def test_cross_memory_block():
    block = perturb_(HierarchicalAttentionBlock(dim=32, num_heads=4,
                                                attention_type="cross_memory")).eval()
    x, memory = torch.randn(2, 6, 32), torch.randn(1, 5, 32)
    normed = F.layer_norm(x, (32,), block.norm1.weight, block.norm1.bias, 1e-5)
    attn = cross_attention_oracle(block.attn, normed, memory)
    torch.testing.assert_close(block(x, memory=memory), _block_by_hand(block, x, attn), **TOL)
    nothing = _block_by_hand(block, x, torch.zeros_like(x))
    torch.testing.assert_close(block(x), nothing, **TOL)
    torch.testing.assert_close(block(x, memory=torch.zeros(2, 0, 32)), nothing, **TOL)


def test_non_memory_block_rejects_memory():
    block = HierarchicalAttentionBlock(dim=32, num_heads=4, attention_type="strided")
    with pytest.raises(ValueError, match="takes no memory"):
        block(torch.randn(1, 4, 32), memory=torch.randn(1, 2, 32))


def test_parameter_names():
    block = HierarchicalAttentionBlock(dim=32, num_heads=4, attention_type="local_global")
    assert list(block.state_dict()) == [
        "norm1.weight", "norm1.bias",
        "attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight", "attn.k_proj.bias",
        "attn.v_proj.weight", "attn.v_proj.bias", "attn.out_proj.weight", "attn.out_proj.bias",
        "norm2.weight", "norm2.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]


def test_dropout_only_in_training():
    block = HierarchicalAttentionBlock(dim=32, num_heads=4, attention_type="strided", dropout=0.5)
    x = torch.randn(2, 8, 32)
    block.eval()
    assert torch.equal(block(x), block(x))
    block.train()
    assert not torch.equal(block(x), block(x))
