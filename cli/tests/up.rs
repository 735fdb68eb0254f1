//! `flotilla up` as the README's first command runs it: the embedded coordinator and local
//! agents (real QUIC on loopback, certificates made in memory) train the quickstart's LSTM
//! sweep with the built-in trainer and leave a leaderboard, ranked by the objective, and a
//! results file that agree with each other.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn repo_root() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    crate_dir.join("..")
}

/// Runs `flotilla up [SWEEP] --dir DIR` from the repository root, asserts it succeeded, and
/// returns its stdout and the results file it names.
fn run_up(sweep: Option<&std::path::Path>, dir: &std::path::Path) -> (String, serde_json::Value) {
    let mut command = Command::new(BIN);
    command.current_dir(repo_root()).arg("up");
    if let Some(sweep) = sweep {
        command.arg(sweep);
    }
    let output = command
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run flotilla up");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "flotilla up failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = stdout
        .lines()
        .find_map(|line| line.strip_prefix("results: "))
        .unwrap_or_else(|| panic!("no results path in:\n{stdout}"));
    let results = serde_json::from_str(&std::fs::read_to_string(path).expect("results file"))
        .expect("results JSON");
    (stdout, results)
}

#[test]
fn up_trains_the_quickstart_lstm_sweep_to_a_ranked_leaderboard_and_a_complete_results_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stdout, results) = run_up(None, dir.path());
    assert!(
        stdout.contains("Completed: ") && stdout.contains(" succeeded, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rank") && stdout.contains("accuracy"),
        "{stdout}"
    );

    let trials = results["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 24);

    // The HTML report it writes holds every trial and the four plots, with a learning curve
    // per trial that reported accuracy by epoch.
    let page = stdout
        .lines()
        .find_map(|line| line.strip_prefix("report: "))
        .unwrap_or_else(|| panic!("no report path in:\n{stdout}"));
    let html = std::fs::read_to_string(page).expect("the report");
    let table = &html[html
        .find("<table class=\"trials\">")
        .expect("a trials table")..];
    let table = &table[..table.find("</table>").expect("the table ends")];
    assert_eq!(table.matches("<tr>").count(), 1 + 24);
    for trial in trials {
        let id = trial["id"].as_str().expect("an id");
        assert!(table.contains(&format!("<td>{id}</td>")), "{id} missing");
    }
    for plot in ["history", "parallel", "importance", "curves"] {
        assert!(
            html.contains(&format!("data-plot=\"{plot}\"")),
            "no {plot} plot"
        );
    }
    let curves = &html[html.find("data-plot=\"curves\"").expect("curves")..];
    let curves = &curves[..curves.find("</svg>").expect("the plot ends")];
    assert_eq!(curves.matches("<polyline data-trial=").count(), 24);
    // Bayesian optimization with ASHA: poor trials stop after 2 or 4 of their 8 epochs, with
    // their metrics so far and the reason in the results file.
    let stopped: Vec<&serde_json::Value> = trials
        .iter()
        .filter(|trial| trial["state"] == "stopped")
        .collect();
    assert!(!stopped.is_empty(), "ASHA stopped no trial");
    for trial in &stopped {
        let message = trial["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("stopped early: ASHA rung"), "{trial}");
        let epoch = trial["metrics"]["epoch"].as_f64().expect("epoch");
        assert!(epoch < 8.0, "{trial}");
        assert!(trial["objective"].is_f64(), "{trial}");
    }
    for trial in trials.iter().filter(|trial| trial["state"] != "stopped") {
        assert_eq!(trial["state"], "succeeded", "{trial}");
        assert!(
            trial["params"].as_object().is_some_and(|p| p.len() == 4),
            "{trial}"
        );
        for metric in ["accuracy", "val_loss", "class_1_accuracy", "confusion_1_1"] {
            assert!(trial["metrics"][metric].is_f64(), "{metric}: {trial}");
        }
        assert!(
            trial["duration_ms"].is_u64() && trial["started_ms"].is_u64(),
            "{trial}"
        );
    }

    // The best trial named in the file is the maximum of accuracy among succeeded feasible
    // trials (early-stopped ones carry partial metrics and are not eligible), the earliest on
    // ties, and it is the one the last line of the leaderboard names.
    let best_id = results["sweep"]["best_trial"].as_str().expect("best trial");
    let objective = |trial: &serde_json::Value| trial["objective"].as_f64().expect("objective");
    let maximum = trials
        .iter()
        .filter(|trial| trial["state"] == "succeeded" && trial["feasible"] == true)
        .rev()
        .max_by(|a, b| objective(a).total_cmp(&objective(b)))
        .expect("a feasible trial");
    assert_eq!(maximum["id"], best_id);
    assert!(
        stdout.contains(&format!("best: {best_id} accuracy")),
        "{stdout}"
    );
    // The training was real: the best model beats always answering the majority class.
    let metrics = &maximum["metrics"];
    let cell = |name: &str| {
        metrics[format!("confusion_{name}")]
            .as_f64()
            .unwrap_or_else(|| panic!("confusion_{name} in {metrics}"))
    };
    let majority =
        (cell("0_0") + cell("0_1")) / ["0_0", "0_1", "1_0", "1_1"].map(cell).iter().sum::<f64>();
    assert!(objective(maximum) > majority + 0.05, "{maximum}");

    // The leaderboard's rows run 1, 2, … with the objective never increasing.
    let rows: Vec<(u64, String, f64)> = stdout
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim_matches(|c| c == '│' || c == ' ')
                .split('┆')
                .map(str::trim)
                .collect();
            let rank = cells.first()?.parse().ok()?;
            Some((rank, cells[1].to_string(), cells[2].parse().ok()?))
        })
        .collect();
    assert!(rows.len() >= 5, "{stdout}");
    assert_eq!(rows[0].1, best_id, "{stdout}");
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row.0, index as u64 + 1, "{stdout}");
    }
    // Feasible succeeded trials come first, ranked by accuracy.
    let feasible: Vec<&str> = trials
        .iter()
        .filter(|trial| trial["state"] == "succeeded" && trial["feasible"] == true)
        .filter_map(|trial| trial["id"].as_str())
        .collect();
    let leading: Vec<&(u64, String, f64)> = rows
        .iter()
        .take_while(|row| feasible.contains(&row.1.as_str()))
        .collect();
    assert!(!leading.is_empty(), "{stdout}");
    for pair in leading.windows(2) {
        assert!(pair[0].2 >= pair[1].2, "not ranked by accuracy:\n{stdout}");
    }
}

#[test]
fn the_median_rule_stops_trials_that_fall_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sweep = dir.path().join("median.toml");
    // Learning rates over four decades: the slow ones fall behind the median by epoch 2.
    std::fs::write(
        &sweep,
        r#"
name = "median-rule"

[objective]
metric = "val_loss"
direction = "minimize"

[space.learning_rate]
type = "float"
low = 0.00001
high = 0.1
log = true

[algorithm]
name = "random"
seed = 3

[early_stopping]
rule = "median"
resource = "epoch"
min_resource = 2
min_trials = 3

[budget]
max_trials = 12
max_parallel = 2

[trial]
trainer = "mlp_regressor"

[trial.settings]
samples = 256
epochs = 6
batch_size = 32
hidden_size = 16
checkpoint_every = 0
"#,
    )
    .expect("write sweep");
    let (stdout, results) = run_up(Some(&sweep), dir.path());
    let trials = results["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 12);
    let stopped: Vec<&serde_json::Value> = trials
        .iter()
        .filter(|trial| trial["state"] == "stopped")
        .collect();
    assert!(
        !stopped.is_empty(),
        "the median rule stopped no trial:\n{stdout}"
    );
    for trial in stopped {
        let message = trial["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("stopped early: median rule"), "{trial}");
        let epoch = trial["metrics"]["epoch"].as_f64().expect("epoch");
        assert!((2.0..6.0).contains(&epoch), "{trial}");
    }
    assert!(trials.iter().any(|trial| trial["state"] == "succeeded"));
}

#[test]
fn the_seeds_three_phase_pipeline_runs_as_one_sweep_and_names_each_phase_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sweep = repo_root().join("examples/lstm-pipeline.toml");
    let (stdout, results) = run_up(Some(&sweep), dir.path());
    assert!(
        stdout.contains("Completed: 15 succeeded, 0 failed"),
        "{stdout}"
    );
    let trials = results["trials"].as_array().expect("trials");
    let phases = results["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["time-warp", "architecture", "pretraining"]);

    let in_phase = |index: u64| -> Vec<&serde_json::Value> {
        trials.iter().filter(|t| t["phase"] == index).collect()
    };
    let accuracy = |trial: &serde_json::Value| trial["objective"].as_f64().expect("objective");
    let mut fixed = serde_json::Map::new();
    for (index, (phase, size)) in phases.iter().zip([4, 8, 3]).enumerate() {
        let members = in_phase(index as u64);
        assert_eq!(members.len(), size, "phase {index}");
        // Every trial runs with what the earlier phases' winners fixed.
        for trial in &members {
            for (name, value) in &fixed {
                assert_eq!(&trial["params"][name], value, "{name} in {trial}");
            }
        }
        // The phase's winner is its most accurate feasible trial (earliest on ties), and
        // the leaderboard names it.
        let winner = &phase["winner"];
        let best = members
            .iter()
            .filter(|t| t["state"] == "succeeded" && t["feasible"] == true)
            .rev()
            .max_by(|a, b| accuracy(a).total_cmp(&accuracy(b)))
            .expect("a feasible trial in the phase");
        assert_eq!(winner["trial"], best["id"], "phase {index}");
        let line = format!(
            "phase {}: winner {}",
            names[index],
            best["id"].as_str().unwrap_or_default()
        );
        assert!(stdout.contains(&line), "{line} missing from\n{stdout}");
        fixed = winner["params"].as_object().expect("winner params").clone();
    }
    assert!(fixed.contains_key("time_warp_sigma") && fixed.contains_key("pretrain_epochs"));

    // Phase 2's grid holds phase 1's winner again and phase 3's holds phase 2's: those two
    // results are reused, so the 15 trials are the seeds' 13 training runs.
    let reused: Vec<&serde_json::Value> = trials
        .iter()
        .filter(|t| {
            t["message"]
                .as_str()
                .is_some_and(|m| m.contains("its result is reused"))
        })
        .collect();
    assert_eq!(reused.len(), 2, "{reused:?}");
    assert!(reused.iter().all(|t| t["agent"].is_null()));
    assert_eq!(trials.iter().filter(|t| !t["agent"].is_null()).count(), 13);
}

#[test]
fn asha_promotion_pauses_trials_at_rungs_and_resumes_the_best_from_their_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sweep = dir.path().join("promotion.toml");
    // Rungs at 1 and 3 epochs, complete at 9 (η = 3): every trial trains one epoch and
    // pauses; the best third go on to 3 epochs, the best third of those to 9.
    std::fs::write(
        &sweep,
        r#"
name = "asha-promotion"

[objective]
metric = "val_loss"
direction = "minimize"

[space.learning_rate]
type = "float"
low = 0.00001
high = 0.1
log = true

[algorithm]
name = "sobol"
seed = 5

[early_stopping]
rule = "asha"
resource = "epoch"
min_resource = 1
max_resource = 9
reduction_factor = 3
promotion = true

[budget]
max_trials = 9
max_parallel = 3

[trial]
trainer = "mlp_regressor"

[trial.settings]
samples = 256
batch_size = 32
hidden_size = 16
checkpoint_every = 0
"#,
    )
    .expect("write sweep");
    let (stdout, results) = run_up(Some(&sweep), dir.path());
    assert!(stdout.contains("Completed: "), "{stdout}");
    let trials = results["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 9);
    assert_eq!(results["sweep"]["counts"]["failed"], 0);
    assert!(trials.iter().all(|trial| trial["failures"] == 0));
    assert_eq!(results["sweep"]["counts"]["paused"], 0);
    let resource_of = [1.0, 3.0, 9.0];
    let mut reached = [0usize; 3];
    for trial in trials {
        let rungs = trial["rungs"].as_array().expect("rungs").len();
        assert!((1..=2).contains(&rungs), "{trial}");
        let epoch = trial["metrics"]["epoch"].as_f64().expect("epoch");
        let attempt = trial["attempt"].as_u64().expect("attempt") as usize;
        let checkpoint = &trial["checkpoint"];
        match trial["state"].as_str() {
            // Promoted past both rungs: trained all 9 epochs over (at least) three attempts,
            // each resuming from the checkpoint the one before ended with.
            Some("succeeded") => {
                // (An attempt the agent refused, e.g. while its slot was still being freed,
                // is placed again under the next attempt number without spending retries.)
                assert_eq!((rungs, epoch), (2, 9.0), "{trial}");
                assert!(attempt >= 2, "{trial}");
                reached[2] += 1;
            }
            // Paused at its last rung and never promoted: the metrics are that rung's.
            Some("stopped") => {
                let message = trial["message"].as_str().unwrap_or_default();
                assert!(message.contains("not promoted"), "{trial}");
                assert_eq!(epoch, resource_of[rungs - 1], "{trial}");
                assert!(attempt >= rungs - 1, "{trial}");
                reached[rungs - 1] += 1;
            }
            other => panic!("unexpected state {other:?}: {trial}"),
        }
        // Each attempt's last checkpoint is the one the trial ended with.
        assert_eq!(
            checkpoint["attempt"].as_u64(),
            Some(attempt as u64),
            "{trial}"
        );
        assert_eq!(checkpoint["epoch"].as_f64(), Some(epoch), "{trial}");
    }
    // ASHA promotes at least ⌊9/3⌋ = 3 trials past the first rung and ⌊3/3⌋ = 1 to the end;
    // asynchronous decisions may promote a few more, never most.
    let past_first = reached[1] + reached[2];
    assert!((3..=5).contains(&past_first), "{reached:?}");
    assert!((1..=2).contains(&reached[2]), "{reached:?}");
    // Promotion is by rank: every trial promoted past the first rung beats, at that rung,
    // the median of those that were not.
    let first_rung = |trial: &serde_json::Value| trial["rungs"][0].as_f64().expect("rung 0");
    let mut left: Vec<f64> = trials
        .iter()
        .filter(|t| t["rungs"].as_array().is_some_and(|r| r.len() == 1))
        .map(first_rung)
        .collect();
    left.sort_by(f64::total_cmp);
    let median_left = left[left.len() / 2];
    for trial in trials
        .iter()
        .filter(|t| t["rungs"].as_array().is_some_and(|r| r.len() == 2))
    {
        assert!(first_rung(trial) <= median_left, "{trial} vs {left:?}");
    }
}

/// The agent processes of an autoscaled `up` are `flotilla agent … --certs DIR/certs …`.
fn agent_processes_under(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.join("certs").display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" agent ") && cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn up_autoscale_grows_local_agent_processes_for_a_burst_and_scales_back_to_zero() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(BIN)
        .current_dir(repo_root())
        .args(["up", "examples/burst.toml", "--autoscale", "--slots", "2"])
        .args(["--max-agents", "4", "--autoscale-interval", "500ms"])
        .args(["--scale-in-window", "3s", "--idle-grace", "2s"])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run flotilla up --autoscale");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "flotilla up --autoscale failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("sweep s1 Completed: 16 succeeded"),
        "{stdout}"
    );
    // The fleet starts empty, grows for the burst (8 trials at once need 4 agents of 2 slots)
    // and ends at zero.
    let sizes: Vec<(u32, u32)> = stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("fleet: ")?;
            let (running, rest) = rest.split_once(" agent(s) running, ")?;
            let (desired, _) = rest.split_once(" desired")?;
            Some((running.parse().ok()?, desired.parse().ok()?))
        })
        .collect();
    assert_eq!(sizes.first(), Some(&(0, 0)), "{stdout}");
    assert!(
        sizes
            .iter()
            .any(|&(running, desired)| running == 4 && desired == 4),
        "never reached 4 agents: {sizes:?}\n{stdout}"
    );
    assert_eq!(sizes.last(), Some(&(0, 0)), "{stdout}");
    assert!(stdout.contains("fleet scaled to zero"), "{stdout}");
    // Every agent process is gone, and each one ran trials.
    assert!(
        agent_processes_under(dir.path()).is_empty(),
        "{:?}",
        agent_processes_under(dir.path())
    );
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("agents"))
        .expect("agent logs")
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(logs.len(), 4, "one log per agent process started");
}
