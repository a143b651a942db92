"""AttentionStack: an ordered list of attention blocks built from a declarative spec
(docs/attention.md), the same JSON shape the C++ `hvlm::StackSpec` parses:

    {"dim": 768, "blocks": [{"type": "local_global", "num_heads": 12, "local_window": 64,
                             "num_global_tokens": 4}, {"type": "mamba", "state_size": 16}]}

Per-sequence state stays outside the module: `forward(x, memories, states)` takes one entry
per block (a memory tensor for cross_memory blocks, a Mamba state for mamba blocks, None
otherwise) and returns the output with the blocks' new states.
"""

import copy
import json
import math
import numbers

from torch import nn

from .linear import KERNEL_TYPES, LinearAttentionBlock
from .sparse import HierarchicalAttentionBlock

__all__ = ["AttentionStack", "normalize_spec", "BLOCK_TYPES"]

BLOCK_TYPES = ("strided", "local_global", "cross_memory", "performer", "mamba")

# Option name -> (kind, default) per block type, in the order the normalised spec lists them.
_INT, _NUM, _STR, _RANK = "an integer", "a number", "a string", 'an integer or "auto"'
_COMMON = {"mlp_ratio": (_NUM, 4.0), "dropout": (_NUM, 0.0)}
_OPTIONS = {
    "strided": {"num_heads": (_INT, 12), "stride": (_INT, 4)},
    "local_global": {"num_heads": (_INT, 12), "local_window": (_INT, 64),
                     "num_global_tokens": (_INT, 4)},
    "cross_memory": {"num_heads": (_INT, 12)},
    "performer": {"num_heads": (_INT, 12), "num_random_features": (_INT, 256),
                  "kernel_type": (_STR, "softmax")},
    "mamba": {"state_size": (_INT, 16), "expand_factor": (_NUM, 2.0), "d_conv": (_INT, 4),
              "dt_rank": (_RANK, "auto"), "dt_init": (_STR, "random"), "dt_min": (_NUM, 1e-3),
              "dt_max": (_NUM, 0.1), "dt_init_floor": (_NUM, 1e-4)},
}


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _typed(where, key, value, kind):
    if kind == _INT:
        ok = _is_int(value)
    elif kind == _NUM:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif kind == _STR:
        ok = isinstance(value, str)
    else:
        ok = value == "auto" or _is_int(value)
    if not ok:
        raise ValueError(f"{where}.{key} must be {kind}, got {json.dumps(value, default=repr)}")
    if kind == _INT:
        return int(value)
    if kind == _NUM:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where}.{key} must be finite, got {value}")
        return value
    if kind == _RANK:
        return "auto" if value == "auto" or int(value) == 0 else int(value)
    return value


def _check_ranges(where, dim, t, o):
    def bad(key, expected):
        raise ValueError(f"{where}.{key} must be {expected}, got {o[key]!r}")

    if "num_heads" in o:
        if o["num_heads"] < 1:
            bad("num_heads", ">= 1")
        if dim % o["num_heads"]:
            bad("num_heads", f"a divisor of dim ({dim})")
    if t == "strided" and o["stride"] < 1:
        bad("stride", ">= 1")
    if t == "local_global":
        if o["local_window"] < 2 or o["local_window"] % 2:
            bad("local_window", "even and >= 2")
        if o["num_global_tokens"] < 0:
            bad("num_global_tokens", ">= 0")
    if t == "performer":
        if o["num_random_features"] < 1:
            bad("num_random_features", ">= 1")
        if o["kernel_type"] not in KERNEL_TYPES:
            bad("kernel_type", "one of softmax, relu, elu")
    if t == "mamba":
        if o["state_size"] < 1:
            bad("state_size", ">= 1")
        if o["expand_factor"] <= 0 or int(o["expand_factor"] * dim) < 1:
            bad("expand_factor", f"positive with int(expand_factor * {dim}) >= 1")
        if o["d_conv"] < 1:
            bad("d_conv", ">= 1")
        if o["dt_rank"] != "auto" and o["dt_rank"] < 0:
            bad("dt_rank", '"auto", 0 (auto) or a positive integer')
        if o["dt_init"] not in ("constant", "random"):
            bad("dt_init", "'constant' or 'random'")
        if o["dt_min"] <= 0:
            bad("dt_min", "> 0")
        if o["dt_max"] < o["dt_min"]:
            bad("dt_max", f">= dt_min ({o['dt_min']})")
        if o["dt_init_floor"] <= 0:
            bad("dt_init_floor", "> 0")
    if o["mlp_ratio"] <= 0 or int(dim * o["mlp_ratio"]) < 1:
        bad("mlp_ratio", f"positive with int({dim} * mlp_ratio) >= 1")
    if not 0.0 <= o["dropout"] < 1.0:
        bad("dropout", "in [0, 1)")


def _normalize_block(block, dim, where):
    if not isinstance(block, dict):
        raise ValueError(f"{where} must be an object, got {json.dumps(block, default=repr)}")
    t = block.get("type")
    if not isinstance(t, str) or t not in BLOCK_TYPES:
        raise ValueError(f"{where}.type must be one of {', '.join(BLOCK_TYPES)}, got "
                         f"{json.dumps(t, default=repr)}")
    table = dict(_OPTIONS[t], **_COMMON)
    unknown = [k for k in block if k != "type" and k not in table]
    if unknown:
        raise ValueError(f"{where}: unknown option(s) for a {t} block: "
                         + ", ".join(f"{where}.{k}" for k in unknown))
    out = {"type": t}
    for key, (kind, default) in table.items():
        out[key] = _typed(where, key, block[key], kind) if key in block else default
    _check_ranges(where, dim, t, out)
    return out


def normalize_spec(spec):
    """Validates a stack spec (dict or JSON text) and returns it with every option of every
    block written out, defaults included. Errors are ValueErrors naming `blocks[i].key`."""
    if isinstance(spec, (str, bytes)):
        try:
            spec = json.loads(spec)
        except ValueError as e:
            raise ValueError(f"stack spec is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise ValueError("stack spec must be an object with dim and blocks")
    unknown = [k for k in spec if k not in ("dim", "blocks")]
    if unknown:
        raise ValueError(f"stack spec: unknown key(s): {', '.join(map(str, unknown))}")
    dim = spec.get("dim")
    if not _is_int(dim) or dim <= 0:
        raise ValueError(f"dim must be a positive integer, got {json.dumps(dim, default=repr)}")
    blocks = spec.get("blocks")
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError("blocks must be a non-empty list")
    return {"dim": int(dim),
            "blocks": [_normalize_block(b, int(dim), f"blocks[{i}]")
                       for i, b in enumerate(blocks)]}


def _build_block(dim, block):
    options = {k: v for k, v in block.items() if k != "type"}
    if block["type"] in HierarchicalAttentionBlock.TYPES:
        return HierarchicalAttentionBlock(dim=dim, attention_type=block["type"], **options)
    return LinearAttentionBlock(dim=dim, attention_type=block["type"], **options)


class AttentionStack(nn.Module):
    """Blocks `blocks.{i}` built from a spec; `.spec` is the normalised spec."""

    def __init__(self, spec):
        super().__init__()
        self._spec = normalize_spec(spec)
        self.dim = self._spec["dim"]
        self.blocks = nn.ModuleList(
            [_build_block(self.dim, b) for b in self._spec["blocks"]])

    @classmethod
    def from_spec(cls, spec):
        return cls(spec)

    @property
    def spec(self):
        return copy.deepcopy(self._spec)

    @property
    def block_types(self):
        return [b["type"] for b in self._spec["blocks"]]

    def _entries(self, name, entries):
        n = len(self.blocks)
        if entries is None:
            return [None] * n
        if not isinstance(entries, (list, tuple)) or len(entries) != n:
            got = len(entries) if isinstance(entries, (list, tuple)) else type(entries).__name__
            raise ValueError(f"{name} must be None or a list with one entry per block ({n}), "
                             f"got {got}")
        return list(entries)

    def forward(self, x, memories=None, states=None):
        """`x [B, T, D]` -> `(y, new_states)`; `new_states[i]` is block i's new Mamba state
        (None for other blocks)."""
        memories = self._entries("memories", memories)
        states = self._entries("states", states)
        new_states = [None] * len(self.blocks)
        for i, (block, t) in enumerate(zip(self.blocks, self.block_types)):
            if memories[i] is not None and t != "cross_memory":
                raise ValueError(f"memories[{i}] must be None: block {i} is {t}, only "
                                 "cross_memory blocks take a memory")
            if states[i] is not None and t != "mamba":
                raise ValueError(f"states[{i}] must be None: block {i} is {t}, only mamba "
                                 "blocks take a state")
            if t == "cross_memory":
                x = block(x, memory=memories[i])
            elif t == "mamba":
                x, new_states[i] = block.forward_stream(x, states[i])
            else:
                x = block(x)
        return x, new_states
