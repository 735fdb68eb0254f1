//! The sweep specification: what a user asks Flotilla to run.
//!
//! One type serves the TOML sweep file, the SDK builder and the wire. Everything optional
//! has a default that works on a laptop. [`SweepSpec::validate`] reports every problem at
//! once, each with the path of the field it concerns (`budget.max_trials`, `space.lr.low`).
//!
//! # Layout
//!
//! One module per section of a sweep file, each with its types and its own checks:
//! [`space`] (`[space.*]`, conditions), [`objective`] (`[objective]`, `constraints`),
//! [`algorithm`] (`[algorithm]`), [`budget`] (`[budget]`), [`stopping`]
//! (`[early_stopping]`), [`phases`] (`[[phases]]`), [`trial`] (`[trial]`, `[resources]`,
//! `[retries]`), [`serving`] (`[serving]`) and [`scheduling`] (`[scheduling]`). This module
//! holds the whole file (`SweepSpec`), its parsing and the order of the checks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod algorithm;
pub mod budget;
pub mod objective;
pub mod phases;
pub mod scheduling;
pub mod serving;
pub mod space;
pub mod stopping;
pub mod trial;

pub use algorithm::{AlgorithmName, AlgorithmSpec};
pub use budget::Budget;
pub use objective::{Constraint, ConstraintOp, Direction, Goal, Objective};
pub use phases::{Phase, PhaseSpec};
pub use scheduling::{MAX_SHARE, Scheduling, valid_team_name};
pub use serving::{MAX_REPLICA_GPUS, MAX_REPLICA_SLOTS, MAX_REPLICAS, ServingSpec};
pub use space::{ParamKind, ParamSpec, When, validate_space};
pub use stopping::{EarlyStopping, StoppingRule};
pub use trial::{MAX_RESCHEDULES, Resources, RetryPolicy, TrialSpec, placeholders, substitute};

use algorithm::check_algorithm;
use objective::check_constraints;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// A short name shown in listings and reports.
    pub name: String,
    pub objective: Objective,
    /// Conditions a trial's final metrics must meet to be eligible as the winner,
    /// written `"metric >= 0.30"` in sweep files.
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Parameter name → its domain. Empty in a phased sweep, whose phases each have one.
    #[serde(default)]
    pub space: BTreeMap<String, ParamSpec>,
    #[serde(default)]
    pub algorithm: AlgorithmSpec,
    pub budget: Budget,
    pub trial: TrialSpec,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub retries: RetryPolicy,
    /// Stop poor trials before they finish (ASHA or the median rule); none by default.
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// Ordered phases (`[[phases]]`): each searches its own space; its winner's parameters
    /// are fixed for the phases after it. Empty for a single-phase sweep.
    /// (Never skipped when empty: the wire codec is not self-describing.)
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
    /// How the sweep's models are served (`[serving]`, protocol 12): the program an agent
    /// runs for a registered version of a command trial's checkpoint. None: a built-in
    /// trainer's models are served by the agents themselves; a command trial's cannot be.
    #[serde(default)]
    pub serving: Option<ServingSpec>,
    /// Earlier sweeps whose results seed this one's sampler (`warm_start = ["s3", "mnist-lr"]`,
    /// protocol 15): by id, or by name (the newest sweep of that name). Their trials whose
    /// parameters lie in this sweep's (first phase's) space count as results already in, so
    /// the model starts from them instead of an empty design. The coordinator resolves names
    /// to ids when the sweep is submitted.
    #[serde(default)]
    pub warm_start: Vec<String>,
    /// How the sweep shares the cluster with other sweeps (`[scheduling]`, protocol 17):
    /// its weight and its team.
    #[serde(default)]
    pub scheduling: Scheduling,
}

/// One problem found in a sweep spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldProblem {
    /// Dotted path of the field, e.g. `space.lr.low`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a sweep spec was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpecError {
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: the sweep has {} problem(s):\n{}", problems.len(), render_problems(problems))]
    Invalid {
        origin: String,
        problems: Vec<FieldProblem>,
    },
    #[error("{origin}: cannot read the file: {message}")]
    Unreadable { origin: String, message: String },
}

fn render_problems(problems: &[FieldProblem]) -> String {
    problems
        .iter()
        .map(|problem| format!("  - {problem}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What an answer shows in place of a trial environment variable's value.
pub const REDACTED: &str = "<redacted>";

impl SweepSpec {
    /// The spec as answers show it: `trial.env` values (API keys, tokens: whatever a sweep
    /// hands its trials) replaced by [`REDACTED`], names kept. Only agents, which run the
    /// trials, are sent the values.
    pub fn redacted(&self) -> SweepSpec {
        let mut spec = self.clone();
        for value in spec.trial.env.values_mut() {
            *value = REDACTED.to_string();
        }
        if let Some(serving) = &mut spec.serving {
            for value in serving.env.values_mut() {
                *value = REDACTED.to_string();
            }
        }
        spec
    }

    /// Parses a sweep file's text and validates it. `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<SweepSpec, SpecError> {
        let spec: SweepSpec = toml::from_str(text).map_err(|error| SpecError::Syntax {
            origin: origin.to_string(),
            message: error.to_string().trim_end().to_string(),
        })?;
        spec.validate().map_err(|problems| SpecError::Invalid {
            origin: origin.to_string(),
            problems,
        })?;
        Ok(spec)
    }

    /// A small valid sweep (two command trials that print one metric), for examples and
    /// checks that need some sweep to send.
    pub fn example() -> SweepSpec {
        const EXAMPLE: &str = r#"
name = "example"
[objective]
metric = "loss"
direction = "minimize"
[space.x]
type = "float"
low = 0.0
high = 1.0
[algorithm]
name = "random"
[budget]
max_trials = 2
max_parallel = 1
[trial]
command = "sh"
args = ["-c", "echo '@flotilla step=0 loss={x}'"]
metrics = ["loss"]
"#;
        SweepSpec::from_toml(EXAMPLE, "SweepSpec::example").expect("the example sweep is valid")
    }

    /// Reads, parses and validates a sweep file.
    pub fn from_file(path: &Path) -> Result<SweepSpec, SpecError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| SpecError::Unreadable {
            origin: origin.clone(),
            message: error.to_string(),
        })?;
        Self::from_toml(&text, &origin)
    }

    /// Renders the spec as a TOML sweep file.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# not representable: {error}"))
    }

    /// Every problem with the spec, each with its field path; `Ok` when there are none.
    /// Each section checks itself (in the section's module); the order is the file's.
    pub fn validate(&self) -> Result<(), Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push(FieldProblem {
                path: path.to_string(),
                message,
            })
        };
        if self.name.trim().is_empty() {
            problem("name", "must not be empty".into());
        }
        self.check_phases(&mut problem);
        for (prefix, space) in self.spaces() {
            for found in validate_space(space, &prefix) {
                problem(&found.path, found.message);
            }
        }
        self.check_warm_start(&mut problem);
        let reported = self.reported_metrics();
        if let Some(stopping) = &self.early_stopping {
            self.check_early_stopping(stopping, &reported, &mut problem);
        }
        self.objective.check(&reported, &mut problem);
        check_constraints(&self.constraints, &reported, &mut problem);
        self.budget.check(self.phases.is_empty(), &mut problem);
        check_algorithm(&self.algorithm, "algorithm", &mut problem);
        self.check_trial(&mut problem);
        self.resources.check(&mut problem);
        self.scheduling.check(&mut problem);
        self.retries.check(&mut problem);
        if let Some(serving) = &self.serving {
            if self.trial.command.is_none() {
                problem(
                    "serving",
                    "a [serving] program serves a command trial's checkpoints; the built-in trainers' models are served by the agents themselves".into(),
                );
            }
            for found in serving.problems() {
                problem(&found.path, found.message);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Warm starts name earlier sweeps, for a first phase that learns from them.
    fn check_warm_start(&self, problem: &mut impl FnMut(&str, String)) {
        for (index, source) in self.warm_start.iter().enumerate() {
            if source.trim().is_empty() {
                problem(
                    &format!("warm_start[{index}]"),
                    "names no sweep (give an id such as s3, or a sweep's name)".into(),
                );
            }
        }
        let first_algorithm = self.phases().first().map(|phase| phase.algorithm.name);
        if !self.warm_start.is_empty() && first_algorithm == Some(AlgorithmName::Grid) {
            problem(
                "warm_start",
                "a grid enumerates its points whatever came before; warm starts need a sampler \
                 that learns (bayesian or tpe; random and sobol ignore them)"
                    .into(),
            );
        }
    }
}

#[cfg(test)]
mod tests;
