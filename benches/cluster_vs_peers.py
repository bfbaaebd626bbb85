#!/usr/bin/env python3
"""A local 4-node floe cluster (n = 100, separate processes and data directories, loopback)
side by side with its peers in one run:

- PUT of 64 MiB blobs through node 0 against the codec's own encode of the same bytes at the
  same n (`floe encode`, the ceiling: a PUT encodes, then moves and stores ~4.4x the bytes);
- hot GET (cached in node 0, which runs on every core like nginx's workers) of a 64 MiB and a
  1 MiB blob against nginx (sendfile on) serving the same bytes as a file, wrk, alternating;
- cold GET (node 3 runs without a cache: every read gathers and verifies slivers from the
  other nodes) against the same nginx;
- healing: node 1's data directory is wiped and it is restarted; the time until it holds every
  sliver again, the bytes it rebuilt and the bytes it fetched.

    python3 benches/cluster_vs_peers.py [--rounds 3] [--duration 5] [--heal-blobs 4]

Prints each run and min/median/max tables in Markdown. Needs nginx and wrk (installed from
Debian's packages when missing). Every process it starts is stopped by PID; only 127.0.0.1.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import node_vs_nginx as nn  # noqa: E402

FLOE = nn.FLOE
N = 100
NODES = 4
MiB = 1 << 20


def http(method, url, body=None, timeout=600):
    request = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


class Cluster:
    def __init__(self, work):
        self.work = work
        self.ports = [nn.free_port() for _ in range(NODES)]
        committee = os.path.join(work, "committee.toml")
        per = N // NODES
        with open(committee, "w") as f:
            f.write(f"n_shards = {N}\n")
            for i, port in enumerate(self.ports):
                f.write(f'[[nodes]]\nname = "n{i}"\naddress = "127.0.0.1:{port}"\n'
                        f'shards = ["{i * per}-{(i + 1) * per - 1}"]\n')
        self.procs = [None] * NODES
        self.configs = []
        for i, port in enumerate(self.ports):
            home = os.path.join(work, f"n{i}")
            os.makedirs(home, exist_ok=True)
            config = os.path.join(home, "node.toml")
            # Node 3 keeps no cache: its reads are the cold path. Node 0 serves the hot reads on
            # every core, as nginx does (worker_processes auto); the others take one core each.
            cache = 0 if i == 3 else 1 << 30
            cores = 0 if i == 0 else 1
            with open(config, "w") as f:
                f.write(f'name = "n{i}"\nlisten = "127.0.0.1:{port}"\n'
                        f'data_dirs = ["{home}/data"]\ncommittee = "{committee}"\n'
                        f"cores = {cores}\npin_cores = false\nsync_interval_seconds = 1\n"
                        f"cache_bytes_per_core = {cache}\nscrub_bytes_per_second = 0\n")
            self.configs.append(config)
        for i in range(NODES):
            self.start(i)

    def url(self, i):
        return f"http://127.0.0.1:{self.ports[i]}"

    def start(self, i):
        log = open(os.path.join(self.work, f"n{i}", "node.log"), "a")
        self.procs[i] = subprocess.Popen([FLOE, "node", "--config", self.configs[i]],
                                         stdout=log, stderr=log,
                                         env={**os.environ, "RUST_LOG": "warn"})
        nn.wait_http(self.url(i) + "/v1/health")

    def stop(self, i):
        proc = self.procs[i]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self):
        for i, proc in enumerate(self.procs):
            if proc and proc.poll() is None:
                self.stop(i)


def metric(url, name):
    _, body = http("GET", url + "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def mmm(values, fmt="{:.2f}"):
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--heal-blobs", type=int, default=4,
                        help="64 MiB blobs stored before node 1 is wiped (16 give it ~1 GiB of slivers)")
    parser.add_argument("--dir", default="/work/floe-bench-cluster")
    args = parser.parse_args()
    nn.ensure_tools()
    os.makedirs(args.dir, exist_ok=True)
    work = tempfile.mkdtemp(dir=args.dir)
    os.chmod(work, 0o755)
    cluster = Cluster(work)
    nginx = None
    try:
        # PUT against the codec's encode, alternating.
        put, enc = [], []
        blob_path = os.path.join(work, "blob")
        out = os.path.join(work, "enc")
        for r in range(args.rounds):
            blob = os.urandom(64 * MiB)
            with open(blob_path, "wb") as f:
                f.write(blob)
            shutil.rmtree(out, ignore_errors=True)
            e = subprocess.run([FLOE, "encode", blob_path, "--shards", str(N), "--out", out],
                               capture_output=True, text=True, check=True).stderr
            seconds = float(re.search(r"in ([0-9.]+) s", e).group(1))
            enc.append(64 * MiB / seconds / 1e6)
            started = time.perf_counter()
            status, answer = http("PUT", cluster.url(0) + "/v1/blobs?epochs=5", blob)
            put.append(64 * MiB / (time.perf_counter() - started) / 1e6)
            assert status == 200 and b"newlyCreated" in answer, answer
            print(f"  64 MiB: encode {enc[-1]:7.1f} MB/s   PUT (4 nodes) {put[-1]:7.1f} MB/s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        # GET: the same bytes from floe (hot: node 0's cache; cold: node 3) and from nginx.
        www = os.path.join(work, "www")
        os.makedirs(www)
        cases = []
        for label, size in (("64 MiB", 64 * MiB), ("1 MiB", MiB)):
            blob = os.urandom(size)
            _, answer = http("PUT", cluster.url(1) + "/v1/blobs?epochs=5", blob)
            blob_id = json.loads(answer)["newlyCreated"]["blobId"]
            with open(os.path.join(www, blob_id), "wb") as f:
                f.write(blob)
            assert http("GET", f"{cluster.url(0)}/v1/blobs/{blob_id}")[1] == blob
            assert http("GET", f"{cluster.url(3)}/v1/blobs/{blob_id}")[1] == blob
            cases.append((label, blob_id))
        port = nn.free_port()
        nginx = nn.start_nginx(www, port, work)
        nginx_url = f"http://127.0.0.1:{port}"
        nn.wait_http(f"{nginx_url}/{cases[0][1]}")
        rows = []
        for label, blob_id in cases:
            for kind, node, conns in (("hot", 0, 32), ("cold", 3, 8)):
                urls = {"floe": f"{cluster.url(node)}/v1/blobs/{blob_id}",
                        "nginx": f"{nginx_url}/{blob_id}"}
                for url in urls.values():
                    nn.wrk(url, conns, 1)
                results = {"floe": [], "nginx": []}
                for _ in range(args.rounds):
                    for name, url in urls.items():
                        gbs, p50, p99 = nn.wrk(url, conns, args.duration)
                        results[name].append((gbs, p50, p99))
                        print(f"  {label} {kind:4} {conns:3} conns {name:5}: {gbs:6.2f} GB/s  "
                              f"p50 {p50:8.2f} ms  p99 {p99:8.2f} ms", flush=True)
                ratios = [f[0] / g[0] for f, g in zip(results["floe"], results["nginx"])]
                rows.append((label, kind, conns, results, ratios))
        # Heal: more blobs, then wipe node 1 and time its rebuild.
        for _ in range(max(0, args.heal_blobs - args.rounds - 2)):
            status, _ = http("PUT", cluster.url(0) + "/v1/blobs?epochs=5", os.urandom(64 * MiB))
            assert status == 200
        held = metric(cluster.url(1), "floe_disk_used_bytes")
        cluster.stop(1)
        shutil.rmtree(os.path.join(work, "n1", "data"))
        started = time.perf_counter()
        cluster.start(1)
        while True:
            _, body = http("GET", cluster.url(1) + "/v1/health")
            sync = json.loads(body)["sync"]
            if sync["lastRunUnixSeconds"] > 0 and sync["missingSlivers"] == 0 and sync["blobsKnown"] > 0:
                break
            if time.perf_counter() - started > 3600:
                raise RuntimeError(f"node 1 did not heal within an hour: {sync}")
            time.sleep(0.5)
        heal_s = time.perf_counter() - started
        rebuilt = metric(cluster.url(1), "floe_heal_rebuilt_bytes_total")
        fetched = metric(cluster.url(1), "floe_heal_fetched_bytes_total")
        blobs = json.loads(http("GET", cluster.url(1) + "/v1/health")[1])["sync"]["blobsKnown"]
    finally:
        if nginx:
            nginx.send_signal(signal.SIGTERM)
            nginx.wait(timeout=20)
        cluster.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("| 64 MiB blobs, n = 100, 4 nodes | min / median / max MB/s |")
    print("|---|---|")
    print(f"| codec encode (`floe encode`, all cores) | {mmm(enc, '{:.0f}')} |")
    print(f"| PUT /v1/blobs through node 0 | {mmm(put, '{:.0f}')} |")
    print(f"| ratio PUT / encode | {mmm([p / e for p, e in zip(put, enc)])} |")
    print()
    print("| blob | path | conns | floe GB/s min/med/max | nginx GB/s min/med/max | floe p50 / p99 ms "
          "| nginx p50 / p99 ms | ratio floe/nginx min/med/max |")
    print("|---|---|---|---|---|---|---|---|")
    for label, kind, conns, results, ratios in rows:
        f, g = results["floe"], results["nginx"]
        print(f"| {label} | {kind} | {conns} | {mmm([r[0] for r in f])} | {mmm([r[0] for r in g])} "
              f"| {statistics.median(r[1] for r in f):.2f} / {statistics.median(r[2] for r in f):.2f} "
              f"| {statistics.median(r[1] for r in g):.2f} / {statistics.median(r[2] for r in g):.2f} "
              f"| {mmm(ratios)} |")
    print()
    print(f"heal: node 1 held {held / 1e6:.0f} MB on disk ({blobs} blobs); rebuilt {rebuilt / 1e6:.0f} MB "
          f"of slivers in {heal_s:.1f} s ({rebuilt / heal_s / 1e6:.1f} MB/s), fetched {fetched / 1e6:.0f} MB "
          f"(fetched/rebuilt {fetched / rebuilt:.3f})")


if __name__ == "__main__":
    sys.exit(main())
