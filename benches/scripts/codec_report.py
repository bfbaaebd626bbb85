#!/usr/bin/env python3
"""Turns criterion's raw samples of the codec bench into the tables of BENCHMARKS.md.

Reads target/criterion/n{n}_{size}/{op}/{threads}/new/sample.json (per-sample iteration
counts and total times), prints min/median/max per iteration for every op, the ratio of encode
to its floors (raw reed-solomon-simd work + BLAKE2b over the same bytes), and the speed-up over
the Walrus encoder anchors of issue 2.

Usage: python3 benches/scripts/codec_report.py [target/criterion]
"""
import json
import os
import statistics
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"

# Walrus's encoder (walrus-core 1.56, single-threaded) on a machine of this kind (issue 2).
WALRUS_S = {
    ("1000", "1KiB", "encode"): 0.80,
    ("1000", "1MiB", "encode"): 0.82,
    ("1000", "32MiB", "encode"): 1.14,
    ("1000", "32MiB", "decode_nonsystematic"): 0.68,
    ("1000", "32MiB", "decode_systematic"): 0.040,
    ("1000", "32MiB", "decode_systematic_verified"): 0.040,
    ("10", "1MiB", "encode"): 0.0058,
}

ORDER = ["encode", "encode_reused", "metadata", "decode_systematic",
         "decode_systematic_verified", "decode_nonsystematic",
         "verify_primary", "verify_secondary", "floor_rs", "floor_blake2b"]
SIZE_ORDER = ["1KiB", "1MiB", "max1834952B", "32MiB", "128MiB", "1GiB"]


def fmt(seconds):
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def samples(path):
    with open(path) as f:
        data = json.load(f)
    per_iter = sorted(t / i for t, i in zip(data["times"], data["iters"]))
    return [x / 1e9 for x in per_iter]


def main():
    results = {}
    for group in sorted(os.listdir(ROOT)):
        if not group.startswith("n") or "_" not in group:
            continue
        n, size = group[1:].split("_", 1)
        for op in os.listdir(os.path.join(ROOT, group)):
            for threads in ("t1", "tall"):
                path = os.path.join(ROOT, group, op, threads, "new", "sample.json")
                if os.path.exists(path):
                    results[(n, size, op, threads)] = samples(path)

    cases = sorted({(n, s) for n, s, _, _ in results},
                   key=lambda c: (int(c[0]), SIZE_ORDER.index(c[1]) if c[1] in SIZE_ORDER else 99))
    for n, size in cases:
        print(f"\n### n = {n}, {size}\n")
        print("| op | threads | min | median | max | vs Walrus (median) |")
        print("|---|---|---|---|---|---|")
        for op in ORDER:
            for threads in ("t1", "tall"):
                s = results.get((n, size, op, threads))
                if not s:
                    continue
                med = statistics.median(s)
                anchor = WALRUS_S.get((n, size, op.replace("_reused", "")))
                vs = f"{anchor / med:.1f}x faster" if anchor and threads == "t1" else ""
                print(f"| {op} | {threads} | {fmt(s[0])} | {fmt(med)} | {fmt(s[-1])} | {vs} |")
        enc = results.get((n, size, "encode", "t1"))
        rs = results.get((n, size, "floor_rs", "t1"))
        b2 = results.get((n, size, "floor_blake2b", "t1"))
        if enc and rs and b2:
            floor = statistics.median(rs) + statistics.median(b2)
            print(f"\nencode (t1) / floor (raw RS + streamed BLAKE2b, t1) = "
                  f"{statistics.median(enc) / floor:.2f} (floor {fmt(floor)})")
        t1 = results.get((n, size, "encode", "t1"))
        ta = results.get((n, size, "encode", "tall"))
        if t1 and ta:
            print(f"encode scaling, all cores vs one: {statistics.median(t1) / statistics.median(ta):.2f}x")


if __name__ == "__main__":
    main()
