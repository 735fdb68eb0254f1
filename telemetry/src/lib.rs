//! Prometheus and HTTP plumbing shared by the coordinator, the agent and the router.
//!
//! - [`Families`] registers metric families and keeps a catalogue of their names, so the
//!   alert rules and Grafana dashboards in `monitoring/` can be checked against exactly what
//!   the binaries export (a family with no labelled children yet is still in the catalogue,
//!   although a scrape shows nothing for it).
//! - [`exposition`] renders a registry in the text format as an HTTP response;
//!   [`bind`] and [`serve`] run an endpoint until a shutdown token fires.
//! - [`tokens`]: bearer tokens for HTTP endpoints, kept hashed in a file and reloaded when it
//!   changes.
//!
//! Names follow Prometheus conventions: `flotilla_` prefix, base units (`_seconds`, `_bytes`,
//! `_ratio`, `_celsius`, `_watts`), `_total` for counters.

pub mod tokens;

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

/// A registry whose families' names are kept.
pub struct Families {
    registry: Registry,
    names: Vec<&'static str>,
}

impl Default for Families {
    fn default() -> Self {
        Families::new()
    }
}

impl Families {
    pub fn new() -> Families {
        Families {
            registry: Registry::new(),
            names: Vec::new(),
        }
    }

    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &mut self,
        name: &'static str,
        collector: C,
    ) -> C {
        self.registry
            .register(Box::new(collector.clone()))
            .unwrap_or_else(|error| panic!("metric family {name} registers once: {error}"));
        self.names.push(name);
        collector
    }

    pub fn gauge(&mut self, name: &'static str, help: &str) -> IntGauge {
        let gauge = IntGauge::new(name, help).expect("a valid gauge");
        self.register(name, gauge)
    }

    pub fn gauge_vec(&mut self, name: &'static str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge");
        self.register(name, gauge)
    }

    pub fn float_gauge(&mut self, name: &'static str, help: &str) -> Gauge {
        let gauge = Gauge::new(name, help).expect("a valid gauge");
        self.register(name, gauge)
    }

    pub fn float_gauge_vec(&mut self, name: &'static str, help: &str, labels: &[&str]) -> GaugeVec {
        let gauge = GaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge");
        self.register(name, gauge)
    }

    pub fn counter(&mut self, name: &'static str, help: &str) -> IntCounter {
        let counter = IntCounter::new(name, help).expect("a valid counter");
        self.register(name, counter)
    }

    pub fn counter_vec(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> IntCounterVec {
        let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
        self.register(name, counter)
    }

    pub fn float_counter_vec(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::CounterVec {
        let counter =
            prometheus::CounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
        self.register(name, counter)
    }

    pub fn histogram(&mut self, name: &'static str, help: &str, buckets: Vec<f64>) -> Histogram {
        let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("a valid histogram");
        self.register(name, histogram)
    }

    pub fn histogram_vec(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        let histogram = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("a valid histogram");
        self.register(name, histogram)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every family registered, by name (histograms without their `_bucket`/`_sum`/`_count`
    /// suffixes).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

/// The registry in the Prometheus text format, as an HTTP response.
pub fn exposition(registry: &Registry) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            body,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            error.to_string(),
        )
            .into_response(),
    }
}

/// Binds a metrics endpoint's TCP address (errors name it).
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen for metrics on {address} (TCP): {error}"))
}

/// Serves `app` until `shutdown` fires; with `tokens`, every path but
/// [`tokens::OPEN_PATHS`] needs a bearer token with the read scope, and the token file is
/// reloaded when it changes.
pub async fn serve_gated(
    listener: tokio::net::TcpListener,
    app: Router,
    tokens: Option<tokens::TokenFile>,
    shutdown: CancellationToken,
) {
    match tokens {
        None => serve(listener, app, shutdown).await,
        Some(tokens) => {
            let app = tokens::gate_reads(app, tokens.clone());
            tokio::join!(
                serve(listener, app, shutdown.clone()),
                tokens.watch(shutdown)
            );
        }
    }
}

/// Serves `app` until `shutdown` fires.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) {
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(%error, "the metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_names_families_without_children() {
        let mut families = Families::new();
        let counter = families.counter("flotilla_test_events_total", "Events.");
        let _vec = families.float_gauge_vec("flotilla_test_level", "Level.", &["gpu"]);
        counter.inc();
        assert_eq!(
            families.names(),
            ["flotilla_test_events_total", "flotilla_test_level"]
        );
        // A scrape shows only the family that has a value: absent, not zero.
        let gathered = families.registry().gather();
        let shown: Vec<&str> = gathered.iter().map(|family| family.name()).collect();
        assert_eq!(shown, ["flotilla_test_events_total"]);
    }
}
