"""Every S3 operation floe serves, through boto3 at its default settings (checksums on).

Run by server/tests/s3_clients.rs against a real node: FLOE_S3_ENDPOINT, FLOE_S3_KEY,
FLOE_S3_SECRET, FLOE_S3_BLOB_MAX (the largest blob at the node's n). Prints what it checks;
exits non-zero at the first failure.
"""
import hashlib
import os
import random
import sys
import time
import urllib.request
import urllib.error

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["FLOE_S3_ENDPOINT"]
KEY = os.environ["FLOE_S3_KEY"]
SECRET = os.environ["FLOE_S3_SECRET"]
BLOB_MAX = int(os.environ["FLOE_S3_BLOB_MAX"])
SEED = int(os.environ.get("FLOE_S3_SEED", str(random.randrange(1 << 30))))
print(f"boto3 {boto3.__version__}, botocore {botocore.__version__}; seed {SEED} (FLOE_S3_SEED replays)")
rng = random.Random(SEED)


def client(secret=SECRET, **config):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=KEY,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(**config) if config else None,
    )


s3 = client()


def data(n):
    return rng.randbytes(n)


def code_of(fn):
    try:
        fn()
    except ClientError as err:
        return err.response["Error"]["Code"]
    raise AssertionError("expected an S3 error")


def check(name):
    print(f"ok: {name}", flush=True)


# Buckets.
s3.create_bucket(Bucket="data")
s3.create_bucket(Bucket="other")
assert code_of(lambda: s3.create_bucket(Bucket="data")) == "BucketAlreadyOwnedByYou"
assert code_of(lambda: s3.create_bucket(Bucket="Bad_Name")) == "InvalidBucketName"
names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
assert names == ["data", "other"], names
s3.head_bucket(Bucket="data")
assert code_of(lambda: s3.head_bucket(Bucket="none")) in ("404", "NoSuchBucket")
loc = s3.get_bucket_location(Bucket="data")
assert loc.get("LocationConstraint") in (None, ""), loc
check("CreateBucket, ListBuckets, HeadBucket, GetBucketLocation")

# PutObject / GetObject / HeadObject with metadata, default checksums.
body = data(100_000)
put = s3.put_object(
    Bucket="data",
    Key="dir/hello.bin",
    Body=body,
    ContentType="application/x-test",
    Metadata={"origin": "floe-test"},
    CacheControl="max-age=60",
    ContentDisposition="attachment",
)
etag = put["ETag"]
assert etag == '"%s"' % hashlib.md5(body).hexdigest(), etag
got = s3.get_object(Bucket="data", Key="dir/hello.bin")
assert got["Body"].read() == body
assert got["ContentType"] == "application/x-test"
assert got["Metadata"] == {"origin": "floe-test"}, got["Metadata"]
assert got["CacheControl"] == "max-age=60"
assert got["ContentDisposition"] == "attachment"
assert got["ETag"] == etag
ids = got["ResponseMetadata"]["HTTPHeaders"]["x-floe-blob-ids"]
assert len(ids.split(",")) == 1, ids
head = s3.head_object(Bucket="data", Key="dir/hello.bin")
assert head["ContentLength"] == len(body) and head["ETag"] == etag
check("PutObject (default checksums), GetObject, HeadObject, metadata, blob ID header")

# Every checksum algorithm boto3 offers, and Content-MD5.
for algorithm in ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"]:
    b = data(3000)
    try:
        s3.put_object(Bucket="data", Key=f"sum/{algorithm}", Body=b, ChecksumAlgorithm=algorithm)
    except botocore.exceptions.MissingDependencyException:
        print(f"skipped {algorithm}: botocore lacks awscrt for it")
        continue
    assert s3.get_object(Bucket="data", Key=f"sum/{algorithm}")["Body"].read() == b
check("PutObject with each checksum algorithm")

# Empty object.
s3.put_object(Bucket="data", Key="empty", Body=b"")
got = s3.get_object(Bucket="data", Key="empty")
assert got["Body"].read() == b"" and got["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
check("empty object")

# Ranges.
got = s3.get_object(Bucket="data", Key="dir/hello.bin", Range="bytes=10-19")
assert got["Body"].read() == body[10:20] and got["ContentRange"] == f"bytes 10-19/{len(body)}"
got = s3.get_object(Bucket="data", Key="dir/hello.bin", Range="bytes=-5")
assert got["Body"].read() == body[-5:]
assert code_of(lambda: s3.get_object(Bucket="data", Key="dir/hello.bin", Range="bytes=999999-")) == "InvalidRange"
check("GetObject ranges")

# Conditional requests.
assert code_of(lambda: s3.get_object(Bucket="data", Key="dir/hello.bin", IfMatch='"nope"')) == "PreconditionFailed"
assert code_of(lambda: s3.get_object(Bucket="data", Key="dir/hello.bin", IfNoneMatch=etag)) == "304"
s3.get_object(Bucket="data", Key="dir/hello.bin", IfMatch=etag)
assert code_of(lambda: s3.put_object(Bucket="data", Key="dir/hello.bin", Body=b"x", IfNoneMatch="*")) == "PreconditionFailed"
s3.put_object(Bucket="data", Key="fresh", Body=b"first", IfNoneMatch="*")
past = time.time() - 3600
assert code_of(lambda: s3.get_object(Bucket="data", Key="fresh", IfUnmodifiedSince=past)) == "PreconditionFailed"
assert code_of(lambda: s3.get_object(Bucket="data", Key="fresh", IfModifiedSince=time.time() + 3600)) == "304"
check("If-Match, If-None-Match, If-(Un)Modified-Since, PutObject If-None-Match: *")

# Errors.
assert code_of(lambda: s3.get_object(Bucket="data", Key="missing")) == "NoSuchKey"
assert code_of(lambda: s3.get_object(Bucket="none", Key="x")) == "NoSuchBucket"
assert code_of(lambda: client(secret="wrong-secret-123").list_buckets()) == "SignatureDoesNotMatch"
assert code_of(lambda: client(secret="wrong-secret-123").put_object(Bucket="data", Key="bad", Body=b"x")) == "SignatureDoesNotMatch"
assert code_of(lambda: s3.head_object(Bucket="data", Key="bad")) == "404"
check("NoSuchKey, NoSuchBucket, wrong secret refused and nothing stored")

# A bad checksum: the header claims another body's CRC32; nothing is stored.
req = boto3.session.Session().client(
    "s3", endpoint_url=ENDPOINT, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1",
    config=Config(request_checksum_calculation="when_required"),
)
def tamper_checksum(request, **kwargs):
    request.headers["x-amz-checksum-crc32"] = "AAAAAA=="
req.meta.events.register("before-sign.s3.PutObject", tamper_checksum)
assert code_of(lambda: req.put_object(Bucket="data", Key="badsum", Body=b"payload")) == "BadDigest"
assert code_of(lambda: s3.head_object(Bucket="data", Key="badsum")) == "404"
check("bad checksum refused (BadDigest), nothing stored")

# Presigned URLs, SigV4.
presigner = client(signature_version="s3v4")
url = presigner.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "dir/hello.bin"}, ExpiresIn=60)
assert urllib.request.urlopen(url).read() == body
url = presigner.generate_presigned_url(
    "get_object",
    Params={"Bucket": "data", "Key": "dir/hello.bin", "ResponseContentType": "text/plain"},
    ExpiresIn=60,
)
assert urllib.request.urlopen(url).headers["Content-Type"] == "text/plain"
tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
try:
    urllib.request.urlopen(tampered[: len(tampered) - 1])
    raise AssertionError("a tampered signature was accepted")
except urllib.error.HTTPError as err:
    assert err.code == 403 and b"SignatureDoesNotMatch" in err.read()
expired = presigner.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "dir/hello.bin"}, ExpiresIn=1)
time.sleep(2.2)
try:
    urllib.request.urlopen(expired)
    raise AssertionError("an expired URL was accepted")
except urllib.error.HTTPError as err:
    assert err.code == 403 and b"AccessDenied" in err.read()
put_url = presigner.generate_presigned_url("put_object", Params={"Bucket": "data", "Key": "presigned-put"}, ExpiresIn=60)
urllib.request.urlopen(urllib.request.Request(put_url, data=b"via url", method="PUT"))
assert s3.get_object(Bucket="data", Key="presigned-put")["Body"].read() == b"via url"
try:
    urllib.request.urlopen(ENDPOINT + "/data/dir/hello.bin")
    raise AssertionError("an anonymous read of a private bucket was served")
except urllib.error.HTTPError as err:
    assert err.code == 403 and b"AccessDenied" in err.read()
# boto3's default presigned URLs (SigV2 in us-east-1).
url = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "dir/hello.bin", "ResponseContentType": "text/x-v2"}, ExpiresIn=60)
assert "AWSAccessKeyId=" in url, url
answer = urllib.request.urlopen(url)
assert answer.read() == body and answer.headers["Content-Type"] == "text/x-v2"
try:
    urllib.request.urlopen(url.replace("dir/hello.bin", "dir/other.bin"))
    raise AssertionError("a SigV2 URL for another key was accepted")
except urllib.error.HTTPError as err:
    assert err.code == 403 and b"SignatureDoesNotMatch" in err.read()
put_url = s3.generate_presigned_url("put_object", Params={"Bucket": "data", "Key": "presigned-v2"}, ExpiresIn=60)
# SigV2 signs the Content-Type: send none, as signed (urllib would add a form type).
import requests
assert requests.put(put_url, data=b"v2 body").status_code == 200
assert s3.get_object(Bucket="data", Key="presigned-v2")["Body"].read() == b"v2 body"
check("presigned GET/PUT (SigV4 and boto3's default SigV2), response-* override, tampered and expired URLs refused, anonymous refused")

# An object larger than one blob, through PutObject (split by the node).
big = data(int(BLOB_MAX * 3.2))  # over 5 MiB: also a part of the copy below
s3.put_object(Bucket="data", Key="big/put", Body=big)
got = s3.get_object(Bucket="data", Key="big/put")
assert got["Body"].read() == big
count = int(got["ResponseMetadata"]["HTTPHeaders"]["x-floe-blob-count"])
assert count == 4, count
for start, end in [(0, 10), (BLOB_MAX - 5, BLOB_MAX + 5), (BLOB_MAX // 2, 2 * BLOB_MAX + 7), (len(big) - 3, len(big) - 1)]:
    part = s3.get_object(Bucket="data", Key="big/put", Range=f"bytes={start}-{end}")["Body"].read()
    assert part == big[start : end + 1], (start, end)
check(f"PutObject of {len(big)} bytes spans {count} blobs; ranges across blobs")

# Multipart: 40 MB in 8 parts of 5 MB (each spans several blobs at small n), out of order.
part_size = 5 << 20
whole = data(8 * part_size)
up = s3.create_multipart_upload(Bucket="data", Key="big/multi", ContentType="application/x-shard", Metadata={"k": "v"})
uid = up["UploadId"]
etags = {}
for number in [3, 1, 2, 8, 5, 4, 7, 6]:
    chunk = whole[(number - 1) * part_size : number * part_size]
    etags[number] = s3.upload_part(Bucket="data", Key="big/multi", UploadId=uid, PartNumber=number, Body=chunk)["ETag"]
# A part uploaded again replaces the first one.
etags[2] = s3.upload_part(Bucket="data", Key="big/multi", UploadId=uid, PartNumber=2, Body=whole[part_size : 2 * part_size])["ETag"]
parts = s3.list_parts(Bucket="data", Key="big/multi", UploadId=uid)["Parts"]
assert [p["PartNumber"] for p in parts] == list(range(1, 9)) and all(p["Size"] == part_size for p in parts)
page = s3.list_parts(Bucket="data", Key="big/multi", UploadId=uid, MaxParts=3)
assert page["IsTruncated"] and [p["PartNumber"] for p in page["Parts"]] == [1, 2, 3]
uploads = s3.list_multipart_uploads(Bucket="data")["Uploads"]
assert [u["UploadId"] for u in uploads] == [uid]
assert code_of(lambda: s3.complete_multipart_upload(
    Bucket="data", Key="big/multi", UploadId=uid,
    MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": etags[2]}, {"PartNumber": 1, "ETag": etags[1]}]},
)) == "InvalidPartOrder"
assert code_of(lambda: s3.complete_multipart_upload(
    Bucket="data", Key="big/multi", UploadId=uid,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]},
)) == "InvalidPart"
done = s3.complete_multipart_upload(
    Bucket="data", Key="big/multi", UploadId=uid,
    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in range(1, 9)]},
)
md5s = b"".join(hashlib.md5(whole[i * part_size : (i + 1) * part_size]).digest() for i in range(8))
assert done["ETag"] == '"%s-8"' % hashlib.md5(md5s).hexdigest(), done["ETag"]
got = s3.get_object(Bucket="data", Key="big/multi")
assert got["Body"].read() == whole and got["ContentType"] == "application/x-shard" and got["Metadata"] == {"k": "v"}
for start, end in [(part_size - 3, part_size + 3), (BLOB_MAX * 7 + 1, 3 * part_size + 11), (len(whole) - 10, len(whole) - 1)]:
    part = s3.get_object(Bucket="data", Key="big/multi", Range=f"bytes={start}-{end}")["Body"].read()
    assert part == whole[start : end + 1], (start, end)
p3 = s3.get_object(Bucket="data", Key="big/multi", PartNumber=3)
assert p3["Body"].read() == whole[2 * part_size : 3 * part_size] and p3["PartsCount"] == 8
assert s3.list_multipart_uploads(Bucket="data").get("Uploads", []) == []
check("multipart: 8 parts of 5 MiB out of order, part replaced, ListParts, ListMultipartUploads, order/ETag errors, md5-of-md5s ETag, ranges and partNumber")

small = s3.create_multipart_upload(Bucket="data", Key="small/parts")["UploadId"]
e1 = s3.upload_part(Bucket="data", Key="small/parts", UploadId=small, PartNumber=1, Body=b"a" * 100)["ETag"]
e2 = s3.upload_part(Bucket="data", Key="small/parts", UploadId=small, PartNumber=2, Body=b"b" * 100)["ETag"]
assert code_of(lambda: s3.complete_multipart_upload(
    Bucket="data", Key="small/parts", UploadId=small,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
)) == "EntityTooSmall"
s3.abort_multipart_upload(Bucket="data", Key="small/parts", UploadId=small)
assert code_of(lambda: s3.list_parts(Bucket="data", Key="small/parts", UploadId=small)) == "NoSuchUpload"
check("EntityTooSmall, AbortMultipartUpload")

# UploadPartCopy: a whole object (no bytes copied) and a range.
cp = s3.create_multipart_upload(Bucket="other", Key="copied")["UploadId"]
c1 = s3.upload_part_copy(Bucket="other", Key="copied", UploadId=cp, PartNumber=1, CopySource={"Bucket": "data", "Key": "big/put"})
c2 = s3.upload_part_copy(Bucket="other", Key="copied", UploadId=cp, PartNumber=2, CopySource={"Bucket": "data", "Key": "dir/hello.bin"}, CopySourceRange="bytes=100-1099")
s3.complete_multipart_upload(
    Bucket="other", Key="copied", UploadId=cp,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": c1["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": c2["CopyPartResult"]["ETag"]}]},
)
assert s3.get_object(Bucket="other", Key="copied")["Body"].read() == big + body[100:1100]
check("UploadPartCopy (whole object and a range)")

# CopyObject: a new name for the same blobs.
s3.copy_object(Bucket="other", Key="copy-of-hello", CopySource={"Bucket": "data", "Key": "dir/hello.bin"})
got = s3.get_object(Bucket="other", Key="copy-of-hello")
assert got["Body"].read() == body and got["Metadata"] == {"origin": "floe-test"}
assert got["ResponseMetadata"]["HTTPHeaders"]["x-floe-blob-ids"] == ids
s3.copy_object(Bucket="other", Key="replaced-meta", CopySource="data/dir/hello.bin", MetadataDirective="REPLACE", Metadata={"new": "1"}, ContentType="text/plain")
got = s3.head_object(Bucket="other", Key="replaced-meta")
assert got["Metadata"] == {"new": "1"} and got["ContentType"] == "text/plain"
check("CopyObject (same blobs, metadata COPY and REPLACE)")

# Listings: v2 with prefix, delimiter, paging, start-after, encoding; v1 with marker.
for i in range(25):
    s3.put_object(Bucket="other", Key=f"list/{i:03d}", Body=b"x")
s3.put_object(Bucket="other", Key="list/sub/deep", Body=b"x")
s3.put_object(Bucket="other", Key="list/with space+plus&amp", Body=b"x")
keys = []
token = None
pages = 0
while True:
    kwargs = {"Bucket": "other", "Prefix": "list/", "MaxKeys": 7}
    if token:
        kwargs["ContinuationToken"] = token
    page = s3.list_objects_v2(**kwargs)
    pages += 1
    keys += [o["Key"] for o in page.get("Contents", [])]
    if not page["IsTruncated"]:
        break
    token = page["NextContinuationToken"]
expected = sorted([f"list/{i:03d}" for i in range(25)] + ["list/sub/deep", "list/with space+plus&amp"])
assert keys == expected, keys
assert pages == 4, pages
page = s3.list_objects_v2(Bucket="other", Prefix="list/", Delimiter="/")
assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["list/sub/"]
assert len(page["Contents"]) == 26
page = s3.list_objects_v2(Bucket="other", Prefix="list/", StartAfter="list/020")
assert [o["Key"] for o in page["Contents"]][:2] == ["list/021", "list/022"]
paginated = [o["Key"] for p in s3.get_paginator("list_objects").paginate(Bucket="other", Prefix="list/", PaginationConfig={"PageSize": 5}) for o in p.get("Contents", [])]
assert paginated == expected
raw = urllib.request.urlopen(presigner.generate_presigned_url("list_objects_v2", Params={"Bucket": "other", "Prefix": "list/w", "EncodingType": "url"})).read()
assert b"<Key>list/with%20space%2Bplus%26amp</Key>" in raw, raw
check("ListObjectsV2 (prefix, delimiter, paging, start-after, encoding-type=url), ListObjects v1 paginator")

# Deletes: DeleteObject, DeleteObjects, DeleteBucket (empty only).
s3.delete_object(Bucket="data", Key="fresh")
assert code_of(lambda: s3.get_object(Bucket="data", Key="fresh")) == "NoSuchKey"
s3.delete_object(Bucket="data", Key="never-was")
gone = s3.delete_objects(Bucket="other", Delete={"Objects": [{"Key": f"list/{i:03d}"} for i in range(25)]})
assert len(gone["Deleted"]) == 25
assert code_of(lambda: s3.delete_bucket(Bucket="other")) == "BucketNotEmpty"
for key in ["list/sub/deep", "list/with space+plus&amp", "copy-of-hello", "replaced-meta", "copied"]:
    s3.delete_object(Bucket="other", Key=key)
s3.delete_bucket(Bucket="other")
assert code_of(lambda: s3.head_bucket(Bucket="other")) in ("404", "NoSuchBucket")
check("DeleteObject, DeleteObjects, DeleteBucket (empty only)")

# The same bytes named again after their blob was released and deleted.
s3.delete_object(Bucket="data", Key="dir/hello.bin")
s3.put_object(Bucket="data", Key="again", Body=body)
assert s3.get_object(Bucket="data", Key="again")["Body"].read() == body
check("bytes stored again after their blob was released")

# S3's limits on keys and metadata.
assert code_of(lambda: s3.put_object(Bucket="data", Key="k" * 1025, Body=b"x")) == "KeyTooLongError"
assert code_of(lambda: s3.put_object(Bucket="data", Key="meta", Body=b"x", Metadata={"big": "v" * 2100})) == "MetadataTooLarge"
print("ok: KeyTooLongError, MetadataTooLarge")
print("boto3 suite passed")
