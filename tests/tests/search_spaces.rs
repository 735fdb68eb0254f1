//! Conditional parameters, warm starts and several objectives through the whole system: sweep
//! files submitted with the CLI to real coordinators (on a real etcd) whose agents run real
//! command trials.

use std::path::PathBuf;
use std::time::Duration;

use flotilla_harness::{Cluster, wait_until};

/// The trial: fails (exit 3) if `momentum` is given where it does not apply or missing where
/// it does, else reports (after `PAUSE` seconds) a loss that only sgd with momentum near 0.9
/// gets low.
const PROGRAM: &str = r#"
import json, os, time
time.sleep(float(os.environ["PAUSE"]))
params = json.loads(os.environ["FLOTILLA_PARAMS"])
sgd = params["opt"] == "sgd"
if sgd != ("momentum" in params) or sgd != ("FLOTILLA_PARAM_MOMENTUM" in os.environ):
    raise SystemExit(3)
lr = params["lr"]
loss = (lr - 0.3) ** 2 + (params["momentum"] - 0.9) ** 2 if sgd else 0.5 + (lr - 0.3) ** 2
print("@flotilla step=0 loss=%r" % loss, flush=True)
"#;

fn write_sweep(
    cluster: &Cluster,
    name: &str,
    extra: &str,
    algorithm: &str,
    trials: u32,
    pause: &str,
) -> PathBuf {
    let path = cluster.path(&format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
{extra}

[objective]
metric = "loss"
direction = "minimize"

[space.opt]
type = "categorical"
choices = ["sgd", "adam"]

[space.lr]
type = "float"
low = 0.0
high = 1.0

[space.momentum]
type = "float"
low = 0.0
high = 0.99
when = {{ opt = "sgd" }}

[algorithm]
name = "{algorithm}"
seed = 3

[budget]
max_trials = {trials}
max_parallel = 2

[trial]
command = "python3"
args = ["-c", '''{PROGRAM}''']
metrics = ["loss"]
timeout = "1m"
env = {{ PAUSE = "{pause}" }}
"#
        ),
    )
    .expect("write the sweep file");
    path
}

/// The line coordinator `index` logged when it started a warm-started sweep.
fn warm_line(cluster: &Cluster, index: usize) -> Option<String> {
    let log = cluster.path(&format!("{}.log", cluster.coordinators[index].name));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .find(|line| line.contains("warm start"))
        .map(str::to_string)
}

/// Conditional parameters reach command trials only where they apply; a warm start named by
/// name resolves to the earlier sweep's id, and a new leader that takes the warm-started
/// sweep over (the first one killed mid-sweep) starts it from the same earlier results.
#[test]
fn conditional_parameters_reach_trials_only_where_they_apply_and_warm_starts_resolve_by_name() {
    let mut cluster = Cluster::new(1, 2, Duration::from_secs(2));
    cluster.start_coordinator(0);
    let (first, epoch) = cluster.wait_for_leader(0, Duration::from_secs(30));
    cluster.start_coordinator(1);
    cluster.start_agent("a", 2);
    cluster.wait_for_agents(1, Duration::from_secs(30));

    // The earlier sweep: Sobol points over both branches.
    let earlier = cluster.submit(&write_sweep(&cluster, "cond-earlier", "", "sobol", 12, "0"));
    let results = cluster.wait_completed(&earlier, Duration::from_secs(180));
    let trials = results["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 12);
    let mut branches = [0, 0];
    for trial in trials {
        assert_eq!(trial["state"], "succeeded", "{trial}");
        let sgd = trial["params"]["opt"] == "sgd";
        assert_eq!(trial["params"].get("momentum").is_some(), sgd, "{trial}");
        branches[usize::from(sgd)] += 1;
    }
    assert!(
        branches[0] > 0 && branches[1] > 0,
        "one branch only: {branches:?}"
    );

    // A later sweep names it by name; the coordinator resolves the name to its id and the
    // sweep starts from its 12 results. Its leader is killed after its first trials finish.
    let later = cluster.submit(&write_sweep(
        &cluster,
        "cond-later",
        "warm_start = [\"cond-earlier\"]",
        "bayesian",
        8,
        "0.5",
    ));
    wait_until(
        "two trials of the warm-started sweep to finish",
        Duration::from_secs(60),
        || cluster.progress(&later).is_some_and(|(_, done)| done >= 2),
    );
    let line = warm_line(&cluster, first).expect("the first leader logged the warm start");
    assert!(line.contains(&format!("sources={earlier}")), "{line}");
    assert!(line.contains("results=12"), "{line}");
    cluster.kill_coordinator(first);
    let (second, _) = cluster.wait_for_leader(epoch, Duration::from_secs(30));
    assert_ne!(second, first);
    let results = cluster.wait_completed(&later, Duration::from_secs(180));
    // The new leader handed the taken-over sweep the same earlier results.
    let line = warm_line(&cluster, second).expect("the new leader logged the warm start");
    assert!(line.contains(&format!("sources={earlier}")), "{line}");
    assert!(line.contains("results=12"), "{line}");
    assert_eq!(results["trials"].as_array().expect("trials").len(), 8);
    assert!(
        results["trials"]
            .as_array()
            .expect("trials")
            .iter()
            .all(|trial| trial["state"] == "succeeded"),
        "{results}"
    );

    // An unknown reference is refused, naming the field.
    let output = cluster.flotilla(&[
        "sweep",
        "submit",
        write_sweep(
            &cluster,
            "cond-bad",
            "warm_start = [\"no-such-sweep\"]",
            "bayesian",
            2,
            "0",
        )
        .to_str()
        .expect("UTF-8"),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warm_start[0]: no sweep has the id or name 'no-such-sweep'"),
        "{stderr}"
    );
}

/// Two objectives that pull apart: the loss wants `x` near 0.7, the latency wants it small.
const TRADE_OFF: &str = r#"
import json, os
x = json.loads(os.environ["FLOTILLA_PARAMS"])["x"]
print("@flotilla step=0 loss=%r latency_ms=%r" % ((x - 0.7) ** 2, 1 + 10 * x), flush=True)
"#;

/// A multi-objective sweep through the whole system: its trials report both metrics, `sweep
/// best` answers with the Pareto front (exactly the results no other dominates), and the
/// report lists and draws the front.
#[test]
fn a_multi_objective_sweep_answers_best_with_its_pareto_front() {
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    cluster.start_coordinator(0);
    cluster.wait_for_leader(0, Duration::from_secs(30));
    cluster.start_agent("a", 2);
    cluster.wait_for_agents(1, Duration::from_secs(30));
    let path = cluster.path("trade-off.toml");
    std::fs::write(
        &path,
        format!(
            r#"name = "trade-off"

[objective]
metric = "loss"
direction = "minimize"

[[objective.also]]
metric = "latency_ms"
direction = "minimize"

[space.x]
type = "float"
low = 0.0
high = 1.0

[algorithm]
name = "bayesian"
seed = 5
initial_trials = 4

[budget]
max_trials = 12
max_parallel = 2

[trial]
command = "python3"
args = ["-c", '''{TRADE_OFF}''']
metrics = ["loss", "latency_ms"]
timeout = "1m"
"#
        ),
    )
    .expect("write the sweep file");
    let sweep = cluster.submit(&path);
    let results = cluster.wait_completed(&sweep, Duration::from_secs(180));
    let points: Vec<(f64, f64)> = results["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|trial| {
            assert_eq!(trial["state"], "succeeded", "{trial}");
            (
                trial["metrics"]["loss"].as_f64().expect("loss"),
                trial["metrics"]["latency_ms"].as_f64().expect("latency"),
            )
        })
        .collect();
    let dominated = |(loss, latency): (f64, f64)| {
        points
            .iter()
            .any(|(l, t)| *l <= loss && *t <= latency && (*l < loss || *t < latency))
    };

    let best: serde_json::Value =
        serde_json::from_str(&cluster.flotilla_ok(&["sweep", "best", &sweep, "--json"]))
            .expect("JSON");
    let front = best.as_array().expect("the front, an array");
    let expected = points.iter().filter(|point| !dominated(**point)).count();
    assert_eq!(front.len(), expected, "{best}");
    for trial in front {
        let point = (
            trial["metrics"]["loss"].as_f64().expect("loss"),
            trial["metrics"]["latency_ms"].as_f64().expect("latency"),
        );
        assert!(!dominated(point), "{trial}");
    }
    let ids: Vec<&str> = front
        .iter()
        .map(|trial| trial["id"].as_str().expect("id"))
        .collect();
    let listed: Vec<&str> = results["sweep"]["front"]
        .as_array()
        .expect("the results name the front")
        .iter()
        .map(|id| id.as_str().expect("id"))
        .collect();
    assert_eq!(ids, listed);

    let text = cluster.flotilla_ok(&["sweep", "best", &sweep]);
    assert!(text.contains("latency_ms (min)"), "{text}");
    let report = cluster.path("trade-off.html");
    cluster.flotilla_ok(&[
        "sweep",
        "report",
        &sweep,
        "--out",
        report.to_str().expect("UTF-8"),
    ]);
    let html = std::fs::read_to_string(&report).expect("the report");
    assert!(html.contains("data-plot=\"front\""));
    assert_eq!(html.matches("data-front=\"true\"").count(), expected);
}
