"""Export weights to safetensors for hvlm's C++ library, and load them back.

Tensor names are the module's `state_dict()` keys (parameter and buffer paths), which are
the C++ modules' parameter paths (docs/attention.md). Command line: build a randomly
initialised AttentionStack from a JSON spec and export it:

    PYTHONPATH=python /usr/bin/python3 -m hierarchicalvlm.export --spec spec.json --seed 0 \\
        --out weights.safetensors
"""

import argparse
import json
import sys

import torch

from .attention.stack import AttentionStack, normalize_spec
from .safetensors import load_file, save_file

__all__ = ["export_module", "load_weights", "main"]


def export_module(module, path, spec=None):
    """Writes `module.state_dict()` to `path` (floating tensors as contiguous float32) with
    metadata `{"format": "pt", "hvlm.spec": <stack spec JSON>}`; the spec is `spec` when
    given, else the module's `.spec` (an AttentionStack), else omitted."""
    tensors = {}
    for name, t in module.state_dict().items():
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)
        tensors[name] = t.contiguous()
    if spec is None:
        spec = getattr(module, "spec", None)
    metadata = {"format": "pt"}
    if spec is not None:
        metadata["hvlm.spec"] = json.dumps(normalize_spec(spec), sort_keys=False)
    save_file(tensors, path, metadata)
    return path


def load_weights(module, path):
    """Loads a safetensors file into `module`, checking names (missing and unexpected), shapes
    and dtypes; every mismatch is reported in one ValueError."""
    tensors = load_file(path)
    own = module.state_dict()
    problems = []
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected))
    for name in sorted(set(own) & set(tensors)):
        want, got = own[name], tensors[name]
        if tuple(want.shape) != tuple(got.shape):
            problems.append(f"{name}: shape {list(got.shape)}, expected {list(want.shape)}")
        elif want.dtype != got.dtype:
            problems.append(f"{name}: dtype {got.dtype}, expected {want.dtype}")
    if problems:
        raise ValueError(f"{path}: weights do not match the module: " + "; ".join(problems))
    module.load_state_dict(tensors, strict=True)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m hierarchicalvlm.export",
        description="Build a randomly initialised AttentionStack from a JSON spec and export "
                    "its weights to safetensors.")
    parser.add_argument("--spec", required=True, help="stack spec JSON file")
    parser.add_argument("--seed", type=int, default=0, help="torch random seed (default 0)")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    args = parser.parse_args(argv)
    try:
        with open(args.spec) as f:
            spec = json.load(f)
        torch.manual_seed(args.seed)
        stack = AttentionStack(spec)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    export_module(stack, args.out)
    count = len(stack.state_dict())
    params = sum(p.numel() for p in stack.parameters())
    print(f"wrote {args.out}: {count} tensors, {params} parameters, "
          f"{len(stack.blocks)} blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
