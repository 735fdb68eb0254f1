//! How model-based samplers see a point: one number per dimension.
//!
//! Floats map to the unit interval (log dimensions in log space). Integers map to the centre
//! of their share of the unit interval, so the models only ever see values an integer can
//! take; small integer ranges are searched value by value, large ones as a continuum and then
//! snapped. Categorical dimensions keep the choice index, which the models compare by
//! equality, never by magnitude.
//!
//! In a conditional space an inactive dimension is *imputed*: it holds the encoding of its
//! canonical value whatever the point says, so the models see points that differ only in
//! parameters that did not apply as the same point, and the acquisition optimizer moves only
//! the coordinates that are active where it stands.

use rand::Rng;

use crate::gp::Coordinate;
use crate::space::{Domain, Point, SearchSpace, Value};

/// Integer ranges up to this many values are searched exhaustively, one value at a time.
const MAX_DISCRETE_VALUES: i64 = 64;

/// How the acquisition optimizer moves along one coordinate.
#[derive(Debug, Clone, PartialEq)]
pub enum Axis {
    /// Any value in `[0, 1]` (floats, and integers with a large range, snapped at the end).
    Continuous,
    /// One of these unit coordinates, in increasing order (integers with a small range).
    Discrete(Vec<f64>),
    /// A choice index below this count.
    Categorical(usize),
}

#[derive(Debug, Clone)]
pub struct Encoder {
    space: SearchSpace,
    axes: Vec<Axis>,
    /// Each dimension's coordinate while inactive (its canonical value, encoded).
    imputed: Vec<f64>,
}

impl Encoder {
    pub fn new(space: SearchSpace) -> Encoder {
        let axes = space
            .dimensions()
            .iter()
            .map(|dimension| match dimension.domain {
                Domain::Float { .. } => Axis::Continuous,
                Domain::Int { low, high, .. } if high - low < MAX_DISCRETE_VALUES => {
                    Axis::Discrete(
                        (low..=high)
                            .map(|value| int_unit(&dimension.domain, value))
                            .collect(),
                    )
                }
                Domain::Int { .. } => Axis::Continuous,
                Domain::Categorical { choices } => Axis::Categorical(choices),
            })
            .collect();
        let mut encoder = Encoder {
            space,
            axes,
            imputed: Vec::new(),
        };
        let canonical: Point = (0..encoder.dims())
            .map(|index| encoder.space.canonical_value(index))
            .collect();
        encoder.imputed = encoder.encode_raw(&canonical);
        encoder
    }

    /// Which coordinates of `coords` are active.
    pub fn active(&self, coords: &[f64]) -> Vec<bool> {
        self.space
            .active_by(|parent| coords[parent].round().max(0.0) as usize)
    }

    /// Sets every inactive coordinate of `coords` to its imputed value.
    pub fn impute(&self, coords: &mut [f64]) {
        if self.space.is_conditional() {
            for (index, active) in self.active(coords).into_iter().enumerate() {
                if !active {
                    coords[index] = self.imputed[index];
                }
            }
        }
    }

    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    pub fn axes(&self) -> &[Axis] {
        &self.axes
    }

    pub fn dims(&self) -> usize {
        self.axes.len()
    }

    /// How the GP kernel compares each coordinate.
    pub fn kinds(&self) -> Vec<Coordinate> {
        self.axes
            .iter()
            .map(|axis| match axis {
                Axis::Categorical(_) => Coordinate::Categorical,
                _ => Coordinate::Numeric,
            })
            .collect()
    }

    /// The coordinates of `point`, inactive dimensions imputed.
    pub fn encode(&self, point: &[Value]) -> Vec<f64> {
        let mut coords = self.encode_raw(point);
        self.impute(&mut coords);
        coords
    }

    fn encode_raw(&self, point: &[Value]) -> Vec<f64> {
        self.space
            .dimensions()
            .iter()
            .zip(point)
            .map(|(dimension, value)| match (&dimension.domain, value) {
                (Domain::Float { low, high, log }, Value::Float(x)) => {
                    let unit = if *log {
                        (x.ln() - low.ln()) / (high.ln() - low.ln())
                    } else {
                        (x - low) / (high - low)
                    };
                    unit.clamp(0.0, 1.0)
                }
                (domain @ Domain::Int { .. }, Value::Int(x)) => int_unit(domain, *x),
                (_, Value::Choice(index)) => *index as f64,
                // A value of the wrong kind cannot come from this space's samplers.
                _ => 0.5,
            })
            .collect()
    }

    /// The point at `coords` (integers rounded to the value whose share holds the
    /// coordinate), canonical.
    pub fn decode(&self, coords: &[f64]) -> Point {
        let point = coords
            .iter()
            .enumerate()
            .map(|(index, coord)| match self.axes[index] {
                Axis::Categorical(choices) => {
                    Value::Choice((coord.round().max(0.0) as usize).min(choices - 1))
                }
                _ => self.space.value_from_unit(index, *coord),
            })
            .collect();
        self.space.canonical(point)
    }

    /// Moves integer and categorical coordinates onto values they can take.
    pub fn snap(&self, coords: &mut [f64]) {
        let snapped = self.encode(&self.decode(coords));
        for (index, dimension) in self.space.dimensions().iter().enumerate() {
            coords[index] = match dimension.domain {
                Domain::Float { .. } => coords[index].clamp(0.0, 1.0),
                _ => snapped[index],
            };
        }
        self.impute(coords);
    }

    /// The index of the value in `values` nearest to `at` (a discrete axis's values).
    pub fn nearest(values: &[f64], at: f64) -> usize {
        let mut best = 0;
        for (index, value) in values.iter().enumerate() {
            if (value - at).abs() < (values[best] - at).abs() {
                best = index;
            }
        }
        best
    }

    /// A uniformly random encoded point (integers and choices uniform over their values).
    pub fn random(&self, rng: &mut impl Rng) -> Vec<f64> {
        let units: Vec<f64> = (0..self.dims()).map(|_| rng.random::<f64>()).collect();
        self.from_units(&units)
    }

    /// The encoded point for unit-cube coordinates `units` (as a Sobol or random draw gives).
    pub fn from_units(&self, units: &[f64]) -> Vec<f64> {
        let point: Point = units
            .iter()
            .enumerate()
            .map(|(index, unit)| self.space.value_from_unit(index, *unit))
            .collect();
        let mut coords = self.encode(&point);
        for (index, axis) in self.axes.iter().enumerate() {
            // Floats and wide integer ranges keep the exact draw.
            if *axis == Axis::Continuous
                && matches!(self.space.dimensions()[index].domain, Domain::Float { .. })
            {
                coords[index] = units[index];
            }
        }
        self.impute(&mut coords);
        coords
    }
}

/// The unit coordinate of integer `value`: the centre of its share (in log space for log).
fn int_unit(domain: &Domain, value: i64) -> f64 {
    let Domain::Int { low, high, log } = *domain else {
        return 0.5;
    };
    if log {
        let (lo, hi) = ((low as f64 - 0.5).max(0.5).ln(), (high as f64 + 0.5).ln());
        ((value as f64).ln() - lo) / (hi - lo)
    } else {
        (value - low) as f64 / (high - low + 1) as f64 + 0.5 / (high - low + 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Dimension;

    fn space() -> SearchSpace {
        SearchSpace::new(vec![
            Dimension::float("lr", 1e-4, 1e-1, true),
            Dimension::int("layers", 1, 4, false),
            Dimension::int("batch", 16, 1024, true),
            Dimension::categorical("opt", 3),
        ])
        .expect("valid")
    }

    #[test]
    fn encoding_round_trips_every_value() {
        let encoder = Encoder::new(space());
        for layers in 1..=4 {
            for batch in [16, 17, 100, 511, 1024] {
                for opt in 0..3 {
                    let point = vec![
                        Value::Float(3e-3),
                        Value::Int(layers),
                        Value::Int(batch),
                        Value::Choice(opt),
                    ];
                    let coords = encoder.encode(&point);
                    assert!(coords[..3].iter().all(|c| (0.0..=1.0).contains(c)));
                    let back = encoder.decode(&coords);
                    assert_eq!(back[1..], point[1..]);
                    let Value::Float(lr) = back[0] else {
                        panic!("float")
                    };
                    assert!((lr - 3e-3).abs() < 1e-15);
                }
            }
        }
        assert_eq!(
            encoder.axes()[1],
            Axis::Discrete(vec![0.125, 0.375, 0.625, 0.875])
        );
        assert_eq!(encoder.axes()[2], Axis::Continuous);
    }

    #[test]
    fn snapping_moves_integers_to_their_values() {
        let encoder = Encoder::new(space());
        let mut coords = vec![0.5, 0.3, 0.51, 1.7];
        encoder.snap(&mut coords);
        let point = encoder.decode(&coords);
        assert!(encoder.space().contains(&point));
        assert_eq!(encoder.encode(&point), coords);
    }
}
