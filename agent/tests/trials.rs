//! AgentRoot and Trial actors running real child processes, driven by coordinator commands
//! the way the link delivers them; the outbox is what the link would send upstream.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_agent::root::{AgentMsg, AgentRoot, RootArgs};
use flotilla_protocol::messages::{
    AgentMessage, Command, CoordinatorCommand, StartTrial, StopReason, TrialOutcome,
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
    let dir = tempfile::tempdir().expect("tempdir");
    let (outbox, receiver) = mpsc::unbounded_channel();
    let metrics = flotilla_agent::metrics::AgentMetrics::new();
    let artifacts =
        flotilla_train::ArtifactStore::open(dir.path().join("artifacts").to_str().expect("utf-8"))
            .expect("artifact store");
    // Not serving (no endpoint): assignments are ignored.
    let serving = flotilla_agent::serving::Serving::new(
        None,
        artifacts.clone(),
        outbox.clone(),
        metrics.clone(),
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
