"""S3 settings from node.toml: virtual-host style (`[s3] domain`), anonymous reads of a public
bucket (`[s3] public_buckets`), and a second key (`[[s3.keys]]`) beside the environment's.

Run by cli/tests/s3.rs: FLOE_S3_ENDPOINT, FLOE_S3_KEY/SECRET (the environment's key),
FLOE_S3_KEY2/SECRET2 (node.toml's), FLOE_S3_DOMAIN.
"""
import os
import urllib.error
import urllib.request

import boto3
from botocore.config import Config

ENDPOINT = os.environ["FLOE_S3_ENDPOINT"]
PORT = ENDPOINT.rsplit(":", 1)[1]
DOMAIN = os.environ["FLOE_S3_DOMAIN"]


def client(key, secret, **config):
    return boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=Config(signature_version="s3v4", **config))


env_key = client(os.environ["FLOE_S3_KEY"], os.environ["FLOE_S3_SECRET"])
toml_key = client(os.environ["FLOE_S3_KEY2"], os.environ["FLOE_S3_SECRET2"])
env_key.create_bucket(Bucket="public")
env_key.create_bucket(Bucket="private")
toml_key.put_object(Bucket="public", Key="data/open.txt", Body=b"anyone may read this")
toml_key.put_object(Bucket="private", Key="secret.txt", Body=b"keys only")
print("ok: both keys sign")

# Anonymous: reads and listings of the public bucket; nothing else.
assert urllib.request.urlopen(f"{ENDPOINT}/public/data/open.txt").read() == b"anyone may read this"
listing = urllib.request.urlopen(f"{ENDPOINT}/public?list-type=2&prefix=data/").read()
assert b"<Key>data/open.txt</Key>" in listing, listing
for url, method in [(f"{ENDPOINT}/private/secret.txt", "GET"), (f"{ENDPOINT}/public/new", "PUT"),
                    (f"{ENDPOINT}/public/data/open.txt", "DELETE"), (f"{ENDPOINT}/", "GET")]:
    try:
        urllib.request.urlopen(urllib.request.Request(url, data=b"x" if method == "PUT" else None, method=method))
        raise AssertionError(f"anonymous {method} {url} was served")
    except urllib.error.HTTPError as err:
        assert err.code == 403 and b"AccessDenied" in err.read(), (url, err.code)
assert env_key.get_object(Bucket="public", Key="data/open.txt")["Body"].read() == b"anyone may read this"
print("ok: anonymous GET and list of a public bucket only")

# Virtual-host style: the Host names the bucket. boto3 signs for bucket.DOMAIN; the request
# goes to 127.0.0.1 with that Host.
virtual = boto3.client("s3", endpoint_url=f"http://{DOMAIN}:{PORT}",
                       aws_access_key_id=os.environ["FLOE_S3_KEY"],
                       aws_secret_access_key=os.environ["FLOE_S3_SECRET"], region_name="us-east-1",
                       config=Config(signature_version="s3v4", s3={"addressing_style": "virtual"}))
url = virtual.generate_presigned_url("get_object", Params={"Bucket": "private", "Key": "secret.txt"}, ExpiresIn=60)
host = url.split("/")[2]
assert host == f"private.{DOMAIN}:{PORT}", host
path = "/" + url.split("/", 3)[3]
request = urllib.request.Request(f"{ENDPOINT}{path}", headers={"Host": host})
assert urllib.request.urlopen(request).read() == b"keys only"
print("ok: virtual-host style")
print("config suite passed")
