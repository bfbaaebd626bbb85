//! The control plane: who is in the committee, which epoch it is, and (on etcd) the blob
//! registry.
//!
//! Two implementations behind one [`View`] of the committee:
//! - **embedded** (a single node, or a committee file): the view never changes and the epoch
//!   is the committee file's clock (`genesis_unix_seconds + epoch * epoch_seconds`);
//! - **etcd** (`etcd_endpoints`, `--etcd`): [`ControlPlane`] runs the etcd client on a thread of
//!   its own (a tokio runtime; tonic's futures never run on a glommio core) that
//!   - follows `{prefix}epoch` and swaps in the view of each new epoch (its committee);
//!   - campaigns in etcd's election (a lease of [`LEADER_TTL_SECONDS`]); the leader advances the
//!     epoch when it ends, by compare-and-swap fenced by its leadership;
//!   - watches the blob registry `{prefix}blobs/` from the last revision this node applied
//!     (persisted in [`floe_storage::cursor`]), handing events to core 0 in order
//!     ([`RegistryBatch`], applied by `sync`); with no revision yet, or one etcd compacted
//!     away, it reads the whole registry in pages at one pinned revision instead;
//!   - registers blobs for the publisher ([`ControlPlane::register`]).
//!
//! When etcd does not answer, the view stays as it was (reads go on), registrations fail at
//! once with the reason (writes answer 503), and the thread reconnects with back-off and
//! resumes from the revision it had reached.
//!
//! Boundary: nothing here touches node state but the view and the cursor; the cores reach the
//! thread only by channels ([`ControlPlane::register`], [`ControlPlane::take_batches`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use floe_codec::BlobId;
use floe_control::etcd_client::{EventType, WatchOptions};
use floe_control::{BlobRecord, CommitteeRecord, Control, ControlError, EpochRecord, MoveProgress};
use floe_storage::cursor::Cursor;
use futures::SinkExt;

use crate::config::{Committee, ConfigError, Member, NodeConfig};
use crate::metrics::Metrics;

/// How long the start waits for etcd, and each call from a request may take. Why: a control
/// plane that does not answer this long is down; the node says so rather than hang.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's lease. Why: a leader that died is replaced within this many seconds, while a
/// keep-alive every third of it survives a slow etcd.
pub const LEADER_TTL_SECONDS: i64 = 6;

/// Registry records per page of a full read. Why: etcd answers a page of 1,000 small records
/// in milliseconds and well under its 1.5 MiB request limit.
const FULL_READ_PAGE: i64 = 1000;

/// Registry batches queued for core 0. Why: a few batches in flight keep core 0 busy while
/// the thread reads ahead; more would only hold memory.
const BATCHES_QUEUED: usize = 4;

/// The committee as this node sees it now.
#[derive(Debug)]
pub struct View {
    /// The epoch from the control plane; `None`: the committee file's clock tells it.
    pub epoch: Option<u32>,
    pub committee: Committee,
    /// This node (no shards if the committee does not name it).
    pub me: Member,
    /// `owned[s]`: this node holds shard `s`.
    pub owned: Vec<bool>,
    /// The shards that changed owner when this epoch began.
    pub moves: BTreeMap<u16, Moving>,
    /// `done[s]`: the move of shard `s` finished (its new owner holds every sliver).
    done: Vec<AtomicBool>,
}

/// A shard moving into this epoch.
#[derive(Debug)]
pub struct Moving {
    /// Its previous owner (from the previous epoch's committee: it may have left).
    pub from: Member,
    pub to: String,
}

impl View {
    pub fn new(committee: Committee, name: &str, epoch: Option<u32>) -> Self {
        let me = committee.member(name).cloned().unwrap_or_else(|| Member {
            name: name.to_string(),
            address: String::new(),
            shards: Vec::new(),
        });
        let mut owned = vec![false; committee.n_shards.into()];
        for shard in &me.shards {
            owned[usize::from(*shard)] = true;
        }
        let done = (0..committee.n_shards)
            .map(|_| AtomicBool::new(false))
            .collect();
        Self {
            epoch,
            committee,
            me,
            owned,
            moves: BTreeMap::new(),
            done,
        }
    }

    /// This view with the shards moving into its epoch, `done` those that finished.
    pub fn with_moves(mut self, moves: BTreeMap<u16, Moving>, done: &[u16]) -> Self {
        self.moves = moves;
        for &shard in done {
            self.mark_done(shard);
        }
        self
    }

    /// Records that the move of `shard` finished.
    pub fn mark_done(&self, shard: u16) {
        if let Some(flag) = self.done.get(usize::from(shard)) {
            flag.store(true, Ordering::Release);
        }
    }

    /// Whether `shard` is where the committee says: not moving, or moved.
    pub fn settled(&self, shard: u16) -> bool {
        !self.moves.contains_key(&shard)
            || self
                .done
                .get(usize::from(shard))
                .is_some_and(|d| d.load(Ordering::Acquire))
    }

    /// The shards moving to this node that have not arrived, with their previous owner.
    pub fn moving_in(&self) -> Vec<(u16, Member)> {
        self.moves
            .iter()
            .filter(|(shard, m)| m.to == self.me.name && !self.settled(**shard))
            .map(|(shard, m)| (*shard, m.from.clone()))
            .collect()
    }

    /// The shards this node gave away whose new owner has them all (to drop).
    pub fn moved_out(&self) -> Vec<u16> {
        self.moves
            .iter()
            .filter(|(shard, m)| m.from.name == self.me.name && self.settled(**shard))
            .map(|(shard, _)| *shard)
            .collect()
    }

    /// Whether this node answers for `shard`'s slivers: it holds the shard, or gave it away
    /// this epoch and the move is not done (for the new owner to pull and readers to find).
    pub fn serves(&self, shard: u16) -> bool {
        self.owned.get(usize::from(shard)) == Some(&true)
            || (self
                .moves
                .get(&shard)
                .is_some_and(|m| m.from.name == self.me.name)
                && !self.settled(shard))
    }

    /// `forget[s]`: shard `s` is neither held nor given away (still moving) by this node, so
    /// whatever records of it the node has are stale (a move finished, possibly while the
    /// node was down) and go.
    pub fn unserved(&self) -> Vec<bool> {
        (0..self.committee.n_shards)
            .map(|s| !self.serves(s))
            .collect()
    }

    /// Whom to ask for `shard`'s slivers: its previous owner while it moves, else its holder.
    pub fn read_holder(&self, shard: u16) -> Option<&Member> {
        match self.moves.get(&shard) {
            Some(moving) if !self.settled(shard) => Some(&moving.from),
            _ => self.holder(shard),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch.unwrap_or_else(|| self.committee.current_epoch())
    }

    /// The other members of the committee.
    pub fn peers(&self) -> impl Iterator<Item = &Member> + '_ {
        let me = &self.me.name;
        self.committee.members.iter().filter(move |m| &m.name != me)
    }

    /// The member holding `shard`.
    pub fn holder(&self, shard: u16) -> Option<&Member> {
        self.committee
            .members
            .iter()
            .find(|m| m.shards.binary_search(&shard).is_ok())
    }
}

/// The view every core reads (one atomic load) and the control plane replaces.
pub type ViewCell = ArcSwap<View>;

/// A committee record as the committee it stands for, checked as a committee file is (it is
/// rendered as one).
pub fn committee_of(record: &CommitteeRecord, source: &str) -> Result<Committee, ConfigError> {
    Committee::parse(&committee_toml(record), Path::new(source))
}

/// A committee as its record.
pub fn record_of(committee: &Committee) -> CommitteeRecord {
    CommitteeRecord {
        n_shards: committee.n_shards,
        epoch_seconds: committee.epoch_seconds,
        genesis_unix_seconds: committee.genesis_unix_seconds,
        members: committee
            .members
            .iter()
            .map(|m| floe_control::MemberRecord {
                name: m.name.clone(),
                address: m.address.clone(),
                shards: m.shards.clone(),
            })
            .collect(),
    }
}

/// The current epoch and committee in etcd, read at start (before any executor runs).
pub fn committee_from_etcd(config: &NodeConfig) -> Result<Seen, ConfigError> {
    let runtime = runtime()
        .map_err(|e| ConfigError::Invalid(format!("starting the etcd client's runtime: {e}")))?;
    let (epoch, record, (moves, done)) = runtime
        .block_on(async {
            let mut control =
                Control::connect(&config.etcd_endpoints, &config.etcd_prefix, TIMEOUT).await?;
            let (epoch, record) = control.current().await?;
            let moves = moves_of(&mut control, epoch.epoch).await?;
            Ok::<_, ControlError>((epoch, record, moves))
        })
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let source = format!(
        "etcd {} {}committee/{:010}",
        config.etcd_endpoints.join(","),
        config.etcd_prefix,
        epoch.epoch
    );
    let committee = committee_of(&record, &source)?;
    Ok(Seen {
        epoch: epoch_u32(epoch.epoch),
        committee,
        moves,
        done,
    })
}

/// The epoch, committee and moves a node starts with.
pub struct Seen {
    pub epoch: u32,
    pub committee: Committee,
    pub moves: BTreeMap<u16, Moving>,
    /// The moves that finished.
    pub done: Vec<u16>,
}

impl Seen {
    /// This node's view of it.
    pub fn view(self, name: &str) -> View {
        View::new(self.committee, name, Some(self.epoch)).with_moves(self.moves, &self.done)
    }
}

fn epoch_u32(epoch: u64) -> u32 {
    u32::try_from(epoch).unwrap_or(u32::MAX)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A committee record as the committee file that says the same.
fn committee_toml(record: &CommitteeRecord) -> String {
    let quoted = |text: &str| toml::Value::String(text.to_string()).to_string();
    let mut text = format!(
        "n_shards = {}\nepoch_seconds = {}\ngenesis_unix_seconds = {}\n",
        record.n_shards, record.epoch_seconds, record.genesis_unix_seconds
    );
    for member in &record.members {
        let shards: Vec<String> = member.shards.iter().map(u16::to_string).collect();
        text.push_str(&format!(
            "[[nodes]]\nname = {}\naddress = {}\nshards = [{}]\n",
            quoted(&member.name),
            quoted(&member.address),
            shards.join(", ")
        ));
    }
    text
}

/// The view saved in the cursor, so that a node restarted while etcd is down starts with the
/// committee it last saw.
/// With the shards moving (so that a node restarted mid-move keeps serving what it gives
/// away), and the moves then done.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedView {
    epoch: u64,
    committee: CommitteeRecord,
    #[serde(default)]
    moves: Vec<SavedMove>,
    #[serde(default)]
    done: Vec<u16>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedMove {
    shard: u16,
    from: floe_control::MemberRecord,
    to: String,
}

/// The last view saved in `cursor`, if any.
pub fn saved_view(cursor: &Cursor) -> Option<Seen> {
    let bytes = cursor.view().ok()??;
    let saved: SavedView = serde_json::from_slice(&bytes).ok()?;
    let committee = committee_of(&saved.committee, "the saved view").ok()?;
    let moves = saved
        .moves
        .into_iter()
        .map(|m| {
            let from = Member {
                name: m.from.name,
                address: m.from.address,
                shards: m.from.shards,
            };
            (m.shard, Moving { from, to: m.to })
        })
        .collect();
    Some(Seen {
        epoch: epoch_u32(saved.epoch),
        committee,
        moves,
        done: saved.done,
    })
}

/// Registry records for core 0 to apply, in revision order.
pub struct RegistryBatch {
    pub blobs: Vec<(BlobId, BlobRecord)>,
    /// Applied up to this revision once these are; `None`: a page of a full read (more follow,
    /// and the revision is saved with the last).
    pub revision: Option<u64>,
}

/// What the thread reports, for `/v1/health`.
#[derive(Default)]
pub struct ControlStatus {
    connected: AtomicBool,
    leader: AtomicBool,
    /// The registry revision handed to core 0 so far.
    watched_revision: AtomicU64,
    last_error: Mutex<String>,
}

enum Request {
    Register {
        blob: BlobId,
        record: BlobRecord,
        reply: futures::channel::oneshot::Sender<Result<BlobRecord, String>>,
    },
    Report {
        epoch: u64,
        shard: u16,
        progress: MoveProgress,
        reply: futures::channel::oneshot::Sender<Result<(), String>>,
    },
    Progress {
        epoch: u64,
        shard: u16,
        reply: futures::channel::oneshot::Sender<Result<Option<MoveProgress>, String>>,
    },
    Lookup {
        blob: BlobId,
        reply: futures::channel::oneshot::Sender<Result<Option<BlobRecord>, String>>,
    },
}

/// The control plane on etcd: a handle to its thread.
pub struct ControlPlane {
    endpoints: String,
    pub prefix: String,
    pub cursor: Arc<Cursor>,
    status: Arc<ControlStatus>,
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    batches: Mutex<Option<futures::channel::mpsc::Receiver<RegistryBatch>>>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the thread works with.
struct Context {
    endpoints: Vec<String>,
    prefix: String,
    name: String,
    view: Arc<ViewCell>,
    cursor: Arc<Cursor>,
    status: Arc<ControlStatus>,
    metrics: Arc<Metrics>,
}

impl ControlPlane {
    /// Starts the thread; the registry is followed from `cursor`'s revision.
    pub fn start(
        config: &NodeConfig,
        name: &str,
        view: Arc<ViewCell>,
        cursor: Arc<Cursor>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Self>> {
        let status = Arc::new(ControlStatus::default());
        let context = Arc::new(Context {
            endpoints: config.etcd_endpoints.clone(),
            prefix: config.etcd_prefix.clone(),
            name: name.to_string(),
            view,
            cursor: cursor.clone(),
            status: status.clone(),
            metrics,
        });
        let (requests, requests_rx) = tokio::sync::mpsc::unbounded_channel();
        let (batches, batches_rx) = futures::channel::mpsc::channel(BATCHES_QUEUED);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let runtime = runtime()?;
        let thread = std::thread::Builder::new()
            .name("floe-control".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = run(context, requests_rx, batches) => {}
                        _ = stop_rx => {}
                    }
                })
            })?;
        Ok(Arc::new(Self {
            endpoints: config.etcd_endpoints.join(","),
            prefix: config.etcd_prefix.clone(),
            cursor,
            status,
            requests,
            batches: Mutex::new(Some(batches_rx)),
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// The registry's batches, for the one task that applies them (core 0's sync).
    pub fn take_batches(&self) -> Option<futures::channel::mpsc::Receiver<RegistryBatch>> {
        lock(&self.batches).take()
    }

    pub fn connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    /// The registry revision the control plane's thread has handed to core 0 so far.
    pub fn watched_revision(&self) -> u64 {
        self.status.watched_revision.load(Ordering::Relaxed)
    }

    /// Why etcd cannot be used now, if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        if self.connected() {
            return None;
        }
        let error = lock(&self.status.last_error).clone();
        Some(format!(
            "the control plane (etcd at {}) does not answer{}",
            self.endpoints,
            if error.is_empty() {
                String::new()
            } else {
                format!(": {error}")
            }
        ))
    }

    /// Merges `record` into the registry (the later end epoch, the higher state); the merged
    /// record, or why not (at once while etcd does not answer).
    pub async fn register(&self, blob: BlobId, record: BlobRecord) -> Result<BlobRecord, String> {
        if let Some(why) = self.unavailable() {
            return Err(why);
        }
        self.ask(|reply| Request::Register {
            blob,
            record,
            reply,
        })
        .await
    }

    /// A blob's record in the registry, read from etcd now.
    pub async fn lookup(&self, blob: BlobId) -> Result<Option<BlobRecord>, String> {
        if let Some(why) = self.unavailable() {
            return Err(why);
        }
        self.ask(|reply| Request::Lookup { blob, reply }).await
    }

    /// Records how far the move of `shard` into `epoch` got.
    pub async fn report_progress(
        &self,
        epoch: u32,
        shard: u16,
        progress: MoveProgress,
    ) -> Result<(), String> {
        self.ask(|reply| Request::Report {
            epoch: epoch.into(),
            shard,
            progress,
            reply,
        })
        .await
    }

    /// How far the move of `shard` into `epoch` got, as last reported.
    pub async fn progress(&self, epoch: u32, shard: u16) -> Result<Option<MoveProgress>, String> {
        self.ask(|reply| Request::Progress {
            epoch: epoch.into(),
            shard,
            reply,
        })
        .await
    }

    /// Sends the thread a request and awaits its reply (from any executor).
    async fn ask<T>(
        &self,
        request: impl FnOnce(futures::channel::oneshot::Sender<Result<T, String>>) -> Request,
    ) -> Result<T, String> {
        let stopped = || "the control plane stopped".to_string();
        let (reply, answer) = futures::channel::oneshot::channel();
        self.requests.send(request(reply)).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "etcd": self.endpoints,
            "prefix": self.prefix,
            "connected": self.connected(),
            "leader": self.status.leader.load(Ordering::Relaxed),
            "watchedRevision": self.status.watched_revision.load(Ordering::Relaxed),
            "lastError": *lock(&self.status.last_error),
        })
    }

    /// Stops the thread (its etcd calls are dropped; a lease it led with expires).
    pub fn stop(&self) {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The thread: connect, follow, reconnect with back-off; serve requests throughout.
async fn run(
    context: Arc<Context>,
    requests: tokio::sync::mpsc::UnboundedReceiver<Request>,
    mut batches: futures::channel::mpsc::Sender<RegistryBatch>,
) {
    let client: Arc<tokio::sync::Mutex<Option<Control>>> = Default::default();
    tokio::spawn(serve_requests(requests, client.clone(), context.clone()));
    let mut revision = context.cursor.revision().unwrap_or(0);
    let mut backoff = Duration::from_millis(100);
    loop {
        let failure = match Control::connect(&context.endpoints, &context.prefix, TIMEOUT).await {
            Ok(control) => {
                *client.lock().await = Some(control.clone());
                set_connected(&context, true, String::new());
                backoff = Duration::from_millis(100);
                tracing::info!(etcd = %context.endpoints.join(","), revision, "control plane: connected");
                let failure = session(&context, control, &mut revision, &mut batches).await;
                *client.lock().await = None;
                failure
            }
            Err(err) => err,
        };
        if batches.is_closed() {
            return;
        }
        if context.status.connected.load(Ordering::Relaxed) {
            tracing::warn!(%failure, "control plane: lost etcd; reads go on, writes answer 503 until it is back");
        }
        set_connected(&context, false, failure.to_string());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn set_connected(context: &Context, connected: bool, error: String) {
    context.status.connected.store(connected, Ordering::Relaxed);
    context.metrics.control_connected.set(i64::from(connected));
    if !connected {
        context.status.leader.store(false, Ordering::Relaxed);
        context.metrics.control_leader.set(0);
    }
    *lock(&context.status.last_error) = error;
}

async fn serve_requests(
    mut requests: tokio::sync::mpsc::UnboundedReceiver<Request>,
    client: Arc<tokio::sync::Mutex<Option<Control>>>,
    context: Arc<Context>,
) {
    while let Some(request) = requests.recv().await {
        let control = client.lock().await.clone();
        let context = context.clone();
        // Each on its own: a slow registration does not hold up the next.
        tokio::spawn(async move {
            let down = || {
                format!(
                    "the control plane (etcd at {}) does not answer",
                    context.endpoints.join(",")
                )
            };
            let late = || format!("etcd did not answer in {} s", TIMEOUT.as_secs());
            match (request, control) {
                (Request::Register { reply, .. }, None) => {
                    let _ = reply.send(Err(down()));
                }
                (Request::Report { reply, .. }, None) => {
                    let _ = reply.send(Err(down()));
                }
                (Request::Progress { reply, .. }, None) => {
                    let _ = reply.send(Err(down()));
                }
                (Request::Lookup { reply, .. }, None) => {
                    let _ = reply.send(Err(down()));
                }
                (Request::Lookup { blob, reply }, Some(mut control)) => {
                    let blob = blob.to_string();
                    let call = control.blob(&blob);
                    let result = match tokio::time::timeout(TIMEOUT, call).await {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err(late()),
                    };
                    let _ = reply.send(result);
                }
                (
                    Request::Register {
                        blob,
                        record,
                        reply,
                    },
                    Some(mut control),
                ) => {
                    let blob = blob.to_string();
                    let call = control.register(&blob, record);
                    let result = match tokio::time::timeout(TIMEOUT, call).await {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err(late()),
                    };
                    let _ = reply.send(result);
                }
                (
                    Request::Report {
                        epoch,
                        shard,
                        progress,
                        reply,
                    },
                    Some(mut control),
                ) => {
                    let call = control.report_progress(epoch, shard, &progress);
                    let result = match tokio::time::timeout(TIMEOUT, call).await {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err(late()),
                    };
                    let _ = reply.send(result);
                }
                (
                    Request::Progress {
                        epoch,
                        shard,
                        reply,
                    },
                    Some(mut control),
                ) => {
                    let call = control.move_progress(epoch, shard);
                    let result = match tokio::time::timeout(TIMEOUT, call).await {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err(late()),
                    };
                    let _ = reply.send(result);
                }
            }
        });
    }
}

/// One connection's work, until something fails: the epoch, the registry, the election.
async fn session(
    context: &Arc<Context>,
    control: Control,
    revision: &mut u64,
    batches: &mut futures::channel::mpsc::Sender<RegistryBatch>,
) -> ControlError {
    let result = tokio::try_join!(
        follow_epochs(context, control.clone()),
        follow_progress(context, control.clone()),
        follow_registry(context, control.clone(), revision, batches),
        lead(context, control),
    );
    match result {
        Err(err) => err,
        Ok(never) => match never.0 {},
    }
}

enum Never {}

/// Keeps the view at the current epoch's committee.
async fn follow_epochs(context: &Context, mut control: Control) -> Result<Never, ControlError> {
    let key = control.epoch_key();
    let answer = control.client().get(key.as_str(), None).await?;
    let from = answer.header().map_or(0, |h| h.revision()) + 1;
    match answer.kvs().first() {
        Some(kv) => apply_epoch(context, &mut control, kv.value()).await?,
        None => {
            return Err(ControlError::NotInitialized {
                prefix: control.prefix().to_string(),
            })
        }
    }
    let mut watch = control
        .client()
        .watch(
            key.as_str(),
            Some(WatchOptions::new().with_start_revision(from)),
        )
        .await?;
    loop {
        let Some(message) = watch.message().await? else {
            return Err(ControlError::Unreachable {
                endpoints: context.endpoints.join(","),
                message: "the epoch watch ended".into(),
            });
        };
        if message.canceled() {
            return Err(ControlError::Unreachable {
                endpoints: context.endpoints.join(","),
                message: format!("the epoch watch was canceled ({})", message.cancel_reason()),
            });
        }
        for event in message.events() {
            if let (EventType::Put, Some(kv)) = (event.event_type(), event.kv()) {
                apply_epoch(context, &mut control, kv.value()).await?;
            }
        }
    }
}

/// Swaps in the view of the epoch an epoch record names.
async fn apply_epoch(
    context: &Context,
    control: &mut Control,
    value: &[u8],
) -> Result<(), ControlError> {
    let epoch: EpochRecord = serde_json::from_slice(value).map_err(|e| ControlError::Corrupt {
        key: control.epoch_key(),
        message: e.to_string(),
    })?;
    let key = control.committee_key(epoch.epoch);
    let record = control
        .committee(epoch.epoch)
        .await?
        .ok_or_else(|| ControlError::Corrupt {
            key: key.clone(),
            message: format!("epoch {} has no committee", epoch.epoch),
        })?;
    let committee = committee_of(&record, &key).map_err(|e| ControlError::Corrupt {
        key: key.clone(),
        message: e.to_string(),
    })?;
    let before = context.view.load();
    let changed = before.committee != committee;
    let number = epoch_u32(epoch.epoch);
    let new_epoch = before.epoch != Some(number) || changed;
    if changed && committee.member(&context.name).is_none() {
        tracing::warn!(
            epoch = number,
            "control plane: this node is not in the committee of the new epoch"
        );
    }
    // Swapped in also when nothing changed (each session's first look): a node started in
    // the middle of a move learns it here.
    let (moves, done) = moves_of(control, epoch.epoch).await?;
    let saved_moves: Vec<SavedMove> = moves
        .iter()
        .map(|(shard, m)| SavedMove {
            shard: *shard,
            from: floe_control::MemberRecord {
                name: m.from.name.clone(),
                address: m.from.address.clone(),
                shards: m.from.shards.clone(),
            },
            to: m.to.clone(),
        })
        .collect();
    let saved_done = done.clone();
    if new_epoch && !moves.is_empty() {
        tracing::info!(
            epoch = number,
            moving = moves.len(),
            done = done.len(),
            "control plane: shards move into this epoch"
        );
    }
    let view = View::new(committee, &context.name, Some(number)).with_moves(moves, &done);
    context.view.store(Arc::new(view));
    context.metrics.epoch.set(i64::from(number));
    if new_epoch {
        tracing::info!(epoch = number, "control plane: epoch");
    }
    let saved = SavedView {
        epoch: epoch.epoch,
        committee: record,
        moves: saved_moves,
        done: saved_done,
    };
    if let Err(err) = context
        .cursor
        .save_view(&serde_json::to_vec(&saved).expect("records serialize"))
    {
        tracing::warn!(%err, "control plane: could not save the view");
    }
    Ok(())
}

/// The shards moving into `epoch` (their previous owners from the previous epoch's
/// committee), and those whose move finished.
async fn moves_of(
    control: &mut Control,
    epoch: u64,
) -> Result<(BTreeMap<u16, Moving>, Vec<u16>), ControlError> {
    let status = control.move_status(epoch).await?;
    if status.plan.moves.is_empty() || epoch == 0 {
        return Ok((BTreeMap::new(), Vec::new()));
    }
    let key = control.committee_key(epoch - 1);
    let previous = control
        .committee(epoch - 1)
        .await?
        .ok_or_else(|| ControlError::Corrupt {
            key: key.clone(),
            message: format!(
                "epoch {epoch} moves shards but epoch {} has no committee",
                epoch - 1
            ),
        })?;
    let mut moves = BTreeMap::new();
    for m in &status.plan.moves {
        let Some(from) = previous.members.iter().find(|p| p.name == m.from) else {
            continue;
        };
        let from = Member {
            name: from.name.clone(),
            address: from.address.clone(),
            shards: from.shards.clone(),
        };
        moves.insert(
            m.shard,
            Moving {
                from,
                to: m.to.clone(),
            },
        );
    }
    let done = status
        .progress
        .iter()
        .filter(|(_, p)| p.done)
        .map(|(shard, _)| *shard)
        .collect();
    Ok((moves, done))
}

/// Marks moves done in the view as their new owners report them.
async fn follow_progress(context: &Context, mut control: Control) -> Result<Never, ControlError> {
    let root = control.progress_root();
    // Only the revision to watch from: the moves of the current epoch were read with it.
    let answer = control
        .client()
        .get(
            root.as_str(),
            Some(
                floe_control::etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?;
    let from = answer.header().map_or(0, |h| h.revision()) + 1;
    let mut watch = control
        .client()
        .watch(
            root.as_str(),
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await?;
    loop {
        let Some(message) = watch.message().await? else {
            return Err(ControlError::Unreachable {
                endpoints: context.endpoints.join(","),
                message: "the progress watch ended".into(),
            });
        };
        if message.canceled() {
            return Err(ControlError::Unreachable {
                endpoints: context.endpoints.join(","),
                message: format!(
                    "the progress watch was canceled ({})",
                    message.cancel_reason()
                ),
            });
        }
        for event in message.events() {
            let (EventType::Put, Some(kv)) = (event.event_type(), event.kv()) else {
                continue;
            };
            let key = String::from_utf8_lossy(kv.key());
            let Some((epoch, shard)) = key
                .strip_prefix(root.as_str())
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.parse::<u16>().ok()?)))
            else {
                continue;
            };
            let Ok(progress) = serde_json::from_slice::<floe_control::MoveProgress>(kv.value())
            else {
                continue;
            };
            let view = context.view.load();
            if progress.done && view.epoch == Some(epoch_u32(epoch)) {
                view.mark_done(shard);
                tracing::info!(epoch, shard, from = %progress.from, to = %progress.to, "control plane: a shard's move finished");
            }
        }
    }
}

/// Hands the registry's records to core 0 in revision order: a full read at one pinned
/// revision when this node has none (or etcd compacted past it), then a watch from there.
async fn follow_registry(
    context: &Context,
    mut control: Control,
    revision: &mut u64,
    batches: &mut futures::channel::mpsc::Sender<RegistryBatch>,
) -> Result<Never, ControlError> {
    let stopped = || ControlError::Unreachable {
        endpoints: String::new(),
        message: "the node stopped".into(),
    };
    loop {
        if *revision == 0 {
            *revision = full_read(context, &mut control, batches).await?;
        }
        let prefix = control.blobs_prefix();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(i64::try_from(*revision).unwrap_or(i64::MAX) + 1)
            .with_progress_notify();
        let mut watch = control
            .client()
            .watch(prefix.as_str(), Some(options))
            .await?;
        loop {
            let Some(message) = watch.message().await? else {
                return Err(ControlError::Unreachable {
                    endpoints: context.endpoints.join(","),
                    message: "the registry watch ended".into(),
                });
            };
            if message.canceled() {
                if message.compact_revision() > 0 {
                    tracing::info!(revision = *revision, compacted = message.compact_revision(), "control plane: etcd compacted past this node's revision; reading the whole registry");
                    *revision = 0;
                    break;
                }
                return Err(ControlError::Unreachable {
                    endpoints: context.endpoints.join(","),
                    message: format!(
                        "the registry watch was canceled ({})",
                        message.cancel_reason()
                    ),
                });
            }
            let mut blobs = Vec::with_capacity(message.events().len());
            let mut last = None;
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                last = Some(kv.mod_revision());
                if event.event_type() != EventType::Put {
                    continue;
                }
                match parse_record(&control, kv.key(), kv.value()) {
                    Some(entry) => blobs.push(entry),
                    None => {
                        tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "control plane: a registry entry floe did not write; skipped")
                    }
                }
            }
            // Events: up to the last one's revision. A progress notice (no events): every
            // event up to its header's revision was sent.
            let up_to = match last {
                Some(last) => last,
                None if message.created() => continue,
                None => message.header().map_or(0, |h| h.revision()),
            };
            let up_to = u64::try_from(up_to).unwrap_or(0);
            if up_to <= *revision && blobs.is_empty() {
                continue;
            }
            *revision = up_to.max(*revision);
            context
                .status
                .watched_revision
                .store(*revision, Ordering::Relaxed);
            batches
                .send(RegistryBatch {
                    blobs,
                    revision: Some(*revision),
                })
                .await
                .map_err(|_| stopped())?;
        }
    }
}

fn parse_record(control: &Control, key: &[u8], value: &[u8]) -> Option<(BlobId, BlobRecord)> {
    let id = control.blob_of_key(key)?.parse::<BlobId>().ok()?;
    let record = serde_json::from_slice(value).ok()?;
    Some((id, record))
}

/// Reads the whole registry in pages at one revision; returns that revision.
async fn full_read(
    context: &Context,
    control: &mut Control,
    batches: &mut futures::channel::mpsc::Sender<RegistryBatch>,
) -> Result<u64, ControlError> {
    context.metrics.registry_full_reads.inc();
    let stopped = || ControlError::Unreachable {
        endpoints: String::new(),
        message: "the node stopped".into(),
    };
    let started = std::time::Instant::now();
    let mut records = 0u64;
    let mut scan = floe_control::RegistryScan::new(FULL_READ_PAGE);
    while let Some(page) = scan.next(control).await? {
        let blobs: Vec<(BlobId, BlobRecord)> = page
            .into_iter()
            .filter_map(|(id, record)| Some((id.parse().ok()?, record)))
            .collect();
        records += blobs.len() as u64;
        if !blobs.is_empty() {
            batches
                .send(RegistryBatch {
                    blobs,
                    revision: None,
                })
                .await
                .map_err(|_| stopped())?;
        }
    }
    let revision = u64::try_from(scan.revision().unwrap_or(0)).unwrap_or(0);
    batches
        .send(RegistryBatch {
            blobs: Vec::new(),
            revision: Some(revision),
        })
        .await
        .map_err(|_| stopped())?;
    tracing::info!(
        records,
        revision,
        seconds = started.elapsed().as_secs_f64(),
        "control plane: read the whole registry"
    );
    context
        .status
        .watched_revision
        .store(revision, Ordering::Relaxed);
    Ok(revision)
}

/// Campaigns to advance epochs; while leading, advances each epoch when it ends.
async fn lead(context: &Context, mut control: Control) -> Result<Never, ControlError> {
    let lease = control
        .client()
        .lease_grant(LEADER_TTL_SECONDS, None)
        .await?
        .id();
    let (mut keeper, mut alive) = control.client().lease_keep_alive(lease).await?;
    let keep = async {
        let every = Duration::from_millis((LEADER_TTL_SECONDS as u64 * 1000) / 3);
        loop {
            keeper.keep_alive().await?;
            match alive.message().await? {
                Some(answer) if answer.ttl() > 0 => {}
                _ => {
                    return Err::<Never, ControlError>(ControlError::Unreachable {
                        endpoints: context.endpoints.join(","),
                        message: "the leader lease expired".into(),
                    })
                }
            }
            tokio::time::sleep(every).await;
        }
    };
    let advance = async {
        let election = control.leader_election();
        let campaign = control
            .client()
            .campaign(election.as_str(), context.name.as_str(), lease)
            .await?;
        let Some(leader) = campaign.leader() else {
            return Err(ControlError::Unreachable {
                endpoints: context.endpoints.join(","),
                message: "the election answered without a leader key".into(),
            });
        };
        let fence = (leader.key().to_vec(), leader.rev());
        context.status.leader.store(true, Ordering::Relaxed);
        context.metrics.control_leader.set(1);
        tracing::info!("control plane: this node advances the epochs");
        loop {
            let Some((epoch, at)) = control.current_epoch_at().await? else {
                return Err(ControlError::NotInitialized {
                    prefix: control.prefix().to_string(),
                });
            };
            let seconds = control
                .committee(epoch.epoch)
                .await?
                .map_or(1, |c| c.epoch_seconds.max(1));
            let ends = epoch.started_unix_seconds.saturating_add(seconds);
            let now = now_unix_seconds();
            // An epoch whose shards are still moving does not end: the next change would move
            // shards whose slivers are not all in place.
            let settled = now < ends || control.move_status(epoch.epoch).await?.done();
            if now < ends || !settled {
                // Looked at again at least every few seconds: a proposal may advance it first.
                tokio::time::sleep(Duration::from_secs((ends - now).min(5))).await;
                continue;
            }
            if control
                .advance(epoch, at, Some(fence.clone()), now_unix_seconds())
                .await?
            {
                let next = epoch_u32(epoch.epoch + 1);
                tracing::info!(epoch = next, "control plane: advanced the epoch");
                // Registry records of blobs that expired with the last epoch go (each node
                // expires the blobs themselves by the same epoch).
                let mut sweeper = control.clone();
                tokio::spawn(async move {
                    match sweeper.forget_expired(next).await {
                        Ok(0) => {}
                        Ok(forgotten) => tracing::info!(
                            forgotten,
                            epoch = next,
                            "control plane: expired blobs left the registry"
                        ),
                        Err(err) => {
                            tracing::warn!(%err, "control plane: could not sweep expired blobs from the registry")
                        }
                    }
                });
            }
        }
    };
    let (never, _): (Never, Never) = tokio::try_join!(keep, advance)?;
    match never {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_renders_as_the_committee_file_it_came_from() {
        let file = "n_shards = 10\nepoch_seconds = 60\n\
                    [[nodes]]\nname = \"a \\\"quoted\\\"\"\naddress = \"127.0.0.1:1\"\nshards = [\"0-6\"]\n\
                    [[nodes]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\nshards = [7, \"8-9\"]\n";
        let committee = Committee::parse(file, Path::new("c.toml")).unwrap();
        let again = committee_of(&record_of(&committee), "etcd").unwrap();
        assert_eq!(again, committee);
    }

    #[test]
    fn a_view_of_a_committee_without_this_node_owns_nothing() {
        let committee = Committee::single("a", "127.0.0.1:1", 10, 60);
        let view = View::new(committee.clone(), "b", Some(3));
        assert!(view.me.shards.is_empty() && view.owned.iter().all(|o| !o));
        assert_eq!(view.epoch(), 3);
        assert_eq!(view.peers().count(), 1);
        let mine = View::new(committee, "a", None);
        assert!(mine.owned.iter().all(|o| *o));
        assert_eq!(mine.holder(4).map(|m| m.name.as_str()), Some("a"));
    }
}
