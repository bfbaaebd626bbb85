#!/usr/bin/env python3
"""Big blobs on the default node (n = 1000), side by side with their floors and peers in one run
(issue 15):

- PUT of a 1.2 GB blob (`curl -T`) against `floe encode` of the same file into a directory (the
  same coding, the same bytes written), alternating; the node's RssAnon peak during each PUT;
- GET of the hot blob, one stream (curl) and 32 streams (wrk), against nginx serving the same
  file with sendfile, alternating;
- time to first byte of the cold blob, of its last MiB by range, and of a cold 1 MiB blob
  (node restarted, page cache dropped, each time);
- with --big-gb G: a G GB blob stored and read back (streamed, checked by SHA-256): RssAnon
  peak and MB/s each way.

    cargo build --release
    python3 benches/big_blob.py [--rounds 3] [--gb 1.2] [--big-gb 5] [--dir /work/floe-bench-big]

Needs curl, nginx and wrk (installed from Debian's packages when missing) and root for dropping
the page cache. Every process it starts is stopped by PID; only 127.0.0.1 is used.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
import urllib.request

from node_vs_nginx import start_nginx  # the same nginx (sendfile) as the node benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOE = os.path.join(ROOT, "target", "release", "floe")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


class Node:
    def __init__(self, data):
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [FLOE, "node", "--data-dir", data, "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"})
        wait_http(f"{self.url}/v1/health")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


class RssPeak:
    """Samples a process's RssAnon every 50 ms; `stop()` returns the peak in MiB."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0, True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            self.peak = max(self.peak, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.05)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak / 1024


def drop_caches():
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
    except OSError:
        print("(cannot drop the page cache: not root; cold figures are warm)")


def curl(args):
    out = subprocess.run(["curl", "-s", "-S", "-f", *args], capture_output=True, text=True,
                         check=True).stdout
    return out


def put(node, path):
    started = time.perf_counter()
    answer = curl(["-T", path, f"{node.url}/v1/blobs?epochs=5"])
    seconds = time.perf_counter() - started
    body = json.loads(answer)
    created = body.get("newlyCreated") or body.get("alreadyCertified")
    return created["blobId"], seconds


def get_speed(url, extra=()):
    out = curl([*extra, "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download}", url])
    first, total, size = out.split()
    return float(first), float(total), int(size)


def wrk_gbs(url, connections, duration):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "60s", url],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"Transfer/sec:\s+([0-9.]+)(B|KB|MB|GB)", out)
    units = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses")
    return float(m.group(1)) * units[m.group(2)] / 1e9 if m else 0.0


def mmm(values, fmt="{:.2f}"):
    values = sorted(values)
    return "/".join(fmt.format(v) for v in (values[0], statistics.median(values), values[-1]))


def make_file(path, size):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 << 20))
            f.write(chunk)
            left -= len(chunk)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gb", type=float, default=1.2)
    parser.add_argument("--big-gb", type=float, default=0)
    parser.add_argument("--dir", default="/work/floe-bench-big")
    args = parser.parse_args()
    for tool, package in (("nginx", "nginx"), ("wrk", "wrk")):
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    os.makedirs(args.dir, exist_ok=True)
    source_dir = os.path.join(args.dir, "source")
    os.makedirs(source_dir, exist_ok=True)
    source = os.path.join(source_dir, "blob.bin")
    size = int(args.gb * 1e9)
    make_file(source, size)
    small = os.path.join(source_dir, "small.bin")
    make_file(small, 1 << 20)
    data = os.path.join(args.dir, "data")
    encoded = os.path.join(args.dir, "encoded")

    # 1. PUT against floe encode, alternating.
    put_s, encode_s, peaks = [], [], []
    node = None
    for r in range(args.rounds):
        shutil.rmtree(encoded, ignore_errors=True)
        drop_caches()
        started = time.perf_counter()
        subprocess.run([FLOE, "encode", source, "--out", encoded], check=True,
                       stdout=subprocess.DEVNULL)
        encode_s.append(time.perf_counter() - started)
        shutil.rmtree(encoded, ignore_errors=True)
        if node:
            node.stop()
        shutil.rmtree(data, ignore_errors=True)
        node = Node(data)
        drop_caches()
        watch = RssPeak(node.proc.pid)
        blob_id, seconds = put(node, source)
        peaks.append(watch.stop())
        put_s.append(seconds)
        print(f"round {r}: floe encode {encode_s[-1]:.1f} s, PUT {seconds:.1f} s "
              f"({encode_s[-1] / seconds:.2f}x), RssAnon peak {peaks[-1]:.0f} MiB", flush=True)
    expected = subprocess.run([FLOE, "blob-id", source], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert blob_id == expected, (blob_id, expected)
    small_id, _ = put(node, small)

    # 2. Hot GET against nginx.
    port = free_port()
    nginx = start_nginx(source_dir, port, args.dir)
    time.sleep(0.5)
    floe_url = f"{node.url}/v1/blobs/{blob_id}"
    nginx_url = f"http://127.0.0.1:{port}/blob.bin"
    get_speed(floe_url)
    get_speed(nginx_url)
    one = {"floe": [], "nginx": []}
    many = {"floe": [], "nginx": []}
    for r in range(args.rounds):
        for name, url in (("floe", floe_url), ("nginx", nginx_url)):
            _, total, got = get_speed(url)
            assert got == size
            one[name].append(got / total / 1e9)
        for name, url in (("floe", floe_url), ("nginx", nginx_url)):
            many[name].append(wrk_gbs(url, 32, 10))
        print(f"round {r}: one stream floe {one['floe'][-1]:.2f} GB/s, nginx "
              f"{one['nginx'][-1]:.2f}; 32 streams floe {many['floe'][-1]:.2f}, nginx "
              f"{many['nginx'][-1]:.2f}", flush=True)
    nginx.send_signal(signal.SIGQUIT)
    nginx.wait(timeout=30)

    # 3. Cold time to first byte.
    ttfb = {"whole": [], "last MiB": [], "1 MiB blob": []}
    for r in range(args.rounds):
        node.stop()
        drop_caches()
        node = Node(data)
        ttfb["whole"].append(get_speed(f"{node.url}/v1/blobs/{blob_id}")[0] * 1000)
        node.stop()
        drop_caches()
        node = Node(data)
        last = ["-r", f"{size - (1 << 20)}-{size - 1}"]
        ttfb["last MiB"].append(get_speed(f"{node.url}/v1/blobs/{blob_id}", last)[0] * 1000)
        node.stop()
        drop_caches()
        node = Node(data)
        ttfb["1 MiB blob"].append(get_speed(f"{node.url}/v1/blobs/{small_id}")[0] * 1000)
        print(f"round {r}: cold first byte: whole {ttfb['whole'][-1]:.0f} ms, last MiB "
              f"{ttfb['last MiB'][-1]:.0f} ms, 1 MiB blob {ttfb['1 MiB blob'][-1]:.0f} ms", flush=True)
    node.stop()

    print()
    print(f"| figure ({args.gb} GB blob, n = 1000) | min / median / max | ratio (median) |")
    print("|---|---|---|")
    print(f"| `floe encode` into a directory, s | {mmm(encode_s, '{:.1f}')} | |")
    print(f"| PUT (`curl -T`), s | {mmm(put_s, '{:.1f}')} | "
          f"{statistics.median(encode_s) / statistics.median(put_s):.2f}x the floor's speed |")
    print(f"| RssAnon peak during the PUT, MiB | {mmm(peaks, '{:.0f}')} | |")
    for label, series in (("one stream", one), ("32 streams", many)):
        print(f"| hot GET, {label}, floe GB/s | {mmm(series['floe'])} | "
              f"{statistics.median(series['floe']) / statistics.median(series['nginx']):.2f} of nginx |")
        print(f"| hot GET, {label}, nginx GB/s | {mmm(series['nginx'])} | |")
    for label, values in ttfb.items():
        print(f"| cold first byte, {label}, ms | {mmm(values, '{:.0f}')} | |")

    if args.big_gb:
        big_size = int(args.big_gb * 1e9)
        big = os.path.join(source_dir, "big.bin")
        make_file(big, big_size)
        digest = hashlib.sha256()
        with open(big, "rb") as f:
            while chunk := f.read(16 << 20):
                digest.update(chunk)
        shutil.rmtree(data, ignore_errors=True)
        node = Node(data)
        watch = RssPeak(node.proc.pid)
        big_id, seconds = put(node, big)
        put_peak = watch.stop()
        drop_caches()
        watch = RssPeak(node.proc.pid)
        started = time.perf_counter()
        back = hashlib.sha256()
        with urllib.request.urlopen(f"{node.url}/v1/blobs/{big_id}", timeout=3600) as answer:
            while chunk := answer.read(16 << 20):
                back.update(chunk)
        read_s = time.perf_counter() - started
        get_peak = watch.stop()
        assert back.digest() == digest.digest(), "read back different bytes"
        node.stop()
        print(f"| {args.big_gb} GB blob: PUT | {big_size / seconds / 1e6:.0f} MB/s, RssAnon peak "
              f"{put_peak:.0f} MiB | |")
        print(f"| {args.big_gb} GB blob: GET (cold, checked) | {big_size / read_s / 1e6:.0f} MB/s, "
              f"RssAnon peak {get_peak:.0f} MiB | |")
        os.remove(big)
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
