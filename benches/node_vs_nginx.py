#!/usr/bin/env python3
"""floe node against nginx, side by side in one run: both serve the same sliver bytes from hot
storage (page cache), both driven by wrk at the same connection counts, alternating
floe, nginx, floe, nginx. Prints GB/s, p50/p99 latency per run, then min/median/max and the
ratio floe/nginx per case as a Markdown table.

    python3 benches/node_vs_nginx.py [--rounds 5] [--duration 10] [--dir /work/floe-bench-node]

Sliver sizes: 1 MiB (n = 25, a 9.4 MB blob) and 4 MiB (n = 100, a 143 MB blob), stored through
`floe store` (verified like any upload). 64 MiB slivers would need n >= 1537 and a blob of about
32 GiB (a sliver is at most k_s symbols of 65534 bytes), more than this machine can hold for a
benchmark; 4 MiB is the large case here.

Needs nginx and wrk (installed from Debian's packages when missing). Every process it starts is
stopped by PID; only 127.0.0.1 is used.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOE = os.path.join(ROOT, "target", "release", "floe")
CASES = [  # (label, n, blob bytes)
    ("1 MiB", 25, 9_400_000),
    ("4 MiB", 100, 142_000_000),
]
CONNECTIONS = [32, 128]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_tools():
    missing = [p for p, t in (("nginx", "nginx"), ("wrk", "wrk")) if shutil.which(t) is None]
    if missing:
        subprocess.run(["apt-get", "install", "-y", *missing], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "floe-cli"], cwd=ROOT, check=True)


def wait_http(url, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def start_floe(data, n):
    proc = subprocess.Popen([FLOE, "node", "--listen", "127.0.0.1:0", "--data-dir", data,
                             "--shards", str(n)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "RUST_LOG": "warn"})
    line = proc.stdout.readline()
    match = re.search(r"http://[0-9.:]+", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"floe node did not start: {line}")
    return proc, match.group(0)


def start_nginx(root, port, workdir):
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes auto;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc


def wrk(url, connections, duration):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    # wrk prints binary-prefixed sizes (its "MB" is 2^20 bytes); GB/s here is 10^9 bytes/s.
    m = re.search(r"Transfer/sec:\s+([0-9.]+)(B|KB|MB|GB)", out)
    units = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}
    gbs = float(m.group(1)) * units[m.group(2)] / 1e9 if m else 0.0

    def latency(p):
        m = re.search(rf"^\s+{p}%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses")
    return gbs, latency(50), latency(99)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--dir", default="/work/floe-bench-node")
    args = parser.parse_args()
    ensure_tools()
    os.makedirs(args.dir, exist_ok=True)
    rows = []
    for label, n, blob_bytes in CASES:
        work = tempfile.mkdtemp(dir=args.dir)
        # nginx's workers run as an unprivileged user: they must be able to read the files.
        os.chmod(work, 0o755)
        procs = []
        try:
            floe, floe_url = start_floe(os.path.join(work, "data"), n)
            procs.append(floe)
            blob = os.path.join(work, "blob")
            with open(blob, "wb") as f:
                f.write(os.urandom(blob_bytes))
            blob_id = subprocess.run([FLOE, "store", blob, "--node", floe_url], capture_output=True,
                                     text=True, check=True).stdout.strip()
            path = f"/v1/blobs/{blob_id}/slivers/0/primary"
            www = os.path.join(work, "www")
            os.makedirs(os.path.dirname(www + path), exist_ok=True)
            body = urllib.request.urlopen(floe_url + path).read()
            with open(www + path, "wb") as f:
                f.write(body)
            port = free_port()
            nginx = start_nginx(www, port, work)
            procs.append(nginx)
            nginx_url = f"http://127.0.0.1:{port}"
            wait_http(nginx_url + path)
            assert urllib.request.urlopen(nginx_url + path).read() == body
            print(f"== {label} sliver ({len(body)} bytes, n = {n}), in the page cache", flush=True)
            for connections in CONNECTIONS:
                # Warm-up of both.
                wrk(floe_url + path, connections, 2)
                wrk(nginx_url + path, connections, 2)
                results = {"floe": [], "nginx": []}
                for _ in range(args.rounds):
                    for name, url in (("floe", floe_url), ("nginx", nginx_url)):
                        gbs, p50, p99 = wrk(url + path, connections, args.duration)
                        results[name].append((gbs, p50, p99))
                        print(f"  {connections:4} conns {name:5}: {gbs:6.2f} GB/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", flush=True)
                ratios = [f[0] / g[0] for f, g in zip(results["floe"], results["nginx"])]
                rows.append((label, connections, results, ratios))
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            shutil.rmtree(work, ignore_errors=True)

    def mmm(values, fmt="{:.2f}"):
        return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))

    print()
    print("| sliver | conns | floe GB/s min/med/max | nginx GB/s min/med/max | floe p50 / p99 ms (median) "
          "| nginx p50 / p99 ms (median) | ratio floe/nginx min/med/max |")
    print("|---|---|---|---|---|---|---|")
    for label, connections, results, ratios in rows:
        f, g = results["floe"], results["nginx"]
        print(f"| {label} | {connections} | {mmm([r[0] for r in f])} | {mmm([r[0] for r in g])} "
              f"| {statistics.median(r[1] for r in f):.2f} / {statistics.median(r[2] for r in f):.2f} "
              f"| {statistics.median(r[1] for r in g):.2f} / {statistics.median(r[2] for r in g):.2f} "
              f"| {mmm(ratios)} |")


if __name__ == "__main__":
    sys.exit(main())
