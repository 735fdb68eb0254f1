//! `[early_stopping]`: the rule (ASHA, Hyperband, median) that stops trials early, and
//! ASHA's promotion form.

use serde::{Deserialize, Serialize};

use super::SweepSpec;

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

impl SweepSpec {
    /// The rule's resource is a reported metric and its rungs make sense for the rule.
    pub(super) fn check_early_stopping(
        &self,
        stopping: &EarlyStopping,
        reported: &[String],
        problem: &mut impl FnMut(&str, String),
    ) {
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
                        "applies to the asha rule only (Hyperband stops trials in flight)".into(),
                    );
                } else if stopping.promotion {
                    self.check_promotion(stopping, &mut *problem);
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
}
