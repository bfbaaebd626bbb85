#!/usr/bin/env python3
"""Crash loop (issue 18): rounds of kill -9 of a node under concurrent stores and reads, then a
restart, after which every acknowledged blob and S3 object must read back identical and nothing
unacknowledged may be visible half-written.

Single node (default): one node (n = --shards, 1000 by default, as a user runs it) serving its
own API and S3. Each round: writers store blobs of random sizes through `PUT /v1/blobs` (one of
them a big streamed blob every --big-every rounds), S3 PutObjects and multipart uploads, while a
reader reads acknowledged blobs back; after a random time the node is killed with SIGKILL. The
node restarts (timed: to /v1/health, and to the first verified read of a blob), and then:
  - every blob and object acknowledged so far, in any round, reads back identical (SHA-256);
  - every blob the node lists and every key S3 lists that was not acknowledged reads back whole
    (identical to what some writer sent: a store the node committed just before dying).

--cluster: a local committee of 4 nodes (`floe cluster up`, n = --shards, 100 by default); the
writers store through node-0 while another node (a peer of every store) is killed mid-PUT and
restarted; stores go on meanwhile (one node holds at most f shards); afterwards every
acknowledged blob reads back through the restarted node and through node-0.

Every content follows from its name (size and seed), so any visible blob can be checked.
Prints one line per round and a summary; --json FILE writes the figures.

    cargo build --release
    python3 benches/crash_loop.py --rounds 100 [--shards 1000] [--big-mb 256] [--dir DIR]
    python3 benches/crash_loop.py --cluster --rounds 30

Needs python3 with requests and boto3. Only 127.0.0.1 is used; every process it starts is
stopped by PID; each round is bounded in time (--kill-after, --round-timeout).
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

import local_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S3_KEY = "AKIDCRASHLOOP"
S3_SECRET = "crash-loop-secret"
CHUNK = 1 << 20
PART = 5 << 20
SMALL_SIZES = [1, 1000, 70_000, 1_500_000, 4_000_000]


def chunks(name, size):
    """The bytes of blob `name`, in chunks: deterministic from the name."""
    for i, start in enumerate(range(0, size, CHUNK)):
        yield random.Random(f"{name}/{i}").randbytes(min(CHUNK, size - start))


def content(name, size):
    return b"".join(chunks(name, size))


def digest(name, size):
    h = hashlib.sha256()
    for c in chunks(name, size):
        h.update(c)
    return h.hexdigest()


class Stream:
    """A body read chunk by chunk with a known length (sent with content-length, streamed).
    Reads hand out slices of the current chunk (no copy of what is left: http.client reads
    8 KiB at a time)."""

    def __init__(self, name, size):
        self.it = chunks(name, size)
        self.len = size
        self.buf = b""
        self.pos = 0

    def __len__(self):
        return self.len

    def read(self, n=-1):
        if self.pos >= len(self.buf):
            self.buf = next(self.it, b"")
            self.pos = 0
        if n < 0:
            out = self.buf[self.pos:] + b"".join(self.it)
            self.buf, self.pos = b"", 0
            return out
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def sha_of_response(response):
    h = hashlib.sha256()
    for c in response.iter_content(CHUNK):
        h.update(c)
    return h.hexdigest()


class Node:
    """One `floe node` process this script started (stopped by PID)."""

    def __init__(self, cmd, env, log):
        self.cmd, self.env, self.log = cmd, env, log
        self.proc = None
        self.url = self.s3_url = None

    def start(self, timeout=120):
        started = time.monotonic()
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=log)
        self.url = None
        while True:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise SystemExit(f"node exited at start: see {self.log}")
            if self.url is None and "http://" in line:
                self.url = next(w for w in line.split() if w.startswith("http://")).rstrip("/")
            if line.startswith("S3 API on "):
                self.s3_url = line.split()[3]
            if line.strip().startswith("stop:") or (self.url and "--s3-listen" not in self.cmd):
                break
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        while time.monotonic() - started < timeout:
            try:
                if requests.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise SystemExit(f"node not healthy after {timeout} s: see {self.log}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Books:
    """What was sent, what was acknowledged (shared by the writer threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.blobs = {}  # blob id -> (name, size, sha)
        self.objects = {}  # key -> (size, sha, multipart)
        self.sent = {}  # sha -> name, every blob content ever sent
        self.big = 0

    def attempt(self, name, size, sha):
        with self.lock:
            self.sent[sha] = name

    def acked_blob(self, blob_id, name, size, sha, big):
        with self.lock:
            self.blobs[blob_id] = (name, size, sha)
            self.big += big

    def acked_object(self, key, size, sha, multipart):
        with self.lock:
            self.objects[key] = (size, sha, multipart)


def s3_client(endpoint):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=60),
    )


def run_round(args, rnd, books, writer_url, s3_endpoint, kill, rng):
    """Writers and a reader until `kill` is called (after a random time); returns counts."""
    stop = threading.Event()
    killed = threading.Event()
    counts = {"stored": 0, "objects": 0, "reads": 0, "read_errors_before_kill": 0}
    clock = threading.Lock()

    def count(what):
        with clock:
            counts[what] += 1

    def store(worker, big):
        i = 0
        wrng = random.Random(f"{args.seed}/{rnd}/{worker}")
        while not stop.is_set():
            size = args.big_mb << 20 if big else wrng.choice(SMALL_SIZES)
            name = f"r{rnd}-w{worker}-{i}-{wrng.getrandbits(32)}"
            i += 1
            sha = digest(name, size)
            books.attempt(name, size, sha)
            try:
                body = Stream(name, size) if size > 8 << 20 else content(name, size)
                r = requests.put(f"{writer_url}/v1/blobs?epochs=50", data=body, timeout=(3, 600))
            except requests.RequestException:
                # The writer's node is never the one killed in a cluster: no excuse there.
                if not killed.is_set() or args.cluster:
                    raise
                continue
            if r.status_code != 200:
                if killed.is_set() and not args.cluster:
                    continue
                raise SystemExit(f"store of {size} bytes answered {r.status_code}: {r.text[:300]}")
            answer = r.json()
            created = answer.get("newlyCreated") or answer.get("alreadyCertified") or {}
            blob_id = created.get("blobId") or created.get("blobObject", {}).get("blobId")
            books.acked_blob(blob_id, name, size, sha, big)
            count("stored")
            if big:
                return

    def s3_writer(worker):
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = s3_client(s3_endpoint)
        wrng = random.Random(f"{args.seed}/{rnd}/s3/{worker}")
        i = 0
        while not stop.is_set():
            multipart = worker == 0
            size = PART + 12345 if multipart else wrng.choice(SMALL_SIZES)
            key = f"r{rnd}/{worker}/{i}-{size}"
            i += 1
            data = content(key, size)
            # Each object, and each part, is one blob of the node: listed by /v1/blobs too.
            if multipart:
                for start in range(0, size, PART):
                    books.attempt(key, size, hashlib.sha256(data[start:start + PART]).hexdigest())
            else:
                books.attempt(key, size, hashlib.sha256(data).hexdigest())
            try:
                if multipart:
                    uid = s3.create_multipart_upload(Bucket="crash", Key=key)["UploadId"]
                    parts = []
                    for n, start in enumerate(range(0, size, PART), 1):
                        etag = s3.upload_part(Bucket="crash", Key=key, UploadId=uid, PartNumber=n,
                                              Body=data[start:start + PART])["ETag"]
                        parts.append({"PartNumber": n, "ETag": etag})
                    s3.complete_multipart_upload(Bucket="crash", Key=key, UploadId=uid,
                                                 MultipartUpload={"Parts": parts})
                else:
                    s3.put_object(Bucket="crash", Key=key, Body=data)
            except (BotoCoreError, ClientError):
                if not killed.is_set():
                    raise
                continue
            books.acked_object(key, size, hashlib.sha256(data).hexdigest(), multipart)
            count("objects")

    def reader():
        while not stop.is_set():
            with books.lock:
                known = list(books.blobs.items())
            if not known:
                time.sleep(0.05)
                continue
            blob_id, (name, size, sha) = rng.choice(known)
            if size > 64 << 20:
                continue
            try:
                r = requests.get(f"{writer_url}/v1/blobs/{blob_id}", timeout=(3, 60), stream=True)
                if r.status_code == 200 and sha_of_response(r) == sha:
                    count("reads")
                    continue
                if not killed.is_set():
                    raise SystemExit(f"read of acknowledged {blob_id} during load: {r.status_code}")
            except requests.RequestException:
                if not killed.is_set() and not args.cluster:
                    raise
            time.sleep(0.01)

    errors = []

    def guarded(target, *a):
        def run():
            try:
                target(*a)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(f"{target.__name__}{a}: {e!r}")
                stop.set()
        return threading.Thread(target=run)

    threads = [guarded(store, w, False) for w in range(args.writers)]
    big_round = bool(args.big_mb) and rnd % args.big_every == 0
    if big_round:
        threads.append(guarded(store, "big", True))
    if s3_endpoint:
        threads += [guarded(s3_writer, w) for w in range(2)]
    threads.append(guarded(reader))
    for t in threads:
        t.start()
    # In a big blob's round the kill comes later, so that some big stores finish (and are
    # checked after every later restart) and others are cut midway.
    time.sleep(rng.uniform(*(args.big_kill_after if big_round else args.kill_after)))
    killed.set()
    kill()
    if args.cluster:
        # Stores go on without the killed peer for a moment.
        time.sleep(1.0)
    stop.set()
    deadline = time.monotonic() + args.round_timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise SystemExit(f"round {rnd}: writers still running after {args.round_timeout} s")
    if errors:
        raise SystemExit(f"round {rnd}: " + "; ".join(errors))
    return counts


def verify(args, books, urls, s3_endpoint):
    """Every acknowledged blob and object identical; every other visible one whole."""
    with books.lock:
        blobs = dict(books.blobs)
        objects = dict(books.objects)
        sent = dict(books.sent)
    lost = []
    verified = 0
    for url in urls:
        for blob_id, (name, size, sha) in blobs.items():
            r = requests.get(f"{url}/v1/blobs/{blob_id}", timeout=(3, 600), stream=True)
            got = sha_of_response(r) if r.status_code == 200 else f"HTTP {r.status_code}"
            if got != sha:
                lost.append(f"blob {blob_id} ({name}, {size} B) via {url}: {got}")
            verified += 1
    # Blobs the node lists that nobody saw acknowledged must be whole.
    extra = 0
    after = None
    while True:
        q = f"?limit=1000" + (f"&after={after}" if after else "")
        page = requests.get(f"{urls[0]}/v1/blobs{q}", timeout=30).json()
        for entry in page["blobs"]:
            blob_id = entry["blobId"]
            if blob_id in blobs or entry.get("deleted"):
                continue
            extra += 1
            r = requests.get(f"{urls[0]}/v1/blobs/{blob_id}", timeout=(3, 600), stream=True)
            got = sha_of_response(r) if r.status_code == 200 else None
            if got not in sent:
                lost.append(f"unacknowledged blob {blob_id} is listed but reads "
                            f"{'HTTP %d' % r.status_code if got is None else 'bytes nobody sent'}")
        after = page.get("next")
        if not after:
            break
    extra_keys = 0
    if s3_endpoint:
        s3 = s3_client(s3_endpoint)
        for key, (size, sha, _) in objects.items():
            body = s3.get_object(Bucket="crash", Key=key)["Body"].read()
            if hashlib.sha256(body).hexdigest() != sha:
                lost.append(f"object {key} differs")
            verified += 1
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="crash"):
            for o in page.get("Contents", []):
                if o["Key"] in objects:
                    continue
                extra_keys += 1
                size = int(o["Key"].rsplit("-", 1)[1])
                body = s3.get_object(Bucket="crash", Key=o["Key"])["Body"].read()
                if body != content(o["Key"], size):
                    lost.append(f"unacknowledged key {o['Key']} is visible and not whole")
    return verified, extra, extra_keys, lost


def first_read(books, url):
    """Seconds until the smallest acknowledged blob reads back verified (cold)."""
    with books.lock:
        known = sorted(books.blobs.items(), key=lambda kv: kv[1][1])
    if not known:
        return 0.0
    blob_id, (_, _, sha) = known[0]
    started = time.monotonic()
    while time.monotonic() - started < 120:
        try:
            r = requests.get(f"{url}/v1/blobs/{blob_id}", timeout=(3, 60), stream=True)
            if r.status_code == 200 and sha_of_response(r) == sha:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise SystemExit(f"acknowledged blob {blob_id} unreadable 120 s after the restart")


def stats(values):
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--shards", type=int, default=None, help="n (1000 single node, 100 cluster)")
    p.add_argument("--writers", type=int, default=3)
    p.add_argument("--big-mb", type=int, default=256, help="size of the big streamed blobs (0: none)")
    p.add_argument("--big-every", type=int, default=10, help="a big blob every this many rounds")
    p.add_argument("--kill-after", type=float, nargs=2, default=[1.0, 4.0], metavar=("MIN", "MAX"))
    p.add_argument("--big-kill-after", type=float, nargs=2, default=[3.0, 30.0], metavar=("MIN", "MAX"),
                   help="the kill's delay in rounds with a big blob")
    p.add_argument("--round-timeout", type=float, default=300)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dir", default=None)
    p.add_argument("--floe", default=os.path.join(ROOT, "target", "release", "floe"))
    p.add_argument("--cluster", action="store_true")
    p.add_argument("--no-s3", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.shards is None:
        args.shards = 100 if args.cluster else 1000
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    print(f"crash loop: seed {args.seed} (replay with --seed {args.seed}); "
          f"{'cluster of 4' if args.cluster else 'single node'}, n = {args.shards}", flush=True)
    rng = random.Random(args.seed)
    base = args.dir or tempfile.mkdtemp(prefix="floe-crash-loop-")
    if args.dir:
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
    books = Books()
    restarts, first_reads, verify_seconds = [], [], []
    env = dict(os.environ, RUST_LOG="warn", FLOE_S3_ACCESS_KEY_ID=S3_KEY,
               FLOE_S3_SECRET_ACCESS_KEY=S3_SECRET)
    started_nodes = []
    try:
        if args.cluster:
            pids, urls = local_cluster.up(args.floe, base, 4, args.shards, 2)
            writer_url, s3_endpoint = urls[0], None
            nodes = {}
            for i in range(1, 4):
                node = Node([args.floe, "node", "--config", f"{base}/node-{i}/node.toml"], env,
                            f"{base}/node-{i}/restarts.log")
                nodes[i] = node
        else:
            node = Node([args.floe, "node", "--data-dir", f"{base}/data", "--shards", str(args.shards),
                         "--listen", "127.0.0.1:0"] + ([] if args.no_s3 else ["--s3-listen", "127.0.0.1:0"]),
                        env, f"{base}/node.log")
            started_nodes.append(node)
            node.start()
            if not args.no_s3:
                s3_client(node.s3_url).create_bucket(Bucket="crash")
        for rnd in range(args.rounds):
            t0 = time.monotonic()
            if args.cluster:
                victim = rng.randrange(1, 4)
                vnode = nodes[victim]

                def kill(victim=victim, vnode=vnode):
                    if vnode.proc is not None:
                        vnode.kill()
                    else:
                        os.kill(pids[victim], signal.SIGKILL)
                counts = run_round(args, rnd, books, writer_url, None, kill, rng)
                if vnode not in started_nodes:
                    started_nodes.append(vnode)
                restarts.append(vnode.start())
                read_urls = [vnode.url, writer_url]
            else:
                counts = run_round(args, rnd, books, node.url, None if args.no_s3 else node.s3_url,
                                   node.kill, rng)
                restarts.append(node.start())
                read_urls = [node.url]
            first_reads.append(first_read(books, read_urls[0]))
            v0 = time.monotonic()
            verified, extra, extra_keys, lost = verify(args, books, read_urls,
                                                       None if args.cluster or args.no_s3 else node.s3_url)
            verify_seconds.append(time.monotonic() - v0)
            if lost:
                for line in lost[:20]:
                    print("LOST:", line, flush=True)
                raise SystemExit(f"round {rnd}: {len(lost)} acknowledged or visible items wrong "
                                 f"(seed {args.seed})")
            print(f"round {rnd + 1}/{args.rounds}: stored {counts['stored']} blobs, "
                  f"{counts['objects']} objects, {counts['reads']} reads under load; restart "
                  f"{restarts[-1]:.2f} s, first read {first_reads[-1]:.3f} s; verified {verified} "
                  f"({extra} unacknowledged blobs and {extra_keys} keys visible, all whole); "
                  f"round {time.monotonic() - t0:.1f} s", flush=True)
        multipart = sum(1 for o in books.objects.values() if o[2])
        summary = {
            "mode": "cluster" if args.cluster else "single",
            "n": args.shards,
            "seed": args.seed,
            "rounds": args.rounds,
            "acknowledged_blobs": len(books.blobs),
            "big_blobs": books.big,
            "acknowledged_objects": len(books.objects),
            "multipart_objects": multipart,
            "lost": 0,
            "restart_seconds": stats(restarts),
            "first_read_seconds": stats(first_reads),
            "verify_seconds": stats(verify_seconds),
        }
        print("summary: " + json.dumps(summary), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=1)
    finally:
        for n in started_nodes:
            n.stop()
        if args.cluster:
            local_cluster.down(args.floe, base)
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
