//! `flotilla up` as the README's first command runs it: the embedded coordinator and local
//! agents (real QUIC on loopback, certificates made in memory) train the quickstart's LSTM
//! sweep with the built-in trainer and leave a leaderboard, ranked by the objective, and a
//! results file that agree with each other.

use std::path::PathBuf;
use std::process::Command;

use flotilla_harness::{Process, free_tcp_port, processes_with_all};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn repo_root() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    crate_dir.join("..")
}

/// Runs `flotilla up [SWEEP] --dir DIR`, asserts it succeeded, and returns its stdout and the
/// results file it names. With a sweep file it runs from the repository root; without one
/// from DIR itself, an empty directory: the quickstart is built into the binary.
fn run_up(sweep: Option<&std::path::Path>, dir: &std::path::Path) -> (String, serde_json::Value) {
    let mut command = Command::new(BIN);
    command.arg("up");
    match sweep {
        Some(sweep) => command.current_dir(repo_root()).arg(sweep),
        None => command.current_dir(dir),
    };
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
    // confusion_{true}_{predicted}: a class's support is the sum of its row.
    let mut support = std::collections::BTreeMap::<String, f64>::new();
    for (name, count) in metrics.as_object().expect("metrics") {
        if let Some(cell) = name.strip_prefix("confusion_") {
            let (truth, _) = cell.split_once('_').expect("confusion_{true}_{predicted}");
            *support.entry(truth.to_string()).or_default() += count.as_f64().expect("count");
        }
    }
    assert_eq!(support.len(), 4, "four classes in {metrics}");
    let majority = support.values().copied().fold(0.0, f64::max) / support.values().sum::<f64>();
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
        // The rule decides at a resource before the last epoch; a trial this small may
        // train on a little before the stop reaches it, never back past the decision.
        let resource: f64 = message
            .split("at resource ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|number| number.trim().parse().ok())
            .unwrap_or_else(|| panic!("no resource in {message:?}"));
        assert!((2.0..6.0).contains(&resource), "{trial}");
        let epoch = trial["metrics"]["epoch"].as_f64().expect("epoch");
        assert!(epoch >= resource, "{trial}");
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
fn agent_processes_under(dir: &std::path::Path) -> Vec<u32> {
    let certs = dir.join("certs").display().to_string();
    processes_with_all(&["\0agent\0", &certs])
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

/// One HTTP/1.1 request on a fresh connection: (status, raw head, body).
fn http_post(address: &str, path: &str, body: &str, headers: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return (0, String::new(), String::new());
    };
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    );
    let mut text = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut text).is_err() {
        return (0, String::new(), String::new());
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// What `flotilla up --serve` prints up to its feedback-token line (it serves from then on).
fn serving_lines(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = String::new();
    loop {
        let line = received
            .recv_timeout(std::time::Duration::from_secs(300))
            .unwrap_or_else(|_| panic!("no token line from flotilla up --serve:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Authorization: Bearer ") {
            return seen;
        }
    }
}

/// `flotilla up --serve NAME` as a user runs it: the winner is registered and served by the
/// local agents (over mutual TLS) behind the router; predictions work through the router,
/// feedback needs the token the run prints, and Ctrl-C (SIGINT) ends it cleanly.
#[test]
fn up_serve_puts_the_winner_behind_the_router_with_a_feedback_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sweep = dir.path().join("churn.toml");
    std::fs::write(
        &sweep,
        r#"
name = "churn"
[objective]
metric = "accuracy"
direction = "maximize"
[space.learning_rate]
type = "categorical"
choices = [0.01]
[budget]
max_trials = 1
max_parallel = 1
[trial]
trainer = "lstm_classifier"
[trial.settings]
samples = 200
seq_len = 6
features = 2
hidden_size = 8
num_heads = 2
epochs = 1
checkpoint_every = 0
"#,
    )
    .expect("write the sweep");
    let router = format!("127.0.0.1:{}", free_tcp_port());
    let mut up = Process::spawn_piped(
        Command::new(BIN)
            .current_dir(dir.path())
            .arg("up")
            .arg(&sweep)
            .args(["--agents", "1", "--slots", "1", "--serve", "churn"])
            .args(["--router-listen", &router])
            .arg("--dir")
            .arg(dir.path().join("run")),
    );
    let seen = serving_lines(&mut up.child);
    let token = seen
        .split("Authorization: Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("a token")
        .to_string();
    assert!(seen.contains("serving churn@1.0.0"), "{seen}");
    assert!(token.starts_with("flt_"), "{token}");

    // Predictions through the router, once the agent has loaded the version (its endpoint
    // is HTTPS with mutual TLS; the router holds the router certificate).
    let row: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
    let body = serde_json::json!({ "model": "churn", "instances": [row] }).to_string();
    let started = std::time::Instant::now();
    let (head, answer) = loop {
        let (status, head, answer) = http_post(&router, "/v1/predict", &body, "");
        if status == 200 {
            break (head, answer);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no prediction: {status} {answer}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(answer.contains("\"predictions\""), "{answer}");
    let request_id = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-flotilla-request-id")
                .then(|| value.trim().to_string())
        })
        .expect("a request id");

    // Feedback: refused without the token, taken with it.
    let feedback = serde_json::json!({ "request_id": request_id, "labels": [1] }).to_string();
    let (status, _, answer) = http_post(&router, "/v1/feedback", &feedback, "");
    assert_eq!(status, 401, "{answer}");
    let (status, _, answer) = http_post(
        &router,
        "/v1/feedback",
        &feedback,
        "Authorization: Bearer flt_not-the-token\r\n",
    );
    assert_eq!(status, 401, "{answer}");
    let (status, _, answer) = http_post(
        &router,
        "/v1/feedback",
        &feedback,
        &format!("Authorization: Bearer {token}\r\n"),
    );
    assert_eq!(status, 200, "{answer}");

    let status = up.interrupt().expect("flotilla up exits on Ctrl-C");
    assert!(status.success(), "{status:?}");
}

/// `flotilla up examples/served-command.toml --serve demo`, as the README shows it: a
/// command sweep is tuned, its winner registered with the sweep's `[serving]` program and
/// served behind the router; predictions through the router are the program's own output,
/// and Ctrl-C stops the program with the rest.
#[test]
fn up_serve_runs_a_command_sweeps_own_serving_program_behind_the_router() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = format!("127.0.0.1:{}", free_tcp_port());
    let run = dir.path().join("run");
    // From an empty directory: the example's programs come out of the binary.
    let mut up = Process::spawn_piped(
        Command::new(BIN)
            .current_dir(dir.path())
            .args(["up", "--example", "served-command", "--serve", "demo"])
            .args(["--router-listen", &router])
            .arg("--dir")
            .arg(&run),
    );
    let seen = serving_lines(&mut up.child);
    assert!(seen.contains("serving demo@1.0.0"), "{seen}");
    assert!(
        seen.contains(&format!("http://{router}/v1/predict")),
        "{seen}"
    );

    // `up --serve` waits until a replica is ready, so the first request is answered.
    let body = r#"{"model": "demo", "instances": [[1.5, -0.3, 4.2, 0.7], [-2.0, 0.4, -9.0, 1.1]]}"#;
    let (status, head, answer) = http_post(&router, "/v1/predict", body, "");
    assert_eq!(status, 200, "{answer}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-flotilla-version: 1.0.0"),
        "{head}"
    );
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    let predictions = answer["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 2, "{answer}");
    assert!(
        predictions
            .iter()
            .all(|p| p.as_u64().is_some_and(|class| class < 3)),
        "the program's own classes: {answer}"
    );
    let kserve = r#"{"instances": [[1.5, -0.3, 4.2, 0.7]]}"#;
    let (status, _, answer) = http_post(&router, "/v1/models/demo:predict", kserve, "");
    assert_eq!(status, 200, "{answer}");

    let serving_dir = run.to_string_lossy().into_owned();
    let programs = || {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter(|entry| {
                std::fs::read(entry.path().join("environ"))
                    .is_ok_and(|environ| String::from_utf8_lossy(&environ).contains(&serving_dir))
                    && std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
                        String::from_utf8_lossy(&cmdline).contains("softmax_serve.py")
                    })
            })
            .count()
    };
    assert_eq!(programs(), 1, "one replica of the serving program runs");
    let status = up.interrupt().expect("flotilla up exits on Ctrl-C");
    assert!(status.success(), "{status:?}");
    assert_eq!(programs(), 0, "Ctrl-C stops the serving program");
}
