//! The model router (`flotilla router`, and part of `flotilla up`): one HTTP entry point for
//! predictions that splits each model's traffic between its production version (the
//! baseline) and, during a rollout, the canary, and counts per version what the rollout
//! controller decides on.
//!
//! - `POST /v1/predict` with `{"model": "churn", "instances": [[…], …], "key": "user-42"}`
//!   (`key` optional; the `x-flotilla-key` header works too). A request with a key always
//!   lands on the same side at a given weight, and stays on the canary as its weight grows.
//!   The body is forwarded unchanged to an agent that has the chosen version loaded (chosen
//!   at random, one retry on another endpoint when a connection fails) and the agent's answer
//!   comes back with `x-flotilla-version` and `x-flotilla-request-id` headers.
//! - `POST /v1/feedback` with `{"request_id": "…", "labels": [1, 0, …]}`: true labels for a
//!   classification request answered in the last [`FEEDBACK_WINDOW`]; each is compared with
//!   the class predicted and counted for the version that predicted it (accuracy).
//! - `GET /v1/routes`: the routes in force. `GET /metrics`: requests, errors and latency per
//!   model and version, feedback, canary weights, sync errors.
//!
//! Credentials. Feedback decides canaries, so `/v1/feedback` answers only requests with a
//! bearer token that has the `feedback` scope, from the router's token file
//! ([`flotilla_telemetry::tokens`]; reloaded when it changes): 401 without one, 403 for a
//! token without the scope, and 403 for every request when the router has no token file.
//! Predictions and routes are open unless [`RouterConfig::gate_predictions`] is set; then
//! they need the `predict` scope. The router reports to the coordinator with a `router`
//! certificate, the only kind (besides admin) whose traffic counters the coordinator takes.
//!
//! Counting. Per rollout and side the router keeps [`flotilla_rollout::Arm`]s: requests,
//! errors (a 5xx answer, a 422 — the version cannot take the inputs —, a failed connection or a
//! timeout; any other 4xx is the client's and is not counted against a version), log-latency sums and feedback. Every second it sends them to
//! the coordinator (cumulative since it first saw the rollout) and gets the routes back; a
//! router that cannot reach the coordinator keeps routing by the last routes it had.
//!
//! A canary with no ready endpoint yet (still loading) gets no traffic: its share goes to
//! the baseline and is counted there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_protocol::models::{RolloutTraffic, Route, RouteTarget, RouterReport};
use flotilla_rollout::{Pair, Side};
use flotilla_sdk::{Client, Identity};
use flotilla_telemetry::tokens::{Scope, TokenFile};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod feedback;
mod metrics;
mod predict;

use feedback::{FeedbackBook, feedback};
use metrics::Metrics;
use predict::{predict, predict_kserve};

/// How long a prediction's classes are kept for feedback.
pub const FEEDBACK_WINDOW: Duration = Duration::from_secs(600);
/// Predictions kept for feedback at most, and their labels (oldest dropped first).
const FEEDBACK_CAPACITY: usize = 200_000;
const FEEDBACK_LABELS: usize = 4_000_000;

#[derive(Clone)]
pub struct RouterConfig {
    /// The coordinator's address, or every replica's.
    pub coordinators: Vec<SocketAddr>,
    /// A router (or admin) certificate of the cluster.
    pub identity: Identity,
    /// Bearer tokens for feedback (and predictions when gated). None: feedback is refused.
    pub tokens: Option<TokenFile>,
    /// Predictions and routes need a token with the `predict` scope.
    pub gate_predictions: bool,
    pub listen: SocketAddr,
    /// Between reports to the coordinator.
    pub sync_interval: Duration,
    /// How long an agent may take to answer one request.
    pub upstream_timeout: Duration,
}

impl RouterConfig {
    pub fn new(coordinators: Vec<SocketAddr>, identity: Identity, listen: SocketAddr) -> Self {
        RouterConfig {
            coordinators,
            identity,
            listen,
            tokens: None,
            gate_predictions: false,
            sync_interval: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(10),
        }
    }
}

struct Shared {
    routes: RwLock<HashMap<String, Route>>,
    counters: Mutex<HashMap<u64, Pair>>,
    predicted: Mutex<FeedbackBook>,
    next: AtomicUsize,
    http: reqwest::Client,
    metrics: Metrics,
    name: String,
    tokens: Option<TokenFile>,
    gate_predictions: bool,
}

impl Shared {
    /// The answer to refuse with, unless `headers` carry a token with `scope`.
    fn refusal(&self, headers: &HeaderMap, scope: Scope) -> Option<Response> {
        let Some(tokens) = &self.tokens else {
            return Some(json_error(
                StatusCode::FORBIDDEN,
                format!(
                    "this router takes no {} requests: it was started without a token file (--tokens)",
                    scope.name()
                ),
            ));
        };
        let refused = tokens.check(headers, scope).err()?;
        self.metrics
            .refused
            .with_label_values(&[scope.name()])
            .inc();
        Some(json_error(refused.status, refused.message))
    }
}

impl Shared {
    fn count(&self, rollout: Option<(u64, Side)>, update: impl FnOnce(&mut flotilla_rollout::Arm)) {
        let Some((id, side)) = rollout else { return };
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let pair = counters.entry(id).or_default();
        update(match side {
            Side::Baseline => &mut pair.baseline,
            Side::Canary => &mut pair.canary,
        });
    }
}

/// A running router.
pub struct Router {
    address: SocketAddr,
    /// Stops the report loop (after a last report).
    shutdown: CancellationToken,
    /// Stops the HTTP server; it goes first, so the last report holds every request.
    http_shutdown: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    tasks: TaskTracker,
    shared: Arc<Shared>,
}

impl Router {
    pub async fn start(config: RouterConfig) -> anyhow::Result<Router> {
        if config.coordinators.is_empty() {
            anyhow::bail!("the router needs at least one coordinator address");
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot listen for predictions on {} (TCP): {error}",
                    config.listen
                )
            })?;
        let address = listener.local_addr()?;
        // Agents' serving endpoints: mutual TLS with the router's certificate, and only
        // agent certificates of the cluster accepted (flotilla_protocol::https).
        let serving_tls = flotilla_protocol::https::serving_client_config(&config.identity)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(serving_tls)
            .timeout(config.upstream_timeout)
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        let shared = Arc::new(Shared {
            routes: RwLock::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            predicted: Mutex::new(FeedbackBook::default()),
            next: AtomicUsize::new(0),
            http,
            metrics: Metrics::new(),
            name: format!(
                "router-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            tokens: config.tokens.clone(),
            gate_predictions: config.gate_predictions,
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        // The first routes before the first request: wait for one sync (briefly).
        let mut client = None;
        sync_once(&config, &shared, &mut client).await;
        tasks.spawn(sync_loop(
            config.clone(),
            shared.clone(),
            client,
            shutdown.clone(),
        ));
        if let Some(tokens) = &config.tokens {
            tasks.spawn(tokens.clone().watch(shutdown.clone()));
        }
        let app = axum::Router::new()
            .route("/v1/predict", post(predict))
            .route("/v1/models/{target}", post(predict_kserve))
            .route("/v1/feedback", post(feedback))
            .route("/v1/routes", get(routes))
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .layer(axum::extract::DefaultBodyLimit::max(32 * 1024 * 1024))
            .with_state(shared.clone());
        let http_shutdown = CancellationToken::new();
        let http = tokio::spawn(flotilla_telemetry::serve(
            listener,
            app,
            http_shutdown.clone(),
        ));
        tasks.close();
        tracing::info!(%address, router = %shared.name, "router listening");
        Ok(Router {
            address,
            shutdown,
            http_shutdown,
            http,
            tasks,
            shared,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Whether this router has `model@version` in its routes with a ready endpoint.
    pub fn routes_to(&self, model: &str, version: &str) -> bool {
        let routes = self.shared.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(model).is_some_and(|route| {
            std::iter::once(&route.baseline)
                .chain(route.canary.as_ref())
                .any(|target| target.version.to_string() == version && !target.endpoints.is_empty())
        })
    }

    /// Stops serving and syncing.
    pub async fn shutdown(self) {
        self.http_shutdown.cancel();
        let _ = self.http.await;
        self.shutdown.cancel();
        self.tasks.wait().await;
    }
}

/// How long a router waits for the leader's answer to its report.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

async fn sync_once(config: &RouterConfig, shared: &Shared, client: &mut Option<Client>) -> bool {
    if client.is_none() {
        match Client::connect_any(&config.coordinators, &config.identity).await {
            Ok(connected) => *client = Some(connected),
            Err(error) => {
                shared.metrics.sync_errors.inc();
                tracing::warn!(%error, "router cannot reach the coordinator; keeping its routes");
                return false;
            }
        }
    }
    let report = {
        let counters = shared.counters.lock().unwrap_or_else(|p| p.into_inner());
        RouterReport {
            router: shared.name.clone(),
            rollouts: counters
                .iter()
                .map(|(rollout, traffic)| RolloutTraffic {
                    rollout: *rollout,
                    traffic: *traffic,
                })
                .collect(),
        }
    };
    let Some(connected) = client.as_ref() else {
        return false;
    };
    // A leader that died or lost its lease answers nothing: give up on it after
    // SYNC_TIMEOUT and find the leader again, rather than at the transport's idle timeout.
    let answer = tokio::time::timeout(SYNC_TIMEOUT, connected.router_sync(report))
        .await
        .unwrap_or_else(|_| {
            Err(flotilla_sdk::SdkError::Protocol(format!(
                "the coordinator did not answer within {SYNC_TIMEOUT:?}"
            )))
        });
    match answer {
        Ok(routes) => {
            let active: Vec<u64> = routes.iter().filter_map(|route| route.rollout).collect();
            for route in &routes {
                shared
                    .metrics
                    .weight
                    .with_label_values(&[route.model.as_str()])
                    .set(route.canary_weight);
            }
            let mut table = shared.routes.write().unwrap_or_else(|p| p.into_inner());
            let fresh: HashMap<String, Route> = routes
                .into_iter()
                .map(|mut route| {
                    // A coordinator that has just taken over may not have heard from the
                    // agents yet: keep the endpoints this router knew for the same version.
                    if let Some(old) = table.get(&route.model) {
                        keep_endpoints(&mut route.baseline, old);
                        if let Some(canary) = route.canary.as_mut() {
                            keep_endpoints(canary, old);
                        }
                    }
                    (route.model.clone(), route)
                })
                .collect();
            *table = fresh;
            drop(table);
            // Counters of ended rollouts were reported; forget them.
            shared
                .counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|rollout, _| active.contains(rollout));
            true
        }
        Err(error) => {
            shared.metrics.sync_errors.inc();
            tracing::warn!(%error, "router sync failed; reconnecting, keeping its routes");
            if let Some(old) = client.take() {
                old.close().await;
            }
            false
        }
    }
}

fn keep_endpoints(target: &mut RouteTarget, old: &Route) {
    if !target.endpoints.is_empty() {
        return;
    }
    let known = std::iter::once(&old.baseline)
        .chain(old.canary.as_ref())
        .find(|known| known.version == target.version);
    if let Some(known) = known {
        target.endpoints = known.endpoints.clone();
    }
}

async fn sync_loop(
    config: RouterConfig,
    shared: Arc<Shared>,
    mut client: Option<Client>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(config.sync_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        tokio::select! {
            _ = sync_once(&config, &shared, &mut client) => {}
            () = shutdown.cancelled() => break,
        }
    }
    // Last counts, so a rollout sees this router's traffic up to its end.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        sync_once(&config, &shared, &mut client),
    )
    .await;
    if let Some(client) = client {
        client.close().await;
    }
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn routes(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if shared.gate_predictions
        && let Some(refused) = shared.refusal(&headers, Scope::Predict)
    {
        return refused;
    }
    let routes: Vec<serde_json::Value> = {
        let routes = shared.routes.read().unwrap_or_else(|p| p.into_inner());
        routes
            .values()
            .map(|route| {
                serde_json::json!({
                    "model": route.model,
                    "baseline": {
                        "version": route.baseline.version.to_string(),
                        "endpoints": route.baseline.endpoints,
                    },
                    "canary": route.canary.as_ref().map(|canary| serde_json::json!({
                        "version": canary.version.to_string(),
                        "endpoints": canary.endpoints,
                    })),
                    "canary_weight": route.canary_weight,
                    "rollout": route.rollout,
                })
            })
            .collect()
    };
    Json(serde_json::json!({ "routes": routes })).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    flotilla_telemetry::exposition(&shared.metrics.registry)
}
