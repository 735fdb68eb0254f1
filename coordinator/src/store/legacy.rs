//! Stored records written by protocol 11 to 16 builds, read by this one.
//!
//! Protocol 12 added fields to records the state file and etcd hold: `SweepSpec::serving`,
//! `ModelVersion::serving`, squared error in the rollout counters (`Arm`), and the gating
//! metrics of a rollout policy (`Policy::metrics`, `Policy::squared_error_margin`,
//! `Stage::metrics`). Protocol 13 added `slots` and `gpus` to `ServingSpec` (inside sweep
//! and model records), `max_reschedules` to `RetryPolicy` (inside sweep records), and
//! `reschedules` and `lost_on` to trial records. The codec is not self-describing, so a record written before has a
//! layout of its own. Each is decoded as the current layout first and, only if that fails,
//! as the older layouts mirrored here (newest first), then converted (new fields take their
//! defaults: no serving program, no squared error yet, every metric gating, a serving
//! replica holding one slot and no GPU, the default reschedule bound, no agent losses yet).
//! Protocol 15 added conditions to parameters (`ParamSpec::when`, inside sweep records'
//! spaces and phases) and `SweepSpec::warm_start`: older sweeps have no conditions and no
//! warm start. Protocol 16 added further objectives (`Objective::also`, inside sweep
//! records): older sweeps have one objective. Protocol 17 added `SweepSpec::scheduling` (the
//! sweep's share and team): older sweeps weigh 1 and have no team. A record that is none of them is corrupt, as before. The next write of a
//! converted record stores the current layout. [`read`] tries a record type's layouts in
//! order ([`Stored`]).

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_protocol::codec::{self, CodecError};
use flotilla_protocol::messages::{
    CheckpointRef, Metrics, Params, SweepState, TrialRecord, TrialState,
};
use flotilla_protocol::models::{
    Artifact, DecisionRecord, Lineage, ModelStage, ModelVersion, RolloutRecord, RolloutState,
    SemVer,
};
use flotilla_protocol::spec::{
    AlgorithmSpec, Budget, Constraint, Direction, EarlyStopping, Objective, ParamKind, ParamSpec,
    PhaseSpec, Resources, RetryPolicy, Scheduling, ServingSpec, SweepSpec, TrialSpec,
};
use flotilla_protocol::{AgentId, Epoch, ParamValue, SweepId, TrialId};
use flotilla_rollout::{Arm, Metric, Pair, Policy, Stage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{AgentRecord, StateWrite, SweepRecord};

/// A stored record type and the older layouts it is read from.
pub trait Stored: DeserializeOwned {
    /// `bytes` read as one of the older layouts (newest first) and converted.
    fn older(bytes: &[u8]) -> Option<Self>;
}

/// Reads `bytes` as the current layout of `T` or one of its older ones. The error is the
/// current layout's.
pub fn read<T: Stored>(bytes: &[u8]) -> Result<T, CodecError> {
    codec::decode::<T>(bytes).or_else(|current| T::older(bytes).ok_or(current))
}

fn older<L: DeserializeOwned + Into<T>, T>(bytes: &[u8]) -> Option<T> {
    codec::decode::<L>(bytes).ok().map(Into::into)
}

impl Stored for SweepRecord {
    fn older(bytes: &[u8]) -> Option<Self> {
        older::<SweepRecordV16, _>(bytes)
            .or_else(|| older::<SweepRecordV15, _>(bytes))
            .or_else(|| older::<SweepRecordV14, _>(bytes))
            .or_else(|| older::<SweepRecordV12, _>(bytes))
            .or_else(|| older::<SweepRecordV11, _>(bytes))
    }
}

impl Stored for StateWrite {
    fn older(bytes: &[u8]) -> Option<Self> {
        older::<StateWriteV16, _>(bytes)
            .or_else(|| older::<StateWriteV15, _>(bytes))
            .or_else(|| older::<StateWriteV14, _>(bytes))
            .or_else(|| older::<StateWriteV12, _>(bytes))
            .or_else(|| older::<StateWriteV11, _>(bytes))
    }
}

impl Stored for TrialRecord {
    fn older(bytes: &[u8]) -> Option<Self> {
        older::<TrialRecordV12, _>(bytes)
    }
}

impl Stored for ModelVersion {
    fn older(bytes: &[u8]) -> Option<Self> {
        older::<ModelVersionV12, _>(bytes).or_else(|| older::<ModelVersionV11, _>(bytes))
    }
}

impl Stored for RolloutRecord {
    fn older(bytes: &[u8]) -> Option<Self> {
        older::<RolloutRecordV11, _>(bytes)
    }
}

/// A sweep spec as protocol 16 stored it: no `[scheduling]` (every sweep weighed 1).
#[derive(Serialize, Deserialize)]
pub struct SweepSpecV16 {
    name: String,
    objective: Objective,
    constraints: Vec<Constraint>,
    space: BTreeMap<String, ParamSpec>,
    algorithm: AlgorithmSpec,
    budget: Budget,
    trial: TrialSpec,
    resources: Resources,
    retries: RetryPolicy,
    early_stopping: Option<EarlyStopping>,
    phases: Vec<PhaseSpec>,
    serving: Option<ServingSpec>,
    warm_start: Vec<String>,
}

impl From<SweepSpecV16> for SweepSpec {
    fn from(old: SweepSpecV16) -> SweepSpec {
        SweepSpec {
            name: old.name,
            objective: old.objective,
            constraints: old.constraints,
            space: old.space,
            algorithm: old.algorithm,
            budget: old.budget,
            trial: old.trial,
            resources: old.resources,
            retries: old.retries,
            early_stopping: old.early_stopping,
            phases: old.phases,
            serving: old.serving,
            warm_start: old.warm_start,
            scheduling: Scheduling::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct SweepRecordV16 {
    id: SweepId,
    spec: SweepSpecV16,
    seed: u64,
    state: SweepState,
    created_ms: u64,
    finished_ms: Option<u64>,
    message: Option<String>,
}

impl From<SweepRecordV16> for SweepRecord {
    fn from(old: SweepRecordV16) -> SweepRecord {
        SweepRecord {
            id: old.id,
            spec: old.spec.into(),
            seed: old.seed,
            state: old.state,
            created_ms: old.created_ms,
            finished_ms: old.finished_ms,
            message: old.message,
        }
    }
}

/// A state-file record of version 16 (only sweep records differ).
#[derive(Serialize, Deserialize)]
pub enum StateWriteV16 {
    Sweep(Box<SweepRecordV16>),
    Trial(Box<TrialRecord>),
    Epoch(Epoch),
    Agent(Box<AgentRecord>),
    Cordon { agent: AgentId, cordoned: bool },
    Model(Box<ModelVersion>),
    Rollout(Box<RolloutRecord>),
}

impl From<StateWriteV16> for StateWrite {
    fn from(old: StateWriteV16) -> StateWrite {
        match old {
            StateWriteV16::Sweep(sweep) => StateWrite::Sweep(Box::new((*sweep).into())),
            StateWriteV16::Trial(trial) => StateWrite::Trial(trial),
            StateWriteV16::Epoch(epoch) => StateWrite::Epoch(epoch),
            StateWriteV16::Agent(agent) => StateWrite::Agent(agent),
            StateWriteV16::Cordon { agent, cordoned } => StateWrite::Cordon { agent, cordoned },
            StateWriteV16::Model(model) => StateWrite::Model(model),
            StateWriteV16::Rollout(rollout) => StateWrite::Rollout(rollout),
        }
    }
}

/// The objective as protocols 11 to 15 stored it: one metric, no `also`.
#[derive(Serialize, Deserialize)]
pub struct ObjectiveV15 {
    metric: String,
    direction: Direction,
}

impl From<ObjectiveV15> for Objective {
    fn from(old: ObjectiveV15) -> Objective {
        Objective::new(old.metric, old.direction)
    }
}

/// A sweep spec as protocol 15 stored it: a single objective.
#[derive(Serialize, Deserialize)]
pub struct SweepSpecV15 {
    name: String,
    objective: ObjectiveV15,
    constraints: Vec<Constraint>,
    space: BTreeMap<String, ParamSpec>,
    algorithm: AlgorithmSpec,
    budget: Budget,
    trial: TrialSpec,
    resources: Resources,
    retries: RetryPolicy,
    early_stopping: Option<EarlyStopping>,
    phases: Vec<PhaseSpec>,
    serving: Option<ServingSpec>,
    warm_start: Vec<String>,
}

impl From<SweepSpecV15> for SweepSpec {
    fn from(old: SweepSpecV15) -> SweepSpec {
        SweepSpec {
            name: old.name,
            objective: old.objective.into(),
            constraints: old.constraints,
            space: old.space,
            algorithm: old.algorithm,
            budget: old.budget,
            trial: old.trial,
            resources: old.resources,
            retries: old.retries,
            early_stopping: old.early_stopping,
            phases: old.phases,
            serving: old.serving,
            warm_start: old.warm_start,
            scheduling: Scheduling::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct SweepRecordV15 {
    id: SweepId,
    spec: SweepSpecV15,
    seed: u64,
    state: SweepState,
    created_ms: u64,
    finished_ms: Option<u64>,
    message: Option<String>,
}

impl From<SweepRecordV15> for SweepRecord {
    fn from(old: SweepRecordV15) -> SweepRecord {
        SweepRecord {
            id: old.id,
            spec: old.spec.into(),
            seed: old.seed,
            state: old.state,
            created_ms: old.created_ms,
            finished_ms: old.finished_ms,
            message: old.message,
        }
    }
}

/// A state-file record of version 15 (only sweep records differ).
#[derive(Serialize, Deserialize)]
pub enum StateWriteV15 {
    Sweep(Box<SweepRecordV15>),
    Trial(Box<TrialRecord>),
    Epoch(Epoch),
    Agent(Box<AgentRecord>),
    Cordon { agent: AgentId, cordoned: bool },
    Model(Box<ModelVersion>),
    Rollout(Box<RolloutRecord>),
}

impl From<StateWriteV15> for StateWrite {
    fn from(old: StateWriteV15) -> StateWrite {
        match old {
            StateWriteV15::Sweep(sweep) => StateWrite::Sweep(Box::new((*sweep).into())),
            StateWriteV15::Trial(trial) => StateWrite::Trial(trial),
            StateWriteV15::Epoch(epoch) => StateWrite::Epoch(epoch),
            StateWriteV15::Agent(agent) => StateWrite::Agent(agent),
            StateWriteV15::Cordon { agent, cordoned } => StateWrite::Cordon { agent, cordoned },
            StateWriteV15::Model(model) => StateWrite::Model(model),
            StateWriteV15::Rollout(rollout) => StateWrite::Rollout(rollout),
        }
    }
}

/// A parameter as protocols 11 to 14 stored it: without `when`.
#[derive(Clone, Serialize, Deserialize)]
pub struct ParamSpecV14 {
    kind: ParamKind,
    low: Option<f64>,
    high: Option<f64>,
    log: bool,
    choices: Vec<ParamValue>,
}

impl From<ParamSpecV14> for ParamSpec {
    fn from(old: ParamSpecV14) -> ParamSpec {
        ParamSpec {
            kind: old.kind,
            low: old.low,
            high: old.high,
            log: old.log,
            choices: old.choices,
            when: None,
        }
    }
}

fn space(old: BTreeMap<String, ParamSpecV14>) -> BTreeMap<String, ParamSpec> {
    old.into_iter()
        .map(|(name, param)| (name, param.into()))
        .collect()
}

/// A phase as protocols 11 to 14 stored it: its parameters without `when`.
#[derive(Serialize, Deserialize)]
pub struct PhaseSpecV14 {
    name: String,
    space: BTreeMap<String, ParamSpecV14>,
    algorithm: Option<AlgorithmSpec>,
    max_trials: u32,
    max_parallel: Option<u32>,
}

fn phases(old: Vec<PhaseSpecV14>) -> Vec<PhaseSpec> {
    old.into_iter()
        .map(|phase| PhaseSpec {
            name: phase.name,
            space: space(phase.space),
            algorithm: phase.algorithm,
            max_trials: phase.max_trials,
            max_parallel: phase.max_parallel,
        })
        .collect()
}

/// A sweep spec as protocols 13 and 14 stored it: no conditions, no warm start.
#[derive(Serialize, Deserialize)]
pub struct SweepSpecV14 {
    name: String,
    objective: ObjectiveV15,
    constraints: Vec<Constraint>,
    space: BTreeMap<String, ParamSpecV14>,
    algorithm: AlgorithmSpec,
    budget: Budget,
    trial: TrialSpec,
    resources: Resources,
    retries: RetryPolicy,
    early_stopping: Option<EarlyStopping>,
    phases: Vec<PhaseSpecV14>,
    serving: Option<ServingSpec>,
}

impl From<SweepSpecV14> for SweepSpec {
    fn from(old: SweepSpecV14) -> SweepSpec {
        SweepSpec {
            name: old.name,
            objective: old.objective.into(),
            constraints: old.constraints,
            space: space(old.space),
            algorithm: old.algorithm,
            budget: old.budget,
            trial: old.trial,
            resources: old.resources,
            retries: old.retries,
            early_stopping: old.early_stopping,
            phases: phases(old.phases),
            serving: old.serving,
            warm_start: Vec::new(),
            scheduling: Scheduling::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct SweepRecordV14 {
    id: SweepId,
    spec: SweepSpecV14,
    seed: u64,
    state: SweepState,
    created_ms: u64,
    finished_ms: Option<u64>,
    message: Option<String>,
}

impl From<SweepRecordV14> for SweepRecord {
    fn from(old: SweepRecordV14) -> SweepRecord {
        SweepRecord {
            id: old.id,
            spec: old.spec.into(),
            seed: old.seed,
            state: old.state,
            created_ms: old.created_ms,
            finished_ms: old.finished_ms,
            message: old.message,
        }
    }
}

/// A state-file record of versions 13 and 14 (only sweep records differ).
#[derive(Serialize, Deserialize)]
pub enum StateWriteV14 {
    Sweep(Box<SweepRecordV14>),
    Trial(Box<TrialRecord>),
    Epoch(Epoch),
    Agent(Box<AgentRecord>),
    Cordon { agent: AgentId, cordoned: bool },
    Model(Box<ModelVersion>),
    Rollout(Box<RolloutRecord>),
}

impl From<StateWriteV14> for StateWrite {
    fn from(old: StateWriteV14) -> StateWrite {
        match old {
            StateWriteV14::Sweep(sweep) => StateWrite::Sweep(Box::new((*sweep).into())),
            StateWriteV14::Trial(trial) => StateWrite::Trial(trial),
            StateWriteV14::Epoch(epoch) => StateWrite::Epoch(epoch),
            StateWriteV14::Agent(agent) => StateWrite::Agent(agent),
            StateWriteV14::Cordon { agent, cordoned } => StateWrite::Cordon { agent, cordoned },
            StateWriteV14::Model(model) => StateWrite::Model(model),
            StateWriteV14::Rollout(rollout) => StateWrite::Rollout(rollout),
        }
    }
}

/// `[retries]` as protocols 11 and 12 stored it: without `max_reschedules`.
#[derive(Serialize, Deserialize)]
pub struct RetryPolicyV12 {
    max_retries: u32,
}

impl From<RetryPolicyV12> for RetryPolicy {
    fn from(old: RetryPolicyV12) -> RetryPolicy {
        RetryPolicy {
            max_retries: old.max_retries,
            ..RetryPolicy::default()
        }
    }
}

/// A trial record as protocols 11 and 12 stored it: without `reschedules` and `lost_on`.
#[derive(Serialize, Deserialize)]
pub struct TrialRecordV12 {
    id: TrialId,
    attempt: u32,
    params: Params,
    state: TrialState,
    metrics: Metrics,
    objective: Option<f64>,
    feasible: bool,
    agent: Option<AgentId>,
    failures: u32,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    duration_ms: Option<u64>,
    message: Option<String>,
    dispatch_latency_us: Option<u64>,
    checkpoint: Option<CheckpointRef>,
    phase: u32,
    rungs: Vec<f64>,
}

impl From<TrialRecordV12> for TrialRecord {
    fn from(old: TrialRecordV12) -> TrialRecord {
        TrialRecord {
            id: old.id,
            attempt: old.attempt,
            params: old.params,
            state: old.state,
            metrics: old.metrics,
            objective: old.objective,
            feasible: old.feasible,
            agent: old.agent,
            failures: old.failures,
            started_ms: old.started_ms,
            finished_ms: old.finished_ms,
            duration_ms: old.duration_ms,
            message: old.message,
            dispatch_latency_us: old.dispatch_latency_us,
            checkpoint: old.checkpoint,
            phase: old.phase,
            rungs: old.rungs,
            reschedules: 0,
            lost_on: Vec::new(),
            seq: 0,
        }
    }
}

/// `[serving]` as protocol 12 stored it: without `slots` and `gpus`.
#[derive(Serialize, Deserialize)]
pub struct ServingSpecV12 {
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    health: String,
    #[serde(with = "humantime_serde")]
    ready_timeout: Duration,
    replicas: u32,
}

impl From<ServingSpecV12> for ServingSpec {
    fn from(old: ServingSpecV12) -> ServingSpec {
        ServingSpec {
            command: old.command,
            args: old.args,
            env: old.env,
            workdir: old.workdir,
            health: old.health,
            ready_timeout: old.ready_timeout,
            replicas: old.replicas,
            slots: 1,
            gpus: 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct SweepSpecV12 {
    name: String,
    objective: ObjectiveV15,
    constraints: Vec<Constraint>,
    space: BTreeMap<String, ParamSpecV14>,
    algorithm: AlgorithmSpec,
    budget: Budget,
    trial: TrialSpec,
    resources: Resources,
    retries: RetryPolicyV12,
    early_stopping: Option<EarlyStopping>,
    phases: Vec<PhaseSpecV14>,
    serving: Option<ServingSpecV12>,
}

impl From<SweepSpecV12> for SweepSpec {
    fn from(old: SweepSpecV12) -> SweepSpec {
        SweepSpec {
            name: old.name,
            objective: old.objective.into(),
            constraints: old.constraints,
            space: space(old.space),
            algorithm: old.algorithm,
            budget: old.budget,
            trial: old.trial,
            resources: old.resources,
            retries: old.retries.into(),
            early_stopping: old.early_stopping,
            phases: phases(old.phases),
            serving: old.serving.map(Into::into),
            warm_start: Vec::new(),
            scheduling: Scheduling::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct SweepRecordV12 {
    id: SweepId,
    spec: SweepSpecV12,
    seed: u64,
    state: SweepState,
    created_ms: u64,
    finished_ms: Option<u64>,
}

impl From<SweepRecordV12> for SweepRecord {
    fn from(old: SweepRecordV12) -> SweepRecord {
        SweepRecord {
            id: old.id,
            spec: old.spec.into(),
            seed: old.seed,
            state: old.state,
            created_ms: old.created_ms,
            finished_ms: old.finished_ms,
            message: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct ModelVersionV12 {
    name: String,
    version: SemVer,
    stage: ModelStage,
    lineage: Lineage,
    artifact: Artifact,
    description: String,
    created_ms: u64,
    stage_changed_ms: u64,
    serving: Option<ServingSpecV12>,
}

impl From<ModelVersionV12> for ModelVersion {
    fn from(old: ModelVersionV12) -> ModelVersion {
        ModelVersion {
            name: old.name,
            version: old.version,
            stage: old.stage,
            lineage: old.lineage,
            artifact: old.artifact,
            description: old.description,
            created_ms: old.created_ms,
            stage_changed_ms: old.stage_changed_ms,
            serving: old.serving.map(Into::into),
        }
    }
}

/// A state-file record of version 12 (rollout records did not change in 13).
#[derive(Serialize, Deserialize)]
pub enum StateWriteV12 {
    Sweep(Box<SweepRecordV12>),
    Trial(Box<TrialRecordV12>),
    Epoch(Epoch),
    Agent(Box<AgentRecord>),
    Cordon { agent: AgentId, cordoned: bool },
    Model(Box<ModelVersionV12>),
    Rollout(Box<RolloutRecord>),
}

impl From<StateWriteV12> for StateWrite {
    fn from(old: StateWriteV12) -> StateWrite {
        match old {
            StateWriteV12::Sweep(sweep) => StateWrite::Sweep(Box::new((*sweep).into())),
            StateWriteV12::Trial(trial) => StateWrite::Trial(Box::new((*trial).into())),
            StateWriteV12::Epoch(epoch) => StateWrite::Epoch(epoch),
            StateWriteV12::Agent(agent) => StateWrite::Agent(agent),
            StateWriteV12::Cordon { agent, cordoned } => StateWrite::Cordon { agent, cordoned },
            StateWriteV12::Model(model) => StateWrite::Model(Box::new((*model).into())),
            StateWriteV12::Rollout(rollout) => StateWrite::Rollout(rollout),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct SweepSpecV11 {
    name: String,
    objective: ObjectiveV15,
    constraints: Vec<Constraint>,
    space: BTreeMap<String, ParamSpecV14>,
    algorithm: AlgorithmSpec,
    budget: Budget,
    trial: TrialSpec,
    resources: Resources,
    retries: RetryPolicyV12,
    early_stopping: Option<EarlyStopping>,
    phases: Vec<PhaseSpecV14>,
}

impl From<SweepSpecV11> for SweepSpec {
    fn from(old: SweepSpecV11) -> SweepSpec {
        SweepSpec {
            name: old.name,
            objective: old.objective.into(),
            constraints: old.constraints,
            space: space(old.space),
            algorithm: old.algorithm,
            budget: old.budget,
            trial: old.trial,
            resources: old.resources,
            retries: old.retries.into(),
            early_stopping: old.early_stopping,
            phases: phases(old.phases),
            serving: None,
            warm_start: Vec::new(),
            scheduling: Scheduling::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct SweepRecordV11 {
    id: SweepId,
    spec: SweepSpecV11,
    seed: u64,
    state: SweepState,
    created_ms: u64,
    finished_ms: Option<u64>,
}

impl From<SweepRecordV11> for SweepRecord {
    fn from(old: SweepRecordV11) -> SweepRecord {
        SweepRecord {
            id: old.id,
            spec: old.spec.into(),
            seed: old.seed,
            state: old.state,
            created_ms: old.created_ms,
            finished_ms: old.finished_ms,
            message: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct ModelVersionV11 {
    name: String,
    version: SemVer,
    stage: ModelStage,
    lineage: Lineage,
    artifact: Artifact,
    description: String,
    created_ms: u64,
    stage_changed_ms: u64,
}

impl From<ModelVersionV11> for ModelVersion {
    fn from(old: ModelVersionV11) -> ModelVersion {
        ModelVersion {
            name: old.name,
            version: old.version,
            stage: old.stage,
            lineage: old.lineage,
            artifact: old.artifact,
            description: old.description,
            created_ms: old.created_ms,
            stage_changed_ms: old.stage_changed_ms,
            serving: None,
        }
    }
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct ArmV11 {
    requests: u64,
    errors: u64,
    log_latency_sum: f64,
    log_latency_sq_sum: f64,
    labelled: u64,
    correct: u64,
}

impl From<ArmV11> for Arm {
    fn from(old: ArmV11) -> Arm {
        Arm {
            requests: old.requests,
            errors: old.errors,
            log_latency_sum: old.log_latency_sum,
            log_latency_sq_sum: old.log_latency_sq_sum,
            labelled: old.labelled,
            correct: old.correct,
            ..Arm::default()
        }
    }
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct PairV11 {
    baseline: ArmV11,
    canary: ArmV11,
}

impl From<PairV11> for Pair {
    fn from(old: PairV11) -> Pair {
        Pair {
            baseline: old.baseline.into(),
            canary: old.canary.into(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StageV11 {
    weight: f64,
    #[serde(with = "humantime_serde")]
    min_duration: Duration,
    min_requests: u64,
}

#[derive(Serialize, Deserialize)]
struct PolicyV11 {
    stages: Vec<StageV11>,
    false_rollback: f64,
    false_promotion: f64,
    error_margin: f64,
    latency_margin: f64,
    accuracy_margin: f64,
    min_samples: u64,
    #[serde(with = "humantime_serde")]
    max_stage_duration: Duration,
}

impl From<PolicyV11> for Policy {
    fn from(old: PolicyV11) -> Policy {
        let defaults = Policy::default();
        Policy {
            stages: old
                .stages
                .into_iter()
                .map(|stage| Stage {
                    weight: stage.weight,
                    min_duration: stage.min_duration,
                    min_requests: stage.min_requests,
                    metrics: Vec::new(),
                })
                .collect(),
            false_rollback: old.false_rollback,
            false_promotion: old.false_promotion,
            error_margin: old.error_margin,
            latency_margin: old.latency_margin,
            accuracy_margin: old.accuracy_margin,
            squared_error_margin: defaults.squared_error_margin,
            metrics: Metric::ALL.to_vec(),
            min_samples: old.min_samples,
            max_stage_duration: old.max_stage_duration,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct RolloutRecordV11 {
    id: u64,
    model: String,
    baseline: SemVer,
    canary: SemVer,
    policy: PolicyV11,
    state: RolloutState,
    stage: u32,
    canary_weight: f64,
    started_ms: u64,
    stage_started_ms: u64,
    stage_paused_ms: u64,
    paused_since_ms: Option<u64>,
    stage_start: PairV11,
    traffic: PairV11,
    decisions: Vec<DecisionRecord>,
    finished_ms: Option<u64>,
}

impl From<RolloutRecordV11> for RolloutRecord {
    fn from(old: RolloutRecordV11) -> RolloutRecord {
        RolloutRecord {
            id: old.id,
            model: old.model,
            baseline: old.baseline,
            canary: old.canary,
            policy: old.policy.into(),
            state: old.state,
            stage: old.stage,
            canary_weight: old.canary_weight,
            started_ms: old.started_ms,
            stage_started_ms: old.stage_started_ms,
            stage_paused_ms: old.stage_paused_ms,
            paused_since_ms: old.paused_since_ms,
            stage_start: old.stage_start.into(),
            traffic: old.traffic.into(),
            decisions: old.decisions,
            finished_ms: old.finished_ms,
        }
    }
}

/// A state-file record of version 11.
#[derive(Serialize, Deserialize)]
pub enum StateWriteV11 {
    Sweep(Box<SweepRecordV11>),
    Trial(Box<TrialRecordV12>),
    Epoch(Epoch),
    Agent(Box<AgentRecord>),
    Cordon { agent: AgentId, cordoned: bool },
    Model(Box<ModelVersionV11>),
    Rollout(Box<RolloutRecordV11>),
}

impl From<StateWriteV11> for StateWrite {
    fn from(old: StateWriteV11) -> StateWrite {
        match old {
            StateWriteV11::Sweep(sweep) => StateWrite::Sweep(Box::new((*sweep).into())),
            StateWriteV11::Trial(trial) => StateWrite::Trial(Box::new((*trial).into())),
            StateWriteV11::Epoch(epoch) => StateWrite::Epoch(epoch),
            StateWriteV11::Agent(agent) => StateWrite::Agent(agent),
            StateWriteV11::Cordon { agent, cordoned } => StateWrite::Cordon { agent, cordoned },
            StateWriteV11::Model(model) => StateWrite::Model(Box::new((*model).into())),
            StateWriteV11::Rollout(rollout) => StateWrite::Rollout(Box::new((*rollout).into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `space` as a version 14 (or older) build stored it.
    fn old_space(space: &BTreeMap<String, ParamSpec>) -> BTreeMap<String, ParamSpecV14> {
        space
            .iter()
            .map(|(name, param)| {
                let old = ParamSpecV14 {
                    kind: param.kind,
                    low: param.low,
                    high: param.high,
                    log: param.log,
                    choices: param.choices.clone(),
                };
                (name.clone(), old)
            })
            .collect()
    }

    fn old_objective(objective: &Objective) -> ObjectiveV15 {
        ObjectiveV15 {
            metric: objective.metric.clone(),
            direction: objective.direction,
        }
    }

    fn old_sweep() -> SweepRecordV11 {
        let spec = SweepSpec::example();
        SweepRecordV11 {
            id: SweepId(4),
            spec: SweepSpecV11 {
                name: spec.name,
                objective: old_objective(&spec.objective),
                constraints: spec.constraints,
                space: old_space(&spec.space),
                algorithm: spec.algorithm,
                budget: spec.budget,
                trial: spec.trial,
                resources: spec.resources,
                retries: RetryPolicyV12 {
                    max_retries: spec.retries.max_retries,
                },
                early_stopping: spec.early_stopping,
                phases: Vec::new(),
            },
            seed: 0,
            state: SweepState::Running,
            created_ms: 1_764_000_000_000,
            finished_ms: None,
        }
    }

    #[test]
    fn version_11_sweeps_and_state_file_records_are_read_and_converted() {
        let bytes = codec::encode(&old_sweep()).expect("encode");
        let sweep: SweepRecord = read::<SweepRecord>(&bytes).expect("read");
        assert_eq!(sweep.id, SweepId(4));
        assert_eq!(sweep.spec.serving, None);
        assert_eq!(sweep.spec.name, SweepSpec::example().name);
        let current = codec::encode(&sweep).expect("encode");
        assert_eq!(read::<SweepRecord>(&current).expect("current"), sweep);

        let write = codec::encode(&StateWriteV11::Sweep(Box::new(old_sweep()))).expect("encode");
        match read::<StateWrite>(&write).expect("read") {
            StateWrite::Sweep(read) => assert_eq!(*read, sweep),
            _ => panic!("not a sweep"),
        }
        assert!(read::<SweepRecord>(b"garbage").is_err());
    }

    #[test]
    fn version_11_models_and_rollouts_are_read_with_defaults_for_new_fields() {
        let policy = Policy::default();
        let old_policy = PolicyV11 {
            stages: policy
                .stages
                .iter()
                .map(|stage| StageV11 {
                    weight: stage.weight,
                    min_duration: stage.min_duration,
                    min_requests: stage.min_requests,
                })
                .collect(),
            false_rollback: policy.false_rollback,
            false_promotion: policy.false_promotion,
            error_margin: policy.error_margin,
            latency_margin: policy.latency_margin,
            accuracy_margin: policy.accuracy_margin,
            min_samples: policy.min_samples,
            max_stage_duration: policy.max_stage_duration,
        };
        let arm = ArmV11 {
            requests: 10,
            errors: 1,
            log_latency_sum: -40.0,
            log_latency_sq_sum: 170.0,
            labelled: 5,
            correct: 4,
        };
        let rollout = RolloutRecordV11 {
            id: 3,
            model: "churn".into(),
            baseline: SemVer::new(1, 0, 0),
            canary: SemVer::new(1, 1, 0),
            policy: old_policy,
            state: RolloutState::Running,
            stage: 1,
            canary_weight: 0.1,
            started_ms: 1,
            stage_started_ms: 2,
            stage_paused_ms: 0,
            paused_since_ms: None,
            stage_start: PairV11 {
                baseline: arm,
                canary: arm,
            },
            traffic: PairV11 {
                baseline: arm,
                canary: arm,
            },
            decisions: Vec::new(),
            finished_ms: None,
        };
        let bytes = codec::encode(&rollout).expect("encode");
        let read: RolloutRecord = read::<RolloutRecord>(&bytes).expect("read");
        assert_eq!(read.policy, policy);
        assert_eq!(read.traffic.canary.correct, 4);
        assert_eq!(read.traffic.canary.scored, 0);
    }

    #[test]
    fn version_11_model_versions_are_read_as_built_in_models() {
        let old = ModelVersionV11 {
            name: "churn".into(),
            version: SemVer::new(1, 2, 0),
            stage: ModelStage::Production,
            lineage: Lineage {
                sweep: SweepId(2),
                sweep_name: "s".into(),
                trial: TrialId {
                    sweep: SweepId(2),
                    number: 1,
                },
                trainer: "lstm_classifier".into(),
                params: BTreeMap::new(),
                metrics: BTreeMap::new(),
                objective: Some(0.9),
                checkpoint: "file:///c".into(),
                epoch: 3,
            },
            artifact: Artifact {
                uri: "file:///a".into(),
                sha256: "ab".into(),
                bytes: 10,
            },
            description: String::new(),
            created_ms: 1,
            stage_changed_ms: 2,
        };
        let bytes = codec::encode(&old).expect("encode");
        let model: ModelVersion = read::<ModelVersion>(&bytes).expect("read");
        assert_eq!(model.serving, None);
        assert_eq!(model.reference().to_string(), "churn@1.2.0");
        let write = codec::encode(&StateWriteV11::Model(Box::new(old))).expect("encode");
        match read::<StateWrite>(&write).expect("read") {
            StateWrite::Model(read) => assert_eq!(*read, model),
            _ => panic!("not a model"),
        }
    }

    #[test]
    fn version_14_sweeps_are_read_without_conditions_or_warm_start() {
        let spec = SweepSpec::example();
        let old = SweepRecordV14 {
            id: SweepId(9),
            spec: SweepSpecV14 {
                name: spec.name.clone(),
                objective: old_objective(&spec.objective),
                constraints: spec.constraints.clone(),
                space: old_space(&spec.space),
                algorithm: spec.algorithm.clone(),
                budget: spec.budget.clone(),
                trial: spec.trial.clone(),
                resources: spec.resources,
                retries: spec.retries,
                early_stopping: None,
                phases: vec![PhaseSpecV14 {
                    name: "coarse".into(),
                    space: old_space(&spec.space),
                    algorithm: None,
                    max_trials: 3,
                    max_parallel: None,
                }],
                serving: None,
            },
            seed: 5,
            state: SweepState::Running,
            created_ms: 1_765_000_000_000,
            finished_ms: None,
            message: Some("kept".into()),
        };
        let bytes = codec::encode(&old).expect("encode");
        let sweep = read::<SweepRecord>(&bytes).expect("read");
        assert_eq!((sweep.id, sweep.seed), (SweepId(9), 5));
        assert_eq!(sweep.message.as_deref(), Some("kept"));
        assert_eq!(sweep.spec.space, spec.space);
        assert_eq!(sweep.spec.phases[0].space, spec.space);
        assert!(sweep.spec.warm_start.is_empty());
        assert!(sweep.spec.space.values().all(|param| param.when.is_none()));
        let write = codec::encode(&StateWriteV14::Sweep(Box::new(old))).expect("encode");
        match read::<StateWrite>(&write).expect("read") {
            StateWrite::Sweep(read) => assert_eq!(*read, sweep),
            _ => panic!("not a sweep"),
        }
        // The current layout reads as itself.
        let current = codec::encode(&sweep).expect("encode");
        assert_eq!(read::<SweepRecord>(&current).expect("current"), sweep);
    }

    #[test]
    fn version_15_sweeps_are_read_with_a_single_objective() {
        let mut spec = SweepSpec::example();
        spec.warm_start = vec!["s1".into()];
        let old = SweepRecordV15 {
            id: SweepId(12),
            spec: SweepSpecV15 {
                name: spec.name.clone(),
                objective: old_objective(&spec.objective),
                constraints: spec.constraints.clone(),
                space: spec.space.clone(),
                algorithm: spec.algorithm.clone(),
                budget: spec.budget.clone(),
                trial: spec.trial.clone(),
                resources: spec.resources,
                retries: spec.retries,
                early_stopping: spec.early_stopping.clone(),
                phases: Vec::new(),
                serving: None,
                warm_start: spec.warm_start.clone(),
            },
            seed: 2,
            state: SweepState::Completed,
            created_ms: 1_765_000_000_000,
            finished_ms: Some(1_765_000_100_000),
            message: None,
        };
        let bytes = codec::encode(&old).expect("encode");
        let sweep = read::<SweepRecord>(&bytes).expect("read");
        assert_eq!(sweep.spec, spec);
        assert!(!sweep.spec.objective.is_multi());
        let write = codec::encode(&StateWriteV15::Sweep(Box::new(old))).expect("encode");
        match read::<StateWrite>(&write).expect("read") {
            StateWrite::Sweep(read) => assert_eq!(*read, sweep),
            _ => panic!("not a sweep"),
        }
        // A multi-objective sweep reads as itself.
        let mut multi = sweep.clone();
        multi
            .spec
            .objective
            .also
            .push(flotilla_protocol::spec::Goal {
                metric: "latency_ms".into(),
                direction: Direction::Minimize,
            });
        let current = codec::encode(&multi).expect("encode");
        assert_eq!(read::<SweepRecord>(&current).expect("current"), multi);
    }

    #[test]
    fn version_16_sweeps_are_read_with_the_default_share() {
        let mut spec = SweepSpec::example();
        spec.objective.also.push(flotilla_protocol::spec::Goal {
            metric: "latency_ms".into(),
            direction: Direction::Minimize,
        });
        let old = SweepRecordV16 {
            id: SweepId(13),
            spec: SweepSpecV16 {
                name: spec.name.clone(),
                objective: spec.objective.clone(),
                constraints: spec.constraints.clone(),
                space: spec.space.clone(),
                algorithm: spec.algorithm.clone(),
                budget: spec.budget.clone(),
                trial: spec.trial.clone(),
                resources: spec.resources,
                retries: spec.retries,
                early_stopping: spec.early_stopping.clone(),
                phases: Vec::new(),
                serving: None,
                warm_start: Vec::new(),
            },
            seed: 3,
            state: SweepState::Running,
            created_ms: 1_765_000_000_000,
            finished_ms: None,
            message: None,
        };
        let bytes = codec::encode(&old).expect("encode");
        let sweep = read::<SweepRecord>(&bytes).expect("read");
        assert_eq!(sweep.spec, spec);
        assert_eq!(sweep.spec.scheduling, Scheduling::default());
        let write = codec::encode(&StateWriteV16::Sweep(Box::new(old))).expect("encode");
        match read::<StateWrite>(&write).expect("read") {
            StateWrite::Sweep(read) => assert_eq!(*read, sweep),
            _ => panic!("not a sweep"),
        }
        // A sweep with a share and a team reads as itself.
        let mut shared = sweep.clone();
        shared.spec.scheduling = Scheduling {
            share: 2.0,
            team: Some("vision".into()),
        };
        let current = codec::encode(&shared).expect("encode");
        assert_eq!(read::<SweepRecord>(&current).expect("current"), shared);
    }

    fn old_serving() -> ServingSpecV12 {
        ServingSpecV12 {
            command: "python3".into(),
            args: vec!["serve.py".into()],
            env: BTreeMap::new(),
            workdir: None,
            health: "/healthz".into(),
            ready_timeout: Duration::from_secs(20),
            replicas: 2,
        }
    }

    #[test]
    fn version_12_serving_programs_are_read_holding_one_slot_and_no_gpu() {
        let spec = SweepSpec::example();
        let old = SweepRecordV12 {
            id: SweepId(9),
            spec: SweepSpecV12 {
                name: spec.name,
                objective: old_objective(&spec.objective),
                constraints: spec.constraints,
                space: old_space(&spec.space),
                algorithm: spec.algorithm,
                budget: spec.budget,
                trial: spec.trial,
                resources: spec.resources,
                retries: RetryPolicyV12 {
                    max_retries: spec.retries.max_retries,
                },
                early_stopping: spec.early_stopping,
                phases: Vec::new(),
                serving: Some(old_serving()),
            },
            seed: 3,
            state: SweepState::Completed,
            created_ms: 1_764_000_000_000,
            finished_ms: Some(1_764_000_100_000),
        };
        let read_sweep = |bytes: &[u8]| read::<SweepRecord>(bytes).expect("read");
        let sweep = read_sweep(&codec::encode(&old).expect("encode"));
        let serving = sweep.spec.serving.clone().expect("serving kept");
        assert_eq!((serving.replicas, serving.slots, serving.gpus), (2, 1, 0));
        assert_eq!(sweep.finished_ms, Some(1_764_000_100_000));
        // Version 11 records still read through the same chain, and current ones as they are.
        let eleven = read_sweep(&codec::encode(&old_sweep()).expect("encode"));
        assert_eq!((eleven.id, eleven.spec.serving), (SweepId(4), None));
        assert_eq!(read_sweep(&codec::encode(&sweep).expect("encode")), sweep);

        let write = StateWriteV12::Sweep(Box::new(old));
        let bytes = codec::encode(&write).expect("encode");
        match read::<StateWrite>(&bytes).expect("read") {
            StateWrite::Sweep(read) => assert_eq!(*read, sweep),
            _ => panic!("not a sweep"),
        }
        let bytes = codec::encode(&StateWriteV11::Sweep(Box::new(old_sweep()))).expect("encode");
        assert!(matches!(
            read::<StateWrite>(&bytes).expect("read"),
            StateWrite::Sweep(_)
        ));
        assert!(read::<StateWrite>(b"garbage").is_err());
    }

    #[test]
    fn version_12_model_versions_keep_their_serving_program() {
        let old = ModelVersionV12 {
            name: "demo".into(),
            version: SemVer::new(1, 0, 0),
            stage: ModelStage::Production,
            lineage: Lineage {
                sweep: SweepId(2),
                sweep_name: "s".into(),
                trial: TrialId {
                    sweep: SweepId(2),
                    number: 0,
                },
                trainer: "command".into(),
                params: BTreeMap::new(),
                metrics: BTreeMap::new(),
                objective: Some(0.9),
                checkpoint: "file:///c".into(),
                epoch: 8,
            },
            artifact: Artifact {
                uri: "file:///a".into(),
                sha256: "ab".into(),
                bytes: 10,
            },
            description: String::new(),
            created_ms: 1,
            stage_changed_ms: 2,
            serving: Some(old_serving()),
        };
        let bytes = codec::encode(&old).expect("encode");
        let read: ModelVersion = read::<ModelVersion>(&bytes).expect("read");
        let serving = read.serving.expect("serving kept");
        assert_eq!(serving.command, "python3");
        assert_eq!((serving.slots, serving.gpus), (1, 0));
    }

    #[test]
    fn version_12_trial_records_are_read_with_no_reschedules() {
        let old = TrialRecordV12 {
            id: TrialId {
                sweep: SweepId(3),
                number: 7,
            },
            attempt: 2,
            params: BTreeMap::new(),
            state: TrialState::Running,
            metrics: BTreeMap::new(),
            objective: None,
            feasible: false,
            agent: Some(AgentId("a1".into())),
            failures: 1,
            started_ms: Some(5),
            finished_ms: None,
            duration_ms: None,
            message: None,
            dispatch_latency_us: None,
            checkpoint: None,
            phase: 0,
            rungs: vec![0.5],
        };
        let bytes = codec::encode(&old).expect("encode");
        let trial: TrialRecord = read::<TrialRecord>(&bytes).expect("read");
        assert_eq!(
            (trial.attempt, trial.failures, trial.reschedules),
            (2, 1, 0)
        );
        assert!(trial.lost_on.is_empty());
        let write = codec::encode(&StateWriteV12::Trial(Box::new(old))).expect("encode");
        match read::<StateWrite>(&write).expect("read") {
            StateWrite::Trial(read) => assert_eq!(*read, trial),
            _ => panic!("not a trial"),
        }
        assert_eq!(
            read::<TrialRecord>(&codec::encode(&trial).expect("encode")).expect("current"),
            trial
        );
    }
}
