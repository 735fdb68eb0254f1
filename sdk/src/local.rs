//! An embedded cluster: a coordinator and agents in this process, talking real QUIC with
//! mutual TLS over loopback, certificates made in memory, state in a local file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::{Arc, OnceLock};

use flotilla_agent::{Agent, AgentConfig};
use flotilla_autoscale::Policy;
use flotilla_autoscale::local::{Launcher, LocalProvider};
use flotilla_coordinator::{AutoscalerConfig, Coordinator, CoordinatorConfig};
use flotilla_protocol::AgentId;
use flotilla_protocol::messages::Role;
use flotilla_protocol::tls::{ClusterCa, Identity};

use crate::{Client, SdkError};

#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    pub agents: u32,
    pub slots_per_agent: u32,
    /// Where state, checkpoints and results go; a temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Between SIGTERM and SIGKILL when a trial is stopped.
    pub stop_grace: Duration,
    /// Instead of `agents` in this process, let the coordinator's autoscaler start and stop
    /// agent processes (the `local` provider) from demand.
    pub autoscale: Option<LocalAutoscale>,
    /// In-process agents also serve model versions over HTTP on a free loopback port.
    pub serve: bool,
    /// How long a finished sweep stays in the state file before it moves to the archive
    /// (`archive/sweeps/` in the cluster's artifact folder); `None`: for ever.
    pub retain_finished: Option<Duration>,
}

/// Autoscaled local agents: separate `flotilla agent` processes, one per "instance".
#[derive(Debug, Clone)]
pub struct LocalAutoscale {
    /// The `flotilla` binary (it runs `flotilla agent …`).
    pub program: PathBuf,
    pub max_agents: u32,
    pub scale_in_window: Duration,
    pub idle_grace: Duration,
    pub interval: Duration,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            agents: 2,
            slots_per_agent: 2,
            dir: None,
            stop_grace: Duration::from_secs(5),
            autoscale: None,
            serve: true,
            retain_finished: Some(flotilla_coordinator::DEFAULT_RETAIN_FINISHED),
        }
    }
}

pub struct LocalCluster {
    coordinator: Coordinator,
    agents: Vec<Agent>,
    fleet: Option<Arc<LocalProvider>>,
    client_identity: Identity,
    admin_identity: Identity,
    router_identity: Identity,
    dir: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

fn embedded(error: impl std::fmt::Display) -> SdkError {
    SdkError::Embedded(error.to_string())
}

impl LocalCluster {
    pub async fn start(options: LocalClusterOptions) -> Result<LocalCluster, SdkError> {
        let (dir, temporary) = match options.dir {
            Some(dir) => (dir, None),
            None => {
                let temporary = tempfile::tempdir().map_err(embedded)?;
                (temporary.path().to_path_buf(), Some(temporary))
            }
        };
        std::fs::create_dir_all(&dir)
            .map_err(|error| embedded(format!("cannot create {}: {error}", dir.display())))?;
        let ca = Arc::new(ClusterCa::generate("flotilla-up")?);
        let listen: SocketAddr = "127.0.0.1:0".parse().map_err(embedded)?;
        let mut config = CoordinatorConfig::new(
            listen,
            ca.issue(Role::Coordinator, "coordinator")?,
            dir.join("state.log"),
        );
        // Every agent has a certificate bound to its id (issued here, or by the launcher when
        // it starts one), so none may register as another.
        config.require_agent_ids = true;
        config.archive = Some(dir.join("artifacts").display().to_string());
        config.retain_finished = options.retain_finished;
        // The launcher needs the coordinator's address, known once it has bound.
        let address = Arc::new(OnceLock::new());
        let fleet = match &options.autoscale {
            Some(autoscale) => {
                let fleet = Arc::new(local_fleet(
                    &ca,
                    &dir,
                    autoscale,
                    options.slots_per_agent,
                    options.stop_grace,
                    address.clone(),
                )?);
                let policy = Policy {
                    min: 0,
                    max: autoscale.max_agents,
                    slots_per_instance: options.slots_per_agent,
                    scale_in_window: autoscale.scale_in_window,
                    idle_grace: autoscale.idle_grace,
                };
                let mut scaler = AutoscalerConfig::new(fleet.clone(), policy);
                scaler.interval = autoscale.interval;
                config.autoscaler = Some(scaler);
                Some(fleet)
            }
            None => None,
        };
        let coordinator = Coordinator::start(config).await.map_err(embedded)?;
        let _ = address.set(coordinator.local_addr());
        let mut agents = Vec::new();
        let in_process = if fleet.is_some() { 0 } else { options.agents };
        for index in 0..in_process {
            let name = format!("local-agent-{index}");
            let mut config = AgentConfig::new(
                coordinator.local_addr(),
                ca.issue_agent(&name)?,
                AgentId(name.clone()),
                options.slots_per_agent,
                dir.join("agents").join(&name),
            );
            config.stop_grace = options.stop_grace;
            // One artifact store for every agent, as a cluster shares a bucket: a trial
            // resumed on another agent reads the checkpoints the first one wrote.
            config.artifacts = Some(dir.join("artifacts").display().to_string());
            if options.serve {
                config.serve_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            }
            agents.push(Agent::start(config).await.map_err(embedded)?);
        }
        Ok(LocalCluster {
            coordinator,
            agents,
            fleet,
            client_identity: ca.issue(Role::Client, "local-client")?,
            admin_identity: ca.issue(Role::Admin, "local-admin")?,
            router_identity: ca.issue(Role::Router, "local-router")?,
            dir,
            _temporary: temporary,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.coordinator.local_addr()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn client_identity(&self) -> &Identity {
        &self.client_identity
    }

    pub fn admin_identity(&self) -> &Identity {
        &self.admin_identity
    }

    /// The certificate a model router uses (its role allows `RouterSync` and nothing else).
    pub fn router_identity(&self) -> &Identity {
        &self.router_identity
    }

    /// A client connected with the cluster's admin certificate.
    pub async fn client(&self) -> Result<Client, SdkError> {
        Client::connect(self.address(), &self.admin_identity).await
    }

    /// Stops the agents (draining their trials), then the coordinator. With autoscaling the
    /// coordinator (and its autoscaler) stops first, then the agent processes.
    pub async fn shutdown(self) {
        for agent in self.agents {
            agent.shutdown().await;
        }
        self.coordinator.shutdown().await;
        if let Some(fleet) = self.fleet {
            fleet.shutdown(Duration::from_secs(15)).await;
        }
    }
}

/// The `local` provider for an embedded cluster: starts `PROGRAM agent …` per instance with
/// a certificate bound to the instance's id (issued under `dir/certs` as it starts), logging
/// to `dir/agents/ID.log`.
fn local_fleet(
    ca: &Arc<ClusterCa>,
    dir: &Path,
    autoscale: &LocalAutoscale,
    slots: u32,
    stop_grace: Duration,
    address: Arc<OnceLock<SocketAddr>>,
) -> Result<LocalProvider, SdkError> {
    let certs = dir.join("certs");
    ca.write_ca(&certs)?;
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents)
        .map_err(|error| embedded(format!("cannot create {}: {error}", agents.display())))?;
    let program = autoscale.program.clone();
    let artifacts = dir.join("artifacts");
    let ca = ca.clone();
    let launcher: Launcher = Arc::new(move |id: &str| {
        let mut command = tokio::process::Command::new(&program);
        // A failure here shows in the agent's log: it cannot load the missing identity.
        let identity = ca.write_bound_agent(&certs, id).unwrap_or_else(|error| {
            tracing::error!(%error, agent = id, "cannot issue the agent's certificate");
            format!("agent-{id}")
        });
        let coordinator = address
            .get()
            .map_or_else(|| "127.0.0.1:7070".to_string(), ToString::to_string);
        command
            .arg("agent")
            .arg("--coordinator")
            .arg(coordinator)
            .arg("--certs")
            .arg(&certs)
            .arg("--identity")
            .arg(identity)
            .arg("--id")
            .arg(id)
            .arg("--slots")
            .arg(slots.to_string())
            .arg("--work-dir")
            .arg(agents.join(id))
            .arg("--artifacts")
            .arg(&artifacts)
            .arg("--stop-grace")
            .arg(format!("{}ms", stop_grace.as_millis()))
            .stdin(std::process::Stdio::null());
        match std::fs::File::create(agents.join(format!("{id}.log"))) {
            Ok(log) => {
                if let Ok(copy) = log.try_clone() {
                    command.stdout(copy);
                }
                command.stderr(log);
            }
            Err(_) => {
                command.stdout(std::process::Stdio::null());
                command.stderr(std::process::Stdio::null());
            }
        }
        command
    });
    Ok(LocalProvider::new(0, autoscale.max_agents, launcher))
}
