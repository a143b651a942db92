#!/usr/bin/env python3
"""Writes the C++-vs-Python parity cases: for each case NAME, in OUT_DIR,

    NAME.json                 {"kind": "module" | "block" | "stack",
                               "type": strided | local_global | cross_memory | performer | mamba
                                       (module and block cases),
                               "options": the twin's constructor keyword arguments, dim included
                                          (module and block cases; blocks: all but
                                          attention_type, which is "type"),
                               "spec": the normalised stack spec (stack cases),
                               "call": {"method": "forward" | "forward_stream" |
                                        "fuse_with_memory", "residual": bool,
                                        "fusion_ratio": float}}
    NAME.weights.safetensors  the module's state_dict(), via hierarchicalvlm.export
    NAME.io.safetensors       inputs ("x", "memory", "conv_state", "ssm_state"; stacks:
                              "memory.{i}", "conv_state.{i}", "ssm_state.{i}") and the twin's
                              outputs ("expected", "expected_conv_state", "expected_ssm_state";
                              stacks: "expected_conv_state.{i}", "expected_ssm_state.{i}")

and index.json, {"cases": [names]}. Weights are random and perturbed away from their
initial values (LayerNorm affine, biases, A_log, D, dt_proj, ...) so that parity means
something; modules run in eval mode, float32, batch 2.

Usage: /usr/bin/python3 tests/parity/gen_cases.py OUT_DIR
"""

import json
import os
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))

import torch  # noqa: E402

from hierarchicalvlm.attention import (AttentionStack, CrossMemoryAttention,  # noqa: E402
                                       HierarchicalAttentionBlock, LinearAttentionBlock,
                                       LocalGlobalAttention, MambaLayer, PerformerAttention,
                                       StridedAttention)
from hierarchicalvlm.export import export_module  # noqa: E402
from hierarchicalvlm.safetensors import save_file  # noqa: E402

BATCH = 2

MODULES = {
    "strided": StridedAttention,
    "local_global": LocalGlobalAttention,
    "cross_memory": CrossMemoryAttention,
    "performer": PerformerAttention,
    "mamba": MambaLayer,
}


def mamba_options(dim, **overrides):
    options = {"dim": dim, "state_size": 16, "expand_factor": 2.0, "d_conv": 4,
               "dt_rank": "auto", "dt_init": "random", "dt_min": 1e-3, "dt_max": 0.1,
               "dt_init_floor": 1e-4, "dropout": 0.0}
    options.update(overrides)
    return options


def perturb_(module):
    """Moves parameters off their initial values: LayerNorm weights around 1, every bias,
    A_log, D and dt_proj get noise; other weights keep their random init."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name and leaf == "weight":
                p.mul_(1.0 + 0.2 * torch.randn_like(p))
            elif leaf in ("bias", "D"):
                p.add_(0.2 * torch.randn_like(p))
            elif leaf == "A_log":
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("dt_proj.weight"):
                p.mul_(1.0 + 0.3 * torch.randn_like(p))
    return module


def random_state(layer):
    return (torch.randn(BATCH, layer.inner_dim, layer.d_conv - 1),
            0.5 * torch.randn(BATCH, layer.inner_dim, layer.state_size))


def module_case(kind, options, n, call=None, memory_len=None, memory_batch=BATCH, state=False):
    """A single attention module (or Mamba layer) case."""
    def build():
        module = perturb_(MODULES[kind](**options)).eval()
        x = torch.randn(BATCH, n, options["dim"])
        io = {"x": x}
        c = dict(call or {"method": "forward"})
        if kind == "cross_memory":
            memory = torch.randn(memory_batch, memory_len, options["dim"])
            io["memory"] = memory
            if c["method"] == "fuse_with_memory":
                y = module.fuse_with_memory(x, memory, fusion_ratio=c["fusion_ratio"])
            else:
                y = module(x, memory, residual=c["residual"])
        elif kind == "mamba":
            start = None
            if state:
                start = random_state(module)
                io["conv_state"], io["ssm_state"] = start
                c = {"method": "forward_stream"}
            y, (conv_state, ssm_state) = module.forward_stream(x, start)
            if not state:
                assert torch.equal(y, module(x))
            io["expected_conv_state"], io["expected_ssm_state"] = conv_state, ssm_state
        else:
            y = module(x)
        io["expected"] = y
        return {"kind": "module", "type": kind, "options": options, "call": c}, module, io
    return build


def block_case(kind, options, n, memory_len=None):
    """A HierarchicalAttentionBlock / LinearAttentionBlock case; options exclude
    attention_type (it is the case's "type")."""
    def build():
        cls = LinearAttentionBlock if kind in ("performer", "mamba") else HierarchicalAttentionBlock
        block = perturb_(cls(attention_type=kind, **options)).eval()
        x = torch.randn(BATCH, n, options["dim"])
        io = {"x": x}
        call = {"method": "forward"}
        if kind == "cross_memory":
            io["memory"] = torch.randn(BATCH, memory_len, options["dim"])
            y = block(x, memory=io["memory"])
        elif kind == "mamba":
            start = random_state(block.attn)
            io["conv_state"], io["ssm_state"] = start
            y, (conv_state, ssm_state) = block.forward_stream(x, start)
            io["expected_conv_state"], io["expected_ssm_state"] = conv_state, ssm_state
            call = {"method": "forward_stream"}
        else:
            y = block(x)
        io["expected"] = y
        return {"kind": "block", "type": kind, "options": options, "call": call}, block, io
    return build


def stack_case(spec, n, memory_len=None, with_inputs=True):
    """An AttentionStack case: memories for cross_memory blocks, nonzero states for mamba."""
    def build():
        stack = perturb_(AttentionStack(spec)).eval()
        dim = stack.dim
        x = torch.randn(BATCH, n, dim)
        io = {"x": x}
        memories = [None] * len(stack.blocks)
        states = [None] * len(stack.blocks)
        if with_inputs:
            for i, (block, kind) in enumerate(zip(stack.blocks, stack.block_types)):
                if kind == "cross_memory":
                    memories[i] = torch.randn(BATCH, memory_len, dim)
                    io[f"memory.{i}"] = memories[i]
                elif kind == "mamba":
                    states[i] = random_state(block.attn)
                    io[f"conv_state.{i}"], io[f"ssm_state.{i}"] = states[i]
        y, new_states = stack(x, memories, states)
        io["expected"] = y
        for i, state in enumerate(new_states):
            if state is not None:
                io[f"expected_conv_state.{i}"], io[f"expected_ssm_state.{i}"] = state
        return {"kind": "stack", "spec": stack.spec, "call": {"method": "forward"}}, stack, io
    return build


def cases():
    out = {}
    # strided
    out["strided_s3_d64_n37"] = module_case(
        "strided", {"dim": 64, "num_heads": 4, "stride": 3, "dropout": 0.0}, 37)
    out["strided_s50_gt_n_d96_n41"] = module_case(
        "strided", {"dim": 96, "num_heads": 4, "stride": 50, "dropout": 0.0}, 41)
    out["strided_s5_d64_n62_dropout"] = module_case(
        "strided", {"dim": 64, "num_heads": 4, "stride": 5, "dropout": 0.1}, 62)
    # local + global
    lg = lambda dim, w, g, drop=0.0: {"dim": dim, "num_heads": 4, "local_window": w,  # noqa: E731
                                      "num_global_tokens": g, "dropout": drop}
    out["local_global_w8_g3_d64_n53"] = module_case("local_global", lg(64, 8, 3), 53)
    out["local_global_w16_g0_d96_n45"] = module_case("local_global", lg(96, 16, 0), 45)
    out["local_global_w64_g2_n_lt_w_d64_n41"] = module_case("local_global", lg(64, 64, 2), 41)
    out["local_global_w8_g45_g_gt_n_d64_n39"] = module_case("local_global", lg(64, 8, 45), 39)
    out["local_global_w6_g38_g_eq_n_d64_n38"] = module_case("local_global", lg(64, 6, 38), 38)
    out["local_global_w2_g1_d96_n67_dropout"] = module_case("local_global", lg(96, 2, 1, 0.1), 67)
    # cross memory
    cm = lambda dim: {"dim": dim, "num_heads": 4, "dropout": 0.0}  # noqa: E731
    out["cross_memory_residual_m7_d64_n43"] = module_case(
        "cross_memory", cm(64), 43, {"method": "forward", "residual": True}, memory_len=7)
    out["cross_memory_no_residual_m7_d96_n38"] = module_case(
        "cross_memory", cm(96), 38, {"method": "forward", "residual": False}, memory_len=7)
    out["cross_memory_fuse_0.3_m7_d64_n47"] = module_case(
        "cross_memory", cm(64), 47, {"method": "fuse_with_memory", "fusion_ratio": 0.3},
        memory_len=7)
    out["cross_memory_broadcast_m7_d64_n40"] = module_case(
        "cross_memory", cm(64), 40, {"method": "forward", "residual": True}, memory_len=7,
        memory_batch=1)
    out["cross_memory_empty_m0_residual_d64_n37"] = module_case(
        "cross_memory", cm(64), 37, {"method": "forward", "residual": True}, memory_len=0)
    out["cross_memory_empty_m0_no_residual_d64_n37"] = module_case(
        "cross_memory", cm(64), 37, {"method": "forward", "residual": False}, memory_len=0)
    out["cross_memory_empty_m0_fuse_0.3_d64_n37"] = module_case(
        "cross_memory", cm(64), 37, {"method": "fuse_with_memory", "fusion_ratio": 0.3},
        memory_len=0)
    # performer
    pf = lambda dim, kernel: {"dim": dim, "num_heads": 4, "num_random_features": 32,  # noqa: E731
                              "kernel_type": kernel, "dropout": 0.0}
    out["performer_softmax_m32_d64_n59"] = module_case("performer", pf(64, "softmax"), 59)
    out["performer_softmax_m32_d96_n44"] = module_case("performer", pf(96, "softmax"), 44)
    out["performer_relu_m32_d96_n45"] = module_case("performer", pf(96, "relu"), 45)
    out["performer_elu_m32_d64_n61"] = module_case("performer", pf(64, "elu"), 61)
    # mamba
    out["mamba_forward_random_d64_n47"] = module_case("mamba", mamba_options(64), 47)
    out["mamba_stream_random_d64_n53"] = module_case("mamba", mamba_options(64), 53, state=True)
    out["mamba_stream_constant_d96_n41"] = module_case(
        "mamba", mamba_options(96, dt_init="constant", state_size=8, expand_factor=1.5, d_conv=3,
                               dt_rank=5), 41, state=True)
    out["mamba_forward_constant_d64_n38"] = module_case(
        "mamba", mamba_options(64, dt_init="constant"), 38)
    out["mamba_stream_short_n2_d64"] = module_case("mamba", mamba_options(64), 2, state=True)
    # one block of each type
    out["block_strided_d64_n43"] = block_case(
        "strided", {"dim": 64, "num_heads": 4, "mlp_ratio": 4.0, "dropout": 0.1, "stride": 4}, 43)
    out["block_local_global_d96_n50"] = block_case(
        "local_global", {"dim": 96, "num_heads": 4, "mlp_ratio": 2.5, "dropout": 0.0,
                         "local_window": 10, "num_global_tokens": 3}, 50)
    out["block_cross_memory_m9_d64_n39"] = block_case(
        "cross_memory", {"dim": 64, "num_heads": 4, "mlp_ratio": 4.0, "dropout": 0.0}, 39,
        memory_len=9)
    out["block_performer_softmax_d64_n45"] = block_case(
        "performer", {"dim": 64, "num_heads": 4, "mlp_ratio": 2.0, "dropout": 0.0,
                      "num_random_features": 32, "kernel_type": "softmax"}, 45)
    block_mamba = mamba_options(64, state_size=8)
    block_mamba.update(mlp_ratio=4.0)
    out["block_mamba_stream_d64_n51"] = block_case("mamba", block_mamba, 51)
    # stacks mixing all five types
    spec = {"dim": 64, "blocks": [
        {"type": "local_global", "num_heads": 4, "local_window": 8, "num_global_tokens": 3},
        {"type": "cross_memory", "num_heads": 4},
        {"type": "mamba", "state_size": 8, "expand_factor": 2.0},
        {"type": "strided", "num_heads": 4, "stride": 3, "mlp_ratio": 2.0},
        {"type": "performer", "num_heads": 4, "num_random_features": 32, "kernel_type": "softmax"},
        {"type": "mamba", "state_size": 4, "d_conv": 3, "dt_init": "constant"},
    ]}
    out["stack_all_types_d64_n49"] = stack_case(spec, 49, memory_len=11)
    out["stack_all_types_no_inputs_d64_n42"] = stack_case(spec, 42, with_inputs=False)
    return out


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()
    names = []
    with torch.no_grad():
        for name, build in cases().items():
            torch.manual_seed(zlib.crc32(name.encode()))
            meta, module, io = build()
            export_module(module, os.path.join(out_dir, f"{name}.weights.safetensors"),
                          spec=meta.get("spec"))
            save_file({k: v.contiguous().float() for k, v in io.items()},
                      os.path.join(out_dir, f"{name}.io.safetensors"))
            with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
                json.dump(meta, f, indent=1)
                f.write("\n")
            names.append(name)
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump({"cases": names}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(names)} parity cases to {out_dir} in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
