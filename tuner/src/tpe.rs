//! Multivariate Tree-structured Parzen Estimator: the `tpe` algorithm.
//!
//! Completed trials are split into a good group — the best `γ(n) = min(⌈n/10⌉, 25)` — and
//! the rest. Each group becomes a mixture density over the whole space: one product kernel
//! per trial (a truncated normal per numeric coordinate, a peaked distribution per
//! categorical one) plus a broad prior component. Candidates are drawn from the good
//! density and the one maximizing `ln l(x) − ln g(x)` is suggested. Drawing every coordinate
//! of a candidate from the *same* trial's kernel keeps the dependence between parameters
//! (the multivariate TPE of Falkner et al., 2018), which independent per-parameter
//! estimators lose.
//!
//! Constraints follow c-TPE's ordering: feasible trials rank before infeasible ones, which
//! rank by their total violation. Trials stopped part way (early stopping) rank after the
//! complete ones of their class, by their value where they stopped, as Optuna's TPE ranks
//! pruned trials: a value seen early is not a final one. Pending trials join the bad group (a "constant liar"), so
//! parallel suggestions move away from points already being evaluated, and so do failed
//! trials (crashed, errored, timed out: worse than any result), so the good density does not
//! lead back to where trials fail. Trials stopped without a value are left out.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bayes::normal;
use crate::encode::{Axis, Encoder};
use crate::sampler::{Observation, Outcome, Sampler, sobol_units};
use crate::space::{Point, SearchSpace};
use crate::stats;

#[derive(Debug, Clone)]
pub struct TpeSettings {
    /// Trials taken from the Sobol design before the estimators are used.
    pub initial_trials: u32,
    /// Candidates drawn from the good density per suggestion.
    pub candidates: usize,
    /// Weight of the prior component relative to one trial's.
    pub prior_weight: f64,
}

impl Default for TpeSettings {
    fn default() -> Self {
        TpeSettings {
            initial_trials: 10,
            candidates: 24,
            prior_weight: 1.0,
        }
    }
}

pub struct TpeSampler {
    encoder: Encoder,
    seed: u64,
    settings: TpeSettings,
}

impl TpeSampler {
    pub fn new(space: SearchSpace, seed: u64, settings: TpeSettings) -> TpeSampler {
        TpeSampler {
            encoder: Encoder::new(space),
            seed,
            settings,
        }
    }
}

/// A mixture of product kernels over the encoded space.
struct Parzen<'a> {
    encoder: &'a Encoder,
    axes: &'a [Axis],
    centres: Vec<Vec<f64>>,
    /// Which coordinates of each centre are active: a trial without a parameter says nothing
    /// about it, so its kernel uses the prior there.
    active: Vec<Vec<bool>>,
    /// Bandwidth of the numeric kernels (unit-cube units).
    sigma: f64,
    log_weights: Vec<f64>,
}

impl<'a> Parzen<'a> {
    fn new(encoder: &'a Encoder, points: &[Vec<f64>], prior_weight: f64) -> Parzen<'a> {
        let axes = encoder.axes();
        let m = points.len();
        let dims = axes.len();
        let sigma = (0.2 * (m.max(1) as f64).powf(-1.0 / (dims as f64 + 4.0))).clamp(0.01, 1.0);
        let total = m as f64 + prior_weight;
        let mut log_weights = vec![(1.0 / total).ln(); m];
        log_weights.push((prior_weight / total).ln());
        Parzen {
            encoder,
            axes,
            active: points.iter().map(|point| encoder.active(point)).collect(),
            centres: points.to_vec(),
            sigma,
            log_weights,
        }
    }

    /// Component `j`'s log density at `x` (whose active coordinates are `x_active`); the last
    /// component is the prior.
    fn log_component(&self, j: usize, x: &[f64], x_active: &[bool]) -> f64 {
        let mut total = 0.0;
        for (d, axis) in self.axes.iter().enumerate() {
            if !x_active[d] {
                continue;
            }
            let prior = j == self.centres.len() || !self.active[j][d];
            total += match axis {
                Axis::Categorical(choices) => {
                    let k = *choices as f64;
                    if prior {
                        -k.ln()
                    } else if x[d] == self.centres[j][d] {
                        ((1.0 + k) / (2.0 * k)).ln()
                    } else {
                        (1.0 / (2.0 * k)).ln()
                    }
                }
                _ => {
                    let (mu, sigma) = if prior {
                        (0.5, 1.0)
                    } else {
                        (self.centres[j][d], self.sigma)
                    };
                    truncated_log_pdf(x[d], mu, sigma)
                }
            };
        }
        total
    }

    fn log_density(&self, x: &[f64]) -> f64 {
        let x_active = self.encoder.active(x);
        let terms: Vec<f64> = (0..self.log_weights.len())
            .map(|j| self.log_weights[j] + self.log_component(j, x, &x_active))
            .collect();
        let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln()
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> Vec<f64> {
        let weights: Vec<f64> = self.log_weights.iter().map(|w| w.exp()).collect();
        let mut pick = rng.random::<f64>() * weights.iter().sum::<f64>();
        let mut j = weights.len() - 1;
        for (index, weight) in weights.iter().enumerate() {
            if pick < *weight {
                j = index;
                break;
            }
            pick -= weight;
        }
        let mut point: Vec<f64> = self
            .axes
            .iter()
            .enumerate()
            .map(|(d, axis)| {
                let prior = j == self.centres.len() || !self.active[j][d];
                (prior, d, axis)
            })
            .map(|(prior, d, axis)| match axis {
                Axis::Categorical(choices) => {
                    let k = *choices;
                    if prior || rng.random::<f64>() >= 0.5 {
                        rng.random_range(0..k) as f64
                    } else {
                        self.centres[j][d]
                    }
                }
                _ => {
                    let (mu, sigma) = if prior {
                        (0.5, 1.0)
                    } else {
                        (self.centres[j][d], self.sigma)
                    };
                    // Rejection from the untruncated normal; the prior's mass inside the
                    // unit interval is large, and 32 rejections in a row do not happen.
                    let mut value = mu;
                    for _ in 0..32 {
                        let draw = mu + sigma * normal(rng);
                        if (0.0..=1.0).contains(&draw) {
                            value = draw;
                            break;
                        }
                    }
                    match axis {
                        Axis::Discrete(values) => values[Encoder::nearest(values, value)],
                        _ => value,
                    }
                }
            })
            .collect();
        self.encoder.impute(&mut point);
        point
    }
}

/// Log density of a normal truncated to `[0, 1]`.
fn truncated_log_pdf(x: f64, mu: f64, sigma: f64) -> f64 {
    let mass = stats::cdf((1.0 - mu) / sigma) - stats::cdf(-mu / sigma);
    stats::log_pdf((x - mu) / sigma) - sigma.ln() - mass.max(1e-300).ln()
}

impl Sampler for TpeSampler {
    fn models(&self, trial_number: u32, history: &[Observation]) -> bool {
        crate::sampler::past_design(self.settings.initial_trials, trial_number, history)
    }

    fn suggest(&mut self, trial_number: u32, history: &[Observation]) -> Option<Point> {
        // (violation, 1 when stopped part way, value, point): ranked in that order.
        let mut completed: Vec<(f64, f64, f64, Vec<f64>)> = history
            .iter()
            .filter_map(|observation| {
                let (value, constraints, partial) = match &observation.outcome {
                    Outcome::Complete { value, constraints } => (*value, constraints, 0.0),
                    Outcome::Partial {
                        value, constraints, ..
                    } => (*value, constraints, 1.0),
                    _ => return None,
                };
                if !value.is_finite() {
                    return None;
                }
                let violation: f64 = constraints
                    .iter()
                    .map(|c| if c.is_finite() { c.max(0.0) } else { f64::MAX })
                    .sum();
                Some((
                    violation,
                    partial,
                    value,
                    self.encoder.encode(&observation.point),
                ))
            })
            .collect();
        let sobol = |encoder: &Encoder| {
            let units = sobol_units(trial_number, encoder.dims(), self.seed);
            encoder.decode(&encoder.from_units(&units))
        };
        if trial_number < self.settings.initial_trials || completed.len() < 2 {
            return Some(sobol(&self.encoder));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(u64::from(trial_number) + 1);
        completed.sort_by(|a, b| {
            (a.0, a.1, a.2)
                .partial_cmp(&(b.0, b.1, b.2))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let good_count = completed.len().div_ceil(10).clamp(1, 25);
        let good: Vec<Vec<f64>> = completed[..good_count]
            .iter()
            .map(|t| t.3.clone())
            .collect();
        let bad: Vec<Vec<f64>> = completed[good_count..]
            .iter()
            .map(|t| t.3.clone())
            .chain(
                history
                    .iter()
                    .filter(|observation| {
                        matches!(observation.outcome, Outcome::Pending | Outcome::Failed)
                    })
                    .map(|observation| self.encoder.encode(&observation.point)),
            )
            .collect();
        let good_density = Parzen::new(&self.encoder, &good, self.settings.prior_weight);
        let bad_density = Parzen::new(&self.encoder, &bad, self.settings.prior_weight);
        let mut best: Option<(f64, Vec<f64>)> = None;
        for _ in 0..self.settings.candidates.max(1) {
            let candidate = good_density.sample(&mut rng);
            let score = good_density.log_density(&candidate) - bad_density.log_density(&candidate);
            if score.is_finite() && best.as_ref().is_none_or(|(top, _)| score > *top) {
                best = Some((score, candidate));
            }
        }
        let point = best
            .map(|(_, coords)| self.encoder.decode(&coords))
            .filter(|point| self.encoder.space().contains(point));
        Some(point.unwrap_or_else(|| sobol(&self.encoder)))
    }
}
