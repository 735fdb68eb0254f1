//! AgentRoot: the agent's supervisor and the keeper of what it runs.
//!
//! Place in the tree: the agent's root; its children are one Trial actor per running
//! attempt. It obeys coordinator commands (refusing those from an epoch older than the
//! newest it has seen), keeps the outcomes of recently finished attempts so they can be
//! reported again after a reconnect, and sends heartbeats while the link is up.
//!
//! Failure: a Trial that fails is reported as a failed attempt; AgentRoot itself failing
//! ends the agent process (trial processes die with it: kill-on-drop and process groups).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use flotilla_protocol::messages::{
    AgentMessage, Command, CoordinatorCommand, Heartbeat, StartAttempt, StartTrial, StopReason,
    TrialOutcome,
};
use flotilla_protocol::{AttemptId, Epoch};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc;

use crate::trial::{Trial, TrialArgs, TrialMsg};

/// Outcomes kept for re-reporting after a reconnect.
const RECENT_OUTCOMES: usize = 4096;

/// What the link reports when it (re)registers.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub running: Vec<AttemptId>,
    /// Recent outcomes, which the coordinator may not have received.
    pub finished: Vec<(AttemptId, TrialOutcome)>,
    /// The newest leader epoch this agent has obeyed.
    pub newest_epoch: Epoch,
    pub draining: bool,
}

pub enum AgentMsg {
    Command(CoordinatorCommand),
    TrialExited {
        attempt: AttemptId,
        outcome: TrialOutcome,
    },
    /// An attempt that did not start through no fault of its own (etcd did not answer for
    /// its checkpoint lease): its slot and GPUs free, and the coordinator hears
    /// `CommandRejected`, which places it again without spending a retry.
    TrialHandedBack {
        attempt: AttemptId,
        reason: String,
    },
    /// Running attempts and recent outcomes, for `Register`.
    Snapshot(RpcReplyPort<Snapshot>),
    LinkUp {
        epoch: Epoch,
        /// The protocol version negotiated with the coordinator.
        version: u16,
    },
    LinkDown,
    Tick,
    /// Stop every trial (reported as `AgentShutdown`) and answer once all have exited.
    Drain(RpcReplyPort<()>),
    /// The instance is going away, or may (`--imds`); `seen` is when the watcher read it.
    Notice {
        notice: crate::imds::Notice,
        seen: std::time::SystemTime,
    },
}

pub struct RootArgs {
    pub slots: u32,
    pub outbox: mpsc::UnboundedSender<AgentMessage>,
    pub checkpoint_root: PathBuf,
    pub stop_grace: Duration,
    pub trainer_env: crate::trial::TrainerEnv,
    pub metrics: std::sync::Arc<crate::metrics::AgentMetrics>,
    /// Model serving and sealing (serving itself only with `--serve`).
    pub serving: crate::serving::Serving,
    /// The agent's GPUs and their holders (shared with the metrics endpoint).
    pub gpus: crate::gpus::GpuPool,
    /// A command trial's commit larger than this is refused.
    pub checkpoint_max_bytes: u64,
}

struct Running {
    actor: ActorRef<TrialMsg>,
    slots: u32,
}

pub struct RootState {
    slots: u32,
    running: HashMap<AttemptId, Running>,
    recent: VecDeque<(AttemptId, TrialOutcome)>,
    outbox: mpsc::UnboundedSender<AgentMessage>,
    newest_epoch: Epoch,
    link_up: bool,
    checkpoint_root: PathBuf,
    stop_grace: Duration,
    trainer_env: crate::trial::TrainerEnv,
    /// Once set, stays set: a draining agent takes no new trials.
    draining: bool,
    /// Answered when the last trial has exited during a drain.
    drained: Option<RpcReplyPort<()>>,
    /// When the interruption notice being acted on was posted; cleared once every trial has
    /// checkpointed and stopped.
    interrupted: Option<std::time::SystemTime>,
    heartbeat_interval: Duration,
    heartbeat_timer: Option<ractor::concurrency::JoinHandle<()>>,
    metrics: std::sync::Arc<crate::metrics::AgentMetrics>,
    serving: crate::serving::Serving,
    gpus: crate::gpus::GpuPool,
    checkpoint_max_bytes: u64,
}

pub struct AgentRoot;

impl Actor for AgentRoot {
    type Msg = AgentMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AgentMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let heartbeat_interval = Duration::from_millis(1000);
        let heartbeat_timer = myself.send_interval(heartbeat_interval, || AgentMsg::Tick);
        Ok(RootState {
            slots: args.slots,
            running: HashMap::new(),
            recent: VecDeque::new(),
            outbox: args.outbox,
            newest_epoch: Epoch(0),
            link_up: false,
            checkpoint_root: args.checkpoint_root,
            stop_grace: args.stop_grace,
            trainer_env: args.trainer_env,
            draining: false,
            drained: None,
            interrupted: None,
            heartbeat_interval,
            heartbeat_timer: Some(heartbeat_timer),
            metrics: args.metrics,
            serving: args.serving,
            gpus: args.gpus,
            checkpoint_max_bytes: args.checkpoint_max_bytes,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AgentMsg::Command(command) => state.command(&myself, command).await,
            AgentMsg::TrialExited { attempt, outcome } => {
                state.running.remove(&attempt);
                state.gpus.give_back(attempt);
                tracing::debug!(%attempt, ?outcome, "trial exited");
                if state.recent.len() == RECENT_OUTCOMES {
                    state.recent.pop_front();
                }
                state.recent.push_back((attempt, outcome.clone()));
                let _ = state
                    .outbox
                    .send(AgentMessage::TrialFinished { attempt, outcome });
                state.check_drained();
            }
            AgentMsg::TrialHandedBack { attempt, reason } => {
                state.running.remove(&attempt);
                state.gpus.give_back(attempt);
                state.reject(Some(attempt), reason);
                state.check_drained();
            }
            AgentMsg::Notice { notice, seen } => state.notice(notice, seen),
            AgentMsg::Snapshot(reply) => {
                let mut running: Vec<AttemptId> = state.running.keys().copied().collect();
                running.sort();
                let _ = reply.send(Snapshot {
                    running,
                    finished: state.recent.iter().cloned().collect(),
                    newest_epoch: state.newest_epoch,
                    draining: state.draining,
                });
            }
            AgentMsg::LinkUp { epoch, version } => {
                state.newest_epoch = state.newest_epoch.max(epoch);
                state.link_up = true;
                if version >= 9 {
                    state.serving.announce();
                }
            }
            AgentMsg::LinkDown => state.link_up = false,
            AgentMsg::Tick => {
                if state.link_up {
                    let running = state.running.keys().copied().collect();
                    let _ = state
                        .outbox
                        .send(AgentMessage::Heartbeat(Heartbeat { running }));
                }
            }
            AgentMsg::Drain(reply) => {
                state.start_draining();
                for running in state.running.values() {
                    let _ = running
                        .actor
                        .cast(TrialMsg::Stop(StopReason::AgentShutdown));
                }
                if state.running.is_empty() {
                    let _ = reply.send(());
                } else {
                    state.drained = Some(reply);
                }
            }
        }
        state.publish();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<AgentMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(child, error) = event {
            let failed = state
                .running
                .iter()
                .find(|(_, running)| running.actor.get_id() == child.get_id())
                .map(|(attempt, _)| *attempt);
            if let Some(attempt) = failed {
                tracing::error!(%attempt, %error, "trial actor failed");
                let outcome = TrialOutcome::error(format!("agent error: {error}"), 0);
                let _ = _myself.cast(AgentMsg::TrialExited { attempt, outcome });
            }
        }
        Ok(())
    }
}

impl RootState {
    /// Slots held by running trials and by the serving programs assigned here.
    fn busy_slots(&self) -> u32 {
        self.running
            .values()
            .map(|running| running.slots)
            .sum::<u32>()
            + self.serving.held_slots()
    }

    /// Sets the agent-state gauges from what this actor holds (after every message).
    fn publish(&self) {
        let metrics = &self.metrics;
        let busy = self.busy_slots();
        metrics
            .slots
            .with_label_values(&["total"])
            .set(i64::from(self.slots));
        metrics
            .slots
            .with_label_values(&["busy"])
            .set(i64::from(busy));
        let gpus = self.gpus.holders();
        let busy_gpus = gpus.iter().filter(|(_, holder)| holder.is_some()).count();
        metrics
            .gpus
            .with_label_values(&["total"])
            .set(gpus.len() as i64);
        metrics
            .gpus
            .with_label_values(&["busy"])
            .set(busy_gpus as i64);
        metrics.running_trials.set(self.running.len() as i64);
        metrics.draining.set(i64::from(self.draining));
        metrics.connected.set(i64::from(self.link_up));
    }

    /// Once nothing runs: answers a pending drain and ends an interruption.
    fn check_drained(&mut self) {
        if self.running.is_empty() {
            if let Some(reply) = self.drained.take() {
                let _ = reply.send(());
            }
            self.interruption_over();
        }
    }

    fn reject(&self, attempt: Option<AttemptId>, reason: String) {
        tracing::warn!(attempt = ?attempt.map(|a| a.to_string()), %reason, "rejecting a command");
        let _ = self
            .outbox
            .send(AgentMessage::CommandRejected { attempt, reason });
    }

    /// Heartbeats at the period the coordinator asked for.
    fn set_heartbeat(&mut self, myself: &ActorRef<AgentMsg>, interval: Duration) {
        if interval == self.heartbeat_interval || interval.is_zero() {
            return;
        }
        if let Some(timer) = self.heartbeat_timer.take() {
            timer.abort();
        }
        self.heartbeat_interval = interval;
        self.heartbeat_timer = Some(myself.send_interval(interval, || AgentMsg::Tick));
    }

    /// Takes no new trials from now on, and tells the coordinator once.
    fn start_draining(&mut self) {
        if !self.draining {
            self.draining = true;
            let _ = self.outbox.send(AgentMessage::Draining);
        }
    }

    /// Takes no new trials and stops every running one as `Preempted`: a trainer writes a
    /// checkpoint of its exact position first; a command trial gets SIGTERM. The coordinator
    /// resumes them elsewhere without spending their retry budget.
    ///
    /// `left` is how long the host has (a spot notice's time): a command trial's grace
    /// between SIGTERM and SIGKILL is then at most half of it, leaving the rest for the
    /// upload of its final checkpoint.
    pub(crate) fn preempt(&mut self, left: Option<Duration>) {
        self.start_draining();
        for running in self.running.values() {
            let stop = match left {
                Some(left) => TrialMsg::StopWithin(StopReason::Preempted, left / 2),
                None => TrialMsg::Stop(StopReason::Preempted),
            };
            let _ = running.actor.cast(stop);
        }
    }

    /// Acts on a notice from the metadata service: a rebalance recommendation stops new
    /// trials; an interruption or a terminating lifecycle state preempts every trial.
    fn notice(&mut self, notice: crate::imds::Notice, seen: std::time::SystemTime) {
        use crate::imds::Notice;
        match &notice {
            Notice::Rebalance => {
                tracing::warn!(
                    "rebalance recommendation: this instance may be interrupted soon; taking no new trials (running ones go on)"
                );
                self.start_draining();
            }
            Notice::Interruption { action, at } => {
                let time_left = at.and_then(|at| at.duration_since(seen).ok());
                let left = time_left
                    .map(|left| format!("{}s", left.as_secs()))
                    .unwrap_or_else(|| "an unknown time".into());
                tracing::warn!(
                    %action,
                    running = self.running.len(),
                    "spot interruption notice ({action} in {left}): checkpointing every running trial and draining"
                );
                self.interrupted.get_or_insert(notice.posted(seen));
                self.preempt(time_left);
            }
            Notice::Terminating => {
                tracing::warn!(
                    running = self.running.len(),
                    "the group's termination lifecycle hook holds this instance: checkpointing every running trial and draining"
                );
                self.interrupted.get_or_insert(notice.posted(seen));
                self.preempt(None);
            }
        }
        if self.running.is_empty() {
            self.interruption_over();
        }
    }

    /// Every trial has stopped since an interruption notice: records how long it took.
    fn interruption_over(&mut self) {
        let Some(posted) = self.interrupted.take() else {
            return;
        };
        let took = std::time::SystemTime::now()
            .duration_since(posted)
            .unwrap_or_default();
        self.metrics
            .interruption_checkpoint
            .observe(took.as_secs_f64());
        tracing::info!(
            seconds = took.as_secs_f64(),
            "every trial checkpointed and stopped {:.2}s after the interruption notice",
            took.as_secs_f64()
        );
    }

    /// Starts an attempt with `gpus` GPUs of its own, or refuses it (draining, no free slot
    /// or GPU).
    async fn start(&mut self, myself: &ActorRef<AgentMsg>, start: StartTrial, gpus: u32) {
        let attempt = start.attempt;
        if self.running.contains_key(&attempt) {
            return;
        }
        if self.draining {
            self.reject(Some(attempt), "the agent is draining".into());
            return;
        }
        let busy = self.busy_slots();
        if busy + start.slots > self.slots {
            self.reject(
                Some(attempt),
                format!("no free slot ({busy} of {} busy)", self.slots),
            );
            return;
        }
        let assigned = match self.gpus.take(attempt, gpus) {
            Ok(assigned) => assigned,
            Err(message) => {
                self.reject(Some(attempt), format!("no free GPU: {message}"));
                return;
            }
        };
        if !assigned.is_empty() {
            tracing::info!(%attempt, gpus = %crate::gpus::visible_devices(&assigned), "GPUs assigned");
        }
        let slots = start.slots;
        let args = TrialArgs {
            metrics: self.metrics.clone(),
            trainer_env: self.trainer_env.clone(),
            start,
            outbox: self.outbox.clone(),
            root: myself.clone(),
            checkpoint_root: self.checkpoint_root.clone(),
            stop_grace: self.stop_grace,
            gpus: assigned,
            agent_has_gpus: self.gpus.total() > 0,
            checkpoint_max_bytes: self.checkpoint_max_bytes,
        };
        match Actor::spawn_linked(None, Trial, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.running.insert(attempt, Running { actor, slots });
            }
            Err(error) => {
                self.gpus.give_back(attempt);
                self.reject(Some(attempt), format!("cannot start the trial: {error}"))
            }
        }
    }

    async fn command(&mut self, myself: &ActorRef<AgentMsg>, command: CoordinatorCommand) {
        if command.epoch < self.newest_epoch {
            let attempt = match &command.command {
                Command::StartTrial(start) => Some(start.attempt),
                Command::StartAttempt(start) => Some(start.start.attempt),
                Command::StopTrial { attempt, .. } => Some(*attempt),
                Command::Registered { .. }
                | Command::Drain
                | Command::Serve(_)
                | Command::SealModel(_)
                | Command::Alive => None,
            };
            self.reject(
                attempt,
                format!(
                    "command from epoch {} but epoch {} is newer",
                    command.epoch, self.newest_epoch
                ),
            );
            return;
        }
        self.newest_epoch = command.epoch;
        match command.command {
            Command::Drain => {
                tracing::info!(
                    "the coordinator drains this agent: checkpointing and stopping every trial"
                );
                self.preempt(None);
            }
            Command::Registered {
                adopted,
                heartbeat_interval_ms,
            } => {
                self.set_heartbeat(myself, Duration::from_millis(heartbeat_interval_ms));
                for (attempt, running) in &self.running {
                    if !adopted.contains(attempt) {
                        tracing::info!(%attempt, "coordinator did not adopt this attempt; stopping it");
                        let _ = running.actor.cast(TrialMsg::Stop(StopReason::Superseded));
                    }
                }
            }
            Command::StartTrial(start) => self.start(myself, *start, 0).await,
            Command::StartAttempt(start) => {
                let StartAttempt { start, gpus } = *start;
                self.start(myself, start, gpus).await;
            }
            Command::StopTrial { attempt, reason } => {
                if let Some(running) = self.running.get(&attempt) {
                    let _ = running.actor.cast(TrialMsg::Stop(reason));
                }
            }
            Command::Serve(models) => self.serving.assign(models),
            Command::SealModel(request) => self.serving.seal(request),
            // The link keeps these to itself; nothing to do.
            Command::Alive => {}
        }
    }
}
