#!/usr/bin/env python3
"""Service benchmark (docs/benchmarks.md): segments/s and latency of hvlm-server over loopback.

Runs, on this machine, with the default config (768-dim video stack, 64 x 768 segments):
  1. hvlm-session-bench: one session segment in-process (no gRPC), the baseline;
  2. hvlm-server as a real process, driven by `hvlm-client load` with 1, 8 and 64 concurrent
     sessions, each a StreamSegments call;
and reports the RPC path's overhead: single-session client p50 over the in-process p50.
Run with Debian's /usr/bin/python3 (make bench does).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def run_json(cmd, out_path):
    subprocess.run(cmd, check=True)
    with open(out_path) as f:
        return json.load(f)


def start_server(build, config, tmp):
    ready = os.path.join(tmp, "ready")
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen([os.path.join(build, "server", "hvlm-server"), "--config", config,
                             "--listen", "127.0.0.1:0", "--ready-file", ready, "--log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not os.path.exists(ready):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("hvlm-server did not start; see " + log.name)
        time.sleep(0.1)
    with open(ready) as f:
        return proc, f.read().strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--stack", default="video")
    ap.add_argument("--segment", type=int, default=64)
    ap.add_argument("--sessions", default="1,8,64")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    results = {"machine": os.uname().nodename, "cores": os.cpu_count(), "segment_tokens": args.segment,
               "date": time.strftime("%Y-%m-%d"), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "inprocess.json")
        results["in_process"] = run_json(
            [os.path.join(args.build, "bench", "hvlm-session-bench"), "--config", args.config,
             "--stack", args.stack, "--segment", str(args.segment), "--segments", "60", "--json", out], out)
        proc, address = start_server(args.build, args.config, tmp)
        try:
            for n in [int(s) for s in args.sessions.split(",")]:
                per_session = max(3, 60 // n)
                out = os.path.join(tmp, f"load{n}.json")
                run = run_json([os.path.join(args.build, "client", "hvlm-client"), "load", "--server", address,
                                "--stack", args.stack, "--sessions", str(n), "--segment", str(args.segment),
                                "--segments-per-session", str(per_session), "--json", out], out)
                results["runs"].append(run)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)

    base = results["in_process"]["latency_ms"]["p50"]
    single = next(r for r in results["runs"] if r["sessions"] == 1)
    results["rpc_overhead"] = (single["latency_ms"]["p50"] - base) / base
    print(f"in-process p50 {base:.2f} ms")
    print("| sessions | segments | segments/s | p50 ms | p90 ms | p99 ms | server compute p50 ms | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["runs"]:
        lat = r["latency_ms"]
        print(f"| {r['sessions']} | {r['segments']} | {r['segments_per_second']:.1f} | {lat['p50']:.2f} | "
              f"{lat['p90']:.2f} | {lat['p99']:.2f} | {r.get('server_compute_ms', {}).get('p50', float('nan')):.2f} "
              f"| {r['errors']} |")
    print(f"RPC path overhead at 1 session (p50): {100 * results['rpc_overhead']:+.1f}% (target <= +15%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
