#!/usr/bin/env python3
"""Memory under churn (issue 18): one node (n = 100, reclaiming every 5 s) storing deletable
blobs of 64 KiB..1 MiB through one client as fast as it takes them, deleting each 30 stores
later, for --minutes; every 15 s it prints the stores so far, the node's RssAnon and the bytes
reclaimed. RssAnon must level off: a node whose heap keeps growing here grows in the soak too
(`benches/soak.py`), only slower.

    cargo build --release
    python3 benches/churn_rss.py [--minutes 4] [--wrap heaptrack -o /tmp/ht]

Environment variables reach the node (e.g. MALLOC_MMAP_THRESHOLD_ for a glibc build). Only
127.0.0.1; the node is stopped by its PID at the end.
"""

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_anon_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) // 1024
    return -1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=4)
    p.add_argument("--dir", default="/tmp/floe-churn-rss")
    p.add_argument("--floe", default=os.path.join(ROOT, "target", "release", "floe"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--wrap", nargs=argparse.REMAINDER, default=[], help="a command to run the node under")
    args = p.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    port = free_port()
    config = os.path.join(args.dir, "node.toml")
    with open(config, "w") as f:
        f.write(f'data_dirs = ["{args.dir}/data"]\nn_shards = 100\nreclaim_interval_seconds = 5\n'
                f'listen = "127.0.0.1:{port}"\n')
    node = subprocess.Popen(args.wrap + [args.floe, "node", "--config", config],
                            stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(args.dir, "node.log"), "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                requests.get(url + "/v1/health", timeout=1)
                break
            except requests.RequestException:
                assert time.time() < deadline, "the node did not start"
                time.sleep(0.2)
        pid = node.pid
        if args.wrap:  # the node is the wrapper's child
            out = subprocess.run(["pgrep", "-P", str(node.pid)], capture_output=True, text=True)
            pid = int(out.stdout.split()[-1]) if out.stdout.split() else node.pid
        rng = random.Random(args.seed)
        session = requests.Session()
        ids, stores, started, last = [], 0, time.time(), 0.0
        while time.time() - started < args.minutes * 60:
            body = rng.randbytes(rng.randint(64 << 10, 1 << 20))
            r = session.put(url + "/v1/blobs?epochs=5&deletable=true", data=body, timeout=60)
            r.raise_for_status()
            answer = r.json()
            created = answer.get("newlyCreated")
            ids.append(created["blobObject"]["blobId"] if created else answer["alreadyCertified"]["blobId"])
            if len(ids) > 30:
                session.delete(url + "/v1/blobs/" + ids.pop(0), timeout=60).raise_for_status()
            stores += 1
            if time.time() - last >= 15:
                last = time.time()
                metrics = session.get(url + "/metrics", timeout=10).text
                freed = sum(float(l.split()[-1]) for l in metrics.splitlines()
                            if l.startswith("floe_reclaim_freed_bytes_total"))
                print(f"{last - started:6.0f} s: {stores} stores, RssAnon {rss_anon_mib(pid)} MiB, "
                      f"reclaimed {freed / 2**20:.0f} MiB", flush=True)
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


if __name__ == "__main__":
    main()
