//! Scale: a coordinator with many agents and many sweeps at once. Placement latency, the
//! coordinator's CPU and memory, and how each sweep's share of the slots compares with its
//! fair share.
//!
//! The coordinator and the client run in this process; `--agents` load agents run in a
//! child process (this program again, `--role agents`), each its own QUIC connection over
//! loopback with mutual TLS. A load agent says `Hello`, registers `--slots` slots, answers
//! every start at once with `TrialStarted`, holds the slot for the trial's length (`--trial-ms`
//! × (0.5 + x), x the trial's parameter in [0, 1]) and reports it `Succeeded`; it heartbeats
//! every second and answers stops. No trial process runs: this measures the control plane
//! (QUIC sessions, the Scheduler and placement, the Sweep actors, the write-ahead store).
//!
//! `--sweeps` sweeps are submitted at once, each with more trials queued than its fair share
//! of slots can run: every fifth sweep has share 2, every tenth (from the second) asks for
//! 4-slot trials, the rest 1 slot and share 1. After `--seconds` they are cancelled and
//! every trial record is read back. Placement latency is the trial's `dispatch_latency_us`
//! (placement decision → the agent's `TrialStarted`, the durable write of the placement
//! included), over the trials started after `--warmup` (the first placements fill the whole
//! cluster at once; their p99 is printed beside). Fair share: over the window from `--warmup` seconds after the submits to the
//! cancel, each sweep's slot-seconds against its weight's part of all slot-seconds used
//! (weighted dominant-resource fairness with slots the only resource; a 4-slot sweep is
//! owed slots, not trials).
//!
//! ```text
//! cargo bench -p flotilla-sdk --features embedded --bench scale -- \
//!     [--agents 1000] [--slots 8] [--sweeps 50] [--trial-ms 4000] [--seconds 60] [--warmup 15]
//!     [--svg DIR]
//! ```
//!
//! Prints Markdown table rows for `docs/benchmarks.md`. `--agents` and `--sweeps` take lists
//! (`--agents 100,300,1000`): each combination then runs in a fresh process of its own (so
//! one run's memory does not count in the next), and with `--svg DIR` the growth curves
//! against agents and against sweeps are drawn there (`scale-agents.svg`, `scale-sweeps.svg`:
//! dispatch p50/p99, coordinator CPU, peak RSS).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flotilla_coordinator::{Coordinator, CoordinatorConfig};
use flotilla_harness::Process;
use flotilla_protocol::messages::{
    AgentMessage, Command, CoordinatorCommand, Heartbeat, Metrics, Role, StopReason, TrialOutcome,
    TrialRecord,
};
use flotilla_protocol::tls::{self, ClusterCa, Identity};
use flotilla_protocol::{AttemptId, ParamValue, framing};
use flotilla_sdk::{AlgorithmName, Client, SweepBuilder, SweepId};
use tokio::sync::mpsc;

mod common;

#[derive(Clone, Debug)]
struct Options {
    agents: u32,
    slots: u32,
    sweeps: u32,
    /// More than one: run each combination of these in its own process.
    agent_counts: Vec<u32>,
    sweep_counts: Vec<u32>,
    svg: Option<PathBuf>,
    /// A single run's figures as JSON here (for the parent of a growth run).
    row_json: Option<PathBuf>,
    trial_ms: u64,
    seconds: f64,
    warmup: f64,
    /// `agents`: run the load agents (the child process).
    role: Option<String>,
    coordinator: Option<SocketAddr>,
    certs: Option<PathBuf>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        agents: 1000,
        slots: 8,
        sweeps: 50,
        agent_counts: vec![1000],
        sweep_counts: vec![50],
        svg: None,
        row_json: None,
        trial_ms: 4000,
        seconds: 60.0,
        warmup: 15.0,
        role: None,
        coordinator: None,
        certs: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--bench" {
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => options.agent_counts = list(&value)?,
            "--slots" => options.slots = value.parse()?,
            "--sweeps" => options.sweep_counts = list(&value)?,
            "--svg" => options.svg = Some(value.into()),
            "--row-json" => options.row_json = Some(value.into()),
            "--trial-ms" => options.trial_ms = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--warmup" => options.warmup = value.parse()?,
            "--role" => options.role = Some(value),
            "--coordinator" => options.coordinator = Some(value.parse()?),
            "--certs" => options.certs = Some(value.into()),
            other => bail!(
                "unknown option {other} (use --agents, --slots, --sweeps, --trial-ms, --seconds, --warmup, --svg)"
            ),
        }
    }
    anyhow::ensure!(
        options.seconds > options.warmup,
        "--seconds must exceed --warmup"
    );
    options.agents = options.agent_counts[0];
    options.sweeps = options.sweep_counts[0];
    anyhow::ensure!(
        options
            .agent_counts
            .iter()
            .chain(&options.sweep_counts)
            .all(|n| *n > 0)
            && options.slots > 0,
        "--agents, --slots and --sweeps must be at least 1"
    );
    Ok(options)
}

fn list(text: &str) -> anyhow::Result<Vec<u32>> {
    let values: Vec<u32> = text
        .split(',')
        .map(|value| value.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{text:?}: expected counts separated by commas"))?;
    anyhow::ensure!(!values.is_empty(), "{text:?}: no count");
    Ok(values)
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match options.role.as_deref() {
        Some("agents") => runtime.block_on(load_agents(options)),
        Some(other) => bail!("--role is agents, not {other}"),
        None if options.agent_counts.len() > 1 || options.sweep_counts.len() > 1 => {
            growth(&options)
        }
        None => runtime.block_on(run(options)),
    }
}

/// One run's figures, as a growth run collects them.
#[derive(serde::Serialize, serde::Deserialize)]
struct Row {
    agents: u32,
    sweeps: u32,
    placement_p50_ms: f64,
    placement_p99_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_percent: f64,
    peak_rss_mib: f64,
    trials_per_s: f64,
    fair_min: f64,
    fair_max: f64,
}

/// Runs every combination of `--agents` and `--sweeps` in a process of its own and draws
/// the growth curves.
fn growth(options: &Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for agents in &options.agent_counts {
        for sweeps in &options.sweep_counts {
            let json = dir.path().join(format!("{agents}-{sweeps}.json"));
            let status = std::process::Command::new(std::env::current_exe()?)
                .args([
                    "--agents",
                    &agents.to_string(),
                    "--sweeps",
                    &sweeps.to_string(),
                ])
                .args(["--slots", &options.slots.to_string()])
                .args(["--trial-ms", &options.trial_ms.to_string()])
                .args(["--seconds", &options.seconds.to_string()])
                .args(["--warmup", &options.warmup.to_string()])
                .arg("--row-json")
                .arg(&json)
                .status()?;
            anyhow::ensure!(
                status.success(),
                "the run with {agents} agents and {sweeps} sweeps failed"
            );
            let row: Row = serde_json::from_slice(&std::fs::read(&json)?)?;
            rows.push(row);
        }
    }
    println!(
        "| agents | sweeps | placement p50 / p99 ms (≤ bucket) | dispatch p50 ms | p99 ms | trials/s | coordinator CPU % | peak RSS MiB | held / fair |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} / {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2}–{:.2} |",
            row.agents,
            row.sweeps,
            row.placement_p50_ms,
            row.placement_p99_ms,
            row.p50_ms,
            row.p99_ms,
            row.trials_per_s,
            row.cpu_percent,
            row.peak_rss_mib,
            row.fair_min,
            row.fair_max
        );
    }
    if let Some(svg) = &options.svg {
        std::fs::create_dir_all(svg)?;
        let curves = [
            (
                "agents",
                options.agent_counts.len() > 1,
                "agents (× slots each)",
            ),
            (
                "sweeps",
                options.sweep_counts.len() > 1,
                "concurrent sweeps",
            ),
        ];
        for (name, varied, label) in curves {
            if !varied {
                continue;
            }
            let xs: Vec<String> = rows
                .iter()
                .map(|row| {
                    if name == "agents" {
                        row.agents
                    } else {
                        row.sweeps
                    }
                    .to_string()
                })
                .collect();
            let column = |pick: fn(&Row) -> f64| rows.iter().map(pick).collect::<Vec<f64>>();
            let latency = flotilla_report::plots::growth_curve(
                &format!("Placement and dispatch latency against {label}"),
                label,
                "milliseconds",
                &xs,
                &[
                    ("placement p99", column(|r| r.placement_p99_ms)),
                    ("dispatch p50", column(|r| r.p50_ms)),
                    ("dispatch p99", column(|r| r.p99_ms)),
                ],
            );
            let cost = flotilla_report::plots::growth_curve(
                &format!("Coordinator cost against {label}"),
                label,
                "% of a core / MiB",
                &xs,
                &[
                    ("CPU (% of a core)", column(|r| r.cpu_percent)),
                    ("peak RSS (MiB)", column(|r| r.peak_rss_mib)),
                ],
            );
            for (suffix, plot) in [("latency", latency), ("cost", cost)] {
                let path = svg.join(format!("scale-{name}-{suffix}.svg"));
                std::fs::write(&path, plot.svg)?;
                println!("chart: {}", path.display());
            }
        }
    }
    Ok(())
}

// ---- the load agents (child process) ----

async fn load_agents(options: Options) -> anyhow::Result<()> {
    let coordinator = options.coordinator.context("--coordinator")?;
    let certs = options.certs.clone().context("--certs")?;
    let identity = Identity::load_from_dir(&certs, "agent")?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(tls::client_config(&identity)?);
    let mut agents = tokio::task::JoinSet::new();
    for index in 0..options.agents {
        let endpoint = endpoint.clone();
        let name = format!("load-{index:04}");
        let slots = options.slots;
        let trial_ms = options.trial_ms;
        agents.spawn(async move {
            // A handshake can time out while a thousand are under way on two cores; a real
            // agent reconnects with a backoff too.
            for attempt in 1..=10 {
                match load_agent(&endpoint, coordinator, &name, slots, trial_ms).await {
                    Ok(()) => return,
                    Err(error) if attempt == 10 => eprintln!("{name}: {error:#}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500 * attempt)).await,
                }
            }
        });
        // Connect in a steady stream rather than a thousand handshakes at once.
        if index % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Runs until the parent kills this process.
    while agents.join_next().await.is_some() {}
    Ok(())
}

/// One load agent: registers, then holds each trial it is given for its length.
async fn load_agent(
    endpoint: &quinn::Endpoint,
    coordinator: SocketAddr,
    name: &str,
    slots: u32,
    trial_ms: u64,
) -> anyhow::Result<()> {
    let (_connection, mut send, mut recv) =
        common::register(endpoint, coordinator, name, slots).await?;
    // One writer owns the send stream; trial timers and the heartbeat queue messages to it.
    let (outbox, mut queued) = mpsc::unbounded_channel::<AgentMessage>();
    let writer = tokio::spawn(async move {
        let mut buffer = Vec::new();
        while let Some(message) = queued.recv().await {
            buffer.clear();
            framing::append_frame(&mut buffer, &message)?;
            while let Ok(more) = queued.try_recv() {
                framing::append_frame(&mut buffer, &more)?;
            }
            send.write_all(&buffer).await?;
        }
        anyhow::Ok(())
    });
    let running: Arc<std::sync::Mutex<HashMap<AttemptId, tokio::task::AbortHandle>>> =
        Arc::default();
    let heartbeat = {
        let outbox = outbox.clone();
        let running = running.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let attempts = running
                    .lock()
                    .map(|running| running.keys().copied().collect())
                    .unwrap_or_default();
                if outbox
                    .send(AgentMessage::Heartbeat(Heartbeat { running: attempts }))
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    while let Some(command) = framing::read_frame::<_, CoordinatorCommand>(&mut recv).await? {
        let start = match command.command {
            Command::StartTrial(start) => *start,
            Command::StartAttempt(attempt) => attempt.start,
            Command::StopTrial { attempt, reason } => {
                let timer = running.lock().ok().and_then(|mut r| r.remove(&attempt));
                if let Some(timer) = timer {
                    timer.abort();
                    let outcome = TrialOutcome::Stopped {
                        reason,
                        duration_ms: 0,
                    };
                    let _ = outbox.send(AgentMessage::TrialFinished { attempt, outcome });
                }
                continue;
            }
            Command::Drain => {
                let stopped: Vec<_> = running
                    .lock()
                    .map(|mut r| r.drain().collect())
                    .unwrap_or_default();
                for (attempt, timer) in stopped {
                    timer.abort();
                    let outcome = TrialOutcome::Stopped {
                        reason: StopReason::AgentShutdown,
                        duration_ms: 0,
                    };
                    let _ = outbox.send(AgentMessage::TrialFinished { attempt, outcome });
                }
                continue;
            }
            _ => continue,
        };
        let attempt = start.attempt;
        let x = match start.params.get("x") {
            Some(ParamValue::Float(x)) => *x,
            _ => 0.5,
        };
        let length = Duration::from_millis((trial_ms as f64 * (0.5 + x)) as u64);
        let _ = outbox.send(AgentMessage::TrialStarted { attempt });
        let timer = {
            let outbox = outbox.clone();
            let running = running.clone();
            tokio::spawn(async move {
                tokio::time::sleep(length).await;
                if running
                    .lock()
                    .ok()
                    .and_then(|mut r| r.remove(&attempt))
                    .is_some()
                {
                    let outcome = TrialOutcome::Succeeded {
                        metrics: Metrics::from([("loss".to_string(), x)]),
                        duration_ms: length.as_millis() as u64,
                    };
                    let _ = outbox.send(AgentMessage::TrialFinished { attempt, outcome });
                }
            })
        };
        if let Ok(mut running) = running.lock() {
            running.insert(attempt, timer.abort_handle());
        }
    }
    heartbeat.abort();
    writer.abort();
    Ok(())
}

// ---- the coordinator side (this process) ----

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

/// This process's resident and peak resident memory, MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct SweepPlan {
    name: String,
    share: f64,
    slots: u32,
}

fn plan(options: &Options) -> Vec<SweepPlan> {
    (0..options.sweeps)
        .map(|index| SweepPlan {
            name: format!("scale-{index:02}"),
            share: if index % 5 == 0 { 2.0 } else { 1.0 },
            slots: if index % 10 == 1 { 4 } else { 1 },
        })
        .collect()
}

async fn run(options: Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let ca = ClusterCa::generate("flotilla-scale-bench")?;
    ca.write_cluster_material(&certs, &[])?;
    let config = CoordinatorConfig::new(
        "127.0.0.1:0".parse()?,
        ca.issue(Role::Coordinator, "coordinator")?,
        dir.path().join("state.log"),
    );
    let idle_memory = memory_mib().0;
    let coordinator = Coordinator::start(config).await?;
    let address = coordinator.local_addr();
    let admin = ca.issue(Role::Admin, "bench")?;
    let mut child = spawn_agents(&options, address, &certs)?;
    let client = Client::connect(address, &admin).await?;
    let connecting = Instant::now();
    let deadline = connecting + Duration::from_secs(120);
    while client.cluster_status().await?.agents < options.agents {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the load agents did not all register"
        );
        if let Some(status) = child.child.try_wait()? {
            bail!("the load agents' process ended: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let registered_s = connecting.elapsed().as_secs_f64();
    let (connected_memory, _) = memory_mib();

    // Each sweep may have three times its fair share of slots unfinished (so every sweep
    // has trials queued beyond its share, and they compete), and has trials enough not to
    // run out in `--seconds` at twice its share.
    let total_slots = options.agents * options.slots;
    let plans = plan(&options);
    let weights: f64 = plans.iter().map(|plan| plan.share).sum();
    let per_trial_s = options.trial_ms as f64 / 1000.0;
    let mut sweeps = Vec::new();
    let submitted = Instant::now();
    let submitted_ms = now_ms();
    let cpu_start = cpu_seconds();
    for plan in &plans {
        let fair_trials = f64::from(total_slots) * plan.share / weights / f64::from(plan.slots);
        let max_parallel = (3.0 * fair_trials).ceil() as u32;
        let max_trials =
            (2.0 * fair_trials * options.seconds / per_trial_s).ceil() as u32 + max_parallel;
        let spec = SweepBuilder::new(&plan.name)
            .minimize("loss")
            .float("x", 0.0, 1.0)
            .algorithm(AlgorithmName::Random)
            .seed(1)
            .command("true", Vec::<String>::new())
            .metrics(["loss"])
            .max_trials(max_trials)
            .max_parallel(max_parallel.max(1))
            .slots(plan.slots)
            .share(plan.share)
            .max_retries(0)
            .build()?;
        sweeps.push(client.submit(spec).await?.id);
    }
    let mut peak_memory = connected_memory;
    let mut warm_buckets = None;
    while submitted.elapsed().as_secs_f64() < options.seconds {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_memory = peak_memory.max(memory_mib().0);
        if warm_buckets.is_none() && submitted.elapsed().as_secs_f64() >= options.warmup {
            warm_buckets = Some(placement_buckets());
        }
    }
    let end_buckets = placement_buckets();
    let warm_buckets =
        warm_buckets.unwrap_or_else(|| end_buckets.iter().map(|(b, _)| (*b, 0)).collect());
    let placement_ms = (
        bucket_quantile(&warm_buckets, &end_buckets, 0.5),
        bucket_quantile(&warm_buckets, &end_buckets, 0.99),
    );
    let cpu_used = cpu_seconds() - cpu_start;
    let wall = submitted.elapsed().as_secs_f64();
    let cancelled_ms = now_ms();
    for sweep in &sweeps {
        client.cancel(*sweep).await?;
    }
    let mut records: Vec<(SweepId, Vec<TrialRecord>)> = Vec::new();
    for sweep in &sweeps {
        records.push((*sweep, client.trials(*sweep).await?));
    }
    client.close().await;
    drop(child);
    coordinator.shutdown().await;

    report(
        &options,
        &plans,
        &records,
        Measured {
            registered_s,
            idle_memory,
            connected_memory,
            peak_memory,
            cpu_used,
            wall,
            placement_ms,
            window_ms: (
                submitted_ms + (options.warmup * 1000.0) as u64,
                cancelled_ms,
            ),
        },
    );
    Ok(())
}

/// The load agents' process, killed when dropped (also when the run fails early).
fn spawn_agents(
    options: &Options,
    coordinator: SocketAddr,
    certs: &Path,
) -> anyhow::Result<Process> {
    let program = std::env::current_exe()?;
    Ok(Process::from(
        std::process::Command::new(program)
            .args(["--role", "agents", "--coordinator"])
            .arg(coordinator.to_string())
            .arg("--certs")
            .arg(certs)
            .args(["--agents", &options.agents.to_string()])
            .args(["--slots", &options.slots.to_string()])
            .args(["--trial-ms", &options.trial_ms.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .context("starting the load agents' process")?,
    ))
}

/// `flotilla_placement_seconds` (the coordinator in this process): each bucket's upper bound
/// and cumulative count.
fn placement_buckets() -> Vec<(f64, u64)> {
    use prometheus::core::Metric;
    let metric = flotilla_coordinator::metrics::METRICS
        .placement_latency
        .metric();
    metric
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|bucket| (bucket.upper_bound(), bucket.cumulative_count()))
        .collect()
}

/// The `q` quantile of the placements between two bucket snapshots, as the upper bound of
/// the bucket it falls in (so "≤ 5 ms" reads as 5).
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .zip(before)
        .map(|((bound, late), (_, early))| (*bound, late - early))
        .collect();
    let Some(total) = counts.last().map(|(_, count)| *count) else {
        return f64::NAN;
    };
    let wanted = (q * total as f64).ceil() as u64;
    counts
        .iter()
        .find(|(_, count)| *count >= wanted)
        .map_or(f64::INFINITY, |(bound, _)| bound * 1000.0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

struct Measured {
    registered_s: f64,
    idle_memory: f64,
    connected_memory: f64,
    peak_memory: f64,
    cpu_used: f64,
    wall: f64,
    /// The coordinator's placement latency (decision → start handed to the agent's link)
    /// p50 and p99 after the warm-up, from `flotilla_placement_seconds`'s buckets.
    placement_ms: (f64, f64),
    window_ms: (u64, u64),
}

fn report(
    options: &Options,
    plans: &[SweepPlan],
    records: &[(SweepId, Vec<TrialRecord>)],
    measured: Measured,
) {
    let (from, to) = measured.window_ms;
    // Steady state: the placements made after the warm-up (the first seconds place every
    // slot of the cluster at once, a burst no steady load has).
    let mut latencies: Vec<u64> = records
        .iter()
        .flat_map(|(_, trials)| {
            trials
                .iter()
                .filter(|t| t.started_ms.is_some_and(|start| start >= from))
                .filter_map(|t| t.dispatch_latency_us)
        })
        .collect();
    latencies.sort_unstable();
    let mut all_latencies: Vec<u64> = records
        .iter()
        .flat_map(|(_, trials)| trials.iter().filter_map(|t| t.dispatch_latency_us))
        .collect();
    all_latencies.sort_unstable();
    // Slot-milliseconds each sweep held in the window (a trial still running at the cancel
    // counts to the cancel).
    let held: Vec<f64> = records
        .iter()
        .zip(plans)
        .map(|((_, trials), plan)| {
            trials
                .iter()
                .filter_map(|t| Some((t.started_ms?, t.finished_ms.unwrap_or(to))))
                .map(|(start, end)| end.min(to).saturating_sub(start.max(from)) as f64)
                .sum::<f64>()
                * f64::from(plan.slots)
        })
        .collect();
    let used: f64 = held.iter().sum();
    let weights: f64 = plans.iter().map(|plan| plan.share).sum();
    let ratios: Vec<f64> = held
        .iter()
        .zip(plans)
        .map(|(held, plan)| held / (used * plan.share / weights))
        .collect();
    let finished: usize = records
        .iter()
        .map(|(_, trials)| {
            trials
                .iter()
                .filter(|t| t.finished_ms.is_some_and(|end| end <= to))
                .count()
        })
        .sum();
    let capacity = f64::from(options.agents * options.slots) * (to - from) as f64;
    let within = ratios.iter().filter(|r| (0.8..=1.2).contains(*r)).count();
    let (low, high) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    if let Some(path) = &options.row_json {
        let row = Row {
            agents: options.agents,
            sweeps: options.sweeps,
            placement_p50_ms: measured.placement_ms.0,
            placement_p99_ms: measured.placement_ms.1,
            p50_ms: common::percentile_ms(&latencies, 0.5),
            p99_ms: common::percentile_ms(&latencies, 0.99),
            cpu_percent: 100.0 * measured.cpu_used / measured.wall,
            peak_rss_mib: measured.peak_memory,
            trials_per_s: finished as f64 / measured.wall,
            fair_min: low,
            fair_max: high,
        };
        let written = serde_json::to_vec(&row)
            .map_err(|error| error.to_string())
            .and_then(|json| std::fs::write(path, json).map_err(|error| error.to_string()));
        if let Err(error) = written {
            eprintln!("cannot write {}: {error}", path.display());
        }
    }
    println!(
        "| agents × slots | sweeps | trial s | registered in s | placements after warm-up | placement p50 / p99 ms (≤ bucket) | dispatch p50 ms | p99 ms | max ms | p99 ms, warm-up burst included | trials/s | slots busy | coordinator CPU | RSS MiB (idle / agents up / peak) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} × {} | {} | {:.1} | {:.1} | {} | {} / {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} % | {:.0} % of a core | {:.0} / {:.0} / {:.0} |",
        options.agents,
        options.slots,
        options.sweeps,
        options.trial_ms as f64 / 1000.0,
        measured.registered_s,
        latencies.len(),
        measured.placement_ms.0,
        measured.placement_ms.1,
        common::percentile_ms(&latencies, 0.5),
        common::percentile_ms(&latencies, 0.99),
        common::percentile_ms(&latencies, 1.0),
        common::percentile_ms(&all_latencies, 0.99),
        finished as f64 / measured.wall,
        100.0 * used / capacity,
        100.0 * measured.cpu_used / measured.wall,
        measured.idle_memory,
        measured.connected_memory,
        measured.peak_memory,
    );
    println!();
    println!(
        "fair share over {:.0} s: {within} of {} sweeps within 20 %; held / fair from {low:.2} to {high:.2}",
        (to - from) as f64 / 1000.0,
        plans.len()
    );
    let mut by_kind: BTreeMap<(u32, u64), Vec<f64>> = BTreeMap::new();
    for (plan, ratio) in plans.iter().zip(&ratios) {
        by_kind
            .entry((plan.slots, (plan.share * 10.0) as u64))
            .or_default()
            .push(*ratio);
    }
    println!("| trial slots | share | sweeps | held / fair: min | median | max |");
    println!("|---|---|---|---|---|---|");
    for ((slots, share), mut ratios) in by_kind {
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {slots} | {} | {} | {:.2} | {:.2} | {:.2} |",
            share as f64 / 10.0,
            ratios.len(),
            ratios[0],
            ratios[ratios.len() / 2],
            ratios[ratios.len() - 1]
        );
    }
}
