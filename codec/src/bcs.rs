//! BCS encodings of metadata and slivers in Walrus's wire layout.
//!
//! Metadata: `0x00` (version V1) || `0x01` (RS2) || u64 length || ULEB(n) ||
//! n * (`0x01` || 32 bytes || `0x01` || 32 bytes). Sliver: ULEB(len) || data || u16 symbol size ||
//! u16 sliver index. All integers little-endian.
//!
//! Decoding never trusts a declared length: every count is checked against the bytes that remain
//! (and against the code's limits) before anything is allocated, so a 5-byte body cannot make
//! the decoder reserve gigabytes.

use crate::config::EncodingConfig;
use crate::error::BcsError;
use crate::merkle::MerkleProof;
use crate::metadata::{BlobMetadata, SliverPairHashes, ENCODING_TYPE_RS2};
use crate::recovery::RecoverySymbol;
use crate::sliver::{Sliver, SliverKind};

/// Version tag of the metadata enum (`BlobMetadata::V1`).
pub const METADATA_VERSION_V1: u8 = 0x00;
/// Tag of `MerkleNode::Digest`.
const MERKLE_NODE_DIGEST: u8 = 0x01;
/// Bytes of one encoded hash pair: two tagged 32-byte digests.
const PAIR_WIRE_BYTES: usize = 2 * (1 + 32);
/// Longest ULEB128 encoding of a u32 (BCS lengths are at most u32::MAX).
const ULEB_BYTES_MAX: usize = 5;

/// Bytes of `value` as ULEB128.
pub fn uleb128_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

fn put_uleb(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Encodes metadata in Walrus's BCS layout.
pub fn encode_metadata(metadata: &BlobMetadata) -> Vec<u8> {
    let n = metadata.n_shards();
    let mut out = Vec::with_capacity(2 + 8 + uleb128_len(n as u64) + n * PAIR_WIRE_BYTES);
    out.push(METADATA_VERSION_V1);
    out.push(ENCODING_TYPE_RS2);
    out.extend_from_slice(&metadata.blob_bytes().to_le_bytes());
    put_uleb(&mut out, n as u64);
    for pair in metadata.pair_hashes() {
        out.push(MERKLE_NODE_DIGEST);
        out.extend_from_slice(&pair.primary);
        out.push(MERKLE_NODE_DIGEST);
        out.extend_from_slice(&pair.secondary);
    }
    out
}

/// Encodes a sliver in Walrus's BCS layout (the kind is not part of the body).
pub fn encode_sliver(sliver: &Sliver) -> Vec<u8> {
    encode_sliver_parts(&sliver.data, sliver.symbol_bytes, sliver.index)
}

/// [`encode_sliver`] from borrowed data: one copy, straight into the body.
pub(crate) fn encode_sliver_parts(data: &[u8], symbol_bytes: u16, index: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(uleb128_len(data.len() as u64) + data.len() + 4);
    put_uleb(&mut out, data.len() as u64);
    out.extend_from_slice(data);
    out.extend_from_slice(&symbol_bytes.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out
}

/// A cursor over an untrusted body.
struct Reader<'a> {
    body: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize, what: &'static str) -> Result<&'a [u8], BcsError> {
        let remaining = self.body.len() - self.offset;
        if count > remaining {
            return Err(BcsError::Truncated {
                what,
                offset: self.body.len(),
            });
        }
        let bytes = &self.body[self.offset..self.offset + count];
        self.offset += count;
        Ok(bytes)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, BcsError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, BcsError> {
        let bytes = self.take(2, what)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, BcsError> {
        let bytes = self.take(8, what)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("took 8 bytes")))
    }

    /// A canonical ULEB128 value that fits u32, as BCS requires of lengths.
    fn uleb(&mut self, what: &'static str) -> Result<u64, BcsError> {
        let start = self.offset;
        let mut value = 0u64;
        for i in 0..ULEB_BYTES_MAX {
            let byte = self.u8(what)?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                // Canonical: no redundant trailing zero group, and within u32.
                if (i > 0 && byte == 0) || value > u64::from(u32::MAX) {
                    return Err(BcsError::BadLength { offset: start });
                }
                return Ok(value);
            }
        }
        Err(BcsError::BadLength { offset: start })
    }

    fn remaining(&self) -> usize {
        self.body.len() - self.offset
    }

    fn finish(self) -> Result<(), BcsError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(BcsError::TrailingBytes { count }),
        }
    }

    fn digest(&mut self) -> Result<[u8; 32], BcsError> {
        let tag = self.u8("Merkle node tag")?;
        if tag != MERKLE_NODE_DIGEST {
            return Err(BcsError::UnknownTag {
                what: "Merkle node (only Digest is valid in metadata)",
                tag: tag.into(),
            });
        }
        Ok(self
            .take(32, "Merkle digest")?
            .try_into()
            .expect("took 32 bytes"))
    }
}

/// Decodes metadata from Walrus's BCS layout; the whole body must be consumed.
///
/// The result is well-formed, not verified: check it with [`BlobMetadata::verify`].
pub fn decode_metadata(body: &[u8]) -> Result<BlobMetadata, BcsError> {
    let mut reader = Reader { body, offset: 0 };
    let version = reader.u8("metadata version")?;
    if version != METADATA_VERSION_V1 {
        return Err(BcsError::UnknownTag {
            what: "metadata version",
            tag: version.into(),
        });
    }
    let encoding = reader.u8("encoding type")?;
    if encoding != ENCODING_TYPE_RS2 {
        return Err(BcsError::UnknownTag {
            what: "encoding type (only RS2 is supported)",
            tag: encoding.into(),
        });
    }
    let blob_bytes = reader.u64("unencoded length")?;
    let n = reader.uleb("number of hash pairs")?;
    let config = EncodingConfig::from_count(n).map_err(|e| BcsError::Invalid(e.to_string()))?;
    config
        .layout(blob_bytes)
        .map_err(|e| BcsError::Invalid(e.to_string()))?;
    let n = config.n_shards();
    if n * PAIR_WIRE_BYTES > reader.remaining() {
        return Err(BcsError::LengthExceedsBody {
            what: "hash pairs",
            declared: (n * PAIR_WIRE_BYTES) as u64,
            available: reader.remaining(),
        });
    }
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let primary = reader.digest()?;
        let secondary = reader.digest()?;
        pairs.push(SliverPairHashes { primary, secondary });
    }
    reader.finish()?;
    Ok(BlobMetadata::new(blob_bytes, pairs))
}

/// Decodes a sliver of `kind` from Walrus's BCS layout; the whole body must be consumed.
///
/// The result is well-formed, not verified: check it against the metadata.
pub fn decode_sliver(kind: SliverKind, body: &[u8]) -> Result<Sliver, BcsError> {
    let header = sliver_header(body)?;
    Ok(Sliver {
        kind,
        index: header.index,
        symbol_bytes: header.symbol_bytes,
        data: body[header.data].to_vec(),
    })
}

/// Where a BCS sliver's data lies in its body, with its symbol size and index: what
/// [`decode_sliver`] checks, without copying the data out (a reader slices its own buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliverHeader {
    pub data: std::ops::Range<usize>,
    pub symbol_bytes: u16,
    pub index: u16,
}

/// Parses and checks a BCS sliver body; the whole body must be consumed.
pub fn sliver_header(body: &[u8]) -> Result<SliverHeader, BcsError> {
    let mut reader = Reader { body, offset: 0 };
    let len = reader.uleb("sliver length")?;
    // The two u16 fields follow the data.
    let available = reader.remaining().saturating_sub(4);
    if len > available as u64 {
        return Err(BcsError::LengthExceedsBody {
            what: "sliver data",
            declared: len,
            available,
        });
    }
    let start = reader.offset;
    reader.take(len as usize, "sliver data")?;
    let data = start..reader.offset;
    let symbol_bytes = reader.u16("symbol size")?;
    let index = reader.u16("sliver index")?;
    reader.finish()?;
    if symbol_bytes == 0 || symbol_bytes % 2 == 1 {
        return Err(BcsError::Invalid(format!(
            "symbol size {symbol_bytes} must be even and non-zero"
        )));
    }
    if data.len() % usize::from(symbol_bytes) != 0 {
        return Err(BcsError::Invalid(format!(
            "sliver of {} bytes is not a whole number of {symbol_bytes}-byte symbols",
            data.len()
        )));
    }
    Ok(SliverHeader {
        data,
        symbol_bytes,
        index,
    })
}

/// One sliver in a batch (floe's peer API, `PUT|GET /v1/blobs/{id}/slivers`): its pair, kind and
/// where its BCS body lies in the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchEntry {
    pub pair: u16,
    pub kind: SliverKind,
    pub body: std::ops::Range<usize>,
}

/// Smallest encoding of one batch entry: pair, kind, ULEB length and the smallest sliver body.
const BATCH_ENTRY_WIRE_BYTES_MIN: usize = 2 + 1 + 1 + 5;

fn kind_tag(kind: SliverKind) -> u8 {
    match kind {
        SliverKind::Primary => 0,
        SliverKind::Secondary => 1,
    }
}

fn tag_kind(tag: u8) -> Result<SliverKind, BcsError> {
    match tag {
        0 => Ok(SliverKind::Primary),
        1 => Ok(SliverKind::Secondary),
        other => Err(BcsError::UnknownTag {
            what: "sliver kind",
            tag: other.into(),
        }),
    }
}

/// The most bytes [`encode_metadata`] writes for a committee of `n_shards`: version, encoding
/// type, length, ULEB(n) and `n` pairs of tagged 32-byte hashes. What a node accepts as a
/// metadata body and what a client reads of a peer's metadata answer.
pub fn metadata_bcs_bytes_max(n_shards: usize) -> usize {
    2 + 8 + 10 + n_shards * 66
}

/// The most bytes [`encode_sliver`] writes for a sliver of `symbols` symbols of
/// `symbol_bytes` each: the symbols' ULEB length, the data, symbol size and index.
pub fn sliver_bcs_bytes_max(symbols: usize, symbol_bytes: usize) -> usize {
    10 + symbols * symbol_bytes + 4
}

/// The most bytes [`encode_sliver_batch`] writes for `slivers` slivers whose BCS bodies are
/// at most `sliver_bcs_bytes` each.
pub fn sliver_batch_bytes_max(slivers: usize, sliver_bcs_bytes: usize) -> usize {
    10 + slivers * (3 + 10 + sliver_bcs_bytes)
}

/// The most bytes one symbol of `symbol_bytes` takes in [`encode_recovery_symbols`]: kind and
/// indices, the symbol, and a Merkle proof for the largest committee.
pub fn recovery_symbol_bytes_max(symbol_bytes: usize) -> usize {
    5 + 10 + symbol_bytes + 10 + PROOF_SIBLINGS_MAX as usize * 32
}

/// Encodes a batch of BCS sliver bodies: ULEB(count), then per sliver: u16 pair || u8 kind
/// (0 primary, 1 secondary) || ULEB(len) || the sliver's BCS body.
pub fn encode_sliver_batch<'a>(
    entries: impl IntoIterator<Item = (u16, SliverKind, &'a [u8])>,
) -> Vec<u8> {
    let entries: Vec<_> = entries.into_iter().collect();
    let bytes: usize = entries.iter().map(|(_, _, b)| 8 + b.len()).sum();
    let mut out = Vec::with_capacity(5 + bytes);
    put_uleb(&mut out, entries.len() as u64);
    for (pair, kind, body) in entries {
        out.extend_from_slice(&pair.to_le_bytes());
        out.push(kind_tag(kind));
        put_uleb(&mut out, body.len() as u64);
        out.extend_from_slice(body);
    }
    out
}

/// Decodes a batch made by [`encode_sliver_batch`]; the whole body must be consumed. Each
/// entry's sliver body is checked with [`sliver_header`] (well-formed, not verified).
pub fn decode_sliver_batch(body: &[u8]) -> Result<Vec<BatchEntry>, BcsError> {
    let mut reader = Reader { body, offset: 0 };
    let count = reader.uleb("batch count")?;
    let most = (reader.remaining() / BATCH_ENTRY_WIRE_BYTES_MIN) as u64;
    if count > most {
        return Err(BcsError::LengthExceedsBody {
            what: "batch entries",
            declared: count,
            available: most as usize,
        });
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let pair = reader.u16("batch pair index")?;
        let kind = tag_kind(reader.u8("batch sliver kind")?)?;
        let len = reader.uleb("batch sliver length")?;
        let start = reader.offset;
        let sliver = reader.take(len as usize, "batch sliver")?;
        sliver_header(sliver)?;
        entries.push(BatchEntry {
            pair,
            kind,
            body: start..reader.offset,
        });
    }
    reader.finish()?;
    Ok(entries)
}

/// Smallest encoding of one recovery symbol: kind, two u16 indices, two ULEB lengths, an empty
/// symbol and proof. Bounds the count a body can declare.
const RECOVERY_SYMBOL_WIRE_BYTES_MIN: usize = 1 + 2 + 2 + 1 + 1;
/// Longest Merkle proof: a tree over at most 4096 leaves has 12 levels below the root.
const PROOF_SIBLINGS_MAX: u64 = 12;

/// Encodes recovery symbols (floe's peer API, `GET .../recoverySymbols`): ULEB(count), then
/// per symbol: u8 source kind (0 primary, 1 secondary) || u16 source index || u16 target index
/// || ULEB(len) || symbol || ULEB(siblings) || siblings * 32 bytes.
pub fn encode_recovery_symbols(symbols: &[RecoverySymbol]) -> Vec<u8> {
    let mut out = Vec::new();
    put_uleb(&mut out, symbols.len() as u64);
    for symbol in symbols {
        out.push(kind_tag(symbol.source_kind));
        out.extend_from_slice(&(symbol.source_index as u16).to_le_bytes());
        out.extend_from_slice(&(symbol.target_index as u16).to_le_bytes());
        put_uleb(&mut out, symbol.data.len() as u64);
        out.extend_from_slice(&symbol.data);
        put_uleb(&mut out, symbol.proof.siblings.len() as u64);
        for sibling in &symbol.proof.siblings {
            out.extend_from_slice(sibling);
        }
    }
    out
}

/// Decodes recovery symbols written by [`encode_recovery_symbols`]; the whole body must be
/// consumed. The symbols are well-formed, not verified: check each with
/// [`RecoverySymbol::verify`] (which [`crate::recover_sliver`] does).
pub fn decode_recovery_symbols(body: &[u8]) -> Result<Vec<RecoverySymbol>, BcsError> {
    let mut reader = Reader { body, offset: 0 };
    let count = reader.uleb("symbol count")?;
    if count > (reader.remaining() / RECOVERY_SYMBOL_WIRE_BYTES_MIN) as u64 {
        return Err(BcsError::LengthExceedsBody {
            what: "recovery symbols",
            declared: count,
            available: reader.remaining(),
        });
    }
    let mut symbols = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let source_kind = tag_kind(reader.u8("source kind")?)?;
        let source_index = reader.u16("source index")?.into();
        let target_index = reader.u16("target index")?.into();
        let len = reader.uleb("symbol length")?;
        if len > reader.remaining() as u64 {
            return Err(BcsError::LengthExceedsBody {
                what: "symbol",
                declared: len,
                available: reader.remaining(),
            });
        }
        let data = reader.take(len as usize, "symbol")?.to_vec();
        let siblings = reader.uleb("proof length")?;
        if siblings > PROOF_SIBLINGS_MAX {
            return Err(BcsError::Invalid(format!(
                "a proof of {siblings} siblings is longer than any tree of at most 4096 leaves"
            )));
        }
        let siblings = (0..siblings)
            .map(|_| {
                reader
                    .take(32, "proof sibling")
                    .map(|b| b.try_into().expect("took 32 bytes"))
            })
            .collect::<Result<Vec<[u8; 32]>, _>>()?;
        symbols.push(RecoverySymbol {
            source_kind,
            source_index,
            target_index,
            data,
            proof: MerkleProof { siblings },
        });
    }
    reader.finish()?;
    Ok(symbols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode;

    #[test]
    fn size_bounds_hold_for_what_is_encoded() {
        for n in [4u16, 10, 100, 1000] {
            let config = EncodingConfig::new(n).unwrap();
            let encoded = encode(&config, &[3u8; 70_000]).unwrap();
            let layout = *encoded.layout();
            let n = usize::from(n);
            assert!(encode_metadata(encoded.metadata()).len() <= metadata_bcs_bytes_max(n));
            let mut bodies = Vec::new();
            for (kind, index) in [(SliverKind::Primary, 0), (SliverKind::Secondary, n - 1)] {
                let body = encoded.sliver_bcs(kind, index);
                let bound = sliver_bcs_bytes_max(kind.n_symbols(&layout), layout.symbol_bytes);
                assert!(body.len() <= bound, "{kind} at n = {n}");
                bodies.push((0u16, kind, body));
            }
            let biggest = bodies.iter().map(|b| b.2.len()).max().unwrap();
            let batch = encode_sliver_batch(bodies.iter().map(|(p, k, b)| (*p, *k, &b[..])));
            assert!(batch.len() <= sliver_batch_bytes_max(2, biggest));
            let expanded = crate::ExpandedSliver::new(
                encoded.metadata(),
                &layout,
                SliverKind::Primary,
                0,
                encoded.primary_sliver(0),
            )
            .unwrap();
            let symbol = expanded.recovery_symbol(n - 1);
            let one = encode_recovery_symbols(&[symbol]);
            assert!(one.len() <= 10 + recovery_symbol_bytes_max(layout.symbol_bytes));
        }
    }

    #[test]
    fn recovery_symbols_round_trip_and_reject_bad_bodies() {
        let config = EncodingConfig::new(10).unwrap();
        let encoded = encode(&config, &[7u8; 500]).unwrap();
        let layout = *encoded.layout();
        let symbols: Vec<RecoverySymbol> = (0..3)
            .map(|j| {
                crate::ExpandedSliver::new(
                    encoded.metadata(),
                    &layout,
                    SliverKind::Secondary,
                    j,
                    encoded.secondary_sliver(j),
                )
                .unwrap()
                .recovery_symbol(5)
            })
            .collect();
        let body = encode_recovery_symbols(&symbols);
        assert_eq!(decode_recovery_symbols(&body).unwrap(), symbols);
        for cut in 0..body.len() {
            assert!(
                decode_recovery_symbols(&body[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(decode_recovery_symbols(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn sliver_batches_round_trip_and_reject_bad_bodies() {
        let config = EncodingConfig::new(10).unwrap();
        let encoded = encode(&config, &[9u8; 300]).unwrap();
        let bodies: Vec<(u16, SliverKind, Vec<u8>)> =
            [(1u16, SliverKind::Primary), (8, SliverKind::Secondary)]
                .iter()
                .map(|&(pair, kind)| {
                    let index = match kind {
                        SliverKind::Primary => pair.into(),
                        SliverKind::Secondary => 9 - usize::from(pair),
                    };
                    (pair, kind, encode_sliver(&encoded.to_sliver(kind, index)))
                })
                .collect();
        let batch = encode_sliver_batch(bodies.iter().map(|(p, k, b)| (*p, *k, b.as_slice())));
        for (pair, kind, body) in &bodies {
            let index = decode_sliver(*kind, body).unwrap().index;
            assert_eq!(
                &encoded.sliver_bcs(*kind, index.into()),
                body,
                "pair {pair}"
            );
        }
        let entries = decode_sliver_batch(&batch).unwrap();
        assert_eq!(entries.len(), 2);
        for (entry, (pair, kind, body)) in entries.iter().zip(&bodies) {
            assert_eq!((entry.pair, entry.kind), (*pair, *kind));
            assert_eq!(&batch[entry.body.clone()], body.as_slice());
        }
        assert!(decode_sliver_batch(&encode_sliver_batch([]))
            .unwrap()
            .is_empty());
        for cut in 0..batch.len() {
            assert!(decode_sliver_batch(&batch[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_kind = batch.clone();
        bad_kind[3] = 7;
        assert!(decode_sliver_batch(&bad_kind).is_err());
        assert!(decode_sliver_batch(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn metadata_and_slivers_round_trip() {
        let config = EncodingConfig::new(7).unwrap();
        let encoded = encode(&config, b"hello floe").unwrap();
        let body = encode_metadata(encoded.metadata());
        assert_eq!(body.len(), 2 + 8 + 1 + 7 * 66);
        assert_eq!(&body[..2], &[0x00, 0x01]);
        assert_eq!(decode_metadata(&body).unwrap(), *encoded.metadata());
        for kind in [SliverKind::Primary, SliverKind::Secondary] {
            let sliver = encoded.to_sliver(kind, 3);
            let body = encode_sliver(&sliver);
            assert_eq!(decode_sliver(kind, &body).unwrap(), sliver);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let config = EncodingConfig::new(4).unwrap();
        let encoded = encode(&config, b"x").unwrap();
        let body = encode_metadata(encoded.metadata());
        for cut in 0..body.len() {
            assert!(decode_metadata(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = body.clone();
        long.push(0);
        assert!(matches!(
            decode_metadata(&long),
            Err(BcsError::TrailingBytes { count: 1 })
        ));
        let sliver = encode_sliver(&encoded.to_sliver(SliverKind::Primary, 0));
        for cut in 0..sliver.len() {
            assert!(
                decode_sliver(SliverKind::Primary, &sliver[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn huge_declared_lengths_fail_before_allocating() {
        // A 5-byte ULEB length of u32::MAX with nothing behind it.
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode_sliver(SliverKind::Primary, &body),
            Err(BcsError::LengthExceedsBody { .. })
        ));
        // Metadata claiming 4096 pairs in a short body.
        let mut body = vec![0x00, 0x01];
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&[0x80, 0x20]);
        assert!(matches!(
            decode_metadata(&body),
            Err(BcsError::LengthExceedsBody { .. })
        ));
        // Non-canonical and overlong ULEB.
        assert!(decode_sliver(SliverKind::Primary, &[0x80, 0x00, 0, 0, 0, 0]).is_err());
        assert!(decode_sliver(SliverKind::Primary, &[0xff; 10]).is_err());
    }
}
