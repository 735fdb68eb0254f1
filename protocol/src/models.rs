//! The model registry, serving and canary rollouts, as data (protocol 9).
//!
//! - A [`ModelVersion`] is a trained checkpoint with a name and a semantic version, its
//!   lineage (sweep, trial, parameters, metrics) and its sealed artifact: an immutable copy in
//!   the cluster's artifact store with its SHA-256, checked whenever it is loaded.
//! - Agents serve versions the coordinator assigns them ([`ServedModel`]) and report what is
//!   loaded ([`ServingReport`]).
//! - Routers ask the coordinator for [`Route`]s and report each rollout's traffic
//!   ([`RouterReport`]); the coordinator's Rollout actors decide from it
//!   ([`RolloutRecord`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use flotilla_rollout::{Decision, Pair, Policy};
use serde::{Deserialize, Serialize};

use crate::messages::{Metrics, Params};
use crate::spec::ServingSpec;
use crate::{AgentId, SweepId, TrialId};

/// `MAJOR.MINOR.PATCH`, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SemVer {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl SemVer {
    pub const fn new(major: u64, minor: u64, patch: u64) -> SemVer {
        SemVer {
            major,
            minor,
            patch,
        }
    }

    /// The next minor version (`1.4.2` → `1.5.0`): what a registration without a version
    /// gets after the newest one. `None` when the minor number cannot grow.
    pub fn next_minor(self) -> Option<SemVer> {
        Some(SemVer::new(self.major, self.minor.checked_add(1)?, 0))
    }
}

impl fmt::Display for SemVer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for SemVer {
    type Err = String;

    fn from_str(text: &str) -> Result<SemVer, String> {
        let parts: Vec<&str> = text.trim().trim_start_matches('v').split('.').collect();
        let number = |part: &str| {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
        };
        match parts.as_slice() {
            [major, minor, patch] => match (number(major), number(minor), number(patch)) {
                (Some(major), Some(minor), Some(patch)) => Ok(SemVer::new(major, minor, patch)),
                _ => Err(format!(
                    "version '{text}' is not MAJOR.MINOR.PATCH with numbers (e.g. 1.2.0)"
                )),
            },
            _ => Err(format!(
                "version '{text}' is not MAJOR.MINOR.PATCH (e.g. 1.2.0)"
            )),
        }
    }
}

/// Whether `name` may name a model: 1–64 of `a-z 0-9 - _ .`, starting with a letter or digit
/// (it becomes part of object keys and URLs).
pub fn check_model_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if valid {
        Ok(())
    } else {
        Err(format!(
            "model name '{name}' must be 1–64 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// `name@1.2.3`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: SemVer,
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

impl FromStr for ModelRef {
    type Err = String;

    fn from_str(text: &str) -> Result<ModelRef, String> {
        let (name, version) = text
            .split_once('@')
            .ok_or_else(|| format!("'{text}' is not NAME@VERSION (e.g. churn@1.2.0)"))?;
        check_model_name(name)?;
        Ok(ModelRef {
            name: name.to_string(),
            version: version.parse()?,
        })
    }
}

/// Where a version is in its life. One version of a model is in production at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ModelStage {
    Staging,
    Production,
    Archived,
}

impl ModelStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStage::Staging => "staging",
            ModelStage::Production => "production",
            ModelStage::Archived => "archived",
        }
    }
}

impl FromStr for ModelStage {
    type Err = String;

    fn from_str(text: &str) -> Result<ModelStage, String> {
        match text {
            "staging" => Ok(ModelStage::Staging),
            "production" => Ok(ModelStage::Production),
            "archived" => Ok(ModelStage::Archived),
            other => Err(format!(
                "stage '{other}' is not one of staging, production, archived"
            )),
        }
    }
}

/// Where a version came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    pub sweep: SweepId,
    pub sweep_name: String,
    pub trial: TrialId,
    pub trainer: String,
    pub params: Params,
    pub metrics: Metrics,
    pub objective: Option<f64>,
    /// The trial's checkpoint the artifact was copied from, and its epoch.
    pub checkpoint: String,
    pub epoch: u32,
}

/// An immutable object in the artifact store and the SHA-256 it was sealed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub uri: String,
    /// Lowercase hex.
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: SemVer,
    pub stage: ModelStage,
    pub lineage: Lineage,
    pub artifact: Artifact,
    pub description: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub stage_changed_ms: u64,
    /// How the version is served (protocol 12): `None` for a built-in trainer's model
    /// (loaded by the agents' burn inference), the sweep's `[serving]` program for a command
    /// trial's checkpoint.
    pub serving: Option<ServingSpec>,
}

impl ModelVersion {
    /// The version as answers show it: its serving program's `env` values replaced by
    /// [`crate::spec::REDACTED`].
    pub fn redacted(&self) -> ModelVersion {
        let mut version = self.clone();
        if let Some(serving) = &mut version.serving {
            for value in serving.env.values_mut() {
                *value = crate::spec::REDACTED.to_string();
            }
        }
        version
    }

    pub fn reference(&self) -> ModelRef {
        ModelRef {
            name: self.name.clone(),
            version: self.version,
        }
    }
}

/// `flotilla model register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterModel {
    pub name: String,
    /// `None`: the next minor version after the newest (1.0.0 for the first).
    pub version: Option<SemVer>,
    pub sweep: SweepId,
    /// `None`: the sweep's winner.
    pub trial: Option<u32>,
    pub description: String,
    /// `Staging` normally; `Production` makes it the served version at once (the first
    /// version of a model, or an operator's deliberate switch without a canary).
    pub stage: ModelStage,
}

// ---------------------------------------------------------------------------------------------
// Serving (coordinator ⇄ agent)

/// A version an agent is asked to serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedModel {
    pub model: ModelRef,
    pub artifact: Artifact,
    /// The program that serves it (protocol 12); `None`: the built-in burn inference.
    pub serving: Option<ServingSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServeState {
    Loading,
    Ready,
    /// The artifact could not be loaded (digest mismatch, unreadable, not a model), or its
    /// serving program never passed its health check.
    Failed(String),
    /// A serving program that was ready exited or stopped answering its health check and is
    /// being started again (protocol 12): no traffic until it is ready.
    Restarting {
        restarts: u32,
        reason: String,
    },
}

impl ServeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ServeState::Loading => "loading",
            ServeState::Ready => "ready",
            ServeState::Failed(_) => "failed",
            ServeState::Restarting { .. } => "restarting",
        }
    }
}

/// Where one version runs and how it is (`flotilla model show`, protocol 12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub model: ModelRef,
    pub agent: AgentId,
    pub endpoint: Option<String>,
    /// `None`: assigned, not yet reported by the agent.
    pub state: Option<ServeState>,
    /// The GPU indices the replica holds on the agent (protocol 13; empty: none, or not
    /// started yet).
    pub gpus: Vec<u32>,
}

/// What a sealed artifact must be (protocol 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArtifactFormat {
    /// A built-in trainer's checkpoint: it must load as a burn model.
    BurnModel,
    /// A command trial's checkpoint archive (a tar with its manifest first), served by the
    /// sweep's `[serving]` program.
    CheckpointArchive,
}

/// What an agent serves: sent after it registers and on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingReport {
    /// `http://host:port` of its serving endpoint; `None` when the agent does not serve.
    pub endpoint: Option<String>,
    pub models: Vec<(ModelRef, ServeState)>,
    /// The GPU indices each served program's replica holds (protocol 13).
    pub gpus: BTreeMap<ModelRef, Vec<u32>>,
}

/// Copy `source` (a trial's checkpoint) to `key` in the agent's artifact store, create-once,
/// and answer with its digest (`AgentMessage::ModelSealed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealRequest {
    pub request: u64,
    pub source: String,
    pub key: String,
    /// What the checkpoint must be to become a model (protocol 12).
    pub format: ArtifactFormat,
}

// ---------------------------------------------------------------------------------------------
// Rollouts

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RolloutState {
    Running,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled back",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Whether the rollout still routes traffic to its canary.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// One decision of a rollout, with the evidence it rested on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub at_ms: u64,
    /// The stage (index into the policy's stages) the rollout was in.
    pub stage: u32,
    /// The canary's weight before the decision.
    pub weight: f64,
    pub decision: Decision,
    /// `controller`, or `operator` for a manual action.
    pub by: String,
}

/// A canary rollout of one version of a model against its production version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: u64,
    pub model: String,
    pub baseline: SemVer,
    pub canary: SemVer,
    pub policy: Policy,
    pub state: RolloutState,
    /// Index into `policy.stages`.
    pub stage: u32,
    /// The canary's share of requests now (0 after a rollback, 1 after promotion).
    pub canary_weight: f64,
    pub started_ms: u64,
    pub stage_started_ms: u64,
    /// Time spent paused in the current stage (it does not count towards its duration).
    pub stage_paused_ms: u64,
    pub paused_since_ms: Option<u64>,
    /// Traffic counters when the current stage began, and the newest seen.
    pub stage_start: Pair,
    pub traffic: Pair,
    /// Every verdict other than hold, and the newest hold.
    pub decisions: Vec<DecisionRecord>,
    pub finished_ms: Option<u64>,
}

/// `flotilla rollout start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartRollout {
    pub model: String,
    pub canary: SemVer,
    /// `None`: the default policy (1% → 10% → 50% → 100%).
    pub policy: Option<Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutAction {
    /// Hold the current weight; no verdicts until resumed.
    Pause,
    Resume,
    /// Send all traffic to the canary now and make it the production version.
    Promote,
    /// Send all traffic to the baseline now.
    Abort,
}

// ---------------------------------------------------------------------------------------------
// Routers

/// A router's counters for one rollout since the router started (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RolloutTraffic {
    pub rollout: u64,
    pub traffic: Pair,
}

/// Sent by a router every second; answered with `Routes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterReport {
    /// Unique per router process (a restarted router is a new one).
    pub router: String,
    pub rollouts: Vec<RolloutTraffic>,
}

/// Serving endpoints of one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTarget {
    pub version: SemVer,
    /// `http://host:port` of agents where the version is loaded and ready.
    pub endpoints: Vec<String>,
}

/// How a router sends one model's requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub model: String,
    pub baseline: RouteTarget,
    /// The canary of an active rollout.
    pub canary: Option<RouteTarget>,
    pub canary_weight: f64,
    pub rollout: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_order_and_print() {
        let version: SemVer = "1.10.0".parse().expect("valid");
        assert!(version > "1.9.7".parse().expect("valid"));
        assert_eq!(version.to_string(), "1.10.0");
        assert_eq!(version.next_minor(), Some(SemVer::new(1, 11, 0)));
        assert_eq!(SemVer::new(0, u64::MAX, 0).next_minor(), None);
        for bad in ["1.2", "1.2.x", "", "1..2", "1.2.3.4", "-1.2.3"] {
            let error = bad.parse::<SemVer>().expect_err(bad);
            assert!(error.contains("MAJOR.MINOR.PATCH"), "{error}");
        }
    }

    #[test]
    fn references_and_names_are_checked() {
        let reference: ModelRef = "churn@2.0.1".parse().expect("valid");
        assert_eq!(reference.to_string(), "churn@2.0.1");
        assert!("churn".parse::<ModelRef>().is_err());
        assert!("Churn@1.0.0".parse::<ModelRef>().is_err());
        assert!(check_model_name("../etc").is_err());
        assert!(check_model_name("lstm-v2.small_1").is_ok());
    }
}
