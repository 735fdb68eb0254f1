//! The Flotilla coordinator: accepts agents and clients over QUIC, runs sweeps, places
//! trials, and keeps control state in a [`store::StateStore`].
//!
//! # Layout
//!
//! - [`Coordinator`]: start and stop a coordinator (the binary and `flotilla up` use it).
//! - [`actors`]: Leader, Registry, Scheduler and one Sweep actor per sweep.
//! - [`gateway`]: QUIC accept loop, handshake and role checks, agent and client sessions.
//! - [`placement`], [`selection`]: pure decisions (where a trial runs, which trial wins).
//! - [`store`]: the `StateStore` trait and the crash-safe local file store.

pub mod actors;
mod clock;
pub mod gateway;
pub mod placement;
pub mod selection;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use flotilla_protocol::Epoch;
use flotilla_protocol::tls::{self, Identity};
use ractor::{Actor, ActorRef};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actors::leader::{Leader, LeaderArgs, LeaderMsg};
use crate::gateway::SessionContext;
use crate::store::StateStore;
use crate::store::local::LocalStore;

/// How a coordinator runs. Defaults suit a laptop.
#[derive(Clone)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub identity: Identity,
    /// The local state file.
    pub state_path: PathBuf,
    /// Heartbeat period asked of agents.
    pub heartbeat_interval: Duration,
    /// An agent with no heartbeat for this long is lost; its trials run elsewhere.
    pub agent_timeout: Duration,
    pub name: String,
}

impl CoordinatorConfig {
    pub fn new(listen: SocketAddr, identity: Identity, state_path: PathBuf) -> CoordinatorConfig {
        CoordinatorConfig {
            listen,
            identity,
            state_path,
            heartbeat_interval: Duration::from_secs(1),
            agent_timeout: Duration::from_secs(6),
            name: format!("coordinator-{}", std::process::id()),
        }
    }
}

/// A running coordinator. Dropping it without [`Coordinator::shutdown`] leaves the actors
/// running until the runtime ends; call `shutdown` for a clean stop.
pub struct Coordinator {
    local_addr: SocketAddr,
    epoch: Epoch,
    leader: ActorRef<LeaderMsg>,
    leader_done: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    store: Arc<LocalStore>,
}

impl Coordinator {
    /// Opens the store, takes a new epoch, starts the actors and the QUIC endpoint.
    pub async fn start(config: CoordinatorConfig) -> anyhow::Result<Coordinator> {
        if config.identity.role()? != flotilla_protocol::messages::Role::Coordinator {
            anyhow::bail!("the coordinator needs a certificate with the coordinator role");
        }
        let store = Arc::new(LocalStore::open(&config.state_path)?);
        let epoch = store.next_epoch().await?;
        let args = LeaderArgs {
            store: store.clone() as Arc<dyn StateStore>,
            epoch,
            agent_timeout: config.agent_timeout,
        };
        let (leader, leader_done) = Actor::spawn(None, Leader, args)
            .await
            .context("starting the coordinator's actors")?;
        let (registry, scheduler) = actors::ask(&leader, LeaderMsg::Parts).await?;
        let server_config = tls::server_config(&config.identity)?;
        let endpoint = quinn::Endpoint::server(server_config, config.listen)
            .with_context(|| format!("cannot listen on {} (UDP)", config.listen))?;
        let local_addr = endpoint.local_addr()?;
        let context = Arc::new(SessionContext {
            epoch,
            name: config.name.clone(),
            heartbeat_interval: config.heartbeat_interval,
            leader: leader.clone(),
            registry,
            scheduler,
            connections: AtomicU64::new(1),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(gateway::accept_loop(
            endpoint,
            context,
            shutdown.clone(),
            tasks.clone(),
        ));
        // Fail-stop when the store cannot persist: a restart resumes from what is durable.
        let (watched_store, watched_leader, stop) =
            (store.clone(), leader.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                error = watched_store.failed() => {
                    tracing::error!(%error, "the state store failed; the coordinator stops");
                    watched_leader.stop(Some(format!("state store failed: {error}")));
                }
            }
        });
        tracing::info!(address = %local_addr, %epoch, state = %config.state_path.display(), "coordinator listening");
        Ok(Coordinator {
            local_addr,
            epoch,
            leader,
            leader_done,
            shutdown,
            tasks,
            store,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Resolves when the coordinator's actors stopped on their own (a failure).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.leader_done).await;
    }

    /// Stops accepting, ends every session, stops the actors and flushes the store.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.leader.stop(Some("shutdown".into()));
        let _ = self.leader_done.await;
        if let Err(error) = self.store.flush().await {
            tracing::error!(%error, "could not flush the state store on shutdown");
        }
        self.store.close();
    }
}
