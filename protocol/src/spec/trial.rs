//! `[trial]`, `[resources]` and `[retries]`: what each trial runs (a command or a
//! built-in trainer), what it holds, and how often it is tried again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ParamKind, SweepSpec};
use crate::ParamValue;

/// What a trial runs: a user `command` (with `args`, `env`), or a built-in `trainer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TrialSpec {
    /// Program to run; `args` may contain `{param}` placeholders.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory for command trials (default: the agent's working directory).
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub trainer: Option<String>,
    #[serde(default)]
    pub settings: BTreeMap<String, ParamValue>,
    /// The metrics the trial reports; the objective and constraints must name them.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// A trial running longer than this is stopped and counted as failed.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Agent slots one trial occupies.
    #[serde(default = "one")]
    pub slots: u32,
    /// GPUs one trial needs (placed only on agents that have them).
    #[serde(default)]
    pub gpus: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { slots: 1, gpus: 0 }
    }
}

pub(super) fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Crashes a trial may have before it is marked failed. Agent loss and preemption do
    /// not count.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Times a trial may be run again because its agent was lost while running it (protocol
    /// 13): such re-runs spend no retry, so without a bound a trial that kills or hangs every
    /// agent it lands on would be placed forever. Past it the trial fails, naming the agents.
    /// Preemptions and drains (the agent checkpoints and hands the trial back) do not count.
    #[serde(default = "default_max_reschedules")]
    pub max_reschedules: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: default_max_retries(),
            max_reschedules: default_max_reschedules(),
        }
    }
}

fn default_max_retries() -> u32 {
    2
}

fn default_max_reschedules() -> u32 {
    10
}

/// The most `[retries] max_reschedules` may say.
pub const MAX_RESCHEDULES: u32 = 1000;

/// The `{name}` placeholders in a command argument.
pub fn placeholders(arg: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        found.push(&after[..end]);
        rest = &after[end + 1..];
    }
    found
}

/// Replaces `{name}` placeholders with parameter values.
pub fn substitute(arg: &str, params: &BTreeMap<String, ParamValue>) -> String {
    let mut result = arg.to_string();
    for (name, value) in params {
        let placeholder = format!("{{{name}}}");
        if result.contains(&placeholder) {
            result = result.replace(&placeholder, &value.exact());
        }
    }
    result
}

impl Resources {
    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        if self.slots == 0 {
            problem("resources.slots", "must be at least 1".into());
        }
    }
}

impl RetryPolicy {
    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        if self.max_reschedules > MAX_RESCHEDULES {
            problem(
                "retries.max_reschedules",
                format!("must be at most {MAX_RESCHEDULES}"),
            );
        }
    }
}

impl SweepSpec {
    /// A command with declared metrics and placeholders that name searched parameters, or a
    /// built-in trainer checked against its schema; environment names and the timeout.
    pub(super) fn check_trial(&self, problem: &mut impl FnMut(&str, String)) {
        match (&self.trial.command, &self.trial.trainer) {
            (None, None) => problem("trial", "set either `command` or `trainer`".into()),
            (Some(_), Some(_)) => problem("trial", "set `command` or `trainer`, not both".into()),
            (Some(command), None) => self.check_command(command, &mut *problem),
            (None, Some(trainer)) => match crate::trainers::schema(trainer) {
                None => {
                    let known: Vec<&str> = crate::trainers::TRAINERS
                        .iter()
                        .map(|schema| schema.name)
                        .collect();
                    problem(
                        "trial.trainer",
                        format!("unknown trainer '{trainer}' (known: {})", known.join(", ")),
                    );
                }
                Some(schema) => self.check_trainer(schema, &mut *problem),
            },
        }
        for name in self.trial.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                problem(
                    &format!("trial.env.{name}"),
                    "is not a valid environment variable name".into(),
                );
            }
        }
        if self.trial.timeout == Some(Duration::ZERO) {
            problem("trial.timeout", "must be longer than zero".into());
        }
    }

    fn check_command(&self, command: &str, problem: &mut impl FnMut(&str, String)) {
        if command.trim().is_empty() {
            problem("trial.command", "must not be empty".into());
        }
        if self.trial.metrics.is_empty() {
            problem(
                "trial.metrics",
                "list the metrics the command reports (e.g. metrics = [\"loss\"])".into(),
            );
        }
        for (index, arg) in self.trial.args.iter().enumerate() {
            for placeholder in placeholders(arg) {
                if !self.is_searched(placeholder) {
                    problem(
                        &format!("trial.args[{index}]"),
                        format!("placeholder {{{placeholder}}} names no parameter of the space"),
                    );
                } else if self.is_conditional(placeholder) {
                    problem(
                        &format!("trial.args[{index}]"),
                        format!(
                            "placeholder {{{placeholder}}} names a conditional parameter, \
                             which trials where it does not apply are not given; read it \
                             from FLOTILLA_PARAMS instead (docs/trials.md)"
                        ),
                    );
                }
            }
        }
        if !self.trial.settings.is_empty() {
            problem(
                "trial.settings",
                "settings apply to built-in trainers only".into(),
            );
        }
    }

    /// The metric names the trial reports: those a command declares, or those the built-in
    /// trainer reports (narrowed to `trial.metrics` when given).
    pub fn reported_metrics(&self) -> Vec<String> {
        match self
            .trial
            .trainer
            .as_deref()
            .and_then(crate::trainers::schema)
        {
            Some(schema) if self.trial.metrics.is_empty() => {
                schema.reported_metrics(&self.trial.settings)
            }
            _ => self.trial.metrics.clone(),
        }
    }

    /// Checks a built-in trainer's trial against its schema: every searched parameter and
    /// every setting is a hyperparameter it knows, with values it accepts.
    fn check_trainer(
        &self,
        schema: &crate::trainers::TrainerSchema,
        problem: &mut impl FnMut(&str, String),
    ) {
        use crate::trainers::HyperKind;
        let known = || {
            schema
                .hyperparameters
                .iter()
                .map(|h| h.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.trial.args.is_empty() {
            problem("trial.args", "args apply to commands only".into());
        }
        if self.trial.workdir.is_some() {
            problem(
                "trial.workdir",
                "a working directory applies to commands only".into(),
            );
        }
        for (name, value) in &self.trial.settings {
            let path = format!("trial.settings.{name}");
            match schema.hyperparameter(name) {
                None => problem(
                    &path,
                    format!(
                        "'{}' has no hyperparameter '{name}' (it has: {})",
                        schema.name,
                        known()
                    ),
                ),
                Some(hyper) => {
                    if let Err(message) = hyper.check(value) {
                        problem(&path, message);
                    }
                }
            }
            // In a phased sweep the settings are the baseline that phases search away from.
            if let Some((prefix, _)) = self
                .spaces()
                .into_iter()
                .find(|(_, space)| space.contains_key(name))
                .filter(|_| self.phases.is_empty())
            {
                problem(
                    &path,
                    format!("'{name}' is both searched ({prefix}{name}) and fixed here"),
                );
            }
        }
        let spaces = self.spaces();
        let searched = spaces
            .iter()
            .flat_map(|(prefix, space)| space.iter().map(move |entry| (prefix, entry)));
        for (prefix, (name, param)) in searched {
            let path = format!("{prefix}{name}");
            let Some(hyper) = schema.hyperparameter(name) else {
                problem(
                    &path,
                    format!(
                        "'{}' has no hyperparameter '{name}' (it has: {})",
                        schema.name,
                        known()
                    ),
                );
                continue;
            };
            if matches!(name.as_str(), "data" | "num_classes") {
                problem(
                    &path,
                    format!("'{name}' shapes the data; set it in trial.settings"),
                );
                continue;
            }
            match (param.kind, hyper.kind) {
                (ParamKind::Categorical, _) => {
                    for (index, choice) in param.choices.iter().enumerate() {
                        if let Err(message) = hyper.check(choice) {
                            problem(&format!("{path}.choices[{index}]"), message);
                        }
                    }
                }
                (ParamKind::Float, HyperKind::Int { .. }) => problem(
                    &path,
                    format!("'{name}' is a whole number; search it as type = \"int\""),
                ),
                (
                    ParamKind::Float | ParamKind::Int,
                    HyperKind::Float { .. } | HyperKind::Int { .. },
                ) => {
                    if let (Some((min, max)), Some(low), Some(high)) =
                        (hyper.numeric_range(), param.low, param.high)
                        && (low < min || high > max)
                    {
                        problem(
                            &path,
                            format!(
                                "'{name}' accepts [{min}, {max}]; the range [{low}, {high}] leaves it"
                            ),
                        );
                    }
                }
                (ParamKind::Float | ParamKind::Int, _) => problem(
                    &path,
                    format!("'{name}' is not numeric; search it as a categorical parameter"),
                ),
            }
        }
        let available = schema.reported_metrics(&self.trial.settings);
        for (index, metric) in self.trial.metrics.iter().enumerate() {
            if !available.contains(metric) {
                problem(
                    &format!("trial.metrics[{index}]"),
                    format!("'{}' does not report '{metric}'", schema.name),
                );
            }
        }
    }
}
