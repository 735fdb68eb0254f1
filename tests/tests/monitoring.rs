//! `monitoring/` stays true to the code: every metric the alert rules and the Grafana
//! dashboards name is one the coordinator or the agent exports, every dashboard parses and
//! every panel queries something, and every alert has a `promtool test rules` case.
//! (`promtool check config|rules` and `promtool test rules` themselves run in `.ci/run`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

/// Every family the binaries register, including those with no series yet.
fn exported() -> BTreeSet<&'static str> {
    let mut names: BTreeSet<&'static str> = flotilla_coordinator::metrics::METRICS
        .names
        .iter()
        .copied()
        .collect();
    names.extend(flotilla_agent::metrics::AgentMetrics::new().names.iter());
    names
}

/// The `flotilla_*` metric names a PromQL expression mentions.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in expr.match_indices("flotilla_") {
        let before = expr[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let name: String = expr[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        names.insert(name);
    }
    names
}

/// A histogram's series name back to its family.
fn family<'a>(name: &'a str, exported: &BTreeSet<&str>) -> &'a str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|base| exported.contains(base))
        .unwrap_or(name)
}

fn assert_exported(expr: &str, what: &str, exported: &BTreeSet<&str>) {
    for name in metric_names(expr) {
        assert!(
            exported.contains(family(&name, exported)),
            "{what} uses {name}, which neither the coordinator nor the agent exports \
             (exported: {exported:?})"
        );
    }
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .collect();
    files.sort();
    files
}

/// The rule files (not their unit tests), with comments dropped.
fn rule_files() -> Vec<(PathBuf, String)> {
    files(&monitoring().join("rules"), "yml")
        .into_iter()
        .filter(|path| !path.to_string_lossy().ends_with("_test.yml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read a rule file");
            let text = text
                .lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
            (path, text)
        })
        .collect()
}

#[test]
fn alert_rules_use_only_exported_metrics_and_every_alert_has_a_unit_test() {
    let exported = exported();
    let rules = rule_files();
    assert!(!rules.is_empty());
    let tests: String = files(&monitoring().join("rules"), "yml")
        .into_iter()
        .filter(|path| path.to_string_lossy().ends_with("_test.yml"))
        .map(|path| std::fs::read_to_string(path).expect("read a rule test"))
        .collect();
    let mut alerts = Vec::new();
    for (path, text) in &rules {
        assert_exported(text, &path.display().to_string(), &exported);
        for line in text.lines() {
            if let Some(name) = line.trim().strip_prefix("- alert:") {
                alerts.push(name.trim().to_string());
            }
        }
    }
    for alert in [
        "NoLeader",
        "LeaderFlapping",
        "AgentDown",
        "QueueBacklog",
        "TrainingStalled",
        "TrialTimeout",
        "HighGPUTemperature",
        "CriticalGPUTemperature",
        "HighGPUMemory",
        "GPUMemoryLeak",
        "LowGPUUtilization",
        "IdleGPUInstance",
    ] {
        assert!(alerts.iter().any(|name| name == alert), "no {alert} rule");
    }
    let cases = alert_cases(&tests);
    for alert in &alerts {
        let expected: Vec<bool> = cases
            .iter()
            .filter(|(name, _)| name == alert)
            .map(|(_, fires)| *fires)
            .collect();
        assert!(
            expected.contains(&true),
            "alert {alert} has no promtool test case in which it fires"
        );
        assert!(
            expected.contains(&false),
            "alert {alert} has no promtool test case in which it stays silent"
        );
    }
}

/// Each promtool `alert_rule_test` case as (alert name, whether it expects alerts): a case
/// names its alert, then `exp_alerts: []` when the alert must not fire.
fn alert_cases(tests: &str) -> Vec<(String, bool)> {
    let mut cases = Vec::new();
    let mut lines = tests.lines().map(str::trim).filter(|line| !line.is_empty());
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("alertname:") else {
            continue;
        };
        let expectation = lines.next().unwrap_or_default();
        if let Some(alerts) = expectation.strip_prefix("exp_alerts:") {
            cases.push((name.trim().to_string(), alerts.trim() != "[]"));
        }
    }
    cases
}

/// Every string under a key named `expr` or `query`, with where it was found.
fn queries(value: &Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{at}.{key}");
                match (key.as_str(), child) {
                    ("expr" | "query", Value::String(text)) => {
                        found.push((here, text.clone()));
                    }
                    _ => queries(child, &here, found),
                }
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                queries(child, &format!("{at}[{index}]"), found);
            }
        }
        _ => {}
    }
}

/// Panels, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        all.push(panel);
    }
    all
}

#[test]
fn grafana_dashboards_parse_and_every_panel_queries_an_exported_metric() {
    let exported = exported();
    let dashboards = files(&monitoring().join("grafana/dashboards"), "json");
    let titles: BTreeSet<String> = dashboards
        .iter()
        .map(|path| {
            path.file_stem()
                .expect("a file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for expected in [
        "flotilla-cluster",
        "flotilla-sweeps-training",
        "flotilla-gpus",
        "flotilla-cost",
    ] {
        assert!(titles.contains(expected), "no {expected}.json dashboard");
    }
    let mut uids = BTreeSet::new();
    for path in &dashboards {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path).expect("read a dashboard");
        let dashboard: Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{what} is not valid JSON: {error}"));
        let uid = dashboard["uid"].as_str().unwrap_or_default().to_string();
        assert!(!uid.is_empty(), "{what} has no uid");
        assert!(uids.insert(uid.clone()), "{what} repeats uid {uid}");
        assert!(dashboard["title"].is_string(), "{what} has no title");
        let mut found = Vec::new();
        queries(&dashboard, "", &mut found);
        for (at, expr) in &found {
            assert_exported(expr, &format!("{what} {at}"), &exported);
        }
        let panels = panels(&dashboard);
        assert!(!panels.is_empty(), "{what} has no panels");
        for panel in panels {
            let kind = panel["type"].as_str().unwrap_or_default();
            if matches!(kind, "row" | "text") {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            let targets: Vec<&str> = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|target| target["expr"].as_str())
                .collect();
            assert!(!targets.is_empty(), "{what}: panel {title:?} has no query");
            for expr in targets {
                let names = metric_names(expr);
                assert!(
                    !names.is_empty() || expr.contains("up{"),
                    "{what}: panel {title:?} queries no Flotilla metric: {expr}"
                );
            }
        }
    }
}

#[test]
fn the_name_scanner_finds_whole_names_only() {
    let names = metric_names(
        "sum(rate(flotilla_dispatch_latency_seconds_bucket[5m])) / my_flotilla_x + flotilla_trials{state=\"running\"}",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "flotilla_dispatch_latency_seconds_bucket",
            "flotilla_trials"
        ]
    );
}
