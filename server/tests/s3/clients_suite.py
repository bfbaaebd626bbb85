"""floe's S3 API through the AWS CLI, s3fs (fsspec) and rclone, as users run them.

Run by server/tests/s3_clients.rs against a real node: FLOE_S3_ENDPOINT, FLOE_S3_KEY,
FLOE_S3_SECRET, FLOE_S3_WORK (a scratch directory). FLOE_S3_CLIENTS lists the clients to
run (aws,s3fs,rclone). Prints what it checks; exits non-zero at the first failure.
"""
import filecmp
import json
import os
import random
import shutil
import subprocess
import sys

ENDPOINT = os.environ["FLOE_S3_ENDPOINT"]
KEY = os.environ["FLOE_S3_KEY"]
SECRET = os.environ["FLOE_S3_SECRET"]
WORK = os.environ["FLOE_S3_WORK"]
CLIENTS = os.environ.get("FLOE_S3_CLIENTS", "aws,s3fs,rclone").split(",")
SEED = int(os.environ.get("FLOE_S3_SEED", str(random.randrange(1 << 30))))
print(f"clients {CLIENTS}; seed {SEED} (FLOE_S3_SEED replays)", flush=True)
rng = random.Random(SEED)
ENV = dict(
    os.environ,
    AWS_ACCESS_KEY_ID=KEY,
    AWS_SECRET_ACCESS_KEY=SECRET,
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)
# The endpoint is plain HTTP; a CA bundle set for other uses only trips rclone's SDK.
ENV.pop("AWS_CA_BUNDLE", None)


def run(*args, input=None):
    done = subprocess.run(args, env=ENV, capture_output=True, timeout=300, input=input)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout.decode()}\n{done.stderr.decode()}")
    return done.stdout


def write(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))


def check(name):
    print(f"ok: {name}", flush=True)


def aws_cli():
    aws = ["aws", "--endpoint-url", ENDPOINT]
    run(*aws, "s3", "mb", "s3://cli")
    src = os.path.join(WORK, "cli-src")
    write(f"{src}/small.txt", 1000)
    write(f"{src}/nested/a.bin", 200_000)
    write(f"{src}/nested/deeper/b.bin", 10)
    # Above the CLI's 8 MB multipart threshold: a multipart upload of 8 MB parts.
    write(f"{src}/big.bin", 20 << 20)
    run(*aws, "s3", "cp", f"{src}/big.bin", "s3://cli/big.bin")
    head = json.loads(run(*aws, "s3api", "head-object", "--bucket", "cli", "--key", "big.bin"))
    assert head["ETag"].endswith('-3"'), head  # 3 parts: md5-of-md5s-3
    run(*aws, "s3", "cp", "s3://cli/big.bin", f"{WORK}/big.back")
    assert filecmp.cmp(f"{src}/big.bin", f"{WORK}/big.back", shallow=False)
    check("aws s3 cp up and down (multipart above 8 MB)")
    run(*aws, "s3", "sync", src, "s3://cli/tree")
    listing = run(*aws, "s3", "ls", "--recursive", "s3://cli/tree").decode()
    for name in ["small.txt", "nested/a.bin", "nested/deeper/b.bin", "big.bin"]:
        assert f"tree/{name}" in listing, listing
    top = run(*aws, "s3", "ls", "s3://cli/tree/").decode()
    assert "PRE nested/" in top, top
    # A second sync has nothing to do; after a local change it sends that file only.
    assert run(*aws, "s3", "sync", src, "s3://cli/tree").strip() == b""
    write(f"{src}/small.txt", 1001)
    out = run(*aws, "s3", "sync", src, "s3://cli/tree").decode()
    assert "small.txt" in out and "a.bin" not in out, out
    back = os.path.join(WORK, "cli-back")
    run(*aws, "s3", "sync", "s3://cli/tree", back)
    assert not filecmp.dircmp(src, back).diff_files
    check("aws s3 sync both ways, aws s3 ls (recursive and by prefix)")
    run(*aws, "s3", "rm", "--recursive", "s3://cli/")
    run(*aws, "s3", "rb", "s3://cli")
    check("aws s3 rm --recursive, rb")


def s3fs_client():
    import s3fs

    fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": ENDPOINT, "region_name": "us-east-1"})
    fs.mkdir("fsspec")
    payload = rng.randbytes(3_000_000)
    with fs.open("fsspec/data/blob.bin", "wb") as f:
        f.write(payload)
    fs.pipe("fsspec/data/small", b"hello")
    fs.pipe("fsspec/other", b"x" * 10)
    assert fs.cat("fsspec/data/small") == b"hello"
    assert sorted(fs.ls("fsspec/data", detail=False)) == ["fsspec/data/blob.bin", "fsspec/data/small"]
    assert fs.info("fsspec/data/blob.bin")["size"] == len(payload)
    with fs.open("fsspec/data/blob.bin", "rb", block_size=1 << 16) as f:
        f.seek(1_000_000)
        assert f.read(100) == payload[1_000_000:1_000_100]
        f.seek(-50, 2)
        assert f.read() == payload[-50:]
    assert fs.cat_file("fsspec/data/blob.bin", start=5, end=15) == payload[5:15]
    assert sorted(fs.find("fsspec")) == ["fsspec/data/blob.bin", "fsspec/data/small", "fsspec/other"]
    fs.rm("fsspec", recursive=True)
    check("s3fs: mkdir, open+write, pipe, cat, ls, info, open+seek+read, cat_file range, find, rm")


def rclone():
    conf = os.path.join(WORK, "rclone.conf")
    with open(conf, "w") as f:
        f.write(
            "[floe]\ntype = s3\nprovider = Other\n"
            f"access_key_id = {KEY}\nsecret_access_key = {SECRET}\n"
            f"endpoint = {ENDPOINT}\nregion = us-east-1\n"
        )
    rc = ["rclone", "--config", conf]
    src = os.path.join(WORK, "rclone-src")
    write(f"{src}/one.bin", 100_000)
    write(f"{src}/dir/two.bin", 7_000_000)  # above rclone's 5 MiB... stays single-part (cutoff 200 MiB)
    run(*rc, "mkdir", "floe:rclone")
    run(*rc, "copy", src, "floe:rclone/tree", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M")
    listed = run(*rc, "lsf", "-R", "floe:rclone/tree").decode().split()
    assert sorted(listed) == ["dir/", "dir/two.bin", "one.bin"], listed
    run(*rc, "check", src, "floe:rclone/tree")
    back = os.path.join(WORK, "rclone-back")
    run(*rc, "copy", "floe:rclone/tree", back)
    assert not filecmp.dircmp(src, back).diff_files
    assert run(*rc, "cat", "floe:rclone/tree/one.bin") == open(f"{src}/one.bin", "rb").read()
    run(*rc, "purge", "floe:rclone")
    check("rclone: mkdir, copy (multipart above 5 MiB), lsf, check, copy back, cat, purge")


for name in CLIENTS:
    {"aws": aws_cli, "s3fs": s3fs_client, "rclone": rclone}[name]()
print("clients suite passed")
