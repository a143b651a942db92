#!/usr/bin/env python3
"""Service benchmark (docs/benchmarks.md): segments/s and latency of hvlm-server over loopback.

Runs, on this machine, with the default config (768-dim video stack, 64 x 768 segments):
  1. hvlm-session-bench: one session segment in-process (no gRPC), the baseline;
  2. hvlm-server as a real process, driven by `hvlm-client load` with 1, 8 and 64 concurrent
     sessions, each a StreamSegments call;
and reports the RPC path's overhead: single-session client p50 over the in-process p50.
`--batching on|off|both` overrides the config's cross-session batching (both: each session
count with batching off, then on). Run with Debian's /usr/bin/python3 (make bench does); on a
GPU host, `--config configs/gpu.yaml` (scripts/gpu-bench.sh).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml


def run_json(cmd, out_path):
    subprocess.run(cmd, check=True)
    with open(out_path) as f:
        return json.load(f)


def pinned(cpus):
    """The command prefix that runs a process on the CPUs `cpus` (taskset's list), or none."""
    return ["taskset", "-c", cpus] if cpus else []


def start_server(build, config, tmp, cpus=""):
    ready = os.path.join(tmp, "ready")
    if os.path.exists(ready):
        os.remove(ready)  # an earlier server's address must not be mistaken for this one's
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen([*pinned(cpus), os.path.join(build, "server", "hvlm-server"), "--config", config,
                             "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                             "--ready-file", ready, "--log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not os.path.exists(ready):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("hvlm-server did not start; see " + log.name)
        time.sleep(0.1)
    with open(ready) as f:
        lines = f.read().split()
    return proc, lines[0], (lines[1] if len(lines) > 1 else "")  # gRPC and metrics addresses


def scrape(metrics_address):
    """The server's /metrics text now ("" without a metrics address)."""
    if not metrics_address:
        return ""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as response:
        return response.read().decode()


def stage_totals(text):
    """{series: (sum seconds, count)} of the stage and batch-size histograms in a scrape()."""
    totals = {}
    for line in text.splitlines():
        for kind in ("_sum", "_count"):
            for family in ("hvlm_stage_duration_seconds", "hvlm_batch_size"):
                if line.startswith(family + kind):
                    name, value = line.rsplit(" ", 1)
                    label = name[len(family + kind):]
                    stage = label.split('stage="')[1].split('"')[0] if 'stage="' in label else "batch_size"
                    total, count = totals.get(stage, (0.0, 0.0))
                    totals[stage] = (total + float(value), count) if kind == "_sum" else (total, count + float(value))
    return totals


def counter_total(text, family):
    """The sum over all label sets of counter `family` in a scrape() (0 where it has none)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(family + "{") or line.startswith(family + " "))


def stage_means(before, after):
    """Mean per stage (ms; the batch size as is) over what happened between two stage_totals."""
    means = {}
    for stage, (total, count) in after.items():
        total0, count0 = before.get(stage, (0.0, 0.0))
        if count > count0:
            scale = 1.0 if stage == "batch_size" else 1e3
            means[stage] = round(scale * (total - total0) / (count - count0), 3)
    return means


def cpu_times():
    """(busy, total) jiffies of the whole host, from /proc/stat (None where it cannot be read)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(before, after):
    """Host cores busy on average between two cpu_times() (server and load client together, and
    anything else on the host; all of its cores, whatever --server-cpus / --client-cpus say)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(os.cpu_count() * (after[0] - before[0]) / (after[1] - before[1]), 2)


def thread_times(pid):
    """{tid: (thread name, CPU jiffies)} of process `pid`'s threads now, from /proc (empty where
    it cannot be read, as off Linux)."""
    times = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return times
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended
        # "tid (name) state ...": the name may hold spaces and parentheses; utime and stime are
        # the 12th and 13th fields after it.
        fields = stat[stat.rindex(")") + 2:].split()
        times[tid] = (stat[stat.index("(") + 1:stat.rindex(")")], int(fields[11]) + int(fields[12]))
    return times


def busiest_threads(before, after, seconds, top=5):
    """Between two thread_times() `seconds` apart, per thread name: [name, threads, cores busy in
    all, the busiest thread's share of one core], busiest names first. A serial bottleneck shows
    as a thread near 1.0."""
    if seconds <= 0:
        return []
    tick = os.sysconf("SC_CLK_TCK")
    names = {}
    for tid, (name, jiffies) in after.items():
        cores = (jiffies - before.get(tid, (name, 0))[1]) / tick / seconds
        entry = names.setdefault(name, [name, 0, 0.0, 0.0])
        entry[1] += 1
        entry[2] += cores
        entry[3] = max(entry[3], cores)
    ranked = sorted(names.values(), key=lambda e: -e[2])[:top]
    return [[n, count, round(total, 2), round(peak, 2)] for n, count, total, peak in ranked]


def run_load_sampled(cmd, out_path, server_pid, settle=1.0, period=0.25):
    """Runs the load client `cmd` like run_json, sampling its and the server's threads' CPU
    times: from `settle` s after its start (past the warm-up at the default settings) to the last
    sample before its session threads start to end. Returns (its JSON, {"seconds": the span,
    "server": busiest_threads, "client": busiest_threads})."""
    client = subprocess.Popen(cmd)
    start = time.time()
    first = last = None
    while client.poll() is None:
        time.sleep(period)
        sample = (time.time(), thread_times(server_pid), thread_times(client.pid))
        if sample[2] and sample[0] - start >= settle:
            first = first or sample
            if len(sample[2]) < len(first[2]):
                continue  # sessions are ending; their threads' times leave with them
            last = sample
    if client.returncode != 0:
        raise subprocess.CalledProcessError(client.returncode, cmd)
    with open(out_path) as f:
        result = json.load(f)
    threads = {}
    if first is not None and last is not first:
        seconds = last[0] - first[0]
        threads = {"seconds": round(seconds, 2), "server": busiest_threads(first[1], last[1], seconds),
                   "client": busiest_threads(first[2], last[2], seconds)}
    return result, threads


def config_with_batching(config, enabled, tmp):
    """A copy of `config` (paths resolved against its folder) with batching.enabled set."""
    with open(config) as f:
        doc = yaml.safe_load(f)
    doc.setdefault("batching", {})["enabled"] = enabled
    base = os.path.dirname(os.path.abspath(config))
    for stack in doc.get("stacks", {}).values():
        for key in ("spec_file", "weights"):
            if key in stack and not os.path.isabs(stack[key]):
                stack[key] = os.path.join(base, stack[key])
    path = os.path.join(tmp, f"config-batching-{'on' if enabled else 'off'}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--stack", default="video")
    ap.add_argument("--segment", type=int, default=64)
    ap.add_argument("--sessions", default="1,8,64")
    ap.add_argument("--json", default="")
    ap.add_argument("--batching", choices=["config", "on", "off", "both"], default="config")
    ap.add_argument("--duration", type=float, default=0,
                    help="seconds of load per session count (default: 60 segments in all)")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument("--channels", type=int, default=0,
                    help="connections the load client spreads its sessions over (0: its default, one per session)")
    ap.add_argument("--wire-dtype", choices=["stack", "float32", "float16", "bfloat16"], default="stack",
                    help="dtype of the features and outputs on the wire (stack: the stack's own, the load "
                         "client's default)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="unmeasured segments per session first (the memory banks fill during the first "
                         "capacity / tokens_per_segment segments; 20 covers the default stacks)")
    ap.add_argument("--server-cpus", default="",
                    help="run the server on these CPUs only (taskset list, e.g. 0-7); default: any")
    ap.add_argument("--client-cpus", default="",
                    help="run the load client on these CPUs only (taskset list); default: any")
    args = ap.parse_args()

    results = {"machine": os.uname().nodename, "cores": os.cpu_count(), "segment_tokens": args.segment,
               "date": time.strftime("%Y-%m-%d"), "runs": []}
    modes = {"config": [None], "on": [True], "off": [False], "both": [False, True]}[args.batching]
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_in_process:
            out = os.path.join(tmp, "inprocess.json")
            results["in_process"] = run_json(
                [*pinned(args.server_cpus), os.path.join(args.build, "bench", "hvlm-session-bench"),
                 "--config", args.config, "--stack", args.stack, "--segment", str(args.segment),
                 "--segments", "60", "--json", out], out)
        for batching in modes:
            config = args.config if batching is None else config_with_batching(args.config, batching, tmp)
            proc, address, metrics_address = start_server(args.build, config, tmp, args.server_cpus)
            try:
                for n in [int(s) for s in args.sessions.split(",")]:
                    out = os.path.join(tmp, f"load{n}.json")
                    amount = (["--duration", str(args.duration)] if args.duration > 0 else
                              ["--segments-per-session", str(max(3, 60 // n))])
                    metrics_before, wall_before = scrape(metrics_address), time.time()
                    cpu_before = cpu_times()
                    run, threads = run_load_sampled(
                        [*pinned(args.client_cpus), os.path.join(args.build, "client", "hvlm-client"),
                         "load", "--server", address,
                         "--stack", args.stack, "--sessions", str(n), "--segment", str(args.segment),
                         "--warmup", str(args.warmup),
                         *(["--dtype", args.wire_dtype] if args.wire_dtype != "stack" else []),
                         *(["--channels", str(min(args.channels, n))] if args.channels > 0 else []),
                         *amount, "--json", out], out, proc.pid)
                    # (Warm-up included; the load client and the server share the host.)
                    run["host_busy_cores"] = busy_cores(cpu_before, cpu_times())
                    run["batching"] = batching
                    run["wire_dtype"] = run["dtype"]  # as the client sent it
                    run["channels"] = args.channels
                    run["server_cpus"] = args.server_cpus or "any"
                    run["client_cpus"] = args.client_cpus or "any"
                    # Server-side means over the run (warm-up included): where a segment's time goes.
                    metrics_after, wall_after = scrape(metrics_address), time.time()
                    run["server_stage_means"] = stage_means(stage_totals(metrics_before), stage_totals(metrics_after))
                    # Share of the run's wall time the batcher thread spent issuing passes (warm-up
                    # included): near 1, passes are issued back to back (a bound on throughput only
                    # if the queue time grows too: docs/observability.md).
                    issued = "hvlm_batch_issue_seconds_total"
                    run["batcher_issue_busy"] = round(
                        (counter_total(metrics_after, issued) - counter_total(metrics_before, issued))
                        / max(wall_after - wall_before, 1e-9), 3)
                    # CPU per thread name, server and client: [name, threads, cores, busiest thread].
                    run["busiest_threads"] = threads
                    results["runs"].append(run)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)

    for r in results["runs"]:
        print(f"host cores busy, batching {r['batching']}, {r['sessions']} sessions: {r.get('host_busy_cores')} "
              f"of {os.cpu_count()}")
    print("| batching | sessions | segments | segments/s | p50 ms | p90 ms | p99 ms | server compute p50 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["runs"]:
        lat = r["latency_ms"]
        mode = {None: "config", True: "on", False: "off"}[r["batching"]]
        print(f"| {mode} | {r['sessions']} | {r['segments']} | {r['segments_per_second']:.1f} | {lat['p50']:.2f} | "
              f"{lat['p90']:.2f} | {lat['p99']:.2f} | {r.get('server_compute_ms', {}).get('p50', float('nan')):.2f} "
              f"| {r['errors']} |")
    for r in results["runs"]:
        print(f"server stage means, batching {r['batching']}, {r['sessions']} sessions: {r.get('server_stage_means')}; "
              f"batcher busy issuing {r.get('batcher_issue_busy')} of the time")
    for r in results["runs"]:
        inside, outside = r.get("server_total_ms") or {}, r.get("outside_server_ms") or {}
        stages = r.get("server_stages_ms") or {}
        stage_p99 = ", ".join(f"{name} {(stages.get(name) or {}).get('p99')}" for name in stages)
        print(f"round trip split, batching {r['batching']}, {r['sessions']} sessions: in the server p50 "
              f"{inside.get('p50')} p99 {inside.get('p99')} ms; outside its stages (gRPC both ways, the client) p50 "
              f"{outside.get('p50')} p99 {outside.get('p99')} ms; server stages p99 ms: {stage_p99}")
    for r in results["runs"]:
        threads = r.get("busiest_threads") or {}
        for side in ("server", "client"):
            listed = "; ".join(f"{name} x{count} {cores} cores (busiest {peak})"
                               for name, count, cores, peak in threads.get(side, []))
            print(f"busiest threads, batching {r['batching']}, {r['sessions']} sessions, {side}: {listed}")
    if "in_process" in results:
        base = results["in_process"]["latency_ms"]["p50"]
        single = next(r for r in results["runs"] if r["sessions"] == 1)
        results["rpc_overhead"] = (single["latency_ms"]["p50"] - base) / base
        print(f"in-process p50 {base:.2f} ms")
        print(f"RPC path overhead at 1 session (p50): {100 * results['rpc_overhead']:+.1f}% (target <= +15%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
