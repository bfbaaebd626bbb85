//! The S3 side of a data set: `prepare --s3 URL` names each blob `blob-NNNNNNNN` in a bucket of
//! a node's S3 API (the same bytes, so the same blob), and the `s3` and `s3range` workloads read
//! them back through GetObject, signed with SigV4 (presigned URLs, made once per object and
//! target by rusty-s3, so a request costs the node a full signature check and the client
//! nothing).

use std::time::Duration;

use anyhow::{anyhow, Result};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::target::Target;

/// The bucket a data set is named in unless `--s3-bucket` says otherwise.
pub const BUCKET_DEFAULT: &str = "loadgen";

/// The key of blob `index` of a data set.
pub fn object_key(index: u64) -> String {
    format!("blob-{index:08}")
}

/// Signs requests to one S3 endpoint's bucket.
pub struct Signer {
    bucket: Bucket,
    credentials: Credentials,
}

impl Signer {
    /// For `target` (an S3 endpoint) and `bucket`, with the key in `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` (or `FLOE_S3_ACCESS_KEY_ID` / `FLOE_S3_SECRET_ACCESS_KEY`).
    pub fn from_env(target: &Target, bucket: &str) -> Result<Self> {
        let var = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        let key = var(["AWS_ACCESS_KEY_ID", "FLOE_S3_ACCESS_KEY_ID"]);
        let secret = var(["AWS_SECRET_ACCESS_KEY", "FLOE_S3_SECRET_ACCESS_KEY"]);
        let (Some(key), Some(secret)) = (key, secret) else {
            return Err(anyhow!(
                "S3 requests are signed: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
                 FLOE_S3_ACCESS_KEY_ID and FLOE_S3_SECRET_ACCESS_KEY) to a key of the node"
            ));
        };
        let endpoint = url::Url::parse(&format!("http://{}", target.host))
            .map_err(|e| anyhow!("{}: {e}", target.url))?;
        let bucket = Bucket::new(endpoint, UrlStyle::Path, bucket.to_string(), "us-east-1")
            .map_err(|e| anyhow!("bucket {bucket}: {e}"))?;
        Ok(Self {
            bucket,
            credentials: Credentials::new(key, secret),
        })
    }

    fn path_and_query(url: url::Url) -> String {
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// A presigned `PUT /bucket` (CreateBucket).
    pub fn create_bucket(&self, expires: Duration) -> String {
        Self::path_and_query(self.bucket.create_bucket(&self.credentials).sign(expires))
    }

    /// A presigned PutObject of blob `index`.
    pub fn put(&self, index: u64, expires: Duration) -> String {
        let key = object_key(index);
        Self::path_and_query(
            self.bucket
                .put_object(Some(&self.credentials), &key)
                .sign(expires),
        )
    }

    /// A presigned GetObject of blob `index`.
    pub fn get(&self, index: u64, expires: Duration) -> String {
        let key = object_key(index);
        Self::path_and_query(
            self.bucket
                .get_object(Some(&self.credentials), &key)
                .sign(expires),
        )
    }
}
