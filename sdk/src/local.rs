//! An embedded cluster: a coordinator and agents in this process, talking real QUIC with
//! mutual TLS over loopback, certificates made in memory, state in a local file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_agent::{Agent, AgentConfig};
use flotilla_coordinator::{Coordinator, CoordinatorConfig};
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
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            agents: 2,
            slots_per_agent: 2,
            dir: None,
            stop_grace: Duration::from_secs(5),
        }
    }
}

pub struct LocalCluster {
    coordinator: Coordinator,
    agents: Vec<Agent>,
    client_identity: Identity,
    admin_identity: Identity,
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
        let ca = ClusterCa::generate("flotilla-up")?;
        let listen: SocketAddr = "127.0.0.1:0".parse().map_err(embedded)?;
        let config = CoordinatorConfig::new(
            listen,
            ca.issue(Role::Coordinator, "coordinator")?,
            dir.join("state.log"),
        );
        let coordinator = Coordinator::start(config).await.map_err(embedded)?;
        let mut agents = Vec::new();
        for index in 0..options.agents {
            let name = format!("local-agent-{index}");
            let mut config = AgentConfig::new(
                coordinator.local_addr(),
                ca.issue(Role::Agent, &name)?,
                AgentId(name.clone()),
                options.slots_per_agent,
                dir.join("agents").join(&name),
            );
            config.stop_grace = options.stop_grace;
            // One artifact store for every agent, as a cluster shares a bucket: a trial
            // resumed on another agent reads the checkpoints the first one wrote.
            config.artifacts = Some(dir.join("artifacts").display().to_string());
            agents.push(Agent::start(config).await.map_err(embedded)?);
        }
        Ok(LocalCluster {
            coordinator,
            agents,
            client_identity: ca.issue(Role::Client, "local-client")?,
            admin_identity: ca.issue(Role::Admin, "local-admin")?,
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

    /// A client connected with the cluster's admin certificate.
    pub async fn client(&self) -> Result<Client, SdkError> {
        Client::connect(self.address(), &self.admin_identity).await
    }

    /// Stops the agents (draining their trials), then the coordinator.
    pub async fn shutdown(self) {
        for agent in self.agents {
            agent.shutdown().await;
        }
        self.coordinator.shutdown().await;
    }
}
