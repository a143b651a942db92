"""AttentionStack: an ordered list of blocks built from a declarative spec.

The spec is the same JSON shape that hvlm's C++ StackSpec parses (docs/attention.md):
{"dim": 768, "blocks": [{"type": "local_global", "num_heads": 12, ...}, ...]}.
"""
import copy

from torch import nn

from .linear import LinearAttentionBlock
from .sparse import HierarchicalAttentionBlock

COMMON = {"mlp_ratio": float, "dropout": float}
OPTIONS = {
    "strided": {"num_heads": int, "stride": int},
    "local_global": {"num_heads": int, "local_window": int, "num_global_tokens": int},
    "cross_memory": {"num_heads": int},
    "performer": {"num_heads": int, "num_random_features": int, "kernel_type": str},
    "mamba": {"state_size": int, "expand_factor": float, "d_conv": int, "dt_rank": (int, "auto"),
              "dt_init": str, "dt_min": float, "dt_max": float, "dt_init_floor": float},
}


def _check_value(where, key, value, kind):
    if kind == (int, "auto"):
        ok = value == "auto" or (isinstance(value, int) and not isinstance(value, bool))
        expected = 'an integer or "auto"'
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    else:
        ok = isinstance(value, str)
        expected = "a string"
    if not ok:
        raise ValueError(f"{where}.{key} must be {expected}, got {value!r}")


def normalize_spec(spec):
    """Validates a stack spec; errors name the offending key, e.g. blocks[2].stride."""
    if not isinstance(spec, dict):
        raise ValueError("stack spec must be an object with dim and blocks")
    unknown = sorted(set(spec) - {"dim", "blocks"})
    if unknown:
        raise ValueError(f"stack spec: unknown key(s): {', '.join(unknown)}")
    dim = spec.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise ValueError("dim must be a positive integer")
    blocks = spec.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise ValueError("blocks must be a non-empty list")
    out = []
    for i, block in enumerate(blocks):
        where = f"blocks[{i}]"
        if not isinstance(block, dict):
            raise ValueError(f"{where} must be an object")
        kind = block.get("type")
        if kind not in OPTIONS:
            raise ValueError(f"{where}.type must be one of {', '.join(OPTIONS)}, got {kind!r}")
        allowed = dict(COMMON, **OPTIONS[kind])
        unknown = [k for k in block if k != "type" and k not in allowed]
        if unknown:
            raise ValueError(f"{where}: unknown option(s) for a {kind} block: {', '.join(unknown)}")
        for key, value in block.items():
            if key != "type":
                _check_value(where, key, value, allowed[key])
        out.append(copy.deepcopy(block))
    return {"dim": dim, "blocks": out}


def build_block(dim, block):
    options = {k: v for k, v in block.items() if k != "type"}
    kind = block["type"]
    if kind in HierarchicalAttentionBlock.TYPES:
        return HierarchicalAttentionBlock(dim=dim, attention_type=kind, **options)
    return LinearAttentionBlock(dim=dim, attention_type=kind, **options)


class AttentionStack(nn.Module):
    """Blocks in order; per-sequence memories and Mamba states are passed in and returned."""

    def __init__(self, spec):
        super().__init__()
        self.spec = normalize_spec(spec)
        self.dim = self.spec["dim"]
        built = []
        for i, block in enumerate(self.spec["blocks"]):
            try:
                built.append(build_block(self.dim, block))
            except ValueError as e:
                raise ValueError(f"blocks[{i}] ({block['type']}): {e}") from None
        self.blocks = nn.ModuleList(built)

    @classmethod
    def from_spec(cls, spec):
        return cls(spec)

    def forward(self, x, memories=None, states=None):
        """x [B, T, D]; memories / states: None or one entry per block. -> (y, next_states)."""
        n = len(self.blocks)
        for name, entries in (("memories", memories), ("states", states)):
            if entries is not None and len(entries) != n:
                raise ValueError(f"{name} must be None or have one entry per block ({n}), "
                                 f"got {len(entries)}")
        next_states = [None] * n
        h = x
        for i, block in enumerate(self.blocks):
            memory = memories[i] if memories is not None else None
            state = states[i] if states is not None else None
            try:
                if isinstance(block, HierarchicalAttentionBlock):
                    if state is not None:
                        raise ValueError("only mamba blocks take a state")
                    h = block(h, memory=memory)
                else:
                    if memory is not None:
                        raise ValueError("only cross_memory blocks take a memory")
                    h, next_states[i] = block.forward_stream(h, state)
            except ValueError as e:
                raise ValueError(f"blocks[{i}] ({self.spec['blocks'][i]['type']}): {e}") from None
        return h, next_states
