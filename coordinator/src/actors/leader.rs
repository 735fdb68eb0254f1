//! Leader: the root of the coordinator's actors while this process leads.
//!
//! Place in the tree: the root. It loads the store's live state, spawns the Registry, the
//! Scheduler, the Models actor (registry of model versions, serving, rollouts) and one Sweep
//! actor per unsettled sweep (resuming it), accepts submissions and answers listings.
//!
//! Memory tracks live work, not history. A settled sweep (finished, its trials final) keeps
//! only its record here; its trials stay in the store until someone asks for it, when a
//! read-only Sweep actor is spawned from the store (or the archive) and kept among the
//! [`VIEWS`] most recently read. A sweep that finishes while this leader runs hands its actor
//! to that set too. After the retention period (`--retain-finished`), settled sweeps move to
//! the archive (`crate::archive`) and leave the store.
//!
//! Failure: any child's failure stops the Leader (see [`super`]); the process then exits
//! and a restart resumes from the store. A Sweep actor's failure fails that sweep alone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::messages::{ApiError, ApiErrorKind, SweepState, SweepSummary, TrialRecord};
use flotilla_protocol::spec::{FieldProblem, SweepSpec};
use flotilla_protocol::{Epoch, SweepId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::autoscaler::{Autoscaler, AutoscalerArgs, AutoscalerConfig, AutoscalerMsg};
use super::models::{Models, ModelsArgs, ModelsMsg};
use super::registry::{Registry, RegistryArgs, RegistryMsg};
use super::scheduler::{Scheduler, SchedulerArgs, SchedulerMsg};
use super::sweep::{SweepActor, SweepArgs, SweepMsg, WarmSource};
use crate::archive::Archive;
use crate::clock::now_ms;
use crate::metrics::METRICS;
use crate::store::{StateStore, StateWrite, StoredSweep, SweepRecord};

/// How many settled sweeps keep a (read-only) actor in memory: the most recently read.
pub const VIEWS: usize = 32;
/// `sweep list` shows at most this many archived sweeps, the newest; `sweep status` and the
/// rest answer for any archived sweep.
pub const ARCHIVED_LISTED: usize = 1000;
/// Sweeps archived in one pass, so a backlog does not keep the leader busy for long.
const ARCHIVE_BATCH: usize = 16;

pub enum LeaderMsg {
    Submit {
        spec: Box<SweepSpec>,
        reply: RpcReplyPort<Result<SweepSummary, ApiError>>,
    },
    /// Every stored sweep's summary; with `archived`, the newest archived ones too.
    List {
        archived: bool,
        reply: RpcReplyPort<Vec<SweepSummary>>,
    },
    /// The actor that answers for a sweep: its own while it runs, or a read-only one made
    /// from the store or the archive. `None` if no sweep has the id.
    Lookup {
        sweep: SweepId,
        reply: RpcReplyPort<Option<ActorRef<SweepMsg>>>,
    },
    /// The Registry, Scheduler and Autoscaler, for sessions.
    Parts(RpcReplyPort<LeaderParts>),
    /// A Sweep actor's sweep settled.
    SweepFinished {
        record: Box<SweepRecord>,
        summary: Box<SweepSummary>,
    },
    /// Time to archive settled sweeps past their retention.
    ArchiveDue,
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

/// Where settled sweeps go, and when.
#[derive(Clone)]
pub struct Retention {
    pub archive: Arc<Archive>,
    /// How long a settled sweep stays in the store; `None`: for ever (nothing is archived,
    /// but archived sweeps are still read).
    pub retain: Option<Duration>,
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
    /// The archive; `None`: settled sweeps stay in the store.
    pub retention: Option<Retention>,
}

pub struct LeaderState {
    store: Arc<dyn StateStore>,
    registry: ActorRef<RegistryMsg>,
    scheduler: ActorRef<SchedulerMsg>,
    autoscaler: Option<ActorRef<AutoscalerMsg>>,
    models: ActorRef<ModelsMsg>,
    notifier: Option<crate::notify::Notifier>,
    /// Every stored sweep's record (its spec and where it stands), not its trials.
    records: BTreeMap<SweepId, SweepRecord>,
    /// Sweep actors: every unsettled sweep's, and read-only ones for the settled sweeps in
    /// `views`.
    sweeps: BTreeMap<SweepId, ActorRef<SweepMsg>>,
    /// Settled sweeps with an actor, least recently read first.
    views: VecDeque<SweepId>,
    /// Summaries of settled stored sweeps, once known (they no longer change).
    summaries: BTreeMap<SweepId, SweepSummary>,
    retention: Option<Retention>,
    /// The newest archived sweeps' summaries, read on the first listing that wants them.
    archived: Option<BTreeMap<SweepId, SweepSummary>>,
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
        let started = std::time::Instant::now();
        let stored = args.store.load().await?;
        let loaded_ms = started.elapsed().as_millis() as u64;
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
        let next_sweep = stored.next_sweep.max(1);
        let mut state = LeaderState {
            store: args.store,
            registry,
            scheduler,
            autoscaler,
            models,
            notifier: args.notifier,
            epoch: args.epoch,
            records: stored.sweeps,
            sweeps: BTreeMap::new(),
            views: VecDeque::new(),
            summaries: stored.summaries,
            retention: args.retention,
            archived: None,
            next_sweep,
        };
        let mut trials = stored.trials;
        let unsettled: Vec<SweepRecord> = state
            .records
            .values()
            .filter(|record| !record.is_settled())
            .cloned()
            .collect();
        // Warm sources are read before the loaded trials move into their own sweeps' actors.
        let mut warm = BTreeMap::new();
        for record in unsettled
            .iter()
            .filter(|record| record.state == SweepState::Running)
        {
            let sources = state.warm_sources(record.id, &record.spec, &trials).await;
            warm.insert(record.id, sources);
        }
        for record in unsettled {
            let id = record.id;
            let sweep_trials = trials.remove(&id).unwrap_or_default();
            let sweep_warm = warm.remove(&id).unwrap_or_default();
            // A sweep that cannot be restored fails alone instead of keeping every leader
            // from starting.
            if let Err(error) = state
                .spawn_sweep(
                    &myself,
                    record.clone(),
                    sweep_trials.clone(),
                    sweep_warm,
                    false,
                )
                .await
            {
                let reason = format!("its actor failed to start: {error}");
                state
                    .fail_sweep(&myself, record, sweep_trials, reason)
                    .await;
            }
        }
        if let Some(retain) = state
            .retention
            .as_ref()
            .and_then(|retention| retention.retain)
        {
            let every = (retain / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
            myself.send_interval(every, || LeaderMsg::ArchiveDue);
        }
        state.count_resident();
        tracing::info!(
            epoch = %args.epoch,
            sweeps = state.records.len(),
            running = state.sweeps.len(),
            loaded_ms,
            ready_ms = started.elapsed().as_millis() as u64,
            "leading"
        );
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
            LeaderMsg::List { archived, reply } => {
                let summaries = state.list(&myself, archived).await;
                let _ = reply.send(summaries);
            }
            LeaderMsg::Lookup { sweep, reply } => {
                let _ = reply.send(state.lookup(&myself, sweep).await);
            }
            LeaderMsg::Parts(reply) => {
                let _ = reply.send(LeaderParts {
                    registry: state.registry.clone(),
                    scheduler: state.scheduler.clone(),
                    autoscaler: state.autoscaler.clone(),
                    models: state.models.clone(),
                });
            }
            LeaderMsg::SweepFinished { record, summary } => {
                let id = record.id;
                state.records.insert(id, *record);
                state.summaries.insert(id, *summary);
                if state.sweeps.contains_key(&id) && !state.views.contains(&id) {
                    state.views.push_back(id);
                    state.evict_views();
                }
            }
            LeaderMsg::ArchiveDue => state.archive_due(&myself).await,
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
        self.views.retain(|view| *view != id);
        let _ = self.scheduler.cast(SchedulerMsg::ForgetSweep { sweep: id });
        let stored = match self.store.sweep(id).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(load) => {
                tracing::error!(sweep = %id, %load, "cannot read the failed sweep back; stopping so a restart resumes from the store");
                myself.stop(Some(format!(
                    "sweep {id} failed and could not be read back"
                )));
                return;
            }
        };
        self.fail_sweep(
            myself,
            stored.record,
            stored.trials,
            format!("its actor failed: {error}"),
        )
        .await;
    }

    /// Stores `record` as failed with `reason` and serves it read-only (a final sweep's actor
    /// stops its unfinished trials and runs nothing).
    async fn fail_sweep(
        &mut self,
        myself: &ActorRef<LeaderMsg>,
        mut record: SweepRecord,
        trials: BTreeMap<u32, TrialRecord>,
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
        self.records.insert(id, record.clone());
        let settled = record.is_settled();
        match self
            .spawn_sweep(myself, record, trials, Vec::new(), false)
            .await
        {
            // Already settled, it will not say so: it joins the recently read at once.
            Ok(_) if settled => {
                self.views.push_back(id);
                self.evict_views();
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(sweep = %id, %error, "the failed sweep cannot be shown either");
            }
        }
    }

    async fn spawn_sweep(
        &mut self,
        myself: &ActorRef<LeaderMsg>,
        record: SweepRecord,
        trials: BTreeMap<u32, TrialRecord>,
        warm: Vec<WarmSource>,
        read_only: bool,
    ) -> Result<ActorRef<SweepMsg>, ActorProcessingErr> {
        let id = record.id;
        let args = SweepArgs {
            record,
            trials,
            warm,
            scheduler: self.scheduler.clone(),
            store: self.store.clone(),
            notifier: self.notifier.clone(),
            epoch: self.epoch,
            leader: Some(myself.clone()),
            read_only,
        };
        let (sweep, _) = Actor::spawn_linked(None, SweepActor, args, myself.get_cell()).await?;
        self.sweeps.insert(id, sweep.clone());
        self.count_resident();
        Ok(sweep)
    }

    fn count_resident(&self) {
        METRICS.sweeps_resident.set(self.sweeps.len() as i64);
    }

    /// A sweep as stored now, or as archived; `None` if neither holds it.
    async fn read_sweep(&self, id: SweepId) -> Result<Option<StoredSweep>, String> {
        if let Some(stored) = self
            .store
            .sweep(id)
            .await
            .map_err(|error| error.to_string())?
        {
            return Ok(Some(stored));
        }
        match &self.retention {
            Some(retention) => retention
                .archive
                .read(id)
                .await
                .map_err(|error| error.to_string()),
            None => Ok(None),
        }
    }

    /// The actor answering for sweep `id`, made from the store or the archive if it has
    /// none (a read-only one, kept among the most recently read).
    async fn lookup(
        &mut self,
        myself: &ActorRef<LeaderMsg>,
        id: SweepId,
    ) -> Option<ActorRef<SweepMsg>> {
        if let Some(actor) = self.sweeps.get(&id).cloned() {
            if let Some(position) = self.views.iter().position(|view| *view == id) {
                self.views.remove(position);
                self.views.push_back(id);
            }
            return Some(actor);
        }
        let stored = match self.read_sweep(id).await {
            Ok(stored) => stored?,
            Err(error) => {
                tracing::warn!(sweep = %id, %error, "cannot read a settled sweep back");
                return None;
            }
        };
        let actor = match self
            .spawn_sweep(myself, stored.record, stored.trials, Vec::new(), true)
            .await
        {
            Ok(actor) => actor,
            Err(error) => {
                tracing::warn!(sweep = %id, %error, "cannot show a settled sweep");
                return None;
            }
        };
        self.views.push_back(id);
        self.evict_views();
        Some(actor)
    }

    /// Stops the least recently read settled sweeps' actors beyond [`VIEWS`].
    fn evict_views(&mut self) {
        while self.views.len() > VIEWS {
            let Some(id) = self.views.pop_front() else {
                break;
            };
            if let Some(actor) = self.sweeps.remove(&id) {
                actor.stop(Some("a settled sweep not read recently".into()));
                let _ = self.scheduler.cast(SchedulerMsg::Unregister { sweep: id });
            }
        }
        self.count_resident();
    }

    /// A settled sweep's summary: known, or asked of its actor (made if need be).
    async fn settled_summary(
        &mut self,
        myself: &ActorRef<LeaderMsg>,
        id: SweepId,
    ) -> Option<SweepSummary> {
        if let Some(summary) = self.summaries.get(&id) {
            return Some(summary.clone());
        }
        let actor = self.lookup(myself, id).await?;
        let summary = super::ask(&actor, SweepMsg::Summary).await.ok()?;
        self.summaries.insert(id, summary.clone());
        // Stored, so no later leader reads the trials again to list the sweep (one settled
        // before summaries were stored).
        if self.records.contains_key(&id) {
            drop(
                self.store
                    .write(vec![StateWrite::Summary(Box::new(summary.clone()))]),
            );
        }
        Some(summary)
    }

    async fn list(&mut self, myself: &ActorRef<LeaderMsg>, archived: bool) -> Vec<SweepSummary> {
        let ids: Vec<SweepId> = self.records.keys().copied().collect();
        let mut summaries = Vec::with_capacity(ids.len());
        for id in ids {
            let settled = self.records.get(&id).is_some_and(SweepRecord::is_settled);
            let summary = match self.sweeps.get(&id) {
                Some(actor) if !settled || !self.summaries.contains_key(&id) => {
                    super::ask(actor, SweepMsg::Summary).await.ok()
                }
                _ => self.settled_summary(myself, id).await,
            };
            summaries.extend(summary);
        }
        if archived {
            let stored: Vec<SweepId> = self.records.keys().copied().collect();
            if let Some(newest) = self.archived_summaries().await {
                summaries.extend(
                    newest
                        .iter()
                        .filter(|(id, _)| stored.binary_search(id).is_err())
                        .map(|(_, summary)| summary.clone()),
                );
                summaries.sort_by_key(|summary| summary.id);
            }
        }
        summaries
    }

    /// The newest archived sweeps' summaries, read from the archive the first time.
    async fn archived_summaries(&mut self) -> Option<&BTreeMap<SweepId, SweepSummary>> {
        let retention = self.retention.as_ref()?;
        if self.archived.is_none() {
            match retention.archive.newest(ARCHIVED_LISTED).await {
                Ok(newest) => self.archived = Some(newest),
                Err(error) => {
                    tracing::warn!(%error, "cannot list the archive; archived sweeps are left out");
                    return None;
                }
            }
        }
        self.archived.as_ref()
    }

    /// Archives settled sweeps whose retention has passed, oldest first, a batch at a time.
    async fn archive_due(&mut self, myself: &ActorRef<LeaderMsg>) {
        let Some(retain) = self
            .retention
            .as_ref()
            .and_then(|retention| retention.retain)
        else {
            return;
        };
        let now = now_ms();
        let due: Vec<SweepId> = self
            .records
            .values()
            .filter(|record| record.is_settled())
            .filter(|record| {
                record.finished_ms.is_some_and(|finished| {
                    finished.saturating_add(retain.as_millis() as u64) <= now
                })
            })
            .map(|record| record.id)
            .take(ARCHIVE_BATCH)
            .collect();
        for id in due {
            if let Err(error) = self.archive_one(myself, id).await {
                METRICS.archive_failures.inc();
                tracing::warn!(sweep = %id, %error, "could not archive a sweep; it stays in the store and is tried again");
                break;
            }
        }
    }

    /// Moves one settled sweep to the archive: written and read back there first, then
    /// deleted from the store (with the id high-water mark, so the id is never reused).
    async fn archive_one(
        &mut self,
        myself: &ActorRef<LeaderMsg>,
        id: SweepId,
    ) -> Result<(), String> {
        let Some(retention) = self.retention.clone() else {
            return Ok(());
        };
        let stored = self
            .store
            .sweep(id)
            .await
            .map_err(|error| error.to_string())?
            .ok_or("no longer stored")?;
        let summary = self
            .settled_summary(myself, id)
            .await
            .ok_or("its summary cannot be made")?;
        retention
            .archive
            .write(&stored, &summary)
            .await
            .map_err(|error| error.to_string())?;
        self.store
            .write(vec![
                StateWrite::SweepIdsFrom(self.next_sweep),
                StateWrite::ForgetSweep(id),
            ])
            .durable()
            .await
            .map_err(|error| error.to_string())?;
        self.records.remove(&id);
        self.summaries.remove(&id);
        self.views.retain(|view| *view != id);
        if let Some(actor) = self.sweeps.remove(&id) {
            actor.stop(Some("archived".into()));
            let _ = self.scheduler.cast(SchedulerMsg::Unregister { sweep: id });
        }
        self.count_resident();
        if let Some(archived) = &mut self.archived {
            archived.insert(id, summary);
            while archived.len() > ARCHIVED_LISTED {
                archived.pop_first();
            }
        }
        METRICS.sweeps_archived.inc();
        tracing::info!(sweep = %id, trials = stored.trials.len(), archive = %retention.archive.location(), "sweep archived");
        Ok(())
    }

    /// The sweeps `spec` (sweep `id`'s) warm-starts from, with their trials: from `loaded`
    /// (trials read at takeover), a running sweep's actor, the store or the archive. One that
    /// none of them holds is left out.
    async fn warm_sources(
        &self,
        id: SweepId,
        spec: &SweepSpec,
        loaded: &BTreeMap<SweepId, BTreeMap<u32, TrialRecord>>,
    ) -> Vec<WarmSource> {
        let mut found = BTreeMap::new();
        for source in warm_references(id, spec) {
            let record = self.records.get(&source);
            let stored = match (record, loaded.get(&source), self.sweeps.get(&source)) {
                (Some(record), Some(trials), _) => Some(StoredSweep {
                    record: record.clone(),
                    trials: trials.clone(),
                }),
                (Some(record), None, Some(actor)) => super::ask(actor, SweepMsg::Trials)
                    .await
                    .ok()
                    .map(|trials| StoredSweep {
                        record: record.clone(),
                        trials: trials
                            .into_iter()
                            .map(|trial| (trial.id.number, trial))
                            .collect(),
                    }),
                _ => self.read_sweep(source).await.ok().flatten(),
            };
            if let Some(stored) = stored {
                found.insert(source, stored);
            }
        }
        warm_sources(id, spec, &found)
    }

    /// Names of the sweeps a warm start may refer to: every stored one, archived ones among
    /// the newest listed, and any archived one `spec` names by id.
    async fn warm_names(&mut self, spec: &SweepSpec) -> BTreeMap<SweepId, String> {
        let mut names: BTreeMap<SweepId, String> = self
            .records
            .values()
            .map(|record| (record.id, record.spec.name.clone()))
            .collect();
        if let Some(archived) = self.archived_summaries().await {
            for (id, summary) in archived {
                names.entry(*id).or_insert_with(|| summary.name.clone());
            }
        }
        if let Some(retention) = &self.retention {
            for reference in &spec.warm_start {
                let Ok(id) = reference.parse::<SweepId>() else {
                    continue;
                };
                if names.contains_key(&id) {
                    continue;
                }
                if let Ok(Some(summary)) = retention.archive.summary(id).await {
                    names.insert(id, summary.name);
                }
            }
        }
        names
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
            let names = self.warm_names(&spec).await;
            resolve_warm_start(&mut spec, &names).map_err(|problems| invalid(&spec, problems))?;
            warm = self
                .warm_sources(SweepId(self.next_sweep), &spec, &BTreeMap::new())
                .await;
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
        self.records.insert(id, record.clone());
        let sweep = self
            .spawn_sweep(myself, record, BTreeMap::new(), warm, false)
            .await
            .map_err(|error| internal(error.to_string()))?;
        tracing::info!(sweep = %id, "sweep submitted");
        super::ask(&sweep, SweepMsg::Summary)
            .await
            .map_err(|error| internal(error.to_string()))
    }
}

/// Replaces each of `spec.warm_start`'s references by the id of the sweep it names: an id
/// (`s3`, `3`) of a known sweep, or a name (the newest sweep of that name). `names` are the
/// known sweeps' names by id.
fn resolve_warm_start(
    spec: &mut SweepSpec,
    names: &BTreeMap<SweepId, String>,
) -> Result<(), Vec<FieldProblem>> {
    let mut problems = Vec::new();
    for (index, reference) in spec.warm_start.iter_mut().enumerate() {
        let by_id = reference
            .parse::<SweepId>()
            .ok()
            .filter(|id| names.contains_key(id));
        let by_name = || {
            names
                .iter()
                .rev()
                .find(|(_, name)| *name == reference)
                .map(|(id, _)| *id)
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

/// The sweep ids sweep `id`'s `spec` warm-starts from (as resolved at submission), itself
/// left out.
fn warm_references(id: SweepId, spec: &SweepSpec) -> Vec<SweepId> {
    spec.warm_start
        .iter()
        .filter_map(|reference| reference.parse::<SweepId>().ok())
        .filter(|source| *source != id)
        .collect()
}

/// The sweeps that sweep `id` (with `spec`) warm-starts from, with their trials, taken from
/// `found`; one not found (no longer stored or archived) is left out.
fn warm_sources(
    id: SweepId,
    spec: &SweepSpec,
    found: &BTreeMap<SweepId, StoredSweep>,
) -> Vec<WarmSource> {
    warm_references(id, spec)
        .into_iter()
        .filter_map(|source| {
            let source = found.get(&source)?;
            Some(WarmSource {
                spec: source.record.spec.clone(),
                trials: source.trials.values().cloned().collect(),
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
        let names: BTreeMap<SweepId, String> = sweeps
            .iter()
            .map(|(id, record)| (*id, record.spec.name.clone()))
            .collect();
        let mut spec = SweepSpec::example();
        spec.warm_start = vec!["lr".into(), "2".into(), "s1".into()];
        resolve_warm_start(&mut spec, &names).expect("resolves");
        // A name means the newest sweep of that name.
        assert_eq!(spec.warm_start, ["s3", "s2", "s1"]);
        spec.warm_start = vec!["s9".into(), "lr".into(), "width".into()];
        let problems = resolve_warm_start(&mut spec, &names).expect_err("unknown");
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
        let found = BTreeMap::from([
            (
                SweepId(1),
                StoredSweep {
                    record: record(1),
                    trials: BTreeMap::from([trial(0), trial(1)]),
                },
            ),
            (
                SweepId(2),
                StoredSweep {
                    record: record(2),
                    trials: BTreeMap::new(),
                },
            ),
        ]);
        let mut spec = SweepSpec::example();
        spec.warm_start = vec!["s1".into(), "s2".into(), "s5".into(), "s3".into()];
        let sources = warm_sources(SweepId(3), &spec, &found);
        let counts: Vec<usize> = sources.iter().map(|source| source.trials.len()).collect();
        assert_eq!(
            counts,
            [2, 0],
            "s1 with its two trials, s2 with none; s5 and s3 left out"
        );
    }
}
