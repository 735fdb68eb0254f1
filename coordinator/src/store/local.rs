//! The embedded state store: one append-only file, crash-safe.
//!
//! Each record is `[length u32 BE][crc32 u32 BE][payload]`, the payload being a
//! [`StateWrite`] in the protocol codec. A writer thread owns the file: it takes every write
//! queued since its last pass, appends them, `fdatasync`s once, and resolves their tickets
//! (group commit). On open, the file is replayed; a torn or corrupt tail (a crash in the
//! middle of an append) is cut off at the last whole record, which loses only writes whose
//! tickets never resolved. When the log holds many superseded (or archived) records — on
//! open, and while running — it is compacted by writing the live records to a new file and
//! renaming it over the old one, so the file tracks what is stored, not its history.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use flotilla_protocol::{Epoch, codec};
use tokio::sync::oneshot;

use flotilla_protocol::SweepId;

use super::{CommitTicket, StateStore, StateWrite, StoreError, StoredState, StoredSweep};

type Reply = oneshot::Sender<Result<(), StoreError>>;
type Queue = mpsc::Sender<(Vec<StateWrite>, Reply)>;

pub struct LocalStore {
    path: PathBuf,
    /// What the file holds: as of open, then updated by the writer after each durable batch.
    current: Arc<Mutex<StoredState>>,
    /// Queue to the writer thread; `None` after shutdown.
    queue: Mutex<Option<Queue>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    next_epoch: Mutex<u64>,
    /// Set once by the writer when a write fails; every later write fails too.
    failure: tokio::sync::watch::Receiver<Option<StoreError>>,
}

impl LocalStore {
    /// Opens (or creates) the state file at `path`, replaying and, if worthwhile, compacting it.
    pub fn open(path: &Path) -> Result<LocalStore, StoreError> {
        let io_error = |error: std::io::Error| StoreError::Io {
            path: path.display().to_string(),
            message: error.to_string(),
        };
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        let (loaded, valid_length, records) = replay(path)?;
        let (file, records) = if worth_compacting(records, &loaded, false) {
            let file = compact(path, &loaded).map_err(io_error)?;
            (file, loaded.record_count())
        } else {
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)
                .map_err(io_error)?;
            // Cut a torn tail so new records follow the last whole one.
            file.set_len(valid_length).map_err(io_error)?;
            (file, records)
        };
        let (sender, receiver) = mpsc::channel();
        let (failure_sender, failure) = tokio::sync::watch::channel(None);
        let next_epoch = loaded.epoch.map_or(1, |epoch| epoch.0 + 1);
        let current = Arc::new(Mutex::new(loaded));
        let log = Log {
            file,
            path: path.to_path_buf(),
            records,
            state: current.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("flotilla-state-writer".into())
            .spawn(move || write_loop(log, receiver, &failure_sender))
            .map_err(io_error)?;
        Ok(LocalStore {
            path: path.to_path_buf(),
            current,
            queue: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            next_epoch: Mutex::new(next_epoch),
            failure,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer after it has written everything queued.
    pub fn close(&self) {
        let sender = self
            .queue
            .lock()
            .map(|mut queue| queue.take())
            .unwrap_or(None);
        drop(sender);
        let writer = self
            .writer
            .lock()
            .map(|mut writer| writer.take())
            .unwrap_or(None);
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait::async_trait]
impl StateStore for LocalStore {
    async fn load(&self) -> Result<StoredState, StoreError> {
        let current = self.current.lock().map_err(|_| StoreError::Closed)?;
        Ok(current.live())
    }

    async fn sweep(&self, id: SweepId) -> Result<Option<StoredSweep>, StoreError> {
        let current = self.current.lock().map_err(|_| StoreError::Closed)?;
        Ok(current.sweep(id))
    }

    async fn next_epoch(&self) -> Result<Epoch, StoreError> {
        let epoch = {
            let mut next = self.next_epoch.lock().map_err(|_| StoreError::Closed)?;
            let epoch = Epoch(*next);
            *next += 1;
            epoch
        };
        self.write(vec![StateWrite::Epoch(epoch)]).durable().await?;
        Ok(epoch)
    }

    fn write(&self, writes: Vec<StateWrite>) -> CommitTicket {
        let (reply, receiver) = oneshot::channel();
        let queue = self.queue.lock().ok().and_then(|queue| queue.clone());
        match queue {
            Some(queue) => {
                if let Err(mpsc::SendError((_, reply))) = queue.send((writes, reply)) {
                    let _ = reply.send(Err(StoreError::Closed));
                }
            }
            None => {
                let _ = reply.send(Err(StoreError::Closed));
            }
        }
        CommitTicket::new(receiver)
    }

    async fn failed(&self) -> StoreError {
        super::first_failure(self.failure.clone()).await
    }
}

/// The open file and what it holds, owned by the writer thread.
struct Log {
    file: File,
    path: PathBuf,
    /// Records in the file, superseded ones included.
    records: usize,
    /// What the records describe, shared with the store's readers.
    state: Arc<Mutex<StoredState>>,
}

/// Whether a file of `records` records holding `state` is worth rewriting: half of it is
/// superseded, and it is not tiny or a sweep just left it (archived sweeps leave the file
/// soon, not only once it grows).
fn worth_compacting(records: usize, state: &StoredState, forgot: bool) -> bool {
    records > state.record_count() * 2 && (forgot || records > 64)
}

impl Log {
    /// Appends the batch and syncs once.
    fn append(
        &mut self,
        batch: &[(Vec<StateWrite>, Reply)],
        buffer: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        buffer.clear();
        let mut appended = 0;
        for (writes, _) in batch {
            for write in writes {
                append_record(buffer, write)?;
                appended += 1;
            }
        }
        if buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(buffer)
            .and_then(|()| self.file.sync_data())
            .map_err(|error| self.io_error(&error))?;
        self.records += appended;
        let mut state = self.state.lock().map_err(|_| StoreError::Closed)?;
        let mut forgot = false;
        for (writes, _) in batch {
            for write in writes {
                forgot |= matches!(write, StateWrite::ForgetSweep(_));
                state.apply(write.clone());
            }
        }
        if worth_compacting(self.records, &state, forgot) {
            self.file = compact(&self.path, &state).map_err(|error| self.io_error(&error))?;
            self.records = state.record_count();
            tracing::debug!(path = %self.path.display(), records = self.records, "state file compacted");
        }
        Ok(())
    }

    fn io_error(&self, error: &std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            message: error.to_string(),
        }
    }
}

fn write_loop(
    mut log: Log,
    receiver: mpsc::Receiver<(Vec<StateWrite>, Reply)>,
    failure: &tokio::sync::watch::Sender<Option<StoreError>>,
) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    // After a failed write nothing more is written: later records must not land after a gap.
    let mut failed: Option<StoreError> = None;
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while let Ok(more) = receiver.try_recv() {
            batch.push(more);
        }
        if let Some(error) = &failed {
            for (_, reply) in batch {
                let _ = reply.send(Err(error.clone()));
            }
            continue;
        }
        let result = log.append(&batch, &mut buffer);
        if let Err(error) = &result {
            tracing::error!(path = %log.path.display(), %error, "a state write failed; the store accepts no more writes");
            failed = Some(error.clone());
            failure.send_replace(Some(error.clone()));
        }
        for (_, reply) in batch {
            let _ = reply.send(result.clone());
        }
    }
}

fn append_record(buffer: &mut Vec<u8>, write: &StateWrite) -> Result<(), StoreError> {
    let payload = codec::encode(write).map_err(|error| StoreError::Io {
        path: String::new(),
        message: error.to_string(),
    })?;
    buffer.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buffer.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    buffer.extend_from_slice(&payload);
    Ok(())
}

/// Replays the file: the state, the length of its whole records, and how many there were.
fn replay(path: &Path) -> Result<(StoredState, u64, usize), StoreError> {
    let mut state = StoredState::default();
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes)
                .map_err(|error| StoreError::Io {
                    path: path.display().to_string(),
                    message: error.to_string(),
                })?;
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((state, 0, 0)),
        Err(error) => {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                message: error.to_string(),
            });
        }
    }
    let mut offset = 0usize;
    let mut records = 0usize;
    while bytes.len() - offset >= 8 {
        let length =
            u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap_or_default()) as usize;
        if length > codec::MAX_FRAME_BYTES {
            // No record is ever this long: a damaged length field, not a torn append.
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                offset: offset as u64,
                message: format!(
                    "record length {length} exceeds the {} byte limit",
                    codec::MAX_FRAME_BYTES
                ),
            });
        }
        let checksum =
            u32::from_be_bytes(bytes[offset + 4..offset + 8].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(offset + 8..offset + 8 + length) else {
            break;
        };
        if crc32fast::hash(payload) != checksum {
            // A record whose checksum fails in the middle of the file is corruption, not a
            // torn append: refuse to guess.
            if offset + 8 + length < bytes.len() {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: offset as u64,
                    message: "checksum mismatch before the end of the file".into(),
                });
            }
            break;
        }
        let write: StateWrite =
            super::legacy::read(payload).map_err(|error| StoreError::Corrupt {
                path: path.display().to_string(),
                offset: offset as u64,
                message: error.to_string(),
            })?;
        state.apply(write);
        offset += 8 + length;
        records += 1;
    }
    if offset < bytes.len() {
        // Most likely an append cut short by a crash (its writes were never acknowledged).
        // The bytes are kept beside the file all the same, in case they are something else.
        let kept = path.with_extension(format!("torn-{offset}"));
        std::fs::write(&kept, &bytes[offset..]).map_err(|error| StoreError::Io {
            path: kept.display().to_string(),
            message: error.to_string(),
        })?;
        tracing::warn!(path = %path.display(), kept = offset, dropped = bytes.len() - offset, saved_to = %kept.display(), "cutting a torn tail off the state file");
    }
    Ok((state, offset as u64, records))
}

fn compact(path: &Path, state: &StoredState) -> std::io::Result<File> {
    let temporary = path.with_extension("compacting");
    let mut buffer = Vec::new();
    for write in state.to_writes() {
        append_record(&mut buffer, &write)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
    }
    {
        let mut file = File::create(&temporary)?;
        file.write_all(&buffer)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        File::open(parent)?.sync_all()?;
    }
    OpenOptions::new().read(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_protocol::messages::{TrialRecord, TrialState};
    use flotilla_protocol::{SweepId, TrialId};

    use super::*;

    fn trial(number: u32, state: TrialState) -> StateWrite {
        StateWrite::Trial(Box::new(TrialRecord {
            state,
            ..TrialRecord::pending(
                TrialId {
                    sweep: SweepId(1),
                    number,
                },
                BTreeMap::new(),
                0,
            )
        }))
    }

    fn agent(slots: u32) -> StateWrite {
        StateWrite::Agent(Box::new(super::super::AgentRecord {
            id: flotilla_protocol::AgentId("gpu-1".into()),
            hostname: "h".into(),
            slots,
            gpus: 1,
            version: "0.1.0".into(),
            registered_ms: 1,
        }))
    }

    #[tokio::test]
    async fn writes_survive_reopen_and_last_write_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.log");
        {
            let store = LocalStore::open(&path).expect("open");
            assert_eq!(store.next_epoch().await.expect("epoch"), Epoch(1));
            store.write(vec![
                trial(0, TrialState::Pending),
                trial(1, TrialState::Pending),
                agent(4),
            ]);
            let cordon = |agent: &str, cordoned| StateWrite::Cordon {
                agent: flotilla_protocol::AgentId(agent.into()),
                cordoned,
            };
            store
                .write(vec![
                    trial(0, TrialState::Succeeded),
                    agent(8),
                    cordon("gpu-1", true),
                    cordon("gpu-2", true),
                    cordon("gpu-2", false),
                ])
                .durable()
                .await
                .expect("durable");
        }
        let store = LocalStore::open(&path).expect("reopen");
        let state = store.load().await.expect("load");
        assert_eq!(state.trials[&SweepId(1)][&0].state, TrialState::Succeeded);
        assert_eq!(state.trials[&SweepId(1)].len(), 2);
        let agents: Vec<_> = state.agents.values().collect();
        assert_eq!(agents.len(), 1, "{agents:?}");
        assert_eq!(agents[0].slots, 8, "the newest registration wins");
        let cordoned: Vec<&str> = state.cordoned.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(cordoned, ["gpu-1"], "an uncordon undoes a cordon");
        assert_eq!(store.next_epoch().await.expect("epoch"), Epoch(2));
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_writing_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.log");
        {
            let store = LocalStore::open(&path).expect("open");
            store
                .write(vec![trial(0, TrialState::Pending)])
                .durable()
                .await
                .expect("durable");
        }
        let whole = std::fs::metadata(&path).expect("meta").len();
        let mut file = OpenOptions::new().append(true).open(&path).expect("append");
        file.write_all(&[0, 0, 0, 40, 1, 2, 3]).expect("torn write");
        drop(file);
        {
            let store = LocalStore::open(&path).expect("reopen with torn tail");
            assert_eq!(std::fs::metadata(&path).expect("meta").len(), whole);
            let saved = path.with_extension(format!("torn-{whole}"));
            assert_eq!(
                std::fs::read(&saved).expect("the cut bytes are kept"),
                [0, 0, 0, 40, 1, 2, 3]
            );
            store
                .write(vec![trial(1, TrialState::Pending)])
                .durable()
                .await
                .expect("durable");
        }
        let store = LocalStore::open(&path).expect("reopen");
        assert_eq!(
            store.load().await.expect("load").trials[&SweepId(1)].len(),
            2
        );
    }

    fn sweep(state: flotilla_protocol::messages::SweepState) -> StateWrite {
        StateWrite::Sweep(Box::new(super::super::SweepRecord {
            id: SweepId(1),
            spec: flotilla_protocol::spec::SweepSpec::example(),
            seed: 0,
            state,
            created_ms: 1,
            finished_ms: state.is_final().then_some(2),
            message: None,
        }))
    }

    /// A leader loads a running sweep's trials, not a settled one's (read on demand); a
    /// forgotten (archived) sweep leaves the file, and its id stays taken across reopening.
    #[tokio::test]
    async fn settled_trials_load_on_demand_and_a_forgotten_sweep_leaves_the_file() {
        use flotilla_protocol::messages::SweepState;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.log");
        let store = LocalStore::open(&path).expect("open");
        store.write(vec![
            sweep(SweepState::Running),
            trial(0, TrialState::Running),
        ]);
        store.flush().await.expect("flush");
        assert_eq!(
            store.load().await.expect("load").trials[&SweepId(1)].len(),
            1
        );
        store.write(vec![
            sweep(SweepState::Completed),
            trial(0, TrialState::Succeeded),
        ]);
        store.flush().await.expect("flush");
        let loaded = store.load().await.expect("load");
        assert!(loaded.sweeps.contains_key(&SweepId(1)));
        assert!(
            !loaded.trials.contains_key(&SweepId(1)),
            "settled: trials on demand"
        );
        let read = store
            .sweep(SweepId(1))
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(read.trials[&0].state, TrialState::Succeeded);
        store
            .write(vec![
                StateWrite::SweepIdsFrom(2),
                StateWrite::ForgetSweep(SweepId(1)),
            ])
            .durable()
            .await
            .expect("durable");
        assert_eq!(store.sweep(SweepId(1)).await.expect("read"), None);
        let bytes = std::fs::read(&path).expect("read");
        let name = SweepSpecName::of();
        assert!(
            !bytes.windows(name.len()).any(|window| window == name),
            "the file was compacted without the sweep"
        );
        store.close();
        drop(store);
        let store = LocalStore::open(&path).expect("reopen");
        let loaded = store.load().await.expect("load");
        assert!(loaded.sweeps.is_empty());
        assert_eq!(loaded.next_sweep, 2, "sweep 1's id is not handed out again");
    }

    /// The example spec's name, as it appears in a stored record.
    struct SweepSpecName;

    impl SweepSpecName {
        fn of() -> Vec<u8> {
            flotilla_protocol::spec::SweepSpec::example()
                .name
                .into_bytes()
        }
    }

    #[tokio::test]
    async fn corruption_in_the_middle_is_refused_and_compaction_keeps_live_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.log");
        let one_record = {
            let path = dir.path().join("one.log");
            let store = LocalStore::open(&path).expect("open");
            store.write(vec![trial(0, TrialState::Running)]);
            store.flush().await.expect("flush");
            std::fs::metadata(&path).expect("meta").len()
        };
        {
            let store = LocalStore::open(&path).expect("open");
            for round in 0..100 {
                let state = if round == 99 {
                    TrialState::Succeeded
                } else {
                    TrialState::Running
                };
                store.write(vec![trial(0, state), trial(1, TrialState::Pending)]);
            }
            store.flush().await.expect("flush");
        }
        // 200 records were written; the file was compacted as it went.
        let size = std::fs::metadata(&path).expect("meta").len();
        assert!(
            size < 200 * one_record / 10,
            "{size} bytes after 200 records of {one_record}"
        );
        {
            let store = LocalStore::open(&path).expect("reopen");
            assert_eq!(
                store.load().await.expect("load").trials[&SweepId(1)][&0].state,
                TrialState::Succeeded
            );
        }
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[10] ^= 0xff;
        bytes.extend_from_slice(&bytes.clone());
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            LocalStore::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn a_damaged_length_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.log");
        {
            let store = LocalStore::open(&path).expect("open");
            store.write(vec![trial(0, TrialState::Pending)]);
            store
                .write(vec![trial(1, TrialState::Pending)])
                .durable()
                .await
                .expect("durable");
        }
        let mut bytes = std::fs::read(&path).expect("read");
        let length = bytes.len();
        // The first record's length now claims far more than the file holds.
        bytes[0] = 0x7f;
        std::fs::write(&path, &bytes).expect("write");
        let error = LocalStore::open(&path).err().expect("refused");
        assert!(
            matches!(error, StoreError::Corrupt { offset: 0, .. }),
            "{error}"
        );
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len() as usize,
            length,
            "nothing was cut"
        );
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_later_write_and_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.log");
        let store = LocalStore::open(&path).expect("open");
        // A record over the codec's limit cannot be written.
        let mut huge = trial(0, TrialState::Pending);
        if let StateWrite::Trial(record) = &mut huge {
            record.message = Some("x".repeat(codec::MAX_FRAME_BYTES + 1));
        }
        assert!(store.write(vec![huge]).durable().await.is_err());
        assert!(
            store
                .write(vec![trial(1, TrialState::Pending)])
                .durable()
                .await
                .is_err(),
            "no write may land after a lost one"
        );
        let failure = tokio::time::timeout(std::time::Duration::from_secs(5), store.failed())
            .await
            .expect("the failure is reported");
        assert!(failure.to_string().contains("limit"), "{failure}");
    }
}
