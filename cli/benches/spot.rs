//! Spot interruptions, measured on real processes: how long from an interruption notice to a
//! durable checkpoint of every trial running on the instance (against the two minutes the
//! notice gives), and how much training each interruption loses, next to the same
//! interruption without a notice (the agent killed, as when the instance vanishes first).
//!
//! Each round starts a fresh cluster on loopback: a coordinator, a spot agent with `--slots
//! SLOTS` watching an IMDS responder, and a sweep of SLOTS trials: built-in LSTM trials
//! (`--trial lstm`, periodic checkpoints every CHECKPOINT_EVERY epochs) or command trials
//! (`--trial command`: examples/trials/resumable.py, pure Python through the python/ helper,
//! committing a checkpoint every epoch and on SIGTERM, each epoch paced to
//! `--epoch-seconds`). Once every trial has reported NOTICE_AT epochs on the spot
//! agent, an on-demand agent joins and the spot agent gets a notice (or is SIGKILLed). The
//! round ends when the sweep completes; every trial must succeed with no retry spent.
//!
//! - notice → checkpoint: the spot agent's `flotilla_agent_interruption_checkpoint_seconds`
//!   (from the notice's posting, two minutes before its `time`, to every trial checkpointed
//!   and stopped: polling delay included).
//! - lost training: epochs the interrupted attempt had reported when the notice was posted
//!   (or the agent killed) minus the position the next attempt resumed from (optimizer steps
//!   in its resume line over steps per epoch; for command trials the `step` of the agent's
//!   "resuming from the trial's latest checkpoint" line), never below zero; in seconds at the
//!   resumed attempt's epoch time. A lower bound for kills (the attempt went on a little after the
//!   last report), exact in sign for notices (the resumed position is past every report).
//!
//! ```text
//! cargo bench -p flotilla --bench spot -- [--trial lstm|command] [--rounds 5] [--slots 2]
//!     [--epochs 60] [--checkpoint-every 20] [--notice-at 30] [--imds-interval 2s]
//!     [--epoch-seconds 0.5]
//! ```
//!
//! Run by bench/spot.sh; results in docs/benchmarks.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_harness::imds::ImdsResponder;
use flotilla_harness::{Cluster, scrape, small_lstm_trial, trials, wait_until};

#[derive(Clone, Copy, PartialEq)]
enum TrialKind {
    /// The built-in burn LSTM, checkpointing every `checkpoint_every` epochs.
    Lstm,
    /// examples/trials/resumable.py: a checkpoint every epoch and one on SIGTERM.
    Command,
}

struct Options {
    trial: TrialKind,
    epoch_seconds: f64,
    rounds: u32,
    slots: u32,
    epochs: u32,
    checkpoint_every: u32,
    notice_at: u32,
    imds_interval: String,
}

fn options() -> Options {
    let mut options = Options {
        trial: TrialKind::Lstm,
        epoch_seconds: 0.5,
        rounds: 5,
        slots: 2,
        epochs: 60,
        checkpoint_every: 20,
        notice_at: 30,
        imds_interval: "2s".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut args = args.iter().filter(|arg| *arg != "--bench");
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<u32>()
                .unwrap_or_else(|_| panic!("{flag} {value}: not a whole number"))
        };
        match flag.as_str() {
            "--rounds" => options.rounds = number(),
            "--slots" => options.slots = number(),
            "--epochs" => options.epochs = number(),
            "--checkpoint-every" => options.checkpoint_every = number(),
            "--notice-at" => options.notice_at = number(),
            "--imds-interval" => options.imds_interval = value.clone(),
            "--trial" => {
                options.trial = match value.as_str() {
                    "lstm" => TrialKind::Lstm,
                    "command" => TrialKind::Command,
                    other => panic!("--trial {other}: use lstm or command"),
                }
            }
            "--epoch-seconds" => {
                options.epoch_seconds = value
                    .parse()
                    .unwrap_or_else(|_| panic!("--epoch-seconds {value}: not a number"))
            }
            other => panic!("unknown option {other}"),
        }
    }
    assert!(
        options.notice_at < options.epochs,
        "--notice-at must be below --epochs"
    );
    options
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Notice,
    Kill,
}

struct Round {
    /// Notice posted → every trial checkpointed and stopped (notice rounds).
    notice_to_checkpoint: Option<f64>,
    /// Per trial: epochs lost and their seconds.
    lost: Vec<(f64, f64)>,
    /// Interruption → sweep completed.
    recovery: f64,
}

fn sweep_file(cluster: &Cluster, options: &Options) -> std::path::PathBuf {
    let path = cluster.path("spot.toml");
    let trial = match options.trial {
        TrialKind::Lstm => small_lstm_trial(options.epochs, options.checkpoint_every),
        TrialKind::Command => {
            let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/trials/resumable.py");
            format!(
                r#"[trial]
command = "python3"
args = ["{example}"]
metrics = ["epoch", "loss", "accuracy"]

[trial.env]
FLOTILLA_EPOCHS = "{epochs}"
FLOTILLA_EXAMPLE_EPOCH_SECONDS = "{seconds}"
"#,
                example = example.display(),
                epochs = options.epochs,
                seconds = options.epoch_seconds,
            )
        }
    };
    let (space, range) = match options.trial {
        TrialKind::Lstm => ("learning_rate", (0.001, 0.005)),
        TrialKind::Command => ("lr", (0.01, 0.5)),
    };
    let text = format!(
        r#"
name = "spot-bench"

[objective]
metric = "accuracy"
direction = "maximize"

[space.{space}]
type = "float"
low = {low}
high = {high}

[algorithm]
name = "random"
seed = 11

[budget]
max_trials = {slots}
max_parallel = {slots}

[retries]
max_retries = 0

{trial}"#,
        slots = options.slots,
        low = range.0,
        high = range.1,
    );
    std::fs::write(&path, text).expect("write the sweep file");
    path
}

/// A command trial's resume: `resuming from the trial's latest checkpoint attempt=ID#N
/// … step=S epoch=E` → (ID, S).
fn command_resume_lines(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter(|line| line.contains("resuming from the trial's latest checkpoint"))
        .filter_map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|part| part.strip_prefix(name))
                    .map(str::to_string)
            };
            let trial = field("attempt=")?.split('#').next()?.to_string();
            let steps = field("step=")?.parse().ok()?;
            Some((trial, steps))
        })
        .collect()
}

/// `resuming from URI (attempt A, S optimizer steps, E epochs done)` → (URI, S).
fn resume_lines(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("resuming from ")? + "resuming from ".len()..];
            let (uri, rest) = rest.split_once(" (attempt ")?;
            let steps = rest.split_once(", ")?.1.split_once(' ')?.0.parse().ok()?;
            Some((uri.to_string(), steps))
        })
        .collect()
}

fn round(mode: Mode, options: &Options) -> Round {
    let imds = ImdsResponder::start();
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    let artifacts = cluster.path("artifacts");
    let artifacts = artifacts.to_str().expect("utf-8 path").to_string();
    let imds_url = imds.url();
    cluster.start_agent_with(
        "spot",
        options.slots,
        &[
            "--artifacts",
            &artifacts,
            "--device",
            "cpu",
            "--imds",
            &imds_url,
            "--imds-interval",
            &options.imds_interval,
        ],
    );
    let metrics_port = cluster.agent("spot").metrics_port();
    cluster.wait_for_agents(1, Duration::from_secs(60));
    let sweep = sweep_file(&cluster, options);
    cluster.flotilla_ok(&["sweep", "submit", sweep.to_str().expect("utf-8")]);
    // Progress from the spot agent's own gauge: `flotilla_agent_trial_step{sweep,trial}` is
    // the last epoch each attempt reported.
    let mut reached: BTreeMap<String, f64> = BTreeMap::new();
    wait_until(
        "every trial to reach the notice epoch",
        Duration::from_secs(600),
        || {
            reached = scrape(metrics_port, "flotilla_agent_trial_step")
                .into_iter()
                .filter_map(|(series, step)| {
                    let id = series.split("trial=\"").nth(1)?.split('"').next()?;
                    Some((id.to_string(), step))
                })
                .collect();
            reached.len() == options.slots as usize
                && reached
                    .values()
                    .all(|epoch| *epoch >= f64::from(options.notice_at))
        },
    );
    let interrupted = Instant::now();
    match mode {
        Mode::Notice => imds.post_interruption(),
        Mode::Kill => cluster.agents[0].kill(),
    }
    cluster.start_agent_with(
        "on-demand",
        options.slots,
        &["--artifacts", &artifacts, "--device", "cpu"],
    );
    wait_until("the sweep to complete", Duration::from_secs(900), || {
        cluster.sweep_state("s1")["state"] == "Completed"
    });
    let recovery = interrupted.elapsed().as_secs_f64();

    let notice_to_checkpoint = match mode {
        Mode::Notice => {
            let count = scrape(
                metrics_port,
                "flotilla_agent_interruption_checkpoint_seconds_count",
            );
            assert_eq!(count.len(), 1, "{count:?}");
            assert_eq!(count[0].1, 1.0, "one interruption observed");
            scrape(
                metrics_port,
                "flotilla_agent_interruption_checkpoint_seconds_sum",
            )
            .first()
            .map(|(_, seconds)| *seconds)
        }
        Mode::Kill => None,
    };
    let log = cluster.agent_log("on-demand");
    let resumes = match options.trial {
        TrialKind::Lstm => resume_lines(&log),
        TrialKind::Command => command_resume_lines(&log),
    };
    let mut lost = Vec::new();
    for trial in trials(&cluster.expect_results("s1")) {
        let id = trial["id"].as_str().expect("trial id");
        assert_eq!(trial["state"], "succeeded", "{trial}");
        assert_eq!(trial["failures"], 0, "no retry spent: {trial}");
        assert_eq!(trial["agent"], "on-demand", "{trial}");
        let checkpoint = &trial["checkpoint"];
        let steps_per_epoch = checkpoint["step"].as_f64().expect("checkpoint step")
            / checkpoint["epoch"].as_f64().expect("checkpoint epoch");
        // The resume line names the checkpoint's key, which holds the trial id.
        let resumed_steps = resumes
            .iter()
            .find(|(uri, _)| match options.trial {
                TrialKind::Lstm => uri.contains(&format!("/{id}/")),
                TrialKind::Command => uri == id,
            })
            .map(|(_, steps)| *steps as f64)
            .unwrap_or(0.0);
        let resumed_epochs = resumed_steps / steps_per_epoch;
        let epoch_seconds = trial["duration_ms"].as_f64().expect("duration")
            / 1000.0
            / (f64::from(options.epochs) - resumed_epochs.floor()).max(1.0);
        let lost_epochs = (reached[id] - resumed_epochs).max(0.0);
        lost.push((lost_epochs, lost_epochs * epoch_seconds));
    }
    for agent in &mut cluster.agents {
        agent.kill();
    }
    Round {
        notice_to_checkpoint,
        lost,
        recovery,
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let options = options();
    let kind = match options.trial {
        TrialKind::Lstm => format!(
            "built-in LSTM trials, checkpoint every {} epochs",
            options.checkpoint_every
        ),
        TrialKind::Command => format!(
            "command trials (examples/trials/resumable.py, {} s per epoch), checkpoint every epoch and on SIGTERM",
            options.epoch_seconds
        ),
    };
    println!(
        "spot rounds: {} per mode, {} trials per spot agent, {kind}, {} epochs, interrupted at epoch {}, IMDS polled every {}",
        options.rounds, options.slots, options.epochs, options.notice_at, options.imds_interval
    );
    println!(
        "| mode | round | notice → every trial checkpointed, s | lost epochs per trial | lost training s per trial | interruption → sweep done, s |"
    );
    println!("|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for mode in [Mode::Notice, Mode::Kill] {
        let name = match mode {
            Mode::Notice => "notice",
            Mode::Kill => "killed, no notice",
        };
        let mut to_checkpoint = Vec::new();
        let mut lost_seconds = Vec::new();
        for number in 1..=options.rounds {
            let round = round(mode, &options);
            let lost_epochs: Vec<String> = round
                .lost
                .iter()
                .map(|(epochs, _)| format!("{epochs:.2}"))
                .collect();
            let lost: Vec<String> = round
                .lost
                .iter()
                .map(|(_, seconds)| format!("{seconds:.1}"))
                .collect();
            println!(
                "| {name} | {number} | {} | {} | {} | {:.1} |",
                round
                    .notice_to_checkpoint
                    .map(|seconds| format!("{seconds:.2}"))
                    .unwrap_or_else(|| "–".into()),
                lost_epochs.join(", "),
                lost.join(", "),
                round.recovery
            );
            to_checkpoint.extend(round.notice_to_checkpoint);
            lost_seconds.extend(round.lost.iter().map(|(_, seconds)| *seconds));
        }
        summary.push((name, to_checkpoint, lost_seconds));
    }
    println!();
    println!(
        "| mode | notice → checkpoint p50 s | p99 s | max s | p99 / 120 s notice | lost training per trial, mean s | max s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, to_checkpoint, lost) in summary {
        let checkpoint = if to_checkpoint.is_empty() {
            "– | – | – | –".to_string()
        } else {
            let p99 = percentile(&to_checkpoint, 0.99);
            format!(
                "{:.2} | {p99:.2} | {:.2} | {:.3}",
                percentile(&to_checkpoint, 0.5),
                percentile(&to_checkpoint, 1.0),
                p99 / 120.0
            )
        };
        let mean = lost.iter().sum::<f64>() / lost.len().max(1) as f64;
        println!(
            "| {name} | {checkpoint} | {mean:.1} | {:.1} |",
            lost.iter().copied().fold(0.0, f64::max)
        );
    }
}
