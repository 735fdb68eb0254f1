//! The sweep specification: what a user asks Flotilla to run.
//!
//! One type serves the TOML sweep file, the SDK builder and the wire. Everything optional
//! has a default that works on a laptop. [`SweepSpec::validate`] reports every problem at
//! once, each with the path of the field it concerns (`budget.max_trials`, `space.lr.low`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ParamValue;
use crate::messages::{Metrics, TrialRecord, TrialState};

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

/// `[scheduling]`: the sweep's part of the cluster when sweeps compete for slots.
///
/// Sweeps share slots and GPUs by weighted dominant-resource fairness: while several have
/// trials queued, each holds slots (or GPUs, for GPU trials) in proportion to its weight.
/// A sweep without a team weighs its `share`. A team's sweeps together weigh the team's
/// share (`flotilla coordinator --team-share NAME=WEIGHT`, 1 when not given) and divide it
/// by their own `share`s, so a team that submits ten sweeps does not get ten times the
/// cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    /// The sweep's weight: 2 holds twice the slots of 1 while both have trials queued.
    #[serde(default = "default_share")]
    pub share: f64,
    /// The team the sweep counts for (letters, digits, `-`, `_` and `.`; at most 63).
    #[serde(default)]
    pub team: Option<String>,
}

impl Default for Scheduling {
    fn default() -> Self {
        Scheduling {
            share: default_share(),
            team: None,
        }
    }
}

fn default_share() -> f64 {
    1.0
}

/// The largest `scheduling.share` (and team share): weights further apart than this are
/// more likely a typo than a policy.
pub const MAX_SHARE: f64 = 1000.0;

/// Whether `name` may name a team: 1 to 63 letters, digits, `-`, `_` or `.`.
pub fn valid_team_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

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

/// One phase of a multi-phase sweep. The objective, constraints, trial, resources, retries
/// and early stopping are the sweep's; the phase brings its space and its budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// Shown in progress, leaderboards and reports.
    pub name: String,
    /// What this phase searches. A parameter an earlier phase fixed may be searched again
    /// (e.g. a finer learning-rate range); the phase's value then replaces the fixed one.
    #[serde(default)]
    pub space: BTreeMap<String, ParamSpec>,
    /// The phase's algorithm; the sweep's `[algorithm]` when absent.
    #[serde(default)]
    pub algorithm: Option<AlgorithmSpec>,
    pub max_trials: u32,
    /// Trials of this phase running at once; the sweep's `budget.max_parallel` when absent.
    #[serde(default)]
    pub max_parallel: Option<u32>,
}

/// A phase with the sweep's defaults filled in; a single-phase sweep is one of these.
#[derive(Debug, Clone, Copy)]
pub struct Phase<'a> {
    pub name: &'a str,
    pub space: &'a BTreeMap<String, ParamSpec>,
    pub algorithm: &'a AlgorithmSpec,
    pub max_trials: u32,
    pub max_parallel: u32,
}

/// Early stopping: `rule = "asha"` or `"median"`, judged on the objective as the trial
/// reports it along a resource (the metric named `resource`, e.g. `epoch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    pub rule: StoppingRule,
    /// The metric that measures what a trial has spent (e.g. `epoch`); it must be reported
    /// with (or before) the objective.
    pub resource: String,
    /// No trial stops before it has spent this much (ASHA's first rung, the median rule's
    /// grace period).
    pub min_resource: f64,
    /// ASHA: a complete trial's resource (rungs lie below it).
    #[serde(default)]
    pub max_resource: Option<f64>,
    /// ASHA: η, one trial in η continues past each rung.
    #[serde(default = "default_reduction_factor")]
    pub reduction_factor: f64,
    /// Median rule: trials with reports that must exist before the rule applies.
    #[serde(default = "default_min_trials")]
    pub min_trials: u32,
    /// ASHA's promotion form (built-in trainers and commands that checkpoint): each trial
    /// first trains only up to the
    /// first rung and pauses there; the best `1/η` of a rung are promoted and resume from
    /// their checkpoints up to the next rung, and so on up to `max_resource`. Without it,
    /// ASHA stops trials in flight (the stopping form).
    #[serde(default)]
    pub promotion: bool,
}

fn default_reduction_factor() -> f64 {
    3.0
}

fn default_min_trials() -> u32 {
    5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoppingRule {
    Asha,
    Median,
    /// Asynchronous Hyperband: ASHA brackets of decreasing aggressiveness (appended: the
    /// encodings of the other rules are unchanged).
    Hyperband,
}

/// `[objective]`: the metric the sweep optimises, and for a multi-objective sweep the others
/// it trades it against (`[[objective.also]]`, protocol 16).
///
/// The first metric is the sweep's **primary** objective: early stopping judges trials by
/// it, a phase's winner (whose parameters the next phase fixes) is the best by it, and so is
/// the sweep's `best` in summaries. With `also`, the sampler searches the Pareto front of all
/// of them (ParEGO, see `flotilla_tuner::pareto`), and `sweep best` answers with the front
/// ([`Objective::front`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// The metric the trial reports that the sweep optimises.
    pub metric: String,
    pub direction: Direction,
    /// Further objectives, each a metric the trial reports and its direction. Empty for a
    /// single-objective sweep. (Never skipped when empty: the wire codec is not
    /// self-describing.)
    #[serde(default)]
    pub also: Vec<Goal>,
}

/// One further objective of a multi-objective sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    pub metric: String,
    pub direction: Direction,
}

impl Objective {
    /// A single objective.
    pub fn new(metric: impl Into<String>, direction: Direction) -> Objective {
        Objective {
            metric: metric.into(),
            direction,
            also: Vec::new(),
        }
    }

    /// Whether the sweep trades several objectives against each other.
    pub fn is_multi(&self) -> bool {
        !self.also.is_empty()
    }

    /// Every objective, the primary first: its metric and direction.
    pub fn goals(&self) -> impl Iterator<Item = (&str, Direction)> {
        std::iter::once((self.metric.as_str(), self.direction)).chain(
            self.also
                .iter()
                .map(|goal| (goal.metric.as_str(), goal.direction)),
        )
    }

    /// A trial's value of each objective, the primary first (`primary` is the trial's
    /// recorded objective; the others come from its `metrics`); `None` if one is missing or
    /// not finite.
    pub fn values(&self, primary: Option<f64>, metrics: &Metrics) -> Option<Vec<f64>> {
        std::iter::once(primary)
            .chain(
                self.also
                    .iter()
                    .map(|goal| metrics.get(&goal.metric).copied()),
            )
            .map(|value| value.filter(|value| value.is_finite()))
            .collect()
    }

    /// The Pareto front of `trials`: the succeeded, feasible trials with every objective whose
    /// values no other such trial dominates (at least as good in every objective and better
    /// in one), in the order given. For a single objective, every trial tied for the best.
    pub fn front<'a>(&self, trials: &'a [TrialRecord]) -> Vec<&'a TrialRecord> {
        let candidates: Vec<(&TrialRecord, Vec<f64>)> = trials
            .iter()
            .filter(|trial| trial.state == TrialState::Succeeded && trial.feasible)
            .filter_map(|trial| {
                let values = self.values(trial.objective, &trial.metrics)?;
                let losses = values
                    .iter()
                    .zip(self.goals())
                    .map(|(value, (_, direction))| direction.loss(*value))
                    .collect();
                Some((trial, losses))
            })
            .collect();
        let dominates = |a: &[f64], b: &[f64]| {
            a.iter().zip(b).all(|(a, b)| a <= b) && a.iter().zip(b).any(|(a, b)| a < b)
        };
        candidates
            .iter()
            .filter(|(_, losses)| !candidates.iter().any(|(_, other)| dominates(other, losses)))
            .map(|(trial, _)| *trial)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Minimize,
    Maximize,
}

impl Direction {
    /// `value` as a loss: itself when minimizing, negated when maximizing (samplers and
    /// early-stopping rules minimize).
    pub fn loss(self, value: f64) -> f64 {
        match self {
            Direction::Minimize => value,
            Direction::Maximize => -value,
        }
    }

    /// Whether `candidate` is strictly better than `incumbent`.
    pub fn is_better(self, candidate: f64, incumbent: f64) -> bool {
        match self {
            Direction::Minimize => candidate < incumbent,
            Direction::Maximize => candidate > incumbent,
        }
    }
}

/// `metric op threshold`, e.g. `class_1_accuracy >= 0.30`.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub metric: String,
    pub op: ConstraintOp,
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintOp {
    AtLeast,
    AtMost,
    Above,
    Below,
}

impl ConstraintOp {
    fn symbol(self) -> &'static str {
        match self {
            ConstraintOp::AtLeast => ">=",
            ConstraintOp::AtMost => "<=",
            ConstraintOp::Above => ">",
            ConstraintOp::Below => "<",
        }
    }
}

impl Constraint {
    /// Whether `value` satisfies the constraint.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            ConstraintOp::AtLeast => value >= self.threshold,
            ConstraintOp::AtMost => value <= self.threshold,
            ConstraintOp::Above => value > self.threshold,
            ConstraintOp::Below => value < self.threshold,
        }
    }

    /// Whether a trial's final metrics satisfy it (a missing metric does not).
    pub fn holds_for(&self, metrics: &BTreeMap<String, f64>) -> bool {
        metrics
            .get(&self.metric)
            .is_some_and(|value| self.holds(*value))
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op.symbol(), self.threshold)
    }
}

impl FromStr for Constraint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let operators = [
            (">=", ConstraintOp::AtLeast),
            ("<=", ConstraintOp::AtMost),
            (">", ConstraintOp::Above),
            ("<", ConstraintOp::Below),
        ];
        for (symbol, op) in operators {
            let Some((metric, threshold)) = text.split_once(symbol) else {
                continue;
            };
            let metric = metric.trim();
            if !is_metric_name(metric) {
                return Err(format!("'{text}': the left side must be a metric name"));
            }
            let threshold = threshold.trim().parse::<f64>().map_err(|_| {
                format!(
                    "'{text}': the right side must be a number, found '{}'",
                    threshold.trim()
                )
            })?;
            return Ok(Constraint {
                metric: metric.to_string(),
                op,
                threshold,
            });
        }
        Err(format!(
            "'{text}' is not a constraint; write it like \"class_1_accuracy >= 0.30\""
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct ConstraintWire {
    metric: String,
    op: ConstraintOp,
    threshold: f64,
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return serializer.collect_str(self);
        }
        ConstraintWire {
            metric: self.metric.clone(),
            op: self.op,
            threshold: self.threshold,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            return text.parse().map_err(serde::de::Error::custom);
        }
        let wire = ConstraintWire::deserialize(deserializer)?;
        Ok(Constraint {
            metric: wire.metric,
            op: wire.op,
            threshold: wire.threshold,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Float,
    Int,
    Categorical,
}

/// One dimension of the search space. `low`/`high` (and `log`) for float and int,
/// `choices` for categorical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub kind: ParamKind,
    #[serde(default)]
    pub low: Option<f64>,
    #[serde(default)]
    pub high: Option<f64>,
    /// Sample uniformly in log space (requires `low > 0`).
    #[serde(default)]
    pub log: bool,
    #[serde(default)]
    pub choices: Vec<ParamValue>,
    /// `when = { optimizer = "sgd" }`: the parameter applies only where another (categorical)
    /// parameter of the same space applies and takes one of the listed values (protocol 15).
    /// A trial where it does not apply is not given it.
    #[serde(default)]
    pub when: Option<When>,
}

/// A parameter's condition: categorical parameter `param` takes one of `values`.
///
/// Sweep files write it `when = { optimizer = "sgd" }` or `when = { optimizer = ["sgd",
/// "rmsprop"] }`; conditions chain (a parameter's `param` may have a `when` of its own).
#[derive(Debug, Clone, PartialEq)]
pub struct When {
    pub param: String,
    pub values: Vec<ParamValue>,
}

impl When {
    pub fn new(param: &str, values: impl IntoIterator<Item = ParamValue>) -> When {
        When {
            param: param.to_string(),
            values: values.into_iter().collect(),
        }
    }
}

/// [`When`] on the wire (the binary codec cannot read the sweep file's map form).
#[derive(Serialize, Deserialize)]
struct WhenWire {
    param: String,
    values: Vec<ParamValue>,
}

impl Serialize for When {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return WhenWire {
                param: self.param.clone(),
                values: self.values.clone(),
            }
            .serialize(serializer);
        }
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self.values.as_slice() {
            [one] => map.serialize_entry(&self.param, one)?,
            many => map.serialize_entry(&self.param, many)?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, SeqAccess, Visitor};
        if !deserializer.is_human_readable() {
            let wire = WhenWire::deserialize(deserializer)?;
            return Ok(When {
                param: wire.param,
                values: wire.values,
            });
        }
        /// One value or a list of them.
        struct Values(Vec<ParamValue>);
        impl<'de> Deserialize<'de> for Values {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ValuesVisitor;
                impl<'de> Visitor<'de> for ValuesVisitor {
                    type Value = Values;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a value or a list of values")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                        let mut values = Vec::new();
                        while let Some(value) = seq.next_element::<ParamValue>()? {
                            values.push(value);
                        }
                        Ok(Values(values))
                    }
                    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Values, E> {
                        Ok(Values(vec![ParamValue::Bool(value)]))
                    }
                    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Values, E> {
                        Ok(Values(vec![ParamValue::Int(value)]))
                    }
                    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Values, E> {
                        i64::try_from(value)
                            .map(|value| Values(vec![ParamValue::Int(value)]))
                            .map_err(|_| E::custom(format!("integer {value} is too large")))
                    }
                    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Values, E> {
                        Ok(Values(vec![ParamValue::Float(value)]))
                    }
                    fn visit_str<E: de::Error>(self, value: &str) -> Result<Values, E> {
                        Ok(Values(vec![ParamValue::Str(value.to_string())]))
                    }
                }
                deserializer.deserialize_any(ValuesVisitor)
            }
        }
        struct WhenVisitor;
        impl<'de> Visitor<'de> for WhenVisitor {
            type Value = When;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table naming one parameter and its value(s), e.g. { optimizer = \"sgd\" }",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<When, A::Error> {
                let Some((param, Values(values))) = map.next_entry::<String, Values>()? else {
                    return Err(de::Error::custom(
                        "`when` names no parameter; write e.g. when = { optimizer = \"sgd\" }",
                    ));
                };
                if let Some((other, _)) = map.next_entry::<String, Values>()? {
                    return Err(de::Error::custom(format!(
                        "`when` may name one parameter, found '{param}' and '{other}'; \
                         chain conditions instead (give '{param}' a `when` of its own)"
                    )));
                }
                Ok(When { param, values })
            }
        }
        deserializer.deserialize_map(WhenVisitor)
    }
}

impl ParamSpec {
    pub fn float(low: f64, high: f64) -> Self {
        ParamSpec {
            kind: ParamKind::Float,
            low: Some(low),
            high: Some(high),
            log: false,
            choices: vec![],
            when: None,
        }
    }
    pub fn log_float(low: f64, high: f64) -> Self {
        ParamSpec {
            log: true,
            ..Self::float(low, high)
        }
    }
    pub fn int(low: i64, high: i64) -> Self {
        ParamSpec {
            kind: ParamKind::Int,
            low: Some(low as f64),
            high: Some(high as f64),
            log: false,
            choices: vec![],
            when: None,
        }
    }
    pub fn categorical(choices: impl IntoIterator<Item = ParamValue>) -> Self {
        ParamSpec {
            kind: ParamKind::Categorical,
            low: None,
            high: None,
            log: false,
            choices: choices.into_iter().collect(),
            when: None,
        }
    }

    /// This parameter, applying only where `when` holds.
    pub fn when(self, when: When) -> Self {
        ParamSpec {
            when: Some(when),
            ..self
        }
    }
}

/// How a sweep chooses its trials' parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmName {
    /// Independent uniform draws (log-uniform on log dimensions).
    Random,
    /// Every combination of a grid over the space.
    Grid,
    /// Gaussian-process Bayesian optimization with log expected improvement, constraint
    /// models and a Sobol initial design.
    #[default]
    Bayesian,
    /// Multivariate Tree-structured Parzen Estimator.
    Tpe,
    /// Scrambled Sobol points: an even, model-free design.
    Sobol,
}

impl AlgorithmName {
    pub const ALL: [AlgorithmName; 5] = [
        AlgorithmName::Bayesian,
        AlgorithmName::Tpe,
        AlgorithmName::Random,
        AlgorithmName::Sobol,
        AlgorithmName::Grid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlgorithmName::Random => "random",
            AlgorithmName::Grid => "grid",
            AlgorithmName::Bayesian => "bayesian",
            AlgorithmName::Tpe => "tpe",
            AlgorithmName::Sobol => "sobol",
        }
    }
}

impl FromStr for AlgorithmName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AlgorithmName::ALL
            .into_iter()
            .find(|name| name.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = AlgorithmName::ALL.iter().map(|n| n.as_str()).collect();
                format!("unknown algorithm '{text}' (known: {})", known.join(", "))
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmSpec {
    #[serde(default)]
    pub name: AlgorithmName,
    /// Seed for reproducible suggestions; chosen at submission when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Grid only: points per float dimension (default 5).
    #[serde(default)]
    pub grid_points: Option<u32>,
    /// Bayesian and TPE: trials taken from a Sobol design before the model is used
    /// (default 10).
    #[serde(default)]
    pub initial_trials: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Trials to run; a phased sweep sets this per phase instead (left 0 here).
    #[serde(default)]
    pub max_trials: u32,
    /// Trials of this sweep running at once.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// Wall-clock budget: when it is spent, running trials are stopped and the sweep ends.
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
}

fn default_max_parallel() -> u32 {
    4
}

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

fn one() -> u32 {
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
        if self.phases.is_empty() && self.space.is_empty() {
            problem(
                "space",
                "the search space is empty; define at least one parameter".into(),
            );
        }
        if !self.phases.is_empty() {
            if !self.space.is_empty() {
                problem(
                    "space",
                    "a phased sweep declares its parameters per phase (phases[N].space), not here"
                        .into(),
                );
            }
            if self.budget.max_trials != 0 {
                problem(
                    "budget.max_trials",
                    "a phased sweep sets max_trials per phase (phases[N].max_trials)".into(),
                );
            }
        }
        for (index, phase) in self.phases.iter().enumerate() {
            let path = format!("phases[{index}]");
            if phase.name.trim().is_empty() {
                problem(&format!("{path}.name"), "must not be empty".into());
            } else if self.phases[..index]
                .iter()
                .any(|earlier| earlier.name == phase.name)
            {
                problem(
                    &format!("{path}.name"),
                    format!("'{}' names an earlier phase too", phase.name),
                );
            }
            if phase.space.is_empty() {
                problem(
                    &format!("{path}.space"),
                    "the phase searches nothing; define at least one parameter".into(),
                );
            }
            if phase.max_trials == 0 {
                problem(&format!("{path}.max_trials"), "must be at least 1".into());
            }
            if phase.max_parallel == Some(0) {
                problem(&format!("{path}.max_parallel"), "must be at least 1".into());
            }
            if let Some(algorithm) = &phase.algorithm {
                check_algorithm(algorithm, &format!("{path}.algorithm"), &mut problem);
            }
        }
        for (prefix, space) in self.spaces() {
            for found in validate_space(space, &prefix) {
                problem(&found.path, found.message);
            }
        }
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

        let reported = self.reported_metrics();
        if let Some(stopping) = &self.early_stopping {
            if !reported.is_empty() && !reported.contains(&stopping.resource) {
                problem(
                    "early_stopping.resource",
                    format!(
                        "'{}' is not among the trial's metrics {:?}",
                        stopping.resource, reported
                    ),
                );
            }
            if !(stopping.min_resource.is_finite() && stopping.min_resource > 0.0) {
                problem("early_stopping.min_resource", "must be a number > 0".into());
            }
            match stopping.rule {
                StoppingRule::Asha | StoppingRule::Hyperband => {
                    match stopping.max_resource {
                        None => problem(
                            "early_stopping.max_resource",
                            format!(
                                "{} needs the resource of a complete trial",
                                match stopping.rule {
                                    StoppingRule::Hyperband => "Hyperband",
                                    _ => "ASHA",
                                }
                            ),
                        ),
                        Some(max) if !(max.is_finite() && max > stopping.min_resource) => problem(
                            "early_stopping.max_resource",
                            format!(
                                "must be finite and above min_resource ({})",
                                stopping.min_resource
                            ),
                        ),
                        Some(_) => {}
                    }
                    if !(stopping.reduction_factor.is_finite() && stopping.reduction_factor > 1.0) {
                        problem("early_stopping.reduction_factor", "must be > 1".into());
                    }
                    if stopping.promotion && stopping.rule == StoppingRule::Hyperband {
                        problem(
                            "early_stopping.promotion",
                            "applies to the asha rule only (Hyperband stops trials in flight)"
                                .into(),
                        );
                    } else if stopping.promotion {
                        self.check_promotion(stopping, &mut problem);
                    }
                }
                StoppingRule::Median => {
                    if stopping.promotion {
                        problem(
                            "early_stopping.promotion",
                            "applies to the asha rule only".into(),
                        );
                    }
                    if stopping.min_trials == 0 {
                        problem("early_stopping.min_trials", "must be at least 1".into());
                    }
                }
            }
        }
        if !is_metric_name(&self.objective.metric) {
            problem(
                "objective.metric",
                format!("'{}' is not a metric name", self.objective.metric),
            );
        } else if !reported.is_empty() && !reported.contains(&self.objective.metric) {
            problem(
                "objective.metric",
                format!(
                    "'{}' is not among the trial's metrics {:?}",
                    self.objective.metric, reported
                ),
            );
        }
        for (index, goal) in self.objective.also.iter().enumerate() {
            let path = format!("objective.also[{index}].metric");
            if !is_metric_name(&goal.metric) {
                problem(&path, format!("'{}' is not a metric name", goal.metric));
            } else if !reported.is_empty() && !reported.contains(&goal.metric) {
                problem(
                    &path,
                    format!(
                        "'{}' is not among the trial's metrics {:?}",
                        goal.metric, reported
                    ),
                );
            }
            let repeated = std::iter::once(&self.objective.metric)
                .chain(self.objective.also[..index].iter().map(|goal| &goal.metric))
                .any(|metric| *metric == goal.metric);
            if repeated {
                problem(
                    &path,
                    format!("'{}' is already an objective of this sweep", goal.metric),
                );
            }
        }
        for (index, constraint) in self.constraints.iter().enumerate() {
            if !reported.contains(&constraint.metric) {
                problem(
                    &format!("constraints[{index}]"),
                    format!(
                        "unknown metric '{}' in \"{constraint}\"; the trial reports {:?}",
                        constraint.metric, reported
                    ),
                );
            }
            if !constraint.threshold.is_finite() {
                problem(
                    &format!("constraints[{index}]"),
                    "the threshold must be finite".into(),
                );
            }
        }

        if self.phases.is_empty() && self.budget.max_trials == 0 {
            problem("budget.max_trials", "must be at least 1".into());
        }
        if self.budget.max_parallel == 0 {
            problem("budget.max_parallel", "must be at least 1".into());
        }
        if self.budget.max_duration == Some(Duration::ZERO) {
            problem("budget.max_duration", "must be longer than zero".into());
        }
        check_algorithm(&self.algorithm, "algorithm", &mut problem);

        match (&self.trial.command, &self.trial.trainer) {
            (None, None) => problem("trial", "set either `command` or `trainer`".into()),
            (Some(_), Some(_)) => problem("trial", "set `command` or `trainer`, not both".into()),
            (Some(command), None) => {
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
                                format!(
                                    "placeholder {{{placeholder}}} names no parameter of the space"
                                ),
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
                Some(schema) => self.check_trainer(schema, &mut problem),
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
        if self.resources.slots == 0 {
            problem("resources.slots", "must be at least 1".into());
        }
        let share = self.scheduling.share;
        if !share.is_finite() || share <= 0.0 || share > MAX_SHARE {
            problem(
                "scheduling.share",
                format!("must be a number above 0 and at most {MAX_SHARE}, not {share}"),
            );
        }
        if let Some(team) = &self.scheduling.team
            && !valid_team_name(team)
        {
            problem(
                "scheduling.team",
                format!("{team:?} is not a team name: 1 to 63 letters, digits, '-', '_' or '.'"),
            );
        }
        if self.retries.max_reschedules > MAX_RESCHEDULES {
            problem(
                "retries.max_reschedules",
                format!("must be at most {MAX_RESCHEDULES}"),
            );
        }
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

    /// ASHA's promotion form sets each attempt's `epochs` to its rung (a built-in trainer's
    /// setting; a command sees it as `FLOTILLA_EPOCHS`) and resumes from checkpoints, so it
    /// needs `epoch` as the resource, whole-epoch rungs and `epochs` left to it.
    fn check_promotion(&self, stopping: &EarlyStopping, problem: &mut impl FnMut(&str, String)) {
        use crate::trainers::{BUDGET_HYPERPARAMETER, BUDGET_METRIC};
        if stopping.resource != BUDGET_METRIC {
            problem(
                "early_stopping.resource",
                format!("the promotion form measures the resource in '{BUDGET_METRIC}'"),
            );
        }
        let whole = |value: f64| value.fract() == 0.0 && value >= 1.0;
        if !whole(stopping.min_resource) {
            problem(
                "early_stopping.min_resource",
                "the promotion form needs a whole number of epochs".into(),
            );
        }
        if let Some(max) = stopping.max_resource {
            if !whole(max) {
                problem(
                    "early_stopping.max_resource",
                    "the promotion form needs a whole number of epochs".into(),
                );
            }
            if let Some(epochs) = self.trial.settings.get(BUDGET_HYPERPARAMETER)
                && epochs.as_f64() != Some(max)
            {
                problem(
                    &format!("trial.settings.{BUDGET_HYPERPARAMETER}"),
                    format!(
                        "with the promotion form a complete trial trains max_resource ({max}) epochs; leave this out or make it {max}"
                    ),
                );
            }
        }
        if self.is_searched(BUDGET_HYPERPARAMETER) {
            problem(
                "early_stopping.promotion",
                format!("sets '{BUDGET_HYPERPARAMETER}' per rung, so it cannot be searched"),
            );
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

    /// The sweep's phases with its defaults filled in: one per `[[phases]]` entry, or the
    /// whole sweep as a single phase named after it.
    pub fn phases(&self) -> Vec<Phase<'_>> {
        if self.phases.is_empty() {
            return vec![Phase {
                name: &self.name,
                space: &self.space,
                algorithm: &self.algorithm,
                max_trials: self.budget.max_trials,
                max_parallel: self.budget.max_parallel,
            }];
        }
        self.phases
            .iter()
            .map(|phase| Phase {
                name: &phase.name,
                space: &phase.space,
                algorithm: phase.algorithm.as_ref().unwrap_or(&self.algorithm),
                max_trials: phase.max_trials,
                max_parallel: phase.max_parallel.unwrap_or(self.budget.max_parallel),
            })
            .collect()
    }

    /// Every searched space with the path prefix its problems are reported under.
    fn spaces(&self) -> Vec<(String, &BTreeMap<String, ParamSpec>)> {
        if self.phases.is_empty() {
            return vec![("space.".to_string(), &self.space)];
        }
        self.phases
            .iter()
            .enumerate()
            .map(|(index, phase)| (format!("phases[{index}].space."), &phase.space))
            .collect()
    }

    /// Whether some phase searches the parameter `name`.
    pub fn is_searched(&self, name: &str) -> bool {
        self.spaces()
            .iter()
            .any(|(_, space)| space.contains_key(name))
    }

    /// Whether some phase's parameter `name` has a condition.
    pub fn is_conditional(&self, name: &str) -> bool {
        self.spaces()
            .iter()
            .any(|(_, space)| space.get(name).is_some_and(|param| param.when.is_some()))
    }

    /// Whether a trial's final metrics meet every constraint.
    pub fn is_feasible(&self, metrics: &BTreeMap<String, f64>) -> bool {
        self.constraints
            .iter()
            .all(|constraint| constraint.holds_for(metrics))
    }
}

/// Problems with an algorithm's options, reported under `path` (`algorithm`,
/// `phases[1].algorithm`).
fn check_algorithm(algorithm: &AlgorithmSpec, path: &str, problem: &mut impl FnMut(&str, String)) {
    if algorithm.name == AlgorithmName::Grid && algorithm.grid_points == Some(0) {
        problem(&format!("{path}.grid_points"), "must be at least 1".into());
    }
    if algorithm.grid_points.is_some() && algorithm.name != AlgorithmName::Grid {
        problem(
            &format!("{path}.grid_points"),
            format!(
                "applies to the grid algorithm only, not '{}'",
                algorithm.name.as_str()
            ),
        );
    }
    if algorithm.initial_trials.is_some()
        && !matches!(algorithm.name, AlgorithmName::Bayesian | AlgorithmName::Tpe)
    {
        problem(
            &format!("{path}.initial_trials"),
            format!(
                "applies to the bayesian and tpe algorithms only, not '{}'",
                algorithm.name.as_str()
            ),
        );
    }
}

/// Problems with a search space's parameters, each path starting with `prefix`
/// (`"space."` in a sweep file, `""` in a study's SPACE.json).
pub fn validate_space(space: &BTreeMap<String, ParamSpec>, prefix: &str) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: String| {
        problems.push(FieldProblem {
            path: path.to_string(),
            message,
        })
    };
    for (name, param) in space {
        let path = format!("{prefix}{name}");
        if !is_param_name(name) {
            problem(
                &path,
                "parameter names use letters, digits and '_' and do not start with a digit \
                 (they become environment variable names)"
                    .into(),
            );
        }
        check_param(&path, param, &mut problem);
        if let Some(when) = &param.when {
            check_when(&format!("{path}.when"), name, when, space, &mut problem);
        }
    }
    if let Some(cycle) = condition_cycle(space) {
        problem(
            prefix.trim_end_matches('.'),
            format!("conditions (`when`) form a cycle: {}", cycle.join(" -> ")),
        );
    }
    problems
}

/// Problems with parameter `name`'s condition, reported under `path`.
fn check_when(
    path: &str,
    name: &str,
    when: &When,
    space: &BTreeMap<String, ParamSpec>,
    problem: &mut impl FnMut(&str, String),
) {
    if when.param == name {
        problem(path, format!("'{name}' cannot depend on itself"));
        return;
    }
    let Some(parent) = space.get(&when.param) else {
        let known: Vec<&str> = space.keys().map(String::as_str).collect();
        problem(
            path,
            format!(
                "unknown parameter '{}' (this space has: {})",
                when.param,
                known.join(", ")
            ),
        );
        return;
    };
    if parent.kind != ParamKind::Categorical {
        problem(
            path,
            format!(
                "'{}' is not categorical; a condition names a categorical parameter and some of \
                 its choices",
                when.param
            ),
        );
        return;
    }
    if when.values.is_empty() {
        problem(path, format!("lists no value of '{}'", when.param));
    }
    for value in &when.values {
        if !parent.choices.contains(value) {
            let choices: Vec<String> = parent
                .choices
                .iter()
                .map(ParamValue::to_json_fragment)
                .collect();
            problem(
                path,
                format!(
                    "{} is not a choice of '{}' ({})",
                    value.to_json_fragment(),
                    when.param,
                    choices.join(", ")
                ),
            );
        }
    }
}

/// The first cycle of conditions in `space` (`a -> b -> a`: a depends on b, b on a).
fn condition_cycle(space: &BTreeMap<String, ParamSpec>) -> Option<Vec<String>> {
    let parent = |name: &str| {
        space
            .get(name)
            .and_then(|param| param.when.as_ref())
            .map(|when| when.param.as_str())
            .filter(|parent| space.contains_key(*parent) && *parent != name)
    };
    for start in space.keys() {
        let mut path: Vec<&str> = vec![start];
        let mut at = start.as_str();
        while let Some(next) = parent(at) {
            if let Some(from) = path.iter().position(|p| *p == next) {
                // Reported once, from its smallest name.
                if path[from..].iter().min() != Some(&start.as_str()) || from != 0 {
                    break;
                }
                let mut cycle: Vec<String> = path[from..].iter().map(|p| p.to_string()).collect();
                cycle.push(next.to_string());
                return Some(cycle);
            }
            path.push(next);
            at = next;
        }
    }
    None
}

fn check_param(path: &str, param: &ParamSpec, problem: &mut impl FnMut(&str, String)) {
    match param.kind {
        ParamKind::Float | ParamKind::Int => {
            let (Some(low), Some(high)) = (param.low, param.high) else {
                problem(path, "numeric parameters need both `low` and `high`".into());
                return;
            };
            if !low.is_finite() {
                problem(&format!("{path}.low"), "must be a finite number".into());
            }
            if !high.is_finite() {
                problem(&format!("{path}.high"), "must be a finite number".into());
            }
            if low >= high {
                problem(
                    &format!("{path}.high"),
                    format!("must be greater than low ({low} >= {high})"),
                );
            }
            if param.log && low <= 0.0 {
                problem(
                    &format!("{path}.low"),
                    format!("a log-scaled range needs low > 0, found {low}"),
                );
            }
            if param.kind == ParamKind::Int && (low.fract() != 0.0 || high.fract() != 0.0) {
                problem(path, "int parameters need whole-number bounds".into());
            }
            if !param.choices.is_empty() {
                problem(
                    &format!("{path}.choices"),
                    "only categorical parameters have choices".into(),
                );
            }
        }
        ParamKind::Categorical => {
            if param.choices.is_empty() {
                problem(
                    &format!("{path}.choices"),
                    "a categorical parameter needs at least one choice".into(),
                );
            }
            if param.low.is_some() || param.high.is_some() || param.log {
                problem(
                    path,
                    "categorical parameters take `choices`, not low/high/log".into(),
                );
            }
            for (index, choice) in param.choices.iter().enumerate() {
                if param.choices[..index].contains(choice) {
                    problem(
                        &format!("{path}.choices[{index}]"),
                        format!("duplicate choice {choice}"),
                    );
                }
            }
        }
    }
}

/// Metric names as the `@flotilla` line format accepts them (`val/loss`, `class_1.f1`).
fn is_metric_name(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '/')
        })
}

/// Parameter names: usable as `FLOTILLA_PARAM_<NAME>` and as `{name}` placeholders.
fn is_param_name(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && text
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_')
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "quick"
constraints = ["accuracy >= 0.3"]

[objective]
metric = "loss"
direction = "minimize"

[space.x]
type = "float"
low = -5.0
high = 5.0

[space.lr]
type = "float"
low = 1e-4
high = 1e-1
log = true

[space.layers]
type = "int"
low = 1
high = 4

[space.opt]
type = "categorical"
choices = ["adam", "sgd"]

[budget]
max_trials = 10
max_parallel = 2
max_duration = "10m"

[trial]
command = "python3"
args = ["train.py", "--x={x}"]
metrics = ["loss", "accuracy"]
"#;

    fn problems_of(text: &str) -> Vec<FieldProblem> {
        match SweepSpec::from_toml(text, "test.toml") {
            Err(SpecError::Invalid { problems, .. }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn scheduling_share_and_team_are_read_and_checked() {
        let spec = SweepSpec::from_toml(GOOD, "test.toml").expect("valid");
        assert_eq!(spec.scheduling, Scheduling::default());
        assert_eq!(spec.scheduling.share, 1.0);
        let text = format!("{GOOD}\n[scheduling]\nshare = 2.5\nteam = \"vision\"\n");
        let spec = SweepSpec::from_toml(&text, "test.toml").expect("valid");
        assert_eq!(spec.scheduling.share, 2.5);
        assert_eq!(spec.scheduling.team.as_deref(), Some("vision"));
        let back = SweepSpec::from_toml(&spec.to_toml(), "round trip").expect("valid");
        assert_eq!(back, spec);
        for (section, path) in [
            ("share = 0", "scheduling.share"),
            ("share = -1.0", "scheduling.share"),
            ("share = 1e9", "scheduling.share"),
            ("share = nan", "scheduling.share"),
            ("team = \"\"", "scheduling.team"),
            ("team = \"a team\"", "scheduling.team"),
        ] {
            let problems = problems_of(&format!("{GOOD}\n[scheduling]\n{section}\n"));
            assert!(
                problems.iter().any(|p| p.path == path),
                "{section}: {problems:?}"
            );
        }
        let error = SweepSpec::from_toml(&format!("{GOOD}\n[scheduling]\npriority = 3\n"), "t")
            .expect_err("unknown field");
        assert!(error.to_string().contains("priority"), "{error}");
    }

    #[test]
    fn several_objectives_are_read_checked_and_give_a_front() {
        let text = GOOD.replace(
            "direction = \"minimize\"\n",
            "direction = \"minimize\"\n[[objective.also]]\nmetric = \"accuracy\"\ndirection = \"maximize\"\n",
        );
        let spec = SweepSpec::from_toml(&text, "test.toml").expect("valid");
        assert!(spec.objective.is_multi());
        assert_eq!(
            spec.objective.goals().collect::<Vec<_>>(),
            vec![
                ("loss", Direction::Minimize),
                ("accuracy", Direction::Maximize)
            ]
        );
        // Unknown, malformed and repeated metrics are named by their place.
        let bad = GOOD.replace(
            "direction = \"minimize\"\n",
            "direction = \"minimize\"\nalso = [{ metric = \"latency\", direction = \"minimize\" }, { metric = \"loss\", direction = \"maximize\" }, { metric = \"no good\", direction = \"minimize\" }]\n",
        );
        let problems = problems_of(&bad);
        let of = |path: &str| {
            problems
                .iter()
                .find(|problem| problem.path == path)
                .map(|problem| problem.message.clone())
                .unwrap_or_else(|| panic!("no problem at {path}: {problems:?}"))
        };
        assert!(
            of("objective.also[0].metric").contains("'latency' is not among the trial's metrics")
        );
        assert!(of("objective.also[1].metric").contains("already an objective"));
        assert!(of("objective.also[2].metric").contains("not a metric name"));
        let typo = GOOD.replace(
            "direction = \"minimize\"\n",
            "direction = \"minimize\"\nalso = [{ metric = \"accuracy\", direction = \"up\" }]\n",
        );
        let error = SweepSpec::from_toml(&typo, "test.toml").expect_err("a bad direction");
        assert!(error.to_string().contains("up"), "{error}");

        // The front: trials 0 (best loss) and 2 (best accuracy) trade off; 1 is dominated by
        // 0, 3 failed, 4 is infeasible, 5 never reported accuracy, 6 ties 0 exactly.
        let trial = |number: u32, state: TrialState, loss: f64, accuracy: Option<f64>, feasible| {
            TrialRecord {
                state,
                objective: Some(loss),
                feasible,
                metrics: accuracy
                    .map(|accuracy| ("accuracy".to_string(), accuracy))
                    .into_iter()
                    .collect(),
                ..TrialRecord::pending(
                    crate::TrialId {
                        sweep: crate::SweepId(1),
                        number,
                    },
                    BTreeMap::new(),
                    0,
                )
            }
        };
        let trials = vec![
            trial(0, TrialState::Succeeded, 0.1, Some(0.8), true),
            trial(1, TrialState::Succeeded, 0.2, Some(0.7), true),
            trial(2, TrialState::Succeeded, 0.3, Some(0.9), true),
            trial(3, TrialState::Failed, 0.0, Some(1.0), true),
            trial(4, TrialState::Succeeded, 0.0, Some(1.0), false),
            trial(5, TrialState::Succeeded, 0.0, None, true),
            trial(6, TrialState::Succeeded, 0.1, Some(0.8), true),
        ];
        let front: Vec<u32> = spec
            .objective
            .front(&trials)
            .iter()
            .map(|trial| trial.id.number)
            .collect();
        assert_eq!(front, vec![0, 2, 6]);
        // One objective: the trials tied for the best.
        let single = Objective::new("loss", Direction::Minimize);
        let best: Vec<u32> = single.front(&trials).iter().map(|t| t.id.number).collect();
        assert_eq!(best, vec![5]);
    }

    const PHASED: &str = r#"
name = "phased"

[objective]
metric = "loss"
direction = "minimize"

[budget]
max_parallel = 3

[trial]
command = "python3"
args = ["train.py", "--x={x}", "--lr={lr}"]
metrics = ["loss"]

[[phases]]
name = "coarse"
max_trials = 4
[phases.space.x]
type = "float"
low = -5.0
high = 5.0

[[phases]]
name = "fine"
max_trials = 6
max_parallel = 2
[phases.algorithm]
name = "tpe"
[phases.space.lr]
type = "float"
low = 1e-4
high = 1e-1
log = true
"#;

    const CONDITIONAL: &str = r#"
name = "conditional"
warm_start = ["s3", "last-weeks-sweep"]

[objective]
metric = "loss"
direction = "minimize"

[space.optimizer]
type = "categorical"
choices = ["sgd", "adam", "rmsprop"]

[space.momentum]
type = "float"
low = 0.0
high = 0.99
when = { optimizer = "sgd" }

[space.beta2]
type = "float"
low = 0.9
high = 0.9999
when = { optimizer = ["adam", "rmsprop"] }

[budget]
max_trials = 10
max_parallel = 2

[trial]
command = "python3"
args = ["train.py"]
metrics = ["loss"]
"#;

    #[test]
    fn conditions_and_warm_starts_parse_and_round_trip() {
        let spec = SweepSpec::from_toml(CONDITIONAL, "conditional.toml").expect("valid");
        assert_eq!(
            spec.space["momentum"].when,
            Some(When::new("optimizer", [ParamValue::Str("sgd".into())]))
        );
        assert_eq!(
            spec.space["beta2"].when,
            Some(When::new(
                "optimizer",
                [
                    ParamValue::Str("adam".into()),
                    ParamValue::Str("rmsprop".into())
                ]
            ))
        );
        assert_eq!(spec.warm_start, ["s3", "last-weeks-sweep"]);
        assert!(spec.is_conditional("momentum") && !spec.is_conditional("optimizer"));
        let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
        assert_eq!(again, spec);
        let wire = crate::codec::encode(&spec).expect("encode");
        assert_eq!(
            crate::codec::decode::<SweepSpec>(&wire).expect("decode"),
            spec
        );
    }

    #[test]
    fn bad_conditions_are_named_with_their_parameter() {
        let problems = problems_of(
            &CONDITIONAL
                .replace(
                    "when = { optimizer = \"sgd\" }",
                    "when = { optimiser = \"sgd\" }",
                )
                .replace(
                    "when = { optimizer = [\"adam\", \"rmsprop\"] }",
                    "when = { optimizer = [\"adam\", \"adamw\"] }",
                )
                .replace(
                    "args = [\"train.py\"]",
                    "args = [\"train.py\", \"--beta2={beta2}\"]",
                ),
        );
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|p| p.starts_with("space.momentum.when: unknown parameter 'optimiser' (this space has: beta2, momentum, optimizer)")),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"space.beta2.when: \"adamw\" is not a choice of 'optimizer' (\"sgd\", \"adam\", \"rmsprop\")"
                    .to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.iter().any(|p| p
                .starts_with("trial.args[1]: placeholder {beta2} names a conditional parameter")),
            "{text:?}"
        );

        let cycle = CONDITIONAL.replace(
            "[space.optimizer]\ntype = \"categorical\"\n",
            "[space.optimizer]\ntype = \"categorical\"\nwhen = { flavour = \"x\" }\n",
        ) + "\n[space.flavour]\ntype = \"categorical\"\nchoices = [\"x\", \"y\"]\nwhen = { optimizer = \"sgd\" }\n";
        let text: Vec<String> = problems_of(&cycle)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            text.contains(
                &"space: conditions (`when`) form a cycle: flavour -> optimizer -> flavour"
                    .to_string()
            ),
            "{text:?}"
        );

        let numeric =
            CONDITIONAL.replace("when = { optimizer = \"sgd\" }", "when = { beta2 = 0.95 }");
        let text: Vec<String> = problems_of(&numeric)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            text.iter()
                .any(|p| p.starts_with("space.momentum.when: 'beta2' is not categorical")),
            "{text:?}"
        );

        let two = CONDITIONAL.replace(
            "when = { optimizer = \"sgd\" }",
            "when = { optimizer = \"sgd\", beta2 = 0.95 }",
        );
        let Err(SpecError::Syntax { message, .. }) = SweepSpec::from_toml(&two, "two.toml") else {
            panic!("two parameters in one condition must be refused");
        };
        assert!(
            message.contains("`when` may name one parameter"),
            "{message}"
        );

        let grid = CONDITIONAL.replace("[budget]", "[algorithm]\nname = \"grid\"\n\n[budget]");
        let text: Vec<String> = problems_of(&grid).iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|p| p.starts_with("warm_start: a grid enumerates its points")),
            "{text:?}"
        );
    }

    #[test]
    fn phases_parse_inherit_the_sweep_and_round_trip() {
        let spec = SweepSpec::from_toml(PHASED, "phased.toml").expect("valid");
        let phases = spec.phases();
        assert_eq!(phases.len(), 2);
        assert_eq!(
            (phases[0].name, phases[0].max_trials, phases[0].max_parallel),
            ("coarse", 4, 3)
        );
        assert_eq!(phases[0].algorithm.name, AlgorithmName::Bayesian);
        assert_eq!(
            (phases[1].name, phases[1].max_trials, phases[1].max_parallel),
            ("fine", 6, 2)
        );
        assert_eq!(phases[1].algorithm.name, AlgorithmName::Tpe);
        assert!(spec.is_searched("lr") && spec.is_searched("x") && !spec.is_searched("y"));
        let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
        assert_eq!(again, spec);
        // Without phases the sweep is its own single phase.
        let single = SweepSpec::from_toml(GOOD, "good.toml").expect("valid");
        let phases = single.phases();
        assert_eq!(
            (phases.len(), phases[0].name, phases[0].max_trials),
            (1, "quick", 10)
        );
    }

    #[test]
    fn phase_problems_name_the_phase() {
        let broken = PHASED
            .replace("name = \"fine\"", "name = \"coarse\"")
            .replace("max_trials = 6", "max_trials = 0")
            .replace("[budget]\n", "[budget]\nmax_trials = 5\n")
            .replace("--lr={lr}", "--y={y}")
            .replace("low = 1e-4", "low = -1.0");
        let problems = problems_of(&broken);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for path in [
            "phases[1].name",
            "phases[1].max_trials",
            "budget.max_trials",
            "trial.args[2]",
            "phases[1].space.lr.low",
        ] {
            assert!(paths.contains(&path), "{path} missing from {problems:?}");
        }
        let both = format!("{PHASED}\n[space.z]\ntype = \"float\"\nlow = 0.0\nhigh = 1.0\n");
        let problems = problems_of(&both);
        assert!(
            problems
                .iter()
                .any(|p| p.path == "space" && p.message.contains("phases[N].space")),
            "{problems:?}"
        );
        let empty = PHASED.replace(
            "[phases.space.x]\ntype = \"float\"\nlow = -5.0\nhigh = 5.0\n",
            "",
        );
        let problems = problems_of(&empty);
        assert!(
            problems.iter().any(|p| p.path == "phases[0].space"),
            "{problems:?}"
        );
    }

    #[test]
    fn asha_promotion_needs_epochs_and_whole_rungs() {
        let command = format!(
            "{GOOD}\n[early_stopping]\nrule = \"asha\"\nresource = \"loss\"\nmin_resource = 1.5\nmax_resource = 9\npromotion = true\n"
        );
        let problems = problems_of(&command);
        for path in ["early_stopping.resource", "early_stopping.min_resource"] {
            assert!(
                problems.iter().any(|p| p.path == path),
                "{path} missing from {problems:?}"
            );
        }
        // A command trial may pause at rungs too: it is told its epochs and checkpoints.
        let command = format!(
            "{}\n[early_stopping]\nrule = \"asha\"\nresource = \"epoch\"\nmin_resource = 1\nmax_resource = 9\npromotion = true\n",
            GOOD.replace(
                "metrics = [\"loss\", \"accuracy\"]",
                "metrics = [\"loss\", \"accuracy\", \"epoch\"]"
            )
        );
        let spec = SweepSpec::from_toml(&command, "command.toml").expect("valid");
        assert!(spec.early_stopping.as_ref().is_some_and(|s| s.promotion));
        let trainer = r#"
name = "promoted"
[objective]
metric = "val_loss"
direction = "minimize"
[space.learning_rate]
type = "float"
low = 0.0001
high = 0.1
log = true
[budget]
max_trials = 9
[trial]
trainer = "mlp_regressor"
[trial.settings]
epochs = 5
[early_stopping]
rule = "asha"
resource = "epoch"
min_resource = 1
max_resource = 9
promotion = true
"#;
        let problems = problems_of(trainer);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "trial.settings.epochs");
        let fixed = trainer.replace("epochs = 5", "epochs = 9");
        let spec = SweepSpec::from_toml(&fixed, "fixed.toml").expect("valid");
        assert!(spec.early_stopping.as_ref().is_some_and(|s| s.promotion));
        let median = fixed.replace("rule = \"asha\"", "rule = \"median\"");
        assert!(
            problems_of(&median)
                .iter()
                .any(|p| p.path == "early_stopping.promotion")
        );
    }

    #[test]
    fn early_stopping_is_checked() {
        let asha = format!(
            "{GOOD}\n[early_stopping]\nrule = \"asha\"\nresource = \"epochs\"\nmin_resource = 0\nreduction_factor = 1.0\n"
        );
        let problems = problems_of(&asha);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for path in [
            "early_stopping.resource",
            "early_stopping.min_resource",
            "early_stopping.max_resource",
            "early_stopping.reduction_factor",
        ] {
            assert!(paths.contains(&path), "{path} missing from {problems:?}");
        }
        let good = format!(
            "{GOOD}\n[early_stopping]\nrule = \"median\"\nresource = \"loss\"\nmin_resource = 2\n"
        );
        let spec = SweepSpec::from_toml(&good, "test.toml").expect("valid");
        let stopping = spec.early_stopping.clone().expect("early stopping");
        assert_eq!(
            (stopping.rule, stopping.min_trials),
            (StoppingRule::Median, 5)
        );
        let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
        assert_eq!(again, spec);

        // Hyperband needs what ASHA needs, and stops trials in flight (no promotion form).
        let hyperband = format!(
            "{GOOD}\n[early_stopping]\nrule = \"hyperband\"\nresource = \"loss\"\nmin_resource = 1\npromotion = true\n"
        );
        let problems = problems_of(&hyperband);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.contains(&"early_stopping.max_resource"),
            "{problems:?}"
        );
        assert!(paths.contains(&"early_stopping.promotion"), "{problems:?}");
        let good = format!(
            "{GOOD}\n[early_stopping]\nrule = \"hyperband\"\nresource = \"loss\"\nmin_resource = 1\nmax_resource = 27\n"
        );
        let spec = SweepSpec::from_toml(&good, "test.toml").expect("valid");
        assert_eq!(
            spec.early_stopping.as_ref().map(|stopping| stopping.rule),
            Some(StoppingRule::Hyperband)
        );
        let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
        assert_eq!(again, spec);
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let spec = SweepSpec::from_toml(GOOD, "test.toml").expect("valid");
        assert_eq!(spec.space.len(), 4);
        assert_eq!(spec.constraints[0].op, ConstraintOp::AtLeast);
        assert_eq!(spec.budget.max_duration, Some(Duration::from_secs(600)));
        assert_eq!(spec.resources, Resources::default());
        assert_eq!(spec.retries.max_retries, 2);
        assert_eq!(spec.retries.max_reschedules, 10);
        let unbounded = format!("{GOOD}\n[retries]\nmax_reschedules = 1001\n");
        assert!(
            problems_of(&unbounded)
                .iter()
                .any(|problem| problem.path == "retries.max_reschedules")
        );
        assert_eq!(spec.algorithm.name, AlgorithmName::Bayesian);
        let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
        assert_eq!(again, spec);
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let text = GOOD.replace("max_parallel = 2", "max_paralel = 2");
        let error = SweepSpec::from_toml(&text, "test.toml").expect_err("unknown field");
        let message = error.to_string();
        assert!(message.contains("max_paralel"), "{message}");
        assert!(message.contains("line"), "{message}");
    }

    #[test]
    fn bad_range_names_the_field() {
        let text = GOOD.replace("low = -5.0", "low = 7.0");
        let problems = problems_of(&text);
        assert!(
            problems
                .iter()
                .any(|p| p.path == "space.x.high" && p.message.contains("greater than low")),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_constraint_metric_names_the_constraint() {
        let text = GOOD.replace("accuracy >= 0.3", "class_1_accuracy >= 0.3");
        let problems = problems_of(&text);
        assert!(
            problems
                .iter()
                .any(|p| p.path == "constraints[0]" && p.message.contains("class_1_accuracy")),
            "{problems:?}"
        );
    }

    #[test]
    fn empty_space_is_refused_and_all_problems_are_reported() {
        let start = GOOD.find("[space.x]").expect("has space");
        let end = GOOD.find("[budget]").expect("has budget");
        let text = format!("{}[space]\n{}", &GOOD[..start], &GOOD[end..])
            .replace("max_trials = 10", "max_trials = 0")
            .replace("--x={x}", "--x={y}");
        let problems = problems_of(&text);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"space"), "{paths:?}");
        assert!(paths.contains(&"budget.max_trials"), "{paths:?}");
        assert!(paths.contains(&"trial.args[1]"), "{paths:?}");
    }

    #[test]
    fn log_range_needs_positive_low_and_constraints_parse_strictly() {
        let text = GOOD.replace("low = 1e-4", "low = 0.0");
        assert!(problems_of(&text).iter().any(|p| p.path == "space.lr.low"));
        assert!("accuracy => 3".parse::<Constraint>().is_err());
        assert!(">= 3".parse::<Constraint>().is_err());
        assert!("acc >= high".parse::<Constraint>().is_err());
        let parsed: Constraint = "class_1_accuracy >= 0.30".parse().expect("parses");
        assert!(parsed.holds(0.3) && !parsed.holds(0.29));
    }

    const LSTM: &str = r#"
name = "lstm"
constraints = ["class_1_accuracy >= 0.30"]

[objective]
metric = "accuracy"
direction = "maximize"

[space.learning_rate]
type = "float"
low = 1e-4
high = 1e-2
log = true

[space.hidden_size]
type = "categorical"
choices = [64, 128]

[budget]
max_trials = 4

[trial]
trainer = "lstm_classifier"
settings = { epochs = 3, time_warp_sigma = 0.15 }
"#;

    #[test]
    fn trainer_trials_are_checked_against_the_trainer() {
        let spec = SweepSpec::from_toml(LSTM, "lstm.toml").expect("valid LSTM sweep");
        assert!(
            spec.reported_metrics()
                .contains(&"class_1_accuracy".to_string())
        );

        let bad = LSTM
            .replace(
                "[space.hidden_size]\ntype = \"categorical\"\nchoices = [64, 128]",
                "[space.hidden_size]\ntype = \"float\"\nlow = 8.0\nhigh = 64.0",
            )
            .replace("time_warp_sigma = 0.15", "time_warp_sigma = 3.0, hiden = 4")
            .replace("class_1_accuracy >= 0.30", "class_2_accuracy >= 0.30")
            .replace("low = 1e-4", "low = 1e-9");
        let problems = problems_of(&bad);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "space.hidden_size",
            "space.learning_rate",
            "trial.settings.time_warp_sigma",
            "trial.settings.hiden",
            "constraints[0]",
        ] {
            assert!(
                paths.contains(&expected),
                "no problem at {expected}: {problems:?}"
            );
        }
        let unknown = problems
            .iter()
            .find(|p| p.path == "trial.settings.hiden")
            .expect("hiden");
        assert!(
            unknown.message.contains("no hyperparameter 'hiden'"),
            "{unknown:?}"
        );

        let unknown_trainer = problems_of(&LSTM.replace("lstm_classifier", "transformer"));
        assert!(
            unknown_trainer.iter().any(|p| p.path == "trial.trainer"
                && p.message.contains("known: lstm_classifier, mlp_regressor")),
            "{unknown_trainer:?}"
        );
    }

    #[test]
    fn placeholders_are_substituted() {
        let mut params = BTreeMap::new();
        params.insert("x".to_string(), ParamValue::Float(0.5));
        params.insert("opt".to_string(), ParamValue::Str("adam".into()));
        assert_eq!(substitute("--x={x} --o={opt}", &params), "--x=0.5 --o=adam");
        assert_eq!(placeholders("{a}-{b}"), vec!["a", "b"]);
    }

    #[test]
    fn a_serving_table_is_read_with_its_defaults_and_checked() {
        let text = format!(
            "{GOOD}\n[serving]\ncommand = \"python3\"\nargs = [\"serve.py\"]\nenv = {{ API_KEY = \"s3cret\" }}\n"
        );
        let spec = SweepSpec::from_toml(&text, "test.toml").expect("valid");
        let serving = spec.serving.clone().expect("a serving table");
        assert_eq!(serving.health, "/healthz");
        assert_eq!(serving.ready_timeout, Duration::from_secs(60));
        assert_eq!(serving.replicas, 1);
        assert_eq!(
            spec.redacted().serving.expect("kept").env["API_KEY"],
            REDACTED
        );

        let bad = format!(
            "{GOOD}\n[serving]\ncommand = \" \"\nhealth = \"healthz\"\nready_timeout = \"0s\"\nreplicas = 0\nslots = 5000\ngpus = 65\nenv = {{ FLOTILLA_SERVE_PORT = \"1\" }}\n"
        );
        let paths: Vec<String> = problems_of(&bad).into_iter().map(|p| p.path).collect();
        for path in [
            "serving.command",
            "serving.health",
            "serving.ready_timeout",
            "serving.replicas",
            "serving.slots",
            "serving.gpus",
            "serving.env.FLOTILLA_SERVE_PORT",
        ] {
            assert!(paths.iter().any(|p| p == path), "{path} in {paths:?}");
        }

        // Built-in trainers' models are served by the agents themselves.
        let builtin = GOOD
            .replace(
                "command = \"python3\"\nargs = [\"train.py\", \"--x={x}\"]\nmetrics = [\"loss\", \"accuracy\"]",
                "trainer = \"lstm_classifier\"",
            );
        let builtin = format!("{builtin}\n[serving]\ncommand = \"python3\"\n");
        let problems = problems_of(&builtin);
        assert!(
            problems
                .iter()
                .any(|p| p.path == "serving" && p.message.contains("command trial")),
            "{problems:?}"
        );
        let unknown = format!("{GOOD}\n[serving]\ncommand = \"x\"\nport = 80\n");
        assert!(SweepSpec::from_toml(&unknown, "test.toml").is_err());
    }
}
