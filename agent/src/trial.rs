//! Trial: one actor per running attempt of a command trial.
//!
//! Place in the tree: child of AgentRoot. It starts the user's program in its own process
//! group, with the parameters in the environment, and owns a task that reads its output
//! (metric lines → `TrialMetrics`) and waits for its exit. Stop = SIGTERM to the group, then
//! SIGKILL after the grace period; on exit the whole group is killed so no grandchild
//! outlives the trial. The actor reports the outcome to AgentRoot and stops.
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

use crate::leases::{CheckpointLeases, Ownership};
use crate::metric_line;
use crate::metrics::{AgentMetrics, TrialSeries};
use crate::root::AgentMsg;

pub enum TrialMsg {
    Metric {
        step: Option<u64>,
        values: Metrics,
    },
    /// A built-in trainer's thread ended.
    TrainerDone(Result<Finish, String>),
    /// The checkpoint lease was taken (with the trial's latest checkpoint) or not.
    Owned(Result<(Ownership, Option<CheckpointRef>), String>),
    StderrTail(String),
    Exited(Result<ExitStatus, String>),
    Stop(StopReason),
    ForceKill,
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
            spawn_process(&args, &myself).map(|(process_group, watcher)| {
                state.process_group = Some(process_group);
                state.watcher = Some(watcher);
            })
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
                    Err(message) => {
                        tracing::warn!(attempt = %state.attempt, %message, "no checkpoint lease");
                        state.report(TrialOutcome::error(message, 0));
                        myself.stop(None);
                    }
                }
            }
            TrialMsg::Stop(reason) if state.waiting.is_some() => {
                if let Some((_, task)) = state.waiting.take() {
                    task.abort();
                }
                state.stop_reason = Some(reason);
                state.report(TrialOutcome::Stopped {
                    reason,
                    duration_ms: state.started.elapsed().as_millis() as u64,
                });
                myself.stop(None);
            }
            TrialMsg::Stop(reason) if state.trainer.is_some() => {
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
                if state.stop_reason.is_none() {
                    state.stop_reason = Some(reason);
                    state.signal(Signal::SIGTERM);
                    myself.send_after(state.stop_grace, || TrialMsg::ForceKill);
                }
            }
            TrialMsg::ForceKill => state.signal(Signal::SIGKILL),
            TrialMsg::Exited(status) => {
                let outcome = state.outcome(status);
                state.report(outcome);
                state.process_group = None;
                myself.stop(None);
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

    fn outcome(&self, status: Result<ExitStatus, String>) -> TrialOutcome {
        use std::os::unix::process::ExitStatusExt;
        let duration_ms = self.started.elapsed().as_millis() as u64;
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
        device: args.trainer_env.device,
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

/// The environment a command trial sees.
pub fn trial_environment(
    start: &StartTrial,
    checkpoint_dir: &std::path::Path,
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
    if let Some(resume) = &start.resume_from {
        environment.push(("FLOTILLA_RESUME_FROM".to_string(), resume.clone()));
    }
    environment
}

/// How long output may keep flowing after the program exited (its group is killed first).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

fn spawn_process(
    args: &TrialArgs,
    myself: &ActorRef<TrialMsg>,
) -> Result<(Pid, tokio::task::JoinHandle<()>), String> {
    let start = &args.start;
    let program = start
        .trial
        .command
        .clone()
        .ok_or("this agent runs command trials only; the trial names no command")?;
    let checkpoint_dir = args
        .checkpoint_root
        .join(start.attempt.trial.sweep.to_string())
        .join(start.attempt.trial.to_string());
    std::fs::create_dir_all(&checkpoint_dir)
        .map_err(|error| format!("cannot create {}: {error}", checkpoint_dir.display()))?;
    let mut command = tokio::process::Command::new(&program);
    command
        .args(
            start
                .trial
                .args
                .iter()
                .map(|arg| substitute(arg, &start.params)),
        )
        .envs(trial_environment(start, &checkpoint_dir))
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
            while let Ok(Some(line)) = lines.next_line().await {
                match metric_line::parse(&line) {
                    Some(Ok(metric)) => {
                        let _ = stdout_actor.cast(TrialMsg::Metric {
                            step: metric.step,
                            values: metric.values,
                        });
                    }
                    Some(Err(error)) if !warned => {
                        warned = true;
                        tracing::warn!(%attempt, %error, "ignoring a malformed metric line (further ones are ignored silently)");
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
