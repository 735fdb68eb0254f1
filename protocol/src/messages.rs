//! Every frame Flotilla sends.
//!
//! Streams and who speaks on them:
//!
//! - Every connection starts with a bidirectional *handshake stream* opened by the connecting
//!   side: [`Hello`] → [`HelloReply`]. An agent keeps that stream as its *control stream*:
//!   [`AgentMessage`] frames go up, [`CoordinatorCommand`] frames come down.
//! - A client opens one bidirectional stream per request: one [`ClientRequest`], then one
//!   [`ClientResponse`] (or, for `WatchSweep`, a stream of `Event` responses ending with
//!   the sweep's end).
//!
//! Enums here are append-only: add variants at the end, never reorder or remove; the
//! golden-bytes tests (`tests/golden.rs`) fail on any change to existing encodings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::models::{
    Artifact, ModelRef, ModelStage, ModelVersion, RegisterModel, RolloutAction, RolloutRecord,
    Route, RouterReport, SealRequest, ServedModel, ServingReport, StartRollout,
};
use crate::spec::{Direction, SweepSpec, TrialSpec};
use crate::{AgentId, AttemptId, Epoch, ParamValue, SweepId, TrialId};

/// Parameter name → value, the point of the search space a trial runs.
pub type Params = BTreeMap<String, ParamValue>;
/// Metric name → value.
pub type Metrics = BTreeMap<String, f64>;

/// What a certificate allows its holder to do. Carried in the certificate (see
/// [`crate::tls`]), never taken from what a peer says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Coordinator,
    Agent,
    /// Submits and watches sweeps.
    Client,
    /// Everything a client may do, plus cluster operations.
    Admin,
    /// A model router: reports its traffic and reads the routes (`RouterSync`), nothing
    /// else (protocol 11).
    Router,
}

impl Role {
    /// Every role, in wire order.
    pub const ALL: [Role; 5] = [
        Role::Coordinator,
        Role::Agent,
        Role::Client,
        Role::Admin,
        Role::Router,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Router => "router",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    /// The name with its article, for messages ("an admin certificate").
    pub fn with_article(self) -> String {
        let name = self.name();
        let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {name}")
    }
}

/// First frame on a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version the sender speaks.
    pub min_version: u16,
    /// Newest protocol version the sender speaks.
    pub max_version: u16,
    /// The role the sender wants to act in; it must match its certificate.
    pub role: Role,
    /// Free-form name for logs (`agent-7`, `flotilla-cli 0.1.0`).
    pub peer_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome(Welcome),
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides will speak: the highest in both ranges.
    pub version: u16,
    pub epoch: Epoch,
    /// The coordinator's name, for logs.
    pub coordinator: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RefusalReason {
    UnsupportedVersion,
    /// The certificate's role does not allow what the peer asked to do.
    RoleNotPermitted,
    /// This coordinator is not the leader; `leader` is where to go, if known.
    NotLeader {
        leader: Option<String>,
    },
    ShuttingDown,
}

// ---------------------------------------------------------------------------------------------
// Agent ⇄ coordinator

/// Agent → coordinator, on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First message after the handshake, and again after every reconnect.
    Register(Registration),
    Heartbeat(Heartbeat),
    TrialStarted {
        attempt: AttemptId,
    },
    TrialMetrics {
        attempt: AttemptId,
        points: Vec<MetricPoint>,
    },
    TrialFinished {
        attempt: AttemptId,
        outcome: TrialOutcome,
    },
    /// The agent would not run a command (stale epoch, unknown trainer, no free slot).
    CommandRejected {
        attempt: Option<AttemptId>,
        reason: String,
    },
    /// The agent is shutting down: it takes no new trials (sent again after a reconnect).
    Draining,
    /// The attempt wrote a checkpoint (a new object under a unique name).
    TrialCheckpoint {
        attempt: AttemptId,
        checkpoint: CheckpointRef,
    },
    /// What the agent serves (protocol 9): after it registers and on every change.
    Serving(ServingReport),
    /// Answer to `Command::SealModel` (protocol 9).
    ModelSealed {
        request: u64,
        result: Result<Artifact, String>,
    },
}

/// A checkpoint object a trial attempt wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// Where the object lives: `file:///…` or `s3://bucket/key`. Never overwritten.
    pub uri: String,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// Training progress it holds (optimizer steps since the trial began, over all attempts).
    pub step: u64,
    /// Completed epochs it holds.
    pub epoch: u32,
    pub bytes: u64,
}

impl CheckpointRef {
    /// Whether this checkpoint, written by `self.attempt`, may become the trial's latest in
    /// place of `latest`, when the trial's current attempt is `current_attempt`. Only the
    /// current attempt moves the pointer, and only forward: a stale or deposed attempt
    /// (older attempt number) never replaces anything, and a checkpoint never replaces a
    /// newer one of the same attempt.
    pub fn may_replace(&self, latest: Option<&CheckpointRef>, current_attempt: u32) -> bool {
        self.attempt == current_attempt
            && latest.is_none_or(|latest| (self.attempt, self.step) > (latest.attempt, latest.step))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub agent_id: AgentId,
    pub hostname: String,
    /// Trials the agent runs at once.
    pub slots: u32,
    pub gpus: u32,
    /// Attempts the agent is running right now (non-empty after a reconnect).
    pub running: Vec<AttemptId>,
    /// Attempts that finished while the agent was disconnected, with their outcomes.
    pub finished: Vec<(AttemptId, TrialOutcome)>,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub running: Vec<AttemptId>,
}

/// Metric values a trial reported at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub step: u64,
    pub values: Metrics,
    /// Milliseconds since the attempt started.
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TrialOutcome {
    /// The trial ran to the end; `metrics` are the last reported value of each metric.
    Succeeded { metrics: Metrics, duration_ms: u64 },
    /// The trial crashed or reported failure; this spends the retry budget.
    Failed {
        exit_code: Option<i32>,
        signal: Option<i32>,
        message: String,
        duration_ms: u64,
    },
    /// The trial was stopped on request (cancel, timeout, budget, drain).
    Stopped {
        reason: StopReason,
        duration_ms: u64,
    },
}

impl TrialOutcome {
    /// A failure with no exit status: the program could not start, the trainer returned an
    /// error, or the agent's trial runner failed.
    pub fn error(message: String, duration_ms: u64) -> TrialOutcome {
        TrialOutcome::Failed {
            exit_code: None,
            signal: None,
            message,
            duration_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    Cancelled,
    TimedOut,
    BudgetSpent,
    /// The coordinator no longer wants this attempt (superseded or unknown to it).
    Superseded,
    AgentShutdown,
    /// The sweep's early-stopping rule stopped the trial (its result so far counts).
    EarlyStopped,
    /// The host is going away (spot interruption, scale-in, an operator's drain): the trial
    /// checkpointed and resumes elsewhere without spending its retry budget (protocol 8).
    Preempted,
}

/// Coordinator → agent, on the control stream. `epoch` is the sender's leader epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorCommand {
    pub epoch: Epoch,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Answer to `Register`: which of the reported running attempts the coordinator adopted
    /// (the rest must stop).
    Registered {
        heartbeat_interval_ms: u64,
        adopted: Vec<AttemptId>,
    },
    StartTrial(Box<StartTrial>),
    StopTrial {
        attempt: AttemptId,
        reason: StopReason,
    },
    /// Take no new trials; checkpoint and stop every running one as `Preempted`
    /// (protocol 8).
    Drain,
    /// Serve exactly these model versions (protocol 9): load the new ones, drop the rest.
    Serve(Vec<ServedModel>),
    /// Copy a checkpoint into the artifact store for a model version (protocol 9).
    SealModel(SealRequest),
    /// `StartTrial` with the GPUs the attempt needs (protocol 10): the agent assigns that
    /// many of its free GPUs to the attempt alone. Agents older than 10 get `StartTrial`.
    StartAttempt(Box<StartAttempt>),
    /// The leader is alive and may act (protocol 13): sent on a command stream that has been
    /// quiet for [`ALIVE_INTERVAL`]. An agent that hears nothing for [`ALIVE_TIMEOUT`] leaves
    /// that coordinator and looks for the leader, so a dead (or deposed) leader is noticed in
    /// about a second, not at a transport timeout.
    Alive,
}

/// Longest quiet on a leader's command stream before it sends `Command::Alive`.
pub const ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// How long an agent waits for anything from its leader before it looks for another.
pub const ALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1000);

/// A trial attempt to start and what it needs of the agent beyond slots (protocol 10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartAttempt {
    pub start: StartTrial,
    /// GPUs the attempt gets to itself (`[resources] gpus`).
    pub gpus: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartTrial {
    pub attempt: AttemptId,
    pub params: Params,
    pub trial: TrialSpec,
    /// Checkpoint to resume from, when the trial ran before.
    pub resume_from: Option<String>,
    /// Slots the attempt occupies on the agent.
    pub slots: u32,
}

// ---------------------------------------------------------------------------------------------
// Client ⇄ coordinator

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    SubmitSweep(Box<SweepSpec>),
    ListSweeps,
    SweepStatus(SweepId),
    CancelSweep(SweepId),
    BestTrial(SweepId),
    ListTrials(SweepId),
    /// Streams `Event`s: what happened so far is not replayed; the stream ends after
    /// `SweepFinished`.
    WatchSweep(SweepId),
    ListAgents,
    /// The leader, its epoch, the other replicas and the state store's health (admin).
    ClusterStatus,
    /// A sweep's summary, its spec and its trials' learning curves (for reports and the web
    /// view; protocol 7).
    SweepDetail(SweepId),
    /// The autoscaler's view: provider, bounds, desired and actual capacity, last decision
    /// (admin; protocol 8). Answered with `Autoscale`.
    AutoscaleStatus,
    /// Sets the fleet's desired capacity and/or its bounds (admin; protocol 8). Answered
    /// with `Autoscale`.
    Scale(ScaleRequest),
    /// Drains, cordons or uncordons an agent (admin; protocol 8). Answered with `Agents`
    /// holding the agent as it is afterwards.
    AgentAdmin {
        agent: AgentId,
        action: AgentAction,
    },
    /// Registers a trial's checkpoint as a model version (protocol 9). Answered with
    /// `Models` holding the new version.
    RegisterModel(RegisterModel),
    /// Versions of one model, or of every model (protocol 9). Answered with `Models`.
    ListModels {
        name: Option<String>,
    },
    /// Moves a version to a stage (admin; protocol 9). Answered with `Models` holding every
    /// version that changed (promoting one archives the previous production version).
    SetModelStage {
        model: ModelRef,
        stage: ModelStage,
    },
    /// Starts a canary rollout (admin; protocol 9). Answered with `Rollouts`.
    StartRollout(StartRollout),
    /// Rollouts of one model, or all, newest first (protocol 9). Answered with `Rollouts`.
    ListRollouts {
        model: Option<String>,
    },
    /// Pauses, resumes, promotes or aborts a model's active rollout (admin; protocol 9).
    /// Answered with `Rollouts`.
    RolloutAction {
        model: String,
        action: RolloutAction,
    },
    /// A router's traffic counters (protocol 9). Answered with `Routes`.
    RouterSync(RouterReport),
    /// Each agent's GPUs and how many running attempts hold (admin; protocol 10). Answered
    /// with `AgentGpus`.
    AgentGpus,
    /// Where the versions of one model, or of every model, are assigned and how each
    /// replica is (protocol 12). Answered with `Placements`.
    ModelPlacements {
        name: Option<String>,
    },
    /// Streams the sweep's events after sequence number `from` (protocol 13): first what the
    /// watcher missed (each trial's newest stored state, if newer than `from`), then live
    /// events, each as `SequencedEvent`; the stream ends after `SweepFinished`. A watcher
    /// that loses its leader asks the next one from the last number it saw.
    WatchSweepFrom {
        sweep: SweepId,
        from: u64,
    },
}

/// Which certificates a client request is answered for: the one table of request
/// permissions (docs/protocol.md lists it, and a test checks every request against a real
/// coordinator with each certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Client and admin certificates.
    Client,
    /// Admin certificates only.
    Admin,
    /// Router and admin certificates.
    Router,
}

impl Access {
    pub fn permits(self, role: Role) -> bool {
        match self {
            Access::Client => matches!(role, Role::Client | Role::Admin),
            Access::Admin => role == Role::Admin,
            Access::Router => matches!(role, Role::Router | Role::Admin),
        }
    }

    /// Who may send it, as the table in docs/protocol.md says.
    pub fn holders(self) -> &'static str {
        match self {
            Access::Client => "client, admin",
            Access::Admin => "admin",
            Access::Router => "router, admin",
        }
    }
}

impl ClientRequest {
    /// The variant's name, as in docs/protocol.md.
    pub fn name(&self) -> &'static str {
        match self {
            ClientRequest::SubmitSweep(_) => "SubmitSweep",
            ClientRequest::ListSweeps => "ListSweeps",
            ClientRequest::SweepStatus(_) => "SweepStatus",
            ClientRequest::CancelSweep(_) => "CancelSweep",
            ClientRequest::BestTrial(_) => "BestTrial",
            ClientRequest::ListTrials(_) => "ListTrials",
            ClientRequest::WatchSweep(_) => "WatchSweep",
            ClientRequest::WatchSweepFrom { .. } => "WatchSweepFrom",
            ClientRequest::ListAgents => "ListAgents",
            ClientRequest::ClusterStatus => "ClusterStatus",
            ClientRequest::SweepDetail(_) => "SweepDetail",
            ClientRequest::AutoscaleStatus => "AutoscaleStatus",
            ClientRequest::Scale(_) => "Scale",
            ClientRequest::AgentAdmin { .. } => "AgentAdmin",
            ClientRequest::RegisterModel(_) => "RegisterModel",
            ClientRequest::ListModels { .. } => "ListModels",
            ClientRequest::SetModelStage { .. } => "SetModelStage",
            ClientRequest::StartRollout(_) => "StartRollout",
            ClientRequest::ListRollouts { .. } => "ListRollouts",
            ClientRequest::RolloutAction { .. } => "RolloutAction",
            ClientRequest::RouterSync(_) => "RouterSync",
            ClientRequest::AgentGpus => "AgentGpus",
            ClientRequest::ModelPlacements { .. } => "ModelPlacements",
        }
    }

    /// Who may send this request. Every variant is decided here, with no catch-all arm, so
    /// a new request does not build without a decision.
    pub fn access(&self) -> Access {
        match self {
            ClientRequest::SubmitSweep(_)
            | ClientRequest::ListSweeps
            | ClientRequest::SweepStatus(_)
            | ClientRequest::CancelSweep(_)
            | ClientRequest::BestTrial(_)
            | ClientRequest::ListTrials(_)
            | ClientRequest::WatchSweep(_)
            | ClientRequest::WatchSweepFrom { .. }
            | ClientRequest::SweepDetail(_)
            | ClientRequest::ListModels { .. }
            | ClientRequest::ModelPlacements { .. }
            | ClientRequest::ListRollouts { .. } => Access::Client,
            // Straight into production skips the canary: operators only.
            ClientRequest::RegisterModel(request) => {
                if request.stage == ModelStage::Staging {
                    Access::Client
                } else {
                    Access::Admin
                }
            }
            ClientRequest::ListAgents
            | ClientRequest::ClusterStatus
            | ClientRequest::AutoscaleStatus
            | ClientRequest::Scale(_)
            | ClientRequest::AgentAdmin { .. }
            | ClientRequest::SetModelStage { .. }
            | ClientRequest::StartRollout(_)
            | ClientRequest::RolloutAction { .. }
            | ClientRequest::AgentGpus => Access::Admin,
            // Its counters decide canaries: only routers (and operators) may post them.
            ClientRequest::RouterSync(_) => Access::Router,
        }
    }

    /// One request of every kind, with placeholder contents (sweep 1, model `m`, agent `a`):
    /// for checks that must cover every request, such as the permission test that sends each
    /// one with each certificate to a real coordinator. A test in this module fails when a
    /// kind is missing. `RegisterModel` appears twice: as staging (client) and as production
    /// (admin), the one request whose permission depends on its contents.
    pub fn example_of_each_kind() -> Vec<ClientRequest> {
        let sweep = SweepId(1);
        let register = |stage| {
            ClientRequest::RegisterModel(RegisterModel {
                name: "m".into(),
                version: None,
                sweep,
                trial: None,
                description: String::new(),
                stage,
            })
        };
        vec![
            ClientRequest::SubmitSweep(Box::new(SweepSpec::example())),
            ClientRequest::ListSweeps,
            ClientRequest::SweepStatus(sweep),
            ClientRequest::CancelSweep(sweep),
            ClientRequest::BestTrial(sweep),
            ClientRequest::ListTrials(sweep),
            ClientRequest::WatchSweep(sweep),
            ClientRequest::WatchSweepFrom { sweep, from: 0 },
            ClientRequest::ListAgents,
            ClientRequest::ClusterStatus,
            ClientRequest::SweepDetail(sweep),
            ClientRequest::AutoscaleStatus,
            ClientRequest::Scale(ScaleRequest {
                desired: None,
                min: None,
                max: None,
            }),
            ClientRequest::AgentAdmin {
                agent: AgentId("a".into()),
                action: AgentAction::Cordon,
            },
            register(ModelStage::Staging),
            register(ModelStage::Production),
            ClientRequest::ListModels { name: None },
            ClientRequest::ModelPlacements { name: None },
            ClientRequest::SetModelStage {
                model: ModelRef {
                    name: "m".into(),
                    version: crate::models::SemVer::new(1, 0, 0),
                },
                stage: ModelStage::Archived,
            },
            ClientRequest::StartRollout(StartRollout {
                model: "m".into(),
                canary: crate::models::SemVer::new(1, 1, 0),
                policy: None,
            }),
            ClientRequest::ListRollouts { model: None },
            ClientRequest::RolloutAction {
                model: "m".into(),
                action: RolloutAction::Pause,
            },
            ClientRequest::RouterSync(RouterReport {
                router: "permission-check".into(),
                rollouts: vec![],
            }),
            ClientRequest::AgentGpus,
        ]
    }
}

/// `flotilla cluster scale`: every field that is `Some` is changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub desired: Option<u32>,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentAction {
    /// Checkpoint and stop every trial the agent runs (they resume elsewhere, no retry
    /// budget spent) and place nothing new there.
    Drain,
    /// Place nothing new there; running trials go on.
    Cordon,
    /// Undo a cordon (not a drain the agent started itself).
    Uncordon,
}

impl AutoscaleStatus {
    /// What a coordinator that does not autoscale reports.
    pub fn off() -> AutoscaleStatus {
        AutoscaleStatus {
            provider: "none".into(),
            min: 0,
            max: 0,
            desired: 0,
            actual: 0,
            demand_slots: 0,
            protected: Vec::new(),
            terminating: Vec::new(),
            reason: "this coordinator does not autoscale (start it with --autoscale)".into(),
            error: None,
        }
    }
}

/// The autoscaler as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscaleStatus {
    /// `aws:GROUP`, `local`, or `none` when the coordinator does not autoscale.
    pub provider: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// Instances pending or in service.
    pub actual: u32,
    /// Slots of pending plus running trials at the last check.
    pub demand_slots: u32,
    /// Instances protected from scale-in (they run trials).
    pub protected: Vec<String>,
    /// Instances being terminated (draining first).
    pub terminating: Vec<String>,
    /// The last decision, in words.
    pub reason: String,
    /// The last provider error, if the last check had one.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    SweepSubmitted(SweepSummary),
    Sweeps(Vec<SweepSummary>),
    Status(SweepSummary),
    Cancelled(SweepSummary),
    Best(Option<TrialRecord>),
    Trials(Vec<TrialRecord>),
    Event(SweepEvent),
    Agents(Vec<AgentInfo>),
    Error(ApiError),
    ClusterStatus(ClusterStatus),
    SweepDetail(Box<SweepDetail>),
    Autoscale(AutoscaleStatus),
    Models(Vec<ModelVersion>),
    Rollouts(Vec<RolloutRecord>),
    Routes(Vec<Route>),
    /// Answer to `AgentGpus` (protocol 10).
    AgentGpus(Vec<AgentGpus>),
    /// Answer to `ModelPlacements` (protocol 12).
    Placements(Vec<crate::models::Placement>),
    /// One event of a `WatchSweepFrom` stream (protocol 13). `seq` grows through the sweep's
    /// life across leaders (a leader's numbers start above every earlier leader's); 0 marks a
    /// live-only event (metric points) that is never replayed.
    SequencedEvent {
        seq: u64,
        event: SweepEvent,
    },
}

/// Everything a report needs beyond the trial list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepDetail {
    pub summary: SweepSummary,
    pub spec: SweepSpec,
    /// The objective metric by step, per trial that reported one while this leader held the
    /// sweep (curves are kept in memory, thinned to at most a few hundred points each). A
    /// trial that paused at an ASHA rung (the promotion form) has one curve per stretch
    /// between its pauses, in order: each but the last ends where the trial paused, and the
    /// next begins where its promoted attempt resumed.
    pub curves: Vec<LearningCurve>,
}

/// One trial's objective metric by step (or one stretch of it between pauses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearningCurve {
    /// The trial's number in its sweep.
    pub trial: u32,
    pub metric: String,
    /// (step, value), steps increasing.
    pub points: Vec<(u64, f64)>,
}

/// The control plane as the leader sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The leader's name (its process) and the address it advertises.
    pub leader: String,
    pub leader_address: String,
    pub epoch: Epoch,
    /// Every coordinator campaigning in the election, the leader first.
    pub replicas: Vec<ReplicaInfo>,
    /// `local file PATH` or `etcd ENDPOINTS`.
    pub store: String,
    /// Each etcd member's health; empty with the local store.
    pub etcd: Vec<EtcdMemberStatus>,
    pub agents: u32,
    pub slots: u32,
    pub busy_slots: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub address: String,
    pub leader: bool,
    /// The revision at which the replica joined the election (the leader's is its epoch).
    pub campaign_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtcdMemberStatus {
    pub name: String,
    pub endpoint: String,
    pub healthy: bool,
    /// Whether this member is etcd's own raft leader.
    pub raft_leader: bool,
    pub version: String,
    pub db_size_bytes: u64,
    /// Why the member is unhealthy.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
    /// For invalid sweeps: every problem, each with its field path.
    pub problems: Vec<crate::spec::FieldProblem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiErrorKind {
    InvalidSweep,
    NotFound,
    PermissionDenied,
    Unavailable,
    Internal,
    /// An admin request that cannot be carried out as asked (protocol 8).
    InvalidRequest,
}

/// One agent's GPUs as the scheduler counts them (protocol 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentGpus {
    pub agent: AgentId,
    pub gpus: u32,
    /// GPUs held by placed or running attempts.
    pub busy_gpus: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SweepState {
    Running,
    /// Every trial reached a final state.
    Completed,
    Cancelled,
    /// The wall-clock budget ran out.
    TimedOut,
    /// A phase of a phased sweep ended without a feasible winner, so the phases after it
    /// could not run.
    Failed,
}

impl SweepState {
    pub fn is_final(self) -> bool {
        self != SweepState::Running
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TrialCounts {
    pub pending: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub stopped: u32,
    pub paused: u32,
}

impl TrialCounts {
    pub fn finished(&self) -> u32 {
        self.succeeded + self.failed + self.stopped
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSummary {
    pub id: SweepId,
    pub name: String,
    pub state: SweepState,
    pub objective_metric: String,
    pub direction: Direction,
    pub max_trials: u32,
    pub counts: TrialCounts,
    pub best: Option<TrialRecord>,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    /// Each phase in order (one for a single-phase sweep): how far it got and its winner.
    pub phases: Vec<PhaseSummary>,
    /// Why the sweep was stopped when its own actor failed (protocol 13): the rest of the
    /// cluster went on.
    pub message: Option<String>,
}

/// Where one phase of a sweep stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseSummary {
    pub name: String,
    /// Trials the phase may create (its budget, or a smaller grid).
    pub max_trials: u32,
    /// Trials created so far.
    pub trials: u32,
    /// Whether every trial of the phase is final and it will create no more.
    pub done: bool,
    /// The phase's best feasible succeeded trial (number); its parameters are fixed for the
    /// phases after it.
    pub winner: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrialState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Stopped,
    /// ASHA's promotion form: the trial trained up to a rung and waits there, with its
    /// checkpoint, to be promoted (or stopped when the sweep ends).
    Paused,
}

impl TrialState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TrialState::Succeeded | TrialState::Failed | TrialState::Stopped
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            TrialState::Pending => "pending",
            TrialState::Running => "running",
            TrialState::Succeeded => "succeeded",
            TrialState::Failed => "failed",
            TrialState::Stopped => "stopped",
            TrialState::Paused => "paused",
        }
    }
}

/// A trial as the coordinator knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub id: TrialId,
    /// The current (or last) attempt number, from 0.
    pub attempt: u32,
    pub params: Params,
    pub state: TrialState,
    /// Final metrics of a succeeded trial.
    pub metrics: Metrics,
    /// The objective metric's final value.
    pub objective: Option<f64>,
    /// Whether the final metrics meet every constraint.
    pub feasible: bool,
    pub agent: Option<AgentId>,
    /// Crashes counted against the retry budget.
    pub failures: u32,
    /// Unix milliseconds of the current attempt's dispatch and of the trial's end.
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Run time of the final attempt, as measured by the agent.
    pub duration_ms: Option<u64>,
    /// Why the trial failed or stopped.
    pub message: Option<String>,
    /// Microseconds from the placement decision to the agent's report that the attempt
    /// started (includes one network hop back).
    pub dispatch_latency_us: Option<u64>,
    /// The newest checkpoint of the trial; a new attempt resumes from it.
    pub checkpoint: Option<CheckpointRef>,
    /// The phase (index in the sweep's phases) the trial belongs to; 0 without phases.
    pub phase: u32,
    /// ASHA's promotion form: the objective the trial had at each rung it paused at, from the
    /// first rung up. Its length is the rung the current attempt trains up to.
    pub rungs: Vec<f64>,
    /// Times it was run again because its agent was lost while running it (protocol 13),
    /// bounded by `[retries] max_reschedules`.
    pub reschedules: u32,
    /// The agents it was running on when they were lost, oldest first (at most
    /// [`LOST_ON_KEPT`]).
    pub lost_on: Vec<AgentId>,
    /// The sweep's event sequence number at the trial's last change (protocol 13): a watcher
    /// resuming after number N is sent the trials whose `seq` is above N.
    pub seq: u64,
}

impl TrialRecord {
    /// A new trial of `phase` at `params`: pending, attempt 0, nothing run or measured yet.
    pub fn pending(id: TrialId, params: Params, phase: u32) -> TrialRecord {
        TrialRecord {
            id,
            attempt: 0,
            params,
            state: TrialState::Pending,
            metrics: Metrics::new(),
            objective: None,
            feasible: false,
            agent: None,
            failures: 0,
            started_ms: None,
            finished_ms: None,
            duration_ms: None,
            message: None,
            dispatch_latency_us: None,
            checkpoint: None,
            phase,
            rungs: Vec::new(),
            reschedules: 0,
            lost_on: Vec::new(),
            seq: 0,
        }
    }
}

/// Agents a trial record keeps in `lost_on`.
pub const LOST_ON_KEPT: usize = 16;

/// What a watcher hears about a sweep. More kinds may come: match with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SweepEvent {
    TrialStarted {
        attempt: AttemptId,
        agent: AgentId,
        params: Params,
    },
    Metric {
        attempt: AttemptId,
        point: MetricPoint,
    },
    TrialFinished(TrialRecord),
    SweepFinished(SweepSummary),
    /// A phase of a phased sweep ended; its winner's parameters are fixed from now on.
    PhaseFinished {
        phase: PhaseSummary,
        winner: Option<TrialRecord>,
    },
    /// ASHA's promotion form: the trial reached a rung and waits to be promoted.
    TrialPaused(TrialRecord),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: AgentId,
    pub hostname: String,
    pub slots: u32,
    pub busy_slots: u32,
    pub gpus: u32,
    pub connected: bool,
    /// Milliseconds since the agent's last heartbeat.
    pub last_seen_ms_ago: u64,
    pub running: Vec<AttemptId>,
    /// The agent is shutting down: it finishes its trials and takes no new ones.
    pub draining: bool,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A number per kind of request, by a `match` without a catch-all: a new request does
    /// not build until it is numbered here, and the test below then fails until
    /// `example_of_each_kind` sends it.
    fn kind_number(request: &ClientRequest) -> usize {
        match request {
            ClientRequest::SubmitSweep(_) => 0,
            ClientRequest::ListSweeps => 1,
            ClientRequest::SweepStatus(_) => 2,
            ClientRequest::CancelSweep(_) => 3,
            ClientRequest::BestTrial(_) => 4,
            ClientRequest::ListTrials(_) => 5,
            ClientRequest::WatchSweep(_) => 6,
            ClientRequest::ListAgents => 7,
            ClientRequest::ClusterStatus => 8,
            ClientRequest::SweepDetail(_) => 9,
            ClientRequest::AutoscaleStatus => 10,
            ClientRequest::Scale(_) => 11,
            ClientRequest::AgentAdmin { .. } => 12,
            ClientRequest::RegisterModel(_) => 13,
            ClientRequest::ListModels { .. } => 14,
            ClientRequest::SetModelStage { .. } => 15,
            ClientRequest::StartRollout(_) => 16,
            ClientRequest::ListRollouts { .. } => 17,
            ClientRequest::RolloutAction { .. } => 18,
            ClientRequest::RouterSync(_) => 19,
            ClientRequest::AgentGpus => 20,
            ClientRequest::ModelPlacements { .. } => 21,
            ClientRequest::WatchSweepFrom { .. } => 22,
        }
    }
    const KINDS: usize = 23;

    #[test]
    fn the_examples_hold_every_kind_of_request() {
        let mut seen = [false; KINDS];
        for request in ClientRequest::example_of_each_kind() {
            seen[kind_number(&request)] = true;
        }
        let missing: Vec<usize> = (0..KINDS).filter(|kind| !seen[*kind]).collect();
        assert!(missing.is_empty(), "kinds without an example: {missing:?}");
    }

    /// docs/protocol.md's permission table says the same as `ClientRequest::access`, row by
    /// row: the table is what operators read, `access` is what the coordinator enforces.
    #[test]
    fn the_documented_permission_table_matches_the_code() {
        let doc = include_str!("../../docs/protocol.md");
        let start = doc
            .find("<!-- permissions:begin -->")
            .expect("docs/protocol.md marks its permission table");
        let end = doc
            .find("<!-- permissions:end -->")
            .expect("docs/protocol.md ends its permission table");
        let mut documented = BTreeMap::new();
        for line in doc[start..end]
            .lines()
            .filter(|line| line.starts_with("| `"))
        {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let request = cells[0].trim_matches('`').to_string();
            documented.insert(request, cells[1].to_string());
        }
        for request in ClientRequest::example_of_each_kind() {
            let key = match &request {
                ClientRequest::RegisterModel(register) if register.stage != ModelStage::Staging => {
                    "RegisterModel (stage production or archived)".to_string()
                }
                ClientRequest::RegisterModel(_) => "RegisterModel (stage staging)".to_string(),
                other => other.name().to_string(),
            };
            let holders = documented.get(&key).unwrap_or_else(|| {
                panic!("docs/protocol.md's permission table has no row for {key}")
            });
            assert_eq!(holders, request.access().holders(), "{key}");
        }
    }

    #[test]
    fn access_follows_the_roles() {
        for role in Role::ALL {
            assert_eq!(
                Access::Client.permits(role),
                matches!(role, Role::Client | Role::Admin)
            );
            assert_eq!(Access::Admin.permits(role), role == Role::Admin);
            assert_eq!(
                Access::Router.permits(role),
                matches!(role, Role::Router | Role::Admin)
            );
        }
    }
}
