//! The client connection.

use std::net::SocketAddr;

use flotilla_protocol::framing::{self, FrameError};
use flotilla_protocol::handshake;
use flotilla_protocol::messages::{
    AgentAction, AgentGpus, AgentInfo, ApiError, AutoscaleStatus, ClientRequest, ClientResponse,
    ClusterStatus, HelloReply, RefusalReason, Role, ScaleRequest, SweepDetail, SweepEvent,
    SweepSummary, TrialRecord, Welcome,
};
use flotilla_protocol::models::{
    ModelRef, ModelStage, ModelVersion, RegisterModel, RolloutAction, RolloutRecord, Route,
    RouterReport, StartRollout,
};
use flotilla_protocol::spec::{SpecError, SweepSpec};
use flotilla_protocol::tls::{self, COORDINATOR_SERVER_NAME, Identity, TlsError};
use flotilla_protocol::{AgentId, SweepId};

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot reach the coordinator at {address}: {message}")]
    Connect {
        address: SocketAddr,
        message: String,
    },
    /// Nothing answered at `address`, or the connection went away: what a leader change
    /// looks like from a client (see [`SdkError::is_transient`]).
    #[error("no coordinator answers at {address}: {message}")]
    Unreachable {
        address: SocketAddr,
        message: String,
    },
    #[error("the coordinator refused this client ({reason:?}): {message}")]
    Refused {
        reason: RefusalReason,
        message: String,
    },
    #[error("{}", render_api_error(.0))]
    Api(ApiError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Embedded(String),
}

impl SdkError {
    /// Whether asking again shortly may succeed: nothing answered, or a replica does not lead
    /// (an election may be under way). A refused certificate, a rejected request or a broken
    /// protocol are not transient.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SdkError::Unreachable { .. }
                | SdkError::Refused {
                    reason: RefusalReason::NotLeader { .. },
                    ..
                }
        )
    }
}

fn render_api_error(error: &ApiError) -> String {
    let mut text = format!("{:?}: {}", error.kind, error.message);
    for problem in &error.problems {
        text.push_str(&format!("\n  - {problem}"));
    }
    text
}

impl From<FrameError> for SdkError {
    fn from(error: FrameError) -> Self {
        SdkError::Protocol(error.to_string())
    }
}

/// A connection to the coordinator, authenticated by a client or admin certificate.
pub struct Client {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    address: SocketAddr,
    welcome: Welcome,
}

impl Client {
    /// Connects to whichever of `addresses` leads. All are tried at once (a replica that is
    /// down costs nothing while another answers); a follower's answer naming the leader is
    /// followed. Returns the last error when none leads.
    pub async fn connect_any(
        addresses: &[SocketAddr],
        identity: &Identity,
    ) -> Result<Client, SdkError> {
        let mut tried = std::collections::BTreeSet::new();
        let mut round: Vec<SocketAddr> = addresses.to_vec();
        let mut last = None;
        // A redirect names a leader that may itself have just stepped down: follow a few.
        for _ in 0..4 {
            let mut attempts = tokio::task::JoinSet::new();
            for address in round.drain(..) {
                if tried.insert(address) {
                    let identity = identity.clone();
                    attempts.spawn(async move { Client::connect(address, &identity).await });
                }
            }
            if attempts.is_empty() {
                break;
            }
            while let Some(joined) = attempts.join_next().await {
                match joined {
                    Ok(Ok(client)) => return Ok(client),
                    Ok(Err(SdkError::Refused {
                        reason: RefusalReason::NotLeader { leader },
                        message,
                    })) => {
                        if let Some(leader) = leader.as_deref().and_then(|l| l.parse().ok()) {
                            round.push(leader);
                        }
                        last = Some(SdkError::Refused {
                            reason: RefusalReason::NotLeader { leader },
                            message,
                        });
                    }
                    Ok(Err(error)) => last = Some(error),
                    Err(error) => last = Some(SdkError::Protocol(error.to_string())),
                }
            }
        }
        Err(last.unwrap_or_else(|| SdkError::Protocol("no coordinator address given".into())))
    }

    /// [`Client::connect_any`], asked again every 200 ms while the answer is transient (no
    /// replica leads yet, or the leader named does not answer: an election is under way),
    /// for up to `patience`.
    pub async fn connect_leader(
        addresses: &[SocketAddr],
        identity: &Identity,
        patience: std::time::Duration,
    ) -> Result<Client, SdkError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match Client::connect_any(addresses, identity).await {
                Err(error) if error.is_transient() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                result => return result,
            }
        }
    }

    /// Connects with mutual TLS and performs the `Hello`/`Welcome` handshake. The role
    /// requested is the certificate's (client or admin).
    pub async fn connect(address: SocketAddr, identity: &Identity) -> Result<Client, SdkError> {
        let role = identity.role()?;
        let connect_error = |message: String| SdkError::Connect { address, message };
        let bind: SocketAddr = if address.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|_| connect_error("bad bind address".into()))?;
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|error| connect_error(error.to_string()))?;
        endpoint.set_default_client_config(tls::client_config(identity)?);
        let connecting = endpoint
            .connect(address, COORDINATOR_SERVER_NAME)
            .map_err(|error| connect_error(error.to_string()))?;
        let unreachable = |message: String| SdkError::Unreachable { address, message };
        let connection = tokio::time::timeout(std::time::Duration::from_secs(5), connecting)
            .await
            .map_err(|_| unreachable("no answer within 5 s".into()))?
            .map_err(|error| match error {
                quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset => {
                    unreachable(error.to_string())
                }
                error => connect_error(format!("TLS handshake failed: {error}")),
            })?;
        let peer = tls::peer_role(&connection)?;
        if peer != Role::Coordinator {
            return Err(connect_error(format!(
                "the server's certificate has the {} role",
                peer.name()
            )));
        }
        let (mut send, mut recv) = connection.open_bi().await.map_err(|error| {
            unreachable(format!("the coordinator closed the connection: {error}"))
        })?;
        // Ask for what the certificate carries: an admin or a router acts as itself, and
        // anything else as a client (the coordinator refuses what the certificate does not
        // allow).
        let requested = match role {
            Role::Admin | Role::Router => role,
            _ => Role::Client,
        };
        let hello = handshake::hello(
            requested,
            format!("flotilla-sdk {}", env!("CARGO_PKG_VERSION")),
        );
        framing::write_frame(&mut send, &hello).await?;
        let reply = framing::read_frame::<_, HelloReply>(&mut recv)
            .await
            .map_err(|error| {
                connect_error(format!(
                    "handshake failed (is this certificate from the cluster's CA?): {error}"
                ))
            })?;
        let welcome = match reply {
            Some(HelloReply::Welcome(welcome)) => welcome,
            Some(HelloReply::Refused(refusal)) => {
                return Err(SdkError::Refused {
                    reason: refusal.reason,
                    message: refusal.message,
                });
            }
            None => return Err(connect_error("the coordinator closed the handshake".into())),
        };
        let _ = send.finish();
        Ok(Client {
            endpoint,
            connection,
            address,
            welcome,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What the coordinator said in the handshake (protocol version, epoch, name).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends one request and returns the coordinator's answer as it is (an `Error`
    /// answer included): for tools that speak the protocol directly. The typed methods
    /// below are built on it.
    pub async fn send(&self, request: &ClientRequest) -> Result<ClientResponse, SdkError> {
        match self.request(request).await {
            Err(SdkError::Api(error)) => Ok(ClientResponse::Error(error)),
            other => other,
        }
    }

    /// Sends `request` on a stream of its own and returns where its answer comes.
    async fn open_request(&self, request: &ClientRequest) -> Result<quinn::RecvStream, SdkError> {
        let (mut send, recv) =
            self.connection
                .open_bi()
                .await
                .map_err(|error| SdkError::Unreachable {
                    address: self.address,
                    message: error.to_string(),
                })?;
        framing::write_frame(&mut send, request).await?;
        let _ = send.finish();
        Ok(recv)
    }

    async fn request(&self, request: &ClientRequest) -> Result<ClientResponse, SdkError> {
        let mut recv = self.open_request(request).await?;
        match framing::read_frame::<_, ClientResponse>(&mut recv).await? {
            Some(ClientResponse::Error(error)) => Err(SdkError::Api(error)),
            Some(response) => Ok(response),
            None => Err(SdkError::Protocol(
                "the coordinator closed the stream without answering".into(),
            )),
        }
    }

    fn unexpected(response: ClientResponse) -> SdkError {
        SdkError::Protocol(format!("unexpected response {response:?}"))
    }

    /// Validates and submits a sweep.
    pub async fn submit(&self, spec: SweepSpec) -> Result<SweepSummary, SdkError> {
        if let Err(problems) = spec.validate() {
            return Err(SpecError::Invalid {
                origin: format!("sweep '{}'", spec.name),
                problems,
            }
            .into());
        }
        match self
            .request(&ClientRequest::SubmitSweep(Box::new(spec)))
            .await?
        {
            ClientResponse::SweepSubmitted(summary) => Ok(summary),
            other => Err(Self::unexpected(other)),
        }
    }

    pub async fn status(&self, sweep: SweepId) -> Result<SweepSummary, SdkError> {
        match self.request(&ClientRequest::SweepStatus(sweep)).await? {
            ClientResponse::Status(summary) => Ok(summary),
            other => Err(Self::unexpected(other)),
        }
    }

    pub async fn list(&self) -> Result<Vec<SweepSummary>, SdkError> {
        match self.request(&ClientRequest::ListSweeps).await? {
            ClientResponse::Sweeps(summaries) => Ok(summaries),
            other => Err(Self::unexpected(other)),
        }
    }

    pub async fn cancel(&self, sweep: SweepId) -> Result<SweepSummary, SdkError> {
        match self.request(&ClientRequest::CancelSweep(sweep)).await? {
            ClientResponse::Cancelled(summary) => Ok(summary),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The best feasible trial so far, if any.
    pub async fn best(&self, sweep: SweepId) -> Result<Option<TrialRecord>, SdkError> {
        match self.request(&ClientRequest::BestTrial(sweep)).await? {
            ClientResponse::Best(best) => Ok(best),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Every trial of the sweep, in trial order.
    pub async fn trials(&self, sweep: SweepId) -> Result<Vec<TrialRecord>, SdkError> {
        match self.request(&ClientRequest::ListTrials(sweep)).await? {
            ClientResponse::Trials(trials) => Ok(trials),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The sweep's summary, its spec and its trials' learning curves (the objective by step),
    /// for reports. Needs a coordinator that speaks protocol 7.
    pub async fn detail(&self, sweep: SweepId) -> Result<SweepDetail, SdkError> {
        match self.request(&ClientRequest::SweepDetail(sweep)).await? {
            ClientResponse::SweepDetail(detail) => Ok(*detail),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The cluster's agents (needs an admin certificate).
    pub async fn agents(&self) -> Result<Vec<AgentInfo>, SdkError> {
        match self.request(&ClientRequest::ListAgents).await? {
            ClientResponse::Agents(agents) => Ok(agents),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Each agent's GPUs and how many placed or running attempts hold (admin certificate;
    /// protocol 10).
    pub async fn agent_gpus(&self) -> Result<Vec<AgentGpus>, SdkError> {
        match self.request(&ClientRequest::AgentGpus).await? {
            ClientResponse::AgentGpus(gpus) => Ok(gpus),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The leader, its epoch, the other replicas, the state store's health and the fleet's
    /// slots (admin certificate).
    pub async fn cluster_status(&self) -> Result<ClusterStatus, SdkError> {
        match self.request(&ClientRequest::ClusterStatus).await? {
            ClientResponse::ClusterStatus(status) => Ok(status),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The autoscaler's view: provider, bounds, desired and actual capacity, the last
    /// decision (admin certificate; protocol 8). A coordinator that does not autoscale
    /// answers with provider `none`.
    pub async fn autoscale_status(&self) -> Result<AutoscaleStatus, SdkError> {
        match self.request(&ClientRequest::AutoscaleStatus).await? {
            ClientResponse::Autoscale(status) => Ok(status),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Sets the fleet's desired capacity and/or bounds (admin certificate; protocol 8).
    pub async fn scale(&self, request: ScaleRequest) -> Result<AutoscaleStatus, SdkError> {
        match self.request(&ClientRequest::Scale(request)).await? {
            ClientResponse::Autoscale(status) => Ok(status),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Drains, cordons or uncordons an agent and returns it as it is afterwards (admin
    /// certificate; protocol 8).
    pub async fn agent_admin(
        &self,
        agent: AgentId,
        action: AgentAction,
    ) -> Result<Vec<AgentInfo>, SdkError> {
        match self
            .request(&ClientRequest::AgentAdmin { agent, action })
            .await?
        {
            ClientResponse::Agents(agents) => Ok(agents),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Registers a trial's checkpoint (the sweep's winner when `request.trial` is `None`) as
    /// a model version; an agent copies it into the artifact store and records its SHA-256
    /// (protocol 9).
    pub async fn register_model(&self, request: RegisterModel) -> Result<ModelVersion, SdkError> {
        match self.request(&ClientRequest::RegisterModel(request)).await? {
            ClientResponse::Models(mut versions) if versions.len() == 1 => Ok(versions.remove(0)),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Versions of one model, or of every model, oldest first (protocol 9).
    pub async fn models(&self, name: Option<&str>) -> Result<Vec<ModelVersion>, SdkError> {
        let request = ClientRequest::ListModels {
            name: name.map(str::to_string),
        };
        match self.request(&request).await? {
            ClientResponse::Models(versions) => Ok(versions),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Where versions of one model (or of every model) are assigned and how each replica is
    /// (protocol 12).
    pub async fn model_placements(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<flotilla_protocol::models::Placement>, SdkError> {
        let request = ClientRequest::ModelPlacements {
            name: name.map(str::to_string),
        };
        match self.request(&request).await? {
            ClientResponse::Placements(placements) => Ok(placements),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Moves a version to a stage; returns every version that changed (admin certificate;
    /// protocol 9).
    pub async fn set_model_stage(
        &self,
        model: ModelRef,
        stage: ModelStage,
    ) -> Result<Vec<ModelVersion>, SdkError> {
        match self
            .request(&ClientRequest::SetModelStage { model, stage })
            .await?
        {
            ClientResponse::Models(versions) => Ok(versions),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Starts a canary rollout of a staging version against the production one (admin
    /// certificate; protocol 9).
    pub async fn start_rollout(&self, request: StartRollout) -> Result<RolloutRecord, SdkError> {
        match self.request(&ClientRequest::StartRollout(request)).await? {
            ClientResponse::Rollouts(mut rollouts) if rollouts.len() == 1 => Ok(rollouts.remove(0)),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Rollouts of one model, or all, newest first (protocol 9).
    pub async fn rollouts(&self, model: Option<&str>) -> Result<Vec<RolloutRecord>, SdkError> {
        let request = ClientRequest::ListRollouts {
            model: model.map(str::to_string),
        };
        match self.request(&request).await? {
            ClientResponse::Rollouts(rollouts) => Ok(rollouts),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Pauses, resumes, promotes or aborts a model's active rollout (admin certificate;
    /// protocol 9).
    pub async fn rollout_action(
        &self,
        model: &str,
        action: RolloutAction,
    ) -> Result<RolloutRecord, SdkError> {
        let request = ClientRequest::RolloutAction {
            model: model.to_string(),
            action,
        };
        match self.request(&request).await? {
            ClientResponse::Rollouts(mut rollouts) if rollouts.len() == 1 => Ok(rollouts.remove(0)),
            other => Err(Self::unexpected(other)),
        }
    }

    /// A router's report: its traffic counters; answered with the routes to follow
    /// (protocol 9).
    pub async fn router_sync(&self, report: RouterReport) -> Result<Vec<Route>, SdkError> {
        match self.request(&ClientRequest::RouterSync(report)).await? {
            ClientResponse::Routes(routes) => Ok(routes),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Streams the sweep's events from now on; the stream ends after `SweepFinished`.
    pub async fn watch(&self, sweep: SweepId) -> Result<EventStream, SdkError> {
        let recv = self.open_request(&ClientRequest::WatchSweep(sweep)).await?;
        Ok(EventStream { recv, done: false })
    }

    /// Streams the sweep's events after sequence number `from` (0: from the start): first
    /// what was missed (each trial's newest state since, in order), then live events, each
    /// with its number; the stream ends after `SweepFinished`. See [`ResumingWatch`] for a
    /// watch that follows the leader through failovers.
    pub async fn watch_from(
        &self,
        sweep: SweepId,
        from: u64,
    ) -> Result<SequencedEventStream, SdkError> {
        let recv = self
            .open_request(&ClientRequest::WatchSweepFrom { sweep, from })
            .await?;
        Ok(SequencedEventStream { recv, done: false })
    }

    /// Waits until the sweep ends and returns its final summary.
    pub async fn wait(&self, sweep: SweepId) -> Result<SweepSummary, SdkError> {
        let mut events = self.watch(sweep).await?;
        while let Some(event) = events.next().await {
            if let SweepEvent::SweepFinished(summary) = event? {
                return Ok(summary);
            }
        }
        Err(SdkError::Protocol(
            "the event stream ended before the sweep did".into(),
        ))
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}

/// A sweep's events, in order.
pub struct EventStream {
    recv: quinn::RecvStream,
    done: bool,
}

impl EventStream {
    pub async fn next(&mut self) -> Option<Result<SweepEvent, SdkError>> {
        next_event(&mut self.recv, &mut self.done, |response| match response {
            ClientResponse::Event(event) => Ok((0, event)),
            other => Err(Box::new(other)),
        })
        .await
        .map(|result| result.map(|(_, event)| event))
    }
}

/// The next event of a watch stream, `None` once it has ended (after `SweepFinished`, an
/// error, or the end of the stream); `event` takes an event out of a response, or hands the
/// response back as unexpected.
async fn next_event(
    recv: &mut quinn::RecvStream,
    done: &mut bool,
    event: impl Fn(ClientResponse) -> Result<(u64, SweepEvent), Box<ClientResponse>>,
) -> Option<Result<(u64, SweepEvent), SdkError>> {
    if *done {
        return None;
    }
    let result = match framing::read_frame::<_, ClientResponse>(recv).await {
        Ok(Some(ClientResponse::Error(error))) => Err(SdkError::Api(error)),
        Ok(Some(response)) => match event(response) {
            Ok((seq, event)) => {
                *done = matches!(event, SweepEvent::SweepFinished(_));
                Ok((seq, event))
            }
            Err(other) => Err(Client::unexpected(*other)),
        },
        Ok(None) => {
            *done = true;
            return None;
        }
        Err(error) => Err(error.into()),
    };
    if result.is_err() {
        *done = true;
    }
    Some(result)
}

/// A sweep's events with their sequence numbers (`Client::watch_from`).
pub struct SequencedEventStream {
    recv: quinn::RecvStream,
    done: bool,
}

impl SequencedEventStream {
    pub async fn next(&mut self) -> Option<Result<(u64, SweepEvent), SdkError>> {
        next_event(&mut self.recv, &mut self.done, |response| match response {
            ClientResponse::SequencedEvent { seq, event } => Ok((seq, event)),
            other => Err(Box::new(other)),
        })
        .await
    }
}

/// A watch that survives leader changes: when its stream breaks it finds the leader among
/// `addresses` again and resumes after the last event it delivered, so each event is
/// delivered once (a trial's end by trial and attempt, even when a leader died before storing
/// it and the next announces it again) and `SweepFinished` always arrives (unless no leader answers for
/// `patience`). Metric points are live only: those sent while no leader answered are gone.
pub struct ResumingWatch {
    addresses: Vec<SocketAddr>,
    identity: Identity,
    sweep: SweepId,
    last: u64,
    patience: std::time::Duration,
    client: Option<Client>,
    stream: Option<SequencedEventStream>,
    done: bool,
    /// Trial ends delivered, by trial and attempt: a leader that died before storing an end
    /// it announced leaves the next leader to announce the same end again.
    ended: std::collections::HashSet<(flotilla_protocol::TrialId, u32)>,
}

impl ResumingWatch {
    /// Watches `sweep` after event `from` (0: from the start).
    pub fn new(
        addresses: Vec<SocketAddr>,
        identity: Identity,
        sweep: SweepId,
        from: u64,
    ) -> ResumingWatch {
        ResumingWatch {
            addresses,
            identity,
            sweep,
            last: from,
            patience: std::time::Duration::from_secs(300),
            client: None,
            stream: None,
            done: false,
            ended: std::collections::HashSet::new(),
        }
    }

    /// How long to keep looking for a leader before giving up (default 5 minutes).
    pub fn patience(mut self, patience: std::time::Duration) -> ResumingWatch {
        self.patience = patience;
        self
    }

    /// The sequence number of the last event delivered (resume after it).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    async fn open(&mut self) -> Result<(), SdkError> {
        let client = Client::connect_any(&self.addresses, &self.identity).await?;
        let stream = client.watch_from(self.sweep, self.last).await?;
        self.client = Some(client);
        self.stream = Some(stream);
        Ok(())
    }

    /// The next event, each once, in order; `None` after `SweepFinished`.
    pub async fn next(&mut self) -> Option<Result<SweepEvent, SdkError>> {
        if self.done {
            return None;
        }
        let mut lost_since: Option<std::time::Instant> = None;
        loop {
            if self.stream.is_none()
                && let Err(error) = self.open().await
            {
                let since = *lost_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= self.patience {
                    self.done = true;
                    return Some(Err(error));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.next().await {
                Some(Ok((seq, event))) => {
                    if matches!(event, SweepEvent::SweepFinished(_)) {
                        self.done = true;
                        self.last = self.last.max(seq);
                        return Some(Ok(event));
                    }
                    if seq != 0 {
                        if seq <= self.last {
                            continue;
                        }
                        self.last = seq;
                    }
                    if let SweepEvent::TrialFinished(trial) = &event
                        && !self.ended.insert((trial.id, trial.attempt))
                    {
                        continue;
                    }
                    return Some(Ok(event));
                }
                // The sweep is not there, or the request is refused: no leader will differ.
                Some(Err(SdkError::Api(error)))
                    if error.kind != flotilla_protocol::messages::ApiErrorKind::Unavailable =>
                {
                    self.done = true;
                    return Some(Err(SdkError::Api(error)));
                }
                // The leader went away mid-stream: find the next one and resume.
                Some(Err(_)) | None => {
                    self.stream = None;
                    if let Some(client) = self.client.take() {
                        drop(client);
                    }
                    lost_since.get_or_insert_with(std::time::Instant::now);
                }
            }
        }
    }
}
