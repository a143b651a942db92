"""hierarchicalvlm: the Python twin of hvlm's C++ attention library.

`hierarchicalvlm.attention` holds the modules (the seed's import paths and signatures), with
the exact semantics of docs/attention.md, for training and as the C++ library's test oracle;
`hierarchicalvlm.export` writes their weights to safetensors for the C++ side.
"""

from .attention import (AttentionStack, CrossMemoryAttention, HierarchicalAttentionBlock,
                        LinearAttentionBlock, LocalGlobalAttention, MambaLayer,
                        PerformerAttention, StridedAttention)

__version__ = "0.1.0"

__all__ = [
    "AttentionStack", "CrossMemoryAttention", "HierarchicalAttentionBlock",
    "LinearAttentionBlock", "LocalGlobalAttention", "MambaLayer", "PerformerAttention",
    "StridedAttention",
]
