//! Phased sweeps end to end on an embedded cluster (real coordinator, agents and QUIC):
//! each phase's winner fixes its parameters for the next, the event stream names each
//! phase's winner, and a phase without a feasible winner ends the sweep `Failed` before the
//! next phase runs anything.

use std::collections::BTreeMap;

use flotilla_sdk::{
    AlgorithmName, AlgorithmSpec, LocalCluster, LocalClusterOptions, ParamSpec, ParamValue,
    PhaseSpec, SweepBuilder, SweepEvent, SweepSpec, SweepState, TrialState,
};

fn script() -> String {
    // Read when the test runs, so a binary reused from another checkout through a shared
    // target directory still runs this checkout's script.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    crate_dir
        .join("../examples/trials/quadratic.py")
        .to_string_lossy()
        .into_owned()
}

/// Phase "position" searches x (loss is smallest at x = 1.5); phase "scale" searches the
/// scale (smallest at 2) with the position's winner fixed.
fn two_phases(constraint: Option<&str>) -> SweepSpec {
    let mut builder = SweepBuilder::new("two-phases")
        .minimize("loss")
        .command("python3", [script()])
        .metrics(["loss"])
        .seed(7)
        .max_parallel(3)
        .phase(PhaseSpec {
            name: "position".into(),
            space: BTreeMap::from([("x".to_string(), ParamSpec::float(-3.0, 3.0))]),
            algorithm: Some(AlgorithmSpec {
                name: AlgorithmName::Sobol,
                ..AlgorithmSpec::default()
            }),
            max_trials: 6,
            max_parallel: Some(2),
        })
        .phase(PhaseSpec {
            name: "scale".into(),
            space: BTreeMap::from([(
                "scale".to_string(),
                ParamSpec::categorical([1, 2, 3].map(ParamValue::Int)),
            )]),
            algorithm: Some(AlgorithmSpec {
                name: AlgorithmName::Grid,
                ..AlgorithmSpec::default()
            }),
            max_trials: 3,
            max_parallel: Some(2),
        });
    if let Some(constraint) = constraint {
        builder = builder.constraint(constraint);
    }
    builder.build().expect("valid phased spec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_phase_fixes_its_winner_for_the_next_and_a_phase_without_one_fails_the_sweep() {
    let cluster = LocalCluster::start(LocalClusterOptions::default())
        .await
        .expect("local cluster");
    let client = cluster.client().await.expect("client");

    let submitted = client.submit(two_phases(None)).await.expect("submit");
    assert_eq!(submitted.max_trials, 9);
    let mut events = client.watch(submitted.id).await.expect("watch");
    let mut announced = Vec::new();
    let mut summary = None;
    while let Some(event) = events.next().await {
        match event.expect("event") {
            SweepEvent::PhaseFinished { phase, winner } => announced.push((phase, winner)),
            SweepEvent::SweepFinished(done) => summary = Some(done),
            _ => {}
        }
    }
    let summary = summary.expect("the sweep finished");
    assert_eq!(summary.state, SweepState::Completed);
    assert_eq!(summary.counts.succeeded, 9);
    let trials = client.trials(summary.id).await.expect("trials");
    let phase_of = |number: usize| trials[number].phase;
    assert!((0..6).all(|n| phase_of(n) == 0) && (6..9).all(|n| phase_of(n) == 1));

    // Phase 0's winner is its lowest loss; every phase-1 trial runs with its x.
    let position_best = trials[..6]
        .iter()
        .min_by(|a, b| {
            a.objective
                .unwrap_or(f64::MAX)
                .total_cmp(&b.objective.unwrap_or(f64::MAX))
        })
        .expect("phase 0 trials");
    assert_eq!(announced.len(), 1, "one phase ends before the last");
    let (phase, winner) = &announced[0];
    assert_eq!((phase.name.as_str(), phase.done), ("position", true));
    let winner = winner.as_ref().expect("phase 0 has a winner");
    assert_eq!(winner.id, position_best.id);
    assert_eq!(phase.winner, Some(winner.id.number));
    for trial in &trials[6..] {
        assert_eq!(trial.params.get("x"), winner.params.get("x"), "{trial:?}");
        assert!(trial.params.contains_key("scale"));
    }
    let scales: Vec<&ParamValue> = trials[6..].iter().map(|t| &t.params["scale"]).collect();
    assert_eq!(scales.len(), 3);
    // The summary names both phases' winners; the last phase's is scale = 2.
    assert_eq!(summary.phases.len(), 2);
    assert_eq!(summary.phases[0].winner, Some(winner.id.number));
    let last = summary.phases[1].winner.expect("phase 1 winner") as usize;
    assert_eq!(trials[last].params["scale"], ParamValue::Int(2));

    // An unreachable constraint: phase 0 has no feasible winner, so phase 1 never starts.
    let doomed = client
        .submit(two_phases(Some("loss <= -1")))
        .await
        .expect("submit");
    let done = client.wait(doomed.id).await.expect("wait");
    assert_eq!(done.state, SweepState::Failed);
    assert_eq!(done.counts.succeeded, 6);
    assert!(done.phases[0].done && done.phases[0].winner.is_none());
    assert_eq!(done.phases[1].trials, 0);
    let trials = client.trials(doomed.id).await.expect("trials");
    assert!(
        trials
            .iter()
            .all(|t| t.phase == 0 && t.state == TrialState::Succeeded)
    );

    client.close().await;
    cluster.shutdown().await;
}
