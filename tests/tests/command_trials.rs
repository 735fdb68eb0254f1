//! Command trials get the built-in trainers' guarantees, against a real etcd, a real
//! coordinator and real agents on loopback: the trial is examples/trials/resumable.py (pure
//! Python, through the python/ helper), checkpointing every epoch into
//! `$FLOTILLA_CHECKPOINT_DIR` and committing with `@flotilla checkpoint`.
//!
//! The program runs unchanged under a small wrapper that appends `<trial> <attempt> <epoch>` to a
//! progress file after each epoch's metric line has reached the agent, so a test can tell how
//! much work an attempt had done when its agent was lost, and where the next one began.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_harness::{Cluster, Moto, wait_until};
use flotilla_protocol::etcd_pki::EtcdCert;
use flotilla_protocol::messages::CheckpointRef;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The wrapper around the example, written into the cluster's folder; returns its path.
fn write_wrapper(cluster: &Cluster) -> PathBuf {
    let path = cluster.path("traced.py");
    let python = repo().join("python");
    let example = repo().join("examples/trials/resumable.py");
    std::fs::write(
        &path,
        format!(
            r#"import os, runpy, sys
sys.path.insert(0, {python:?})
import flotilla_trial

progress = os.environ["FLOTILLA_TEST_PROGRESS"]
report = flotilla_trial.report

def traced(step=None, **metrics):
    line = report(step=step, **metrics)  # raises once the agent is gone: nothing is traced
    with open(progress, "a") as file:
        file.write(f"{{flotilla_trial.trial_id()}} {{flotilla_trial.attempt()}} {{metrics['epoch']}}\n")
    return line

flotilla_trial.report = traced
sys.argv = [{example:?}]
runpy.run_path({example:?}, run_name="__main__")
"#,
            python = python.display().to_string(),
            example = example.display().to_string(),
        ),
    )
    .expect("write the wrapper");
    path
}

/// A sweep of resumable command trials writing their progress to `<name>.progress`;
/// `env` holds extra `[trial.env]` lines.
fn write_sweep(
    cluster: &Cluster,
    name: &str,
    space_and_budget: &str,
    trial_extra: &str,
    env: &str,
) -> PathBuf {
    let wrapper = write_wrapper(cluster);
    let progress = cluster.path(&format!("{name}.progress"));
    let path = cluster.path(&format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"

[objective]
metric = "accuracy"
direction = "maximize"

{space_and_budget}

[trial]
command = "python3"
args = ["{wrapper}"]
metrics = ["epoch", "loss", "accuracy"]
{trial_extra}

[trial.env]
FLOTILLA_TEST_PROGRESS = "{progress}"
{env}
"#,
            wrapper = wrapper.display(),
            progress = progress.display(),
        ),
    )
    .expect("write the sweep file");
    path
}

/// One trial of `epochs` epochs taking `seconds` each.
fn single_trial_sweep(cluster: &Cluster, name: &str, epochs: u32, seconds: f64) -> PathBuf {
    write_sweep(
        cluster,
        name,
        r#"[space.lr]
type = "categorical"
choices = [0.05]

[budget]
max_trials = 1
max_parallel = 1"#,
        "timeout = \"5m\"",
        // The example trains FLOTILLA_EPOCHS epochs (ASHA sets it; here the sweep does).
        &format!("FLOTILLA_EPOCHS = \"{epochs}\"\nFLOTILLA_EXAMPLE_EPOCH_SECONDS = \"{seconds}\""),
    )
}

/// Every traced epoch, per (trial, attempt), in the order the program traced them.
fn progress(cluster: &Cluster, name: &str) -> BTreeMap<(String, u32), Vec<u32>> {
    let text =
        std::fs::read_to_string(cluster.path(&format!("{name}.progress"))).unwrap_or_default();
    let mut runs: BTreeMap<(String, u32), Vec<u32>> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        if let (Some(trial), Some(Ok(attempt)), Some(Ok(epoch))) = (
            parts.next(),
            parts.next().map(str::parse),
            parts.next().map(str::parse),
        ) {
            runs.entry((trial.to_string(), attempt))
                .or_default()
                .push(epoch);
        }
    }
    runs
}

/// The example run straight through, outside any agent: its last metric line's values.
fn reference_metrics(lr: f64, epochs: u32) -> BTreeMap<String, f64> {
    let output = std::process::Command::new("python3")
        .arg(repo().join("examples/trials/resumable.py"))
        .env("FLOTILLA_PARAMS", format!("{{\"lr\": {lr}}}"))
        .env("FLOTILLA_EPOCHS", epochs.to_string())
        .env_remove("FLOTILLA_CHECKPOINT_DIR")
        .output()
        .expect("run the example");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rfind(|line| line.starts_with("@flotilla step="))
        .expect("a metric line");
    last.split_whitespace()
        .skip(1)
        .filter_map(|part| part.split_once('='))
        .filter(|(name, _)| *name != "step")
        .map(|(name, value)| (name.to_string(), value.parse().expect("a number")))
        .collect()
}

fn only_trial(cluster: &Cluster, sweep: &str) -> Value {
    let results = cluster.results(sweep).expect("results");
    results["trials"][0].clone()
}

/// The index of the agent running the sweep's only trial, once that trial's checkpoint holds
/// `epochs` epochs (and before the trial could finish).
fn agent_once_committed(cluster: &Cluster, sweep: &str, epochs: u64) -> usize {
    let mut agent = String::new();
    wait_until(
        &format!("the trial to commit {epochs} epochs"),
        Duration::from_secs(90),
        || {
            let trial = only_trial(cluster, sweep);
            assert_ne!(trial["state"], "succeeded", "finished too soon: {trial}");
            agent = trial["agent"].as_str().unwrap_or_default().to_string();
            trial["checkpoint"]["epoch"].as_u64().unwrap_or(0) >= epochs
        },
    );
    cluster
        .agents
        .iter()
        .position(|candidate| candidate.name == agent)
        .expect("the trial's agent")
}

fn start(cluster: &mut Cluster, agents: &[&str]) {
    cluster.start_coordinator(0);
    cluster.wait_for_leader(0, Duration::from_secs(30));
    for name in agents {
        cluster.start_agent(name, 1);
    }
    cluster.wait_for_agents(agents.len() as u64, Duration::from_secs(30));
}

/// Kills the agent running the sweep's only trial once attempt 0 has committed `after`
/// epochs, then checks that the other agent resumed it from its last checkpoint: at most one
/// epoch lost, no retry spent, and the same final metrics as a run that never stopped.
fn a_killed_agents_command_trial_resumes_elsewhere(cluster: &mut Cluster, survivor_log: &str) {
    const EPOCHS: u32 = 16;
    start(cluster, &["a", "b"]);
    let sweep = cluster.submit(&single_trial_sweep(cluster, "lost", EPOCHS, 0.5));
    let index = agent_once_committed(cluster, &sweep, 4);
    let victim = cluster.agents[index].name.clone();
    cluster.agents[index]
        .process
        .as_mut()
        .expect("the victim runs")
        .kill();
    let done_before = progress(cluster, "lost")
        .get(&("s1-t0".to_string(), 0))
        .and_then(|epochs| epochs.last().copied())
        .expect("attempt 0's progress");

    wait_until("the trial to finish", Duration::from_secs(120), || {
        cluster
            .progress(&sweep)
            .is_some_and(|(state, _)| state == "Completed")
    });
    let trial = only_trial(cluster, &sweep);
    let survivor = if victim == "a" { "b" } else { "a" };
    assert_eq!(trial["state"], "succeeded", "{trial}");
    assert_eq!(trial["agent"], survivor, "{trial}");
    assert_eq!(trial["failures"], 0, "agent loss spends no retry: {trial}");
    let attempt = trial["attempt"].as_u64().expect("attempt");
    assert!(attempt >= 1, "{trial}");
    assert_eq!(trial["checkpoint"]["attempt"], attempt, "{trial}");
    assert_eq!(trial["checkpoint"]["epoch"], EPOCHS, "{trial}");

    // Where the next attempt began: the epoch after its first traced one's predecessor.
    let traced = progress(cluster, "lost");
    let resumed_at = traced
        .get(&("s1-t0".to_string(), attempt as u32))
        .and_then(|epochs| epochs.first())
        .map(|epoch| epoch - 1)
        .expect("the last attempt's progress");
    assert!(
        resumed_at + 1 >= done_before,
        "attempt 0 had finished {done_before} epochs; attempt {attempt} began after {resumed_at}: {traced:?}"
    );
    assert!(
        resumed_at >= 4,
        "it resumed from a committed checkpoint: {traced:?}"
    );
    let log = std::fs::read_to_string(cluster.path(survivor_log.replace("{}", survivor).as_str()))
        .expect("the survivor's log");
    assert!(
        log.lines()
            .any(|line| line.contains("resuming from the trial's latest checkpoint")),
        "{log}"
    );

    // Exact resume: the same final metrics, bit for bit, as a run that never stopped.
    let reference = reference_metrics(0.05, EPOCHS);
    for (name, value) in &reference {
        assert_eq!(
            trial["metrics"][name].as_f64(),
            Some(*value),
            "{name}: {trial}"
        );
    }
}

#[test]
fn a_command_trial_on_a_killed_agent_resumes_from_its_last_checkpoint_on_another() {
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    a_killed_agents_command_trial_resumes_elsewhere(&mut cluster, "agent-{}.log");
}

/// The same with the checkpoints on S3 (moto): the two agents share nothing but the bucket
/// (and etcd, which fences the pointer).
#[test]
fn a_command_trial_resumes_through_s3_on_an_agent_that_shares_only_the_bucket() {
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    let moto = Moto::start(&cluster.path("moto.log"));
    moto.create_bucket("flotilla-trials");
    cluster.artifacts = Some("s3://flotilla-trials/team-a".into());
    cluster.agent_env = moto.environment();
    a_killed_agents_command_trial_resumes_elsewhere(&mut cluster, "agent-{}.log");
    let keys = moto.keys("flotilla-trials", "team-a/");
    assert!(
        keys.iter()
            .any(|key| key.ends_with(".tar") && key.contains("s1-t0")),
        "the checkpoints are in the bucket: {keys:?}"
    );
    assert!(
        !cluster.path("artifacts").exists(),
        "nothing went to a local folder"
    );
}

/// Every value the trial's `latest` pointer has held in etcd, oldest first (a watch from
/// revision 1 replays the key's history).
fn pointer_history(cluster: &Cluster, trial: &str) -> Vec<CheckpointRef> {
    let config = cluster.etcd().config(EtcdCert::Root);
    let key = config.checkpoint_latest_key(trial);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut client = flotilla_etcd::connect(&config)
            .await
            .expect("connect to etcd");
        let options = etcd_client::WatchOptions::new().with_start_revision(1);
        let mut stream = client.watch(key, Some(options)).await.expect("watch");
        let mut history = Vec::new();
        while let Ok(Ok(Some(answer))) =
            tokio::time::timeout(Duration::from_secs(2), stream.message()).await
        {
            for event in answer.events() {
                if let Some(kv) = event.kv()
                    && !kv.value().is_empty()
                {
                    history.push(serde_json::from_slice(kv.value()).expect("a JSON pointer"));
                }
            }
        }
        history
    })
}

/// An agent paused (SIGSTOP) while its program goes on: its lease runs out, the trial moves
/// to the other agent and goes on from the last checkpoint. When the paused agent wakes, its
/// program's pending `@flotilla checkpoint` is uploaded under a name of its own but refused
/// as the latest: the pointer never goes back to the stale attempt.
#[test]
fn a_stale_attempts_checkpoint_never_replaces_the_newer_one() {
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    start(&mut cluster, &["a", "b"]);
    let sweep = cluster.submit(&single_trial_sweep(&cluster, "stale", 24, 0.4));
    let index = agent_once_committed(&cluster, &sweep, 2);
    let stale = cluster.agents[index].name.clone();
    cluster.agents[index]
        .process
        .as_ref()
        .expect("runs")
        .pause();
    // The trial moves on: the other agent publishes a checkpoint of a later attempt.
    wait_until(
        "a later attempt to publish a checkpoint",
        Duration::from_secs(60),
        || {
            only_trial(&cluster, &sweep)["checkpoint"]["attempt"]
                .as_u64()
                .is_some_and(|attempt| attempt >= 1)
        },
    );
    cluster.agents[index]
        .process
        .as_ref()
        .expect("runs")
        .resume();
    let stale_log = cluster.path(&format!("agent-{stale}.log"));
    wait_until(
        "the stale attempt's commit to be refused",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&stale_log)
                .is_ok_and(|log| log.contains("checkpoint not published"))
        },
    );
    wait_until("the trial to finish", Duration::from_secs(120), || {
        cluster
            .progress(&sweep)
            .is_some_and(|(state, _)| state == "Completed")
    });
    let trial = only_trial(&cluster, &sweep);
    assert_eq!(trial["state"], "succeeded", "{trial}");
    let last = trial["attempt"].as_u64().expect("attempt") as u32;
    assert_eq!(trial["checkpoint"]["attempt"], last, "{trial}");
    assert_eq!(trial["checkpoint"]["epoch"], 24, "{trial}");

    let history = pointer_history(&cluster, "s1-t0");
    assert!(history.len() >= 3, "{history:?}");
    for pair in history.windows(2) {
        assert!(
            pair[1].attempt >= pair[0].attempt && pair[1].step > pair[0].step,
            "the pointer went back from {:?} to {:?}",
            pair[0],
            pair[1]
        );
    }
    assert_eq!(history.last().map(|latest| latest.attempt), Some(last));
    // The stale attempt did write its checkpoint object (under a name of its own), after the
    // newer attempt had published: it is in the store, never the pointer.
    let objects: Vec<String> = walk(&cluster.path("artifacts"));
    let first_newer = history
        .iter()
        .find(|pointer| pointer.attempt >= 1)
        .expect("a newer pointer");
    assert!(
        objects.iter().any(|object| {
            object.contains("/a0000-")
                && !history
                    .iter()
                    .any(|pointer| pointer.uri.ends_with(object.as_str()))
        }),
        "a stale object beside {first_newer:?}: {objects:?}"
    );
}

/// Every file under `dir`, as paths relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                found.push(format!("/{}", relative.display()));
            }
        }
    }
    found
}

/// Hyperband on command trials: trials are dealt to three brackets (resources 1 to 9, η = 3:
/// 9, 5 and 3 of every 17 trials); bracket 0 judges trials from epoch 1, bracket 1 only
/// from epoch 3, and bracket 2 runs every trial to the end. Every stop names its bracket and
/// happens at one of that bracket's rungs.
#[test]
fn hyperband_stops_trials_only_at_their_own_brackets_rungs() {
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    start(&mut cluster, &["a", "b"]);
    let file = write_sweep(
        &cluster,
        "hyperband",
        r#"[space.lr]
type = "float"
low = 0.0001
high = 1.0
log = true

[algorithm]
name = "random"
seed = 11

[early_stopping]
rule = "hyperband"
resource = "epoch"
min_resource = 1
max_resource = 9
reduction_factor = 3

[budget]
max_trials = 17
max_parallel = 2"#,
        "timeout = \"2m\"",
        "FLOTILLA_EPOCHS = \"9\"\nFLOTILLA_EXAMPLE_EPOCH_SECONDS = \"0.05\"",
    );
    let sweep = cluster.submit(&file);
    let results = cluster.wait_completed(&sweep, Duration::from_secs(240));
    let trials = results["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 17);
    let stopped: Vec<&Value> = trials
        .iter()
        .filter(|trial| trial["state"] == "stopped")
        .collect();
    assert!(!stopped.is_empty(), "Hyperband stopped nothing: {results}");
    for trial in &stopped {
        let message = trial["message"].as_str().unwrap_or_default();
        let rung_ok = if message.contains("Hyperband bracket 0:") {
            message.contains("(resource 1)") || message.contains("(resource 3)")
        } else if message.contains("Hyperband bracket 1:") {
            message.contains("(resource 3)")
        } else {
            false
        };
        assert!(rung_ok, "a stop outside its bracket's rungs: {trial}");
    }
    // Bracket 2's three trials (and the best of the others) ran all nine epochs.
    let complete = trials
        .iter()
        .filter(|trial| trial["state"] == "succeeded")
        .count();
    assert!(complete >= 3, "{complete} trials ran to the end: {results}");
}

/// ASHA's promotion form on command trials: each trial trains to its rung, commits and
/// pauses; a promoted trial resumes from that checkpoint (not from epoch 0) and trains on to
/// the next rung.
#[test]
fn asha_promotion_resumes_paused_command_trials_from_their_checkpoints() {
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    start(&mut cluster, &["a", "b"]);
    let file = write_sweep(
        &cluster,
        "asha",
        r#"[space.lr]
type = "float"
low = 0.001
high = 1.0
log = true

[algorithm]
name = "random"
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
max_parallel = 2"#,
        "timeout = \"2m\"",
        "FLOTILLA_EXAMPLE_EPOCH_SECONDS = \"0.1\"",
    );
    let sweep = cluster.submit(&file);
    wait_until("the sweep to finish", Duration::from_secs(240), || {
        cluster
            .progress(&sweep)
            .is_some_and(|(state, _)| state == "Completed")
    });
    let results = cluster.results(&sweep).expect("results");
    let trials = results["trials"].as_array().expect("trials");
    let promoted: Vec<&Value> = trials
        .iter()
        .filter(|trial| trial["attempt"].as_u64().unwrap_or(0) >= 1)
        .collect();
    assert!(!promoted.is_empty(), "no trial was promoted: {results}");
    assert!(
        trials.iter().any(|trial| trial["checkpoint"]["epoch"] == 9),
        "a trial reached the top rung: {results}"
    );
    for trial in &promoted {
        assert_eq!(trial["failures"], 0, "a promotion spends no retry: {trial}");
        assert_eq!(
            trial["checkpoint"]["attempt"], trial["attempt"],
            "its last attempt committed: {trial}"
        );
    }
    // Attempt 0 of every trial trains from epoch 1; each promoted attempt picks up one
    // past where the attempt before it paused (1 → 2, 3 → 4), never from the start.
    let runs = progress(&cluster, "asha");
    for ((trial, attempt), epochs) in &runs {
        let expected = match attempt {
            0 => 1,
            _ => {
                runs[&(trial.clone(), attempt - 1)]
                    .last()
                    .copied()
                    .expect("the previous attempt's epochs")
                    + 1
            }
        };
        assert_eq!(
            epochs[0], expected,
            "{trial} attempt {attempt} began at epoch {}: {runs:?}",
            epochs[0]
        );
    }
    assert!(
        runs.keys().any(|(_, attempt)| *attempt >= 1),
        "promoted attempts traced: {runs:?}"
    );

    // The report's learning curves mark each pause and join it to the resume.
    let report = cluster.path("asha-report.html");
    cluster.flotilla_ok(&[
        "sweep",
        "report",
        &sweep,
        "--out",
        report.to_str().expect("UTF-8 path"),
    ]);
    let html = std::fs::read_to_string(&report).expect("the report");
    let pauses = html.matches("class=\"pause\"").count();
    let promotions: usize = promoted
        .iter()
        .map(|trial| trial["attempt"].as_u64().unwrap_or(0) as usize)
        .sum();
    assert!(
        pauses >= promotions,
        "{pauses} pause markers for {promotions} promotions"
    );
    assert!(
        html.contains("paused at an ASHA rung"),
        "the curves' legend"
    );
}

/// GPUs per trial through the whole path (sweep file → coordinator placement → agent →
/// program): an agent declaring two GPUs (`--gpus 2`, no NVML needed) and four slots runs
/// 1-GPU trials two at a time, each alone on its GPU, and `cluster agents` shows them used;
/// a 2-GPU trial then gets both.
#[test]
fn each_trial_gets_gpus_of_its_own_and_placement_counts_free_ones() {
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    cluster.start_coordinator(0);
    cluster.wait_for_leader(0, Duration::from_secs(30));
    cluster.start_agent_with("gpu", 4, &["--gpus", "2"]);
    cluster.wait_for_agents(1, Duration::from_secs(30));
    let runs = cluster.path("gpus.runs");
    let script = cluster.path("gpus.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
echo "start $FLOTILLA_TRIAL_ID [$CUDA_VISIBLE_DEVICES] [$FLOTILLA_GPUS] $(date +%s%N)" >> {runs}
sleep 1.5
echo "end $FLOTILLA_TRIAL_ID [$CUDA_VISIBLE_DEVICES] [$FLOTILLA_GPUS] $(date +%s%N)" >> {runs}
echo "@flotilla step=0 loss=$1"
"#,
            runs = runs.display()
        ),
    )
    .expect("write the trial script");
    let sweep_file = |name: &str, trials: u32, gpus: u32| {
        let path = cluster.path(&format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"name = "{name}"

[objective]
metric = "loss"
direction = "minimize"

[space.x]
type = "float"
low = 1.0
high = 100.0

[algorithm]
name = "random"
seed = 3

[budget]
max_trials = {trials}
max_parallel = 4

[resources]
gpus = {gpus}

[trial]
command = "sh"
args = ["{script}", "{{x}}"]
metrics = ["loss"]
"#,
                script = script.display()
            ),
        )
        .expect("write the sweep file");
        path
    };
    let sweep = cluster.submit(&sweep_file("one-each", 4, 1));
    let mut seen_full = false;
    wait_until("the 1-GPU sweep to finish", Duration::from_secs(60), || {
        let agents = cluster.flotilla(&["cluster", "agents"]);
        seen_full |= String::from_utf8_lossy(&agents.stdout).contains("2/2 used");
        cluster
            .progress(&sweep)
            .is_some_and(|(state, done)| state == "Completed" && done == 4)
    });
    assert!(seen_full, "`cluster agents` showed both GPUs used");

    // (trial, visible, flotilla_gpus, start, end) from the trials' own log.
    let log = std::fs::read_to_string(&runs).expect("the trials' log");
    let mut spans: BTreeMap<String, (String, String, u128, u128)> = BTreeMap::new();
    for line in log.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [kind, trial, visible, gpus, at] = parts[..] else {
            panic!("odd line {line:?}")
        };
        let at: u128 = at.parse().expect("a timestamp");
        let span = spans
            .entry(trial.to_string())
            .or_insert_with(|| (visible.to_string(), gpus.to_string(), 0, 0));
        match kind {
            "start" => span.2 = at,
            _ => span.3 = at,
        }
    }
    assert_eq!(spans.len(), 4, "{log}");
    for (trial, (visible, gpus, _, _)) in &spans {
        assert!(
            visible == "[0]" || visible == "[1]",
            "{trial} sees one GPU: {log}"
        );
        assert_eq!(visible, gpus, "FLOTILLA_GPUS names the same GPUs: {log}");
    }
    // No two trials that ran at the same time shared a GPU, and at most two ran at once
    // although the agent has four slots.
    let spans: Vec<_> = spans.values().collect();
    // At most two at any instant: walk the starts and ends in time order (an end before a
    // start at the same instant). Counting every span that overlaps a given one would also
    // count two that ran one after the other beside it.
    let mut events: Vec<(u128, i32)> = spans
        .iter()
        .flat_map(|span| [(span.2, 1), (span.3, -1)])
        .collect();
    events.sort();
    let mut running = 0;
    for (_, change) in events {
        running += change;
        assert!(running <= 2, "more than two at once: {log}");
    }
    for (index, a) in spans.iter().enumerate() {
        for b in &spans[index + 1..] {
            if a.2 < b.3 && b.2 < a.3 {
                assert_ne!(a.0, b.0, "two running trials shared a GPU: {log}");
            }
        }
    }

    let _ = std::fs::remove_file(&runs);
    let sweep = cluster.submit(&sweep_file("both", 1, 2));
    wait_until("the 2-GPU trial to finish", Duration::from_secs(60), || {
        cluster
            .progress(&sweep)
            .is_some_and(|(state, done)| state == "Completed" && done == 1)
    });
    let log = std::fs::read_to_string(&runs).expect("the trial's log");
    assert!(log.starts_with("start s2-t0 [0,1] [0,1] "), "{log}");
}

/// A sweep's `[trial.env]` values reach the trial process and nobody else: the trial sees
/// the value (it fails otherwise), and a client reading the sweep back gets the names with
/// the values redacted.
#[test]
fn trial_environment_values_reach_the_trial_but_no_client() {
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    cluster.start_coordinator(0);
    cluster.wait_for_leader(0, Duration::from_secs(30));
    cluster.start_agent("a0", 1);
    cluster.wait_for_agents(1, Duration::from_secs(30));
    let secret = "s3cret-value-9f2c";
    // The trial compares with a file, so the value appears nowhere in the spec but the env.
    let expected = cluster.path("expected-key");
    std::fs::write(&expected, secret).expect("write the expected key");
    // The example sweep (two command trials printing `loss`), cut to one trial that
    // succeeds only when it sees the value.
    let mut spec = flotilla_protocol::spec::SweepSpec::example();
    spec.name = "secretive".into();
    spec.budget.max_trials = 1;
    spec.trial.args = vec![
        "-c".into(),
        format!(
            "test \"$API_KEY\" = \"$(cat {})\" && echo '@flotilla step=0 loss={{x}}'",
            expected.display()
        ),
    ];
    spec.trial.env.insert("API_KEY".into(), secret.into());
    let path = cluster.path("secretive.toml");
    std::fs::write(&path, spec.to_toml()).expect("write the sweep");
    let sweep = cluster.submit(&path);
    wait_until("the sweep to end", Duration::from_secs(60), || {
        cluster
            .progress(&sweep)
            .is_some_and(|(state, _)| state != "Running" && state != "Pending")
    });
    let results = cluster.results(&sweep).expect("results");
    assert_eq!(
        results["trials"][0]["state"], "succeeded",
        "the trial saw its API_KEY: {results}"
    );

    let identity =
        flotilla_protocol::tls::Identity::load_from_dir(&cluster.path("certs"), "client")
            .expect("the client certificate");
    let address = cluster.coordinators[0].address.parse().expect("address");
    let id = flotilla_protocol::SweepId(sweep.trim_start_matches('s').parse().expect("an id"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let detail = runtime.block_on(async {
        let client = flotilla_sdk::Client::connect(address, &identity)
            .await
            .expect("connect");
        client.detail(id).await.expect("the sweep's detail")
    });
    assert_eq!(
        detail.spec.trial.env.get("API_KEY").map(String::as_str),
        Some(flotilla_protocol::spec::REDACTED)
    );
    assert!(!format!("{detail:?}").contains(secret));
    let report = cluster.path("secretive.html");
    cluster.flotilla_ok(&[
        "sweep",
        "report",
        &sweep,
        "--out",
        report.to_str().expect("UTF-8"),
    ]);
    let html = std::fs::read_to_string(&report).expect("the report");
    assert!(!html.contains(secret));
}
