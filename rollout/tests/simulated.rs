//! The rollout decision against simulated traffic: requests drawn one by one for a baseline
//! and a canary (error, log-normal latency, a label for some successful predictions), split by
//! the stage's weight, checked every 10 simulated seconds as the coordinator does. Seeds are
//! fixed, so every run is the same; the error-rate tests run hundreds of rollouts and compare
//! the measured false-rollback and false-promotion rates with the configured ones.

use std::time::Duration;

use flotilla_rollout::{Check, Metric, Pair, Policy, Verdict, decide};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug)]
struct Version {
    error_rate: f64,
    median_ms: f64,
    log_sd: f64,
    accuracy: f64,
}

const BASELINE: Version = Version {
    error_rate: 0.005,
    median_ms: 20.0,
    log_sd: 0.5,
    accuracy: 0.90,
};

const CHECK_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Outcome {
    verdict: Verdict,
    /// The stage (index) at which the rollout ended.
    stage: usize,
    /// Stages entered, in order.
    path: Vec<usize>,
    reason: String,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One rollout from stage 0 to a promotion or a rollback.
fn simulate(
    policy: &Policy,
    canary: Version,
    seed: u64,
    requests_per_second: u64,
    label_share: f64,
) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut total = Pair::default();
    let mut stage_start = Pair::default();
    let mut stage = 0;
    let mut stage_elapsed = Duration::ZERO;
    let mut path = vec![0];
    loop {
        let weight = policy.stages[stage].weight;
        for _ in 0..requests_per_second * CHECK_EVERY.as_secs() {
            let to_canary = rng.random::<f64>() < weight;
            let (version, arm) = if to_canary {
                (canary, &mut total.canary)
            } else {
                (BASELINE, &mut total.baseline)
            };
            let error = rng.random::<f64>() < version.error_rate;
            let latency = version.median_ms / 1000.0 * (version.log_sd * normal(&mut rng)).exp();
            arm.record(Duration::from_secs_f64(latency), error);
            if !error && rng.random::<f64>() < label_share {
                arm.feedback(rng.random::<f64>() < version.accuracy);
            }
        }
        stage_elapsed += CHECK_EVERY;
        let stage_traffic = total.since(&stage_start);
        let decision = decide(
            policy,
            Check {
                stage,
                stage_elapsed,
                stage_traffic: &stage_traffic,
                total_traffic: &total,
            },
        );
        match decision.verdict {
            Verdict::Hold => {}
            Verdict::Advance { stage: next } => {
                assert_eq!(next, stage + 1, "stages are taken in order");
                stage = next;
                stage_start = total;
                stage_elapsed = Duration::ZERO;
                path.push(next);
            }
            verdict => {
                return Outcome {
                    verdict,
                    stage,
                    path,
                    reason: decision.reason,
                };
            }
        }
    }
}

fn policy() -> Policy {
    let policy = Policy {
        max_stage_duration: Duration::from_secs(1200),
        ..Policy::default()
    };
    policy.validate().expect("a valid policy");
    policy
}

#[test]
fn an_equal_or_better_canary_is_promoted_through_every_stage() {
    let policy = policy();
    let better = Version {
        error_rate: 0.002,
        median_ms: 15.0,
        accuracy: 0.92,
        ..BASELINE
    };
    for (name, canary) in [("equal", BASELINE), ("better", better)] {
        let outcome = simulate(&policy, canary, 7, 1000, 0.2);
        assert_eq!(outcome.verdict, Verdict::Promote, "{name}: {outcome:?}");
        assert_eq!(outcome.path, vec![0, 1, 2], "{name}: {outcome:?}");
    }
}

#[test]
fn a_clearly_worse_canary_is_rolled_back_at_the_first_stage() {
    let policy = policy();
    let cases = [
        (
            "five times the errors",
            Version {
                error_rate: 0.05,
                ..BASELINE
            },
            Metric::ErrorRate,
        ),
        (
            "twice as slow",
            Version {
                median_ms: 40.0,
                ..BASELINE
            },
            Metric::Latency,
        ),
        (
            "ten points less accurate",
            Version {
                accuracy: 0.80,
                ..BASELINE
            },
            Metric::Accuracy,
        ),
    ];
    for (name, canary, metric) in cases {
        let outcome = simulate(&policy, canary, 11, 1000, 0.5);
        assert_eq!(
            outcome.verdict,
            Verdict::Rollback {
                metric: Some(metric)
            },
            "{name}: {outcome:?}"
        );
        // Ten points of accuracy with half the requests labelled: the harm test ("worse by
        // more than a quarter of the margin") needs the 10% stage's labels; the others are
        // caught at 1%.
        let earliest = if metric == Metric::Accuracy { 1 } else { 0 };
        assert!(
            outcome.stage <= earliest,
            "{name}: rolled back by stage {earliest}: {outcome:?}"
        );
    }
}

#[test]
fn a_slightly_worse_canary_gets_further_before_the_evidence_suffices() {
    // Twice the margin on latency: invisible in the first minute at 1%, caught before 100%.
    let policy = policy();
    let canary = Version {
        median_ms: 20.0 * 1.2,
        ..BASELINE
    };
    let outcome = simulate(&policy, canary, 5, 200, 0.0);
    assert_eq!(
        outcome.verdict,
        Verdict::Rollback {
            metric: Some(Metric::Latency)
        },
        "{outcome:?}"
    );
    assert!(outcome.reason.contains("latency"), "{}", outcome.reason);
}

/// Rollouts of a canary that is exactly as good as the baseline: the share rolled back must
/// not exceed the configured false-rollback rate, and most must be promoted.
#[test]
fn false_rollbacks_stay_within_the_configured_rate() {
    let policy = policy();
    let runs = 300;
    let mut rolled_back = 0;
    let mut promoted = 0;
    let mut reasons = std::collections::BTreeMap::<String, u32>::new();
    for seed in 0..runs {
        let outcome = simulate(&policy, BASELINE, 1000 + seed, 1000, 0.2);
        match outcome.verdict {
            Verdict::Promote => promoted += 1,
            Verdict::Rollback { metric } => {
                rolled_back += 1;
                *reasons
                    .entry(format!("{metric:?} at stage {}", outcome.stage))
                    .or_default() += 1;
            }
            other => panic!("a rollout ended with {other:?}"),
        }
    }
    eprintln!("rollbacks: {reasons:?}");
    let rate = f64::from(rolled_back) / runs as f64;
    eprintln!(
        "equal canary: {rolled_back} of {runs} rolled back ({rate:.3}; configured {}), {promoted} promoted",
        policy.false_rollback
    );
    assert!(rate <= policy.false_rollback, "false rollback rate {rate}");
    assert!(
        f64::from(promoted) >= 0.9 * runs as f64,
        "only {promoted} of {runs} equal canaries promoted"
    );
}

/// Rollouts of canaries worse by exactly one margin (the smallest regression that matters),
/// one metric at a time: the share promoted must not exceed the configured rate.
#[test]
fn false_promotions_stay_within_the_configured_rate() {
    let policy = policy();
    let cases = [
        (
            "error rate",
            Version {
                error_rate: BASELINE.error_rate + policy.error_margin,
                ..BASELINE
            },
        ),
        (
            "latency",
            Version {
                median_ms: BASELINE.median_ms * (1.0 + policy.latency_margin),
                ..BASELINE
            },
        ),
        (
            "accuracy",
            Version {
                accuracy: BASELINE.accuracy - policy.accuracy_margin,
                ..BASELINE
            },
        ),
    ];
    let runs = 100;
    for (name, canary) in cases {
        let mut promoted = 0;
        for seed in 0..runs {
            if simulate(&policy, canary, 5000 + seed, 1000, 0.5).verdict == Verdict::Promote {
                promoted += 1;
            }
        }
        let rate = f64::from(promoted) / runs as f64;
        eprintln!(
            "canary worse by one margin of {name}: {promoted} of {runs} promoted ({rate:.3}; configured {})",
            policy.false_promotion
        );
        assert!(
            rate <= policy.false_promotion,
            "{name}: false promotion rate {rate}"
        );
    }
}

#[test]
fn decisions_and_their_evidence_serialize_for_the_store() {
    let policy = policy();
    let mut total = Pair::default();
    total.canary.record(Duration::from_millis(5), false);
    let decision = decide(
        &policy,
        Check {
            stage: 0,
            stage_elapsed: Duration::from_secs(1),
            stage_traffic: &total,
            total_traffic: &total,
        },
    );
    assert_eq!(decision.verdict, Verdict::Hold);
    assert!(decision.reason.contains("holding"), "{}", decision.reason);
    let json = serde_json::to_string(&decision).expect("serialize");
    let back: flotilla_rollout::Decision = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, decision);
    let json = serde_json::to_string(&policy).expect("serialize the policy");
    assert!(json.contains("\"min_duration\":\"1m\""), "{json}");
}

#[test]
fn bad_policies_name_what_is_wrong() {
    let mut policy = Policy::default();
    policy.stages[1].weight = 0.005;
    assert_eq!(
        policy
            .validate()
            .expect_err("weights must grow")
            .to_string(),
        "stage 2: weight 0.005 must be above the previous stage's and below 1"
    );
    let policy = Policy {
        false_rollback: 0.0,
        ..Policy::default()
    };
    assert!(
        policy
            .validate()
            .expect_err("a rate of zero")
            .to_string()
            .contains("false_rollback")
    );
}

#[test]
fn a_stage_that_could_never_pass_is_refused_by_name() {
    let policy = Policy {
        max_stage_duration: Duration::from_secs(30),
        ..Policy::default()
    };
    let error = policy
        .validate()
        .expect_err("1-minute stages in at most 30 s");
    assert!(
        error.to_string().contains("stage 1") && error.to_string().contains("could never pass"),
        "{error}"
    );
}
