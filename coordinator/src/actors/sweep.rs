//! Sweep: one actor per sweep — suggestions, budget, retries, results and watchers.
//!
//! Place in the tree: child of the Leader. It asks its sampler for points, queues trials at
//! the Scheduler (at most `max_parallel` unfinished at once), applies reports that the
//! Scheduler forwards, decides retries, writes every change of a trial to the store, and
//! streams events to watchers. It stays alive after the sweep ends, to answer queries.
//!
//! Phases: a phased sweep runs its phases in order, each with its own space, sampler and
//! budget. When every trial of a phase is final, the phase's winner (best feasible
//! succeeded trial) fixes its parameters for every later trial; without a winner the sweep
//! ends `Failed`. Trials carry their phase; after a restart the current phase, its first
//! trial and the fixed parameters are derived again from the trials.
//!
//! ASHA's promotion form: a new trial trains up to the first rung (its `epochs` set to the
//! rung) and pauses there with its checkpoint. Whenever a slot is free, the best `1/η` of a
//! rung not yet promoted resume from their checkpoints up to the next rung, before any new
//! trial starts. When nothing new can start and nothing runs, the trials still paused are
//! stopped. A trial's `rungs` (its objective at each rung) rebuild the bookkeeping after a
//! restart.
//!
//! Suggestions: a sampler that fits a model (past its initial design) runs on a blocking
//! thread, with the sampler moved there and back (`SweepMsg::Suggested`), so status, cancel,
//! metrics and reports keep flowing while a suggestion at thousands of trials takes its
//! second. One suggestion runs at a time; design points (random, Sobol, grid, a model's
//! first trials) are computed in place. The thread ends with its suggestion; an answer that
//! comes back to a stopped actor is dropped.
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
    CheckpointRef, Command, LOST_ON_KEPT, LearningCurve, MetricPoint, Metrics, Params,
    PhaseSummary, StartTrial, StopReason, SweepDetail, SweepEvent, SweepState, SweepSummary,
    TrialCounts, TrialOutcome, TrialRecord, TrialState,
};
use flotilla_protocol::spec::{Direction, Objective, StoppingRule, SweepSpec, TrialSpec};
use flotilla_protocol::trainers::BUDGET_HYPERPARAMETER;
use flotilla_protocol::{AgentId, AttemptId, SweepId, TrialId};
use flotilla_suggest::{self as suggest, TunerSpace};
use flotilla_tuner::stopping::{Asha, AshaSettings, Decision, Hyperband, MedianRule};
use flotilla_tuner::{Observation, Outcome, Point, Sampler};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use super::QueuedTrial;
use super::scheduler::{ExpectedAttempt, SchedulerMsg};
use crate::clock::now_ms;
use crate::metrics::METRICS;
use crate::selection::best_trial;
use crate::store::{StateStore, StateWrite, SweepRecord};

/// Why an attempt is handed back to its sweep without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossCause {
    /// Its agent was lost (gone, or back without it) after it started there: counted
    /// against `[retries] max_reschedules`.
    AgentLost,
    /// It never started: the agent refused the start, or the start did not reach it (the
    /// agent reconnected, a previous leader died first). Not counted.
    NotStarted(String),
}

pub enum SweepMsg {
    /// The Scheduler placed the attempt; `start` goes to the agent once the placement is
    /// durable (write-ahead: a new leader must know about every attempt an agent runs).
    Dispatched {
        attempt: AttemptId,
        agent: AgentId,
        start: Box<StartTrial>,
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
        cause: LossCause,
    },
    Cancel(RpcReplyPort<SweepSummary>),
    Summary(RpcReplyPort<SweepSummary>),
    Best(RpcReplyPort<Option<TrialRecord>>),
    Trials(RpcReplyPort<Vec<TrialRecord>>),
    /// Summary, spec and learning curves, for reports and the web view.
    Detail(RpcReplyPort<SweepDetail>),
    /// The sweep's objectives (the web view draws a front for several).
    Objective(RpcReplyPort<Objective>),
    Watch(mpsc::UnboundedSender<(u64, SweepEvent)>),
    /// A watcher resuming after event `from`: it is sent each trial whose stored state is
    /// newer (its current state as one event, in sequence order), then live events.
    WatchFrom {
        from: u64,
        watcher: mpsc::UnboundedSender<(u64, SweepEvent)>,
    },
    CheckDeadline,
    /// A suggestion computed off the actor: the phase's sampler comes back with its point for
    /// trial `number` (`None`: it has no more points).
    Suggested {
        phase: usize,
        number: u32,
        sampler: Box<dyn Sampler>,
        point: Option<Point>,
    },
}

pub struct SweepArgs {
    pub record: SweepRecord,
    /// Trials restored from the store (empty for a new sweep).
    pub trials: BTreeMap<u32, TrialRecord>,
    /// The sweeps `warm_start` names, with their trials (empty without a warm start).
    pub warm: Vec<WarmSource>,
    pub scheduler: ActorRef<SchedulerMsg>,
    pub store: Arc<dyn StateStore>,
    /// Told when the sweep ends.
    pub notifier: Option<crate::notify::Notifier>,
    /// The leader's epoch: this term numbers the sweep's events above every earlier term's.
    pub epoch: flotilla_protocol::Epoch,
    /// Told when the sweep ends, so it can hand the finished sweep's memory back.
    pub leader: Option<ActorRef<super::leader::LeaderMsg>>,
    /// Only answers questions about a finished sweep (one read back from the store or the
    /// archive on demand): registers nothing with the scheduler and changes nothing.
    pub read_only: bool,
}

/// An earlier sweep whose results seed this one's sampler (`warm_start`).
pub struct WarmSource {
    pub spec: SweepSpec,
    pub trials: Vec<TrialRecord>,
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
    Hyperband(Hyperband),
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
            StoppingRule::Hyperband => Hyperband::new(AshaSettings {
                min_resource: stopping.min_resource,
                max_resource: stopping.max_resource?,
                reduction_factor: stopping.reduction_factor,
            })
            .map(Stopper::Hyperband),
            StoppingRule::Median => Some(Stopper::Median(MedianRule::new(
                stopping.min_resource,
                stopping.min_trials as usize,
            ))),
        }
    }

    fn report(&mut self, trial: u32, resource: f64, value: f64) -> Decision {
        match self {
            Stopper::Asha(asha) => asha.report(trial, resource, value),
            Stopper::Hyperband(hyperband) => hyperband.report(trial, resource, value),
            Stopper::Median(rule) => rule.report(trial, resource, value),
        }
    }
}

/// One phase as the actor runs it (a single-phase sweep has one).
struct PhasePlan {
    name: String,
    space: TunerSpace,
    /// `None` while a suggestion runs on a blocking thread with it.
    sampler: Option<Box<dyn Sampler>>,
    /// Trials the phase may create (its budget, or a smaller grid).
    limit: u32,
    max_parallel: u32,
}

pub struct SweepActorState {
    record: SweepRecord,
    /// `None` without early stopping. Rebuilt empty at each phase and after a coordinator
    /// restart: rungs and medians fill again from the reports that follow.
    stopper: Option<Stopper>,
    trial_spec: Arc<TrialSpec>,
    plans: Vec<PhasePlan>,
    /// Index of the current phase in `plans`.
    phase: usize,
    /// Number of the current phase's first trial; trials are numbered across phases.
    phase_start: u32,
    /// Parameters the winners of earlier phases fixed; every new trial starts from them.
    fixed: Params,
    /// Results of the sweeps this one warm-starts from, in the first phase's space: the first
    /// phase's sampler sees them before the sweep's own trials.
    warm: Vec<Observation>,
    trials: Vec<TrialRecord>,
    live: HashMap<u32, LiveAttempt>,
    /// Each trial's objective by step, in memory only (a new leader starts them afresh).
    curves: BTreeMap<u32, Curve>,
    /// The current phase's sampler has no more points.
    exhausted: bool,
    scheduler: ActorRef<SchedulerMsg>,
    store: Arc<dyn StateStore>,
    notifier: Option<crate::notify::Notifier>,
    leader: Option<ActorRef<super::leader::LeaderMsg>>,
    watchers: Vec<mpsc::UnboundedSender<(u64, SweepEvent)>>,
    /// The last event sequence number handed out: `epoch << 32` plus a count, so a later
    /// leader's numbers are above this one's whatever was stored.
    seq: u64,
    /// Start commands waiting for their placement to be durable; aborted with the actor.
    starts: tokio::task::JoinSet<()>,
    myself: ActorRef<SweepMsg>,
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
        let mut plans = Vec::new();
        for (index, phase) in spec.phases().into_iter().enumerate() {
            let space = TunerSpace::new(phase.space)?;
            // Each phase draws from its own stream of the sweep's seed.
            let seed = args.record.seed.wrapping_add(index as u64);
            let sampler = suggest::sampler(
                phase.algorithm,
                &space,
                seed,
                u64::from(phase.max_trials),
                spec.objective.goals().count(),
            );
            let limit = sampler.capacity().map_or(phase.max_trials, |capacity| {
                capacity.min(u64::from(phase.max_trials)) as u32
            });
            plans.push(PhasePlan {
                name: phase.name.to_string(),
                space,
                sampler: Some(sampler),
                limit,
                max_parallel: phase.max_parallel,
            });
        }
        let trials: Vec<TrialRecord> = args.trials.into_values().collect();
        // Trials are created phase after phase: the newest trial's phase is the current one.
        let phase = trials.last().map_or(0, |trial| trial.phase as usize);
        let phase_start = trials
            .iter()
            .position(|trial| trial.phase as usize == phase)
            .unwrap_or(trials.len()) as u32;
        let fixed = match phase.checked_sub(1) {
            Some(previous) => best_trial(
                trials
                    .iter()
                    .filter(|trial| trial.phase as usize == previous),
                spec.objective.direction,
            )
            .map(|winner| winner.params.clone())
            .unwrap_or_default(),
            None => Params::new(),
        };
        let warm = match plans.first() {
            Some(first) => warm_observations(spec, &first.space, &args.warm),
            None => Vec::new(),
        };
        if !args.warm.is_empty() {
            let sources = spec.warm_start.join(",");
            tracing::info!(sweep = %args.record.id, %sources, results = warm.len(), "warm start");
        }
        let mut state = SweepActorState {
            stopper: Stopper::of(spec),
            warm,
            trial_spec: Arc::new(spec.trial.clone()),
            plans,
            phase,
            phase_start,
            fixed,
            trials,
            live: HashMap::new(),
            curves: BTreeMap::new(),
            exhausted: false,
            scheduler: args.scheduler,
            notifier: args.notifier,
            leader: args.leader,
            store: args.store,
            watchers: Vec::new(),
            seq: args.epoch.0 << 32,
            starts: tokio::task::JoinSet::new(),
            myself: myself.clone(),
            record: args.record,
        };
        if args.read_only {
            return Ok(state);
        }
        if spec_has_deadline(&state.record.spec) && !state.record.state.is_final() {
            myself.send_interval(Duration::from_millis(500), || SweepMsg::CheckDeadline);
        }
        state.scheduler.cast(SchedulerMsg::RegisterSweep {
            sweep: state.record.id,
            actor: myself.clone(),
            scheduling: state.record.spec.scheduling.clone(),
        })?;
        state.resume();
        state.rebuild_rungs();
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
            SweepMsg::Dispatched {
                attempt,
                agent,
                start,
            } => state.dispatched(attempt, agent, start),
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
                #[cfg(feature = "fault-injection")]
                state.injected_fault()?;
                state.finished(attempt, outcome);
                state.fill();
                state.finish_if_done().await;
            }
            SweepMsg::Lost { attempt, cause } => {
                if state.current(attempt).is_some() {
                    match cause {
                        LossCause::AgentLost => {
                            tracing::info!(%attempt, "attempt lost with its agent");
                            state.lost(attempt.trial.number);
                        }
                        LossCause::NotStarted(why) => {
                            tracing::info!(%attempt, %why, "attempt did not start; placing it again");
                            state.retry(attempt.trial.number, false, why);
                        }
                    }
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
            SweepMsg::Objective(reply) => {
                let _ = reply.send(state.record.spec.objective.clone());
            }
            SweepMsg::Detail(reply) => {
                let metric = &state.record.spec.objective.metric;
                let _ = reply.send(SweepDetail {
                    summary: state.summary(),
                    spec: state.record.spec.clone(),
                    // A trial paused at an ASHA rung sends one curve per stretch between
                    // its pauses, in order: the report shows where it paused and resumed.
                    curves: state
                        .curves
                        .iter()
                        .flat_map(|(trial, curve)| {
                            curve.stretches().into_iter().map(|points| LearningCurve {
                                trial: *trial,
                                metric: metric.clone(),
                                points,
                            })
                        })
                        .collect(),
                });
            }
            SweepMsg::Watch(watcher) => {
                if state.record.state.is_final() {
                    let _ = watcher.send((state.seq, SweepEvent::SweepFinished(state.summary())));
                } else {
                    state.watchers.push(watcher);
                }
            }
            SweepMsg::WatchFrom { from, watcher } => {
                for event in state.missed_since(from) {
                    let _ = watcher.send(event);
                }
                if state.record.state.is_final() {
                    let _ = watcher.send((state.seq, SweepEvent::SweepFinished(state.summary())));
                } else {
                    state.watchers.push(watcher);
                }
            }
            SweepMsg::Suggested {
                phase,
                number,
                sampler,
                point,
            } => {
                state.suggested(phase, number, sampler, point);
                state.finish_if_done().await;
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

    fn plan(&self) -> &PhasePlan {
        &self.plans[self.phase]
    }

    /// The current phase's trials.
    fn phase_trials(&self) -> &[TrialRecord] {
        &self.trials[self.phase_start as usize..]
    }

    /// The number the current phase's sampler knows trial `number` by: its position in the
    /// phase, after the results a first phase is warm-started with (which count as trials
    /// already run, so a warm sampler models from its first suggestion).
    fn sampler_index(&self, number: u32) -> u32 {
        let warm = if self.phase == 0 { self.warm.len() } else { 0 };
        number - self.phase_start + warm as u32
    }

    /// Trials of every phase may not exceed this.
    fn limit(&self) -> u32 {
        self.plans.iter().map(|plan| plan.limit).sum()
    }

    /// Whether the current phase will create no more trials and all of its trials are final.
    fn phase_done(&self) -> bool {
        let created = self.phase_trials().len() as u32;
        (self.exhausted || created >= self.plan().limit)
            && self
                .phase_trials()
                .iter()
                .all(|trial| trial.state.is_final())
    }

    /// Moves on to the next phase while the current one is done and has a winner; a phase
    /// without a winner ends the sweep `Failed`.
    fn advance_phases(&mut self) {
        while self.record.state == SweepState::Running
            && self.phase + 1 < self.plans.len()
            && self.phase_done()
        {
            let direction = self.record.spec.objective.direction;
            let winner = best_trial(self.phase_trials(), direction).cloned();
            let summary = self.phase_summary(self.phase);
            tracing::info!(sweep = %self.id(), phase = %summary.name, winner = ?summary.winner, "phase finished");
            self.broadcast(SweepEvent::PhaseFinished {
                phase: summary,
                winner: winner.clone(),
            });
            let Some(winner) = winner else {
                tracing::warn!(sweep = %self.id(), phase = %self.plan().name, "the phase has no feasible winner; the sweep ends");
                self.record.state = SweepState::Failed;
                drop(
                    self.store
                        .write(vec![StateWrite::Sweep(Box::new(self.record.clone()))]),
                );
                return;
            };
            self.fixed = winner.params;
            self.phase += 1;
            self.phase_start = self.trials.len() as u32;
            self.exhausted = false;
            self.stopper = Stopper::of(&self.record.spec);
            self.fill();
        }
    }

    fn phase_summary(&self, index: usize) -> PhaseSummary {
        let plan = &self.plans[index];
        let trials: Vec<&TrialRecord> = self
            .trials
            .iter()
            .filter(|trial| trial.phase as usize == index)
            .collect();
        let done = index < self.phase || (index == self.phase && self.phase_done());
        PhaseSummary {
            name: plan.name.clone(),
            max_trials: plan.limit,
            trials: trials.len() as u32,
            done,
            winner: done
                .then(|| best_trial(trials, self.record.spec.objective.direction))
                .flatten()
                .map(|winner| winner.id.number),
        }
    }

    /// Trials queued or running (paused ones hold no slot).
    fn unfinished(&self) -> u32 {
        self.trials
            .iter()
            .filter(|trial| matches!(trial.state, TrialState::Pending | TrialState::Running))
            .count() as u32
    }

    fn promoting(&self) -> bool {
        self.record
            .spec
            .early_stopping
            .as_ref()
            .is_some_and(|stopping| stopping.promotion)
    }

    /// ASHA's bookkeeping when the sweep uses the promotion form.
    fn promotion(&mut self) -> Option<&mut Asha> {
        let promoting = self.promoting();
        match &mut self.stopper {
            Some(Stopper::Asha(asha)) if promoting => Some(asha),
            _ => None,
        }
    }

    /// Rebuilds the promotion bookkeeping from the current phase's trials (after a restart).
    fn rebuild_rungs(&mut self) {
        let direction = self.record.spec.objective.direction;
        let trials: Vec<(u32, Vec<f64>, bool)> = self
            .phase_trials()
            .iter()
            .map(|trial| {
                (
                    trial.id.number,
                    trial.rungs.clone(),
                    trial.state == TrialState::Paused,
                )
            })
            .collect();
        let Some(asha) = self.promotion() else {
            return;
        };
        for (number, rungs, paused) in trials {
            for (rung, value) in rungs.iter().enumerate() {
                asha.paused(number, rung, direction.loss(*value));
                // Every rung below the last one it reached was left by a promotion, and so
                // was the last one unless the trial still waits there.
                if rung + 1 < rungs.len() || !paused {
                    asha.mark_promoted(number, rung);
                }
            }
        }
    }

    /// Resumes the best paused trials while slots are free; `true` if any was promoted.
    fn promote(&mut self) -> bool {
        let max_parallel = self.plan().max_parallel;
        let mut promoted = Vec::new();
        while self.unfinished() < max_parallel {
            let Some((number, rung)) = self.promotion().and_then(Asha::promote) else {
                break;
            };
            let Some(trial) = self.trials.get_mut(number as usize) else {
                continue;
            };
            if trial.state != TrialState::Paused {
                continue;
            }
            tracing::info!(trial = %trial.id, rung, "promoting a paused trial");
            trial.attempt += 1;
            trial.state = TrialState::Pending;
            trial.agent = None;
            trial.message = Some(format!("promoted past rung {rung}"));
            self.persist(number);
            promoted.push(number);
        }
        for number in &promoted {
            self.queue(*number);
        }
        !promoted.is_empty()
    }

    /// Ends the promotion form's waiting: when the phase creates no more trials and none is
    /// queued or running, nothing paused can be promoted any more, so the paused trials stop
    /// with the metrics of their last rung.
    fn settle_paused(&mut self) {
        if self.record.state != SweepState::Running
            || self.unfinished() > 0
            || !(self.exhausted || self.phase_trials().len() as u32 >= self.plan().limit)
        {
            return;
        }
        let paused: Vec<u32> = self
            .phase_trials()
            .iter()
            .filter(|trial| trial.state == TrialState::Paused)
            .map(|trial| trial.id.number)
            .collect();
        for number in paused {
            let rung = self.trials[number as usize].rungs.len();
            self.stop_trial(
                number,
                format!("stopped early: paused at ASHA rung {rung} and not promoted"),
            );
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// What a watcher that saw events up to `from` missed: each trial stored since, as one
    /// event for its current state, in sequence order (pending trials have nothing to say).
    fn missed_since(&self, from: u64) -> Vec<(u64, SweepEvent)> {
        let mut missed: Vec<&TrialRecord> = self
            .trials
            .iter()
            .filter(|trial| trial.seq > from && trial.state != TrialState::Pending)
            .collect();
        missed.sort_by_key(|trial| trial.seq);
        missed
            .into_iter()
            .map(|trial| {
                let event = match trial.state {
                    TrialState::Running => SweepEvent::TrialStarted {
                        attempt: AttemptId {
                            trial: trial.id,
                            attempt: trial.attempt,
                        },
                        agent: trial.agent.clone().unwrap_or(AgentId(String::new())),
                        params: trial.params.clone(),
                    },
                    TrialState::Paused => SweepEvent::TrialPaused(trial.clone()),
                    _ => SweepEvent::TrialFinished(trial.clone()),
                };
                (trial.seq, event)
            })
            .collect()
    }

    fn persist(&self, number: u32) {
        let record = self.trials[number as usize].clone();
        // Durability is awaited where it matters (sweep end); results reach watchers at once.
        drop(self.store.write(vec![StateWrite::Trial(Box::new(record))]));
    }

    /// Sends `event` to every watcher with its sequence number: a trial's stored change
    /// carries the number it was stored with, a start and a phase or sweep end a new one,
    /// a metric point 0 (live only, never replayed).
    fn broadcast(&mut self, event: SweepEvent) {
        let seq = match &event {
            SweepEvent::Metric { .. } => 0,
            SweepEvent::TrialFinished(record) | SweepEvent::TrialPaused(record) => record.seq,
            SweepEvent::TrialStarted { attempt, .. } => {
                let seq = self.next_seq();
                if let Some(trial) = self.trials.get_mut(attempt.trial.number as usize) {
                    trial.seq = seq;
                }
                seq
            }
            _ => self.next_seq(),
        };
        self.watchers
            .retain(|watcher| watcher.send((seq, event.clone())).is_ok());
    }

    /// The trial's current attempt, as the Scheduler queues it. In ASHA's promotion form the
    /// attempt trains up to the rung it is headed for: its `epochs` setting is that rung's.
    fn queued(&self, number: u32) -> QueuedTrial {
        let trial = &self.trials[number as usize];
        let trial_spec = match &self.stopper {
            Some(Stopper::Asha(asha)) if self.promoting() => {
                let mut spec = (*self.trial_spec).clone();
                let epochs = asha.resource_of(trial.rungs.len()).round() as i64;
                spec.settings.insert(
                    BUDGET_HYPERPARAMETER.to_string(),
                    flotilla_protocol::ParamValue::Int(epochs),
                );
                Arc::new(spec)
            }
            _ => self.trial_spec.clone(),
        };
        QueuedTrial {
            attempt: AttemptId {
                trial: trial.id,
                attempt: trial.attempt,
            },
            params: trial.params.clone(),
            trial: trial_spec,
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
                // Waits for a promotion; its checkpoint is in the record.
                TrialState::Paused if !final_sweep => continue,
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

    /// Creates trials of the current phase while its budget and parallelism allow. A
    /// suggestion that fits a model goes to a blocking thread, and the trials after it wait
    /// for its answer ([`SweepActorState::suggested`]).
    fn fill(&mut self) {
        if self.record.state != SweepState::Running {
            return;
        }
        // ASHA's promotion form resumes paused trials before it starts new ones.
        self.promote();
        let mut created = Vec::new();
        let mut reused = Vec::new();
        while self.room() {
            // Without its sampler, the phase waits for the suggestion in flight.
            if self.plans[self.phase].sampler.is_none() {
                break;
            }
            let number = self.trials.len() as u32;
            let index = self.sampler_index(number);
            // Random, Sobol and grid suggestions ignore the history: not rebuilt (it grows
            // with every trial) for them.
            let reads_history = self.plans[self.phase]
                .sampler
                .as_ref()
                .is_some_and(|sampler| sampler.reads_history());
            let history = if reads_history {
                self.history()
            } else {
                Vec::new()
            };
            let Some(sampler) = self.plans[self.phase].sampler.as_mut() else {
                break;
            };
            if sampler.models(index, &history) {
                self.suggest_off_actor(number, history);
                break;
            }
            let Some(point) = sampler.suggest(index, &history) else {
                self.exhausted = true;
                break;
            };
            self.create(number, point, &mut created, &mut reused);
        }
        self.announce(created, reused);
    }

    /// Whether the current phase may create another trial now.
    fn room(&self) -> bool {
        !self.exhausted
            && (self.phase_trials().len() as u32) < self.plan().limit
            && self.unfinished() < self.plan().max_parallel
    }

    /// Runs the current phase's sampler for trial `number` on a blocking thread; the point
    /// and the sampler come back as `SweepMsg::Suggested`.
    fn suggest_off_actor(&mut self, number: u32, history: Vec<Observation>) {
        let Some(mut sampler) = self.plans[self.phase].sampler.take() else {
            return;
        };
        let (phase, index, myself) = (self.phase, self.sampler_index(number), self.myself.clone());
        // The thread ends with its suggestion (it cannot be cut short); the sampler being
        // away is what says a suggestion is in flight.
        drop(tokio::task::spawn_blocking(move || {
            let point = sampler.suggest(index, &history);
            let _ = myself.cast(SweepMsg::Suggested {
                phase,
                number,
                sampler,
                point,
            });
        }));
    }

    /// A suggestion computed off the actor came back: the sampler returns to its phase, and
    /// the trial is created if the phase still wants trial `number` (the sweep may have been
    /// cancelled, or moved on, meanwhile); then the phase fills on.
    fn suggested(
        &mut self,
        phase: usize,
        number: u32,
        sampler: Box<dyn Sampler>,
        point: Option<Point>,
    ) {
        self.plans[phase].sampler = Some(sampler);
        let wanted = phase == self.phase
            && number == self.trials.len() as u32
            && self.record.state == SweepState::Running
            && self.room();
        if wanted {
            let mut created = Vec::new();
            let mut reused = Vec::new();
            match point {
                Some(point) => self.create(number, point, &mut created, &mut reused),
                None => self.exhausted = true,
            }
            self.announce(created, reused);
        }
        self.fill();
    }

    /// Adds trial `number` at `point`: to `created`, or to `reused` when an earlier phase
    /// already ran the same configuration (its result is taken and nothing runs).
    fn create(&mut self, number: u32, point: Point, created: &mut Vec<u32>, reused: &mut Vec<u32>) {
        let mut params = self.fixed.clone();
        params.extend(self.plan().space.params_of(&point));
        let id = TrialId {
            sweep: self.id(),
            number,
        };
        let mut trial = TrialRecord::pending(id, params, self.phase as u32);
        // An earlier phase already ran this exact configuration (typically its winner,
        // which a later phase's grid contains again): take its result, run nothing.
        let earlier = &self.trials[..self.phase_start as usize];
        let configuration = self.configuration(&trial.params);
        match earlier.iter().find(|earlier| {
            earlier.state == TrialState::Succeeded
                && self.configuration(&earlier.params) == configuration
        }) {
            Some(earlier) => {
                trial.state = TrialState::Succeeded;
                trial.metrics = earlier.metrics.clone();
                trial.objective = earlier.objective;
                trial.feasible = earlier.feasible;
                trial.duration_ms = earlier.duration_ms;
                trial.checkpoint = earlier.checkpoint.clone();
                trial.started_ms = Some(now_ms());
                trial.finished_ms = trial.started_ms;
                trial.message = Some(format!(
                    "same configuration as trial {}; its result is reused",
                    earlier.id
                ));
                reused.push(number);
            }
            None => created.push(number),
        }
        self.trials.push(trial);
    }

    /// Stores new trials, announces reused results and queues the rest at the Scheduler.
    fn announce(&mut self, created: Vec<u32>, reused: Vec<u32>) {
        if created.is_empty() && reused.is_empty() {
            return;
        }
        // A reused result is announced (TrialFinished): it is numbered like one.
        for number in &reused {
            let seq = self.next_seq();
            self.trials[*number as usize].seq = seq;
        }
        let writes = created
            .iter()
            .chain(&reused)
            .map(|number| StateWrite::Trial(Box::new(self.trials[*number as usize].clone())))
            .collect();
        drop(self.store.write(writes));
        for number in reused {
            tracing::info!(trial = %self.trials[number as usize].id, "configuration ran in an earlier phase; result reused");
            let record = self.trials[number as usize].clone();
            self.broadcast(SweepEvent::TrialFinished(record));
        }
        if !created.is_empty() {
            let queued = created.iter().map(|number| self.queued(*number)).collect();
            let _ = self.scheduler.cast(SchedulerMsg::Enqueue(queued));
        }
    }

    /// Everything a trial runs with: the trial's settings with its parameters over them.
    fn configuration(&self, params: &Params) -> Params {
        let mut configuration = self.trial_spec.settings.clone();
        configuration.extend(
            params
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        configuration
    }

    /// What the sampler should know: every trial of the phase so far, pending ones included,
    /// after the results a first phase is warm-started with.
    fn history(&self) -> Vec<Observation> {
        let spec = &self.record.spec;
        let space = &self.plan().space;
        let full = full_resource(spec, self.phase_trials());
        let warm = if self.phase == 0 { &self.warm[..] } else { &[] };
        warm.iter()
            .cloned()
            .chain(self.phase_trials().iter().filter_map(|trial| {
                suggest::observation(space, &trial.params, outcome(spec, spec, trial, full))
            }))
            .collect()
    }

    fn dispatched(&mut self, attempt: AttemptId, agent: AgentId, start: Box<StartTrial>) {
        let number = attempt.trial.number;
        if self.current(attempt).is_none() {
            // Superseded while it was being placed: free the slot, start nothing.
            let _ = self
                .scheduler
                .cast(SchedulerMsg::Abandon { agent, attempt });
            return;
        }
        let trial = &mut self.trials[number as usize];
        trial.state = TrialState::Running;
        trial.agent = Some(agent.clone());
        trial.started_ms = Some(now_ms());
        self.live.insert(number, LiveAttempt::default());
        let record = self.trials[number as usize].clone();
        let durable = self.store.write(vec![StateWrite::Trial(Box::new(record))]);
        let scheduler = self.scheduler.clone();
        self.starts.spawn(async move {
            // A store that cannot persist the placement ends this leader's term; the
            // attempt is placed again by the next one.
            if durable.durable().await.is_ok() {
                let _ = scheduler.cast(SchedulerMsg::Send {
                    agent,
                    attempt,
                    command: Command::StartTrial(start),
                });
            }
        });
        while self.starts.try_join_next().is_some() {}
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
        METRICS
            .dispatch_latency
            .observe(dispatch_latency.as_secs_f64());
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
                self.record
                    .spec
                    .early_stopping
                    .as_ref()
                    .filter(|stopping| !stopping.promotion),
                &decision,
            ) && let (Some(value), Some(resource)) = (
                point.values.get(&self.record.spec.objective.metric),
                live.latest.get(&stopping.resource),
            ) {
                let loss = self.record.spec.objective.direction.loss(*value);
                decision = stopper.report(attempt.trial.number, *resource, loss);
            }
            if let Some(value) = point.values.get(&self.record.spec.objective.metric) {
                self.curves
                    .entry(attempt.trial.number)
                    .or_default()
                    .record(point.step, *value);
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
        METRICS.early_stopped.inc();
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
                // The first objective it never reported (a multi-objective sweep's sampler and
                // front leave such a trial out).
                trial.message = spec
                    .objective
                    .goals()
                    .map(|(metric, _)| metric)
                    .find(|metric| !trial.metrics.contains_key(*metric))
                    .map(|metric| format!("the trial never reported '{metric}'"));
                let (objective, reached) = (trial.objective, trial.rungs.len());
                let direction = spec.objective.direction;
                let rung_count = self.promotion().map(|asha| asha.rungs().len());
                match rung_count {
                    Some(rungs) if reached < rungs && running => {
                        self.pause(number, objective, direction)
                    }
                    // The sweep ended while the attempt trained to its rung: it stops there.
                    Some(rungs) if reached < rungs => {
                        self.trials[number as usize]
                            .rungs
                            .push(objective.unwrap_or(f64::NAN));
                        self.stop_trial(
                            number,
                            format!(
                                "stopped early: reached ASHA rung {} after the sweep ended",
                                reached + 1
                            ),
                        )
                    }
                    _ => self.conclude(number, TrialState::Succeeded),
                }
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
                    StopReason::Superseded | StopReason::AgentShutdown | StopReason::Preempted
                        if running =>
                    {
                        self.retry(number, false, format!("{reason:?} on its agent"))
                    }
                    _ => self.stop_trial(number, format!("stopped: {reason:?}")),
                }
            }
        }
    }

    /// ASHA's promotion form: the attempt trained up to its rung; the trial waits there.
    fn pause(&mut self, number: u32, objective: Option<f64>, direction: Direction) {
        let value = objective.unwrap_or(f64::NAN);
        let trial = &mut self.trials[number as usize];
        let rung = trial.rungs.len();
        trial.rungs.push(value);
        trial.state = TrialState::Paused;
        trial.agent = None;
        if let Some(curve) = self.curves.get_mut(&number) {
            curve.pause();
        }
        let epochs = self
            .promotion()
            .map(|asha| {
                asha.paused(number, rung, direction.loss(value));
                asha.resource_of(rung)
            })
            .unwrap_or_default();
        self.trials[number as usize].message = Some(format!(
            "paused at ASHA rung {} ({epochs} epochs)",
            rung + 1
        ));
        let seq = self.next_seq();
        self.trials[number as usize].seq = seq;
        self.persist(number);
        let record = self.trials[number as usize].clone();
        self.broadcast(SweepEvent::TrialPaused(record));
    }

    fn stop_trial(&mut self, number: u32, why: String) {
        self.trials[number as usize].message = Some(why);
        self.conclude(number, TrialState::Stopped);
    }

    /// Test builds only: fails this actor when `FLOTILLA_FAULT_FAIL_SWEEP` names the sweep
    /// and two of its trials have finished.
    #[cfg(feature = "fault-injection")]
    fn injected_fault(&self) -> Result<(), ActorProcessingErr> {
        let named = std::env::var("FLOTILLA_FAULT_FAIL_SWEEP")
            .is_ok_and(|name| name == self.record.spec.name);
        let finished = self
            .trials
            .iter()
            .filter(|trial| trial.state.is_final())
            .count();
        if named && self.record.state == SweepState::Running && finished >= 2 {
            return Err("injected fault (FLOTILLA_FAULT_FAIL_SWEEP)".into());
        }
        Ok(())
    }

    /// The trial's agent was lost while running it: run it again, spending no retry, unless
    /// it has been lost more than `[retries] max_reschedules` times (a trial that takes down
    /// every agent it runs on).
    fn lost(&mut self, number: u32) {
        let max_reschedules = self.record.spec.retries.max_reschedules;
        let trial = &mut self.trials[number as usize];
        trial.reschedules += 1;
        if let Some(agent) = trial.agent.clone() {
            trial.lost_on.push(agent);
            let excess = trial.lost_on.len().saturating_sub(LOST_ON_KEPT);
            trial.lost_on.drain(..excess);
        }
        if trial.reschedules <= max_reschedules || self.record.state != SweepState::Running {
            self.retry(number, false, "its agent was lost".into());
            return;
        }
        let agents: Vec<&str> = trial.lost_on.iter().map(|agent| agent.0.as_str()).collect();
        trial.message = Some(format!(
            "its agent was lost {} times, more than [retries] max_reschedules = {max_reschedules}; agents lost while running it: {}",
            trial.reschedules,
            agents.join(", ")
        ));
        tracing::warn!(trial = %trial.id, reschedules = trial.reschedules, "a trial lost with its agent too often is failed");
        self.live.remove(&number);
        self.conclude(number, TrialState::Failed);
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
        // Numbered as the TrialFinished it announces, and stored with that number.
        let seq = self.next_seq();
        let trial = &mut self.trials[number as usize];
        trial.seq = seq;
        trial.state = state;
        trial.finished_ms = Some(now_ms());
        METRICS
            .trials_finished
            .with_label_values(&[state.name()])
            .inc();
        if let Some(duration_ms) = trial.duration_ms {
            METRICS.trial_duration.observe(duration_ms as f64 / 1000.0);
        }
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
        let paused: Vec<u32> = self
            .trials
            .iter()
            .filter(|trial| trial.state == TrialState::Paused)
            .map(|trial| trial.id.number)
            .collect();
        for number in paused {
            self.stop_trial(
                number,
                format!("stopped while paused: sweep {final_state:?}"),
            );
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
        self.settle_paused();
        self.advance_phases();
        let all_final = self.trials.iter().all(|trial| trial.state.is_final());
        let last_phase = self.phase + 1 == self.plans.len();
        let nothing_left =
            last_phase && (self.exhausted || self.phase_trials().len() as u32 >= self.plan().limit);
        if !all_final || (self.record.state == SweepState::Running && !nothing_left) {
            return;
        }
        if self.record.state == SweepState::Running {
            self.record.state = SweepState::Completed;
        }
        self.record.finished_ms = Some(now_ms());
        let summary = self.summary();
        let ticket = self.store.write(vec![
            StateWrite::Sweep(Box::new(self.record.clone())),
            StateWrite::Summary(Box::new(summary.clone())),
        ]);
        if let Err(error) = ticket.durable().await {
            tracing::error!(sweep = %self.id(), %error, "could not store the sweep's end");
        }
        tracing::info!(sweep = %self.id(), state = ?summary.state, succeeded = summary.counts.succeeded, failed = summary.counts.failed, "sweep finished");
        if let Some(notifier) = &self.notifier {
            notifier.sweep_finished(&summary);
        }
        if let Some(leader) = &self.leader {
            let _ = leader.cast(super::leader::LeaderMsg::SweepFinished {
                record: Box::new(self.record.clone()),
                summary: Box::new(summary.clone()),
            });
        }
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
                TrialState::Paused => counts.paused += 1,
            }
        }
        let spec = &self.record.spec;
        SweepSummary {
            id: self.id(),
            name: spec.name.clone(),
            state: self.record.state,
            objective_metric: spec.objective.metric.clone(),
            direction: spec.objective.direction,
            max_trials: self.limit(),
            counts,
            best: best_trial(&self.trials, spec.objective.direction).cloned(),
            created_ms: self.record.created_ms,
            finished_ms: self.record.finished_ms,
            phases: (0..self.plans.len())
                .map(|index| self.phase_summary(index))
                .collect(),
            message: self.record.message.clone(),
        }
    }
}

/// Points kept per learning curve; past it, every other point is dropped.
const CURVE_POINTS: usize = 256;

/// A trial's objective by step, and where it paused (ASHA's promotion form).
#[derive(Debug, Default)]
struct Curve {
    /// (step, value), steps increasing.
    points: Vec<(u64, f64)>,
    /// The last step before each pause.
    pauses: Vec<u64>,
}

impl Curve {
    /// Appends a point (a resumed attempt repeating steps adds nothing), halving the curve's
    /// resolution whenever it is full.
    fn record(&mut self, step: u64, value: f64) {
        if self.points.last().is_some_and(|(last, _)| step <= *last) {
            return;
        }
        if self.points.len() >= CURVE_POINTS {
            let mut index = 0;
            self.points.retain(|_| {
                index += 1;
                index % 2 == 1
            });
        }
        self.points.push((step, value));
    }

    /// The trial paused after its last point.
    fn pause(&mut self) {
        if let Some((step, _)) = self.points.last()
            && self.pauses.last() != Some(step)
        {
            self.pauses.push(*step);
        }
    }

    /// The points split after each pause: one stretch per attempt between pauses, in order.
    fn stretches(&self) -> Vec<Vec<(u64, f64)>> {
        let mut stretches = vec![Vec::new()];
        let mut pauses = self.pauses.iter().peekable();
        for point in &self.points {
            while pauses.next_if(|pause| point.0 > **pause).is_some() {
                if stretches.last().is_some_and(|stretch| !stretch.is_empty()) {
                    stretches.push(Vec::new());
                }
            }
            if let Some(stretch) = stretches.last_mut() {
                stretch.push(*point);
            }
        }
        stretches.retain(|stretch| !stretch.is_empty());
        stretches
    }
}

/// What a sampler of the sweep with `spec` learns from `trial`, a trial of that sweep or of
/// one it warm-starts from (`source` is the trial's own sweep's spec; `full` that sweep's
/// complete resource, see [`full_resource`]).
fn outcome(
    spec: &SweepSpec,
    source: &SweepSpec,
    trial: &TrialRecord,
    full: Option<f64>,
) -> Outcome {
    // Another sweep's trial is judged by this sweep's objective, from its metrics.
    let objective = if source.objective.metric == spec.objective.metric {
        trial.objective
    } else {
        trial.metrics.get(&spec.objective.metric).copied()
    };
    match (trial.state, objective) {
        (TrialState::Pending | TrialState::Running, _) => Outcome::Pending,
        // Succeeded, or stopped (paused) with its objective so far: both tell the model about
        // the region; one stopped part way is a lower-fidelity result.
        (TrialState::Succeeded | TrialState::Stopped | TrialState::Paused, Some(objective))
            if spec.objective.is_multi() =>
        {
            // The others from the trial's metrics, unless one is its own sweep's objective.
            let values =
                std::iter::once(Some(objective)).chain(spec.objective.also.iter().map(|goal| {
                    if goal.metric == source.objective.metric {
                        trial.objective
                    } else {
                        trial.metrics.get(&goal.metric).copied()
                    }
                }));
            let fidelity = match trial.state {
                TrialState::Succeeded => None,
                _ => fidelity(source, trial, full),
            };
            match values.collect::<Option<Vec<f64>>>() {
                Some(values) => suggest::completed_objectives(
                    &values,
                    &spec.objective,
                    &spec.constraints,
                    &trial.metrics,
                    fidelity.unwrap_or(1.0),
                ),
                // An objective it never reported: nothing is known of the point.
                None => Outcome::Stopped,
            }
        }
        (TrialState::Succeeded | TrialState::Stopped | TrialState::Paused, Some(objective)) => {
            let outcome = suggest::completed(
                objective,
                spec.objective.direction,
                &spec.constraints,
                &trial.metrics,
            );
            match (trial.state, fidelity(source, trial, full), outcome) {
                (
                    TrialState::Stopped | TrialState::Paused,
                    Some(fidelity),
                    Outcome::Complete { value, constraints },
                ) => Outcome::Partial {
                    value,
                    constraints,
                    fidelity,
                },
                (_, _, outcome) => outcome,
            }
        }
        // The trial failed here: the samplers steer away from such points.
        (TrialState::Failed, _) => Outcome::Failed,
        // Stopped (or paused) before any value: nothing is known of the point.
        _ => Outcome::Stopped,
    }
}

/// A complete trial's resource in a sweep with `spec` that stops early: `max_resource`, or
/// (the median rule has none) the most any of `trials` that succeeded spent.
fn full_resource(spec: &SweepSpec, trials: &[TrialRecord]) -> Option<f64> {
    let stopping = spec.early_stopping.as_ref()?;
    stopping.max_resource.or_else(|| {
        trials
            .iter()
            .filter(|trial| trial.state == TrialState::Succeeded)
            .filter_map(|trial| trial.metrics.get(&stopping.resource).copied())
            .filter(|spent| spent.is_finite())
            .reduce(f64::max)
    })
}

/// The share of a complete trial's resource `trial` (of the sweep with `spec`) had spent, when
/// it is below one.
fn fidelity(spec: &SweepSpec, trial: &TrialRecord, full: Option<f64>) -> Option<f64> {
    let stopping = spec.early_stopping.as_ref()?;
    let full = full.filter(|full| *full > 0.0)?;
    let spent = *trial.metrics.get(&stopping.resource)?;
    (spent.is_finite() && spent >= 0.0 && spent < full).then(|| (spent / full).max(1e-3))
}

/// The results of the sweeps `spec` warm-starts from, as observations in `space` (its first
/// phase's): finished trials whose parameters lie in the space; pending, running and
/// value-less ones say nothing yet.
fn warm_observations(
    spec: &SweepSpec,
    space: &TunerSpace,
    sources: &[WarmSource],
) -> Vec<Observation> {
    sources
        .iter()
        .flat_map(|source| {
            let full = full_resource(&source.spec, &source.trials);
            source.trials.iter().filter_map(move |trial| {
                let outcome = outcome(spec, &source.spec, trial, full);
                if matches!(outcome, Outcome::Pending | Outcome::Stopped) {
                    return None;
                }
                suggest::observation(space, &trial.params, outcome)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for the Scheduler: reports every trial it is asked to queue.
    struct Queue;

    impl Actor for Queue {
        type Msg = SchedulerMsg;
        type State = mpsc::UnboundedSender<u32>;
        type Arguments = mpsc::UnboundedSender<u32>;

        async fn pre_start(
            &self,
            _myself: ActorRef<SchedulerMsg>,
            queued: mpsc::UnboundedSender<u32>,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(queued)
        }

        async fn handle(
            &self,
            _myself: ActorRef<SchedulerMsg>,
            message: SchedulerMsg,
            queued: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let SchedulerMsg::Enqueue(trials) = message {
                for trial in trials {
                    let _ = queued.send(trial.attempt.trial.number);
                }
            }
            Ok(())
        }
    }

    /// A bayesian sweep over x, y ∈ [0, 1] minimizing `loss`.
    fn quadratic_spec(max_trials: u32) -> SweepSpec {
        SweepSpec::from_toml(
            &format!(
                r#"
name = "quadratic"
[objective]
metric = "loss"
direction = "minimize"
[space.x]
type = "float"
low = 0.0
high = 1.0
[space.y]
type = "float"
low = 0.0
high = 1.0
[algorithm]
name = "bayesian"
seed = 7
[budget]
max_trials = {max_trials}
max_parallel = 1
[trial]
command = "true"
metrics = ["loss"]
"#
            ),
            "test",
        )
        .expect("spec")
    }

    /// `count` succeeded trials of sweep `id` on a 20-wide grid, with the loss
    /// (x − 0.3)² + (y − 0.6)².
    fn quadratic_trials(id: SweepId, count: u32, width: u32) -> BTreeMap<u32, TrialRecord> {
        (0..count)
            .map(|number| {
                let x = f64::from(number % width) / f64::from(width - 1);
                let y = f64::from(number / width) / f64::from(count.div_ceil(width).max(2) - 1);
                let loss = (x - 0.3).powi(2) + (y - 0.6).powi(2);
                let params = [
                    ("x".to_string(), flotilla_protocol::ParamValue::Float(x)),
                    ("y".to_string(), flotilla_protocol::ParamValue::Float(y)),
                ]
                .into_iter()
                .collect();
                let record = TrialRecord {
                    state: TrialState::Succeeded,
                    metrics: [("loss".to_string(), loss)].into_iter().collect(),
                    objective: Some(loss),
                    feasible: true,
                    ..TrialRecord::pending(TrialId { sweep: id, number }, params, 0)
                };
                (number, record)
            })
            .collect()
    }

    struct Running {
        sweep: ActorRef<SweepMsg>,
        scheduler: ActorRef<SchedulerMsg>,
        queued: mpsc::UnboundedReceiver<u32>,
        _dir: tempfile::TempDir,
    }

    async fn start(
        spec: SweepSpec,
        trials: BTreeMap<u32, TrialRecord>,
        warm: Vec<WarmSource>,
    ) -> Running {
        let dir = tempfile::tempdir().expect("dir");
        let store =
            crate::store::local::LocalStore::open(&dir.path().join("state.log")).expect("store");
        let (queued_tx, queued) = mpsc::unbounded_channel();
        let (scheduler, _) = Actor::spawn(None, Queue, queued_tx).await.expect("queue");
        let record = SweepRecord {
            id: SweepId(1),
            spec,
            seed: 7,
            state: SweepState::Running,
            created_ms: now_ms(),
            finished_ms: None,
            message: None,
        };
        let (sweep, _) = Actor::spawn(
            None,
            SweepActor,
            SweepArgs {
                record,
                trials,
                warm,
                scheduler: scheduler.clone(),
                store: Arc::new(store),
                notifier: None,
                epoch: flotilla_protocol::Epoch(1),
                leader: None,
                read_only: false,
            },
        )
        .await
        .expect("sweep");
        Running {
            sweep,
            scheduler,
            queued,
            _dir: dir,
        }
    }

    /// A suggestion that fits the GP to 400 results runs off the actor: the actor answers a
    /// status request while it is computed, and the trial is queued when it comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_fit_runs_off_the_actor_which_answers_meanwhile() {
        let trials = quadratic_trials(SweepId(1), 400, 20);
        let mut running = start(quadratic_spec(500), trials, Vec::new()).await;
        // The actor started without waiting for the fit, and answers at once.
        let summary = ractor::call!(running.sweep, SweepMsg::Summary).expect("summary");
        assert_eq!(summary.counts.succeeded, 400);
        assert!(
            running.queued.try_recv().is_err(),
            "trial 400 was queued before the actor answered: the fit ran on the actor"
        );
        let number = tokio::time::timeout(Duration::from_secs(120), running.queued.recv())
            .await
            .expect("the suggestion came back")
            .expect("a queued trial");
        assert_eq!(number, 400);
        let trials = ractor::call!(running.sweep, SweepMsg::Trials).expect("trials");
        assert_eq!(trials.len(), 401);
        running.sweep.stop(None);
        running.scheduler.stop(None);
    }

    /// A warm-started sweep's first trial comes from a model of the earlier sweep's results
    /// (a cold one's is the first point of its initial design); trials of the earlier sweep
    /// outside this space are left out, and a source with another objective is read by this
    /// sweep's metric.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_warm_started_sweep_models_from_its_first_trial() {
        let mut source_trials: Vec<TrialRecord> =
            quadratic_trials(SweepId(3), 30, 6).into_values().collect();
        let mut outside = source_trials[0].clone();
        outside
            .params
            .insert("x".into(), flotilla_protocol::ParamValue::Float(4.0));
        outside.metrics.insert("loss".into(), -100.0);
        outside.objective = Some(-100.0);
        source_trials.push(outside);
        let mut source_spec = quadratic_spec(30);
        source_spec.objective.metric = "accuracy".into();
        source_spec.trial.metrics.push("accuracy".into());
        let warm = vec![WarmSource {
            spec: source_spec,
            trials: source_trials,
        }];
        let first_point = |running: &Running| {
            let sweep = running.sweep.clone();
            async move {
                let trials = ractor::call!(sweep, SweepMsg::Trials).expect("trials");
                let value = |name: &str| trials[0].params[name].as_f64().expect("a number");
                (value("x"), value("y"))
            }
        };
        let mut cold = start(quadratic_spec(3), BTreeMap::new(), Vec::new()).await;
        cold.queued.recv().await.expect("queued");
        let (cold_x, cold_y) = first_point(&cold).await;
        let mut warm_started = start(quadratic_spec(3), BTreeMap::new(), warm).await;
        tokio::time::timeout(Duration::from_secs(60), warm_started.queued.recv())
            .await
            .expect("the suggestion came back")
            .expect("queued");
        let (x, y) = first_point(&warm_started).await;
        let distance = |x: f64, y: f64| ((x - 0.3).powi(2) + (y - 0.6).powi(2)).sqrt();
        assert!(
            distance(x, y) < 0.1,
            "the warm sweep's first point ({x:.3}, {y:.3}) is not near the optimum"
        );
        assert!(
            distance(cold_x, cold_y) > distance(x, y),
            "cold ({cold_x:.3}, {cold_y:.3}) vs warm ({x:.3}, {y:.3})"
        );
        for running in [cold, warm_started] {
            running.sweep.stop(None);
            running.scheduler.stop(None);
        }
    }

    /// ASHA's stopping form on `epoch`, 1 to 8 epochs, η = 2.
    fn asha_on_epochs() -> flotilla_protocol::spec::EarlyStopping {
        flotilla_protocol::spec::EarlyStopping {
            rule: StoppingRule::Asha,
            resource: "epoch".into(),
            min_resource: 1.0,
            max_resource: Some(8.0),
            reduction_factor: 2.0,
            min_trials: 5,
            promotion: false,
        }
    }

    /// What the sampler learns from each kind of trial: an early-stopped trial is a partial
    /// result at its share of `max_resource`, a failed one a failure, a running one pending,
    /// one stopped before any value nothing; another sweep's trial is read by this sweep's
    /// objective metric.
    #[test]
    fn trials_become_outcomes_by_state_and_resource() {
        let mut spec = quadratic_spec(10);
        spec.trial.metrics.push("epoch".into());
        spec.early_stopping = Some(asha_on_epochs());
        let trial = |state: TrialState, objective: Option<f64>, epoch: f64| TrialRecord {
            state,
            objective,
            metrics: [("loss".to_string(), 0.7), ("epoch".to_string(), epoch)]
                .into_iter()
                .collect(),
            ..TrialRecord::pending(
                TrialId {
                    sweep: SweepId(1),
                    number: 0,
                },
                Params::new(),
                0,
            )
        };
        let full = full_resource(&spec, &[]);
        assert_eq!(full, Some(8.0));
        let stopped = outcome(
            &spec,
            &spec,
            &trial(TrialState::Stopped, Some(0.7), 2.0),
            full,
        );
        assert_eq!(
            stopped,
            Outcome::Partial {
                value: 0.7,
                constraints: vec![],
                fidelity: 0.25
            }
        );
        let complete = outcome(
            &spec,
            &spec,
            &trial(TrialState::Succeeded, Some(0.5), 8.0),
            full,
        );
        assert_eq!(
            complete,
            Outcome::Complete {
                value: 0.5,
                constraints: vec![]
            }
        );
        let failed = outcome(&spec, &spec, &trial(TrialState::Failed, None, 3.0), full);
        assert_eq!(failed, Outcome::Failed);
        let running = outcome(&spec, &spec, &trial(TrialState::Running, None, 3.0), full);
        assert_eq!(running, Outcome::Pending);
        let empty = outcome(&spec, &spec, &trial(TrialState::Stopped, None, 0.0), full);
        assert_eq!(empty, Outcome::Stopped);
        // A source sweep that maximized accuracy: its trial is judged by this sweep's loss.
        let mut source = spec.clone();
        source.objective.metric = "accuracy".into();
        source.objective.direction = Direction::Maximize;
        let theirs = outcome(
            &spec,
            &source,
            &trial(TrialState::Succeeded, Some(0.9), 8.0),
            full,
        );
        assert_eq!(
            theirs,
            Outcome::Complete {
                value: 0.7,
                constraints: vec![]
            }
        );
    }

    /// A multi-objective sweep's sampler learns every objective as a loss (a maximized one
    /// negated), at the trial's fidelity; a trial missing one of them tells it nothing.
    #[test]
    fn multi_objective_trials_become_loss_vectors() {
        let mut spec = quadratic_spec(10);
        spec.trial
            .metrics
            .extend(["epoch".into(), "throughput".into()]);
        spec.objective.also.push(flotilla_protocol::spec::Goal {
            metric: "throughput".into(),
            direction: Direction::Maximize,
        });
        spec.early_stopping = Some(asha_on_epochs());
        let trial = |state: TrialState, metrics: &[(&str, f64)]| TrialRecord {
            state,
            objective: Some(0.4),
            metrics: metrics
                .iter()
                .map(|(name, value)| (name.to_string(), *value))
                .collect(),
            ..TrialRecord::pending(
                TrialId {
                    sweep: SweepId(1),
                    number: 0,
                },
                Params::new(),
                0,
            )
        };
        let full = Some(8.0);
        let complete = trial(
            TrialState::Succeeded,
            &[("throughput", 120.0), ("epoch", 8.0)],
        );
        assert_eq!(
            outcome(&spec, &spec, &complete, full),
            Outcome::Objectives {
                values: vec![0.4, -120.0],
                constraints: vec![],
                fidelity: 1.0
            }
        );
        let stopped = trial(TrialState::Stopped, &[("throughput", 90.0), ("epoch", 2.0)]);
        assert_eq!(
            outcome(&spec, &spec, &stopped, full),
            Outcome::Objectives {
                values: vec![0.4, -90.0],
                constraints: vec![],
                fidelity: 0.25
            }
        );
        let missing = trial(TrialState::Succeeded, &[("epoch", 8.0)]);
        assert_eq!(outcome(&spec, &spec, &missing, full), Outcome::Stopped);
    }

    #[test]
    fn curves_ignore_repeated_steps_and_thin_out_when_full() {
        let mut curve = Curve::default();
        curve.record(1, 0.9);
        curve.record(2, 0.8);
        // A resumed attempt reports step 2 again: kept once.
        curve.record(2, 0.7);
        assert_eq!(curve.points, [(1, 0.9), (2, 0.8)]);
        for step in 3..=10_000 {
            curve.record(step, 1.0 / step as f64);
        }
        let points = &curve.points;
        assert!(points.len() <= CURVE_POINTS);
        assert!(points.len() > CURVE_POINTS / 2);
        assert_eq!(points.first().map(|point| point.0), Some(1));
        assert_eq!(points.last().map(|point| point.0), Some(10_000));
        assert!(points.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert_eq!(curve.stretches(), vec![points.clone()]);
    }

    #[test]
    fn a_paused_trials_curve_splits_where_it_paused() {
        let mut curve = Curve::default();
        // Nothing reported yet: a pause marks nothing.
        curve.pause();
        curve.record(1, 0.5);
        curve.record(2, 0.6);
        curve.pause();
        curve.pause();
        // The promoted attempt resumes at step 3 (a repeat of step 2 is dropped).
        curve.record(2, 0.6);
        curve.record(3, 0.7);
        curve.record(6, 0.8);
        curve.pause();
        assert_eq!(
            curve.stretches(),
            [vec![(1, 0.5), (2, 0.6)], vec![(3, 0.7), (6, 0.8)]]
        );
        curve.record(7, 0.9);
        assert_eq!(curve.stretches().len(), 3);
    }
}
