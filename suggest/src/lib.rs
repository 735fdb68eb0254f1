//! Between the sweep specification and the tuner: spaces, points, observations, samplers.
//!
//! The coordinator's Sweep actor and the SDK's `Study` (and through it `flotilla study`)
//! both choose parameters with the `flotilla-tuner` samplers; this crate is the one place
//! that translates a spec's space, a trial's parameters and its metrics into the tuner's
//! terms and back.

use std::collections::BTreeMap;

use flotilla_tuner::{
    BayesianSampler, BayesianSettings, Condition, Dimension, Domain, GridSampler, Observation,
    Outcome, ParEgo, Point, RandomSampler, Sampler, SearchSpace, SobolSampler, SpaceError,
    TpeSampler, TpeSettings, Value,
};

use flotilla_protocol::ParamValue;
use flotilla_protocol::messages::{Metrics, Params};
use flotilla_protocol::spec::{
    AlgorithmName, AlgorithmSpec, Constraint, ConstraintOp, Direction, Objective, ParamKind,
    ParamSpec,
};

/// A spec's search space in the tuner's terms: dimensions in name order.
#[derive(Debug, Clone)]
pub struct TunerSpace {
    pub space: SearchSpace,
    params: BTreeMap<String, ParamSpec>,
}

impl TunerSpace {
    pub fn new(params: &BTreeMap<String, ParamSpec>) -> Result<TunerSpace, SpaceError> {
        let dimensions = params
            .iter()
            .map(|(name, param)| {
                let low = param.low.unwrap_or_default();
                let high = param.high.unwrap_or_default();
                let domain = match param.kind {
                    ParamKind::Float => Domain::Float {
                        low,
                        high,
                        log: param.log,
                    },
                    ParamKind::Int => Domain::Int {
                        low: low as i64,
                        high: high as i64,
                        log: param.log,
                    },
                    ParamKind::Categorical => Domain::Categorical {
                        choices: param.choices.len(),
                    },
                };
                Dimension {
                    name: name.clone(),
                    domain,
                }
            })
            .collect();
        let names: Vec<&String> = params.keys().collect();
        let mut conditions = Vec::new();
        for (child, param) in params.values().enumerate() {
            let Some(when) = &param.when else { continue };
            let unknown = || SpaceError::InvalidCondition {
                name: names[child].clone(),
                message: format!("depends on unknown parameter '{}'", when.param),
            };
            let parent = names
                .iter()
                .position(|name| **name == when.param)
                .ok_or_else(unknown)?;
            let choices = when
                .values
                .iter()
                .map(|value| {
                    params[&when.param]
                        .choices
                        .iter()
                        .position(|choice| choice == value)
                        .ok_or_else(|| SpaceError::InvalidCondition {
                            name: names[child].clone(),
                            message: format!("{value} is not a choice of '{}'", when.param),
                        })
                })
                .collect::<Result<Vec<usize>, SpaceError>>()?;
            conditions.push((child, Condition { parent, choices }));
        }
        Ok(TunerSpace {
            space: SearchSpace::new(dimensions)?.with_conditions(conditions)?,
            params: params.clone(),
        })
    }

    /// The parameters a point stands for: those that apply at it (a conditional parameter
    /// whose condition does not hold is left out).
    pub fn params_of(&self, point: &[Value]) -> Params {
        let active = self.space.active(point);
        self.params
            .iter()
            .zip(point)
            .zip(active)
            .filter(|(_, active)| *active)
            .map(|(((name, param), value), _)| {
                let value = match *value {
                    Value::Float(x) => ParamValue::Float(x),
                    Value::Int(x) => ParamValue::Int(x),
                    Value::Choice(index) => param.choices[index].clone(),
                };
                (name.clone(), value)
            })
            .collect()
    }

    /// The (canonical) point parameters stand for; `None` if one that applies is missing or
    /// one is outside the space (a trial from an older version of the spec, or from another
    /// sweep's). Parameters the space does not have are ignored, and so are conditional ones
    /// that do not apply.
    pub fn point_of(&self, params: &Params) -> Option<Point> {
        let point: Point = self
            .params
            .iter()
            .enumerate()
            .map(|(index, (name, param))| {
                let Some(value) = params.get(name) else {
                    // Checked below: only a parameter that does not apply may be missing.
                    return param
                        .when
                        .is_some()
                        .then(|| self.space.canonical_value(index));
                };
                match param.kind {
                    ParamKind::Float => value.as_f64().map(Value::Float),
                    ParamKind::Int => match value {
                        ParamValue::Int(x) => Some(Value::Int(*x)),
                        other => other
                            .as_f64()
                            .filter(|x| x.fract() == 0.0)
                            .map(|x| Value::Int(x as i64)),
                    },
                    ParamKind::Categorical => param
                        .choices
                        .iter()
                        .position(|choice| choice == value)
                        .map(Value::Choice),
                }
            })
            .collect::<Option<_>>()?;
        let active = self.space.active(&point);
        let complete = self
            .params
            .keys()
            .zip(active)
            .all(|(name, active)| !active || params.contains_key(name));
        (complete && self.space.contains(&point)).then(|| self.space.canonical(point))
    }
}

/// A constraint's value in the tuner's convention: `<= 0` when it holds, NaN when the
/// metric is missing (which counts as violated).
pub fn constraint_value(constraint: &Constraint, metrics: &Metrics) -> f64 {
    let Some(value) = metrics.get(&constraint.metric).copied() else {
        return f64::NAN;
    };
    match constraint.op {
        ConstraintOp::AtLeast | ConstraintOp::Above => constraint.threshold - value,
        ConstraintOp::AtMost | ConstraintOp::Below => value - constraint.threshold,
    }
}

/// The outcome of a finished trial with an objective value, for a sampler (which
/// minimizes).
pub fn completed(
    objective: f64,
    direction: Direction,
    constraints: &[Constraint],
    metrics: &Metrics,
) -> Outcome {
    Outcome::Complete {
        value: direction.loss(objective),
        constraints: constraints
            .iter()
            .map(|constraint| constraint_value(constraint, metrics))
            .collect(),
    }
}

/// The outcome of a finished trial of a multi-objective sweep: each objective's value as a
/// loss, seen at `fidelity` (1 when complete).
pub fn completed_objectives(
    values: &[f64],
    objective: &Objective,
    constraints: &[Constraint],
    metrics: &Metrics,
    fidelity: f64,
) -> Outcome {
    Outcome::Objectives {
        values: values
            .iter()
            .zip(objective.goals())
            .map(|(value, (_, direction))| direction.loss(*value))
            .collect(),
        constraints: constraints
            .iter()
            .map(|constraint| constraint_value(constraint, metrics))
            .collect(),
        fidelity,
    }
}

/// An observation for a sampler, if `params` lie in the space.
pub fn observation(space: &TunerSpace, params: &Params, outcome: Outcome) -> Option<Observation> {
    Some(Observation {
        point: space.point_of(params)?,
        outcome,
    })
}

/// The sampler an algorithm spec names, seeded; `max_points` caps a grid. With more than one
/// objective it searches their Pareto front: ParEGO around the named sampler, which then
/// reads [`Outcome::Objectives`] results.
pub fn sampler(
    algorithm: &AlgorithmSpec,
    space: &TunerSpace,
    seed: u64,
    max_points: u64,
    objectives: usize,
) -> Box<dyn Sampler> {
    let sampler = single_objective(algorithm, space, seed, max_points);
    if objectives > 1 {
        Box::new(ParEgo::new(sampler, seed))
    } else {
        sampler
    }
}

fn single_objective(
    algorithm: &AlgorithmSpec,
    space: &TunerSpace,
    seed: u64,
    max_points: u64,
) -> Box<dyn Sampler> {
    let space = space.space.clone();
    match algorithm.name {
        AlgorithmName::Random => Box::new(RandomSampler::new(space, seed)),
        AlgorithmName::Sobol => Box::new(SobolSampler::new(space, seed)),
        AlgorithmName::Grid => Box::new(GridSampler::new(
            &space,
            algorithm.grid_points.unwrap_or(5),
            seed,
            max_points,
        )),
        AlgorithmName::Bayesian => {
            let mut settings = BayesianSettings::default();
            if let Some(initial) = algorithm.initial_trials {
                settings.initial_trials = initial;
            }
            Box::new(BayesianSampler::new(space, seed, settings))
        }
        AlgorithmName::Tpe => {
            let mut settings = TpeSettings::default();
            if let Some(initial) = algorithm.initial_trials {
                settings.initial_trials = initial;
            }
            Box::new(TpeSampler::new(space, seed, settings))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> BTreeMap<String, ParamSpec> {
        BTreeMap::from([
            ("lr".to_string(), ParamSpec::log_float(1e-4, 1e-1)),
            ("layers".to_string(), ParamSpec::int(1, 4)),
            (
                "opt".to_string(),
                ParamSpec::categorical([
                    ParamValue::Str("adam".into()),
                    ParamValue::Str("sgd".into()),
                ]),
            ),
        ])
    }

    #[test]
    fn params_and_points_round_trip() {
        let space = TunerSpace::new(&params()).expect("space");
        let params = Params::from([
            ("lr".to_string(), ParamValue::Float(3e-3)),
            ("layers".to_string(), ParamValue::Int(2)),
            ("opt".to_string(), ParamValue::Str("sgd".into())),
        ]);
        let point = space.point_of(&params).expect("in the space");
        assert_eq!(space.params_of(&point), params);
        let mut outside = params.clone();
        outside.insert("layers".into(), ParamValue::Int(9));
        assert_eq!(space.point_of(&outside), None);
        outside.insert("layers".into(), ParamValue::Int(2));
        outside.insert("opt".into(), ParamValue::Str("rmsprop".into()));
        assert_eq!(space.point_of(&outside), None);
    }

    #[test]
    fn conditional_parameters_are_left_out_where_they_do_not_apply() {
        let sgd = || ParamValue::Str("sgd".into());
        let mut space = params();
        space.insert(
            "momentum".into(),
            ParamSpec::float(0.0, 0.99).when(flotilla_protocol::spec::When::new("opt", [sgd()])),
        );
        let space = TunerSpace::new(&space).expect("space");
        let adam = Params::from([
            ("lr".to_string(), ParamValue::Float(3e-3)),
            ("layers".to_string(), ParamValue::Int(2)),
            ("opt".to_string(), ParamValue::Str("adam".into())),
        ]);
        // Missing where it does not apply: the point holds its canonical value.
        let point = space.point_of(&adam).expect("in the space");
        assert_eq!(space.params_of(&point), adam);
        // Given where it does not apply (an older spec's trial): ignored.
        let mut extra = adam.clone();
        extra.insert("momentum".into(), ParamValue::Float(0.5));
        assert_eq!(space.point_of(&extra), Some(point));
        // Missing where it applies: not a point of this space.
        let mut with_sgd = adam.clone();
        with_sgd.insert("opt".into(), sgd());
        assert_eq!(space.point_of(&with_sgd), None);
        with_sgd.insert("momentum".into(), ParamValue::Float(0.9));
        let point = space.point_of(&with_sgd).expect("in the space");
        assert_eq!(space.params_of(&point), with_sgd);
    }

    #[test]
    fn constraints_and_direction_become_the_tuners_convention() {
        let constraint: Constraint = "class_1_accuracy >= 0.30".parse().expect("constraint");
        let metrics = Metrics::from([("class_1_accuracy".to_string(), 0.25)]);
        assert!((constraint_value(&constraint, &metrics) - 0.05).abs() < 1e-12);
        assert!(constraint_value(&constraint, &Metrics::new()).is_nan());
        let outcome = completed(0.9, Direction::Maximize, &[constraint], &metrics);
        let Outcome::Complete { value, constraints } = outcome else {
            panic!("complete");
        };
        assert_eq!(value, -0.9);
        assert!(constraints[0] > 0.0, "violated");
    }
}
