//! The router's Prometheus families.

use prometheus::{GaugeVec, HistogramVec, IntCounter, IntCounterVec, Registry};

pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) latency: HistogramVec,
    pub(crate) feedback: IntCounterVec,
    pub(crate) scored: IntCounterVec,
    pub(crate) squared_error: prometheus::CounterVec,
    pub(crate) weight: GaugeVec,
    pub(crate) sync_errors: IntCounter,
    pub(crate) retries: IntCounter,
    pub(crate) refused: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
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
