//! Search spaces and points.
//!
//! A space may be conditional: a dimension with a [`Condition`] is active only when its
//! parent (a categorical dimension) takes one of the listed choices, and its parent is itself
//! active (`momentum` only when `optimizer = "sgd"`). A point still holds a value for every
//! dimension; an inactive one holds the dimension's *canonical* value (the value at the
//! middle of its unit interval, the first choice of a categorical), so that points differing
//! only where it does not matter are one point. Samplers return canonical points
//! ([`SearchSpace::canonical`]); callers leave inactive values out of the parameters they
//! hand a trial.

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

/// When a dimension is active: its `parent` (a categorical dimension, by index) is active and
/// takes one of `choices`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub parent: usize,
    pub choices: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpaceError {
    #[error("dimension '{name}': {message}")]
    InvalidDimension { name: String, message: String },
    #[error("the search space has no dimensions")]
    Empty,
    #[error("dimension '{name}': {message}")]
    InvalidCondition { name: String, message: String },
    #[error("conditions form a cycle: {}", cycle.join(" -> "))]
    ConditionCycle { cycle: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    dimensions: Vec<Dimension>,
    /// Each dimension's condition; `None` for one that is always active.
    conditions: Vec<Option<Condition>>,
    /// Dimension indices with every parent before its children.
    order: Vec<usize>,
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
        let count = dimensions.len();
        Ok(SearchSpace {
            dimensions,
            conditions: vec![None; count],
            order: (0..count).collect(),
        })
    }

    /// This space with `conditions` (dimension index, condition) added: each parent must be
    /// a categorical dimension other than the child, each choice one of its choices, and the
    /// conditions may not form a cycle.
    pub fn with_conditions(
        mut self,
        conditions: Vec<(usize, Condition)>,
    ) -> Result<SearchSpace, SpaceError> {
        for (child, condition) in conditions {
            let name = |index: usize| self.dimensions[index].name.clone();
            let invalid = |message: String| SpaceError::InvalidCondition {
                name: name(child),
                message,
            };
            if child >= self.dimensions.len() || condition.parent >= self.dimensions.len() {
                return Err(SpaceError::InvalidCondition {
                    name: format!("#{child}"),
                    message: "refers to a dimension the space does not have".into(),
                });
            }
            if condition.parent == child {
                return Err(invalid("depends on itself".into()));
            }
            let Domain::Categorical { choices } = self.dimensions[condition.parent].domain else {
                return Err(invalid(format!(
                    "depends on '{}', which is not categorical",
                    name(condition.parent)
                )));
            };
            if condition.choices.is_empty() {
                return Err(invalid("its condition lists no choices".into()));
            }
            if let Some(bad) = condition.choices.iter().find(|c| **c >= choices) {
                return Err(invalid(format!(
                    "choice #{bad} of '{}' does not exist",
                    name(condition.parent)
                )));
            }
            self.conditions[child] = Some(condition);
        }
        self.order = self.topological_order()?;
        Ok(self)
    }

    /// Parents before children, or the first cycle found.
    fn topological_order(&self) -> Result<Vec<usize>, SpaceError> {
        // 0: not visited, 1: on the current path, 2: placed.
        let mut mark = vec![0u8; self.dimensions.len()];
        let mut order = Vec::with_capacity(self.dimensions.len());
        for start in 0..self.dimensions.len() {
            let mut path = Vec::new();
            let mut at = Some(start);
            while let Some(index) = at {
                match mark[index] {
                    2 => break,
                    1 => {
                        let from = path.iter().position(|p| *p == index).unwrap_or(0);
                        let mut cycle: Vec<String> = path[from..]
                            .iter()
                            .map(|p: &usize| self.dimensions[*p].name.clone())
                            .collect();
                        cycle.push(cycle[0].clone());
                        return Err(SpaceError::ConditionCycle { cycle });
                    }
                    _ => {
                        mark[index] = 1;
                        path.push(index);
                        at = self.conditions[index].as_ref().map(|c| c.parent);
                    }
                }
            }
            for index in path.into_iter().rev() {
                mark[index] = 2;
                order.push(index);
            }
        }
        Ok(order)
    }

    pub fn dimensions(&self) -> &[Dimension] {
        &self.dimensions
    }

    /// Dimension `index`'s condition, if it has one.
    pub fn condition(&self, index: usize) -> Option<&Condition> {
        self.conditions[index].as_ref()
    }

    /// Whether any dimension is conditional.
    pub fn is_conditional(&self) -> bool {
        self.conditions.iter().any(Option::is_some)
    }

    /// Dimension indices with every parent before its children.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Which dimensions are active, given each categorical dimension's choice (`choice_of`
    /// is asked only for parents).
    pub fn active_by(&self, choice_of: impl Fn(usize) -> usize) -> Vec<bool> {
        let mut active = vec![true; self.dimensions.len()];
        if !self.is_conditional() {
            return active;
        }
        for &index in &self.order {
            if let Some(condition) = &self.conditions[index] {
                active[index] = active[condition.parent]
                    && condition.choices.contains(&choice_of(condition.parent));
            }
        }
        active
    }

    /// Which dimensions of `point` are active.
    pub fn active(&self, point: &[Value]) -> Vec<bool> {
        self.active_by(|parent| match point.get(parent) {
            Some(Value::Choice(choice)) => *choice,
            _ => usize::MAX,
        })
    }

    /// The value an inactive dimension holds: the middle of a numeric range, the first choice.
    pub fn canonical_value(&self, index: usize) -> Value {
        match self.dimensions[index].domain {
            Domain::Categorical { .. } => Value::Choice(0),
            _ => self.value_from_unit(index, 0.5),
        }
    }

    /// `point` with every inactive dimension at its canonical value.
    pub fn canonical(&self, mut point: Point) -> Point {
        if self.is_conditional() {
            let active = self.active(&point);
            for (index, value) in point.iter_mut().enumerate() {
                if !active[index] {
                    *value = self.canonical_value(index);
                }
            }
        }
        point
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

#[cfg(test)]
mod tests {
    use super::*;

    /// optimizer ∈ {sgd, adam, rmsprop}; use_momentum only for sgd, momentum and nesterov
    /// only when it says yes (a chain), beta2 only for adam and rmsprop.
    fn conditional() -> SearchSpace {
        SearchSpace::new(vec![
            Dimension::float("beta2", 0.9, 0.9999, false),
            Dimension::float("lr", 1e-4, 1e-1, true),
            Dimension::float("momentum", 0.0, 0.99, false),
            Dimension::categorical("nesterov", 2),
            Dimension::categorical("optimizer", 3),
            Dimension::categorical("use_momentum", 2),
        ])
        .expect("space")
        .with_conditions(vec![
            (
                0,
                Condition {
                    parent: 4,
                    choices: vec![1, 2],
                },
            ),
            (
                5,
                Condition {
                    parent: 4,
                    choices: vec![0],
                },
            ),
            (
                2,
                Condition {
                    parent: 5,
                    choices: vec![1],
                },
            ),
            (
                3,
                Condition {
                    parent: 5,
                    choices: vec![1],
                },
            ),
        ])
        .expect("conditions")
    }

    #[test]
    fn conditions_decide_which_dimensions_are_active() {
        let space = conditional();
        let order = space.order();
        let position = |d: usize| order.iter().position(|o| *o == d).expect("ordered");
        assert!(position(4) < position(5) && position(5) < position(2));
        let sgd_momentum = vec![
            Value::Float(0.95),
            Value::Float(0.01),
            Value::Float(0.9),
            Value::Choice(1),
            Value::Choice(0),
            Value::Choice(1),
        ];
        assert_eq!(
            space.active(&sgd_momentum),
            vec![false, true, true, true, true, true]
        );
        let mut adam = sgd_momentum.clone();
        adam[4] = Value::Choice(1);
        // use_momentum is inactive for adam, and so are its children whatever it says.
        assert_eq!(
            space.active(&adam),
            vec![true, true, false, false, true, false]
        );
        let canonical = space.canonical(adam.clone());
        assert_eq!(canonical[0], Value::Float(0.95), "active values stay");
        assert_eq!(canonical[5], Value::Choice(0));
        assert_eq!(canonical[3], Value::Choice(0));
        assert_eq!(canonical[2], space.value_from_unit(2, 0.5));
        assert!(space.contains(&canonical));
        assert_eq!(space.canonical(canonical.clone()), canonical);
    }

    #[test]
    fn bad_conditions_are_refused_with_the_dimension_named() {
        let space = || {
            SearchSpace::new(vec![
                Dimension::categorical("a", 2),
                Dimension::categorical("b", 2),
                Dimension::categorical("c", 2),
            ])
            .expect("space")
        };
        let cycle = space()
            .with_conditions(vec![
                (
                    0,
                    Condition {
                        parent: 1,
                        choices: vec![0],
                    },
                ),
                (
                    1,
                    Condition {
                        parent: 2,
                        choices: vec![0],
                    },
                ),
                (
                    2,
                    Condition {
                        parent: 0,
                        choices: vec![1],
                    },
                ),
            ])
            .expect_err("a cycle");
        assert_eq!(
            cycle.to_string(),
            "conditions form a cycle: a -> b -> c -> a"
        );
        let itself = space()
            .with_conditions(vec![(
                1,
                Condition {
                    parent: 1,
                    choices: vec![0],
                },
            )])
            .expect_err("itself");
        assert_eq!(itself.to_string(), "dimension 'b': depends on itself");
        let choice = space()
            .with_conditions(vec![(
                1,
                Condition {
                    parent: 0,
                    choices: vec![2],
                },
            )])
            .expect_err("no such choice");
        assert_eq!(
            choice.to_string(),
            "dimension 'b': choice #2 of 'a' does not exist"
        );
        let numeric = SearchSpace::new(vec![
            Dimension::float("x", 0.0, 1.0, false),
            Dimension::float("y", 0.0, 1.0, false),
        ])
        .expect("space")
        .with_conditions(vec![(
            1,
            Condition {
                parent: 0,
                choices: vec![0],
            },
        )])
        .expect_err("numeric parent");
        assert_eq!(
            numeric.to_string(),
            "dimension 'y': depends on 'x', which is not categorical"
        );
    }
}
