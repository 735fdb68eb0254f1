//! Trial: one actor per running attempt, of a built-in trainer or of a command.
//!
//! Place in the tree: child of AgentRoot. A built-in trainer runs on its own thread. A
//! command runs in its own process group with the parameters, its GPUs and its checkpoint
//! folders in the environment; the actor owns a task that reads its output (metric lines →
//! `TrialMetrics`, checkpoint lines → a commit) and waits for its exit, and a task that
//! uploads its commits one at a time. Before either starts, the attempt takes the trial's
//! checkpoint lease (with etcd) and restores the latest checkpoint into
//! `FLOTILLA_RESUME_FROM`. Stop = SIGTERM to the group, then SIGKILL after the grace period;
//! on exit the whole group is killed so no grandchild outlives the trial, the last commits
//! finish uploading, and only then is the outcome reported (so a preempted trial's final
//! checkpoint is the one the next attempt resumes from).
//!
//! Failure: a failure of this actor is reported to AgentRoot, which reports the attempt as
//! failed; the child process is killed on drop.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_protocol::AttemptId;
use flotilla_protocol::messages::{
    AgentMessage, CheckpointRef, MetricPoint, Metrics, StartTrial, StopReason, TrialOutcome,
};
use flotilla_protocol::spec::substitute;
use flotilla_protocol::value::json_string;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use flotilla_train::{ArtifactStore, Control, DeviceChoice, Events, Finish, StopRequest, TrainJob};

use crate::leases::{CheckpointLeases, LeaseError, Ownership};
use crate::metric_line::{self, Line};
use crate::metrics::{AgentMetrics, TrialSeries};
use crate::root::AgentMsg;
use crate::trial_checkpoint::{self, Manifest};

pub enum TrialMsg {
    Metric {
        step: Option<u64>,
        values: Metrics,
    },
    /// A built-in trainer's thread ended.
    TrainerDone(Result<Finish, String>),
    /// The checkpoint lease was taken (with the trial's latest checkpoint) or not.
    Owned(Result<(Ownership, Option<CheckpointRef>), LeaseError>),
    /// A command attempt is ready to start (its lease taken, its checkpoint restored), or
    /// cannot start.
    Prepared(Result<Prepared, NotStarted>),
    StderrTail(String),
    Exited(Result<ExitStatus, String>),
    Stop(StopReason),
    /// Stop with at most this grace before SIGKILL (a spot notice leaves less than usual).
    StopWithin(StopReason, Duration),
    ForceKill,
    /// The program committed its checkpoint directory, now taken aside at `dir`.
    Commit {
        dir: PathBuf,
        step: Option<u64>,
        epoch: Option<u32>,
    },
    /// A commit that could not be taken or uploaded: `fatal` ends the trial with it.
    CheckpointProblem {
        message: String,
        fatal: bool,
    },
    /// Another attempt holds the trial's checkpoints now: this one stops.
    LeaseLost(String),
    /// Every commit has been uploaded (or given up) after the program exited.
    UploadsDone,
}

/// Why an attempt did not start.
pub enum NotStarted {
    /// Nothing about the trial is wrong (etcd did not answer for the checkpoint lease): the
    /// attempt is handed back to the coordinator, which places it again without spending a
    /// retry.
    HandedBack(String),
    /// The attempt failed before its program ran (a retry is spent).
    Failed(String),
}

impl From<LeaseError> for NotStarted {
    fn from(error: LeaseError) -> NotStarted {
        match error {
            LeaseError::Unavailable(message) => NotStarted::HandedBack(message),
            LeaseError::Refused(message) => NotStarted::Failed(message),
        }
    }
}

impl From<String> for NotStarted {
    fn from(message: String) -> NotStarted {
        NotStarted::Failed(message)
    }
}

/// What a command attempt starts with.
pub struct Prepared {
    ownership: Option<Ownership>,
    /// The restored checkpoint: where it was unpacked, and its manifest.
    resume: Option<(PathBuf, Manifest)>,
}

/// What built-in trainers need from the agent.
#[derive(Debug, Clone)]
pub struct TrainerEnv {
    pub artifacts: ArtifactStore,
    pub device: DeviceChoice,
    /// Relative data paths resolve here.
    pub data_dir: PathBuf,
    /// With etcd: each trainer attempt holds its trial's checkpoint lease.
    pub leases: Option<Arc<CheckpointLeases>>,
}

pub struct TrialArgs {
    pub metrics: Arc<AgentMetrics>,
    pub trainer_env: TrainerEnv,
    pub start: StartTrial,
    pub outbox: mpsc::UnboundedSender<AgentMessage>,
    pub root: ActorRef<AgentMsg>,
    pub checkpoint_root: PathBuf,
    pub stop_grace: Duration,
    /// The GPUs this attempt holds alone (empty: none).
    pub gpus: Vec<u32>,
    /// Whether the agent has GPUs at all: a trial with none of them then sees none.
    pub agent_has_gpus: bool,
    /// A command trial's commit larger than this is refused.
    pub checkpoint_max_bytes: u64,
}

/// Where a command attempt's files live: `<root>/<sweep>/<trial>/a<attempt>/`.
struct AttemptDirs {
    root: PathBuf,
    /// `FLOTILLA_CHECKPOINT_DIR`.
    checkpoint: PathBuf,
    /// Commits taken aside until uploaded.
    commits: PathBuf,
    /// `FLOTILLA_RESUME_FROM`.
    resume: PathBuf,
}

impl AttemptDirs {
    fn of(args: &TrialArgs) -> AttemptDirs {
        let attempt = args.start.attempt;
        let root = args
            .checkpoint_root
            .join(attempt.trial.sweep.to_string())
            .join(attempt.trial.to_string())
            .join(format!("a{}", attempt.attempt));
        AttemptDirs {
            checkpoint: root.join("checkpoint"),
            commits: root.join("commits"),
            resume: root.join("resume"),
            root,
        }
    }
}

pub struct TrialState {
    attempt: AttemptId,
    process_group: Option<Pid>,
    started: Instant,
    latest: Metrics,
    next_step: u64,
    stop_reason: Option<StopReason>,
    stderr_tail: String,
    outbox: mpsc::UnboundedSender<AgentMessage>,
    root: ActorRef<AgentMsg>,
    stop_grace: Duration,
    reported: bool,
    /// Reads the program's output and waits for its exit; aborted if the actor stops first.
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// A built-in trainer's stop switch (its thread checks it before every batch).
    trainer: Option<Control>,
    /// A trainer attempt waiting for its checkpoint lease: its arguments, and the task
    /// taking the lease (aborted if the actor stops first).
    waiting: Option<(Box<TrialArgs>, tokio::task::JoinHandle<()>)>,
    /// The checkpoint lease this attempt holds, released when it ends.
    ownership: Option<(Arc<CheckpointLeases>, Ownership)>,
    /// This attempt's Prometheus series, removed when the actor's state is dropped.
    series: TrialSeries,
    /// A command attempt taking its lease and restoring its checkpoint: its arguments and
    /// the task (aborted if the actor stops first).
    preparing: Option<(Box<TrialArgs>, tokio::task::JoinHandle<()>)>,
    /// A command attempt's commits go here, to the upload task.
    commits: Option<mpsc::UnboundedSender<Commit>>,
    uploader: Option<tokio::task::JoinHandle<()>>,
    /// The outcome, held back until the last commits are uploaded.
    held: Option<TrialOutcome>,
    /// The last `epoch` metric reported (a commit's epoch unless it names one).
    last_epoch: Option<u32>,
    /// Whether any metric was reported (a commit's step is then the last one's).
    reported_metrics: bool,
    /// Why the trial fails regardless of its exit (a checkpoint that could not be kept).
    failure: Option<String>,
    /// SIGTERM has been sent.
    terminating: bool,
    /// A command attempt's folder, removed when the actor stops.
    attempt_dir: Option<PathBuf>,
}

pub struct Trial;

impl Actor for Trial {
    type Msg = TrialMsg;
    type State = TrialState;
    type Arguments = TrialArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TrialMsg>,
        args: TrialArgs,
    ) -> Result<TrialState, ActorProcessingErr> {
        let attempt = args.start.attempt;
        let mut state = TrialState {
            attempt,
            process_group: None,
            started: Instant::now(),
            latest: Metrics::new(),
            next_step: 0,
            stop_reason: None,
            stderr_tail: String::new(),
            outbox: args.outbox.clone(),
            root: args.root.clone(),
            stop_grace: args.stop_grace,
            reported: false,
            watcher: None,
            trainer: None,
            waiting: None,
            ownership: None,
            series: args
                .metrics
                .trial(args.start.attempt.trial, args.start.trial.timeout),
            preparing: None,
            commits: None,
            uploader: None,
            held: None,
            last_epoch: None,
            reported_metrics: false,
            failure: None,
            terminating: false,
            attempt_dir: None,
        };
        let leases = args.trainer_env.leases.clone();
        let started = if let (Some(_), Some(leases)) = (&args.start.trial.trainer, leases) {
            // Training starts once this attempt holds the trial's checkpoint lease.
            let me = myself.clone();
            let wait = leases.takeover_wait();
            let task = tokio::spawn(async move {
                let owned = leases.acquire(attempt, wait).await;
                let _ = me.cast(TrialMsg::Owned(owned));
            });
            let outbox = args.outbox.clone();
            let timeout = args.start.trial.timeout;
            state.waiting = Some((Box::new(args), task));
            let _ = outbox.send(AgentMessage::TrialStarted { attempt });
            if let Some(timeout) = timeout {
                myself.send_after(timeout, || TrialMsg::Stop(StopReason::TimedOut));
            }
            return Ok(state);
        } else if args.start.trial.trainer.is_some() {
            spawn_trainer(&args, &myself, None).map(|control| state.trainer = Some(control))
        } else {
            // A command starts once its lease is held and its checkpoint restored.
            let dirs = AttemptDirs::of(&args);
            state.attempt_dir = Some(dirs.root.clone());
            let env = args.trainer_env.clone();
            let task = tokio::spawn(prepare(
                myself.clone(),
                env,
                attempt,
                args.start.resume_from.clone(),
                dirs,
            ));
            let outbox = args.outbox.clone();
            let timeout = args.start.trial.timeout;
            state.preparing = Some((Box::new(args), task));
            let _ = outbox.send(AgentMessage::TrialStarted { attempt });
            if let Some(timeout) = timeout {
                myself.send_after(timeout, || TrialMsg::Stop(StopReason::TimedOut));
            }
            return Ok(state);
        };
        match started {
            Ok(()) => {
                let _ = args.outbox.send(AgentMessage::TrialStarted { attempt });
                if let Some(timeout) = args.start.trial.timeout {
                    myself.send_after(timeout, || TrialMsg::Stop(StopReason::TimedOut));
                }
            }
            Err(message) => {
                tracing::warn!(%attempt, %message, "trial could not start");
                state.report(TrialOutcome::error(message, 0));
                myself.stop(None);
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<TrialMsg>,
        message: TrialMsg,
        state: &mut TrialState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TrialMsg::Metric { step, values } => {
                let step = step.unwrap_or(state.next_step);
                state.next_step = step + 1;
                state.reported_metrics = true;
                if let Some(epoch) = values.get(flotilla_protocol::trainers::BUDGET_METRIC)
                    && epoch.is_finite()
                    && *epoch >= 0.0
                {
                    state.last_epoch = Some(*epoch as u32);
                }
                state.series.point(step, &values);
                state
                    .latest
                    .extend(values.iter().map(|(name, value)| (name.clone(), *value)));
                let point = MetricPoint {
                    step,
                    values,
                    elapsed_ms: state.started.elapsed().as_millis() as u64,
                };
                let _ = state.outbox.send(AgentMessage::TrialMetrics {
                    attempt: state.attempt,
                    points: vec![point],
                });
            }
            TrialMsg::StderrTail(tail) => state.stderr_tail = tail,
            TrialMsg::Owned(owned) => {
                let Some((mut args, _)) = state.waiting.take() else {
                    return Ok(());
                };
                match owned {
                    Ok((ownership, latest)) => {
                        // The pointer in etcd is the truth; the coordinator's copy may lag.
                        if let Some(latest) = latest {
                            tracing::info!(attempt = %state.attempt, checkpoint = %latest.uri, epoch = latest.epoch, "resuming from the trial's latest checkpoint");
                            args.start.resume_from = Some(latest.uri);
                        }
                        let leases = args.trainer_env.leases.clone();
                        let lease = leases.map(|leases| (leases, ownership));
                        match spawn_trainer(&args, &myself, lease.clone()) {
                            Ok(control) => {
                                state.trainer = Some(control);
                                state.ownership = lease;
                            }
                            Err(message) => {
                                state.ownership = lease;
                                state.report(TrialOutcome::error(message, 0));
                                myself.stop(None);
                            }
                        }
                    }
                    Err(error) => state.not_started(&myself, error.into()),
                }
            }
            TrialMsg::Prepared(prepared) => {
                let Some((args, _)) = state.preparing.take() else {
                    return Ok(());
                };
                state.start_command(&myself, *args, prepared);
            }
            // Stopped before anything ran (waiting for the lease or preparing a command).
            TrialMsg::Stop(reason) | TrialMsg::StopWithin(reason, _)
                if state.waiting.is_some() || state.preparing.is_some() =>
            {
                let tasks = [state.waiting.take(), state.preparing.take()];
                for (_, task) in tasks.into_iter().flatten() {
                    task.abort();
                }
                state.stop_reason = Some(reason);
                state.report(TrialOutcome::Stopped {
                    reason,
                    duration_ms: state.started.elapsed().as_millis() as u64,
                });
                myself.stop(None);
            }
            TrialMsg::Commit { dir, step, epoch } => {
                let step = step.unwrap_or(if state.reported_metrics {
                    state.next_step.saturating_sub(1)
                } else {
                    0
                });
                let epoch = epoch.or(state.last_epoch).unwrap_or(0);
                tracing::info!(attempt = %state.attempt, step, epoch, "checkpoint committed; uploading");
                let commit = Commit { dir, step, epoch };
                if let Some(commits) = &state.commits
                    && let Err(refused) = commits.send(commit)
                {
                    let _ = std::fs::remove_dir_all(&refused.0.dir);
                }
            }
            TrialMsg::CheckpointProblem { message, fatal } => {
                if fatal {
                    tracing::error!(attempt = %state.attempt, %message, "checkpoint refused; the trial fails");
                    state.failure.get_or_insert(message);
                    state.terminate(&myself, state.stop_grace);
                } else {
                    tracing::warn!(attempt = %state.attempt, %message, "checkpoint refused; the trial goes on");
                }
            }
            TrialMsg::LeaseLost(message) => {
                tracing::warn!(attempt = %state.attempt, %message, "checkpoint not published; stopping the trial");
                state.stop_reason.get_or_insert(StopReason::Superseded);
                state.terminate(&myself, state.stop_grace);
            }
            TrialMsg::UploadsDone => {
                if let Some(outcome) = state.held.take() {
                    state.report(outcome);
                }
                myself.stop(None);
            }
            TrialMsg::Stop(reason) | TrialMsg::StopWithin(reason, _) if state.trainer.is_some() => {
                if state.stop_reason.is_none() {
                    state.stop_reason = Some(reason);
                    // A drain keeps the work: checkpoint the exact position, then stop.
                    let request =
                        if matches!(reason, StopReason::AgentShutdown | StopReason::Preempted) {
                            StopRequest::Checkpoint
                        } else {
                            StopRequest::Abort
                        };
                    if let Some(control) = &state.trainer {
                        control.request(request);
                    }
                }
            }
            TrialMsg::TrainerDone(result) => {
                let duration_ms = state.started.elapsed().as_millis() as u64;
                let outcome = match result {
                    Ok(Finish::Completed { metrics, .. }) => TrialOutcome::Succeeded {
                        metrics,
                        duration_ms,
                    },
                    Ok(Finish::Stopped { .. }) => TrialOutcome::Stopped {
                        reason: state.stop_reason.unwrap_or(StopReason::AgentShutdown),
                        duration_ms,
                    },
                    Err(message) => TrialOutcome::error(message, duration_ms),
                };
                state.report(outcome);
                state.trainer = None;
                myself.stop(None);
            }
            TrialMsg::Stop(reason) => {
                state.stop_reason.get_or_insert(reason);
                state.terminate(&myself, state.stop_grace);
            }
            TrialMsg::StopWithin(reason, grace) => {
                state.stop_reason.get_or_insert(reason);
                state.terminate(&myself, grace.min(state.stop_grace));
            }
            TrialMsg::ForceKill => state.signal(Signal::SIGKILL),
            TrialMsg::Exited(status) => {
                let outcome = state.outcome(status);
                state.process_group = None;
                // The last commits finish uploading before the outcome goes out.
                state.commits = None;
                match state.uploader.take() {
                    Some(uploader) => {
                        state.held = Some(outcome);
                        let me = myself.clone();
                        tokio::spawn(async move {
                            let _ = uploader.await;
                            let _ = me.cast(TrialMsg::UploadsDone);
                        });
                    }
                    None => {
                        state.report(outcome);
                        myself.stop(None);
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TrialMsg>,
        state: &mut TrialState,
    ) -> Result<(), ActorProcessingErr> {
        // Stopped before the program exited (the agent is going away): nothing outlives us.
        state.signal(Signal::SIGKILL);
        if let Some((_, task)) = state.waiting.take() {
            task.abort();
        }
        if let Some((_, task)) = state.preparing.take() {
            task.abort();
        }
        if let Some(uploader) = state.uploader.take() {
            uploader.abort();
        }
        if let Some(dir) = state.attempt_dir.take() {
            // Nothing here is needed once the attempt is over: its commits are in the store.
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir_all(dir);
            });
        }
        if let Some((leases, ownership)) = state.ownership.take() {
            leases.release(&ownership).await;
        }
        if let Some(control) = state.trainer.take() {
            control.request(StopRequest::Abort);
        }
        if let Some(watcher) = state.watcher.take() {
            watcher.abort();
        }
        Ok(())
    }
}

impl TrialState {
    fn signal(&self, signal: Signal) {
        if let Some(group) = self.process_group {
            let _ = killpg(group, signal);
        }
    }

    fn report(&mut self, outcome: TrialOutcome) {
        if !self.reported {
            self.reported = true;
            self.series.finished(&outcome);
            let _ = self.root.cast(AgentMsg::TrialExited {
                attempt: self.attempt,
                outcome,
            });
        }
    }

    /// Ends an attempt that did not start: failed, or handed back (no retry spent).
    fn not_started(&mut self, myself: &ActorRef<TrialMsg>, why: NotStarted) {
        match why {
            NotStarted::Failed(message) => {
                tracing::warn!(attempt = %self.attempt, %message, "the attempt could not start");
                self.report(TrialOutcome::error(message, 0));
            }
            NotStarted::HandedBack(reason) => {
                tracing::warn!(attempt = %self.attempt, %reason, "handing the attempt back to the coordinator");
                if !self.reported {
                    self.reported = true;
                    let _ = self.root.cast(AgentMsg::TrialHandedBack {
                        attempt: self.attempt,
                        reason,
                    });
                }
            }
        }
        myself.stop(None);
    }

    /// SIGTERM to the program, SIGKILL after `grace` (once, whatever asked first).
    fn terminate(&mut self, myself: &ActorRef<TrialMsg>, grace: Duration) {
        if self.terminating {
            return;
        }
        self.terminating = true;
        self.signal(Signal::SIGTERM);
        myself.send_after(grace, || TrialMsg::ForceKill);
    }

    /// Starts a prepared command attempt: its program, and the task uploading its commits.
    fn start_command(
        &mut self,
        myself: &ActorRef<TrialMsg>,
        mut args: TrialArgs,
        prepared: Result<Prepared, NotStarted>,
    ) {
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(why) => {
                self.not_started(myself, why);
                return;
            }
        };
        let leases = args.trainer_env.leases.clone();
        let lease = leases.zip(prepared.ownership);
        self.ownership = lease.clone();
        if let Some((dir, manifest)) = &prepared.resume {
            tracing::info!(attempt = %self.attempt, resume = %dir.display(), step = manifest.step, epoch = manifest.epoch, "resuming from the trial's latest checkpoint");
            // Steps go on from the checkpoint's, so a resumed curve continues where it was.
            self.next_step = manifest.step + 1;
            self.last_epoch = Some(manifest.epoch);
        }
        let dirs = AttemptDirs::of(&args);
        let (commits, queue) = mpsc::unbounded_channel();
        let uploader = tokio::spawn(upload_commits(
            queue,
            Uploader {
                trial: myself.clone(),
                outbox: args.outbox.clone(),
                attempt: self.attempt,
                artifacts: args.trainer_env.artifacts.clone(),
                lease,
                limit: args.checkpoint_max_bytes,
                metrics: args.metrics.clone(),
            },
        ));
        args.start.resume_from = None;
        match spawn_process(&args, myself, &dirs, prepared.resume.as_ref()) {
            Ok((process_group, watcher)) => {
                self.process_group = Some(process_group);
                self.watcher = Some(watcher);
                self.commits = Some(commits);
                self.uploader = Some(uploader);
            }
            Err(message) => {
                uploader.abort();
                tracing::warn!(attempt = %self.attempt, %message, "command trial could not start");
                self.report(TrialOutcome::error(message, 0));
                myself.stop(None);
            }
        }
    }

    fn outcome(&self, status: Result<ExitStatus, String>) -> TrialOutcome {
        use std::os::unix::process::ExitStatusExt;
        let duration_ms = self.started.elapsed().as_millis() as u64;
        if let Some(message) = &self.failure {
            return TrialOutcome::error(message.clone(), duration_ms);
        }
        if let Some(reason) = self.stop_reason {
            return TrialOutcome::Stopped {
                reason,
                duration_ms,
            };
        }
        match status {
            Ok(status) if status.success() => TrialOutcome::Succeeded {
                metrics: self.latest.clone(),
                duration_ms,
            },
            Ok(status) => TrialOutcome::Failed {
                exit_code: status.code(),
                signal: status.signal(),
                message: if self.stderr_tail.is_empty() {
                    "no output on stderr".into()
                } else {
                    self.stderr_tail.clone()
                },
                duration_ms,
            },
            Err(message) => TrialOutcome::error(message, duration_ms),
        }
    }
}

/// Forwards a trainer's reports: metrics through the actor (which keeps the latest values),
/// checkpoints straight to the coordinator.
struct TrainerEvents {
    trial: ActorRef<TrialMsg>,
    outbox: mpsc::UnboundedSender<AgentMessage>,
    attempt: AttemptId,
    /// With etcd: the lease that fences the trial's latest pointer, the runtime to move it
    /// on (this runs on the training thread), and the trainer's stop switch for when the
    /// lease is lost.
    lease: Option<(Arc<CheckpointLeases>, Ownership)>,
    runtime: tokio::runtime::Handle,
    control: Control,
    metrics: Arc<AgentMetrics>,
}

impl Events for TrainerEvents {
    fn checkpoint_written(&mut self, bytes: u64, took: Duration) {
        self.metrics.checkpoint_write.observe(took.as_secs_f64());
        self.metrics.checkpoint_bytes.inc_by(bytes);
    }

    fn metrics(&mut self, point: MetricPoint) {
        let _ = self.trial.cast(TrialMsg::Metric {
            step: Some(point.step),
            values: point.values,
        });
    }

    fn checkpoint(&mut self, checkpoint: flotilla_protocol::messages::CheckpointRef) {
        if let Some((leases, ownership)) = &self.lease {
            let moved = self
                .runtime
                .block_on(leases.move_latest(ownership, &checkpoint));
            if let Err(message) = moved {
                // Another attempt owns the trial now (or may at any moment): stop writing.
                tracing::warn!(attempt = %self.attempt, %message, checkpoint = %checkpoint.uri, "checkpoint not published; stopping the trainer");
                self.lease = None;
                self.control.request(StopRequest::Abort);
                return;
            }
        }
        let _ = self.outbox.send(AgentMessage::TrialCheckpoint {
            attempt: self.attempt,
            checkpoint,
        });
    }

    fn log(&mut self, line: String) {
        tracing::info!(attempt = %self.attempt, "{line}");
    }
}

/// Starts a built-in trainer on its own thread (training never runs in an actor handler).
/// The thread reports its end to the actor; the returned control stops it.
fn spawn_trainer(
    args: &TrialArgs,
    myself: &ActorRef<TrialMsg>,
    lease: Option<(Arc<CheckpointLeases>, Ownership)>,
) -> Result<Control, String> {
    let start = &args.start;
    let job = TrainJob {
        trainer: start.trial.trainer.clone().unwrap_or_default(),
        trial: start.attempt.trial.to_string(),
        attempt: start.attempt.attempt,
        params: start.params.clone(),
        settings: start.trial.settings.clone(),
        resume_from: start.resume_from.clone(),
        artifacts: args.trainer_env.artifacts.clone(),
        device: trainer_device(args),
        data_dir: args.trainer_env.data_dir.clone(),
    };
    let control = Control::new();
    let runtime = tokio::runtime::Handle::current();
    let mut events = TrainerEvents {
        trial: myself.clone(),
        outbox: args.outbox.clone(),
        attempt: start.attempt,
        lease,
        runtime: runtime.clone(),
        control: control.clone(),
        metrics: args.metrics.clone(),
    };
    let thread_control = control.clone();
    let trial = myself.clone();
    std::thread::Builder::new()
        .name(format!("train-{}", start.attempt))
        .spawn(move || {
            let result = flotilla_train::run(job, &mut events, &thread_control, runtime)
                .map_err(|error| error.to_string());
            let _ = trial.cast(TrialMsg::TrainerDone(result));
        })
        .map_err(|error| format!("cannot start the training thread: {error}"))?;
    Ok(control)
}

/// The device a built-in trainer attempt trains on. On an agent with GPUs it is the first
/// GPU the attempt holds (CPU when it holds none, so it never lands on another attempt's
/// GPU), unless the agent was told `--device cpu`; a build without CUDA trains on the CPU.
fn trainer_device(args: &TrialArgs) -> DeviceChoice {
    let configured = args.trainer_env.device;
    if !args.agent_has_gpus || configured == DeviceChoice::Cpu {
        return configured;
    }
    match args.gpus.first() {
        Some(index) if cfg!(feature = "cuda") => DeviceChoice::Cuda(*index as usize),
        Some(index) => {
            tracing::warn!(attempt = %args.start.attempt, gpu = index, "this agent was built without CUDA; the trial trains on the CPU");
            DeviceChoice::Cpu
        }
        None => DeviceChoice::Cpu,
    }
}

/// The environment a command trial sees (the contract in docs/trials.md).
pub fn trial_environment(
    start: &StartTrial,
    checkpoint_dir: &std::path::Path,
    gpus: Option<&[u32]>,
    resume: Option<(&std::path::Path, &Manifest)>,
) -> Vec<(String, String)> {
    let attempt = start.attempt;
    let params_json = format!(
        "{{{}}}",
        start
            .params
            .iter()
            .map(|(name, value)| format!("{}:{}", json_string(name), value.to_json_fragment()))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut environment = vec![
        ("FLOTILLA_PARAMS".to_string(), params_json),
        (
            "FLOTILLA_SWEEP_ID".to_string(),
            attempt.trial.sweep.to_string(),
        ),
        ("FLOTILLA_TRIAL_ID".to_string(), attempt.trial.to_string()),
        ("FLOTILLA_ATTEMPT".to_string(), attempt.attempt.to_string()),
        (
            "FLOTILLA_CHECKPOINT_DIR".to_string(),
            checkpoint_dir.display().to_string(),
        ),
    ];
    for (name, value) in &start.params {
        environment.push((
            format!("FLOTILLA_PARAM_{}", name.to_ascii_uppercase()),
            value.exact(),
        ));
    }
    // The GPUs the attempt holds alone; on an agent with GPUs, a trial holding none sees none.
    if let Some(gpus) = gpus {
        let visible = crate::gpus::visible_devices(gpus);
        environment.push(("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()));
        environment.push(("CUDA_VISIBLE_DEVICES".to_string(), visible.clone()));
        environment.push(("FLOTILLA_GPUS".to_string(), visible));
    }
    // ASHA's promotion form (or the sweep) sets the epochs this attempt trains up to.
    if let Some(epochs) = start
        .trial
        .settings
        .get(flotilla_protocol::trainers::BUDGET_HYPERPARAMETER)
    {
        environment.push(("FLOTILLA_EPOCHS".to_string(), epochs.exact()));
    }
    if let Some((dir, manifest)) = resume {
        environment.push((
            "FLOTILLA_RESUME_FROM".to_string(),
            dir.display().to_string(),
        ));
        environment.push((
            "FLOTILLA_RESUME_STEP".to_string(),
            manifest.step.to_string(),
        ));
        environment.push((
            "FLOTILLA_RESUME_EPOCH".to_string(),
            manifest.epoch.to_string(),
        ));
    }
    environment
}

/// How long output may keep flowing after the program exited (its group is killed first).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Takes the trial's checkpoint lease (with etcd) and restores its latest checkpoint, then
/// tells the actor. The pointer in etcd is the truth when there is one; the coordinator's
/// `resume_from` may lag it.
async fn prepare(
    trial: ActorRef<TrialMsg>,
    env: TrainerEnv,
    attempt: AttemptId,
    resume_from: Option<String>,
    dirs: AttemptDirs,
) {
    let prepared = async {
        let mut resume_from = resume_from;
        let mut ownership = None;
        if let Some(leases) = &env.leases {
            let (owned, latest) = leases.acquire(attempt, leases.takeover_wait()).await?;
            if let Some(latest) = latest {
                resume_from = Some(latest.uri);
            }
            ownership = Some(owned);
        }
        let root = dirs.root.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("checkpoint"))
                .map_err(|error| format!("cannot create {}: {error}", root.display()))
        });
        fresh
            .await
            .map_err(|error| format!("preparing the trial's folders failed: {error}"))??;
        let resume = match resume_from {
            None => None,
            Some(uri) => {
                let bytes = env.artifacts.get(&uri).await.map_err(|error| {
                    format!("cannot download the trial's latest checkpoint: {error}")
                })?;
                let dest = dirs.resume.clone();
                let manifest = tokio::task::spawn_blocking(move || {
                    trial_checkpoint::unpack(&bytes, &uri, &dest)
                })
                .await
                .map_err(|error| format!("restoring the checkpoint failed: {error}"))??;
                Some((dirs.resume.clone(), manifest))
            }
        };
        Ok::<_, NotStarted>(Prepared { ownership, resume })
    }
    .await;
    let _ = trial.cast(TrialMsg::Prepared(prepared));
}

/// A commit taken aside, waiting for its upload.
struct Commit {
    dir: PathBuf,
    step: u64,
    epoch: u32,
}

/// What the upload task needs.
struct Uploader {
    trial: ActorRef<TrialMsg>,
    outbox: mpsc::UnboundedSender<AgentMessage>,
    attempt: AttemptId,
    artifacts: ArtifactStore,
    lease: Option<(Arc<CheckpointLeases>, Ownership)>,
    limit: u64,
    metrics: Arc<AgentMetrics>,
}

/// Uploads an attempt's commits in order, one at a time; when several wait, only the newest
/// is uploaded (the others are older states of the same trial). Ends when the actor drops
/// its sender (the program exited) and the queue is empty, or at the first failure.
async fn upload_commits(mut queue: mpsc::UnboundedReceiver<Commit>, uploader: Uploader) {
    while let Some(mut commit) = queue.recv().await {
        while let Ok(newer) = queue.try_recv() {
            let _ = std::fs::remove_dir_all(&commit.dir);
            commit = newer;
        }
        let dir = commit.dir.clone();
        let result = uploader.upload(commit).await;
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(()) => {}
            Err(UploadError::LeaseLost(message)) => {
                let _ = uploader.trial.cast(TrialMsg::LeaseLost(message));
                break;
            }
            Err(UploadError::Refused(message)) => {
                let _ = uploader.trial.cast(TrialMsg::CheckpointProblem {
                    message,
                    fatal: true,
                });
                break;
            }
        }
    }
    // Whatever is left is not uploaded: its folders go with the attempt's.
    queue.close();
    while let Some(commit) = queue.recv().await {
        let _ = std::fs::remove_dir_all(&commit.dir);
    }
}

enum UploadError {
    LeaseLost(String),
    Refused(String),
}

impl Uploader {
    async fn upload(&self, commit: Commit) -> Result<(), UploadError> {
        let began = Instant::now();
        let trial = self.attempt.trial.to_string();
        let manifest = Manifest {
            trial: trial.clone(),
            attempt: self.attempt.attempt,
            step: commit.step,
            epoch: commit.epoch,
            files: 0,
            bytes: 0,
        };
        let limit = self.limit;
        let dir = commit.dir.clone();
        let bytes =
            tokio::task::spawn_blocking(move || trial_checkpoint::pack(&dir, manifest, limit))
                .await
                .map_err(|error| {
                    UploadError::Refused(format!("packing the checkpoint failed: {error}"))
                })?
                .map_err(|error| UploadError::Refused(error.to_string()))?;
        let size = bytes.len() as u64;
        let key = flotilla_train::checkpoint::checkpoint_key(
            &trial,
            self.attempt.attempt,
            commit.step,
            "tar",
        );
        let uri = self.artifacts.put_new(&key, bytes).await.map_err(|error| {
            UploadError::Refused(format!("the checkpoint could not be uploaded: {error}"))
        })?;
        let checkpoint = CheckpointRef {
            uri,
            attempt: self.attempt.attempt,
            step: commit.step,
            epoch: commit.epoch,
            bytes: size,
        };
        if let Some((leases, ownership)) = &self.lease {
            leases
                .move_latest(ownership, &checkpoint)
                .await
                .map_err(UploadError::LeaseLost)?;
        }
        self.metrics
            .checkpoint_write
            .observe(began.elapsed().as_secs_f64());
        self.metrics.checkpoint_bytes.inc_by(size);
        tracing::info!(attempt = %self.attempt, checkpoint = %checkpoint.uri, step = checkpoint.step, bytes = size, "checkpoint uploaded");
        let _ = self.outbox.send(AgentMessage::TrialCheckpoint {
            attempt: self.attempt,
            checkpoint,
        });
        Ok(())
    }
}

fn spawn_process(
    args: &TrialArgs,
    myself: &ActorRef<TrialMsg>,
    dirs: &AttemptDirs,
    resume: Option<&(PathBuf, Manifest)>,
) -> Result<(Pid, tokio::task::JoinHandle<()>), String> {
    let start = &args.start;
    let program = start
        .trial
        .command
        .clone()
        .ok_or("this agent runs command trials only; the trial names no command")?;
    let checkpoint_dir = dirs.checkpoint.clone();
    let gpus = args.agent_has_gpus.then_some(args.gpus.as_slice());
    let resume = resume.map(|(dir, manifest)| (dir.as_path(), manifest));
    let mut command = tokio::process::Command::new(&program);
    command
        .args(
            start
                .trial
                .args
                .iter()
                .map(|arg| substitute(arg, &start.params)),
        )
        .envs(trial_environment(start, &checkpoint_dir, gpus, resume))
        .envs(&start.trial.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(workdir) = &start.trial.workdir {
        command.current_dir(workdir);
    }
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot start '{program}': {error}"))?;
    let pid = child
        .id()
        .ok_or("the process exited before it could be tracked")?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let actor = myself.clone();
    let attempt = start.attempt;
    let group = Pid::from_raw(pid as i32);
    let commits_dir = dirs.commits.clone();
    // Owned by this actor (aborted in its post_stop): it ends once the process has exited,
    // been reaped, and its output has been read.
    let watcher = tokio::spawn(async move {
        let stderr_actor = actor.clone();
        let stderr_task = async move {
            let Some(stderr) = stderr else { return };
            let mut lines = BufReader::new(stderr).lines();
            let mut tail: VecDeque<String> = VecDeque::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if tail.len() == 5 {
                    tail.pop_front();
                }
                tail.push_back(line.chars().take(400).collect());
            }
            let _ = stderr_actor.cast(TrialMsg::StderrTail(
                tail.into_iter().collect::<Vec<_>>().join(" | "),
            ));
        };
        let stdout_actor = actor.clone();
        let stdout_task = async move {
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            let mut warned = false;
            let mut commits = 0u32;
            while let Ok(Some(line)) = lines.next_line().await {
                match metric_line::parse(&line) {
                    Some(Ok(Line::Metrics(metric))) => {
                        let _ = stdout_actor.cast(TrialMsg::Metric {
                            step: metric.step,
                            values: metric.values,
                        });
                    }
                    // The directory is taken the moment the line is read: what the commit
                    // holds is what was there when the program printed it.
                    Some(Ok(Line::Checkpoint { step, epoch })) => {
                        commits += 1;
                        let aside = commits_dir.join(format!("{commits:06}"));
                        let message = match trial_checkpoint::take_directory(
                            &checkpoint_dir,
                            &aside,
                        ) {
                            Ok(Some(dir)) => TrialMsg::Commit { dir, step, epoch },
                            Ok(None) => TrialMsg::CheckpointProblem {
                                message: format!(
                                    "'@flotilla checkpoint' with no files in {}: nothing was committed",
                                    checkpoint_dir.display()
                                ),
                                fatal: false,
                            },
                            Err(message) => TrialMsg::CheckpointProblem {
                                message,
                                fatal: true,
                            },
                        };
                        let _ = stdout_actor.cast(message);
                    }
                    Some(Err(error)) if !warned => {
                        warned = true;
                        tracing::warn!(%attempt, %error, "ignoring a malformed @flotilla line (further ones are ignored silently)");
                    }
                    _ => {}
                }
            }
        };
        // The program's exit decides the outcome, not its pipes: a grandchild that inherited
        // stdout must not keep the trial alive. Once the program exits, its whole group is
        // killed, which closes the pipes; what is left to read gets a short grace.
        let output = async { tokio::join!(stdout_task, stderr_task) };
        tokio::pin!(output);
        let mut output_done = false;
        let status = tokio::select! {
            status = child.wait() => status,
            _ = &mut output => {
                output_done = true;
                child.wait().await
            }
        };
        let _ = killpg(group, Signal::SIGKILL);
        if !output_done
            && tokio::time::timeout(OUTPUT_DRAIN, &mut output)
                .await
                .is_err()
        {
            tracing::warn!(%attempt, "trial output did not close after its exit; ignoring the rest");
        }
        let status = status.map_err(|error| format!("waiting for the process failed: {error}"));
        let _ = actor.cast(TrialMsg::Exited(status));
    });
    Ok((group, watcher))
}
