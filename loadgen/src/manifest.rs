//! The manifest `prepare` writes and runs read: which blobs were stored, how large, and how
//! to check their bytes.

use std::path::Path;

use anyhow::{bail, Context, Result};
use floe_codec::BlobId;
use serde::{Deserialize, Serialize};

use crate::content;

pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`FORMAT`]; a later loadgen refuses what it does not understand.
    pub format: u32,
    pub created_unix_seconds: u64,
    /// The node the data set was stored through.
    pub target: String,
    pub n_shards: u16,
    /// Content of blob `i` is [`content::key`]`(seed, "blob", i)`'s stream.
    pub seed: u64,
    pub epochs: u32,
    pub blobs: Vec<ManifestBlob>,
    /// The bucket of the node's S3 API that names each blob `blob-NNNNNNNN` (`prepare --s3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestBlob {
    pub index: u64,
    pub blob_id: String,
    pub size: u64,
    /// blake3 of the whole content, hex.
    pub blake3: String,
}

/// A manifest entry ready for requests.
#[derive(Clone, Debug)]
pub struct Blob {
    pub id: BlobId,
    /// `/v1/blobs/{id}`.
    pub path: String,
    pub size: u64,
    pub key: [u8; 32],
    pub blake3: blake3::Hash,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the manifest {}", path.display()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a loadgen manifest", path.display()))?;
        if manifest.format != FORMAT {
            bail!(
                "{} has manifest format {}; this loadgen reads format {FORMAT}",
                path.display(),
                manifest.format
            );
        }
        if manifest.blobs.is_empty() {
            bail!("{} lists no blobs", path.display());
        }
        Ok(manifest)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text + "\n")
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
    }

    /// The blobs with parsed IDs and content keys.
    pub fn blobs(&self) -> Result<Vec<Blob>> {
        self.blobs
            .iter()
            .map(|b| {
                let id: BlobId = b
                    .blob_id
                    .parse()
                    .with_context(|| format!("manifest blob {}: blob ID {}", b.index, b.blob_id))?;
                let blake3 = blake3::Hash::from_hex(&b.blake3)
                    .with_context(|| format!("manifest blob {}: checksum {}", b.index, b.blake3))?;
                Ok(Blob {
                    path: format!("/v1/blobs/{id}"),
                    id,
                    size: b.size,
                    key: content::key(self.seed, "blob", b.index),
                    blake3,
                })
            })
            .collect()
    }
}
