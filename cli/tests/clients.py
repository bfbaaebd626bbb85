"""Reads a floe blob the way ML teams do: Python `requests` (whole blob and ranges) and
fsspec's HTTP file system (seek and read). Run by cli/tests/cluster.rs:

    python3 clients.py URL EXPECTED_FILE

Exits 0 when every read matches the expected bytes; prints what differed otherwise.
"""

import sys

import fsspec
import requests


def main() -> None:
    url, path = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        expected = f.read()
    size = len(expected)

    whole = requests.get(url, timeout=60)
    assert whole.status_code == 200, whole.status_code
    assert whole.content == expected, "requests: whole blob differs"
    assert whole.headers["Accept-Ranges"] == "bytes"
    etag = whole.headers["ETag"]

    for header, want in [
        ("bytes=0-0", expected[:1]),
        (f"bytes={size - 1}-{size - 1}", expected[-1:]),
        ("bytes=-1000", expected[-1000:]),
        ("bytes=12345-", expected[12345:]),
        ("bytes=100-199999", expected[100:200000]),
    ]:
        r = requests.get(url, headers={"Range": header}, timeout=60)
        assert r.status_code == 206, (header, r.status_code)
        assert r.content == want, f"requests: range {header} differs"
    r = requests.get(url, headers={"Range": f"bytes={size}-"}, timeout=60)
    assert r.status_code == 416, r.status_code
    r = requests.get(url, headers={"If-None-Match": etag}, timeout=60)
    assert r.status_code == 304, r.status_code

    fs = fsspec.filesystem("http")
    assert fs.size(url) == size
    with fs.open(url, "rb", block_size=64 * 1024) as f:
        f.seek(size // 2)
        assert f.read(5000) == expected[size // 2 : size // 2 + 5000], "fsspec: seek+read"
        f.seek(-10, 2)
        assert f.read() == expected[-10:], "fsspec: read from the end"
        f.seek(0)
        assert f.read(1) == expected[:1], "fsspec: first byte"
    assert fs.cat_file(url, start=1000, end=3000) == expected[1000:3000]
    print("ok: requests and fsspec read whole blob and ranges")


if __name__ == "__main__":
    main()
