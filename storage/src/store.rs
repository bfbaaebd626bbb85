//! The sliver store: an append-only log of checksummed records in segment files, with an
//! in-memory index rebuilt at open.
//!
//! Writes are batched: [`Store::put`] appends a batch of records as one commit (one block-aligned
//! write and one sync) and returns only once the commit is durable, so a caller that groups the
//! slivers of many requests gets group commit. A failed commit is never acknowledged and its
//! region is never reused, so it cannot tear a later one. Reads check the record's blake3
//! checksum and key; a record that fails is reported, dropped from the index and returned as
//! `Corrupt`, never served.
//!
//! Recovery ([`Store::open`]) scans every segment: records whose checksum holds are indexed (the
//! highest sequence wins, tombstones shadow older records of their blob); a bad region followed
//! by valid commits is corruption (reported, skipped); a bad region at the end of the last
//! segment is the torn tail of a commit that was never acknowledged.
//!
//! The scrubber ([`Store::scrub`]) finds corruption in records nobody reads: it walks the
//! segment files front to back in large sequential reads, the way the disk likes them, and
//! checks every live record it meets; the live records counted per segment tell it whether the
//! walk met them all.

use std::collections::BTreeMap;
use std::io;

use thiserror::Error;

use crate::device::{Dir, File};
use crate::format::{
    parse_segment_header, parse_segment_name, parse_trailer, segment_header, segment_name, trailer,
    FooterEntry, RecordHeader, RecordKind, BLOCK_BYTES, FOOTER_ENTRY_BYTES, RECORD_DATA_BYTES_MAX,
    RECORD_HEADER_BYTES, SEGMENT_BYTES_MAX, SEGMENT_HEADER_BYTES, TRAILER_BYTES,
};

/// What a record is stored under. Ordered by blob first, so that a blob's records are a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub blob_id: [u8; 32],
    /// `Metadata`, `Primary` or `Secondary`.
    pub kind: RecordKind,
    /// The shard the sliver belongs to (0 for metadata, which is kept once per node).
    pub shard: u16,
}

impl Key {
    /// The key of a blob's metadata record.
    pub fn metadata(blob_id: [u8; 32]) -> Self {
        Self {
            blob_id,
            kind: RecordKind::Metadata,
            shard: 0,
        }
    }
}

/// One record to store.
#[derive(Clone, Copy, Debug)]
pub struct Put<'a> {
    pub key: Key,
    /// Last epoch the blob is stored for.
    pub end_epoch: u32,
    /// [`FLAG_DELETABLE`](crate::format::FLAG_DELETABLE) on a deletable blob's metadata, else 0.
    pub flags: u8,
    pub data: &'a [u8],
}

/// Errors of the store, each naming the operation.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("no space left on the data directory's disk while {op}; stored data stays readable")]
    NoSpace { op: &'static str },
    #[error("I/O error while {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("record of {kind:?} for shard {shard} failed its checksum and is treated as missing")]
    Corrupt { kind: RecordKind, shard: u16 },
    #[error("record of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge { bytes: usize, max: u32 },
    #[error("a batch holds metadata and slivers only (use delete_blob to delete)")]
    TombstoneInBatch,
    #[error("segment {name} is unreadable: {why}")]
    BadSegment { name: String, why: String },
}

fn io_error(op: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| {
        // Backends that wrap the OS error keep its kind, not always its number.
        if source.raw_os_error() == Some(crate::device::ENOSPC)
            || source.kind() == io::ErrorKind::StorageFull
        {
            StoreError::NoSpace { op }
        } else {
            StoreError::Io { op, source }
        }
    }
}

/// Reads of a record the scrubber could not read before it counts the record as lost. Why
/// this many: transient failures pass well before (a device failing one read in 50 at random
/// drops a record once in 10^13 tries); a bad sector fails them all, quickly on an SSD.
const UNREADABLE_TRIES: usize = 8;

/// What one [`Store::scrub`] call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Live records checked (read and hashed).
    pub records_checked: usize,
    /// Bytes read from the device.
    pub bytes_checked: u64,
    /// Records that failed their checksum or that the device could not read, now dropped from
    /// the index (the node heals them). A tombstone that failed is listed with kind
    /// `Tombstone` (it was written again, see [`Store::scrub`]).
    pub corrupt: Vec<Key>,
    /// The scrubber went past the end of the last segment; the next call starts a new pass at
    /// the first.
    pub pass_complete: bool,
}

/// The least one scrub read asks for, however little of its budget a call has left. Why: it
/// must hold a whole record header for the walk to move on (every call makes progress), and
/// a block is what a direct read costs anyway.
const SCRUB_READ_MIN_BYTES: u64 = BLOCK_BYTES as u64;

/// What a live record belongs to: its key, or (`Err`) the blob of a tombstone.
type Owner = Result<Key, [u8; 32]>;

/// The live records of one segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SegmentLive {
    records: u64,
    bytes: u64,
}

/// The live records (index entries and tombstones), counted per segment. Every change of the
/// index or the tombstones goes through [`Live::add`] and [`Live::remove`]. Why: the scrubber
/// checks against these counts that its walk met every live record of a segment (it keeps no
/// list of them), and [`Store::live_bytes`] and [`Store::start_reclaim`] read them without a
/// walk over the index.
#[derive(Debug, Default)]
struct Live {
    segments: BTreeMap<u64, SegmentLive>,
    bytes: u64,
    /// The scrubber's walk, kept here so that a record dying behind it is taken off `met`.
    scrub: ScrubCursor,
}

/// Where the scrubber's walk is.
#[derive(Clone, Copy, Debug, Default)]
struct ScrubCursor {
    /// The segment walked.
    segment: u64,
    /// Where the walk goes on: everything before it was read (or skipped as dead).
    offset: u64,
    /// Live records of `segment` the walk checked, less every record before `offset` that died
    /// since the walk passed it. Once the walk reaches the segment's end, the segment's live
    /// records outnumber this by exactly the number of records live when the walk passed them
    /// that it did not meet (corruption made it skip them).
    met: i64,
    /// The segment's size, once it is sealed (it no longer changes).
    sealed_end: Option<u64>,
}

/// A segment whose walk missed live records: its live records, checked again by their
/// locations, the next one last.
struct Recheck {
    records: Vec<(Owner, Location)>,
}

impl Live {
    /// Counts `locations` afresh.
    fn counting<'a>(locations: impl Iterator<Item = &'a Location>) -> Self {
        let mut live = Self::default();
        locations.for_each(|location| live.add(location));
        live
    }

    /// A record became live at `location`.
    fn add(&mut self, location: &Location) {
        let segment = self.segments.entry(location.segment).or_default();
        segment.records += 1;
        segment.bytes += location.record_bytes();
        self.bytes += location.record_bytes();
    }

    /// The record at `location` died (or moved away from it).
    fn remove(&mut self, location: &Location) {
        let segment = self.segments.get_mut(&location.segment);
        debug_assert!(
            segment.is_some(),
            "a record dies in a segment it was counted in"
        );
        if let Some(segment) = segment {
            segment.records -= 1;
            segment.bytes -= location.record_bytes();
            if segment.records == 0 {
                self.segments.remove(&location.segment);
            }
        }
        self.bytes = self.bytes.saturating_sub(location.record_bytes());
        let scrub = &mut self.scrub;
        if location.segment == scrub.segment && location.offset < scrub.offset {
            scrub.met -= 1;
        }
    }
}

/// What [`Store::reclaim`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    pub segments_removed: usize,
    pub bytes_freed: u64,
    pub records_moved: usize,
    /// The pass is over (no segment left to look at).
    pub pass_complete: bool,
}

/// A reclaiming pass (see [`Store::reclaim_step`]).
struct Reclaiming {
    live_fraction_max: f64,
    /// Sealed segments still to look at, with their live bytes when the pass started.
    candidates: std::collections::VecDeque<(u64, u64)>,
    current: Option<Emptying>,
}

/// A segment being emptied: its live records still to copy, the next one last.
struct Emptying {
    segment: u64,
    size: u64,
    moving: Vec<(Owner, Location)>,
}

/// Bytes copied per commit while reclaiming. Why: bounds the copy buffer while amortising the
/// sync over many records (one record larger than this is copied alone).
const RECLAIM_COMMIT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    segment: u64,
    offset: u64,
    data_bytes: u32,
    sequence: u64,
    end_epoch: u32,
    flags: u8,
    /// The record's checksum held on a mapped read since the store opened (see
    /// [`Store::get_shared`]).
    verified: bool,
}

/// What [`Store::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: usize,
    /// Regions that failed their checksums but were followed by valid commits: corruption.
    pub corrupt_regions: Vec<(u64, u64)>,
    /// Bytes after the last valid record of the last segment: an unacknowledged torn commit.
    pub torn_tail_bytes: u64,
    /// Sealed segments indexed from their footers (not scanned record by record).
    pub segments_from_footer: usize,
}

/// Counters for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    pub commits: u64,
    pub records_written: u64,
    pub bytes_written: u64,
    pub corrupt_records: u64,
    pub failed_commits: u64,
    /// Record reads the device failed (I/O errors, not checksum failures).
    pub read_errors: u64,
    /// Bytes of live records reclaiming copied forward (its write amplification).
    pub reclaim_bytes_moved: u64,
    /// Bytes of segment files reclaiming removed.
    pub reclaim_bytes_freed: u64,
}

/// Settings of a [`Store`].
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// A segment is sealed once the next commit would take it past this many bytes.
    pub segment_bytes_max: u64,
    /// Check the checksum on every [`Store::get_shared`], not only the first of each record.
    pub reverify_mapped_reads: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            reverify_mapped_reads: false,
        }
    }
}

/// The store of one data directory.
pub struct Store<D: Dir> {
    dir: D,
    options: StoreOptions,
    files: BTreeMap<u64, D::File>,
    active: u64,
    write_offset: u64,
    next_sequence: u64,
    index: BTreeMap<Key, Location>,
    counters: StoreCounters,
    /// Found at recovery: keys whose newest record failed its checksum, with its sequence.
    corrupt_keys: Vec<(Key, u64)>,
    /// The live records counted per segment, and where the scrubber's walk is.
    live: Live,
    /// The segment the scrubber checks again by locations, if its walk missed live records.
    scrub_recheck: Option<Recheck>,
    /// The newest tombstone of each deleted blob. Kept (and carried forward when its segment
    /// is reclaimed) so that older records of the blob never come back.
    tombstones: BTreeMap<[u8; 32], Location>,
    /// The reclaiming pass under way, if any.
    reclaiming: Option<Reclaiming>,
}

/// Writes `data` at `offset` and syncs: the only way the store writes, so that nothing it
/// relies on is ever left unsynced.
async fn write_durably<F: File>(
    file: &F,
    offset: u64,
    data: &[u8],
    op: &'static str,
) -> Result<(), StoreError> {
    file.write_at(offset, data).await.map_err(io_error(op))?;
    file.sync().await.map_err(io_error(op))
}

/// Reads `len` bytes at `start` in chunks of [`READ_CHUNK_BYTES`]. Why chunks: one direct read larger
/// than the device's `max_sectors_kb` can hang some kernels (glommio issue 633), and chunks
/// keep each I/O a size the device handles well.
async fn read_range<F: File>(file: &F, start: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(len as usize);
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(READ_CHUNK_BYTES as u64) as usize;
        bytes.extend_from_slice(&file.read_at(start + done, chunk).await?);
        done += chunk as u64;
    }
    Ok(bytes)
}

/// Size of each read when a whole segment is read (recovery, scrubbing).
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Records at least this large are read in pieces of [`READ_PIECE_BYTES`], all in flight at
/// once, each checksummed as it lands: the hashing of all but the last piece overlaps the
/// reading of the rest, instead of following the whole read.
const READ_PIECES_FROM_BYTES: usize = 512 * 1024;
const READ_PIECE_BYTES: usize = 256 * 1024;

/// Reads `len` bytes of a record at `offset` in pieces (see [`READ_PIECES_FROM_BYTES`]):
/// the bytes, and whether the record's checksum holds.
async fn read_checking<F: File>(file: &F, offset: u64, len: usize) -> io::Result<(Vec<u8>, bool)> {
    use futures_lite::StreamExt;
    let mut record = vec![0u8; len];
    let mut checksum = crate::format::ChecksumStream::default();
    {
        let mut pieces: futures::stream::FuturesOrdered<_> = record
            .chunks_mut(READ_PIECE_BYTES)
            .enumerate()
            .map(|(i, piece)| async move {
                let at = offset + (i * READ_PIECE_BYTES) as u64;
                file.read_into(at, piece).await.map(|()| &*piece)
            })
            .collect();
        while let Some(piece) = pieces.next().await {
            checksum.update(piece?);
        }
    }
    let holds = checksum.holds(&record);
    Ok((record, holds))
}

impl Location {
    fn record_bytes(&self) -> u64 {
        (RECORD_HEADER_BYTES + self.data_bytes as usize) as u64
    }
}

fn align_up(value: u64) -> u64 {
    value.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64
}

impl<D: Dir> Store<D> {
    /// Opens the store in `dir`, creating the first segment if there is none, and rebuilds the
    /// index from the segments.
    pub async fn open(dir: D) -> Result<(Self, RecoveryReport), StoreError> {
        Self::open_with(dir, StoreOptions::default()).await
    }

    /// [`Store::open`] with explicit settings.
    pub async fn open_with(
        dir: D,
        options: StoreOptions,
    ) -> Result<(Self, RecoveryReport), StoreError> {
        assert!(
            options.segment_bytes_max.is_multiple_of(BLOCK_BYTES as u64)
                && options.segment_bytes_max > SEGMENT_HEADER_BYTES as u64,
            "segments hold whole blocks beyond their header"
        );
        let mut ids: Vec<u64> = dir
            .list()
            .await
            .map_err(io_error("listing the data directory"))?
            .iter()
            .filter_map(|name| parse_segment_name(name))
            .collect();
        ids.sort_unstable();
        let mut store = Self {
            dir,
            options,
            files: BTreeMap::new(),
            active: 0,
            write_offset: 0,
            next_sequence: 1,
            index: BTreeMap::new(),
            counters: StoreCounters::default(),
            corrupt_keys: Vec::new(),
            tombstones: BTreeMap::new(),
            live: Live::default(),
            scrub_recheck: None,
            reclaiming: None,
        };
        let mut report = RecoveryReport::default();
        let mut active_sealed = false;
        for (i, &id) in ids.iter().enumerate() {
            let last = i + 1 == ids.len();
            let file = store
                .dir
                .open(&segment_name(id))
                .await
                .map_err(io_error("opening a segment"))?;
            let len = file
                .size_bytes()
                .await
                .map_err(io_error("sizing a segment"))?;
            // A sealed segment lists its records in a footer: read that, not every record.
            if let Some(records) = store.load_footer(id, &file, len).await? {
                report.segments += 1;
                report.records += records;
                report.segments_from_footer += 1;
                store.files.insert(id, file);
                store.active = id;
                // Never written again: a new segment is started below if this is the newest.
                store.write_offset = len;
                active_sealed = true;
                continue;
            }
            let bytes = read_range(&file, 0, len)
                .await
                .map_err(io_error("reading a segment"))?;
            match parse_segment_header(&bytes) {
                Ok(found) if found == id => {}
                // The newest segment may have been created but never synced: nothing in it was
                // acknowledged, so it is replaced.
                _ if last && len <= SEGMENT_HEADER_BYTES as u64 => {
                    store
                        .dir
                        .remove(&segment_name(id))
                        .await
                        .map_err(io_error("removing a torn segment"))?;
                    continue;
                }
                Ok(found) => {
                    return Err(StoreError::BadSegment {
                        name: segment_name(id),
                        why: format!("header names segment {found}"),
                    })
                }
                Err(why) => {
                    return Err(StoreError::BadSegment {
                        name: segment_name(id),
                        why,
                    })
                }
            }
            active_sealed = false;
            let end = store.scan(id, &bytes, last, &mut report);
            report.segments += 1;
            store.files.insert(id, file);
            // The newest surviving segment is the active one.
            store.active = id;
            store.write_offset = align_up(end);
        }
        let tombstones = std::mem::take(&mut store.tombstones);
        store.index.retain(|key, location| {
            tombstones
                .get(&key.blob_id)
                .is_none_or(|deleted| deleted.sequence < location.sequence)
        });
        store.tombstones = tombstones;
        store.live = Live::counting(store.index.values().chain(store.tombstones.values()));
        if store.files.is_empty() {
            store.roll(1).await?;
        } else if active_sealed {
            // The newest segment was sealed but its successor never made it to disk.
            store.roll(store.active + 1).await?;
        }
        Ok((store, report))
    }

    /// Indexes the valid records of one segment; returns the end of its last valid record.
    fn scan(&mut self, id: u64, bytes: &[u8], last: bool, report: &mut RecoveryReport) -> u64 {
        let mut offset = SEGMENT_HEADER_BYTES;
        let mut valid_end = offset;
        let mut bad_since: Option<usize> = None;
        while offset + RECORD_HEADER_BYTES <= bytes.len() {
            let record = RecordHeader::parse(&bytes[offset..]).filter(|h| {
                offset + h.record_bytes() <= bytes.len()
                    && RecordHeader::checksum_holds(&bytes[offset..offset + h.record_bytes()])
            });
            match record {
                Some(header) => {
                    if let Some(start) = bad_since.take() {
                        report.corrupt_regions.push((id, start as u64));
                    }
                    self.apply(id, offset as u64, &header);
                    report.records += 1;
                    offset += header.record_bytes();
                    valid_end = offset;
                }
                None => {
                    // A header that still parses names the record whose data went bad: an older
                    // copy of that key must not stand in for it.
                    if let Some(header) = RecordHeader::parse(&bytes[offset..]) {
                        if header.kind != RecordKind::Tombstone {
                            self.corrupt_keys.push((
                                Key {
                                    blob_id: header.blob_id,
                                    kind: header.kind,
                                    shard: header.shard,
                                },
                                header.sequence,
                            ));
                        }
                    }
                    // Padding after a commit is zero; anything else is a bad region. Either way
                    // the next commit starts on a block boundary.
                    let next_block = (offset / BLOCK_BYTES + 1) * BLOCK_BYTES;
                    let padding = bytes[offset..next_block.min(bytes.len())]
                        .iter()
                        .all(|b| *b == 0);
                    if !padding && bad_since.is_none() {
                        bad_since = Some(offset);
                    }
                    offset = next_block;
                }
            }
        }
        if let Some(start) = bad_since {
            if last {
                report.torn_tail_bytes += bytes.len() as u64 - start as u64;
            } else {
                report.corrupt_regions.push((id, start as u64));
            }
        }
        // New commits go right after the last valid record, over a torn tail if there is one:
        // the tail holds no valid record (else it would be a corrupt region) and was never
        // acknowledged, and every record validates itself, so whatever of it survives a later
        // crash reads as torn again, never as data.
        valid_end as u64
    }

    /// Indexes a record found at open (which counts [`Live`] afresh once every segment is read).
    fn apply(&mut self, segment: u64, offset: u64, header: &RecordHeader) {
        self.next_sequence = self.next_sequence.max(header.sequence + 1);
        let location = Location {
            segment,
            offset,
            data_bytes: header.data_bytes,
            sequence: header.sequence,
            end_epoch: header.end_epoch,
            flags: header.flags,
            verified: false,
        };
        if header.kind == RecordKind::Footer {
            return;
        }
        if header.kind == RecordKind::Tombstone {
            let newest = self.tombstones.entry(header.blob_id).or_insert(location);
            if newest.sequence <= header.sequence {
                *newest = location;
            }
            return;
        }
        let key = Key {
            blob_id: header.blob_id,
            kind: header.kind,
            shard: header.shard,
        };
        match self.index.get(&key) {
            Some(existing) if existing.sequence > header.sequence => {}
            _ => {
                self.index.insert(key, location);
            }
        }
    }

    /// Seals the active segment: writes a footer record listing its live records and
    /// tombstones, then a trailer block pointing at the footer as the file's last block, and
    /// syncs. Whatever lay past the last commit (the torn tail of a commit that failed or was
    /// cut by a crash) is zeroed on the way, so a sealed segment ends cleanly.
    async fn seal_active(&mut self) -> Result<(), StoreError> {
        let id = self.active;
        let mut entries = Vec::new();
        let live = self
            .index
            .iter()
            .map(|(key, l)| (key.blob_id, key.kind, key.shard, l))
            .chain(
                self.tombstones
                    .iter()
                    .map(|(blob, l)| (*blob, RecordKind::Tombstone, 0, l)),
            );
        for (blob_id, kind, shard, location) in live.filter(|(.., l)| l.segment == id) {
            let header = RecordHeader {
                kind,
                flags: location.flags,
                shard,
                end_epoch: location.end_epoch,
                data_bytes: location.data_bytes,
                sequence: location.sequence,
                blob_id,
            };
            FooterEntry {
                header,
                offset: location.offset,
            }
            .write(&mut entries);
        }
        let file = self.files.get(&id).expect("the active segment is open");
        let size = file
            .size_bytes()
            .await
            .map_err(io_error("sizing a segment"))?;
        let footer_at = self.write_offset;
        let mut buffer = Vec::new();
        let footer = u32::try_from(entries.len())
            .ok()
            .filter(|b| *b <= RECORD_DATA_BYTES_MAX);
        if let Some(data_bytes) = footer {
            let header = RecordHeader {
                kind: RecordKind::Footer,
                flags: 0,
                shard: 0,
                end_epoch: 0,
                data_bytes,
                sequence: 0,
                blob_id: [0; 32],
            };
            header.write(&entries, &mut buffer);
        }
        let footer_bytes = buffer.len() as u64;
        let footer_end = footer_at + align_up(footer_bytes);
        if footer.is_some() {
            // The trailer must be the file's last block, past any torn tail.
            let trailer_at = footer_end.max(align_up(size).saturating_sub(TRAILER_BYTES as u64));
            buffer.resize((trailer_at - footer_at) as usize, 0);
            buffer.extend_from_slice(&trailer(footer_at, footer_bytes));
        } else {
            // Too many records for one footer: no trailer; opening scans this segment.
            buffer.resize((align_up(size).max(footer_end) - footer_at) as usize, 0);
        }
        if !buffer.is_empty() {
            write_durably(file, footer_at, &buffer, "sealing a segment").await?;
        }
        Ok(())
    }

    /// Indexes a sealed segment from its footer; `None` if it has no usable one (then it is
    /// scanned record by record).
    async fn load_footer(
        &mut self,
        id: u64,
        file: &D::File,
        len: u64,
    ) -> Result<Option<usize>, StoreError> {
        let blocks = (SEGMENT_HEADER_BYTES + TRAILER_BYTES) as u64;
        if len < blocks || !len.is_multiple_of(BLOCK_BYTES as u64) {
            return Ok(None);
        }
        let read = |offset: u64, bytes: u64| read_range(file, offset, bytes);
        let header = read(0, SEGMENT_HEADER_BYTES as u64)
            .await
            .map_err(io_error("reading a segment header"))?;
        if parse_segment_header(&header) != Ok(id) {
            return Ok(None);
        }
        let tail = read(len - TRAILER_BYTES as u64, TRAILER_BYTES as u64)
            .await
            .map_err(io_error("reading a segment trailer"))?;
        let Some((footer_at, footer_bytes)) = parse_trailer(&tail) else {
            return Ok(None);
        };
        if footer_at + footer_bytes > len - TRAILER_BYTES as u64
            || footer_bytes < RECORD_HEADER_BYTES as u64
        {
            return Ok(None);
        }
        let record = read(footer_at, footer_bytes)
            .await
            .map_err(io_error("reading a segment footer"))?;
        let valid = RecordHeader::parse(&record).is_some_and(|h| {
            h.kind == RecordKind::Footer
                && h.record_bytes() as u64 == footer_bytes
                && (h.data_bytes as usize).is_multiple_of(FOOTER_ENTRY_BYTES)
        }) && RecordHeader::checksum_holds(&record);
        if !valid {
            return Ok(None);
        }
        let entries: Option<Vec<FooterEntry>> = record[RECORD_HEADER_BYTES..]
            .chunks_exact(FOOTER_ENTRY_BYTES)
            .map(FooterEntry::parse)
            .collect();
        let Some(entries) = entries else {
            return Ok(None);
        };
        for entry in &entries {
            self.apply(id, entry.offset, &entry.header);
        }
        Ok(Some(entries.len()))
    }

    /// Starts segment `id`: header written and synced, directory synced.
    async fn roll(&mut self, id: u64) -> Result<(), StoreError> {
        let name = segment_name(id);
        // A roll that failed after creating the file left it behind, unacknowledged: reuse it.
        let file = match self.dir.create(&name).await {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => self.dir.open(&name).await,
            other => other,
        }
        .map_err(io_error("creating a segment"))?;
        write_durably(&file, 0, &segment_header(id), "writing a segment header").await?;
        self.dir
            .sync()
            .await
            .map_err(io_error("syncing the data directory"))?;
        self.files.insert(id, file);
        self.active = id;
        self.write_offset = SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }

    /// Stores a batch of records as one commit; returns once it is durable. On error nothing
    /// of the batch is visible, and everything stored before stays readable.
    pub async fn put(&mut self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        let mut buffer = Vec::new();
        let mut headers = Vec::with_capacity(batch.len());
        for put in batch {
            if matches!(put.key.kind, RecordKind::Tombstone | RecordKind::Footer) {
                return Err(StoreError::TombstoneInBatch);
            }
            let header = self.header(
                put.key.kind,
                put.flags,
                put.key.blob_id,
                put.key.shard,
                put.end_epoch,
                put.data,
            )?;
            headers.push((buffer.len() as u64, header));
            header.write(put.data, &mut buffer);
        }
        let at = self.commit(buffer).await?;
        for (put, (offset, header)) in batch.iter().zip(headers) {
            let location = Location {
                segment: self.active,
                offset: at + offset,
                data_bytes: header.data_bytes,
                sequence: header.sequence,
                end_epoch: header.end_epoch,
                flags: header.flags,
                verified: false,
            };
            self.index_insert(put.key, location);
        }
        self.counters.records_written += batch.len() as u64;
        Ok(())
    }

    /// Deletes every record of a blob, durably, with a tombstone kept until `end_epoch` (the
    /// deleted blob's own end epoch: until then [`Store::deleted`] remembers the deletion, so
    /// that a node can tell a deleted blob from one it never heard of).
    pub async fn delete_blob(
        &mut self,
        blob_id: &[u8; 32],
        end_epoch: u32,
    ) -> Result<(), StoreError> {
        let header = self.header(RecordKind::Tombstone, 0, *blob_id, 0, end_epoch, &[])?;
        let mut buffer = Vec::new();
        header.write(&[], &mut buffer);
        let at = self.commit(buffer).await?;
        let location = Location {
            segment: self.active,
            offset: at,
            data_bytes: 0,
            sequence: header.sequence,
            end_epoch,
            flags: 0,
            verified: false,
        };
        self.set_tombstone(*blob_id, location);
        let keys: Vec<Key> = self.keys_of(blob_id).collect();
        for key in keys {
            self.unindex(&key);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        kind: RecordKind,
        flags: u8,
        blob_id: [u8; 32],
        shard: u16,
        end_epoch: u32,
        data: &[u8],
    ) -> Result<RecordHeader, StoreError> {
        let data_bytes = u32::try_from(data.len())
            .ok()
            .filter(|b| *b <= RECORD_DATA_BYTES_MAX)
            .ok_or(StoreError::TooLarge {
                bytes: data.len(),
                max: RECORD_DATA_BYTES_MAX,
            })?;
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        Ok(RecordHeader {
            kind,
            flags,
            shard,
            end_epoch,
            data_bytes,
            sequence,
            blob_id,
        })
    }

    /// Writes one commit (padded to whole blocks) and syncs it; returns its offset.
    async fn commit(&mut self, mut buffer: Vec<u8>) -> Result<u64, StoreError> {
        buffer.resize(align_up(buffer.len() as u64) as usize, 0);
        if self.write_offset > SEGMENT_HEADER_BYTES as u64
            && self.write_offset + buffer.len() as u64 > self.options.segment_bytes_max
        {
            self.seal_active().await?;
            self.roll(self.active + 1).await?;
        }
        let at = self.write_offset;
        let file = self
            .files
            .get(&self.active)
            .expect("the active segment is open");
        let written = write_durably(file, at, &buffer, "writing a commit").await;
        if let Err(err) = written {
            self.counters.failed_commits += 1;
            // The next commit goes to the same offset. The region may hold part of this batch,
            // even whole records; records validate themselves, so remnants read as a torn tail
            // or, if whole, as records of a put that reported failure (which callers must
            // treat as "may or may not be stored"), never as anything else.
            return Err(err);
        }
        self.write_offset += buffer.len() as u64;
        self.counters.commits += 1;
        self.counters.bytes_written += buffer.len() as u64;
        Ok(at)
    }

    /// Reads a record: `Ok(None)` if absent; `Err(Corrupt)` if it failed its checksum (it is
    /// then dropped from the index, so the node treats it as missing and heals it).
    pub async fn get(&mut self, key: &Key) -> Result<Option<bytes::Bytes>, StoreError> {
        let Some((location, file)) = self.locate(key) else {
            return Ok(None);
        };
        let len = location.record_bytes() as usize;
        let (bytes, checksum) = if len < READ_PIECES_FROM_BYTES {
            let read = file.read_at(location.offset, len).await;
            (read.map_err(|err| self.read_failed(err))?, None)
        } else {
            let read = read_checking(file, location.offset, len).await;
            let (bytes, holds) = read.map_err(|err| self.read_failed(err))?;
            (bytes, Some(holds))
        };
        self.check_record(key, &location, &bytes, checksum)?;
        // The data is a view past the header: no copy to drop it.
        Ok(Some(bytes::Bytes::from(bytes).slice(RECORD_HEADER_BYTES..)))
    }

    /// Where `key`'s record is, and its segment file.
    fn locate(&self, key: &Key) -> Option<(Location, &D::File)> {
        let location = *self.index.get(key)?;
        let file = self
            .files
            .get(&location.segment)
            .expect("indexed segments are open");
        Some((location, file))
    }

    /// Counts a failed record read and names it.
    fn read_failed(&mut self, err: io::Error) -> StoreError {
        self.counters.read_errors += 1;
        io_error("reading a record")(err)
    }

    /// Checks a record read for `key` at `location` (header names the key and sequence,
    /// checksum holds: `checksum` if the caller checked it already); one that fails leaves the
    /// index, is counted, and reads as `Corrupt`.
    fn check_record(
        &mut self,
        key: &Key,
        location: &Location,
        record: &[u8],
        checksum: Option<bool>,
    ) -> Result<(), StoreError> {
        let intact = RecordHeader::parse(record).is_some_and(|h| {
            h.kind == key.kind
                && h.shard == key.shard
                && h.blob_id == key.blob_id
                && h.sequence == location.sequence
        }) && checksum.unwrap_or_else(|| RecordHeader::checksum_holds(record));
        if intact {
            return Ok(());
        }
        self.unindex(key);
        self.counters.corrupt_records += 1;
        Err(StoreError::Corrupt {
            kind: key.kind,
            shard: key.shard,
        })
    }

    /// Reads a record's data as a shared view, without copying where the device can map its
    /// files (the hot read path: [`crate::glommio_dir::GlommioFile`] maps segments, so the bytes
    /// come from the page cache and the view stays valid while anyone holds it).
    ///
    /// The checksum is checked on the first read of each record after the store opened (and
    /// on every read when [`StoreOptions::reverify_mapped_reads`] is set); a record that
    /// fails is dropped and reported as `Corrupt`, like [`Store::get`]. Later reads of a
    /// verified record skip the hash: the mapped bytes were checked when they came from the
    /// device. The scrubber re-reads from the device (direct I/O) and re-checks everything.
    pub async fn get_shared(&mut self, key: &Key) -> Result<Option<bytes::Bytes>, StoreError> {
        let Some((location, file)) = self.locate(key) else {
            return Ok(None);
        };
        let check = !location.verified
            || self.options.reverify_mapped_reads
            || crate::fault::reverify_all();
        // A verified record needs only its data: one view, no header.
        let (offset, len) = if check {
            (location.offset, location.record_bytes() as usize)
        } else {
            (
                location.offset + RECORD_HEADER_BYTES as u64,
                location.data_bytes as usize,
            )
        };
        let read = file.read_shared(offset, len).await;
        let record = read.map_err(|err| self.read_failed(err))?;
        if crate::fault::poisoned(&record) {
            // A page of it failed to read once and now holds zeros in this mapping: lost here
            // (a read error), healed like a corrupt record; never served.
            self.unindex(key);
            self.counters.read_errors += 1;
            return Err(StoreError::Corrupt {
                kind: key.kind,
                shard: key.shard,
            });
        }
        if !check {
            return Ok(Some(record));
        }
        // The first touch of a mapped record's pages: a page the device fails to deliver is an
        // error here, not the end of the process (crate::fault).
        let Ok(checksum) = crate::fault::guarded(|| RecordHeader::checksum_holds(&record)) else {
            // Its failed pages now read as zeros in this mapping: the record is lost to this
            // store (a read error, not corruption) and is healed like a corrupt one.
            self.unindex(key);
            self.counters.read_errors += 1;
            return Err(StoreError::Corrupt {
                kind: key.kind,
                shard: key.shard,
            });
        };
        self.check_record(key, &location, &record, Some(checksum))?;
        if let Some(entry) = self.index.get_mut(key) {
            entry.verified = true;
        }
        Ok(Some(record.slice(RECORD_HEADER_BYTES..)))
    }

    /// Bytes of a record's data, if it is stored.
    pub fn data_bytes(&self, key: &Key) -> Option<u32> {
        self.index.get(key).map(|l| l.data_bytes)
    }

    /// Drops every record whose blob's end epoch is before `current_epoch` from the index; their
    /// space is freed by [`Store::reclaim`]. Call after every open, as epochs advance.
    /// Returns how many records expired.
    /// Tombstones are dropped too once their end epoch has passed: every record they shadowed
    /// has expired with them.
    pub fn expire(&mut self, current_epoch: u32) -> usize {
        let before = self.index.len();
        let live = &mut self.live;
        let mut keep = |location: &Location| {
            let kept = location.end_epoch >= current_epoch;
            if !kept {
                live.remove(location);
            }
            kept
        };
        self.index.retain(|_, location| keep(location));
        self.tombstones.retain(|_, location| keep(location));
        before - self.index.len()
    }

    /// Drops every sliver of `shard` from the index (the node gave the shard to another); their
    /// space is freed by [`Store::reclaim`]. The records are still in their segments, so the
    /// caller repeats this after every open for as long as the shard is not its own again.
    /// Returns how many records it dropped.
    pub fn forget_shard(&mut self, shard: u16) -> usize {
        self.forget_shards(|s| s == shard)
    }

    /// [`Store::forget_shard`] of every shard `forget` names, in one pass over the index.
    pub fn forget_shards(&mut self, forget: impl Fn(u16) -> bool) -> usize {
        let before = self.index.len();
        let live = &mut self.live;
        self.index.retain(|key, location| {
            let kept = key.kind == RecordKind::Metadata || !forget(key.shard);
            if !kept {
                live.remove(location);
            }
            kept
        });
        before - self.index.len()
    }

    /// Frees the space of deleted, overwritten and expired records: every sealed segment whose
    /// live bytes are at most `live_fraction_max` of its size has its live records (and
    /// tombstones) copied into the active segment, durably, and is then removed. One whole
    /// pass of [`Store::reclaim_step`].
    ///
    /// Why whole segments: a segment is removed by one unlink, and copying is bounded by
    /// `live_fraction_max`, so a store that deletes blob by blob pays at most that fraction of
    /// rewriting per freed byte; crash-safe because the copies are durable before the unlink,
    /// and a copy keeps its record's sequence, so a duplicate left by a crash is harmless.
    pub async fn reclaim(&mut self, live_fraction_max: f64) -> Result<ReclaimReport, StoreError> {
        self.start_reclaim(live_fraction_max);
        let mut report = ReclaimReport::default();
        loop {
            let step = self.reclaim_step(u64::MAX).await?;
            report.segments_removed += step.segments_removed;
            report.bytes_freed += step.bytes_freed;
            report.records_moved += step.records_moved;
            if step.pass_complete {
                return Ok(report);
            }
        }
    }

    /// Starts a reclaiming pass over the segments sealed now (a pass in progress starts over;
    /// what it copied stays copied). [`Store::reclaim_step`] does the work in bounded steps.
    pub fn start_reclaim(&mut self, live_fraction_max: f64) {
        debug_assert!(self.live_counts_hold(), "live records are counted exactly");
        let candidates = self
            .files
            .keys()
            .copied()
            .filter(|id| *id != self.active)
            .map(|id| (id, self.live.segments.get(&id).map_or(0, |s| s.bytes)))
            .collect();
        self.reclaiming = Some(Reclaiming {
            live_fraction_max,
            candidates,
            current: None,
        });
    }

    /// Whether a reclaiming pass is under way.
    pub fn reclaim_pending(&self) -> bool {
        self.reclaiming.is_some()
    }

    /// One step of the reclaiming pass started by [`Store::start_reclaim`]: copies at most about
    /// `bytes_max` of live records (at least one record), and removes each segment it has
    /// emptied. Records that died since the pass started are skipped. Returns what it did; a
    /// step with no pass under way reports the pass complete.
    pub async fn reclaim_step(&mut self, bytes_max: u64) -> Result<ReclaimReport, StoreError> {
        let result = self.reclaim_step_inner(bytes_max).await;
        if result.is_err() {
            // Records of the segment being emptied may have been read but not copied: it must
            // not be removed. A later pass looks at it afresh.
            if let Some(pass) = self.reclaiming.as_mut() {
                pass.current = None;
            }
        }
        result
    }

    async fn reclaim_step_inner(&mut self, bytes_max: u64) -> Result<ReclaimReport, StoreError> {
        let mut report = ReclaimReport::default();
        let mut budget = bytes_max;
        while let Some(pass) = self.reclaiming.as_mut() {
            let Some(current) = pass.current.as_mut() else {
                let Some((id, live_then)) = pass.candidates.pop_front() else {
                    self.reclaiming = None;
                    report.pass_complete = true;
                    return Ok(report);
                };
                let fraction = pass.live_fraction_max;
                let Some(file) = self.files.get(&id) else {
                    continue;
                };
                let size = file
                    .size_bytes()
                    .await
                    .map_err(io_error("sizing a segment"))?;
                if live_then as f64 > fraction * size as f64 {
                    continue;
                }
                let moving = self.live_records_of(id);
                if let Some(pass) = self.reclaiming.as_mut() {
                    pass.current = Some(Emptying {
                        segment: id,
                        size,
                        moving,
                    });
                }
                continue;
            };
            if budget == 0 {
                return Ok(report);
            }
            let id = current.segment;
            // Copy the next records, up to the budget, in one commit.
            let mut buffer = Vec::new();
            let mut placed = Vec::new();
            while let Some((owner, location)) = current.moving.last().copied() {
                if !placed.is_empty()
                    && (buffer.len() as u64 + location.record_bytes() > budget
                        || buffer.len() >= RECLAIM_COMMIT_BYTES)
                {
                    break;
                }
                current.moving.pop();
                let still = match owner {
                    Ok(key) => self.index.get(&key),
                    Err(blob) => self.tombstones.get(&blob),
                };
                if still.is_none_or(|l| l.segment != id || l.offset != location.offset) {
                    continue; // Died (or moved) since the pass started.
                }
                let bytes = self.files[&id]
                    .read_at(location.offset, location.record_bytes() as usize)
                    .await
                    .map_err(io_error("reading a record to reclaim"))?;
                if !RecordHeader::checksum_holds(&bytes) {
                    // Corrupt: not copied; the node heals it like any other missing sliver.
                    if let Ok(key) = owner {
                        if let Some(old) = self.index.remove(&key) {
                            self.live.remove(&old);
                        }
                    }
                    self.counters.corrupt_records += 1;
                    continue;
                }
                placed.push((owner, location, buffer.len() as u64));
                buffer.extend_from_slice(&bytes);
            }
            let emptied = current.moving.is_empty();
            let size = current.size;
            if !placed.is_empty() {
                budget = budget.saturating_sub(buffer.len() as u64);
                self.counters.reclaim_bytes_moved += buffer.len() as u64;
                self.commit_moved(buffer, placed, &mut report).await?;
            }
            if emptied {
                self.files.remove(&id);
                self.dir
                    .remove(&segment_name(id))
                    .await
                    .map_err(io_error("removing a reclaimed segment"))?;
                self.dir
                    .sync()
                    .await
                    .map_err(io_error("syncing the data directory"))?;
                report.segments_removed += 1;
                report.bytes_freed += size;
                self.counters.reclaim_bytes_freed += size;
                if let Some(pass) = self.reclaiming.as_mut() {
                    pass.current = None;
                }
            }
        }
        report.pass_complete = true;
        Ok(report)
    }

    /// Re-reads stored records from the device (direct I/O) and checks every live one against
    /// its checksum, picking up where the last call stopped; a record that fails is dropped
    /// from the index (so the node heals it from peers), counted and reported. The node calls
    /// this from a background task at the configured scrub rate; a full pass ends when it
    /// returns `pass_complete`.
    ///
    /// Why a walk of the files: the index is in key order, which is random on disk, and at
    /// n = 1000 a blob is some 2000 small records; checking record by record would queue
    /// thousands of tiny random reads ahead of requests. The walk reads each segment front to
    /// back in reads of up to 1 MiB (`READ_CHUNK_BYTES`), parses the record headers in what it
    /// read (as recovery does) and checks each record that the index or a tombstone points at
    /// exactly there, as [`Store::get`] would; dead records (overwritten, deleted, expired, a
    /// sealed segment's footer) are skipped unhashed, and unread where they run past the
    /// read. What does not parse (padding, a sealed segment's trailer, corruption) is skipped
    /// to the next block, where the next commit starts. Corruption can hide live records from
    /// the walk (a flipped header, a region that does not parse): at a segment's end the live
    /// records counted there say whether the walk met them all, and only if it did not are
    /// the segment's live records listed (one walk over the index) and checked again by their
    /// locations.
    ///
    /// Reads about `bytes_max` bytes per call, and at least one block or record, so every
    /// call makes progress (a live record larger than what is left is read whole). The active
    /// segment is walked up to its last commit; segments reclaimed meanwhile are skipped. A
    /// corrupt tombstone is not dropped but written again from memory (its blob, end epoch and
    /// sequence are all there), so the deletion survives a restart. A failed read is counted,
    /// its region skipped (the segment's end check finds the live records it held) and the
    /// error returned.
    pub async fn scrub(&mut self, bytes_max: u64) -> Result<ScrubReport, StoreError> {
        let mut report = ScrubReport::default();
        loop {
            let cursor = self.live.scrub;
            let Some(id) = self.files.range(cursor.segment..).next().map(|(id, _)| *id) else {
                debug_assert!(self.live_counts_hold(), "live records are counted exactly");
                self.live.scrub = ScrubCursor::default();
                self.scrub_recheck = None;
                report.pass_complete = true;
                return Ok(report);
            };
            if id != cursor.segment || cursor.offset < SEGMENT_HEADER_BYTES as u64 {
                // The next segment (or the one after a reclaimed one).
                self.live.scrub = ScrubCursor {
                    segment: id,
                    offset: SEGMENT_HEADER_BYTES as u64,
                    ..ScrubCursor::default()
                };
                self.scrub_recheck = None;
            }
            let spent = report.bytes_checked >= bytes_max.max(1);
            if let Some(recheck) = &self.scrub_recheck {
                if recheck.records.is_empty() {
                    self.scrub_next_segment(id);
                } else if spent {
                    return Ok(report);
                } else {
                    self.scrub_recheck_step(id, bytes_max, &mut report).await?;
                }
                continue;
            }
            let end = self.scrub_end(id).await?;
            if self.live.scrub.offset >= end {
                let live = self.live.segments.get(&id).map_or(0, |s| s.records);
                if live as i64 > self.live.scrub.met {
                    self.scrub_recheck = Some(Recheck {
                        records: self.live_records_of(id),
                    });
                } else {
                    self.scrub_next_segment(id);
                }
                continue;
            }
            if spent {
                return Ok(report);
            }
            self.scrub_walk_step(id, end, bytes_max, &mut report)
                .await?;
        }
    }

    /// Bytes of live records: every indexed record and kept tombstone, headers included (what
    /// keeping them all costs on disk; a scrub pass reads at least this much). A running total.
    pub fn live_bytes(&self) -> u64 {
        self.live.bytes
    }

    /// Moves the scrubber on to the segment after `id`.
    fn scrub_next_segment(&mut self, id: u64) {
        self.live.scrub = ScrubCursor {
            segment: id + 1,
            ..ScrubCursor::default()
        };
        self.scrub_recheck = None;
    }

    /// Where the scrubber's walk of segment `id` ends: the active segment's last commit, or a
    /// sealed segment's size.
    async fn scrub_end(&mut self, id: u64) -> Result<u64, StoreError> {
        if id == self.active {
            return Ok(self.write_offset);
        }
        if let Some(end) = self.live.scrub.sealed_end {
            return Ok(end);
        }
        let end = self.files[&id]
            .size_bytes()
            .await
            .map_err(io_error("sizing a segment"))?;
        self.live.scrub.sealed_end = Some(end);
        Ok(end)
    }

    /// One read of the scrubber's walk over segment `id` (see [`Store::scrub`]), from its
    /// cursor: checks the live records in it and moves the cursor past what it covered.
    async fn scrub_walk_step(
        &mut self,
        id: u64,
        end: u64,
        bytes_max: u64,
        report: &mut ScrubReport,
    ) -> Result<(), StoreError> {
        let start = self.live.scrub.offset;
        let left = bytes_max.saturating_sub(report.bytes_checked);
        let len = (end - start)
            .min(READ_CHUNK_BYTES as u64)
            .min(left.max(SCRUB_READ_MIN_BYTES));
        let read = read_range(&self.files[&id], start, len).await;
        let mut buffer = match read {
            Ok(buffer) => buffer,
            Err(err) => {
                self.live.scrub.offset = start + len;
                self.read_failed(err);
                return self.scrub_unreadable(id, start..start + len, report).await;
            }
        };
        report.bytes_checked += len;
        let mut pos = 0;
        while pos < buffer.len() {
            let at = start + pos as u64;
            if buffer.len() - pos < RECORD_HEADER_BYTES && at + RECORD_HEADER_BYTES as u64 <= end {
                break; // A header cut off by the read: the next read starts with it.
            }
            let header = RecordHeader::parse(&buffer[pos..]);
            let Some((owner, location)) = header.and_then(|h| self.live_at(id, at, &h)) else {
                pos = match header {
                    // Dead: skipped unhashed (and unread, where it runs past this read).
                    Some(h) if at + h.record_bytes() as u64 <= end => pos + h.record_bytes(),
                    // Padding, the trailer or corruption: a commit starts on a block boundary.
                    _ => (align_up(at + 1).min(end) - start) as usize,
                };
                self.live.scrub.offset = start + pos as u64;
                continue;
            };
            // Live: the index's length, not the header's (which may be corrupt).
            let record_bytes = location.record_bytes() as usize;
            if pos + record_bytes > buffer.len() {
                if pos > 0 {
                    break; // The next read starts with it.
                }
                let rest = (record_bytes - buffer.len()) as u64;
                let read = read_range(&self.files[&id], at + buffer.len() as u64, rest).await;
                match read {
                    Ok(read) => buffer.extend_from_slice(&read),
                    Err(err) => {
                        self.live.scrub.offset = at + record_bytes as u64;
                        self.read_failed(err);
                        return self.scrub_unreadable(id, at..at + 1, report).await;
                    }
                }
                report.bytes_checked += rest;
            }
            let record = &buffer[pos..pos + record_bytes];
            self.scrub_check(owner, location, record, report).await?;
            pos += record_bytes;
            self.live.scrub.offset = start + pos as u64;
        }
        Ok(())
    }

    /// One read of a recheck of segment `id` (see [`Store::scrub`]): the next live records
    /// that lie within one read (or the next one alone, if it is larger), checked.
    async fn scrub_recheck_step(
        &mut self,
        id: u64,
        bytes_max: u64,
        report: &mut ScrubReport,
    ) -> Result<(), StoreError> {
        let Some(mut recheck) = self.scrub_recheck.take() else {
            return Ok(());
        };
        let left = bytes_max.saturating_sub(report.bytes_checked);
        let chunk = (READ_CHUNK_BYTES as u64).min(left.max(SCRUB_READ_MIN_BYTES));
        let mut batch = Vec::new();
        let (mut start, mut end) = (0, 0);
        while let Some(&(owner, location)) = recheck.records.last() {
            let still = self.live_location(&owner);
            if still.is_none_or(|l| l.segment != id || l.offset != location.offset) {
                recheck.records.pop();
                continue; // Died (or moved) since the recheck started.
            }
            let record_end = location.offset + location.record_bytes();
            if batch.is_empty() {
                start = location.offset;
            } else if record_end > start + chunk {
                break;
            }
            end = record_end;
            batch.push((owner, location));
            recheck.records.pop();
        }
        self.scrub_recheck = Some(recheck);
        if batch.is_empty() {
            return Ok(());
        }
        let read = read_range(&self.files[&id], start, end - start).await;
        let buffer = match read {
            Ok(buffer) => buffer,
            Err(err) => {
                self.read_failed(err);
                return self.scrub_unreadable(id, start..end, report).await;
            }
        };
        report.bytes_checked += end - start;
        for (owner, location) in batch {
            let from = (location.offset - start) as usize;
            let record = &buffer[from..from + location.record_bytes() as usize];
            self.scrub_check(owner, location, record, report).await?;
        }
        Ok(())
    }

    /// The live records of segment `id` that start in `range`, whose read just failed: each is
    /// read again on its own, up to [`UNREADABLE_TRIES`] times, and checked if it reads; one
    /// that never does is lost here like a corrupt one (dropped from the index and reported,
    /// so the node heals it; a tombstone is written again from memory). Why retry: a device
    /// may fail a read once and serve it the next time (the store must not drop a record for
    /// that), while a bad sector fails every time, and its record would fail every read too.
    async fn scrub_unreadable(
        &mut self,
        id: u64,
        range: std::ops::Range<u64>,
        report: &mut ScrubReport,
    ) -> Result<(), StoreError> {
        let suspects: Vec<(Owner, Location)> = self
            .live_records_of(id)
            .into_iter()
            .filter(|(_, l)| range.contains(&l.offset))
            .collect();
        for (owner, location) in suspects {
            let mut read = None;
            for _ in 0..UNREADABLE_TRIES {
                let attempt = self.files[&id]
                    .read_at(location.offset, location.record_bytes() as usize)
                    .await;
                match attempt {
                    Ok(bytes) => {
                        read = Some(bytes);
                        break;
                    }
                    Err(_) => self.counters.read_errors += 1,
                }
            }
            report.bytes_checked += location.record_bytes();
            if let Some(record) = read {
                self.scrub_check(owner, location, &record, report).await?;
                continue;
            }
            match owner {
                Ok(key) => {
                    self.unindex(&key);
                    report.records_checked += 1;
                    report.corrupt.push(key);
                }
                Err(blob_id) => {
                    self.rewrite_tombstone(blob_id, location).await?;
                    report.records_checked += 1;
                    report.corrupt.push(Key {
                        blob_id,
                        kind: RecordKind::Tombstone,
                        shard: 0,
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks a live record the scrubber read, as [`Store::check_record`] does: one that fails
    /// leaves the index and is counted and reported; a tombstone that fails is written again.
    async fn scrub_check(
        &mut self,
        owner: Owner,
        location: Location,
        record: &[u8],
        report: &mut ScrubReport,
    ) -> Result<(), StoreError> {
        let intact = match owner {
            Ok(key) => self.check_record(&key, &location, record, None).is_ok(),
            Err(blob) => {
                let intact = RecordHeader::parse(record).is_some_and(|h| {
                    h.kind == RecordKind::Tombstone
                        && h.blob_id == blob
                        && h.sequence == location.sequence
                }) && RecordHeader::checksum_holds(record);
                if !intact {
                    self.rewrite_tombstone(blob, location).await?;
                    self.counters.corrupt_records += 1;
                }
                intact
            }
        };
        report.records_checked += 1;
        if intact {
            self.live.scrub.met += 1;
        } else {
            report.corrupt.push(owner.unwrap_or_else(|blob_id| Key {
                blob_id,
                kind: RecordKind::Tombstone,
                shard: 0,
            }));
        }
        Ok(())
    }

    /// Writes a tombstone found corrupt again, from what memory holds of it (the copy keeps its
    /// sequence, as reclaiming's copies do), and points the blob's deletion at the copy.
    async fn rewrite_tombstone(
        &mut self,
        blob_id: [u8; 32],
        location: Location,
    ) -> Result<(), StoreError> {
        let header = RecordHeader {
            kind: RecordKind::Tombstone,
            flags: location.flags,
            shard: 0,
            end_epoch: location.end_epoch,
            data_bytes: 0,
            sequence: location.sequence,
            blob_id,
        };
        let mut buffer = Vec::new();
        header.write(&[], &mut buffer);
        let at = self.commit(buffer).await?;
        let copy = Location {
            segment: self.active,
            offset: at,
            verified: false,
            ..location
        };
        self.set_tombstone(blob_id, copy);
        Ok(())
    }

    /// The owner and location of the record at `offset` of `segment` whose header is `header`,
    /// if the index (or the tombstones) point exactly there: if it is live.
    fn live_at(
        &self,
        segment: u64,
        offset: u64,
        header: &RecordHeader,
    ) -> Option<(Owner, Location)> {
        let owner = match header.kind {
            RecordKind::Footer => return None,
            RecordKind::Tombstone => Err(header.blob_id),
            kind => Ok(Key {
                blob_id: header.blob_id,
                kind,
                shard: header.shard,
            }),
        };
        let location = *self.live_location(&owner)?;
        (location.segment == segment && location.offset == offset).then_some((owner, location))
    }

    /// Where the live record of `owner` is.
    fn live_location(&self, owner: &Owner) -> Option<&Location> {
        match owner {
            Ok(key) => self.index.get(key),
            Err(blob) => self.tombstones.get(blob),
        }
    }

    /// The live records (and tombstones) of segment `id`, the last in the file first. One walk
    /// over the index.
    fn live_records_of(&self, id: u64) -> Vec<(Owner, Location)> {
        let mut records: Vec<(Owner, Location)> = self
            .index
            .iter()
            .filter(|(_, l)| l.segment == id)
            .map(|(k, l)| (Ok(*k), *l))
            .chain(
                self.tombstones
                    .iter()
                    .filter(|(_, l)| l.segment == id)
                    .map(|(b, l)| (Err(*b), *l)),
            )
            .collect();
        records.sort_by_key(|(_, l)| std::cmp::Reverse(l.offset));
        records
    }

    /// Points `key` at `location`. The index changes only through here and [`Store::unindex`]
    /// (and at open, which counts afresh), so that [`Live`] stays exact.
    fn index_insert(&mut self, key: Key, location: Location) {
        if let Some(old) = self.index.insert(key, location) {
            self.live.remove(&old);
        }
        self.live.add(&location);
    }

    /// Drops `key` from the index.
    fn unindex(&mut self, key: &Key) -> Option<Location> {
        let old = self.index.remove(key)?;
        self.live.remove(&old);
        Some(old)
    }

    /// Points the deletion of `blob_id` at the tombstone at `location`.
    fn set_tombstone(&mut self, blob_id: [u8; 32], location: Location) {
        if let Some(old) = self.tombstones.insert(blob_id, location) {
            self.live.remove(&old);
        }
        self.live.add(&location);
    }

    /// Whether [`Live`] agrees with the index and the tombstones (checked in debug builds).
    fn live_counts_hold(&self) -> bool {
        let counted = Live::counting(self.index.values().chain(self.tombstones.values()));
        counted.segments == self.live.segments && counted.bytes == self.live.bytes
    }

    /// Commits copied records and points the index (or the tombstones) at the copies.
    async fn commit_moved(
        &mut self,
        buffer: Vec<u8>,
        placed: Vec<(Owner, Location, u64)>,
        report: &mut ReclaimReport,
    ) -> Result<(), StoreError> {
        let at = self.commit(buffer).await?;
        for (owner, location, relative) in placed {
            let moved = Location {
                segment: self.active,
                offset: at + relative,
                verified: false,
                ..location
            };
            match owner {
                Ok(key) => self.index_insert(key, moved),
                Err(blob) => self.set_tombstone(blob, moved),
            }
            report.records_moved += 1;
        }
        Ok(())
    }

    /// The keys stored for a blob.
    pub fn keys_of(&self, blob_id: &[u8; 32]) -> impl Iterator<Item = Key> + '_ {
        let first = Key::metadata(*blob_id);
        let last = Key {
            blob_id: *blob_id,
            kind: RecordKind::Tombstone,
            shard: u16::MAX,
        };
        self.index.range(first..=last).map(|(key, _)| *key)
    }

    /// Blobs whose metadata this store holds, in blob ID order, starting after `after`: at most
    /// `limit` of them, each with its end epoch. Skips a blob's slivers in one step, so a page
    /// costs `limit` index lookups however many slivers each blob has.
    pub fn metadata_after(&self, after: Option<&[u8; 32]>, limit: usize) -> Vec<([u8; 32], u32)> {
        let mut found = Vec::new();
        let mut from = after.map(|id| Key {
            blob_id: *id,
            kind: RecordKind::Tombstone,
            shard: u16::MAX,
        });
        while found.len() < limit {
            let next = match &from {
                Some(key) => self
                    .index
                    .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
                    .next(),
                None => self.index.iter().next(),
            };
            let Some((key, location)) = next else { break };
            if key.kind == RecordKind::Metadata {
                found.push((key.blob_id, location.end_epoch));
            }
            from = Some(Key {
                blob_id: key.blob_id,
                kind: RecordKind::Tombstone,
                shard: u16::MAX,
            });
        }
        found
    }

    /// The end epoch of the blob's deletion, if it was deleted and not stored again since
    /// (a later metadata record, a permanent store after the deletion, supersedes it).
    pub fn deleted(&self, blob_id: &[u8; 32]) -> Option<u32> {
        let tombstone = self.tombstones.get(blob_id)?;
        match self.index.get(&Key::metadata(*blob_id)) {
            Some(stored) if stored.sequence > tombstone.sequence => None,
            _ => Some(tombstone.end_epoch),
        }
    }

    /// Deleted blobs ([`Store::deleted`]) in blob ID order after `after`, each with the end
    /// epoch of its deletion.
    pub fn deleted_after(
        &self,
        after: Option<&[u8; 32]>,
    ) -> impl Iterator<Item = ([u8; 32], u32)> + '_ {
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.tombstones
            .range::<[u8; 32], _>((from, std::ops::Bound::Unbounded))
            .filter_map(|(id, _)| Some((*id, self.deleted(id)?)))
    }

    /// The flags a record was stored with ([`FLAG_DELETABLE`](crate::format::FLAG_DELETABLE)).
    pub fn flags(&self, key: &Key) -> Option<u8> {
        self.index.get(key).map(|l| l.flags)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.files.len()
    }

    /// Number of records indexed.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The end epoch and flags a record was stored with.
    pub fn stored(&self, key: &Key) -> Option<(u32, u8)> {
        self.index.get(key).map(|l| (l.end_epoch, l.flags))
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &D {
        &self.dir
    }
}

mod lifetimes;
mod resume;
