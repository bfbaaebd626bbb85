//! Where this node stands in the control plane's registry, kept beside its data (redb): the
//! last registry revision it applied, the blobs the registry named that it could not yet
//! fetch metadata for (pending), and the last committee it saw with its moves (to start while
//! etcd is down).
//!
//! Invariant: a revision is saved in the same commit as the pending blobs of the events up to
//! it, so a crash between the two can neither skip an event nor lose a pending blob; a commit
//! is durable when it returns (redb).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use thiserror::Error;

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending");

const REVISION: &str = "revision";

/// redb's page cache for the cursor. Why: the pending set can hold millions of blobs (etcd
/// names them, no peer has them yet); without a bound redb caches all of it (measured: 190
/// MiB after a registry of a million such blobs), while its reads are rare and sequential.
const CACHE_BYTES: usize = 16 << 20;
const VIEW: &str = "view";

#[derive(Debug, Error)]
#[error("the registry cursor database failed: {0}")]
pub struct CursorError(String);

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for CursorError {
            fn from(err: $t) -> Self {
                Self(err.to_string())
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
    redb::CommitError
);

/// What changes in one commit.
#[derive(Default)]
pub struct Advance<'a> {
    /// The revision applied up to (unchanged for `None`: a page of a full read).
    pub revision: Option<u64>,
    /// Blobs to fetch later, with their record (opaque here).
    pub pending: &'a [([u8; 32], Vec<u8>)],
    /// Pending blobs resolved.
    pub resolved: &'a [[u8; 32]],
}

pub struct Cursor {
    db: Database,
}

impl Cursor {
    pub fn open(path: &Path) -> Result<Self, CursorError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(STATE)?;
        tx.open_table(PENDING)?;
        tx.commit()?;
        Ok(Self { db })
    }

    /// The last revision applied (0: none yet).
    pub fn revision(&self) -> Result<u64, CursorError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(STATE)?;
        Ok(table
            .get(REVISION)?
            .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0))
    }

    pub fn advance(&self, advance: Advance<'_>) -> Result<(), CursorError> {
        let tx = self.db.begin_write()?;
        {
            let mut state = tx.open_table(STATE)?;
            if let Some(revision) = advance.revision {
                state.insert(REVISION, revision.to_le_bytes().as_slice())?;
            }
            let mut pending = tx.open_table(PENDING)?;
            for (blob, record) in advance.pending {
                pending.insert(blob.as_slice(), record.as_slice())?;
            }
            for blob in advance.resolved {
                pending.remove(blob.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` pending blobs after `after`.
    #[allow(clippy::type_complexity)]
    pub fn pending(
        &self,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<([u8; 32], Vec<u8>)>, CursorError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(PENDING)?;
        let mut page = Vec::new();
        let range = match &after {
            Some(after) => table.range::<&[u8]>(after.as_slice()..)?,
            None => table.range::<&[u8]>(..)?,
        };
        for entry in range {
            let (key, value) = entry?;
            let Ok(blob) = <[u8; 32]>::try_from(key.value()) else {
                continue;
            };
            if Some(blob) == after {
                continue;
            }
            page.push((blob, value.value().to_vec()));
            if page.len() == limit {
                break;
            }
        }
        Ok(page)
    }

    pub fn pending_count(&self) -> Result<u64, CursorError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(PENDING)?.len()?)
    }

    /// The last committee view saved (opaque bytes), if any.
    pub fn view(&self) -> Result<Option<Vec<u8>>, CursorError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(STATE)?;
        Ok(table.get(VIEW)?.map(|v| v.value().to_vec()))
    }

    pub fn save_view(&self, view: &[u8]) -> Result<(), CursorError> {
        let tx = self.db.begin_write()?;
        tx.open_table(STATE)?.insert(VIEW, view)?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_and_pending_move_together_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor.redb");
        {
            let cursor = Cursor::open(&path).unwrap();
            assert_eq!(cursor.revision().unwrap(), 0);
            let pending = vec![([1u8; 32], b"a".to_vec()), ([2u8; 32], b"b".to_vec())];
            cursor
                .advance(Advance {
                    revision: Some(7),
                    pending: &pending,
                    resolved: &[],
                })
                .unwrap();
            cursor
                .advance(Advance {
                    revision: None,
                    pending: &[([3u8; 32], b"c".to_vec())],
                    resolved: &[[1u8; 32]],
                })
                .unwrap();
            cursor.save_view(b"view").unwrap();
        }
        let cursor = Cursor::open(&path).unwrap();
        assert_eq!(cursor.revision().unwrap(), 7);
        assert_eq!(cursor.pending_count().unwrap(), 2);
        let first = cursor.pending(None, 1).unwrap();
        assert_eq!(first, vec![([2u8; 32], b"b".to_vec())]);
        let rest = cursor.pending(Some([2u8; 32]), 10).unwrap();
        assert_eq!(rest, vec![([3u8; 32], b"c".to_vec())]);
        assert_eq!(cursor.view().unwrap().as_deref(), Some(&b"view"[..]));
    }
}
