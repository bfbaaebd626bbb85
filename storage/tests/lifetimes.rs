//! Blob lifetimes in the store: metadata expires by its own end epoch, slivers follow what the
//! node decides from their blob's metadata (extended or expired), and a reopened store holds
//! the records' own end epochs again.

mod common;
use common::block_on;

use floe_storage::device::MemDir;
use floe_storage::format::RecordKind;
use floe_storage::store::{Key, Put, Store};

fn put(store: &mut Store<MemDir>, blob: u8, kind: RecordKind, shard: u16, end_epoch: u32) {
    let data = vec![blob; 700];
    let key = Key {
        blob_id: [blob; 32],
        kind,
        shard,
    };
    block_on(store.put(&[Put {
        key,
        end_epoch,
        flags: 0,
        data: &data,
    }]))
    .expect("stored");
}

fn has(store: &Store<MemDir>, blob: u8, kind: RecordKind, shard: u16) -> bool {
    store
        .stored(&Key {
            blob_id: [blob; 32],
            kind,
            shard,
        })
        .is_some()
}

#[test]
fn slivers_follow_their_blob_s_metadata_and_metadata_expires_alone() {
    let dir = MemDir::new(3);
    let (mut store, _) = block_on(Store::open(dir.clone())).expect("opens");
    // Blob 1: stored until epoch 5, its metadata since extended to 9. Blob 2: until 5, gone.
    // Blob 3: until 20.
    put(&mut store, 1, RecordKind::Metadata, 0, 9);
    put(&mut store, 1, RecordKind::Primary, 4, 5);
    put(&mut store, 1, RecordKind::Secondary, 4, 5);
    put(&mut store, 2, RecordKind::Metadata, 0, 5);
    put(&mut store, 2, RecordKind::Primary, 7, 5);
    put(&mut store, 3, RecordKind::Primary, 1, 20);
    let live_before = store.live_bytes();

    assert_eq!(store.lapsed_slivers(5), Vec::<[u8; 32]>::new());
    assert_eq!(store.expire_metadata(6), 1, "blob 2's metadata");
    assert!(!has(&store, 2, RecordKind::Metadata, 0));
    assert!(has(&store, 1, RecordKind::Metadata, 0));
    assert!(
        has(&store, 2, RecordKind::Primary, 7),
        "slivers wait for the node"
    );
    assert_eq!(store.lapsed_slivers(6), vec![[1; 32], [2; 32]]);

    store.extend_blob(&[1; 32], 9);
    assert_eq!(store.expire_blob(&[2; 32]), 1);
    assert_eq!(store.lapsed_slivers(6), Vec::<[u8; 32]>::new());
    assert_eq!(store.lapsed_slivers(10), vec![[1; 32]]);
    assert!(has(&store, 1, RecordKind::Primary, 4));
    assert!(!has(&store, 2, RecordKind::Primary, 7));
    assert!(has(&store, 3, RecordKind::Primary, 1));
    assert!(store.live_bytes() < live_before);

    // Reopened: the records' own end epochs again, for the node's first sweep to settle.
    drop(store);
    let (mut store, _) = block_on(Store::open(dir)).expect("reopens");
    store.expire_metadata(6);
    assert_eq!(store.lapsed_slivers(6), vec![[1; 32], [2; 32]]);
}

#[test]
fn a_forgotten_shard_leaves_the_index_keeps_metadata_and_is_reclaimed() {
    let dir = MemDir::new(3);
    let (mut store, _) = block_on(Store::open(dir.clone())).expect("opens");
    put(&mut store, 1, RecordKind::Metadata, 0, 9);
    put(&mut store, 1, RecordKind::Primary, 0, 9);
    put(&mut store, 1, RecordKind::Secondary, 0, 9);
    put(&mut store, 1, RecordKind::Primary, 4, 9);
    let live_before = store.live_bytes();
    assert_eq!(store.forget_shard(0), 2, "shard 0's two slivers");
    assert!(
        has(&store, 1, RecordKind::Metadata, 0),
        "metadata is not a shard's"
    );
    assert!(!has(&store, 1, RecordKind::Primary, 0));
    assert!(has(&store, 1, RecordKind::Primary, 4));
    assert!(store.live_bytes() < live_before);
    // The records are in their segment until reclaimed: after a reopen the caller forgets the
    // shard again.
    drop(store);
    let (mut store, _) = block_on(Store::open(dir)).expect("reopens");
    assert!(has(&store, 1, RecordKind::Primary, 0));
    assert_eq!(store.forget_shard(0), 2);
}
