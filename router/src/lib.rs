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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_protocol::models::{RolloutTraffic, Route, RouteTarget, RouterReport};
use flotilla_rollout::{Pair, Side, Split};
use flotilla_sdk::{Client, Identity};
use flotilla_telemetry::tokens::{Scope, TokenFile};
use prometheus::{GaugeVec, HistogramVec, IntCounter, IntCounterVec, Registry};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    feedback: IntCounterVec,
    scored: IntCounterVec,
    squared_error: prometheus::CounterVec,
    weight: GaugeVec,
    sync_errors: IntCounter,
    retries: IntCounter,
    refused: IntCounterVec,
}

impl Metrics {
    fn new() -> Metrics {
        let mut families = flotilla_telemetry::Families::new();
        Metrics {
            requests: families.counter_vec(
                "flotilla_router_requests_total",
                "Prediction requests routed, by model, version and outcome: ok, client_error (4xx but 422), rejected (422: the version cannot take the inputs), error (5xx, connection failure, timeout), unavailable (no ready endpoint).",
                &["model", "version", "outcome"],
            ),
            latency: families.histogram_vec(
                "flotilla_router_request_duration_seconds",
                "Time from a request's arrival at the router to its answer, agent included.",
                &["model", "version"],
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    10.0,
                ],
            ),
            feedback: families.counter_vec(
                "flotilla_router_feedback_total",
                "Labelled predictions that came back through /v1/feedback, by model, version and whether the prediction was right.",
                &["model", "version", "correct"],
            ),
            scored: families.counter_vec(
                "flotilla_router_feedback_scored_total",
                "Numeric predictions whose true value came back through /v1/feedback, by model and version.",
                &["model", "version"],
            ),
            squared_error: families.float_counter_vec(
                "flotilla_router_feedback_squared_error_sum",
                "Σ of the squared errors of those predictions (divide by flotilla_router_feedback_scored_total for the mean).",
                &["model", "version"],
            ),
            weight: families.float_gauge_vec(
                "flotilla_router_canary_weight",
                "The canary's share of each model's requests (0 without a rollout).",
                &["model"],
            ),
            sync_errors: families.counter(
                "flotilla_router_sync_errors_total",
                "Reports to the coordinator that failed (the router keeps its last routes).",
            ),
            retries: families.counter(
                "flotilla_router_upstream_retries_total",
                "Requests sent to a second endpoint after a connection to the first failed.",
            ),
            refused: families.counter_vec(
                "flotilla_router_unauthorized_requests_total",
                "Requests refused for a missing, unknown or insufficient bearer token, by the scope they needed.",
                &["scope"],
            ),
            registry: families.registry().clone(),
        }
    }
}

/// A prediction waiting for its labels.
struct Predicted {
    id: String,
    at: Instant,
    model: String,
    version: String,
    rollout: Option<(u64, Side)>,
    /// Each prediction's label, where it has one feedback can be compared with.
    labels: Vec<Option<Label>>,
}

/// What feedback is compared with: a class (accuracy) or a number (squared error).
#[derive(Debug, Clone, PartialEq)]
enum Label {
    Class(String),
    Value(f64),
}

/// The label of one prediction in a KServe v1 `predictions` array: an integer, a string or
/// `{"class": …}` is a class; a number with a fraction (or `{"value": x}`) is a value;
/// anything else (a list of scores, an object without either) has none.
fn prediction_label(prediction: &serde_json::Value) -> Option<Label> {
    use serde_json::Value;
    match prediction {
        Value::Number(number) if number.is_f64() => number.as_f64().map(Label::Value),
        Value::Number(number) => Some(Label::Class(number.to_string())),
        Value::String(class) => Some(Label::Class(class.clone())),
        Value::Bool(class) => Some(Label::Class(class.to_string())),
        Value::Object(fields) => match (fields.get("class"), fields.get("value")) {
            (Some(class), _) => match prediction_label(class)? {
                Label::Class(class) => Some(Label::Class(class)),
                Label::Value(value) if value.fract() == 0.0 => {
                    Some(Label::Class(format!("{value:.0}")))
                }
                Label::Value(_) => None,
            },
            (None, Some(Value::Number(value))) => value.as_f64().map(Label::Value),
            _ => None,
        },
        _ => None,
    }
}

/// A feedback label compared with a prediction: `Some(true/false)` for a class, the squared
/// error's inputs for a value; `None` when the two cannot be compared.
enum Judged {
    Class(bool),
    Value { predicted: f64, truth: f64 },
}

fn judge(predicted: &Label, truth: &serde_json::Value) -> Option<Judged> {
    use serde_json::Value;
    match predicted {
        Label::Class(class) => {
            let truth = match truth {
                Value::Number(number) if number.is_f64() => {
                    let value = number.as_f64()?;
                    (value.fract() == 0.0).then(|| format!("{value:.0}"))?
                }
                Value::Number(number) => number.to_string(),
                Value::String(text) => text.clone(),
                Value::Bool(flag) => flag.to_string(),
                Value::Object(_) => match prediction_label(truth)? {
                    Label::Class(class) => class,
                    Label::Value(_) => return None,
                },
                _ => return None,
            };
            Some(Judged::Class(&truth == class))
        }
        Label::Value(value) => {
            let truth = match truth {
                Value::Number(number) => number.as_f64()?,
                Value::Object(fields) => fields.get("value")?.as_f64()?,
                _ => return None,
            };
            Some(Judged::Value {
                predicted: *value,
                truth,
            })
        }
    }
}

/// Predictions awaiting labels, by request id, expiring oldest first.
#[derive(Default)]
struct FeedbackBook {
    by_id: HashMap<String, Predicted>,
    order: VecDeque<(Instant, String)>,
    /// Prediction labels held, over every request (bounds the memory).
    labels: usize,
}

impl FeedbackBook {
    fn remove(&mut self, id: &str) -> Option<Predicted> {
        let removed = self.by_id.remove(id)?;
        self.labels -= removed.labels.len();
        Some(removed)
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

#[derive(Deserialize)]
struct PredictEnvelope {
    /// Given in the body for `/v1/predict`, in the path for the KServe form.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[allow(dead_code)]
    instances: IgnoredAny,
}

/// The KServe v1 answer: `{"predictions": [...]}` (other fields are passed on untouched).
#[derive(Deserialize)]
struct AgentAnswer {
    predictions: Vec<serde_json::Value>,
}

async fn predict(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    route_prediction(shared, headers, body, None).await
}

/// KServe v1's form: `POST /v1/models/<model>:predict` with `{"instances": [...]}`.
async fn predict_kserve(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(target): axum::extract::Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match target.strip_suffix(":predict") {
        Some(model) if !model.is_empty() => {
            route_prediction(shared, headers, body, Some(model.to_string())).await
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            format!(
                "no such path: POST /v1/models/{target} (predictions go to /v1/models/<model>:predict)"
            ),
        ),
    }
}

async fn route_prediction(
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
    model: Option<String>,
) -> Response {
    let started = Instant::now();
    if shared.gate_predictions
        && let Some(refused) = shared.refusal(&headers, Scope::Predict)
    {
        return refused;
    }
    let envelope: PredictEnvelope = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(problem) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a prediction request ({{\"model\", \"instances\", optional \"key\"}}): {problem}"
                ),
            );
        }
    };
    let model = match (model, envelope.model) {
        (Some(path), Some(body)) if path != body => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("the path names model '{path}' and the body '{body}'"),
            );
        }
        (Some(model), _) | (None, Some(model)) => model,
        (None, None) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "the body is not a prediction request: it names no \"model\"",
            );
        }
    };
    let key = envelope.key.or_else(|| {
        headers
            .get("x-flotilla-key")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    });
    let route = {
        let routes = shared.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(&model).cloned()
    };
    let Some(route) = route else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("no model '{model}' is in production"),
        );
    };
    let canary_ready = route
        .canary
        .as_ref()
        .is_some_and(|canary| !canary.endpoints.is_empty());
    let side = if canary_ready {
        Split::new(route.canary_weight).route(key.as_deref(), rand::random::<f64>())
    } else {
        Side::Baseline
    };
    let target = match (side, &route.canary) {
        (Side::Canary, Some(canary)) => canary,
        _ => &route.baseline,
    };
    let version = target.version.to_string();
    let labels = [model.as_str(), version.as_str()];
    if target.endpoints.is_empty() {
        shared
            .metrics
            .requests
            .with_label_values(&[labels[0], labels[1], "unavailable"])
            .inc();
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}@{version} has no ready serving endpoint", model),
        );
    }
    let rollout = route.rollout.map(|id| (id, side));
    let path = format!("/v1/models/{}/versions/{version}/predict", model);
    let request_number = shared.next.fetch_add(1, Ordering::Relaxed);
    // A random endpoint, not a shared round robin: with a round robin the side chosen and
    // the endpoint could fall into step (say, every canary request on the same agent) and a
    // slow agent would look like a slow version.
    let first = rand::random::<u32>() as usize;
    let attempts = target.endpoints.len().min(2);
    let mut outcome = Err("no endpoint tried".to_string());
    for attempt in 0..attempts {
        let endpoint = &target.endpoints[(first + attempt) % target.endpoints.len()];
        let sent = shared
            .http
            .post(format!("{endpoint}{path}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(bytes) => {
                        outcome = Ok((status, bytes));
                        break;
                    }
                    Err(error) => outcome = Err(error.to_string()),
                }
                break;
            }
            Err(error) if error.is_connect() && attempt + 1 < attempts => {
                shared.metrics.retries.inc();
                outcome = Err(error.to_string());
            }
            Err(error) => {
                outcome = Err(error.to_string());
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let (response, failed, kind) = match outcome {
        Ok((status, bytes)) => {
            // 422: the version cannot take inputs the client sent (a canary trained on another
            // input shape): the version's failure, counted against it.
            let rejected = status.as_u16() == 422;
            let kind = if status.is_success() {
                "ok"
            } else if rejected {
                "rejected"
            } else if status.is_client_error() {
                "client_error"
            } else {
                "error"
            };
            let mut response = (
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                [("content-type", "application/json")],
                bytes.clone(),
            )
                .into_response();
            if status.is_success() {
                let request_id = format!("{}-{:x}", shared.name, request_number);
                if let Ok(answer) = serde_json::from_slice::<AgentAnswer>(&bytes) {
                    let labels: Vec<Option<Label>> =
                        answer.predictions.iter().map(prediction_label).collect();
                    if labels.iter().any(Option::is_some) {
                        remember(
                            &shared,
                            Predicted {
                                id: request_id.clone(),
                                at: Instant::now(),
                                model: model.clone(),
                                version: version.clone(),
                                rollout,
                                labels,
                            },
                        );
                    }
                }
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    response
                        .headers_mut()
                        .insert("x-flotilla-request-id", value);
                }
            }
            (response, status.is_server_error() || rejected, kind)
        }
        Err(message) => (
            json_error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "{}@{version}: no answer from its serving agent: {message}",
                    model
                ),
            ),
            true,
            "error",
        ),
    };
    if kind != "client_error" {
        shared.count(rollout, |arm| arm.record(elapsed, failed));
    }
    shared
        .metrics
        .requests
        .with_label_values(&[labels[0], labels[1], kind])
        .inc();
    shared
        .metrics
        .latency
        .with_label_values(&labels)
        .observe(elapsed.as_secs_f64());
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&version) {
        response.headers_mut().insert("x-flotilla-version", value);
    }
    response
}

fn remember(shared: &Shared, predicted: Predicted) {
    let mut book = shared.predicted.lock().unwrap_or_else(|p| p.into_inner());
    while book.order.len() >= FEEDBACK_CAPACITY
        || book.labels + predicted.labels.len() > FEEDBACK_LABELS
        || book
            .order
            .front()
            .is_some_and(|(at, _)| at.elapsed() > FEEDBACK_WINDOW)
    {
        let Some((_, id)) = book.order.pop_front() else {
            break;
        };
        book.remove(&id);
    }
    book.order.push_back((predicted.at, predicted.id.clone()));
    book.labels += predicted.labels.len();
    book.by_id.insert(predicted.id.clone(), predicted);
}

#[derive(Deserialize)]
struct FeedbackRequest {
    request_id: String,
    /// One per prediction: a class (integer, string, `{"class": …}`) or a true value
    /// (number), or null when unknown.
    labels: Vec<serde_json::Value>,
}

async fn feedback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = shared.refusal(&headers, Scope::Feedback) {
        return refused;
    }
    let request: FeedbackRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(problem) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not feedback ({{\"request_id\", \"labels\": [class, value or null, …]}}): {problem}"
                ),
            );
        }
    };
    let predicted = {
        let mut book = shared.predicted.lock().unwrap_or_else(|p| p.into_inner());
        match book.by_id.get(&request.request_id) {
            Some(known) if known.at.elapsed() <= FEEDBACK_WINDOW => {
                if known.labels.len() != request.labels.len() {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "{} labels for a request with {} predictions",
                            request.labels.len(),
                            known.labels.len()
                        ),
                    );
                }
                book.remove(&request.request_id)
            }
            _ => None,
        }
    };
    let Some(predicted) = predicted else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!(
                "no prediction '{}' awaits feedback (unknown, already labelled, or older than {FEEDBACK_WINDOW:?})",
                request.request_id
            ),
        );
    };
    let mut labelled = 0u64;
    let mut correct = 0u64;
    let mut scored = 0u64;
    let mut squared_error = 0.0f64;
    for (truth, label) in request.labels.iter().zip(&predicted.labels) {
        let Some(judged) = label.as_ref().and_then(|label| judge(label, truth)) else {
            continue;
        };
        let labels = [predicted.model.as_str(), predicted.version.as_str()];
        match judged {
            Judged::Class(right) => {
                labelled += 1;
                correct += u64::from(right);
                shared.count(predicted.rollout, |arm| arm.feedback(right));
                shared
                    .metrics
                    .feedback
                    .with_label_values(&[
                        labels[0],
                        labels[1],
                        if right { "true" } else { "false" },
                    ])
                    .inc();
            }
            Judged::Value {
                predicted: value,
                truth,
            } => {
                let error = (value - truth).powi(2);
                if !error.is_finite() {
                    continue;
                }
                scored += 1;
                squared_error += error;
                shared.count(predicted.rollout, |arm| arm.score(value, truth));
                shared.metrics.scored.with_label_values(&labels).inc();
                shared
                    .metrics
                    .squared_error
                    .with_label_values(&labels)
                    .inc_by(error);
            }
        }
    }
    Json(serde_json::json!({
        "model": predicted.model,
        "version": predicted.version,
        "labelled": labelled,
        "correct": correct,
        "scored": scored,
        "squared_error": squared_error,
    }))
    .into_response()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn predictions_are_classes_values_or_neither() {
        let class = |text: &str| Some(Label::Class(text.to_string()));
        assert_eq!(prediction_label(&json!(2)), class("2"));
        assert_eq!(prediction_label(&json!("cat")), class("cat"));
        assert_eq!(
            prediction_label(&json!({"class": 1, "probabilities": [0.1, 0.9]})),
            class("1")
        );
        assert_eq!(prediction_label(&json!({"class": "dog"})), class("dog"));
        assert_eq!(prediction_label(&json!(0.25)), Some(Label::Value(0.25)));
        assert_eq!(prediction_label(&json!(3.0)), Some(Label::Value(3.0)));
        assert_eq!(
            prediction_label(&json!({"value": 1.5})),
            Some(Label::Value(1.5))
        );
        assert_eq!(prediction_label(&json!([0.1, 0.9])), None);
        assert_eq!(prediction_label(&json!({"scores": [1]})), None);
        assert_eq!(prediction_label(&json!(null)), None);
    }

    #[test]
    fn feedback_is_compared_with_what_was_predicted() {
        let right = |predicted: &Label, truth: serde_json::Value| match judge(predicted, &truth) {
            Some(Judged::Class(right)) => Some(right),
            _ => None,
        };
        let two = Label::Class("2".into());
        assert_eq!(right(&two, json!(2)), Some(true));
        assert_eq!(right(&two, json!("2")), Some(true));
        assert_eq!(right(&two, json!(2.0)), Some(true));
        assert_eq!(right(&two, json!({"class": 2})), Some(true));
        assert_eq!(right(&two, json!(1)), Some(false));
        assert_eq!(right(&two, json!(null)), None);
        assert_eq!(right(&two, json!(2.5)), None);
        match judge(&Label::Value(1.5), &json!(2)) {
            Some(Judged::Value { predicted, truth }) => {
                assert_eq!((predicted, truth), (1.5, 2.0));
            }
            _ => panic!("a value is scored against a number"),
        }
        assert!(judge(&Label::Value(1.5), &json!("x")).is_none());
    }
}
