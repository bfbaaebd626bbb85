//! The S3 namespace of a node (issue 16): buckets, keys naming objects made of blobs, and how
//! many names each blob has, in an embedded crash-safe database (redb: copy-on-write B-trees,
//! a commit is durable when it returns). Not a new file format: one redb file,
//! `namespace.redb`, in the node's first data directory.
//!
//! Invariants: a committed change survives a crash (kill -9) whole or not at all; a blob's
//! name count is the number of keys whose object lists it, so a blob is released (its count
//! reaches zero, returned by [`Namespace::put_object`] and [`Namespace::delete_object`]) exactly
//! when its last name goes; a listing page does work bounded by its size, however many keys the
//! bucket holds.
//!
//! Boundary: blocking file I/O (redb); callers run it off the serving core.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Buckets by name: their JSON [`Bucket`].
const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
/// Objects by (bucket, key): their JSON [`Object`].
const OBJECTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("objects");
/// Names per blob (blob ID bytes): how many objects and parts of uploads in progress list it.
const BLOB_NAMES: TableDefinition<&[u8], u64> = TableDefinition::new("blob_names");
/// Blobs whose last name went (blob ID bytes -> Unix seconds), until the caller has deleted
/// them ([`Namespace::forget_released`]): a crash between the two loses no deletion.
const RELEASED: TableDefinition<&[u8], u64> = TableDefinition::new("released");
/// Multipart uploads in progress by upload ID: their JSON [`Upload`].
const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// The same uploads by (bucket, key, upload ID), for listing a bucket's uploads in key order.
const UPLOAD_KEYS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("upload_keys");
/// Parts by (upload ID, part number): their JSON [`Part`].
const PARTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("parts");

/// Why a namespace operation failed.
#[derive(Debug, Error)]
pub enum NamespaceError {
    #[error("the bucket {0} does not exist")]
    NoSuchBucket(String),
    #[error("the bucket {0} exists")]
    BucketExists(String),
    #[error("the bucket {0} is not empty")]
    BucketNotEmpty(String),
    #[error("the object {1} does not exist in {0}")]
    NoSuchKey(String, String),
    #[error("the key {1} exists in {0} (If-None-Match: *)")]
    KeyExists(String, String),
    #[error("the upload {0} does not exist (completed, aborted, or never started)")]
    NoSuchUpload(String),
    #[error("the namespace database failed: {0}")]
    Database(String),
    /// The namespace lives elsewhere (etcd) and does not answer now; try again.
    #[error("{0}")]
    Unavailable(String),
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for NamespaceError {
            fn from(err: $t) -> Self {
                Self::Database(err.to_string())
            }
        }
    )*};
}
db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

/// A bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub created_unix_seconds: u64,
}

/// A piece of an object: bytes of one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Piece {
    /// The blob ID (32 bytes).
    pub blob_id: [u8; 32],
    pub size: u64,
}

/// An object: its blobs in order, and what S3 keeps about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub pieces: Vec<Piece>,
    pub size: u64,
    pub etag: String,
    pub last_modified_unix_seconds: u64,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    /// `x-amz-meta-*` headers, names without the prefix, lowercase.
    pub user_metadata: BTreeMap<String, String>,
    /// Parts of a multipart upload, with the size of each (for `partNumber` reads).
    pub part_sizes: Vec<u64>,
}

/// A multipart upload in progress: where its object goes, and what the object will keep
/// (its `pieces`, `size` and `etag` are set when it completes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    pub initiated_unix_seconds: u64,
    pub template: Object,
}

/// A part of a multipart upload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    pub pieces: Vec<Piece>,
    pub size: u64,
    /// The MD5 of the part's bytes, hex (without quotes).
    pub md5_hex: String,
    pub last_modified_unix_seconds: u64,
}

/// A completed upload: the upload, the object it made, and the blobs whose last name went.
pub type Completed = (Upload, Object, Vec<[u8; 32]>);

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub objects: Vec<(String, Object)>,
    /// Keys rolled up at the delimiter (`CommonPrefixes`).
    pub common_prefixes: Vec<String>,
    /// Where the next page starts (after this key), if the listing was cut at `max_keys`.
    pub next_after: Option<String>,
}

/// The namespace database.
pub struct Namespace {
    db: Database,
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Namespace {
    /// Opens (or creates) the namespace in `path`.
    pub fn open(path: &Path) -> Result<Self, NamespaceError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(BUCKETS)?;
        tx.open_table(OBJECTS)?;
        tx.open_table(BLOB_NAMES)?;
        tx.open_table(RELEASED)?;
        tx.open_table(UPLOADS)?;
        tx.open_table(UPLOAD_KEYS)?;
        tx.open_table(PARTS)?;
        tx.commit()?;
        Ok(Self { db })
    }

    pub fn create_bucket(&self, name: &str) -> Result<(), NamespaceError> {
        let tx = self.db.begin_write()?;
        {
            let mut buckets = tx.open_table(BUCKETS)?;
            if buckets.get(name)?.is_some() {
                return Err(NamespaceError::BucketExists(name.into()));
            }
            let bucket = Bucket {
                created_unix_seconds: now(),
            };
            buckets.insert(name, serde_json::to_vec(&bucket)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn bucket(&self, name: &str) -> Result<Option<Bucket>, NamespaceError> {
        let tx = self.db.begin_read()?;
        let buckets = tx.open_table(BUCKETS)?;
        let found = buckets.get(name)?;
        Ok(match found {
            Some(value) => Some(serde_json::from_slice(value.value())?),
            None => None,
        })
    }

    pub fn buckets(&self) -> Result<Vec<(String, Bucket)>, NamespaceError> {
        let tx = self.db.begin_read()?;
        let buckets = tx.open_table(BUCKETS)?;
        let mut all = Vec::new();
        for entry in buckets.iter()? {
            let (name, value) = entry?;
            all.push((
                name.value().to_string(),
                serde_json::from_slice(value.value())?,
            ));
        }
        Ok(all)
    }

    /// Deletes an empty bucket.
    pub fn delete_bucket(&self, name: &str) -> Result<(), NamespaceError> {
        let tx = self.db.begin_write()?;
        {
            let mut buckets = tx.open_table(BUCKETS)?;
            if buckets.get(name)?.is_none() {
                return Err(NamespaceError::NoSuchBucket(name.into()));
            }
            let objects = tx.open_table(OBJECTS)?;
            let mut range = objects.range((name, "")..)?;
            if let Some(entry) = range.next() {
                let (key, _) = entry?;
                if key.value().0 == name {
                    return Err(NamespaceError::BucketNotEmpty(name.into()));
                }
            }
            let uploads = tx.open_table(UPLOAD_KEYS)?;
            let mut range = uploads.range((name, "", "")..)?;
            if let Some(entry) = range.next() {
                let (key, _) = entry?;
                if key.value().0 == name {
                    return Err(NamespaceError::BucketNotEmpty(name.into()));
                }
            }
            buckets.remove(name)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn object(&self, bucket: &str, key: &str) -> Result<Option<Object>, NamespaceError> {
        let tx = self.db.begin_read()?;
        let objects = tx.open_table(OBJECTS)?;
        let found = objects.get((bucket, key))?;
        Ok(match found {
            Some(value) => Some(serde_json::from_slice(value.value())?),
            None => None,
        })
    }

    /// Names `object` `bucket/key`, durably; with `if_none_match`, only if the key is free.
    /// Returns the blobs whose last name went (the object it replaced, less what the new one
    /// lists).
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        object: &Object,
        if_none_match: bool,
    ) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let tx = self.db.begin_write()?;
        let released;
        {
            if tx.open_table(BUCKETS)?.get(bucket)?.is_none() {
                return Err(NamespaceError::NoSuchBucket(bucket.into()));
            }
            let mut objects = tx.open_table(OBJECTS)?;
            let old: Option<Object> = match objects.get((bucket, key))? {
                Some(value) => Some(serde_json::from_slice(value.value())?),
                None => None,
            };
            if if_none_match && old.is_some() {
                return Err(NamespaceError::KeyExists(bucket.into(), key.into()));
            }
            objects.insert((bucket, key), serde_json::to_vec(object)?.as_slice())?;
            let mut names = tx.open_table(BLOB_NAMES)?;
            let mut gone = tx.open_table(RELEASED)?;
            name_all(&mut names, &mut gone, &object.pieces)?;
            released = release(&mut names, &mut gone, old.iter().flat_map(|o| &o.pieces))?;
        }
        tx.commit()?;
        Ok(released)
    }

    /// Names many objects in `bucket` in one transaction (bulk loading: an import, or a
    /// benchmark's million keys); returns the blobs whose last name went.
    pub fn put_objects(
        &self,
        bucket: &str,
        objects: &[(String, Object)],
    ) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let tx = self.db.begin_write()?;
        let mut released = Vec::new();
        {
            if tx.open_table(BUCKETS)?.get(bucket)?.is_none() {
                return Err(NamespaceError::NoSuchBucket(bucket.into()));
            }
            let mut table = tx.open_table(OBJECTS)?;
            let mut names = tx.open_table(BLOB_NAMES)?;
            let mut gone = tx.open_table(RELEASED)?;
            for (key, object) in objects {
                let old: Option<Object> = match table.insert(
                    (bucket, key.as_str()),
                    serde_json::to_vec(object)?.as_slice(),
                )? {
                    Some(value) => Some(serde_json::from_slice(value.value())?),
                    None => None,
                };
                name_all(&mut names, &mut gone, &object.pieces)?;
                released.extend(release(
                    &mut names,
                    &mut gone,
                    old.iter().flat_map(|o| &o.pieces),
                )?);
            }
        }
        tx.commit()?;
        Ok(released)
    }

    /// Deletes `bucket/key` (absent keys are not an error, as in S3); returns the blobs whose
    /// last name went.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let tx = self.db.begin_write()?;
        let released;
        {
            if tx.open_table(BUCKETS)?.get(bucket)?.is_none() {
                return Err(NamespaceError::NoSuchBucket(bucket.into()));
            }
            let mut objects = tx.open_table(OBJECTS)?;
            let old: Option<Object> = match objects.remove((bucket, key))? {
                Some(value) => Some(serde_json::from_slice(value.value())?),
                None => None,
            };
            let mut names = tx.open_table(BLOB_NAMES)?;
            let mut gone = tx.open_table(RELEASED)?;
            released = release(&mut names, &mut gone, old.iter().flat_map(|o| &o.pieces))?;
        }
        tx.commit()?;
        Ok(released)
    }

    /// How many names `blob_id` has (objects and parts listing it).
    pub fn names(&self, blob_id: &[u8; 32]) -> Result<u64, NamespaceError> {
        let tx = self.db.begin_read()?;
        let names = tx.open_table(BLOB_NAMES)?;
        let count = names.get(blob_id.as_slice())?.map_or(0, |v| v.value());
        Ok(count)
    }

    /// Blobs released and not yet forgotten (at most `limit`): what a caller that crashed
    /// before deleting them finds at its next start.
    pub fn released(&self, limit: usize) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let tx = self.db.begin_read()?;
        let gone = tx.open_table(RELEASED)?;
        let mut all = Vec::new();
        for entry in gone.iter()?.take(limit) {
            let (blob, _) = entry?;
            if let Ok(id) = <[u8; 32]>::try_from(blob.value()) {
                all.push(id);
            }
        }
        Ok(all)
    }

    /// Whether `blob_id` is released (no name, not yet forgotten).
    pub fn is_released(&self, blob_id: &[u8; 32]) -> Result<bool, NamespaceError> {
        let tx = self.db.begin_read()?;
        let gone = tx.open_table(RELEASED)?;
        Ok(gone.get(blob_id.as_slice())?.is_some())
    }

    /// Forgets released blobs once the caller deleted them.
    pub fn forget_released(&self, blobs: &[[u8; 32]]) -> Result<(), NamespaceError> {
        let tx = self.db.begin_write()?;
        {
            let mut gone = tx.open_table(RELEASED)?;
            for blob in blobs {
                gone.remove(blob.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Starts a multipart upload `upload_id` of `template` to `bucket/key`.
    pub fn create_upload(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
        template: &Object,
    ) -> Result<(), NamespaceError> {
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(BUCKETS)?.get(bucket)?.is_none() {
                return Err(NamespaceError::NoSuchBucket(bucket.into()));
            }
            let upload = Upload {
                bucket: bucket.into(),
                key: key.into(),
                initiated_unix_seconds: now(),
                template: template.clone(),
            };
            tx.open_table(UPLOADS)?
                .insert(upload_id, serde_json::to_vec(&upload)?.as_slice())?;
            tx.open_table(UPLOAD_KEYS)?
                .insert((bucket, key, upload_id), ())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn upload(&self, upload_id: &str) -> Result<Option<Upload>, NamespaceError> {
        let tx = self.db.begin_read()?;
        let uploads = tx.open_table(UPLOADS)?;
        let found = uploads.get(upload_id)?;
        Ok(match found {
            Some(value) => Some(serde_json::from_slice(value.value())?),
            None => None,
        })
    }

    /// Records part `number` of `upload_id` (replacing an earlier one of that number); returns
    /// the blobs whose last name went with the part it replaced.
    pub fn put_part(
        &self,
        upload_id: &str,
        number: u32,
        part: &Part,
    ) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let tx = self.db.begin_write()?;
        let released;
        {
            if tx.open_table(UPLOADS)?.get(upload_id)?.is_none() {
                return Err(NamespaceError::NoSuchUpload(upload_id.into()));
            }
            let mut parts = tx.open_table(PARTS)?;
            let old: Option<Part> =
                match parts.insert((upload_id, number), serde_json::to_vec(part)?.as_slice())? {
                    Some(value) => Some(serde_json::from_slice(value.value())?),
                    None => None,
                };
            let mut names = tx.open_table(BLOB_NAMES)?;
            let mut gone = tx.open_table(RELEASED)?;
            name_all(&mut names, &mut gone, &part.pieces)?;
            released = release(&mut names, &mut gone, old.iter().flat_map(|p| &p.pieces))?;
        }
        tx.commit()?;
        Ok(released)
    }

    /// The parts of `upload_id` numbered above `after`, at most `limit`, in order.
    pub fn parts(
        &self,
        upload_id: &str,
        after: u32,
        limit: usize,
    ) -> Result<Vec<(u32, Part)>, NamespaceError> {
        let tx = self.db.begin_read()?;
        if tx.open_table(UPLOADS)?.get(upload_id)?.is_none() {
            return Err(NamespaceError::NoSuchUpload(upload_id.into()));
        }
        let parts = tx.open_table(PARTS)?;
        let mut all = Vec::new();
        for entry in parts.range((upload_id, after.saturating_add(1))..=(upload_id, u32::MAX))? {
            if all.len() == limit {
                break;
            }
            let (k, value) = entry?;
            all.push((k.value().1, serde_json::from_slice(value.value())?));
        }
        Ok(all)
    }

    /// Completes `upload_id`: `build` makes the object from the upload and its parts (checking
    /// what the client listed), in the same transaction that names it and drops the upload, so
    /// that the object appears whole or not at all. Returns `build`'s error, or the blobs whose
    /// last name went (parts not used, and the object the new one replaced).
    pub fn complete_upload<E>(
        &self,
        upload_id: &str,
        build: impl FnOnce(&Upload, &[(u32, Part)]) -> Result<Object, E>,
    ) -> Result<Result<Completed, E>, NamespaceError> {
        let tx = self.db.begin_write()?;
        let done;
        {
            let mut uploads = tx.open_table(UPLOADS)?;
            let upload: Upload = match uploads.get(upload_id)? {
                Some(value) => serde_json::from_slice(value.value())?,
                None => return Err(NamespaceError::NoSuchUpload(upload_id.into())),
            };
            let mut parts_table = tx.open_table(PARTS)?;
            let mut parts = Vec::new();
            for entry in parts_table.range((upload_id, 0)..=(upload_id, u32::MAX))? {
                let (k, value) = entry?;
                parts.push((k.value().1, serde_json::from_slice::<Part>(value.value())?));
            }
            let object = match build(&upload, &parts) {
                Ok(object) => object,
                Err(err) => return Ok(Err(err)),
            };
            if tx
                .open_table(BUCKETS)?
                .get(upload.bucket.as_str())?
                .is_none()
            {
                return Err(NamespaceError::NoSuchBucket(upload.bucket.clone()));
            }
            let mut objects = tx.open_table(OBJECTS)?;
            let key = (upload.bucket.as_str(), upload.key.as_str());
            let old: Option<Object> =
                match objects.insert(key, serde_json::to_vec(&object)?.as_slice())? {
                    Some(value) => Some(serde_json::from_slice(value.value())?),
                    None => None,
                };
            let mut names = tx.open_table(BLOB_NAMES)?;
            let mut gone = tx.open_table(RELEASED)?;
            name_all(&mut names, &mut gone, &object.pieces)?;
            let mut released = release(
                &mut names,
                &mut gone,
                old.iter()
                    .flat_map(|o| &o.pieces)
                    .chain(parts.iter().flat_map(|(_, p)| &p.pieces)),
            )?;
            released.dedup();
            parts_table.retain_in((upload_id, 0)..=(upload_id, u32::MAX), |_, _| false)?;
            uploads.remove(upload_id)?;
            tx.open_table(UPLOAD_KEYS)?.remove((
                upload.bucket.as_str(),
                upload.key.as_str(),
                upload_id,
            ))?;
            done = (upload, object, released);
        }
        tx.commit()?;
        Ok(Ok(done))
    }

    /// Aborts `upload_id`: its parts go; returns the blobs whose last name went with them.
    pub fn abort_upload(&self, upload_id: &str) -> Result<Vec<[u8; 32]>, NamespaceError> {
        let tx = self.db.begin_write()?;
        let released;
        {
            let mut uploads = tx.open_table(UPLOADS)?;
            let upload: Upload = match uploads.remove(upload_id)? {
                Some(value) => serde_json::from_slice(value.value())?,
                None => return Err(NamespaceError::NoSuchUpload(upload_id.into())),
            };
            tx.open_table(UPLOAD_KEYS)?.remove((
                upload.bucket.as_str(),
                upload.key.as_str(),
                upload_id,
            ))?;
            let mut parts_table = tx.open_table(PARTS)?;
            let mut parts = Vec::new();
            for entry in parts_table.range((upload_id, 0)..=(upload_id, u32::MAX))? {
                let (_, value) = entry?;
                parts.push(serde_json::from_slice::<Part>(value.value())?);
            }
            parts_table.retain_in((upload_id, 0)..=(upload_id, u32::MAX), |_, _| false)?;
            let mut names = tx.open_table(BLOB_NAMES)?;
            let mut gone = tx.open_table(RELEASED)?;
            released = release(&mut names, &mut gone, parts.iter().flat_map(|p| &p.pieces))?;
        }
        tx.commit()?;
        Ok(released)
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
        let tx = self.db.begin_read()?;
        if tx.open_table(BUCKETS)?.get(bucket)?.is_none() {
            return Err(NamespaceError::NoSuchBucket(bucket.into()));
        }
        let keys = tx.open_table(UPLOAD_KEYS)?;
        let uploads = tx.open_table(UPLOADS)?;
        let (from_key, from_id) = after.unwrap_or((prefix, ""));
        let from_key = from_key.max(prefix);
        let mut all = Vec::new();
        for entry in keys.range((bucket, from_key, from_id)..)? {
            let (k, _) = entry?;
            let (b, key, id) = k.value();
            if b != bucket || !key.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|(ak, ai)| (key, id) <= (ak, ai)) {
                continue;
            }
            if all.len() == limit {
                break;
            }
            if let Some(value) = uploads.get(id)? {
                all.push((
                    key.to_string(),
                    id.to_string(),
                    serde_json::from_slice(value.value())?,
                ));
            }
        }
        Ok(all)
    }

    /// One page of `bucket`'s keys starting with `prefix`, after `after`, at most `max_keys`
    /// entries (objects and common prefixes together); keys with `delimiter` after the prefix
    /// are rolled up into common prefixes, each skipped in one seek, so a page costs at most
    /// `max_keys` seeks whatever the bucket holds.
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: usize,
    ) -> Result<Listing, NamespaceError> {
        let tx = self.db.begin_read()?;
        if tx.open_table(BUCKETS)?.get(bucket)?.is_none() {
            return Err(NamespaceError::NoSuchBucket(bucket.into()));
        }
        let objects = tx.open_table(OBJECTS)?;
        let mut listing = Listing::default();
        let mut from = match after {
            Some(after) if after >= prefix => Some(after.to_string()),
            _ => None,
        };
        let mut start = from.clone().unwrap_or_else(|| prefix.to_string());
        let mut taken = 0;
        'seek: loop {
            let mut range = objects.range((bucket, start.as_str())..)?;
            for entry in range.by_ref() {
                let (k, value) = entry?;
                let (b, key) = k.value();
                if b != bucket || !key.starts_with(prefix) {
                    break 'seek;
                }
                if from.as_deref().is_some_and(|f| key <= f) {
                    continue;
                }
                if taken == max_keys {
                    listing.next_after = from.clone();
                    break 'seek;
                }
                if let Some(common) = rolled_up(prefix, delimiter, key) {
                    listing.common_prefixes.push(common.clone());
                    taken += 1;
                    // Past every key under this prefix: the next seek starts after it.
                    from = Some(past(&common));
                    start = from.clone().expect("just set");
                    continue 'seek;
                }
                listing
                    .objects
                    .push((key.to_string(), serde_json::from_slice(value.value())?));
                taken += 1;
                from = Some(key.to_string());
            }
            break;
        }
        Ok(listing)
    }
}

/// The common prefix (S3's `CommonPrefixes`) `key` rolls up into in a listing of `prefix` with
/// `delimiter`, if it does: the prefix and the key up to the first delimiter after it.
pub fn rolled_up(prefix: &str, delimiter: Option<&str>, key: &str) -> Option<String> {
    let rest = key.strip_prefix(prefix)?;
    let at = delimiter
        .filter(|d| !d.is_empty())
        .and_then(|d| rest.find(d).map(|i| i + d.len()))?;
    Some(format!("{prefix}{}", &rest[..at]))
}

/// A listing position past every key under common prefix `common` (the highest character
/// after it), where the next page continues.
pub fn past(common: &str) -> String {
    format!("{common}\u{10FFFF}")
}

/// Gives each of `pieces`' blobs one more name (a released blob named again is no longer
/// released).
fn name_all(
    names: &mut redb::Table<&[u8], u64>,
    gone: &mut redb::Table<&[u8], u64>,
    pieces: &[Piece],
) -> Result<(), NamespaceError> {
    for piece in pieces {
        let count = names
            .get(piece.blob_id.as_slice())?
            .map_or(0, |v| v.value());
        names.insert(piece.blob_id.as_slice(), count + 1)?;
        gone.remove(piece.blob_id.as_slice())?;
    }
    Ok(())
}

/// Takes one name from each of `pieces`' blobs; returns those left with none (recorded as
/// released until forgotten).
fn release<'a>(
    names: &mut redb::Table<&[u8], u64>,
    gone: &mut redb::Table<&[u8], u64>,
    pieces: impl Iterator<Item = &'a Piece>,
) -> Result<Vec<[u8; 32]>, NamespaceError> {
    let mut released = Vec::new();
    for piece in pieces {
        let count = names
            .get(piece.blob_id.as_slice())?
            .map_or(0, |v| v.value());
        if count <= 1 {
            names.remove(piece.blob_id.as_slice())?;
            gone.insert(piece.blob_id.as_slice(), now())?;
            if !released.contains(&piece.blob_id) {
                released.push(piece.blob_id);
            }
        } else {
            names.insert(piece.blob_id.as_slice(), count - 1)?;
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(blobs: &[u8]) -> Object {
        Object {
            pieces: blobs
                .iter()
                .map(|b| Piece {
                    blob_id: [*b; 32],
                    size: 10,
                })
                .collect(),
            size: 10 * blobs.len() as u64,
            etag: "\"x\"".into(),
            ..Object::default()
        }
    }

    #[test]
    fn names_are_kept_across_reopening_and_blobs_released_with_their_last_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("namespace.redb");
        let ns = Namespace::open(&path).unwrap();
        ns.create_bucket("b").unwrap();
        assert!(matches!(
            ns.create_bucket("b"),
            Err(NamespaceError::BucketExists(_))
        ));
        assert!(ns
            .put_object("b", "k1", &object(&[1, 2]), false)
            .unwrap()
            .is_empty());
        assert!(ns
            .put_object("b", "k2", &object(&[2]), false)
            .unwrap()
            .is_empty());
        assert!(matches!(
            ns.put_object("b", "k2", &object(&[3]), true),
            Err(NamespaceError::KeyExists(..))
        ));
        // Overwriting k1: blob 1 loses its only name, blob 2 keeps k2's.
        assert_eq!(
            ns.put_object("b", "k1", &object(&[3]), false).unwrap(),
            vec![[1; 32]]
        );
        drop(ns);
        let ns = Namespace::open(&path).unwrap();
        assert_eq!(ns.object("b", "k1").unwrap().unwrap(), object(&[3]));
        assert!(matches!(
            ns.delete_bucket("b"),
            Err(NamespaceError::BucketNotEmpty(_))
        ));
        assert_eq!(ns.delete_object("b", "k2").unwrap(), vec![[2; 32]]);
        assert_eq!(ns.delete_object("b", "k1").unwrap(), vec![[3; 32]]);
        assert!(ns.delete_object("b", "k1").unwrap().is_empty());
        ns.delete_bucket("b").unwrap();
        assert!(ns.buckets().unwrap().is_empty());
        assert!(matches!(
            ns.put_object("b", "k", &object(&[1]), false),
            Err(NamespaceError::NoSuchBucket(_))
        ));
    }

    #[test]
    fn listings_page_prefix_and_roll_up_at_the_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::open(&dir.path().join("namespace.redb")).unwrap();
        ns.create_bucket("data").unwrap();
        ns.create_bucket("other").unwrap();
        ns.put_object("other", "a", &object(&[9]), false).unwrap();
        let keys = [
            "a.txt",
            "dir/1",
            "dir/2",
            "dir/sub/3",
            "dir2/x",
            "photos/2024/a",
            "photos/2024/b",
            "photos/2025/c",
            "z",
        ];
        for key in keys {
            ns.put_object("data", key, &object(&[1]), false).unwrap();
        }
        let names = |l: &Listing| l.objects.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        // Everything, two at a time.
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = ns.list("data", "", None, after.as_deref(), 2).unwrap();
            assert!(page.objects.len() <= 2);
            all.extend(names(&page));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(all, keys);
        // A prefix, and a delimiter.
        let page = ns.list("data", "dir/", Some("/"), None, 100).unwrap();
        assert_eq!(names(&page), ["dir/1", "dir/2"]);
        assert_eq!(page.common_prefixes, ["dir/sub/"]);
        let page = ns.list("data", "", Some("/"), None, 100).unwrap();
        assert_eq!(names(&page), ["a.txt", "z"]);
        assert_eq!(page.common_prefixes, ["dir/", "dir2/", "photos/"]);
        // Paging through common prefixes.
        let first = ns.list("data", "photos/", Some("/"), None, 1).unwrap();
        assert_eq!(first.common_prefixes, ["photos/2024/"]);
        let next = first.next_after.unwrap();
        let second = ns
            .list("data", "photos/", Some("/"), Some(&next), 1)
            .unwrap();
        assert_eq!(second.common_prefixes, ["photos/2025/"]);
        assert!(second.next_after.is_none());
        assert!(matches!(
            ns.list("none", "", None, None, 10),
            Err(NamespaceError::NoSuchBucket(_))
        ));
    }

    #[test]
    fn uploads_name_their_parts_until_completed_or_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("namespace.redb");
        let ns = Namespace::open(&path).unwrap();
        ns.create_bucket("b").unwrap();
        let part = |blob: u8| Part {
            pieces: vec![Piece {
                blob_id: [blob; 32],
                size: 10,
            }],
            size: 10,
            md5_hex: format!("{blob:032x}"),
            last_modified_unix_seconds: 0,
        };
        ns.create_upload("u1", "b", "k", &Object::default())
            .unwrap();
        ns.create_upload("u2", "b", "k", &Object::default())
            .unwrap();
        assert!(ns.put_part("u1", 1, &part(1)).unwrap().is_empty());
        assert!(ns.put_part("u1", 2, &part(2)).unwrap().is_empty());
        // Replacing part 2 releases its blob.
        assert_eq!(ns.put_part("u1", 2, &part(3)).unwrap(), vec![[2; 32]]);
        assert_eq!(ns.released(10).unwrap(), vec![[2; 32]]);
        ns.forget_released(&[[2; 32]]).unwrap();
        assert!(ns.put_part("u1", 3, &part(4)).unwrap().is_empty());
        assert!(ns.put_part("u2", 1, &part(5)).unwrap().is_empty());
        let listed = ns.uploads("b", "", None, 10).unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|(_, id, _)| id.as_str())
                .collect::<Vec<_>>(),
            ["u1", "u2"]
        );
        assert_eq!(ns.uploads("b", "", Some(("k", "u1")), 10).unwrap().len(), 1);
        assert!(matches!(
            ns.delete_bucket("b"),
            Err(NamespaceError::BucketNotEmpty(_))
        ));
        let numbers: Vec<u32> = ns
            .parts("u1", 1, 10)
            .unwrap()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(numbers, [2, 3]);
        drop(ns);
        // Completed with parts 1 and 2 only: part 3's blob is released; the object names 1 and 3.
        let ns = Namespace::open(&path).unwrap();
        let (_, object, released) = ns
            .complete_upload("u1", |_, parts| -> Result<Object, ()> {
                let used: Vec<Piece> = parts
                    .iter()
                    .filter(|(n, _)| *n <= 2)
                    .flat_map(|(_, p)| p.pieces.clone())
                    .collect();
                Ok(Object {
                    size: 20,
                    pieces: used,
                    ..Object::default()
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!(object.pieces.len(), 2);
        assert_eq!(released, vec![[4; 32]]);
        assert_eq!(ns.names(&[1; 32]).unwrap(), 1);
        assert_eq!(ns.names(&[4; 32]).unwrap(), 0);
        assert!(matches!(
            ns.complete_upload("u1", |_, _| -> Result<Object, ()> { Err(()) }),
            Err(NamespaceError::NoSuchUpload(_))
        ));
        // A build that fails changes nothing.
        assert_eq!(
            ns.complete_upload("u2", |_, _| -> Result<Object, &str> { Err("no") })
                .unwrap()
                .unwrap_err(),
            "no"
        );
        assert_eq!(ns.abort_upload("u2").unwrap(), vec![[5; 32]]);
        assert!(ns.uploads("b", "", None, 10).unwrap().is_empty());
        assert_eq!(ns.delete_object("b", "k").unwrap(), vec![[1; 32], [3; 32]]);
        ns.delete_bucket("b").unwrap();
    }
}
