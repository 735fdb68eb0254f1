//! `[objective]` and `constraints`: what a sweep optimizes and what a trial must meet.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SweepSpec;
use crate::messages::{Metrics, TrialRecord, TrialState};

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

/// Metric names as the `@flotilla` line format accepts them (`val/loss`, `class_1.f1`).
fn is_metric_name(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '/')
        })
}

impl Objective {
    /// Each objective names a metric the trial reports, once.
    pub(super) fn check(&self, reported: &[String], problem: &mut impl FnMut(&str, String)) {
        if !is_metric_name(&self.metric) {
            problem(
                "objective.metric",
                format!("'{}' is not a metric name", self.metric),
            );
        } else if !reported.is_empty() && !reported.contains(&self.metric) {
            problem(
                "objective.metric",
                format!(
                    "'{}' is not among the trial's metrics {:?}",
                    self.metric, reported
                ),
            );
        }
        for (index, goal) in self.also.iter().enumerate() {
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
            let repeated = std::iter::once(&self.metric)
                .chain(self.also[..index].iter().map(|goal| &goal.metric))
                .any(|metric| *metric == goal.metric);
            if repeated {
                problem(
                    &path,
                    format!("'{}' is already an objective of this sweep", goal.metric),
                );
            }
        }
    }
}

/// Each constraint names a reported metric and a finite threshold.
pub(super) fn check_constraints(
    constraints: &[Constraint],
    reported: &[String],
    problem: &mut impl FnMut(&str, String),
) {
    for (index, constraint) in constraints.iter().enumerate() {
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
}

impl SweepSpec {
    /// Whether a trial's final metrics meet every constraint.
    pub fn is_feasible(&self, metrics: &BTreeMap<String, f64>) -> bool {
        self.constraints
            .iter()
            .all(|constraint| constraint.holds_for(metrics))
    }
}
