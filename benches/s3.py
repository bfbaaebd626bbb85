#!/usr/bin/env python3
"""The S3 API beside floe's own API on the default node (n = 1000), in one run (issue 16):

- GetObject against floe's GET of the same blobs: floe-loadgen's `s3` workload (SigV4
  presigned GetObject) and its `blob` workload, alternating, closed loop, 1 MiB objects;
- PutObject of a 1 GB object (boto3 at its defaults: one PUT with a CRC32 trailer; and the AWS
  CLI's `s3 cp`: multipart, 8 MB parts) against `PUT /v1/blobs` of the same size (curl -T),
  alternating, fresh bytes each time;
- ListObjectsV2 page time (1,000 keys) through boto3 on a bucket of 10,000 keys: the first
  page, a page by continuation, a page rolled up at a delimiter. (The namespace's page time at
  1 million keys is `cargo bench -p floe-benches --bench namespace`.)

    cargo build --release
    python3 benches/s3.py [--rounds 3] [--gb 1] [--dir /work/floe-bench-s3]

Needs curl, boto3 and the AWS CLI. Every process it starts is stopped by PID; only 127.0.0.1
is used.
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import boto3
from botocore.config import Config

from big_blob import FLOE, ROOT, free_port, make_file, mmm, put, wait_http

LOADGEN = os.path.join(ROOT, "target", "release", "floe-loadgen")
KEY, SECRET = "floebench", "floe-bench-secret"


class Node:
    def __init__(self, data):
        self.port, self.s3_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.s3 = f"http://127.0.0.1:{self.s3_port}"
        self.proc = subprocess.Popen(
            [FLOE, "node", "--data-dir", data, "--listen", f"127.0.0.1:{self.port}",
             "--s3-listen", f"127.0.0.1:{self.s3_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn", "FLOE_S3_ACCESS_KEY_ID": KEY,
                 "FLOE_S3_SECRET_ACCESS_KEY": SECRET})
        wait_http(f"{self.url}/v1/health")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


ENV = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
ENV.pop("AWS_CA_BUNDLE", None)


def loadgen(*args):
    out = subprocess.run([LOADGEN, *args], capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)
    return out.stdout


def reads(node, manifest, rounds, seconds):
    results = {"blob": [], "s3": []}
    for _ in range(rounds):
        for workload, target in [("blob", node.url), ("s3", node.s3)]:
            report = json.loads(loadgen(
                "run", "--target", target, "--manifest", manifest, "--workload", workload,
                "-c", "16", "-d", f"{seconds}s", "--warmup", "1s", "--verify", "0.1", "--json"))
            assert report["ok"] > 0 and not report["errors"], report["errors"]
            results[workload].append(report)
    print("\n## GetObject vs GET /v1/blobs/{id}: 1 MiB blobs, 16 connections, closed loop")
    for workload, name in [("blob", "floe GET"), ("s3", "S3 GetObject")]:
        rs = results[workload]
        print(f"{name:14} ops/s {mmm([r['opsPerSecond'] for r in rs], '{:.0f}')}  "
              f"MB/s {mmm([r['bytesPerSecond'] / 1e6 for r in rs], '{:.0f}')}  "
              f"p50 ms {mmm([r['latencyMs']['p50'] for r in rs])}  "
              f"p99 ms {mmm([r['latencyMs']['p99'] for r in rs])}")
    ratios = [s["opsPerSecond"] / b["opsPerSecond"] for s, b in zip(results["s3"], results["blob"])]
    print(f"GetObject/GET throughput ratio (min/median/max): {mmm(ratios)}")


def fresh(path):
    """New bytes at the start of the file: a new blob each time."""
    with open(path, "r+b") as f:
        f.write(os.urandom(64))


def puts(node, path, rounds):
    s3 = boto3.client("s3", endpoint_url=node.s3, aws_access_key_id=KEY,
                      aws_secret_access_key=SECRET, region_name="us-east-1",
                      config=Config(read_timeout=600))
    s3.create_bucket(Bucket="put")
    size = os.path.getsize(path)
    times = {"floe PUT": [], "boto3 put_object": [], "aws s3 cp": []}
    for _ in range(rounds):
        fresh(path)
        times["floe PUT"].append(put(node, path)[1])
        fresh(path)
        started = time.perf_counter()
        with open(path, "rb") as f:
            s3.put_object(Bucket="put", Key="one", Body=f)
        times["boto3 put_object"].append(time.perf_counter() - started)
        fresh(path)
        started = time.perf_counter()
        subprocess.run(["aws", "--endpoint-url", node.s3, "s3", "cp", "--quiet", path, "s3://put/cli"],
                       check=True, env=ENV)
        times["aws s3 cp"].append(time.perf_counter() - started)
    print(f"\n## PutObject of {size / 1e9:.1f} GB (fresh bytes each time) vs PUT /v1/blobs")
    for name, ts in times.items():
        print(f"{name:17} s {mmm(ts)}  MB/s {mmm([size / t / 1e6 for t in ts], '{:.0f}')}")
    floe = statistics_median(times["floe PUT"])
    for name in ["boto3 put_object", "aws s3 cp"]:
        print(f"{name} / floe PUT time (median): {statistics_median(times[name]) / floe:.2f}")


def statistics_median(values):
    import statistics
    return statistics.median(values)


def listing(node, keys):
    s3 = boto3.client("s3", endpoint_url=node.s3, aws_access_key_id=KEY,
                      aws_secret_access_key=SECRET, region_name="us-east-1")
    s3.create_bucket(Bucket="list")
    started = time.perf_counter()

    def name(i):
        s3.put_object(Bucket="list", Key=f"shard-{i // 100:05d}/file-{i:08d}", Body=b"")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(name, range(keys)))
    print(f"\n## ListObjectsV2 on {keys} keys (named in {time.perf_counter() - started:.0f} s by 16 threads)")
    token = s3.list_objects_v2(Bucket="list", MaxKeys=1000, StartAfter=f"shard-{keys // 200:05d}")["NextContinuationToken"]
    cases = {
        "first page": dict(Bucket="list", MaxKeys=1000),
        "by continuation": dict(Bucket="list", MaxKeys=1000, ContinuationToken=token),
        "delimiter": dict(Bucket="list", MaxKeys=1000, Delimiter="/"),
    }
    presigner = boto3.client("s3", endpoint_url=node.s3, aws_access_key_id=KEY,
                             aws_secret_access_key=SECRET, region_name="us-east-1",
                             config=Config(signature_version="s3v4"))
    for label, kwargs in cases.items():
        times, raw = [], []
        url = presigner.generate_presigned_url("list_objects_v2", Params=kwargs, ExpiresIn=600)
        for _ in range(20):
            started = time.perf_counter()
            s3.list_objects_v2(**kwargs)
            times.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            urllib.request.urlopen(url).read()
            raw.append((time.perf_counter() - started) * 1000)
        print(f"{label:16} ms per page: boto3 (parse included) {mmm(times)}; the HTTP answer alone {mmm(raw)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--dir", default="/work/floe-bench-s3")
    parser.add_argument("--only", choices=["reads", "puts", "list"], help="one part only")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo; nproc; grep -o -m1 'avx512f' /proc/cpuinfo || echo no-avx512"],
                         capture_output=True, text=True).stdout.split("\n")
    print(f"date {time.strftime('%Y-%m-%d')}; {cpu[0].split(':')[-1].strip()}, {cpu[1]} cores, {cpu[2]}")
    node = Node(os.path.join(args.dir, "data"))
    try:
        if args.only in (None, "reads"):
            manifest = os.path.join(args.dir, "manifest.json")
            loadgen("prepare", "--target", node.url, "--manifest", manifest, "--count", "20",
                    "--size", "1MiB", "--s3", node.s3)
            reads(node, manifest, args.rounds, args.seconds)
        if args.only in (None, "puts"):
            path = os.path.join(args.dir, "big.bin")
            make_file(path, int(args.gb * 1e9))
            puts(node, path, args.rounds)
            os.remove(path)
        if args.only in (None, "list"):
            listing(node, args.keys)
    finally:
        node.stop()
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
