//! Scheduling overhead: how much of a sweep's wall time Flotilla itself costs.
//!
//! Runs an embedded cluster (a coordinator and `--agents` agents in this process, talking
//! QUIC with mutual TLS over loopback; every trial a real child process) and measures two
//! sweeps of command trials:
//!
//! - no-op trials (`true`): end-to-end throughput in trials per second;
//! - trials that sleep `--sleep-seconds`: makespan against the ideal
//!   `ceil(trials / slots) * sleep`, as overhead per trial and in percent.
//!
//! Dispatch latency is the time from the Scheduler's placement decision to the agent's
//! report that the process started (`TrialRecord::dispatch_latency_us`).
//!
//! ```text
//! cargo bench -p flotilla-sdk --features embedded --bench scheduling -- \
//!     --noop-trials 10000 --sleep-trials 1600 --sleep-seconds 1
//! ```
//!
//! Prints a Markdown table row per sweep for `docs/benchmarks.md`.

use std::time::{Duration, Instant};

use flotilla_protocol::messages::{SweepState, TrialState};
use flotilla_sdk::{LocalCluster, LocalClusterOptions, SweepBuilder};

struct Options {
    agents: u32,
    slots: u32,
    noop_trials: u32,
    sleep_trials: u32,
    sleep_seconds: f64,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        agents: 8,
        slots: 2,
        noop_trials: 10_000,
        sleep_trials: 1_600,
        sleep_seconds: 1.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        // `cargo bench` passes `--bench`; ignore it.
        if flag == "--bench" {
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => options.agents = value.parse()?,
            "--slots" => options.slots = value.parse()?,
            "--noop-trials" => options.noop_trials = value.parse()?,
            "--sleep-trials" => options.sleep_trials = value.parse()?,
            "--sleep-seconds" => options.sleep_seconds = value.parse()?,
            other => anyhow::bail!(
                "unknown option {other} (use --agents, --slots, --noop-trials, --sleep-trials, --sleep-seconds)"
            ),
        }
    }
    Ok(options)
}

struct Measured {
    trials: u32,
    succeeded: usize,
    wall: Duration,
    dispatch_us: Vec<u64>,
}

async fn run_sweep(
    cluster: &LocalCluster,
    name: &str,
    trials: u32,
    parallel: u32,
    program: &str,
    args: &[String],
) -> anyhow::Result<Measured> {
    let client = cluster.client().await?;
    let spec = SweepBuilder::new(name)
        .minimize("x")
        .float("x", 0.0, 1.0)
        .seed(1)
        .max_trials(trials)
        .max_parallel(parallel)
        .max_retries(0)
        .command(program, args.iter().cloned())
        // The programs report nothing; the sweep only needs a declared metric.
        .metrics(["x"])
        .build()?;
    let started = Instant::now();
    let summary = client.submit(spec).await?;
    let done = client.wait(summary.id).await?;
    let wall = started.elapsed();
    anyhow::ensure!(
        done.state == SweepState::Completed,
        "sweep ended {:?}",
        done.state
    );
    let records = client.trials(summary.id).await?;
    client.close().await;
    let succeeded = records
        .iter()
        .filter(|trial| trial.state == TrialState::Succeeded)
        .count();
    let mut dispatch_us: Vec<u64> = records
        .iter()
        .filter_map(|trial| trial.dispatch_latency_us)
        .collect();
    dispatch_us.sort_unstable();
    Ok(Measured {
        trials,
        succeeded,
        wall,
        dispatch_us,
    })
}

/// The floor under any process-per-trial scheduler on this machine: start `trials`
/// processes of `true`, `parallel` at a time, the way an agent does (own process group,
/// piped output read to the end, reaped), with no scheduler, network or store involved.
async fn spawn_baseline(trials: u32, parallel: u32) -> anyhow::Result<Measured> {
    use std::process::Stdio;
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..trials {
        let permit = semaphore.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let mut child = tokio::process::Command::new("true")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()?;
            let mut sink = Vec::new();
            if let Some(mut stdout) = child.stdout.take() {
                stdout.read_to_end(&mut sink).await?;
            }
            if let Some(mut stderr) = child.stderr.take() {
                stderr.read_to_end(&mut sink).await?;
            }
            let status = child.wait().await?;
            drop(permit);
            anyhow::Ok(status.success())
        });
    }
    let mut succeeded = 0;
    while let Some(result) = tasks.join_next().await {
        succeeded += usize::from(result??);
    }
    Ok(Measured {
        trials,
        succeeded,
        wall: started.elapsed(),
        dispatch_us: Vec::new(),
    })
}

/// The `fraction` percentile of sorted microsecond samples, in milliseconds; "–" when
/// there are none (the spawn baseline dispatches nothing).
fn percentile(sorted: &[u64], fraction: f64) -> String {
    if sorted.is_empty() {
        return "–".into();
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    format!("{:.2}", sorted[index] as f64 / 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let slots = options.agents * options.slots;
    let cluster = LocalCluster::start(LocalClusterOptions {
        agents: options.agents,
        slots_per_agent: options.slots,
        ..LocalClusterOptions::default()
    })
    .await?;
    // Let every agent register before the clock starts.
    let client = cluster.client().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.agents().await?.len() < options.agents as usize {
        anyhow::ensure!(Instant::now() < deadline, "agents did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.close().await;

    println!(
        "| sweep | trials | slots | wall s | trials/s | dispatch p50 ms | dispatch p99 ms | ideal s | overhead/trial ms | overhead % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    if options.noop_trials > 0 {
        let baseline = spawn_baseline(options.noop_trials, slots).await?;
        report("baseline: spawn `true` only", &baseline, slots, 0.0);
        let noop = run_sweep(&cluster, "noop", options.noop_trials, slots, "true", &[]).await?;
        report("no-op (`true`)", &noop, slots, 0.0);
    }
    if options.sleep_trials > 0 {
        let sleep = run_sweep(
            &cluster,
            "sleep",
            options.sleep_trials,
            slots,
            "sleep",
            &[options.sleep_seconds.to_string()],
        )
        .await?;
        let label = format!("sleep {} s", options.sleep_seconds);
        report(&label, &sleep, slots, options.sleep_seconds);
    }
    cluster.shutdown().await;
    Ok(())
}

fn report(label: &str, measured: &Measured, slots: u32, seconds: f64) {
    let wall = measured.wall.as_secs_f64();
    let waves = f64::from(measured.trials.div_ceil(slots));
    let ideal = waves * seconds;
    // Each slot runs `waves` trials back to back; what exceeds the ideal is overhead.
    let per_trial_ms = (wall - ideal) / waves * 1000.0;
    let percent = if ideal > 0.0 {
        format!("{:.2}", (wall - ideal) / ideal * 100.0)
    } else {
        "–".into()
    };
    println!(
        "| {label} | {} ({} ok) | {slots} | {wall:.2} | {:.0} | {} | {} | {ideal:.0} | {per_trial_ms:.2} | {percent} |",
        measured.trials,
        measured.succeeded,
        f64::from(measured.trials) / wall,
        percentile(&measured.dispatch_us, 0.50),
        percentile(&measured.dispatch_us, 0.99),
    );
}
