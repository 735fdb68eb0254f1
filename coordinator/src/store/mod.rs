//! Control state: sweeps and trials, behind one [`StateStore`] trait.
//!
//! Writes are *puts* of whole records (last write wins per key), handed to the store
//! without waiting; each write returns a [`CommitTicket`] that resolves once the write is
//! durable. A store applies writes in the order it receives them, so waiting for the
//! newest ticket (or [`StateStore::flush`]) means every earlier write is durable too.
//! This lets the Sweep actor keep scheduling while the store batches many writes into one
//! `fsync` (group commit).
//!
//! Implementations: [`local::LocalStore`] (one crash-safe file, the embedded default) and
//! [`etcd::EtcdStore`] (clustered; every write fenced by the leader's epoch).

pub mod etcd;
pub mod legacy;
pub mod local;

use std::collections::BTreeMap;

use flotilla_protocol::messages::{SweepState, SweepSummary, TrialRecord};
use flotilla_protocol::models::{ModelVersion, RolloutRecord, SemVer};
use flotilla_protocol::spec::SweepSpec;
use flotilla_protocol::{AgentId, Epoch, SweepId};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// A sweep as stored: its spec and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    pub id: SweepId,
    pub spec: SweepSpec,
    /// The sampler seed actually used (the spec's, or one chosen at submission).
    pub seed: u64,
    pub state: SweepState,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    /// Why a sweep whose actor failed was stopped (protocol 13); `None` otherwise.
    pub message: Option<String>,
}

impl SweepRecord {
    /// Final and finished: nothing about it changes any more (a cancelled sweep whose
    /// trials are still stopping is final but not yet settled).
    pub fn is_settled(&self) -> bool {
        self.state.is_final() && self.finished_ms.is_some()
    }
}

/// An agent as it last registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: AgentId,
    pub hostname: String,
    pub slots: u32,
    pub gpus: u32,
    pub version: String,
    /// Unix milliseconds of the registration.
    pub registered_ms: u64,
}

/// One record to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StateWrite {
    Sweep(Box<SweepRecord>),
    Trial(Box<TrialRecord>),
    /// The newest leader epoch handed out.
    Epoch(Epoch),
    /// An agent registration (appended last: older state files still decode).
    Agent(Box<AgentRecord>),
    /// An operator cordoned (or drained) an agent, or uncordoned it: kept across restarts
    /// and leader changes. Appended last.
    Cordon {
        agent: AgentId,
        cordoned: bool,
    },
    /// A registered model version, as it is now (stage changes rewrite it). Appended last.
    Model(Box<ModelVersion>),
    /// A canary rollout, as it is now (every decision rewrites it). Appended last.
    Rollout(Box<RolloutRecord>),
    /// The sweep was archived: its record and its trials leave the store. Appended last.
    ForgetSweep(SweepId),
    /// Sweep ids below this one are taken (by stored or archived sweeps), so a new sweep
    /// never reuses an archived sweep's id. Appended last.
    SweepIdsFrom(u64),
    /// A settled sweep's summary, so listings need not read its trials. Appended last.
    Summary(Box<SweepSummary>),
}

/// Everything a coordinator needs to resume.
#[derive(Debug, Clone, Default)]
pub struct StoredState {
    pub epoch: Option<Epoch>,
    pub sweeps: BTreeMap<SweepId, SweepRecord>,
    /// Trials of each sweep, indexed by trial number.
    pub trials: BTreeMap<SweepId, BTreeMap<u32, TrialRecord>>,
    /// Every agent that ever registered, as it last did.
    pub agents: BTreeMap<AgentId, AgentRecord>,
    /// Agents that take no new trials until an operator uncordons them.
    pub cordoned: std::collections::BTreeSet<AgentId>,
    /// Registered model versions by name and version.
    pub models: BTreeMap<(String, SemVer), ModelVersion>,
    /// Canary rollouts by id.
    pub rollouts: BTreeMap<u64, RolloutRecord>,
    /// The lowest sweep id no sweep, stored or archived, has had.
    pub next_sweep: u64,
    /// Settled sweeps' summaries (written when they settle).
    pub summaries: BTreeMap<SweepId, SweepSummary>,
}

impl StoredState {
    pub fn apply(&mut self, write: StateWrite) {
        match write {
            StateWrite::Sweep(sweep) => {
                self.next_sweep = self.next_sweep.max(sweep.id.0 + 1);
                self.sweeps.insert(sweep.id, *sweep);
            }
            StateWrite::Trial(trial) => {
                self.trials
                    .entry(trial.id.sweep)
                    .or_default()
                    .insert(trial.id.number, *trial);
            }
            StateWrite::Epoch(epoch) => self.epoch = Some(epoch),
            StateWrite::Agent(agent) => {
                self.agents.insert(agent.id.clone(), *agent);
            }
            StateWrite::Cordon { agent, cordoned } => {
                if cordoned {
                    self.cordoned.insert(agent);
                } else {
                    self.cordoned.remove(&agent);
                }
            }
            StateWrite::Model(model) => {
                self.models
                    .insert((model.name.clone(), model.version), *model);
            }
            StateWrite::Rollout(rollout) => {
                self.rollouts.insert(rollout.id, *rollout);
            }
            StateWrite::ForgetSweep(sweep) => {
                self.next_sweep = self.next_sweep.max(sweep.0 + 1);
                self.sweeps.remove(&sweep);
                self.trials.remove(&sweep);
                self.summaries.remove(&sweep);
            }
            StateWrite::SweepIdsFrom(next) => self.next_sweep = self.next_sweep.max(next),
            StateWrite::Summary(summary) => {
                self.summaries.insert(summary.id, *summary);
            }
        }
    }

    /// This state without the trials of settled sweeps: what a leader loads eagerly.
    pub fn live(&self) -> StoredState {
        let running = |id: &SweepId| !self.sweeps.get(id).is_some_and(SweepRecord::is_settled);
        StoredState {
            epoch: self.epoch,
            sweeps: self.sweeps.clone(),
            trials: self
                .trials
                .iter()
                .filter(|(id, _)| running(id))
                .map(|(id, trials)| (*id, trials.clone()))
                .collect(),
            agents: self.agents.clone(),
            cordoned: self.cordoned.clone(),
            models: self.models.clone(),
            rollouts: self.rollouts.clone(),
            next_sweep: self.next_sweep,
            summaries: self.summaries.clone(),
        }
    }

    /// One sweep's record and trials, if it is stored.
    pub fn sweep(&self, id: SweepId) -> Option<StoredSweep> {
        let record = self.sweeps.get(&id)?.clone();
        let trials = self.trials.get(&id).cloned().unwrap_or_default();
        Some(StoredSweep { record, trials })
    }

    /// The records that describe this state, for compaction.
    pub fn to_writes(&self) -> Vec<StateWrite> {
        let mut writes = Vec::new();
        if let Some(epoch) = self.epoch {
            writes.push(StateWrite::Epoch(epoch));
        }
        for sweep in self.sweeps.values() {
            writes.push(StateWrite::Sweep(Box::new(sweep.clone())));
        }
        for trial in self.trials.values().flat_map(BTreeMap::values) {
            writes.push(StateWrite::Trial(Box::new(trial.clone())));
        }
        for agent in self.agents.values() {
            writes.push(StateWrite::Agent(Box::new(agent.clone())));
        }
        for agent in &self.cordoned {
            writes.push(StateWrite::Cordon {
                agent: agent.clone(),
                cordoned: true,
            });
        }
        for model in self.models.values() {
            writes.push(StateWrite::Model(Box::new(model.clone())));
        }
        for rollout in self.rollouts.values() {
            writes.push(StateWrite::Rollout(Box::new(rollout.clone())));
        }
        if self.next_sweep > 0 {
            writes.push(StateWrite::SweepIdsFrom(self.next_sweep));
        }
        for summary in self.summaries.values() {
            writes.push(StateWrite::Summary(Box::new(summary.clone())));
        }
        writes
    }

    pub fn record_count(&self) -> usize {
        usize::from(self.epoch.is_some())
            + self.sweeps.len()
            + self.trials.values().map(BTreeMap::len).sum::<usize>()
            + self.agents.len()
            + self.cordoned.len()
            + self.models.len()
            + self.rollouts.len()
            + usize::from(self.next_sweep > 0)
            + self.summaries.len()
    }
}

/// One sweep as stored: its record and its trials by number.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSweep {
    pub record: SweepRecord,
    pub trials: BTreeMap<u32, TrialRecord>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("state file {path}: {message}")]
    Io { path: String, message: String },
    #[error("state file {path} is corrupt at byte {offset}: {message}")]
    Corrupt {
        path: String,
        offset: u64,
        message: String,
    },
    #[error("the state store has shut down")]
    Closed,
    #[error("etcd: {message}")]
    Etcd { message: String },
    /// This coordinator is no longer the leader of epoch `epoch`; nothing it writes counts.
    #[error("fenced: leader of epoch {epoch} may no longer write: {message}")]
    Fenced { epoch: Epoch, message: String },
}

/// Resolves once a write is durable.
pub struct CommitTicket(oneshot::Receiver<Result<(), StoreError>>);

impl CommitTicket {
    pub fn new(receiver: oneshot::Receiver<Result<(), StoreError>>) -> CommitTicket {
        CommitTicket(receiver)
    }

    pub async fn durable(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or(Err(StoreError::Closed))
    }
}

/// Resolves with the error a store's writer reported, or never if the writer ended without
/// one (the store was closed). Both stores' `failed` are this.
pub async fn first_failure(
    mut failure: tokio::sync::watch::Receiver<Option<StoreError>>,
) -> StoreError {
    let failed = failure
        .wait_for(Option::is_some)
        .await
        .map(|error| error.clone());
    match failed {
        Ok(error) => error.unwrap_or(StoreError::Closed),
        Err(_) => std::future::pending().await,
    }
}

#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// What a leader starts from: every stored record except the trials of finished sweeps
    /// (those are read one sweep at a time, by [`sweep`](Self::sweep), when someone asks), so
    /// taking over costs the live work, not the history.
    async fn load(&self) -> Result<StoredState, StoreError>;

    /// One sweep with all its trials as stored now (writes made durable so far included);
    /// `None` if it is not stored (never was, or archived).
    async fn sweep(&self, id: SweepId) -> Result<Option<StoredSweep>, StoreError>;

    /// Hands out the next leader epoch (greater than every earlier one) and stores it.
    async fn next_epoch(&self) -> Result<Epoch, StoreError>;

    /// Queues writes, in order; the ticket resolves when they are durable.
    fn write(&self, writes: Vec<StateWrite>) -> CommitTicket;

    /// Waits until every write queued so far is durable.
    async fn flush(&self) -> Result<(), StoreError> {
        self.write(Vec::new()).durable().await
    }

    /// Resolves when the store can no longer make writes durable (a full disk, an I/O
    /// error). Writes are fire-and-forget for the actors, so the coordinator watches this
    /// and stops: continuing would let memory and the store drift apart.
    async fn failed(&self) -> StoreError;
}
