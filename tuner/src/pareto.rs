//! Several objectives at once: Pareto dominance, the non-dominated front, hypervolume, and
//! ParEGO, which lets any single-objective sampler search the front.
//!
//! Every value here is a loss (minimized); callers negate maximized metrics.
//!
//! # ParEGO
//!
//! Knowles (2006): for each suggestion, take a weight vector `w` on the simplex (the trial
//! number's point of a scrambled Sobol sequence, mapped to the simplex by the spacings of its
//! sorted coordinates: uniform, deterministic, and evenly spread over successive
//! suggestions, which measured a little better than independent draws on every problem of
//! the benchmark), normalize each objective
//! so that the current front spans [0, 1] in it (from its best value to its worst there, the
//! front's ideal and nadir points; results beyond the nadir lie above 1; the front is that of
//! the feasible complete results while there are any, and an objective in which the front
//! has no extent is scaled by every result's), and hand the
//! wrapped sampler the augmented Chebyshev scalarization
//!
//! ```text
//! s(z) = max_i w_i z_i + ρ Σ_i w_i z_i,     ρ = 0.05
//! ```
//!
//! as if it were the only objective. Normalizing by the front rather than by every result
//! keeps an objective with a long tail of poor values (Branin's hundreds where the front
//! lies below 20) from flattening its differences along the front; measured on the
//! multi-objective benchmark (`tuner_bench pareto`), it halved the hypervolume gap on
//! Branin–Currin at 100 evaluations and changed the other problems little. The Chebyshev term makes every point of the front
//! (convex or not) the minimum of some `w`; the small sum breaks ties toward points that are
//! not weakly dominated. Each suggestion therefore aims at one region of the front, and the
//! weights spread the suggestions over it. Pending trials, failures and constraints pass
//! through unchanged, so the wrapped sampler's handling of them (pending points, the
//! crash-feasibility model, constrained improvement) carries over. A result seen part way
//! (early stopping) stays a lower-fidelity observation of its scalarization.

use crate::sampler::{Observation, Outcome, Sampler};
use crate::space::Point;

/// Whether `a` dominates `b`: no worse in every objective and better in one.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(a, b)| a <= b) && a.iter().zip(b).any(|(a, b)| a < b)
}

/// The positions of the non-dominated vectors among `points` (vectors with a non-finite
/// value are left out), in their original order. Of vectors that are equal, every one is kept.
pub fn nondominated(points: &[Vec<f64>]) -> Vec<usize> {
    let finite = |point: &Vec<f64>| point.iter().all(|value| value.is_finite());
    (0..points.len())
        .filter(|&i| finite(&points[i]))
        .filter(|&i| {
            !points
                .iter()
                .any(|other| finite(other) && dominates(other, &points[i]))
        })
        .collect()
}

/// The hypervolume `points` dominate up to `reference`: the measure of the region of loss
/// vectors each at most `reference` and dominated by (or equal to) one of `points`. Points not
/// strictly better than the reference in every objective add nothing. Exact: a sweep in two
/// dimensions, slicing along the last objective above that (fine for the fronts of a few
/// hundred points tuning produces).
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> f64 {
    let inside: Vec<Vec<f64>> = points
        .iter()
        .filter(|point| {
            point.len() == reference.len()
                && point
                    .iter()
                    .zip(reference)
                    .all(|(value, bound)| value < bound)
        })
        .cloned()
        .collect();
    volume(inside, reference)
}

fn volume(mut points: Vec<Vec<f64>>, reference: &[f64]) -> f64 {
    let dims = reference.len();
    if points.is_empty() || dims == 0 {
        return 0.0;
    }
    if dims == 1 {
        let best = points
            .iter()
            .map(|point| point[0])
            .fold(f64::INFINITY, f64::min);
        return reference[0] - best;
    }
    let last = dims - 1;
    points.sort_by(|a, b| a[last].total_cmp(&b[last]));
    if dims == 2 {
        // Ascending in the second objective: each point that improves the first objective on
        // every point before it adds the strip between its first objective and theirs.
        let mut area = 0.0;
        let mut frontier = reference[0];
        for point in &points {
            if point[0] < frontier {
                area += (frontier - point[0]) * (reference[1] - point[1]);
                frontier = point[0];
            }
        }
        return area;
    }
    // Slices between consecutive values of the last objective: in each, the points at or
    // below it, projected, cover a (dims − 1)-volume.
    let mut total = 0.0;
    for index in 0..points.len() {
        let top = points
            .get(index + 1)
            .map_or(reference[last], |next| next[last]);
        let depth = top - points[index][last];
        if depth <= 0.0 {
            continue;
        }
        let projected: Vec<Vec<f64>> = points[..=index]
            .iter()
            .map(|point| point[..last].to_vec())
            .collect();
        let front: Vec<Vec<f64>> = nondominated(&projected)
            .into_iter()
            .map(|i| projected[i].clone())
            .collect();
        total += depth * volume(front, &reference[..last]);
    }
    total
}

/// The augmented Chebyshev weight of the sum term.
const RHO: f64 = 0.05;

/// ParEGO: searches the Pareto front of [`Outcome::Objectives`] results with a
/// single-objective sampler (see the module documentation).
pub struct ParEgo {
    inner: Box<dyn Sampler>,
    seed: u64,
}

impl ParEgo {
    pub fn new(inner: Box<dyn Sampler>, seed: u64) -> ParEgo {
        ParEgo { inner, seed }
    }

    /// The weights of the scalarization trial `trial_number` is suggested under: on the
    /// simplex of `objectives` dimensions, spread evenly over trial numbers.
    pub fn weights(&self, trial_number: u32, objectives: usize) -> Vec<f64> {
        // Sorted uniforms' spacings are uniform on the simplex; the uniforms come from a
        // scrambled Sobol sequence over trial numbers, so successive suggestions' weights
        // spread evenly over it instead of clumping.
        let mut cuts = crate::sampler::sobol_units(
            trial_number,
            objectives.saturating_sub(1),
            self.seed ^ 0x9a3e_90c1_5d2b_7f11,
        );
        cuts.sort_by(f64::total_cmp);
        let draws: Vec<f64> = std::iter::once(0.0)
            .chain(cuts.iter().copied())
            .zip(cuts.iter().copied().chain(std::iter::once(1.0)))
            .map(|(low, high)| high - low)
            .collect();
        let sum: f64 = draws.iter().sum();
        draws.iter().map(|draw| draw / sum).collect()
    }

    /// `history` as the wrapped sampler sees it when suggesting `trial_number`: each
    /// multi-objective result replaced by its scalarization under this suggestion's weights
    /// (complete at fidelity 1, partial below); everything else as it was.
    pub fn scalarized(&self, trial_number: u32, history: &[Observation]) -> Vec<Observation> {
        // (values, feasible and complete) of each usable result.
        let results: Vec<(&[f64], bool)> = history
            .iter()
            .filter_map(|observation| match &observation.outcome {
                Outcome::Objectives {
                    values,
                    constraints,
                    fidelity,
                } if values.iter().all(|value| value.is_finite()) => Some((
                    values.as_slice(),
                    *fidelity >= 1.0 && constraints.iter().all(|c| *c <= 0.0),
                )),
                _ => None,
            })
            .collect();
        let objectives = results.first().map_or(0, |(values, _)| values.len());
        // The front of the feasible complete results (of every result while there are none):
        // what a result's place is measured against.
        let feasible: Vec<Vec<f64>> = results
            .iter()
            .filter(|(_, feasible)| *feasible)
            .map(|(values, _)| values.to_vec())
            .collect();
        let all: Vec<Vec<f64>> = results.iter().map(|(values, _)| values.to_vec()).collect();
        let pool = if feasible.is_empty() { &all } else { &feasible };
        let front: Vec<&Vec<f64>> = nondominated(pool).into_iter().map(|i| &pool[i]).collect();
        let span = |values: &mut dyn Iterator<Item = f64>| {
            values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), value| {
                (low.min(value), high.max(value))
            })
        };
        // Each objective's scale: the front's extent in it, or (a front of one point, or of
        // points equal in it) the extent of every result, or 1.
        let (low, high): (Vec<f64>, Vec<f64>) = (0..objectives)
            .map(|i| {
                let (low, high) =
                    span(&mut front.iter().filter_map(|values| values.get(i).copied()));
                if high > low {
                    return (low, high);
                }
                let (_, wide) = span(&mut all.iter().filter_map(|values| values.get(i).copied()));
                if wide > low {
                    (low, wide)
                } else {
                    (low, low + 1.0)
                }
            })
            .unzip();
        let weights = self.weights(trial_number, objectives);
        let scalar = |values: &[f64]| {
            if values.len() != objectives || values.iter().any(|value| !value.is_finite()) {
                return f64::NAN;
            }
            let terms: Vec<f64> = values
                .iter()
                .zip(&weights)
                .zip(low.iter().zip(&high))
                .map(|((value, weight), (low, high))| weight * (value - low) / (high - low))
                .collect();
            terms.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                + RHO * terms.iter().sum::<f64>()
        };
        history
            .iter()
            .map(|observation| {
                let outcome = match &observation.outcome {
                    Outcome::Objectives {
                        values,
                        constraints,
                        fidelity,
                    } => {
                        let value = scalar(values);
                        let constraints = constraints.clone();
                        if *fidelity < 1.0 {
                            Outcome::Partial {
                                value,
                                constraints,
                                fidelity: *fidelity,
                            }
                        } else {
                            Outcome::Complete { value, constraints }
                        }
                    }
                    other => other.clone(),
                };
                Observation {
                    point: observation.point.clone(),
                    outcome,
                }
            })
            .collect()
    }
}

impl Sampler for ParEgo {
    fn suggest(&mut self, trial_number: u32, history: &[Observation]) -> Option<Point> {
        let history = self.scalarized(trial_number, history);
        self.inner.suggest(trial_number, &history)
    }

    fn capacity(&self) -> Option<u64> {
        self.inner.capacity()
    }

    fn models(&self, trial_number: u32, history: &[Observation]) -> bool {
        self.inner
            .models(trial_number, &self.scalarized(trial_number, history))
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::sampler::RandomSampler;
    use crate::space::{Dimension, Domain, SearchSpace, Value};

    #[test]
    fn dominance_and_the_front() {
        assert!(dominates(&[1.0, 2.0], &[1.0, 3.0]));
        assert!(!dominates(&[1.0, 3.0], &[1.0, 3.0]));
        assert!(!dominates(&[0.0, 4.0], &[1.0, 3.0]));
        let points = vec![
            vec![1.0, 5.0],
            vec![2.0, 2.0],
            vec![3.0, 3.0],
            vec![5.0, 1.0],
            vec![f64::NAN, 0.0],
            vec![2.0, 2.0],
        ];
        assert_eq!(nondominated(&points), vec![0, 1, 3, 5]);
    }

    #[test]
    fn hypervolume_is_exact_in_two_and_three_dimensions() {
        let reference = [4.0, 4.0];
        // Two boxes of 3 × 1 and 1 × 3 overlapping in 1 × 1: 5.
        let front = vec![vec![1.0, 3.0], vec![3.0, 1.0]];
        assert!((hypervolume(&front, &reference) - 5.0).abs() < 1e-12);
        // A dominated point and one outside the reference add nothing.
        let more = vec![
            vec![1.0, 3.0],
            vec![3.0, 1.0],
            vec![3.5, 3.5],
            vec![0.0, 5.0],
        ];
        assert!((hypervolume(&more, &reference) - 5.0).abs() < 1e-12);
        assert_eq!(hypervolume(&[], &reference), 0.0);
        // Three dimensions: boxes of 2 × 1 × 1 (and rotations) against a reference of 2.
        let points = vec![
            vec![0.0, 1.0, 1.0],
            vec![1.0, 0.0, 1.0],
            vec![1.0, 1.0, 0.0],
        ];
        // |A ∪ B ∪ C| = 3·2 − 3·1 + 1 = 4.
        assert!((hypervolume(&points, &[2.0, 2.0, 2.0]) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn hypervolume_agrees_with_a_monte_carlo_estimate() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let points: Vec<Vec<f64>> = (0..12)
            .map(|_| (0..3).map(|_| rng.random::<f64>()).collect())
            .collect();
        let exact = hypervolume(&points, &[1.0, 1.0, 1.0]);
        let samples = 200_000;
        let hits = (0..samples)
            .filter(|_| {
                let z: Vec<f64> = (0..3).map(|_| rng.random::<f64>()).collect();
                points
                    .iter()
                    .any(|point| point.iter().zip(&z).all(|(p, z)| p <= z))
            })
            .count();
        let estimate = hits as f64 / samples as f64;
        assert!((exact - estimate).abs() < 0.01, "{exact} vs {estimate}");
    }

    fn space() -> SearchSpace {
        SearchSpace::new(vec![Dimension {
            name: "x".into(),
            domain: Domain::Float {
                low: 0.0,
                high: 1.0,
                log: false,
            },
        }])
        .expect("space")
    }

    fn result(x: f64, values: Vec<f64>, fidelity: f64) -> Observation {
        Observation {
            point: vec![Value::Float(x)],
            outcome: Outcome::Objectives {
                values,
                constraints: vec![-1.0],
                fidelity,
            },
        }
    }

    #[test]
    fn weights_are_on_the_simplex_and_vary_by_trial() {
        let parego = ParEgo::new(Box::new(RandomSampler::new(space(), 1)), 1);
        let a = parego.weights(4, 3);
        assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(a.iter().all(|w| *w >= 0.0));
        assert_eq!(a, parego.weights(4, 3));
        assert_ne!(a, parego.weights(5, 3));
    }

    /// A front of one feasible point (the infeasible result that beats it does not count)
    /// still leaves the results it dominates worse than it, not tied at zero.
    #[test]
    fn a_front_of_one_point_is_scaled_by_every_result() {
        let parego = ParEgo::new(Box::new(RandomSampler::new(space(), 1)), 2);
        let infeasible = Observation {
            point: vec![Value::Float(0.9)],
            outcome: Outcome::Objectives {
                values: vec![0.0, 0.0],
                constraints: vec![1.0],
                fidelity: 1.0,
            },
        };
        let history = vec![
            result(0.1, vec![1.0, 1.0], 1.0),
            result(0.2, vec![2.0, 3.0], 1.0),
            result(0.3, vec![3.0, 2.0], 1.0),
            infeasible,
        ];
        for trial in 0..8 {
            let scalar = parego.scalarized(trial, &history);
            let value = |i: usize| match &scalar[i].outcome {
                Outcome::Complete { value, .. } => *value,
                other => panic!("{other:?}"),
            };
            assert_eq!(value(0), 0.0);
            assert!(value(1) > 0.0 && value(2) > 0.0, "trial {trial}");
        }
    }

    #[test]
    fn scalarization_ranks_the_front_under_each_weight_and_keeps_the_rest() {
        let parego = ParEgo::new(Box::new(RandomSampler::new(space(), 1)), 7);
        let history = vec![
            result(0.1, vec![0.0, 10.0], 1.0),
            result(0.2, vec![10.0, 0.0], 1.0),
            result(0.3, vec![5.0, 5.0], 1.0),
            result(0.4, vec![9.0, 9.0], 1.0),
            result(0.5, vec![1.0, 1.0], 0.5),
            Observation {
                point: vec![Value::Float(0.6)],
                outcome: Outcome::Pending,
            },
            Observation {
                point: vec![Value::Float(0.7)],
                outcome: Outcome::Failed,
            },
        ];
        for trial in 0..20 {
            let scalar = parego.scalarized(trial, &history);
            let value = |i: usize| match &scalar[i].outcome {
                Outcome::Complete { value, constraints } => {
                    assert_eq!(constraints, &vec![-1.0]);
                    *value
                }
                Outcome::Partial {
                    value, fidelity, ..
                } => {
                    assert_eq!(*fidelity, 0.5);
                    *value
                }
                other => panic!("{other:?}"),
            };
            // A dominated result is worse than the result dominating it, whatever the weights.
            assert!(value(3) > value(2), "trial {trial}");
            let w = parego.weights(trial, 2);
            // The corner the weight favours wins among the corners.
            if w[0] > w[1] {
                assert!(value(0) < value(1));
            } else {
                assert!(value(1) < value(0));
            }
            assert_eq!(scalar[5].outcome, Outcome::Pending);
            assert_eq!(scalar[6].outcome, Outcome::Failed);
        }
    }
}
