#!/usr/bin/env python3
# Run with Debian's /usr/bin/python3 (it has numpy, grpcio and grpc_tools), e.g.
#   /usr/bin/python3 examples/stream_video.py --server 127.0.0.1:50051 --frames 512 --segment 16
"""Streams a video's features through an hvlm server session, segment by segment.

Features come from --input (a .npy array, [N, D] or [B, N, D]) or are synthetic (--frames N,
standard normal, seeded by --seed, D taken from the stack). Prints each segment's latency
(one segment's round trip: segments go one at a time), then p50/p99 and segments per second;
--output saves the outputs (same shape as the input) as .npy.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from hierarchicalvlm.client import Client, ClientError, pb  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--stack", help="stack name (default: the first hosted stack)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", help=".npy features, [N, D] or [B, N, D]")
    source.add_argument("--frames", type=int, default=256,
                        help="synthetic video length N (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic features")
    parser.add_argument("--segment", type=int, default=16, help="frames per segment T")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="wire dtype (default: float32, or float16 for float16 input)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call deadline, s")
    parser.add_argument("--output", help="write the outputs to this .npy file")
    return parser.parse_args(argv)


def pick_stack(client: Client, name: str | None) -> pb.StackInfo:
    """The StackInfo named `name`, or the first hosted stack."""
    stacks = client.list_stacks()
    if not stacks:
        sys.exit("the server hosts no stacks")
    if name is None:
        return stacks[0]
    for stack in stacks:
        if stack.name == name:
            return stack
    sys.exit(f"no stack {name!r}; hosted: {', '.join(s.name for s in stacks)}")


def load_features(args: argparse.Namespace, dim: int) -> np.ndarray:
    """--input's array, or seeded standard-normal [frames, dim] float32 features."""
    if args.input:
        return np.load(args.input)
    rng = np.random.default_rng(args.seed)
    return rng.standard_normal((args.frames, dim), dtype=np.float32)


def report(latencies: list[float], frames: int, segment: int, elapsed: float) -> None:
    """Prints each segment's latency, then p50/p99 and throughput."""
    for i, latency in enumerate(latencies):
        first = i * segment
        last = min(first + segment, frames) - 1
        print(f"segment {i:4d}  frames {first:6d}-{last:<6d}  {latency * 1e3:8.2f} ms")
    ms = np.asarray(latencies) * 1e3
    print(f"{len(latencies)} segments of {segment} frames: p50 {np.percentile(ms, 50):.2f} ms, "
          f"p99 {np.percentile(ms, 99):.2f} ms, {len(latencies) / elapsed:.1f} segments/s "
          f"({frames / elapsed:.0f} frames/s)")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        with Client(args.server, timeout=args.timeout, dtype=args.dtype) as client:
            stack = pick_stack(client, args.stack)
            features = load_features(args, stack.dim)
            print(f"stack {stack.name}: dim {stack.dim}, {len(stack.blocks)} blocks, "
                  f"{stack.dtype} on {stack.device}, weights {stack.weights_source}; "
                  f"features {list(features.shape)} {features.dtype}")
            start = time.perf_counter()
            outputs, latencies = client.stream_video(stack.name, features, args.segment)
            elapsed = time.perf_counter() - start
    except (ClientError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report(latencies, features.shape[-2], args.segment, elapsed)
    if args.output:
        np.save(args.output, outputs)
        print(f"wrote {args.output}: {list(outputs.shape)} {outputs.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
