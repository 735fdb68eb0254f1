//! Model serving (`flotilla agent --serve ADDR`): the versions the coordinator assigns,
//! answered over HTTPS — a built-in trainer's model through the burn inference path, a
//! command trial's through the sweep's own serving program ([`crate::served_program`]),
//! to which requests are passed unchanged (KServe v1: `{"instances": […]}` in,
//! `{"predictions": […]}` out).
//!
//! The endpoint speaks TLS with the agent's own certificate and requires a client
//! certificate of the cluster CA, not revoked, that carries the router or admin role
//! ([`flotilla_protocol::https`]); any other certificate gets a 403 naming its role, and no
//! certificate fails the handshake. The cluster's `crl.pem` is reloaded when it changes: new
//! handshakes are checked against the new list, and a kept-alive connection whose
//! certificate it revokes fails at its next read or write. Handshakes run in tasks of their
//! own (with a timeout), so a slow peer holds up no one.
//!
//! - `POST /v1/predict` with `{"model": "churn", "version": "1.2.0", "instances": [[…], …]}`
//!   predicts a batch and answers `{"model", "version", "predictions": [{"class",
//!   "probabilities"} | {"value"}]}` for a built-in model (at most [`MAX_BATCH`] inputs), or
//!   whatever the serving program answers, status included. 400 for a body that is not a
//!   prediction request, 422 for inputs this version cannot take (their shape, non-finite
//!   values), 404 for a version not served here, 503 while it loads or its program restarts,
//!   500 when it failed to load or to predict, 502 when its program does not answer.
//! - `POST /v1/models/{model}/versions/{version}/predict` with `{"instances": […]}`: the
//!   same, the form routers use (they forward the client's body unchanged).
//! - `GET /v1/models`: each assigned version and its state. `GET /metrics`: the agent's
//!   Prometheus families, prediction counters and latency included.
//!
//! Loading reads the sealed artifact from the artifact store, checks its SHA-256 against the
//! registry's before decoding, unpacking or starting anything (a corrupted or replaced object is refused and the
//! version reported failed, with both digests), and decodes on a blocking thread. Predictions
//! also run on blocking threads, so neither the actors nor the HTTP server's tasks stall.
//! Every task is owned by this module's tracker and stops with the agent.
//!
//! Sealing (`Command::SealModel`): copy a trial's checkpoint to the registry's key,
//! create-once, after checking it is what the version says (a burn model that decodes, or a
//! command trial's checkpoint archive with its manifest); answer with its SHA-256.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_protocol::messages::AgentMessage;
use flotilla_protocol::models::{
    Artifact, ArtifactFormat, ModelRef, SealRequest, ServeState, ServedModel, ServingReport,
};
use flotilla_protocol::spec::ServingSpec;
use flotilla_train::checkpoint::{sha256_hex, verify_sha256};
use flotilla_train::inference::{Prediction, Predictor};
use flotilla_train::{ArtifactStore, TrainError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::AgentMetrics;

/// Inputs one prediction request may carry.
pub const MAX_BATCH: usize = 1024;

enum Slot {
    Loading,
    Ready(Backend),
    Failed(String),
    Restarting { restarts: u32, reason: String },
}

/// What answers a ready version's predictions.
#[derive(Clone)]
enum Backend {
    /// A built-in trainer's model, through burn.
    Burn(Arc<Predictor>),
    /// The sweep's serving program, listening on this loopback port.
    Program { port: u16 },
}

struct Assigned {
    artifact: Artifact,
    serving: Option<ServingSpec>,
    slot: Slot,
    /// Stops its loading and its serving program when the version leaves this agent.
    stop: CancellationToken,
}

/// The agent's serving side, shared by AgentRoot (assignments, seals) and the HTTP server.
#[derive(Clone)]
pub struct Serving {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Option<String>,
    store: ArtifactStore,
    /// Where serving programs' checkpoints are unpacked.
    serving_dir: PathBuf,
    /// Health checks and predictions to serving programs on loopback.
    http: reqwest::Client,
    models: RwLock<BTreeMap<ModelRef, Assigned>>,
    outbox: mpsc::UnboundedSender<AgentMessage>,
    metrics: Arc<AgentMetrics>,
    /// The agent's GPUs, shared with its trials: a replica holds `[serving] gpus` of them.
    gpus: crate::gpus::GpuPool,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Serving {
    pub fn new(
        endpoint: Option<String>,
        store: ArtifactStore,
        work_dir: &std::path::Path,
        outbox: mpsc::UnboundedSender<AgentMessage>,
        metrics: Arc<AgentMetrics>,
        gpus: crate::gpus::GpuPool,
        shutdown: CancellationToken,
    ) -> Serving {
        Serving {
            inner: Arc::new(Inner {
                endpoint,
                store,
                serving_dir: work_dir.join("serving"),
                http: reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(64)
                    .build()
                    .unwrap_or_default(),
                models: RwLock::new(BTreeMap::new()),
                outbox,
                metrics,
                gpus,
                tasks: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// What this agent serves, for the coordinator.
    pub fn report(&self) -> ServingReport {
        let models = self.inner.read_models();
        ServingReport {
            endpoint: self.inner.endpoint.clone(),
            models: models
                .iter()
                .map(|(model, assigned)| {
                    let state = match &assigned.slot {
                        Slot::Loading => ServeState::Loading,
                        Slot::Ready(_) => ServeState::Ready,
                        Slot::Failed(message) => ServeState::Failed(message.clone()),
                        Slot::Restarting { restarts, reason } => ServeState::Restarting {
                            restarts: *restarts,
                            reason: reason.clone(),
                        },
                    };
                    (model.clone(), state)
                })
                .collect(),
            gpus: self.replica_gpus(),
        }
    }

    /// The GPUs each serving program's replica holds.
    fn replica_gpus(&self) -> BTreeMap<ModelRef, Vec<u32>> {
        let mut held: BTreeMap<ModelRef, Vec<u32>> = BTreeMap::new();
        for (index, holder) in self.inner.gpus.holders() {
            if let Some(crate::gpus::Holder::Replica(model)) = holder {
                held.entry(model).or_default().push(index);
            }
        }
        held
    }

    /// Slots held by the serving programs assigned here (`[serving] slots` each, none for
    /// one that failed): trials cannot use them, as the coordinator counts them too.
    pub fn held_slots(&self) -> u32 {
        self.inner
            .read_models()
            .values()
            .filter(|assigned| !matches!(assigned.slot, Slot::Failed(_)))
            .filter_map(|assigned| assigned.serving.as_ref())
            .map(|serving| serving.slots)
            .sum()
    }

    /// Sends the report to the coordinator.
    pub fn announce(&self) {
        let _ = self.inner.outbox.send(AgentMessage::Serving(self.report()));
    }

    /// Serves exactly `wanted`: loads new versions in the background, drops the others
    /// (stopping their serving programs).
    pub fn assign(&self, wanted: Vec<ServedModel>) {
        if self.inner.endpoint.is_none() {
            return;
        }
        let mut to_load = Vec::new();
        {
            let mut models = self.inner.write_models();
            models.retain(|model, assigned| {
                let keep = wanted.iter().any(|w| {
                    &w.model == model
                        && w.artifact == assigned.artifact
                        && w.serving == assigned.serving
                });
                if !keep {
                    tracing::info!(%model, "no longer serving");
                    assigned.stop.cancel();
                    self.inner.set_state_metric(model, None);
                }
                keep
            });
            for served in wanted {
                if !models.contains_key(&served.model) {
                    let stop = self.inner.shutdown.child_token();
                    models.insert(
                        served.model.clone(),
                        Assigned {
                            artifact: served.artifact.clone(),
                            serving: served.serving.clone(),
                            slot: Slot::Loading,
                            stop: stop.clone(),
                        },
                    );
                    self.inner.set_state_metric(&served.model, Some("loading"));
                    to_load.push((served, stop));
                }
            }
        }
        for (served, stop) in to_load {
            let inner = self.inner.clone();
            self.inner.tasks.spawn(async move {
                match served.serving.clone() {
                    None => {
                        let loaded = tokio::select! {
                            loaded = load(&inner.store, &served) => loaded,
                            () = stop.cancelled() => return,
                        };
                        let slot = match loaded {
                            Ok(predictor) => {
                                tracing::info!(model = %served.model, sha256 = %served.artifact.sha256, "serving");
                                Slot::Ready(Backend::Burn(Arc::new(predictor)))
                            }
                            Err(message) => {
                                tracing::error!(model = %served.model, %message, "cannot serve this version");
                                Slot::Failed(message)
                            }
                        };
                        inner.set_slot(&served, slot);
                    }
                    Some(serving) => run_program(&inner, &served, serving, stop).await,
                }
            });
        }
        self.announce();
    }

    /// Copies a checkpoint into the store for a model version and answers with its digest.
    pub fn seal(&self, request: SealRequest) {
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            let result = tokio::select! {
                result = seal(&inner.store, &request) => result,
                () = inner.shutdown.cancelled() => Err("the agent is shutting down".into()),
            };
            if let Err(message) = &result {
                tracing::warn!(source = %request.source, %message, "sealing failed");
            }
            let _ = inner.outbox.send(AgentMessage::ModelSealed {
                request: request.request,
                result,
            });
        });
    }

    /// Waits for loads and seals in flight (after the shutdown token fired).
    pub async fn stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Inner {
    /// Moves an assigned version (still this artifact) to `slot` and tells the coordinator.
    fn set_slot(self: &Arc<Self>, served: &ServedModel, slot: Slot) {
        let state = match &slot {
            Slot::Loading => "loading",
            Slot::Ready(_) => "ready",
            Slot::Failed(_) => "failed",
            Slot::Restarting { .. } => "restarting",
        };
        {
            let mut models = self.write_models();
            match models.get_mut(&served.model) {
                Some(assigned) if assigned.artifact == served.artifact => assigned.slot = slot,
                // Unassigned meanwhile: nothing to report.
                _ => return,
            }
        }
        self.set_state_metric(&served.model, Some(state));
        let _ = self.outbox.send(AgentMessage::Serving(
            Serving {
                inner: self.clone(),
            }
            .report(),
        ));
    }

    fn read_models(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ModelRef, Assigned>> {
        self.models
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write_models(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ModelRef, Assigned>> {
        self.models
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn set_state_metric(&self, model: &ModelRef, state: Option<&str>) {
        let version = model.version.to_string();
        for each in ["loading", "ready", "failed", "restarting"] {
            let _ = self.metrics.served_models.remove_label_values(&[
                model.name.as_str(),
                version.as_str(),
                each,
            ]);
        }
        if let Some(state) = state {
            self.metrics
                .served_models
                .with_label_values(&[model.name.as_str(), version.as_str(), state])
                .set(1);
        }
    }
}

async fn load(store: &ArtifactStore, served: &ServedModel) -> Result<Predictor, String> {
    let uri = served.artifact.uri.clone();
    let bytes = store.get(&uri).await.map_err(|error| error.to_string())?;
    let expected = served.artifact.sha256.clone();
    tokio::task::spawn_blocking(move || {
        verify_sha256(&uri, &bytes, &expected).map_err(|error| error.to_string())?;
        Predictor::from_bytes(&bytes, &uri).map_err(|error| error.to_string())
    })
    .await
    .map_err(|error| format!("loading stopped: {error}"))?
}

/// Fetches and verifies a command trial's sealed checkpoint, unpacks it, and runs the
/// version's serving program until the version is unassigned or the agent stops. A digest
/// that does not match is refused before anything is unpacked or started.
async fn run_program(
    inner: &Arc<Inner>,
    served: &ServedModel,
    serving: ServingSpec,
    stop: CancellationToken,
) {
    let fail = |message: String| {
        tracing::error!(model = %served.model, %message, "cannot serve this version");
        inner.set_slot(served, Slot::Failed(message));
    };
    let uri = served.artifact.uri.clone();
    let bytes = tokio::select! {
        bytes = inner.store.get(&uri) => bytes,
        () = stop.cancelled() => return,
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(error) => return fail(error.to_string()),
    };
    let model_dir = inner.serving_dir.join(format!(
        "{}@{}-{}",
        served.model.name,
        served.model.version,
        served.artifact.sha256.get(..12).unwrap_or_default()
    ));
    let expected = served.artifact.sha256.clone();
    let dir = model_dir.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        verify_sha256(&uri, &bytes, &expected).map_err(|error| error.to_string())?;
        let _ = std::fs::remove_dir_all(&dir);
        crate::trial_checkpoint::unpack(&bytes, &uri, &dir).map(|_| ())
    })
    .await
    .map_err(|error| format!("loading stopped: {error}"))
    .and_then(|unpacked| unpacked);
    if let Err(message) = unpacked {
        return fail(message);
    }
    // The replica's GPUs, its own until the program has exited.
    let gpus = match inner.gpus.take(served.model.clone(), serving.gpus) {
        Ok(gpus) => gpus,
        Err(message) => {
            let _ = tokio::fs::remove_dir_all(&model_dir).await;
            return fail(format!("no free GPU for the serving program: {message}"));
        }
    };
    if !gpus.is_empty() {
        tracing::info!(model = %served.model, gpus = %crate::gpus::visible_devices(&gpus), "GPUs assigned to the serving program");
    }
    let program = crate::served_program::Program {
        model: served.model.clone(),
        serving,
        model_dir: model_dir.clone(),
        gpus: (inner.gpus.total() > 0).then_some(gpus),
        timing: crate::served_program::Timing::default(),
    };
    let labels = [served.model.name.clone(), served.model.version.to_string()];
    program
        .supervise(
            inner.http.clone(),
            stop,
            |update| {
                let slot = match update {
                    crate::served_program::Update::Ready { port } => {
                        tracing::info!(model = %served.model, sha256 = %served.artifact.sha256, port, "serving through its program");
                        Slot::Ready(Backend::Program { port })
                    }
                    crate::served_program::Update::Restarting { restarts, reason } => {
                        Slot::Restarting { restarts, reason }
                    }
                    crate::served_program::Update::Failed(message) => {
                        tracing::error!(model = %served.model, %message, "cannot serve this version");
                        Slot::Failed(message)
                    }
                };
                inner.set_slot(served, slot);
            },
            || {
                inner
                    .metrics
                    .serving_restarts
                    .with_label_values(&[labels[0].as_str(), labels[1].as_str()])
                    .inc();
            },
        )
        .await;
    inner.gpus.give_back(served.model.clone());
    let _ = tokio::fs::remove_dir_all(&model_dir).await;
}

async fn seal(store: &ArtifactStore, request: &SealRequest) -> Result<Artifact, String> {
    let bytes = match store.get(&request.source).await {
        Ok(bytes) => bytes,
        Err(_) => flotilla_train::checkpoint::fetch(&request.source)
            .await
            .map_err(|error| error.to_string())?,
    };
    let source = request.source.clone();
    let format = request.format;
    let (bytes, sha256) = tokio::task::spawn_blocking(move || {
        // Only a checkpoint that loads as a model becomes one.
        match format {
            ArtifactFormat::BurnModel => {
                Predictor::from_bytes(&bytes, &source)
                    .map(|_| ())
                    .map_err(|error| format!("not a servable model: {error}"))?;
            }
            ArtifactFormat::CheckpointArchive => {
                crate::trial_checkpoint::read_manifest(&bytes, &source)
                    .map(|_| ())
                    .map_err(|error| format!("not a command trial's checkpoint: {error}"))?;
            }
        }
        let sha256 = sha256_hex(&bytes);
        Ok::<_, String>((bytes, sha256))
    })
    .await
    .map_err(|error| format!("sealing stopped: {error}"))??;
    let size = bytes.len() as u64;
    let uri = match store.put_new(&request.key, bytes).await {
        Ok(uri) => uri,
        Err(error) => {
            // A retried seal finds its own earlier copy: the same bytes are fine.
            let existing = store
                .root()
                .join(&request.key)
                .map_err(|join| format!("{error} ({join})"))?
                .to_string();
            match store.get(&existing).await {
                Ok(earlier) if sha256_hex(&earlier) == sha256 => existing,
                _ => return Err(error.to_string()),
            }
        }
    };
    Ok(Artifact {
        uri,
        sha256,
        bytes: size,
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PredictionJson {
    Class {
        class: usize,
        probabilities: Vec<f32>,
    },
    Value {
        value: f32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PredictResponse {
    pub model: String,
    pub version: String,
    pub predictions: Vec<PredictionJson>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// `/v1/predict`: the model and version in the body.
async fn predict(State(serving): State<Serving>, body: axum::body::Bytes) -> Response {
    let started = Instant::now();
    #[derive(Deserialize)]
    struct Target {
        model: String,
        version: String,
    }
    match serde_json::from_slice::<Target>(&body) {
        Ok(target) => run(serving, started, &target.model, &target.version, body).await,
        Err(problem) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not a prediction request ({{\"model\", \"version\", \"instances\"}}): {problem}"
            ),
        ),
    }
}

/// The routers' form: the version in the path, the body `{"instances": […]}` (other fields,
/// such as the router's `model` and `key`, are ignored by built-in models and passed on to
/// serving programs).
async fn predict_version(
    State(serving): State<Serving>,
    axum::extract::Path((model, version)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    run(serving, Instant::now(), &model, &version, body).await
}

async fn run(
    serving: Serving,
    started: Instant,
    model: &str,
    version: &str,
    body: axum::body::Bytes,
) -> Response {
    let reference: ModelRef = match format!("{model}@{version}").parse() {
        Ok(reference) => reference,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let metrics = serving.inner.metrics.clone();
    let version = reference.version.to_string();
    let count = |outcome: &str| {
        metrics
            .predictions
            .with_label_values(&[reference.name.as_str(), version.as_str(), outcome])
            .inc();
    };
    let backend = {
        let models = serving.inner.read_models();
        match models.get(&reference).map(|assigned| &assigned.slot) {
            None => {
                drop(models);
                count("bad_request");
                return error(
                    StatusCode::NOT_FOUND,
                    format!("{reference} is not served by this agent"),
                );
            }
            Some(Slot::Loading) => {
                drop(models);
                count("error");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{reference} is still loading"),
                );
            }
            Some(Slot::Restarting { reason, .. }) => {
                let reason = reason.clone();
                drop(models);
                count("error");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{reference} is restarting its serving program: {reason}"),
                );
            }
            Some(Slot::Failed(message)) => {
                let message = message.clone();
                drop(models);
                count("error");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{reference} could not be loaded: {message}"),
                );
            }
            Some(Slot::Ready(backend)) => backend.clone(),
        }
    };
    let (response, outcome) = match backend {
        Backend::Burn(predictor) => predict_burn(&reference, &version, predictor, &body).await,
        Backend::Program { port } => forward(&serving.inner.http, &reference, port, body).await,
    };
    count(outcome);
    metrics
        .prediction_seconds
        .with_label_values(&[reference.name.as_str(), version.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// How long a serving program may take to answer one request.
const PROGRAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Passes a prediction request to the version's serving program unchanged, and its answer
/// back unchanged (KServe v1: `POST /v1/models/<name>:predict`).
async fn forward(
    http: &reqwest::Client,
    reference: &ModelRef,
    port: u16,
    body: axum::body::Bytes,
) -> (Response, &'static str) {
    let url = format!(
        "http://127.0.0.1:{port}/v1/models/{}:predict",
        reference.name
    );
    let sent = http
        .post(url)
        .header("content-type", "application/json")
        .timeout(PROGRAM_TIMEOUT)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(failure) => {
            return (
                error(
                    StatusCode::BAD_GATEWAY,
                    format!("{reference}: its serving program did not answer: {failure}"),
                ),
                "error",
            );
        }
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    match response.bytes().await {
        Ok(bytes) => {
            let outcome = if status.is_success() {
                "ok"
            } else if status == StatusCode::UNPROCESSABLE_ENTITY {
                "rejected"
            } else if status.is_client_error() {
                "bad_request"
            } else {
                "error"
            };
            (
                (
                    status,
                    [(axum::http::header::CONTENT_TYPE, content_type)],
                    bytes,
                )
                    .into_response(),
                outcome,
            )
        }
        Err(failure) => (
            error(
                StatusCode::BAD_GATEWAY,
                format!("{reference}: its serving program's answer was cut off: {failure}"),
            ),
            "error",
        ),
    }
}

/// A built-in model's prediction: `{"instances": [[f32, …], …]}`.
async fn predict_burn(
    reference: &ModelRef,
    version: &str,
    predictor: Arc<Predictor>,
    body: &[u8],
) -> (Response, &'static str) {
    #[derive(Deserialize)]
    struct Instances {
        instances: Vec<Vec<f32>>,
    }
    let instances = match serde_json::from_slice::<Instances>(body) {
        Ok(request) => request.instances,
        Err(problem) => {
            return (
                error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body is not a prediction request ({{\"instances\": [[…], …]}}): {problem}"
                    ),
                ),
                "bad_request",
            );
        }
    };
    if instances.len() > MAX_BATCH {
        return (
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} inputs in one request; at most {MAX_BATCH}",
                    instances.len()
                ),
            ),
            "bad_request",
        );
    }
    let predicted = tokio::task::spawn_blocking(move || predictor.predict(&instances)).await;
    match predicted {
        Ok(Ok(predictions)) => (
            Json(PredictResponse {
                model: reference.name.clone(),
                version: version.to_string(),
                predictions: predictions
                    .into_iter()
                    .map(|prediction| match prediction {
                        Prediction::Class {
                            class,
                            probabilities,
                        } => PredictionJson::Class {
                            class,
                            probabilities,
                        },
                        Prediction::Value(value) => PredictionJson::Value { value },
                    })
                    .collect(),
            })
            .into_response(),
            "ok",
        ),
        // Well-formed, but not inputs this version takes (their shape, a non-finite value):
        // routers count it against the version.
        Ok(Err(TrainError::Data(problem))) => (
            error(StatusCode::UNPROCESSABLE_ENTITY, problem.to_string()),
            "rejected",
        ),
        Ok(Err(failure)) => (
            error(StatusCode::INTERNAL_SERVER_ERROR, failure.to_string()),
            "error",
        ),
        Err(failure) => (
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the prediction stopped: {failure}"),
            ),
            "error",
        ),
    }
}

async fn list(State(serving): State<Serving>) -> Response {
    let report = serving.report();
    let models: Vec<serde_json::Value> = report
        .models
        .iter()
        .map(|(model, state)| {
            let message = match state {
                ServeState::Failed(message) => Some(message.clone()),
                ServeState::Restarting { reason, .. } => Some(reason.clone()),
                ServeState::Loading | ServeState::Ready => None,
            };
            let state = state.as_str();
            serde_json::json!({
                "model": model.name,
                "version": model.version.to_string(),
                "state": state,
                "error": message,
            })
        })
        .collect();
    Json(serde_json::json!({ "models": models })).into_response()
}

async fn metrics_page(State(serving): State<Serving>) -> Response {
    flotilla_telemetry::exposition(&serving.inner.metrics.registry)
}

/// Binds the serving address (TCP).
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("cannot serve models on {address} (TCP): {error}"))
}

/// The serving endpoint's TLS: the agent's certificate and the revocation list in force.
pub struct ServingTls {
    identity: flotilla_protocol::tls::Identity,
    crl: Option<std::path::PathBuf>,
    config: Arc<rustls::ServerConfig>,
    revoked: flotilla_protocol::revocation::RevocationList,
}

impl ServingTls {
    /// Reads `crl` (missing: nothing revoked) and makes the first configuration; an
    /// unreadable list or an unusable certificate fails the agent's start.
    pub fn load(
        identity: flotilla_protocol::tls::Identity,
        crl: Option<std::path::PathBuf>,
    ) -> anyhow::Result<ServingTls> {
        let revoked = match &crl {
            Some(path) => flotilla_protocol::revocation::RevocationList::load(path)?,
            None => Default::default(),
        };
        let config = Arc::new(flotilla_protocol::https::serving_server_config(
            &identity, &revoked,
        )?);
        Ok(ServingTls {
            identity,
            crl,
            config,
            revoked,
        })
    }
}

/// Serves predictions over HTTPS (see the module documentation) until the shutdown token
/// fires.
pub async fn serve(listener: tokio::net::TcpListener, tls: ServingTls, serving: Serving) {
    let shutdown = serving.inner.shutdown.clone();
    let app = Router::new()
        .route("/v1/predict", post(predict))
        .route(
            "/v1/models/{model}/versions/{version}/predict",
            post(predict_version),
        )
        .route("/v1/models", get(list))
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(32 * 1024 * 1024))
        .with_state(serving);
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(error) => {
            tracing::error!(%error, "the serving listener has no address");
            return;
        }
    };
    let (ready, accepted) = tokio::sync::mpsc::channel(64);
    let (config_sender, config) = tokio::sync::watch::channel(tls.config);
    let (revoked_sender, revoked) = tokio::sync::watch::channel(Arc::new(tls.revoked));
    let identity = tls.identity;
    let crl = tls.crl;
    let reload_shutdown = shutdown.clone();
    let reload = async move {
        let Some(path) = crl else { return };
        flotilla_protocol::revocation::watch_file(path, reload_shutdown, |list| {
            let config = flotilla_protocol::https::serving_server_config(&identity, &list)
                .map_err(|error| error.to_string())?;
            config_sender.send_replace(Arc::new(config));
            revoked_sender.send_replace(Arc::new(list));
            Ok(())
        })
        .await
    };
    let handshakes = accept_tls(listener, config, revoked, ready, shutdown.clone());
    let server = async move {
        if let Err(error) = axum::serve(TlsListener { local, accepted }, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
        {
            tracing::error!(%error, "the serving endpoint stopped");
        }
    };
    tokio::join!(handshakes, server, reload);
}

/// How long a peer may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

type Revoked = tokio::sync::watch::Receiver<Arc<flotilla_protocol::revocation::RevocationList>>;

/// A connection that fails its next read or write once its peer's certificate is revoked.
struct Revocable {
    stream: TlsStream,
    certificate: rustls::pki_types::CertificateDer<'static>,
    revoked: Revoked,
}

impl Revocable {
    fn check(&self) -> std::io::Result<()> {
        if self.revoked.borrow().revokes(&self.certificate) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the peer's certificate has been revoked",
            ));
        }
        Ok(())
    }
}

impl tokio::io::AsyncRead for Revocable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Err(error) = self.check() {
            return std::task::Poll::Ready(Err(error));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl tokio::io::AsyncWrite for Revocable {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Err(error) = self.check() {
            return std::task::Poll::Ready(Err(error));
        }
        std::pin::Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(context)
    }
}

/// Connections that completed the handshake with a certificate that may call serving.
struct TlsListener {
    local: SocketAddr,
    accepted: tokio::sync::mpsc::Receiver<(Revocable, SocketAddr)>,
}

impl axum::serve::Listener for TlsListener {
    type Io = Revocable;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor stopped (shutdown): nothing more arrives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Accepts TCP connections until `shutdown`, runs each TLS handshake in a task of its own,
/// and hands on those whose certificate's role may call serving; the others are answered
/// 403 and closed.
async fn accept_tls(
    listener: tokio::net::TcpListener,
    config: tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>,
    revoked: Revoked,
    ready: tokio::sync::mpsc::Sender<(Revocable, SocketAddr)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let handshakes = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a serving connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // The configuration in force now: a reloaded CRL applies from the next handshake.
        let acceptor = tokio_rustls::TlsAcceptor::from(config.borrow().clone());
        let revoked = revoked.clone();
        let ready = ready.clone();
        let shutdown = shutdown.clone();
        handshakes.spawn(async move {
            let handshake = tokio::select! {
                () = shutdown.cancelled() => return,
                handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => handshake,
            };
            let mut stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::warn!(%peer, %error, "refused a serving connection at the TLS handshake");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "a serving connection's TLS handshake timed out");
                    return;
                }
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|certificate| certificate.clone().into_owned());
            let role = certificate
                .as_ref()
                .map(flotilla_protocol::tls::role_of_certificate);
            match (role, certificate) {
                (Some(Ok(role)), Some(certificate))
                    if flotilla_protocol::https::may_call_serving(role) =>
                {
                    let connection = Revocable {
                        stream,
                        certificate,
                        revoked,
                    };
                    let _ = ready.send((connection, peer)).await;
                }
                (other, _) => {
                    let role = match other {
                        Some(Ok(role)) => role.with_article(),
                        _ => "a certificate without a Flotilla role".to_string(),
                    };
                    tracing::warn!(%peer, %role, "refused a serving connection: only routers and admins may call serving endpoints");
                    let body = serde_json::json!({
                        "error": format!("serving endpoints answer router and admin certificates, not {role}")
                    })
                    .to_string();
                    let response = format!(
                        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, response.as_bytes()).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                }
            }
        });
    }
    handshakes.close();
    handshakes.wait().await;
}
