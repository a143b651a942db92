"""The design document's (seed's) import paths, constructor signatures and calls."""

import torch
from torch import nn

import hierarchicalvlm
from hierarchicalvlm.attention.linear import (LinearAttentionBlock, MambaLayer,
                                              PerformerAttention)
from hierarchicalvlm.attention.sparse import (CrossMemoryAttention, HierarchicalAttentionBlock,
                                              LocalGlobalAttention, StridedAttention)


def test_package_reexports():
    import hierarchicalvlm.attention as attention
    for name in ("StridedAttention", "LocalGlobalAttention", "CrossMemoryAttention",
                 "HierarchicalAttentionBlock", "PerformerAttention", "MambaLayer",
                 "LinearAttentionBlock", "AttentionStack"):
        assert getattr(attention, name) is getattr(hierarchicalvlm, name)


def test_sparse_examples():
    x = torch.randn(2, 40, 768)
    attn = StridedAttention(stride=4, dim=768, num_heads=12, dropout=0.1)
    assert attn(x).shape == (2, 40, 768)
    attn = LocalGlobalAttention(local_window=64, num_global_tokens=4, dim=768, num_heads=12,
                                dropout=0.1)
    assert attn(x).shape == (2, 40, 768)

    cross_attn = CrossMemoryAttention(dim=768, num_heads=12, dropout=0.1)
    local_features, memory_tokens = torch.randn(2, 16, 768), torch.randn(2, 8, 768)
    assert cross_attn(local_features, memory_tokens, residual=True).shape == (2, 16, 768)
    assert cross_attn(local_features, memory_tokens, residual=False).shape == (2, 16, 768)
    fused = cross_attn.fuse_with_memory(local_features, memory_tokens, fusion_ratio=0.5)
    assert fused.shape == (2, 16, 768)


def test_linear_examples():
    attn = PerformerAttention(dim=768, num_heads=12, num_random_features=256, kernel_type="elu",
                              dropout=0.1)
    assert attn(torch.randn(1, 32, 768)).shape == (1, 32, 768)
    mamba = MambaLayer(dim=768, state_size=16, expand_factor=2.0, dropout=0.1)
    assert mamba(torch.randn(2, 6, 768)).shape == (2, 6, 768)


def test_block_examples():
    x = torch.randn(2, 24, 768)
    block = HierarchicalAttentionBlock(dim=768, num_heads=12, attention_type="strided", stride=4,
                                       dropout=0.1)
    assert block(x).shape == (2, 24, 768)
    block = HierarchicalAttentionBlock(attention_type="cross_memory", dim=768, num_heads=12)
    memory = torch.randn(2, 12, 768)
    assert block(x, memory=memory).shape == (2, 24, 768)
    block = HierarchicalAttentionBlock(attention_type="local_global", local_window=128,
                                       num_global_tokens=8)
    assert block(x).shape == (2, 24, 768)
    assert HierarchicalAttentionBlock(attention_type="strided", stride=8)(x).shape == x.shape
    block = LinearAttentionBlock(attention_type="performer", num_random_features=512)
    assert block(x).shape == x.shape
    block = LinearAttentionBlock(attention_type="mamba", state_size=32)
    assert block(x[:, :5]).shape == (2, 5, 768)


def test_alternating_layers_example():
    layers = nn.ModuleList([
        HierarchicalAttentionBlock(attention_type="strided", stride=4),
        HierarchicalAttentionBlock(attention_type="local_global"),
        LinearAttentionBlock(attention_type="performer"),
    ])
    x = torch.randn(1, 20, 768)
    for layer in layers:
        x = layer(x)
    assert x.shape == (1, 20, 768)
