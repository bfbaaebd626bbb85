//! The storage of a floe node: blob metadata and slivers, by blob ID and shard.
//!
//! Today: the on-disk format ([`crate::format`], drawn in `docs/format.md`), the narrow device
//! interface it is written against with a fault-injecting in-memory implementation
//! ([`device`]), the real backend on glommio `DmaFile` (io_uring, O_DIRECT; [`glommio_dir`]),
//! and the store itself ([`store`]): an append-only log of blake3-checksummed records with
//! batched, durable commits and crash recovery, tested against a simple model under injected
//! I/O errors, torn writes, lost unsynced writes, bit flips and a full disk, and on the real
//! backend with restarts and torn tails; expiry by end epoch; reclaiming the space of dead
//! records segment by segment; a bounded scrubber that walks the segments in large sequential
//! reads; and sealed-segment footers, so restart reads an index per segment instead of every
//! record; and several data directories ([`disks`]).
//! Hot reads are shared views of mapped segments ([`mapped`], [`store::Store::get_shared`]).
//! Measured against fio in `BENCHMARKS.md`.
//!
//! ```
//! use floe_storage::device::MemDir;
//! use floe_storage::format::RecordKind;
//! use floe_storage::store::{Key, Put, Store};
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
//! #         std::task::Poll::Ready(v) => v,
//! #         std::task::Poll::Pending => unreachable!("MemDir futures are ready at once"),
//! #     }
//! # }
//! block_on(async {
//!     let (mut store, _) = Store::open(MemDir::new(1)).await?;
//!     let key = Key { blob_id: [7; 32], kind: RecordKind::Primary, shard: 3 };
//!     store.put(&[Put { key, end_epoch: 10, flags: 0, data: b"sliver bytes" }]).await?;
//!     assert_eq!(store.get(&key).await?.as_deref(), Some(&b"sliver bytes"[..]));
//!     Ok::<(), floe_storage::store::StoreError>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cursor;
pub mod device;
pub mod disks;
pub mod fault;
pub mod format;
pub mod glommio_dir;
pub mod mapped;
pub mod namespace;
pub mod store;
