"""hierarchicalvlm: the Python twin of hvlm's C++ attention library, and its client.

`hierarchicalvlm.attention` holds the modules (the seed's import paths and signatures), with
the exact semantics of docs/attention.md, for training and as the C++ library's test oracle;
`hierarchicalvlm.export` writes their weights to safetensors for the C++ side;
`hierarchicalvlm.client` talks to hvlm-server (numpy and grpcio only).

The module classes below are imported on first use, so `import hierarchicalvlm.client` does
not need torch.
"""

import importlib

__version__ = "0.1.0"

__all__ = [
    "AttentionStack", "CrossMemoryAttention", "HierarchicalAttentionBlock",
    "LinearAttentionBlock", "LocalGlobalAttention", "MambaLayer", "PerformerAttention",
    "StridedAttention",
]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".attention", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
