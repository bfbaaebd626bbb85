//! A deterministic simulation of the cluster protocol, in the manner of TigerBeetle's VOPR and
//! Walrus's simtests: a committee of nodes, each with the real store (`Disks` on the in-memory
//! `MemDir`, whose crash images lose or tear whatever was not synced), exchanging messages over
//! a simulated network (loss, duplication, delays that reorder, links cut and restored) on a
//! simulated clock, while clients store, extend, make permanent and delete blobs through
//! random nodes, nodes crash and restart, disks fail writes, epochs pass, and one node may lie.
//! In runs without a liar nodes may have several data directories, and one directory's device
//! may die (every operation fails): the node retires it and heals its shards onto the others
//! (`floe_storage::disks`); when the faults end it is replaced by an empty one or comes back
//! with its old records, and the node restarts.
//!
//! The nodes run floe's own rules: the publisher's write tally (`protocol::Tally`), the deletion
//! tally (`protocol::DeleteTally`), sync's merge (`protocol::merge`), heal's plan and recovery
//! (`protocol::heal_plan`, `protocol::Recovery`, `protocol::expand_source`), the owner's record
//! merges (`owner::put_metadata`, `owner::delete`, `owner::list`, `owner::missing`), the codec
//! (encoding, verification, decoding, recovery symbols) and the peer client's metadata check.
//! What is simulated is what the server does with HTTP, glommio tasks and timers around them:
//! the order of messages per flow follows `publisher.rs`, `sync.rs`, `heal.rs` and `recover.rs`.
//!
//! After the faults stop (every node up, links whole, no loss; a liar goes on lying), sync runs
//! a few more rounds and the run checks:
//! - every honest node converges: the same blobs, each in the same state (and, stored, the same
//!   end epoch);
//! - every honest node holds every sliver of its shards of every acknowledged live blob, each
//!   verifying against the metadata;
//! - every acknowledged blob whose lifetime runs and that no client deleted (or that was stored
//!   permanent) reads back identical, decoded from the nodes' slivers; a permanent one is
//!   permanent everywhere;
//! - every acknowledged deletion of a blob never stored permanent holds everywhere.
//!
//! Each run is a seed: `FLOE_SIM_RUNS=N` runs N of them (default 200), `FLOE_SIM_SEED=S`
//! replays one and prints its trace. A failure prints its seed and the trace's end.
//!
//! Half the runs coordinate through a simulated etcd: the registry with its history, its watch,
//! pending records, and committee changes that move shards (`control::View`, `migrate.rs`).
//!
//! Outside the model: a lying node forging the deletion of a deletable blob or a longer lifetime
//! (peers are authenticated by signatures, and a signed deletion or extension is honoured, as
//! an operator's would be), a dead disk together with a liar (the two could exceed f), and the
//! publisher's `alreadyCertified` short cut (every store here stores again).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use floe_codec::{
    decode_metadata, decode_primary_verified, decode_recovery_symbols, encode_recovery_symbols,
    sliver_header, BlobId, BlobLayout, BlobMetadata, EncodingConfig, Sliver, SliverKind,
    VerifyScratch,
};
use floe_control::{BlobRecord, BlobState as RecordState};
use floe_server::config::{Committee, Member};
use floe_server::control::{record_of, Moving, View};
use floe_server::owner::{self, BlobState, Deleted, Listed, MetadataStored};
use floe_server::peer_client::checked_metadata;
use floe_server::protocol::{
    self, DeleteAnswer, DeleteTally, DeleteVerdict, HealGroup, Known, Merge, Offered, Recovery,
    Tally,
};
use floe_storage::device::{Faults, MemDir};
use floe_storage::disks::{Disks, Opened};
use floe_storage::format::{RecordKind, FLAG_DELETABLE};
use floe_storage::store::{Key, Put, StoreOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Drives a future of the in-memory device, whose every step is ready at once.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("MemDir futures are ready at once"),
    }
}

/// Simulated milliseconds.
type Time = u64;

/// Faults and clients stop here; the rest of the run is recovery.
const FAULTS_END: Time = 40_000;
const SYNC_INTERVAL: Time = 3_000;
/// How often a node looks at etcd's watch and its moves (registry mode).
const WATCH_INTERVAL: Time = 250;
const RPC_TIMEOUT: Time = 1_000;
const EPOCH_LENGTH: Time = 12_000;
/// Sync rounds after the faults stop, before the checks.
const ROUNDS_AFTER: Time = 6;
const RUN_END: Time = FAULTS_END + ROUNDS_AFTER * SYNC_INTERVAL + 2_000;
/// Entries per listing page (small, so that paging is exercised).
const PAGE: usize = 8;

/// A run's shape, drawn from its seed.
#[derive(Debug, Clone)]
struct Scenario {
    n: usize,
    shards_of: Vec<Vec<u16>>,
    liar: Option<usize>,
    loss_per_mille: u32,
    duplicate_per_mille: u32,
    delay_max: Time,
    crashes: usize,
    cuts: usize,
    write_error_per_mille: u32,
    ops: usize,
    /// The committee on etcd (`sync::follow_registry`, `migrate`), with committee changes;
    /// else peers list each other (`sync::round`).
    registry: bool,
    /// Data directories of each node (`Disks`): several only in runs without a liar.
    dirs: Vec<usize>,
    /// One node's directory whose device dies during the faults (its shards there number at
    /// most f, so that with no liar the fault stays within the model); at the end it is
    /// replaced by an empty one or comes back with what it held.
    disk_death: Option<(usize, usize)>,
}

impl Scenario {
    fn draw(rng: &mut StdRng) -> Self {
        let n = [4usize, 7, 10][rng.gen_range(0..3)];
        let nodes = rng.gen_range(3..=n.min(6));
        let mut order: Vec<u16> = (0..n as u16).collect();
        // Every node at least one shard; the rest at random.
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        let mut shards_of = vec![Vec::new(); nodes];
        for (i, shard) in order.into_iter().enumerate() {
            let node = if i < nodes {
                i
            } else {
                rng.gen_range(0..nodes)
            };
            shards_of[node].push(shard);
        }
        let f = (n - 1) / 3;
        let liars: Vec<usize> = (0..nodes).filter(|&i| shards_of[i].len() <= f).collect();
        let liar =
            (rng.gen_bool(0.5) && !liars.is_empty()).then(|| liars[rng.gen_range(0..liars.len())]);
        Self {
            n,
            shards_of,
            liar,
            loss_per_mille: rng.gen_range(0..150),
            duplicate_per_mille: rng.gen_range(0..60),
            delay_max: rng.gen_range(1..300),
            crashes: rng.gen_range(0..8),
            cuts: rng.gen_range(0..8),
            write_error_per_mille: if rng.gen_bool(0.3) {
                rng.gen_range(1..40)
            } else {
                0
            },
            ops: rng.gen_range(10..50),
            registry: rng.gen_bool(0.5),
            dirs: vec![1; nodes],
            disk_death: None,
        }
        .draw_disks(rng)
    }

    fn draw_disks(mut self, rng: &mut StdRng) -> Self {
        if self.liar.is_some() || rng.gen_bool(0.5) {
            return self;
        }
        let f = (self.n - 1) / 3;
        self.dirs = self
            .shards_of
            .iter()
            .map(|_| rng.gen_range(1..=3))
            .collect();
        let mut deaths = Vec::new();
        for (node, shards) in self.shards_of.iter().enumerate() {
            let dirs = self.dirs[node];
            for dir in (0..dirs).filter(|_| dirs > 1) {
                let on_it = shards.iter().filter(|s| usize::from(**s) % dirs == dir);
                if on_it.count() <= f {
                    deaths.push((node, dir));
                }
            }
        }
        if !deaths.is_empty() && rng.gen_bool(0.7) {
            self.disk_death = Some(deaths[rng.gen_range(0..deaths.len())]);
        }
        self
    }
}

/// A request between nodes (what an HTTP call on the node API carries).
#[derive(Clone, Debug)]
enum Request {
    PutMetadata {
        blob: [u8; 32],
        metadata: Bytes,
        end_epoch: u32,
        deletable: bool,
    },
    PutSlivers {
        blob: [u8; 32],
        slivers: Vec<(Key, Bytes)>,
    },
    Delete {
        blob: [u8; 32],
        end_epoch: u32,
    },
    List {
        after: Option<[u8; 32]>,
    },
    Metadata {
        blob: [u8; 32],
    },
    Symbols {
        blob: [u8; 32],
        pairs: Vec<u16>,
        kind: SliverKind,
        want: usize,
    },
    /// A page of a shard, for its new owner (`GET /v1/shards/{s}/slivers`).
    ShardPage {
        shard: u16,
        after: Option<[u8; 32]>,
    },
}

#[derive(Clone, Debug)]
enum Answer {
    Stored,
    Failed(String),
    Deleted(DeleteAnswer),
    Listing(Vec<Listed>),
    Metadata(Bytes),
    Symbols(Vec<u8>),
    Page(Bytes),
}

#[derive(Clone, Debug)]
enum Message {
    Request {
        from: usize,
        incarnation: u64,
        rpc: u64,
        request: Request,
    },
    Answer {
        incarnation: u64,
        rpc: u64,
        answer: Answer,
    },
}

#[derive(Clone, Debug)]
enum ClientOp {
    Store {
        blob: usize,
        epochs: u32,
        deletable: bool,
    },
    Delete {
        blob: usize,
    },
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        message: Message,
    },
    Timeout {
        node: usize,
        incarnation: u64,
        rpc: u64,
    },
    SyncTick {
        node: usize,
        incarnation: u64,
    },
    /// A node's watch of etcd and its migration loop (registry mode).
    Watch {
        node: usize,
        incarnation: u64,
    },
    Client {
        node: usize,
        op: ClientOp,
    },
    Crash(usize),
    Restart(usize),
    /// A node's data directory's device dies (every operation fails with EIO).
    DiskDies(usize, usize),
    Cut(usize, usize),
    Mend(usize, usize),
    Epoch,
    FaultsEnd,
}

/// What an outstanding call is for.
#[derive(Debug)]
enum Waiting {
    PublishMetadata {
        job: u64,
        peer: usize,
    },
    PublishSlivers {
        job: u64,
        peer: usize,
    },
    Delete {
        job: u64,
        peer: usize,
    },
    List {
        peer: usize,
    },
    Fetch {
        peer: usize,
        blob: [u8; 32],
        end_epoch: u32,
        state: BlobState,
    },
    Symbols {
        purpose: Purpose,
        rebuild: u64,
        slots: Vec<usize>,
    },
    /// Metadata of a registered blob, asked of every peer at once (`metadata_from_peers`).
    RegistryFetch {
        blob: [u8; 32],
    },
    Page {
        shard: u16,
    },
}

/// What a heal is for: the sync round's, the blobs the registry brought, or a shard's move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Purpose {
    Sync,
    Learned,
    Move(u16),
}

/// The control plane's state (what etcd holds): the registry (each blob's record and the
/// revision it last changed at), and the moves into the current epoch with their progress.
#[derive(Default)]
struct Registry {
    revision: u64,
    records: BTreeMap<[u8; 32], (BlobRecord, u64)>,
    /// Every change, in revision order (etcd's history, which a watch delivers even for a
    /// record deleted since; not compacted here).
    history: Vec<(u64, [u8; 32], BlobRecord)>,
    /// shard -> (previous owner, new owner).
    moves: BTreeMap<u16, (usize, usize)>,
    previous: Option<Committee>,
    after: BTreeMap<u16, Option<[u8; 32]>>,
    done: BTreeSet<u16>,
}

/// What a node keeps in `control.redb` (`floe_storage::cursor`): the registry revision it
/// applied up to and the records whose metadata no peer gave yet. Survives crashes (each
/// change is a commit).
#[derive(Default, Clone)]
struct Cursor {
    revision: u64,
    pending: BTreeMap<[u8; 32], BlobRecord>,
}

/// A batch of registry records being applied; the revision is saved once every record of it
/// is applied or pending.
struct Batch {
    upto: u64,
    /// Records whose metadata is being fetched.
    open: usize,
    /// Its records are still being gone through.
    applying: bool,
    pending: Vec<([u8; 32], BlobRecord)>,
    learned: Vec<[u8; 32]>,
    /// Applied (done or learned): their older pending records are dropped.
    applied: Vec<[u8; 32]>,
}

/// What applying a registry record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    /// Its metadata fetched and stored: its slivers are to be healed.
    Learned,
    /// No peer gave its metadata yet.
    Pending,
}

/// Where a registry record being applied came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Batch,
    Pending,
}

struct Fetch {
    record: BlobRecord,
    origin: Origin,
    left: usize,
}

/// A shard moving into a node (`migrate::pull`).
struct Pull {
    from: usize,
    after: Option<[u8; 32]>,
    failures: u32,
    stage: PullStage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PullStage {
    /// Ask for the next page at the next tick.
    Ready,
    Asking,
    /// Rebuilding what the pages did not bring.
    Healing,
    /// Stopped (slivers not rebuildable yet): resumes then.
    Paused(Time),
}

struct Publish {
    blob: usize,
    call: usize,
    /// Shards per member, in the publisher's view.
    shards_of: BTreeMap<usize, usize>,
    blob_id: [u8; 32],
    tally: Tally,
    stored_deletable: bool,
    end_epoch: u32,
    open: usize,
    slivers_of: BTreeMap<usize, Vec<(Key, Bytes)>>,
}

struct DeleteJob {
    blob: usize,
    call: usize,
    here_unknown: bool,
    blob_id: [u8; 32],
    tally: DeleteTally,
    open: usize,
}

/// A heal in progress (`heal::rebuild_missing`): the groups of the current phase (kind) not yet
/// started, those of the next phase, and up to `HEAL_CONCURRENCY` rebuilds under way.
struct Healing {
    pending: VecDeque<HealGroup>,
    later: VecDeque<HealGroup>,
    active: BTreeMap<u64, Rebuild>,
    next: u64,
}

/// Rebuilds at once (`heal_concurrency`'s default).
const HEAL_CONCURRENCY: usize = 4;

struct Rebuild {
    group: HealGroup,
    metadata: BlobMetadata,
    layout: BlobLayout,
    end_epoch: u32,
    pairs: Vec<u16>,
    recovery: Recovery,
    peers: VecDeque<usize>,
}

struct Node {
    name: String,
    /// The committee as this node sees it (`control::View`): what it holds, serves and heals.
    view: View,
    /// Its data directories (`Disks`), as they are now (a crash replaces them by images).
    dirs: Vec<MemDir>,
    /// The directory whose device is dead, until the faults end.
    dead: Option<usize>,
    disks: Option<Disks<MemDir>>,
    incarnation: u64,
    liar: bool,
    next_rpc: u64,
    waiting: BTreeMap<u64, Waiting>,
    publishes: BTreeMap<u64, Publish>,
    deletes: BTreeMap<u64, DeleteJob>,
    next_job: u64,
    /// Calls of the sync round still open (listings and metadata fetches).
    sync_open: usize,
    heals: BTreeMap<Purpose, Healing>,
    cursor: Cursor,
    batch: Option<Batch>,
    fetches: BTreeMap<[u8; 32], Fetch>,
    pulls: BTreeMap<u16, Pull>,
}

/// A client's request about a blob and what it was told.
#[derive(Clone, Debug)]
struct ClientCall {
    store: bool,
    permanent_asked: bool,
    issued: Time,
    /// When it was answered; `None` if never (its node crashed): it may take effect any time.
    done: Option<Time>,
    acked: bool,
    /// A store's end epoch as asked (its blob lives at least that long if acknowledged).
    end_epoch: u32,
    /// A store answered permanent.
    permanent: bool,
}

/// What the clients asked and were told, per blob.
///
/// Expected at the end (a failed or unanswered call may or may not have taken effect, even
/// later: a deletion answered 503 spreads through sync; a call concurrent with another may be
/// ordered either way):
/// - a blob lives if a store of it was acknowledged, its lifetime runs, and it was permanent
///   or no deletion that could take effect after it was asked (one asked after the store was,
///   or one never acknowledged);
/// - a blob is gone if a deletion was acknowledged, every store of it was answered before the
///   deletion was asked, and none asked for permanence.
#[derive(Default, Clone)]
struct Truth {
    bytes: Vec<u8>,
    blob_id: [u8; 32],
    calls: Vec<ClientCall>,
}

impl Truth {
    fn must_live(&self, epoch: u32) -> bool {
        self.calls.iter().any(|s| {
            s.store
                && s.acked
                && s.end_epoch >= epoch
                && (s.permanent
                    || !self
                        .calls
                        .iter()
                        .any(|d| !d.store && (!d.acked || d.done.is_none_or(|t| t > s.issued))))
        })
    }

    fn must_be_permanent(&self, epoch: u32) -> bool {
        self.calls
            .iter()
            .any(|s| s.store && s.acked && s.permanent && s.end_epoch >= epoch)
    }

    fn must_be_gone(&self) -> bool {
        self.calls.iter().any(|d| {
            !d.store
                && d.acked
                && self.calls.iter().all(|s| {
                    !s.store || (!s.permanent_asked && s.done.is_some_and(|t| t < d.issued))
                })
        })
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    messages: u64,
    lost: u64,
    duplicated: u64,
    crashes: u64,
    stores_acked: u64,
    stores_failed: u64,
    deletes_acked: u64,
    deletes_refused: u64,
    lies_caught: u64,
    healed: u64,
    write_errors: u64,
    /// Blobs a node holds that the registry never took (registry mode; failed stores).
    unregistered: u64,
    moves: u64,
    /// Data directories whose device died, and those replaced by empty ones afterwards.
    disk_deaths: u64,
    /// Retired by a running node (an I/O error, then a failed probe).
    disks_retired: u64,
    disks_replaced: u64,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    now: Time,
    epoch: u32,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: BTreeMap<u64, Event>,
    next_event: u64,
    scenario: Scenario,
    nodes: Vec<Node>,
    cut: BTreeSet<(usize, usize)>,
    faults: bool,
    truth: Vec<Truth>,
    counts: Counts,
    trace: Vec<String>,
    options: StoreOptions,
    /// The committee of this epoch (etcd's `committee/{E}`, or the committee file).
    committee: Committee,
    registry: Registry,
}

/// The node a member name stands for.
fn index_of(name: &str) -> usize {
    name[1..].parse().expect("members are named n<index>")
}

fn short(id: &[u8; 32]) -> String {
    id[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn honest_faults(write_error_per_mille: u32) -> Faults {
    Faults {
        write_error_per_mille,
        ..Faults::default()
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let scenario = Scenario::draw(&mut rng);
        let options = StoreOptions {
            segment_bytes_max: 256 * 1024,
            ..StoreOptions::default()
        };
        let committee = Committee {
            n_shards: scenario.n as u16,
            epoch_seconds: 1,
            genesis_unix_seconds: 0,
            members: scenario
                .shards_of
                .iter()
                .enumerate()
                .map(|(i, shards)| {
                    let mut shards = shards.clone();
                    shards.sort_unstable();
                    Member {
                        name: format!("n{i}"),
                        address: String::new(),
                        shards,
                    }
                })
                .collect(),
        };
        let nodes = (0..scenario.shards_of.len())
            .map(|i| {
                let dirs: Vec<MemDir> = (0..scenario.dirs[i] as u64)
                    .map(|d| MemDir::new(seed ^ ((i as u64 + 1) * 0x9e37_79b9) ^ (d << 40)))
                    .collect();
                let (disks, _) =
                    block_on(Disks::open(dirs.clone(), options)).expect("a fresh store opens");
                Node {
                    name: format!("n{i}"),
                    view: View::new(committee.clone(), &format!("n{i}"), Some(1)),
                    dirs,
                    dead: None,
                    disks: Some(disks),
                    incarnation: 1,
                    liar: scenario.liar == Some(i),
                    next_rpc: 0,
                    waiting: BTreeMap::new(),
                    publishes: BTreeMap::new(),
                    deletes: BTreeMap::new(),
                    next_job: 0,
                    sync_open: 0,
                    heals: BTreeMap::new(),
                    cursor: Cursor::default(),
                    batch: None,
                    fetches: BTreeMap::new(),
                    pulls: BTreeMap::new(),
                }
            })
            .collect();
        let mut sim = Self {
            seed,
            rng,
            now: 0,
            epoch: 1,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            scenario,
            nodes,
            cut: BTreeSet::new(),
            faults: true,
            truth: Vec::new(),
            counts: Counts::default(),
            trace: Vec::new(),
            options,
            committee,
            registry: Registry::default(),
        };
        sim.plan();
        sim
    }

    fn log(&mut self, line: impl AsRef<str>) {
        let line = format!("{:>6} e{} {}", self.now, self.epoch, line.as_ref());
        self.trace.push(line);
    }

    fn at(&mut self, time: Time, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((time, id)));
    }

    fn honest(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| !self.nodes[i].liar)
    }

    /// Draws the run's clients, crashes, cuts and epochs.
    fn plan(&mut self) {
        let nodes = self.nodes.len();
        for node in 0..nodes {
            if self.scenario.registry {
                self.at(
                    1,
                    Event::Watch {
                        node,
                        incarnation: 1,
                    },
                );
            }
            let first = self.rng.gen_range(0..SYNC_INTERVAL);
            self.at(
                first,
                Event::SyncTick {
                    node,
                    incarnation: 1,
                },
            );
        }
        let mut epoch = EPOCH_LENGTH;
        while epoch < RUN_END {
            self.at(epoch, Event::Epoch);
            epoch += EPOCH_LENGTH;
        }
        let entry: Vec<usize> = self.honest().collect();
        for _ in 0..self.scenario.ops {
            let time = self.rng.gen_range(0..FAULTS_END - 2_000);
            let node = entry[self.rng.gen_range(0..entry.len())];
            // A new blob, or one already asked for again (an extension, made permanent, or a
            // deletion).
            let op = if self.truth.is_empty() || self.rng.gen_bool(0.5) {
                let size = self.rng.gen_range(1..6_000);
                let mut bytes = vec![0u8; size];
                self.rng.fill(&mut bytes[..]);
                self.truth.push(Truth {
                    bytes,
                    ..Truth::default()
                });
                ClientOp::Store {
                    blob: self.truth.len() - 1,
                    epochs: self.rng.gen_range(1..6),
                    deletable: self.rng.gen_bool(0.6),
                }
            } else {
                let blob = self.rng.gen_range(0..self.truth.len());
                if self.rng.gen_bool(0.5) {
                    ClientOp::Delete { blob }
                } else {
                    ClientOp::Store {
                        blob,
                        epochs: self.rng.gen_range(1..8),
                        deletable: self.rng.gen_bool(0.5),
                    }
                }
            };
            self.at(time, Event::Client { node, op });
        }
        for _ in 0..self.scenario.crashes {
            let node = self.rng.gen_range(0..nodes);
            let time = self.rng.gen_range(0..FAULTS_END - 1_000);
            self.at(time, Event::Crash(node));
            let back = (time + self.rng.gen_range(200..8_000)).min(FAULTS_END);
            self.at(back, Event::Restart(node));
        }
        for _ in 0..self.scenario.cuts {
            let a = self.rng.gen_range(0..nodes);
            let b = self.rng.gen_range(0..nodes);
            if a == b {
                continue;
            }
            let time = self.rng.gen_range(0..FAULTS_END - 1_000);
            self.at(time, Event::Cut(a, b));
            let mend = (time + self.rng.gen_range(500..10_000)).min(FAULTS_END);
            self.at(mend, Event::Mend(a, b));
        }
        if let Some((node, dir)) = self.scenario.disk_death {
            let time = self.rng.gen_range(0..FAULTS_END - 2_000);
            self.at(time, Event::DiskDies(node, dir));
        }
        self.at(FAULTS_END, Event::FaultsEnd);
        for node in &self.nodes {
            // Several directories: no random write errors, whose failed probe would retire a
            // healthy directory, and with it more shards than the model allows.
            if !node.liar && node.dirs.len() == 1 {
                node.dirs[0].set_faults(honest_faults(self.scenario.write_error_per_mille));
            }
        }
    }

    /// Sends a message, through the network's faults.
    fn send(&mut self, from: usize, to: usize, message: Message) {
        self.counts.messages += 1;
        let cut = self.cut.contains(&(from.min(to), from.max(to)));
        if cut || (self.faults && self.rng.gen_range(0..1000) < self.scenario.loss_per_mille) {
            self.counts.lost += 1;
            return;
        }
        let copies =
            if self.faults && self.rng.gen_range(0..1000) < self.scenario.duplicate_per_mille {
                self.counts.duplicated += 1;
                2
            } else {
                1
            };
        for _ in 0..copies {
            let delay = self.rng.gen_range(1..=self.scenario.delay_max);
            self.at(
                self.now + delay,
                Event::Deliver {
                    from,
                    to,
                    message: message.clone(),
                },
            );
        }
    }

    fn call(&mut self, from: usize, to: usize, request: Request, waiting: Waiting) {
        let node = &mut self.nodes[from];
        let rpc = node.next_rpc;
        node.next_rpc += 1;
        node.waiting.insert(rpc, waiting);
        let incarnation = node.incarnation;
        self.at(
            self.now + RPC_TIMEOUT,
            Event::Timeout {
                node: from,
                incarnation,
                rpc,
            },
        );
        self.send(
            from,
            to,
            Message::Request {
                from,
                incarnation,
                rpc,
                request,
            },
        );
    }

    fn run(&mut self) {
        while let Some(Reverse((time, id))) = self.queue.pop() {
            if time > RUN_END {
                break;
            }
            self.now = time;
            let event = self.events.remove(&id).expect("queued events exist");
            self.step(event);
            if self.scenario.disk_death.is_some() {
                for node in 0..self.nodes.len() {
                    if let Some(disks) = self.nodes[node].disks.as_mut() {
                        let retired = disks.take_retired();
                        self.counts.disks_retired += retired.len() as u64;
                        for (dir, why) in retired {
                            self.log(format!("n{node}: directory {dir} retired: {why}"));
                        }
                    }
                }
            }
        }
    }

    fn up(&self, node: usize) -> bool {
        self.nodes[node].disks.is_some()
    }

    /// `node` is up and still the incarnation an event was scheduled for (a crash since
    /// cancels it).
    fn current(&self, node: usize, incarnation: u64) -> bool {
        incarnation == self.nodes[node].incarnation && self.up(node)
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, message } => {
                if !self.up(to) {
                    return;
                }
                match message {
                    Message::Request {
                        from: caller,
                        incarnation,
                        rpc,
                        request,
                    } => {
                        let answer = self.serve(to, caller, request);
                        self.send(
                            to,
                            from,
                            Message::Answer {
                                incarnation,
                                rpc,
                                answer,
                            },
                        );
                    }
                    Message::Answer {
                        incarnation,
                        rpc,
                        answer,
                    } => {
                        if incarnation != self.nodes[to].incarnation {
                            return;
                        }
                        if let Some(waiting) = self.nodes[to].waiting.remove(&rpc) {
                            self.answered(to, waiting, Ok(answer));
                        }
                    }
                }
            }
            Event::Timeout {
                node,
                incarnation,
                rpc,
            } => {
                if !self.current(node, incarnation) {
                    return;
                }
                if let Some(waiting) = self.nodes[node].waiting.remove(&rpc) {
                    self.answered(node, waiting, Err("timeout".into()));
                }
            }
            Event::SyncTick { node, incarnation } => {
                if !self.current(node, incarnation) {
                    return;
                }
                self.at(
                    self.now + SYNC_INTERVAL,
                    Event::SyncTick { node, incarnation },
                );
                if self.scenario.registry {
                    // `follow_registry`'s rounds: the pending records again, then a heal.
                    self.retry_pending(node);
                    if !self.nodes[node].heals.contains_key(&Purpose::Sync) {
                        self.start_heal(node);
                    }
                } else {
                    self.start_sync(node);
                }
            }
            Event::Watch { node, incarnation } => {
                if !self.current(node, incarnation) {
                    return;
                }
                self.at(
                    self.now + WATCH_INTERVAL,
                    Event::Watch { node, incarnation },
                );
                self.watch(node);
            }
            Event::Client { node, op } => self.client(node, op),
            Event::Crash(node) => self.crash(node),
            Event::Restart(node) => self.restart(node),
            Event::DiskDies(node, dir) => {
                self.counts.disk_deaths += 1;
                self.nodes[node].dead = Some(dir);
                self.nodes[node].dirs[dir].set_faults(Faults {
                    device_failed: true,
                    ..Faults::default()
                });
                self.log(format!("n{node}'s data directory {dir} dies"));
            }
            Event::Cut(a, b) => {
                if self.faults {
                    self.cut.insert((a.min(b), a.max(b)));
                    self.log(format!("link n{a}-n{b} cut"));
                }
            }
            Event::Mend(a, b) => {
                self.cut.remove(&(a.min(b), a.max(b)));
            }
            Event::Epoch => {
                if self.scenario.registry {
                    let before = self.epoch;
                    self.change_epoch();
                    if self.epoch == before {
                        return;
                    }
                } else {
                    self.epoch += 1;
                    self.refresh_views();
                }
                self.log("epoch");
                // Every node's expiry sweep (`owner::run_maintenance`).
                for node in 0..self.nodes.len() {
                    let epoch = self.epoch;
                    if let Some(disks) = self.nodes[node].disks.as_mut() {
                        owner::sweep_one_core(disks, epoch);
                    }
                }
            }
            Event::FaultsEnd => {
                self.faults = false;
                self.cut.clear();
                for node in 0..self.nodes.len() {
                    for dir in &self.nodes[node].dirs {
                        dir.set_faults(Faults::default());
                    }
                    if let Some(dead) = self.nodes[node].dead.take() {
                        // Replaced by an empty one, or back with what it held; the node
                        // restarts to take it.
                        if self.rng.gen_bool(0.5) {
                            self.nodes[node].dirs[dead] = MemDir::new(self.rng.gen());
                            self.log(format!("n{node}'s data directory {dead} replaced"));
                        } else {
                            self.log(format!("n{node}'s data directory {dead} back"));
                        }
                        self.crash(node);
                    }
                    self.restart(node);
                }
                self.log("faults end");
            }
        }
    }

    /// Node `node` crashes: its directories keep what was durable and a random part of what
    /// was not.
    fn crash(&mut self, node: usize) {
        if !self.up(node) {
            return;
        }
        self.counts.crashes += 1;
        let image_seed: u64 = self.rng.gen();
        let n = &mut self.nodes[node];
        n.disks = None;
        n.dirs = n
            .dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| dir.crash_image(image_seed ^ ((i as u64) << 40)))
            .collect();
        if let Some(dead) = n.dead {
            n.dirs[dead].set_faults(Faults {
                device_failed: true,
                ..Faults::default()
            });
        }
        n.waiting.clear();
        n.publishes.clear();
        n.deletes.clear();
        n.sync_open = 0;
        n.heals.clear();
        n.batch = None;
        n.fetches.clear();
        n.pulls.clear();
        n.incarnation += 1;
        let name = n.name.clone();
        self.log(format!("{name} crashes"));
    }

    fn restart(&mut self, node: usize) {
        if self.up(node) {
            return;
        }
        let dirs = self.nodes[node].dirs.iter().cloned().map(Ok).collect();
        match block_on(Disks::open_each(dirs, self.options)) {
            Ok((mut disks, opened)) => {
                for (dir, opened) in opened.iter().enumerate() {
                    match opened {
                        Opened::Serving(_) => {}
                        Opened::Replaced(_) => {
                            self.counts.disks_replaced += 1;
                            self.log(format!("n{node}: directory {dir} takes its shards back"));
                        }
                        Opened::Retired(why) => {
                            self.log(format!("n{node}: directory {dir} retired: {why}"))
                        }
                    }
                }
                // The sweep at start; the committee as etcd (or the saved view) says, and what
                // it no longer serves dropped.
                owner::sweep_one_core(&mut disks, self.epoch);
                self.nodes[node].view = self.make_view(node);
                let n = &mut self.nodes[node];
                n.disks = Some(disks);
                let incarnation = n.incarnation;
                let name = n.name.clone();
                self.forget_unserved(node);
                self.log(format!("{name} restarts"));
                let first = self.now + self.rng.gen_range(1..SYNC_INTERVAL);
                self.at(first, Event::SyncTick { node, incarnation });
                if self.scenario.registry {
                    self.at(self.now + 1, Event::Watch { node, incarnation });
                }
            }
            Err(err) => panic!(
                "seed {}: n{node} does not reopen after a crash: {err}",
                self.seed
            ),
        }
    }

    /// Every node but `node`.
    fn peers(&self, node: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&p| p != node).collect()
    }

    fn next_job(&mut self, node: usize) -> u64 {
        let job = self.nodes[node].next_job;
        self.nodes[node].next_job += 1;
        job
    }

    /// The shards whose slivers `node` answers for: held, or given away and still moving.
    fn served(&self, node: usize) -> Vec<u16> {
        let view = &self.nodes[node].view;
        (0..self.scenario.n as u16)
            .filter(|&s| view.serves(s))
            .collect()
    }

    /// The shards `node` heals (`heal::shards_by_core`): its own, but those still moving in.
    fn heal_shards(&self, node: usize) -> Vec<u16> {
        let view = &self.nodes[node].view;
        view.me
            .shards
            .iter()
            .copied()
            .filter(|&s| view.settled(s))
            .collect()
    }

    fn disks(&mut self, node: usize) -> &mut Disks<MemDir> {
        self.nodes[node].disks.as_mut().expect("the node is up")
    }

    fn metadata_here(
        &mut self,
        node: usize,
        blob: &[u8; 32],
    ) -> Option<(BlobMetadata, BlobLayout, Bytes)> {
        let bytes = block_on(self.disks(node).get(&Key::metadata(*blob))).ok()??;
        let metadata = decode_metadata(&bytes).ok()?;
        let layout = metadata.layout().ok()?;
        Some((metadata, layout, bytes))
    }

    /// A node's answer to a request (a liar's, sometimes a lie).
    fn serve(&mut self, node: usize, _caller: usize, request: Request) -> Answer {
        let liar = self.nodes[node].liar;
        let n = self.scenario.n;
        match request {
            Request::PutMetadata {
                blob,
                metadata,
                end_epoch,
                deletable,
            } => {
                if liar && self.rng.gen_bool(0.5) {
                    return Answer::Stored; // acknowledged, never stored
                }
                if checked_metadata(&metadata, &BlobId(blob), n).is_err() {
                    return Answer::Failed("verificationFailed".into());
                }
                let stored = block_on(owner::put_metadata(
                    self.disks(node),
                    blob,
                    metadata,
                    end_epoch,
                    deletable,
                    false,
                ));
                match stored {
                    Ok(MetadataStored::Stored { .. }) => Answer::Stored,
                    Ok(MetadataStored::Deleted { .. }) => Answer::Failed("blobDeleted".into()),
                    Err(err) => {
                        self.counts.write_errors += 1;
                        Answer::Failed(format!("{err:?}"))
                    }
                }
            }
            Request::PutSlivers { blob, slivers } => {
                if liar && self.rng.gen_bool(0.5) {
                    return Answer::Stored;
                }
                let Some((metadata, layout, _)) = self.metadata_here(node, &blob) else {
                    return Answer::Failed("metadataNotFound".into());
                };
                let end_epoch = self
                    .disks(node)
                    .stored(&Key::metadata(blob))
                    .map_or(0, |(end, _)| end);
                let mut scratch = VerifyScratch::default();
                for (key, bytes) in &slivers {
                    if !self.nodes[node].view.owned[usize::from(key.shard)]
                        || verify_stored(
                            &metadata,
                            &layout,
                            &BlobId(blob),
                            n,
                            key,
                            bytes,
                            &mut scratch,
                        )
                        .is_err()
                    {
                        return Answer::Failed("verificationFailed".into());
                    }
                }
                let puts: Vec<Put> = slivers
                    .iter()
                    .map(|(key, bytes)| Put {
                        key: *key,
                        end_epoch,
                        flags: 0,
                        data: bytes,
                    })
                    .collect();
                match block_on(self.disks(node).put(&puts)) {
                    Ok(()) => Answer::Stored,
                    Err(err) => {
                        self.counts.write_errors += 1;
                        Answer::Failed(err.to_string())
                    }
                }
            }
            Request::Delete { blob, end_epoch } => {
                if liar && self.rng.gen_bool(0.3) {
                    return Answer::Deleted(DeleteAnswer::Permanent);
                }
                match block_on(owner::delete(self.disks(node), blob, end_epoch, true)) {
                    Ok(Deleted::Now { end_epoch } | Deleted::Before { end_epoch }) => {
                        Answer::Deleted(DeleteAnswer::Deleted { end_epoch })
                    }
                    Ok(Deleted::Permanent) => Answer::Deleted(DeleteAnswer::Permanent),
                    Ok(Deleted::Unknown) => Answer::Deleted(DeleteAnswer::Unknown),
                    Err(err) => {
                        self.counts.write_errors += 1;
                        Answer::Failed(format!("{err:?}"))
                    }
                }
            }
            Request::List { after } => {
                let mut listed = owner::list(self.disks(node), after, PAGE, |_| true);
                if liar {
                    for entry in &mut listed {
                        // A permanent blob claimed deletable: merges never move down.
                        if entry.state == BlobState::Permanent && self.rng.gen_bool(0.3) {
                            entry.state = BlobState::Deletable;
                        }
                    }
                    if self.rng.gen_bool(0.3) {
                        // A blob that does not exist: its metadata cannot verify.
                        listed.push(Listed {
                            blob_id: self.rng.gen(),
                            end_epoch: self.epoch + 3,
                            state: BlobState::Permanent,
                        });
                    }
                }
                Answer::Listing(listed)
            }
            Request::Metadata { blob } => match self.metadata_here(node, &blob) {
                Some((_, _, bytes)) if liar => {
                    let mut bytes = bytes.to_vec();
                    let at = self.rng.gen_range(0..bytes.len());
                    bytes[at] ^= 1 << self.rng.gen_range(0..8);
                    Answer::Metadata(Bytes::from(bytes))
                }
                Some((_, _, bytes)) => Answer::Metadata(bytes),
                None if liar => Answer::Metadata(Bytes::from(vec![7u8; 64])),
                None => Answer::Failed("blobNotFound".into()),
            },
            Request::ShardPage { shard, after } => {
                // `node_api::shard_slivers`.
                if !self.nodes[node].view.serves(shard) {
                    return Answer::Failed("shardNotHeld".into());
                }
                let epoch = self.epoch;
                let page = owner::list(self.disks(node), after, PAGE, |_| true);
                let mut built = protocol::ShardPage::new(page.len() == PAGE);
                for listed in &page {
                    if !built.visit(listed.blob_id) {
                        break;
                    }
                    if listed.state == BlobState::Deleted || listed.end_epoch < epoch {
                        continue;
                    }
                    for kind in [SliverKind::Primary, SliverKind::Secondary] {
                        let key = Key {
                            blob_id: listed.blob_id,
                            kind: protocol::record_kind(kind),
                            shard,
                        };
                        if let Ok(Some(sliver)) = block_on(self.disks(node).get(&key)) {
                            let mut sliver = sliver.to_vec();
                            if liar {
                                let last = sliver.len() - 1;
                                sliver[last] ^= 0x41;
                            }
                            built.push(listed.blob_id, kind, &sliver);
                        }
                    }
                }
                Answer::Page(Bytes::from(built.finish()))
            }
            Request::Symbols {
                blob,
                pairs,
                kind,
                want,
            } => {
                let Some((metadata, layout, _)) = self.metadata_here(node, &blob) else {
                    return Answer::Failed("blobNotFound".into());
                };
                let targets: Vec<usize> = pairs
                    .iter()
                    .map(|&p| protocol::sliver_index(kind, p, n))
                    .collect();
                let source_kind = kind.orthogonal();
                let mut symbols = Vec::new();
                let mut used = 0;
                let mut sources = self.served(node);
                let target_shards: Vec<u16> = pairs
                    .iter()
                    .map(|&p| BlobId(blob).shard_for_pair(p.into(), n) as u16)
                    .collect();
                protocol::order_sources(&mut sources, &target_shards);
                for shard in sources {
                    if used == want {
                        break;
                    }
                    let key = Key {
                        blob_id: blob,
                        kind: protocol::record_kind(source_kind),
                        shard,
                    };
                    let Ok(Some(bytes)) = block_on(self.disks(node).get(&key)) else {
                        continue;
                    };
                    let index = protocol::sliver_of_shard(&BlobId(blob), shard, source_kind, n);
                    if let Some(expanded) =
                        protocol::expand_source(&metadata, &layout, kind, index, &bytes, &targets)
                    {
                        used += 1;
                        symbols.extend(expanded);
                    }
                }
                if symbols.is_empty() {
                    return Answer::Failed("sliverNotFound".into());
                }
                if liar {
                    for symbol in &mut symbols {
                        if let Some(byte) = symbol.data.first_mut() {
                            *byte ^= 0x5a;
                        }
                    }
                }
                Answer::Symbols(encode_recovery_symbols(&symbols))
            }
        }
    }

    // ---- clients: the publisher and deletion (`publisher.rs`) ----

    fn client(&mut self, node: usize, op: ClientOp) {
        if !self.up(node) {
            self.log(format!("client: n{node} is down ({op:?})"));
            return;
        }
        match op {
            ClientOp::Store {
                blob,
                epochs,
                deletable,
            } => self.publish(node, blob, epochs, deletable),
            ClientOp::Delete { blob } => self.delete(node, blob),
        }
    }

    fn publish(&mut self, node: usize, blob: usize, epochs: u32, deletable: bool) {
        let n = self.scenario.n;
        let config = EncodingConfig::new(n as u16).expect("n is valid");
        let encoded = floe_codec::encode(&config, &self.truth[blob].bytes).expect("blob encodes");
        let blob_id = encoded.blob_id().0;
        self.truth[blob].blob_id = blob_id;
        let end_epoch = self.epoch + epochs;
        let call = self.truth[blob].calls.len();
        self.truth[blob].calls.push(ClientCall {
            store: true,
            permanent_asked: !deletable,
            issued: self.now,
            done: None,
            acked: false,
            end_epoch,
            permanent: false,
        });
        self.log(format!(
            "client: store {} at n{node} until {end_epoch}{}",
            short(&blob_id),
            if deletable { " deletable" } else { "" }
        ));
        // A deletable store of a blob deleted here is refused before anything is stored.
        if deletable
            && self.disks(node).stored(&Key::metadata(blob_id)).is_none()
            && self.disks(node).deleted(&blob_id).is_some()
        {
            self.counts.stores_failed += 1;
            self.truth[blob].calls[call].done = Some(self.now);
            self.log("client: refused, deleted before");
            return;
        }
        let metadata = Bytes::from(floe_codec::encode_metadata(encoded.metadata()));
        let mut slivers_of: BTreeMap<usize, Vec<(Key, Bytes)>> = BTreeMap::new();
        let members: Vec<(usize, Vec<u16>)> = self.nodes[node]
            .view
            .committee
            .members
            .iter()
            .map(|m| (index_of(&m.name), m.shards.clone()))
            .collect();
        let shards_of: BTreeMap<usize, usize> = members
            .iter()
            .map(|(i, shards)| (*i, shards.len()))
            .collect();
        for (member, shards) in &members {
            let member = *member;
            for &shard in shards {
                let pair = encoded.blob_id().pair_for_shard(shard.into(), n) as u16;
                for kind in [SliverKind::Primary, SliverKind::Secondary] {
                    let index = protocol::sliver_index(kind, pair, n);
                    slivers_of.entry(member).or_default().push((
                        Key {
                            blob_id,
                            kind: protocol::record_kind(kind),
                            shard,
                        },
                        Bytes::from(encoded.sliver_bcs(kind, index)),
                    ));
                }
            }
        }
        let me = self.nodes[node].name.clone();
        let mut tally = Tally::new(n, &me);
        // Its own slivers first, then its metadata (`store_here`).
        let own = slivers_of.remove(&node).unwrap_or_default();
        let sliver_end = self
            .disks(node)
            .stored(&Key::metadata(blob_id))
            .map_or(end_epoch, |(end, _)| end.max(end_epoch));
        let puts: Vec<Put> = own
            .iter()
            .map(|(key, bytes)| Put {
                key: *key,
                end_epoch: sliver_end,
                flags: 0,
                data: bytes,
            })
            .collect();
        let mut stored_deletable = deletable;
        let here = block_on(self.disks(node).put(&puts)).map_err(|e| e.to_string());
        let here = here.and_then(|()| {
            block_on(owner::put_metadata(
                self.disks(node),
                blob_id,
                metadata.clone(),
                end_epoch,
                deletable,
                false,
            ))
            .map_err(|e| format!("{e:?}"))
        });
        match here {
            Ok(MetadataStored::Stored { deletable, .. }) => {
                stored_deletable = deletable;
                tally.confirmed_by(&me, shards_of.get(&node).copied().unwrap_or(0));
            }
            Ok(MetadataStored::Deleted { .. }) => tally.failed_by(&me, "blobDeleted"),
            Err(why) => {
                self.counts.write_errors += 1;
                tally.failed_by(&me, &why)
            }
        }
        let job = self.next_job(node);
        let peers = self.peers(node);
        self.nodes[node].publishes.insert(
            job,
            Publish {
                blob,
                call,
                shards_of,
                blob_id,
                tally,
                stored_deletable,
                end_epoch,
                open: peers.len(),
                slivers_of,
            },
        );
        // Every peer gets the metadata first, then its slivers.
        for peer in peers {
            self.call(
                node,
                peer,
                Request::PutMetadata {
                    blob: blob_id,
                    metadata: metadata.clone(),
                    end_epoch,
                    deletable,
                },
                Waiting::PublishMetadata { job, peer },
            );
        }
        self.publish_progress(node, job);
    }

    fn publish_progress(&mut self, node: usize, job: u64) {
        let Some(publish) = self.nodes[node].publishes.get(&job) else {
            return;
        };
        let decided = publish.tally.done() || publish.open == 0;
        if !decided {
            return;
        }
        let publish = self.nodes[node].publishes.remove(&job).expect("present");
        self.truth[publish.blob].calls[publish.call].done = Some(self.now);
        let blob_id = short(&publish.blob_id);
        if publish.tally.reached() {
            if self.scenario.registry {
                // Registered after the write quorum, before the answer (`publisher::register`).
                let record = BlobRecord {
                    size: self.truth[publish.blob].bytes.len() as u64,
                    end_epoch: publish.end_epoch,
                    state: if publish.stored_deletable {
                        RecordState::Deletable
                    } else {
                        RecordState::Permanent
                    },
                };
                let merged = self.register(publish.blob_id, record);
                if merged.state == RecordState::Deleted {
                    // A deletion registered before: 409 `blobDeleted`.
                    self.counts.stores_failed += 1;
                    self.log(format!(
                        "client: store of {blob_id} refused: deleted in the registry"
                    ));
                    return;
                }
            }
            self.counts.stores_acked += 1;
            let call = &mut self.truth[publish.blob].calls[publish.call];
            call.acked = true;
            call.permanent = !publish.stored_deletable;
            self.log(format!(
                "client: stored {blob_id} until {} ({} shards{})",
                publish.end_epoch,
                publish.tally.confirmed(),
                if publish.stored_deletable {
                    ""
                } else {
                    ", permanent"
                }
            ));
        } else {
            self.counts.stores_failed += 1;
            self.log(format!(
                "client: store of {blob_id} failed: {}",
                publish.tally.failed().join("; ")
            ));
        }
        // Stores still under way finish in the background (their answers are ignored).
    }

    fn publish_answer(
        &mut self,
        node: usize,
        job: u64,
        peer: usize,
        stage: u8,
        answer: Result<Answer, String>,
    ) {
        let shards = self.nodes[node]
            .publishes
            .get(&job)
            .and_then(|p| p.shards_of.get(&peer).copied())
            .unwrap_or(0);
        let name = self.nodes[peer].name.clone();
        let Some(publish) = self.nodes[node].publishes.get_mut(&job) else {
            return;
        };
        match (stage, answer) {
            (0, Ok(Answer::Stored)) => {
                let slivers = publish.slivers_of.get(&peer).cloned().unwrap_or_default();
                let blob = publish.blob_id;
                self.call(
                    node,
                    peer,
                    Request::PutSlivers { blob, slivers },
                    Waiting::PublishSlivers { job, peer },
                );
                return;
            }
            (1, Ok(Answer::Stored)) => publish.tally.confirmed_by(&name, shards),
            (_, Ok(Answer::Failed(why)) | Err(why)) => publish.tally.failed_by(&name, &why),
            (_, Ok(other)) => publish.tally.failed_by(&name, &format!("{other:?}")),
        }
        publish.open -= 1;
        self.publish_progress(node, job);
    }

    fn delete(&mut self, node: usize, blob: usize) {
        let blob_id = self.truth[blob].blob_id;
        if blob_id == [0; 32] {
            return; // never stored: nothing to name
        }
        let call = self.truth[blob].calls.len();
        self.truth[blob].calls.push(ClientCall {
            store: false,
            permanent_asked: false,
            issued: self.now,
            done: None,
            acked: false,
            end_epoch: 0,
            permanent: false,
        });
        // On etcd the registry decides: a permanent blob is refused, a registered one is
        // registered deleted before anything else (`publisher::delete`).
        let registered = self.registry.records.get(&blob_id).map(|(r, _)| *r);
        if self.scenario.registry && registered.is_some_and(|r| r.state == RecordState::Permanent) {
            self.truth[blob].calls[call].done = Some(self.now);
            self.counts.deletes_refused += 1;
            self.log("client: refused, permanent in the registry");
            return;
        }
        let known_end = self
            .disks(node)
            .stored(&Key::metadata(blob_id))
            .map_or(0, |(end, _)| end);
        if self.scenario.registry {
            let end_epoch = registered
                .map_or(known_end, |r| r.end_epoch.max(known_end))
                .max(self.epoch);
            let deleted = BlobRecord {
                size: 0,
                end_epoch,
                state: RecordState::Deleted,
            };
            self.register(blob_id, deleted);
        }
        let registry = self.scenario.registry.then_some(registered.is_some());
        let here = match block_on(owner::delete(self.disks(node), blob_id, known_end, true)) {
            Ok(here) => here,
            Err(_) => {
                self.counts.write_errors += 1;
                self.truth[blob].calls[call].done = Some(self.now);
                return;
            }
        };
        let me = self.nodes[node].name.clone();
        self.log(format!("client: delete {} at {me}", short(&blob_id)));
        let n = self.scenario.n;
        let my_shards = self.nodes[node].view.me.shards.len();
        let Some(tally) = DeleteTally::new(&me, my_shards, n, here, registry) else {
            self.truth[blob].calls[call].done = Some(self.now);
            self.counts.deletes_refused += 1;
            self.log("client: refused, permanent here");
            return;
        };
        let end_epoch = tally.end_epoch;
        let job = self.next_job(node);
        let peers = self.peers(node);
        self.nodes[node].deletes.insert(
            job,
            DeleteJob {
                blob,
                call,
                here_unknown: here == Deleted::Unknown,
                blob_id,
                tally,
                open: peers.len(),
            },
        );
        for peer in peers {
            self.call(
                node,
                peer,
                Request::Delete {
                    blob: blob_id,
                    end_epoch,
                },
                Waiting::Delete { job, peer },
            );
        }
        self.delete_progress(node, job);
    }

    fn delete_answer(
        &mut self,
        node: usize,
        job: u64,
        peer: usize,
        answer: Result<Answer, String>,
    ) {
        let name = self.nodes[peer].name.clone();
        let shards = self.nodes[node]
            .view
            .committee
            .member(&name)
            .map_or(0, |m| m.shards.len());
        let Some(deleting) = self.nodes[node].deletes.get_mut(&job) else {
            return;
        };
        let answer = match answer {
            Ok(Answer::Deleted(answer)) => answer,
            Ok(other) => DeleteAnswer::Failed(format!("{other:?}")),
            Err(why) => DeleteAnswer::Failed(why),
        };
        deleting.tally.answer(&name, shards, answer);
        deleting.open -= 1;
        self.delete_progress(node, job);
    }

    fn delete_progress(&mut self, node: usize, job: u64) {
        if self.nodes[node]
            .deletes
            .get(&job)
            .is_none_or(|d| d.open > 0)
        {
            return;
        }
        let deleting = self.nodes[node].deletes.remove(&job).expect("present");
        let here_unknown = deleting.here_unknown;
        self.truth[deleting.blob].calls[deleting.call].done = Some(self.now);
        let blob_id = deleting.blob_id;
        match deleting.tally.verdict() {
            DeleteVerdict::Deleted {
                end_epoch,
                remember_here,
            } => {
                if remember_here
                    && block_on(owner::delete(self.disks(node), blob_id, end_epoch, true)).is_err()
                {
                    self.counts.write_errors += 1;
                    self.log("client: deletion not remembered here (write error): 5xx");
                    return;
                }
                if self.scenario.registry {
                    // Registered again as long as the nodes' tombstones (`publisher::delete`).
                    let record = BlobRecord {
                        size: 0,
                        end_epoch,
                        state: RecordState::Deleted,
                    };
                    self.register(blob_id, record);
                }
                self.counts.deletes_acked += 1;
                self.truth[deleting.blob].calls[deleting.call].acked = true;
                self.log(format!("client: deleted {}", short(&blob_id)));
            }
            other => {
                if matches!(other, DeleteVerdict::TooFew { .. }) && here_unknown {
                    // Remembered here too (`publisher::delete`).
                    let end_epoch = deleting.tally.end_epoch.max(1);
                    let _ = block_on(owner::delete(self.disks(node), blob_id, end_epoch, true));
                }
                self.counts.deletes_refused += 1;
                self.log(format!("client: delete of {}: {other:?}", short(&blob_id)));
            }
        }
    }

    // ---- sync (`sync.rs`) and heal (`heal.rs`, `recover.rs`) ----

    fn start_sync(&mut self, node: usize) {
        if self.nodes[node].sync_open > 0 || self.nodes[node].heals.contains_key(&Purpose::Sync) {
            return; // the last round is still under way
        }
        let peers: Vec<usize> = self.peers(node);
        for peer in peers {
            self.nodes[node].sync_open += 1;
            self.call(
                node,
                peer,
                Request::List { after: None },
                Waiting::List { peer },
            );
        }
    }

    fn sync_call_done(&mut self, node: usize) {
        self.nodes[node].sync_open -= 1;
        if self.nodes[node].sync_open == 0 {
            self.start_heal(node);
        }
    }

    fn listing(&mut self, node: usize, peer: usize, listing: Vec<Listed>) {
        for entry in &listing {
            let id = entry.blob_id;
            let held = self.disks(node).stored(&Key::metadata(id)).is_some();
            if protocol::stale(entry.state, entry.end_epoch, self.epoch, held) {
                continue;
            }
            match self.merge_here(node, id, entry.state, entry.end_epoch, false) {
                // A storage failure ends learning from this peer for the round.
                None => return,
                Some(Merge::Fetch) => {
                    self.nodes[node].sync_open += 1;
                    self.call(
                        node,
                        peer,
                        Request::Metadata { blob: id },
                        Waiting::Fetch {
                            peer,
                            blob: id,
                            end_epoch: entry.end_epoch,
                            state: entry.state,
                        },
                    );
                }
                Some(_) => {}
            }
        }
        if listing.len() == PAGE {
            let after = listing.last().map(|l| l.blob_id);
            self.nodes[node].sync_open += 1;
            self.call(node, peer, Request::List { after }, Waiting::List { peer });
        }
    }

    fn fetched(
        &mut self,
        node: usize,
        peer: usize,
        end_epoch: u32,
        state: BlobState,
        body: Bytes,
        blob: [u8; 32],
    ) {
        if checked_metadata(&body, &BlobId(blob), self.scenario.n).is_err() {
            self.counts.lies_caught += 1;
            self.log(format!(
                "n{node}: metadata of {} from n{peer} fails verification",
                short(&blob)
            ));
            return;
        }
        let deletable = state == BlobState::Deletable;
        let _ = block_on(owner::put_metadata(
            self.disks(node),
            blob,
            body,
            end_epoch,
            deletable,
            false,
        ));
    }

    /// The live blobs `node` knows (`heal::heal` lists them page by page).
    fn live_blobs(&self, node: usize) -> Vec<[u8; 32]> {
        let epoch = self.epoch;
        let disks = self.nodes[node].disks.as_ref().expect("up");
        owner::list(disks, None, usize::MAX, |_| true)
            .into_iter()
            .filter(|l| l.state != BlobState::Deleted && l.end_epoch >= epoch)
            .map(|l| l.blob_id)
            .collect()
    }

    /// The slivers of `blobs` and `shards` `node` lacks.
    fn missing(
        &self,
        node: usize,
        blobs: &[[u8; 32]],
        shards: &[u16],
    ) -> Vec<([u8; 32], u16, RecordKind)> {
        let disks = self.nodes[node].disks.as_ref().expect("up");
        owner::missing(disks, blobs, shards)
    }

    /// The sync round's heal: every live blob, this node's settled shards.
    fn start_heal(&mut self, node: usize) {
        let missing = self.missing(node, &self.live_blobs(node), &self.heal_shards(node));
        self.heal(node, Purpose::Sync, missing);
    }

    /// Rebuilds `missing` (`heal::rebuild_missing`); a heal for the same purpose under way
    /// takes them on.
    fn heal(&mut self, node: usize, purpose: Purpose, missing: Vec<([u8; 32], u16, RecordKind)>) {
        if missing.is_empty() {
            if let Purpose::Move(shard) = purpose {
                self.move_healed(node, shard);
            }
            return;
        }
        let plan = protocol::heal_plan(missing);
        let heals = &mut self.nodes[node].heals;
        if let Some(healing) = heals.get_mut(&purpose) {
            healing.later.extend(plan);
            return;
        }
        let first = plan.first().map(|g| g.kind);
        let (pending, later) = plan.into_iter().partition(|g| Some(g.kind) == first);
        heals.insert(
            purpose,
            Healing {
                pending,
                later,
                active: BTreeMap::new(),
                next: 0,
            },
        );
        self.heal_next(node, purpose);
    }

    /// Moves the heal on: starts rebuilds up to the concurrency, and the next phase once a
    /// phase is done; ends the heal when nothing is left.
    fn heal_next(&mut self, node: usize, purpose: Purpose) {
        loop {
            let Some(healing) = self.nodes[node].heals.get_mut(&purpose) else {
                return;
            };
            if healing.active.len() >= HEAL_CONCURRENCY {
                return;
            }
            let group = match healing.pending.pop_front() {
                Some(group) => group,
                None if !healing.active.is_empty() => return,
                None if !healing.later.is_empty() => {
                    healing.pending = std::mem::take(&mut healing.later);
                    continue;
                }
                None => {
                    self.nodes[node].heals.remove(&purpose);
                    if let Purpose::Move(shard) = purpose {
                        self.move_healed(node, shard);
                    }
                    return;
                }
            };
            let id = healing.next;
            healing.next += 1;
            if let Some(rebuild) = self.start_rebuild(node, group) {
                let healing = self.nodes[node].heals.get_mut(&purpose).expect("present");
                healing.active.insert(id, rebuild);
                self.rebuild_next(node, purpose, id);
            }
        }
    }

    /// A rebuild of one group: this node's own symbols first, then the peers in turn.
    fn start_rebuild(&mut self, node: usize, group: HealGroup) -> Option<Rebuild> {
        let n = self.scenario.n;
        let (metadata, layout, _) = self.metadata_here(node, &group.blob_id)?;
        let end_epoch = self
            .disks(node)
            .stored(&Key::metadata(group.blob_id))
            .map_or(0, |(end, _)| end);
        let blob = BlobId(group.blob_id);
        let pairs: Vec<u16> = group
            .shards
            .iter()
            .map(|&s| blob.pair_for_shard(s.into(), n) as u16)
            .collect();
        let mut recovery = Recovery::new(group.kind, &pairs, n, &layout);
        let targets = recovery.targets().to_vec();
        let source_kind = group.kind.orthogonal();
        let mut own = Vec::new();
        for shard in self.served(node) {
            let key = Key {
                blob_id: group.blob_id,
                kind: protocol::record_kind(source_kind),
                shard,
            };
            if let Ok(Some(bytes)) = block_on(self.disks(node).get(&key)) {
                let index = protocol::sliver_of_shard(&blob, shard, source_kind, n);
                if let Some(symbols) =
                    protocol::expand_source(&metadata, &layout, group.kind, index, &bytes, &targets)
                {
                    own.extend(symbols);
                }
            }
        }
        recovery.add_own(own);
        // A different first peer for each blob, spreading the load.
        let count = self.nodes.len();
        let start = (usize::from(group.shards[0]) + usize::from(group.blob_id[0])) % count;
        let peers = (0..count)
            .map(|i| (start + i) % count)
            .filter(|&p| p != node)
            .collect();
        Some(Rebuild {
            group,
            metadata,
            layout,
            end_epoch,
            pairs,
            recovery,
            peers,
        })
    }

    /// Asks the rebuild's next peer for what it still lacks, or finishes it.
    fn rebuild_next(&mut self, node: usize, purpose: Purpose, id: u64) {
        let Some(healing) = self.nodes[node].heals.get_mut(&purpose) else {
            return;
        };
        let Some(rebuild) = healing.active.get_mut(&id) else {
            return;
        };
        let short = rebuild.recovery.short();
        if !short.is_empty() {
            if let Some(peer) = rebuild.peers.pop_front() {
                let want = rebuild.recovery.want(&short);
                let request = Request::Symbols {
                    blob: rebuild.group.blob_id,
                    pairs: short.iter().map(|&slot| rebuild.pairs[slot]).collect(),
                    kind: rebuild.group.kind,
                    want,
                };
                self.call(
                    node,
                    peer,
                    request,
                    Waiting::Symbols {
                        purpose,
                        rebuild: id,
                        slots: short,
                    },
                );
                return;
            }
        }
        let rebuild = healing.active.remove(&id).expect("present");
        self.finish_rebuild(node, rebuild);
        self.heal_next(node, purpose);
    }

    fn symbols(
        &mut self,
        node: usize,
        purpose: Purpose,
        id: u64,
        slots: Vec<usize>,
        answer: Result<Answer, String>,
    ) {
        let Some(rebuild) = self.nodes[node]
            .heals
            .get_mut(&purpose)
            .and_then(|h| h.active.get_mut(&id))
        else {
            return;
        };
        if let Ok(Answer::Symbols(body)) = answer {
            match decode_recovery_symbols(&body) {
                Ok(symbols) => {
                    let mut bad = 0;
                    for symbol in symbols {
                        if rebuild.recovery.offer(
                            &slots,
                            symbol,
                            &rebuild.metadata,
                            &rebuild.layout,
                        ) == Offered::Bad
                        {
                            bad += 1;
                        }
                    }
                    self.counts.lies_caught += u64::from(bad > 0);
                }
                Err(_) => self.counts.lies_caught += 1,
            }
        }
        self.rebuild_next(node, purpose, id);
    }

    fn finish_rebuild(&mut self, node: usize, rebuild: Rebuild) {
        let Rebuild {
            group,
            metadata,
            layout,
            end_epoch,
            recovery,
            ..
        } = rebuild;
        let targets = recovery.targets().to_vec();
        let mut records = Vec::new();
        for ((&shard, &index), data) in group
            .shards
            .iter()
            .zip(&targets)
            .zip(recovery.finish(&metadata))
        {
            let Ok(data) = data else { continue };
            let sliver = Sliver {
                kind: group.kind,
                index: index as u16,
                symbol_bytes: layout.symbol_bytes as u16,
                data,
            };
            records.push((
                Key {
                    blob_id: group.blob_id,
                    kind: protocol::record_kind(group.kind),
                    shard,
                },
                floe_codec::encode_sliver(&sliver),
            ));
        }
        if records.is_empty() {
            return;
        }
        let puts: Vec<Put> = records
            .iter()
            .map(|(key, data)| Put {
                key: *key,
                end_epoch,
                flags: 0,
                data,
            })
            .collect();
        if block_on(self.disks(node).put(&puts)).is_ok() {
            self.counts.healed += records.len() as u64;
        } else {
            self.counts.write_errors += 1;
        }
    }

    fn answered(&mut self, node: usize, waiting: Waiting, answer: Result<Answer, String>) {
        match waiting {
            Waiting::PublishMetadata { job, peer } => {
                self.publish_answer(node, job, peer, 0, answer)
            }
            Waiting::PublishSlivers { job, peer } => {
                self.publish_answer(node, job, peer, 1, answer)
            }
            Waiting::Delete { job, peer } => self.delete_answer(node, job, peer, answer),
            Waiting::List { peer } => {
                if let Ok(Answer::Listing(listing)) = answer {
                    self.listing(node, peer, listing);
                }
                self.sync_call_done(node);
            }
            Waiting::Fetch {
                peer,
                blob,
                end_epoch,
                state,
            } => {
                if let Ok(Answer::Metadata(body)) = answer {
                    self.fetched(node, peer, end_epoch, state, body, blob);
                }
                self.sync_call_done(node);
            }
            Waiting::Symbols {
                purpose,
                rebuild,
                slots,
            } => self.symbols(node, purpose, rebuild, slots, answer),
            Waiting::RegistryFetch { blob } => self.registry_fetched(node, blob, answer),
            Waiting::Page { shard } => self.page(node, shard, answer),
        }
    }

    // ---- the control plane (`control.rs`, `sync::follow_registry`, `migrate.rs`) ----

    /// Registers a record (`ControlPlane::register`): merged with what is there
    /// (`BlobRecord::merge`), a new revision if it changed.
    fn register(&mut self, blob: [u8; 32], record: BlobRecord) -> BlobRecord {
        let registry = &mut self.registry;
        let merged = match registry.records.get(&blob) {
            Some((old, _)) => old.merge(record),
            None => record,
        };
        if registry.records.get(&blob).map(|(r, _)| r) != Some(&merged) {
            registry.revision += 1;
            registry.records.insert(blob, (merged, registry.revision));
            registry.history.push((registry.revision, blob, merged));
        }
        merged
    }

    /// The committee as `node` sees it now: the current committee, the moves into this epoch
    /// (previous owners from the previous committee) and those done.
    fn make_view(&self, node: usize) -> View {
        let registry = &self.registry;
        let moves: BTreeMap<u16, Moving> = registry
            .moves
            .iter()
            .filter_map(|(&shard, &(from, to))| {
                let from = registry
                    .previous
                    .as_ref()?
                    .member(&format!("n{from}"))?
                    .clone();
                Some((
                    shard,
                    Moving {
                        from,
                        to: format!("n{to}"),
                    },
                ))
            })
            .collect();
        let done: Vec<u16> = registry.done.iter().copied().collect();
        View::new(
            self.committee.clone(),
            &self.nodes[node].name,
            Some(self.epoch),
        )
        .with_moves(moves, &done)
    }

    /// Drops what `node` neither holds nor still gives away (`migrate::forget_unserved`).
    fn forget_unserved(&mut self, node: usize) {
        let unserved = self.nodes[node].view.unserved();
        if let Some(disks) = self.nodes[node].disks.as_mut() {
            disks.forget_shards(|s| unserved[usize::from(s)]);
        }
    }

    /// Every node takes the new view (the control plane's watch), and drops what it no longer
    /// serves.
    fn refresh_views(&mut self) {
        for node in 0..self.nodes.len() {
            self.nodes[node].view = self.make_view(node);
            self.forget_unserved(node);
        }
    }

    /// The leader's epoch change (registry mode): not while moves are open; expired records
    /// leave the registry; sometimes a committee proposed earlier takes effect, moving a shard
    /// or two.
    fn change_epoch(&mut self) {
        if self
            .registry
            .moves
            .keys()
            .any(|s| !self.registry.done.contains(s))
        {
            self.log("epoch change waits for open moves");
            return;
        }
        self.epoch += 1;
        let epoch = self.epoch;
        let before = self.registry.records.len();
        self.registry
            .records
            .retain(|_, (r, _)| r.end_epoch >= epoch);
        if self.registry.records.len() < before {
            self.registry.revision += 1;
        }
        self.registry.moves.clear();
        self.registry.after.clear();
        self.registry.done.clear();
        if self.faults && self.rng.gen_bool(0.5) {
            self.propose();
        }
        self.refresh_views();
    }

    /// A new committee: one or two shards change owner (no node left without a shard, none
    /// to the liar).
    fn propose(&mut self) {
        let before = self.committee.clone();
        let mut after = before.clone();
        let nodes = self.nodes.len();
        for _ in 0..self.rng.gen_range(1..=2) {
            let shard = self.rng.gen_range(0..self.scenario.n as u16);
            let from = after
                .members
                .iter()
                .position(|m| m.shards.contains(&shard))
                .expect("every shard has an owner");
            let to = self.rng.gen_range(0..nodes);
            // Never to the lying node: a shard it takes over from an honest node while the
            // shards it gives away come back with garbage would count against f twice.
            let to_liar = self.scenario.liar == Some(to);
            if to == from || after.members[from].shards.len() == 1 || to_liar {
                continue;
            }
            after.members[from].shards.retain(|&s| s != shard);
            after.members[to].shards.push(shard);
            after.members[to].shards.sort_unstable();
        }
        let moves = floe_control::moves_between(&record_of(&before), &record_of(&after));
        if moves.is_empty() {
            return;
        }
        for m in &moves {
            self.registry
                .moves
                .insert(m.shard, (index_of(&m.from), index_of(&m.to)));
        }
        self.log(format!("committee changes: {moves:?}"));
        self.registry.previous = Some(before);
        self.committee = after;
    }

    /// A node's watch tick (registry mode): applies the registry's next records, and moves
    /// shards in.
    fn watch(&mut self, node: usize) {
        self.follow_registry(node);
        self.migrate(node);
    }

    fn follow_registry(&mut self, node: usize) {
        let from = self.nodes[node].cursor.revision;
        if self.nodes[node].batch.is_some() || self.registry.revision <= from {
            return;
        }
        // The watch: every change after the cursor, in revision order.
        let start = self
            .registry
            .history
            .partition_point(|(rev, _, _)| *rev <= from);
        let records: Vec<(u64, [u8; 32], BlobRecord)> = self.registry.history[start..]
            .iter()
            .take(16)
            .copied()
            .collect();
        let upto = records.last().map_or(from, |(rev, _, _)| *rev);
        // Only each blob's latest (`sync::follow_registry`).
        let latest = protocol::latest_per_blob(
            records
                .into_iter()
                .map(|(rev, id, r)| (BlobId(id), (rev, r)))
                .collect(),
        );
        let records: Vec<(u64, [u8; 32], BlobRecord)> = latest
            .into_iter()
            .map(|(id, (rev, r))| (rev, id.0, r))
            .collect();
        if records.is_empty() {
            // Only removals since (expired records the leader deleted): the watch moves on.
            self.nodes[node].cursor.revision = self.registry.revision;
            return;
        }
        self.nodes[node].batch = Some(Batch {
            upto,
            open: 0,
            applying: true,
            pending: Vec::new(),
            learned: Vec::new(),
            applied: Vec::new(),
        });
        for (_, id, record) in records {
            self.apply_record(node, id, record, Origin::Batch);
        }
        if let Some(batch) = self.nodes[node].batch.as_mut() {
            batch.applying = false;
        }
        self.batch_progress(node);
    }

    /// `sync::apply_record`: merged like a peer's listing entry; a blob new here has its
    /// metadata fetched from every peer at once.
    fn apply_record(&mut self, node: usize, id: [u8; 32], record: BlobRecord, origin: Origin) {
        let theirs = match record.state {
            RecordState::Deletable => BlobState::Deletable,
            RecordState::Deleted => BlobState::Deleted,
            RecordState::Permanent => BlobState::Permanent,
        };
        let held = self.disks(node).stored(&Key::metadata(id)).is_some();
        if protocol::stale(theirs, record.end_epoch, self.epoch, held) {
            return self.resolved(node, id, record, origin, Outcome::Done, false);
        }
        match self.merge_here(node, id, theirs, record.end_epoch, true) {
            Some(Merge::Fetch) => {}
            Some(_) => return self.resolved(node, id, record, origin, Outcome::Done, false),
            None => return self.resolved(node, id, record, origin, Outcome::Pending, false),
        }
        if self.nodes[node].fetches.contains_key(&id) {
            // Asked for already (a batch and a pending retry): counts as pending here.
            return self.resolved(node, id, record, origin, Outcome::Pending, false);
        }
        let peers: Vec<usize> = self.peers(node);
        self.nodes[node].fetches.insert(
            id,
            Fetch {
                record,
                origin,
                left: peers.len(),
            },
        );
        if origin == Origin::Batch {
            if let Some(batch) = self.nodes[node].batch.as_mut() {
                batch.open += 1;
            }
        }
        for peer in peers {
            self.call(
                node,
                peer,
                Request::Metadata { blob: id },
                Waiting::RegistryFetch { blob: id },
            );
        }
    }

    /// Merges what a peer or the registry says into `node` (`sync::merge_known`); returns
    /// [`Merge::Fetch`] when the blob is new here, else what it did; `None` if the store
    /// failed (the record stays pending).
    fn merge_here(
        &mut self,
        node: usize,
        id: [u8; 32],
        theirs: BlobState,
        end_epoch: u32,
        registry: bool,
    ) -> Option<Merge> {
        let stored = self.disks(node).stored(&Key::metadata(id));
        let known = stored.map(|(end_epoch, flags)| Known {
            end_epoch,
            deletable: flags & FLAG_DELETABLE != 0,
        });
        // From the registry a live record is the latest word: a tombstone does not stop it.
        let tombstone = self
            .disks(node)
            .deleted(&id)
            .filter(|_| !registry || theirs == BlobState::Deleted);
        let merge = protocol::merge(theirs, end_epoch, known, tombstone);
        let stored = match merge {
            Merge::Done | Merge::Fetch => true,
            Merge::Delete { end_epoch } => {
                block_on(owner::delete(self.disks(node), id, end_epoch, true)).is_ok()
            }
            Merge::Update {
                end_epoch,
                deletable,
            } => match self.metadata_here(node, &id) {
                Some((_, _, bytes)) => block_on(owner::put_metadata(
                    self.disks(node),
                    id,
                    bytes,
                    end_epoch,
                    deletable,
                    false,
                ))
                .is_ok(),
                None => true,
            },
        };
        if !stored {
            self.counts.write_errors += 1;
        }
        stored.then_some(merge)
    }

    fn registry_fetched(&mut self, node: usize, blob: [u8; 32], answer: Result<Answer, String>) {
        let Some(fetch) = self.nodes[node].fetches.get_mut(&blob) else {
            return; // another peer's answer won
        };
        fetch.left -= 1;
        let verified = match &answer {
            Ok(Answer::Metadata(body)) => {
                let ok = checked_metadata(body, &BlobId(blob), self.scenario.n).is_ok();
                self.counts.lies_caught += u64::from(!ok);
                ok.then(|| body.clone())
            }
            _ => None,
        };
        let fetch = self.nodes[node].fetches.get(&blob).expect("present");
        let (record, origin, left) = (fetch.record, fetch.origin, fetch.left);
        match verified {
            Some(body) => {
                self.nodes[node].fetches.remove(&blob);
                let deletable = record.state == RecordState::Deletable;
                let stored = block_on(owner::put_metadata(
                    self.disks(node),
                    blob,
                    body,
                    record.end_epoch,
                    deletable,
                    true,
                ));
                match stored {
                    Ok(MetadataStored::Stored { .. }) => {
                        self.resolved(node, blob, record, origin, Outcome::Learned, true)
                    }
                    Ok(MetadataStored::Deleted { .. }) => {
                        self.resolved(node, blob, record, origin, Outcome::Done, true)
                    }
                    Err(_) => {
                        self.counts.write_errors += 1;
                        self.resolved(node, blob, record, origin, Outcome::Pending, true)
                    }
                }
            }
            None if left == 0 => {
                self.nodes[node].fetches.remove(&blob);
                self.resolved(node, blob, record, origin, Outcome::Pending, true)
            }
            None => {}
        }
    }

    /// A registry record is applied, learned (its metadata stored here, its slivers to heal)
    /// or left pending; `fetched`: after a metadata fetch (which its batch counted).
    fn resolved(
        &mut self,
        node: usize,
        id: [u8; 32],
        record: BlobRecord,
        origin: Origin,
        outcome: Outcome,
        fetched: bool,
    ) {
        match origin {
            Origin::Batch => {
                let Some(batch) = self.nodes[node].batch.as_mut() else {
                    return;
                };
                match outcome {
                    Outcome::Pending => batch.pending.push((id, record)),
                    Outcome::Learned => {
                        batch.learned.push(id);
                        batch.applied.push(id);
                    }
                    Outcome::Done => batch.applied.push(id),
                }
                if fetched {
                    batch.open -= 1;
                }
                self.batch_progress(node);
            }
            Origin::Pending => {
                if outcome != Outcome::Pending {
                    self.nodes[node].cursor.pending.remove(&id);
                }
                if outcome == Outcome::Learned {
                    let missing = self.missing(node, &[id], &self.heal_shards(node));
                    self.heal(node, Purpose::Learned, missing);
                }
            }
        }
    }

    /// Saves the batch's revision with its pending records once nothing of it is open, and
    /// heals the blobs it brought.
    fn batch_progress(&mut self, node: usize) {
        let Some(batch) = self.nodes[node].batch.as_ref() else {
            return;
        };
        if batch.open > 0 || batch.applying {
            return;
        }
        let batch = self.nodes[node].batch.take().expect("present");
        let cursor = &mut self.nodes[node].cursor;
        cursor.revision = cursor.revision.max(batch.upto);
        for id in &batch.applied {
            if !batch.pending.iter().any(|(p, _)| p == id) {
                cursor.pending.remove(id);
            }
        }
        cursor.pending.extend(batch.pending);
        if !batch.learned.is_empty() {
            let missing = self.missing(node, &batch.learned, &self.heal_shards(node));
            self.heal(node, Purpose::Learned, missing);
        }
    }

    /// `sync::retry_pending`: the pending records again.
    fn retry_pending(&mut self, node: usize) {
        let pending: Vec<([u8; 32], BlobRecord)> = self.nodes[node]
            .cursor
            .pending
            .iter()
            .map(|(id, r)| (*id, *r))
            .collect();
        for (id, record) in pending {
            if !self.nodes[node].fetches.contains_key(&id) {
                self.apply_record(node, id, record, Origin::Pending);
            }
        }
    }

    /// `migrate::run`: pulls the shards moving in (four at once), page by page.
    fn migrate(&mut self, node: usize) {
        for (shard, from) in self.nodes[node].view.moving_in() {
            let pulls = &mut self.nodes[node].pulls;
            if !pulls.contains_key(&shard) && pulls.len() < 4 {
                let after = self.registry.after.get(&shard).copied().flatten();
                pulls.insert(
                    shard,
                    Pull {
                        from: index_of(&from.name),
                        after,
                        failures: 0,
                        stage: PullStage::Ready,
                    },
                );
            }
        }
        let shards: Vec<u16> = self.nodes[node].pulls.keys().copied().collect();
        for shard in shards {
            let pull = self.nodes[node].pulls.get_mut(&shard).expect("present");
            match pull.stage {
                PullStage::Paused(until) if until <= self.now => {
                    pull.stage = PullStage::Ready;
                    pull.after = self.registry.after.get(&shard).copied().flatten();
                }
                _ => {}
            }
            let pull = self.nodes[node].pulls.get_mut(&shard).expect("present");
            if pull.stage == PullStage::Ready {
                pull.stage = PullStage::Asking;
                let (from, after) = (pull.from, pull.after);
                self.call(
                    node,
                    from,
                    Request::ShardPage { shard, after },
                    Waiting::Page { shard },
                );
            }
        }
    }

    /// A page of a shard moving in: every sliver verified against its blob's metadata, then
    /// stored; the progress reported (`migrate::pull`, `store_page`).
    fn page(&mut self, node: usize, shard: u16, answer: Result<Answer, String>) {
        let n = self.scenario.n;
        let Some(pull) = self.nodes[node].pulls.get_mut(&shard) else {
            return;
        };
        let body = match answer {
            Ok(Answer::Page(body)) => body,
            _ => {
                pull.failures += 1;
                if pull.failures < 3 {
                    pull.stage = PullStage::Ready;
                } else {
                    self.move_heal(node, shard);
                }
                return;
            }
        };
        pull.failures = 0;
        let Ok((next, slivers)) = protocol::shard_page(&body) else {
            self.counts.lies_caught += 1;
            return self.move_heal(node, shard);
        };
        let mut scratch = VerifyScratch::default();
        let mut records = Vec::new();
        for (blob, kind, sliver) in slivers {
            let Some((metadata, layout, _)) = self.metadata_here(node, &blob) else {
                continue;
            };
            let end_epoch = self
                .disks(node)
                .stored(&Key::metadata(blob))
                .map_or(0, |(end, _)| end);
            let key = Key {
                blob_id: blob,
                kind: protocol::record_kind(kind),
                shard,
            };
            if verify_stored(
                &metadata,
                &layout,
                &BlobId(blob),
                n,
                &key,
                &sliver,
                &mut scratch,
            )
            .is_err()
            {
                self.counts.lies_caught += 1;
                continue;
            }
            records.push((key, end_epoch, sliver));
        }
        let puts: Vec<Put> = records
            .iter()
            .map(|(key, end_epoch, data)| Put {
                key: *key,
                end_epoch: *end_epoch,
                flags: 0,
                data,
            })
            .collect();
        if block_on(self.disks(node).put(&puts)).is_err() {
            self.counts.write_errors += 1;
            let pull = self.nodes[node].pulls.get_mut(&shard).expect("present");
            pull.stage = PullStage::Paused(self.now + 5_000);
            return;
        }
        self.registry.after.insert(shard, next);
        let pull = self.nodes[node].pulls.get_mut(&shard).expect("present");
        pull.after = next;
        match next {
            Some(_) => pull.stage = PullStage::Ready,
            None => self.move_heal(node, shard),
        }
    }

    /// The end of a pull: once this node knows every registered blob, what the pages did not
    /// bring is rebuilt (`heal::heal_shard`); until then the pull starts again later.
    fn move_heal(&mut self, node: usize, shard: u16) {
        let cursor = &self.nodes[node].cursor;
        let applied = if self.nodes[node].batch.is_some() {
            0
        } else {
            cursor.revision
        };
        let caught_up =
            protocol::caught_up(cursor.pending.len() as u64, applied, self.registry.revision);
        if let Some(pull) = self.nodes[node].pulls.get_mut(&shard) {
            pull.stage = if caught_up {
                PullStage::Healing
            } else {
                PullStage::Paused(self.now + 5_000)
            };
        }
        if !caught_up {
            return;
        }
        let missing = self.missing(node, &self.live_blobs(node), &[shard]);
        self.heal(node, Purpose::Move(shard), missing);
    }

    /// A move's heal ended: done if nothing is missing, else it stays open and resumes.
    fn move_healed(&mut self, node: usize, shard: u16) {
        let missing = self.missing(node, &self.live_blobs(node), &[shard]);
        // Only registered live blobs hold the move open (`migrate::pull`).
        let epoch = self.epoch;
        let blocking = missing.iter().any(|(blob, _, _)| {
            protocol::blocks_move(self.registry.records.get(blob).map(|(r, _)| r), epoch)
        });
        if blocking {
            if let Some(pull) = self.nodes[node].pulls.get_mut(&shard) {
                pull.stage = PullStage::Paused(self.now + 5_000);
            }
            return;
        }
        self.nodes[node].pulls.remove(&shard);
        self.registry.done.insert(shard);
        self.counts.moves += 1;
        self.log(format!("shard {shard} moved to n{node}"));
        // Every node marks it done as the control plane's watch tells it.
        for other in 0..self.nodes.len() {
            self.nodes[other].view.mark_done(shard);
            self.forget_unserved(other);
        }
    }

    // ---- the checks ----

    fn check(&mut self) -> Result<(), String> {
        let n = self.scenario.n;
        let epoch = self.epoch;
        let honest: Vec<usize> = self.honest().collect();
        if let Some(shard) = self
            .registry
            .moves
            .keys()
            .find(|s| !self.registry.done.contains(s))
        {
            let (from, to) = self.registry.moves[shard];
            return Err(format!(
                "the move of shard {shard} from n{from} to n{to} never finished"
            ));
        }
        // Convergence.
        let mut views: Vec<(usize, Listing)> = Vec::new();
        for &node in &honest {
            let disks = self.nodes[node].disks.as_ref().ok_or("a node is down")?;
            // Tombstones are left out: how long each node keeps one may differ (a node that
            // stored a blob while its deletion was under way keeps its own later end epoch), and
            // a stored blob on one node where another deleted it shows as a difference anyway.
            let view = owner::list(disks, None, usize::MAX, |_| true)
                .into_iter()
                .filter(|l| l.end_epoch >= epoch && l.state != BlobState::Deleted)
                .map(|l| (l.blob_id, (l.state, l.end_epoch)))
                .collect();
            views.push((node, view));
        }
        if self.scenario.registry {
            self.converged_on_registry(&views)?;
        }
        for pair in views.windows(2).filter(|_| !self.scenario.registry) {
            let ((a, va), (b, vb)) = (&pair[0], &pair[1]);
            if va != vb {
                let keys: BTreeSet<_> = va.keys().chain(vb.keys()).collect();
                let mut diff = String::new();
                for key in keys {
                    if va.get(key) != vb.get(key) {
                        let _ = write!(
                            diff,
                            " {}: {:?} vs {:?};",
                            short(key),
                            va.get(key),
                            vb.get(key)
                        );
                    }
                }
                return Err(format!("n{a} and n{b} do not converge:{diff}"));
            }
        }
        // Every acknowledged live blob: whole on every honest node, and readable.
        let mut scratch = VerifyScratch::default();
        for (i, truth) in self.truth.clone().iter().enumerate() {
            let id = truth.blob_id;
            let must_live = truth.must_live(epoch);
            for (node, view) in &views {
                let state = view.get(&id).map(|(s, _)| *s);
                if truth.must_be_permanent(epoch) && state != Some(BlobState::Permanent) {
                    return Err(format!(
                        "blob {i} ({}) was stored permanent but is {state:?} on n{node}",
                        short(&id)
                    ));
                }
                if truth.must_be_gone() && state.is_some() {
                    return Err(format!(
                        "blob {i} ({}) was deleted but is {state:?} on n{node}",
                        short(&id)
                    ));
                }
                if must_live && state.is_none() {
                    return Err(format!(
                        "acknowledged blob {i} ({}) is unknown or deleted on n{node}",
                        short(&id)
                    ));
                }
            }
            if !must_live {
                continue;
            }
            let mut primaries: Vec<(usize, Vec<u8>)> = Vec::new();
            let mut metadata_layout = None;
            for &node in &honest {
                let Some((metadata, layout, _)) = self.metadata_here(node, &id) else {
                    return Err(format!(
                        "n{node} lacks the metadata of acknowledged blob {i} ({})",
                        short(&id)
                    ));
                };
                for shard in self.nodes[node].view.me.shards.clone() {
                    for kind in [RecordKind::Primary, RecordKind::Secondary] {
                        let key = Key {
                            blob_id: id,
                            kind,
                            shard,
                        };
                        let found = block_on(self.disks(node).get(&key)).ok().flatten();
                        let Some(bytes) = found else {
                            return Err(format!(
                                "n{node} lacks the {kind:?} sliver of shard {shard} of acknowledged blob {i} ({})",
                                short(&id)
                            ));
                        };
                        verify_stored(
                            &metadata,
                            &layout,
                            &BlobId(id),
                            n,
                            &key,
                            &bytes,
                            &mut scratch,
                        )
                        .map_err(|e| format!("n{node} holds a bad sliver of blob {i}: {e}"))?;
                        if kind == RecordKind::Primary {
                            let header = sliver_header(&bytes).map_err(|e| e.to_string())?;
                            primaries.push((header.index.into(), bytes[header.data].to_vec()));
                        }
                    }
                }
                metadata_layout = Some(metadata);
            }
            let metadata = metadata_layout.ok_or("no honest node")?;
            let slivers: Vec<(usize, &[u8])> =
                primaries.iter().map(|(i, d)| (*i, &d[..])).collect();
            let read = decode_primary_verified(&metadata, &slivers)
                .map_err(|e| format!("acknowledged blob {i} does not decode: {e}"))?;
            if read != truth.bytes {
                return Err(format!(
                    "acknowledged blob {i} ({}) reads back different bytes",
                    short(&id)
                ));
            }
        }
        Ok(())
    }
}

impl Sim {
    /// Registry mode: every honest node holds every registered live blob as the registry says
    /// (the same state, or permanent; at least its end epoch). What the registry never took, or
    /// holds deleted (what a store that failed before its write quorum left, a permanent copy
    /// kept against a deletion, a store refused after one), may stay on the nodes that stored
    /// it until it expires: counted. What clients were told is checked apart.
    fn converged_on_registry(&mut self, views: &[(usize, Listing)]) -> Result<(), String> {
        let epoch = self.epoch;
        for (node, view) in views {
            for (id, (record, _)) in &self.registry.records {
                if record.end_epoch < epoch {
                    continue;
                }
                let here = view.get(id).copied();
                let fits = match (record.state, here) {
                    (RecordState::Deleted, _) => true,
                    (_, None) => false,
                    (RecordState::Permanent, Some((state, end))) => {
                        state == BlobState::Permanent && end >= record.end_epoch
                    }
                    (RecordState::Deletable, Some((_, end))) => end >= record.end_epoch,
                };
                if !fits {
                    return Err(format!(
                        "n{node} holds {} as {here:?}, the registry says {record:?}",
                        short(id)
                    ));
                }
            }
            self.counts.unregistered += view
                .keys()
                .filter(|id| {
                    self.registry
                        .records
                        .get(*id)
                        .is_none_or(|(r, _)| r.state == RecordState::Deleted)
                })
                .count() as u64;
        }
        Ok(())
    }
}

/// What a node lists: each blob's state and end epoch.
type Listing = BTreeMap<[u8; 32], (BlobState, u32)>;

/// Verifies a stored sliver record against its blob's metadata: the right index for its shard,
/// and its data re-encoding to the metadata's root.
fn verify_stored(
    metadata: &BlobMetadata,
    layout: &BlobLayout,
    blob: &BlobId,
    n: usize,
    key: &Key,
    bytes: &[u8],
    scratch: &mut VerifyScratch,
) -> Result<(), String> {
    let kind = match key.kind {
        RecordKind::Primary => SliverKind::Primary,
        RecordKind::Secondary => SliverKind::Secondary,
        _ => return Err("not a sliver".into()),
    };
    let header = sliver_header(bytes).map_err(|e| e.to_string())?;
    let index = protocol::sliver_of_shard(blob, key.shard, kind, n);
    if usize::from(header.index) != index {
        return Err(format!("index {} for shard {}", header.index, key.shard));
    }
    floe_codec::verify_sliver(
        metadata,
        layout,
        kind,
        index,
        header.symbol_bytes.into(),
        &bytes[header.data],
        scratch,
    )
    .map_err(|e| e.to_string())
}

fn run_one(seed: u64) -> (Result<(), String>, Sim) {
    let mut sim = Sim::new(seed);
    sim.run();
    let result = sim.check();
    (result, sim)
}

/// Thousands of seeded runs of the committee under message loss, duplication and reordering,
/// cut links, crashes with torn writes, failed disk writes, dead disks, passing epochs and a
/// lying node:
/// every honest node converges, and no acknowledged blob becomes unreadable.
#[test]
fn the_committee_converges_and_loses_no_acknowledged_blob_under_faults() {
    if let Some(seed) = std::env::var("FLOE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let (result, sim) = run_one(seed);
        for line in &sim.trace {
            println!("{line}");
        }
        println!("{:?}\n{:?}", sim.scenario, sim.counts);
        if let Err(why) = result {
            panic!("seed {seed}: {why}");
        }
        return;
    }
    let runs: u64 = std::env::var("FLOE_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let base: u64 = rand::thread_rng().gen();
    println!("simulation: {runs} runs, seeds {base}.. (replay one with FLOE_SIM_SEED=<seed>)");
    let started = std::time::Instant::now();
    let mut total = Counts::default();
    let mut liars = 0;
    for i in 0..runs {
        let seed = base.wrapping_add(i);
        let (result, sim) = run_one(seed);
        if let Err(why) = result {
            let tail = sim.trace.len().saturating_sub(60);
            for line in &sim.trace[tail..] {
                println!("{line}");
            }
            println!("{:?}", sim.scenario);
            panic!("seed {seed}: {why} (replay: FLOE_SIM_SEED={seed})");
        }
        liars += u64::from(sim.scenario.liar.is_some());
        let c = sim.counts;
        total.messages += c.messages;
        total.lost += c.lost;
        total.duplicated += c.duplicated;
        total.crashes += c.crashes;
        total.stores_acked += c.stores_acked;
        total.stores_failed += c.stores_failed;
        total.deletes_acked += c.deletes_acked;
        total.deletes_refused += c.deletes_refused;
        total.lies_caught += c.lies_caught;
        total.healed += c.healed;
        total.write_errors += c.write_errors;
        total.unregistered += c.unregistered;
        total.moves += c.moves;
        total.disk_deaths += c.disk_deaths;
        total.disks_retired += c.disks_retired;
        total.disks_replaced += c.disks_replaced;
    }
    println!(
        "simulation: {runs} runs ({liars} with a liar) in {:.1} s: {total:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(total.stores_acked > 0, "no store was ever acknowledged");
}
