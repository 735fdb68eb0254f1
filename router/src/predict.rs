//! Predictions: `POST /v1/predict` and KServe v1's `POST /v1/models/<model>:predict`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_rollout::{Side, Split};
use flotilla_telemetry::tokens::Scope;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::feedback::{Label, Predicted, prediction_label, remember};
use crate::{Shared, json_error};

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

pub(crate) async fn predict(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    route_prediction(shared, headers, body, None).await
}

/// KServe v1's form: `POST /v1/models/<model>:predict` with `{"instances": [...]}`.
pub(crate) async fn predict_kserve(
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

/// One prediction: read the request, choose the version and an endpoint, forward the body,
/// then count and answer.
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
    let request = match read_request(&headers, &body, model) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let chosen = match choose_version(&shared, &request) {
        Ok(chosen) => chosen,
        Err(refused) => return refused.into_response(),
    };
    let path = format!(
        "/v1/models/{}/versions/{}/predict",
        request.model, chosen.version
    );
    let outcome = forward(&shared, &chosen.endpoints, &path, &body).await;
    let elapsed = started.elapsed();
    let answer = answer(&shared, &request, &chosen, outcome);
    if answer.kind != "client_error" {
        shared.count(chosen.rollout, |arm| arm.record(elapsed, answer.failed));
    }
    let labels = [request.model.as_str(), chosen.version.as_str()];
    shared
        .metrics
        .requests
        .with_label_values(&[labels[0], labels[1], answer.kind])
        .inc();
    shared
        .metrics
        .latency
        .with_label_values(&labels)
        .observe(elapsed.as_secs_f64());
    let mut response = answer.response;
    if let Ok(value) = HeaderValue::from_str(&chosen.version) {
        response.headers_mut().insert("x-flotilla-version", value);
    }
    response
}

/// A request refused before it reached an agent: the status and what was wrong.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        json_error(self.0, self.1)
    }
}

/// What a prediction request asks for.
struct PredictionRequest {
    model: String,
    /// Keeps a caller on one side of a rollout.
    key: Option<String>,
}

/// The model (from the path or the body, which must agree) and the routing key (from the
/// body or the `x-flotilla-key` header); a 400 naming what is wrong otherwise.
fn read_request(
    headers: &HeaderMap,
    body: &[u8],
    model: Option<String>,
) -> Result<PredictionRequest, Refused> {
    let envelope: PredictEnvelope = serde_json::from_slice(body).map_err(|problem| {
        Refused(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not a prediction request ({{\"model\", \"instances\", optional \"key\"}}): {problem}"
            ),
        )
    })?;
    let model = match (model, envelope.model) {
        (Some(path), Some(body)) if path != body => {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                format!("the path names model '{path}' and the body '{body}'"),
            ));
        }
        (Some(model), _) | (None, Some(model)) => model,
        (None, None) => {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "the body is not a prediction request: it names no \"model\"".into(),
            ));
        }
    };
    let key = envelope.key.or_else(|| {
        headers
            .get("x-flotilla-key")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    });
    Ok(PredictionRequest { model, key })
}

/// The version a request goes to, with its endpoints and the rollout side it counts for.
struct Chosen {
    version: String,
    endpoints: Vec<String>,
    rollout: Option<(u64, Side)>,
}

/// Splits by the model's route: the canary's share (by key, or at random) once the canary
/// has a ready endpoint, the baseline otherwise. 404 for a model without a route, 503 (and
/// counted as unavailable) for a version without a ready endpoint.
fn choose_version(shared: &Shared, request: &PredictionRequest) -> Result<Chosen, Refused> {
    let model = &request.model;
    let route = {
        let routes = shared.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(model).cloned()
    };
    let Some(route) = route else {
        return Err(Refused(
            StatusCode::NOT_FOUND,
            format!("no model '{model}' is in production"),
        ));
    };
    let canary_ready = route
        .canary
        .as_ref()
        .is_some_and(|canary| !canary.endpoints.is_empty());
    let side = if canary_ready {
        Split::new(route.canary_weight).route(request.key.as_deref(), rand::random::<f64>())
    } else {
        Side::Baseline
    };
    let target = match (side, route.canary) {
        (Side::Canary, Some(canary)) => canary,
        _ => route.baseline,
    };
    let version = target.version.to_string();
    if target.endpoints.is_empty() {
        shared
            .metrics
            .requests
            .with_label_values(&[model.as_str(), version.as_str(), "unavailable"])
            .inc();
        return Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{model}@{version} has no ready serving endpoint"),
        ));
    }
    Ok(Chosen {
        version,
        endpoints: target.endpoints,
        rollout: route.rollout.map(|id| (id, side)),
    })
}

/// Sends the body to a random endpoint, and to a second one when the connection to the
/// first fails: the agent's status and body, or why there was none.
async fn forward(
    shared: &Shared,
    endpoints: &[String],
    path: &str,
    body: &axum::body::Bytes,
) -> Result<(reqwest::StatusCode, axum::body::Bytes), String> {
    // A random endpoint, not a shared round robin: with a round robin the side chosen and
    // the endpoint could fall into step (say, every canary request on the same agent) and a
    // slow agent would look like a slow version.
    let first = rand::random::<u32>() as usize;
    let attempts = endpoints.len().min(2);
    let mut outcome = Err("no endpoint tried".to_string());
    for attempt in 0..attempts {
        let endpoint = &endpoints[(first + attempt) % endpoints.len()];
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
                return response
                    .bytes()
                    .await
                    .map(|bytes| (status, bytes))
                    .map_err(|error| error.to_string());
            }
            Err(error) if error.is_connect() && attempt + 1 < attempts => {
                shared.metrics.retries.inc();
                outcome = Err(error.to_string());
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    outcome
}

/// The client's answer and how the request counts for its version.
struct Answer {
    response: Response,
    /// Counted against the version (a 5xx, a 422, no answer).
    failed: bool,
    /// The `outcome` label of `flotilla_router_requests_total`.
    kind: &'static str,
}

/// The agent's answer passed on (a successful one gets a request id, and its predictions are
/// kept for feedback), or a 502 when no agent answered.
fn answer(
    shared: &Shared,
    request: &PredictionRequest,
    chosen: &Chosen,
    outcome: Result<(reqwest::StatusCode, axum::body::Bytes), String>,
) -> Answer {
    let (status, bytes) = match outcome {
        Ok(answered) => answered,
        Err(message) => {
            return Answer {
                response: json_error(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "{}@{}: no answer from its serving agent: {message}",
                        request.model, chosen.version
                    ),
                ),
                failed: true,
                kind: "error",
            };
        }
    };
    // 422: the version cannot take inputs the client sent (a canary trained on another input
    // shape): the version's failure, counted against it.
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
        let request_number = shared.next.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("{}-{:x}", shared.name, request_number);
        if let Ok(answer) = serde_json::from_slice::<AgentAnswer>(&bytes) {
            let labels: Vec<Option<Label>> =
                answer.predictions.iter().map(prediction_label).collect();
            if labels.iter().any(Option::is_some) {
                remember(
                    shared,
                    Predicted {
                        id: request_id.clone(),
                        at: Instant::now(),
                        model: request.model.clone(),
                        version: chosen.version.clone(),
                        rollout: chosen.rollout,
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
    Answer {
        response,
        failed: status.is_server_error() || rejected,
        kind,
    }
}
