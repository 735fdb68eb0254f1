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
use flotilla_protocol::spec::{FieldProblem, SweepSpec};
use flotilla_protocol::{Epoch, SweepId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::autoscaler::{Autoscaler, AutoscalerArgs, AutoscalerConfig, AutoscalerMsg};
use super::models::{Models, ModelsArgs, ModelsMsg};
use super::registry::{Registry, RegistryArgs, RegistryMsg};
use super::scheduler::{Scheduler, SchedulerArgs, SchedulerMsg};
use super::sweep::{SweepActor, SweepArgs, SweepMsg, WarmSource};
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
    /// See `CoordinatorConfig::team_shares`.
    pub team_shares: BTreeMap<String, f64>,
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
            team_shares: args.team_shares,
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
        // Warm sources are read before their trials move into their own sweeps' actors.
        let mut warm: BTreeMap<SweepId, Vec<WarmSource>> = stored
            .sweeps
            .values()
            .filter(|record| record.state == SweepState::Running)
            .map(|record| {
                let sources = warm_sources(record.id, &record.spec, &stored.sweeps, &trials);
                (record.id, sources)
            })
            .collect();
        for (id, record) in stored.sweeps {
            let sweep_trials = trials.remove(&id).unwrap_or_default();
            let sweep_warm = warm.remove(&id).unwrap_or_default();
            // A sweep that cannot be restored fails alone instead of keeping every leader
            // from starting.
            if let Err(error) = state
                .spawn_sweep(&myself, record.clone(), sweep_trials.clone(), sweep_warm)
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
        if let Err(error) = self.spawn_sweep(myself, record, trials, Vec::new()).await {
            tracing::error!(sweep = %id, %error, "the failed sweep cannot be shown either");
        }
    }

    async fn spawn_sweep(
        &mut self,
        myself: &ActorRef<LeaderMsg>,
        record: SweepRecord,
        trials: BTreeMap<u32, flotilla_protocol::messages::TrialRecord>,
        warm: Vec<WarmSource>,
    ) -> Result<(), ActorProcessingErr> {
        let id = record.id;
        let args = SweepArgs {
            record,
            trials,
            warm,
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
        mut spec: SweepSpec,
    ) -> Result<SweepSummary, ApiError> {
        let invalid = |spec: &SweepSpec, problems: Vec<FieldProblem>| ApiError {
            kind: ApiErrorKind::InvalidSweep,
            message: format!("sweep '{}' has {} problem(s)", spec.name, problems.len()),
            problems,
        };
        if let Err(problems) = spec.validate() {
            return Err(invalid(&spec, problems));
        }
        let mut warm = Vec::new();
        if !spec.warm_start.is_empty() {
            let stored = self.store.reload().await.map_err(|error| ApiError {
                kind: ApiErrorKind::Internal,
                message: format!("could not read the sweeps to warm-start from: {error}"),
                problems: vec![],
            })?;
            resolve_warm_start(&mut spec, &stored.sweeps)
                .map_err(|problems| invalid(&spec, problems))?;
            warm = warm_sources(
                SweepId(self.next_sweep),
                &spec,
                &stored.sweeps,
                &stored.trials,
            );
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
        self.spawn_sweep(myself, record, BTreeMap::new(), warm)
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

/// Replaces each of `spec.warm_start`'s references by the id of the sweep it names: an id
/// (`s3`, `3`) of a stored sweep, or a name (the newest sweep of that name).
fn resolve_warm_start(
    spec: &mut SweepSpec,
    sweeps: &BTreeMap<SweepId, SweepRecord>,
) -> Result<(), Vec<FieldProblem>> {
    let mut problems = Vec::new();
    for (index, reference) in spec.warm_start.iter_mut().enumerate() {
        let by_id = reference
            .parse::<SweepId>()
            .ok()
            .filter(|id| sweeps.contains_key(id));
        let by_name = || {
            sweeps
                .values()
                .rev()
                .find(|record| record.spec.name == *reference)
                .map(|record| record.id)
        };
        match by_id.or_else(by_name) {
            Some(id) => *reference = id.to_string(),
            None => problems.push(FieldProblem {
                path: format!("warm_start[{index}]"),
                message: format!("no sweep has the id or name '{reference}'"),
            }),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The sweeps that sweep `id` (with `spec`) warm-starts from (ids, as resolved at
/// submission), with their trials; one no longer stored is left out.
fn warm_sources(
    id: SweepId,
    spec: &SweepSpec,
    sweeps: &BTreeMap<SweepId, SweepRecord>,
    trials: &BTreeMap<SweepId, BTreeMap<u32, flotilla_protocol::messages::TrialRecord>>,
) -> Vec<WarmSource> {
    spec.warm_start
        .iter()
        .filter_map(|reference| reference.parse::<SweepId>().ok())
        .filter(|source| *source != id)
        .filter_map(|source_id| {
            let source = sweeps.get(&source_id)?;
            Some(WarmSource {
                spec: source.spec.clone(),
                trials: trials
                    .get(&source_id)
                    .map(|trials| trials.values().cloned().collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_start_references_resolve_to_ids_and_unknown_ones_are_named() {
        let record = |id: u64, name: &str| {
            let mut spec = SweepSpec::example();
            spec.name = name.into();
            let record = SweepRecord {
                id: SweepId(id),
                spec,
                seed: 0,
                state: SweepState::Completed,
                created_ms: 0,
                finished_ms: None,
                message: None,
            };
            (SweepId(id), record)
        };
        let sweeps = BTreeMap::from([record(1, "lr"), record(2, "depth"), record(3, "lr")]);
        let mut spec = SweepSpec::example();
        spec.warm_start = vec!["lr".into(), "2".into(), "s1".into()];
        resolve_warm_start(&mut spec, &sweeps).expect("resolves");
        // A name means the newest sweep of that name.
        assert_eq!(spec.warm_start, ["s3", "s2", "s1"]);
        spec.warm_start = vec!["s9".into(), "lr".into(), "width".into()];
        let problems = resolve_warm_start(&mut spec, &sweeps).expect_err("unknown");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "warm_start[0]: no sweep has the id or name 's9'",
                "warm_start[2]: no sweep has the id or name 'width'"
            ]
        );
    }

    /// What a sweep is warm-started with, at submission and at takeover alike: each resolved
    /// source that is stored, with its trials; a reference to itself or to a sweep no longer
    /// stored is left out.
    #[test]
    fn warm_sources_are_the_stored_sweeps_named_with_their_trials() {
        let record = |id: u64| SweepRecord {
            id: SweepId(id),
            spec: SweepSpec::example(),
            seed: 0,
            state: SweepState::Completed,
            created_ms: 0,
            finished_ms: None,
            message: None,
        };
        let sweeps = BTreeMap::from([(SweepId(1), record(1)), (SweepId(2), record(2))]);
        let trial = |number: u32| {
            let id = flotilla_protocol::TrialId {
                sweep: SweepId(1),
                number,
            };
            (
                number,
                flotilla_protocol::messages::TrialRecord::pending(id, Default::default(), 0),
            )
        };
        let trials = BTreeMap::from([(SweepId(1), BTreeMap::from([trial(0), trial(1)]))]);
        let mut spec = SweepSpec::example();
        spec.warm_start = vec!["s1".into(), "s2".into(), "s5".into(), "s3".into()];
        let sources = warm_sources(SweepId(3), &spec, &sweeps, &trials);
        let counts: Vec<usize> = sources.iter().map(|source| source.trials.len()).collect();
        assert_eq!(
            counts,
            [2, 0],
            "s1 with its two trials, s2 with none; s5 and s3 left out"
        );
    }
}
