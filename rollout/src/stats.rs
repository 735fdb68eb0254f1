//! What the router counts per model version, and the sequential test that compares two
//! versions from those counts.
//!
//! # Why a mixture sequential test
//!
//! A rollout looks at its data every few seconds and acts on the first look that crosses a
//! line. A fixed-sample test (Welch's t-test at p < 0.05) checked that way rejects a true null
//! far more often than 5% of the time: every look is another chance. The mixture sequential
//! probability ratio test (mSPRT; Robbins 1970, as "always valid p-values" in Johari et al.,
//! 2017, and in production A/B platforms) gives a statistic whose false-alarm probability
//! stays below α over *every* look, however many:
//!
//! For a difference of means θ̂ with variance V (estimated from the data, normal
//! approximation) and a null θ = θ₀, mixing the alternative over θ ~ N(θ₀, τ²),
//!
//! ```text
//! Λ = sqrt(V / (V + τ²)) · exp( τ² (θ̂ − θ₀)² / (2 V (V + τ²)) )
//! ```
//!
//! and P(Λ ever ≥ 1/α | θ = θ₀) ≤ α (Ville's inequality; Λ is a martingale under the null).
//! τ is set to the margin that matters for the metric, which makes the test most sensitive
//! to differences of about that size.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One version's traffic over a period: sufficient statistics for every compared metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub requests: u64,
    /// Requests that failed (5xx, a model error, a timeout).
    pub errors: u64,
    /// Σ ln(latency in seconds) and Σ ln² over every request.
    pub log_latency_sum: f64,
    pub log_latency_sq_sum: f64,
    /// Predictions whose true label came back (`/v1/feedback`), and how many were right.
    pub labelled: u64,
    pub correct: u64,
    /// Numeric predictions whose true value came back (protocol 12), Σ of their squared
    /// errors and Σ of those squared (for the variance).
    pub scored: u64,
    pub squared_error_sum: f64,
    pub squared_error_sq_sum: f64,
}

/// Latencies below this are counted as this (a clock that reads zero has no logarithm).
const LATENCY_FLOOR: f64 = 1e-6;

impl Arm {
    pub fn record(&mut self, latency: Duration, error: bool) {
        let log = latency.as_secs_f64().max(LATENCY_FLOOR).ln();
        self.requests += 1;
        self.errors += u64::from(error);
        self.log_latency_sum += log;
        self.log_latency_sq_sum += log * log;
    }

    pub fn feedback(&mut self, correct: bool) {
        self.labelled += 1;
        self.correct += u64::from(correct);
    }

    /// A numeric prediction and its true value.
    pub fn score(&mut self, predicted: f64, truth: f64) {
        let squared = (predicted - truth).powi(2);
        if !squared.is_finite() {
            return;
        }
        self.scored += 1;
        self.squared_error_sum += squared;
        self.squared_error_sq_sum += squared * squared;
    }

    pub fn merge(&mut self, other: &Arm) {
        self.scored += other.scored;
        self.squared_error_sum += other.squared_error_sum;
        self.squared_error_sq_sum += other.squared_error_sq_sum;
        self.requests += other.requests;
        self.errors += other.errors;
        self.log_latency_sum += other.log_latency_sum;
        self.log_latency_sq_sum += other.log_latency_sq_sum;
        self.labelled += other.labelled;
        self.correct += other.correct;
    }

    /// What was counted after `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &Arm) -> Arm {
        Arm {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            log_latency_sum: self.log_latency_sum - earlier.log_latency_sum,
            log_latency_sq_sum: self.log_latency_sq_sum - earlier.log_latency_sq_sum,
            labelled: self.labelled.saturating_sub(earlier.labelled),
            correct: self.correct.saturating_sub(earlier.correct),
            scored: self.scored.saturating_sub(earlier.scored),
            squared_error_sum: self.squared_error_sum - earlier.squared_error_sum,
            squared_error_sq_sum: self.squared_error_sq_sum - earlier.squared_error_sq_sum,
        }
    }

    /// Samples, mean and variance of one observation of `metric`; `None` without samples.
    pub fn moments(&self, metric: Metric) -> Option<Moments> {
        match metric {
            Metric::ErrorRate => bernoulli(self.requests, self.errors),
            Metric::Latency => {
                let n = self.requests;
                if n == 0 {
                    return None;
                }
                let mean = self.log_latency_sum / n as f64;
                let variance = if n > 1 {
                    ((self.log_latency_sq_sum - n as f64 * mean * mean) / (n - 1) as f64)
                        .max(MIN_LOG_VARIANCE)
                } else {
                    MIN_LOG_VARIANCE
                };
                Some(Moments {
                    samples: n,
                    mean,
                    variance,
                })
            }
            Metric::Accuracy => bernoulli(self.labelled, self.correct),
            Metric::SquaredError => {
                let n = self.scored;
                if n == 0 {
                    return None;
                }
                let mean = (self.squared_error_sum / n as f64).max(0.0);
                let variance = if n > 1 {
                    ((self.squared_error_sq_sum - n as f64 * mean * mean) / (n - 1) as f64).max(0.0)
                } else {
                    0.0
                };
                // A floor relative to the mean: a version that is exactly right (or exactly
                // as wrong) every time would otherwise make any difference infinitely
                // significant.
                let floor = (mean * mean * 1e-4).max(1e-12);
                Some(Moments {
                    samples: n,
                    mean,
                    variance: variance.max(floor),
                })
            }
        }
    }
}

/// A floor under the variance of log latency: a version that answers in exactly constant
/// time would otherwise make any difference infinitely significant.
const MIN_LOG_VARIANCE: f64 = 1e-4;

fn bernoulli(trials: u64, successes: u64) -> Option<Moments> {
    if trials == 0 {
        return None;
    }
    let n = trials as f64;
    // The variance uses a shrunk rate, so a run of all successes (no errors yet) still has
    // a variance: zero observed errors in 100 requests is weaker evidence than in 100,000.
    let shrunk = (successes as f64 + 0.5) / (n + 1.0);
    Some(Moments {
        samples: trials,
        mean: successes as f64 / n,
        variance: shrunk * (1.0 - shrunk),
    })
}

/// What is compared between the canary and the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The share of requests that failed; higher is worse.
    ErrorRate,
    /// The mean of ln(latency): a ratio of typical latencies; higher is worse.
    Latency,
    /// The share of labelled predictions that were right; lower is worse.
    Accuracy,
    /// The mean squared error of numeric predictions against the true values that came
    /// back; higher is worse. Appended (protocol 12).
    SquaredError,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::ErrorRate,
        Metric::Latency,
        Metric::Accuracy,
        Metric::SquaredError,
    ];

    /// Whether the metric needs feedback (it is absent until true labels or values come
    /// back, and absent metrics neither block nor decide).
    pub fn from_feedback(self) -> bool {
        matches!(self, Metric::Accuracy | Metric::SquaredError)
    }

    /// +1 when a higher value is worse, −1 when a lower one is.
    pub fn worse(self) -> f64 {
        match self {
            Metric::ErrorRate | Metric::Latency | Metric::SquaredError => 1.0,
            Metric::Accuracy => -1.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error rate",
            Metric::Latency => "latency",
            Metric::Accuracy => "accuracy",
            Metric::SquaredError => "squared error",
        }
    }
}

/// Samples, mean and per-observation variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub samples: u64,
    pub mean: f64,
    pub variance: f64,
}

/// The difference canary − baseline of one metric and its variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    pub estimate: f64,
    pub variance: f64,
}

impl Difference {
    pub fn between(baseline: &Moments, canary: &Moments) -> Difference {
        Difference {
            estimate: canary.mean - baseline.mean,
            variance: baseline.variance / baseline.samples as f64
                + canary.variance / canary.samples as f64,
        }
    }

    /// ln Λ of the mixture SPRT of θ = `null` with mixing variance `tau2` (see the module).
    pub fn log_mixture_ratio(&self, null: f64, tau2: f64) -> f64 {
        let v = self.variance.max(f64::MIN_POSITIVE);
        let shift = self.estimate - null;
        0.5 * (v / (v + tau2)).ln() + tau2 * shift * shift / (2.0 * v * (v + tau2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_subtract_to_a_window() {
        let mut early = Arm::default();
        early.record(Duration::from_millis(10), false);
        let mut late = early;
        late.record(Duration::from_millis(20), true);
        late.feedback(true);
        let window = late.since(&early);
        assert_eq!(window.requests, 1);
        assert_eq!(window.errors, 1);
        assert_eq!(window.labelled, 1);
        assert!((window.log_latency_sum - 0.02f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn the_mixture_ratio_grows_with_evidence_against_the_null() {
        let weak = Difference {
            estimate: 0.01,
            variance: 1e-4,
        };
        let strong = Difference {
            estimate: 0.01,
            variance: 1e-6,
        };
        let tau2 = 1e-4;
        assert!(strong.log_mixture_ratio(0.0, tau2) > weak.log_mixture_ratio(0.0, tau2));
        // At the null itself the ratio favours the null (below 1).
        assert!(
            Difference {
                estimate: 0.0,
                variance: 1e-6
            }
            .log_mixture_ratio(0.0, tau2)
                < 0.0
        );
    }
}
