//! Failover benchmark: how long a sweep stops dispatching when its leader is SIGKILLed, and
//! how long a SIGKILLed agent's trials wait before they run elsewhere.
//!
//! ```text
//! cargo build -p flotilla && cargo run -p flotilla-cluster-tests --bin failover-bench -- [KILLS] [TTL_SECS]
//! ```
//!
//! A real etcd, three coordinators (lease TTL as given, default 5 s) and three agents with two
//! slots each run a sweep of 0.2 s command trials, six at a time. The leader is killed KILLS
//! times (default 10), each time after the sweep made progress, and restarted as a follower.
//! Failover is measured from the kill to the first trial that starts more than 200 ms later
//! (earlier starts were placed by the killed leader just before it died) — the new leader's
//! first dispatch as the trials themselves see it. Then the leader is stopped gracefully
//! (SIGTERM) three times, measured the same way, and an agent is killed three times: from
//! the kill to the first start of a new attempt (an attempt number above 0). A lease under
//! 2 s runs etcd with a 500 ms election timeout (etcd grants no shorter lease otherwise).

use std::time::Duration;

use flotilla_harness::bench::{leader_change, now_ns, summary};
use flotilla_harness::{Cluster, run_events, wait_until};

fn main() {
    let mut args = std::env::args().skip(1);
    let kills: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let ttl = Duration::from_secs(args.next().and_then(|a| a.parse().ok()).unwrap_or(5));
    let mut cluster = Cluster::new(1, 3, ttl);
    for index in 0..3 {
        cluster.start_coordinator(index);
    }
    let (_, mut epoch) = cluster.wait_for_leader(0, Duration::from_secs(60));
    for name in ["a0", "a1", "a2"] {
        cluster.start_agent(name, 2);
    }
    cluster.wait_for_agents(3, Duration::from_secs(60));
    // More trials than the kills, stops and agent losses can use up, so the sweep never ends
    // before the last measurement.
    let trials = (kills as u32 + 10) * 60;
    let file = cluster.write_logged_sweep("bench", trials, 6, "0.2");
    let sweep = cluster.submit(&file);
    let runs = cluster.path("bench.runs");

    let mut failovers = Vec::new();
    for _ in 0..kills {
        failovers.push(leader_change(
            &mut cluster,
            &sweep,
            &mut epoch,
            |cluster, leader| cluster.kill_coordinator(leader),
        ));
    }
    // A graceful stop (SIGTERM): the leader gives its lease back and closes its connections,
    // so a follower takes over without waiting for the lease to expire.
    let mut handovers = Vec::new();
    for _ in 0..3 {
        handovers.push(leader_change(
            &mut cluster,
            &sweep,
            &mut epoch,
            |cluster, leader| {
                if let Some(mut process) = cluster.coordinators[leader].process.take() {
                    process.terminate();
                }
            },
        ));
    }

    let mut replacements = Vec::new();
    for round in 0..3 {
        let agent = round % 3;
        let before = cluster.progress(&sweep).map_or(0, |(_, done)| done);
        wait_until("progress", Duration::from_secs(120), || {
            cluster
                .progress(&sweep)
                .is_some_and(|(_, done)| done >= before + 12)
        });
        let killed_at = now_ns();
        if let Some(mut process) = cluster.agents[agent].process.take() {
            process.kill();
        }
        let mut first = None;
        wait_until(
            "a lost trial to start again",
            Duration::from_secs(120),
            || {
                first = run_events(&runs)
                    .iter()
                    .filter(|event| event.start && event.attempt > 0)
                    .filter_map(|event| event.at_ns)
                    .filter(|at| *at > killed_at)
                    .min();
                first.is_some()
            },
        );
        replacements.push(first.map_or(f64::NAN, |at| (at - killed_at) as f64 / 1e9));
        let name = cluster.agents[agent].name.clone();
        let slots = cluster.agents[agent].slots;
        cluster.agents.remove(agent);
        cluster.start_agent(&name, slots);
    }

    println!(
        "lease TTL {}s, agent timeout {}s, {} kills",
        ttl.as_secs(),
        cluster.agent_timeout.as_secs(),
        kills
    );
    summary("leader killed -> new leader's first dispatch", failovers);
    summary(
        "leader stopped (SIGTERM) -> new leader's first dispatch",
        handovers,
    );
    summary("agent killed -> its trial started elsewhere", replacements);
}
