//! The Flotilla agent: runs trials on one host for the coordinator.
//!
//! # Layout
//!
//! - [`Agent`]: start an agent and stop it (draining its trials).
//! - [`root`]: AgentRoot, which obeys commands and supervises one [`trial`] actor per attempt.
//! - [`link`]: the QUIC link to the coordinator, with reconnects.
//! - [`leases`]: with etcd, checkpoint leases that fence each attempt's checkpoint pointer.
//! - [`imds`]: with `--imds`, the spot and lifecycle watcher (rebalance recommendations,
//!   interruption notices, the group's termination lifecycle state).
//! - [`serving`]: with `--serve`, model versions the coordinator assigns, answered over HTTP;
//!   sealing of registered versions' artifacts.
//! - [`metric_line`]: the `@flotilla name=value` and `@flotilla checkpoint` lines command
//!   trials print.
//! - [`gpus`]: the agent's GPUs and which attempt holds each.
//! - [`trial_checkpoint`]: command trials' checkpoint directories, taken at commit, stored
//!   as one archive, restored for a later attempt.
//! - [`metrics`]: the Prometheus endpoint (`--metrics-listen`): slots, trial progress,
//!   checkpoint writes, GPUs through NVML.

pub mod gpus;
pub mod imds;
pub mod leases;
pub mod link;
pub mod metric_line;
pub mod metrics;
pub mod root;
pub mod served_program;
pub mod serving;
pub mod trial;
pub mod trial_checkpoint;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use flotilla_protocol::AgentId;
use flotilla_protocol::messages::Role;
use flotilla_protocol::tls::{self, Identity};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, Message, RpcReplyPort};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::root::{AgentMsg, AgentRoot, RootArgs};

#[derive(Clone)]
pub struct AgentConfig {
    /// The coordinators to try, in order; a follower redirects to the leader.
    pub coordinators: Vec<SocketAddr>,
    pub identity: Identity,
    /// Stable across restarts of the same agent, so the coordinator recognises it.
    pub agent_id: AgentId,
    pub slots: u32,
    /// The GPUs this agent offers: found through NVML, or declared (`--gpus`).
    pub gpus: gpus::GpuSpec,
    /// A command trial's checkpoint larger than this is refused (`--checkpoint-max-bytes`).
    pub checkpoint_max_bytes: u64,
    /// Checkpoints and scratch space for trials.
    pub work_dir: PathBuf,
    /// Between SIGTERM and SIGKILL when a trial is stopped.
    pub stop_grace: Duration,
    /// Where built-in trainers write checkpoints: a folder or `s3://bucket/prefix`. Every
    /// agent of a cluster should share it so a trial can resume anywhere (default:
    /// `<work_dir>/artifacts`).
    pub artifacts: Option<String>,
    /// Device for built-in trainers: auto, cpu, cuda, cuda:N.
    pub device: flotilla_train::DeviceChoice,
    /// With etcd: checkpoint leases (the TTL is the checkpoint lease's).
    pub etcd: Option<flotilla_etcd::EtcdConfig>,
    /// Where to serve `/metrics` and `/healthz` (none: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer tokens (read scope) for `/metrics`, reloaded when the file changes. None:
    /// open to whoever reaches `metrics_listen`.
    pub http_tokens: Option<flotilla_telemetry::tokens::TokenFile>,
    /// Watch the instance metadata service for spot and lifecycle notices (none: not
    /// watched).
    pub imds: Option<imds::ImdsConfig>,
    /// Where to serve model predictions over HTTPS (none: the agent does not serve).
    pub serve_listen: Option<SocketAddr>,
    /// The serving URL the coordinator hands to routers (default: `https://` and the bound
    /// address, with the hostname in place of an unspecified IP).
    pub serve_advertise: Option<String>,
    /// The cluster's revocation list (`crl.pem`) for the serving endpoint: read at start and
    /// reloaded when it changes; a missing file revokes nothing.
    pub serve_crl: Option<PathBuf>,
}

impl AgentConfig {
    pub fn new(
        coordinator: SocketAddr,
        identity: Identity,
        agent_id: AgentId,
        slots: u32,
        work_dir: PathBuf,
    ) -> AgentConfig {
        AgentConfig {
            coordinators: vec![coordinator],
            identity,
            agent_id,
            slots,
            gpus: gpus::GpuSpec::none(),
            checkpoint_max_bytes: DEFAULT_CHECKPOINT_MAX_BYTES,
            work_dir,
            stop_grace: Duration::from_secs(10),
            artifacts: None,
            device: flotilla_train::DeviceChoice::Auto,
            etcd: None,
            metrics_listen: None,
            http_tokens: None,
            imds: None,
            serve_listen: None,
            serve_advertise: None,
            serve_crl: None,
        }
    }
}

/// The default limit on one command-trial checkpoint: 4 GiB (it is packed in memory).
pub const DEFAULT_CHECKPOINT_MAX_BYTES: u64 = 4 << 30;

async fn ask<M: Message, R: Send + 'static>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<R>) -> M,
) -> anyhow::Result<R> {
    match actor.call(build, Some(Duration::from_secs(30))).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(_) => Err(anyhow!("no answer")),
        Err(error) => Err(anyhow!("actor unreachable: {error}")),
    }
}

/// A running agent.
pub struct Agent {
    root: ActorRef<AgentMsg>,
    root_done: tokio::task::JoinHandle<()>,
    link: tokio::task::JoinHandle<Result<(), link::LinkError>>,
    shutdown: CancellationToken,
    leases: Option<std::sync::Arc<leases::CheckpointLeases>>,
    metrics_endpoint: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    imds: Option<tokio::task::JoinHandle<()>>,
    serving: serving::Serving,
    serve_task: Option<(Option<SocketAddr>, tokio::task::JoinHandle<()>)>,
}

impl Agent {
    pub async fn start(config: AgentConfig) -> anyhow::Result<Agent> {
        if config.identity.role()? != Role::Agent {
            anyhow::bail!("the agent needs a certificate with the agent role");
        }
        if config.coordinators.is_empty() {
            anyhow::bail!("an agent needs at least one coordinator address");
        }
        if config.slots == 0 {
            anyhow::bail!("an agent needs at least one slot");
        }
        let metrics = metrics::AgentMetrics::new();
        metrics
            .info
            .with_label_values(&[
                config.agent_id.0.as_str(),
                hostname().as_str(),
                env!("CARGO_PKG_VERSION"),
            ])
            .set(1);
        // NVML loads on a blocking thread: the driver's library can be slow to open.
        let nvml = std::sync::Arc::new(tokio::task::spawn_blocking(metrics::Gpus::open).await?);
        let gpu_indices = config
            .gpus
            .resolve(nvml.count())
            .map_err(|message| anyhow!("--gpus: {message}"))?;
        if !gpu_indices.is_empty() {
            tracing::info!(gpus = %gpus::visible_devices(&gpu_indices), "GPUs offered to trials");
        }
        let gpu_pool = gpus::GpuPool::new(&gpu_indices);
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(flotilla_telemetry::bind(address).await?),
            None => None,
        };
        let (outbox, outbox_receiver) = mpsc::unbounded_channel();
        let artifacts = config
            .artifacts
            .clone()
            .unwrap_or_else(|| config.work_dir.join("artifacts").display().to_string());
        let leases = match &config.etcd {
            Some(etcd) => Some(
                leases::CheckpointLeases::connect(etcd.clone())
                    .await
                    .map_err(|error| anyhow!("checkpoint leases: {error}"))?,
            ),
            None => None,
        };
        let trainer_env = trial::TrainerEnv {
            leases: leases.clone(),
            artifacts: flotilla_train::ArtifactStore::open(&artifacts)
                .context("opening the artifact store")?,
            device: config.device,
            data_dir: std::env::current_dir().unwrap_or_else(|_| config.work_dir.clone()),
        };
        let shutdown = CancellationToken::new();
        let serve_listener = match config.serve_listen {
            Some(address) => Some(serving::bind(address).await?),
            None => None,
        };
        let serve_endpoint = match &serve_listener {
            Some(listener) => {
                let bound = listener.local_addr()?;
                Some(config.serve_advertise.clone().unwrap_or_else(|| {
                    if bound.ip().is_unspecified() {
                        format!("https://{}:{}", hostname(), bound.port())
                    } else {
                        format!("https://{bound}")
                    }
                }))
            }
            None => None,
        };
        let serving = serving::Serving::new(
            serve_endpoint,
            trainer_env.artifacts.clone(),
            &config.work_dir,
            outbox.clone(),
            metrics.clone(),
            gpu_pool.clone(),
            shutdown.clone(),
        );
        let root_args = RootArgs {
            slots: config.slots,
            outbox,
            checkpoint_root: config.work_dir.join("checkpoints"),
            stop_grace: config.stop_grace,
            trainer_env,
            metrics: metrics.clone(),
            serving: serving.clone(),
            gpus: gpu_pool.clone(),
            checkpoint_max_bytes: config.checkpoint_max_bytes,
        };
        let (root, root_done) = Actor::spawn(None, AgentRoot, root_args)
            .await
            .context("starting the agent's actors")?;
        let link_config = link::LinkConfig {
            coordinators: config.coordinators.clone(),
            client_config: tls::client_config(&config.identity)?,
            agent_id: config.agent_id.clone(),
            hostname: hostname(),
            slots: config.slots,
            gpus: gpu_indices.len() as u32,
        };
        let serve_task = match serve_listener {
            Some(listener) => {
                let tls =
                    serving::ServingTls::load(config.identity.clone(), config.serve_crl.clone())?;
                let address = listener.local_addr().ok();
                Some((
                    address,
                    tokio::spawn(serving::serve(listener, tls, serving.clone())),
                ))
            }
            None => None,
        };
        let metrics_endpoint = match metrics_listener {
            Some(listener) => {
                let address = listener.local_addr()?;
                let task = tokio::spawn(metrics::serve(
                    listener,
                    metrics.clone(),
                    nvml.clone(),
                    gpu_pool.clone(),
                    config.http_tokens.clone(),
                    shutdown.clone(),
                ));
                Some((address, task))
            }
            None => None,
        };
        let imds = config.imds.clone().map(|imds| {
            tokio::spawn(imds::watch(
                imds,
                root.clone(),
                metrics.clone(),
                shutdown.clone(),
            ))
        });
        let link = tokio::spawn(link::run(
            link_config,
            root.clone(),
            outbox_receiver,
            shutdown.clone(),
        ));
        Ok(Agent {
            root,
            root_done,
            link,
            shutdown,
            leases,
            metrics_endpoint,
            imds,
            serving,
            serve_task,
        })
    }

    /// Where predictions are served, when they are.
    pub fn serve_addr(&self) -> Option<SocketAddr> {
        self.serve_task.as_ref().and_then(|(address, _)| *address)
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().map(|(address, _)| *address)
    }

    /// Resolves when the agent cannot go on: the link gave up for good (the coordinator
    /// refused this agent) or AgentRoot stopped. The caller should exit (its trial
    /// processes are killed with their actors).
    pub async fn failed(&mut self) -> anyhow::Error {
        tokio::select! {
            link = &mut self.link => match link {
                Ok(Err(error)) => anyhow!(error),
                Ok(Ok(())) => anyhow!("the link stopped"),
                Err(error) => anyhow!("the link task failed: {error}"),
            },
            root = &mut self.root_done => match root {
                Ok(()) => anyhow!("the agent's root actor stopped"),
                Err(error) => anyhow!("the agent's root actor failed: {error}"),
            },
        }
    }

    /// Stops every trial (their outcomes are reported as agent shutdown, which does not
    /// spend their retry budget), flushes the reports, and stops.
    pub async fn shutdown(self) {
        if tokio::time::timeout(Duration::from_secs(30), ask(&self.root, AgentMsg::Drain))
            .await
            .is_err()
        {
            tracing::warn!("trials did not stop in time");
        }
        self.shutdown.cancel();
        let _ = self.link.await;
        if let Some((_, endpoint)) = self.metrics_endpoint {
            let _ = endpoint.await;
        }
        if let Some(imds) = self.imds {
            let _ = imds.await;
        }
        if let Some((_, serve)) = self.serve_task {
            let _ = serve.await;
        }
        self.serving.stopped().await;
        self.root.stop(None);
        let _ = self.root_done.await;
        if let Some(leases) = self.leases {
            leases.shutdown().await;
        }
    }
}

/// The agent id kept in `work_dir/agent-id`, created on first use as `<hostname>-<random>`.
/// It survives restarts, so a restarted agent is recognised and its lost trials are
/// re-placed at once instead of after the liveness timeout. Agents need separate work dirs.
pub fn stable_agent_id(work_dir: &std::path::Path) -> anyhow::Result<AgentId> {
    let path = work_dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(AgentId(text.trim().to_string())),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(anyhow!("cannot read {}: {error}", path.display())),
    }
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    let id = format!("{}-{:06x}", hostname(), rand::random::<u32>() & 0xff_ffff);
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(AgentId(id))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
