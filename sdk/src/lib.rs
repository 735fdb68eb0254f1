//! The Flotilla client SDK: submit sweeps from Rust, stream their events, read results.
//!
//! ```no_run
//! # async fn demo(address: std::net::SocketAddr, certs: &std::path::Path) -> Result<(), flotilla_sdk::SdkError> {
//! use flotilla_sdk::{Client, Identity, SweepBuilder, SweepEvent};
//!
//! let client = Client::connect(address, &Identity::load_from_dir(certs, "client")?).await?;
//! let spec = SweepBuilder::new("quadratic")
//!     .minimize("loss")
//!     .float("x", -5.0, 5.0)
//!     .command("python3", ["examples/trials/quadratic.py"])
//!     .metrics(["loss"])
//!     .max_trials(20)
//!     .max_parallel(4)
//!     .build()?;
//! let sweep = client.submit(spec).await?;
//! let mut events = client.watch(sweep.id).await?;
//! while let Some(event) = events.next().await {
//!     if let SweepEvent::SweepFinished(summary) = event? {
//!         println!("best: {:?}", summary.best.map(|trial| trial.objective));
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`Client`]: a mutual-TLS QUIC connection to the coordinator and its requests.
//! - [`SweepBuilder`]: sweep specs in code (or [`SweepSpec::from_file`] for TOML files).
//! - [`Study`]: ask/tell optimization for trials you run yourself, in one crash-safe file
//!   (what `flotilla study` runs).
//! - [`LocalCluster`] (feature `embedded`): a coordinator and agents in this process, as
//!   `flotilla up` runs them — for tests and notebooks-style use.

mod builder;
mod client;
#[cfg(feature = "embedded")]
mod local;
mod study;

pub use builder::SweepBuilder;
pub use client::{Client, EventStream, ResumingWatch, SdkError, SequencedEventStream};
pub use flotilla_protocol::messages::{
    AgentAction, AgentGpus, AgentInfo, ApiError, ApiErrorKind, AutoscaleStatus, ClusterStatus,
    EtcdMemberStatus, LearningCurve, MetricPoint, Metrics, Params, PhaseSummary, ReplicaInfo, Role,
    ScaleRequest, SweepDetail, SweepEvent, SweepState, SweepSummary, TrialCounts, TrialRecord,
    TrialState,
};
pub use flotilla_protocol::models::{
    self, Artifact, Lineage, ModelRef, ModelStage, ModelVersion, RegisterModel, RolloutAction,
    RolloutRecord, RolloutState, Route, RouterReport, SemVer, StartRollout,
};
pub use flotilla_protocol::spec::{
    self, AlgorithmName, AlgorithmSpec, Direction, Goal, Objective, ParamSpec, PhaseSpec,
    SpecError, SweepSpec,
};
pub use flotilla_protocol::tls::{ClusterCa, Identity};
pub use flotilla_protocol::{AgentId, AttemptId, ParamValue, SweepId, TrialId};
pub use flotilla_rollout::{Policy as RolloutPolicy, Stage as RolloutStage};
#[cfg(feature = "embedded")]
pub use local::{LocalAutoscale, LocalCluster, LocalClusterOptions};
pub use study::{
    AskedTrial, BestTrial, FrontTrial, STUDY_SAMPLERS, Study, StudyError, StudyTrial, TellOutcome,
};
