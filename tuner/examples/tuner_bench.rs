//! The tuner side of `bench/tuner.sh`: simple regret on standard test functions and
//! suggestion latency, printed as JSON lines (the Optuna side prints the same shape).
//!
//! ```text
//! cargo run --release -p flotilla-tuner --example tuner_bench -- regret 100 20 [bayesian,tpe,random]
//! cargo run --release -p flotilla-tuner --example tuner_bench -- latency 50,200,1000 20
//! cargo run --release -p flotilla-tuner --example tuner_bench -- conditional 40 20
//! cargo run --release -p flotilla-tuner --example tuner_bench -- pareto 100 5
//! ```
//!
//! `conditional` runs a two-branch problem in its conditional space and the same space
//! flattened (every parameter always present), to show what conditions buy the samplers.
//!
//! `pareto EVALS SEEDS` is the multi-objective benchmark: standard problems with two or three
//! objectives (see [`problems`]), each sampler wrapped in ParEGO, the hypervolume of the
//! results after 50 evaluations and at the end against the problem's reference point.
//!
//! `curves WORKERS TIME SEEDS` is the multi-fidelity benchmark: simulated asynchronous
//! workers train configurations of a learning-curve surrogate (see [`curve_loss`]) epoch by
//! epoch under ASHA or Hyperband, with random or GP suggestions, and report the best final
//! loss reached by each point of simulated wall time and the time to a target.

use std::time::Instant;

use flotilla_tuner::pareto::{ParEgo, hypervolume};
use flotilla_tuner::stopping::{Asha, AshaSettings, Decision, Hyperband};
use flotilla_tuner::{
    BayesianSampler, BayesianSettings, Condition, Dimension, Domain, Observation, Outcome, Point,
    RandomSampler, Sampler, SearchSpace, TpeSampler, TpeSettings, Value,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Function {
    name: &'static str,
    bounds: Vec<(f64, f64)>,
    optimum: f64,
    noise: f64,
    f: fn(&[f64]) -> f64,
}

fn branin(x: &[f64]) -> f64 {
    let pi = std::f64::consts::PI;
    (x[1] - 5.1 / (4.0 * pi * pi) * x[0] * x[0] + 5.0 / pi * x[0] - 6.0).powi(2)
        + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x[0].cos()
        + 10.0
}

fn hartmann6(x: &[f64]) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
        [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
        [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
        [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
    ];
    -(0..4)
        .map(|i| {
            let inner: f64 = (0..6).map(|j| A[i][j] * (x[j] - P[i][j]).powi(2)).sum();
            ALPHA[i] * (-inner).exp()
        })
        .sum::<f64>()
}

fn rosenbrock(x: &[f64]) -> f64 {
    x.windows(2)
        .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
        .sum()
}

fn ackley(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let tau = std::f64::consts::TAU;
    let squares = x.iter().map(|v| v * v).sum::<f64>() / n;
    let cosines = x.iter().map(|v| (tau * v).cos()).sum::<f64>() / n;
    -20.0 * (-0.2 * squares.sqrt()).exp() - cosines.exp() + 20.0 + std::f64::consts::E
}

fn levy(x: &[f64]) -> f64 {
    let pi = std::f64::consts::PI;
    let w: Vec<f64> = x.iter().map(|v| 1.0 + (v - 1.0) / 4.0).collect();
    let n = w.len();
    let mut total = (pi * w[0]).sin().powi(2);
    for wi in &w[..n - 1] {
        total += (wi - 1.0).powi(2) * (1.0 + 10.0 * (pi * wi + 1.0).sin().powi(2));
    }
    total + (w[n - 1] - 1.0).powi(2) * (1.0 + (2.0 * pi * w[n - 1]).sin().powi(2))
}

/// A rotated, ill-conditioned ellipsoid (condition number 10⁶) with its minimum 0 off the
/// centre: the coordinates, shifted, go through Givens rotations in planes (i, i+1) at angles
/// 0.4 + 0.25 i, then axis i weighs 10^(6 i / (n − 1)). `bench/tuner_optuna.py` has the same.
fn ellipsoid_rotated(x: &[f64]) -> f64 {
    let n = x.len();
    let mut z: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            v - 1.5 * sign * (i + 1) as f64 / n as f64
        })
        .collect();
    for i in 0..n - 1 {
        let angle = 0.4 + 0.25 * i as f64;
        let (s, c) = angle.sin_cos();
        let (a, b) = (z[i], z[i + 1]);
        z[i] = c * a - s * b;
        z[i + 1] = s * a + c * b;
    }
    z.iter()
        .enumerate()
        .map(|(i, v)| 10f64.powf(6.0 * i as f64 / (n - 1) as f64) * v * v)
        .sum()
}

/// Styblinski-Tang: multimodal, 2ⁿ local minima, the global one at x_i = −2.903534.
fn styblinski_tang(x: &[f64]) -> f64 {
    0.5 * x
        .iter()
        .map(|v| v.powi(4) - 16.0 * v * v + 5.0 * v)
        .sum::<f64>()
}

fn functions() -> Vec<Function> {
    vec![
        Function {
            name: "branin",
            bounds: vec![(-5.0, 10.0), (0.0, 15.0)],
            optimum: 0.397_887_357_729_738,
            noise: 0.0,
            f: branin,
        },
        Function {
            name: "hartmann6",
            bounds: vec![(0.0, 1.0); 6],
            optimum: -3.322_368_011_415_515,
            noise: 0.0,
            f: hartmann6,
        },
        Function {
            name: "rosenbrock5",
            bounds: vec![(-5.0, 10.0); 5],
            optimum: 0.0,
            noise: 0.0,
            f: rosenbrock,
        },
        Function {
            name: "ackley5",
            bounds: vec![(-32.768, 32.768); 5],
            optimum: 0.0,
            noise: 0.0,
            f: ackley,
        },
        Function {
            name: "levy10",
            bounds: vec![(-10.0, 10.0); 10],
            optimum: 0.0,
            noise: 0.0,
            f: levy,
        },
        Function {
            name: "ellipsoid_rot6",
            bounds: vec![(-5.0, 5.0); 6],
            optimum: 0.0,
            noise: 0.0,
            f: ellipsoid_rotated,
        },
        Function {
            name: "styblinski_tang4",
            bounds: vec![(-5.0, 5.0); 4],
            optimum: -156.664_662_815_085_68,
            noise: 0.0,
            f: styblinski_tang,
        },
        Function {
            name: "hartmann6_noisy",
            bounds: vec![(0.0, 1.0); 6],
            optimum: -3.322_368_011_415_515,
            noise: 0.1,
            f: hartmann6,
        },
    ]
}

fn space(function: &Function) -> SearchSpace {
    SearchSpace::new(
        function
            .bounds
            .iter()
            .enumerate()
            .map(|(i, (low, high))| Dimension {
                name: format!("x{i}"),
                domain: Domain::Float {
                    low: *low,
                    high: *high,
                    log: false,
                },
            })
            .collect(),
    )
    .expect("valid space")
}

fn sampler(name: &str, space: SearchSpace, seed: u64) -> Box<dyn Sampler> {
    match name {
        "bayesian" => Box::new(BayesianSampler::new(
            space,
            seed,
            BayesianSettings::default(),
        )),
        "tpe" => Box::new(TpeSampler::new(space, seed, TpeSettings::default())),
        "random" => Box::new(RandomSampler::new(space, seed)),
        other => panic!("unknown sampler {other}"),
    }
}

fn coords(point: &Point) -> Vec<f64> {
    point
        .iter()
        .map(|value| match value {
            Value::Float(x) => *x,
            Value::Int(x) => *x as f64,
            Value::Choice(x) => *x as f64,
        })
        .collect()
}

fn regret(evals: u32, seeds: u64, samplers: &[&str]) {
    for function in functions() {
        for name in samplers {
            for seed in 0..seeds {
                let mut sampler = sampler(name, space(&function), seed);
                let mut noise_rng = ChaCha8Rng::seed_from_u64(1000 + seed);
                let mut history: Vec<Observation> = Vec::new();
                // Simple regret: the true value at the point with the best observed value.
                let mut best_observed = f64::INFINITY;
                let mut best_true = f64::INFINITY;
                let mut curve = Vec::new();
                let mut times = Vec::new();
                for trial in 0..evals {
                    let started = Instant::now();
                    let point = sampler.suggest(trial, &history).expect("a point");
                    times.push(started.elapsed().as_secs_f64());
                    let x = coords(&point);
                    let truth = (function.f)(&x);
                    let noise: f64 = if function.noise > 0.0 {
                        let u: f64 = noise_rng.random::<f64>().max(1e-300);
                        let v: f64 = noise_rng.random();
                        function.noise * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
                    } else {
                        0.0
                    };
                    let observed = truth + noise;
                    if observed < best_observed {
                        best_observed = observed;
                        best_true = truth;
                    }
                    curve.push(best_true - function.optimum);
                    history.push(Observation {
                        point,
                        outcome: Outcome::Complete {
                            value: observed,
                            constraints: vec![],
                        },
                    });
                }
                println!(
                    "{{\"side\":\"flotilla\",\"sampler\":\"{name}\",\"function\":\"{}\",\"seed\":{seed},\"regret_20\":{},\"regret_50\":{},\"regret_100\":{},\"seconds\":{}}}",
                    function.name,
                    curve[(19).min(curve.len() - 1)],
                    curve[(49).min(curve.len() - 1)],
                    curve[curve.len() - 1],
                    times.iter().sum::<f64>()
                );
            }
        }
    }
}

fn latency(sizes: &[u32], repeats: u32) {
    let function = &functions()[1];
    for &size in sizes {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let space = space(function);
        let mut history: Vec<Observation> = (0..size)
            .map(|_| {
                let x: Vec<f64> = (0..6).map(|_| rng.random::<f64>()).collect();
                Observation {
                    point: x.iter().map(|v| Value::Float(*v)).collect(),
                    outcome: Outcome::Complete {
                        value: hartmann6(&x),
                        constraints: vec![],
                    },
                }
            })
            .collect();
        let mut sampler = BayesianSampler::new(space, 3, BayesianSettings::default());
        let mut times = Vec::new();
        for trial in 0..repeats {
            let started = Instant::now();
            let point = sampler.suggest(size + trial, &history).expect("a point");
            times.push(started.elapsed().as_secs_f64() * 1e3);
            let value = hartmann6(&coords(&point));
            history.push(Observation {
                point,
                outcome: Outcome::Complete {
                    value,
                    constraints: vec![],
                },
            });
        }
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
        };
        println!(
            "{{\"side\":\"flotilla\",\"sampler\":\"bayesian\",\"trials\":{size},\"repeats\":{repeats},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
            pick(0.5),
            pick(0.99)
        );
    }
}

/// optimizer ∈ {sgd, adam}; momentum applies to sgd only, beta2 to adam only. sgd with
/// momentum ≈ 0.9 and lr ≈ 0.05 reaches 0; adam's floor, 0.2, is much easier to reach: a
/// sampler that does not learn sgd's own parameter settles for adam.
fn two_branch(conditional: bool) -> SearchSpace {
    let space = SearchSpace::new(vec![
        Dimension::float("beta2", 0.9, 0.999, false),
        Dimension::float("lr", 1e-4, 1.0, true),
        Dimension::float("momentum", 0.0, 0.99, false),
        Dimension::categorical("optimizer", 2),
    ])
    .expect("space");
    if !conditional {
        return space;
    }
    space
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

fn two_branch_value(x: &[f64]) -> f64 {
    let lr = x[1].log10();
    if x[3] == 0.0 {
        10.0 * (lr + 1.3).powi(2) + 40.0 * (x[2] - 0.9).powi(2)
    } else {
        0.2 + (lr + 3.0).powi(2) + (20.0 * (x[0] - 0.99)).powi(2)
    }
}

fn conditional(evals: u32, seeds: u64) {
    for name in ["bayesian", "tpe", "random"] {
        for conditional in [true, false] {
            let mut bests = Vec::new();
            for seed in 0..seeds {
                let mut sampler = sampler(name, two_branch(conditional), seed);
                let mut history: Vec<Observation> = Vec::new();
                let mut best = f64::INFINITY;
                for trial in 0..evals {
                    let point = sampler.suggest(trial, &history).expect("a point");
                    let value = two_branch_value(&coords(&point));
                    best = best.min(value);
                    history.push(Observation {
                        point,
                        outcome: Outcome::Complete {
                            value,
                            constraints: vec![],
                        },
                    });
                }
                bests.push(best);
            }
            let found = bests.iter().filter(|best| **best < 0.1).count();
            let mut sorted = bests.clone();
            sorted.sort_by(f64::total_cmp);
            println!(
                "{{\"side\":\"flotilla\",\"part\":\"conditional\",\"sampler\":\"{name}\",\"space\":\"{}\",\"evals\":{evals},\"seeds\":{seeds},\"found_sgd\":{found},\"median_best\":{}}}",
                if conditional {
                    "conditional"
                } else {
                    "flattened"
                },
                sorted[sorted.len() / 2]
            );
        }
    }
}

/// Hartmann-3 on the unit cube: minimum −3.86278 at (0.114614, 0.555649, 0.852547).
fn hartmann3(x: &[f64]) -> f64 {
    const A: [[f64; 3]; 4] = [
        [3.0, 10.0, 30.0],
        [0.1, 10.0, 35.0],
        [3.0, 10.0, 30.0],
        [0.1, 10.0, 35.0],
    ];
    const P: [[f64; 3]; 4] = [
        [0.3689, 0.1170, 0.2673],
        [0.4699, 0.4387, 0.7470],
        [0.1091, 0.8732, 0.5547],
        [0.0381, 0.5743, 0.8828],
    ];
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    -(0..4)
        .map(|i| {
            let exponent: f64 = (0..3).map(|j| A[i][j] * (x[j] - P[i][j]).powi(2)).sum();
            ALPHA[i] * (-exponent).exp()
        })
        .sum::<f64>()
}

/// Epochs of a complete trial in the learning-curve benchmark.
const CURVE_EPOCHS: u32 = 27;

/// The learning-curve surrogate: configuration `x` ∈ [0, 1]⁴ after `epoch` of 27 epochs.
///
/// The final loss is Hartmann-3 of the first three coordinates, shifted so the best is 0.
/// The curve approaches it as `final + g·(t^−r − 27^−r)`: the learning rate `r` grows with
/// `x₀`, so the best region (x₀ ≈ 0.11) learns slowly and looks poor early on, and the
/// amplitude `g` grows with `x₃`, a nuisance that changes early values and never the final
/// one. Both are what makes early stopping misjudge configurations; the benchmark asks how
/// much each method loses to them.
fn curve_loss(x: &[f64], epoch: u32) -> f64 {
    let final_loss = hartmann3(x) + 3.86278;
    let rate = 0.3 + 1.2 * x[0];
    let amplitude = 1.0 + 2.0 * x[3];
    let t = f64::from(epoch);
    final_loss + amplitude * (t.powf(-rate) - f64::from(CURVE_EPOCHS).powf(-rate))
}

/// One method of the learning-curve benchmark.
struct CurveMethod {
    name: &'static str,
    sampler: &'static str,
    stopping: &'static str,
    /// Whether stopped trials reach the sampler as partial (lower-fidelity) results; `false`
    /// hands them over as if their value where they stopped were final.
    partial: bool,
}

/// Simulated wall time (in epochs of one worker) until the best final loss reaches `target`,
/// and the best final loss at `time`, for one method and seed.
fn curve_run(
    method: &CurveMethod,
    workers: usize,
    time: u32,
    seed: u64,
    target: f64,
) -> (Option<u32>, f64) {
    let space = SearchSpace::new(
        (0..4)
            .map(|d| Dimension::float(["x0", "x1", "x2", "x3"][d], 0.0, 1.0, false))
            .collect(),
    )
    .expect("space");
    let mut sampler = sampler(method.sampler, space, seed);
    let settings = AshaSettings {
        min_resource: 1.0,
        max_resource: f64::from(CURVE_EPOCHS),
        reduction_factor: 3.0,
    };
    let mut asha = Asha::new(settings.clone()).expect("rungs");
    let mut hyperband = Hyperband::new(settings).expect("brackets");
    let mut noise_rng = ChaCha8Rng::seed_from_u64(7_000 + seed);
    let mut history: Vec<Observation> = Vec::new();
    // Per worker: (index into history, point, epochs done).
    let mut running: Vec<Option<(usize, Vec<f64>, u32)>> = vec![None; workers];
    let mut best_final = f64::INFINITY;
    let mut reached = None;
    for now in 0..time {
        for slot in running.iter_mut() {
            if slot.is_none() {
                let number = history.len() as u32;
                let point = sampler.suggest(number, &history).expect("a point");
                let x = coords(&point);
                history.push(Observation {
                    point,
                    outcome: Outcome::Pending,
                });
                *slot = Some((number as usize, x, 0));
            }
            let Some((index, x, done)) = slot.as_mut() else {
                continue;
            };
            *done += 1;
            let u: f64 = noise_rng.random::<f64>().max(1e-300);
            let v: f64 = noise_rng.random();
            let noise = 0.01 * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            let observed = curve_loss(x, *done) + noise;
            let finished = *done == CURVE_EPOCHS;
            let decision = match (finished, method.stopping) {
                (true, _) | (_, "none") => Decision::Continue,
                (false, "hyperband") => hyperband.report(*index as u32, f64::from(*done), observed),
                (false, _) => asha.report(*index as u32, f64::from(*done), observed),
            };
            let outcome = if finished {
                best_final = best_final.min(curve_loss(x, CURVE_EPOCHS));
                Some(Outcome::Complete {
                    value: observed,
                    constraints: vec![],
                })
            } else if matches!(decision, Decision::Stop(_)) {
                Some(if method.partial {
                    Outcome::Partial {
                        value: observed,
                        constraints: vec![],
                        fidelity: f64::from(*done) / f64::from(CURVE_EPOCHS),
                    }
                } else {
                    Outcome::Complete {
                        value: observed,
                        constraints: vec![],
                    }
                })
            } else {
                None
            };
            if let Some(outcome) = outcome {
                history[*index].outcome = outcome;
                *slot = None;
            }
        }
        if reached.is_none() && best_final <= target {
            reached = Some(now + 1);
        }
    }
    (reached, best_final)
}

fn curves(workers: usize, time: u32, seeds: u64) {
    let target = 0.05;
    let methods = [
        CurveMethod {
            name: "asha+random",
            sampler: "random",
            stopping: "asha",
            partial: true,
        },
        CurveMethod {
            name: "asha+gp (stopped values as final)",
            sampler: "bayesian",
            stopping: "asha",
            partial: false,
        },
        CurveMethod {
            name: "asha+gp (fidelity-corrected)",
            sampler: "bayesian",
            stopping: "asha",
            partial: true,
        },
        CurveMethod {
            name: "hyperband+gp (fidelity-corrected)",
            sampler: "bayesian",
            stopping: "hyperband",
            partial: true,
        },
        CurveMethod {
            name: "gp, no early stopping",
            sampler: "bayesian",
            stopping: "none",
            partial: true,
        },
    ];
    for method in &methods {
        let mut times = Vec::new();
        let mut finals = Vec::new();
        for seed in 0..seeds {
            let (reached, best) = curve_run(method, workers, time, seed, target);
            times.push(reached.map_or(f64::INFINITY, f64::from));
            finals.push(best);
        }
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let reached = times.iter().filter(|t| t.is_finite()).count();
        println!(
            "{{\"side\":\"flotilla\",\"part\":\"curves\",\"method\":\"{}\",\"workers\":{workers},\"time\":{time},\"seeds\":{seeds},\"target\":{target},\"reached\":{reached},\"median_time_to_target\":{},\"median_best_final\":{}}}",
            method.name,
            Some(median(&mut times))
                .filter(|t| t.is_finite())
                .map_or("null".to_string(), |t| t.to_string()),
            median(&mut finals)
        );
    }
}

/// A multi-objective test problem: losses to minimize on a box, the reference point its
/// hypervolume is measured against, and the hypervolume of its true front there (the
/// reference points and fronts are those of BoTorch's test problems).
struct Problem {
    name: &'static str,
    bounds: Vec<(f64, f64)>,
    reference: Vec<f64>,
    max_hypervolume: f64,
    f: fn(&[f64]) -> Vec<f64>,
}

/// Branin (on [0, 1]², rescaled) and Currin's exponential function.
fn branin_currin(x: &[f64]) -> Vec<f64> {
    let currin = (1.0 - (-1.0 / (2.0 * x[1])).exp())
        * (2300.0 * x[0].powi(3) + 1900.0 * x[0].powi(2) + 2092.0 * x[0] + 60.0)
        / (100.0 * x[0].powi(3) + 500.0 * x[0].powi(2) + 4.0 * x[0] + 20.0);
    vec![branin(&[15.0 * x[0] - 5.0, 15.0 * x[1]]), currin]
}

/// ZDT1: a convex front `f2 = 1 − √f1` behind a distance function of the other coordinates.
fn zdt1(x: &[f64]) -> Vec<f64> {
    let g = 1.0 + 9.0 / (x.len() - 1) as f64 * x[1..].iter().sum::<f64>();
    vec![x[0], g * (1.0 - (x[0] / g).sqrt())]
}

/// DTLZ2 with `m` objectives: a spherical (concave) front.
fn dtlz2(x: &[f64], m: usize) -> Vec<f64> {
    let g: f64 = x[m - 1..].iter().map(|x| (x - 0.5).powi(2)).sum();
    let half_pi = std::f64::consts::FRAC_PI_2;
    (0..m)
        .map(|i| {
            let cosines: f64 = x[..m - 1 - i].iter().map(|x| (x * half_pi).cos()).product();
            let sine = if i == 0 {
                1.0
            } else {
                (x[m - 1 - i] * half_pi).sin()
            };
            (1.0 + g) * cosines * sine
        })
        .collect()
}

fn problems() -> Vec<Problem> {
    vec![
        Problem {
            name: "branin_currin",
            bounds: vec![(0.0, 1.0); 2],
            reference: vec![18.0, 6.0],
            max_hypervolume: 59.36011874867746,
            f: branin_currin,
        },
        Problem {
            name: "zdt1_4",
            bounds: vec![(0.0, 1.0); 4],
            reference: vec![11.0, 11.0],
            max_hypervolume: 120.0 + 2.0 / 3.0,
            f: zdt1,
        },
        Problem {
            name: "dtlz2_6_2obj",
            bounds: vec![(0.0, 1.0); 6],
            reference: vec![1.1, 1.1],
            max_hypervolume: 1.21 - std::f64::consts::FRAC_PI_4,
            f: |x| dtlz2(x, 2),
        },
        Problem {
            name: "dtlz2_6_3obj",
            bounds: vec![(0.0, 1.0); 6],
            reference: vec![1.1, 1.1, 1.1],
            max_hypervolume: 1.331 - std::f64::consts::PI / 6.0,
            f: |x| dtlz2(x, 3),
        },
    ]
}

/// The hypervolume gap (the true front's hypervolume less the results') after 50 evaluations
/// and after `evals`, per problem, sampler and seed, as JSON lines.
fn pareto(evals: u32, seeds: u64) {
    for problem in problems() {
        let function = Function {
            name: problem.name,
            bounds: problem.bounds.clone(),
            optimum: 0.0,
            noise: 0.0,
            f: |_| 0.0,
        };
        for name in ["bayesian", "tpe", "random"] {
            for seed in 0..seeds {
                let mut sampler = ParEgo::new(sampler(name, space(&function), seed), seed);
                let mut history: Vec<Observation> = Vec::new();
                let mut results: Vec<Vec<f64>> = Vec::new();
                let mut gaps = Vec::new();
                let mut seconds = 0.0;
                for trial in 0..evals {
                    let started = Instant::now();
                    let point = sampler.suggest(trial, &history).expect("a point");
                    seconds += started.elapsed().as_secs_f64();
                    let values = (problem.f)(&coords(&point));
                    results.push(values.clone());
                    gaps.push(problem.max_hypervolume - hypervolume(&results, &problem.reference));
                    history.push(Observation {
                        point,
                        outcome: Outcome::Objectives {
                            values,
                            constraints: vec![],
                            fidelity: 1.0,
                        },
                    });
                }
                println!(
                    "{{\"side\":\"flotilla\",\"sampler\":\"{name}\",\"problem\":\"{}\",\"seed\":{seed},\"gap_50\":{},\"gap_end\":{},\"evals\":{evals},\"seconds\":{seconds}}}",
                    problem.name,
                    gaps[(49).min(gaps.len() - 1)],
                    gaps[gaps.len() - 1],
                );
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("regret") => {
            let evals = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(100);
            let seeds = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(20);
            // Optional: which samplers, comma-separated (default all three).
            let samplers: Vec<&str> = args.get(4).map_or(vec!["bayesian", "tpe", "random"], |v| {
                v.split(',').collect()
            });
            regret(evals, seeds, &samplers);
        }
        Some("latency") => {
            let sizes: Vec<u32> = args
                .get(2)
                .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
                .unwrap_or_else(|| vec![50, 200, 1000]);
            let repeats = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(20);
            latency(&sizes, repeats);
        }
        Some("conditional") => {
            let evals = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(40);
            let seeds = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(20);
            conditional(evals, seeds);
        }
        Some("pareto") => {
            let evals = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(100);
            let seeds = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(5);
            pareto(evals, seeds);
        }
        Some("curves") => {
            let workers = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(4);
            let time = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(400);
            let seeds = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(10);
            curves(workers, time, seeds);
        }
        _ => eprintln!(
            "usage: tuner_bench regret EVALS SEEDS | latency SIZES REPEATS | conditional EVALS \
             SEEDS | pareto EVALS SEEDS | curves WORKERS TIME SEEDS"
        ),
    }
}
