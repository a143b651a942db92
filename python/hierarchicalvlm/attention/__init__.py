"""Efficient attention mechanisms: the Python twin of hvlm's C++ attention library."""
from .linear import LinearAttentionBlock, MambaLayer, PerformerAttention
from .sparse import (CrossMemoryAttention, HierarchicalAttentionBlock, LocalGlobalAttention,
                     StridedAttention)
from .stack import AttentionStack

__all__ = [
    "AttentionStack", "CrossMemoryAttention", "HierarchicalAttentionBlock",
    "LinearAttentionBlock", "LocalGlobalAttention", "MambaLayer", "PerformerAttention",
    "StridedAttention",
]
