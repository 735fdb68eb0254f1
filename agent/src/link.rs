//! Link: the agent's QUIC connection to the coordinator, kept up for the agent's lifetime.
//!
//! Connects, says `Hello` as an agent, registers (with the attempts still running and the
//! outcomes of recent ones, so nothing finished while disconnected is lost), then carries
//! commands down to AgentRoot and the outbox up. On any failure it reconnects with
//! exponential backoff (100 ms doubling to 5 s, with jitter), trying the configured
//! coordinators in turn. A follower's `NotLeader` refusal names the leader, which is tried
//! next at once. A follower that still names the leader this agent just lost keeps the
//! refusal's stream open and names the new leader there when the election it observes in
//! etcd ends (the leader-change notice): the agent waits on it, probing the lost leader
//! meanwhile, and connects to the new leader at once. A refusal for role or version is final:
//! retrying cannot fix a wrong certificate.
//!
//! Metric points are batched on the way out: whatever the outbox holds when the link is
//! ready to write goes in one write, and queued `TrialMetrics` of the same attempt merge
//! into one message (see [`coalesce`]), so a trial that reports faster than the network
//! turns around costs one frame per write, not one per point.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use flotilla_protocol::framing;
use flotilla_protocol::handshake;
use flotilla_protocol::messages::{
    ALIVE_TIMEOUT, AgentMessage, Command, CoordinatorCommand, HelloReply, RefusalReason,
    Registration, Role,
};
use flotilla_protocol::tls::{self, COORDINATOR_SERVER_NAME};
use flotilla_protocol::{AgentId, AttemptId};
use ractor::ActorRef;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::root::AgentMsg;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a replica that did not answer is tried only after the others.
const SUSPECT_FOR: Duration = Duration::from_secs(30);
/// How long the replica whose session just ended is tried only after the others.
const LEADER_LOST_FOR: Duration = Duration::from_secs(10);
/// After losing its leader, how long the agent asks the replicas for the new one without
/// backing off beyond [`ELECTION_RETRY`]: an election ends within one lease TTL.
const ELECTION_WINDOW: Duration = Duration::from_secs(30);
/// Between tries while an election is expected to end any moment.
const ELECTION_RETRY: Duration = Duration::from_millis(100);
/// A follower that still names the lost leader: that leader is tried again at most this
/// often, with [`PROBE_TIMEOUT`] (it may be alive: the agent's link alone may have failed).
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The leader whose session just ended, while its successor is looked for.
struct LostLeader {
    address: SocketAddr,
    until: std::time::Instant,
    probed_at: Option<std::time::Instant>,
}
/// Most messages taken from the outbox for one write.
const MAX_MESSAGES_PER_WRITE: usize = 4096;
/// Most points merged into one `TrialMetrics` message: with a few hundred metrics per point
/// (per-class reports) that stays well inside the frame limit.
const MAX_POINTS_PER_BATCH: usize = 256;

pub struct LinkConfig {
    /// Coordinators to try in turn (at least one).
    pub coordinators: Vec<SocketAddr>,
    pub client_config: quinn::ClientConfig,
    pub agent_id: AgentId,
    pub hostname: String,
    pub slots: u32,
    pub gpus: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the coordinator refused this agent: {0}")]
    Refused(String),
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
}

/// Runs until `shutdown` fires (after flushing the outbox) or the coordinator refuses us.
pub async fn run(
    config: LinkConfig,
    root: ActorRef<AgentMsg>,
    mut outbox: mpsc::UnboundedReceiver<AgentMessage>,
    shutdown: CancellationToken,
) -> Result<(), LinkError> {
    let first = config
        .coordinators
        .first()
        .copied()
        .ok_or_else(|| LinkError::Socket(std::io::Error::other("no coordinator address")))?;
    let bind: SocketAddr = if first.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| LinkError::Socket(std::io::Error::other("bad bind address")))?;
    let mut endpoint = quinn::Endpoint::client(bind).map_err(LinkError::Socket)?;
    endpoint.set_default_client_config(config.client_config.clone());
    let mut backoff = Duration::from_millis(100);
    let mut next = 0;
    let mut target = first;
    let mut redirects = 0;
    let count = config.coordinators.len();
    let mut suspects: std::collections::HashMap<SocketAddr, std::time::Instant> =
        std::collections::HashMap::new();
    // Set when a session with a leader ends: until then, retries stay short.
    let mut lost: Option<LostLeader> = None;
    let mut connect_timeout = CONNECT_TIMEOUT;
    // A lost leader that answered a probe: served next, without connecting again.
    let mut welcomed: Option<Handshaken> = None;
    loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => break,
            result = async {
                match welcomed.take() {
                    Some(handshaken) => serve(handshaken, &config, &root, &mut outbox, &shutdown).await,
                    None => session(&endpoint, target, connect_timeout, &config, &root, &mut outbox, &shutdown).await,
                }
            } => result,
        };
        connect_timeout = CONNECT_TIMEOUT;
        let _ = root.cast(AgentMsg::LinkDown);
        match attempt {
            Ok(Session::Shutdown) => break,
            Ok(Session::Served) => {
                backoff = Duration::from_millis(100);
                redirects = 0;
                // The leader it served may be dead: try the other replicas first (they
                // redirect if it is alive); a dead one costs a connect timeout.
                if count > 1 {
                    let now = std::time::Instant::now();
                    suspects.insert(target, now + LEADER_LOST_FOR);
                    lost = Some(LostLeader {
                        address: target,
                        until: now + ELECTION_WINDOW,
                        probed_at: Some(now),
                    });
                }
            }
            Err(SessionFailure::Fatal(message)) => {
                endpoint.close(0u32.into(), b"refused");
                return Err(LinkError::Refused(message));
            }
            // A follower naming the leader this agent just lost has not seen the election
            // end yet (that leader's lease has not run out), or that leader is alive and only
            // the link failed: wait for the follower to name the new leader, probing the lost
            // one now and then with a short timeout.
            Err(SessionFailure::Redirect(leader, notice))
                if lost.as_ref().is_some_and(|lost| {
                    lost.address == leader && lost.until > std::time::Instant::now()
                }) =>
            {
                let Some(lost) = lost.as_mut() else { continue };
                tracing::debug!(follower = %target, %leader, "the follower names the lost leader; waiting for the election");
                match await_election(&endpoint, notice, lost, &config.agent_id, &shutdown).await {
                    Election::Leader(leader) => {
                        tracing::info!(follower = %target, %leader, "the election ended; connecting to the new leader");
                        target = leader;
                        continue;
                    }
                    Election::Welcomed(handshaken) => {
                        target = handshaken.target;
                        welcomed = Some(handshaken);
                        continue;
                    }
                    Election::Fatal(message) => {
                        endpoint.close(0u32.into(), b"refused");
                        return Err(LinkError::Refused(message));
                    }
                    Election::Undecided => {}
                }
            }
            // Followers may briefly name a leader that has just stepped down: follow a few
            // redirects at once, then fall back to the backoff.
            Err(SessionFailure::Redirect(leader, _)) if redirects < 3 => {
                tracing::info!(follower = %target, %leader, "redirected to the leader");
                redirects += 1;
                target = leader;
                continue;
            }
            Err(SessionFailure::Redirect(leader, _)) => {
                tracing::warn!(follower = %target, %leader, retry_in_ms = backoff.as_millis() as u64, "redirected again; waiting for the election to settle");
                redirects = 0;
                target = leader;
                pause(&shutdown, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(SessionFailure::Unreachable(message)) => {
                tracing::warn!(coordinator = %target, %message, retry_in_ms = backoff.as_millis() as u64, "coordinator unreachable");
                suspects.insert(target, std::time::Instant::now() + SUSPECT_FOR);
            }
            Err(SessionFailure::Retry(message)) => {
                tracing::warn!(coordinator = %target, %message, retry_in_ms = backoff.as_millis() as u64, "link to the coordinator down");
            }
        }
        // Next, the first replica after this one that has not just failed to answer (a dead
        // replica costs a connect timeout each time it is tried).
        if let Some(index) = config.coordinators.iter().position(|a| *a == target) {
            next = index;
        }
        let now = std::time::Instant::now();
        suspects.retain(|_, until| *until > now);
        // The leader just lost is tried only through a probe (above), not in the rotation.
        let lost_leader = lost
            .as_ref()
            .filter(|lost| lost.until > now)
            .map(|lost| lost.address);
        let candidates = || {
            (1..=count)
                .map(|step| (next + step) % count)
                .filter(|index| Some(config.coordinators[*index]) != lost_leader)
        };
        next = candidates()
            .find(|index| !suspects.contains_key(&config.coordinators[*index]))
            .or_else(|| candidates().next())
            .unwrap_or((next + 1) % count);
        target = config.coordinators[next];
        if Some(target) == lost_leader {
            connect_timeout = PROBE_TIMEOUT;
        }
        if shutdown.is_cancelled() {
            break;
        }
        let electing = lost
            .as_ref()
            .is_some_and(|lost| lost.until > std::time::Instant::now());
        if electing {
            backoff = backoff.min(ELECTION_RETRY);
        }
        pause(&shutdown, backoff).await;
        backoff = (backoff * 2).min(if electing {
            ELECTION_RETRY
        } else {
            Duration::from_secs(5)
        });
    }
    endpoint.close(0u32.into(), b"agent shutting down");
    endpoint.wait_idle().await;
    Ok(())
}

/// How waiting out an election ended.
enum Election {
    /// A follower named the new leader.
    Leader(SocketAddr),
    /// The lost leader answered a probe and welcomed this agent (only the link had failed).
    Welcomed(Handshaken),
    Fatal(String),
    /// Neither: the follower closed its notice stream or the election window passed.
    Undecided,
}

/// While a follower still names the leader this agent lost: waits for that follower's
/// leader-change notice, and probes the lost leader at most every [`PROBE_EVERY`] with
/// [`PROBE_TIMEOUT`] (it may be alive: the agent's own link alone may have failed).
async fn await_election(
    endpoint: &quinn::Endpoint,
    notice: Notice,
    lost: &mut LostLeader,
    agent_id: &AgentId,
    shutdown: &CancellationToken,
) -> Election {
    let notice = notice.next_leader();
    tokio::pin!(notice);
    let mut noticing = true;
    // The probe in flight, if any; dropping the set stops it.
    let mut probes = tokio::task::JoinSet::new();
    loop {
        let now = std::time::Instant::now();
        if lost.until <= now {
            return Election::Undecided;
        }
        let probe_due = lost.probed_at.map_or(now, |at| at + PROBE_EVERY);
        if probes.is_empty() && probe_due <= now {
            lost.probed_at = Some(now);
            let (endpoint, address, agent_id) = (endpoint.clone(), lost.address, agent_id.clone());
            probes.spawn(
                async move { handshake(&endpoint, address, PROBE_TIMEOUT, &agent_id).await },
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return Election::Undecided,
            leader = &mut notice, if noticing => match leader {
                Some(leader) => return Election::Leader(leader),
                // No notice is coming: finish the probe in flight, if any, and stop.
                None if probes.is_empty() => return Election::Undecided,
                None => noticing = false,
            },
            Some(probed) = probes.join_next(), if !probes.is_empty() => match probed {
                Ok(Ok(handshaken)) => return Election::Welcomed(handshaken),
                Ok(Err(SessionFailure::Fatal(message))) => return Election::Fatal(message),
                _ if !noticing => return Election::Undecided,
                _ => {}
            },
            () = tokio::time::sleep_until(probe_due.into()), if probes.is_empty() => {}
            () = tokio::time::sleep_until(lost.until.into()) => return Election::Undecided,
        }
    }
}

/// Sleeps about `backoff` (with jitter), or until shutdown.
async fn pause(shutdown: &CancellationToken, backoff: Duration) {
    let jitter = rand::rng().random_range(0.8..1.2);
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
    }
}

enum Session {
    /// The connection was up and then ended.
    Served,
    Shutdown,
}

enum SessionFailure {
    Fatal(String),
    Retry(String),
    /// Nothing answered at that address.
    Unreachable(String),
    /// A follower named the leader; it may name the next one on the open refusal stream.
    Redirect(SocketAddr, Notice),
}

fn retry(error: impl std::fmt::Display) -> SessionFailure {
    SessionFailure::Retry(error.to_string())
}

/// A connection whose `Hello` the leader welcomed.
struct Handshaken {
    target: SocketAddr,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    welcome: flotilla_protocol::messages::Welcome,
}

/// The open stream of a follower's `NotLeader` refusal, on which it names the next leader
/// when the election ends.
struct Notice {
    _connection: quinn::Connection,
    recv: quinn::RecvStream,
}

impl Notice {
    /// The leader the follower names next; `None` when it closes the stream without naming
    /// one (it gave up waiting, or predates leader-change notices).
    async fn next_leader(mut self) -> Option<SocketAddr> {
        match framing::read_frame::<_, HelloReply>(&mut self.recv).await {
            Ok(Some(HelloReply::Refused(refusal))) => match refusal.reason {
                RefusalReason::NotLeader {
                    leader: Some(leader),
                } => leader.parse().ok(),
                _ => None,
            },
            _ => None,
        }
    }
}

async fn session(
    endpoint: &quinn::Endpoint,
    target: SocketAddr,
    connect_timeout: Duration,
    config: &LinkConfig,
    root: &ActorRef<AgentMsg>,
    outbox: &mut mpsc::UnboundedReceiver<AgentMessage>,
    shutdown: &CancellationToken,
) -> Result<Session, SessionFailure> {
    let handshaken = handshake(endpoint, target, connect_timeout, &config.agent_id).await?;
    serve(handshaken, config, root, outbox, shutdown).await
}

/// Connects to `target` and says `Hello` as this agent.
async fn handshake(
    endpoint: &quinn::Endpoint,
    target: SocketAddr,
    connect_timeout: Duration,
    agent_id: &AgentId,
) -> Result<Handshaken, SessionFailure> {
    // A coordinator that is down does not answer at all: give up on it well before the
    // idle timeout, so the next one is tried.
    let connecting = endpoint
        .connect(target, COORDINATOR_SERVER_NAME)
        .map_err(retry)?;
    let connection = tokio::time::timeout(connect_timeout, connecting)
        .await
        .map_err(|_| SessionFailure::Unreachable(format!("no answer within {connect_timeout:?}")))?
        .map_err(retry)?;
    let peer = tls::peer_role(&connection).map_err(retry)?;
    if peer != Role::Coordinator {
        return Err(SessionFailure::Fatal(format!(
            "the peer's certificate has the {} role, not coordinator",
            peer.name()
        )));
    }
    let (mut send, mut recv) = connection.open_bi().await.map_err(retry)?;
    framing::write_frame(
        &mut send,
        &handshake::hello(Role::Agent, agent_id.0.clone()),
    )
    .await
    .map_err(retry)?;
    let welcome = match framing::read_frame::<_, HelloReply>(&mut recv)
        .await
        .map_err(retry)?
    {
        Some(HelloReply::Welcome(welcome)) => welcome,
        Some(HelloReply::Refused(refusal)) => {
            let message = format!("{:?}: {}", refusal.reason, refusal.message);
            return Err(match refusal.reason {
                RefusalReason::RoleNotPermitted | RefusalReason::UnsupportedVersion => {
                    SessionFailure::Fatal(message)
                }
                RefusalReason::NotLeader {
                    leader: Some(leader),
                } => match leader.parse::<SocketAddr>() {
                    Ok(leader) if leader != target => SessionFailure::Redirect(
                        leader,
                        Notice {
                            _connection: connection,
                            recv,
                        },
                    ),
                    _ => SessionFailure::Retry(message),
                },
                _ => SessionFailure::Retry(message),
            });
        }
        None => return Err(retry("the coordinator closed the handshake stream")),
    };
    Ok(Handshaken {
        target,
        connection,
        send,
        recv,
        welcome,
    })
}

/// Registers with the leader that welcomed this agent, then carries commands down and the
/// outbox up until the link fails or the agent shuts down.
async fn serve(
    handshaken: Handshaken,
    config: &LinkConfig,
    root: &ActorRef<AgentMsg>,
    outbox: &mut mpsc::UnboundedReceiver<AgentMessage>,
    shutdown: &CancellationToken,
) -> Result<Session, SessionFailure> {
    let Handshaken {
        target,
        connection,
        mut send,
        mut recv,
        welcome,
    } = handshaken;
    let snapshot = crate::ask(root, AgentMsg::Snapshot).await.map_err(retry)?;
    if welcome.epoch < snapshot.newest_epoch {
        // Obeying it could undo what a newer leader decided. A coordinator whose state file
        // was replaced hands out low epochs again; restarting this agent joins it afresh.
        return Err(SessionFailure::Fatal(format!(
            "coordinator '{}' leads epoch {}, but this agent already obeyed epoch {}; \
             refusing to follow an older leader (restart the agent to join a coordinator \
             whose state was reset)",
            welcome.coordinator, welcome.epoch, snapshot.newest_epoch
        )));
    }
    let registration = Registration {
        agent_id: config.agent_id.clone(),
        hostname: config.hostname.clone(),
        slots: config.slots,
        gpus: config.gpus,
        running: snapshot.running,
        finished: snapshot.finished,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut hello_frames = Vec::new();
    framing::append_frame(&mut hello_frames, &AgentMessage::Register(registration))
        .map_err(retry)?;
    if snapshot.draining {
        framing::append_frame(&mut hello_frames, &AgentMessage::Draining).map_err(retry)?;
    }
    send.write_all(&hello_frames).await.map_err(retry)?;
    let _ = root.cast(AgentMsg::LinkUp {
        epoch: welcome.epoch,
        version: welcome.version,
    });
    tracing::info!(coordinator = %target, epoch = %welcome.epoch, "connected to the coordinator");

    let commands_root = root.clone();
    let mut reader = tokio::spawn(async move {
        loop {
            // The leader sends at least `Alive` every ALIVE_INTERVAL: silence means it is gone
            // or may no longer act, and waiting for the transport's idle timeout would hold up
            // the failover.
            let frame = tokio::time::timeout(
                ALIVE_TIMEOUT,
                framing::read_frame::<_, CoordinatorCommand>(&mut recv),
            )
            .await;
            let Ok(frame) = frame else {
                return format!(
                    "the coordinator sent nothing for {ALIVE_TIMEOUT:?} (it is gone, or its lease ran out)"
                );
            };
            match frame {
                Ok(Some(CoordinatorCommand {
                    command: Command::Alive,
                    ..
                })) => {}
                Ok(Some(command)) => {
                    if commands_root.cast(AgentMsg::Command(command)).is_err() {
                        return "the agent is stopping".to_string();
                    }
                }
                Ok(None) => return "the coordinator closed the control stream".to_string(),
                Err(error) => return error.to_string(),
            }
        }
    });
    let mut buffer = Vec::with_capacity(16 * 1024);
    let outcome = loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                // Flush what is queued (final outcomes of drained trials) before leaving.
                buffer.clear();
                while let Ok(message) = outbox.try_recv() {
                    let _ = framing::append_frame(&mut buffer, &message);
                }
                let _ = send.write_all(&buffer).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                break Ok(Session::Shutdown);
            }
            reason = &mut reader => {
                let reason = reason.unwrap_or_else(|error| error.to_string());
                tracing::warn!(%reason, "link to the coordinator lost; reconnecting");
                break Ok(Session::Served);
            }
            message = outbox.recv() => {
                let Some(first) = message else { break Ok(Session::Shutdown) };
                let mut queued = vec![first];
                while queued.len() < MAX_MESSAGES_PER_WRITE
                    && let Ok(message) = outbox.try_recv()
                {
                    queued.push(message);
                }
                buffer.clear();
                // A coordinator older than protocol 9 knows nothing of serving.
                queued.retain(|message| {
                    welcome.version >= 9
                        || !matches!(message, AgentMessage::Serving(_) | AgentMessage::ModelSealed { .. })
                });
                for message in coalesce(queued) {
                    if let Err(error) = framing::append_frame(&mut buffer, &message) {
                        tracing::error!(%error, "dropping a message that does not encode");
                    }
                }
                if let Err(error) = send.write_all(&buffer).await {
                    // Unsent outcomes are reported again in the next Register.
                    tracing::warn!(%error, "link to the coordinator lost; reconnecting");
                    break Ok(Session::Served);
                }
            }
        }
    };
    reader.abort();
    connection.close(0u32.into(), b"bye");
    match outcome {
        Err(failure) => Err(failure),
        Ok(Session::Shutdown) => Ok(Session::Shutdown),
        Ok(Session::Served) => Ok(Session::Served),
    }
}

/// Merges queued `TrialMetrics` of one attempt into the first of them, up to
/// [`MAX_POINTS_PER_BATCH`] points. Order per attempt is kept: any other message about that
/// attempt (started, checkpoint, finished, rejected) closes its batch, and a message about
/// no attempt in particular closes every batch, so nothing is reordered around it.
fn coalesce(queued: Vec<AgentMessage>) -> Vec<AgentMessage> {
    let mut out: Vec<AgentMessage> = Vec::with_capacity(queued.len());
    let mut open: HashMap<AttemptId, usize> = HashMap::new();
    for message in queued {
        match message {
            AgentMessage::TrialMetrics { attempt, points } => {
                if let Some(&index) = open.get(&attempt)
                    && let Some(AgentMessage::TrialMetrics { points: batch, .. }) =
                        out.get_mut(index)
                    && batch.len() + points.len() <= MAX_POINTS_PER_BATCH
                {
                    batch.extend(points);
                    continue;
                }
                open.insert(attempt, out.len());
                out.push(AgentMessage::TrialMetrics { attempt, points });
            }
            other => {
                match &other {
                    AgentMessage::TrialStarted { attempt }
                    | AgentMessage::TrialFinished { attempt, .. }
                    | AgentMessage::TrialCheckpoint { attempt, .. }
                    | AgentMessage::CommandRejected {
                        attempt: Some(attempt),
                        ..
                    } => {
                        open.remove(attempt);
                    }
                    _ => open.clear(),
                }
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use flotilla_protocol::messages::{MetricPoint, TrialOutcome};
    use flotilla_protocol::{SweepId, TrialId};

    use super::*;

    fn attempt(trial: u32) -> AttemptId {
        AttemptId {
            trial: TrialId {
                sweep: SweepId(1),
                number: trial,
            },
            attempt: 0,
        }
    }

    fn points(trial: u32, steps: std::ops::Range<u64>) -> AgentMessage {
        AgentMessage::TrialMetrics {
            attempt: attempt(trial),
            points: steps
                .map(|step| MetricPoint {
                    step,
                    values: [("loss".to_string(), step as f64)].into(),
                    elapsed_ms: step,
                })
                .collect(),
        }
    }

    fn steps(message: &AgentMessage) -> Vec<u64> {
        match message {
            AgentMessage::TrialMetrics { points, .. } => points.iter().map(|p| p.step).collect(),
            other => panic!("expected metrics, got {other:?}"),
        }
    }

    #[test]
    fn points_of_one_attempt_merge_across_other_trials() {
        let out = coalesce(vec![
            points(0, 0..1),
            points(1, 0..2),
            points(0, 1..3),
            points(1, 2..3),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(steps(&out[0]), vec![0, 1, 2]);
        assert_eq!(steps(&out[1]), vec![0, 1, 2]);
    }

    #[test]
    fn a_finish_closes_the_batch_so_points_never_pass_it() {
        let finished = AgentMessage::TrialFinished {
            attempt: attempt(0),
            outcome: TrialOutcome::error("x".into(), 0),
        };
        let out = coalesce(vec![
            points(0, 0..1),
            finished.clone(),
            points(0, 1..2),
            points(1, 0..1),
            AgentMessage::Draining,
            points(1, 1..2),
        ]);
        assert_eq!(out.len(), 6);
        assert_eq!(steps(&out[0]), vec![0]);
        assert_eq!(out[1], finished);
        assert_eq!(steps(&out[2]), vec![1]);
        assert_eq!(steps(&out[3]), vec![0]);
        assert_eq!(out[4], AgentMessage::Draining);
        assert_eq!(steps(&out[5]), vec![1]);
    }

    #[test]
    fn batches_stop_at_the_point_limit() {
        let queued = (0..600).map(|step| points(0, step..step + 1)).collect();
        let out = coalesce(queued);
        let sizes: Vec<usize> = out.iter().map(|m| steps(m).len()).collect();
        assert_eq!(sizes, vec![256, 256, 88]);
        let all: Vec<u64> = out.iter().flat_map(steps).collect();
        assert_eq!(all, (0..600).collect::<Vec<_>>());
    }
}
