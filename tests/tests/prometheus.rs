//! A real Prometheus (Debian's `prometheus`) scrapes a running cluster's coordinators and is
//! queried through its HTTP API for the trial and agent series the coordinators and the agents
//! export.

use std::process::Command;
use std::time::Duration;

use flotilla_harness::{Cluster, Process, free_tcp_port, http_get, url_encode, wait_until};
use serde_json::Value;

/// The value of an instant query's single sample, if there is exactly one.
fn query_one(prometheus: &str, query: &str) -> Option<f64> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", url_encode(query)),
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let answer: Value = serde_json::from_str(&body).ok()?;
    let samples = answer["data"]["result"].as_array()?;
    if samples.len() != 1 {
        return None;
    }
    samples[0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_trial_and_agent_series_from_the_coordinators() {
    let mut cluster = Cluster::new(1, 2, Duration::from_secs(2));
    cluster.start_coordinator(0);
    cluster.start_coordinator(1);
    cluster.wait_for_leader(0, Duration::from_secs(30));
    for name in ["a0", "a1"] {
        cluster.start_agent(name, 2);
    }
    cluster.wait_for_agents(2, Duration::from_secs(30));
    let file = cluster.write_logged_sweep("scraped", 12, 4, "0.1");
    let sweep = cluster.submit(&file);
    wait_until("the sweep to complete", Duration::from_secs(60), || {
        cluster
            .progress(&sweep)
            .is_some_and(|(state, _)| state == "Completed")
    });

    let targets = cluster
        .coordinators
        .iter()
        .map(|coordinator| format!("'{}'", coordinator.metrics))
        .collect::<Vec<_>>()
        .join(", ");
    let agent_targets = cluster
        .agents
        .iter()
        .map(|agent| format!("'{}'", agent.metrics))
        .collect::<Vec<_>>()
        .join(", ");
    let config = cluster.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flotilla-coordinator\n    static_configs:\n      - targets: [{targets}]\n  - job_name: flotilla-agent\n    static_configs:\n      - targets: [{agent_targets}]\n"
        ),
    )
    .expect("write prometheus.yml");
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("run promtool");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let address = format!("127.0.0.1:{}", free_tcp_port());
    let mut command = Command::new("prometheus");
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            cluster.path("tsdb").display()
        ))
        .arg(format!("--web.listen-address={address}"));
    let _prometheus = Process::spawn(&mut command, &cluster.path("prometheus.log"));

    let expectations = [
        ("sum(flotilla_trials{state=\"succeeded\"})", 12.0),
        (
            "sum(flotilla_trials_finished_total{outcome=\"succeeded\"})",
            12.0,
        ),
        ("sum(flotilla_agents{state=\"connected\"})", 2.0),
        ("sum(flotilla_slots{state=\"total\"})", 4.0),
        ("sum(flotilla_is_leader)", 1.0),
        ("count(up{job=\"flotilla-coordinator\"} == 1)", 2.0),
        ("sum(flotilla_dispatch_latency_seconds_count)", 12.0),
        // The agents' own series.
        ("count(up{job=\"flotilla-agent\"} == 1)", 2.0),
        ("sum(flotilla_agent_info)", 2.0),
        ("sum(flotilla_agent_connected)", 2.0),
        ("sum(flotilla_agent_slots{state=\"total\"})", 4.0),
        ("sum(flotilla_agent_slots{state=\"busy\"})", 0.0),
        (
            "sum(flotilla_agent_trials_finished_total{outcome=\"succeeded\"})",
            12.0,
        ),
        ("sum(flotilla_agent_metric_points_total)", 12.0),
    ];
    for (query, expected) in expectations {
        let mut seen = None;
        wait_until(
            &format!("Prometheus to answer {query} = {expected}"),
            Duration::from_secs(60),
            || {
                seen = query_one(&address, query);
                seen == Some(expected)
            },
        );
    }
    // The leader's epoch is a series too, and matches what the cluster reports.
    let (leader, epoch) = cluster.leader().expect("a leader");
    let exported = query_one(&address, "max(flotilla_leader_epoch)").expect("an epoch series");
    assert_eq!(exported, epoch as f64);

    // Health and readiness: both replicas answer; only the leader is ready, and the
    // follower names the leader.
    let follower = 1 - leader;
    for coordinator in &cluster.coordinators {
        let (status, body) = http_get(&coordinator.metrics, "/healthz").expect("healthz");
        assert_eq!((status, body.trim()), (200, "ok"));
    }
    let (status, body) =
        http_get(&cluster.coordinators[leader].metrics, "/readyz").expect("readyz");
    assert_eq!((status, body.trim()), (200, "leading"));
    let (status, body) =
        http_get(&cluster.coordinators[follower].metrics, "/readyz").expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&cluster.coordinators[leader].address),
        "the follower should name the leader: {body}"
    );
    // The web view's API, too, is the leader's: a follower names it.
    let (status, body) =
        http_get(&cluster.coordinators[follower].metrics, "/api/sweeps").expect("the API");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&cluster.coordinators[leader].address),
        "the follower should name the leader: {body}"
    );
    let (status, _) =
        http_get(&cluster.coordinators[leader].metrics, "/api/sweeps").expect("the API");
    assert_eq!(status, 200);

    // Per-trial series exist while attempts run and vanish when they end; GPU series are
    // absent (not zero) on a host without an NVIDIA driver.
    let file = cluster.write_logged_sweep("long", 2, 2, "300");
    let long = cluster.submit(&file);
    for (query, expected) in [
        ("count(flotilla_agent_trial_start_time_seconds)", 2.0),
        (
            "count(flotilla_agent_trial_last_progress_time_seconds)",
            2.0,
        ),
        ("sum(flotilla_agent_running_trials)", 2.0),
        ("sum(flotilla_agent_slots{state=\"busy\"})", 2.0),
    ] {
        wait_until(
            &format!("Prometheus to answer {query} = {expected}"),
            Duration::from_secs(60),
            || query_one(&address, query) == Some(expected),
        );
    }
    cluster.flotilla_ok(&["sweep", "cancel", &long]);
    wait_until(
        "the cancelled trials' series to go stale",
        Duration::from_secs(60),
        || {
            query_one(
                &address,
                "count(flotilla_agent_trial_start_time_seconds) or vector(0)",
            ) == Some(0.0)
        },
    );
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        assert_eq!(
            query_one(&address, "absent(flotilla_agent_gpu_utilization_ratio)"),
            Some(1.0),
            "no GPU here, so no GPU series"
        );
    }
}
