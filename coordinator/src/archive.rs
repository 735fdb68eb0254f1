//! The sweep archive: finished sweeps past their retention, one compact record each, in the
//! artifact store (a folder or an S3 prefix), so etcd and the state file hold live work only.
//!
//! Layout under the store's root:
//!
//! ```text
//! archive/sweeps/<sweep id, 20 digits>.sweep     the record and every trial (below)
//! archive/sweeps/<sweep id, 20 digits>.summary   the sweep's summary as JSON, written last
//! ```
//!
//! A `.sweep` object is `"FLOTSWP1" | u32 trial count | record | trial… | u32 CRC-32`, each
//! record as `u32 length | bytes in the protocol codec`, integers big-endian. Records are
//! read through the same layered decoding as the state store's (`store::legacy`), so an
//! archive written by an older build reads like its etcd keys would. The summary is what
//! `sweep list` shows without reading every sweep's trials; it is written after the record,
//! so a summary's presence means the record is whole. Objects are keyed by sweep id and never
//! change once written, so writing one twice (a leader that died between archiving and
//! deleting the sweep from its store) is harmless.

use std::collections::BTreeMap;

use flotilla_artifacts::ArtifactStore;
use flotilla_protocol::SweepId;
use flotilla_protocol::codec;
use flotilla_protocol::messages::{SweepSummary, TrialRecord};

use crate::store::{StoredSweep, SweepRecord, legacy};

const MAGIC: &[u8; 8] = b"FLOTSWP1";
const FOLDER: &str = "archive/sweeps";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] flotilla_artifacts::ArtifactError),
    #[error("archived sweep {key}: {message}")]
    Corrupt { key: String, message: String },
}

/// Where finished sweeps go after their retention.
#[derive(Debug, Clone)]
pub struct Archive {
    store: ArtifactStore,
}

impl Archive {
    /// The archive in the artifact store at `location` (a folder, `file://…` or `s3://…`).
    pub fn open(location: &str) -> Result<Archive, ArchiveError> {
        Ok(Archive {
            store: ArtifactStore::open(location)?,
        })
    }

    /// Where the archive is, for logs and errors.
    pub fn location(&self) -> String {
        self.store.root().to_string()
    }

    /// Archives one sweep: its record and trials, then its summary. Returns once both are in
    /// the store and the record reads back as written.
    pub async fn write(
        &self,
        sweep: &StoredSweep,
        summary: &SweepSummary,
    ) -> Result<(), ArchiveError> {
        let id = sweep.record.id;
        let key = sweep_key(id);
        let bytes = encode(sweep).map_err(|message| corrupt(&key, message))?;
        self.store.put(&key, bytes.clone()).await?;
        match self.store.read(&key).await? {
            Some(stored) if stored == bytes => {}
            _ => return Err(corrupt(&key, "does not read back as written".into())),
        }
        let summary = serde_json::to_vec(summary)
            .map_err(|error| corrupt(&summary_key(id), error.to_string()))?;
        self.store.put(&summary_key(id), summary).await?;
        Ok(())
    }

    /// An archived sweep with its trials; `None` if the archive does not hold it.
    pub async fn read(&self, id: SweepId) -> Result<Option<StoredSweep>, ArchiveError> {
        let key = sweep_key(id);
        match self.store.read(&key).await? {
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|message| corrupt(&key, message)),
            None => Ok(None),
        }
    }

    /// An archived sweep's summary; `None` if the archive does not hold it (or not whole).
    pub async fn summary(&self, id: SweepId) -> Result<Option<SweepSummary>, ArchiveError> {
        let key = summary_key(id);
        match self.store.read(&key).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| corrupt(&key, error.to_string())),
            None => Ok(None),
        }
    }

    /// The ids of every archived sweep, oldest first.
    pub async fn ids(&self) -> Result<Vec<SweepId>, ArchiveError> {
        let names = self.store.list(FOLDER).await?;
        Ok(names
            .iter()
            .filter_map(|name| name.strip_suffix(".summary"))
            .filter_map(|id| id.parse().ok())
            .map(SweepId)
            .collect())
    }

    /// The summaries of the newest `limit` archived sweeps, by id. A summary that cannot be
    /// read is logged and left out, so one damaged object does not hide the rest.
    pub async fn newest(
        &self,
        limit: usize,
    ) -> Result<BTreeMap<SweepId, SweepSummary>, ArchiveError> {
        let ids = self.ids().await?;
        let mut summaries = BTreeMap::new();
        for id in ids.iter().rev().take(limit) {
            match self.summary(*id).await {
                Ok(Some(summary)) => {
                    summaries.insert(*id, summary);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(sweep = %id, %error, "an archived sweep's summary cannot be read")
                }
            }
        }
        Ok(summaries)
    }
}

fn sweep_key(id: SweepId) -> String {
    format!("{FOLDER}/{:020}.sweep", id.0)
}

fn summary_key(id: SweepId) -> String {
    format!("{FOLDER}/{:020}.summary", id.0)
}

fn corrupt(key: &str, message: String) -> ArchiveError {
    ArchiveError::Corrupt {
        key: key.to_string(),
        message,
    }
}

/// A sweep as one `.sweep` object.
pub fn encode(sweep: &StoredSweep) -> Result<Vec<u8>, String> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&(sweep.trials.len() as u32).to_be_bytes());
    let section = |bytes: &mut Vec<u8>, record: Result<Vec<u8>, codec::CodecError>| {
        let record = record.map_err(|error| error.to_string())?;
        bytes.extend_from_slice(&(record.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&record);
        Ok::<(), String>(())
    };
    section(&mut bytes, codec::encode(&sweep.record))?;
    for trial in sweep.trials.values() {
        section(&mut bytes, codec::encode(trial))?;
    }
    let checksum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&checksum.to_be_bytes());
    Ok(bytes)
}

/// A `.sweep` object read back; the error says what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<StoredSweep, String> {
    let body = bytes
        .len()
        .checked_sub(4)
        .and_then(|end| bytes.get(..end))
        .filter(|body| body.starts_with(MAGIC))
        .ok_or("not an archived sweep (no FLOTSWP1 header)")?;
    let checksum = u32::from_be_bytes(bytes[body.len()..].try_into().map_err(|_| "no checksum")?);
    if crc32fast::hash(body) != checksum {
        return Err("checksum mismatch: the object is damaged".into());
    }
    let (count, mut rest) = body[MAGIC.len()..]
        .split_at_checked(4)
        .ok_or("cut short before the trial count")?;
    let count = u32::from_be_bytes(count.try_into().unwrap_or_default());
    let mut take = |what: &str| -> Result<&[u8], String> {
        let (length, tail) = rest
            .split_at_checked(4)
            .ok_or_else(|| format!("cut short before {what}"))?;
        let length = u32::from_be_bytes(length.try_into().unwrap_or_default()) as usize;
        let (record, tail) = tail
            .split_at_checked(length)
            .ok_or_else(|| format!("cut short in {what}"))?;
        rest = tail;
        Ok(record)
    };
    let record: SweepRecord = legacy::read(take("the sweep record")?)
        .map_err(|error| format!("the sweep record: {error}"))?;
    let mut trials = BTreeMap::new();
    for index in 0..count {
        let trial: TrialRecord =
            legacy::read(take("a trial")?).map_err(|error| format!("trial {index}: {error}"))?;
        trials.insert(trial.id.number, trial);
    }
    Ok(StoredSweep { record, trials })
}

#[cfg(test)]
mod tests {
    use flotilla_protocol::TrialId;
    use flotilla_protocol::messages::{SweepState, TrialState};
    use flotilla_protocol::spec::SweepSpec;

    use super::*;

    fn sample() -> StoredSweep {
        let record = SweepRecord {
            id: SweepId(7),
            spec: SweepSpec::example(),
            seed: 3,
            state: SweepState::Completed,
            created_ms: 1,
            finished_ms: Some(2),
            message: None,
        };
        let trials = (0..3)
            .map(|number| {
                let id = TrialId {
                    sweep: SweepId(7),
                    number,
                };
                let mut trial = TrialRecord::pending(id, Default::default(), 1);
                trial.state = TrialState::Succeeded;
                (number, trial)
            })
            .collect();
        StoredSweep { record, trials }
    }

    #[test]
    fn a_sweep_reads_back_as_archived_and_damage_is_named() {
        let sweep = sample();
        let bytes = encode(&sweep).expect("encodes");
        assert_eq!(decode(&bytes).expect("decodes"), sweep);
        let mut damaged = bytes.clone();
        damaged[20] ^= 0x40;
        assert!(decode(&damaged).expect_err("damaged").contains("checksum"));
        assert!(decode(&bytes[..bytes.len() - 9]).is_err(), "cut short");
        assert!(
            decode(b"not an archive")
                .expect_err("foreign")
                .contains("FLOTSWP1")
        );
    }

    #[tokio::test]
    async fn an_archive_holds_sweeps_and_their_summaries_by_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::open(dir.path().to_str().expect("utf-8")).expect("opens");
        assert_eq!(archive.read(SweepId(7)).await.expect("reads"), None);
        let sweep = sample();
        let summary = SweepSummary {
            id: SweepId(7),
            name: "example".into(),
            state: SweepState::Completed,
            objective_metric: "loss".into(),
            direction: flotilla_protocol::spec::Direction::Minimize,
            max_trials: 3,
            counts: Default::default(),
            best: None,
            created_ms: 1,
            finished_ms: Some(2),
            phases: Vec::new(),
            message: None,
        };
        archive.write(&sweep, &summary).await.expect("archives");
        archive
            .write(&sweep, &summary)
            .await
            .expect("again, harmlessly");
        assert_eq!(archive.read(SweepId(7)).await.expect("reads"), Some(sweep));
        assert_eq!(archive.ids().await.expect("lists"), [SweepId(7)]);
        assert_eq!(
            archive.newest(10).await.expect("newest"),
            BTreeMap::from([(SweepId(7), summary)])
        );
    }
}
