//! Leader: the root of the coordinator's actors while this process leads.
//!
//! Place in the tree: the root. It loads the store, spawns the Registry, the Scheduler, the
//! Models actor (registry of model versions, serving, rollouts) and one Sweep actor per stored
//! sweep (resuming unfinished ones), accepts submissions and
//! answers listings. High availability (etcd election) will put an Election actor above it.
//!
//! Failure: any child's failure stops the Leader (see [`super`]); the process then exits
//! and a restart resumes from the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::messages::{ApiError, ApiErrorKind, SweepState, SweepSummary};
use flotilla_protocol::spec::SweepSpec;
use flotilla_protocol::{Epoch, SweepId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::autoscaler::{Autoscaler, AutoscalerArgs, AutoscalerConfig, AutoscalerMsg};
use super::models::{Models, ModelsArgs, ModelsMsg};
use super::registry::{Registry, RegistryArgs, RegistryMsg};
use super::scheduler::{Scheduler, SchedulerArgs, SchedulerMsg};
use super::sweep::{SweepActor, SweepArgs, SweepMsg};
use crate::clock::now_ms;
use crate::metrics::METRICS;
use crate::store::{StateStore, StateWrite, SweepRecord};

pub enum LeaderMsg {
    Submit {
        spec: Box<SweepSpec>,
        reply: RpcReplyPort<Result<SweepSummary, ApiError>>,
    },
    List(RpcReplyPort<Vec<SweepSummary>>),
    Lookup {
        sweep: SweepId,
        reply: RpcReplyPort<Option<ActorRef<SweepMsg>>>,
    },
    /// The Registry, Scheduler and Autoscaler, for sessions.
    Parts(RpcReplyPort<LeaderParts>),
}

/// The Leader's children that sessions talk to.
#[derive(Clone)]
pub struct LeaderParts {
    pub registry: ActorRef<RegistryMsg>,
    pub scheduler: ActorRef<SchedulerMsg>,
    /// Present when the coordinator autoscales.
    pub autoscaler: Option<ActorRef<AutoscalerMsg>>,
    pub models: ActorRef<ModelsMsg>,
}

pub struct LeaderArgs {
    pub store: Arc<dyn StateStore>,
    pub epoch: Epoch,
    pub agent_timeout: Duration,
    /// See `CoordinatorConfig::cordon_after_losses`.
    pub cordon_after_losses: u32,
    /// Told when a sweep ends.
    pub notifier: Option<crate::notify::Notifier>,
    /// Sizes the agent fleet while this coordinator leads.
    pub autoscaler: Option<AutoscalerConfig>,
    /// Between checks of each canary rollout.
    pub rollout_check_interval: Duration,
}

pub struct LeaderState {
    store: Arc<dyn StateStore>,
    registry: ActorRef<RegistryMsg>,
    scheduler: ActorRef<SchedulerMsg>,
    autoscaler: Option<ActorRef<AutoscalerMsg>>,
    models: ActorRef<ModelsMsg>,
    notifier: Option<crate::notify::Notifier>,
    sweeps: BTreeMap<SweepId, ActorRef<SweepMsg>>,
    next_sweep: u64,
    epoch: Epoch,
}

pub struct Leader;

impl Actor for Leader {
    type Msg = LeaderMsg;
    type State = LeaderState;
    type Arguments = LeaderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LeaderMsg>,
        args: LeaderArgs,
    ) -> Result<LeaderState, ActorProcessingErr> {
        let stored = args.store.load().await?;
        let scheduler_args = SchedulerArgs {
            epoch: args.epoch,
            adoption_grace: args.agent_timeout + Duration::from_secs(2),
            store: args.store.clone(),
            cordoned: stored.cordoned.clone(),
            cordon_after_losses: args.cordon_after_losses,
        };
        let (scheduler, _) =
            Actor::spawn_linked(None, Scheduler, scheduler_args, myself.get_cell()).await?;
        let registry_args = RegistryArgs {
            scheduler: scheduler.clone(),
            agent_timeout: args.agent_timeout,
            store: args.store.clone(),
            known: stored.agents.clone(),
        };
        let (registry, _) =
            Actor::spawn_linked(None, Registry, registry_args, myself.get_cell()).await?;
        let autoscaler = match args.autoscaler {
            Some(config) => {
                let autoscaler_args = AutoscalerArgs {
                    config,
                    scheduler: scheduler.clone(),
                };
                let (autoscaler, _) =
                    Actor::spawn_linked(None, Autoscaler, autoscaler_args, myself.get_cell())
                        .await?;
                Some(autoscaler)
            }
            None => None,
        };
        let models_args = ModelsArgs {
            epoch: args.epoch,
            store: args.store.clone(),
            models: stored.models,
            rollouts: stored.rollouts,
            check_interval: args.rollout_check_interval,
            scheduler: scheduler.clone(),
        };
        let (models, _) = Actor::spawn_linked(None, Models, models_args, myself.get_cell()).await?;
        let mut state = LeaderState {
            store: args.store,
            registry,
            scheduler,
            autoscaler,
            models,
            notifier: args.notifier,
            epoch: args.epoch,
            sweeps: BTreeMap::new(),
            next_sweep: stored
                .sweeps
                .keys()
                .next_back()
                .map_or(1, |last| last.0 + 1),
        };
        let mut trials = stored.trials;
        for (id, record) in stored.sweeps {
            let sweep_trials = trials.remove(&id).unwrap_or_default();
            // A sweep that cannot be restored fails alone instead of keeping every leader
            // from starting.
            if let Err(error) = state
                .spawn_sweep(&myself, record.clone(), sweep_trials.clone())
                .await
            {
                let reason = format!("its actor failed to start: {error}");
                state
                    .fail_sweep(&myself, record, sweep_trials, reason)
                    .await;
            }
        }
        tracing::info!(epoch = %args.epoch, sweeps = state.sweeps.len(), "leading");
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<LeaderMsg>,
        message: LeaderMsg,
        state: &mut LeaderState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LeaderMsg::Submit { spec, reply } => {
                let result = state.submit(&myself, *spec).await;
                let _ = reply.send(result);
            }
            LeaderMsg::List(reply) => {
                let mut summaries = Vec::with_capacity(state.sweeps.len());
                for sweep in state.sweeps.values() {
                    if let Ok(summary) = super::ask(sweep, SweepMsg::Summary).await {
                        summaries.push(summary);
                    }
                }
                let _ = reply.send(summaries);
            }
            LeaderMsg::Lookup { sweep, reply } => {
                let _ = reply.send(state.sweeps.get(&sweep).cloned());
            }
            LeaderMsg::Parts(reply) => {
                let _ = reply.send(LeaderParts {
                    registry: state.registry.clone(),
                    scheduler: state.scheduler.clone(),
                    autoscaler: state.autoscaler.clone(),
                    models: state.models.clone(),
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<LeaderMsg>,
        event: SupervisionEvent,
        state: &mut LeaderState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(child, error) => {
                let failed_sweep = state
                    .sweeps
                    .iter()
                    .find(|(_, sweep)| sweep.get_id() == child.get_id())
                    .map(|(id, _)| *id);
                match failed_sweep {
                    // One sweep's failure is that sweep's: it is stopped and marked failed,
                    // and everything else goes on.
                    Some(id) => state.isolate(&myself, id, error.to_string()).await,
                    None => {
                        tracing::error!(child = %child.get_id(), %error, "a coordinator actor failed; stopping so a restart resumes from the store");
                        myself.stop(Some(format!("child failed: {error}")));
                    }
                }
            }
            SupervisionEvent::ActorTerminated(child, _, reason) => {
                tracing::debug!(child = %child.get_id(), ?reason, "child stopped");
            }
            _ => {}
        }
        Ok(())
    }
}

impl LeaderState {
    /// A running sweep's actor failed: its trials are stopped, the sweep is stored as failed
    /// with the reason (so no later leader runs it, or fails on it, again), and it is served
    /// read-only from the store.
    async fn isolate(&mut self, myself: &ActorRef<LeaderMsg>, id: SweepId, error: String) {
        tracing::error!(sweep = %id, %error, "a sweep's actor failed; failing that sweep alone");
        self.sweeps.remove(&id);
        let _ = self.scheduler.cast(SchedulerMsg::ForgetSweep { sweep: id });
        let stored = match self.store.reload().await {
            Ok(stored) => stored,
            Err(load) => {
                tracing::error!(sweep = %id, %load, "cannot read the failed sweep back; stopping so a restart resumes from the store");
                myself.stop(Some(format!(
                    "sweep {id} failed and could not be read back"
                )));
                return;
            }
        };
        let Some(record) = stored.sweeps.get(&id).cloned() else {
            return;
        };
        let trials = stored.trials.get(&id).cloned().unwrap_or_default();
        self.fail_sweep(myself, record, trials, format!("its actor failed: {error}"))
            .await;
    }

    /// Stores `record` as failed with `reason` and serves it read-only (a final sweep's actor
    /// stops its unfinished trials and runs nothing).
    async fn fail_sweep(
        &mut self,
        myself: &ActorRef<LeaderMsg>,
        mut record: SweepRecord,
        trials: BTreeMap<u32, flotilla_protocol::messages::TrialRecord>,
        reason: String,
    ) {
        let id = record.id;
        METRICS.sweep_failures.inc();
        if record.state == SweepState::Running {
            record.state = SweepState::Failed;
            record.finished_ms = Some(now_ms());
        }
        record.message = Some(reason.clone());
        tracing::error!(sweep = %id, %reason, "sweep failed; the rest of the cluster goes on");
        if let Err(error) = self
            .store
            .write(vec![StateWrite::Sweep(Box::new(record.clone()))])
            .durable()
            .await
        {
            tracing::warn!(sweep = %id, %error, "the failed sweep's state is not stored; a later leader will try it again");
        }
        if let Err(error) = self.spawn_sweep(myself, record, trials).await {
            tracing::error!(sweep = %id, %error, "the failed sweep cannot be shown either");
        }
    }

    async fn spawn_sweep(
        &mut self,
        myself: &ActorRef<LeaderMsg>,
        record: SweepRecord,
        trials: BTreeMap<u32, flotilla_protocol::messages::TrialRecord>,
    ) -> Result<(), ActorProcessingErr> {
        let id = record.id;
        let args = SweepArgs {
            record,
            trials,
            scheduler: self.scheduler.clone(),
            store: self.store.clone(),
            notifier: self.notifier.clone(),
            epoch: self.epoch,
        };
        let (sweep, _) = Actor::spawn_linked(None, SweepActor, args, myself.get_cell()).await?;
        self.sweeps.insert(id, sweep);
        Ok(())
    }

    async fn submit(
        &mut self,
        myself: &ActorRef<LeaderMsg>,
        spec: SweepSpec,
    ) -> Result<SweepSummary, ApiError> {
        if let Err(problems) = spec.validate() {
            return Err(ApiError {
                kind: ApiErrorKind::InvalidSweep,
                message: format!("sweep '{}' has {} problem(s)", spec.name, problems.len()),
                problems,
            });
        }
        let id = SweepId(self.next_sweep);
        self.next_sweep += 1;
        let seed = spec.algorithm.seed.unwrap_or_else(rand::random);
        let record = SweepRecord {
            id,
            spec,
            seed,
            state: SweepState::Running,
            created_ms: now_ms(),
            finished_ms: None,
            message: None,
        };
        let internal = |message: String| ApiError {
            kind: ApiErrorKind::Internal,
            message,
            problems: vec![],
        };
        // The submission is acknowledged only once it is durable.
        self.store
            .write(vec![StateWrite::Sweep(Box::new(record.clone()))])
            .durable()
            .await
            .map_err(|error| internal(format!("could not store the sweep: {error}")))?;
        self.spawn_sweep(myself, record, BTreeMap::new())
            .await
            .map_err(|error| internal(error.to_string()))?;
        tracing::info!(sweep = %id, "sweep submitted");
        let sweep = self
            .sweeps
            .get(&id)
            .ok_or_else(|| internal("sweep vanished".into()))?;
        super::ask(sweep, SweepMsg::Summary)
            .await
            .map_err(|error| internal(error.to_string()))
    }
}
