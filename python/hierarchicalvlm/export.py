"""Export modules and stacks to safetensors files that hvlm's C++ side loads.

    PYTHONPATH=python /usr/bin/python3 -m hierarchicalvlm.export --spec spec.json --seed 0 \\
        --out weights.safetensors

Tensor names are the module's state_dict() keys (parameter and buffer paths), which are the
C++ module's parameter paths.
"""
import argparse
import json

import torch

from .attention.stack import AttentionStack
from .safetensors import save_file


def export_module(module, path, spec=None):
    """Writes module.state_dict() as float32 (floating tensors) with format metadata."""
    state = {}
    for name, t in module.state_dict().items():
        t = t.detach().cpu()
        state[name] = (t.float() if t.is_floating_point() else t).contiguous()
    metadata = {"format": "pt"}
    spec = spec if spec is not None else getattr(module, "spec", None)
    if spec is not None:
        metadata["hvlm.spec"] = json.dumps(spec)
    save_file(state, path, metadata)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="stack spec JSON file")
    parser.add_argument("--seed", type=int, default=0, help="random init seed")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    args = parser.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    torch.manual_seed(args.seed)
    stack = AttentionStack(spec).eval()
    export_module(stack, args.out)
    print(f"wrote {args.out}: {len(stack.state_dict())} tensors")


if __name__ == "__main__":
    main()
