//! The clustered state store: records in etcd, every write fenced by the leader's epoch.
//!
//! Layout under `<prefix>/v1/state/` (the `v1` is the layout's version):
//!
//! ```text
//! sweeps/<sweep id, 20 digits>                    SweepRecord
//! trials/<sweep id, 20 digits>/<number, 10 digits> TrialRecord
//! agents/<agent id>                                AgentRecord (its last registration)
//! cordons/<agent id>                               bool
//! models/<name>/<version>                          ModelVersion
//! rollouts/<rollout id, 20 digits>                 RolloutRecord
//! summaries/<sweep id, 20 digits>                  SweepSummary (of a settled sweep)
//! meta/next-sweep                                  u64: the lowest sweep id not taken
//! ```
//!
//! An archived sweep's record and trials are deleted in one fenced transaction, after the
//! archive holds them (see `crate::archive`).
//!
//! Each value is `[epoch u64 BE][record in the protocol codec]`: the epoch of the leader that
//! wrote it, so a record's author can be checked after the fact.
//!
//! Writes are queued and sent by one writer task, in order. It takes everything queued since
//! its last pass, keeps the newest record per key, and sends them in transactions of at most
//! [`MAX_OPS_PER_TXN`] puts and [`MAX_TXN_BYTES`], each guarded by
//! `create_revision(leader key) == epoch`: once this process is no longer the leader (its
//! election key was deleted with its lease, or replaced by a newer campaign) etcd rejects
//! the transaction. Before sending, the writer also checks the [`Fence`], so a leader that
//! has lost its lease sends nothing at all. The first rejected or failed transaction fails
//! the store for good; the coordinator then steps down (see [`StateStore::failed`]).
//!
//! `load` lists the prefix afresh (linearizable reads, in pages): a new leader trusts what
//! etcd holds now, not a watch it may have missed events on. It reads the trials of running
//! sweeps only; a finished sweep's trials are read when someone asks for that sweep.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use flotilla_protocol::messages::TrialRecord;
use flotilla_protocol::{Epoch, SweepId, codec};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::legacy;
use super::{
    CommitTicket, StateStore, StateWrite, StoreError, StoredState, StoredSweep, SweepRecord,
};
use crate::ha::{EtcdConfig, Fence, Leadership};

/// etcd's default `--max-txn-ops` is 128; one slot goes to the fence comparison.
pub const MAX_OPS_PER_TXN: usize = 120;
/// etcd's default request limit is 1.5 MiB.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;
/// How long one etcd request may take before the store gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Records per page when listing.
const PAGE: i64 = 500;

type Reply = oneshot::Sender<Result<(), StoreError>>;
type Queue = mpsc::UnboundedSender<(Vec<StateWrite>, Reply)>;

pub struct EtcdStore {
    client: Client,
    root: String,
    epoch: Epoch,
    queue: Mutex<Option<Queue>>,
    failure: watch::Receiver<Option<StoreError>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Where a sweep's record lives.
pub fn sweep_key(root: &str, sweep: u64) -> String {
    format!("{root}/state/sweeps/{sweep:020}")
}

/// Where a trial's record lives.
pub fn trial_key(root: &str, sweep: u64, number: u32) -> String {
    format!("{root}/state/trials/{sweep:020}/{number:010}")
}

/// Where an agent's registration lives.
pub fn agent_key(root: &str, agent: &str) -> String {
    format!("{root}/state/agents/{agent}")
}

/// Whether an agent is cordoned (a bool; uncordoning writes false).
pub fn cordon_key(root: &str, agent: &str) -> String {
    format!("{root}/state/cordons/{agent}")
}

/// Where a model version's record lives.
pub fn model_key(root: &str, name: &str, version: &str) -> String {
    format!("{root}/state/models/{name}/{version}")
}

/// Where a settled sweep's summary lives.
pub fn summary_key(root: &str, sweep: u64) -> String {
    format!("{root}/state/summaries/{sweep:020}")
}

/// The lowest sweep id not yet taken (archived sweeps' ids included).
pub fn next_sweep_key(root: &str) -> String {
    format!("{root}/state/meta/next-sweep")
}

/// Where a rollout's record lives.
pub fn rollout_key(root: &str, rollout: u64) -> String {
    format!("{root}/state/rollouts/{rollout:020}")
}

/// A stored value: the writer's epoch, then the record.
pub fn envelope(epoch: Epoch, record: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + record.len());
    value.extend_from_slice(&epoch.0.to_be_bytes());
    value.extend_from_slice(record);
    value
}

/// Splits a stored value into the writer's epoch and the record bytes.
pub fn open_envelope(value: &[u8]) -> Option<(Epoch, &[u8])> {
    let (epoch, record) = value.split_at_checked(8)?;
    let epoch = u64::from_be_bytes(epoch.try_into().ok()?);
    Some((Epoch(epoch), record))
}

impl EtcdStore {
    /// A store that writes as the leader holding `leadership`, while `fence` holds.
    pub fn start(
        client: Client,
        config: &EtcdConfig,
        leadership: &Leadership,
        fence: Arc<Fence>,
    ) -> EtcdStore {
        let root = config.root();
        let epoch = Epoch(leadership.revision as u64);
        let (sender, receiver) = mpsc::unbounded_channel();
        let (failure_sender, failure) = watch::channel(None);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let writer = Writer {
            client: client.clone(),
            root: root.clone(),
            epoch,
            leader_key: leadership.key.clone(),
            fence,
            failure: failure_sender,
        };
        tasks.spawn(writer.run(receiver, stop.clone()));
        tasks.close();
        EtcdStore {
            client,
            root,
            epoch,
            queue: Mutex::new(Some(sender)),
            failure,
            stop,
            tasks,
        }
    }

    /// Stops the writer once it has sent what was queued (or failed).
    pub async fn close(&self) {
        let sender = self.queue.lock().map(|mut queue| queue.take()).ok();
        drop(sender);
        self.tasks.wait().await;
    }

    /// Stops the writer at once; queued writes fail.
    pub async fn abort(&self) {
        self.stop.cancel();
        self.close().await;
    }
}

/// Lists what a leader starts from: every record under the state prefix except the trials
/// of finished sweeps, which stay in etcd until someone asks for that sweep.
pub async fn list(client: &mut Client, root: &str) -> Result<StoredState, StoreError> {
    let mut state = StoredState::default();
    for kind in [
        "sweeps/",
        "agents/",
        "cordons/",
        "models/",
        "rollouts/",
        "meta/",
    ] {
        list_into(client, root, kind, &mut state).await?;
    }
    let running: Vec<u64> = state
        .sweeps
        .values()
        .filter(|sweep| !sweep.is_settled())
        .map(|sweep| sweep.id.0)
        .collect();
    for sweep in running {
        list_into(client, root, &format!("trials/{sweep:020}/"), &mut state).await?;
    }
    Ok(state)
}

/// One sweep's record and all its trials.
pub async fn list_sweep(
    client: &mut Client,
    root: &str,
    sweep: SweepId,
) -> Result<Option<StoredSweep>, StoreError> {
    let mut state = StoredState::default();
    list_into(client, root, &format!("sweeps/{:020}", sweep.0), &mut state).await?;
    list_into(
        client,
        root,
        &format!("trials/{:020}/", sweep.0),
        &mut state,
    )
    .await?;
    Ok(state.sweep(sweep))
}

/// Reads every record whose key starts with `{root}/state/{kind}` into `state`, in pages.
async fn list_into(
    client: &mut Client,
    root: &str,
    kind: &str,
    state: &mut StoredState,
) -> Result<(), StoreError> {
    let base = format!("{root}/state/");
    let prefix = format!("{base}{kind}");
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Ascend);
        let page = get_page(client, &prefix, from.clone(), options).await?;
        for kv in page.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let write =
                decode(&key[base.len()..], kv.value()).map_err(|message| StoreError::Corrupt {
                    path: key.clone(),
                    offset: 0,
                    message,
                })?;
            match write {
                Some(write) => state.apply(write),
                None => tracing::warn!(%key, "ignoring an unknown key under the state prefix"),
            }
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(())
}

/// Reads are tried this many times: with an endpoint down, the client's balancer may send a
/// request to it before it notices, and the next try goes to another member.
const READ_TRIES: u32 = 4;

/// One page of a listing, tried again on a failure (reads change nothing).
async fn get_page(
    client: &mut Client,
    prefix: &str,
    from: Vec<u8>,
    options: GetOptions,
) -> Result<etcd_client::GetResponse, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.get(from.clone(), Some(options.clone())),
        )
        .await;
        let error = match answer {
            Ok(Ok(page)) => return Ok(page),
            Ok(Err(error)) => format!("listing {prefix}: {error}"),
            Err(_) => format!("listing {prefix} timed out"),
        };
        if tries >= READ_TRIES {
            return Err(etcd_error(error));
        }
        tracing::debug!(%error, tries, "an etcd read failed; trying again");
        tokio::time::sleep(Duration::from_millis(50 * u64::from(tries))).await;
    }
}

/// The record stored under `suffix` (the key after `{root}/state/`); `None` for a key this
/// build does not know.
fn decode(suffix: &str, value: &[u8]) -> Result<Option<StateWrite>, String> {
    let (_, record) = open_envelope(value).ok_or("shorter than its header")?;
    let text = |error: flotilla_protocol::codec::CodecError| error.to_string();
    let write = if suffix.starts_with("sweeps/") {
        StateWrite::Sweep(Box::new(legacy::read::<SweepRecord>(record).map_err(text)?))
    } else if suffix.starts_with("trials/") {
        StateWrite::Trial(Box::new(legacy::read::<TrialRecord>(record).map_err(text)?))
    } else if suffix.starts_with("agents/") {
        StateWrite::Agent(Box::new(codec::decode(record).map_err(text)?))
    } else if let Some(agent) = suffix.strip_prefix("cordons/") {
        StateWrite::Cordon {
            agent: flotilla_protocol::AgentId(agent.to_string()),
            cordoned: codec::decode(record).map_err(text)?,
        }
    } else if suffix.starts_with("models/") {
        StateWrite::Model(Box::new(legacy::read(record).map_err(text)?))
    } else if suffix.starts_with("rollouts/") {
        StateWrite::Rollout(Box::new(legacy::read(record).map_err(text)?))
    } else if suffix.starts_with("summaries/") {
        // A summary is a cache of what the trials say: one this build cannot read is left
        // out (and made again from the trials when asked for).
        match codec::decode(record) {
            Ok(summary) => StateWrite::Summary(Box::new(summary)),
            Err(_) => return Ok(None),
        }
    } else if suffix == "meta/next-sweep" {
        StateWrite::SweepIdsFrom(codec::decode(record).map_err(text)?)
    } else {
        return Ok(None);
    };
    Ok(Some(write))
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn etcd_error(message: String) -> StoreError {
    StoreError::Etcd { message }
}

#[async_trait::async_trait]
impl StateStore for EtcdStore {
    async fn load(&self) -> Result<StoredState, StoreError> {
        let mut client = self.client.clone();
        let mut state = list(&mut client, &self.root).await?;
        state.epoch = Some(self.epoch);
        Ok(state)
    }

    async fn sweep(&self, id: SweepId) -> Result<Option<StoredSweep>, StoreError> {
        let mut client = self.client.clone();
        list_sweep(&mut client, &self.root, id).await
    }

    async fn next_epoch(&self) -> Result<Epoch, StoreError> {
        Ok(self.epoch)
    }

    fn write(&self, writes: Vec<StateWrite>) -> CommitTicket {
        let (reply, receiver) = oneshot::channel();
        let queue = self.queue.lock().ok().and_then(|queue| queue.clone());
        match queue {
            Some(queue) => {
                if let Err(mpsc::error::SendError((_, reply))) = queue.send((writes, reply)) {
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

struct Writer {
    client: Client,
    root: String,
    epoch: Epoch,
    leader_key: Vec<u8>,
    fence: Arc<Fence>,
    failure: watch::Sender<Option<StoreError>>,
}

impl Writer {
    async fn run(
        mut self,
        mut receiver: mpsc::UnboundedReceiver<(Vec<StateWrite>, Reply)>,
        stop: CancellationToken,
    ) {
        let mut failed: Option<StoreError> = None;
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => None,
                first = receiver.recv() => first,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while let Ok(more) = receiver.try_recv() {
                batch.push(more);
            }
            let result = match &failed {
                Some(error) => Err(error.clone()),
                None => self.send(batch.iter().flat_map(|(writes, _)| writes)).await,
            };
            if let (Err(error), None) = (&result, &failed) {
                tracing::error!(%error, epoch = %self.epoch, "a state write failed; this leader writes no more");
                failed = Some(error.clone());
                self.failure.send_replace(Some(error.clone()));
            }
            for (_, reply) in batch {
                let _ = reply.send(result.clone());
            }
        }
        receiver.close();
        while let Ok((_, reply)) = receiver.try_recv() {
            let _ = reply.send(Err(StoreError::Closed));
        }
    }

    /// Sends the newest record per key, in fenced transactions, in order: puts queued before
    /// a sweep is forgotten are sent before its keys are deleted.
    async fn send<'a>(
        &mut self,
        writes: impl Iterator<Item = &'a StateWrite>,
    ) -> Result<(), StoreError> {
        let mut newest: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for write in writes {
            let (key, record) = match write {
                StateWrite::Sweep(sweep) => {
                    (sweep_key(&self.root, sweep.id.0), codec::encode(sweep))
                }
                StateWrite::Trial(trial) => (
                    trial_key(&self.root, trial.id.sweep.0, trial.id.number),
                    codec::encode(trial),
                ),
                StateWrite::Agent(agent) => {
                    (agent_key(&self.root, &agent.id.0), codec::encode(agent))
                }
                StateWrite::Cordon { agent, cordoned } => {
                    (cordon_key(&self.root, &agent.0), codec::encode(cordoned))
                }
                StateWrite::Model(model) => (
                    model_key(&self.root, &model.name, &model.version.to_string()),
                    codec::encode(model),
                ),
                StateWrite::Rollout(rollout) => {
                    (rollout_key(&self.root, rollout.id), codec::encode(rollout))
                }
                StateWrite::SweepIdsFrom(next) => (next_sweep_key(&self.root), codec::encode(next)),
                StateWrite::Summary(summary) => (
                    summary_key(&self.root, summary.id.0),
                    codec::encode(summary),
                ),
                StateWrite::ForgetSweep(sweep) => {
                    self.put(std::mem::take(&mut newest)).await?;
                    let trials = format!("{}/state/trials/{:020}/", self.root, sweep.0);
                    let range = DeleteOptions::new().with_range(prefix_end(trials.as_bytes()));
                    self.commit(vec![
                        TxnOp::delete(sweep_key(&self.root, sweep.0), None),
                        TxnOp::delete(summary_key(&self.root, sweep.0), None),
                        TxnOp::delete(trials, Some(range)),
                    ])
                    .await?;
                    continue;
                }
                // The epoch is the election key's revision; nothing to store.
                StateWrite::Epoch(_) => continue,
            };
            let record = record.map_err(|error| etcd_error(format!("encoding {key}: {error}")))?;
            newest.insert(key, envelope(self.epoch, &record));
        }
        self.put(newest).await
    }

    /// Puts the records, as few transactions as etcd's limits allow.
    async fn put(&mut self, records: BTreeMap<String, Vec<u8>>) -> Result<(), StoreError> {
        let mut operations = Vec::new();
        let mut bytes = 0;
        for (key, value) in records {
            if !operations.is_empty()
                && (operations.len() >= MAX_OPS_PER_TXN
                    || bytes + key.len() + value.len() > MAX_TXN_BYTES)
            {
                self.commit(std::mem::take(&mut operations)).await?;
                bytes = 0;
            }
            bytes += key.len() + value.len();
            operations.push(TxnOp::put(key, value, None));
        }
        if !operations.is_empty() {
            self.commit(operations).await?;
        }
        Ok(())
    }

    async fn commit(&mut self, operations: Vec<TxnOp>) -> Result<(), StoreError> {
        if !self.fence.is_valid() {
            return Err(StoreError::Fenced {
                epoch: self.epoch,
                message: "this leader's lease ran out before the write was sent".into(),
            });
        }
        let count = operations.len();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                self.epoch.0 as i64,
            )])
            .and_then(operations);
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.client.txn(txn))
            .await
            .map_err(|_| etcd_error(format!("a transaction of {count} writes timed out")))?
            .map_err(|error| etcd_error(format!("a transaction of {count} writes: {error}")))?;
        if !answer.succeeded() {
            return Err(StoreError::Fenced {
                epoch: self.epoch,
                message: "etcd rejected the write: this coordinator's election key is gone, \
                          a newer leader has taken over"
                    .into(),
            });
        }
        Ok(())
    }
}
