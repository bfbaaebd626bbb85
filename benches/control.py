#!/usr/bin/env python3
"""The control plane on etcd (issue 17), measured with real processes on 127.0.0.1:

- learn: how long a node takes to learn of a new blob through the registry. The blob's
  metadata is put on one node through the node API (taken from a helper node that stored it),
  then its registry record is written straight to etcd; the time until another node holds
  the metadata (watch, apply, metadata fetched from the peer, stored) is measured, per blob.
- migrate: a fourth node joins a committee of three at n = 100 holding BLOBS blobs of 1 MB
  and pulls 17 shards (`floe committee propose --now`): seconds, MB/s, sliver bytes pulled,
  and the givers' HTTP bytes sent per byte pulled.
- catchup: a simulated registry of COUNT records written straight to etcd
  (`registry-fill`); a new node on it reads and applies the whole registry: seconds and its
  peak RssAnon.
- listing: what today's listing sync costs per page of 1,000 blobs (measured on a node
  holding them), against the registry's steady state, for 100 nodes and 10 million blobs.

    cargo build --release -p floe-cli -p floe-benches
    python3 benches/control.py [--rounds 20] [--blobs 100] [--count 1000000]

Needs etcd and etcdctl (Debian: etcd-server, etcd-client). Every process it starts is stopped
by PID; only 127.0.0.1 is used.
"""

import argparse
import http.client as httpclient
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOE = os.path.join(ROOT, "target", "release", "floe")
FILL = os.path.join(ROOT, "target", "release", "registry-fill")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=60):
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def metric(url, name):
    _, text = http("GET", url + "/metrics")
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Etcd:
    def __init__(self, home):
        self.url = f"http://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        self.log = open(os.path.join(home, "etcd.log"), "w")
        self.proc = subprocess.Popen(
            ["etcd", "--name", "m0", "--data-dir", os.path.join(home, "etcd"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"m0={peer}", "--quota-backend-bytes", str(8 << 30),
             "--logger", "zap", "--log-level", "error"],
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while subprocess.run(self.ctl("endpoint", "health"), capture_output=True).returncode:
            if time.time() > deadline:
                raise RuntimeError("etcd did not come up")
            time.sleep(0.1)

    def ctl(self, *args):
        return ["etcdctl", "--endpoints", self.url, *args]

    def run(self, *args):
        return subprocess.run(self.ctl(*args), capture_output=True, check=True, text=True,
                              env={**os.environ, "ETCDCTL_API": "3"}).stdout

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Node:
    def __init__(self, home, name, port, source, shards=None):
        self.home, self.name, self.port = home, name, port
        self.url = f"http://127.0.0.1:{port}"
        os.makedirs(home, exist_ok=True)
        self.config = os.path.join(home, "node.toml")
        lines = [f'name = "{name}"', f'listen = "127.0.0.1:{port}"',
                 f'data_dirs = ["{os.path.join(home, "data")}"]', "pin_cores = false", source]
        if shards:
            lines.append(f"n_shards = {shards}")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.home, "node.log"), "a")
        self.proc = subprocess.Popen([FLOE, "node", "--config", self.config],
                                     stdout=self.log, stderr=self.log)
        wait_http(self.url + "/v1/health")

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
            self.proc = None

    def rss_anon_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0


def committee_file(path, nodes):
    text = "n_shards = 100\nepoch_seconds = 3600\n"
    for name, port, shards in nodes:
        text += f'[[nodes]]\nname = "{name}"\naddress = "127.0.0.1:{port}"\nshards = [{shards}]\n'
    with open(path, "w") as f:
        f.write(text)


def floe(*args):
    return subprocess.run([FLOE, *args], capture_output=True, check=True, text=True).stdout


def summary(values, unit, scale=1.0):
    values = [v * scale for v in values]
    return (f"min {min(values):.2f} / median {statistics.median(values):.2f} / "
            f"max {max(values):.2f} {unit}")


def bench_learn(work, rounds):
    """Learning a new blob through the registry; and the listing page cost, on the helper."""
    etcd = Etcd(work)
    ports = [free_port() for _ in range(2)]
    committee = os.path.join(work, "learn.toml")
    committee_file(committee, [("a", ports[0], '"0-49"'), ("b", ports[1], '"50-99"')])
    floe("committee", "init", committee, "--etcd", etcd.url)
    source = f'etcd_endpoints = ["{etcd.url}"]'
    nodes = [Node(os.path.join(work, n), n, p, source) for n, p in zip("ab", ports)]
    helper = Node(os.path.join(work, "helper"), "helper", free_port(), "", shards=100)
    for node in nodes + [helper]:
        node.start()
    try:
        seconds = []
        for i in range(rounds):
            blob = os.urandom(64 << 10)
            status, body = http("PUT", helper.url + "/v1/blobs?epochs=100", blob)
            assert status == 200, body
            blob_id = json.loads(body)["newlyCreated"]["blobId"]
            _, metadata = http("GET", f"{helper.url}/v1/blobs/{blob_id}/metadata")
            status, body = http("PUT", f"{nodes[0].url}/v1/blobs/{blob_id}/metadata?epochs=100",
                                metadata)
            assert status == 200, body
            epoch = json.loads(http("GET", nodes[1].url + "/v1/health")[1])["epoch"]
            record = json.dumps({"size": len(blob), "endEpoch": epoch + 100,
                                 "state": "permanent"})
            conn = httpclient.HTTPConnection("127.0.0.1", nodes[1].port)
            etcd.run("put", f"/floe/blobs/{blob_id}", record)
            written = time.perf_counter()
            while True:
                conn.request("GET", f"/v1/blobs/{blob_id}/metadata")
                answer = conn.getresponse()
                answer.read()
                if answer.status == 200:
                    break
                if time.perf_counter() - written > 10:
                    raise RuntimeError("node b did not learn the blob")
            seconds.append(time.perf_counter() - written)
            conn.close()
        print(f"learn (registry put returned -> node b holds the metadata, {rounds} blobs): "
              + summary(seconds, "ms", 1000))
        # Listing: the helper holds `rounds` blobs; fill it to 1,000 small ones, time a page.
        have = rounds
        while have < 1000:
            status, _ = http("PUT", helper.url + "/v1/blobs?epochs=100", os.urandom(100))
            assert status == 200
            have += 1
        page_ms, page_bytes = [], 0
        conn = httpclient.HTTPConnection("127.0.0.1", helper.port)
        for _ in range(30):
            started = time.perf_counter()
            conn.request("GET", "/v1/blobs?limit=1000")
            answer = conn.getresponse()
            body = answer.read()
            page_ms.append((time.perf_counter() - started) * 1000)
            page_bytes = len(body)
        print(f"listing: a page of 1,000 blobs: {summary(page_ms, 'ms')}, {page_bytes} bytes")
        return statistics.median(page_ms), page_bytes
    finally:
        for node in nodes + [helper]:
            node.stop()
        etcd.stop()


def bench_migrate(work, blobs):
    etcd = Etcd(work)
    ports = [free_port() for _ in range(4)]
    first = os.path.join(work, "first.toml")
    committee_file(first, [("a", ports[0], '"0-33"'), ("b", ports[1], '"34-66"'),
                           ("c", ports[2], '"67-99"')])
    floe("committee", "init", first, "--etcd", etcd.url)
    source = f'etcd_endpoints = ["{etcd.url}"]\ncluster_secret = "bench"'
    nodes = [Node(os.path.join(work, n), n, p, source) for n, p in zip("abcd", ports)]
    for node in nodes[:3]:
        node.start()
    try:
        for _ in range(blobs):
            status, body = http("PUT", nodes[0].url + "/v1/blobs?epochs=100",
                                os.urandom(1 << 20))
            assert status == 200, body
        second = os.path.join(work, "second.toml")
        committee_file(second, [("a", ports[0], '"0-24"'), ("b", ports[1], '"34-58"'),
                                ("c", ports[2], '"67-99"'), ("d", ports[3], '"25-33", "59-66"')])
        sent_before = sum(metric(n.url, "floe_http_sent_bytes_total") for n in nodes[:2])
        started = time.perf_counter()
        floe("committee", "propose", second, "--now", "--etcd", etcd.url)
        nodes[3].start()
        while True:
            status = json.loads(floe("committee", "status", "--json", "--etcd", etcd.url))
            if status["done"]:
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        sent = sum(metric(n.url, "floe_http_sent_bytes_total") for n in nodes[:2]) - sent_before
        pulled = sum(m["bytes"] for m in status["moves"])
        slivers = sum(m["slivers"] for m in status["moves"])
        recovered = sum(m["recovered"] for m in status["moves"])
        print(f"migrate: 17 shards of {blobs} x 1 MB blobs to a new node: {seconds:.2f} s "
              f"(from propose to done, node start included), {pulled / 1e6:.1f} MB of slivers "
              f"pulled ({slivers} slivers, {recovered} rebuilt), {pulled / 1e6 / seconds:.1f} "
              f"MB/s; givers sent {sent / pulled:.3f} bytes per sliver byte pulled")
    finally:
        for node in nodes:
            node.stop()
        etcd.stop()


def bench_catchup(work, count):
    etcd = Etcd(work)
    fill = json.loads(subprocess.run([FILL, "--etcd", etcd.url, "--count", str(count)],
                                     capture_output=True, check=True, text=True).stdout)
    print(f"catchup: wrote {fill['records']} registry records in {fill['seconds']:.1f} s "
          f"(revision {fill['revision']})")
    port = free_port()
    committee = os.path.join(work, "one.toml")
    committee_file(committee, [("solo", port, '"0-99"')])
    floe("committee", "init", committee, "--etcd", etcd.url)
    node = Node(os.path.join(work, "solo"), "solo", port, f'etcd_endpoints = ["{etcd.url}"]')
    started = time.perf_counter()
    node.start()
    peak = 0
    try:
        while metric(node.url, "floe_registry_revision") < fill["revision"]:
            peak = max(peak, node.rss_anon_kib())
            time.sleep(0.2)
            if time.perf_counter() - started > 1800:
                raise RuntimeError("the node did not catch up in 30 minutes")
        seconds = time.perf_counter() - started
        peak = max(peak, node.rss_anon_kib())
        records = metric(node.url, "floe_registry_records_total")
        print(f"catchup: a new node read and applied {records:.0f} records in {seconds:.1f} s "
              f"({records / seconds:.0f} records/s, node start included); peak RssAnon "
              f"{peak / 1024:.0f} MiB, after {node.rss_anon_kib() / 1024:.0f} MiB")
        return records / seconds
    finally:
        node.stop()
        etcd.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--blobs", type=int, default=100)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["learn", "migrate", "catchup"])
    args = parser.parse_args()
    for tool in (FLOE, FILL):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} is missing: cargo build --release -p floe-cli -p floe-benches")
    work = tempfile.mkdtemp(prefix="floe-control-")
    try:
        page_ms = page_bytes = rate = None
        if args.only in (None, "learn"):
            os.makedirs(os.path.join(work, "learn"))
            page_ms, page_bytes = bench_learn(os.path.join(work, "learn"), args.rounds)
        if args.only in (None, "migrate"):
            os.makedirs(os.path.join(work, "migrate"))
            bench_migrate(os.path.join(work, "migrate"), args.blobs)
        if args.only in (None, "catchup"):
            os.makedirs(os.path.join(work, "catchup"))
            rate = bench_catchup(os.path.join(work, "catchup"), args.count)
        if page_ms is not None and rate is not None:
            nodes, blobs, interval = 100, 10_000_000, 30
            pages = blobs // 1000 * (nodes - 1)
            per_minute = 60 / interval
            print(f"sync cost per node per minute, {nodes} nodes, {blobs:,} blobs: listing "
                  f"{pages * per_minute:,.0f} page requests = "
                  f"{pages * per_minute * page_ms / 1000:,.0f} s of peer time and "
                  f"{pages * per_minute * page_bytes / 1e9:,.1f} GB (measured page "
                  f"{page_ms:.2f} ms, {page_bytes} bytes); registry: one watch, E events a "
                  f"minute cost E / {rate:.0f} s (measured apply rate), 0 when idle")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
