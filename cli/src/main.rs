//! `flotilla`: run sweeps locally (`up`), run cluster processes (`coordinator`, `agent`),
//! make certificates (`certs`), and talk to a cluster (`sweep`, `cluster`).

mod certs;
mod examples;
mod models;
mod report;
mod study;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use flotilla_agent::{Agent, AgentConfig};
use flotilla_coordinator::ha::EtcdConfig;
use flotilla_coordinator::{Coordinator, CoordinatorConfig};
use flotilla_sdk::{
    AgentId, Client, Identity, LocalCluster, LocalClusterOptions, SweepId, SweepSpec,
};

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Distributed ML sweeps on a fleet of GPU agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Start a coordinator and local agents in this process and run a sweep file (the
    /// built-in quickstart by default, or a shipped example), with live progress and a
    /// leaderboard.
    Up(UpArgs),
    /// Certificates for a cluster.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Run a coordinator.
    Coordinator(CoordinatorArgs),
    /// Run an agent that takes trials from a coordinator, or (with a subcommand) drain,
    /// cordon or uncordon one (admin certificate).
    Agent(AgentCommand),
    /// Submit and inspect sweeps.
    #[command(subcommand)]
    Sweep(SweepCommand),
    /// Cluster administration (needs the admin certificate).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Ask/tell optimization for trials you run yourself, kept in one file.
    #[command(subcommand)]
    Study(study::StudyCommand),
    /// The model registry: register a trial's checkpoint as a version, list, show, stage.
    #[command(subcommand)]
    Model(models::ModelCommand),
    /// Canary rollouts of a model version: start, status, pause, resume, promote, abort.
    #[command(subcommand)]
    Rollout(models::RolloutCommand),
    /// Run a model router: one HTTP endpoint for predictions, split between each model's
    /// production version and its canary by the coordinator's rollouts.
    Router(RouterArgs),
}

#[derive(Args)]
struct RouterArgs {
    /// Where to accept prediction requests (HTTP).
    #[arg(long, env = "FLOTILLA_ROUTER_LISTEN", default_value = "127.0.0.1:8780")]
    listen: SocketAddr,
    /// Between traffic reports to the coordinator (each answered with the routes).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    sync_interval: Duration,
    /// How long a serving agent may take to answer one request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    upstream_timeout: Duration,
    /// Bearer tokens (hashed; `flotilla certs token create`), reloaded when the file
    /// changes. Feedback needs one with the feedback scope. Default: CERTS/tokens.
    #[arg(long, env = "FLOTILLA_ROUTER_TOKENS")]
    tokens: Option<PathBuf>,
    /// Predictions and routes need a token with the predict scope too.
    #[arg(long, env = "FLOTILLA_GATE_PREDICTIONS")]
    gate_predictions: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args)]
struct UpArgs {
    /// The sweep file to run (default: the quickstart, built into the binary).
    #[arg(conflicts_with = "example")]
    sweep: Option<PathBuf>,
    /// Run a shipped example instead of a file (`--list-examples` names them); the
    /// programs it runs are written under --dir.
    #[arg(long, value_name = "NAME")]
    example: Option<String>,
    /// List the shipped examples and exit.
    #[arg(long, conflicts_with_all = ["sweep", "example"])]
    list_examples: bool,
    /// Local agents to start.
    #[arg(long, default_value_t = 2)]
    agents: u32,
    /// Trial slots per agent.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Where state, checkpoints and results go.
    #[arg(long, default_value = "flotilla-up")]
    dir: PathBuf,
    /// Let the autoscaler start and stop agent processes from demand (the `local`
    /// provider), from zero up to --max-agents and back to zero after the sweep, instead of
    /// running --agents agents for the whole run.
    #[arg(long)]
    autoscale: bool,
    /// With --autoscale: the most agents at once.
    #[arg(long, default_value_t = 4)]
    max_agents: u32,
    /// With --autoscale: scale in only to the highest need seen over this window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    scale_in_window: Duration,
    /// With --autoscale: with no demand, keep one agent this long before going to zero.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    idle_grace: Duration,
    /// With --autoscale: how often the autoscaler checks.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    autoscale_interval: Duration,
    /// Where the model router accepts predictions (default: a free loopback port).
    #[arg(long, default_value = "127.0.0.1:0")]
    router_listen: SocketAddr,
    /// After the sweep, register its winner as this model (in production) and keep serving
    /// it behind the router until interrupted.
    #[arg(long, value_name = "MODEL")]
    serve: Option<String>,
}

/// Where the cluster is and who we are.
#[derive(Args, Clone)]
struct Connection {
    /// The coordinator's address, or several replicas' addresses separated by commas (the
    /// leader is found among them).
    #[arg(
        long,
        env = "FLOTILLA_COORDINATOR",
        default_value = "127.0.0.1:7070",
        value_delimiter = ','
    )]
    coordinator: Vec<SocketAddr>,
    /// Directory with ca.pem and NAME.pem / NAME-key.pem (from `flotilla certs init`).
    #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// Which certificate in --certs to use (default: client, or admin for `cluster`).
    #[arg(long, env = "FLOTILLA_IDENTITY")]
    identity: Option<String>,
}

/// With several replicas, how long a command waits out an election (no replica leads yet, or
/// the leader named does not answer) before giving up.
const ELECTION_PATIENCE: Duration = Duration::from_secs(20);

impl Connection {
    async fn connect(&self, default_identity: &str) -> anyhow::Result<Client> {
        let name = self.identity.as_deref().unwrap_or(default_identity);
        let identity = Identity::load_from_dir(&self.certs, name)?;
        let patience = if self.coordinator.len() > 1 {
            ELECTION_PATIENCE
        } else {
            Duration::ZERO
        };
        Ok(Client::connect_leader(&self.coordinator, &identity, patience).await?)
    }

    /// A read that changes nothing, made on a new connection to the leader and made again
    /// (up to three times) when the leader went away before answering.
    async fn read<T>(
        &self,
        default_identity: &str,
        request: impl AsyncFn(&Client) -> Result<T, flotilla_sdk::SdkError>,
    ) -> anyhow::Result<T> {
        let mut tries = 0;
        loop {
            tries += 1;
            let client = self.connect(default_identity).await?;
            let answer = request(&client).await;
            client.close().await;
            match answer {
                Err(error)
                    if tries < 3
                        && (error.is_transient()
                            || matches!(error, flotilla_sdk::SdkError::Protocol(_))) =>
                {
                    tracing::debug!(%error, "the leader went away during a read; asking again");
                }
                answer => return Ok(answer?),
            }
        }
    }

    /// A watch of `sweep` after event `from` that follows the leader among the replicas.
    fn resuming_watch(
        &self,
        default_identity: &str,
        sweep: SweepId,
        from: u64,
    ) -> anyhow::Result<flotilla_sdk::ResumingWatch> {
        let name = self.identity.as_deref().unwrap_or(default_identity);
        let identity = Identity::load_from_dir(&self.certs, name)?;
        Ok(flotilla_sdk::ResumingWatch::new(
            self.coordinator.clone(),
            identity,
            sweep,
            from,
        ))
    }
}

/// `--http-tokens`: the token file, which must parse (a missing file holds no tokens, so
/// every gated request is refused until one is created).
fn http_tokens(
    path: Option<&Path>,
) -> anyhow::Result<Option<flotilla_telemetry::tokens::TokenFile>> {
    let Some(path) = path else { return Ok(None) };
    let tokens = flotilla_telemetry::tokens::TokenFile::load(path)?;
    if tokens.is_empty() {
        tracing::warn!(path = %path.display(), "no bearer tokens yet: /metrics and the web view's data are refused until one is created (flotilla certs token create NAME --scope read --file FILE)");
    }
    Ok(Some(tokens))
}

/// TLS for `https://` etcd endpoints. Each file defaults to the `CERTS/etcd` set that
/// `flotilla certs init` writes; the client certificate's common name is the etcd user.
#[derive(Args)]
struct EtcdTlsArgs {
    /// etcd's CA (default: CERTS/etcd/ca.pem).
    #[arg(long, env = "FLOTILLA_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// The client certificate for etcd (default: CERTS/etcd/coordinator.pem on a
    /// coordinator, CERTS/etcd/agent.pem on an agent).
    #[arg(long, env = "FLOTILLA_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// Its key (default: the certificate's name with -key.pem).
    #[arg(long, env = "FLOTILLA_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
}

impl EtcdTlsArgs {
    /// The etcd connection for `endpoints` as user `stem` (coordinator, agent).
    fn config(
        &self,
        endpoints: Vec<String>,
        prefix: String,
        certs: &Path,
        stem: &str,
    ) -> anyhow::Result<EtcdConfig> {
        let mut config = EtcdConfig::new(endpoints);
        config.prefix = prefix;
        let given = self.etcd_ca.is_some() || self.etcd_cert.is_some() || self.etcd_key.is_some();
        let any_https = config.endpoints.iter().any(|e| e.starts_with("https://"));
        // TLS files whenever an endpoint is https:// or a file is named; mixing schemes is
        // refused when connecting (flotilla_etcd::connect says which).
        if any_https || given {
            let defaults =
                flotilla_etcd::EtcdTls::in_dir(&certs.join(flotilla_protocol::etcd_pki::DIR), stem);
            let cert = self.etcd_cert.clone().unwrap_or(defaults.cert);
            let key = self.etcd_key.clone().unwrap_or_else(|| {
                let name = cert.file_stem().unwrap_or_default().to_string_lossy();
                cert.with_file_name(format!("{name}-key.pem"))
            });
            config.tls = Some(flotilla_etcd::EtcdTls {
                ca: self.etcd_ca.clone().unwrap_or(defaults.ca),
                cert,
                key,
            });
        } else {
            tracing::warn!(
                endpoints = %config.endpoints.join(","),
                "etcd over plain http without authentication: anyone who reaches it can rewrite the cluster's state (see docs/operations.md, Security)"
            );
        }
        Ok(config)
    }
}

#[derive(Args)]
struct CoordinatorArgs {
    #[arg(long, env = "FLOTILLA_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
    certs: PathBuf,
    #[arg(long, default_value = "coordinator")]
    identity: String,
    /// The local state file (created if missing; resumed if present).
    #[arg(
        long,
        env = "FLOTILLA_STATE",
        default_value = "flotilla-state/state.log"
    )]
    state: PathBuf,
    /// An agent silent for this long is lost and its trials run elsewhere.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    agent_timeout: Duration,
    /// Cordon an agent automatically once it has lost the trials it ran this many times
    /// within 10 minutes (it went down or came back without them); 0 turns it off.
    #[arg(long, default_value_t = 3)]
    cordon_after_losses: u32,
    /// A team's weight when sweeps share the cluster, as NAME=WEIGHT (repeat for each
    /// team); sweeps name their team in `[scheduling] team`. A team not named weighs 1.
    #[arg(long = "team-share", value_name = "NAME=WEIGHT", value_parser = parse_team_share)]
    team_shares: Vec<(String, f64)>,
    /// Between checks of each canary rollout (each check may advance, promote or roll back).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    rollout_check_interval: Duration,
    /// The artifact store settled sweeps are archived in after --retain-finished (under
    /// archive/sweeps/): a folder or s3://bucket/prefix. Default: the state file's folder;
    /// with --etcd none, so set one that every coordinator reads.
    #[arg(long, env = "FLOTILLA_ARCHIVE")]
    archive: Option<String>,
    /// How long a finished sweep stays in the state store (etcd or the state file) before
    /// it moves to the archive, e.g. 7d or 12h; `never` keeps it there.
    #[arg(long, default_value = "7d", value_parser = parse_retention)]
    retain_finished: Retention,
    /// etcd client URLs, separated by commas: run highly available (leader election, state
    /// in etcd) instead of on the local state file.
    #[arg(long, env = "FLOTILLA_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The key prefix for this cluster in etcd.
    #[arg(long, env = "FLOTILLA_ETCD_PREFIX", default_value = "/flotilla")]
    etcd_prefix: String,
    #[command(flatten)]
    etcd_tls: EtcdTlsArgs,
    /// Between the leader's readings of each etcd member's database size (metrics).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    etcd_status_every: Duration,
    /// Between the leader's compactions of etcd's history (each keeps one interval of it).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    etcd_compact_every: Duration,
    /// Between the leader's defragmentations of the etcd members (one at a time); sooner
    /// when more than half of a large database is free. Needs --etcd-maintenance-cert.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    etcd_defrag_every: Duration,
    /// The backend quota etcd runs with (its --quota-backend-bytes), exported beside the
    /// database size for the near-quota alert.
    #[arg(long, default_value_t = 2 << 30)]
    etcd_quota_bytes: u64,
    /// The certificate of an etcd user allowed to defragment (etcd's root user; its key is
    /// the name with -key.pem, the CA is --etcd-ca's). Without it the leader compacts and
    /// reports sizes but leaves defragmentation to the operator.
    #[arg(long, env = "FLOTILLA_ETCD_MAINTENANCE_CERT")]
    etcd_maintenance_cert: Option<PathBuf>,
    /// The leader's etcd lease (whole seconds): a dead leader is replaced about this long
    /// after it died.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// The address agents and clients reach this coordinator at (default: --listen); with
    /// etcd it is published to the other replicas.
    #[arg(long, env = "FLOTILLA_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// This replica's name in logs and `cluster status` (default: coordinator-PID).
    #[arg(long)]
    name: Option<String>,
    /// Serve Prometheus metrics (`/metrics`), `/healthz`, `/readyz` and the web view over
    /// HTTP here (nothing by default; keep it on loopback or a private network).
    #[arg(long, env = "FLOTILLA_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Require a bearer token with the read scope (`flotilla certs token create NAME --scope
    /// read --file FILE`) for the web view's data and `/metrics`; the file is reloaded when
    /// it changes. `/healthz` and `/readyz` stay open.
    #[arg(long, env = "FLOTILLA_HTTP_TOKENS")]
    http_tokens: Option<PathBuf>,
    /// The certificate revocation list (from `flotilla certs revoke`; default CERTS/crl.pem).
    /// Reloaded within seconds when it changes; a missing file revokes nothing.
    #[arg(long, env = "FLOTILLA_CRL")]
    crl: Option<PathBuf>,
    /// Refuse agent certificates not bound to one agent id (`flotilla certs issue agent
    /// --id NAME`), so that no certificate can register as every agent.
    #[arg(long, env = "FLOTILLA_REQUIRE_AGENT_IDS")]
    require_agent_ids: bool,
    /// Post a Slack-compatible JSON message here when a sweep ends (repeatable, or
    /// comma-separated). The URL is a secret: logs name only its number and host.
    #[arg(
        long = "notify-webhook",
        env = "FLOTILLA_NOTIFY_WEBHOOK",
        value_delimiter = ',',
        hide_env_values = true
    )]
    notify_webhooks: Vec<String>,
    /// Sign every webhook delivery with the secret in this file (HMAC-SHA256 in the
    /// X-Flotilla-Signature header; docs/operations.md shows how a receiver checks it).
    #[arg(long, env = "FLOTILLA_NOTIFY_SECRET_FILE")]
    notify_secret_file: Option<PathBuf>,
    /// Size the agent fleet from demand: `aws:GROUP[:HOOK]` for an EC2 Auto Scaling group
    /// (credentials and region from the standard AWS chain; HOOK is the termination
    /// lifecycle hook, default flotilla-drain). Agents must use their instance id as --id.
    #[arg(long, env = "FLOTILLA_AUTOSCALE")]
    autoscale: Option<String>,
    /// Trial slots one instance brings (its agent's --slots).
    #[arg(long, default_value_t = 1)]
    slots_per_instance: u32,
    /// Scale in only to the highest need seen over this window.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    scale_in_window: Duration,
    /// With no demand, keep one instance this long before going to the group's minimum.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    idle_grace: Duration,
    /// How often the autoscaler checks demand and the group.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    autoscale_interval: Duration,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentCommand {
    #[command(subcommand)]
    admin: Option<AgentAdminCommand>,
    #[command(flatten)]
    run: AgentArgs,
}

#[derive(Subcommand)]
enum AgentAdminCommand {
    /// Checkpoint and stop every trial the agent runs (they resume elsewhere without
    /// spending their retry budget) and place nothing new there.
    Drain {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Place nothing new on the agent; what it runs goes on.
    Cordon {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Place trials on the agent again.
    Uncordon {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Args)]
struct AgentArgs {
    /// The coordinator's address, or every replica's, separated by commas: the agent follows
    /// the leader among them.
    #[arg(
        long,
        env = "FLOTILLA_COORDINATOR",
        default_value = "127.0.0.1:7070",
        value_delimiter = ','
    )]
    coordinator: Vec<SocketAddr>,
    #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
    certs: PathBuf,
    #[arg(long, default_value = "agent")]
    identity: String,
    /// Trials this agent runs at once.
    #[arg(long, env = "FLOTILLA_SLOTS", default_value_t = 1)]
    slots: u32,
    /// GPUs this agent offers to trials, each to one trial at a time: a count (2: GPUs 0 and
    /// 1) or indices (0,2). Default: every GPU NVML finds (none without an NVIDIA driver).
    #[arg(long, env = "FLOTILLA_GPUS_OFFERED")]
    gpus: Option<flotilla_agent::gpus::GpuSpec>,
    /// A command trial's committed checkpoint larger than this many bytes is refused (the
    /// trial fails with that reason).
    #[arg(long, default_value_t = flotilla_agent::DEFAULT_CHECKPOINT_MAX_BYTES)]
    checkpoint_max_bytes: u64,
    /// A stable name for this agent (default: kept in WORK_DIR/agent-id, made on first start).
    /// In an autoscaled group it must be the instance id.
    #[arg(long, visible_alias = "agent-id", env = "FLOTILLA_AGENT_ID")]
    id: Option<String>,
    /// Checkpoints and scratch space.
    #[arg(long, env = "FLOTILLA_WORK_DIR", default_value = "flotilla-agent")]
    work_dir: PathBuf,
    /// Between SIGTERM and SIGKILL when a trial is stopped.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stop_grace: Duration,
    /// Where built-in trainers write checkpoints: a folder or s3://bucket/prefix, shared by
    /// every agent of the cluster (default: WORK_DIR/artifacts).
    #[arg(long, env = "FLOTILLA_ARTIFACTS")]
    artifacts: Option<String>,
    /// Device for built-in trainers: auto (CUDA when built with it and a GPU answers), cpu,
    /// cuda, cuda:N.
    #[arg(long, env = "FLOTILLA_DEVICE", default_value = "auto")]
    device: flotilla_train::DeviceChoice,
    /// etcd client URLs, separated by commas: fence built-in trainers' checkpoints with a
    /// lease per running trial (the cluster's coordinators use the same etcd).
    #[arg(long, env = "FLOTILLA_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The cluster's key prefix in etcd.
    #[arg(long, env = "FLOTILLA_ETCD_PREFIX", default_value = "/flotilla")]
    etcd_prefix: String,
    #[command(flatten)]
    etcd_tls: EtcdTlsArgs,
    /// The agent's checkpoint lease (whole seconds): a dead or paused agent's trials can
    /// be taken over this long after its last keep-alive.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    checkpoint_lease_ttl: Duration,
    /// Serve Prometheus metrics (`/metrics`: slots, trial progress, checkpoint writes, GPUs
    /// through NVML) and `/healthz` over HTTP here (conventionally port 9465).
    #[arg(long, env = "FLOTILLA_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Require a bearer token with the read scope for `/metrics` (`/healthz` stays open);
    /// the file is reloaded when it changes.
    #[arg(long, env = "FLOTILLA_HTTP_TOKENS")]
    http_tokens: Option<PathBuf>,
    /// Watch the EC2 instance metadata service (IMDSv2) at this URL for spot and lifecycle
    /// notices (on EC2: http://169.254.169.254). A rebalance recommendation stops new trials;
    /// an interruption notice or a terminating lifecycle state checkpoints every running
    /// trial, reports it preempted (no retry spent) and drains.
    #[arg(long, env = "FLOTILLA_IMDS")]
    imds: Option<String>,
    /// Between polls of the metadata service.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    imds_interval: Duration,
    /// Serve model versions the coordinator assigns over HTTPS here (`POST /v1/predict`,
    /// `/metrics`), to router and admin certificates only; routers send predictions to it.
    #[arg(long, env = "FLOTILLA_SERVE")]
    serve: Option<SocketAddr>,
    /// The URL routers should use for --serve (default: https:// and the bound address, the
    /// hostname in place of 0.0.0.0).
    #[arg(long, env = "FLOTILLA_SERVE_ADVERTISE")]
    serve_advertise: Option<String>,
}

#[derive(Subcommand)]
enum SweepCommand {
    /// Check a sweep file without submitting it.
    Validate { file: PathBuf },
    /// Submit a sweep file.
    Submit {
        file: PathBuf,
        /// Follow progress until the sweep ends, then print the leaderboard.
        #[arg(long)]
        watch: bool,
        /// With --watch: also write every trial to this JSON file.
        #[arg(long)]
        results: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a sweep's events, one line each with its sequence number, until it ends,
    /// following the leader through failovers. `--from N` resumes after event N (each
    /// trial's newest state since then first).
    Watch {
        id: SweepId,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[command(flatten)]
        connection: Connection,
    },
    /// One sweep's state and counts.
    Status {
        id: SweepId,
        #[command(flatten)]
        connection: Connection,
    },
    /// All sweeps.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Stop a sweep: queued trials are dropped, running ones stopped.
    Cancel {
        id: SweepId,
        #[command(flatten)]
        connection: Connection,
    },
    /// The best feasible trial; for a multi-objective sweep, its Pareto front (the feasible
    /// trials no other beats in every objective).
    Best {
        id: SweepId,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// A report: ranked trials, feasibility, phase winners, per-class metrics, parameter
    /// importance, and plots (optimization history, parallel coordinates, importance,
    /// learning curves) as SVG.
    Report {
        id: SweepId,
        /// `html` (one page, plots inline) or `md` (plots as SVG files beside it).
        #[arg(long, default_value = "html")]
        format: ReportFormat,
        /// Where to write it (default: `<id>-<name>-report.<html|md>` here).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Every trial, as a leaderboard or JSON.
    Results {
        id: SweepId,
        /// Write the results JSON here instead of printing the leaderboard.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Html,
    Md,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The leader, its epoch, the other coordinator replicas, etcd's health and the slots.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// The agents, their slots and what they run.
    Agents {
        #[command(flatten)]
        connection: Connection,
    },
    /// Set the fleet's desired capacity now (the autoscaler goes on from there after its
    /// scale-in window) and/or the group's bounds.
    Scale {
        #[arg(long)]
        desired: Option<u32>,
        #[arg(long)]
        min: Option<u32>,
        #[arg(long)]
        max: Option<u32>,
        #[command(flatten)]
        connection: Connection,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: logs kept in files or the journal stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Up(args) => {
            init_logging("warn");
            up(args).await
        }
        Commands::Certs(command) => certs::run(command).await,
        Commands::Coordinator(args) => {
            init_logging("info");
            coordinator(args).await
        }
        Commands::Agent(AgentCommand {
            admin: Some(command),
            ..
        }) => {
            init_logging("warn");
            agent_admin(command).await
        }
        Commands::Agent(AgentCommand { admin: None, run }) => {
            init_logging("info");
            agent(run).await
        }
        Commands::Sweep(command) => {
            init_logging("warn");
            sweep(command).await
        }
        Commands::Cluster(ClusterCommand::Status { json, connection }) => {
            init_logging("warn");
            cluster_status(connection, json).await
        }
        Commands::Cluster(ClusterCommand::Agents { connection }) => {
            init_logging("warn");
            cluster_agents(connection).await
        }
        Commands::Cluster(ClusterCommand::Scale {
            desired,
            min,
            max,
            connection,
        }) => {
            init_logging("warn");
            cluster_scale(connection, flotilla_sdk::ScaleRequest { desired, min, max }).await
        }
        Commands::Study(command) => study::run(command),
        Commands::Model(command) => {
            init_logging("warn");
            models::model(command).await
        }
        Commands::Rollout(command) => {
            init_logging("warn");
            models::rollout(command).await
        }
        Commands::Router(args) => {
            init_logging("info");
            router(args).await
        }
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(signal) => { signal.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// `--team-share NAME=WEIGHT`.
/// `--retain-finished`: a duration, or `never`.
#[derive(Debug, Clone, Copy)]
struct Retention(Option<Duration>);

fn parse_retention(text: &str) -> Result<Retention, String> {
    if text.trim() == "never" {
        return Ok(Retention(None));
    }
    humantime::parse_duration(text.trim())
        .map(|retain| Retention(Some(retain)))
        .map_err(|error| {
            format!("{text:?}: expected a duration (7d, 12h, 30m) or `never`: {error}")
        })
}

fn parse_team_share(text: &str) -> Result<(String, f64), String> {
    let (name, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=WEIGHT, e.g. vision=2"))?;
    if !flotilla_protocol::spec::valid_team_name(name) {
        return Err(format!(
            "{name:?} is not a team name: 1 to 63 letters, digits, '-', '_' or '.'"
        ));
    }
    let weight: f64 = weight
        .parse()
        .map_err(|_| format!("{weight:?} (team {name}) is not a number"))?;
    let most = flotilla_protocol::spec::MAX_SHARE;
    if !weight.is_finite() || weight <= 0.0 || weight > most {
        return Err(format!(
            "team {name}: the weight must be above 0 and at most {most}, not {weight}"
        ));
    }
    Ok((name.to_string(), weight))
}

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let identity = Identity::load_from_dir(&args.certs, &args.identity)?;
    let mut config = CoordinatorConfig::new(args.listen, identity, args.state);
    config.agent_timeout = args.agent_timeout;
    config.cordon_after_losses = args.cordon_after_losses;
    config.team_shares = args.team_shares.into_iter().collect();
    config.archive = args.archive;
    config.retain_finished = args.retain_finished.0;
    config.rollout_check_interval = args.rollout_check_interval;
    config.advertise = args.advertise;
    config.metrics_listen = args.metrics_listen;
    config.http_tokens = http_tokens(args.http_tokens.as_deref())?;
    config.crl_path = Some(args.crl.unwrap_or_else(|| args.certs.join("crl.pem")));
    config.require_agent_ids = args.require_agent_ids;
    config.webhooks = args
        .notify_webhooks
        .iter()
        .enumerate()
        .map(|(index, url)| flotilla_coordinator::notify::Webhook::parse(index + 1, url))
        .collect::<anyhow::Result<_>>()?;
    match &args.notify_secret_file {
        Some(path) => {
            let secret = flotilla_coordinator::notify::SigningSecret::from_file(path)?;
            config.webhooks = config
                .webhooks
                .into_iter()
                .map(|webhook| webhook.signed_with(secret.clone()))
                .collect();
        }
        None if !config.webhooks.is_empty() => tracing::warn!(
            "webhook deliveries are not signed: receivers cannot tell them from forgeries (--notify-secret-file)"
        ),
        None => {}
    }
    if let Some(name) = args.name {
        config.name = name;
    }
    if let Some(autoscale) = &args.autoscale {
        let options = flotilla_autoscale::aws::AwsOptions::parse(autoscale)
            .map_err(|message| anyhow::anyhow!("--autoscale: {message}"))?;
        let policy = flotilla_autoscale::Policy {
            slots_per_instance: args.slots_per_instance,
            scale_in_window: args.scale_in_window,
            idle_grace: args.idle_grace,
            ..flotilla_autoscale::Policy::default()
        };
        policy
            .validate()
            .map_err(|message| anyhow::anyhow!("--slots-per-instance: {message}"))?;
        let provider = flotilla_autoscale::aws::AwsProvider::from_env(options).await;
        let mut autoscaler =
            flotilla_coordinator::AutoscalerConfig::new(std::sync::Arc::new(provider), policy);
        autoscaler.interval = args.autoscale_interval;
        config.autoscaler = Some(autoscaler);
    }
    if !args.etcd.is_empty() {
        let mut etcd =
            args.etcd_tls
                .config(args.etcd, args.etcd_prefix, &args.certs, "coordinator")?;
        if args.lease_ttl < Duration::from_secs(1) {
            bail!("--lease-ttl must be at least 1s (etcd leases are whole seconds)");
        }
        etcd.lease_ttl = args.lease_ttl;
        let admin = args.etcd_maintenance_cert.map(|cert| {
            let name = cert.file_stem().unwrap_or_default().to_string_lossy();
            let key = cert.with_file_name(format!("{name}-key.pem"));
            let ca = etcd.tls.as_ref().map_or_else(
                || {
                    args.certs
                        .join(flotilla_protocol::etcd_pki::DIR)
                        .join("ca.pem")
                },
                |tls| tls.ca.clone(),
            );
            flotilla_etcd::EtcdTls { ca, cert, key }
        });
        config.etcd_maintenance = flotilla_coordinator::maintenance::Maintenance {
            status_every: args.etcd_status_every,
            compact_every: args.etcd_compact_every,
            defrag_every: args.etcd_defrag_every,
            quota_bytes: args.etcd_quota_bytes,
            admin,
        };
        config.etcd = Some(etcd);
    }
    let mut coordinator = Coordinator::start(config).await?;
    match coordinator.epoch() {
        Some(epoch) => println!(
            "coordinator listening on {} (leading, epoch {})",
            coordinator.local_addr(),
            epoch.0
        ),
        None => println!(
            "coordinator listening on {} (campaigning for leadership in etcd)",
            coordinator.local_addr()
        ),
    }
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            coordinator.shutdown().await;
            Ok(())
        }
        error = coordinator.stopped() => Err(error),
    }
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let identity = Identity::load_from_dir(&args.certs, &args.identity)?;
    // A certificate bound to an agent id names the agent; --id may only repeat it.
    let bound = flotilla_protocol::tls::agent_id_of_certificate(&identity.chain[0])?;
    let id = match (args.id, bound) {
        (Some(id), Some(bound)) if id != bound => bail!(
            "--id {id} but the certificate {} is bound to agent {bound}; the coordinator would refuse it",
            args.certs.join(format!("{}.pem", args.identity)).display()
        ),
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => flotilla_agent::stable_agent_id(&args.work_dir)?.0,
    };
    let first = *args
        .coordinator
        .first()
        .context("--coordinator needs at least one address")?;
    let mut config = AgentConfig::new(
        first,
        identity,
        AgentId(id.clone()),
        args.slots,
        args.work_dir,
    );
    config.coordinators = args.coordinator.clone();
    config.gpus = args.gpus.clone().unwrap_or_default();
    config.checkpoint_max_bytes = args.checkpoint_max_bytes;
    config.stop_grace = args.stop_grace;
    config.artifacts = args.artifacts;
    config.device = args.device;
    config.metrics_listen = args.metrics_listen;
    config.http_tokens = http_tokens(args.http_tokens.as_deref())?;
    config.serve_listen = args.serve;
    config.serve_advertise = args.serve_advertise;
    // The serving endpoint refuses revoked certificates (reloaded when crl.pem changes).
    config.serve_crl = Some(args.certs.join("crl.pem"));
    if let Some(endpoint) = args.imds {
        let url = url::Url::parse(&endpoint)
            .with_context(|| format!("--imds {endpoint:?} is not a URL"))?;
        if url.scheme() != "http" {
            bail!("--imds {endpoint:?}: the instance metadata service is plain http");
        }
        if args.imds_interval.is_zero() {
            bail!("--imds-interval must be more than zero");
        }
        let mut imds = flotilla_agent::imds::ImdsConfig::new(endpoint);
        imds.interval = args.imds_interval;
        config.imds = Some(imds);
    }
    if !args.etcd.is_empty() {
        if args.checkpoint_lease_ttl < Duration::from_secs(1) {
            bail!("--checkpoint-lease-ttl must be at least 1s (etcd leases are whole seconds)");
        }
        let mut etcd = args
            .etcd_tls
            .config(args.etcd, args.etcd_prefix, &args.certs, "agent")?;
        etcd.lease_ttl = args.checkpoint_lease_ttl;
        config.etcd = Some(etcd);
    }
    let mut agent = Agent::start(config).await?;
    if let Some(address) = agent.metrics_addr() {
        println!("agent metrics on http://{address}/metrics");
    }
    if let Some(address) = agent.serve_addr() {
        println!(
            "agent serving models on https://{address}/v1/predict (router and admin certificates only)"
        );
    }
    println!(
        "agent {id} with {} slot(s) serving {}",
        args.slots,
        args.coordinator
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("draining trials and shutting down");
            agent.shutdown().await;
            Ok(())
        }
        error = agent.failed() => Err(error),
    }
}

async fn router(args: RouterArgs) -> anyhow::Result<()> {
    let name = args.connection.identity.as_deref().unwrap_or("router");
    let identity = Identity::load_from_dir(&args.connection.certs, name)?;
    let mut config =
        flotilla_router::RouterConfig::new(args.connection.coordinator, identity, args.listen);
    config.sync_interval = args.sync_interval;
    config.upstream_timeout = args.upstream_timeout;
    let tokens = args
        .tokens
        .unwrap_or_else(|| args.connection.certs.join("tokens"));
    let tokens = flotilla_telemetry::tokens::TokenFile::load(&tokens)?;
    if tokens.is_empty() {
        tracing::warn!(path = %tokens.path().display(), "no bearer tokens yet: feedback is refused until one is created (flotilla certs token create NAME --scope feedback)");
    }
    config.tokens = Some(tokens);
    config.gate_predictions = args.gate_predictions;
    let router = flotilla_router::Router::start(config).await?;
    println!(
        "router on http://{}/v1/predict (feedback: /v1/feedback, routes: /v1/routes, metrics: /metrics)",
        router.local_addr()
    );
    shutdown_signal().await;
    router.shutdown().await;
    Ok(())
}

/// `flotilla up --list-examples`. A reader that stops early (`| head`) is not an error.
fn list_examples(out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let mut write = || -> std::io::Result<()> {
        for example in examples::EXAMPLES {
            writeln!(out, "{}\n    {}\n", example.name, example.description())?;
        }
        writeln!(out, "Run one with `flotilla up --example NAME`.")?;
        out.flush()
    };
    match write() {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.list_examples {
        return list_examples(&mut std::io::stdout().lock());
    }
    let spec = match &args.sweep {
        Some(path) => SweepSpec::from_file(path)?,
        None => {
            examples::find(args.example.as_deref().unwrap_or("quickstart"))?.prepare(&args.dir)?
        }
    };
    if args.autoscale && args.serve.is_some() {
        bail!(
            "--serve needs agents that stay after the sweep; --autoscale takes them down to zero (use one or the other)"
        );
    }
    let autoscale = if args.autoscale {
        Some(flotilla_sdk::LocalAutoscale {
            program: std::env::current_exe().context("finding the flotilla binary")?,
            max_agents: args.max_agents,
            scale_in_window: args.scale_in_window,
            idle_grace: args.idle_grace,
            interval: args.autoscale_interval,
        })
    } else {
        None
    };
    let options = LocalClusterOptions {
        agents: args.agents,
        slots_per_agent: args.slots,
        dir: Some(args.dir.clone()),
        autoscale,
        ..Default::default()
    };
    let cluster = LocalCluster::start(options).await?;
    if args.autoscale {
        println!(
            "flotilla up: coordinator on {}, autoscaling 0–{} agent process(es) × {} slot(s); state in {}",
            cluster.address(),
            args.max_agents,
            args.slots,
            args.dir.display()
        );
    } else {
        println!(
            "flotilla up: coordinator on {} with {} local agent(s) × {} slot(s); state in {}",
            cluster.address(),
            args.agents,
            args.slots,
            args.dir.display()
        );
    }
    // Feedback needs a token: one made for this run, kept hashed beside the state.
    let token_path = args.dir.join("router-tokens");
    flotilla_telemetry::tokens::revoke(&token_path, "up-feedback")?;
    let feedback_token = flotilla_telemetry::tokens::create(
        &token_path,
        "up-feedback",
        vec![flotilla_telemetry::tokens::Scope::Feedback],
    )?;
    let mut router_config = flotilla_router::RouterConfig::new(
        vec![cluster.address()],
        cluster.router_identity().clone(),
        args.router_listen,
    );
    router_config.tokens = Some(flotilla_telemetry::tokens::TokenFile::load(&token_path)?);
    let router = flotilla_router::Router::start(router_config).await?;
    println!("model router on http://{}/v1/predict", router.local_addr());
    let client = cluster.client().await?;
    let fleet_log = if args.autoscale {
        Some(tokio::spawn(report::follow_fleet(cluster.client().await?)))
    } else {
        None
    };
    let result = async {
        let submitted = client.submit(spec.clone()).await?;
        println!(
            "running sweep {} '{}' ({} trials, {} in parallel)",
            submitted.id, submitted.name, submitted.max_trials, spec.budget.max_parallel
        );
        let summary = tokio::select! {
            summary = report::watch_with_progress(&client, &submitted, None) => summary?,
            () = shutdown_signal() => {
                eprintln!("interrupted: cancelling sweep {}", submitted.id);
                client.cancel(submitted.id).await?;
                client.wait(submitted.id).await?
            }
        };
        let trials = client.trials(summary.id).await?;
        report::print_leaderboard(&summary, &trials, 10);
        report::print_front_of(&spec, &trials);
        let path = args.dir.join("results").join(format!(
            "{}-{}.json",
            summary.id,
            report::file_safe(&summary.name)
        ));
        report::write_results(&path, &summary, &spec, &trials)?;
        println!("results: {}", path.display());
        let detail = client.detail(summary.id).await?;
        let page = args
            .dir
            .join("results")
            .join(report::report_file_name(&summary, true));
        report::write_report(&page, &detail, &trials, true)?;
        println!("report: {}", page.display());
        if let Some(name) = &args.serve {
            serve_winner(&cluster, &summary, name, &router, &feedback_token).await?;
        }
        if args.autoscale {
            // From here the wait reports the fleet itself, up to its last line (0 agents).
            if let Some(fleet_log) = &fleet_log {
                fleet_log.abort();
            }
            let limit = args.scale_in_window + args.idle_grace + Duration::from_secs(60);
            tokio::select! {
                result = report::wait_for_empty_fleet(&client, limit) => result?,
                () = shutdown_signal() => eprintln!("interrupted: stopping the agents now"),
            }
        }
        anyhow::Ok(())
    }
    .await;
    client.close().await;
    if let Some(fleet_log) = fleet_log {
        fleet_log.abort();
    }
    router.shutdown().await;
    cluster.shutdown().await;
    result
}

/// `flotilla up --serve NAME`: the winner becomes NAME's production version, served by the
/// local agents behind the router until interrupted.
async fn serve_winner(
    cluster: &LocalCluster,
    summary: &flotilla_sdk::SweepSummary,
    name: &str,
    router: &flotilla_router::Router,
    feedback_token: &str,
) -> anyhow::Result<()> {
    let admin = cluster.client().await?;
    let registered = admin
        .register_model(flotilla_sdk::RegisterModel {
            name: name.to_string(),
            version: None,
            sweep: summary.id,
            trial: None,
            description: format!("winner of sweep {} '{}'", summary.id, summary.name),
            stage: flotilla_sdk::ModelStage::Production,
        })
        .await;
    let registered = match registered {
        Ok(registered) => registered,
        Err(error) => {
            admin.close().await;
            return Err(error.into());
        }
    };
    let ready = wait_until_served(&admin, &registered).await;
    admin.close().await;
    ready?;
    // The router takes the route at its next report (every second).
    let version = registered.version.to_string();
    let started = std::time::Instant::now();
    while !router.routes_to(name, &version) && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let router = router.local_addr();
    println!(
        "serving {} (trial {}, sha256 {}{}) — try:\n  curl -s http://{router}/v1/predict -d '{{\"model\": \"{name}\", \"instances\": [[…]]}}'\n  curl -s http://{router}/v1/models/{name}:predict -d '{{\"instances\": [[…]]}}'\nlabels go to /v1/feedback with `Authorization: Bearer {feedback_token}` (this run's feedback token)\nCtrl-C stops",
        registered.reference(),
        registered.lineage.trial.number,
        registered.artifact.sha256,
        registered
            .serving
            .as_ref()
            .map(|serving| format!(", by `{} {}`", serving.command, serving.args.join(" ")))
            .unwrap_or_default()
    );
    shutdown_signal().await;
    Ok(())
}

/// Waits until a replica of `version` is ready; fails with the agents' reasons when every
/// replica failed (a serving program that crashes on each start, or never passes its health
/// check).
async fn wait_until_served(
    client: &flotilla_sdk::Client,
    version: &flotilla_sdk::ModelVersion,
) -> anyhow::Result<()> {
    use flotilla_protocol::models::ServeState;
    let reference = version.reference();
    let limit = version
        .serving
        .as_ref()
        .map_or(Duration::from_secs(120), |serving| {
            serving.ready_timeout * 3 + Duration::from_secs(30)
        });
    let started = std::time::Instant::now();
    loop {
        let placements: Vec<_> = client
            .model_placements(Some(&reference.name))
            .await?
            .into_iter()
            .filter(|placement| placement.model == reference)
            .collect();
        if placements
            .iter()
            .any(|placement| placement.state == Some(ServeState::Ready))
        {
            return Ok(());
        }
        let failures: Vec<String> = placements
            .iter()
            .filter_map(|placement| match &placement.state {
                Some(ServeState::Failed(message)) => {
                    Some(format!("{}: {message}", placement.agent.0))
                }
                _ => None,
            })
            .collect();
        if !placements.is_empty() && failures.len() == placements.len() {
            bail!(
                "{reference} could not be served:\n  {}",
                failures.join("\n  ")
            );
        }
        if started.elapsed() > limit {
            bail!("{reference} was not ready on any agent within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sweep(command: SweepCommand) -> anyhow::Result<()> {
    match command {
        SweepCommand::Validate { file } => {
            let spec = SweepSpec::from_file(&file)?;
            let phases = spec.phases();
            if spec.phases.is_empty() {
                println!(
                    "{}: valid sweep '{}' with {} parameter(s)",
                    file.display(),
                    spec.name,
                    spec.space.len()
                );
            } else {
                let described: Vec<String> = phases
                    .iter()
                    .map(|phase| {
                        format!(
                            "{} ({} parameter(s), {} trial(s))",
                            phase.name,
                            phase.space.len(),
                            phase.max_trials
                        )
                    })
                    .collect();
                println!(
                    "{}: valid sweep '{}' with {} phases: {}",
                    file.display(),
                    spec.name,
                    phases.len(),
                    described.join(", ")
                );
            }
        }
        SweepCommand::Submit {
            file,
            watch,
            results,
            connection,
        } => {
            let spec = SweepSpec::from_file(&file)?;
            let client = connection.connect("client").await?;
            let submitted = client.submit(spec.clone()).await?;
            println!("submitted sweep {} '{}'", submitted.id, submitted.name);
            if watch {
                // Follows the leader through failovers; the first connection may be gone.
                let resuming = connection.resuming_watch("client", submitted.id, 0)?;
                let summary =
                    report::watch_with_progress(&client, &submitted, Some(resuming)).await?;
                drop(client);
                let trials = connection
                    .read("client", async |client| client.trials(summary.id).await)
                    .await?;
                report::print_leaderboard(&summary, &trials, 10);
                report::print_front_of(&spec, &trials);
                if let Some(path) = results {
                    report::write_results(&path, &summary, &spec, &trials)?;
                    println!("results: {}", path.display());
                }
            } else {
                client.close().await;
            }
        }
        SweepCommand::Watch {
            id,
            from,
            connection,
        } => {
            let mut watch = connection.resuming_watch("client", id, from)?;
            let mut state = None;
            while let Some(event) = watch.next().await {
                let event = event?;
                if let Some(line) = report::event_line(watch.last_seq(), &event) {
                    println!("{line}");
                }
                if let flotilla_sdk::SweepEvent::SweepFinished(summary) = event {
                    state = Some(summary.state);
                }
            }
            if state.is_none() {
                anyhow::bail!("the watch of sweep {id} ended before the sweep did");
            }
        }
        SweepCommand::Status { id, connection } => {
            let client = connection.connect("client").await?;
            report::print_summaries(&[client.status(id).await?]);
            client.close().await;
        }
        SweepCommand::List { connection } => {
            let client = connection.connect("client").await?;
            report::print_summaries(&client.list().await?);
            client.close().await;
        }
        SweepCommand::Cancel { id, connection } => {
            let client = connection.connect("client").await?;
            let summary = client.cancel(id).await?;
            println!(
                "sweep {} is {:?}; running trials are being stopped",
                summary.id, summary.state
            );
            client.close().await;
        }
        SweepCommand::Best {
            id,
            json,
            connection,
        } => {
            let client = connection.connect("client").await?;
            let detail = client.detail(id).await?;
            if detail.spec.objective.is_multi() {
                // Several objectives: no single trial is best; the front is the answer.
                let trials = client.trials(id).await?;
                client.close().await;
                let front = detail.spec.objective.front(&trials);
                if front.is_empty() {
                    bail!("sweep {id} has no succeeded feasible trial yet");
                }
                if json {
                    let front: Vec<_> = front.iter().map(|t| report::trial_json(t)).collect();
                    println!("{}", serde_json::to_string_pretty(&front)?);
                } else {
                    report::print_front(&detail.spec.objective, &front);
                }
                return Ok(());
            }
            let best = client.best(id).await?;
            client.close().await;
            match (best, json) {
                (None, _) => bail!("sweep {id} has no succeeded feasible trial yet"),
                (Some(trial), true) => println!(
                    "{}",
                    serde_json::to_string_pretty(&report::trial_json(&trial))?
                ),
                (Some(trial), false) => report::print_trial(&trial),
            }
        }
        SweepCommand::Report {
            id,
            format,
            out,
            connection,
        } => {
            let client = connection.connect("client").await?;
            let detail = client.detail(id).await?;
            let trials = client.trials(id).await?;
            client.close().await;
            let html = matches!(format, ReportFormat::Html);
            let path = out
                .unwrap_or_else(|| PathBuf::from(report::report_file_name(&detail.summary, html)));
            report::write_report(&path, &detail, &trials, html)?;
            println!("report: {}", path.display());
        }
        SweepCommand::Results {
            id,
            out,
            connection,
        } => {
            let client = connection.connect("client").await?;
            let detail = client.detail(id).await?;
            let trials = client.trials(id).await?;
            client.close().await;
            match out {
                Some(path) => {
                    report::write_results(&path, &detail.summary, &detail.spec, &trials)?;
                    println!("results: {}", path.display());
                }
                None => report::print_leaderboard(&detail.summary, &trials, usize::MAX),
            }
        }
    }
    Ok(())
}

async fn cluster_agents(connection: Connection) -> anyhow::Result<()> {
    let client = connection.connect("admin").await?;
    let agents = client.agents().await?;
    // A coordinator older than protocol 10 counts GPUs but does not report their use.
    let gpus = if client.welcome().version >= 10 {
        Some(client.agent_gpus().await?)
    } else {
        None
    };
    client.close().await;
    report::print_agents(&agents, gpus.as_deref());
    Ok(())
}

async fn cluster_status(connection: Connection, json: bool) -> anyhow::Result<()> {
    let client = connection.connect("admin").await?;
    let status = client.cluster_status().await?;
    // A coordinator older than protocol 8 has no autoscaler to ask.
    let autoscale = if client.welcome().version >= 8 {
        Some(client.autoscale_status().await?)
    } else {
        None
    };
    client.close().await;
    if json {
        // The cluster status's fields stay at the top level; the autoscaler's view is one
        // more field beside them.
        let mut value = serde_json::to_value(&status)?;
        if let (Some(object), Some(autoscale)) = (value.as_object_mut(), autoscale) {
            object.insert("autoscale".into(), serde_json::to_value(autoscale)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        report::print_cluster_status(&status);
        if let Some(autoscale) = &autoscale {
            report::print_autoscale(autoscale);
        }
    }
    Ok(())
}

async fn cluster_scale(
    connection: Connection,
    request: flotilla_sdk::ScaleRequest,
) -> anyhow::Result<()> {
    if request.desired.is_none() && request.min.is_none() && request.max.is_none() {
        bail!("give --desired N and/or --min A --max B");
    }
    let client = connection.connect("admin").await?;
    let status = client.scale(request).await;
    client.close().await;
    report::print_autoscale(&status?);
    Ok(())
}

async fn agent_admin(command: AgentAdminCommand) -> anyhow::Result<()> {
    use flotilla_sdk::AgentAction;
    let (id, connection, action, done) = match command {
        AgentAdminCommand::Drain { id, connection } => (
            id,
            connection,
            AgentAction::Drain,
            "draining: its trials checkpoint and resume elsewhere",
        ),
        AgentAdminCommand::Cordon { id, connection } => (
            id,
            connection,
            AgentAction::Cordon,
            "cordoned: nothing new is placed there",
        ),
        AgentAdminCommand::Uncordon { id, connection } => {
            (id, connection, AgentAction::Uncordon, "uncordoned")
        }
    };
    let client = connection.connect("admin").await?;
    let agents = client.agent_admin(AgentId(id.clone()), action).await;
    client.close().await;
    agents?;
    println!("agent {id} {done}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{list_examples, parse_retention, parse_team_share};

    /// A reader that went away, as `flotilla up --list-examples | head` leaves behind.
    struct ClosedPipe;

    impl std::io::Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn listing_examples_into_a_closed_pipe_is_not_an_error() {
        list_examples(&mut ClosedPipe).expect("a closed pipe ends the listing quietly");
        let mut listed = Vec::new();
        list_examples(&mut listed).expect("listing");
        let listed = String::from_utf8(listed).expect("text");
        assert!(listed.starts_with("quickstart\n"), "{listed}");
        assert!(listed.ends_with("`flotilla up --example NAME`.\n"));
    }

    #[test]
    fn team_shares_are_parsed_and_bad_ones_named() {
        assert_eq!(parse_team_share("vision=2"), Ok(("vision".into(), 2.0)));
        assert_eq!(
            parse_team_share("ml-ops.eu=0.5"),
            Ok(("ml-ops.eu".into(), 0.5))
        );
        for (bad, says) in [
            ("vision", "NAME=WEIGHT"),
            ("=2", "not a team name"),
            ("a team=2", "not a team name"),
            ("vision=two", "not a number"),
            ("vision=0", "above 0"),
            ("vision=inf", "above 0"),
            ("vision=5000", "at most 1000"),
        ] {
            let error = parse_team_share(bad).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn retention_is_a_duration_or_never() {
        assert_eq!(
            parse_retention("7d").expect("a week").0,
            Some(std::time::Duration::from_secs(7 * 24 * 3600))
        );
        assert_eq!(parse_retention("never").expect("never").0, None);
        let error = parse_retention("soon").expect_err("not a duration");
        assert!(
            error.contains("\"soon\"") && error.contains("never"),
            "{error}"
        );
    }
}
