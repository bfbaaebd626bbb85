//! The S3 namespace in etcd: buckets, keys naming objects made of blobs, multipart uploads
//! and their parts, shared by every node of a cluster, with etcd's linearizable reads and
//! transactions giving S3's read-after-write and list-after-write consistency. The same
//! operations and types as the node-local namespace (`floe_storage::namespace`).
//!
//! Keys under `{prefix}s3/`:
//!
//! ```text
//! b/{bucket}                    the bucket
//! bd/{bucket}                   a deletion in progress (leased: it lapses if the deleter dies)
//! o/{bucket}/{key}              an object (its blobs, size, ETag, metadata)
//! u/{upload}                    a multipart upload in progress
//! uk/{bucket}/{key}\0{upload}   its entry in the bucket's list of uploads (the upload again)
//! p/{upload}/{number:05}        a part
//! ```
//!
//! Invariants: an object, a part or an upload is written only while its bucket exists and is
//! not being deleted (compares in the same transaction; a deletion marks the bucket first, so
//! a write that passed its compare is seen by the deletion's emptiness check); a completion
//! names the object, drops the upload and its parts in one transaction that holds only if
//! the upload is as it was read (a concurrent completion or abort makes it fail).
//!
//! Releasing blobs: name counts per blob cannot change in the transaction that names an
//! object (an object may list 10,000 blobs, an etcd transaction takes 128 operations), so this
//! namespace returns no released blobs: on etcd, blobs an overwrite or deletion leaves unnamed
//! are kept (as the per-node namespaces of a committee already do), not deleted.
//!
//! Boundary: the calls block (the S3 API runs them on its blocking pool) on a small tokio
//! runtime of their own; etcd not answering is [`NamespaceError::Unavailable`].

use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use floe_storage::namespace::{
    past, rolled_up, Bucket, Completed, Listing, NamespaceError, Object, Part, Upload,
};
use serde::de::DeserializeOwned;

use crate::{prefix_end, Control, ControlError};

/// How long one namespace call may wait for etcd. Why: an S3 client's own timeouts are
/// longer; past this etcd is down and the client gets 503 to retry.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds a bucket deletion's mark lives without its deleter. Why: longer than the emptiness
/// check takes, short enough that a crashed deletion does not block the bucket for long.
const DELETION_MARK_SECONDS: i64 = 10;

/// Keys read per range request of a listing. Why: a page of S3 holds at most 1,000 entries.
const RANGE_LIMIT: i64 = 1000;

pub struct EtcdNamespace {
    endpoints: Vec<String>,
    prefix: String,
    runtime: tokio::runtime::Runtime,
    control: Mutex<Option<Control>>,
}

fn unavailable(err: impl std::fmt::Display) -> NamespaceError {
    NamespaceError::Unavailable(format!("the S3 namespace in etcd: {err}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, NamespaceError> {
    serde_json::from_slice(bytes).map_err(|e| NamespaceError::Database(e.to_string()))
}

impl EtcdNamespace {
    /// A namespace under `prefix` in the etcd at `endpoints` (connected on first use).
    pub fn new(endpoints: &[String], prefix: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("floe-s3-etcd")
            .enable_all()
            .build()?;
        let prefix = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        Ok(Self {
            endpoints: endpoints.to_vec(),
            prefix: format!("{prefix}s3/"),
            runtime,
            control: Mutex::new(None),
        })
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}/{rest}", self.prefix)
    }

    fn bucket_key(&self, bucket: &str) -> String {
        self.key("b", bucket)
    }

    fn marker_key(&self, bucket: &str) -> String {
        self.key("bd", bucket)
    }

    fn object_key(&self, bucket: &str, key: &str) -> String {
        self.key("o", &format!("{bucket}/{key}"))
    }

    fn upload_key(&self, upload: &str) -> String {
        self.key("u", upload)
    }

    fn upload_entry(&self, bucket: &str, key: &str, upload: &str) -> String {
        self.key("uk", &format!("{bucket}/{key}\0{upload}"))
    }

    fn part_key(&self, upload: &str, number: u32) -> String {
        self.key("p", &format!("{upload}/{number:05}"))
    }

    /// Runs `call` with a connected client on this namespace's runtime, within [`TIMEOUT`];
    /// a failed connection is dropped, to be made again by the next call.
    fn run<T, F>(&self, call: impl FnOnce(Control) -> F) -> Result<T, NamespaceError>
    where
        F: std::future::Future<Output = Result<T, NamespaceError>>,
    {
        let cached = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.runtime.block_on(async {
            let control = match cached {
                Some(control) => control,
                None => {
                    let control = Control::connect(&self.endpoints, "/", TIMEOUT)
                        .await
                        .map_err(unavailable)?;
                    *self.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(control.clone());
                    control
                }
            };
            let result = tokio::time::timeout(TIMEOUT, call(control))
                .await
                .unwrap_or_else(|_| Err(unavailable("etcd did not answer in time")));
            if matches!(result, Err(NamespaceError::Unavailable(_))) {
                *self.control.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            result
        })
    }

    pub fn create_bucket(&self, name: &str) -> Result<(), NamespaceError> {
        let key = self.bucket_key(name);
        let bucket = Bucket {
            created_unix_seconds: now(),
        };
        self.run(|mut c| async move {
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), json(&bucket), None)]);
            if commit(&mut c, txn).await? {
                Ok(())
            } else {
                Err(NamespaceError::BucketExists(name.into()))
            }
        })
    }

    pub fn bucket(&self, name: &str) -> Result<Option<Bucket>, NamespaceError> {
        let key = self.bucket_key(name);
        self.run(|c| async move { get_json(c, &key).await })
    }

    pub fn buckets(&self) -> Result<Vec<(String, Bucket)>, NamespaceError> {
        let prefix = self.key("b", "");
        self.run(|mut c| async move {
            let answer = c
                .client()
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(unavailable)?;
            answer
                .kvs()
                .iter()
                .map(|kv| {
                    let name = String::from_utf8_lossy(kv.key())[prefix.len()..].to_string();
                    Ok((name, parse(kv.value())?))
                })
                .collect()
        })
    }

    /// Deletes an empty bucket: marks it (writes to it then fail), checks it holds no object
    /// and no upload, then deletes it; a bucket found not empty is unmarked.
    pub fn delete_bucket(&self, name: &str) -> Result<(), NamespaceError> {
        let (bucket, marker) = (self.bucket_key(name), self.marker_key(name));
        let objects = self.key("o", &format!("{name}/"));
        let uploads = self.key("uk", &format!("{name}/"));
        self.run(|mut c| async move {
            let lease = c
                .client()
                .lease_grant(DELETION_MARK_SECONDS, None)
                .await
                .map_err(unavailable)?
                .id();
            let mark = Txn::new()
                .when([Compare::create_revision(
                    bucket.as_str(),
                    CompareOp::NotEqual,
                    0,
                )])
                .and_then([TxnOp::put(
                    marker.as_str(),
                    b"deleting".to_vec(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if !c.client().txn(mark).await.map_err(unavailable)?.succeeded() {
                return Err(NamespaceError::NoSuchBucket(name.into()));
            }
            let mut empty = true;
            for prefix in [&objects, &uploads] {
                let options = GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(1);
                let found = c
                    .client()
                    .get(prefix.as_str(), Some(options))
                    .await
                    .map_err(unavailable)?;
                empty &= found.kvs().is_empty();
            }
            let txn = if empty {
                Txn::new().and_then([
                    TxnOp::delete(bucket.as_str(), None),
                    TxnOp::delete(marker.as_str(), None),
                ])
            } else {
                Txn::new().and_then([TxnOp::delete(marker.as_str(), None)])
            };
            c.client().txn(txn).await.map_err(unavailable)?;
            let _ = c.client().lease_revoke(lease).await;
            if empty {
                Ok(())
            } else {
                Err(NamespaceError::BucketNotEmpty(name.into()))
            }
        })
    }

    /// The compares that hold while `bucket` exists and is not being deleted.
    fn bucket_open(&self, bucket: &str) -> [Compare; 2] {
        [
            Compare::create_revision(self.bucket_key(bucket), CompareOp::NotEqual, 0),
            Compare::create_revision(self.marker_key(bucket), CompareOp::Equal, 0),
        ]
    }

    pub fn object(&self, bucket: &str, key: &str) -> Result<Option<Object>, NamespaceError> {
        let key = self.object_key(bucket, key);
        self.run(|c| async move { get_json(c, &key).await })
    }

    /// Names `object` `bucket/key`; with `if_none_match`, only if the key is free. Releases
    /// nothing (see the module's note).
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        object: &Object,
        if_none_match: bool,
    ) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let mut when = self.bucket_open(bucket).to_vec();
        let object_key = self.object_key(bucket, key);
        if if_none_match {
            when.push(Compare::create_revision(
                object_key.as_str(),
                CompareOp::Equal,
                0,
            ));
        }
        let put = TxnOp::put(object_key.as_str(), json(object), None);
        let bucket_key = self.bucket_key(bucket);
        self.run(|mut c| async move {
            let txn = Txn::new().when(when).and_then([put]);
            if commit(&mut c, txn).await? {
                return Ok(Vec::new());
            }
            // Which compare failed: the bucket, or the key taken.
            match get_json::<Bucket>(c, &bucket_key).await? {
                Some(_) if if_none_match => {
                    Err(NamespaceError::KeyExists(bucket.into(), key.into()))
                }
                _ => Err(NamespaceError::NoSuchBucket(bucket.into())),
            }
        })
    }

    /// Names many objects in `bucket`, a transaction per 100 (bulk loading).
    pub fn put_objects(
        &self,
        bucket: &str,
        objects: &[(String, Object)],
    ) -> Result<Vec<[u8; 32]>, NamespaceError> {
        for chunk in objects.chunks(100) {
            let when = self.bucket_open(bucket).to_vec();
            let puts: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, object)| TxnOp::put(self.object_key(bucket, key), json(object), None))
                .collect();
            self.run(|mut c| async move {
                let txn = Txn::new().when(when).and_then(puts);
                if commit(&mut c, txn).await? {
                    Ok(())
                } else {
                    Err(NamespaceError::NoSuchBucket(bucket.into()))
                }
            })?;
        }
        Ok(Vec::new())
    }

    /// Deletes `bucket/key` (absent keys are not an error, as in S3).
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let when = [Compare::create_revision(
            self.bucket_key(bucket),
            CompareOp::NotEqual,
            0,
        )];
        let delete = TxnOp::delete(self.object_key(bucket, key), None);
        self.run(|mut c| async move {
            let txn = Txn::new().when(when).and_then([delete]);
            if commit(&mut c, txn).await? {
                Ok(Vec::new())
            } else {
                Err(NamespaceError::NoSuchBucket(bucket.into()))
            }
        })
    }

    pub fn create_upload(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
        template: &Object,
    ) -> Result<(), NamespaceError> {
        let upload = Upload {
            bucket: bucket.into(),
            key: key.into(),
            initiated_unix_seconds: now(),
            template: template.clone(),
        };
        let when = self.bucket_open(bucket).to_vec();
        let puts = [
            TxnOp::put(self.upload_key(upload_id), json(&upload), None),
            // The entry holds the upload too (it never changes): a listing is one range read.
            TxnOp::put(
                self.upload_entry(bucket, key, upload_id),
                json(&upload),
                None,
            ),
        ];
        self.run(|mut c| async move {
            let txn = Txn::new().when(when).and_then(puts);
            if commit(&mut c, txn).await? {
                Ok(())
            } else {
                Err(NamespaceError::NoSuchBucket(bucket.into()))
            }
        })
    }

    pub fn upload(&self, upload_id: &str) -> Result<Option<Upload>, NamespaceError> {
        let key = self.upload_key(upload_id);
        self.run(|c| async move { get_json(c, &key).await })
    }

    /// Records part `number` of `upload_id` (replacing an earlier one of that number).
    pub fn put_part(
        &self,
        upload_id: &str,
        number: u32,
        part: &Part,
    ) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let upload = self.upload_key(upload_id);
        let put = TxnOp::put(self.part_key(upload_id, number), json(part), None);
        self.run(|mut c| async move {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    upload.as_str(),
                    CompareOp::NotEqual,
                    0,
                )])
                .and_then([put]);
            if commit(&mut c, txn).await? {
                Ok(Vec::new())
            } else {
                Err(NamespaceError::NoSuchUpload(upload_id.into()))
            }
        })
    }

    /// The parts of `upload_id` numbered above `after`, at most `limit`, in order.
    pub fn parts(
        &self,
        upload_id: &str,
        after: u32,
        limit: usize,
    ) -> Result<Vec<(u32, Part)>, NamespaceError> {
        let upload = self.upload_key(upload_id);
        let start = self.part_key(upload_id, after.saturating_add(1));
        let end = prefix_end(self.key("p", &format!("{upload_id}/")).as_bytes());
        self.run(|mut c| async move {
            if get_json::<Upload>(c.clone(), &upload).await?.is_none() {
                return Err(NamespaceError::NoSuchUpload(upload_id.into()));
            }
            let options = GetOptions::new()
                .with_range(end)
                .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
            let answer = c
                .client()
                .get(start.as_str(), Some(options))
                .await
                .map_err(unavailable)?;
            answer
                .kvs()
                .iter()
                .map(|kv| {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let number = key
                        .rsplit('/')
                        .next()
                        .and_then(|n| n.parse::<u32>().ok())
                        .ok_or_else(|| NamespaceError::Database(format!("a part key {key:?}")))?;
                    Ok((number, parse(kv.value())?))
                })
                .collect()
        })
    }

    /// Completes `upload_id`: `build` makes the object from the upload and its parts; the
    /// object is named and the upload with its parts dropped in one transaction that holds
    /// only if the upload is still as it was read.
    pub fn complete_upload<E>(
        &self,
        upload_id: &str,
        build: impl FnOnce(&Upload, &[(u32, Part)]) -> Result<Object, E>,
    ) -> Result<Result<Completed, E>, NamespaceError> {
        let upload_key = self.upload_key(upload_id);
        let read = self.run(|mut c| {
            let upload_key = upload_key.clone();
            async move {
                let answer = c
                    .client()
                    .get(upload_key.as_str(), None)
                    .await
                    .map_err(unavailable)?;
                let Some(kv) = answer.kvs().first() else {
                    return Err(NamespaceError::NoSuchUpload(upload_id.into()));
                };
                Ok((parse::<Upload>(kv.value())?, kv.mod_revision()))
            }
        })?;
        let (upload, revision) = read;
        let parts = self.parts(upload_id, 0, usize::MAX)?;
        let object = match build(&upload, &parts) {
            Ok(object) => object,
            Err(err) => return Ok(Err(err)),
        };
        let mut when = self.bucket_open(&upload.bucket).to_vec();
        when.push(Compare::mod_revision(
            upload_key.as_str(),
            CompareOp::Equal,
            revision,
        ));
        let ops = vec![
            TxnOp::put(
                self.object_key(&upload.bucket, &upload.key),
                json(&object),
                None,
            ),
            TxnOp::delete(upload_key.as_str(), None),
            TxnOp::delete(
                self.upload_entry(&upload.bucket, &upload.key, upload_id),
                None,
            ),
            TxnOp::delete(
                self.key("p", &format!("{upload_id}/")),
                Some(DeleteOptions::new().with_prefix()),
            ),
        ];
        let bucket_key = self.bucket_key(&upload.bucket);
        let bucket = upload.bucket.clone();
        self.run(|mut c| async move {
            let txn = Txn::new().when(when).and_then(ops);
            if commit(&mut c, txn).await? {
                return Ok(());
            }
            match get_json::<Bucket>(c, &bucket_key).await? {
                Some(_) => Err(NamespaceError::NoSuchUpload(upload_id.into())),
                None => Err(NamespaceError::NoSuchBucket(bucket)),
            }
        })?;
        Ok(Ok((upload, object, Vec::new())))
    }

    pub fn abort_upload(&self, upload_id: &str) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let Some(upload) = self.upload(upload_id)? else {
            return Err(NamespaceError::NoSuchUpload(upload_id.into()));
        };
        let upload_key = self.upload_key(upload_id);
        let ops = vec![
            TxnOp::delete(upload_key.as_str(), None),
            TxnOp::delete(
                self.upload_entry(&upload.bucket, &upload.key, upload_id),
                None,
            ),
            TxnOp::delete(
                self.key("p", &format!("{upload_id}/")),
                Some(DeleteOptions::new().with_prefix()),
            ),
        ];
        self.run(|mut c| async move {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    upload_key.as_str(),
                    CompareOp::NotEqual,
                    0,
                )])
                .and_then(ops);
            if commit(&mut c, txn).await? {
                Ok(Vec::new())
            } else {
                Err(NamespaceError::NoSuchUpload(upload_id.into()))
            }
        })
    }

    /// `bucket`'s uploads in progress whose keys start with `prefix`, after (`key`,
    /// `upload_id`) `after`, at most `limit`: (key, upload ID, upload).
    pub fn uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, Upload)>, NamespaceError> {
        let base = self.key("uk", &format!("{bucket}/"));
        let start = match after {
            Some((key, id)) if key >= prefix => format!("{base}{key}\0{id}\0"),
            _ => format!("{base}{prefix}"),
        };
        let end = prefix_end(format!("{base}{prefix}").as_bytes());
        let bucket_key = self.bucket_key(bucket);
        self.run(|mut c| async move {
            if get_json::<Bucket>(c.clone(), &bucket_key).await?.is_none() {
                return Err(NamespaceError::NoSuchBucket(bucket.into()));
            }
            let options = GetOptions::new()
                .with_range(end)
                .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
            let answer = c
                .client()
                .get(start.as_str(), Some(options))
                .await
                .map_err(unavailable)?;
            let mut all = Vec::with_capacity(answer.kvs().len());
            for kv in answer.kvs() {
                let entry = String::from_utf8_lossy(kv.key()).into_owned();
                if let Some((key, id)) = entry[base.len()..].split_once('\0') {
                    all.push((key.to_string(), id.to_string(), parse(kv.value())?));
                }
            }
            Ok(all)
        })
    }

    /// One page of `bucket`'s keys starting with `prefix`, after `after`, at most `max_keys`
    /// entries (objects and common prefixes together); keys with `delimiter` after the prefix
    /// are rolled up into common prefixes, each skipped with one range request.
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: usize,
    ) -> Result<Listing, NamespaceError> {
        let base = self.key("o", &format!("{bucket}/"));
        let bucket_key = self.bucket_key(bucket);
        self.run(|mut c| async move {
            if get_json::<Bucket>(c.clone(), &bucket_key).await?.is_none() {
                return Err(NamespaceError::NoSuchBucket(bucket.into()));
            }
            let end = prefix_end(format!("{base}{prefix}").as_bytes());
            let mut listing = Listing::default();
            // Start after `after` (a key, or a common prefix already listed), else at prefix.
            let mut start: Vec<u8> = match after {
                Some(after) if after >= prefix => {
                    let mut key = format!("{base}{after}").into_bytes();
                    key.push(0);
                    key
                }
                _ => format!("{base}{prefix}").into_bytes(),
            };
            let mut last: Option<String> = None;
            'pages: loop {
                let options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(RANGE_LIMIT);
                let answer = c
                    .client()
                    .get(start.clone(), Some(options))
                    .await
                    .map_err(unavailable)?;
                if answer.kvs().is_empty() {
                    break;
                }
                for kv in answer.kvs() {
                    let full = String::from_utf8_lossy(kv.key()).into_owned();
                    let key = full[base.len()..].to_string();
                    if listing.objects.len() + listing.common_prefixes.len() == max_keys {
                        listing.next_after = last;
                        break 'pages;
                    }
                    if let Some(common) = rolled_up(prefix, delimiter, &key) {
                        listing.common_prefixes.push(common.clone());
                        // Past every key under this prefix.
                        start = prefix_end(format!("{base}{common}").as_bytes());
                        last = Some(past(&common));
                        continue 'pages;
                    }
                    listing.objects.push((key.clone(), parse(kv.value())?));
                    last = Some(key);
                    let mut next = full.into_bytes();
                    next.push(0);
                    start = next;
                }
                if !answer.more() {
                    break;
                }
            }
            Ok(listing)
        })
    }
}

/// Runs `txn`: whether its compares held.
async fn commit(c: &mut Control, txn: Txn) -> Result<bool, NamespaceError> {
    Ok(c.client().txn(txn).await.map_err(unavailable)?.succeeded())
}

/// The JSON value at `key`, if any.
async fn get_json<T: DeserializeOwned>(
    mut c: Control,
    key: &str,
) -> Result<Option<T>, NamespaceError> {
    let answer = c.client().get(key, None).await.map_err(unavailable)?;
    match answer.kvs().first() {
        Some(kv) => Ok(Some(parse(kv.value())?)),
        None => Ok(None),
    }
}

impl From<ControlError> for NamespaceError {
    fn from(err: ControlError) -> Self {
        unavailable(err)
    }
}
