//! The bytes loadgen stores: a keyed blake3 output stream per blob.
//!
//! blake3's extendable output can start at any offset, so a run checks a range read of any
//! blob against the expected bytes without keeping the data set anywhere: the manifest holds
//! only the seed, each blob's index and its whole-content checksum.

/// The key of blob `index` of the data set made from `seed`.
pub fn key(seed: u64, stream: &str, index: u64) -> [u8; 32] {
    let mut material = Vec::with_capacity(16 + stream.len());
    material.extend_from_slice(&seed.to_le_bytes());
    material.extend_from_slice(&index.to_le_bytes());
    material.extend_from_slice(stream.as_bytes());
    blake3::derive_key("floe-loadgen content v1", &material)
}

/// Fills `buf` with the content bytes at `offset..offset + buf.len()`.
pub fn fill(key: &[u8; 32], offset: u64, buf: &mut [u8]) {
    let mut reader = blake3::Hasher::new_keyed(key).finalize_xof();
    reader.set_position(offset);
    reader.fill(buf);
}

/// The content from an offset on, in order, a buffer at a time: how stores send a blob of any
/// size without holding it (memory: the caller's buffer).
pub struct Stream {
    reader: blake3::OutputReader,
}

impl Stream {
    pub fn new(key: &[u8; 32], offset: u64) -> Self {
        let mut reader = blake3::Hasher::new_keyed(key).finalize_xof();
        reader.set_position(offset);
        Self { reader }
    }

    /// Fills `buf` with the next `buf.len()` bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        self.reader.fill(buf);
    }
}

/// Checks streamed bytes against the content from a starting offset, one chunk at a time
/// (memory: one chunk's worth of expected bytes, whatever the body's length).
pub struct Checker {
    stream: Stream,
    scratch: Vec<u8>,
    pub mismatch: bool,
}

impl Checker {
    pub fn new(key: &[u8; 32], offset: u64) -> Self {
        Self {
            stream: Stream::new(key, offset),
            scratch: Vec::new(),
            mismatch: false,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        if self.mismatch {
            return;
        }
        self.scratch.resize(chunk.len(), 0);
        self.stream.fill(&mut self.scratch);
        if self.scratch != chunk {
            self.mismatch = true;
        }
    }
}

/// The whole-content checksum the manifest records (blake3, hex).
pub fn checksum(key: &[u8; 32], len: u64) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < len {
        let take = (len - offset).min(chunk.len() as u64) as usize;
        fill(key, offset, &mut chunk[..take]);
        hasher.update(&chunk[..take]);
        offset += take as u64;
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_range_equals_the_same_bytes_of_the_whole() {
        let key = key(7, "blob", 3);
        let mut whole = vec![0u8; 10_000];
        fill(&key, 0, &mut whole);
        for (start, len) in [(0, 1), (1, 63), (64, 1000), (4095, 2), (9_999, 1)] {
            let mut part = vec![0u8; len];
            fill(&key, start as u64, &mut part);
            assert_eq!(part, whole[start..start + len]);
            let mut checker = Checker::new(&key, start as u64);
            checker.update(&whole[start..start + len]);
            assert!(!checker.mismatch);
        }
        let mut checker = Checker::new(&key, 5);
        let mut wrong = whole[5..50].to_vec();
        wrong[20] ^= 1;
        checker.update(&wrong);
        assert!(checker.mismatch);
        assert_ne!(key, super::key(7, "blob", 4));
        assert_eq!(
            checksum(&key, 10_000),
            blake3::hash(&whole).to_hex().to_string()
        );
        // A stream read in uneven pieces gives the same bytes as one fill.
        let mut stream = Stream::new(&key, 100);
        let mut pieces = vec![0u8; 9_900];
        let (a, rest) = pieces.split_at_mut(1);
        let (b, c) = rest.split_at_mut(4_000);
        stream.fill(a);
        stream.fill(b);
        stream.fill(c);
        assert_eq!(pieces, whole[100..]);
    }
}
