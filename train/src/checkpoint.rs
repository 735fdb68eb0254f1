//! Checkpoint files and the artifact store they live in.
//!
//! A checkpoint is one object, never overwritten, named
//! `checkpoints/<trial>/a<attempt>-s<step>-<nonce>.ckpt` under the store's root, so two
//! attempts (or a deposed one still running somewhere) can never clobber each other. Which
//! checkpoint is a trial's latest is decided by the coordinator
//! ([`flotilla_protocol::messages::CheckpointRef::may_replace`]).
//!
//! # File layout
//!
//! ```text
//! "FLOTCKPT" | u32 format | u32 header length | header (JSON)
//!            | u64 model length | model record | u64 optimizer length | optimizer record
//!            | u32 CRC-32 of everything before it
//! ```
//! All integers little-endian. The records are burn's named MessagePack at full precision.

use serde::{Deserialize, Serialize};

use flotilla_protocol::messages::Params;

const MAGIC: &[u8; 8] = b"FLOTCKPT";
const FORMAT: u32 = 1;
/// Refuse absurd lengths before allocating (a checkpoint is a few MB for the seeds' models).
const MAX_SECTION_BYTES: u64 = 8 << 30;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("artifact store '{location}': {message}")]
    Store { location: String, message: String },
    #[error("checkpoint {uri}: {message}")]
    Corrupt { uri: String, message: String },
    #[error("checkpoint {uri} does not fit this trial: {message}")]
    Mismatch { uri: String, message: String },
    #[error(
        "artifact {uri} is not the one recorded: its SHA-256 is {actual}, expected {expected} \
         (corrupted or replaced); refusing to load it"
    )]
    DigestMismatch {
        uri: String,
        expected: String,
        actual: String,
    },
}

/// Where training is in its schedule: the next batch to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// 0: masked pre-training, 1: training.
    pub phase: u8,
    /// Epoch within the phase, from 0.
    pub epoch: u32,
    /// Next batch within the epoch.
    pub batch: u64,
}

/// Everything but the weights and optimizer moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    pub trainer: String,
    pub trial: String,
    pub attempt: u32,
    /// The hyperparameters the trial runs with (search point and settings); a resume
    /// refuses a checkpoint written with different ones.
    pub hyperparameters: Params,
    pub position: Position,
    /// Optimizer steps taken since the trial began.
    pub step: u64,
    /// Completed training epochs (pre-training not counted).
    pub epochs_done: u32,
    /// The random streams' seed (see [`crate::rng`]); with `position` it is the RNG state.
    pub seed: u64,
    /// Partial sums of the running epoch, so its reported loss is exact after a resume.
    pub epoch_loss_sum: f64,
    pub epoch_samples: u64,
    /// Model-specific facts inference needs (shapes, standardisation, class weights).
    pub model: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointFile {
    pub header: CheckpointHeader,
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
}

impl CheckpointFile {
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let mut out =
            Vec::with_capacity(32 + header.len() + self.model.len() + self.optimizer.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.model.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.model);
        out.extend_from_slice(&(self.optimizer.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.optimizer);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and verifies a checkpoint; `uri` names it in errors.
    pub fn decode(bytes: &[u8], uri: &str) -> Result<CheckpointFile, CheckpointError> {
        let corrupt = |message: String| CheckpointError::Corrupt {
            uri: uri.to_string(),
            message,
        };
        if bytes.len() < MAGIC.len() + 12 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a Flotilla checkpoint (bad magic)".into()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_le_bytes(crc.try_into().map_err(|_| corrupt("truncated".into()))?);
        if crc32fast::hash(body) != crc {
            return Err(corrupt("checksum mismatch (truncated or damaged)".into()));
        }
        let mut cursor = Cursor {
            bytes: body,
            at: MAGIC.len(),
        };
        let format = cursor.u32().ok_or_else(|| corrupt("truncated".into()))?;
        if format != FORMAT {
            return Err(corrupt(format!(
                "format {format}, this build reads {FORMAT}"
            )));
        }
        let header_len = cursor.u32().ok_or_else(|| corrupt("truncated".into()))?;
        let header = cursor
            .take(u64::from(header_len))
            .ok_or_else(|| corrupt("truncated header".into()))?;
        let header: CheckpointHeader =
            serde_json::from_slice(header).map_err(|error| corrupt(format!("header: {error}")))?;
        let model_len = cursor.u64().ok_or_else(|| corrupt("truncated".into()))?;
        let model = cursor
            .take(model_len)
            .ok_or_else(|| corrupt("truncated model record".into()))?
            .to_vec();
        let optimizer_len = cursor.u64().ok_or_else(|| corrupt("truncated".into()))?;
        let optimizer = cursor
            .take(optimizer_len)
            .ok_or_else(|| corrupt("truncated optimizer record".into()))?
            .to_vec();
        if cursor.at != body.len() {
            return Err(corrupt("trailing bytes".into()));
        }
        Ok(CheckpointFile {
            header,
            model,
            optimizer,
        })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: u64) -> Option<&'a [u8]> {
        if len > MAX_SECTION_BYTES {
            return None;
        }
        let end = self.at.checked_add(usize::try_from(len).ok()?)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

pub use flotilla_artifacts::ArtifactStore;

impl From<flotilla_artifacts::ArtifactError> for CheckpointError {
    fn from(error: flotilla_artifacts::ArtifactError) -> CheckpointError {
        CheckpointError::Store {
            location: error.location,
            message: error.message,
        }
    }
}

/// Reads a checkpoint object by URI.
pub async fn fetch(uri: &str) -> Result<Vec<u8>, CheckpointError> {
    Ok(flotilla_artifacts::fetch(uri).await?)
}

/// SHA-256 of `bytes` in lowercase hex: the digest a model version records of its artifact.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Checks `bytes`, read from `uri`, against the SHA-256 they were recorded with.
pub fn verify_sha256(uri: &str, bytes: &[u8], expected: &str) -> Result<(), CheckpointError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(CheckpointError::DigestMismatch {
            uri: uri.to_string(),
            expected: expected.trim().to_ascii_lowercase(),
            actual,
        })
    }
}

/// Reads an artifact by URI and checks it against its recorded SHA-256.
pub async fn fetch_verified(uri: &str, sha256: &str) -> Result<Vec<u8>, CheckpointError> {
    let bytes = fetch(uri).await?;
    verify_sha256(uri, &bytes, sha256)?;
    Ok(bytes)
}

/// The key of a new checkpoint object: unique per write, ordered by attempt and step.
/// `extension` tells the kinds apart: `ckpt` for a built-in trainer's checkpoint file, `tar`
/// for a command trial's committed directory.
pub fn checkpoint_key(trial: &str, attempt: u32, step: u64, extension: &str) -> String {
    let nonce: u64 = rand::random();
    format!("checkpoints/{trial}/a{attempt:04}-s{step:010}-{nonce:016x}.{extension}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckpointFile {
        CheckpointFile {
            header: CheckpointHeader {
                trainer: "lstm_classifier".into(),
                trial: "s1-t0".into(),
                attempt: 2,
                hyperparameters: Params::new(),
                position: Position {
                    phase: 1,
                    epoch: 3,
                    batch: 7,
                },
                step: 99,
                epochs_done: 3,
                seed: 5,
                epoch_loss_sum: 1.5,
                epoch_samples: 70,
                model: serde_json::json!({"hidden": 8}),
            },
            model: vec![1, 2, 3],
            optimizer: vec![4, 5],
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let file = sample();
        let bytes = file.encode();
        assert_eq!(CheckpointFile::decode(&bytes, "x").expect("decodes"), file);
        for cut in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(CheckpointFile::decode(&bytes[..cut], "x").is_err());
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        let error = CheckpointFile::decode(&flipped, "x").expect_err("damage is seen");
        assert!(error.to_string().contains("checksum"), "{error}");
    }

    #[tokio::test]
    async fn objects_are_written_once_under_unique_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::open(dir.path().to_str().expect("utf-8")).expect("store");
        let key = checkpoint_key("s1-t0", 0, 10, "ckpt");
        let uri = store.put_new(&key, vec![1, 2, 3]).await.expect("put");
        assert!(uri.starts_with("file:///"), "{uri}");
        assert_eq!(fetch(&uri).await.expect("fetch"), vec![1, 2, 3]);
        // The same name is never written twice.
        assert!(store.put_new(&key, vec![9]).await.is_err());
        assert_eq!(fetch(&uri).await.expect("fetch"), vec![1, 2, 3]);
        assert_ne!(key, checkpoint_key("s1-t0", 0, 10, "ckpt"));
    }
}
