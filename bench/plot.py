#!/usr/bin/env python3
"""Renders hvlm-bench sweep JSON as log-log plots: time vs n and peak extra memory vs n.

Usage: /usr/bin/python3 bench/plot.py docs/benchmarks/cpu.json docs/benchmarks
Writes time_vs_n.png and memory_vs_n.png (attention cores and whole modules) into the folder.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


COLORS = {"dense": "tab:blue", "strided": "tab:red", "local_global": "tab:orange",
          "performer": "tab:green", "mamba": "tab:purple", "cross_memory": "tab:brown"}


def series(rows, key):
    out = {}
    for r in rows:
        out.setdefault((r["mechanism"], r["part"]), []).append((r["n"], r[key]))
    return {k: sorted(v) for k, v in out.items()}


def plot(data, key, ylabel, title, path, parts):
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.5), squeeze=False)
    for ax, part in zip(axes[0], parts):
        for (mech, p), points in sorted(series(data["rows"], key).items()):
            if p != part:
                continue
            ns, ys = zip(*points)
            ax.plot(ns, [max(y, 1e-3) for y in ys], marker="o", label=mech, color=COLORS.get(mech))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {part}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"hvlm CPU, dim {data['dim']}, {data['num_heads']} heads, batch 1, "
                 f"{data['threads']} threads, LibTorch {data['torch_version']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        data = json.load(f)
    out_dir = sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    plot(data, "median_ms", "median time (ms)", "time", os.path.join(out_dir, "time_vs_n.png"),
         ["core", "module"])
    plot(data, "peak_tensor_mib", "peak extra memory (MiB)", "memory",
         os.path.join(out_dir, "memory_vs_n.png"), ["core", "module"])
    print(f"wrote {out_dir}/time_vs_n.png and {out_dir}/memory_vs_n.png")


if __name__ == "__main__":
    main()
