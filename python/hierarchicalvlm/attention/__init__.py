"""Efficient attention mechanisms (docs/attention.md): sparse patterns, cross-memory
attention, Performer and Mamba, the two block types and the spec-built AttentionStack."""

from .linear import (KERNEL_TYPES, LinearAttentionBlock, MambaLayer, PerformerAttention,
                     orthogonal_random_features, performer_features)
from .sparse import (CrossMemoryAttention, HierarchicalAttentionBlock, LocalGlobalAttention,
                     StridedAttention, global_positions)
from .stack import BLOCK_TYPES, AttentionStack, normalize_spec

__all__ = [
    "StridedAttention", "LocalGlobalAttention", "CrossMemoryAttention",
    "HierarchicalAttentionBlock", "PerformerAttention", "MambaLayer", "LinearAttentionBlock",
    "AttentionStack", "normalize_spec", "global_positions", "orthogonal_random_features",
    "performer_features", "KERNEL_TYPES", "BLOCK_TYPES",
]
