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

use flotilla_protocol::messages::{SweepState, TrialRecord};
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
}

impl StoredState {
    pub fn apply(&mut self, write: StateWrite) {
        match write {
            StateWrite::Sweep(sweep) => {
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
        }
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
    }
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
    /// Everything stored when this term's store was opened (what a leader starts from).
    async fn load(&self) -> Result<StoredState, StoreError>;

    /// Everything stored now, writes since the store was opened included: for reading back
    /// one sweep after its actor failed. Stores whose `load` already reads the present keep
    /// this default.
    async fn reload(&self) -> Result<StoredState, StoreError> {
        self.load().await
    }

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
