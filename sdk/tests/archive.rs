//! Finished sweeps move to the archive after their retention and still answer (embedded
//! cluster: real coordinator, agent and QUIC; the archive is the cluster's artifact folder).
//!
//! A sweep retained for one second leaves the state file for `archive/sweeps/` in the
//! artifact folder; its status, trials and detail read back the same, `list` still shows
//! it, a new sweep warm-starts from it by name, and a restarted coordinator on the same
//! folder neither reuses its id nor loses it.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_sdk::{
    AlgorithmName, LocalCluster, LocalClusterOptions, SweepBuilder, SweepSpec, SweepState,
};

fn sweep(name: &str) -> SweepSpec {
    SweepBuilder::new(name)
        .minimize("loss")
        .float("x", 0.0, 1.0)
        .algorithm(AlgorithmName::Random)
        .seed(3)
        .command(
            "sh",
            ["-c", "echo \"@flotilla step=0 loss=$FLOTILLA_PARAM_X\""],
        )
        .metrics(["loss"])
        .max_trials(4)
        .max_parallel(2)
        .build()
        .expect("valid sweep")
}

fn options(dir: &Path) -> LocalClusterOptions {
    LocalClusterOptions {
        agents: 1,
        slots_per_agent: 2,
        dir: Some(dir.to_path_buf()),
        retain_finished: Some(Duration::from_secs(1)),
        ..LocalClusterOptions::default()
    }
}

fn archived(dir: &Path, id: u64) -> bool {
    dir.join(format!("artifacts/archive/sweeps/{id:020}.summary"))
        .exists()
}

async fn wait_archived(dir: &Path, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !archived(dir, id) {
        assert!(
            Instant::now() < deadline,
            "sweep {id} was not archived within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The store forgets the sweep right after the archive holds it.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_sweep_is_archived_and_still_answers() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cluster = LocalCluster::start(options(dir.path()))
        .await
        .expect("local cluster");
    let client = cluster.client().await.expect("client");
    let first = client.submit(sweep("archived-one")).await.expect("submit");
    let done = client.wait(first.id).await.expect("wait");
    assert_eq!(done.state, SweepState::Completed, "{done:?}");
    let trials = client.trials(first.id).await.expect("trials");
    assert_eq!(trials.len(), 4);
    wait_archived(dir.path(), first.id.0).await;

    let state = std::fs::read(dir.path().join("state.log")).expect("state file");
    assert!(
        !contains(&state, b"archived-one"),
        "the archived sweep's record left the state file (it is compacted as it shrinks)"
    );
    assert_eq!(client.status(first.id).await.expect("status"), done);
    assert_eq!(client.trials(first.id).await.expect("trials"), trials);
    let detail = client.detail(first.id).await.expect("detail");
    assert_eq!(detail.spec.name, "archived-one");
    assert_eq!(detail.summary, done);
    let listed = client.list().await.expect("list");
    assert!(
        listed.iter().any(|summary| summary.id == first.id),
        "an archived sweep is listed: {listed:?}"
    );

    // A warm start names the archived sweep; the new sweep learns from its four results.
    let mut warm = sweep("archived-two");
    warm.warm_start = vec!["archived-one".into()];
    let second = client
        .submit(warm)
        .await
        .expect("warm start from the archive");
    assert!(second.id.0 > first.id.0);
    let done_second = client.wait(second.id).await.expect("wait");
    assert_eq!(done_second.state, SweepState::Completed);
    let detail = client.detail(second.id).await.expect("detail");
    assert_eq!(detail.spec.warm_start, [first.id.to_string()]);
    wait_archived(dir.path(), second.id.0).await;
    client.close().await;
    cluster.shutdown().await;

    // A coordinator restarted on the same folder: nothing of the archived sweeps is in its
    // state file, yet it lists and shows them, and a new sweep gets a new id.
    let cluster = LocalCluster::start(options(dir.path()))
        .await
        .expect("restarted local cluster");
    let client = cluster.client().await.expect("client");
    let listed = client.list().await.expect("list");
    let ids: Vec<u64> = listed.iter().map(|summary| summary.id.0).collect();
    assert_eq!(ids, [first.id.0, second.id.0]);
    assert_eq!(client.trials(first.id).await.expect("trials"), trials);
    let third = client.submit(sweep("after-restart")).await.expect("submit");
    assert!(
        third.id.0 > second.id.0,
        "archived ids are not reused: {} after {}",
        third.id,
        second.id
    );
    client.close().await;
    cluster.shutdown().await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
