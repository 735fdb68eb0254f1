//! Sweep: one actor per sweep — suggestions, budget, retries, results and watchers.
//!
//! Place in the tree: child of the Leader. It asks its sampler for points, queues trials at
//! the Scheduler (at most `max_parallel` unfinished at once), applies reports that the
//! Scheduler forwards, decides retries, writes every change of a trial to the store, and
//! streams events to watchers. It stays alive after the sweep ends, to answer queries.
//!
//! Accounting: a crash (non-zero exit, trial timeout) spends the retry budget; an agent loss
//! or preemption re-places the trial with the next attempt number without spending it.
//! Reports about any attempt but a trial's current one are ignored, so nothing counts twice.
//!
//! Failure: linked to the Leader; a failure stops the coordinator (state is in the store).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::messages::{
    CheckpointRef, MetricPoint, Metrics, StopReason, SweepEvent, SweepState, SweepSummary,
    TrialCounts, TrialOutcome, TrialRecord, TrialState,
};
use flotilla_protocol::spec::{StoppingRule, SweepSpec, TrialSpec};
use flotilla_protocol::tuning::{self, TunerSpace};
use flotilla_protocol::{AgentId, AttemptId, SweepId, TrialId};
use flotilla_tuner::stopping::{Asha, AshaSettings, Decision, MedianRule};
use flotilla_tuner::{Observation, Outcome, Point, Sampler};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use super::QueuedTrial;
use super::scheduler::{ExpectedAttempt, SchedulerMsg};
use crate::clock::now_ms;
use crate::selection::best_trial;
use crate::store::{StateStore, StateWrite, SweepRecord};

pub enum SweepMsg {
    Dispatched {
        attempt: AttemptId,
        agent: AgentId,
    },
    Started {
        attempt: AttemptId,
        dispatch_latency: Duration,
    },
    Metrics {
        attempt: AttemptId,
        points: Vec<MetricPoint>,
    },
    Finished {
        attempt: AttemptId,
        outcome: TrialOutcome,
    },
    /// The attempt wrote a checkpoint.
    Checkpoint {
        attempt: AttemptId,
        checkpoint: CheckpointRef,
    },
    /// The attempt's agent was lost (or never picked it up): run it again elsewhere.
    Lost {
        attempt: AttemptId,
    },
    Cancel(RpcReplyPort<SweepSummary>),
    Summary(RpcReplyPort<SweepSummary>),
    Best(RpcReplyPort<Option<TrialRecord>>),
    Trials(RpcReplyPort<Vec<TrialRecord>>),
    Watch(mpsc::UnboundedSender<SweepEvent>),
    CheckDeadline,
}

pub struct SweepArgs {
    pub record: SweepRecord,
    /// Trials restored from the store (empty for a new sweep).
    pub trials: BTreeMap<u32, TrialRecord>,
    pub scheduler: ActorRef<SchedulerMsg>,
    pub store: Arc<dyn StateStore>,
}

/// What the actor tracks about a trial's current attempt while it runs.
#[derive(Default)]
struct LiveAttempt {
    last_step: Option<u64>,
    latest: Metrics,
}

/// The sweep's early-stopping rule, fed with every trial's objective along its resource.
enum Stopper {
    Asha(Asha),
    Median(MedianRule),
}

impl Stopper {
    fn of(spec: &SweepSpec) -> Option<Stopper> {
        let stopping = spec.early_stopping.as_ref()?;
        match stopping.rule {
            StoppingRule::Asha => Asha::new(AshaSettings {
                min_resource: stopping.min_resource,
                max_resource: stopping.max_resource?,
                reduction_factor: stopping.reduction_factor,
            })
            .map(Stopper::Asha),
            StoppingRule::Median => Some(Stopper::Median(MedianRule::new(
                stopping.min_resource,
                stopping.min_trials as usize,
            ))),
        }
    }

    fn report(&mut self, trial: u32, resource: f64, value: f64) -> Decision {
        match self {
            Stopper::Asha(asha) => asha.report(trial, resource, value),
            Stopper::Median(rule) => rule.report(trial, resource, value),
        }
    }
}

pub struct SweepActorState {
    record: SweepRecord,
    /// `None` without early stopping. Rebuilt empty after a coordinator restart: rungs and
    /// medians fill again from the reports that follow.
    stopper: Option<Stopper>,
    trial_spec: Arc<TrialSpec>,
    sampler: Box<dyn Sampler>,
    space: TunerSpace,
    trials: Vec<TrialRecord>,
    live: HashMap<u32, LiveAttempt>,
    /// Trials created so far may not exceed this (the budget, or a smaller grid).
    limit: u32,
    exhausted: bool,
    scheduler: ActorRef<SchedulerMsg>,
    store: Arc<dyn StateStore>,
    watchers: Vec<mpsc::UnboundedSender<SweepEvent>>,
}

pub struct SweepActor;

impl Actor for SweepActor {
    type Msg = SweepMsg;
    type State = SweepActorState;
    type Arguments = SweepArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SweepMsg>,
        args: SweepArgs,
    ) -> Result<SweepActorState, ActorProcessingErr> {
        let spec = &args.record.spec;
        let space = TunerSpace::new(&spec.space)?;
        let sampler = tuning::sampler(
            &spec.algorithm,
            &space,
            args.record.seed,
            u64::from(spec.budget.max_trials),
        );
        let limit = sampler
            .capacity()
            .map_or(spec.budget.max_trials, |capacity| {
                capacity.min(u64::from(spec.budget.max_trials)) as u32
            });
        let mut state = SweepActorState {
            stopper: Stopper::of(spec),
            trial_spec: Arc::new(spec.trial.clone()),
            sampler,
            space,
            trials: args.trials.into_values().collect(),
            live: HashMap::new(),
            limit,
            exhausted: false,
            scheduler: args.scheduler,
            store: args.store,
            watchers: Vec::new(),
            record: args.record,
        };
        if spec_has_deadline(&state.record.spec) && !state.record.state.is_final() {
            myself.send_interval(Duration::from_millis(500), || SweepMsg::CheckDeadline);
        }
        state.scheduler.cast(SchedulerMsg::RegisterSweep {
            sweep: state.record.id,
            actor: myself.clone(),
        })?;
        state.resume();
        state.fill();
        state.finish_if_done().await;
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SweepMsg>,
        message: SweepMsg,
        state: &mut SweepActorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SweepMsg::Dispatched { attempt, agent } => state.dispatched(attempt, agent),
            SweepMsg::Started {
                attempt,
                dispatch_latency,
            } => state.started(attempt, dispatch_latency),
            SweepMsg::Metrics { attempt, points } => {
                if state.metrics(attempt, points) {
                    state.fill();
                    state.finish_if_done().await;
                }
            }
            SweepMsg::Checkpoint {
                attempt,
                checkpoint,
            } => state.checkpoint(attempt, checkpoint),
            SweepMsg::Finished { attempt, outcome } => {
                state.finished(attempt, outcome);
                state.fill();
                state.finish_if_done().await;
            }
            SweepMsg::Lost { attempt } => {
                if state.current(attempt).is_some() {
                    tracing::info!(%attempt, "attempt lost with its agent");
                    state.retry(attempt.trial.number, false, "agent lost".into());
                    state.fill();
                    state.finish_if_done().await;
                }
            }
            SweepMsg::Cancel(reply) => {
                state
                    .stop_all(SweepState::Cancelled, StopReason::Cancelled)
                    .await;
                state.finish_if_done().await;
                let _ = reply.send(state.summary());
            }
            SweepMsg::Summary(reply) => {
                let _ = reply.send(state.summary());
            }
            SweepMsg::Best(reply) => {
                let _ = reply.send(
                    best_trial(&state.trials, state.record.spec.objective.direction).cloned(),
                );
            }
            SweepMsg::Trials(reply) => {
                let _ = reply.send(state.trials.clone());
            }
            SweepMsg::Watch(watcher) => {
                if state.record.state.is_final() {
                    let _ = watcher.send(SweepEvent::SweepFinished(state.summary()));
                } else {
                    state.watchers.push(watcher);
                }
            }
            SweepMsg::CheckDeadline => {
                let deadline = state
                    .record
                    .spec
                    .budget
                    .max_duration
                    .map(|budget| state.record.created_ms + budget.as_millis() as u64);
                if state.record.state == SweepState::Running
                    && deadline.is_some_and(|deadline| now_ms() >= deadline)
                {
                    tracing::info!(sweep = %state.record.id, "wall-clock budget spent; stopping the sweep");
                    state
                        .stop_all(SweepState::TimedOut, StopReason::BudgetSpent)
                        .await;
                    state.finish_if_done().await;
                }
            }
        }
        Ok(())
    }
}

fn spec_has_deadline(spec: &SweepSpec) -> bool {
    spec.budget.max_duration.is_some()
}

impl SweepActorState {
    fn id(&self) -> SweepId {
        self.record.id
    }

    /// The trial if `attempt` is its current attempt and it is not final.
    fn current(&self, attempt: AttemptId) -> Option<&TrialRecord> {
        self.trials
            .get(attempt.trial.number as usize)
            .filter(|trial| trial.attempt == attempt.attempt && !trial.state.is_final())
    }

    fn unfinished(&self) -> u32 {
        self.trials
            .iter()
            .filter(|trial| !trial.state.is_final())
            .count() as u32
    }

    fn persist(&self, number: u32) {
        let record = self.trials[number as usize].clone();
        // Durability is awaited where it matters (sweep end); results reach watchers at once.
        drop(self.store.write(vec![StateWrite::Trial(Box::new(record))]));
    }

    fn broadcast(&mut self, event: SweepEvent) {
        self.watchers
            .retain(|watcher| watcher.send(event.clone()).is_ok());
    }

    /// The trial's current attempt, as the Scheduler queues it.
    fn queued(&self, number: u32) -> QueuedTrial {
        let trial = &self.trials[number as usize];
        QueuedTrial {
            attempt: AttemptId {
                trial: trial.id,
                attempt: trial.attempt,
            },
            params: trial.params.clone(),
            trial: self.trial_spec.clone(),
            slots: self.record.spec.resources.slots,
            gpus: self.record.spec.resources.gpus,
            resume_from: trial.checkpoint.as_ref().map(|c| c.uri.clone()),
        }
    }

    fn queue(&self, number: u32) {
        let _ = self
            .scheduler
            .cast(SchedulerMsg::Enqueue(vec![self.queued(number)]));
    }

    /// Re-queues what a previous coordinator left unfinished.
    fn resume(&mut self) {
        if self.trials.is_empty() {
            return;
        }
        let final_sweep = self.record.state.is_final();
        let mut expected = Vec::new();
        for number in 0..self.trials.len() as u32 {
            let trial = &mut self.trials[number as usize];
            match trial.state {
                _ if trial.state.is_final() => continue,
                _ if final_sweep => {
                    trial.state = TrialState::Stopped;
                    trial.message = Some("the sweep ended while the coordinator was down".into());
                }
                TrialState::Running if trial.agent.is_some() => {
                    let agent = trial.agent.clone().unwrap_or(AgentId(String::new()));
                    expected.push(ExpectedAttempt {
                        attempt: AttemptId {
                            trial: trial.id,
                            attempt: trial.attempt,
                        },
                        agent,
                        slots: self.record.spec.resources.slots,
                        gpus: self.record.spec.resources.gpus,
                    });
                    continue;
                }
                _ => {
                    // It may have been started under this attempt number without the store
                    // hearing of it: a fresh number makes any such run's reports stale.
                    trial.attempt += 1;
                    trial.state = TrialState::Pending;
                    trial.agent = None;
                }
            }
            self.persist(number);
            if !final_sweep {
                self.queue(number);
            }
        }
        tracing::info!(sweep = %self.id(), trials = self.trials.len(), awaiting_agents = expected.len(), "sweep resumed from the store");
        if !expected.is_empty() {
            let _ = self.scheduler.cast(SchedulerMsg::Expect(expected));
        }
    }

    /// Creates trials while the budget and parallelism allow.
    fn fill(&mut self) {
        if self.record.state != SweepState::Running {
            return;
        }
        let max_parallel = self.record.spec.budget.max_parallel;
        let mut created = Vec::new();
        while !self.exhausted
            && (self.trials.len() as u32) < self.limit
            && self.unfinished() < max_parallel
        {
            let number = self.trials.len() as u32;
            let Some(point) = self.suggest(number) else {
                self.exhausted = true;
                break;
            };
            let params = self.space.params_of(&point);
            self.trials.push(TrialRecord {
                id: TrialId {
                    sweep: self.id(),
                    number,
                },
                attempt: 0,
                params,
                state: TrialState::Pending,
                metrics: BTreeMap::new(),
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
            });
            created.push(number);
        }
        if created.is_empty() {
            return;
        }
        let writes = created
            .iter()
            .map(|number| StateWrite::Trial(Box::new(self.trials[*number as usize].clone())))
            .collect();
        drop(self.store.write(writes));
        let queued = created.iter().map(|number| self.queued(*number)).collect();
        let _ = self.scheduler.cast(SchedulerMsg::Enqueue(queued));
    }

    /// What the sampler should know: every trial so far, pending ones included.
    fn history(&self) -> Vec<Observation> {
        let spec = &self.record.spec;
        self.trials
            .iter()
            .filter_map(|trial| {
                let outcome = match (trial.state, trial.objective) {
                    (TrialState::Pending | TrialState::Running, _) => Outcome::Pending,
                    // Succeeded, or stopped early with its objective so far: both tell the
                    // model about the region.
                    (TrialState::Succeeded | TrialState::Stopped, Some(objective)) => {
                        tuning::completed(
                            objective,
                            spec.objective.direction,
                            &spec.constraints,
                            &trial.metrics,
                        )
                    }
                    _ => Outcome::Failed,
                };
                tuning::observation(&self.space, &trial.params, outcome)
            })
            .collect()
    }

    /// The sampler's point for trial `number`. Model fits take milliseconds to a fraction
    /// of a second at a thousand trials, so on a multi-threaded runtime the worker thread
    /// is handed over while the sampler computes (other actors keep running).
    fn suggest(&mut self, number: u32) -> Option<Point> {
        let history = self.history();
        let sampler = &mut self.sampler;
        let multi_threaded = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if multi_threaded {
            tokio::task::block_in_place(|| sampler.suggest(number, &history))
        } else {
            sampler.suggest(number, &history)
        }
    }

    fn dispatched(&mut self, attempt: AttemptId, agent: AgentId) {
        let number = attempt.trial.number;
        if self.current(attempt).is_none() {
            return;
        }
        let trial = &mut self.trials[number as usize];
        trial.state = TrialState::Running;
        trial.agent = Some(agent);
        trial.started_ms = Some(now_ms());
        self.live.insert(number, LiveAttempt::default());
        self.persist(number);
    }

    fn started(&mut self, attempt: AttemptId, dispatch_latency: Duration) {
        let Some(trial) = self.current(attempt) else {
            return;
        };
        let (agent, params) = (
            trial.agent.clone().unwrap_or(AgentId(String::new())),
            trial.params.clone(),
        );
        self.trials[attempt.trial.number as usize].dispatch_latency_us =
            Some(dispatch_latency.as_micros() as u64);
        self.broadcast(SweepEvent::TrialStarted {
            attempt,
            agent,
            params,
        });
    }

    /// Moves the trial's latest-checkpoint pointer, only forward and only for the current
    /// attempt (see `CheckpointRef::may_replace`); a stale attempt's report changes nothing.
    fn checkpoint(&mut self, attempt: AttemptId, checkpoint: CheckpointRef) {
        let number = attempt.trial.number;
        let Some(trial) = self.current(attempt) else {
            tracing::info!(%attempt, uri = %checkpoint.uri, "ignoring a checkpoint of an attempt that is not current");
            return;
        };
        if !checkpoint.may_replace(trial.checkpoint.as_ref(), trial.attempt) {
            tracing::info!(%attempt, uri = %checkpoint.uri, "ignoring a checkpoint older than the trial's latest");
            return;
        }
        self.trials[number as usize].checkpoint = Some(checkpoint);
        self.persist(number);
    }

    /// Applies metric points; `true` if the early-stopping rule stopped the trial.
    fn metrics(&mut self, attempt: AttemptId, points: Vec<MetricPoint>) -> bool {
        if self.current(attempt).is_none() {
            return false;
        }
        let mut decision = Decision::Continue;
        let live = self.live.entry(attempt.trial.number).or_default();
        let mut fresh = Vec::new();
        for point in points {
            // Deduplicate by (trial, attempt, step).
            if live.last_step.is_some_and(|last| point.step <= last) {
                continue;
            }
            live.last_step = Some(point.step);
            live.latest.extend(
                point
                    .values
                    .iter()
                    .map(|(name, value)| (name.clone(), *value)),
            );
            if let (Some(stopper), Some(stopping), Decision::Continue) = (
                self.stopper.as_mut(),
                self.record.spec.early_stopping.as_ref(),
                &decision,
            ) && let (Some(value), Some(resource)) = (
                point.values.get(&self.record.spec.objective.metric),
                live.latest.get(&stopping.resource),
            ) {
                let loss = self.record.spec.objective.direction.loss(*value);
                decision = stopper.report(attempt.trial.number, *resource, loss);
            }
            fresh.push(point);
        }
        for point in fresh {
            self.broadcast(SweepEvent::Metric { attempt, point });
        }
        match decision {
            Decision::Continue => false,
            Decision::Stop(reason) => {
                self.stop_early(attempt, reason);
                true
            }
        }
    }

    /// Ends the trial now with its metrics so far and tells its agent to stop it; the slot
    /// frees as soon as the agent has stopped it, and the sweep creates the next trial.
    fn stop_early(&mut self, attempt: AttemptId, reason: String) {
        let number = attempt.trial.number;
        let live = self.live.remove(&number).unwrap_or_default();
        tracing::info!(%attempt, %reason, "stopping a trial early");
        let spec = &self.record.spec;
        let trial = &mut self.trials[number as usize];
        trial.objective = live.latest.get(&spec.objective.metric).copied();
        trial.feasible = spec.is_feasible(&live.latest);
        trial.metrics = live.latest;
        trial.message = Some(format!("stopped early: {reason}"));
        trial.duration_ms = trial
            .started_ms
            .map(|started| now_ms().saturating_sub(started));
        self.conclude(number, TrialState::Stopped);
        let _ = self.scheduler.cast(SchedulerMsg::Stop {
            attempts: vec![attempt],
            reason: StopReason::EarlyStopped,
        });
    }

    fn finished(&mut self, attempt: AttemptId, outcome: TrialOutcome) {
        if self.current(attempt).is_none() {
            tracing::debug!(%attempt, "ignoring a result for a superseded or finished attempt");
            return;
        }
        let number = attempt.trial.number;
        let live = self.live.remove(&number).unwrap_or_default();
        let running = self.record.state == SweepState::Running;
        match outcome {
            TrialOutcome::Succeeded {
                metrics,
                duration_ms,
            } => {
                let mut final_metrics = live.latest;
                final_metrics.extend(metrics);
                let spec = &self.record.spec;
                let trial = &mut self.trials[number as usize];
                trial.objective = final_metrics.get(&spec.objective.metric).copied();
                trial.feasible = spec.is_feasible(&final_metrics);
                trial.metrics = final_metrics;
                trial.duration_ms = Some(duration_ms);
                trial.message = trial
                    .objective
                    .is_none()
                    .then(|| format!("the trial never reported '{}'", spec.objective.metric));
                self.conclude(number, TrialState::Succeeded);
            }
            TrialOutcome::Failed {
                exit_code,
                signal,
                message,
                duration_ms,
            } => {
                self.trials[number as usize].duration_ms = Some(duration_ms);
                let why = match (exit_code, signal) {
                    (Some(code), _) => format!("exited with code {code}: {message}"),
                    (None, Some(signal)) => format!("killed by signal {signal}: {message}"),
                    (None, None) => message,
                };
                if running {
                    self.retry(number, true, why)
                } else {
                    self.stop_trial(number, why)
                }
            }
            TrialOutcome::Stopped {
                reason,
                duration_ms,
            } => {
                self.trials[number as usize].duration_ms = Some(duration_ms);
                match reason {
                    StopReason::TimedOut if running => {
                        self.retry(number, true, "exceeded the trial timeout".into())
                    }
                    StopReason::Superseded | StopReason::AgentShutdown if running => {
                        self.retry(number, false, format!("{reason:?} on its agent"))
                    }
                    _ => self.stop_trial(number, format!("stopped: {reason:?}")),
                }
            }
        }
    }

    fn stop_trial(&mut self, number: u32, why: String) {
        self.trials[number as usize].message = Some(why);
        self.conclude(number, TrialState::Stopped);
    }

    /// Runs the trial again under a new attempt number; `spend` counts it against the retry
    /// budget. A sweep that is no longer running stops the trial instead.
    fn retry(&mut self, number: u32, spend: bool, why: String) {
        self.live.remove(&number);
        if self.record.state != SweepState::Running {
            self.stop_trial(number, why);
            return;
        }
        let max_retries = self.record.spec.retries.max_retries;
        let trial = &mut self.trials[number as usize];
        if spend {
            trial.failures += 1;
        }
        trial.message = Some(why);
        if trial.failures > max_retries {
            self.conclude(number, TrialState::Failed);
            return;
        }
        trial.attempt += 1;
        trial.state = TrialState::Pending;
        trial.agent = None;
        self.persist(number);
        self.queue(number);
    }

    fn conclude(&mut self, number: u32, state: TrialState) {
        let trial = &mut self.trials[number as usize];
        trial.state = state;
        trial.finished_ms = Some(now_ms());
        self.persist(number);
        let record = self.trials[number as usize].clone();
        self.broadcast(SweepEvent::TrialFinished(record));
    }

    /// Ends the sweep early: queued trials stop now, running ones are told to stop.
    async fn stop_all(&mut self, final_state: SweepState, reason: StopReason) {
        if self.record.state != SweepState::Running {
            return;
        }
        self.record.state = final_state;
        drop(
            self.store
                .write(vec![StateWrite::Sweep(Box::new(self.record.clone()))]),
        );
        let withdrawn = super::ask(&self.scheduler, |reply| SchedulerMsg::Withdraw {
            sweep: self.record.id,
            reply,
        })
        .await
        .unwrap_or_default();
        for attempt in withdrawn {
            if self.current(attempt).is_some() {
                self.stop_trial(
                    attempt.trial.number,
                    format!("stopped before it started: sweep {final_state:?}"),
                );
            }
        }
        let running: Vec<AttemptId> = self
            .trials
            .iter()
            .filter(|trial| !trial.state.is_final())
            .map(|trial| AttemptId {
                trial: trial.id,
                attempt: trial.attempt,
            })
            .collect();
        // Pending trials not in the queue are in flight to an agent; stop them there too.
        let _ = self.scheduler.cast(SchedulerMsg::Stop {
            attempts: running,
            reason,
        });
    }

    async fn finish_if_done(&mut self) {
        if self.record.state.is_final() && self.record.finished_ms.is_some() {
            return;
        }
        let all_final = self.trials.iter().all(|trial| trial.state.is_final());
        let nothing_left = self.exhausted || self.trials.len() as u32 >= self.limit;
        if !all_final || (self.record.state == SweepState::Running && !nothing_left) {
            return;
        }
        if self.record.state == SweepState::Running {
            self.record.state = SweepState::Completed;
        }
        self.record.finished_ms = Some(now_ms());
        let ticket = self
            .store
            .write(vec![StateWrite::Sweep(Box::new(self.record.clone()))]);
        if let Err(error) = ticket.durable().await {
            tracing::error!(sweep = %self.id(), %error, "could not store the sweep's end");
        }
        let summary = self.summary();
        tracing::info!(sweep = %self.id(), state = ?summary.state, succeeded = summary.counts.succeeded, failed = summary.counts.failed, "sweep finished");
        self.broadcast(SweepEvent::SweepFinished(summary));
        self.watchers.clear();
    }

    fn summary(&self) -> SweepSummary {
        let mut counts = TrialCounts::default();
        for trial in &self.trials {
            match trial.state {
                TrialState::Pending => counts.pending += 1,
                TrialState::Running => counts.running += 1,
                TrialState::Succeeded => counts.succeeded += 1,
                TrialState::Failed => counts.failed += 1,
                TrialState::Stopped => counts.stopped += 1,
            }
        }
        let spec = &self.record.spec;
        SweepSummary {
            id: self.id(),
            name: spec.name.clone(),
            state: self.record.state,
            objective_metric: spec.objective.metric.clone(),
            direction: spec.objective.direction,
            max_trials: self.limit,
            counts,
            best: best_trial(&self.trials, spec.objective.direction).cloned(),
            created_ms: self.record.created_ms,
            finished_ms: self.record.finished_ms,
        }
    }
}
