//! The rollout decision: from the traffic of the baseline and the canary, hold, move to the
//! next stage, promote, or roll back.
//!
//! At every check, for each metric (error rate, latency, and accuracy when labels come back):
//!
//! - **Harm** (roll back): a mixture SPRT of "the canary is worse by a quarter of the metric's margin"
//!   on everything counted since the rollout began. It rolls back as soon as the canary is
//!   worse than that with evidence Λ ≥ k/α, at any stage and at any look: a canary as good as
//!   the baseline (or worse by less than a quarter of the margin) is rolled back with probability at
//!   most α over the whole rollout. Testing "no difference" instead would, with enough
//!   traffic, roll back canaries for differences far too small to matter (a 4% latency
//!   difference between two builds, with a margin of 50%).
//! - **Stages** limit the damage while evidence accumulates: a stage advances once its
//!   minimum duration has passed and the canary has served its minimum requests there with
//!   no harm shown.
//! - **Safety** (promote): a mixture SPRT of "the canary is worse by exactly the metric's
//!   margin", on the last stage's traffic (where the canary has the most of it, and baseline
//!   and canary share the same period). Rejecting it on the good side (Λ ≥ k/β) shows the
//!   canary is not worse by the margin. The last stage promotes to 100% once every present
//!   metric is shown safe: a canary worse by the margin or more is promoted with probability
//!   at most β.
//!
//! k is the number of metrics (Bonferroni), so the rates hold for all metrics together. A
//! stage that cannot finish within the policy's maximum duration is rolled back
//! (inconclusive): a canary that cannot be shown good is not promoted.

use std::time::Duration;

/// The harm test's null: the canary worse by this share of the metric's margin.
pub const HARM_TOLERANCE: f64 = 0.25;

use serde::{Deserialize, Serialize};

use crate::stats::{Arm, Difference, Metric};

/// One canary stage: its share of traffic and how long and how much it must run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The canary's share of requests, in (0, 1).
    pub weight: f64,
    #[serde(with = "humantime_serde")]
    pub min_duration: Duration,
    /// Requests the canary must serve in this stage before it may advance.
    pub min_requests: u64,
    /// The metrics that gate this stage (protocol 12): harm on one of them rolls back, and
    /// at the last stage each must be shown within its margin. Empty: the policy's
    /// `metrics`. The others are still measured and shown.
    #[serde(default)]
    pub metrics: Vec<Metric>,
}

/// In a policy file (`flotilla rollout start --policy FILE.toml`) every field is optional;
/// a missing one keeps its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Comparison stages, weights increasing; passing the last promotes to 100%.
    pub stages: Vec<Stage>,
    /// Probability of rolling back a canary that is as good as the baseline.
    pub false_rollback: f64,
    /// Probability of promoting a canary that is worse by a margin or more.
    pub false_promotion: f64,
    /// Error-rate increase that matters (absolute: 0.01 is one point).
    pub error_margin: f64,
    /// Latency increase that matters (relative: 0.1 is 10% slower).
    pub latency_margin: f64,
    /// Accuracy drop that matters (absolute).
    pub accuracy_margin: f64,
    /// Mean-squared-error increase that matters (relative to the baseline's: 0.1 is 10%
    /// worse).
    pub squared_error_margin: f64,
    /// The metrics that gate every stage without a list of its own (default: all four;
    /// those that need feedback count only once feedback arrives).
    pub metrics: Vec<Metric>,
    /// Samples each version needs in a window before a metric is tested on it.
    pub min_samples: u64,
    /// A stage that has not shown safety by then is rolled back.
    #[serde(with = "humantime_serde")]
    pub max_stage_duration: Duration,
}

impl Default for Policy {
    /// 1% → 10% → 50% → 100%, with 5% error rates and margins of one point of errors, 10% of
    /// latency and two points of accuracy.
    fn default() -> Policy {
        let stage = |weight: f64, min_requests: u64| Stage {
            weight,
            min_duration: Duration::from_secs(60),
            min_requests,
            metrics: Vec::new(),
        };
        Policy {
            stages: vec![stage(0.01, 200), stage(0.10, 1000), stage(0.50, 2000)],
            false_rollback: 0.05,
            false_promotion: 0.05,
            error_margin: 0.01,
            latency_margin: 0.10,
            accuracy_margin: 0.02,
            squared_error_margin: 0.10,
            metrics: Metric::ALL.to_vec(),
            min_samples: 100,
            max_stage_duration: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("a rollout needs at least one stage")]
    NoStages,
    #[error("stage {stage}: weight {weight} must be above the previous stage's and below 1")]
    Weight { stage: usize, weight: f64 },
    #[error("{field} = {value} must be in (0, 0.5]")]
    Rate { field: &'static str, value: f64 },
    #[error("{field} = {value} must be above 0")]
    Margin { field: &'static str, value: f64 },
    #[error("min_samples must be at least 2")]
    MinSamples,
    #[error(
        "{field} names no metric: give at least one of error_rate, latency, accuracy, squared_error"
    )]
    NoMetrics { field: String },
    #[error(
        "stage {stage}: min_duration {min_duration:?} is longer than max_stage_duration \
         {max:?}, so the stage could never pass"
    )]
    Duration {
        stage: usize,
        min_duration: Duration,
        max: Duration,
    },
}

impl Policy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.stages.is_empty() {
            return Err(PolicyError::NoStages);
        }
        let mut previous = 0.0;
        for (index, stage) in self.stages.iter().enumerate() {
            if !(stage.weight > previous && stage.weight < 1.0) {
                return Err(PolicyError::Weight {
                    stage: index + 1,
                    weight: stage.weight,
                });
            }
            previous = stage.weight;
            if stage.min_duration >= self.max_stage_duration {
                return Err(PolicyError::Duration {
                    stage: index + 1,
                    min_duration: stage.min_duration,
                    max: self.max_stage_duration,
                });
            }
        }
        for (field, value) in [
            ("false_rollback", self.false_rollback),
            ("false_promotion", self.false_promotion),
        ] {
            if !(value > 0.0 && value <= 0.5) {
                return Err(PolicyError::Rate { field, value });
            }
        }
        for (field, value) in [
            ("error_margin", self.error_margin),
            ("latency_margin", self.latency_margin),
            ("accuracy_margin", self.accuracy_margin),
            ("squared_error_margin", self.squared_error_margin),
        ] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(PolicyError::Margin { field, value });
            }
        }
        if self.min_samples < 2 {
            return Err(PolicyError::MinSamples);
        }
        if self.metrics.is_empty() {
            return Err(PolicyError::NoMetrics {
                field: "metrics".into(),
            });
        }
        Ok(())
    }

    /// The margin of `metric` on the scale it is tested on; squared error's is relative to
    /// the baseline's mean (`baseline`).
    pub fn margin(&self, metric: Metric, baseline: f64) -> f64 {
        match metric {
            Metric::ErrorRate => self.error_margin,
            Metric::Latency => (1.0 + self.latency_margin).ln(),
            Metric::Accuracy => self.accuracy_margin,
            Metric::SquaredError => (self.squared_error_margin * baseline).max(1e-12),
        }
    }

    /// The metrics that gate stage `stage`.
    pub fn gates(&self, stage: usize) -> &[Metric] {
        match self.stages.get(stage) {
            Some(stage) if !stage.metrics.is_empty() => &stage.metrics,
            _ => &self.metrics,
        }
    }
}

/// The baseline's and the canary's traffic over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub baseline: Arm,
    pub canary: Arm,
}

impl Pair {
    pub fn since(&self, earlier: &Pair) -> Pair {
        Pair {
            baseline: self.baseline.since(&earlier.baseline),
            canary: self.canary.since(&earlier.canary),
        }
    }
}

/// Where a rollout is when it is checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Check<'a> {
    /// Index into `Policy::stages`.
    pub stage: usize,
    pub stage_elapsed: Duration,
    /// Traffic since the current stage began.
    pub stage_traffic: &'a Pair,
    /// Traffic since the rollout began.
    pub total_traffic: &'a Pair,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Not enough evidence yet.
    Hold,
    /// Move to stage `stage` (an index into the policy's stages).
    Advance { stage: usize },
    /// The last stage passed: the canary takes all traffic.
    Promote,
    /// The canary is worse on `metric`, or could not be shown good in time (`metric` is
    /// `None`): all traffic back to the baseline at once.
    Rollback { metric: Option<Metric> },
}

/// One metric's comparison at one check: what the verdict rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub metric: Metric,
    /// Baseline and canary on the tested scale (rates, or mean ln seconds for latency), over
    /// the stage's traffic.
    pub baseline: Option<f64>,
    pub canary: Option<f64>,
    /// Samples (baseline, canary) in the stage.
    pub samples: (u64, u64),
    /// ln Λ for harm (whole rollout) and for safety (stage); `None` before `min_samples`.
    /// `safe` is asked of the last stage only.
    pub harm: Option<f64>,
    pub safety: Option<f64>,
    /// Harm shown on a metric that gates the stage (one that does not is shown only).
    pub harmful: bool,
    pub safe: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
    pub evidence: Vec<Evidence>,
}

/// Decides one check of a rollout. Pure: the caller keeps the traffic and the clock.
pub fn decide(policy: &Policy, check: Check<'_>) -> Decision {
    let stage_index = check.stage.min(policy.stages.len() - 1);
    let gates = policy.gates(stage_index);
    let metrics = gates.len().max(1) as f64;
    let harm_line = (metrics / policy.false_rollback).ln();
    let safety_line = (metrics / policy.false_promotion).ln();
    let stage = &policy.stages[stage_index];
    let mut evidence = Vec::new();
    for metric in Metric::ALL {
        let enough = |pair: &Pair| {
            let baseline = pair.baseline.moments(metric)?;
            let canary = pair.canary.moments(metric)?;
            (baseline.samples >= policy.min_samples && canary.samples >= policy.min_samples)
                .then_some((baseline, canary))
        };
        let gating = gates.contains(&metric);
        let harm = enough(check.total_traffic).map(|(baseline, canary)| {
            let margin = policy.margin(metric, baseline.mean);
            let tau2 = margin * margin;
            let difference = Difference::between(&baseline, &canary);
            // A difference under a quarter of the margin is no reason to roll back.
            let null = metric.worse() * margin * HARM_TOLERANCE;
            let worse = metric.worse() * (difference.estimate - null) > 0.0;
            (difference.log_mixture_ratio(null, tau2), worse)
        });
        let stage_moments = (
            check.stage_traffic.baseline.moments(metric),
            check.stage_traffic.canary.moments(metric),
        );
        let safety = enough(check.stage_traffic).map(|(baseline, canary)| {
            let margin = policy.margin(metric, baseline.mean);
            let tau2 = margin * margin;
            let difference = Difference::between(&baseline, &canary);
            let null = metric.worse() * margin;
            let better_than_margin = metric.worse() * (difference.estimate - null) < 0.0;
            (difference.log_mixture_ratio(null, tau2), better_than_margin)
        });
        evidence.push(Evidence {
            metric,
            baseline: stage_moments.0.map(|m| m.mean),
            canary: stage_moments.1.map(|m| m.mean),
            samples: (
                stage_moments.0.map_or(0, |m| m.samples),
                stage_moments.1.map_or(0, |m| m.samples),
            ),
            harm: harm.map(|(ratio, _)| ratio),
            safety: safety.map(|(ratio, _)| ratio),
            harmful: gating && harm.is_some_and(|(ratio, worse)| worse && ratio >= harm_line),
            safe: safety.is_some_and(|(ratio, better)| better && ratio >= safety_line),
        });
    }

    if let Some(bad) = evidence.iter().find(|evidence| evidence.harmful) {
        let reason = format!(
            "the canary's {} is worse than the baseline's ({}), with evidence ln Λ = {:.1} ≥ {:.1}",
            bad.metric.name(),
            describe(bad),
            bad.harm.unwrap_or_default(),
            harm_line
        );
        return Decision {
            verdict: Verdict::Rollback {
                metric: Some(bad.metric),
            },
            reason,
            evidence,
        };
    }
    // Accuracy counts once labels come back for the stage; the others always do. Safety is
    // asked of the last stage only.
    let last = check.stage + 1 >= policy.stages.len();
    let present = |evidence: &&Evidence| {
        gates.contains(&evidence.metric)
            && (!evidence.metric.from_feedback() || evidence.samples.0 + evidence.samples.1 > 0)
    };
    let unproven: Vec<&Evidence> = if last {
        evidence
            .iter()
            .filter(present)
            .filter(|evidence| !evidence.safe)
            .collect()
    } else {
        Vec::new()
    };
    let canary_requests = check.stage_traffic.canary.requests;
    if unproven.is_empty()
        && check.stage_elapsed >= stage.min_duration
        && canary_requests >= stage.min_requests
    {
        let (verdict, reason) = if last {
            (
                Verdict::Promote,
                "every metric is within its margin at the last stage: promote to 100%".to_string(),
            )
        } else {
            let next = check.stage + 1;
            (
                Verdict::Advance { stage: next },
                format!(
                    "no harm after {}s and {canary_requests} canary requests: advance to {}%",
                    check.stage_elapsed.as_secs(),
                    policy.stages[next].weight * 100.0
                ),
            )
        };
        return Decision {
            verdict,
            reason,
            evidence,
        };
    }
    if check.stage_elapsed >= policy.max_stage_duration {
        let names: Vec<&str> = unproven.iter().map(|e| e.metric.name()).collect();
        return Decision {
            verdict: Verdict::Rollback { metric: None },
            reason: format!(
                "inconclusive: after {}s at {}% the canary's {} is not shown within its margin",
                check.stage_elapsed.as_secs(),
                stage.weight * 100.0,
                if names.is_empty() {
                    "traffic".to_string()
                } else {
                    names.join(", ")
                }
            ),
            evidence,
        };
    }
    let mut waiting = Vec::new();
    if check.stage_elapsed < stage.min_duration {
        waiting.push(format!(
            "{}s of the stage's {}s",
            check.stage_elapsed.as_secs(),
            stage.min_duration.as_secs()
        ));
    }
    if canary_requests < stage.min_requests {
        waiting.push(format!(
            "{canary_requests} of {} canary requests",
            stage.min_requests
        ));
    }
    if !unproven.is_empty() {
        let names: Vec<&str> = unproven.iter().map(|e| e.metric.name()).collect();
        waiting.push(format!("{} not yet within margin", names.join(", ")));
    }
    Decision {
        verdict: Verdict::Hold,
        reason: format!("holding: {}", waiting.join("; ")),
        evidence,
    }
}

fn describe(evidence: &Evidence) -> String {
    let show = |value: Option<f64>| match (evidence.metric, value) {
        (_, None) => "–".to_string(),
        (Metric::Latency, Some(log)) => format!("{:.2} ms typical", log.exp() * 1000.0),
        (Metric::SquaredError, Some(mse)) => format!("mean squared error {mse:.4}"),
        (_, Some(rate)) => format!("{:.2}%", rate * 100.0),
    };
    format!(
        "canary {} against {}",
        show(evidence.canary),
        show(evidence.baseline)
    )
}
