//! Gateway: accepts QUIC connections, checks who is calling, and runs their sessions.
//!
//! Every connection passes three gates before it may do anything:
//! 1. TLS 1.3 with a client certificate signed by the cluster CA (rustls refuses the rest);
//! 2. `Hello` on the first stream: a protocol version both sides speak, and a requested
//!    role that the certificate's role permits (an agent certificate cannot act as a
//!    client, nor a client certificate as an agent);
//!    An agent certificate bound to an agent id (`flotilla certs issue agent --id`) may
//!    register only under that id, and a revoked certificate is refused here too;
//! 3. per request, the role again, by the table in `ClientRequest::access`.
//!
//! A connection whose certificate the revocation list comes to revoke is closed.
//!
//! An agent session keeps its handshake stream as the control stream. A client session
//! serves one request per bidirectional stream. Sessions are tasks owned by the gateway's
//! [`TaskTracker`]; all stop when the shutdown token fires.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_protocol::framing::{self, FrameError};
use flotilla_protocol::handshake::{
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, negotiate, role_permits,
};
use flotilla_protocol::messages::{
    ALIVE_INTERVAL, AgentAction, AgentGpus, AgentMessage, ApiError, ApiErrorKind, AutoscaleStatus,
    ClientRequest, ClientResponse, ClusterStatus, Command, CoordinatorCommand, Hello, HelloReply,
    Refusal, RefusalReason, ReplicaInfo, Role, SweepEvent, TrialState, Welcome,
};
use flotilla_protocol::models::{Lineage, ModelVersion, RegisterModel};
use flotilla_protocol::revocation::RevocationList;
use flotilla_protocol::{AgentId, Epoch, tls};
use quinn::{RecvStream, SendStream};
use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actors::ask;
use crate::actors::autoscaler::AutoscalerMsg;
use crate::actors::leader::LeaderMsg;
use crate::actors::models::{ModelsMsg, Registration};
use crate::actors::registry::RegistryMsg;
use crate::actors::scheduler::{AgentLink, SchedulerMsg};
use crate::actors::sweep::SweepMsg;
use crate::ha::Fence;
use crate::metrics::METRICS;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a follower keeps a `NotLeader` refusal's stream open to name the next leader
/// (a leader-change notice): longer than an election takes with any lease TTL in use.
const LEADER_NOTICE_HOLD: Duration = Duration::from_secs(10);

/// What sessions need to reach the coordinator's actors during one term as leader.
pub struct SessionContext {
    pub epoch: Epoch,
    pub name: String,
    pub heartbeat_interval: Duration,
    pub leader: ActorRef<LeaderMsg>,
    pub registry: ActorRef<RegistryMsg>,
    pub scheduler: ActorRef<SchedulerMsg>,
    /// Present when the coordinator autoscales.
    pub autoscaler: Option<ActorRef<AutoscalerMsg>>,
    /// The model registry, serving and rollouts.
    pub models: ActorRef<ModelsMsg>,
    pub connections: Arc<AtomicU64>,
    /// With etcd: the leader's lease, checked before every command goes to an agent.
    pub fence: Option<Arc<Fence>>,
    /// Fires when this term ends; every session of the term closes.
    pub deposed: CancellationToken,
    /// The address this coordinator advertises.
    pub address: String,
    /// The state store, in words.
    pub store: String,
    /// With etcd: how to describe the cluster to `cluster status`.
    pub cluster: Option<Arc<crate::ClusterView>>,
}

impl SessionContext {
    /// Whether this term may still act.
    fn may_act(&self) -> bool {
        !self.deposed.is_cancelled() && self.fence.as_ref().is_none_or(|fence| fence.is_valid())
    }
}

/// Whether this coordinator leads, and if not, who does.
#[derive(Clone)]
pub enum Standing {
    /// A follower; `leader` is the leader's QUIC address when one is known.
    Following {
        leader: Option<String>,
    },
    Leading(Arc<SessionContext>),
}

/// Who the gateway trusts beyond the CA's signature.
#[derive(Clone)]
pub struct Trust {
    /// The CRL in force, replaced when `crl.pem` changes (see `crate::revocation`): checked at
    /// every `Hello`, and a connection whose certificate it comes to revoke is closed.
    pub revoked: tokio::sync::watch::Receiver<Arc<RevocationList>>,
    /// Refuse agent certificates that name no agent id (`flotilla certs issue agent --id`).
    pub require_agent_ids: bool,
}

/// Accepts connections until `shutdown` fires. Connections arriving while this coordinator
/// follows are refused with the leader's address.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    standing: tokio::sync::watch::Receiver<Standing>,
    trust: Trust,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let standing = standing.clone();
        let shutdown = shutdown.clone();
        let trust = trust.clone();
        tasks.spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::info!(%remote, %error, "connection refused at the TLS handshake");
                    return;
                }
            };
            let revoked = trust.revoked.clone();
            tokio::select! {
                () = shutdown.cancelled() => connection.close(0u32.into(), b"coordinator shutting down"),
                () = until_revoked(&connection, revoked) => {
                    tracing::warn!(%remote, "closing a connection: its certificate was revoked");
                    METRICS.revoked_connections_closed.inc();
                    connection.close(4u32.into(), b"certificate revoked");
                }
                result = serve_connection(connection.clone(), standing, &trust) => {
                    if let Err(error) = result {
                        tracing::info!(%remote, %error, "session ended");
                    }
                }
            }
        });
    }
    endpoint.close(0u32.into(), b"coordinator shutting down");
}

/// Resolves once the revocation list in force revokes the certificate `connection`
/// presented; never, while it does not.
async fn until_revoked(
    connection: &quinn::Connection,
    mut revoked: tokio::sync::watch::Receiver<Arc<RevocationList>>,
) {
    let Ok(certificate) = tls::peer_certificate(connection) else {
        return std::future::pending().await;
    };
    loop {
        if revoked.borrow_and_update().revokes(&certificate) {
            return;
        }
        if revoked.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("handshake: {0}")]
    Handshake(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Internal(String),
}

async fn serve_connection(
    connection: quinn::Connection,
    standings: tokio::sync::watch::Receiver<Standing>,
    trust: &Trust,
) -> Result<(), SessionError> {
    let (mut send, mut recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.accept_bi())
        .await
        .map_err(|_| SessionError::Handshake("no hello within the handshake timeout".into()))??;
    let hello: Hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, framing::read_frame(&mut recv))
        .await
        .map_err(|_| SessionError::Handshake("no hello within the handshake timeout".into()))??
        .ok_or_else(|| SessionError::Handshake("stream closed before hello".into()))?;
    let certified =
        tls::peer_role(&connection).map_err(|error| SessionError::Handshake(error.to_string()));
    let negotiated = negotiate(&hello);
    let standing = standings.borrow().clone();
    let identity_problem = identity_problem(&connection, &hello, trust);
    let refusal = match (&certified, negotiated) {
        (Err(error), _) => Some((RefusalReason::RoleNotPermitted, error.to_string())),
        (_, None) => Some((
            RefusalReason::UnsupportedVersion,
            format!(
                "peer speaks versions {}..={}, this coordinator speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}",
                hello.min_version, hello.max_version
            ),
        )),
        (Ok(role), Some(_))
            if hello.role == Role::Coordinator || !role_permits(*role, hello.role) =>
        {
            Some((
                RefusalReason::RoleNotPermitted,
                format!(
                    "{} {} certificate may not act as {}",
                    article(role.name()),
                    role.name(),
                    hello.role.name()
                ),
            ))
        }
        _ if identity_problem.is_some() => identity_problem
            .clone()
            .map(|message| (RefusalReason::RoleNotPermitted, message)),
        _ => match &standing {
            Standing::Leading(context) if context.may_act() => None,
            Standing::Leading(_) => Some((
                RefusalReason::NotLeader { leader: None },
                "this coordinator is stepping down; no leader is known yet".to_string(),
            )),
            Standing::Following { leader } => Some((
                RefusalReason::NotLeader {
                    leader: leader.clone(),
                },
                match leader {
                    Some(leader) => format!("this coordinator follows; the leader is at {leader}"),
                    None => "this coordinator follows and no leader is elected yet".to_string(),
                },
            )),
        },
    };
    if let Some((reason, message)) = refusal {
        tracing::warn!(peer = %hello.peer_name, remote = %connection.remote_address(), %message, "refusing a peer at the handshake");
        framing::write_frame(
            &mut send,
            &HelloReply::Refused(Refusal {
                reason: reason.clone(),
                message: message.clone(),
            }),
        )
        .await?;
        if let RefusalReason::NotLeader { leader: named } = &reason {
            notify_leader_change(&connection, &mut send, standings, named).await;
        }
        let _ = send.finish();
        // Give the refusal a moment to reach the peer before the connection closes.
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        connection.close(1u32.into(), b"refused");
        return Err(SessionError::Handshake(message));
    }
    let certified = certified.map_err(|error| SessionError::Internal(error.to_string()))?;
    let Standing::Leading(context) = standing else {
        return Err(SessionError::Internal("not leading".into()));
    };
    let version = negotiated.unwrap_or(PROTOCOL_VERSION);
    let welcome = Welcome {
        version,
        epoch: context.epoch,
        coordinator: context.name.clone(),
    };
    framing::write_frame(&mut send, &HelloReply::Welcome(welcome)).await?;
    let deposed = context.deposed.clone();
    let session = async {
        match hello.role {
            Role::Agent => {
                let claimed = AgentId(hello.peer_name.clone());
                agent_session(connection.clone(), send, recv, context, version, claimed).await
            }
            _ => client_session(connection.clone(), certified, context).await,
        }
    };
    tokio::select! {
        result = session => result,
        () = deposed.cancelled() => {
            // Peers reconnect and find the new leader.
            connection.close(3u32.into(), b"leadership lost");
            Err(SessionError::Internal("this coordinator's term as leader ended".into()))
        }
    }
}

/// "a" or "an", as English puts it before `word`.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The leader-change notice: after refusing a peer for not leading, keeps the refusal's stream
/// open until the election this replica observes in etcd names another leader than `named`
/// (or this replica itself wins), and then sends a second `NotLeader` refusal naming it. A
/// peer that lost its leader learns of the new one the moment the election ends, instead of
/// asking again and again; a peer that reads only the first refusal has closed the
/// connection, which ends the wait. Gives up after [`LEADER_NOTICE_HOLD`].
async fn notify_leader_change(
    connection: &quinn::Connection,
    send: &mut SendStream,
    mut standings: tokio::sync::watch::Receiver<Standing>,
    named: &Option<String>,
) {
    let changed = async {
        let standing = standings
            .wait_for(|standing| match standing {
                Standing::Leading(context) => context.may_act(),
                Standing::Following { leader } => leader.is_some() && leader != named,
            })
            .await
            .ok()?;
        match &*standing {
            Standing::Leading(context) => Some(context.address.clone()),
            Standing::Following { leader } => leader.clone(),
        }
    };
    let leader = tokio::select! {
        _ = connection.closed() => return,
        leader = tokio::time::timeout(LEADER_NOTICE_HOLD, changed) => leader,
    };
    let Ok(Some(leader)) = leader else { return };
    let notice = HelloReply::Refused(Refusal {
        reason: RefusalReason::NotLeader {
            leader: Some(leader.clone()),
        },
        message: format!("the leader changed; the leader is now at {leader}"),
    });
    let _ = framing::write_frame(send, &notice).await;
}

/// Why the certificate on `connection` may not be used as `hello` asks, beyond its role: a
/// revoked certificate (the TLS handshake refuses those too, but the list may have changed
/// since), or an agent certificate bound to another agent id than the one the agent names.
fn identity_problem(
    connection: &quinn::Connection,
    hello: &Hello,
    trust: &Trust,
) -> Option<String> {
    let certificate = tls::peer_certificate(connection).ok()?;
    if trust.revoked.borrow().revokes(&certificate) {
        return Some("this certificate has been revoked".to_string());
    }
    if hello.role != Role::Agent {
        return None;
    }
    match tls::agent_id_of_certificate(&certificate) {
        Ok(Some(bound)) if bound != hello.peer_name => Some(format!(
            "this certificate belongs to agent {bound:?}; it may not register as {:?}",
            hello.peer_name
        )),
        Ok(Some(_)) => None,
        Ok(None) if trust.require_agent_ids => Some(
            "this agent certificate names no agent id, and this coordinator requires one per agent \
             (issue it with `flotilla certs issue agent --id NAME`)"
                .to_string(),
        ),
        Ok(None) => None,
        Err(error) => Some(error.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------

async fn agent_session(
    connection: quinn::Connection,
    send: SendStream,
    mut recv: RecvStream,
    context: Arc<SessionContext>,
    version: u16,
    claimed: AgentId,
) -> Result<(), SessionError> {
    let registration = match framing::read_frame::<_, AgentMessage>(&mut recv).await? {
        // The id was checked against the certificate at the Hello; the registration must
        // not name another.
        Some(AgentMessage::Register(registration)) if registration.agent_id != claimed => {
            tracing::warn!(hello = %claimed, registered = %registration.agent_id, "refusing a registration under another id than the hello's");
            connection.close(1u32.into(), b"registered under another id than the hello's");
            return Err(SessionError::Handshake(format!(
                "the agent said hello as {claimed} but registered as {}",
                registration.agent_id
            )));
        }
        Some(AgentMessage::Register(registration)) => registration,
        Some(other) => {
            return Err(SessionError::Handshake(format!(
                "expected Register, got {other:?}"
            )));
        }
        None => return Ok(()),
    };
    let agent = registration.agent_id.clone();
    let connection_id = context.connections.fetch_add(1, Ordering::Relaxed);
    let (commands, outgoing) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_commands(send, outgoing, context.clone()));
    let link_back = LinkBack {
        connection: connection_id,
        commands: commands.clone(),
        version,
    };
    let closed = CancellationToken::new();
    let link = AgentLink {
        connection: connection_id,
        commands: commands.clone(),
        close: closed.clone(),
        version,
    };
    let adopted = ask(&context.registry, |reply| RegistryMsg::Register {
        registration,
        link,
        reply,
    })
    .await
    .map_err(|error| SessionError::Internal(error.to_string()))?;
    let registered = Command::Registered {
        heartbeat_interval_ms: context.heartbeat_interval.as_millis() as u64,
        adopted,
    };
    let _ = commands.send(CoordinatorCommand {
        epoch: context.epoch,
        command: registered,
    });
    tracing::info!(%agent, remote = %connection.remote_address(), "agent registered");
    let result = tokio::select! {
        result = read_agent_messages(&agent, &link_back, &mut recv, &context) => result,
        // The Registry declared this agent lost while its connection stayed open (it went
        // quiet): end the session so the agent reconnects and registers afresh.
        () = closed.cancelled() => {
            connection.close(2u32.into(), b"declared lost; register again");
            Err(SessionError::Internal("the agent was declared lost; closing its connection".into()))
        }
    };
    let _ = context.registry.cast(RegistryMsg::Disconnected {
        agent: agent.clone(),
        connection: connection_id,
    });
    let _ = context.models.cast(ModelsMsg::AgentGone {
        agent: agent.clone(),
        connection: connection_id,
    });
    drop(commands);
    writer.abort();
    result
}

/// How the Models actor reaches an agent's session.
struct LinkBack {
    connection: u64,
    commands: mpsc::UnboundedSender<CoordinatorCommand>,
    version: u16,
}

async fn read_agent_messages(
    agent: &AgentId,
    link: &LinkBack,
    recv: &mut RecvStream,
    context: &SessionContext,
) -> Result<(), SessionError> {
    let connection = link.connection;
    while let Some(message) = framing::read_frame::<_, AgentMessage>(recv).await? {
        let agent = agent.clone();
        let forwarded = match message {
            AgentMessage::Heartbeat(_) => context
                .registry
                .cast(RegistryMsg::Heartbeat { agent, connection })
                .map_err(|e| e.to_string()),
            AgentMessage::TrialStarted { attempt } => context
                .scheduler
                .cast(SchedulerMsg::TrialStarted { agent, attempt })
                .map_err(|e| e.to_string()),
            AgentMessage::TrialMetrics { attempt, points } => {
                METRICS.metric_points.inc_by(points.len() as u64);
                context
                    .scheduler
                    .cast(SchedulerMsg::TrialMetrics {
                        agent,
                        attempt,
                        points,
                    })
                    .map_err(|e| e.to_string())
            }
            AgentMessage::TrialFinished { attempt, outcome } => context
                .scheduler
                .cast(SchedulerMsg::TrialFinished {
                    agent,
                    attempt,
                    outcome,
                })
                .map_err(|e| e.to_string()),
            AgentMessage::CommandRejected { attempt, reason } => context
                .scheduler
                .cast(SchedulerMsg::CommandRejected {
                    agent,
                    attempt,
                    reason,
                })
                .map_err(|e| e.to_string()),
            AgentMessage::TrialCheckpoint {
                attempt,
                checkpoint,
            } => {
                METRICS.checkpoints.inc();
                METRICS.checkpoint_bytes.inc_by(checkpoint.bytes);
                context
                    .scheduler
                    .cast(SchedulerMsg::TrialCheckpoint {
                        agent,
                        attempt,
                        checkpoint,
                    })
                    .map_err(|e| e.to_string())
            }
            AgentMessage::Draining => context
                .scheduler
                .cast(SchedulerMsg::AgentDraining { agent })
                .map_err(|e| e.to_string()),
            AgentMessage::Serving(report) => context
                .models
                .cast(ModelsMsg::AgentServing {
                    agent,
                    connection,
                    commands: link.commands.clone(),
                    version: link.version,
                    report,
                })
                .map_err(|e| e.to_string()),
            AgentMessage::ModelSealed { request, result } => context
                .models
                .cast(ModelsMsg::Sealed {
                    agent,
                    request,
                    result,
                })
                .map_err(|e| e.to_string()),
            AgentMessage::Register(_) => Err("Register sent twice on one connection".to_string()),
        };
        forwarded.map_err(SessionError::Internal)?;
    }
    Ok(())
}

/// Writes commands, batching whatever is queued into one write. Nothing is sent once this
/// term may no longer act (its lease ran out): a deposed leader's commands never leave.
async fn write_commands(
    mut send: SendStream,
    mut commands: mpsc::UnboundedReceiver<CoordinatorCommand>,
    context: Arc<SessionContext>,
) {
    let mut buffer = Vec::with_capacity(16 * 1024);
    loop {
        // A quiet stream carries `Alive`, so the agent notices a dead or deposed leader
        // within ALIVE_TIMEOUT; a leader whose lease ran out sends nothing at all.
        let first = match tokio::time::timeout(ALIVE_INTERVAL, commands.recv()).await {
            Ok(Some(command)) => command,
            Ok(None) => break,
            Err(_) => CoordinatorCommand {
                epoch: context.epoch,
                command: Command::Alive,
            },
        };
        if !context.may_act() {
            tracing::warn!(epoch = %context.epoch, "not sending commands: this leader's lease ran out");
            return;
        }
        buffer.clear();
        let mut next = Some(first);
        while let Some(command) = next {
            if let Err(error) = framing::append_frame(&mut buffer, &command) {
                tracing::error!(%error, "dropping a command that does not encode");
            }
            next = commands.try_recv().ok();
        }
        if send.write_all(&buffer).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

// ---------------------------------------------------------------------------------------------

async fn client_session(
    connection: quinn::Connection,
    role: Role,
    context: Arc<SessionContext>,
) -> Result<(), SessionError> {
    let requests = TaskTracker::new();
    let result = loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(
                quinn::ConnectionError::ApplicationClosed(_)
                | quinn::ConnectionError::LocallyClosed,
            ) => break Ok(()),
            Err(error) => break Err(SessionError::Connection(error)),
        };
        let context = context.clone();
        requests.spawn(async move {
            if let Err(error) = serve_request(send, recv, role, &context).await {
                tracing::debug!(%error, "request failed");
            }
        });
    };
    requests.close();
    requests.wait().await;
    result
}

fn error_response(kind: ApiErrorKind, message: impl Into<String>) -> ClientResponse {
    ClientResponse::Error(ApiError {
        kind,
        message: message.into(),
        problems: vec![],
    })
}

async fn serve_request(
    mut send: SendStream,
    mut recv: RecvStream,
    role: Role,
    context: &SessionContext,
) -> Result<(), SessionError> {
    let Some(request) = framing::read_frame::<_, ClientRequest>(&mut recv).await? else {
        return Ok(());
    };
    // One check for every request, from the table in `ClientRequest::access`.
    if let Some(refusal) = refusal(&request, role) {
        tracing::warn!(
            request = request.name(),
            role = role.name(),
            "refusing a request the certificate does not allow"
        );
        framing::write_frame(&mut send, &refusal).await?;
        let _ = send.finish();
        return Ok(());
    }
    if let ClientRequest::WatchSweep(sweep) = request {
        return watch(send, sweep, None, context).await;
    }
    if let ClientRequest::WatchSweepFrom { sweep, from } = request {
        return watch(send, sweep, Some(from), context).await;
    }
    let response = answer(request, context).await;
    framing::write_frame(&mut send, &response).await?;
    let _ = send.finish();
    Ok(())
}

async fn lookup(
    context: &SessionContext,
    sweep: flotilla_protocol::SweepId,
) -> Result<ActorRef<SweepMsg>, ClientResponse> {
    match ask(&context.leader, |reply| LeaderMsg::Lookup { sweep, reply }).await {
        Ok(Some(actor)) => Ok(actor),
        Ok(None) => Err(error_response(
            ApiErrorKind::NotFound,
            format!("no sweep {sweep}"),
        )),
        Err(error) => Err(error_response(ApiErrorKind::Unavailable, error.to_string())),
    }
}

/// `PermissionDenied` when `role`'s certificate may not send `request`.
fn refusal(request: &ClientRequest, role: Role) -> Option<ClientResponse> {
    let access = request.access();
    if access.permits(role) {
        return None;
    }
    let hint = match request {
        ClientRequest::RegisterModel(_) => {
            " (a client may register a version as staging and roll it out)"
        }
        _ => "",
    };
    Some(error_response(
        ApiErrorKind::PermissionDenied,
        format!(
            "{} is answered only for {} certificates; this connection has {} certificate{hint}",
            request.name(),
            access.holders().replace(", ", " or "),
            role.with_article()
        ),
    ))
}

async fn answer(request: ClientRequest, context: &SessionContext) -> ClientResponse {
    let unavailable =
        |error: anyhow::Error| error_response(ApiErrorKind::Unavailable, error.to_string());
    match request {
        ClientRequest::SubmitSweep(spec) => {
            match ask(&context.leader, |reply| LeaderMsg::Submit { spec, reply }).await {
                Ok(Ok(summary)) => ClientResponse::SweepSubmitted(summary),
                Ok(Err(error)) => ClientResponse::Error(error),
                Err(error) => unavailable(error),
            }
        }
        ClientRequest::ListSweeps => ask(&context.leader, |reply| LeaderMsg::List {
            archived: true,
            reply,
        })
        .await
        .map_or_else(unavailable, ClientResponse::Sweeps),
        ClientRequest::SweepStatus(sweep) => match lookup(context, sweep).await {
            Ok(actor) => ask(&actor, SweepMsg::Summary)
                .await
                .map_or_else(unavailable, ClientResponse::Status),
            Err(response) => response,
        },
        ClientRequest::CancelSweep(sweep) => match lookup(context, sweep).await {
            Ok(actor) => ask(&actor, SweepMsg::Cancel)
                .await
                .map_or_else(unavailable, ClientResponse::Cancelled),
            Err(response) => response,
        },
        ClientRequest::BestTrial(sweep) => match lookup(context, sweep).await {
            Ok(actor) => ask(&actor, SweepMsg::Best)
                .await
                .map_or_else(unavailable, ClientResponse::Best),
            Err(response) => response,
        },
        ClientRequest::ListTrials(sweep) => match lookup(context, sweep).await {
            Ok(actor) => ask(&actor, SweepMsg::Trials)
                .await
                .map_or_else(unavailable, ClientResponse::Trials),
            Err(response) => response,
        },
        ClientRequest::SweepDetail(sweep) => match lookup(context, sweep).await {
            Ok(actor) => {
                ask(&actor, SweepMsg::Detail)
                    .await
                    .map_or_else(unavailable, |mut detail| {
                        // Trial environment values reach agents only.
                        detail.spec = detail.spec.redacted();
                        ClientResponse::SweepDetail(Box::new(detail))
                    })
            }
            Err(response) => response,
        },
        ClientRequest::ListAgents => ask(&context.registry, RegistryMsg::List)
            .await
            .map_or_else(unavailable, ClientResponse::Agents),
        ClientRequest::AgentGpus => match ask(&context.scheduler, SchedulerMsg::Usage).await {
            Ok(usage) => {
                let mut gpus: Vec<AgentGpus> = usage
                    .into_iter()
                    .map(|(agent, usage)| AgentGpus {
                        agent,
                        gpus: usage.gpus,
                        busy_gpus: usage.busy_gpus,
                    })
                    .collect();
                gpus.sort_by(|a, b| a.agent.cmp(&b.agent));
                ClientResponse::AgentGpus(gpus)
            }
            Err(error) => unavailable(error),
        },
        ClientRequest::ClusterStatus => cluster_status(context).await,
        ClientRequest::AutoscaleStatus => match &context.autoscaler {
            Some(autoscaler) => ask(autoscaler, AutoscalerMsg::Status)
                .await
                .map_or_else(unavailable, ClientResponse::Autoscale),
            None => ClientResponse::Autoscale(AutoscaleStatus::off()),
        },
        ClientRequest::Scale(request) => match &context.autoscaler {
            Some(autoscaler) => {
                match ask(autoscaler, |reply| AutoscalerMsg::Scale { request, reply }).await {
                    Ok(Ok(status)) => ClientResponse::Autoscale(status),
                    Ok(Err(message)) => error_response(ApiErrorKind::InvalidRequest, message),
                    Err(error) => unavailable(error),
                }
            }
            None => error_response(
                ApiErrorKind::InvalidRequest,
                "this coordinator does not autoscale (start it with --autoscale)",
            ),
        },
        ClientRequest::AgentAdmin { agent, action } => agent_admin(context, agent, action).await,
        ClientRequest::RegisterModel(request) => register_model(context, request).await,
        ClientRequest::ListModels { name } => {
            ask(&context.models, |reply| ModelsMsg::List { name, reply })
                .await
                .map_or_else(unavailable, models_answer)
        }
        ClientRequest::ModelPlacements { name } => ask(&context.models, |reply| {
            ModelsMsg::Placements { name, reply }
        })
        .await
        .map_or_else(unavailable, ClientResponse::Placements),
        ClientRequest::SetModelStage { model, stage } => {
            match ask(&context.models, |reply| ModelsMsg::SetStage {
                model,
                stage,
                reply,
            })
            .await
            {
                Ok(Ok(versions)) => models_answer(versions),
                Ok(Err(error)) => ClientResponse::Error(error),
                Err(error) => unavailable(error),
            }
        }
        ClientRequest::StartRollout(request) => {
            match ask(&context.models, |reply| ModelsMsg::StartRollout {
                request: Box::new(request),
                reply,
            })
            .await
            {
                Ok(Ok(record)) => ClientResponse::Rollouts(vec![record]),
                Ok(Err(error)) => ClientResponse::Error(error),
                Err(error) => unavailable(error),
            }
        }
        ClientRequest::ListRollouts { model } => ask(&context.models, |reply| {
            ModelsMsg::ListRollouts { model, reply }
        })
        .await
        .map_or_else(unavailable, ClientResponse::Rollouts),
        ClientRequest::RolloutAction { model, action } => {
            match ask(&context.models, |reply| ModelsMsg::Act {
                model,
                action,
                reply,
            })
            .await
            {
                Ok(Ok(record)) => ClientResponse::Rollouts(vec![record]),
                Ok(Err(error)) => ClientResponse::Error(error),
                Err(error) => unavailable(error),
            }
        }
        ClientRequest::RouterSync(report) => ask(&context.models, |reply| ModelsMsg::RouterSync {
            report,
            reply,
        })
        .await
        .map_or_else(unavailable, ClientResponse::Routes),
        ClientRequest::WatchSweep(_) | ClientRequest::WatchSweepFrom { .. } => {
            error_response(ApiErrorKind::Internal, "watch is served as a stream")
        }
    }
}

/// Model versions as clients see them: `[serving] env` values redacted.
fn models_answer(versions: Vec<ModelVersion>) -> ClientResponse {
    ClientResponse::Models(versions.iter().map(ModelVersion::redacted).collect())
}

/// Looks up the trial (the sweep's winner when none is named), checks it has a checkpoint,
/// and hands the registration to the Models actor, which has an agent seal the artifact.
async fn register_model(context: &SessionContext, request: RegisterModel) -> ClientResponse {
    let sweep_actor = match lookup(context, request.sweep).await {
        Ok(actor) => actor,
        Err(response) => return response,
    };
    let unavailable =
        |error: anyhow::Error| error_response(ApiErrorKind::Unavailable, error.to_string());
    let detail = match ask(&sweep_actor, SweepMsg::Detail).await {
        Ok(detail) => detail,
        Err(error) => return unavailable(error),
    };
    let sweep = request.sweep;
    let trial = match request.trial {
        None => match ask(&sweep_actor, SweepMsg::Best).await {
            Ok(Some(best)) => best,
            Ok(None) => {
                return error_response(
                    ApiErrorKind::InvalidRequest,
                    format!(
                        "sweep {sweep} has no winner yet (no succeeded, feasible trial); name a trial as {sweep}/N"
                    ),
                );
            }
            Err(error) => return unavailable(error),
        },
        Some(number) => match ask(&sweep_actor, SweepMsg::Trials).await {
            Ok(trials) => match trials.into_iter().find(|trial| trial.id.number == number) {
                Some(trial) => trial,
                None => {
                    return error_response(
                        ApiErrorKind::NotFound,
                        format!("sweep {sweep} has no trial {number}"),
                    );
                }
            },
            Err(error) => return unavailable(error),
        },
    };
    let id = trial.id;
    if trial.state != TrialState::Succeeded {
        return error_response(
            ApiErrorKind::InvalidRequest,
            format!(
                "trial {}/{} is {}; only a succeeded trial can become a model version",
                id.sweep,
                id.number,
                trial.state.name()
            ),
        );
    }
    let Some(checkpoint) = trial.checkpoint else {
        return error_response(
            ApiErrorKind::InvalidRequest,
            format!(
                "trial {}/{} has no checkpoint (the built-in trainers write one when they finish; a command trial commits one by printing '@flotilla checkpoint')",
                id.sweep, id.number
            ),
        );
    };
    let command = detail.spec.trial.trainer.is_none();
    if command && detail.spec.serving.is_none() {
        return error_response(
            ApiErrorKind::InvalidRequest,
            format!(
                "sweep {sweep} runs a command and its sweep file has no [serving] table, so nothing could serve trial {}/{}: add one (command, args, health) and submit the sweep again",
                id.sweep, id.number
            ),
        );
    }
    let lineage = Lineage {
        sweep,
        sweep_name: detail.spec.name.clone(),
        trial: id,
        trainer: detail
            .spec
            .trial
            .trainer
            .clone()
            .unwrap_or_else(|| "command".into()),
        params: trial.params,
        metrics: trial.metrics,
        objective: trial.objective,
        checkpoint: checkpoint.uri,
        epoch: checkpoint.epoch,
    };
    let registration = Box::new(Registration {
        request,
        lineage,
        serving: if command {
            detail.spec.serving.clone()
        } else {
            None
        },
    });
    let answer = context
        .models
        .call(
            |reply| ModelsMsg::Register {
                registration,
                reply,
            },
            Some(Duration::from_secs(150)),
        )
        .await;
    match answer {
        Ok(ractor::rpc::CallResult::Success(Ok(version))) => models_answer(vec![version]),
        Ok(ractor::rpc::CallResult::Success(Err(error))) => ClientResponse::Error(error),
        Ok(_) => error_response(ApiErrorKind::Unavailable, "the registration got no answer"),
        Err(error) => error_response(ApiErrorKind::Unavailable, error.to_string()),
    }
}

async fn agent_admin(
    context: &SessionContext,
    agent: AgentId,
    action: AgentAction,
) -> ClientResponse {
    let known = match action {
        AgentAction::Drain => {
            ask(&context.scheduler, |reply| SchedulerMsg::Drain {
                agent: agent.clone(),
                reply: Some(reply),
            })
            .await
        }
        AgentAction::Cordon | AgentAction::Uncordon => {
            ask(&context.scheduler, |reply| SchedulerMsg::Cordon {
                agent: agent.clone(),
                cordoned: action == AgentAction::Cordon,
                reply,
            })
            .await
        }
    };
    match known {
        Ok(true) => match ask(&context.registry, RegistryMsg::List).await {
            Ok(agents) => {
                ClientResponse::Agents(agents.into_iter().filter(|a| a.id == agent).collect())
            }
            Err(error) => error_response(ApiErrorKind::Unavailable, error.to_string()),
        },
        Ok(false) => error_response(
            ApiErrorKind::NotFound,
            format!("no connected agent '{agent}' (see `flotilla agents`)"),
        ),
        Err(error) => error_response(ApiErrorKind::Unavailable, error.to_string()),
    }
}

async fn cluster_status(context: &SessionContext) -> ClientResponse {
    let agents = match ask(&context.registry, RegistryMsg::List).await {
        Ok(agents) => agents,
        Err(error) => return error_response(ApiErrorKind::Unavailable, error.to_string()),
    };
    let connected = agents.iter().filter(|agent| agent.connected);
    let (slots, busy_slots) = connected.clone().fold((0, 0), |(slots, busy), agent| {
        (slots + agent.slots, busy + agent.busy_slots)
    });
    let (replicas, etcd) = match &context.cluster {
        Some(view) => view.describe().await,
        None => (
            vec![ReplicaInfo {
                address: context.address.clone(),
                leader: true,
                campaign_revision: context.epoch.0,
            }],
            Vec::new(),
        ),
    };
    ClientResponse::ClusterStatus(ClusterStatus {
        leader: context.name.clone(),
        leader_address: context.address.clone(),
        epoch: context.epoch,
        replicas,
        store: context.store.clone(),
        etcd,
        agents: connected.count() as u32,
        slots,
        busy_slots,
    })
}

/// Streams a sweep's events: `Event`s from now on, or (`from`, protocol 13) what the watcher
/// missed after that sequence number and then live ones, as `SequencedEvent`s.
async fn watch(
    mut send: SendStream,
    sweep: flotilla_protocol::SweepId,
    from: Option<u64>,
    context: &SessionContext,
) -> Result<(), SessionError> {
    let actor = match lookup(context, sweep).await {
        Ok(actor) => actor,
        Err(response) => {
            framing::write_frame(&mut send, &response).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    let (events, mut receiver) = mpsc::unbounded_channel();
    let message = match from {
        Some(from) => SweepMsg::WatchFrom {
            from,
            watcher: events,
        },
        None => SweepMsg::Watch(events),
    };
    actor
        .cast(message)
        .map_err(|error| SessionError::Internal(error.to_string()))?;
    let mut buffer = Vec::with_capacity(16 * 1024);
    while let Some(first) = receiver.recv().await {
        buffer.clear();
        let mut next = Some(first);
        let mut done = false;
        while let Some((seq, event)) = next {
            done |= matches!(event, SweepEvent::SweepFinished(_));
            let frame = match from {
                Some(_) => ClientResponse::SequencedEvent { seq, event },
                None => ClientResponse::Event(event),
            };
            framing::append_frame(&mut buffer, &frame)?;
            next = if done { None } else { receiver.try_recv().ok() };
        }
        send.write_all(&buffer)
            .await
            .map_err(|error| SessionError::Internal(error.to_string()))?;
        if done {
            break;
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_english() {
        let refusal = |role: Role| format!("{} {} certificate", article(role.name()), role.name());
        assert_eq!(refusal(Role::Agent), "an agent certificate");
        assert_eq!(refusal(Role::Admin), "an admin certificate");
        assert_eq!(refusal(Role::Client), "a client certificate");
        assert_eq!(refusal(Role::Router), "a router certificate");
    }
}
