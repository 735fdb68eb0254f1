//! AgentRoot and Trial actors running real child processes, driven by coordinator commands
//! the way the link delivers them; the outbox is what the link would send upstream.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_agent::root::{AgentMsg, AgentRoot, RootArgs};
use flotilla_protocol::messages::{
    AgentMessage, CheckpointRef, Command, CoordinatorCommand, StartAttempt, StartTrial, StopReason,
    TrialOutcome,
};
use flotilla_protocol::spec::TrialSpec;
use flotilla_protocol::{AttemptId, Epoch, ParamValue, SweepId, TrialId};
use ractor::{Actor, ActorRef};
use tokio::sync::mpsc;

struct Harness {
    root: ActorRef<AgentMsg>,
    outbox: mpsc::UnboundedReceiver<AgentMessage>,
    _dir: tempfile::TempDir,
}

async fn harness(slots: u32, stop_grace: Duration) -> Harness {
    harness_with(
        slots,
        stop_grace,
        &[],
        flotilla_agent::DEFAULT_CHECKPOINT_MAX_BYTES,
    )
    .await
}

/// An agent with these GPU indices and this limit on command-trial checkpoints.
async fn harness_with(
    slots: u32,
    stop_grace: Duration,
    gpus: &[u32],
    checkpoint_max_bytes: u64,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let (outbox, receiver) = mpsc::unbounded_channel();
    let metrics = flotilla_agent::metrics::AgentMetrics::new();
    let artifacts =
        flotilla_train::ArtifactStore::open(dir.path().join("artifacts").to_str().expect("utf-8"))
            .expect("artifact store");
    // Not serving (no endpoint): assignments are ignored.
    let pool = flotilla_agent::gpus::GpuPool::new(gpus);
    let serving = flotilla_agent::serving::Serving::new(
        None,
        artifacts.clone(),
        dir.path(),
        outbox.clone(),
        metrics.clone(),
        pool.clone(),
        tokio_util::sync::CancellationToken::new(),
    );
    let args = RootArgs {
        slots,
        outbox,
        checkpoint_root: dir.path().join("checkpoints"),
        stop_grace,
        trainer_env: flotilla_agent::trial::TrainerEnv {
            artifacts,
            device: flotilla_train::DeviceChoice::Cpu,
            data_dir: dir.path().to_path_buf(),
            leases: None,
        },
        metrics,
        serving,
        gpus: pool,
        checkpoint_max_bytes,
    };
    let (root, _) = Actor::spawn(None, AgentRoot, args)
        .await
        .expect("agent root");
    Harness {
        root,
        outbox: receiver,
        _dir: dir,
    }
}

fn attempt(number: u32) -> AttemptId {
    AttemptId {
        trial: TrialId {
            sweep: SweepId(1),
            number,
        },
        attempt: 0,
    }
}

fn shell(number: u32, script: &str, params: BTreeMap<String, ParamValue>) -> Command {
    Command::StartTrial(Box::new(StartTrial {
        attempt: attempt(number),
        params,
        trial: TrialSpec {
            command: Some("sh".into()),
            args: vec!["-c".into(), script.into()],
            ..TrialSpec::default()
        },
        resume_from: None,
        slots: 1,
    }))
}

impl Harness {
    fn send(&self, epoch: u64, command: Command) {
        self.root
            .cast(AgentMsg::Command(CoordinatorCommand {
                epoch: Epoch(epoch),
                command,
            }))
            .expect("cast");
    }

    /// The next upstream message that is not a heartbeat.
    async fn next(&mut self, within: Duration) -> AgentMessage {
        tokio::time::timeout(within, async {
            loop {
                match self.outbox.recv().await.expect("outbox open") {
                    AgentMessage::Heartbeat(_) => continue,
                    message => return message,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no agent message within {within:?}"))
    }

    async fn finished(&mut self, within: Duration) -> (AttemptId, TrialOutcome) {
        loop {
            if let AgentMessage::TrialFinished { attempt, outcome } = self.next(within).await {
                return (attempt, outcome);
            }
        }
    }
}

fn process_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn a_background_grandchild_neither_delays_the_outcome_nor_outlives_the_trial() {
    let mut agent = harness(2, Duration::from_secs(5)).await;
    let pid_file = agent._dir.path().join("grandchild.pid");
    let script = format!(
        "sleep 60 & echo $! > {}; echo '@flotilla step=0 loss=0.25'; exit 0",
        pid_file.display()
    );
    let started = std::time::Instant::now();
    agent.send(1, shell(0, &script, BTreeMap::new()));
    let (finished, outcome) = agent.finished(Duration::from_secs(10)).await;
    assert_eq!(finished, attempt(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the outcome waited {:?} for a grandchild holding stdout",
        started.elapsed()
    );
    match outcome {
        TrialOutcome::Succeeded { metrics, .. } => assert_eq!(metrics["loss"], 0.25),
        other => panic!("expected success, got {other:?}"),
    }
    let grandchild: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while process_alive(grandchild) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !process_alive(grandchild),
        "the grandchild {grandchild} outlived its trial"
    );
}

#[tokio::test]
async fn parameters_reach_the_program_exactly() {
    let mut agent = harness(1, Duration::from_secs(5)).await;
    let value = 0.000_123_456_789_012_345_6;
    let params = BTreeMap::from([
        ("lr".to_string(), ParamValue::Float(value)),
        ("layers".to_string(), ParamValue::Int(3)),
    ]);
    let script = r#"echo "@flotilla lr=$FLOTILLA_PARAM_LR layers=$FLOTILLA_PARAM_LAYERS""#;
    agent.send(1, shell(0, script, params));
    match agent.finished(Duration::from_secs(10)).await.1 {
        TrialOutcome::Succeeded { metrics, .. } => {
            assert_eq!(
                metrics["lr"], value,
                "no rounding on the way to the program"
            );
            assert_eq!(metrics["layers"], 3.0);
        }
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test]
async fn stop_escalates_to_sigkill_for_a_program_that_ignores_sigterm() {
    let mut agent = harness(1, Duration::from_millis(300)).await;
    agent.send(
        1,
        shell(
            0,
            "trap '' TERM; sleep 30 & wait; sleep 30",
            BTreeMap::new(),
        ),
    );
    assert!(matches!(
        agent.next(Duration::from_secs(5)).await,
        AgentMessage::TrialStarted { .. }
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped_at = std::time::Instant::now();
    agent.send(
        1,
        Command::StopTrial {
            attempt: attempt(0),
            reason: StopReason::Cancelled,
        },
    );
    let (_, outcome) = agent.finished(Duration::from_secs(10)).await;
    assert!(
        matches!(
            outcome,
            TrialOutcome::Stopped {
                reason: StopReason::Cancelled,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn commands_from_an_older_epoch_are_rejected() {
    let mut agent = harness(2, Duration::from_secs(5)).await;
    agent.send(5, shell(0, "exit 0", BTreeMap::new()));
    agent.finished(Duration::from_secs(10)).await;
    agent.send(4, shell(1, "exit 0", BTreeMap::new()));
    match agent.next(Duration::from_secs(5)).await {
        AgentMessage::CommandRejected {
            attempt: rejected,
            reason,
        } => {
            assert_eq!(rejected, Some(attempt(1)));
            assert!(reason.contains("e4") && reason.contains("e5"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_draining_agent_says_so_and_takes_no_new_trials() {
    let mut agent = harness(2, Duration::from_millis(500)).await;
    agent.send(1, shell(0, "sleep 30", BTreeMap::new()));
    assert!(matches!(
        agent.next(Duration::from_secs(5)).await,
        AgentMessage::TrialStarted { .. }
    ));
    let root = agent.root.clone();
    let drain = tokio::spawn(async move {
        root.call(AgentMsg::Drain, Some(Duration::from_secs(10)))
            .await
    });
    assert!(matches!(
        agent.next(Duration::from_secs(5)).await,
        AgentMessage::Draining
    ));
    let (_, outcome) = agent.finished(Duration::from_secs(10)).await;
    assert!(
        matches!(
            outcome,
            TrialOutcome::Stopped {
                reason: StopReason::AgentShutdown,
                ..
            }
        ),
        "{outcome:?}"
    );
    drain.await.expect("join").expect("drained");
    // Drained, and still draining: a new trial is refused, not started.
    agent.send(1, shell(1, "exit 0", BTreeMap::new()));
    assert!(matches!(
        agent.next(Duration::from_secs(5)).await,
        AgentMessage::CommandRejected { .. }
    ));
}

#[test]
fn the_agent_id_is_kept_in_the_work_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = flotilla_agent::stable_agent_id(dir.path()).expect("id");
    let again = flotilla_agent::stable_agent_id(dir.path()).expect("id");
    assert_eq!(first, again);
    let other = tempfile::tempdir().expect("tempdir");
    assert_ne!(
        first,
        flotilla_agent::stable_agent_id(other.path()).expect("id")
    );
}

fn lstm_trial(number: u32, attempt_number: u32, resume_from: Option<String>) -> Command {
    let settings: BTreeMap<String, ParamValue> = [
        ("samples", ParamValue::Int(600)),
        ("seq_len", ParamValue::Int(16)),
        ("features", ParamValue::Int(2)),
        ("hidden_size", ParamValue::Int(8)),
        ("num_heads", ParamValue::Int(2)),
        ("batch_size", ParamValue::Int(8)),
        ("checkpoint_every", ParamValue::Int(0)),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    let mut id = attempt(number);
    id.attempt = attempt_number;
    Command::StartTrial(Box::new(StartTrial {
        attempt: id,
        params: [("epochs".to_string(), ParamValue::Int(3))]
            .into_iter()
            .collect(),
        trial: TrialSpec {
            trainer: Some("lstm_classifier".into()),
            settings,
            ..TrialSpec::default()
        },
        resume_from,
        slots: 1,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_trainer_checkpoints_and_its_next_attempt_resumes_to_the_end() {
    let mut agent = harness(1, Duration::from_secs(5)).await;
    agent.send(1, lstm_trial(0, 0, None));
    // Wait until the first epoch is reported, then drain the trial.
    loop {
        match agent.next(Duration::from_secs(60)).await {
            AgentMessage::TrialMetrics { points, .. } if points.iter().any(|p| p.step >= 1) => {
                break;
            }
            AgentMessage::TrialFinished { outcome, .. } => panic!("finished early: {outcome:?}"),
            _ => {}
        }
    }
    agent.send(
        1,
        Command::StopTrial {
            attempt: attempt(0),
            reason: StopReason::AgentShutdown,
        },
    );
    let mut checkpoint = None;
    let outcome = loop {
        match agent.next(Duration::from_secs(30)).await {
            AgentMessage::TrialCheckpoint {
                attempt: from,
                checkpoint: written,
            } => {
                assert_eq!(from, attempt(0));
                checkpoint = Some(written);
            }
            AgentMessage::TrialFinished { outcome, .. } => break outcome,
            _ => {}
        }
    };
    assert!(
        matches!(
            outcome,
            TrialOutcome::Stopped {
                reason: StopReason::AgentShutdown,
                ..
            }
        ),
        "{outcome:?}"
    );
    let checkpoint = checkpoint.expect("a drain writes a checkpoint first");
    assert!(
        checkpoint.step > 0 && checkpoint.uri.starts_with("file:///"),
        "{checkpoint:?}"
    );

    // The next attempt continues from it and runs to the end.
    agent.send(1, lstm_trial(0, 1, Some(checkpoint.uri.clone())));
    let mut steps = Vec::new();
    let outcome = loop {
        match agent.next(Duration::from_secs(60)).await {
            AgentMessage::TrialMetrics { points, .. } => {
                steps.extend(points.iter().map(|p| p.step))
            }
            AgentMessage::TrialFinished { outcome, .. } => break outcome,
            _ => {}
        }
    };
    match outcome {
        TrialOutcome::Succeeded { metrics, .. } => {
            assert_eq!(metrics["epoch"], 3.0);
            assert!(metrics.contains_key("confusion_1_1"), "{metrics:?}");
        }
        other => panic!("expected success, got {other:?}"),
    }
    // The resumed attempt reports only the epochs it ran after the checkpoint.
    assert!(
        !steps.is_empty() && steps.iter().all(|step| u64::from(checkpoint.epoch) < *step),
        "{steps:?} after {checkpoint:?}"
    );
}

/// A command trial of `gpus` GPUs (attempt `attempt_number`), resuming from `resume_from`.
fn command_trial(
    number: u32,
    attempt_number: u32,
    script: &str,
    gpus: u32,
    resume_from: Option<String>,
) -> Command {
    let mut id = attempt(number);
    id.attempt = attempt_number;
    Command::StartAttempt(Box::new(StartAttempt {
        start: StartTrial {
            attempt: id,
            params: BTreeMap::new(),
            trial: TrialSpec {
                command: Some("sh".into()),
                args: vec!["-c".into(), script.into()],
                ..TrialSpec::default()
            },
            resume_from,
            slots: 1,
        },
        gpus,
    }))
}

/// Messages up to the attempt's outcome: its checkpoints and the outcome.
async fn checkpoints_and_outcome(
    agent: &mut Harness,
    of: AttemptId,
) -> (Vec<CheckpointRef>, TrialOutcome) {
    let mut checkpoints = Vec::new();
    loop {
        match agent.next(Duration::from_secs(30)).await {
            AgentMessage::TrialCheckpoint {
                attempt,
                checkpoint,
            } if attempt == of => checkpoints.push(checkpoint),
            AgentMessage::TrialFinished { attempt, outcome } if attempt == of => {
                return (checkpoints, outcome);
            }
            _ => {}
        }
    }
}

/// A line a trial writes to `path`, once it is there.
async fn written(path: &std::path::Path) -> String {
    for _ in 0..400 {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never written", path.display());
}

#[tokio::test]
async fn each_command_trial_sees_only_the_gpus_it_holds() {
    let mut agent = harness_with(3, Duration::from_secs(5), &[0, 1], 1 << 20).await;
    let out = agent._dir.path().to_path_buf();
    let report = |name: &str| {
        format!(
            "echo \"$CUDA_VISIBLE_DEVICES|$FLOTILLA_GPUS|$CUDA_DEVICE_ORDER\" > {}/{name}; \
             while [ ! -e {}/release ]; do sleep 0.05; done",
            out.display(),
            out.display()
        )
    };
    agent.send(1, command_trial(0, 0, &report("a"), 1, None));
    agent.send(1, command_trial(1, 0, &report("b"), 1, None));
    // Both GPUs are held: a third 1-GPU trial is refused, though a slot is free.
    agent.send(1, command_trial(2, 0, &report("c"), 1, None));
    loop {
        match agent.next(Duration::from_secs(10)).await {
            AgentMessage::CommandRejected {
                attempt: Some(refused),
                reason,
            } => {
                assert_eq!(refused, attempt(2));
                assert!(
                    reason.contains("no free GPU") && reason.contains("0 of 2 free"),
                    "{reason}"
                );
                break;
            }
            AgentMessage::TrialFinished { outcome, .. } => panic!("finished early: {outcome:?}"),
            _ => {}
        }
    }
    let mut pair = [written(&out.join("a")).await, written(&out.join("b")).await];
    pair.sort();
    assert_eq!(pair, ["0|0|PCI_BUS_ID", "1|1|PCI_BUS_ID"]);
    std::fs::write(out.join("release"), b"").expect("release");
    for _ in 0..2 {
        let (_, outcome) = agent.finished(Duration::from_secs(10)).await;
        assert!(
            matches!(outcome, TrialOutcome::Succeeded { .. }),
            "{outcome:?}"
        );
    }
    // With both free again, a 2-GPU trial holds both; a 0-GPU trial on this agent sees none.
    std::fs::remove_file(out.join("release")).expect("rm");
    agent.send(1, command_trial(3, 0, &report("d"), 2, None));
    agent.send(1, command_trial(4, 0, &report("e"), 0, None));
    assert_eq!(written(&out.join("d")).await, "0,1|0,1|PCI_BUS_ID");
    assert_eq!(written(&out.join("e")).await, "||PCI_BUS_ID");
    std::fs::write(out.join("release"), b"").expect("release");
    for _ in 0..2 {
        let (_, outcome) = agent.finished(Duration::from_secs(10)).await;
        assert!(
            matches!(outcome, TrialOutcome::Succeeded { .. }),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn a_committed_directory_is_uploaded_and_restored_for_the_next_attempt() {
    let mut agent = harness_with(1, Duration::from_secs(5), &[], 1 << 20).await;
    // Two commits; the second's files are what the next attempt gets back. Between them the
    // script waits for the take (the directory's inode changes), as the trial contract asks
    // (docs/trials.md) and `flotilla_trial.commit()` does.
    let script = "D=\"$FLOTILLA_CHECKPOINT_DIR\"; \
                  echo '@flotilla step=1 epoch=1 loss=0.5'; \
                  echo one > \"$D/state.txt\"; i=$(stat -c %i \"$D\"); echo '@flotilla checkpoint'; \
                  while j=$(stat -c %i \"$D\" 2>/dev/null); [ -z \"$j\" ] || [ \"$j\" = \"$i\" ]; do sleep 0.01; done; \
                  echo '@flotilla step=2 epoch=2 loss=0.25'; \
                  mkdir \"$D/sub\"; echo two > \"$D/sub/state.txt\"; \
                  echo '@flotilla checkpoint'";
    agent.send(1, command_trial(0, 0, script, 0, None));
    let (checkpoints, outcome) = checkpoints_and_outcome(&mut agent, attempt(0)).await;
    assert!(
        matches!(outcome, TrialOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let latest = checkpoints.last().cloned().expect("checkpoints uploaded");
    assert_eq!((latest.step, latest.epoch, latest.attempt), (2, 2, 0));
    assert!(
        latest.uri.ends_with(".tar") && latest.uri.contains("/checkpoints/s1-t0/"),
        "{latest:?}"
    );

    // The next attempt finds it in FLOTILLA_RESUME_FROM, with its step and epoch.
    let out = agent._dir.path().join("resumed");
    let script = format!(
        "cat \"$FLOTILLA_RESUME_FROM/sub/state.txt\" > {out}; \
         echo \"$FLOTILLA_RESUME_STEP $FLOTILLA_RESUME_EPOCH\" >> {out}; \
         ls -A \"$FLOTILLA_RESUME_FROM\" >> {out}; ls -A \"$FLOTILLA_CHECKPOINT_DIR\" | wc -l >> {out}",
        out = out.display()
    );
    agent.send(1, command_trial(0, 1, &script, 0, Some(latest.uri.clone())));
    let mut id = attempt(0);
    id.attempt = 1;
    let (_, outcome) = checkpoints_and_outcome(&mut agent, id).await;
    assert!(
        matches!(outcome, TrialOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let seen = std::fs::read_to_string(&out).expect("the resumed attempt wrote");
    assert_eq!(
        seen, "two\n2 2\nsub\n0\n",
        "resume folder holds only the checkpoint's files"
    );
}

#[tokio::test]
async fn bad_commits_are_named_and_nothing_half_made_is_uploaded() {
    let mut agent = harness_with(1, Duration::from_secs(5), &[], 1024).await;
    // No files: a warning, and the trial goes on to succeed with no checkpoint.
    agent.send(
        1,
        command_trial(
            0,
            0,
            "echo '@flotilla checkpoint'; echo '@flotilla loss=1'",
            0,
            None,
        ),
    );
    let (checkpoints, outcome) = checkpoints_and_outcome(&mut agent, attempt(0)).await;
    assert!(checkpoints.is_empty());
    assert!(
        matches!(outcome, TrialOutcome::Succeeded { .. }),
        "{outcome:?}"
    );

    // Over the limit: the trial fails, saying so, and nothing is uploaded.
    let big = "head -c 4096 /dev/zero > \"$FLOTILLA_CHECKPOINT_DIR/w.bin\"; \
               echo '@flotilla checkpoint'; sleep 30";
    agent.send(1, command_trial(1, 0, big, 0, None));
    let (checkpoints, outcome) = checkpoints_and_outcome(&mut agent, attempt(1)).await;
    assert!(checkpoints.is_empty());
    match outcome {
        TrialOutcome::Failed { message, .. } => {
            assert!(
                message.contains("--checkpoint-max-bytes") && message.contains("4096"),
                "{message}"
            )
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    // Something that cannot be read (a pipe): the trial fails naming it.
    let pipe = "mkfifo \"$FLOTILLA_CHECKPOINT_DIR/fifo\"; echo '@flotilla checkpoint'; sleep 30";
    agent.send(1, command_trial(2, 0, pipe, 0, None));
    let (checkpoints, outcome) = checkpoints_and_outcome(&mut agent, attempt(2)).await;
    assert!(checkpoints.is_empty());
    match outcome {
        TrialOutcome::Failed { message, .. } => {
            assert!(
                message.contains("fifo") && message.contains("pipe"),
                "{message}"
            )
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let stored = agent._dir.path().join("artifacts/checkpoints");
    let objects = std::fs::read_dir(&stored)
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert_eq!(objects, 0, "nothing was written to the store");
}

#[tokio::test]
async fn a_drained_command_trial_commits_on_sigterm_before_it_is_handed_back() {
    let mut agent = harness_with(1, Duration::from_secs(5), &[], 1 << 20).await;
    // Checkpoints only when told to stop, as a program using the SIGTERM hook does.
    let script = "trap 'echo final > \"$FLOTILLA_CHECKPOINT_DIR/state.txt\"; \
                  echo \"@flotilla checkpoint step=7 epoch=3\"; exit 0' TERM; \
                  echo '@flotilla step=0 loss=1'; while true; do sleep 0.05; done";
    agent.send(1, command_trial(0, 0, script, 0, None));
    loop {
        if let AgentMessage::TrialMetrics { .. } = agent.next(Duration::from_secs(10)).await {
            break;
        }
    }
    agent.send(1, Command::Drain);
    let (checkpoints, outcome) = checkpoints_and_outcome(&mut agent, attempt(0)).await;
    assert!(
        matches!(
            outcome,
            TrialOutcome::Stopped {
                reason: StopReason::Preempted,
                ..
            }
        ),
        "{outcome:?}"
    );
    let [checkpoint] = checkpoints.as_slice() else {
        panic!("one final checkpoint, uploaded before the outcome: {checkpoints:?}");
    };
    assert_eq!((checkpoint.step, checkpoint.epoch), (7, 3));
}
