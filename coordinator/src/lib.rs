//! The Flotilla coordinator: accepts agents and clients over QUIC, runs sweeps, places
//! trials, and keeps control state in a [`store::StateStore`].
//!
//! # Layout
//!
//! - [`Coordinator`]: start and stop a coordinator (the binary and `flotilla up` use it).
//! - [`actors`]: Leader, Registry, Scheduler and one Sweep actor per sweep.
//! - [`gateway`]: QUIC accept loop, handshake and role checks, agent and client sessions.
//! - [`placement`], [`selection`]: pure decisions (where a trial runs, which trial wins).
//! - [`store`]: the `StateStore` trait, the crash-safe local file store and the etcd store.
//! - [`ha`]: etcd election, the leader's lease and self-fencing.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! # Terms
//!
//! A coordinator *leads* for a term: the Leader actor tree, a store that writes as that
//! term's epoch, and the sessions of agents and clients. With the local store there is one
//! term for the life of the process. With etcd, the process campaigns; each election won
//! starts a term, and a term ends when the lease is lost, the store fails or the actors stop.
//! The process then follows and campaigns again: its sessions are closed (peers reconnect
//! and are redirected), its actors stopped, its store closed.

pub mod actors;
pub mod archive;
mod clock;
pub mod gateway;
pub mod ha;
pub mod maintenance;
pub mod metrics;
pub mod notify;
pub mod placement;
pub mod revocation;
pub mod selection;
pub mod store;
pub mod web;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, anyhow};
use flotilla_protocol::Epoch;
use flotilla_protocol::tls::{self, Identity};
use ractor::{Actor, ActorRef};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::actors::autoscaler::AutoscalerConfig;
use crate::actors::leader::{Leader, LeaderArgs, LeaderMsg, LeaderParts};
use crate::gateway::{SessionContext, Standing};
use crate::ha::{EtcdConfig, Fence, Leadership};
use crate::store::StateStore;
use crate::store::etcd::EtcdStore;
use crate::store::local::LocalStore;

/// How a coordinator runs. Defaults suit a laptop.
#[derive(Clone)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub identity: Identity,
    /// The local state file (used without etcd).
    pub state_path: PathBuf,
    /// Heartbeat period asked of agents.
    pub heartbeat_interval: Duration,
    /// An agent with no heartbeat for this long is lost; its trials run elsewhere.
    pub agent_timeout: Duration,
    /// An agent that loses the trials it runs this many times within 10 minutes is cordoned
    /// automatically (0: never).
    pub cordon_after_losses: u32,
    /// Each team's weight when sweeps share the cluster (`--team-share NAME=WEIGHT`); a
    /// team not named weighs 1. See `flotilla_protocol::spec::Scheduling`.
    pub team_shares: BTreeMap<String, f64>,
    pub name: String,
    /// Run highly available: elect a leader and keep state in etcd.
    pub etcd: Option<EtcdConfig>,
    /// The address peers should use to reach this coordinator (default: the bound address).
    pub advertise: Option<SocketAddr>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` over HTTP (TCP); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// Webhooks told when a sweep ends (Slack-compatible JSON).
    pub webhooks: Vec<notify::Webhook>,
    /// Size the agent fleet from demand while leading (`--autoscale`).
    pub autoscaler: Option<AutoscalerConfig>,
    /// Between checks of each canary rollout.
    pub rollout_check_interval: Duration,
    /// The cluster CA's revocation list (`crl.pem` from `flotilla certs revoke`), reloaded
    /// when it changes. None: nothing is revoked.
    pub crl_path: Option<PathBuf>,
    /// Refuse agent certificates that are not bound to one agent id.
    pub require_agent_ids: bool,
    /// Bearer tokens (read scope) for the web view's API and `/metrics`, reloaded when the
    /// file changes. None: those paths are open to whoever reaches `metrics_listen`.
    pub http_tokens: Option<flotilla_telemetry::tokens::TokenFile>,
    /// The artifact store settled sweeps are archived in, under `archive/sweeps/` (a folder
    /// or `s3://bucket/prefix`). Default: the state file's folder without etcd; with etcd
    /// none, so nothing is archived until every coordinator can read the same location.
    pub archive: Option<String>,
    /// How long a settled sweep stays in the state store before it is archived; `None`:
    /// for ever.
    pub retain_finished: Option<Duration>,
    /// etcd compaction, defragmentation and size reporting while leading (with etcd).
    pub etcd_maintenance: maintenance::Maintenance,
}

/// How long a settled sweep stays in the state store by default: a week.
pub const DEFAULT_RETAIN_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

impl CoordinatorConfig {
    /// The archive this coordinator reads and writes, if any (see [`Self::archive`]).
    pub fn archive_location(&self) -> Option<String> {
        match (&self.archive, &self.etcd) {
            (Some(location), _) => Some(location.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(
                self.state_path
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."))
                    .display()
                    .to_string(),
            ),
        }
    }

    pub fn new(listen: SocketAddr, identity: Identity, state_path: PathBuf) -> CoordinatorConfig {
        CoordinatorConfig {
            listen,
            identity,
            state_path,
            heartbeat_interval: Duration::from_secs(1),
            agent_timeout: Duration::from_secs(6),
            cordon_after_losses: 3,
            team_shares: BTreeMap::new(),
            name: format!("coordinator-{}", std::process::id()),
            etcd: None,
            advertise: None,
            metrics_listen: None,
            webhooks: Vec::new(),
            autoscaler: None,
            rollout_check_interval: Duration::from_secs(1),
            crl_path: None,
            require_agent_ids: false,
            http_tokens: None,
            archive: None,
            retain_finished: Some(DEFAULT_RETAIN_FINISHED),
            etcd_maintenance: maintenance::Maintenance::default(),
        }
    }
}

/// What a leader tells `cluster status` about the replicas and etcd.
pub struct ClusterView {
    pub client: etcd_client::Client,
    pub config: EtcdConfig,
}

impl ClusterView {
    /// Every campaigning replica (leader first) and each etcd member's health.
    pub async fn describe(
        &self,
    ) -> (
        Vec<flotilla_protocol::messages::ReplicaInfo>,
        Vec<flotilla_protocol::messages::EtcdMemberStatus>,
    ) {
        use flotilla_protocol::messages::{EtcdMemberStatus, ReplicaInfo};
        let timeout = Duration::from_secs(2);
        let mut client = self.client.clone();
        let election = format!("{}/", self.config.election_name());
        let mut replicas = Vec::new();
        let options = etcd_client::GetOptions::new().with_prefix();
        if let Ok(Ok(answer)) =
            tokio::time::timeout(timeout, client.get(election, Some(options))).await
        {
            let mut candidates: Vec<_> = answer
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.create_revision(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect();
            candidates.sort();
            for (index, (revision, address)) in candidates.into_iter().enumerate() {
                replicas.push(ReplicaInfo {
                    address,
                    leader: index == 0,
                    campaign_revision: revision.max(0) as u64,
                });
            }
        }
        let mut members = Vec::new();
        let listed = tokio::time::timeout(timeout, client.member_list()).await;
        let listed = match listed {
            Ok(Ok(listed)) => listed,
            Ok(Err(error)) => {
                return (
                    replicas,
                    vec![unreachable_member(&self.config, error.to_string())],
                );
            }
            Err(_) => {
                return (
                    replicas,
                    vec![unreachable_member(
                        &self.config,
                        "member list timed out".into(),
                    )],
                );
            }
        };
        for member in listed.members() {
            let endpoint = member.client_urls().first().cloned().unwrap_or_default();
            let mut status = EtcdMemberStatus {
                name: member.name().to_string(),
                endpoint: endpoint.clone(),
                healthy: false,
                raft_leader: false,
                version: String::new(),
                db_size_bytes: 0,
                error: None,
            };
            match ha::member_status(&self.config, &endpoint, timeout).await {
                Ok(answer) => {
                    status.healthy = answer.leader() != 0;
                    status.raft_leader = answer.leader() == member.id();
                    status.version = answer.version().to_string();
                    status.db_size_bytes = answer.db_size().max(0) as u64;
                    if !status.healthy {
                        status.error = Some("the member has no raft leader".into());
                    }
                }
                Err(error) => status.error = Some(error),
            }
            members.push(status);
        }
        (replicas, members)
    }
}

fn unreachable_member(
    config: &EtcdConfig,
    error: String,
) -> flotilla_protocol::messages::EtcdMemberStatus {
    flotilla_protocol::messages::EtcdMemberStatus {
        name: "?".into(),
        endpoint: config.endpoints.join(","),
        healthy: false,
        raft_leader: false,
        version: String::new(),
        db_size_bytes: 0,
        error: Some(error),
    }
}

/// One term as leader: the actors, and the context its sessions use.
struct Term {
    leader: ActorRef<LeaderMsg>,
    leader_done: tokio::task::JoinHandle<()>,
    context: Arc<SessionContext>,
}

/// Shared by every term of one process.
struct Base {
    config: CoordinatorConfig,
    connections: Arc<AtomicU64>,
    /// Where peers reach this coordinator.
    advertise: SocketAddr,
    notifier: Option<notify::Notifier>,
    retention: Option<actors::leader::Retention>,
}

impl Base {
    async fn start_term(
        &self,
        store: Arc<dyn StateStore>,
        epoch: Epoch,
        fence: Option<Arc<Fence>>,
        cluster: Option<Arc<ClusterView>>,
    ) -> anyhow::Result<Term> {
        let args = LeaderArgs {
            store,
            epoch,
            agent_timeout: self.config.agent_timeout,
            cordon_after_losses: self.config.cordon_after_losses,
            team_shares: self.config.team_shares.clone(),
            notifier: self.notifier.clone(),
            autoscaler: self.config.autoscaler.clone(),
            rollout_check_interval: self.config.rollout_check_interval,
            retention: self.retention.clone(),
        };
        let (leader, leader_done) = Actor::spawn(None, Leader, args)
            .await
            .context("starting the coordinator's actors")?;
        let LeaderParts {
            registry,
            scheduler,
            autoscaler,
            models,
        } = actors::ask(&leader, LeaderMsg::Parts).await?;
        let context = Arc::new(SessionContext {
            epoch,
            name: self.config.name.clone(),
            heartbeat_interval: self.config.heartbeat_interval,
            leader: leader.clone(),
            registry,
            scheduler,
            autoscaler,
            models,
            connections: self.connections.clone(),
            fence,
            deposed: CancellationToken::new(),
            address: self.advertise.to_string(),
            store: match &self.config.etcd {
                Some(etcd) => format!("etcd {}", etcd.endpoints.join(",")),
                None => format!("local file {}", self.config.state_path.display()),
            },
            cluster,
        });
        Ok(Term {
            leader,
            leader_done,
            context,
        })
    }
}

impl Term {
    /// Closes the term's sessions and stops its actors.
    async fn end(self, reason: &str) {
        self.context.deposed.cancel();
        self.leader.stop(Some(reason.to_string()));
        let _ = self.leader_done.await;
    }
}

/// A running coordinator. Dropping it without [`Coordinator::shutdown`] leaves its tasks
/// running until the runtime ends; call `shutdown` for a clean stop.
pub struct Coordinator {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    standing: watch::Receiver<Standing>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The task that leads (and, with etcd, campaigns); it ends on shutdown or failure.
    lifecycle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Coordinator {
    /// Starts the QUIC endpoint and leads: at once with the local store, or once elected
    /// with etcd.
    pub async fn start(config: CoordinatorConfig) -> anyhow::Result<Coordinator> {
        if config.identity.role()? != flotilla_protocol::messages::Role::Coordinator {
            anyhow::bail!("the coordinator needs a certificate with the coordinator role");
        }
        let revoked = match &config.crl_path {
            Some(path) => revocation::load(path)?,
            None => Default::default(),
        };
        let server_config = tls::server_config(&config.identity, &revoked)?;
        let endpoint = quinn::Endpoint::server(server_config, config.listen)
            .with_context(|| format!("cannot listen on {} (UDP)", config.listen))?;
        let (revoked_sender, revoked) = watch::channel(Arc::new(revoked));
        let local_addr = endpoint.local_addr()?;
        let advertise = config.advertise.unwrap_or(local_addr);
        // Bound before anything starts, so a taken port fails the start cleanly.
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(metrics::bind(address).await?),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let notifier = if config.webhooks.is_empty() {
            None
        } else {
            let (notifier, delivery) = notify::start(config.webhooks.clone(), shutdown.clone())?;
            tasks.spawn(delivery);
            Some(notifier)
        };
        let retention = match config.archive_location() {
            Some(location) => {
                let archive = archive::Archive::open(&location)
                    .with_context(|| format!("opening the sweep archive at {location}"))?;
                Some(actors::leader::Retention {
                    archive: Arc::new(archive),
                    retain: config.retain_finished,
                })
            }
            None => {
                if config.retain_finished.is_some() {
                    tracing::warn!(
                        "no --archive location: settled sweeps stay in etcd; set one every coordinator reads (s3://…) to archive them"
                    );
                }
                None
            }
        };
        let base = Base {
            config: config.clone(),
            connections: Arc::new(AtomicU64::new(1)),
            advertise,
            notifier,
            retention,
        };
        let (standing_sender, standing) = watch::channel(Standing::Following { leader: None });
        let lifecycle = match &config.etcd {
            None => {
                let store = Arc::new(LocalStore::open(&config.state_path)?);
                let epoch = store.next_epoch().await?;
                let term = base
                    .start_term(store.clone() as Arc<dyn StateStore>, epoch, None, None)
                    .await?;
                standing_sender.send_replace(Standing::Leading(term.context.clone()));
                metrics::METRICS.elections_won.inc();
                tracing::info!(%epoch, state = %config.state_path.display(), "leading with the local state file");
                tokio::spawn(lead_locally(term, store, standing_sender, shutdown.clone()))
            }
            Some(etcd) => {
                let mut client = ha::connect(etcd).await.with_context(|| {
                    format!("cannot reach etcd at {}", etcd.endpoints.join(","))
                })?;
                flotilla_etcd::check_access(&mut client, etcd, &etcd.election_name())
                    .await
                    .map_err(anyhow::Error::msg)?;
                tokio::spawn(campaign(
                    base,
                    client,
                    etcd.clone(),
                    advertise,
                    standing_sender,
                    shutdown.clone(),
                ))
            }
        };
        if let Some(path) = &config.crl_path {
            tasks.spawn(revocation::watch_file(
                path.clone(),
                config.identity.clone(),
                endpoint.clone(),
                revoked_sender,
                shutdown.clone(),
            ));
        }
        let trust = gateway::Trust {
            revoked,
            require_agent_ids: config.require_agent_ids,
        };
        tasks.spawn(gateway::accept_loop(
            endpoint,
            standing.clone(),
            trust,
            shutdown.clone(),
            tasks.clone(),
        ));
        let metrics_addr = match metrics_listener {
            Some(listener) => {
                let bound = listener.local_addr()?;
                tasks.spawn(metrics::serve(
                    listener,
                    standing.clone(),
                    config.http_tokens.clone(),
                    shutdown.clone(),
                ));
                tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
                Some(bound)
            }
            None => None,
        };
        tracing::info!(address = %local_addr, name = %config.name, "coordinator listening");
        Ok(Coordinator {
            local_addr,
            metrics_addr,
            standing,
            shutdown,
            tasks,
            lifecycle,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the metrics endpoint listens, if it was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The epoch this coordinator leads, if it leads now.
    pub fn epoch(&self) -> Option<Epoch> {
        match &*self.standing.borrow() {
            Standing::Leading(context) => Some(context.epoch),
            Standing::Following { .. } => None,
        }
    }

    /// Resolves when the coordinator stopped on its own (a failure), with the reason.
    pub async fn stopped(&mut self) -> anyhow::Error {
        match (&mut self.lifecycle).await {
            Ok(Ok(())) => anyhow!("the coordinator stopped"),
            Ok(Err(error)) => error,
            Err(error) => anyhow!("the coordinator's lifecycle task failed: {error}"),
        }
    }

    /// Stops accepting, ends every session, stops the actors and flushes the store (with
    /// etcd: resigns, so a follower takes over without waiting for the lease to expire).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        match self.lifecycle.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the coordinator had stopped with an error"),
            Err(error) => tracing::warn!(%error, "the coordinator's lifecycle task failed"),
        }
    }
}

/// The single term of a coordinator on the local store: it ends on shutdown, or with an
/// error when the actors stop or the store fails (a restart resumes from the file).
async fn lead_locally(
    mut term: Term,
    store: Arc<LocalStore>,
    standing: watch::Sender<Standing>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let outcome = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        _ = &mut term.leader_done => Err(anyhow!("the coordinator's actors stopped unexpectedly; restart it to resume from the state file")),
        error = store.failed() => Err(anyhow!("the state store failed: {error}")),
    };
    standing.send_replace(Standing::Following { leader: None });
    if let Err(error) = &outcome {
        tracing::error!(%error, "the coordinator stops");
    }
    term.end("shutdown").await;
    if let Err(error) = store.flush().await {
        tracing::error!(%error, "could not flush the state store on shutdown");
    }
    store.close();
    outcome
}

/// Campaigns, leads while elected, steps down when the lease is lost, and campaigns again,
/// until shutdown.
async fn campaign(
    base: Base,
    client: etcd_client::Client,
    config: EtcdConfig,
    advertise: SocketAddr,
    standing: watch::Sender<Standing>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ttl = config.lease_ttl;
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let terms = TaskTracker::new();
        let term_stop = CancellationToken::new();
        terms.spawn(follow(
            client.clone(),
            config.clone(),
            advertise,
            standing.clone(),
            term_stop.clone(),
        ));
        let result = campaign_once(
            &base, &client, &config, advertise, &standing, &shutdown, &terms, &term_stop,
        )
        .await;
        term_stop.cancel();
        terms.close();
        terms.wait().await;
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "campaign failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ttl);
            }
        }
    }
    Ok(())
}

/// One lease: campaign with it, lead while it holds, then give it up.
#[allow(clippy::too_many_arguments)]
async fn campaign_once(
    base: &Base,
    client: &etcd_client::Client,
    config: &EtcdConfig,
    advertise: SocketAddr,
    standing: &watch::Sender<Standing>,
    shutdown: &CancellationToken,
    terms: &TaskTracker,
    term_stop: &CancellationToken,
) -> anyhow::Result<()> {
    let ttl = config.lease_ttl;
    let mut etcd = client.clone();
    let (lease_id, fence) = ha::grant(&mut etcd, config).await?;
    terms.spawn(ha::keep_alive(
        client.clone(),
        lease_id,
        ttl,
        fence.clone(),
        term_stop.clone(),
    ));
    let won = tokio::select! {
        () = shutdown.cancelled() => None,
        () = fence.lost() => None,
        won = etcd.campaign(config.election_name(), advertise.to_string(), lease_id) => Some(won),
    };
    let leadership = match won {
        Some(Ok(answer)) => answer.leader().map(Leadership::from_key),
        Some(Err(error)) => {
            revoke(&mut etcd, lease_id).await;
            return Err(anyhow!("campaign: {error}"));
        }
        None => None,
    };
    let Some(leadership) = leadership.filter(|_| fence.is_valid()) else {
        revoke(&mut etcd, lease_id).await;
        return Ok(());
    };
    let epoch = Epoch(leadership.revision as u64);
    tracing::info!(%epoch, %advertise, "elected leader");
    metrics::METRICS.elections_won.inc();
    let store = Arc::new(EtcdStore::start(
        client.clone(),
        config,
        &leadership,
        fence.clone(),
    ));
    let cluster = Arc::new(ClusterView {
        client: client.clone(),
        config: config.clone(),
    });
    let mut term = match base
        .start_term(
            store.clone() as Arc<dyn StateStore>,
            epoch,
            Some(fence.clone()),
            Some(cluster),
        )
        .await
    {
        Ok(term) => term,
        Err(error) => {
            store.abort().await;
            revoke(&mut etcd, lease_id).await;
            return Err(error.context("starting the term"));
        }
    };
    standing.send_replace(Standing::Leading(term.context.clone()));
    let upkeep = term_stop.child_token();
    terms.spawn(maintenance::run(
        client.clone(),
        config.clone(),
        base.config.etcd_maintenance.clone(),
        upkeep.clone(),
    ));
    let reason = tokio::select! {
        () = shutdown.cancelled() => None,
        () = fence.lost() => Some("the leader's lease ran out".to_string()),
        error = store.failed() => Some(format!("the state store failed: {error}")),
        _ = &mut term.leader_done => Some("the coordinator's actors stopped".to_string()),
    };
    standing.send_replace(Standing::Following { leader: None });
    upkeep.cancel();
    match &reason {
        Some(reason) => {
            tracing::error!(%epoch, %reason, "stepping down");
            fence.revoke();
            term.end(reason).await;
            store.abort().await;
        }
        None => {
            tracing::info!(%epoch, "shutting down; resigning");
            term.end("shutdown").await;
            store.close().await;
        }
    }
    // Revoking deletes the election key: a follower takes over without waiting for the TTL.
    revoke(&mut etcd, lease_id).await;
    Ok(())
}

async fn revoke(etcd: &mut etcd_client::Client, lease: i64) {
    if let Ok(Err(error)) =
        tokio::time::timeout(Duration::from_secs(1), etcd.lease_revoke(lease)).await
    {
        tracing::debug!(%error, lease, "could not revoke the lease (it expires on its own)");
    }
}

/// While this process is not leading, keeps `Standing::Following` pointing at the leader
/// by observing the election. An election that names this replica's own address is left
/// out: it has just won (its campaign is starting the term, and `Standing::Leading` follows),
/// or it names this address's previous process, which cannot be reached either way.
async fn follow(
    mut client: etcd_client::Client,
    config: EtcdConfig,
    advertise: SocketAddr,
    standing: watch::Sender<Standing>,
    stop: CancellationToken,
) {
    let advertise = advertise.to_string();
    let set_leader = |leader: Option<String>| {
        if leader.as_ref() == Some(&advertise) {
            return;
        }
        standing.send_if_modified(|current| match current {
            Standing::Following { leader: known } if *known != leader => {
                *known = leader.clone();
                true
            }
            _ => false,
        });
    };
    let observe = async {
        loop {
            set_leader(ha::current_leader(&mut client, &config).await);
            if let Ok(mut stream) = client.observe(config.election_name()).await {
                while let Ok(Some(answer)) = stream.message().await {
                    set_leader(
                        answer
                            .kv()
                            .and_then(|kv| kv.value_str().ok())
                            .map(str::to_string),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    // A leader needs no observer; the next campaign starts a new one.
    let mut changes = standing.subscribe();
    let elected = changes.wait_for(|standing| matches!(standing, Standing::Leading(_)));
    tokio::select! {
        () = stop.cancelled() => {}
        _ = elected => {}
        () = observe => {}
    }
}
