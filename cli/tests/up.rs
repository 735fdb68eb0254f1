//! `flotilla up` as the README's first command runs it: the embedded coordinator and local
//! agents (real QUIC on loopback, certificates made in memory) run the quickstart sweep and
//! leave a leaderboard and a results file that agree with each other.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn repo_root() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    crate_dir.join("..")
}

#[test]
fn up_runs_the_quickstart_to_a_leaderboard_and_a_complete_results_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BIN)
        .current_dir(repo_root())
        .args(["up", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run flotilla up");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "flotilla up failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("Completed: 24 succeeded, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rank") && stdout.contains("val_loss"),
        "{stdout}"
    );

    let results = stdout
        .lines()
        .find_map(|line| line.strip_prefix("results: "))
        .unwrap_or_else(|| panic!("no results path in:\n{stdout}"));
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results).expect("results file"))
            .expect("results JSON");
    let trials = results["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 24);
    for trial in trials {
        assert_eq!(trial["state"], "succeeded", "{trial}");
        assert!(
            trial["params"].as_object().is_some_and(|p| p.len() == 4),
            "{trial}"
        );
        assert!(trial["metrics"]["val_loss"].is_f64(), "{trial}");
        assert!(
            trial["duration_ms"].is_u64() && trial["started_ms"].is_u64(),
            "{trial}"
        );
    }

    // The best trial named in the file is the feasible minimum of val_loss, and it is the
    // one the last line of the leaderboard names.
    let best_id = results["sweep"]["best_trial"].as_str().expect("best trial");
    let minimum = trials
        .iter()
        .filter(|trial| trial["feasible"] == true)
        .min_by(|a, b| {
            let a = a["objective"].as_f64().expect("objective");
            let b = b["objective"].as_f64().expect("objective");
            a.total_cmp(&b)
        })
        .expect("a feasible trial");
    assert_eq!(minimum["id"], best_id);
    assert!(
        stdout.contains(&format!("best: {best_id} val_loss")),
        "{stdout}"
    );
}
