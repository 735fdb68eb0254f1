//! Gaussian-process regression: Matérn-5/2 with one length scale per input (ARD).
//!
//! Inputs are the encoded points of [`crate::encode`]: numeric coordinates in the unit cube
//! and categorical coordinates as choice indices, for which the kernel uses the Hamming
//! distance (0 when equal, 1 otherwise) scaled by that dimension's length scale. Outputs are
//! standardized before fitting. Hyperparameters — log length scales, log signal variance, log
//! noise variance — are the maximum a posteriori estimate: the log marginal likelihood plus
//! log priors, maximized with its analytic gradient by projected L-BFGS from several starts.
//!
//! Priors: weakly informative and the same in every dimension, as Optuna 5's GPSampler sets
//! them. Each inverse squared length scale `λ = 1/ℓ²` has `−ln p = 0.1/λ + 0.1λ`, which in
//! `ln ℓ` is `0.2 cosh(2 ln ℓ)`: almost flat for length scales between about 0.3 and 3 in the
//! unit cube, where the data decide, and steep outside, where a length scale is shorter than
//! any spacing or longer than any distance the data can resolve. The signal variance is
//! Gamma(2, 1) (outputs are standardized); the noise variance is Gamma(1.1, 30) (mean 0.037 of
//! the output variance, with most of its mass near zero, so a deterministic objective is fitted
//! as one), bounded below by 1e-6. These replaced log-normal priors whose locations had been
//! tuned on the benchmark functions of docs/benchmarks.md (a dimension-scaled length-scale prior
//! after Hvarfner et al., 2024, moved one e-fold shorter, and a noise prior around 3e-4). Over
//! 20 seeds the tuned priors were 2.4× behind Optuna's GP on Hartmann-6 at 50 evaluations; the
//! weakly informative ones are within 1.3× of it on every problem and budget measured there
//! (docs/benchmarks.md, 2026-12-07).
//!
//! Numerics: the Cholesky factorization (faer) is retried with growing jitter when the matrix
//! is not numerically positive definite; every quantity handed out is finite.

use faer::linalg::solvers::{DenseSolveCore, Llt};
use faer::{Mat, Side};

use crate::lbfgs;

const LN_2PI: f64 = 1.837_877_066_409_345_5;
const SQRT_5: f64 = 2.236_067_977_499_79;

/// How the kernel compares one coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordinate {
    /// A number in `[0, 1]`: squared difference.
    Numeric,
    /// A choice index: 0 when equal, 1 otherwise.
    Categorical,
}

/// The kernel's hyperparameters as the optimizer sees them:
/// `[ln ℓ₁, …, ln ℓ_d, ln σ²_signal, ln σ²_noise]`.
pub type Theta = Vec<f64>;

const LOG_LENGTH_BOUNDS: (f64, f64) = (-6.0, 6.0);
const LOG_SIGNAL_BOUNDS: (f64, f64) = (-4.0, 4.0);
const LOG_NOISE_BOUNDS: (f64, f64) = (-13.8, 0.0);
/// The noise variance's prior, Gamma(shape, rate).
const NOISE_PRIOR: (f64, f64) = (1.1, 30.0);
/// The signal variance's prior, Gamma(shape, rate).
const SIGNAL_PRIOR: (f64, f64) = (2.0, 1.0);
/// The weight of each length scale's prior: `−ln p = w (λ + 1/λ)` with `λ = 1/ℓ²`.
const LENGTH_PRIOR: f64 = 0.1;

/// A fitted model: the data, the hyperparameters and the factorized kernel matrix.
pub struct Gp {
    kinds: Vec<Coordinate>,
    x: Vec<Vec<f64>>,
    /// Standardized outputs.
    y: Vec<f64>,
    theta: Theta,
    inverse_sq_lengths: Vec<f64>,
    signal: f64,
    llt: Llt<f64>,
    alpha: Vec<f64>,
    y_mean: f64,
    y_scale: f64,
}

/// `−ln p(θ)` of the priors (up to a constant) and its gradient, added to `gradient`.
///
/// In `θ = ln ℓ`, `λ + 1/λ = e^{−2θ} + e^{2θ}`; a Gamma(k, r) density in `θ = ln v` without
/// the change of variables, as Optuna writes it, is `−(k − 1) θ + r e^θ`.
fn neg_log_prior(theta: &[f64], gradient: Option<&mut [f64]>) -> f64 {
    let dims = theta.len() - 2;
    let gamma = |value: f64, (shape, rate): (f64, f64)| {
        (
            -(shape - 1.0) * value + rate * value.exp(),
            -(shape - 1.0) + rate * value.exp(),
        )
    };
    let (signal, d_signal) = gamma(theta[dims], SIGNAL_PRIOR);
    let (noise, d_noise) = gamma(theta[dims + 1], NOISE_PRIOR);
    let mut total = signal + noise;
    for length in &theta[..dims] {
        total += LENGTH_PRIOR * ((2.0 * length).exp() + (-2.0 * length).exp());
    }
    if let Some(gradient) = gradient {
        for (g, length) in gradient.iter_mut().zip(&theta[..dims]) {
            *g += 2.0 * LENGTH_PRIOR * ((2.0 * length).exp() - (-2.0 * length).exp());
        }
        gradient[dims] += d_signal;
        gradient[dims + 1] += d_noise;
    }
    total
}

/// Where a fit starts: short length scales (about `0.075 √d` in the unit cube, at least
/// `e^{−2}`), so the first fit sees detail and the data lengthen them where the objective is
/// smooth; unit signal; a noise of about 3e-4 of the output variance.
pub fn default_theta(dims: usize) -> Theta {
    let mut theta = vec![(0.5 * (dims as f64).ln() - 2.586).clamp(-2.0, 2.0); dims];
    theta.push(0.0);
    theta.push(-8.0);
    theta
}

fn bounds(dims: usize) -> (Vec<f64>, Vec<f64>) {
    let mut lower = vec![LOG_LENGTH_BOUNDS.0; dims];
    let mut upper = vec![LOG_LENGTH_BOUNDS.1; dims];
    lower.extend([LOG_SIGNAL_BOUNDS.0, LOG_NOISE_BOUNDS.0]);
    upper.extend([LOG_SIGNAL_BOUNDS.1, LOG_NOISE_BOUNDS.1]);
    (lower, upper)
}

/// Squared scaled distance between two encoded points.
fn scaled_sq_distance(a: &[f64], b: &[f64], kinds: &[Coordinate], inverse_sq: &[f64]) -> f64 {
    let mut total = 0.0;
    for k in 0..a.len() {
        let delta_sq = match kinds[k] {
            Coordinate::Numeric => (a[k] - b[k]) * (a[k] - b[k]),
            Coordinate::Categorical => f64::from(u8::from(a[k] != b[k])),
        };
        total += delta_sq * inverse_sq[k];
    }
    total
}

/// Matérn-5/2 of a squared scaled distance: the value and `(5/3) σ² (1 + u) e^{-u}`, the
/// factor shared by every derivative.
fn matern(sq_distance: f64, signal: f64) -> (f64, f64) {
    let u = SQRT_5 * sq_distance.max(0.0).sqrt();
    let decay = (-u).exp();
    let value = signal * (1.0 + u + u * u / 3.0) * decay;
    let factor = signal * (5.0 / 3.0) * (1.0 + u) * decay;
    (value, factor)
}

/// `(mean, scale)` that standardize `values` (scale 1 for constant data).
pub fn standardization(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let scale = variance.sqrt();
    (
        mean,
        if scale.is_finite() && scale > 1e-12 {
            scale
        } else {
            1.0
        },
    )
}

/// Settings of a hyperparameter fit.
#[derive(Debug, Clone)]
pub struct FitSettings {
    /// Where the optimizer starts; the best end point wins.
    pub starts: Vec<Theta>,
    pub max_iterations: usize,
}

impl Gp {
    /// Fits hyperparameters to `(x, y)` and conditions on the data. `None` only when no start
    /// gives a finite likelihood (e.g. non-finite inputs).
    pub fn fit(
        x: Vec<Vec<f64>>,
        y_raw: &[f64],
        kinds: Vec<Coordinate>,
        settings: &FitSettings,
    ) -> Option<Gp> {
        let (y_mean, y_scale) = standardization(y_raw);
        let y: Vec<f64> = y_raw.iter().map(|v| (v - y_mean) / y_scale).collect();
        let dims = kinds.len();
        let (lower, upper) = bounds(dims);
        let problem = Problem::new(&x, &y, &kinds);
        let mut best: Option<lbfgs::Minimum> = None;
        for start in &settings.starts {
            let minimum = lbfgs::minimize(
                |theta, gradient| problem.neg_log_posterior(theta, Some(gradient)),
                start,
                &lower,
                &upper,
                lbfgs::Settings {
                    max_iterations: settings.max_iterations,
                    gradient_tolerance: 1e-5,
                    value_tolerance: 1e-7,
                    memory: 8,
                },
            );
            if minimum.value.is_finite()
                && best
                    .as_ref()
                    .is_none_or(|incumbent| minimum.value < incumbent.value)
            {
                best = Some(minimum);
            }
        }
        Gp::with_theta(x, y_raw, kinds, best?.x)
    }

    /// Conditions on `(x, y_raw)` with given hyperparameters (no estimation).
    pub fn with_theta(
        x: Vec<Vec<f64>>,
        y_raw: &[f64],
        kinds: Vec<Coordinate>,
        theta: Theta,
    ) -> Option<Gp> {
        let (y_mean, y_scale) = standardization(y_raw);
        let y = y_raw.iter().map(|v| (v - y_mean) / y_scale).collect();
        Gp::condition(x, y, kinds, theta, y_mean, y_scale)
    }

    /// Conditions on standardized `y` with fixed hyperparameters.
    pub fn condition(
        x: Vec<Vec<f64>>,
        y: Vec<f64>,
        kinds: Vec<Coordinate>,
        theta: Theta,
        y_mean: f64,
        y_scale: f64,
    ) -> Option<Gp> {
        let dims = kinds.len();
        let inverse_sq_lengths: Vec<f64> = theta[..dims].iter().map(|l| (-2.0 * l).exp()).collect();
        let signal = theta[dims].exp();
        let noise = theta[dims + 1].exp();
        let n = x.len();
        let matrix = Mat::from_fn(n, n, |i, j| {
            let (value, _) = matern(
                scaled_sq_distance(&x[i], &x[j], &kinds, &inverse_sq_lengths),
                signal,
            );
            if i == j { value + noise } else { value }
        });
        let (llt, _) = factorize(&matrix, signal)?;
        let rhs = Mat::from_fn(n, 1, |i, _| y[i]);
        let solved = faer::linalg::solvers::Solve::solve(&llt, &rhs);
        let alpha: Vec<f64> = (0..n).map(|i| solved[(i, 0)]).collect();
        if alpha.iter().any(|a| !a.is_finite()) {
            return None;
        }
        Some(Gp {
            kinds,
            x,
            y,
            theta,
            inverse_sq_lengths,
            signal,
            llt,
            alpha,
            y_mean,
            y_scale,
        })
    }

    /// The same model with `points` added at their posterior means (the kriging believer):
    /// the mean is unchanged everywhere, the variance collapses at and near the points.
    /// Without points the model is returned as it is (no second factorization).
    pub fn believing(self, points: &[Vec<f64>]) -> Option<Gp> {
        if points.is_empty() {
            return Some(self);
        }
        let believed: Vec<f64> = points.iter().map(|point| self.predict(point).0).collect();
        let Gp {
            mut x,
            mut y,
            kinds,
            theta,
            y_mean,
            y_scale,
            ..
        } = self;
        x.extend(points.iter().cloned());
        y.extend(believed);
        Gp::condition(x, y, kinds, theta, y_mean, y_scale)
    }

    pub fn theta(&self) -> &Theta {
        &self.theta
    }

    /// Standardized outputs of the data the model holds, in order.
    pub fn standardized_outputs(&self) -> &[f64] {
        &self.y
    }

    /// Maps a value in the data's units to the model's standardized units.
    pub fn standardize(&self, value: f64) -> f64 {
        (value - self.y_mean) / self.y_scale
    }

    /// Maps a value in standardized units back to the data's units.
    pub fn unstandardize(&self, value: f64) -> f64 {
        value * self.y_scale + self.y_mean
    }

    /// Posterior mean and variance of the latent function at `x`, in standardized units.
    pub fn predict(&self, x: &[f64]) -> (f64, f64) {
        let n = self.x.len();
        let mut k = Mat::<f64>::zeros(n, 1);
        let mut mean = 0.0;
        for i in 0..n {
            let (value, _) = matern(self.sq_distance(x, &self.x[i]), self.signal);
            k[(i, 0)] = value;
            mean += value * self.alpha[i];
        }
        self.llt.L().solve_lower_triangular_in_place(k.as_mut());
        let explained: f64 = (0..n).map(|i| k[(i, 0)] * k[(i, 0)]).sum();
        (mean, (self.signal - explained).max(1e-12 * self.signal))
    }

    /// Posterior means and variances at many points at once (one triangular solve).
    pub fn predict_many(&self, points: &[Vec<f64>]) -> Vec<(f64, f64)> {
        let n = self.x.len();
        let mut k = Mat::from_fn(n, points.len(), |i, j| {
            matern(self.sq_distance(&points[j], &self.x[i]), self.signal).0
        });
        let means: Vec<f64> = (0..points.len())
            .map(|j| (0..n).map(|i| k[(i, j)] * self.alpha[i]).sum())
            .collect();
        self.llt.L().solve_lower_triangular_in_place(k.as_mut());
        (0..points.len())
            .map(|j| {
                let explained: f64 = k.col_as_slice(j).iter().map(|v| v * v).sum();
                (means[j], (self.signal - explained).max(1e-12 * self.signal))
            })
            .collect()
    }

    /// Mean and variance at `x` with their gradients over the numeric coordinates
    /// (categorical entries of the gradients are left at zero).
    pub fn predict_with_gradient(
        &self,
        x: &[f64],
        mean_gradient: &mut [f64],
        variance_gradient: &mut [f64],
    ) -> (f64, f64) {
        let n = self.x.len();
        let dims = x.len();
        let mut k = Mat::<f64>::zeros(n, 1);
        let mut factors = vec![0.0; n];
        let mut mean = 0.0;
        for i in 0..n {
            let (value, factor) = matern(self.sq_distance(x, &self.x[i]), self.signal);
            k[(i, 0)] = value;
            factors[i] = factor;
            mean += value * self.alpha[i];
        }
        let weights = faer::linalg::solvers::Solve::solve(&self.llt, &k);
        let variance = self.signal - (0..n).map(|i| k[(i, 0)] * weights[(i, 0)]).sum::<f64>();
        mean_gradient.iter_mut().for_each(|g| *g = 0.0);
        variance_gradient.iter_mut().for_each(|g| *g = 0.0);
        for i in 0..n {
            for d in 0..dims {
                if self.kinds[d] == Coordinate::Categorical {
                    continue;
                }
                // ∂k(x, xᵢ)/∂x_d = −(5/3) σ² (1 + u) e^{−u} (x_d − xᵢ_d) / ℓ_d².
                let dk = -factors[i] * (x[d] - self.x[i][d]) * self.inverse_sq_lengths[d];
                mean_gradient[d] += self.alpha[i] * dk;
                variance_gradient[d] -= 2.0 * weights[(i, 0)] * dk;
            }
        }
        (mean, variance.max(1e-12 * self.signal))
    }

    /// Squared distance in length scales (categorical coordinates count 0 or 1).
    pub fn sq_distance(&self, a: &[f64], b: &[f64]) -> f64 {
        scaled_sq_distance(a, b, &self.kinds, &self.inverse_sq_lengths)
    }

    /// `1/ℓ²` per coordinate.
    pub fn inverse_sq_lengths(&self) -> &[f64] {
        &self.inverse_sq_lengths
    }

    pub fn kinds(&self) -> &[Coordinate] {
        &self.kinds
    }
}

/// Cholesky of `matrix` with jitter added to the diagonal until it succeeds.
fn factorize(matrix: &Mat<f64>, signal: f64) -> Option<(Llt<f64>, f64)> {
    let mut jitter = 0.0;
    for attempt in 0..8 {
        let trial = if jitter > 0.0 {
            let n = matrix.nrows();
            Mat::from_fn(n, n, |i, j| {
                matrix[(i, j)] + if i == j { jitter } else { 0.0 }
            })
        } else {
            matrix.clone()
        };
        if let Ok(llt) = trial.llt(Side::Lower) {
            let diagonal_ok = (0..matrix.nrows()).all(|i| {
                let value = llt.L()[(i, i)];
                value.is_finite() && value > 0.0
            });
            if diagonal_ok {
                return Some((llt, jitter));
            }
        }
        jitter = signal.max(1e-12) * 1e-9 * 10f64.powi(attempt);
    }
    None
}

/// The hyperparameter objective over one data set. The per-coordinate squared differences
/// of every pair are computed once per fit, so each evaluation is a few vectorizable passes
/// over the pairs plus one factorization.
struct Problem<'a> {
    n: usize,
    y: &'a [f64],
    /// `pair_sq[d][p]`: squared difference along coordinate `d` of pair `p` (`i > j`, packed
    /// row by row), 0/1 for categorical coordinates.
    pair_sq: Vec<Vec<f64>>,
}

impl<'a> Problem<'a> {
    fn new(x: &[Vec<f64>], y: &'a [f64], kinds: &[Coordinate]) -> Problem<'a> {
        let n = x.len();
        let pairs = n * n.saturating_sub(1) / 2;
        let pair_sq = (0..kinds.len())
            .map(|d| {
                let mut column = Vec::with_capacity(pairs);
                for i in 0..n {
                    for j in 0..i {
                        column.push(match kinds[d] {
                            Coordinate::Numeric => (x[i][d] - x[j][d]).powi(2),
                            Coordinate::Categorical => f64::from(u8::from(x[i][d] != x[j][d])),
                        });
                    }
                }
                column
            })
            .collect();
        Problem { n, y, pair_sq }
    }

    /// Negative log marginal likelihood plus negative log priors, and its gradient.
    fn neg_log_posterior(&self, theta: &[f64], gradient: Option<&mut [f64]>) -> f64 {
        let n = self.n;
        let dims = self.pair_sq.len();
        let inverse_sq: Vec<f64> = theta[..dims].iter().map(|l| (-2.0 * l).exp()).collect();
        let signal = theta[dims].exp();
        let noise = theta[dims + 1].exp();
        let pairs = n * n.saturating_sub(1) / 2;
        let mut sq = vec![0.0; pairs];
        for (column, weight) in self.pair_sq.iter().zip(&inverse_sq) {
            for (total, delta) in sq.iter_mut().zip(column) {
                *total += weight * delta;
            }
        }
        let mut values = vec![0.0; pairs];
        let mut factors = vec![0.0; pairs];
        for p in 0..pairs {
            (values[p], factors[p]) = matern(sq[p], signal);
        }
        let mut matrix = Mat::<f64>::zeros(n, n);
        let mut p = 0;
        for i in 0..n {
            matrix[(i, i)] = signal + noise;
            for j in 0..i {
                matrix[(i, j)] = values[p];
                matrix[(j, i)] = values[p];
                p += 1;
            }
        }
        let Some((llt, _)) = factorize(&matrix, signal) else {
            return f64::INFINITY;
        };
        let rhs = Mat::from_fn(n, 1, |i, _| self.y[i]);
        let solved = faer::linalg::solvers::Solve::solve(&llt, &rhs);
        let alpha: Vec<f64> = (0..n).map(|i| solved[(i, 0)]).collect();
        let log_det: f64 = (0..n).map(|i| llt.L()[(i, i)].ln()).sum::<f64>() * 2.0;
        let fit: f64 = alpha.iter().zip(self.y).map(|(a, y)| a * y).sum();
        let value = 0.5 * (fit + log_det + n as f64 * LN_2PI);
        let Some(gradient) = gradient else {
            return value + neg_log_prior(theta, None);
        };
        // ∂/∂θ = −½ tr(W ∂K/∂θ) with W = ααᵀ − K⁻¹; off-diagonal pairs count twice.
        let inverse = llt.inverse();
        let mut weighted = vec![0.0; pairs];
        let mut signal_term = 0.0;
        let mut trace_w = 0.0;
        let mut p = 0;
        for i in 0..n {
            let wii = alpha[i] * alpha[i] - inverse[(i, i)];
            trace_w += wii;
            signal_term += 0.5 * wii * signal;
            for j in 0..i {
                let wij = alpha[i] * alpha[j] - inverse[(i, j)];
                signal_term += wij * values[p];
                weighted[p] = wij * factors[p];
                p += 1;
            }
        }
        for d in 0..dims {
            // ∂K_ij/∂ln ℓ_d = (5/3) σ² (1 + u) e^{−u} Δ²/ℓ².
            let dot: f64 = weighted
                .iter()
                .zip(&self.pair_sq[d])
                .map(|(w, q)| w * q)
                .sum();
            gradient[d] = -dot * inverse_sq[d];
        }
        gradient[dims] = -signal_term;
        gradient[dims + 1] = -0.5 * noise * trace_w;
        value + neg_log_prior(theta, Some(gradient))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(dims: usize) -> Vec<Coordinate> {
        vec![Coordinate::Numeric; dims]
    }

    #[test]
    fn posterior_matches_the_closed_form_for_two_points() {
        // Two observations; with K = [[s+n, c], [c, s+n]] the posterior at x* is
        // mean = k*ᵀ K⁻¹ y and var = s − k*ᵀ K⁻¹ k*, written out by hand below.
        let theta = vec![(0.3f64).ln(), 0.0, (1e-4f64).ln()];
        let x = vec![vec![0.2], vec![0.6]];
        let y = vec![1.0, -0.5];
        let gp = Gp::condition(x, y.clone(), kinds(1), theta, 0.0, 1.0).expect("conditions");
        let k = |a: f64, b: f64| {
            let u = SQRT_5 * (a - b).abs() / 0.3;
            (1.0 + u + u * u / 3.0) * (-u).exp()
        };
        let (s, n) = (1.0, 1e-4);
        let c = k(0.2, 0.6);
        let det = (s + n) * (s + n) - c * c;
        let inv = [[(s + n) / det, -c / det], [-c / det, (s + n) / det]];
        let star = 0.45;
        let ks = [k(star, 0.2), k(star, 0.6)];
        let weights = [
            inv[0][0] * ks[0] + inv[0][1] * ks[1],
            inv[1][0] * ks[0] + inv[1][1] * ks[1],
        ];
        let mean = weights[0] * y[0] + weights[1] * y[1];
        let variance = s - (weights[0] * ks[0] + weights[1] * ks[1]);
        let (got_mean, got_variance) = gp.predict(&[star]);
        assert!((got_mean - mean).abs() < 1e-12, "{got_mean} vs {mean}");
        assert!(
            (got_variance - variance).abs() < 1e-12,
            "{got_variance} vs {variance}"
        );
        let many = gp.predict_many(&[vec![star]]);
        assert!((many[0].0 - mean).abs() < 1e-12 && (many[0].1 - variance).abs() < 1e-12);
    }

    #[test]
    fn likelihood_gradient_matches_finite_differences() {
        let x: Vec<Vec<f64>> = (0..12)
            .map(|i| {
                let t = i as f64 / 11.0;
                vec![t, (t * 7.3).fract(), f64::from(i % 3)]
            })
            .collect();
        let y: Vec<f64> = x
            .iter()
            .map(|p| (6.0 * p[0]).sin() + p[1] * p[1] + 0.3 * p[2])
            .collect();
        let (mean, scale) = standardization(&y);
        let y: Vec<f64> = y.iter().map(|v| (v - mean) / scale).collect();
        let kinds = vec![
            Coordinate::Numeric,
            Coordinate::Numeric,
            Coordinate::Categorical,
        ];
        let problem = Problem::new(&x, &y, &kinds);
        let theta = vec![-1.0, 0.2, 0.5, 0.3, -5.0];
        let mut gradient = vec![0.0; theta.len()];
        problem.neg_log_posterior(&theta, Some(&mut gradient));
        for index in 0..theta.len() {
            let step = 1e-6;
            let mut up = theta.clone();
            up[index] += step;
            let mut down = theta.clone();
            down[index] -= step;
            let numeric = (problem.neg_log_posterior(&up, None)
                - problem.neg_log_posterior(&down, None))
                / (2.0 * step);
            assert!(
                (numeric - gradient[index]).abs() < 1e-4 * numeric.abs().max(1.0),
                "θ[{index}]: analytic {} numeric {numeric}",
                gradient[index]
            );
        }
    }

    #[test]
    fn prediction_gradients_match_finite_differences() {
        let x: Vec<Vec<f64>> = (0..15)
            .map(|i| vec![(i as f64 * 0.618).fract(), (i as f64 * 0.414).fract()])
            .collect();
        let y: Vec<f64> = x.iter().map(|p| (4.0 * p[0]).cos() * p[1]).collect();
        let settings = FitSettings {
            starts: vec![default_theta(2)],
            max_iterations: 50,
        };
        let gp = Gp::fit(x, &y, kinds(2), &settings).expect("fits");
        let at = [0.37, 0.71];
        let (mut dm, mut dv) = (vec![0.0; 2], vec![0.0; 2]);
        let (mean, variance) = gp.predict_with_gradient(&at, &mut dm, &mut dv);
        let (plain_mean, plain_variance) = gp.predict(&at);
        assert!((mean - plain_mean).abs() < 1e-10 && (variance - plain_variance).abs() < 1e-10);
        for d in 0..2 {
            let step = 1e-6;
            let mut up = at;
            up[d] += step;
            let mut down = at;
            down[d] -= step;
            let (mu, vu) = gp.predict(&up);
            let (md, vd) = gp.predict(&down);
            assert!(((mu - md) / (2.0 * step) - dm[d]).abs() < 1e-5, "mean d{d}");
            assert!(
                ((vu - vd) / (2.0 * step) - dv[d]).abs() < 1e-5,
                "variance d{d}"
            );
        }
    }

    #[test]
    fn fitting_recovers_a_short_and_a_long_length_scale() {
        // y varies quickly along x₀ and not at all along x₁.
        let x: Vec<Vec<f64>> = (0..40)
            .map(|i| {
                vec![
                    (i as f64 * 0.618_034).fract(),
                    (i as f64 * 0.754_877).fract(),
                ]
            })
            .collect();
        let y: Vec<f64> = x.iter().map(|p| (9.0 * p[0]).sin()).collect();
        let settings = FitSettings {
            starts: vec![default_theta(2)],
            max_iterations: 100,
        };
        let gp = Gp::fit(x, &y, kinds(2), &settings).expect("fits");
        let theta = gp.theta();
        assert!(theta[0] < theta[1] - 1.0, "{theta:?}");
        // Interpolates a held-out point well.
        let (mean, _) = gp.predict(&[0.5, 0.5]);
        let truth = gp.standardize((4.5f64).sin());
        assert!((mean - truth).abs() < 0.1, "{mean} vs {truth}");
    }

    #[test]
    fn duplicate_points_and_constant_outputs_stay_finite() {
        let x = vec![vec![0.5, 0.5]; 6];
        let y = vec![1.0; 6];
        let settings = FitSettings {
            starts: vec![default_theta(2)],
            max_iterations: 30,
        };
        let gp = Gp::fit(x, &y, kinds(2), &settings).expect("fits");
        let (mean, variance) = gp.predict(&[0.1, 0.9]);
        assert!(mean.is_finite() && variance.is_finite() && variance > 0.0);
    }

    #[test]
    fn believed_points_keep_the_mean_and_shrink_the_variance() {
        // Data on [0, 0.6]; the pending point lies beyond it, where the variance is large.
        let x: Vec<Vec<f64>> = (0..8).map(|i| vec![0.6 * i as f64 / 7.0]).collect();
        let y: Vec<f64> = x.iter().map(|p| (5.0 * p[0]).sin()).collect();
        let settings = FitSettings {
            starts: vec![default_theta(1)],
            max_iterations: 50,
        };
        let gp = Gp::fit(x, &y, kinds(1), &settings).expect("fits");
        let pending = vec![0.9];
        let near = [0.92];
        let (before_mean, before_variance) = gp.predict(&pending);
        let near_before = gp.predict(&near).1;
        let believer = gp
            .believing(std::slice::from_ref(&pending))
            .expect("conditions");
        let (after_mean, after_variance) = believer.predict(&pending);
        assert!((before_mean - after_mean).abs() < 1e-6);
        assert!(
            after_variance < 0.1 * before_variance,
            "{before_variance} → {after_variance}"
        );
        // Next to it the variance shrinks too: that is what steers the next suggestion away.
        assert!(believer.predict(&near).1 < 0.5 * near_before);
    }
}
