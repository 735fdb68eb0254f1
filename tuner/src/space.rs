//! Search spaces and points.

/// One parameter's domain.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// Real numbers in `[low, high]`, sampled uniformly in log space when `log`.
    Float { low: f64, high: f64, log: bool },
    /// Whole numbers in `[low, high]` (both included).
    Int { low: i64, high: i64, log: bool },
    /// One of `choices` options, by index.
    Categorical { choices: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dimension {
    pub name: String,
    pub domain: Domain,
}

impl Dimension {
    pub fn float(name: &str, low: f64, high: f64, log: bool) -> Dimension {
        Dimension {
            name: name.into(),
            domain: Domain::Float { low, high, log },
        }
    }

    pub fn int(name: &str, low: i64, high: i64, log: bool) -> Dimension {
        Dimension {
            name: name.into(),
            domain: Domain::Int { low, high, log },
        }
    }

    pub fn categorical(name: &str, choices: usize) -> Dimension {
        Dimension {
            name: name.into(),
            domain: Domain::Categorical { choices },
        }
    }
}

/// A coordinate of a point: the value of one dimension.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Float(f64),
    Int(i64),
    /// Index into the categorical dimension's choices.
    Choice(usize),
}

/// A point of the space: one value per dimension, in the space's order.
pub type Point = Vec<Value>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpaceError {
    #[error("dimension '{name}': {message}")]
    InvalidDimension { name: String, message: String },
    #[error("the search space has no dimensions")]
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    dimensions: Vec<Dimension>,
}

impl SearchSpace {
    /// A space over `dimensions`, each checked.
    pub fn new(dimensions: Vec<Dimension>) -> Result<SearchSpace, SpaceError> {
        if dimensions.is_empty() {
            return Err(SpaceError::Empty);
        }
        for dimension in &dimensions {
            let invalid = |message: &str| SpaceError::InvalidDimension {
                name: dimension.name.clone(),
                message: message.to_string(),
            };
            match dimension.domain {
                Domain::Float { low, high, log } => {
                    if !(low.is_finite() && high.is_finite()) || low >= high {
                        return Err(invalid("needs finite low < high"));
                    }
                    if log && low <= 0.0 {
                        return Err(invalid("log scale needs low > 0"));
                    }
                }
                Domain::Int { low, high, log } => {
                    if low > high {
                        return Err(invalid("needs low <= high"));
                    }
                    if log && low <= 0 {
                        return Err(invalid("log scale needs low > 0"));
                    }
                }
                Domain::Categorical { choices } => {
                    if choices == 0 {
                        return Err(invalid("needs at least one choice"));
                    }
                }
            }
        }
        Ok(SearchSpace { dimensions })
    }

    pub fn dimensions(&self) -> &[Dimension] {
        &self.dimensions
    }

    /// Maps a coordinate in `[0, 1)` of dimension `index` to a value, honouring log scales
    /// and giving each integer and choice an equal share of the unit interval.
    pub fn value_from_unit(&self, index: usize, unit: f64) -> Value {
        let unit = unit.clamp(0.0, 1.0);
        match self.dimensions[index].domain {
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
                    let (lo, hi) = ((low as f64 - 0.5).max(0.5).ln(), (high as f64 + 0.5).ln());
                    (lo + unit * (hi - lo)).exp().round() as i64
                } else {
                    let span = (high - low + 1) as f64;
                    low + ((unit * span).floor() as i64).min(high - low)
                };
                Value::Int(value.clamp(low, high))
            }
            Domain::Categorical { choices } => {
                Value::Choice(((unit * choices as f64) as usize).min(choices - 1))
            }
        }
    }

    /// Whether `point` lies in the space.
    pub fn contains(&self, point: &[Value]) -> bool {
        point.len() == self.dimensions.len()
            && self.dimensions.iter().zip(point).all(|(dimension, value)| {
                match (&dimension.domain, value) {
                    (Domain::Float { low, high, .. }, Value::Float(x)) => {
                        x.is_finite() && low <= x && x <= high
                    }
                    (Domain::Int { low, high, .. }, Value::Int(x)) => low <= x && x <= high,
                    (Domain::Categorical { choices }, Value::Choice(x)) => x < choices,
                    _ => false,
                }
            })
    }
}
