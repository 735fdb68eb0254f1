//! Measuring helpers the benchmarks share.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Cluster, run_events, wait_until};

/// Unix nanoseconds now (the run log's clock).
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// The `p` quantile of `sorted` (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Prints `name: n p50 p99 max all` of durations in seconds.
pub fn summary(name: &str, mut seconds: Vec<f64>) {
    seconds.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.2}s p99={:.2}s max={:.2}s all={:?}",
        seconds.len(),
        percentile(&seconds, 0.5),
        percentile(&seconds, 0.99),
        seconds.last().copied().unwrap_or(f64::NAN),
        seconds
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
    );
}

/// Once the sweep (written as `bench`, so its run log is `bench.runs`) has made progress,
/// stops the leader with `stop`, measures the seconds from
/// then to the first trial start the new leader dispatched, and restarts the old leader as a
/// follower.
pub fn leader_change(
    cluster: &mut Cluster,
    sweep: &str,
    epoch: &mut u64,
    stop: impl FnOnce(&mut Cluster, usize),
) -> f64 {
    // Starts within this long after the stop were placed by the old leader.
    let guard = 200_000_000u128;
    let runs = cluster.path("bench.runs");
    let before = cluster.progress(sweep).map_or(0, |(_, done)| done);
    wait_until("progress", Duration::from_secs(120), || {
        cluster
            .progress(sweep)
            .is_some_and(|(_, done)| done >= before + 12)
    });
    let (leader, current) = cluster.wait_for_leader(*epoch - 1, Duration::from_secs(60));
    let stopped_at = now_ns();
    stop(cluster, leader);
    let mut first = None;
    wait_until(
        "the new leader's first dispatch",
        Duration::from_secs(120),
        || {
            first = run_events(&runs)
                .iter()
                .filter(|event| event.start)
                .filter_map(|event| event.at_ns)
                .filter(|at| *at > stopped_at + guard)
                .min();
            first.is_some()
        },
    );
    let (_, next) = cluster.wait_for_leader(current, Duration::from_secs(60));
    *epoch = next;
    cluster.start_coordinator(leader);
    first.map_or(f64::NAN, |at| (at - stopped_at) as f64 / 1e9)
}
