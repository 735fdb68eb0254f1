//! Models: the model registry, where versions are served, and the routes routers follow.
//!
//! Place in the tree: a child of the Leader, parent of one [`Rollout`] actor per active
//! rollout.
//!
//! - **Registry.** `register` seals a trial's checkpoint into an immutable artifact: an agent
//!   copies it to `models/<name>/<version>/model.ckpt` (a built-in trainer's, checked to load
//!   as a model) or `checkpoint.tar` (a command trial's archive, checked to carry its
//!   manifest, stored with the sweep's `[serving]` program) in the shared artifact store
//!   (create-once), and answers with its SHA-256; only then is the version stored. Stages: staging → production (one per model) → archived.
//! - **Serving.** Agents that serve (`flotilla agent --serve`) are told to load the
//!   production version of each model and the baseline and canary of each active rollout:
//!   a built-in model on every serving agent, a served program's version on `replicas` of
//!   them, each replica holding the slots and GPUs of its `[serving]` table, placed by the
//!   Scheduler with the trials (a lost or drained agent's replica placed again on another);
//!   agents report what is loading, ready, restarting or failed.
//! - **Routes.** Routers send their per-rollout traffic counters every second and get the
//!   routes back: each model's production version and, during a rollout, the canary and its
//!   weight. Each check interval the counters of every router are summed per rollout and
//!   handed to that rollout's actor.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_protocol::messages::{ApiError, ApiErrorKind, Command, CoordinatorCommand};
use flotilla_protocol::models::{
    Artifact, ArtifactFormat, Lineage, ModelRef, ModelStage, ModelVersion, Placement,
    RegisterModel, RolloutAction, RolloutRecord, RolloutState, Route, RouteTarget, RouterReport,
    SealRequest, SemVer, ServeState, ServedModel, ServingReport, StartRollout, check_model_name,
};
use flotilla_protocol::spec::ServingSpec;
use flotilla_protocol::{AgentId, Epoch};
use flotilla_rollout::Pair;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc;

use super::rollout::{Rollout, RolloutArgs, RolloutMsg};
use super::scheduler::SchedulerMsg;
use crate::clock::now_ms;
use crate::placement::ReplicaDemand;
use crate::store::{StateStore, StateWrite};

mod registry;
mod rollouts;
mod serving;

/// How long an agent may take to seal an artifact.
const SEAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Oldest protocol version that knows `Serve` and `SealModel` as this build sends them.
const SERVING_VERSION: u16 = 13;
/// How long a version no longer wanted stays loaded: routers follow new routes within a
/// sync interval (1 s by default), so requests already on their way still find it.
const RETIRE_GRACE: Duration = Duration::from_secs(10);
/// After this leader starts, rollouts are checked only once routers have had time to report
/// their counters (a check on partial totals could move a stage window).
const CHECK_WARMUP: Duration = Duration::from_secs(3);

/// A registration with everything the session found out about the trial.
pub struct Registration {
    pub request: RegisterModel,
    pub lineage: Lineage,
    /// The sweep's `[serving]` program, for a command trial's checkpoint.
    pub serving: Option<ServingSpec>,
}

pub enum ModelsMsg {
    /// An agent's serving report, with the link to reach it.
    AgentServing {
        agent: AgentId,
        connection: u64,
        commands: mpsc::UnboundedSender<CoordinatorCommand>,
        version: u16,
        report: ServingReport,
    },
    /// An agent's connection closed.
    AgentGone {
        agent: AgentId,
        connection: u64,
    },
    Sealed {
        agent: AgentId,
        request: u64,
        result: Result<Artifact, String>,
    },
    SealTimedOut(u64),
    Register {
        registration: Box<Registration>,
        reply: RpcReplyPort<Result<ModelVersion, ApiError>>,
    },
    List {
        name: Option<String>,
        reply: RpcReplyPort<Vec<ModelVersion>>,
    },
    Placements {
        name: Option<String>,
        reply: RpcReplyPort<Vec<Placement>>,
    },
    SetStage {
        model: ModelRef,
        stage: ModelStage,
        reply: RpcReplyPort<Result<Vec<ModelVersion>, ApiError>>,
    },
    StartRollout {
        request: Box<StartRollout>,
        reply: RpcReplyPort<Result<RolloutRecord, ApiError>>,
    },
    ListRollouts {
        model: Option<String>,
        reply: RpcReplyPort<Vec<RolloutRecord>>,
    },
    Act {
        model: String,
        action: RolloutAction,
        reply: RpcReplyPort<Result<RolloutRecord, ApiError>>,
    },
    RouterSync {
        report: RouterReport,
        reply: RpcReplyPort<Vec<Route>>,
    },
    /// A Rollout actor stored a change.
    RolloutChanged(Box<RolloutRecord>),
    /// A Rollout actor's canary passed: store the promoted rollout, the canary as production
    /// and the baseline as archived in one write, then route by it.
    Promote {
        record: Box<RolloutRecord>,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Time to check every active rollout.
    Tick,
}

pub struct ModelsArgs {
    pub epoch: Epoch,
    pub store: Arc<dyn StateStore>,
    pub models: BTreeMap<(String, SemVer), ModelVersion>,
    pub rollouts: BTreeMap<u64, RolloutRecord>,
    /// Between rollout checks.
    pub check_interval: Duration,
    /// Places served programs' replicas, which hold agent slots and GPUs as trials do.
    pub scheduler: ActorRef<SchedulerMsg>,
}

/// An agent that speaks protocol 9, as far as serving goes.
struct ServingAgent {
    connection: u64,
    commands: mpsc::UnboundedSender<CoordinatorCommand>,
    version: u16,
    endpoint: Option<String>,
    models: Vec<(ModelRef, ServeState)>,
    /// The GPUs each of its served programs' replicas holds.
    gpus: BTreeMap<ModelRef, Vec<u32>>,
    /// What it was last told to serve.
    assigned: Option<Vec<ServedModel>>,
}

struct PendingSeal {
    agent: AgentId,
    version: ModelVersion,
    reply: RpcReplyPort<Result<ModelVersion, ApiError>>,
}

pub struct ModelsState {
    epoch: Epoch,
    store: Arc<dyn StateStore>,
    models: BTreeMap<(String, SemVer), ModelVersion>,
    rollouts: BTreeMap<u64, RolloutRecord>,
    controllers: HashMap<u64, ActorRef<RolloutMsg>>,
    agents: BTreeMap<AgentId, ServingAgent>,
    /// Each router's newest counters, per rollout.
    routers: HashMap<String, HashMap<u64, Pair>>,
    seals: HashMap<u64, PendingSeal>,
    next_request: u64,
    /// What `assign` last wanted served, and versions no longer wanted, kept loaded until
    /// routers have the routes without them.
    current: Vec<ServedModel>,
    retired: HashMap<ModelRef, (Instant, ServedModel)>,
    /// The agents each served program's version is placed on, as the Scheduler last said
    /// (built-in models are served by every serving agent). Kept while the agents stay; a
    /// lost agent's replica is placed again on another.
    placements: BTreeMap<ModelRef, Vec<AgentId>>,
    scheduler: ActorRef<SchedulerMsg>,
    /// Checks wait until routers have reported to this leader.
    started: Instant,
}

pub struct Models;

fn api_error(kind: ApiErrorKind, message: impl Into<String>) -> ApiError {
    ApiError {
        kind,
        message: message.into(),
        problems: Vec::new(),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    api_error(ApiErrorKind::InvalidRequest, message)
}

impl Actor for Models {
    type Msg = ModelsMsg;
    type State = ModelsState;
    type Arguments = ModelsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ModelsMsg>,
        args: ModelsArgs,
    ) -> Result<ModelsState, ActorProcessingErr> {
        myself.send_interval(args.check_interval, || ModelsMsg::Tick);
        let mut state = ModelsState {
            epoch: args.epoch,
            store: args.store,
            models: args.models,
            rollouts: args.rollouts,
            controllers: HashMap::new(),
            agents: BTreeMap::new(),
            routers: HashMap::new(),
            seals: HashMap::new(),
            next_request: 1,
            current: Vec::new(),
            retired: HashMap::new(),
            placements: BTreeMap::new(),
            scheduler: args.scheduler,
            started: Instant::now(),
        };
        state.repair_promotions().await?;
        let active: Vec<RolloutRecord> = state
            .rollouts
            .values()
            .filter(|rollout| rollout.state.is_active())
            .cloned()
            .collect();
        for record in active {
            state.spawn_controller(&myself, record).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ModelsMsg>,
        message: ModelsMsg,
        state: &mut ModelsState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            // Serving agents (serving.rs).
            ModelsMsg::AgentServing {
                agent,
                connection,
                commands,
                version,
                report,
            } => {
                state
                    .agent_serving(agent, connection, commands, version, report)
                    .await;
            }
            ModelsMsg::AgentGone { agent, connection } => {
                state.agent_gone(&agent, connection).await;
            }
            ModelsMsg::Placements { name, reply } => {
                let _ = reply.send(state.placements(name.as_deref()));
            }
            // The registry (registry.rs).
            ModelsMsg::Register {
                registration,
                reply,
            } => {
                if let Err(error) = state.start_registration(&myself, *registration, reply) {
                    tracing::debug!(?error, "registration refused");
                }
            }
            ModelsMsg::Sealed {
                agent,
                request,
                result,
            } => state.sealed(&agent, request, result).await,
            ModelsMsg::SealTimedOut(request) => state.seal_timed_out(request),
            ModelsMsg::List { name, reply } => {
                let _ = reply.send(state.versions(name.as_deref()));
            }
            ModelsMsg::SetStage {
                model,
                stage,
                reply,
            } => {
                let result = state.set_stage(&model, stage).await;
                let _ = reply.send(result);
                state.assign().await;
            }
            // Rollouts and routes (rollouts.rs).
            ModelsMsg::StartRollout { request, reply } => {
                let result = state.start_rollout(&myself, *request).await;
                let _ = reply.send(result);
                state.assign().await;
            }
            ModelsMsg::ListRollouts { model, reply } => {
                let _ = reply.send(state.rollouts_of(model.as_deref()));
            }
            ModelsMsg::Act {
                model,
                action,
                reply,
            } => state.act(model, action, reply),
            ModelsMsg::RouterSync { report, reply } => {
                let _ = reply.send(state.router_sync(report));
            }
            ModelsMsg::RolloutChanged(record) => state.rollout_changed(*record).await,
            ModelsMsg::Promote { record, reply } => {
                let result = state.promote(&record).await.map_err(|error| error.message);
                if result.is_ok() {
                    state.controllers.remove(&record.id);
                }
                let _ = reply.send(result);
                state.assign().await;
            }
            ModelsMsg::Tick => state.tick().await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ModelsMsg>,
        event: SupervisionEvent,
        _state: &mut ModelsState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(child, error) = event {
            // Its record is stored; failing here lets the Leader's crash-only rule restart
            // the coordinator, which resumes the rollout from the store.
            return Err(format!("rollout controller {} failed: {error}", child.get_id()).into());
        }
        Ok(())
    }
}

impl ModelsState {
    /// Served programs' placements follow the Scheduler, which fills missing replicas as
    /// capacity frees and moves those of drained agents; rollouts are checked once routers
    /// have had time to report.
    async fn tick(&mut self) {
        let programs = self.current.iter().any(|served| served.serving.is_some());
        if programs || !self.retired.is_empty() {
            self.assign().await;
        }
        if self.started.elapsed() >= CHECK_WARMUP {
            self.check_rollouts();
        }
    }

    fn production(&self, name: &str) -> Option<&ModelVersion> {
        self.models
            .values()
            .find(|model| model.name == name && model.stage == ModelStage::Production)
    }

    fn active_rollout(&self, name: &str) -> Option<&RolloutRecord> {
        self.rollouts
            .values()
            .find(|rollout| rollout.model == name && rollout.state.is_active())
    }

    /// Stores writes and applies them to memory once durable.
    async fn commit(&mut self, writes: Vec<StateWrite>) -> Result<(), ApiError> {
        self.store
            .write(writes.clone())
            .durable()
            .await
            .map_err(|error| api_error(ApiErrorKind::Internal, error.to_string()))?;
        for write in writes {
            match write {
                StateWrite::Model(model) => {
                    self.models
                        .insert((model.name.clone(), model.version), *model);
                }
                StateWrite::Rollout(rollout) => {
                    self.rollouts.insert(rollout.id, *rollout);
                }
                _ => {}
            }
        }
        Ok(())
    }
}
