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
    // Read when the test runs, so a binary reused from another checkout through a shared
    // target directory still runs this checkout's script.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let script = crate_dir.join("../examples/trials/quadratic.py");
    let script = script.to_str().expect("utf-8 path");
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
