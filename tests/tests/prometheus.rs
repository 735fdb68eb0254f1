//! A real Prometheus (Debian's `prometheus`) scrapes a running cluster's coordinators and is
//! queried through its HTTP API for the trial and agent series the coordinator exports.

use std::process::Command;
use std::time::Duration;

use flotilla_cluster_tests::{Cluster, Process, free_tcp_port, http_get, url_encode, wait_until};
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
    let config = cluster.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flotilla-coordinator\n    static_configs:\n      - targets: [{targets}]\n"
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

    // Every series the alert rules use is one the coordinator exports.
    let (_, page) = http_get(&cluster.coordinators[leader].metrics, "/metrics").expect("scrape");
    let exported: std::collections::BTreeSet<&str> = page
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/rules/flotilla.yml"),
    )
    .expect("read the alert rules");
    let rules: String = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut used = std::collections::BTreeSet::new();
    for (start, _) in rules.match_indices("flotilla_") {
        let name: String = rules[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        used.insert(name);
    }
    assert!(!used.is_empty());
    for name in &used {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| exported.contains(base))
            .unwrap_or(name);
        assert!(
            exported.contains(family),
            "the alert rules use {name}, which the coordinator does not export: {exported:?}"
        );
    }
}
