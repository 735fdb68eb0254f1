//! Sweeps share an embedded cluster (real coordinator, agent and QUIC) by their
//! `[scheduling] share`: while two sweeps both have trials queued, the one of share 2 holds
//! about twice the slots of the one of share 1. The placement rule itself is tested in
//! `coordinator/src/placement.rs`; this checks the share reaches it from a submitted spec.

use flotilla_sdk::{
    AlgorithmName, LocalCluster, LocalClusterOptions, SweepBuilder, SweepSpec, SweepState,
    TrialRecord,
};

fn sweep(name: &str, share: f64) -> SweepSpec {
    SweepBuilder::new(name)
        .minimize("loss")
        .float("x", 0.0, 1.0)
        .algorithm(AlgorithmName::Random)
        .seed(1)
        .command("sh", ["-c", "sleep 0.4; echo '@flotilla step=0 loss=1'"])
        .metrics(["loss"])
        .max_trials(40)
        .max_parallel(6)
        .share(share)
        .build()
        .expect("valid sweep")
}

/// Milliseconds of slot time the trials held within `[from, to]` (one slot each).
fn held_ms(trials: &[TrialRecord], from: u64, to: u64) -> u64 {
    trials
        .iter()
        .filter_map(|trial| Some((trial.started_ms?, trial.finished_ms?)))
        .map(|(start, end)| end.min(to).saturating_sub(start.max(from)))
        .sum()
}

fn first_start(trials: &[TrialRecord]) -> u64 {
    let first = trials.iter().filter_map(|t| t.started_ms).min();
    first.expect("a trial started")
}

fn last_start(trials: &[TrialRecord]) -> u64 {
    let last = trials.iter().filter_map(|t| t.started_ms).max();
    last.expect("a trial started")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_share_two_holds_twice_the_slots_of_one_of_share_one() {
    let cluster = LocalCluster::start(LocalClusterOptions {
        agents: 1,
        slots_per_agent: 6,
        ..LocalClusterOptions::default()
    })
    .await
    .expect("local cluster");
    let client = cluster.client().await.expect("client");
    // Each alone would fill the agent (max_parallel 6 on 6 slots).
    let heavy = client.submit(sweep("heavy", 2.0)).await.expect("submit");
    let light = client.submit(sweep("light", 1.0)).await.expect("submit");
    for id in [heavy.id, light.id] {
        let done = client.wait(id).await.expect("wait");
        assert_eq!(done.state, SweepState::Completed, "{done:?}");
    }
    let heavy_trials = client.trials(heavy.id).await.expect("trials");
    let light_trials = client.trials(light.id).await.expect("trials");
    // The time both had trials waiting for a slot: from the light sweep's first start (the
    // heavy one, submitted first, started at once) to the heavy sweep's last start (after it
    // the heavy sweep has nothing left to queue, and its slots drain to the light one).
    let (heavy_first, heavy_last) = (first_start(&heavy_trials), last_start(&heavy_trials));
    let (light_first, light_last) = (first_start(&light_trials), last_start(&light_trials));
    assert!(heavy_last < light_last, "the heavy sweep finished first");
    let (from, to) = (heavy_first.max(light_first), heavy_last);
    assert!(
        to > from + 1000,
        "the sweeps overlapped for {} ms",
        to.saturating_sub(from)
    );
    let heavy_held = held_ms(&heavy_trials, from, to) as f64;
    let light_held = held_ms(&light_trials, from, to) as f64;
    let share = heavy_held / (heavy_held + light_held);
    eprintln!(
        "share 2 held {share:.3} of the slot time over {} ms",
        to - from
    );
    // 2 : 1 is two thirds; equal shares would give a half.
    assert!(
        (0.57..=0.80).contains(&share),
        "the sweep of share 2 held {share:.2} of the slot time over {} ms ({heavy_held} against {light_held} slot-ms)",
        to - from
    );
    client.close().await;
    cluster.shutdown().await;
}
