#!/usr/bin/env python3
"""Soak (issue 18): --minutes of mixed load at --load (0.7) of the measured peak on a local
committee (`floe cluster up`, 4 nodes), sampled every --sample-seconds: each node's RssAnon and
open file descriptors, the data directories' disk use, and the reads' p99 latency. After
--warmup-minutes everything must be flat: the script fits a line to each series, prints its
slope (per hour and as a share of the series' mean), and draws them (soak.svg).

The load, all at once:
  - reads: floe-loadgen, open loop at the rate (whole blobs and ranges, every byte verified),
    through node 0 and node 1;
  - stores and deletes: --churn deletable blobs of 64 KiB..1 MiB stored per minute through
    node 0, and each deleted a minute later (so the data set, and the disk, stay the same size);
  - scrubbing: every node's background scrubber (at its default pace);
  - healing: every other minute node 2 or node 3 is stopped (SIGSTOP) for 15 s and continued:
    the stores it missed are healed by its sync rounds.

    cargo build --release
    python3 benches/soak.py [--minutes 30] [--load 0.7] [--dir DIR] [--out DIR]

Only 127.0.0.1; every process it starts is stopped (by `floe cluster down`, which stops them
by PID). Prints one line per sample, then the slopes; writes soak.json and soak.svg to --out.
"""

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import requests

import local_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_anon_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def disk_mib(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total / (1 << 20)


def slope(xs, ys):
    """Least-squares slope of ys over xs."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def svg(series, path, warmup):
    """One small chart per series (minutes on x), the warm-up shaded."""
    w, h, pad = 420, 160, 36
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h * ((len(series) + 1) // 2)}" '
             'font-family="sans-serif" font-size="11">']
    for k, (name, xs, ys) in enumerate(series):
        ox, oy = (k % 2) * w, (k // 2) * h
        x0, x1 = min(xs), max(xs) or 1
        y0, y1 = 0, max(ys) * 1.1 or 1
        sx = lambda x: ox + pad + (x - x0) / ((x1 - x0) or 1) * (w - 2 * pad)
        sy = lambda y: oy + h - pad + -(y - y0) / ((y1 - y0) or 1) * (h - 2 * pad)
        parts.append(f'<rect x="{sx(x0):.1f}" y="{oy + pad}" width="{sx(min(warmup, x1)) - sx(x0):.1f}" '
                     f'height="{h - 2 * pad}" fill="#eee"/>')
        parts.append(f'<text x="{ox + pad}" y="{oy + 14}">{name}</text>')
        parts.append(f'<text x="{ox + 2}" y="{sy(y1 / 1.1):.1f}">{y1 / 1.1:.4g}</text>')
        parts.append(f'<text x="{ox + w - pad}" y="{oy + h - 8}">{x1:.0f} min</text>')
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<line x1="{sx(x0)}" y1="{sy(0)}" x2="{sx(x1)}" y2="{sy(0)}" stroke="#999"/>')
    parts.append("</svg>")
    open(path, "w").write("\n".join(parts))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--warmup-minutes", type=float, default=5)
    p.add_argument("--sample-seconds", type=float, default=60)
    p.add_argument("--load", type=float, default=0.7, help="share of the measured peak")
    p.add_argument("--churn", type=int, default=30, help="deletable blobs stored (and deleted) per minute")
    p.add_argument("--shards", type=int, default=100)
    p.add_argument("--dir", default="/tmp/floe-soak")
    p.add_argument("--out", default=".")
    p.add_argument("--floe", default=os.path.join(ROOT, "target", "release", "floe"))
    p.add_argument("--loadgen", default=os.path.join(ROOT, "target", "release", "floe-loadgen"))
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    base = os.path.abspath(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    stop = threading.Event()
    problems = []
    pids = {}
    try:
        pids, urls = local_cluster.up(args.floe, base, 4, args.shards, 5)
        manifest = os.path.join(base, "data.json")
        subprocess.run([args.loadgen, "prepare", "--target", urls[0], "--count", "100", "--size",
                        "4KiB..1MiB", "--epochs", "50", "--manifest", manifest], check=True,
                       stdout=subprocess.DEVNULL)
        reads = ["--manifest", manifest, "--workload", "blob:30,range:70", "--range-size", "4KiB..256KiB",
                 "--target", urls[0], "--target", urls[1], "--json"]
        peak = json.loads(subprocess.run([args.loadgen, "run", *reads, "-c", "16", "-d", "20s", "--warmup", "3s"],
                                         check=True, capture_output=True, text=True).stdout)
        rate = max(1.0, peak["opsPerSecond"] * args.load)
        print(f"soak: peak {peak['opsPerSecond']:.0f} reads/s (closed loop, 16 connections); running "
              f"{args.minutes} min at {rate:.0f}/s ({args.load:.0%}) with {args.churn} stores and "
              f"deletes a minute and a node stopped for 15 s every other minute", flush=True)

        def churn():
            """Stores `churn` deletable blobs a minute, deleting each a minute later."""
            pending = []
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                size = int(65536 * 16 ** rng.random())
                body = random.Random(f"soak/{i}").randbytes(size)
                i += 1
                try:
                    r = requests.put(f"{urls[0]}/v1/blobs?epochs=5&deletable=true", data=body, timeout=60)
                    if r.status_code == 200:
                        a = r.json()
                        blob = (a.get("newlyCreated") or a.get("alreadyCertified"))["blobId"]
                        pending.append((time.monotonic(), blob))
                    else:
                        problems.append(f"store {r.status_code}: {r.text[:200]}")
                    while pending and time.monotonic() - pending[0][0] > 60:
                        _, blob = pending.pop(0)
                        r = requests.delete(f"{urls[0]}/v1/blobs/{blob}", timeout=60)
                        if r.status_code not in (200, 204):
                            problems.append(f"delete {r.status_code}: {r.text[:200]}")
                except requests.RequestException as e:
                    problems.append(f"store/delete: {e!r}")
                stop.wait(max(0.0, 60 / args.churn - (time.monotonic() - started)))

        def hangs():
            """Every other minute, node 2 or 3 stopped for 15 s."""
            k = 0
            while not stop.wait(120 if k else 60):
                pid = pids[2 + k % 2]
                os.kill(pid, signal.SIGSTOP)
                stop.wait(15)
                os.kill(pid, signal.SIGCONT)
                k += 1

        threads = [threading.Thread(target=churn), threading.Thread(target=hangs)]
        for t in threads:
            t.start()
        samples = []
        start = time.monotonic()
        total = args.minutes * 60
        while time.monotonic() - start < total:
            seconds = min(args.sample_seconds, total - (time.monotonic() - start))
            run = subprocess.run([args.loadgen, "run", *reads, "-R", f"{rate:.1f}", "-c", "32",
                                  "-d", f"{max(1, int(seconds))}s", "--warmup", "0s"],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                problems.append(f"loadgen: {run.stderr[-300:]}")
                continue
            report = json.loads(run.stdout)
            minute = (time.monotonic() - start) / 60
            sample = {
                "minute": minute,
                "rss_anon_mib": sum(rss_anon_mib(pid) for pid in pids.values()),
                "fds": sum(fds(pid) for pid in pids.values()),
                "disk_mib": disk_mib(base),
                "p99_ms": report["latencyMs"]["p99"],
                "reads_per_second": report["opsPerSecond"],
                "errors": sum(report["errors"].values()),
            }
            samples.append(sample)
            print(f"{minute:5.1f} min: RssAnon {sample['rss_anon_mib']:.0f} MiB, {sample['fds']} fds, disk "
                  f"{sample['disk_mib']:.0f} MiB, p99 {sample['p99_ms']:.1f} ms, {sample['reads_per_second']:.0f} "
                  f"reads/s, {sample['errors']} errors", flush=True)
        stop.set()
        for t in threads:
            t.join()
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        steady = [s for s in samples if s["minute"] > args.warmup_minutes] or samples
        xs = [s["minute"] / 60 for s in steady]
        result = {"minutes": args.minutes, "rate": rate, "peak": peak["opsPerSecond"],
                  "samples": samples, "slopes_per_hour": {}, "errors": sum(s["errors"] for s in samples),
                  "problems": problems[:20]}
        print("after warm-up, per hour (and as a share of the mean):")
        for key, unit in [("rss_anon_mib", "MiB"), ("fds", "fds"), ("disk_mib", "MiB"), ("p99_ms", "ms")]:
            ys = [s[key] for s in steady]
            k = slope(xs, ys)
            mean = statistics.fmean(ys) if ys else 0
            share = k / mean if mean else 0.0
            result["slopes_per_hour"][key] = {"slope": k, "mean": mean, "share_of_mean": share}
            print(f"  {key:14} {k:+10.2f} {unit}/h  ({share:+.1%} of {mean:.1f} {unit} per hour)")
        print(f"read errors: {result['errors']}; store/delete problems: {len(problems)}")
        for line in problems[:5]:
            print("  " + line)
        with open(os.path.join(args.out, "soak.json"), "w") as f:
            json.dump(result, f, indent=1)
        svg([(k, [s["minute"] for s in samples], [s[k] for s in samples])
             for k in ["rss_anon_mib", "fds", "disk_mib", "p99_ms"]],
            os.path.join(args.out, "soak.svg"), args.warmup_minutes)
        print(f"wrote {args.out}/soak.json and {args.out}/soak.svg")
    finally:
        stop.set()
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        local_cluster.down(args.floe, base)


if __name__ == "__main__":
    sys.exit(main())
