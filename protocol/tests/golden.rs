//! The wire encoding is a contract: these bytes must not change by accident.
//!
//! Every message variant is encoded from a fixed sample and compared with its pinned hex.
//! A deliberate change (a new protocol version) updates the table; run with
//! `FLOTILLA_PRINT_GOLDEN=1` to print the current encodings. Round-trip property tests and
//! garbage/oversized inputs check that decoding never panics or over-allocates.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_protocol::codec::{self, MAX_FRAME_BYTES};
use flotilla_protocol::framing::{self, FrameError};
use flotilla_protocol::messages::*;
use flotilla_protocol::models::*;
use flotilla_protocol::spec::{
    AlgorithmSpec, Budget, Constraint, ConstraintOp, Direction, FieldProblem, Goal, Objective,
    ParamSpec, PhaseSpec, Resources, RetryPolicy, Scheduling, ServingSpec, SweepSpec, TrialSpec,
    When,
};
use flotilla_protocol::{AgentId, AttemptId, Epoch, ParamValue, SweepId, TrialId};
use flotilla_rollout::{Arm, Decision, Evidence, Metric, Pair, Policy, Verdict};
use proptest::prelude::*;

fn attempt() -> AttemptId {
    AttemptId {
        trial: TrialId {
            sweep: SweepId(3),
            number: 7,
        },
        attempt: 1,
    }
}

fn params() -> Params {
    BTreeMap::from([
        ("lr".to_string(), ParamValue::Float(0.01)),
        ("opt".to_string(), ParamValue::Str("adam".into())),
    ])
}

fn metrics() -> Metrics {
    BTreeMap::from([("loss".to_string(), 0.5)])
}

fn spec() -> SweepSpec {
    SweepSpec {
        name: "g".into(),
        objective: Objective {
            metric: "loss".into(),
            direction: Direction::Minimize,
            also: Vec::new(),
        },
        constraints: vec![Constraint {
            metric: "loss".into(),
            op: ConstraintOp::AtMost,
            threshold: 1.0,
        }],
        space: BTreeMap::from([
            ("lr".to_string(), ParamSpec::log_float(1e-4, 1e-1)),
            ("n".to_string(), ParamSpec::int(1, 3)),
        ]),
        algorithm: AlgorithmSpec::default(),
        budget: Budget {
            max_trials: 4,
            max_parallel: 2,
            max_duration: Some(Duration::from_secs(60)),
        },
        trial: TrialSpec {
            command: Some("true".into()),
            metrics: vec!["loss".into()],
            ..TrialSpec::default()
        },
        resources: Resources::default(),
        retries: RetryPolicy::default(),
        early_stopping: None,
        phases: vec![PhaseSpec {
            name: "p".into(),
            space: BTreeMap::from([("m".to_string(), ParamSpec::float(0.0, 1.0))]),
            algorithm: None,
            max_trials: 2,
            max_parallel: Some(1),
        }],
        serving: None,
        warm_start: Vec::new(),
        scheduling: Scheduling::default(),
    }
}

fn serving() -> ServingSpec {
    ServingSpec {
        command: "python3".into(),
        args: vec!["serve.py".into()],
        env: BTreeMap::from([("K".to_string(), "v".to_string())]),
        workdir: None,
        health: "/healthz".into(),
        ready_timeout: Duration::from_secs(30),
        replicas: 2,
        slots: 1,
        gpus: 1,
    }
}

fn record() -> TrialRecord {
    TrialRecord {
        id: attempt().trial,
        attempt: 1,
        params: params(),
        state: TrialState::Succeeded,
        metrics: metrics(),
        objective: Some(0.5),
        feasible: true,
        agent: Some(AgentId("a1".into())),
        failures: 0,
        started_ms: Some(1000),
        finished_ms: Some(2000),
        duration_ms: Some(900),
        message: None,
        dispatch_latency_us: Some(250),
        checkpoint: Some(checkpoint()),
        phase: 1,
        rungs: vec![0.25],
        reschedules: 1,
        lost_on: vec![AgentId("a0".into())],
        seq: 9,
    }
}

fn checkpoint() -> CheckpointRef {
    CheckpointRef {
        uri: "file:///ckpt/s3-t7/a0001-s0000000040-00000000000000ab.ckpt".into(),
        attempt: 1,
        step: 40,
        epoch: 2,
        bytes: 4096,
    }
}

fn summary() -> SweepSummary {
    SweepSummary {
        id: SweepId(3),
        name: "g".into(),
        state: SweepState::Completed,
        objective_metric: "loss".into(),
        direction: Direction::Minimize,
        max_trials: 4,
        counts: TrialCounts {
            pending: 0,
            running: 0,
            succeeded: 4,
            failed: 0,
            stopped: 0,
            paused: 0,
        },
        best: Some(record()),
        created_ms: 1,
        finished_ms: Some(2),
        phases: vec![phase_summary()],
        message: Some("m".into()),
    }
}

fn phase_summary() -> PhaseSummary {
    PhaseSummary {
        name: "p".into(),
        max_trials: 4,
        trials: 4,
        done: true,
        winner: Some(7),
    }
}

fn point() -> MetricPoint {
    MetricPoint {
        step: 2,
        values: metrics(),
        elapsed_ms: 40,
    }
}

fn start() -> StartTrial {
    StartTrial {
        attempt: attempt(),
        params: params(),
        trial: spec().trial,
        resume_from: None,
        slots: 1,
    }
}

/// (name, encoding) of one sample per message variant.
fn model_ref() -> ModelRef {
    ModelRef {
        name: "m".into(),
        version: SemVer::new(1, 2, 3),
    }
}

fn artifact() -> Artifact {
    Artifact {
        uri: "u".into(),
        sha256: "ab".into(),
        bytes: 9,
    }
}

fn traffic() -> Pair {
    let mut arm = Arm::default();
    arm.record(Duration::from_millis(5), false);
    arm.feedback(true);
    arm.score(0.5, 0.25);
    Pair {
        baseline: arm,
        canary: Arm::default(),
    }
}

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let encode = |value: &dyn erased::Encode| value.encode();
    vec![
        (
            "Hello",
            encode(&Hello {
                min_version: 1,
                max_version: 1,
                role: Role::Agent,
                peer_name: "a1".into(),
            }),
        ),
        (
            "HelloReply::Welcome",
            encode(&HelloReply::Welcome(Welcome {
                version: 1,
                epoch: Epoch(5),
                coordinator: "c".into(),
            })),
        ),
        (
            "HelloReply::Refused",
            encode(&HelloReply::Refused(Refusal {
                reason: RefusalReason::NotLeader {
                    leader: Some("x:1".into()),
                },
                message: "m".into(),
            })),
        ),
        (
            "AgentMessage::Register",
            encode(&AgentMessage::Register(Registration {
                agent_id: AgentId("a1".into()),
                hostname: "h".into(),
                slots: 2,
                gpus: 1,
                running: vec![attempt()],
                finished: vec![(
                    attempt(),
                    TrialOutcome::Succeeded {
                        metrics: metrics(),
                        duration_ms: 9,
                    },
                )],
                version: "0.1.0".into(),
            })),
        ),
        (
            "AgentMessage::Heartbeat",
            encode(&AgentMessage::Heartbeat(Heartbeat {
                running: vec![attempt()],
            })),
        ),
        (
            "AgentMessage::TrialStarted",
            encode(&AgentMessage::TrialStarted { attempt: attempt() }),
        ),
        (
            "AgentMessage::TrialMetrics",
            encode(&AgentMessage::TrialMetrics {
                attempt: attempt(),
                points: vec![point()],
            }),
        ),
        (
            "AgentMessage::TrialFinished(Failed)",
            encode(&AgentMessage::TrialFinished {
                attempt: attempt(),
                outcome: TrialOutcome::Failed {
                    exit_code: Some(2),
                    signal: None,
                    message: "boom".into(),
                    duration_ms: 3,
                },
            }),
        ),
        (
            "AgentMessage::TrialFinished(Stopped)",
            encode(&AgentMessage::TrialFinished {
                attempt: attempt(),
                outcome: TrialOutcome::Stopped {
                    reason: StopReason::AgentShutdown,
                    duration_ms: 3,
                },
            }),
        ),
        (
            "AgentMessage::CommandRejected",
            encode(&AgentMessage::CommandRejected {
                attempt: Some(attempt()),
                reason: "r".into(),
            }),
        ),
        ("AgentMessage::Draining", encode(&AgentMessage::Draining)),
        (
            "AgentMessage::TrialCheckpoint",
            encode(&AgentMessage::TrialCheckpoint {
                attempt: attempt(),
                checkpoint: checkpoint(),
            }),
        ),
        (
            "CoordinatorCommand::Registered",
            encode(&CoordinatorCommand {
                epoch: Epoch(5),
                command: Command::Registered {
                    heartbeat_interval_ms: 1000,
                    adopted: vec![attempt()],
                },
            }),
        ),
        (
            "CoordinatorCommand::StartTrial",
            encode(&CoordinatorCommand {
                epoch: Epoch(5),
                command: Command::StartTrial(Box::new(start())),
            }),
        ),
        (
            "CoordinatorCommand::StopTrial",
            encode(&CoordinatorCommand {
                epoch: Epoch(5),
                command: Command::StopTrial {
                    attempt: attempt(),
                    reason: StopReason::Cancelled,
                },
            }),
        ),
        (
            "ClientRequest::SubmitSweep",
            encode(&ClientRequest::SubmitSweep(Box::new(spec()))),
        ),
        (
            "ClientRequest::ListSweeps",
            encode(&ClientRequest::ListSweeps),
        ),
        (
            "ClientRequest::SweepStatus",
            encode(&ClientRequest::SweepStatus(SweepId(3))),
        ),
        (
            "ClientRequest::CancelSweep",
            encode(&ClientRequest::CancelSweep(SweepId(3))),
        ),
        (
            "ClientRequest::BestTrial",
            encode(&ClientRequest::BestTrial(SweepId(3))),
        ),
        (
            "ClientRequest::ListTrials",
            encode(&ClientRequest::ListTrials(SweepId(3))),
        ),
        (
            "ClientRequest::WatchSweep",
            encode(&ClientRequest::WatchSweep(SweepId(3))),
        ),
        (
            "ClientRequest::ListAgents",
            encode(&ClientRequest::ListAgents),
        ),
        (
            "ClientRequest::ClusterStatus",
            encode(&ClientRequest::ClusterStatus),
        ),
        (
            "ClientRequest::SweepDetail",
            encode(&ClientRequest::SweepDetail(SweepId(3))),
        ),
        (
            "ClientResponse::SweepSubmitted",
            encode(&ClientResponse::SweepSubmitted(summary())),
        ),
        (
            "ClientResponse::Best",
            encode(&ClientResponse::Best(Some(record()))),
        ),
        (
            "ClientResponse::Event(Started)",
            encode(&ClientResponse::Event(SweepEvent::TrialStarted {
                attempt: attempt(),
                agent: AgentId("a1".into()),
                params: params(),
            })),
        ),
        (
            "ClientResponse::Event(Metric)",
            encode(&ClientResponse::Event(SweepEvent::Metric {
                attempt: attempt(),
                point: point(),
            })),
        ),
        (
            "ClientResponse::Event(SweepFinished)",
            encode(&ClientResponse::Event(SweepEvent::SweepFinished(summary()))),
        ),
        (
            "ClientResponse::Event(TrialPaused)",
            encode(&ClientResponse::Event(SweepEvent::TrialPaused(record()))),
        ),
        (
            "ClientResponse::Event(PhaseFinished)",
            encode(&ClientResponse::Event(SweepEvent::PhaseFinished {
                phase: phase_summary(),
                winner: Some(record()),
            })),
        ),
        (
            "ClientResponse::Agents",
            encode(&ClientResponse::Agents(vec![AgentInfo {
                id: AgentId("a1".into()),
                hostname: "h".into(),
                slots: 2,
                busy_slots: 1,
                gpus: 0,
                connected: true,
                last_seen_ms_ago: 10,
                running: vec![attempt()],
                draining: false,
                version: "0.1.0".into(),
            }])),
        ),
        (
            "ClientResponse::Error",
            encode(&ClientResponse::Error(ApiError {
                kind: ApiErrorKind::InvalidSweep,
                message: "bad".into(),
                problems: vec![FieldProblem {
                    path: "budget.max_trials".into(),
                    message: "must be at least 1".into(),
                }],
            })),
        ),
        (
            "ClientResponse::ClusterStatus",
            encode(&ClientResponse::ClusterStatus(ClusterStatus {
                leader: "c1".into(),
                leader_address: "10.0.0.1:7070".into(),
                epoch: Epoch(42),
                replicas: vec![ReplicaInfo {
                    address: "10.0.0.1:7070".into(),
                    leader: true,
                    campaign_revision: 42,
                }],
                store: "etcd http://10.0.0.9:2379".into(),
                etcd: vec![EtcdMemberStatus {
                    name: "e1".into(),
                    endpoint: "http://10.0.0.9:2379".into(),
                    healthy: true,
                    raft_leader: true,
                    version: "3.4.23".into(),
                    db_size_bytes: 4096,
                    error: None,
                }],
                agents: 3,
                slots: 6,
                busy_slots: 2,
            })),
        ),
        (
            "ClientResponse::SweepDetail",
            encode(&ClientResponse::SweepDetail(Box::new(SweepDetail {
                summary: summary(),
                spec: spec(),
                curves: vec![LearningCurve {
                    trial: 4,
                    metric: "loss".into(),
                    points: vec![(1, 0.5), (2, 0.25)],
                }],
            }))),
        ),
        ("ParamValue::Int", encode(&ParamValue::Int(-3))),
        ("ParamValue::Bool", encode(&ParamValue::Bool(true))),
        // Protocol 8.
        (
            "ClientRequest::AutoscaleStatus",
            encode(&ClientRequest::AutoscaleStatus),
        ),
        (
            "ClientRequest::Scale",
            encode(&ClientRequest::Scale(ScaleRequest {
                desired: Some(3),
                min: None,
                max: Some(4),
            })),
        ),
        (
            "ClientRequest::AgentAdmin",
            encode(&ClientRequest::AgentAdmin {
                agent: AgentId("i-0abc".into()),
                action: AgentAction::Cordon,
            }),
        ),
        (
            "ClientResponse::Autoscale",
            encode(&ClientResponse::Autoscale(AutoscaleStatus {
                provider: "aws:g".into(),
                min: 0,
                max: 4,
                desired: 2,
                actual: 1,
                demand_slots: 2,
                protected: vec!["i-1".into()],
                terminating: vec![],
                reason: "r".into(),
                error: None,
            })),
        ),
        (
            "CoordinatorCommand::Drain",
            encode(&CoordinatorCommand {
                epoch: Epoch(7),
                command: Command::Drain,
            }),
        ),
        (
            "StopReason::Preempted",
            encode(&Command::StopTrial {
                attempt: attempt(),
                reason: StopReason::Preempted,
            }),
        ),
        (
            "ApiErrorKind::InvalidRequest",
            encode(&ClientResponse::Error(ApiError {
                kind: ApiErrorKind::InvalidRequest,
                message: "m".into(),
                problems: vec![],
            })),
        ),
        // Protocol 9.
        (
            "AgentMessage::Serving",
            encode(&AgentMessage::Serving(ServingReport {
                endpoint: Some("http://h:1".into()),
                models: vec![
                    (model_ref(), ServeState::Ready),
                    (model_ref(), ServeState::Failed("f".into())),
                    (
                        model_ref(),
                        ServeState::Restarting {
                            restarts: 1,
                            reason: "r".into(),
                        },
                    ),
                ],
                gpus: BTreeMap::from([(model_ref(), vec![1])]),
            })),
        ),
        (
            "AgentMessage::ModelSealed",
            encode(&AgentMessage::ModelSealed {
                request: 5,
                result: Ok(artifact()),
            }),
        ),
        (
            "CoordinatorCommand::Serve",
            encode(&CoordinatorCommand {
                epoch: Epoch(7),
                command: Command::Serve(vec![
                    ServedModel {
                        model: model_ref(),
                        artifact: artifact(),
                        serving: None,
                    },
                    ServedModel {
                        model: model_ref(),
                        artifact: artifact(),
                        serving: Some(serving()),
                    },
                ]),
            }),
        ),
        (
            "CoordinatorCommand::SealModel",
            encode(&CoordinatorCommand {
                epoch: Epoch(7),
                command: Command::SealModel(SealRequest {
                    request: 5,
                    source: "s".into(),
                    key: "k".into(),
                    format: ArtifactFormat::CheckpointArchive,
                }),
            }),
        ),
        (
            "ClientRequest::RegisterModel",
            encode(&ClientRequest::RegisterModel(RegisterModel {
                name: "m".into(),
                version: Some(SemVer::new(1, 2, 3)),
                sweep: SweepId(3),
                trial: None,
                description: "d".into(),
                stage: ModelStage::Staging,
            })),
        ),
        (
            "ClientRequest::ListModels",
            encode(&ClientRequest::ListModels { name: None }),
        ),
        (
            "ClientRequest::SetModelStage",
            encode(&ClientRequest::SetModelStage {
                model: model_ref(),
                stage: ModelStage::Production,
            }),
        ),
        (
            "ClientRequest::StartRollout",
            encode(&ClientRequest::StartRollout(StartRollout {
                model: "m".into(),
                canary: SemVer::new(1, 3, 0),
                policy: Some(Policy::default()),
            })),
        ),
        (
            "ClientRequest::ListRollouts",
            encode(&ClientRequest::ListRollouts {
                model: Some("m".into()),
            }),
        ),
        (
            "ClientRequest::RolloutAction",
            encode(&ClientRequest::RolloutAction {
                model: "m".into(),
                action: RolloutAction::Abort,
            }),
        ),
        (
            "ClientRequest::RouterSync",
            encode(&ClientRequest::RouterSync(RouterReport {
                router: "r".into(),
                rollouts: vec![RolloutTraffic {
                    rollout: 1,
                    traffic: traffic(),
                }],
            })),
        ),
        (
            "ClientResponse::Models",
            encode(&ClientResponse::Models(vec![ModelVersion {
                name: "m".into(),
                version: SemVer::new(1, 2, 3),
                stage: ModelStage::Production,
                lineage: Lineage {
                    sweep: SweepId(3),
                    sweep_name: "s".into(),
                    trial: TrialId {
                        sweep: SweepId(3),
                        number: 4,
                    },
                    trainer: "lstm_classifier".into(),
                    params: params(),
                    metrics: metrics(),
                    objective: Some(0.5),
                    checkpoint: "c".into(),
                    epoch: 8,
                },
                artifact: artifact(),
                description: "d".into(),
                created_ms: 1,
                stage_changed_ms: 2,
                serving: Some(serving()),
            }])),
        ),
        (
            "ClientResponse::Rollouts",
            encode(&ClientResponse::Rollouts(vec![RolloutRecord {
                id: 1,
                model: "m".into(),
                baseline: SemVer::new(1, 2, 3),
                canary: SemVer::new(1, 3, 0),
                policy: Policy::default(),
                state: RolloutState::RolledBack,
                stage: 1,
                canary_weight: 0.0,
                started_ms: 1,
                stage_started_ms: 2,
                stage_paused_ms: 0,
                paused_since_ms: None,
                stage_start: Pair::default(),
                traffic: traffic(),
                decisions: vec![DecisionRecord {
                    at_ms: 3,
                    stage: 1,
                    weight: 0.1,
                    decision: Decision {
                        verdict: Verdict::Rollback {
                            metric: Some(Metric::ErrorRate),
                        },
                        reason: "r".into(),
                        evidence: vec![Evidence {
                            metric: Metric::ErrorRate,
                            baseline: Some(0.01),
                            canary: Some(0.2),
                            samples: (10, 20),
                            harm: Some(4.0),
                            safety: None,
                            harmful: true,
                            safe: false,
                        }],
                    },
                    by: "controller".into(),
                }],
                finished_ms: Some(4),
            }])),
        ),
        (
            "ClientResponse::Routes",
            encode(&ClientResponse::Routes(vec![Route {
                model: "m".into(),
                baseline: RouteTarget {
                    version: SemVer::new(1, 2, 3),
                    endpoints: vec!["http://h:1".into()],
                },
                canary: None,
                canary_weight: 0.0,
                rollout: None,
            }])),
        ),
        (
            "CoordinatorCommand::StartAttempt",
            encode(&CoordinatorCommand {
                epoch: Epoch(7),
                command: Command::StartAttempt(Box::new(StartAttempt {
                    start: start(),
                    gpus: 2,
                })),
            }),
        ),
        (
            "ClientRequest::AgentGpus",
            encode(&ClientRequest::AgentGpus),
        ),
        (
            "ClientResponse::AgentGpus",
            encode(&ClientResponse::AgentGpus(vec![AgentGpus {
                agent: AgentId("a".into()),
                gpus: 4,
                busy_gpus: 1,
            }])),
        ),
        (
            "ClientRequest::ModelPlacements",
            encode(&ClientRequest::ModelPlacements {
                name: Some("m".into()),
            }),
        ),
        (
            "ClientResponse::Placements",
            encode(&ClientResponse::Placements(vec![
                Placement {
                    model: model_ref(),
                    agent: AgentId("a".into()),
                    endpoint: Some("https://h:1".into()),
                    state: Some(ServeState::Restarting {
                        restarts: 2,
                        reason: "r".into(),
                    }),
                    gpus: vec![0, 3],
                },
                Placement {
                    model: model_ref(),
                    agent: AgentId("b".into()),
                    endpoint: None,
                    state: None,
                    gpus: vec![],
                },
            ])),
        ),
        // Protocol 13.
        (
            "ClientRequest::WatchSweepFrom",
            encode(&ClientRequest::WatchSweepFrom {
                sweep: SweepId(3),
                from: (7 << 32) + 5,
            }),
        ),
        (
            "ClientResponse::SequencedEvent",
            encode(&ClientResponse::SequencedEvent {
                seq: (7 << 32) + 6,
                event: SweepEvent::TrialFinished(record()),
            }),
        ),
        (
            "CoordinatorCommand::Alive",
            encode(&CoordinatorCommand {
                epoch: Epoch(7),
                command: Command::Alive,
            }),
        ),
        (
            "SweepSpec with [serving] (protocol 12)",
            encode(&SweepSpec {
                serving: Some(serving()),
                ..spec()
            }),
        ),
        (
            "SweepSpec with two objectives (protocol 16)",
            encode(&SweepSpec {
                objective: Objective {
                    metric: "loss".into(),
                    direction: Direction::Minimize,
                    also: vec![Goal {
                        metric: "latency_ms".into(),
                        direction: Direction::Maximize,
                    }],
                },
                ..spec()
            }),
        ),
        (
            "SweepSpec with conditions and a warm start (protocol 15)",
            encode(&SweepSpec {
                space: BTreeMap::from([
                    (
                        "momentum".to_string(),
                        ParamSpec::float(0.0, 0.99)
                            .when(When::new("opt", [ParamValue::Str("sgd".into())])),
                    ),
                    (
                        "opt".to_string(),
                        ParamSpec::categorical([
                            ParamValue::Str("adam".into()),
                            ParamValue::Str("sgd".into()),
                        ]),
                    ),
                ]),
                warm_start: vec!["s3".into()],
                ..spec()
            }),
        ),
        (
            "SweepSpec with [scheduling] (protocol 17)",
            encode(&SweepSpec {
                scheduling: Scheduling {
                    share: 2.0,
                    team: Some("vision".into()),
                },
                ..spec()
            }),
        ),
        (
            "Hello (router, protocol 11)",
            encode(&Hello {
                min_version: 1,
                max_version: 1,
                role: Role::Router,
                peer_name: "r".into(),
            }),
        ),
    ]
}

mod erased {
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            flotilla_protocol::codec::encode(self).expect("sample encodes")
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

include!("golden/table.rs");

#[test]
fn every_message_encodes_to_its_pinned_bytes() {
    let samples = samples();
    if std::env::var_os("FLOTILLA_PRINT_GOLDEN").is_some() {
        println!("const GOLDEN: &[(&str, &str)] = &[");
        for (name, bytes) in &samples {
            println!("    ({name:?}, {:?}),", hex(bytes));
        }
        println!("];");
    }
    assert_eq!(
        samples.len(),
        GOLDEN.len(),
        "every sample has a pinned encoding"
    );
    for ((name, bytes), (golden_name, golden_hex)) in samples.iter().zip(GOLDEN) {
        assert_eq!(name, golden_name);
        assert_eq!(&hex(bytes), golden_hex, "the encoding of {name} changed");
    }
}

#[test]
fn oversized_messages_are_refused_on_both_sides() {
    let huge = "x".repeat(MAX_FRAME_BYTES + 1);
    assert!(codec::encode(&huge).is_err());
    let mut buffer = Vec::new();
    assert!(matches!(
        framing::append_frame(&mut buffer, &huge),
        Err(FrameError::Codec(_) | FrameError::TooLarge { .. })
    ));
    // A payload whose inner length claims far more than the frame holds is an error, not an allocation.
    let lying = [0xfc, 0xff, 0xff, 0xff, 0x7f, 0x01];
    assert!(codec::decode::<Vec<String>>(&lying).is_err());
}

/// Optional parts left empty must still round-trip: a field skipped on encoding would shift
/// every field after it in a codec that is not self-describing.
#[test]
fn specs_with_empty_optional_parts_round_trip() {
    let mut plain = spec();
    plain.phases.clear();
    plain.constraints.clear();
    plain.early_stopping = None;
    plain.budget.max_duration = None;
    let request = ClientRequest::SubmitSweep(Box::new(plain));
    let bytes = codec::encode(&request).expect("encode");
    assert_eq!(
        codec::decode::<ClientRequest>(&bytes).expect("decode"),
        request
    );
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<ClientRequest>(&bytes);
        let _ = codec::decode::<AgentMessage>(&bytes);
        let _ = codec::decode::<CoordinatorCommand>(&bytes);
        let _ = codec::decode::<ClientResponse>(&bytes);
        let _ = codec::decode::<HelloReply>(&bytes);
    }

    #[test]
    fn metric_points_round_trip(step in any::<u64>(), elapsed in any::<u64>(), values in proptest::collection::btree_map("[a-z_]{1,12}", -1e12f64..1e12, 0..8)) {
        let message = AgentMessage::TrialMetrics { attempt: attempt(), points: vec![MetricPoint { step, values, elapsed_ms: elapsed }] };
        let bytes = codec::encode(&message).expect("encodes");
        prop_assert_eq!(codec::decode::<AgentMessage>(&bytes).expect("decodes"), message);
    }

    #[test]
    fn params_round_trip(float in -1e9f64..1e9, int in any::<i64>(), text in ".{0,20}", flag in any::<bool>()) {
        let params: Params = BTreeMap::from([
            ("a".to_string(), ParamValue::Float(float)),
            ("b".to_string(), ParamValue::Int(int)),
            ("c".to_string(), ParamValue::Str(text)),
            ("d".to_string(), ParamValue::Bool(flag)),
        ]);
        let message = CoordinatorCommand { epoch: Epoch(int.unsigned_abs()), command: Command::StartTrial(Box::new(StartTrial { params, ..start() })) };
        let bytes = codec::encode(&message).expect("encodes");
        prop_assert_eq!(codec::decode::<CoordinatorCommand>(&bytes).expect("decodes"), message);
    }
}

#[test]
fn only_the_current_attempt_moves_the_checkpoint_pointer_forward() {
    let at = |attempt, step| CheckpointRef {
        uri: format!("file:///c/a{attempt}-s{step}"),
        attempt,
        step,
        epoch: 0,
        bytes: 1,
    };
    // Nothing yet: the current attempt's first checkpoint is taken.
    assert!(at(1, 10).may_replace(None, 1));
    // A stale (deposed) attempt never moves the pointer, however far it trained.
    assert!(!at(0, 500).may_replace(Some(&at(1, 10)), 1));
    assert!(!at(0, 500).may_replace(None, 1));
    // Forward only within the current attempt; a late, older write is ignored.
    assert!(at(1, 20).may_replace(Some(&at(1, 10)), 1));
    assert!(!at(1, 5).may_replace(Some(&at(1, 10)), 1));
    assert!(!at(1, 10).may_replace(Some(&at(1, 10)), 1));
    // A new attempt that resumed from step 10 replaces the old attempt's pointer.
    assert!(at(2, 12).may_replace(Some(&at(1, 10)), 2));
}
