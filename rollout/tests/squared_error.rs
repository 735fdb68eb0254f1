//! Squared error (numeric predictions with true values fed back) and the metrics a policy
//! says gate its stages.

use std::time::Duration;

use flotilla_rollout::{Arm, Check, Metric, Pair, Policy, Stage, Verdict, decide};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` requests of 10 ms, each scored against a truth with normal error of `sd`.
fn arm(rng: &mut ChaCha8Rng, n: u64, sd: f64) -> Arm {
    let mut arm = Arm::default();
    for _ in 0..n {
        arm.record(Duration::from_millis(10), false);
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let noise = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        arm.score(3.0 + sd * noise, 3.0);
    }
    arm
}

fn one_stage(metrics: Vec<Metric>) -> Policy {
    let policy = Policy {
        stages: vec![Stage {
            weight: 0.5,
            min_duration: Duration::from_secs(1),
            min_requests: 100,
            metrics: Vec::new(),
        }],
        metrics,
        ..Policy::default()
    };
    policy.validate().expect("valid");
    policy
}

fn check(policy: &Policy, traffic: &Pair) -> flotilla_rollout::Decision {
    decide(
        policy,
        Check {
            stage: 0,
            stage_elapsed: Duration::from_secs(60),
            stage_traffic: traffic,
            total_traffic: traffic,
        },
    )
}

#[test]
fn a_canary_with_a_larger_squared_error_is_rolled_back_and_an_equal_one_promoted() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let policy = one_stage(Metric::ALL.to_vec());
    let worse = Pair {
        baseline: arm(&mut rng, 3000, 1.0),
        canary: arm(&mut rng, 3000, 1.5),
    };
    let decision = check(&policy, &worse);
    assert_eq!(
        decision.verdict,
        Verdict::Rollback {
            metric: Some(Metric::SquaredError)
        },
        "{decision:?}"
    );
    assert!(
        decision.reason.contains("squared error"),
        "{}",
        decision.reason
    );

    // Squared errors are noisy (a χ² with variance 2 here): showing that the canary is not
    // 10 % worse takes more samples than showing that it is 50 % worse.
    let equal = Pair {
        baseline: arm(&mut rng, 20_000, 1.0),
        canary: arm(&mut rng, 20_000, 1.0),
    };
    let decision = check(&policy, &equal);
    assert_eq!(decision.verdict, Verdict::Promote, "{decision:?}");
}

#[test]
fn only_the_metrics_that_gate_a_stage_decide_it() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let worse = Pair {
        baseline: arm(&mut rng, 3000, 1.0),
        canary: arm(&mut rng, 3000, 1.5),
    };
    // Squared error measured and shown, but not gating: the canary is promoted on the rest.
    let policy = one_stage(vec![Metric::ErrorRate, Metric::Latency]);
    let decision = check(&policy, &worse);
    assert_eq!(decision.verdict, Verdict::Promote, "{decision:?}");
    let shown = decision
        .evidence
        .iter()
        .find(|evidence| evidence.metric == Metric::SquaredError)
        .expect("squared error is shown");
    assert!(shown.canary > shown.baseline && !shown.harmful, "{shown:?}");

    // A stage's own list overrides the policy's.
    let mut policy = one_stage(vec![Metric::ErrorRate, Metric::Latency]);
    policy.stages[0].metrics = vec![Metric::SquaredError];
    let decision = check(&policy, &worse);
    assert_eq!(
        decision.verdict,
        Verdict::Rollback {
            metric: Some(Metric::SquaredError)
        }
    );

    let empty = Policy {
        metrics: Vec::new(),
        ..Policy::default()
    };
    assert!(empty.validate().is_err());
}
