//! Runs `sdk/examples/submit_and_watch.rs` against an embedded (`flotilla up`-style) cluster.

#[allow(dead_code)]
#[path = "../examples/submit_and_watch.rs"]
mod example;

use flotilla_sdk::{LocalCluster, LocalClusterOptions, SweepState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_example_runs_a_sweep_to_completion_on_a_local_cluster() {
    let cluster = LocalCluster::start(LocalClusterOptions::default())
        .await
        .expect("local cluster");
    let client = cluster.client().await.expect("client");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/trials/quadratic.py"
    );
    let summary = example::run(&client, script).await.expect("example runs");
    assert_eq!(summary.state, SweepState::Completed);
    assert_eq!(summary.counts.succeeded, 12);
    let best = summary.best.expect("a best trial");
    let trials = client.trials(summary.id).await.expect("trials");
    let minimum = trials
        .iter()
        .filter_map(|trial| trial.objective)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(best.objective, Some(minimum));
    let agents = client.agents().await.expect("admin may list agents");
    assert_eq!(agents.len(), 2);
    client.close().await;
    cluster.shutdown().await;
}
