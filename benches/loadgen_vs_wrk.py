#!/usr/bin/env python3
"""floe-loadgen against wrk, side by side in one run: both drive the same nginx static file
(sendfile on, page cache) with the same connections, threads and duration, alternating wrk,
loadgen, wrk, loadgen. For each run: requests/s, CPU seconds the load generator itself used
per 1000 requests (from wait4's rusage of its process), p50/p99 latency. Prints min/median/max
and the ratios loadgen/wrk as Markdown tables.

    python3 benches/loadgen_vs_wrk.py [--rounds 5] [--duration 5] [--connections 32] [--json FILE]

Cases: a 1 MiB file and a 4 KiB file. loadgen runs the `url` workload, closed loop, no warm-up
(wrk has none), so both count the same requests. Needs nginx and wrk (installed from Debian's
packages when missing). Every process it starts is stopped by PID; only 127.0.0.1 is used.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from node_vs_nginx import ROOT, ensure_tools, free_port, start_nginx, wait_http  # noqa: E402

LOADGEN = os.path.join(ROOT, "target", "release", "floe-loadgen")
CASES = [("1 MiB", 1 << 20), ("4 KiB", 4096)]


def timed(argv):
    """Runs argv; returns (stdout, CPU seconds of that process: user + system)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {text[-500:]}")
    return text, usage.ru_utime + usage.ru_stime


def run_wrk(url, connections, threads, duration):
    out, cpu = timed(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url])
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    if re.search(r"Non-2xx or 3xx responses", out) or re.search(r"Socket errors", out):
        raise RuntimeError(f"wrk saw errors:\n{out}")

    def latency(p):
        m = re.search(rf"^\s+{p}%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]

    m = re.search(r"Latency\s+([0-9.]+)(us|ms|s)\s", out)
    mean = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]
    return {"rps": rps, "cpu_per_k": cpu / requests * 1000, "mean": mean, "p50": latency(50),
            "p99": latency(99), "requests": requests}


def run_loadgen(url, connections, threads, duration):
    out, cpu = timed([LOADGEN, "run", "--target", url, "--workload", "url", "-c", str(connections),
                      "-t", str(threads), "-d", f"{duration}s", "--warmup", "0s", "--json"])
    report = json.loads(out)
    if report["errors"]:
        raise RuntimeError(f"loadgen saw errors: {report['errors']} {report['errorSample']}")
    requests = report["ok"] + report["unfinished"]
    return {"rps": report["opsPerSecond"], "cpu_per_k": cpu / requests * 1000,
            "mean": report["latencyMs"]["mean"], "p50": report["latencyMs"]["p50"],
            "p99": report["latencyMs"]["p99"], "requests": requests}


def mmm(values, fmt="{:.2f}"):
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results as JSON to this file")
    args = parser.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "floe-loadgen"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="floe-bench-loadgen-")
    os.chmod(work, 0o755)  # nginx's workers run as another user
    files = os.path.join(work, "www")
    os.makedirs(files)
    for label, size in CASES:
        with open(os.path.join(files, f"{size}.bin"), "wb") as f:
            f.write(os.urandom(size))
    port = free_port()
    nginx = start_nginx(files, port, work)
    results = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/4096.bin")
        for label, size in CASES:
            url = f"http://127.0.0.1:{port}/{size}.bin"
            # Warm the page cache and both tools.
            run_wrk(url, args.connections, args.threads, 1)
            run_loadgen(url, args.connections, args.threads, 1)
            runs = {"wrk": [], "loadgen": []}
            for round_ in range(args.rounds):
                for tool, fn in (("wrk", run_wrk), ("loadgen", run_loadgen)):
                    r = fn(url, args.connections, args.threads, args.duration)
                    runs[tool].append(r)
                    print(f"{label} round {round_ + 1} {tool:8} {r['rps']:10.0f} req/s  "
                          f"{r['cpu_per_k']:.3f} CPU s/1000 req  mean {r['mean']:.3f} ms  p50 {r['p50']:.3f} ms  "
                          f"p99 {r['p99']:.3f} ms", flush=True)
            results[label] = runs
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        subprocess.run(["rm", "-rf", work])
    print(f"\n{args.connections} connections, {args.threads} threads each, {args.duration} s per run, "
          f"{args.rounds} rounds, nginx sendfile on, page cache; min / median / max\n")
    print("| file | tool | req/s | CPU s per 1000 req | mean ms | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for label, runs in results.items():
        for tool in ("wrk", "loadgen"):
            r = runs[tool]
            print(f"| {label} | {tool} | {mmm([x['rps'] for x in r], '{:.0f}')} | "
                  f"{mmm([x['cpu_per_k'] for x in r], '{:.3f}')} | {mmm([x['mean'] for x in r], '{:.3f}')} | "
                  f"{mmm([x['p50'] for x in r], '{:.3f}')} | "
                  f"{mmm([x['p99'] for x in r], '{:.3f}')} |")
    print("\n| file | req/s loadgen/wrk | CPU per request loadgen/wrk | mean latency loadgen/wrk | "
          "p50 loadgen/wrk | p99 loadgen/wrk |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for label, runs in results.items():
        ratios = {k: [l[k] / w[k] for l, w in zip(runs["loadgen"], runs["wrk"])]
                  for k in ("rps", "cpu_per_k", "mean", "p50", "p99")}
        summary[label] = {k: (min(v), statistics.median(v), max(v)) for k, v in ratios.items()}
        print(f"| {label} | {mmm(ratios['rps'])} | {mmm(ratios['cpu_per_k'])} | {mmm(ratios['mean'])} | "
              f"{mmm(ratios['p50'])} | "
              f"{mmm(ratios['p99'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "ratios": summary}, f, indent=1)


if __name__ == "__main__":
    main()
