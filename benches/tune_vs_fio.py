#!/usr/bin/env python3
"""`floe tune`'s measuring engine against fio (ioengine=io_uring, direct=1), side by side in one
run on the same file system: the same block sizes, depths, file size and time per point,
alternating fio and floe, `--rounds` times. Prints each figure, then a Markdown table of
min/median/max and the ratio floe/fio (goal: within 15%, i.e. 0.85 to 1.15).

    python3 benches/tune_vs_fio.py [--dir /work/floe-bench-tune] [--rounds 5] [--seconds 3]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POINT = os.path.join(ROOT, "target", "release", "examples", "tune_point")
FILE_MIB = 1024
CASES = [  # (pattern, direction, block bytes, depth)
    ("sequential", "read", 1 << 20, 1),
    ("sequential", "read", 1 << 20, 4),
    ("sequential", "write", 1 << 20, 1),
    ("sequential", "write", 1 << 20, 4),
    ("random", "read", 4096, 1),
    ("random", "read", 4096, 16),
    ("random", "write", 4096, 1),
    ("random", "write", 4096, 16),
]


def fio(directory, pattern, direction, block, depth, seconds):
    rw = {("sequential", "read"): "read", ("sequential", "write"): "write",
          ("random", "read"): "randread", ("random", "write"): "randwrite"}[(pattern, direction)]
    out = subprocess.run(
        ["fio", "--output-format=json", "--name=job", f"--filename={directory}/fio.dat",
         "--ioengine=io_uring", "--direct=1", f"--rw={rw}", f"--bs={block}", f"--iodepth={depth}",
         f"--size={FILE_MIB}M", "--time_based", f"--runtime={seconds}", "--randrepeat=0"],
        capture_output=True, text=True, check=True).stdout
    job = json.loads(out)["jobs"][0][direction]
    return job["bw_bytes"] / 1e6, job["iops"]


def floe(directory, pattern, direction, block, depth, seconds):
    out = subprocess.run([POINT, directory, pattern, direction, str(block), str(depth), str(seconds),
                          str(FILE_MIB)], capture_output=True, text=True, check=True).stdout
    sample = json.loads(out)
    return sample["bytes_per_second"] / 1e6, sample["iops"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/work/floe-bench-tune")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("fio") is None:
        subprocess.run(["apt-get", "install", "-y", "fio"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "floe-tuning", "--example", "tune_point"],
                   cwd=ROOT, check=True)
    os.makedirs(args.dir, exist_ok=True)
    rows = []
    # fio's file is written once, fully, as floe's test file is: a file that fio lays out with
    # fallocate has unwritten extents, and writes into those cost extent conversions.
    subprocess.run(["fio", "--name=layout", f"--filename={args.dir}/fio.dat", "--ioengine=io_uring",
                    "--direct=1", "--rw=write", "--bs=1M", f"--size={FILE_MIB}M"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        for case in CASES:
            pattern, direction, block, depth = case
            results = {"fio": [], "floe": []}
            for _ in range(args.rounds):
                for name, fn in (("fio", fio), ("floe", floe)):
                    mbs, iops = fn(args.dir, pattern, direction, block, depth, args.seconds)
                    results[name].append(mbs if pattern == "sequential" else iops)
                    unit = "MB/s" if pattern == "sequential" else "IOPS"
                    value = mbs if pattern == "sequential" else iops
                    print(f"{pattern:10} {direction:5} {block:>8} B depth {depth:>2} {name:4}: {value:10.1f} {unit}",
                          flush=True)
            ratios = [f / g for f, g in zip(results["floe"], results["fio"])]
            rows.append((case, results, ratios))
    finally:
        for name in ("fio.dat", ".floe-tune.dat"):
            try:
                os.remove(os.path.join(args.dir, name))
            except FileNotFoundError:
                pass

    def mmm(values, fmt):
        return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))

    print()
    print("| workload | block | depth | fio min / med / max | floe tune min / med / max | floe / fio min / med / max |")
    print("|---|---|---|---|---|---|")
    for (pattern, direction, block, depth), results, ratios in rows:
        unit = "MB/s" if pattern == "sequential" else "IOPS"
        fmt = "{:.0f}"
        print(f"| {pattern} {direction} ({unit}) | {block} | {depth} | {mmm(results['fio'], fmt)} "
              f"| {mmm(results['floe'], fmt)} | {mmm(ratios, '{:.2f}')} |")


if __name__ == "__main__":
    main()
