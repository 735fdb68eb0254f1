//! Behaviour of every sampler through the `Sampler` trait: validity, determinism, use of
//! results, pending points and constraints.

use flotilla_tuner::{
    BayesianSampler, BayesianSettings, Condition, Dimension, GridSampler, Observation, Outcome,
    Point, RandomSampler, Sampler, SearchSpace, SobolSampler, TpeSampler, TpeSettings, Value,
};

fn mixed_space() -> SearchSpace {
    SearchSpace::new(vec![
        Dimension::float("lr", 1e-5, 1e-1, true),
        Dimension::float("dropout", 0.0, 0.5, false),
        Dimension::int("layers", 1, 4, false),
        Dimension::int("hidden", 16, 1024, true),
        Dimension::categorical("optimizer", 3),
    ])
    .expect("valid space")
}

fn samplers(space: &SearchSpace, seed: u64) -> Vec<(&'static str, Box<dyn Sampler>)> {
    vec![
        (
            "bayesian",
            Box::new(BayesianSampler::new(
                space.clone(),
                seed,
                BayesianSettings::default(),
            )),
        ),
        (
            "tpe",
            Box::new(TpeSampler::new(space.clone(), seed, TpeSettings::default())),
        ),
        ("sobol", Box::new(SobolSampler::new(space.clone(), seed))),
        ("random", Box::new(RandomSampler::new(space.clone(), seed))),
    ]
}

fn number(value: &Value) -> f64 {
    match *value {
        Value::Float(x) => x,
        Value::Int(x) => x as f64,
        Value::Choice(x) => x as f64,
    }
}

/// A mixed-space objective with a known best region: lr ≈ 1e-3, dropout ≈ 0.1, 2 layers,
/// hidden ≈ 256, optimizer 1.
fn mixed_objective(point: &Point) -> f64 {
    let lr = number(&point[0]).log10() + 3.0;
    let dropout = number(&point[1]) - 0.1;
    let layers = number(&point[2]) - 2.0;
    let hidden = (number(&point[3]) / 256.0).log2();
    let optimizer = if number(&point[4]) == 1.0 { 0.0 } else { 0.5 };
    lr * lr + 4.0 * dropout * dropout + 0.3 * layers * layers + 0.2 * hidden * hidden + optimizer
}

fn run(
    sampler: &mut dyn Sampler,
    trials: u32,
    objective: impl Fn(&Point) -> Outcome,
) -> Vec<Observation> {
    let mut history = Vec::new();
    for trial in 0..trials {
        let point = sampler.suggest(trial, &history).expect("a point");
        let outcome = objective(&point);
        history.push(Observation { point, outcome });
    }
    history
}

fn complete(value: f64) -> Outcome {
    Outcome::Complete {
        value,
        constraints: vec![],
    }
}

#[test]
fn every_sampler_stays_in_the_space_and_repeats_itself_for_a_seed() {
    let space = mixed_space();
    for ((name, mut first), (_, mut second)) in
        samplers(&space, 9).into_iter().zip(samplers(&space, 9))
    {
        let history = run(first.as_mut(), 30, |point| complete(mixed_objective(point)));
        for observation in &history {
            assert!(
                space.contains(&observation.point),
                "{name}: {:?}",
                observation.point
            );
        }
        let again = run(second.as_mut(), 30, |point| {
            complete(mixed_objective(point))
        });
        assert_eq!(history, again, "{name} is not deterministic");
    }
}

#[test]
fn model_based_samplers_beat_their_initial_design_on_a_mixed_space() {
    let space = mixed_space();
    for (name, mut sampler) in samplers(&space, 4).into_iter().take(2) {
        let history = run(sampler.as_mut(), 40, |point| {
            complete(mixed_objective(point))
        });
        let best = |range: std::ops::Range<usize>| {
            history[range]
                .iter()
                .filter_map(|o| o.completed().map(|(v, _)| v))
                .fold(f64::INFINITY, f64::min)
        };
        let initial = best(0..10);
        let guided = best(10..40);
        assert!(
            guided < initial,
            "{name}: guided {guided} vs initial {initial}"
        );
        assert!(guided < 0.35, "{name}: best after 40 trials {guided}");
    }
}

fn branin(point: &Point) -> f64 {
    let (x, y) = (number(&point[0]), number(&point[1]));
    let pi = std::f64::consts::PI;
    let b = 5.1 / (4.0 * pi * pi);
    let c = 5.0 / pi;
    (y - b * x * x + c * x - 6.0).powi(2) + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x.cos() + 10.0
}

#[test]
fn bayesian_optimization_finds_branins_minimum() {
    let space = SearchSpace::new(vec![
        Dimension::float("x", -5.0, 10.0, false),
        Dimension::float("y", 0.0, 15.0, false),
    ])
    .expect("space");
    for seed in [1, 2, 3] {
        let mut sampler = BayesianSampler::new(space.clone(), seed, BayesianSettings::default());
        let history = run(&mut sampler, 30, |point| complete(branin(point)));
        let best = history
            .iter()
            .filter_map(|o| o.completed().map(|(v, _)| v))
            .fold(f64::INFINITY, f64::min);
        // The global minimum is 0.397887; ten Sobol points alone reach ~3 on average.
        assert!(best < 0.5, "seed {seed}: best {best}");
    }
}

#[test]
fn pending_points_spread_parallel_suggestions() {
    let space = SearchSpace::new(vec![
        Dimension::float("x", 0.0, 1.0, false),
        Dimension::float("y", 0.0, 1.0, false),
    ])
    .expect("space");
    let bowl = |point: &Point| {
        let (x, y) = (number(&point[0]), number(&point[1]));
        (x - 0.3).powi(2) + (y - 0.7).powi(2)
    };
    let samplers: Vec<(&str, Box<dyn Sampler>)> = vec![
        (
            "bayesian",
            Box::new(BayesianSampler::new(
                space.clone(),
                3,
                BayesianSettings::default(),
            )),
        ),
        (
            "tpe",
            Box::new(TpeSampler::new(space.clone(), 3, TpeSettings::default())),
        ),
    ];
    for (name, mut sampler) in samplers {
        let mut history = run(sampler.as_mut(), 15, |point| complete(bowl(point)));
        // Eight agents ask at once: each suggestion sees the previous ones as pending.
        let mut batch = Vec::new();
        for trial in 15..23 {
            let point = sampler.suggest(trial, &history).expect("a point");
            batch.push(point.clone());
            history.push(Observation {
                point,
                outcome: Outcome::Pending,
            });
        }
        let mut closest = f64::INFINITY;
        for (i, a) in batch.iter().enumerate() {
            for b in &batch[..i] {
                let distance = ((number(&a[0]) - number(&b[0])).powi(2)
                    + (number(&a[1]) - number(&b[1])).powi(2))
                .sqrt();
                closest = closest.min(distance);
            }
        }
        // Without pending points every suggestion of the batch would be the same point. A
        // model that is sure of a noiseless bowl (noise at its 1e-6 floor) still puts a few
        // of them near the optimum, about 1 % of the range apart, and explores with the rest.
        assert!(
            closest > 0.005,
            "{name}: two parallel suggestions {closest} apart: {batch:?}"
        );
    }
}

#[test]
fn constrained_search_finds_the_feasible_optimum() {
    // Minimize x² + y² subject to x ≥ 0.5 (constraint value 0.5 − x ≤ 0): the unconstrained
    // minimum (0, 0) is infeasible; the constrained one is (0.5, 0) with value 0.25.
    let space = SearchSpace::new(vec![
        Dimension::float("x", -1.0, 1.0, false),
        Dimension::float("y", -1.0, 1.0, false),
    ])
    .expect("space");
    let problem = |point: &Point| {
        let (x, y) = (number(&point[0]), number(&point[1]));
        Outcome::Complete {
            value: x * x + y * y,
            constraints: vec![0.5 - x],
        }
    };
    // Random search puts a quarter of its points in the feasible half-interval x ≥ 0.5.
    for ((name, mut sampler), least_feasible) in samplers(&space, 5).into_iter().zip([12, 7]) {
        let history = run(sampler.as_mut(), 40, problem);
        let feasible_best = history
            .iter()
            .filter(|o| o.feasible())
            .filter_map(|o| o.completed().map(|(v, _)| v))
            .fold(f64::INFINITY, f64::min);
        // The optimum lies on the boundary, so a model-based search samples both sides of it
        // closely: count points feasible or within 0.02 of feasibility.
        let later_feasible = history[20..]
            .iter()
            .filter(|o| o.completed().is_some_and(|(_, c)| c[0] <= 0.02))
            .count();
        assert!(
            feasible_best < 0.32,
            "{name}: best feasible {feasible_best}"
        );
        assert!(
            later_feasible >= least_feasible,
            "{name}: only {later_feasible} of the last 20 (nearly) feasible"
        );
    }
}

#[test]
fn degenerate_histories_give_valid_points() {
    let space = mixed_space();
    let point = vec![
        Value::Float(1e-3),
        Value::Float(0.1),
        Value::Int(2),
        Value::Int(64),
        Value::Choice(0),
    ];
    let histories: Vec<Vec<Observation>> = vec![
        // The same point over and over, with the same value.
        (0..20)
            .map(|_| Observation {
                point: point.clone(),
                outcome: complete(1.0),
            })
            .collect(),
        // Wild magnitudes, failures and unknown constraint values.
        (0..20)
            .map(|i| Observation {
                point: {
                    let mut p = point.clone();
                    p[1] = Value::Float(0.02 * i as f64);
                    p
                },
                outcome: match i % 4 {
                    0 => Outcome::Failed,
                    1 => Outcome::Complete {
                        value: 1e200,
                        constraints: vec![f64::NAN],
                    },
                    2 => Outcome::Complete {
                        value: -1e-200,
                        constraints: vec![-1.0],
                    },
                    _ => Outcome::Complete {
                        value: f64::INFINITY,
                        constraints: vec![1.0],
                    },
                },
            })
            .collect(),
    ];
    for history in &histories {
        for (name, mut sampler) in samplers(&space, 1) {
            let suggestion = sampler.suggest(25, history).expect("a point");
            assert!(space.contains(&suggestion), "{name}: {suggestion:?}");
        }
    }
}

/// Failed trials inform the search: on a problem whose optimum lies in a region where every
/// trial crashes (x > 0.7, the optimum at x = 0.9), the model-based samplers that see the
/// failures run far fewer trials deep into that region (x > 0.75) than the same samplers told
/// nothing about those points (each failure reported as stopped without a value), and find
/// the best point that does not crash (x near 0.7). Trials just past the edge are expected:
/// the best feasible point lies on it.
#[test]
fn model_based_samplers_steer_away_from_where_trials_fail() {
    let space = SearchSpace::new(vec![
        Dimension::float("x", 0.0, 1.0, false),
        Dimension::float("y", 0.0, 1.0, false),
    ])
    .expect("space");
    let crashes = |point: &Point| number(&point[0]) > 0.7;
    let value =
        |point: &Point| (number(&point[0]) - 0.9).powi(2) + (number(&point[1]) - 0.5).powi(2);
    let trials = 40;
    for seed in [1, 2, 3] {
        for name in ["bayesian", "tpe"] {
            let make = || -> Box<dyn Sampler> {
                match name {
                    "bayesian" => Box::new(BayesianSampler::new(
                        space.clone(),
                        seed,
                        BayesianSettings::default(),
                    )),
                    _ => Box::new(TpeSampler::new(space.clone(), seed, TpeSettings::default())),
                }
            };
            let deep = |history: &[Observation]| {
                history[10..]
                    .iter()
                    .filter(|observation| number(&observation.point[0]) > 0.75)
                    .count()
            };
            let informed = run(make().as_mut(), trials, |point| {
                if crashes(point) {
                    Outcome::Failed
                } else {
                    complete(value(point))
                }
            });
            let blind = run(make().as_mut(), trials, |point| {
                if crashes(point) {
                    Outcome::Stopped
                } else {
                    complete(value(point))
                }
            });
            let (informed_deep, blind_deep) = (deep(&informed), deep(&blind));
            assert!(
                informed_deep * 2 <= blind_deep && informed_deep <= 10,
                "{name}, seed {seed}: {informed_deep} of the last 30 trials went deep into the \
                 crashing region with failures modelled, {blind_deep} without"
            );
            let best = informed
                .iter()
                .filter_map(|observation| observation.completed().map(|(value, _)| value))
                .fold(f64::INFINITY, f64::min);
            // The best that does not crash is 0.04 (x = 0.7, y = 0.5); TPE converges more
            // slowly than the GP.
            let near = if name == "bayesian" { 0.06 } else { 0.1 };
            assert!(best < near, "{name}, seed {seed}: best {best}");
            eprintln!(
                "{name}, seed {seed}: {informed_deep} deep in the crashing region with failures \
                 modelled, {blind_deep} without; best {best:.4}"
            );
        }
    }
}

/// Trials stopped part way are lower-fidelity observations: when results seen early are
/// systematically worse (here by 0.5 at a tenth of the resource), the GP corrects them to full
/// fidelity, so a region explored only by stopped trials is not held against its early
/// values. Given the same values as final results, the GP avoids the region instead.
#[test]
fn the_gp_corrects_early_stopped_results_to_full_fidelity() {
    let space = SearchSpace::new(vec![Dimension::float("x", 0.0, 1.0, false)]).expect("space");
    let truth = |x: f64| (x - 0.8).powi(2);
    let mut partial_history = Vec::new();
    let mut final_history = Vec::new();
    // Complete trials away from the optimum, and each seen early too (by other trials that
    // were stopped there), so the data tell what the resource does.
    for x in [0.05, 0.15, 0.25, 0.35, 0.45] {
        for history in [&mut partial_history, &mut final_history] {
            history.push(Observation {
                point: vec![Value::Float(x)],
                outcome: complete(truth(x)),
            });
        }
        let early = truth(x) + 0.5;
        partial_history.push(Observation {
            point: vec![Value::Float(x + 0.02)],
            outcome: Outcome::Partial {
                value: early,
                constraints: vec![],
                fidelity: 0.1,
            },
        });
        final_history.push(Observation {
            point: vec![Value::Float(x + 0.02)],
            outcome: complete(early),
        });
    }
    // Near the optimum only early-stopped trials.
    for x in [0.7, 0.78, 0.86, 0.95] {
        let early = truth(x) + 0.5;
        partial_history.push(Observation {
            point: vec![Value::Float(x)],
            outcome: Outcome::Partial {
                value: early,
                constraints: vec![],
                fidelity: 0.1,
            },
        });
        final_history.push(Observation {
            point: vec![Value::Float(x)],
            outcome: complete(early),
        });
    }
    let next = |history: &[Observation]| {
        let mut sampler = BayesianSampler::new(space.clone(), 3, BayesianSettings::default());
        number(&sampler.suggest(30, history).expect("a point")[0])
    };
    let (corrected, uncorrected) = (next(&partial_history), next(&final_history));
    eprintln!(
        "next point: {corrected:.3} with early results corrected, {uncorrected:.3} taken as final"
    );
    assert!(
        (corrected - 0.8).abs() < 0.15,
        "with the early results corrected the GP goes to the optimum at 0.8, not {corrected}"
    );
    assert!(
        (uncorrected - 0.8).abs() > (corrected - 0.8).abs(),
        "taken as final, the early results should hold the GP back: {uncorrected} vs {corrected}"
    );
}

/// optimizer ∈ {sgd, adam}; momentum applies to sgd only, beta2 to adam only.
fn conditional_space() -> SearchSpace {
    SearchSpace::new(vec![
        Dimension::float("beta2", 0.9, 0.999, false),
        Dimension::float("lr", 1e-4, 1.0, true),
        Dimension::float("momentum", 0.0, 0.99, false),
        Dimension::categorical("optimizer", 2),
    ])
    .expect("space")
    .with_conditions(vec![
        (
            0,
            Condition {
                parent: 3,
                choices: vec![1],
            },
        ),
        (
            2,
            Condition {
                parent: 3,
                choices: vec![0],
            },
        ),
    ])
    .expect("conditions")
}

/// sgd with momentum near 0.9 and lr near 0.05 reaches 0; adam's best is 0.2.
fn conditional_objective(point: &Point) -> f64 {
    let lr = number(&point[1]).log10();
    if number(&point[3]) == 0.0 {
        let momentum = number(&point[2]) - 0.9;
        10.0 * (lr + 1.3).powi(2) + 40.0 * momentum * momentum
    } else {
        let beta2 = (number(&point[0]) - 0.99) * 20.0;
        0.2 + (lr + 3.0).powi(2) + beta2 * beta2
    }
}

#[test]
fn conditional_spaces_give_canonical_points_and_are_searched() {
    let space = conditional_space();
    let grid = GridSampler::new(&space, 3, 1, u64::MAX);
    // sgd: 3 lr × 3 momentum; adam: 3 lr × 3 beta2 — not 3⁴ = 81 combinations.
    assert_eq!(grid.capacity(), Some(18));
    let mut all: Vec<(&str, Box<dyn Sampler>)> = samplers(&space, 5);
    all.push(("grid", Box::new(grid)));
    for (name, mut sampler) in all {
        let trials = if name == "grid" { 18 } else { 40 };
        let history = run(sampler.as_mut(), trials, |point| {
            complete(conditional_objective(point))
        });
        let mut distinct = std::collections::HashSet::new();
        for observation in &history {
            let point = &observation.point;
            assert!(space.contains(point), "{name}: {point:?}");
            assert_eq!(
                &space.canonical(point.clone()),
                point,
                "{name}: not canonical"
            );
            distinct.insert(format!("{point:?}"));
        }
        if name == "grid" {
            assert_eq!(distinct.len(), 18, "the grid repeats a point");
        }
        if name == "bayesian" || name == "tpe" {
            let best = history
                .iter()
                .filter_map(|o| o.completed().map(|(v, _)| v))
                .fold(f64::INFINITY, f64::min);
            // Adam's floor is 0.2 and easy to reach; finding less means finding sgd's
            // region and tuning the momentum that only sgd has (bench/tuner_bench.rs
            // measures how often, over seeds, against the same space flattened).
            assert!(best < 0.1, "{name}: best after 40 trials {best}");
        }
    }
}
