#!/usr/bin/env python3
"""Writes the C++-vs-Python parity cases (tests/cpp/parity_test.cpp replays them).

Usage: /usr/bin/python3 tests/parity/gen_cases.py OUT_DIR

For each case NAME: NAME.json (what to build and how to call it), NAME.weights.safetensors
(the twin's random, perturbed weights, exported with hierarchicalvlm.export) and
NAME.io.safetensors (inputs, the twin's outputs and states). index.json lists the cases.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

from hierarchicalvlm.attention import (AttentionStack, CrossMemoryAttention,  # noqa: E402
                                       HierarchicalAttentionBlock, LinearAttentionBlock,
                                       LocalGlobalAttention, MambaLayer, PerformerAttention,
                                       StridedAttention)
from hierarchicalvlm.export import export_module  # noqa: E402
from hierarchicalvlm.safetensors import save_file  # noqa: E402

MODULES = {"strided": StridedAttention, "local_global": LocalGlobalAttention,
           "cross_memory": CrossMemoryAttention, "performer": PerformerAttention,
           "mamba": MambaLayer}


def perturb(module):
    """Moves every parameter away from its init (LayerNorm ones, zero biases, D = 1, ...) so
    that a wrong parameter path or a skipped term shows in the outputs."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module.eval()


def mamba_state(batch, layer):
    return (torch.randn(batch, layer.inner_dim, layer.d_conv - 1),
            0.5 * torch.randn(batch, layer.inner_dim, layer.state_size))


class Writer:
    def __init__(self, out_dir):
        self.out_dir, self.names = out_dir, []

    def write(self, name, description, module, io):
        self.names.append(name)
        with open(os.path.join(self.out_dir, f"{name}.json"), "w") as f:
            json.dump(description, f, indent=1)
        export_module(module, os.path.join(self.out_dir, f"{name}.weights.safetensors"))
        save_file({k: v.contiguous() for k, v in io.items()},
                  os.path.join(self.out_dir, f"{name}.io.safetensors"))


def module_cases(w, dim=64, heads=4, batch=2):
    def simple(name, kind, n, **options):
        opts = dict(dim=dim, num_heads=heads, **options)
        m = perturb(MODULES[kind](**opts))
        x = torch.randn(batch, n, dim)
        w.write(name, {"kind": "module", "type": kind, "options": opts,
                       "call": {"method": "forward"}}, m, {"x": x, "expected": m(x)})

    simple("strided_s3_n50", "strided", 50, stride=3)
    simple("strided_stride_over_n", "strided", 37, stride=64)
    simple("strided_s1_n41", "strided", 41, stride=1)
    simple("local_global_w8_g3_n45", "local_global", 45, local_window=8, num_global_tokens=3)
    simple("local_global_w16_g0_n53", "local_global", 53, local_window=16, num_global_tokens=0)
    simple("local_global_n_below_w", "local_global", 9, local_window=16, num_global_tokens=2)
    simple("local_global_g_over_n", "local_global", 7, local_window=4, num_global_tokens=12)
    for kernel in ("softmax", "relu", "elu"):
        simple(f"performer_{kernel}_n61", "performer", 61, num_random_features=32,
               kernel_type=kernel)

    opts = dict(dim=dim, num_heads=heads)
    cross = perturb(CrossMemoryAttention(**opts))
    x, memory = torch.randn(batch, 43, dim), torch.randn(batch, 7, dim)
    for name, call, expected in (
            ("cross_memory_residual", {"method": "forward", "residual": True},
             cross(x, memory, residual=True)),
            ("cross_memory_attn_only", {"method": "forward", "residual": False},
             cross(x, memory, residual=False)),
            ("cross_memory_fuse_0_3", {"method": "fuse_with_memory", "fusion_ratio": 0.3},
             cross.fuse_with_memory(x, memory, fusion_ratio=0.3))):
        w.write(name, {"kind": "module", "type": "cross_memory", "options": opts, "call": call},
                cross, {"x": x, "memory": memory, "expected": expected})
    shared = torch.randn(1, 5, dim)
    w.write("cross_memory_broadcast_memory", {"kind": "module", "type": "cross_memory",
                                              "options": opts, "call": {"method": "forward"}},
            cross, {"x": x, "memory": shared, "expected": cross(x, shared)})

    for name, dt_init, with_state in (("mamba_random_zero_state", "random", False),
                                      ("mamba_constant_with_state", "constant", True)):
        opts = dict(dim=dim, state_size=8, expand_factor=1.5, dt_init=dt_init)
        m = perturb(MambaLayer(**opts))
        x = torch.randn(batch, 39, dim)
        state = mamba_state(batch, m) if with_state else None
        y, (conv, ssm) = m.forward_stream(x, state)
        io = {"x": x, "expected": y, "expected_conv_state": conv, "expected_ssm_state": ssm}
        if with_state:
            io["conv_state"], io["ssm_state"] = state
        w.write(name, {"kind": "module", "type": "mamba", "options": opts,
                       "call": {"method": "forward_stream"}}, m, io)


def block_cases(w, dim=64, batch=2):
    for kind, extra in (("strided", {"num_heads": 4, "stride": 5}),
                        ("local_global", {"num_heads": 4, "local_window": 6,
                                          "num_global_tokens": 2}),
                        ("cross_memory", {"num_heads": 4}),
                        ("performer", {"num_heads": 4, "num_random_features": 16,
                                       "kernel_type": "softmax"}),
                        ("mamba", {"state_size": 4, "expand_factor": 2.0})):
        opts = dict(dim=dim, mlp_ratio=2.0, **extra)
        if kind in HierarchicalAttentionBlock.TYPES:
            block = perturb(HierarchicalAttentionBlock(attention_type=kind, **opts))
        else:
            block = perturb(LinearAttentionBlock(attention_type=kind, **opts))
        x = torch.randn(batch, 47, dim)
        io = {"x": x}
        if kind == "cross_memory":
            io["memory"] = torch.randn(batch, 9, dim)
            io["expected"] = block(x, memory=io["memory"])
        elif kind == "mamba":
            io["conv_state"], io["ssm_state"] = mamba_state(batch, block.attn)
            y, (conv, ssm) = block.forward_stream(x, (io["conv_state"], io["ssm_state"]))
            io.update(expected=y, expected_conv_state=conv, expected_ssm_state=ssm)
        else:
            io["expected"] = block(x)
        w.write(f"block_{kind}", {"kind": "block", "type": kind, "options": opts}, block, io)


def stack_case(w, batch=2):
    spec = {"dim": 64, "blocks": [
        {"type": "local_global", "num_heads": 4, "local_window": 8, "num_global_tokens": 3},
        {"type": "cross_memory", "num_heads": 4},
        {"type": "mamba", "state_size": 8, "expand_factor": 2.0},
        {"type": "strided", "num_heads": 4, "stride": 4},
        {"type": "performer", "num_heads": 4, "num_random_features": 32, "kernel_type": "softmax"},
        {"type": "mamba", "state_size": 4, "expand_factor": 1.0, "dt_rank": 3,
         "dt_init": "constant"},
    ]}
    stack = perturb(AttentionStack(spec))
    x = torch.randn(batch, 58, 64)
    memories = [None] * len(spec["blocks"])
    states = [None] * len(spec["blocks"])
    memories[1] = torch.randn(batch, 11, 64)
    io = {"x": x, "memory.1": memories[1]}
    for i in (2, 5):
        states[i] = mamba_state(batch, stack.blocks[i].attn)
        io[f"conv_state.{i}"], io[f"ssm_state.{i}"] = states[i]
    y, next_states = stack(x, memories, states)
    io["expected"] = y
    for i in (2, 5):
        io[f"expected_conv_state.{i}"], io[f"expected_ssm_state.{i}"] = next_states[i]
    w.write("stack_all_five", {"kind": "stack", "spec": stack.spec}, stack, io)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(1234)
    writer = Writer(out_dir)
    with torch.no_grad():
        module_cases(writer)
        block_cases(writer)
        stack_case(writer)
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump({"cases": writer.names}, f, indent=1)
    print(f"wrote {len(writer.names)} parity cases to {out_dir}")


if __name__ == "__main__":
    main()
