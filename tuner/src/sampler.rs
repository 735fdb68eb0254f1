//! Samplers: where the next trial goes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::space::{Domain, Point, SearchSpace, Value};

/// What a sampler knows about one earlier trial of its sweep or study.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub point: Point,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Queued or running: the point is taken but its result is not known yet.
    Pending,
    /// Finished with an objective `value` to **minimize** (callers negate a maximized
    /// metric) and one value per constraint, each satisfied when `<= 0`. A non-finite
    /// constraint value means the constraint's metric is unknown: it counts as violated.
    Complete { value: f64, constraints: Vec<f64> },
    /// The trial failed at this point: it crashed, exited with an error or ran out of time.
    /// Model-based samplers steer away from where trials fail (see [`crate::bayes`] and
    /// [`crate::tpe`]).
    Failed,
    /// Stopped before it reported a usable value (cancelled, or its sweep ended): says
    /// nothing about its point.
    Stopped,
    /// Stopped part way (early stopping, or paused at an ASHA rung) with `value` and
    /// `constraints` as for `Complete`, observed at `fidelity` ∈ (0, 1): the resource it had
    /// spent over a complete trial's. A value seen early is not the value the trial would
    /// have ended with (see [`crate::bayes`] for how the GP corrects it, [`crate::tpe`] for
    /// how TPE ranks it).
    Partial {
        value: f64,
        constraints: Vec<f64>,
        fidelity: f64,
    },
    /// A result of a multi-objective sweep or study: one value per objective, each to
    /// **minimize**, and constraints as for `Complete`, observed at `fidelity` ∈ (0, 1] (1 for
    /// a complete trial). Single-objective samplers do not read it; [`crate::pareto::ParEgo`]
    /// turns it into a `Complete` or `Partial` value for the sampler it wraps.
    Objectives {
        values: Vec<f64>,
        constraints: Vec<f64>,
        fidelity: f64,
    },
}

impl Observation {
    /// The objective value and constraint values of a usable completed trial.
    pub fn completed(&self) -> Option<(f64, &[f64])> {
        match &self.outcome {
            Outcome::Complete { value, constraints } if value.is_finite() => {
                Some((*value, constraints.as_slice()))
            }
            _ => None,
        }
    }

    /// The objective value of a complete trial or of one stopped part way, if usable.
    pub fn result(&self) -> Option<f64> {
        match &self.outcome {
            Outcome::Complete { value, .. } | Outcome::Partial { value, .. }
                if value.is_finite() =>
            {
                Some(*value)
            }
            _ => None,
        }
    }

    /// Whether the trial completed and met every constraint.
    pub fn feasible(&self) -> bool {
        self.completed()
            .is_some_and(|(_, constraints)| constraints.iter().all(|c| *c <= 0.0))
    }
}

/// Chooses points of a search space.
///
/// `trial_number` is the position of the new trial in its sweep; `history` holds every
/// earlier trial (pending, complete or failed) in any order. Suggestions are deterministic:
/// the same seed, trial number and history give the same point (model-based samplers also
/// warm-start from their previous fit, so after a restart the first suggestions may differ
/// in the last digits, never in validity). `None` means the sampler has nothing more to
/// suggest (a grid that is exhausted).
pub trait Sampler: Send {
    fn suggest(&mut self, trial_number: u32, history: &[Observation]) -> Option<Point>;

    /// How many distinct points the sampler can suggest, where that is finite.
    fn capacity(&self) -> Option<u64> {
        None
    }

    /// Whether suggesting `trial_number` with `history` fits a model, which takes from a
    /// millisecond to seconds as the history grows: a caller that must stay responsive runs
    /// such a suggestion on a thread of its own. Design points (random, Sobol, grid, and the
    /// model-based samplers' initial design) are microseconds and say `false`.
    fn models(&self, trial_number: u32, history: &[Observation]) -> bool {
        let _ = (trial_number, history);
        false
    }

    /// Whether suggestions depend on `history` at all. Those that do not (random, Sobol,
    /// grid) may be given an empty one, which spares a caller rebuilding a long history for
    /// every suggestion.
    fn reads_history(&self) -> bool {
        true
    }
}

/// Whether a model-based sampler with `initial_trials` fits its model for `trial_number`:
/// past its initial design, once two results are in.
pub(crate) fn past_design(initial_trials: u32, trial_number: u32, history: &[Observation]) -> bool {
    trial_number >= initial_trials
        && history
            .iter()
            .filter(|observation| observation.result().is_some())
            .nth(1)
            .is_some()
}

/// Independent uniform sampling (log-uniform on log dimensions).
pub struct RandomSampler {
    space: SearchSpace,
    seed: u64,
}

impl RandomSampler {
    pub fn new(space: SearchSpace, seed: u64) -> RandomSampler {
        RandomSampler { space, seed }
    }
}

impl Sampler for RandomSampler {
    fn reads_history(&self) -> bool {
        false
    }

    fn suggest(&mut self, trial_number: u32, _history: &[Observation]) -> Option<Point> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(u64::from(trial_number));
        let point = (0..self.space.dimensions().len())
            .map(|index| self.space.value_from_unit(index, rng.random::<f64>()))
            .collect();
        Some(self.space.canonical(point))
    }
}

/// Exhaustive grid: every combination of each dimension's grid values, in an order
/// shuffled by the seed so that a budget smaller than the grid still spreads over it. In a
/// conditional space the combinations are the distinct canonical points (an inactive
/// dimension contributes one value, not its whole axis), enumerated up to
/// [`MAX_CONDITIONAL_GRID`].
pub struct GridSampler {
    axes: Vec<Vec<Value>>,
    /// A conditional space's grid points, enumerated; empty for a plain space, whose points
    /// are decoded from their index.
    points: Vec<Point>,
    order: Vec<u64>,
}

/// The most grid points enumerated for a conditional space.
pub const MAX_CONDITIONAL_GRID: usize = 1 << 20;

/// The canonical grid points of a conditional space, parents before children.
fn conditional_grid(space: &SearchSpace, axes: &[Vec<Value>]) -> Vec<Point> {
    let mut points = Vec::new();
    let mut point: Point = (0..axes.len()).map(|d| space.canonical_value(d)).collect();
    fn visit(
        space: &SearchSpace,
        axes: &[Vec<Value>],
        depth: usize,
        point: &mut Point,
        points: &mut Vec<Point>,
    ) {
        if points.len() >= MAX_CONDITIONAL_GRID {
            return;
        }
        let Some(&index) = space.order().get(depth) else {
            points.push(point.clone());
            return;
        };
        // Every parent was placed earlier in the order, so the point says whether this one
        // is active.
        if space.active(point)[index] {
            for value in &axes[index] {
                point[index] = *value;
                visit(space, axes, depth + 1, point, points);
            }
        } else {
            point[index] = space.canonical_value(index);
            visit(space, axes, depth + 1, point, points);
        }
    }
    visit(space, axes, 0, &mut point, &mut points);
    points
}

impl GridSampler {
    /// `points_per_float` values for float dimensions (including both ends); int dimensions
    /// use every integer when there are at most `points_per_float` of them, else that many
    /// evenly spaced; categorical dimensions use every choice. The grid is capped at
    /// `max_points` combinations (the sweep's trial budget is a natural cap).
    pub fn new(
        space: &SearchSpace,
        points_per_float: u32,
        seed: u64,
        max_points: u64,
    ) -> GridSampler {
        let points = u64::from(points_per_float.max(1));
        let axes: Vec<Vec<Value>> = space
            .dimensions()
            .iter()
            .enumerate()
            .map(|(index, dimension)| match dimension.domain {
                Domain::Categorical { choices } => (0..choices).map(Value::Choice).collect(),
                Domain::Int { low, high, log } if !log && ((high - low + 1) as u64) <= points => {
                    (low..=high).map(Value::Int).collect()
                }
                _ => {
                    let mut values: Vec<Value> = (0..points)
                        .map(|step| {
                            let unit = if points == 1 {
                                0.5
                            } else {
                                step as f64 / (points - 1) as f64
                            };
                            grid_value(space, index, unit)
                        })
                        .collect();
                    values.dedup();
                    values
                }
            })
            .collect();
        let points = if space.is_conditional() {
            conditional_grid(space, &axes)
        } else {
            Vec::new()
        };
        let total = if space.is_conditional() {
            points.len() as u64
        } else {
            axes.iter().fold(1u64, |product, axis| {
                product.saturating_mul(axis.len() as u64)
            })
        };
        let wanted = total.min(max_points.max(1)).min(1 << 24);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<u64> = if wanted == total {
            (0..total).collect()
        } else {
            // Budget smaller than the grid: a uniform random subset of the grid points
            // (Floyd's algorithm), so no axis is starved by the index layout.
            let mut chosen = std::collections::BTreeSet::new();
            for upper in (total - wanted)..total {
                let candidate = rng.random_range(0..=upper);
                if !chosen.insert(candidate) {
                    chosen.insert(upper);
                }
            }
            chosen.into_iter().collect()
        };
        for index in (1..order.len()).rev() {
            let other = rng.random_range(0..=index);
            order.swap(index, other);
        }
        GridSampler {
            axes,
            points,
            order,
        }
    }
}

fn grid_value(space: &SearchSpace, index: usize, unit: f64) -> Value {
    match space.dimensions()[index].domain {
        Domain::Float { low, high, log } => {
            let value = if log {
                (low.ln() + unit * (high.ln() - low.ln())).exp()
            } else {
                low + unit * (high - low)
            };
            Value::Float(value.clamp(low, high))
        }
        Domain::Int { low, high, log } => {
            let value = if log {
                ((low as f64).ln() + unit * ((high as f64).ln() - (low as f64).ln())).exp()
            } else {
                low as f64 + unit * (high - low) as f64
            };
            Value::Int((value.round() as i64).clamp(low, high))
        }
        Domain::Categorical { .. } => space.value_from_unit(index, unit),
    }
}

impl Sampler for GridSampler {
    fn reads_history(&self) -> bool {
        false
    }

    fn suggest(&mut self, trial_number: u32, _history: &[Observation]) -> Option<Point> {
        let mut flat = *self.order.get(trial_number as usize)?;
        if !self.points.is_empty() {
            return Some(self.points[flat as usize].clone());
        }
        let mut point = Vec::with_capacity(self.axes.len());
        for axis in &self.axes {
            let len = axis.len() as u64;
            point.push(axis[(flat % len) as usize]);
            flat /= len;
        }
        Some(point)
    }

    fn capacity(&self) -> Option<u64> {
        Some(self.order.len() as u64)
    }
}

/// Scrambled Sobol points: a low-discrepancy design that covers the space far more evenly
/// than independent draws (Owen scrambling, so different seeds give independent designs).
pub struct SobolSampler {
    space: SearchSpace,
    seed: u64,
}

impl SobolSampler {
    pub fn new(space: SearchSpace, seed: u64) -> SobolSampler {
        SobolSampler { space, seed }
    }
}

/// Point `index` of the scrambled Sobol sequence for `seed`, in the unit cube of `dims`
/// dimensions. Beyond 2¹⁶ points or 256 dimensions, further independently scrambled
/// sequences continue it.
pub fn sobol_units(index: u32, dims: usize, seed: u64) -> Vec<f64> {
    let base_seed = (seed ^ (seed >> 32)) as u32;
    let block = index >> 16;
    (0..dims)
        .map(|dimension| {
            let layer = (dimension / 256) as u32;
            let seed = base_seed
                .wrapping_add(block.wrapping_mul(0x9e37_79b9))
                .wrapping_add(layer.wrapping_mul(0x85eb_ca6b));
            f64::from(sobol_burley::sample(
                index & 0xffff,
                (dimension % 256) as u32,
                seed,
            ))
        })
        .collect()
}

impl Sampler for SobolSampler {
    fn reads_history(&self) -> bool {
        false
    }

    fn suggest(&mut self, trial_number: u32, _history: &[Observation]) -> Option<Point> {
        let units = sobol_units(trial_number, self.space.dimensions().len(), self.seed);
        let point = units
            .iter()
            .enumerate()
            .map(|(index, unit)| self.space.value_from_unit(index, *unit))
            .collect();
        Some(self.space.canonical(point))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::space::Dimension;

    fn space() -> SearchSpace {
        SearchSpace::new(vec![
            Dimension::float("lr", 1e-4, 1e-1, true),
            Dimension::int("layers", 1, 4, false),
            Dimension::categorical("opt", 3),
        ])
        .expect("valid space")
    }

    /// A sampler that says it ignores the history suggests the same points with it as
    /// without it (callers may then give it none).
    #[test]
    fn design_samplers_ignore_the_history_they_say_they_do_not_read() {
        let history: Vec<Observation> = (0..20)
            .map(|trial| {
                let point = RandomSampler::new(space(), 3)
                    .suggest(trial, &[])
                    .expect("point");
                let outcome = Outcome::Complete {
                    value: f64::from(trial),
                    constraints: Vec::new(),
                };
                Observation { point, outcome }
            })
            .collect();
        let samplers: Vec<Box<dyn Fn() -> Box<dyn Sampler>>> = vec![
            Box::new(|| Box::new(RandomSampler::new(space(), 5))),
            Box::new(|| Box::new(SobolSampler::new(space(), 5))),
            Box::new(|| Box::new(GridSampler::new(&space(), 3, 5, 1000))),
        ];
        for make in samplers {
            let (mut with, mut without) = (make(), make());
            assert!(!with.reads_history());
            for trial in 0..10 {
                assert_eq!(with.suggest(trial, &history), without.suggest(trial, &[]));
            }
        }
    }

    #[test]
    fn random_is_deterministic_per_trial_and_stays_in_the_space() {
        let mut first = RandomSampler::new(space(), 7);
        let mut second = RandomSampler::new(space(), 7);
        for trial in 0..200 {
            let point = first.suggest(trial, &[]).expect("always suggests");
            assert!(space().contains(&point), "{point:?}");
            assert_eq!(Some(point), second.suggest(trial, &[]));
        }
        assert_ne!(
            first.suggest(0, &[]),
            RandomSampler::new(space(), 8).suggest(0, &[])
        );
    }

    #[test]
    fn random_log_dimension_is_log_uniform() {
        let mut sampler = RandomSampler::new(space(), 1);
        let below_1e3 = (0..4000)
            .filter(|trial| matches!(sampler.suggest(*trial, &[]).expect("point")[0], Value::Float(x) if x < 1e-3))
            .count();
        // A third of the log range lies below 1e-3; a linear sampler would put ~1% there.
        assert!((1100..1550).contains(&below_1e3), "{below_1e3}");
    }

    #[test]
    fn random_covers_every_integer_and_choice() {
        let mut sampler = RandomSampler::new(space(), 3);
        let mut layers = HashSet::new();
        let mut choices = HashSet::new();
        for trial in 0..300 {
            let point = sampler.suggest(trial, &[]).expect("point");
            if let Value::Int(value) = point[1] {
                layers.insert(value);
            }
            if let Value::Choice(value) = point[2] {
                choices.insert(value);
            }
        }
        assert_eq!(layers, HashSet::from([1, 2, 3, 4]));
        assert_eq!(choices, HashSet::from([0, 1, 2]));
    }

    #[test]
    fn grid_enumerates_every_combination_once_then_stops() {
        // lr: 3 points; layers: 4 integers > 3 points, so 3 spaced values; opt: 3 choices.
        let mut sampler = GridSampler::new(&space(), 3, 5, u64::MAX);
        assert_eq!(sampler.capacity(), Some(3 * 3 * 3));
        let mut seen = HashSet::new();
        for trial in 0..27 {
            let point = sampler.suggest(trial, &[]).expect("within the grid");
            assert!(space().contains(&point));
            assert!(seen.insert(format!("{point:?}")), "duplicate {point:?}");
        }
        assert_eq!(sampler.suggest(27, &[]), None);
        let mut full = GridSampler::new(&space(), 4, 5, u64::MAX);
        assert_eq!(
            full.capacity(),
            Some(4 * 4 * 3),
            "every integer when they fit"
        );
        assert!(full.suggest(47, &[]).is_some() && full.suggest(48, &[]).is_none());
    }

    #[test]
    fn grid_with_small_budget_spreads_over_the_grid() {
        let mut sampler = GridSampler::new(&space(), 5, 5, 6);
        assert_eq!(sampler.capacity(), Some(6));
        let points: Vec<Point> = (0..6)
            .map(|trial| sampler.suggest(trial, &[]).expect("point"))
            .collect();
        let distinct_lr: HashSet<String> = points
            .iter()
            .map(|point| format!("{:?}", point[0]))
            .collect();
        assert!(distinct_lr.len() >= 2, "{points:?}");
    }

    #[test]
    fn sobol_covers_the_space_more_evenly_than_random() {
        // 64 points in 2-D: every cell of an 8 × 8 grid holds exactly one Sobol point
        // (a (0, 6, 2)-net property that scrambling keeps); random draws leave holes.
        let units: Vec<Vec<f64>> = (0..64).map(|i| sobol_units(i, 2, 11)).collect();
        let mut cells = HashSet::new();
        for unit in &units {
            assert!(unit.iter().all(|u| (0.0..1.0).contains(u)));
            cells.insert(((unit[0] * 8.0) as u32, (unit[1] * 8.0) as u32));
        }
        assert_eq!(cells.len(), 64);
        assert_ne!(sobol_units(3, 2, 11), sobol_units(3, 2, 12));
        let mut sampler = SobolSampler::new(space(), 5);
        for trial in 0..100 {
            let point = sampler.suggest(trial, &[]).expect("point");
            assert!(space().contains(&point));
        }
        assert_eq!(sobol_units(70_000, 300, 1).len(), 300);
    }

    #[test]
    fn spaces_are_checked() {
        let bad = SearchSpace::new(vec![Dimension::float("x", 0.0, 1.0, true)]);
        assert!(matches!(
            bad,
            Err(crate::SpaceError::InvalidDimension { .. })
        ));
        assert_eq!(SearchSpace::new(vec![]), Err(crate::SpaceError::Empty));
    }
}
