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
/// Names per blob (blob ID bytes): how many objects list it.
const BLOB_NAMES: TableDefinition<&[u8], u64> = TableDefinition::new("blob_names");

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
    #[error("the namespace database failed: {0}")]
    Database(String),
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
            for piece in &object.pieces {
                let count = names
                    .get(piece.blob_id.as_slice())?
                    .map_or(0, |v| v.value());
                names.insert(piece.blob_id.as_slice(), count + 1)?;
            }
            released = release(&mut names, old.iter().flat_map(|o| &o.pieces))?;
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
            released = release(&mut names, old.iter().flat_map(|o| &o.pieces))?;
        }
        tx.commit()?;
        Ok(released)
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
                let rest = &key[prefix.len()..];
                if let Some(at) = delimiter
                    .filter(|d| !d.is_empty())
                    .and_then(|d| rest.find(d).map(|i| i + d.len()))
                {
                    let common = format!("{prefix}{}", &rest[..at]);
                    listing.common_prefixes.push(common.clone());
                    taken += 1;
                    // Past every key under this prefix: the next seek starts after it.
                    from = Some(format!("{common}\u{10FFFF}"));
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

/// Takes one name from each of `pieces`' blobs; returns those left with none.
fn release<'a>(
    names: &mut redb::Table<&[u8], u64>,
    pieces: impl Iterator<Item = &'a Piece>,
) -> Result<Vec<[u8; 32]>, NamespaceError> {
    let mut released = Vec::new();
    for piece in pieces {
        let count = names
            .get(piece.blob_id.as_slice())?
            .map_or(0, |v| v.value());
        if count <= 1 {
            names.remove(piece.blob_id.as_slice())?;
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
}
