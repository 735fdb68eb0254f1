//! `[serving]`: the program that serves a command trial's checkpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::FieldProblem;
use super::trial::one;

/// `[serving]`: the program that serves a registered version of this sweep's models.
///
/// An agent assigned the version unpacks its sealed checkpoint into a folder and runs
/// `command` with `args` there, with `FLOTILLA_MODEL_DIR` (that folder) and
/// `FLOTILLA_SERVE_PORT` (a loopback port the program must listen on) in its environment.
/// The version is ready once `GET health` answers 2xx; predictions reach the program as
/// `POST /v1/models/<name>:predict` with the client's KServe v1 body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingSpec {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the agent's working directory, as for trials).
    #[serde(default)]
    pub workdir: Option<String>,
    /// The HTTP path that answers 2xx once the program can take predictions.
    #[serde(default = "default_health")]
    pub health: String,
    /// How long a start may take to pass its health check before it is stopped as failed.
    #[serde(default = "default_ready_timeout", with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// Agents that serve each version of the model.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Agent slots each replica holds while it runs (protocol 13): trials cannot use them.
    /// 0: the program shares the agent's slots with what runs there.
    #[serde(default = "one")]
    pub slots: u32,
    /// GPUs each replica holds to itself (protocol 13), assigned as a trial's are and seen
    /// by the program as `CUDA_VISIBLE_DEVICES` and `FLOTILLA_GPUS`.
    #[serde(default)]
    pub gpus: u32,
}

fn default_health() -> String {
    "/healthz".to_string()
}

fn default_ready_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Replicas one version may ask for.
pub const MAX_REPLICAS: u32 = 256;
/// Slots one replica may hold.
pub const MAX_REPLICA_SLOTS: u32 = 1024;
/// GPUs one replica may hold (a g5.48xlarge has 8).
pub const MAX_REPLICA_GPUS: u32 = 64;

impl ServingSpec {
    /// Problems with this table, their paths under `serving.`.
    pub fn problems(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push(FieldProblem {
                path: format!("serving.{path}"),
                message,
            })
        };
        if self.command.trim().is_empty() {
            problem(
                "command",
                "must name the program that serves the model".into(),
            );
        }
        if !self.health.starts_with('/') || self.health.chars().any(char::is_whitespace) {
            problem(
                "health",
                format!("'{}' is not an HTTP path (e.g. /healthz)", self.health),
            );
        }
        if self.ready_timeout.is_zero() || self.ready_timeout > Duration::from_secs(3600) {
            problem(
                "ready_timeout",
                "must be longer than zero and at most 1h".into(),
            );
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            problem("replicas", format!("must be between 1 and {MAX_REPLICAS}"));
        }
        if self.slots > MAX_REPLICA_SLOTS {
            problem(
                "slots",
                format!("must be at most {MAX_REPLICA_SLOTS} (0: the program holds no slot)"),
            );
        }
        if self.gpus > MAX_REPLICA_GPUS {
            problem("gpus", format!("must be at most {MAX_REPLICA_GPUS}"));
        }
        for name in self.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                problem(
                    &format!("env.{name}"),
                    "is not a valid environment variable name".into(),
                );
            } else if name.starts_with("FLOTILLA_") {
                problem(
                    &format!("env.{name}"),
                    "FLOTILLA_ variables are set by the agent".into(),
                );
            }
        }
        problems
    }
}
