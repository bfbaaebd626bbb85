#!/usr/bin/env python3
"""The default node (n = 1000, no config) holding 30 blobs of 64 KiB..1 MiB, restarted cold:
its CPU use while idle, and the latency of the first GET of each blob (issue 14).

    cargo build --release
    python3 benches/default_node_restart.py [--rounds 3] [--binary target/release/floe]

Each round: a fresh data directory, a node on a free loopback port (`floe node`, defaults
but --data-dir and --listen), 30 blobs stored through its publisher, SIGTERM, the page cache
dropped for the data directory's files when run as root (`echo 1 > /proc/sys/vm/drop_caches`),
a restart, 2 s to settle, then the node's CPU time (utime + stime from /proc) over 10 s idle,
then one GET of each blob in turn, timed from connect to last byte. Prints each round and the
min / median / max over rounds.
"""

import argparse
import hashlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, data, port):
    node = subprocess.Popen(
        [binary, "node", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=1).read()
            return node
        except OSError:
            time.sleep(0.05)
    node.kill()
    sys.exit("the node did not come up")


def stop(node):
    node.send_signal(signal.SIGTERM)
    node.wait(timeout=60)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_once(binary, seed):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=os.environ.get("FLOE_BENCH_DIR")) as data:
        port = free_port()
        node = start(binary, data, port)
        blobs = []
        for _ in range(30):
            body = rng.randbytes(rng.randint(64 << 10, 1 << 20))
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/blobs?epochs=5", data=body, method="PUT"
            )
            answer = urllib.request.urlopen(request, timeout=120).read()
            blob_id = __import__("json").loads(answer)["newlyCreated"]["blobId"]
            blobs.append((blob_id, hashlib.sha256(body).digest()))
        stop(node)
        if os.geteuid() == 0:
            subprocess.run(["sync"])
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1")
        node = start(binary, data, port)
        try:
            time.sleep(2)
            before = cpu_seconds(node.pid)
            time.sleep(10)
            idle = (cpu_seconds(node.pid) - before) / 10
            firsts = []
            for blob_id, digest in blobs:
                started = time.perf_counter()
                body = urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v1/blobs/{blob_id}", timeout=120
                ).read()
                firsts.append(time.perf_counter() - started)
                assert hashlib.sha256(body).digest() == digest, blob_id
        finally:
            stop(node)
    return idle, statistics.median(firsts), max(firsts)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--binary", default="target/release/floe")
    args = parser.parse_args()
    results = []
    for r in range(args.rounds):
        idle, median, worst = round_once(args.binary, r)
        results.append((idle, median, worst))
        print(
            f"round {r}: idle CPU {idle * 100:.1f}% of a core, first GET median "
            f"{median * 1000:.1f} ms, max {worst * 1000:.1f} ms",
            flush=True,
        )
    for name, index, scale, unit in [
        ("idle CPU (% of a core)", 0, 100, ""),
        ("first GET median (ms)", 1, 1000, ""),
        ("first GET max (ms)", 2, 1000, ""),
    ]:
        values = sorted(x[index] * scale for x in results)
        print(
            f"{name}: min {values[0]:.1f} / median {statistics.median(values):.1f} / "
            f"max {values[-1]:.1f}{unit}"
        )


if __name__ == "__main__":
    main()
