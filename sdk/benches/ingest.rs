//! Metric ingest: how many metric points per second the coordinator accepts from agents over
//! QUIC, and how long a point takes from the agent to a client watching the sweep.
//!
//! Two setups, each in this process, over loopback with mutual TLS:
//!
//! - **protocol**: a coordinator and `--agents` load agents. A load agent holds an agent
//!   certificate, says `Hello`, registers one slot, accepts the trial the coordinator
//!   places on it and then streams `TrialMetrics` frames for `--seconds`, batches of
//!   `--batch` points as fast as the connection takes them (`--rate 0`) or `--rate` points/s
//!   per agent sent every 10 ms. It runs no trial process: this measures the coordinator's
//!   side (frame decoding, the Scheduler and Sweep actors, early-stopping and curve
//!   bookkeeping, the watch stream), not a trainer.
//! - **agents**: the embedded cluster's real agents, each running one command trial that
//!   prints `--points` metric lines as fast as it can; the lines go through the agent's line
//!   parser, its Trial actor and the link's batching. This is the whole path a user's trial
//!   takes, trial processes included, all on the same cores.
//!
//! Every point carries `sent_us`, the wall clock when it was made; a client watching the
//! sweep (`Client::watch`) takes the lag of every point when it arrives. Throughput is points
//! received by the watcher over the time from the first point made to the last received.
//!
//! ```text
//! cargo bench -p flotilla-sdk --features embedded --bench ingest -- \
//!     [--agents 8] [--seconds 10] [--batch 64] [--rate 0] [--setup protocol|agents] [--points 200000]
//! ```
//!
//! Prints one Markdown table row for `docs/benchmarks.md`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use flotilla_coordinator::{Coordinator, CoordinatorConfig};
use flotilla_protocol::AttemptId;
use flotilla_protocol::framing;
use flotilla_protocol::messages::{
    AgentMessage, Command, CoordinatorCommand, Heartbeat, MetricPoint, Metrics, Role, SweepEvent,
    SweepState, TrialOutcome,
};
use flotilla_protocol::tls::{self, ClusterCa, Identity};
use flotilla_sdk::{Client, EventStream, LocalCluster, LocalClusterOptions, SweepBuilder};
use tokio::sync::Barrier;

mod common;

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Protocol,
    Agents,
}

#[derive(Clone)]
struct Options {
    setup: Setup,
    agents: u32,
    seconds: f64,
    batch: usize,
    /// Points per second per agent; 0 sends as fast as the connection takes them.
    rate: u64,
    /// Metric lines per trial in the `agents` setup.
    points: u64,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        setup: Setup::Protocol,
        agents: 8,
        seconds: 10.0,
        batch: 64,
        rate: 0,
        points: 200_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        // `cargo bench` passes `--bench`; ignore it.
        if flag == "--bench" {
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--setup" => {
                options.setup = match value.as_str() {
                    "protocol" => Setup::Protocol,
                    "agents" => Setup::Agents,
                    other => bail!("--setup is protocol or agents, not {other}"),
                }
            }
            "--agents" => options.agents = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--batch" => options.batch = value.parse()?,
            "--rate" => options.rate = value.parse()?,
            "--points" => options.points = value.parse()?,
            other => bail!(
                "unknown option {other} (use --setup, --agents, --seconds, --batch, --rate, --points)"
            ),
        }
    }
    anyhow::ensure!(options.batch > 0, "--batch must be at least 1");
    Ok(options)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// What the watching client saw.
struct Watched {
    points: u64,
    /// Lag of every point, microseconds.
    lags_us: Vec<u64>,
    first_sent_us: u64,
    last_received_us: u64,
    state: Option<SweepState>,
}

/// Counts every metric point of the sweep as it arrives, until the sweep ends. `client` is
/// the connection `events` came from.
async fn watch(client: Client, mut events: EventStream) -> anyhow::Result<Watched> {
    let mut watched = Watched {
        points: 0,
        lags_us: Vec::new(),
        first_sent_us: u64::MAX,
        last_received_us: 0,
        state: None,
    };
    while let Some(event) = events.next().await {
        match event? {
            SweepEvent::Metric { point, .. } => {
                let received = now_us();
                if let Some(sent) = point.values.get("sent_us") {
                    let sent = *sent as u64;
                    watched.first_sent_us = watched.first_sent_us.min(sent);
                    watched.lags_us.push(received.saturating_sub(sent));
                }
                watched.points += 1;
                watched.last_received_us = received;
            }
            SweepEvent::SweepFinished(summary) => {
                watched.state = Some(summary.state);
                break;
            }
            _ => {}
        }
    }
    client.close().await;
    Ok(watched)
}

fn point(step: u64, started: Instant) -> MetricPoint {
    MetricPoint {
        step,
        values: Metrics::from([
            ("loss".to_string(), 1.0 / (step + 1) as f64),
            ("sent_us".to_string(), now_us() as f64),
        ]),
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// One load agent: registers, takes the trial it is given, streams points, finishes it.
/// Returns the points it sent.
async fn load_agent(
    name: String,
    coordinator: SocketAddr,
    identity: Identity,
    options: Options,
    start: Arc<Barrier>,
) -> anyhow::Result<u64> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(tls::client_config(&identity)?);
    let (connection, mut send, mut recv) =
        common::register(&endpoint, coordinator, &name, 1).await?;
    let attempt: AttemptId = loop {
        match framing::read_frame::<_, CoordinatorCommand>(&mut recv).await? {
            Some(CoordinatorCommand {
                command: Command::StartTrial(start),
                ..
            }) => break start.attempt,
            Some(_) => continue,
            None => bail!("{name}: the coordinator closed the control stream"),
        }
    };
    // Keep reading commands so the coordinator's side never blocks on this stream.
    let reader = tokio::spawn(async move {
        while let Ok(Some(_)) = framing::read_frame::<_, CoordinatorCommand>(&mut recv).await {}
    });
    framing::write_frame(&mut send, &AgentMessage::TrialStarted { attempt }).await?;
    start.wait().await;

    let started = Instant::now();
    let length = Duration::from_secs_f64(options.seconds);
    let mut step = 0u64;
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut last_heartbeat = Instant::now();
    let tick = Duration::from_millis(10);
    let mut next_tick = tokio::time::Instant::now();
    let mut owed = 0.0f64;
    while started.elapsed() < length {
        let count = if options.rate == 0 {
            options.batch
        } else {
            next_tick += tick;
            tokio::time::sleep_until(next_tick).await;
            owed += options.rate as f64 * tick.as_secs_f64();
            let count = owed.floor() as usize;
            owed -= count as f64;
            count
        };
        buffer.clear();
        let mut left = count;
        while left > 0 {
            let take = left.min(options.batch);
            let points = (step..step + take as u64)
                .map(|step| point(step, started))
                .collect();
            step += take as u64;
            left -= take;
            framing::append_frame(&mut buffer, &AgentMessage::TrialMetrics { attempt, points })?;
        }
        if last_heartbeat.elapsed() >= Duration::from_millis(500) {
            last_heartbeat = Instant::now();
            let heartbeat = Heartbeat {
                running: vec![attempt],
            };
            framing::append_frame(&mut buffer, &AgentMessage::Heartbeat(heartbeat))?;
        }
        send.write_all(&buffer).await?;
    }
    let outcome = TrialOutcome::Succeeded {
        metrics: Metrics::from([("loss".to_string(), 1.0 / step.max(1) as f64)]),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    framing::write_frame(&mut send, &AgentMessage::TrialFinished { attempt, outcome }).await?;
    // Stay connected until the coordinator has read everything.
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(60), send.stopped()).await;
    reader.abort();
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(step)
}

async fn wait_for_agents(client: &Client, agents: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.cluster_status().await?.agents < agents {
        anyhow::ensure!(Instant::now() < deadline, "the agents did not register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A sweep of one trial per agent, all at once, minimizing the points' `loss`.
fn one_trial_per_agent(
    name: &str,
    agents: u32,
    program: &str,
    args: Vec<String>,
) -> anyhow::Result<flotilla_protocol::spec::SweepSpec> {
    Ok(SweepBuilder::new(name)
        .minimize("loss")
        .float("x", 0.0, 1.0)
        .seed(1)
        .max_trials(agents)
        .max_parallel(agents)
        .max_retries(0)
        .command(program, args)
        .metrics(["loss"])
        .build()?)
}

async fn protocol_setup(options: &Options) -> anyhow::Result<(u64, Watched)> {
    let dir = tempfile::tempdir()?;
    let ca = ClusterCa::generate("flotilla-ingest-bench")?;
    let config = CoordinatorConfig::new(
        "127.0.0.1:0".parse()?,
        ca.issue(Role::Coordinator, "coordinator")?,
        dir.path().join("state.log"),
    );
    let coordinator = Coordinator::start(config).await?;
    let address = coordinator.local_addr();
    let admin = ca.issue(Role::Admin, "bench")?;

    let start = Arc::new(Barrier::new(options.agents as usize + 1));
    let mut agents = Vec::new();
    for index in 0..options.agents {
        let name = format!("load-agent-{index}");
        let identity = ca.issue(Role::Agent, &name)?;
        agents.push(tokio::spawn(load_agent(
            name,
            address,
            identity,
            options.clone(),
            start.clone(),
        )));
    }
    let client = Client::connect(address, &admin).await?;
    wait_for_agents(&client, options.agents).await?;
    // Never run: the load agents stand in for the trials.
    let spec = one_trial_per_agent("ingest", options.agents, "true", Vec::new())?;
    let summary = client.submit(spec).await?;
    let watching = Client::connect(address, &admin).await?;
    let events = watching.watch(summary.id).await?;
    let watcher = tokio::spawn(watch(watching, events));
    // The request is sent; give the coordinator a moment to attach the watcher before the
    // first point (a point sent earlier would be missed, and the run fails its count check).
    tokio::time::sleep(Duration::from_millis(500)).await;
    start.wait().await;
    let mut sent = 0;
    for agent in agents {
        sent += agent.await??;
    }
    let watched = watcher.await??;
    client.close().await;
    coordinator.shutdown().await;
    Ok((sent, watched))
}

async fn agents_setup(options: &Options) -> anyhow::Result<(u64, Watched)> {
    let cluster = LocalCluster::start(LocalClusterOptions {
        agents: options.agents,
        slots_per_agent: 1,
        ..LocalClusterOptions::default()
    })
    .await?;
    let client = cluster.client().await?;
    wait_for_agents(&client, options.agents).await?;
    // No braces in the program: `{name}` in trial arguments is a parameter placeholder.
    let program = format!(
        "import sys, time\n\
         time.sleep(0.5)  # the watcher attaches after the submit\n\
         out = sys.stdout\n\
         for step in range({points}):\n\
         \x20   out.write('@flotilla step=%d loss=%r sent_us=%d\\n' % (step, 1.0 / (step + 1), time.time_ns() // 1000))\n",
        points = options.points
    );
    let spec = one_trial_per_agent(
        "ingest-agents",
        options.agents,
        "python3",
        vec!["-c".to_string(), program],
    )?;
    let watching = cluster.client().await?;
    let summary = client.submit(spec).await?;
    let events = watching.watch(summary.id).await?;
    let watched = watch(watching, events).await?;
    client.close().await;
    cluster.shutdown().await;
    Ok((options.points * u64::from(options.agents), watched))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let (sent, mut watched) = match options.setup {
        Setup::Protocol => protocol_setup(&options).await?,
        Setup::Agents => agents_setup(&options).await?,
    };
    anyhow::ensure!(
        watched.state == Some(SweepState::Completed),
        "the sweep ended {:?}",
        watched.state
    );
    let seconds = watched
        .last_received_us
        .saturating_sub(watched.first_sent_us) as f64
        / 1e6;
    watched.lags_us.sort_unstable();
    let (setup, batch, rate) = match options.setup {
        Setup::Protocol => (
            "load agents (protocol)",
            options.batch.to_string(),
            if options.rate == 0 {
                "max".to_string()
            } else {
                (options.rate * u64::from(options.agents)).to_string()
            },
        ),
        Setup::Agents => (
            "real agents + trial processes",
            "link batching".to_string(),
            "max".to_string(),
        ),
    };
    println!(
        "| {setup} | {} | {batch} | {rate} | {sent} | {} | {seconds:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
        options.agents,
        watched.points,
        watched.points as f64 / seconds,
        common::percentile_ms(&watched.lags_us, 0.5),
        common::percentile_ms(&watched.lags_us, 0.99),
        common::percentile_ms(&watched.lags_us, 1.0),
    );
    anyhow::ensure!(
        watched.points == sent,
        "sent {sent} points but the watcher received {}",
        watched.points
    );
    Ok(())
}
