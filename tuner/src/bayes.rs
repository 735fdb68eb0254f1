//! Gaussian-process Bayesian optimization: the `bayesian` algorithm.
//!
//! Each suggestion:
//!
//! 1. The first `initial_trials` trials (and any trial while fewer than two results are in)
//!    take scrambled Sobol points.
//! 2. A GP ([`crate::gp`]) is fitted to the completed trials' objective values (through a
//!    Yeo-Johnson warp whose λ ≤ 1 is chosen by maximum likelihood, so a long tail of poor
//!    results does not flatten the model near the optimum: [`Warp`]), and one GP
//!    to each constraint's values, with maximum-a-posteriori hyperparameters (multi-start;
//!    the previous estimate is one of the starts; past 64 results they are re-estimated
//!    each time the data has grown by 5 %). Past [`MAX_MODEL_POINTS`] (512) results the
//!    models learn from a subset — the best quarter and an even spread of the rest — so a
//!    suggestion at 5,000 trials costs what one at 512 does.
//! 3. Pending trials enter every model as a **kriging believer**: each is added at its
//!    posterior mean with the hyperparameters held. The mean does not move, the variance
//!    collapses around the pending points, and a believed value better than the incumbent
//!    becomes the incumbent, so expected improvement near a pending point is close to
//!    zero and eight idle agents get eight different points. It costs one factorization per
//!    model and no Monte Carlo, so suggestions stay deterministic and fast; fantasy
//!    sampling (as in qEI) would spend many factorizations for a similar spread. Where the
//!    model is already confident (a noiseless objective near its optimum) the believer alone
//!    still lets suggestions crowd within a hair of each other, so each pending point also
//!    carries a local penalty `ln(1 − exp(−d²/2r²))` with `d` the distance in length scales
//!    and `r = 0.1` (local penalization, González et al., 2016, with a length-scale radius):
//!    a parallel suggestion lands at least about a tenth of a length scale from the others.
//!    **Trials stopped part way** (early stopping: `Outcome::Partial`, seen at a fraction of
//!    a complete trial's resource) are lower-fidelity observations, not final ones: a GP
//!    over (point, fidelity) is fitted to every result at the fidelity it was seen, and each
//!    stopped trial enters the models with that GP's prediction at full fidelity. Where the
//!    resource shifts results (a configuration that learns slowly looks worse early), the
//!    shift learned from the data is taken out instead of holding the early value against
//!    the configuration.
//! 4. The acquisition is **log expected improvement** over the best feasible result, plus
//!    the log **probability of feasibility** under each constraint's GP. Before any
//!    feasible result exists it is the log probability of feasibility alone: find the
//!    feasible region first.
//! 5. **Failed trials** (crashed, errored, timed out) are a constraint of their own: once
//!    any trial has failed, a GP over +1 at every failed point and −1 at every completed one
//!    (least-squares classification, with the objective model's length scales) gives a
//!    probability of not failing, which joins the acquisition like a user's constraint. A
//!    region where trials crash (out of memory at a large batch × width, say) is avoided
//!    after a few failures there, while failures scattered at random flatten into a
//!    constant that steers nothing. Trials stopped without a value are left out.
//! 6. It is maximized from many random points and perturbations of the best trials, then
//!    the best few are refined: L-BFGS over the continuous coordinates (analytic gradient),
//!    and a value-by-value search over integer and categorical coordinates, alternating
//!    until neither improves. Integers and choices are therefore optimized as what they are,
//!    not rounded after a continuous search.
//!
//! Every suggestion is checked to lie in the space and to be finite; if the model cannot be
//! built (it always can for finite data), a Sobol point is used instead.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::encode::{Axis, Encoder};
use crate::gp::{self, FitSettings, Gp, Theta};
use crate::lbfgs;
use crate::sampler::{Observation, Outcome, Sampler, sobol_units};
use crate::space::{Point, SearchSpace};
use crate::stats;

/// Tuning knobs of the Bayesian sampler; the defaults suit 2–20 dimensions.
#[derive(Debug, Clone)]
pub struct BayesianSettings {
    /// Trials taken from the Sobol design before the model is used.
    pub initial_trials: u32,
    /// Random points scored before local refinement.
    pub raw_candidates: usize,
    /// Perturbations scored around each of the best few trials.
    pub local_candidates: usize,
    /// Candidates refined by local search.
    pub refine_starts: usize,
}

impl Default for BayesianSettings {
    fn default() -> Self {
        BayesianSettings {
            initial_trials: 10,
            raw_candidates: 512,
            local_candidates: 64,
            refine_starts: 4,
        }
    }
}

pub struct BayesianSampler {
    encoder: Encoder,
    seed: u64,
    settings: BayesianSettings,
    /// The last hyperparameter estimate of each model (objective first): warm starts.
    previous: Vec<Option<Estimate>>,
}

impl BayesianSampler {
    pub fn new(space: SearchSpace, seed: u64, settings: BayesianSettings) -> BayesianSampler {
        BayesianSampler {
            encoder: Encoder::new(space),
            seed,
            settings,
            previous: Vec::new(),
        }
    }

    fn sobol_point(&self, trial_number: u32) -> Point {
        let units = sobol_units(trial_number, self.encoder.dims(), self.seed);
        self.encoder.decode(&self.encoder.from_units(&units))
    }

    /// The model of `y` over `x` for model `slot` (0: the objective, then constraints).
    ///
    /// Hyperparameters are estimated afresh for every model while there are fewer than 64
    /// results, warm-started from the previous estimate; beyond that they are re-estimated
    /// whenever the data has grown by 5 % since the last estimate, and the model is only
    /// re-conditioned in between (one factorization). A full multi-start estimate runs
    /// while the data set is small and on every fourth estimate after that.
    ///
    /// `seen` is how many results there are in all (more than `x` holds once the data is
    /// thinned to [`MAX_MODEL_POINTS`]): growth is counted in results seen.
    fn fit(
        &mut self,
        slot: usize,
        x: Vec<Vec<f64>>,
        y: &[f64],
        seen: usize,
        rng: &mut ChaCha8Rng,
    ) -> Option<Gp> {
        let dims = self.encoder.dims();
        if self.previous.len() <= slot {
            self.previous.resize(slot + 1, None);
        }
        if let Some(previous) = &self.previous[slot]
            && seen >= 64
            && (seen as f64) < previous.data as f64 * 1.05
            && let Some(model) =
                Gp::with_theta(x.clone(), y, self.encoder.kinds(), previous.theta.clone())
        {
            return Some(model);
        }
        let mut starts = Vec::new();
        let mut estimates = 0;
        if let Some(previous) = &self.previous[slot] {
            starts.push(previous.theta.clone());
            estimates = previous.estimates;
        }
        if starts.is_empty() || x.len() < 32 || estimates % 4 == 0 {
            starts.push(gp::default_theta(dims));
            // One more start drawn around the default, for a second basin.
            let mut draw = gp::default_theta(dims);
            for value in draw.iter_mut().take(dims) {
                *value += rng.random_range(-1.5..1.5);
            }
            starts.push(draw);
        }
        let settings = FitSettings {
            starts,
            max_iterations: 50,
        };
        let data = seen;
        let model = Gp::fit(x, y, self.encoder.kinds(), &settings)?;
        self.previous[slot] = Some(Estimate {
            theta: model.theta().clone(),
            data,
            estimates: estimates + 1,
        });
        Some(model)
    }
}

impl BayesianSampler {
    /// The values of trials stopped part way, corrected to a complete trial's resource: a GP
    /// over (point, fidelity) is fitted to every result where it was seen (complete ones at
    /// fidelity 1, `partial` ones at theirs) and read at fidelity 1. What the resource does to
    /// the value is learned from the data: where it does little (a long length scale in
    /// fidelity) a stopped trial keeps about its value, and where results improve with
    /// resource its value moves toward what complete trials near it reached. It moves only as
    /// far as the model is sure: by the share of the prior variance explained at (point, full
    /// fidelity). A point correction regressed stopped trials toward the mean where complete
    /// trials are few (under ASHA, most of the time), and the search returned to regions ASHA
    /// had already stopped (`tuner_bench curves`, docs/benchmarks.md). With fewer than two
    /// complete results nothing can be learned and the values are kept.
    fn at_full_fidelity(
        &self,
        full: &[Vec<f64>],
        full_values: &[f64],
        partial: &[(Vec<f64>, f64, &[f64], f64)],
    ) -> Vec<f64> {
        let observed: Vec<f64> = partial.iter().map(|(_, value, _, _)| *value).collect();
        if full.len() < 2 {
            return observed;
        }
        let with = |coords: &[f64], fidelity: f64| {
            let mut extended = coords.to_vec();
            extended.push(fidelity);
            extended
        };
        let mut inputs: Vec<Vec<f64>> = full
            .iter()
            .map(|coords| with(coords, 1.0))
            .chain(
                partial
                    .iter()
                    .map(|(coords, _, _, fidelity)| with(coords, *fidelity)),
            )
            .collect();
        let mut outputs: Vec<f64> = full_values.iter().chain(&observed).copied().collect();
        // Fitted to at most MAX_MODEL_POINTS of them, as the other models are.
        if inputs.len() > MAX_MODEL_POINTS {
            let keep = thin(&outputs, MAX_MODEL_POINTS);
            inputs = keep.iter().map(|&index| inputs[index].clone()).collect();
            outputs = keep.iter().map(|&index| outputs[index]).collect();
        }
        let mut kinds = self.encoder.kinds();
        kinds.push(gp::Coordinate::Numeric);
        let settings = FitSettings {
            starts: vec![gp::default_theta(self.encoder.dims() + 1)],
            max_iterations: 50,
        };
        let Some(model) = Gp::fit(inputs, &outputs, kinds, &settings) else {
            return observed;
        };
        let theta = model.theta();
        let signal = theta[theta.len() - 2].exp();
        partial
            .iter()
            .zip(&observed)
            .map(|((coords, _, _, _), value)| {
                let (mean, variance) = model.predict(&with(coords, 1.0));
                // Moved toward the prediction only as far as the data supports it: by the
                // share of the prior variance the model explains at (point, full fidelity).
                let confidence = (1.0 - variance / signal).clamp(0.0, 1.0);
                let corrected = value + confidence * (model.unstandardize(mean) - value);
                if corrected.is_finite() {
                    corrected
                } else {
                    *value
                }
            })
            .collect()
    }

    /// The failure model and its threshold, once any trial has failed: a GP over +1 at
    /// failed points and −1 at the points of every result (`x`), believing the
    /// pending points. Its probability of staying below 0 is the probability that a trial
    /// there does not fail.
    ///
    /// Its hyperparameters are not fitted to the labels: a step between "runs" and "crashes"
    /// fitted by maximum likelihood collapses the length scales onto the step, and the model
    /// then forgets the failures a short way off them. It borrows the objective model's
    /// length scales (how far one result says something about another, in each coordinate)
    /// with unit signal and a noise of 0.1 (labels are noisy: a crash can be a fluke).
    fn failure_model(
        &self,
        history: &[Observation],
        x: &[Vec<f64>],
        pending: &[Vec<f64>],
        objective: &Gp,
    ) -> Option<(Gp, f64)> {
        let mut failed: Vec<Vec<f64>> = history
            .iter()
            .filter(|observation| observation.outcome == Outcome::Failed)
            .map(|observation| self.encoder.encode(&observation.point))
            .collect();
        // The latest failures only, past a quarter of the model's capacity.
        let cap = MAX_MODEL_POINTS / 4;
        if failed.len() > cap {
            failed.drain(..failed.len() - cap);
        }
        if failed.is_empty() {
            return None;
        }
        let labels: Vec<f64> = std::iter::repeat_n(-1.0, x.len())
            .chain(std::iter::repeat_n(1.0, failed.len()))
            .collect();
        let points: Vec<Vec<f64>> = x.iter().cloned().chain(failed).collect();
        let dims = self.encoder.dims();
        let mut theta = objective.theta().clone();
        theta.truncate(dims);
        theta.push(0.0);
        theta.push(0.1f64.ln());
        let model =
            Gp::with_theta(points, &labels, self.encoder.kinds(), theta)?.believing(pending)?;
        let threshold = model.standardize(0.0);
        Some((model, threshold))
    }
}

/// A monotone Yeo-Johnson transform of standardized values, its λ chosen by maximum
/// likelihood of normality (as HEBO warps outputs): λ < 1 compresses a long upper tail, λ > 1
/// a long lower one, λ = 1 is the identity. Monotone, so the order of results — and so which
/// is the incumbent — is kept.
struct Warp {
    mean: f64,
    scale: f64,
    lambda: f64,
}

impl Warp {
    fn fit(values: &[f64]) -> Warp {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n.max(1.0);
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.max(1.0);
        let scale = variance.sqrt();
        let identity = Warp {
            mean,
            scale: if scale > 0.0 && scale.is_finite() {
                scale
            } else {
                1.0
            },
            lambda: 1.0,
        };
        if values.len() < 3 || !(scale > 0.0 && scale.is_finite()) {
            return identity;
        }
        let z: Vec<f64> = values.iter().map(|v| (v - mean) / scale).collect();
        let log_likelihood = |lambda: f64| {
            let t: Vec<f64> = z.iter().map(|v| yeo_johnson(*v, lambda)).collect();
            let m = t.iter().sum::<f64>() / n;
            let var = t.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
            let jacobian: f64 = z.iter().map(|v| v.signum() * v.abs().ln_1p()).sum();
            -0.5 * n * var.max(1e-300).ln() + (lambda - 1.0) * jacobian
        };
        let mut best = (log_likelihood(1.0), 1.0);
        for step in 0..=60 {
            let lambda = -2.0 + 0.05 * f64::from(step);
            let value = log_likelihood(lambda);
            if value.is_finite() && value > best.0 + 1e-9 {
                best = (value, lambda);
            }
        }
        Warp {
            lambda: best.1,
            ..identity
        }
    }

    fn apply(&self, value: f64) -> f64 {
        yeo_johnson((value - self.mean) / self.scale, self.lambda)
    }
}

fn yeo_johnson(value: f64, lambda: f64) -> f64 {
    if value >= 0.0 {
        if lambda.abs() < 1e-9 {
            value.ln_1p()
        } else {
            ((value + 1.0).powf(lambda) - 1.0) / lambda
        }
    } else if (lambda - 2.0).abs() < 1e-9 {
        -(-value).ln_1p()
    } else {
        -((1.0 - value).powf(2.0 - lambda) - 1.0) / (2.0 - lambda)
    }
}

/// The most results a model is fitted to. A GP costs O(n³) per factorization: at 512
/// results a suggestion re-conditions in tens of milliseconds and re-estimates in under a
/// second, where at 5,000 it would take minutes. Beyond it the data is thinned ([`thin`]).
pub const MAX_MODEL_POINTS: usize = 512;

/// Which of `values` (to minimize) a model keeps when there are more than `cap`: the best
/// quarter of `cap`, then the others spread evenly in their order (the order trials ran
/// in), so the model stays sharp where the optimum is and keeps its view of the whole
/// space. Indices in ascending order.
fn thin(values: &[f64], cap: usize) -> Vec<usize> {
    if values.len() <= cap {
        return (0..values.len()).collect();
    }
    let mut ranked: Vec<usize> = (0..values.len()).collect();
    ranked.sort_by(|a, b| values[*a].total_cmp(&values[*b]).then(a.cmp(b)));
    let best = cap / 4;
    let mut keep: Vec<bool> = vec![false; values.len()];
    for &index in &ranked[..best] {
        keep[index] = true;
    }
    let rest: Vec<usize> = (0..values.len()).filter(|index| !keep[*index]).collect();
    let spread = cap - best;
    for step in 0..spread {
        // Evenly spaced positions over the rest, first and last included.
        let position = step * (rest.len() - 1) / (spread - 1).max(1);
        keep[rest[position]] = true;
    }
    (0..values.len()).filter(|index| keep[*index]).collect()
}

/// A model's last hyperparameter estimate.
#[derive(Debug, Clone)]
struct Estimate {
    theta: Theta,
    /// Results it was estimated from.
    data: usize,
    /// Estimates made so far for this model.
    estimates: u64,
}

impl Sampler for BayesianSampler {
    fn models(&self, trial_number: u32, history: &[Observation]) -> bool {
        crate::sampler::past_design(self.settings.initial_trials, trial_number, history)
    }

    fn suggest(&mut self, trial_number: u32, history: &[Observation]) -> Option<Point> {
        let completed: Vec<&Observation> = history
            .iter()
            .filter(|observation| observation.completed().is_some())
            .collect();
        if !self.models(trial_number, history) {
            return Some(self.sobol_point(trial_number));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(u64::from(trial_number) + 1);
        let pending: Vec<Vec<f64>> = history
            .iter()
            .filter(|observation| observation.outcome == Outcome::Pending)
            .map(|observation| self.encoder.encode(&observation.point))
            .collect();
        // Every result the models learn from: complete trials as they ended, then trials
        // stopped part way with their values corrected to a complete trial's resource.
        let mut x: Vec<Vec<f64>> = completed
            .iter()
            .map(|observation| self.encoder.encode(&observation.point))
            .collect();
        let mut values: Vec<f64> = completed
            .iter()
            .filter_map(|observation| observation.completed().map(|(value, _)| value))
            .collect();
        let mut constraint_rows: Vec<&[f64]> = completed
            .iter()
            .filter_map(|observation| observation.completed().map(|(_, c)| c))
            .collect();
        let partial: Vec<(Vec<f64>, f64, &[f64], f64)> = history
            .iter()
            .filter_map(|observation| match &observation.outcome {
                Outcome::Partial {
                    value,
                    constraints,
                    fidelity,
                } if value.is_finite() => Some((
                    self.encoder.encode(&observation.point),
                    *value,
                    constraints.as_slice(),
                    fidelity.clamp(0.0, 1.0),
                )),
                _ => None,
            })
            .collect();
        if !partial.is_empty() {
            let corrected = self.at_full_fidelity(&x, &values, &partial);
            for ((coords, _, constraints, _), value) in partial.into_iter().zip(corrected) {
                x.push(coords);
                values.push(value);
                constraint_rows.push(constraints);
            }
        }
        let constraint_count = constraint_rows.iter().map(|c| c.len()).max().unwrap_or(0);
        // Past MAX_MODEL_POINTS results the models learn from a subset: the best quarter and
        // an even spread of the rest.
        let seen = x.len();
        if seen > MAX_MODEL_POINTS {
            let keep = thin(&values, MAX_MODEL_POINTS);
            x = keep.iter().map(|&index| x[index].clone()).collect();
            values = keep.iter().map(|&index| values[index]).collect();
            constraint_rows = keep.iter().map(|&index| constraint_rows[index]).collect();
        }

        // The objective is modelled through a Yeo-Johnson warp fitted to its values, so a
        // heavy tail (a few huge losses) does not flatten the model where the optimum is.
        let warp = Warp::fit(&values);
        let warped: Vec<f64> = values.iter().map(|value| warp.apply(*value)).collect();
        let Some(objective) = self
            .fit(0, x.clone(), &warped, seen, &mut rng)
            .and_then(|model| model.believing(&pending))
        else {
            return Some(self.sobol_point(trial_number));
        };
        let mut constraints = Vec::new();
        if let Some(model) = self.failure_model(history, &x, &pending, &objective) {
            constraints.push(model);
        }
        for index in 0..constraint_count {
            let (cx, cy): (Vec<Vec<f64>>, Vec<f64>) = constraint_rows
                .iter()
                .zip(&x)
                .filter_map(|(values, coords)| {
                    let value = *values.get(index)?;
                    value.is_finite().then(|| (coords.clone(), value))
                })
                .unzip();
            if cy.len() < 2 {
                // Too little to model: the constraint does not steer the search yet.
                continue;
            }
            if let Some(model) = self
                .fit(index + 1, cx, &cy, seen, &mut rng)
                .and_then(|model| model.believing(&pending))
            {
                let threshold = model.standardize(0.0);
                constraints.push((model, threshold));
            }
        }

        // The incumbent: the best feasible result, or a believed pending point that the
        // constraint models expect to be feasible.
        let mut best: Option<f64> = completed
            .iter()
            .filter(|observation| observation.feasible())
            .filter_map(|observation| observation.completed().map(|(value, _)| value))
            .map(|value| objective.standardize(warp.apply(value)))
            .reduce(f64::min);
        if best.is_some() {
            let believed = &objective.standardized_outputs()[x.len()..];
            for (point, value) in pending.iter().zip(believed) {
                let feasible = constraints
                    .iter()
                    .all(|(model, threshold)| model.predict(point).0 <= *threshold);
                if feasible {
                    best = best.map(|incumbent| incumbent.min(*value));
                }
            }
        }
        let acquisition = Acquisition {
            objective: &objective,
            constraints: &constraints,
            best,
            pending: &pending,
        };

        let taken: Vec<Vec<f64>> = x.iter().chain(&pending).cloned().collect();
        let ranked: Vec<&Observation> = {
            let mut ranked: Vec<&Observation> = completed.clone();
            ranked.sort_by(|a, b| {
                let key = |o: &Observation| {
                    (
                        !o.feasible(),
                        o.completed().map_or(f64::INFINITY, |(value, _)| value),
                    )
                };
                key(a)
                    .partial_cmp(&key(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            ranked
        };
        let anchors: Vec<Vec<f64>> = ranked
            .iter()
            .take(5)
            .map(|observation| self.encoder.encode(&observation.point))
            .collect();
        let chosen = optimize(
            &self.encoder,
            &acquisition,
            &anchors,
            &taken,
            &self.settings,
            &mut rng,
        );
        let point = chosen
            .map(|coords| self.encoder.decode(&coords))
            .filter(|point| self.encoder.space().contains(point));
        Some(point.unwrap_or_else(|| self.sobol_point(trial_number)))
    }
}

/// Log EI (or nothing before a feasible result) plus log probabilities of feasibility.
pub struct Acquisition<'a> {
    pub objective: &'a Gp,
    /// Each constraint's model and its threshold (0 in the data's units) standardized.
    pub constraints: &'a [(Gp, f64)],
    /// The standardized incumbent; `None` before any feasible result.
    pub best: Option<f64>,
    /// Encoded pending points, each penalized locally.
    pub pending: &'a [Vec<f64>],
}

/// Radius of the pending points' penalty, in length scales.
const PENALTY_RADIUS: f64 = 0.1;

impl Acquisition<'_> {
    pub fn value(&self, x: &[f64]) -> f64 {
        let mut total = 0.0;
        if let Some(best) = self.best {
            let (mean, variance) = self.objective.predict(x);
            total += stats::log_ei(mean, variance.sqrt(), best).0;
        }
        for (model, threshold) in self.constraints {
            let (mean, variance) = model.predict(x);
            total += stats::log_cdf((threshold - mean) / variance.sqrt());
        }
        total + self.penalty(x, None)
    }

    /// `Σ ln(1 − exp(−d²/2r²))` over the pending points, and its gradient added to `gradient`.
    fn penalty(&self, x: &[f64], gradient: Option<&mut [f64]>) -> f64 {
        let scale = 1.0 / (2.0 * PENALTY_RADIUS * PENALTY_RADIUS);
        let mut total = 0.0;
        let mut gradient = gradient;
        for point in self.pending {
            let q = self.objective.sq_distance(x, point) * scale;
            // ln(1 − e^{−q}), exact for small and large q.
            total += if q < std::f64::consts::LN_2 {
                (-(-q).exp_m1()).max(f64::MIN_POSITIVE).ln()
            } else {
                (-(-q).exp()).ln_1p()
            };
            if let Some(gradient) = gradient.as_deref_mut() {
                let outer = 1.0 / q.exp_m1().max(f64::MIN_POSITIVE);
                for (d, kind) in self.objective.kinds().iter().enumerate() {
                    if *kind == gp::Coordinate::Numeric {
                        gradient[d] += outer
                            * scale
                            * 2.0
                            * (x[d] - point[d])
                            * self.objective.inverse_sq_lengths()[d];
                    }
                }
            }
        }
        total
    }

    pub fn values(&self, points: &[Vec<f64>]) -> Vec<f64> {
        let mut totals = vec![0.0; points.len()];
        if let Some(best) = self.best {
            for (total, (mean, variance)) in
                totals.iter_mut().zip(self.objective.predict_many(points))
            {
                *total += stats::log_ei(mean, variance.sqrt(), best).0;
            }
        }
        for (model, threshold) in self.constraints {
            for (total, (mean, variance)) in totals.iter_mut().zip(model.predict_many(points)) {
                *total += stats::log_cdf((threshold - mean) / variance.sqrt());
            }
        }
        if !self.pending.is_empty() {
            for (total, point) in totals.iter_mut().zip(points) {
                *total += self.penalty(point, None);
            }
        }
        totals
    }

    /// The value and its gradient over the numeric coordinates.
    pub fn value_and_gradient(&self, x: &[f64], gradient: &mut [f64]) -> f64 {
        let dims = x.len();
        let (mut dm, mut dv) = (vec![0.0; dims], vec![0.0; dims]);
        gradient.iter_mut().for_each(|g| *g = 0.0);
        let mut total = 0.0;
        if let Some(best) = self.best {
            let (mean, variance) = self.objective.predict_with_gradient(x, &mut dm, &mut dv);
            let sd = variance.sqrt();
            let (value, d_mean, d_sd) = stats::log_ei(mean, sd, best);
            total += value;
            for d in 0..dims {
                gradient[d] += d_mean * dm[d] + d_sd * dv[d] / (2.0 * sd);
            }
        }
        for (model, threshold) in self.constraints {
            let (mean, variance) = model.predict_with_gradient(x, &mut dm, &mut dv);
            let sd = variance.sqrt();
            let z = (threshold - mean) / sd;
            total += stats::log_cdf(z);
            let ratio = stats::dlog_cdf(z);
            for d in 0..dims {
                // ∂z/∂x = −(∂μ/∂x)/σ − z (∂σ/∂x)/σ, with ∂σ = ∂v / 2σ.
                gradient[d] += ratio * (-dm[d] / sd - z * dv[d] / (2.0 * sd * sd));
            }
        }
        total + self.penalty(x, Some(gradient))
    }
}

/// The best encoded point found, or `None` if nothing finite was found (never in practice).
fn optimize(
    encoder: &Encoder,
    acquisition: &Acquisition<'_>,
    anchors: &[Vec<f64>],
    taken: &[Vec<f64>],
    settings: &BayesianSettings,
    rng: &mut ChaCha8Rng,
) -> Option<Vec<f64>> {
    let dims = encoder.dims();
    let mut candidates: Vec<Vec<f64>> = (0..settings.raw_candidates)
        .map(|_| encoder.random(rng))
        .collect();
    let flip = 1.0 / dims as f64;
    for anchor in anchors {
        for _ in 0..settings.local_candidates {
            let mut point = anchor.clone();
            for (d, axis) in encoder.axes().iter().enumerate() {
                match axis {
                    Axis::Continuous => {
                        let noise: f64 = normal(rng) * 0.1;
                        point[d] = (point[d] + noise).clamp(0.0, 1.0);
                    }
                    Axis::Discrete(values) if rng.random::<f64>() < flip.max(0.2) => {
                        let position = Encoder::nearest(values, point[d]);
                        let step: i64 = if rng.random::<bool>() { 1 } else { -1 };
                        let moved = (position as i64 + step).clamp(0, values.len() as i64 - 1);
                        point[d] = values[moved as usize];
                    }
                    Axis::Categorical(choices) if rng.random::<f64>() < flip.max(0.2) => {
                        point[d] = rng.random_range(0..*choices) as f64;
                    }
                    _ => {}
                }
            }
            encoder.impute(&mut point);
            candidates.push(point);
        }
    }
    let scores = acquisition.values(&candidates);
    let mut order: Vec<usize> = (0..candidates.len())
        .filter(|&i| scores[i].is_finite())
        .collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut refined: Vec<(Vec<f64>, f64)> = order
        .iter()
        .take(settings.refine_starts)
        .map(|&i| refine(encoder, acquisition, candidates[i].clone(), scores[i]))
        .collect();
    // The raw candidates stay eligible in case refinement lands on a taken point.
    refined.extend(order.iter().map(|&i| (candidates[i].clone(), scores[i])));
    refined.sort_by(|a, b| b.1.total_cmp(&a.1));
    refined
        .into_iter()
        .map(|(mut point, _)| {
            encoder.snap(&mut point);
            point
        })
        .find(|point| {
            point.iter().all(|c| c.is_finite())
                && !taken
                    .iter()
                    .any(|other| other.iter().zip(point).all(|(a, b)| (a - b).abs() < 1e-9))
        })
}

/// Local search from `start`: continuous coordinates by L-BFGS, the others value by value.
fn refine(
    encoder: &Encoder,
    acquisition: &Acquisition<'_>,
    start: Vec<f64>,
    start_value: f64,
) -> (Vec<f64>, f64) {
    let mut point = start;
    let mut value = start_value;
    for _ in 0..3 {
        let before = value;
        // Only the coordinates active where the point stands move (a conditional space's
        // other coordinates are imputed and do not change the acquisition).
        let active = encoder.active(&point);
        let continuous: Vec<usize> = encoder
            .axes()
            .iter()
            .enumerate()
            .filter(|(d, axis)| **axis == Axis::Continuous && active[*d])
            .map(|(d, _)| d)
            .collect();
        if !continuous.is_empty() {
            let initial: Vec<f64> = continuous.iter().map(|&d| point[d]).collect();
            let mut full = point.clone();
            let mut full_gradient = vec![0.0; point.len()];
            let minimum = lbfgs::minimize(
                |sub, gradient| {
                    for (k, &d) in continuous.iter().enumerate() {
                        full[d] = sub[k];
                    }
                    let value = acquisition.value_and_gradient(&full, &mut full_gradient);
                    for (k, &d) in continuous.iter().enumerate() {
                        gradient[k] = -full_gradient[d];
                    }
                    -value
                },
                &initial,
                &vec![0.0; continuous.len()],
                &vec![1.0; continuous.len()],
                lbfgs::Settings {
                    max_iterations: 40,
                    gradient_tolerance: 1e-7,
                    value_tolerance: 1e-10,
                    memory: 6,
                },
            );
            if -minimum.value > value {
                for (k, &d) in continuous.iter().enumerate() {
                    point[d] = minimum.x[k];
                }
                value = -minimum.value;
            }
        }
        for (d, axis) in encoder.axes().iter().enumerate() {
            if !encoder.active(&point)[d] {
                continue;
            }
            let options: Vec<f64> = match axis {
                Axis::Continuous => continue,
                Axis::Discrete(values) if values.len() <= 16 => values.clone(),
                Axis::Discrete(values) => {
                    let at = Encoder::nearest(values, point[d]);
                    (at.saturating_sub(2)..(at + 3).min(values.len()))
                        .map(|i| values[i])
                        .collect()
                }
                Axis::Categorical(choices) => (0..*choices).map(|c| c as f64).collect(),
            };
            for option in options {
                if option == point[d] {
                    continue;
                }
                let mut trial = point.clone();
                trial[d] = option;
                encoder.impute(&mut trial);
                let score = acquisition.value(&trial);
                if score > value {
                    value = score;
                    point = trial;
                }
            }
        }
        if value <= before + 1e-12 {
            break;
        }
    }
    (point, value)
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gp::Coordinate;

    #[test]
    fn thinning_keeps_the_best_quarter_and_an_even_spread() {
        let values: Vec<f64> = (0..2000).map(|i| ((i * 7919) % 2000) as f64).collect();
        let keep = thin(&values, 512);
        assert_eq!(keep.len(), 512);
        assert!(
            keep.windows(2).all(|pair| pair[0] < pair[1]),
            "ascending, distinct"
        );
        // The 128 best values (0..128) are all kept.
        let kept: std::collections::BTreeSet<u64> =
            keep.iter().map(|&index| values[index] as u64).collect();
        assert!((0..128).all(|value| kept.contains(&value)));
        // The rest spans the whole history, first and last included.
        assert!(keep.contains(&0) || values[0] < 128.0);
        assert_eq!(keep.last(), Some(&1999));
        assert_eq!(thin(&values[..100], 512), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn acquisition_gradient_matches_finite_differences() {
        let x: Vec<Vec<f64>> = (0..14)
            .map(|i| {
                vec![
                    (i as f64 * 0.618).fract(),
                    (i as f64 * 0.414).fract(),
                    f64::from(i % 2),
                ]
            })
            .collect();
        let kinds = vec![
            Coordinate::Numeric,
            Coordinate::Numeric,
            Coordinate::Categorical,
        ];
        let settings = FitSettings {
            starts: vec![gp::default_theta(3)],
            max_iterations: 40,
        };
        let y: Vec<f64> = x
            .iter()
            .map(|p| (3.0 * p[0]).sin() + p[1] + 0.2 * p[2])
            .collect();
        let c: Vec<f64> = x.iter().map(|p| 0.4 - p[1]).collect();
        let pending = vec![vec![0.45, 0.52, 1.0]];
        let objective = Gp::fit(x.clone(), &y, kinds.clone(), &settings)
            .and_then(|m| m.believing(&pending))
            .expect("objective model");
        let constraint = Gp::fit(x, &c, kinds, &settings)
            .and_then(|m| m.believing(&pending))
            .expect("constraint model");
        let threshold = constraint.standardize(0.0);
        let constraints = [(constraint, threshold)];
        let acquisition = Acquisition {
            objective: &objective,
            constraints: &constraints,
            best: Some(objective.standardize(0.3)),
            pending: &pending,
        };
        let at = [0.4, 0.6, 1.0];
        let mut gradient = vec![0.0; 3];
        let value = acquisition.value_and_gradient(&at, &mut gradient);
        assert!((value - acquisition.value(&at)).abs() < 1e-9);
        assert!((value - acquisition.values(&[at.to_vec()])[0]).abs() < 1e-9);
        for d in 0..2 {
            let step = 1e-6;
            let mut up = at;
            up[d] += step;
            let mut down = at;
            down[d] -= step;
            let numeric = (acquisition.value(&up) - acquisition.value(&down)) / (2.0 * step);
            assert!(
                (numeric - gradient[d]).abs() < 1e-4 * numeric.abs().max(1.0),
                "d{d}: analytic {} numeric {numeric}",
                gradient[d]
            );
        }
    }
}
