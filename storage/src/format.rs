//! The on-disk format, every offset and size a named constant. `docs/format.md` draws it.
//!
//! A data directory holds segment files `seg-<id as 16 hex digits>.log`. A segment starts with
//! one header block, then *commits*: each commit is a run of records written by one
//! `write_at` + `sync`, starting on a block boundary and zero-padded to the next one. A record is
//! a fixed header and its data; the header's checksum covers the header and the data.

/// Version of everything below; a later floe reads what this one wrote by this number.
pub const FORMAT_VERSION: u16 = 1;

/// Direct I/O granularity: every write starts and ends on a block boundary.
pub const BLOCK_BYTES: usize = 4096;

/// Segment header: magic, version, segment id, checksum; the rest of the block is zero.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FLOESEG\0";
pub const SEGMENT_HEADER_BYTES: usize = BLOCK_BYTES;
pub const SEGMENT_MAGIC_AT: usize = 0;
pub const SEGMENT_VERSION_AT: usize = 8;
pub const SEGMENT_ID_AT: usize = 16;
pub const SEGMENT_CHECKSUM_AT: usize = 24;
/// Bytes of the header covered by its checksum.
pub const SEGMENT_CHECKED_BYTES: usize = SEGMENT_CHECKSUM_AT;

/// A segment is sealed and a new one started once it holds this many bytes. Why: big enough that
/// file counts stay small (a 4 TB disk has 16 k segments), small enough that reclaiming a
/// mostly dead segment rewrites little.
pub const SEGMENT_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Record header layout (little-endian).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"FLR1");
pub const RECORD_MAGIC_AT: usize = 0;
pub const RECORD_KIND_AT: usize = 4;
/// Flag bits ([`FLAG_DELETABLE`]); zero in records written before flags existed, which is
/// why adding them kept [`FORMAT_VERSION`] (a zero flag means what those records meant).
pub const RECORD_FLAGS_AT: usize = 5;
pub const RECORD_SHARD_AT: usize = 6;
pub const RECORD_END_EPOCH_AT: usize = 8;
pub const RECORD_DATA_BYTES_AT: usize = 12;
pub const RECORD_SEQUENCE_AT: usize = 16;
pub const RECORD_BLOB_ID_AT: usize = 24;
pub const RECORD_CHECKSUM_AT: usize = 56;
/// Flag of a metadata record: the blob was stored deletable (it may be deleted with the
/// write token); without it the blob is permanent until its end epoch.
pub const FLAG_DELETABLE: u8 = 1;
/// Truncated blake3: 128 bits detect any accidental corruption with certainty in practice.
pub const RECORD_CHECKSUM_BYTES: usize = 16;
pub const RECORD_HEADER_BYTES: usize = RECORD_CHECKSUM_AT + RECORD_CHECKSUM_BYTES;

/// Largest record data: a primary sliver at n = 4 of the largest blob is 3 * 65534 bytes; at
/// n = 1000 of a 13.6 GB blob 43.7 MB. 64 MiB bounds every sliver floe can produce.
pub const RECORD_DATA_BYTES_MAX: u32 = 64 * 1024 * 1024;

const _: () = assert!(SEGMENT_CHECKSUM_AT + RECORD_CHECKSUM_BYTES <= SEGMENT_HEADER_BYTES);
const _: () = assert!(RECORD_BLOB_ID_AT + 32 == RECORD_CHECKSUM_AT);
const _: () = assert!(RECORD_HEADER_BYTES == 72);
const _: () = assert!(SEGMENT_BYTES_MAX.is_multiple_of(BLOCK_BYTES as u64));

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RecordKind {
    /// A blob's metadata (kept once per node, `shard` is 0).
    Metadata = 1,
    /// The primary sliver of the pair a shard stores.
    Primary = 2,
    /// The secondary sliver of the pair a shard stores.
    Secondary = 3,
    /// Deletes every record of the blob written before it (no data).
    Tombstone = 4,
    /// The index of a sealed segment: one [`FooterEntry`] per record (see [`TRAILER_MAGIC`]).
    Footer = 5,
}

impl RecordKind {
    fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Metadata,
            2 => Self::Primary,
            3 => Self::Secondary,
            4 => Self::Tombstone,
            5 => Self::Footer,
            _ => return None,
        })
    }
}

/// A record header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    /// [`FLAG_DELETABLE`] or 0.
    pub flags: u8,
    pub shard: u16,
    pub end_epoch: u32,
    pub data_bytes: u32,
    pub sequence: u64,
    pub blob_id: [u8; 32],
}

fn checksum(header_prefix: &[u8], data: &[u8]) -> [u8; RECORD_CHECKSUM_BYTES] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(header_prefix);
    hasher.update(data);
    let mut out = [0u8; RECORD_CHECKSUM_BYTES];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..RECORD_CHECKSUM_BYTES]);
    out
}

impl RecordHeader {
    /// Appends the header and `data` to `out`.
    pub fn write(&self, data: &[u8], out: &mut Vec<u8>) {
        assert_eq!(
            data.len(),
            self.data_bytes as usize,
            "header describes its data"
        );
        let start = out.len();
        out.resize(start + RECORD_HEADER_BYTES, 0);
        let h = &mut out[start..];
        h[RECORD_MAGIC_AT..][..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        h[RECORD_KIND_AT] = self.kind as u8;
        h[RECORD_FLAGS_AT] = self.flags;
        h[RECORD_SHARD_AT..][..2].copy_from_slice(&self.shard.to_le_bytes());
        h[RECORD_END_EPOCH_AT..][..4].copy_from_slice(&self.end_epoch.to_le_bytes());
        h[RECORD_DATA_BYTES_AT..][..4].copy_from_slice(&self.data_bytes.to_le_bytes());
        h[RECORD_SEQUENCE_AT..][..8].copy_from_slice(&self.sequence.to_le_bytes());
        h[RECORD_BLOB_ID_AT..][..32].copy_from_slice(&self.blob_id);
        let sum = checksum(&h[..RECORD_CHECKSUM_AT], data);
        h[RECORD_CHECKSUM_AT..][..RECORD_CHECKSUM_BYTES].copy_from_slice(&sum);
        out.extend_from_slice(data);
    }

    /// Parses a header without checking its checksum (which needs the data): `None` when the
    /// bytes are not a record header at all (no magic, unknown kind, impossible length).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < RECORD_HEADER_BYTES {
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if u32_at(RECORD_MAGIC_AT) != RECORD_MAGIC {
            return None;
        }
        let kind = RecordKind::from_u8(bytes[RECORD_KIND_AT])?;
        let data_bytes = u32_at(RECORD_DATA_BYTES_AT);
        if data_bytes > RECORD_DATA_BYTES_MAX {
            return None;
        }
        Some(Self {
            kind,
            flags: bytes[RECORD_FLAGS_AT],
            shard: u16::from_le_bytes([bytes[RECORD_SHARD_AT], bytes[RECORD_SHARD_AT + 1]]),
            end_epoch: u32_at(RECORD_END_EPOCH_AT),
            data_bytes,
            sequence: u64::from_le_bytes(
                bytes[RECORD_SEQUENCE_AT..RECORD_SEQUENCE_AT + 8]
                    .try_into()
                    .expect("8 bytes"),
            ),
            blob_id: bytes[RECORD_BLOB_ID_AT..RECORD_BLOB_ID_AT + 32]
                .try_into()
                .expect("32 bytes"),
        })
    }

    /// Does `record` (header then data) carry a valid checksum?
    pub fn checksum_holds(record: &[u8]) -> bool {
        let mut stream = ChecksumStream::default();
        stream.update(record);
        stream.holds(record)
    }

    /// Bytes of the whole record.
    pub fn record_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.data_bytes as usize
    }
}

/// A record's checksum computed piece by piece, in order, as the pieces arrive: the same hash
/// as [`RecordHeader::checksum_holds`] (blake3 of the header up to the checksum, then the
/// data), so a large record can be checked while the rest of it is still being read.
#[derive(Default)]
pub struct ChecksumStream {
    hasher: blake3::Hasher,
    /// Bytes of the record fed so far.
    at: usize,
}

impl ChecksumStream {
    /// Feeds the record's next bytes.
    pub fn update(&mut self, piece: &[u8]) {
        let (start, end) = (self.at, self.at + piece.len());
        if start < RECORD_CHECKSUM_AT {
            self.hasher
                .update(&piece[..end.min(RECORD_CHECKSUM_AT) - start]);
        }
        if end > RECORD_HEADER_BYTES {
            self.hasher
                .update(&piece[start.max(RECORD_HEADER_BYTES) - start..]);
        }
        self.at = end;
    }

    /// Whether what was fed matches the checksum in `header` (the record's first bytes).
    pub fn holds(&self, header: &[u8]) -> bool {
        self.at >= RECORD_HEADER_BYTES
            && header.len() >= RECORD_HEADER_BYTES
            && self.hasher.finalize().as_bytes()[..RECORD_CHECKSUM_BYTES]
                == header[RECORD_CHECKSUM_AT..RECORD_HEADER_BYTES]
    }
}

/// The header block of segment `id`.
pub fn segment_header(id: u64) -> Vec<u8> {
    let mut block = vec![0u8; SEGMENT_HEADER_BYTES];
    block[SEGMENT_MAGIC_AT..][..8].copy_from_slice(&SEGMENT_MAGIC);
    block[SEGMENT_VERSION_AT..][..2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    block[SEGMENT_ID_AT..][..8].copy_from_slice(&id.to_le_bytes());
    let sum = blake3::hash(&block[..SEGMENT_CHECKED_BYTES]);
    block[SEGMENT_CHECKSUM_AT..][..RECORD_CHECKSUM_BYTES]
        .copy_from_slice(&sum.as_bytes()[..RECORD_CHECKSUM_BYTES]);
    block
}

/// Checks a segment header block: `Ok(id)`, or why not.
pub fn parse_segment_header(block: &[u8]) -> Result<u64, String> {
    if block.len() < SEGMENT_HEADER_BYTES || block[..8] != SEGMENT_MAGIC {
        return Err("not a floe segment (bad magic)".into());
    }
    let sum = blake3::hash(&block[..SEGMENT_CHECKED_BYTES]);
    if block[SEGMENT_CHECKSUM_AT..][..RECORD_CHECKSUM_BYTES]
        != sum.as_bytes()[..RECORD_CHECKSUM_BYTES]
    {
        return Err("segment header checksum mismatch".into());
    }
    let version = u16::from_le_bytes([block[SEGMENT_VERSION_AT], block[SEGMENT_VERSION_AT + 1]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "segment format version {version}, this floe reads {FORMAT_VERSION}"
        ));
    }
    Ok(u64::from_le_bytes(
        block[SEGMENT_ID_AT..SEGMENT_ID_AT + 8]
            .try_into()
            .expect("8 bytes"),
    ))
}

/// One record of a sealed segment, as listed in its footer, so that opening the store reads
/// the footers instead of every record. Layout (64 bytes): kind u8 @0, flags u8 @1, shard u16 @2, end epoch
/// u32 @4, data bytes u32 @8, sequence u64 @16, offset u64 @24, blob ID @32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FooterEntry {
    pub header: RecordHeader,
    /// Where the record starts in its segment.
    pub offset: u64,
}

pub const FOOTER_ENTRY_BYTES: usize = 64;

impl FooterEntry {
    pub fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + FOOTER_ENTRY_BYTES, 0);
        let e = &mut out[start..];
        let h = &self.header;
        e[0] = h.kind as u8;
        e[1] = h.flags;
        e[2..4].copy_from_slice(&h.shard.to_le_bytes());
        e[4..8].copy_from_slice(&h.end_epoch.to_le_bytes());
        e[8..12].copy_from_slice(&h.data_bytes.to_le_bytes());
        e[16..24].copy_from_slice(&h.sequence.to_le_bytes());
        e[24..32].copy_from_slice(&self.offset.to_le_bytes());
        e[32..64].copy_from_slice(&h.blob_id);
    }

    pub fn parse(e: &[u8]) -> Option<Self> {
        let kind = RecordKind::from_u8(e[0])?;
        Some(Self {
            header: RecordHeader {
                kind,
                flags: e[1],
                shard: u16::from_le_bytes([e[2], e[3]]),
                end_epoch: u32::from_le_bytes(e[4..8].try_into().expect("4 bytes")),
                data_bytes: u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")),
                sequence: u64::from_le_bytes(e[16..24].try_into().expect("8 bytes")),
                blob_id: e[32..64].try_into().expect("32 bytes"),
            },
            offset: u64::from_le_bytes(e[24..32].try_into().expect("8 bytes")),
        })
    }
}

/// The last block of a sealed segment: where its footer record is.
pub const TRAILER_MAGIC: [u8; 8] = *b"FLOEEND\0";
pub const TRAILER_BYTES: usize = BLOCK_BYTES;
pub const TRAILER_FOOTER_AT_AT: usize = 8;
pub const TRAILER_FOOTER_BYTES_AT: usize = 16;
pub const TRAILER_CHECKSUM_AT: usize = 24;

/// The trailer block pointing at a footer record of `footer_bytes` bytes at `footer_at`.
pub fn trailer(footer_at: u64, footer_bytes: u64) -> Vec<u8> {
    let mut block = vec![0u8; TRAILER_BYTES];
    block[..8].copy_from_slice(&TRAILER_MAGIC);
    block[TRAILER_FOOTER_AT_AT..][..8].copy_from_slice(&footer_at.to_le_bytes());
    block[TRAILER_FOOTER_BYTES_AT..][..8].copy_from_slice(&footer_bytes.to_le_bytes());
    let sum = blake3::hash(&block[..TRAILER_CHECKSUM_AT]);
    block[TRAILER_CHECKSUM_AT..][..RECORD_CHECKSUM_BYTES]
        .copy_from_slice(&sum.as_bytes()[..RECORD_CHECKSUM_BYTES]);
    block
}

/// `(footer_at, footer_bytes)` of a valid trailer block.
pub fn parse_trailer(block: &[u8]) -> Option<(u64, u64)> {
    if block.len() != TRAILER_BYTES || block[..8] != TRAILER_MAGIC {
        return None;
    }
    let sum = blake3::hash(&block[..TRAILER_CHECKSUM_AT]);
    if block[TRAILER_CHECKSUM_AT..][..RECORD_CHECKSUM_BYTES]
        != sum.as_bytes()[..RECORD_CHECKSUM_BYTES]
    {
        return None;
    }
    let at = |i: usize| u64::from_le_bytes(block[i..i + 8].try_into().expect("8 bytes"));
    Some((at(TRAILER_FOOTER_AT_AT), at(TRAILER_FOOTER_BYTES_AT)))
}

/// File name of segment `id`.
pub fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}.log")
}

/// Segment id of a file name, if it is a segment's.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_any_flip_breaks_the_checksum() {
        let header = RecordHeader {
            kind: RecordKind::Metadata,
            flags: FLAG_DELETABLE,
            shard: 7,
            end_epoch: 9,
            data_bytes: 5,
            sequence: 42,
            blob_id: [3; 32],
        };
        let mut out = Vec::new();
        header.write(b"hello", &mut out);
        assert_eq!(RecordHeader::parse(&out), Some(header));
        // Fed in pieces of any size, the stream agrees.
        for piece in [1, 7, 56, 60, 72, 76] {
            let mut stream = ChecksumStream::default();
            out.chunks(piece).for_each(|p| stream.update(p));
            assert!(stream.holds(&out), "pieces of {piece}");
        }
        let mut entry = Vec::new();
        FooterEntry {
            header,
            offset: 8192,
        }
        .write(&mut entry);
        assert_eq!(
            FooterEntry::parse(&entry),
            Some(FooterEntry {
                header,
                offset: 8192
            })
        );
        assert!(RecordHeader::checksum_holds(&out));
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!RecordHeader::checksum_holds(&bad), "bit {bit}");
        }
    }

    #[test]
    fn segment_headers_and_names() {
        assert_eq!(parse_segment_header(&segment_header(77)), Ok(77));
        let mut bad = segment_header(77);
        bad[SEGMENT_ID_AT] ^= 1;
        assert!(parse_segment_header(&bad).is_err());
        assert_eq!(parse_segment_name(&segment_name(0xabc)), Some(0xabc));
        assert_eq!(parse_segment_name("seg-xyz.log"), None);
    }
}
