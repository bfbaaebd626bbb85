"""kill -9 during S3 writes: `write` keeps PutObjects and multipart uploads going from several
threads and journals each one the node acknowledged (fsync'd) until the node dies; `verify`,
against the restarted node, checks every acknowledged object reads back identical and that any
other key that is visible is whole (an upload the node committed just before dying).

Each key's bytes follow from its name, so `verify` knows what any key must hold.
usage: crash_suite.py write|verify ENDPOINT JOURNAL   (FLOE_S3_KEY, FLOE_S3_SECRET)
"""
import hashlib
import os
import random
import sys
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

mode, endpoint, journal = sys.argv[1:4]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id=os.environ["FLOE_S3_KEY"],
    aws_secret_access_key=os.environ["FLOE_S3_SECRET"],
    region_name="us-east-1",
    config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=20),
)
PART = 5 << 20


def content(key):
    """The bytes of `key`: its size and seed are in its name."""
    size = int(key.rsplit("-", 1)[1])
    return random.Random(key).randbytes(size)


def write():
    try:
        s3.create_bucket(Bucket="crash")
    except ClientError:
        pass
    lock = threading.Lock()
    out = open(journal, "a")
    stop = threading.Event()

    def acked(key):
        with lock:
            out.write(key + "\n")
            out.flush()
            os.fsync(out.fileno())

    def putter(worker):
        rng = random.Random(worker)
        i = 0
        while not stop.is_set():
            size = rng.choice([0, 1, 1000, 70_000, 1_500_000, 4_000_000])
            key = f"put/{worker}/{i}-{size}"
            i += 1
            try:
                s3.put_object(Bucket="crash", Key=key, Body=content(key))
                acked(key)
            except (BotoCoreError, ClientError):
                stop.set()

    def multipart(worker):
        i = 0
        while not stop.is_set():
            key = f"multi/{worker}/{i}-{2 * PART + 12345}"
            i += 1
            data = content(key)
            try:
                uid = s3.create_multipart_upload(Bucket="crash", Key=key)["UploadId"]
                parts = []
                for n, start in enumerate(range(0, len(data), PART), 1):
                    etag = s3.upload_part(Bucket="crash", Key=key, UploadId=uid, PartNumber=n, Body=data[start : start + PART])["ETag"]
                    parts.append({"PartNumber": n, "ETag": etag})
                s3.complete_multipart_upload(Bucket="crash", Key=key, UploadId=uid, MultipartUpload={"Parts": parts})
                acked(key)
            except (BotoCoreError, ClientError):
                stop.set()

    threads = [threading.Thread(target=putter, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=multipart, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    deadline = time.time() + 120
    while any(t.is_alive() for t in threads) and time.time() < deadline:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()


def verify():
    acked = [line.strip() for line in open(journal) if line.strip()]
    for key in acked:
        got = s3.get_object(Bucket="crash", Key=key)["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(content(key)).digest(), f"acknowledged {key} differs"
    visible = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="crash"):
        visible += [o["Key"] for o in page.get("Contents", [])]
    extra = [k for k in visible if k not in set(acked)]
    for key in extra:
        got = s3.get_object(Bucket="crash", Key=key)["Body"].read()
        assert got == content(key), f"unacknowledged {key} is visible and not whole"
    multi = sum(1 for k in acked if k.startswith("multi/"))
    print(f"acknowledged {len(acked)} ({multi} multipart), all identical; {len(extra)} unacknowledged visible, all whole; lost 0")


{"write": write, "verify": verify}[mode]()
