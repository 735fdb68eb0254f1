//! `flotilla study`: the ask/tell contract, run as separate processes on one study file.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output()
        .expect("flotilla runs")
}

fn ok(args: &[&str]) -> String {
    let output = flotilla(args);
    assert!(
        output.status.success(),
        "flotilla {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn error(args: &[&str]) -> String {
    let output = flotilla(args);
    assert!(!output.status.success(), "flotilla {args:?} should fail");
    String::from_utf8(output.stderr).expect("utf-8")
}

/// `study create` for a study file, its space file and direction, plus `extra` flags.
fn create<'a>(db: &'a str, space: &'a str, direction: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "study",
        "create",
        "--db",
        db,
        "--space",
        space,
        "--direction",
        direction,
    ];
    args.extend_from_slice(extra);
    args
}

fn write_space(dir: &Path) -> String {
    let path = dir.join("space.json");
    std::fs::write(
        &path,
        r#"{
  "x": {"type": "float", "low": -5.0, "high": 10.0, "log": false},
  "y": {"type": "float", "low": 0.0, "high": 15.0},
  "kind": {"type": "categorical", "choices": ["a", "b"]}
}"#,
    )
    .expect("write space");
    path.display().to_string()
}

fn branin(x: f64, y: f64) -> f64 {
    let pi = std::f64::consts::PI;
    (y - 5.1 / (4.0 * pi * pi) * x * x + 5.0 / pi * x - 6.0).powi(2)
        + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x.cos()
        + 10.0
}

#[test]
fn ask_tell_best_finds_branins_minimum_across_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let space = write_space(dir.path());
    let db = dir.path().join("branin.study").display().to_string();
    ok(&create(&db, &space, "minimize", &["--seed", "5"]));
    for _ in 0..30 {
        let asked: Value = serde_json::from_str(&ok(&["study", "ask", "--db", &db])).expect("json");
        let trial = asked["trial"].as_u64().expect("trial number").to_string();
        let params = &asked["params"];
        let (x, y) = (
            params["x"].as_f64().expect("x"),
            params["y"].as_f64().expect("y"),
        );
        assert!(
            (-5.0..=10.0).contains(&x) && (0.0..=15.0).contains(&y),
            "{asked}"
        );
        let kind = params["kind"].as_str().expect("a choice");
        // The categorical matters: "b" costs 5.
        let value = branin(x, y) + if kind == "b" { 5.0 } else { 0.0 };
        // Every trial must keep y <= 12 (constraint value y - 12 <= 0).
        let constraint = format!("y_max={}", y - 12.0);
        ok(&[
            "study",
            "tell",
            "--db",
            &db,
            "--trial",
            &trial,
            "--value",
            &value.to_string(),
            "--constraint",
            &constraint,
        ]);
    }
    let best: Value = serde_json::from_str(&ok(&["study", "best", "--db", &db])).expect("json");
    let value = best["value"].as_f64().expect("value");
    assert!(value < 1.0, "best after 30 trials: {best}");
    assert_eq!(best["params"]["kind"], "a");
    assert!(best["params"]["y"].as_f64().expect("y") <= 12.0);
}

#[test]
fn concurrent_askers_get_distinct_trials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let space = write_space(dir.path());
    let db = dir.path().join("parallel.study").display().to_string();
    ok(&create(&db, &space, "maximize", &["--sampler", "tpe"]));
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_flotilla"))
                .args(["study", "ask", "--db", &db])
                .output()
        })
        .collect();
    let mut trials: Vec<u64> = children
        .into_iter()
        .map(|output| {
            let output = output.expect("ask runs");
            assert!(output.status.success());
            let asked: Value = serde_json::from_slice(&output.stdout).expect("json");
            asked["trial"].as_u64().expect("number")
        })
        .collect();
    trials.sort_unstable();
    assert_eq!(trials, vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        "{\n  \"x\": {\"type\": \"float\", \"low\": 1.0,,}\n}",
    )
    .expect("write");
    let db = dir.path().join("s.study").display().to_string();
    let message = error(&create(&db, &broken.display().to_string(), "minimize", &[]));
    assert!(message.contains("broken.json:2:"), "{message}");

    let inverted = dir.path().join("inverted.json");
    std::fs::write(
        &inverted,
        r#"{"lr": {"type": "float", "low": 1.0, "high": 0.1, "log": true}}"#,
    )
    .expect("write");
    let message = error(&create(
        &db,
        &inverted.display().to_string(),
        "minimize",
        &[],
    ));
    assert!(message.contains("lr"), "{message}");

    let message = error(&create(&db, &write_space(dir.path()), "sideways", &[]));
    assert!(message.contains("sideways"), "{message}");
    let message = error(&create(
        &db,
        &write_space(dir.path()),
        "minimize",
        &["--sampler", "grid"],
    ));
    assert!(message.contains("grid"), "{message}");

    ok(&create(&db, &write_space(dir.path()), "minimize", &[]));
    let message = error(&[
        "study", "tell", "--db", &db, "--trial", "3", "--value", "1.0",
    ]);
    assert!(message.contains("trial 3"), "{message}");
    ok(&["study", "ask", "--db", &db]);
    let message = error(&[
        "study",
        "tell",
        "--db",
        &db,
        "--trial",
        "0",
        "--value",
        "1.0",
        "--constraint",
        "oops",
    ]);
    assert!(message.contains("NAME=VALUE"), "{message}");
    let message = error(&["study", "best", "--db", &db]);
    assert!(message.contains("no completed trial"), "{message}");
    ok(&[
        "study", "tell", "--db", &db, "--trial", "0", "--state", "failed",
    ]);
    let message = error(&[
        "study",
        "ask",
        "--db",
        &dir.path().join("missing").display().to_string(),
    ]);
    assert!(message.contains("missing"), "{message}");
}

/// The contract for trials stopped part way and for warm starts, from the shell: `tell
/// --state pruned --fidelity F` records a lower-fidelity result (never the best), bad
/// fidelities are named, and `create --warm-start DB` makes the new study's first trial come
/// from a model of the earlier study's results.
#[test]
fn pruned_trials_and_warm_starts_from_the_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let space = write_space(dir.path());
    let db = dir.path().join("earlier.study").display().to_string();
    ok(&create(&db, &space, "minimize", &["--seed", "4"]));
    let mut told = 0;
    for index in 0..24 {
        let asked: Value = serde_json::from_str(&ok(&["study", "ask", "--db", &db])).expect("json");
        let trial = asked["trial"].as_u64().expect("trial number").to_string();
        let params = &asked["params"];
        let (x, y) = (
            params["x"].as_f64().expect("x"),
            params["y"].as_f64().expect("y"),
        );
        let value = branin(x, y) + if params["kind"] == "b" { 5.0 } else { 0.0 };
        if index % 4 == 3 {
            // Stopped a fifth of the way, looking worse than it would have ended.
            let early = (value + 20.0).to_string();
            let message = error(&[
                "study", "tell", "--db", &db, "--trial", &trial, "--value", &early, "--state",
                "pruned",
            ]);
            assert!(message.contains("--fidelity"), "{message}");
            let message = error(&[
                "study",
                "tell",
                "--db",
                &db,
                "--trial",
                &trial,
                "--value",
                &early,
                "--state",
                "pruned",
                "--fidelity",
                "1.5",
            ]);
            assert!(message.contains("fidelity 1.5"), "{message}");
            ok(&[
                "study",
                "tell",
                "--db",
                &db,
                "--trial",
                &trial,
                "--value",
                &early,
                "--state",
                "pruned",
                "--fidelity",
                "0.2",
            ]);
        } else {
            ok(&[
                "study",
                "tell",
                "--db",
                &db,
                "--trial",
                &trial,
                "--value",
                &value.to_string(),
            ]);
            told += 1;
        }
    }
    assert_eq!(told, 18);
    let best: Value = serde_json::from_str(&ok(&["study", "best", "--db", &db])).expect("json");
    let best_trial = best["trial"].as_u64().expect("trial");
    assert_ne!(best_trial % 4, 3, "a pruned trial was named best: {best}");

    // Warm and cold studies of the same problem: the warm one's first trial is modelled.
    let first = |name: &str, extra: &[&str]| {
        let path = dir.path().join(name).display().to_string();
        ok(&create(&path, &space, "minimize", extra));
        let asked: Value =
            serde_json::from_str(&ok(&["study", "ask", "--db", &path])).expect("json");
        let params = &asked["params"];
        branin(
            params["x"].as_f64().expect("x"),
            params["y"].as_f64().expect("y"),
        ) + if params["kind"] == "b" { 5.0 } else { 0.0 }
    };
    let cold = first("cold.study", &["--seed", "8"]);
    let warm = first("warm.study", &["--seed", "8", "--warm-start", &db]);
    assert!(warm < cold, "warm first trial {warm}, cold {cold}");
    assert!(warm < 10.0, "warm first trial {warm}");
    let message = error(&create(
        &dir.path().join("maximizing.study").display().to_string(),
        &space,
        "maximize",
        &["--warm-start", &db],
    ));
    assert!(message.contains("other direction"), "{message}");
}

/// Asks once and returns the trial number (as text, for `tell`) and its parameters.
fn ask(db: &str) -> (String, Value) {
    let asked: Value = serde_json::from_str(&ok(&["study", "ask", "--db", db])).expect("json");
    let trial = asked["trial"].as_u64().expect("trial number").to_string();
    (trial, asked["params"].clone())
}

/// `study tell` with one `--value` per entry of `values`.
fn tell_values(db: &str, trial: &str, values: &[f64]) -> Vec<String> {
    let mut args: Vec<String> = ["study", "tell", "--db", db, "--trial", trial]
        .map(String::from)
        .to_vec();
    for value in values {
        args.extend(["--value".to_string(), value.to_string()]);
    }
    args
}

/// Two objectives from the shell: `--direction` per objective, `--value` per objective, and
/// `best` prints the Pareto front, one JSON line per trial; a tell with the wrong number of
/// values is refused and names the count.
#[test]
fn a_multi_objective_study_from_the_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let space = write_space(dir.path());
    let db = dir.path().join("two.study").display().to_string();
    ok(&create(
        &db,
        &space,
        "minimize",
        &["--direction", "maximize", "--seed", "3"],
    ));
    let objectives = |params: &Value| {
        let (x, y) = (
            params["x"].as_f64().expect("x"),
            params["y"].as_f64().expect("y"),
        );
        // Branin against closeness to (10, 15): the corner Branin does not favour.
        (branin(x, y), -((x - 10.0).powi(2) + (y - 15.0).powi(2)))
    };
    let mut told = Vec::new();
    for _ in 0..20 {
        let (trial, params) = ask(&db);
        let (first, second) = objectives(&params);
        let args = tell_values(&db, &trial, &[first, second]);
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        told.push((first, second));
    }
    let (trial, _) = ask(&db);
    let args = tell_values(&db, &trial, &[1.0]);
    let refused = error(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(refused.contains("needs 2 values"), "{refused}");

    let front: Vec<Value> = ok(&["study", "best", "--db", &db])
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert!(!front.is_empty());
    for trial in &front {
        let values = trial["values"].as_array().expect("values");
        let (first, second) = (
            values[0].as_f64().expect("first"),
            values[1].as_f64().expect("second"),
        );
        // Nothing told beats a front trial in both objectives (the second is maximized).
        assert!(
            !told
                .iter()
                .any(|(a, b)| (*a <= first && *b >= second) && (*a < first || *b > second)),
            "{trial} is dominated: {told:?}"
        );
    }
    // The front holds every non-dominated result told.
    let nondominated = told
        .iter()
        .filter(|(first, second)| {
            !told
                .iter()
                .any(|(a, b)| (a <= first && b >= second) && (a < first || b > second))
        })
        .count();
    assert_eq!(front.len(), nondominated);
}
