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

/// Whether a router's counters can be real: errors within requests, correct within labelled,
/// finite sums, and counts far from overflowing when summed.
fn plausible(pair: &Pair) -> bool {
    const LIMIT: u64 = 1 << 52;
    [pair.baseline, pair.canary].iter().all(|arm| {
        arm.requests < LIMIT
            && arm.labelled < LIMIT
            && arm.errors <= arm.requests
            && arm.correct <= arm.labelled
            && arm.log_latency_sum.is_finite()
            && arm.log_latency_sq_sum.is_finite()
            && arm.log_latency_sq_sum >= 0.0
    })
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
            ModelsMsg::AgentServing {
                agent,
                connection,
                commands,
                version,
                report,
            } => {
                let entry = state
                    .agents
                    .entry(agent.clone())
                    .or_insert_with(|| ServingAgent {
                        connection,
                        commands: commands.clone(),
                        version,
                        endpoint: None,
                        models: Vec::new(),
                        gpus: BTreeMap::new(),
                        assigned: None,
                    });
                if entry.connection != connection {
                    // A new connection: it knows nothing of what the old one was told.
                    entry.connection = connection;
                    entry.commands = commands;
                    entry.version = version;
                    entry.assigned = None;
                }
                entry.endpoint = report.endpoint;
                entry.models = report.models;
                entry.gpus = report.gpus;
                state.assign().await;
            }
            ModelsMsg::AgentGone { agent, connection } => {
                if state
                    .agents
                    .get(&agent)
                    .is_some_and(|entry| entry.connection == connection)
                {
                    state.agents.remove(&agent);
                    let lost: Vec<u64> = state
                        .seals
                        .iter()
                        .filter(|(_, seal)| seal.agent == agent)
                        .map(|(request, _)| *request)
                        .collect();
                    for request in lost {
                        if let Some(seal) = state.seals.remove(&request) {
                            let _ = seal.reply.send(Err(api_error(
                                ApiErrorKind::Unavailable,
                                format!("agent {agent} disconnected while sealing the artifact; register again"),
                            )));
                        }
                    }
                    // Its served programs' replicas go elsewhere.
                    state.assign().await;
                }
            }
            ModelsMsg::Sealed {
                agent,
                request,
                result,
            } => {
                let Some(seal) = state.seals.remove(&request) else {
                    return Ok(());
                };
                if seal.agent != agent {
                    tracing::warn!(%agent, request, "a seal answer from an agent that was not asked");
                }
                let answer = match result {
                    Ok(artifact) => state.complete_registration(seal.version, artifact).await,
                    Err(message) => Err(invalid(format!(
                        "{}@{}: the checkpoint could not be sealed: {message}",
                        seal.version.name, seal.version.version
                    ))),
                };
                let _ = seal.reply.send(answer);
                state.assign().await;
            }
            ModelsMsg::SealTimedOut(request) => {
                if let Some(seal) = state.seals.remove(&request) {
                    let _ = seal.reply.send(Err(api_error(
                        ApiErrorKind::Unavailable,
                        format!(
                            "agent {} did not seal the artifact within {SEAL_TIMEOUT:?}",
                            seal.agent
                        ),
                    )));
                }
            }
            ModelsMsg::Register {
                registration,
                reply,
            } => {
                if let Err(error) = state.start_registration(&myself, *registration, reply) {
                    tracing::debug!(?error, "registration refused");
                }
            }
            ModelsMsg::List { name, reply } => {
                let versions = state
                    .models
                    .values()
                    .filter(|model| name.as_ref().is_none_or(|name| &model.name == name))
                    .cloned()
                    .collect();
                let _ = reply.send(versions);
            }
            ModelsMsg::Placements { name, reply } => {
                let _ = reply.send(state.placements(name.as_deref()));
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
            ModelsMsg::StartRollout { request, reply } => {
                let result = state.start_rollout(&myself, *request).await;
                let _ = reply.send(result);
                state.assign().await;
            }
            ModelsMsg::ListRollouts { model, reply } => {
                let rollouts = state
                    .rollouts
                    .values()
                    .rev()
                    .filter(|rollout| model.as_ref().is_none_or(|model| &rollout.model == model))
                    .cloned()
                    .collect();
                let _ = reply.send(rollouts);
            }
            ModelsMsg::Act {
                model,
                action,
                reply,
            } => {
                let active = state
                    .rollouts
                    .values()
                    .find(|rollout| rollout.model == model && rollout.state.is_active())
                    .map(|rollout| rollout.id);
                let controller = active.and_then(|id| state.controllers.get(&id).cloned());
                let canary_ready =
                    active
                        .and_then(|id| state.rollouts.get(&id))
                        .is_some_and(|rollout| {
                            !state
                                .endpoints(&ModelRef {
                                    name: rollout.model.clone(),
                                    version: rollout.canary,
                                })
                                .is_empty()
                        });
                if action == RolloutAction::Promote && controller.is_some() && !canary_ready {
                    let _ = reply.send(Err(invalid(format!(
                        "the canary of '{model}' is not ready on any serving agent; promoting it would leave the model unserved"
                    ))));
                    return Ok(());
                }
                match controller {
                    None => {
                        let _ = reply.send(Err(api_error(
                            ApiErrorKind::NotFound,
                            format!("model '{model}' has no active rollout"),
                        )));
                    }
                    Some(controller) => {
                        // The controller answers; Models must not wait on it (it reports back).
                        tokio::spawn(async move {
                            let answer =
                                super::ask(&controller, |reply| RolloutMsg::Act { action, reply })
                                    .await;
                            let _ = reply.send(match answer {
                                Ok(Ok(record)) => Ok(record),
                                Ok(Err(message)) => Err(invalid(message)),
                                Err(error) => {
                                    Err(api_error(ApiErrorKind::Unavailable, error.to_string()))
                                }
                            });
                        });
                    }
                }
            }
            ModelsMsg::RouterSync { report, reply } => {
                let counters = report
                    .rollouts
                    .iter()
                    .filter(|traffic| {
                        let valid = plausible(&traffic.traffic);
                        if !valid {
                            tracing::warn!(router = %report.router, rollout = traffic.rollout, "ignoring impossible counters from a router");
                        }
                        valid
                    })
                    .map(|traffic| (traffic.rollout, traffic.traffic))
                    .collect();
                state.routers.insert(report.router, counters);
                let _ = reply.send(state.routes());
            }
            ModelsMsg::RolloutChanged(record) => {
                let record = *record;
                if !record.state.is_active() {
                    state.controllers.remove(&record.id);
                }
                state.rollouts.insert(record.id, record);
                state.assign().await;
            }
            ModelsMsg::Promote { record, reply } => {
                let record = *record;
                let result = state.promote(&record).await.map_err(|error| error.message);
                if result.is_ok() {
                    state.controllers.remove(&record.id);
                }
                let _ = reply.send(result);
                state.assign().await;
            }
            ModelsMsg::Tick => {
                // Served programs' placements follow the Scheduler, which fills missing
                // replicas as capacity frees and moves those of drained agents.
                let programs = state.current.iter().any(|served| served.serving.is_some());
                if programs || !state.retired.is_empty() {
                    state.assign().await;
                }
                if state.started.elapsed() >= CHECK_WARMUP {
                    state.check_rollouts();
                }
            }
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
    async fn spawn_controller(
        &mut self,
        myself: &ActorRef<ModelsMsg>,
        record: RolloutRecord,
    ) -> Result<(), ActorProcessingErr> {
        let id = record.id;
        let args = RolloutArgs {
            record,
            store: self.store.clone(),
            models: myself.clone(),
        };
        let (controller, _) = Actor::spawn_linked(None, Rollout, args, myself.get_cell()).await?;
        self.controllers.insert(id, controller);
        Ok(())
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

    fn start_registration(
        &mut self,
        myself: &ActorRef<ModelsMsg>,
        registration: Registration,
        reply: RpcReplyPort<Result<ModelVersion, ApiError>>,
    ) -> Result<(), ()> {
        let Registration {
            request,
            lineage,
            serving,
        } = registration;
        let refuse = |reply: RpcReplyPort<Result<ModelVersion, ApiError>>, error: ApiError| {
            let _ = reply.send(Err(error));
            Err(())
        };
        if let Err(message) = check_model_name(&request.name) {
            return refuse(reply, invalid(message));
        }
        if request.stage == ModelStage::Archived {
            return refuse(reply, invalid("a new version cannot start archived"));
        }
        if request.stage == ModelStage::Production && self.active_rollout(&request.name).is_some() {
            return refuse(
                reply,
                invalid(format!(
                    "model '{}' has an active rollout; register as staging and roll it out, or abort the rollout first",
                    request.name
                )),
            );
        }
        let pending = |name: &str, version: SemVer| {
            self.seals
                .values()
                .any(|seal| seal.version.name == name && seal.version.version == version)
        };
        let newest = self
            .models
            .keys()
            .filter(|(name, _)| name == &request.name)
            .map(|(_, version)| *version)
            .chain(
                self.seals
                    .values()
                    .filter(|seal| seal.version.name == request.name)
                    .map(|seal| seal.version.version),
            )
            .max();
        let version = match (request.version, newest) {
            (Some(version), _) => version,
            (None, None) => SemVer::new(1, 0, 0),
            (None, Some(newest)) => match newest.next_minor() {
                Some(next) => next,
                None => {
                    return refuse(
                        reply,
                        invalid(format!(
                            "{}@{newest} is the newest version and its minor number cannot grow; give --version",
                            request.name
                        )),
                    );
                }
            },
        };
        if self.models.contains_key(&(request.name.clone(), version))
            || pending(&request.name, version)
        {
            return refuse(
                reply,
                invalid(format!(
                    "{}@{version} is already registered; versions are immutable, choose another",
                    request.name
                )),
            );
        }
        let Some((agent, entry)) = self
            .agents
            .iter()
            .find(|(_, entry)| entry.version >= SERVING_VERSION)
        else {
            return refuse(
                reply,
                api_error(
                    ApiErrorKind::Unavailable,
                    "no agent is connected to copy the checkpoint into the artifact store; start one and register again",
                ),
            );
        };
        let request_id = self.next_request;
        self.next_request += 1;
        let (key, format) = match serving {
            None => (
                format!("models/{}/{version}/model.ckpt", request.name),
                ArtifactFormat::BurnModel,
            ),
            Some(_) => (
                format!("models/{}/{version}/checkpoint.tar", request.name),
                ArtifactFormat::CheckpointArchive,
            ),
        };
        let command = CoordinatorCommand {
            epoch: self.epoch,
            command: Command::SealModel(SealRequest {
                request: request_id,
                source: lineage.checkpoint.clone(),
                key,
                format,
            }),
        };
        if entry.commands.send(command).is_err() {
            return refuse(
                reply,
                api_error(
                    ApiErrorKind::Unavailable,
                    format!("agent {agent} just left"),
                ),
            );
        }
        let now = now_ms();
        let model = ModelVersion {
            name: request.name,
            version,
            stage: request.stage,
            lineage,
            artifact: Artifact {
                uri: String::new(),
                sha256: String::new(),
                bytes: 0,
            },
            description: request.description,
            created_ms: now,
            stage_changed_ms: now,
            serving,
        };
        tracing::info!(model = %model.reference(), %agent, "sealing the artifact");
        self.seals.insert(
            request_id,
            PendingSeal {
                agent: agent.clone(),
                version: model,
                reply,
            },
        );
        myself.send_after(SEAL_TIMEOUT, move || ModelsMsg::SealTimedOut(request_id));
        Ok(())
    }

    async fn complete_registration(
        &mut self,
        mut model: ModelVersion,
        artifact: Artifact,
    ) -> Result<ModelVersion, ApiError> {
        model.artifact = artifact;
        if model.stage == ModelStage::Production
            && let Some(rollout) = self.active_rollout(&model.name)
        {
            return Err(invalid(format!(
                "model '{}' got an active rollout ({} → {}) while this version was sealed; register it as staging, or abort the rollout first",
                model.name, rollout.baseline, rollout.canary
            )));
        }
        let mut writes = Vec::new();
        if model.stage == ModelStage::Production {
            writes.extend(self.archive_production(&model.name, model.created_ms));
        }
        writes.push(StateWrite::Model(Box::new(model.clone())));
        self.commit(writes).await?;
        tracing::info!(model = %model.reference(), sha256 = %model.artifact.sha256, stage = model.stage.as_str(), "model version registered");
        Ok(model)
    }

    /// The write that archives the production version of `name` (memory changes once it is
    /// durable, in `commit`).
    fn archive_production(&self, name: &str, now: u64) -> Option<StateWrite> {
        let mut model = self.production(name)?.clone();
        model.stage = ModelStage::Archived;
        model.stage_changed_ms = now;
        Some(StateWrite::Model(Box::new(model)))
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

    async fn set_stage(
        &mut self,
        reference: &ModelRef,
        stage: ModelStage,
    ) -> Result<Vec<ModelVersion>, ApiError> {
        let key = (reference.name.clone(), reference.version);
        let Some(current) = self.models.get(&key).cloned() else {
            return Err(api_error(
                ApiErrorKind::NotFound,
                format!("no model version {reference}"),
            ));
        };
        if current.stage == stage {
            return Ok(vec![current]);
        }
        if let Some(rollout) = self.active_rollout(&reference.name) {
            return Err(invalid(format!(
                "model '{}' has an active rollout ({} → {}); promote or abort it instead",
                reference.name, rollout.baseline, rollout.canary
            )));
        }
        let now = now_ms();
        let mut writes = Vec::new();
        if stage == ModelStage::Production {
            writes.extend(self.archive_production(&reference.name, now));
        }
        let mut changed = current;
        changed.stage = stage;
        changed.stage_changed_ms = now;
        writes.push(StateWrite::Model(Box::new(changed)));
        let versions = writes
            .iter()
            .filter_map(|write| match write {
                StateWrite::Model(model) => Some((**model).clone()),
                _ => None,
            })
            .collect();
        self.commit(writes).await?;
        tracing::info!(model = %reference, stage = stage.as_str(), "stage changed");
        Ok(versions)
    }

    async fn start_rollout(
        &mut self,
        myself: &ActorRef<ModelsMsg>,
        request: StartRollout,
    ) -> Result<RolloutRecord, ApiError> {
        let name = &request.model;
        let policy = request.policy.unwrap_or_default();
        policy
            .validate()
            .map_err(|error| invalid(format!("rollout policy: {error}")))?;
        if !self.models.keys().any(|(model, _)| model == name) {
            return Err(api_error(
                ApiErrorKind::NotFound,
                format!("no model named '{name}' is registered"),
            ));
        }
        if self
            .seals
            .values()
            .any(|seal| &seal.version.name == name && seal.version.stage == ModelStage::Production)
        {
            return Err(invalid(format!(
                "a production version of '{name}' is being registered; start the rollout once it is"
            )));
        }
        let Some(baseline) = self.production(name).map(|model| model.version) else {
            return Err(invalid(format!(
                "model '{name}' has no production version to compare a canary with; register one with --stage production"
            )));
        };
        let Some(canary) = self.models.get(&(name.clone(), request.canary)) else {
            return Err(api_error(
                ApiErrorKind::NotFound,
                format!("no model version {name}@{}", request.canary),
            ));
        };
        if canary.stage != ModelStage::Staging {
            return Err(invalid(format!(
                "{name}@{} is {}; only a staging version can be a canary",
                request.canary,
                canary.stage.as_str()
            )));
        }
        if let Some(active) = self.active_rollout(name) {
            return Err(invalid(format!(
                "model '{name}' already has an active rollout (id {}, canary {})",
                active.id, active.canary
            )));
        }
        let now = now_ms();
        let record = RolloutRecord {
            id: self.rollouts.keys().next_back().map_or(1, |last| last + 1),
            model: name.clone(),
            baseline,
            canary: request.canary,
            canary_weight: policy.stages[0].weight,
            policy,
            state: RolloutState::Running,
            stage: 0,
            started_ms: now,
            stage_started_ms: now,
            stage_paused_ms: 0,
            paused_since_ms: None,
            stage_start: Pair::default(),
            traffic: Pair::default(),
            decisions: Vec::new(),
            finished_ms: None,
        };
        self.commit(vec![StateWrite::Rollout(Box::new(record.clone()))])
            .await?;
        self.spawn_controller(myself, record.clone())
            .await
            .map_err(|error| api_error(ApiErrorKind::Internal, error.to_string()))?;
        tracing::info!(rollout = record.id, model = %name, %baseline, canary = %record.canary, "rollout started");
        Ok(record)
    }

    /// Stores a promoted rollout with its consequences in one write: the canary becomes the
    /// production version, the baseline is archived.
    async fn promote(&mut self, record: &RolloutRecord) -> Result<(), ApiError> {
        let mut writes = vec![StateWrite::Rollout(Box::new(record.clone()))];
        writes.extend(self.promotion_writes(record));
        self.commit(writes).await?;
        tracing::info!(rollout = record.id, model = %record.model, canary = %record.canary, "canary is the production version");
        Ok(())
    }

    /// The stage changes a promotion makes (none once they are made).
    fn promotion_writes(&self, record: &RolloutRecord) -> Vec<StateWrite> {
        let now = now_ms();
        let mut writes = Vec::new();
        for (version, stage) in [
            (record.baseline, ModelStage::Archived),
            (record.canary, ModelStage::Production),
        ] {
            if let Some(model) = self.models.get(&(record.model.clone(), version))
                && model.stage != stage
            {
                let mut model = model.clone();
                model.stage = stage;
                model.stage_changed_ms = now;
                writes.push(StateWrite::Model(Box::new(model)));
            }
        }
        writes
    }

    /// A store whose batch was cut short (a local state file torn mid-write) may hold a
    /// promoted rollout whose stage changes are missing: make them.
    async fn repair_promotions(&mut self) -> Result<(), ActorProcessingErr> {
        let mut newest: BTreeMap<&str, &RolloutRecord> = BTreeMap::new();
        for rollout in self.rollouts.values() {
            newest.insert(rollout.model.as_str(), rollout);
        }
        let writes: Vec<StateWrite> = newest
            .values()
            .filter(|rollout| rollout.state == RolloutState::Promoted)
            .flat_map(|rollout| self.promotion_writes(rollout))
            .collect();
        if !writes.is_empty() {
            tracing::warn!(
                changes = writes.len(),
                "completing a promotion the store did not finish"
            );
            self.commit(writes)
                .await
                .map_err(|error| format!("repairing a promotion: {}", error.message))?;
        }
        Ok(())
    }

    /// Versions that should be served: each production version and each active rollout's
    /// baseline and canary.
    fn desired(&self) -> Vec<ServedModel> {
        let mut wanted: Vec<&ModelVersion> = self
            .models
            .values()
            .filter(|model| model.stage == ModelStage::Production)
            .collect();
        for rollout in self.rollouts.values().filter(|r| r.state.is_active()) {
            for version in [rollout.baseline, rollout.canary] {
                if let Some(model) = self.models.get(&(rollout.model.clone(), version))
                    && !wanted.iter().any(|w| w.reference() == model.reference())
                {
                    wanted.push(model);
                }
            }
        }
        wanted
            .into_iter()
            .map(|model| ServedModel {
                model: model.reference(),
                artifact: model.artifact.clone(),
                serving: model.serving.clone(),
            })
            .collect()
    }

    /// Agents that can serve.
    fn serving_agents(&self) -> impl Iterator<Item = (&AgentId, &ServingAgent)> {
        self.agents
            .iter()
            .filter(|(_, entry)| entry.endpoint.is_some() && entry.version >= SERVING_VERSION)
    }

    /// Has the Scheduler place each served program's version on `replicas` serving agents,
    /// where each replica holds the slots and GPUs its `[serving]` table asks for (as a trial
    /// does). Replicas stay where they are while their agents do; a new leader keeps them on
    /// the agents that report running them and, until agents have had time to report,
    /// places no others. Built-in models need no placement: every serving agent holds them.
    async fn place(&mut self, wanted: &[ServedModel]) {
        let settled = self.started.elapsed() >= CHECK_WARMUP;
        let eligible: Vec<AgentId> = if settled {
            self.serving_agents().map(|(id, _)| id.clone()).collect()
        } else {
            Vec::new()
        };
        // Agents that report the version, running (or starting) or failed.
        let reporting = |model: &ModelRef, failed: bool| -> Vec<AgentId> {
            self.serving_agents()
                .filter(|(_, entry)| {
                    entry.models.iter().any(|(served, state)| {
                        served == model && matches!(state, ServeState::Failed(_)) == failed
                    })
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        let retiring = self
            .retired
            .values()
            .map(|(_, served)| (served, true))
            .filter(|(served, _)| !wanted.iter().any(|w| w.model == served.model));
        let demands: Vec<ReplicaDemand> = wanted
            .iter()
            .map(|served| (served, false))
            .chain(retiring)
            .filter_map(|(served, retiring)| {
                let serving = served.serving.as_ref()?;
                Some(ReplicaDemand {
                    model: served.model.clone(),
                    replicas: serving.replicas.max(1),
                    slots: serving.slots,
                    gpus: serving.gpus,
                    eligible: eligible.clone(),
                    running: reporting(&served.model, false),
                    failed: reporting(&served.model, true),
                    retiring,
                })
            })
            .collect();
        let answer = self
            .scheduler
            .call(
                |reply| SchedulerMsg::Replicas { demands, reply },
                Some(Duration::from_secs(2)),
            )
            .await;
        match answer {
            Ok(ractor::rpc::CallResult::Success(placements)) => {
                for (model, agents) in &placements {
                    let before = self.placements.get(model);
                    if before != Some(agents) {
                        tracing::info!(%model, agents = ?agents.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(), "serving replicas placed");
                    }
                }
                self.placements = placements;
            }
            other => {
                // Placement waits for the next tick; what is served stays as it is.
                tracing::warn!(answer = ?other.map(|_| ()), "the scheduler did not place serving replicas");
            }
        }
    }

    /// Whether `agent` should hold `served`.
    fn placed_on(&self, served: &ServedModel, agent: &AgentId) -> bool {
        served.serving.is_none()
            || self
                .placements
                .get(&served.model)
                .is_some_and(|agents| agents.contains(agent))
    }

    /// Tells every serving agent whose assignment changed what to serve. A version that is
    /// no longer wanted stays for [`RETIRE_GRACE`] where it was.
    async fn assign(&mut self) {
        let wanted = self.desired();
        for served in &self.current {
            if !wanted.iter().any(|w| w.model == served.model) {
                self.retired
                    .insert(served.model.clone(), (Instant::now(), served.clone()));
            }
        }
        for served in &wanted {
            self.retired.remove(&served.model);
        }
        self.retired
            .retain(|_, (since, _)| since.elapsed() < RETIRE_GRACE);
        self.place(&wanted).await;
        self.current = wanted.clone();
        let mut all = wanted;
        all.extend(self.retired.values().map(|(_, served)| served.clone()));
        all.sort_by(|a, b| a.model.cmp(&b.model));
        let agents: Vec<AgentId> = self.serving_agents().map(|(id, _)| id.clone()).collect();
        for agent in agents {
            let desired: Vec<ServedModel> = all
                .iter()
                .filter(|served| self.placed_on(served, &agent))
                .cloned()
                .collect();
            let Some(entry) = self.agents.get_mut(&agent) else {
                continue;
            };
            if entry.assigned.as_ref() == Some(&desired) {
                continue;
            }
            let command = CoordinatorCommand {
                epoch: self.epoch,
                command: Command::Serve(desired.clone()),
            };
            if entry.commands.send(command).is_ok() {
                tracing::debug!(%agent, versions = desired.len(), "serving assignment sent");
                entry.assigned = Some(desired);
            }
        }
    }

    /// Where versions of `name` (or of every model) are assigned, with each agent's report.
    fn placements(&self, name: Option<&str>) -> Vec<Placement> {
        let mut placements = Vec::new();
        for (agent, entry) in self.serving_agents() {
            for served in entry.assigned.iter().flatten() {
                if name.is_some_and(|name| served.model.name != name) {
                    continue;
                }
                let state = entry
                    .models
                    .iter()
                    .find(|(model, _)| *model == served.model)
                    .map(|(_, state)| state.clone());
                placements.push(Placement {
                    model: served.model.clone(),
                    agent: agent.clone(),
                    endpoint: entry.endpoint.clone(),
                    state,
                    gpus: entry.gpus.get(&served.model).cloned().unwrap_or_default(),
                });
            }
        }
        placements.sort_by(|a, b| (&a.model, &a.agent).cmp(&(&b.model, &b.agent)));
        placements
    }

    fn endpoints(&self, reference: &ModelRef) -> Vec<String> {
        self.agents
            .values()
            .filter(|entry| {
                entry
                    .models
                    .iter()
                    .any(|(model, state)| model == reference && *state == ServeState::Ready)
            })
            .filter_map(|entry| entry.endpoint.clone())
            .collect()
    }

    fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        let names: std::collections::BTreeSet<&String> =
            self.models.keys().map(|(name, _)| name).collect();
        for name in names {
            let target = |version: SemVer| RouteTarget {
                version,
                endpoints: self.endpoints(&ModelRef {
                    name: name.clone(),
                    version,
                }),
            };
            if let Some(rollout) = self.active_rollout(name) {
                routes.push(Route {
                    model: name.clone(),
                    baseline: target(rollout.baseline),
                    canary: Some(target(rollout.canary)),
                    canary_weight: rollout.canary_weight,
                    rollout: Some(rollout.id),
                });
            } else if let Some(production) = self.production(name) {
                routes.push(Route {
                    model: name.clone(),
                    baseline: target(production.version),
                    canary: None,
                    canary_weight: 0.0,
                    rollout: None,
                });
            }
        }
        routes
    }

    /// Hands each active rollout its traffic, summed over routers; a canary that failed to
    /// load everywhere it was assigned is reported as unavailable.
    fn check_rollouts(&mut self) {
        for (id, controller) in &self.controllers {
            let Some(rollout) = self.rollouts.get(id) else {
                continue;
            };
            let mut total = Pair::default();
            for counters in self.routers.values() {
                if let Some(pair) = counters.get(id) {
                    total.baseline.merge(&pair.baseline);
                    total.canary.merge(&pair.canary);
                }
            }
            let canary = ModelRef {
                name: rollout.model.clone(),
                version: rollout.canary,
            };
            let states: Vec<&ServeState> = self
                .agents
                .values()
                .filter(|entry| entry.endpoint.is_some())
                .filter_map(|entry| {
                    entry
                        .models
                        .iter()
                        .find(|(model, _)| *model == canary)
                        .map(|(_, state)| state)
                })
                .collect();
            let failures: Vec<&String> = states
                .iter()
                .filter_map(|state| match state {
                    ServeState::Failed(message) => Some(message),
                    _ => None,
                })
                .collect();
            if !states.is_empty() && failures.len() == states.len() {
                let _ = controller.cast(RolloutMsg::CanaryUnavailable(format!(
                    "{canary} failed to load on every serving agent: {}",
                    failures[0]
                )));
            } else {
                let _ = controller.cast(RolloutMsg::Check(total));
            }
        }
        // Counters of ended rollouts are no longer needed.
        let active: std::collections::HashSet<u64> = self.controllers.keys().copied().collect();
        for counters in self.routers.values_mut() {
            counters.retain(|rollout, _| active.contains(rollout));
        }
    }
}
