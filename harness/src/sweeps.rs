//! Sweep files the tests and benchmarks share, and checks of their results.

use std::path::PathBuf;

use serde_json::Value;

use crate::cluster::Cluster;

/// A `[trial]` of the built-in LSTM classifier small enough for a CPU (800 series of 32
/// steps, 32 hidden units), checkpointing every `checkpoint_every` epochs.
pub fn small_lstm_trial(epochs: u32, checkpoint_every: u32) -> String {
    format!(
        r#"[trial]
trainer = "lstm_classifier"

[trial.settings]
samples = 800
seq_len = 32
hidden_size = 32
num_heads = 2
epochs = {epochs}
checkpoint_every = {checkpoint_every}
"#
    )
}

/// A sweep of one trial, maximizing `accuracy` at a fixed learning rate, with `trial` as
/// its `[trial]` table (and what follows it).
pub fn one_trial_sweep(name: &str, trial: &str) -> String {
    format!(
        r#"
name = "{name}"

[objective]
metric = "accuracy"
direction = "maximize"

[space.learning_rate]
type = "categorical"
choices = [0.003]

[budget]
max_trials = 1
max_parallel = 1

{trial}"#
    )
}

impl Cluster {
    /// Writes `text` to `<name>` in the cluster's directory; its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write a file of the cluster");
        path
    }

    /// `<name>.toml`: one small LSTM trial of `epochs` epochs with a checkpoint every epoch.
    pub fn write_lstm_sweep(&self, name: &str, epochs: u32) -> PathBuf {
        self.write_file(
            &format!("{name}.toml"),
            &one_trial_sweep(name, &small_lstm_trial(epochs, 1)),
        )
    }

    /// `<name>.toml`: `trials` command trials (`parallel` at once) that sleep `sleep`
    /// seconds, print a line, and report `loss = x` for x searched in [1, 100].
    pub fn write_sweep(&self, name: &str, trials: u32, parallel: u32, sleep: &str) -> PathBuf {
        let space = "[space.kind]\ntype = \"categorical\"\nchoices = [\"a\", \"b\"]\n";
        let args =
            format!(r#""-c", "sleep {sleep}; echo working; echo '@flotilla step=0 loss={{x}}'""#);
        self.write_file(
            &format!("{name}.toml"),
            &loss_sweep(name, space, 3, trials, parallel, &args),
        )
    }

    /// A sweep of `trials` command trials that each log their start and end (with the trial
    /// id, attempt and a nanosecond timestamp) to `<dir>/<name>.runs`, sleep `sleep`, and
    /// report `loss = x`.
    pub fn write_logged_sweep(
        &self,
        name: &str,
        trials: u32,
        parallel: u32,
        sleep: &str,
    ) -> PathBuf {
        let runs = self.path(&format!("{name}.runs"));
        let script = self.write_file(
            &format!("{name}.sh"),
            &format!(
                r#"#!/bin/sh
log() {{ echo "$1 $FLOTILLA_TRIAL_ID $FLOTILLA_ATTEMPT $(date +%s%N) $2" >> {runs}; }}
trap 'log end stopped; exit 143' TERM
log start
sleep {sleep}
log end ok
echo "@flotilla step=0 loss=$1"
"#,
                runs = runs.display()
            ),
        );
        let args = format!(r#""{}", "{{x}}""#, script.display());
        self.write_file(
            &format!("{name}.toml"),
            &loss_sweep(name, "", 11, trials, parallel, &args),
        )
    }
}

/// A random-search sweep of `sh` command trials minimizing `loss`, x searched in [1, 100]
/// (plus the `space` tables given), with `args` as the trial's argument list.
fn loss_sweep(
    name: &str,
    space: &str,
    seed: u64,
    trials: u32,
    parallel: u32,
    args: &str,
) -> String {
    format!(
        r#"
name = "{name}"

[objective]
metric = "loss"
direction = "minimize"

[space.x]
type = "float"
low = 1.0
high = 100.0

{space}
[algorithm]
name = "random"
seed = {seed}

[budget]
max_trials = {trials}
max_parallel = {parallel}

[trial]
command = "sh"
args = [{args}]
metrics = ["loss"]
"#
    )
}

/// The trials of a results JSON.
pub fn trials(results: &Value) -> Vec<Value> {
    results["trials"].as_array().expect("trials array").clone()
}

/// Every trial succeeded exactly once: ids are unique, states final, counts agree.
pub fn assert_all_succeeded_once(results: &Value, expected: usize) {
    let trials = trials(results);
    assert_eq!(trials.len(), expected, "trial count");
    let mut ids: Vec<&str> = trials
        .iter()
        .map(|trial| trial["id"].as_str().expect("id"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected, "duplicate trial ids");
    for trial in &trials {
        assert_eq!(trial["state"], "succeeded", "{trial}");
        assert_eq!(
            trial["failures"], 0,
            "a lost agent must not spend retries: {trial}"
        );
    }
    assert_eq!(results["sweep"]["counts"]["succeeded"], expected as u64);
    assert_eq!(results["sweep"]["counts"]["failed"], 0);
    assert_eq!(results["sweep"]["state"], "Completed");
}
