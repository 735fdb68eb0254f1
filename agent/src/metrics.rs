//! What an agent exports to Prometheus (`--metrics-listen`): its slots and link, the progress
//! of each running trial, checkpoint writes, and its GPUs through NVML.
//!
//! - **Agent state** (`flotilla_agent_slots`, `_running_trials`, `_draining`, `_connected`) is
//!   set by AgentRoot whenever it changes.
//! - **Per-trial series** carry `sweep` and `trial` labels and exist while the attempt runs on
//!   this agent: a [`TrialSeries`] held by the trial actor removes them when it is dropped.
//! - **GPU series** are read from NVML at scrape time. A host without an NVIDIA driver, or a
//!   reading a GPU does not support, leaves those series absent rather than reporting zeros,
//!   so an alert or a panel never mistakes a missing GPU for an idle one.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use flotilla_protocol::TrialId;
use flotilla_protocol::messages::{Metrics, TrialOutcome};

use crate::gpus::Holder;
use flotilla_telemetry::Families;
use prometheus::{
    GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use tokio_util::sync::CancellationToken;

/// One agent's metric families.
pub struct AgentMetrics {
    pub registry: Registry,
    pub names: Vec<&'static str>,
    pub info: IntGaugeVec,
    pub connected: IntGauge,
    pub draining: IntGauge,
    pub slots: IntGaugeVec,
    /// GPUs this agent offers (total) and that attempts hold (busy).
    pub gpus: IntGaugeVec,
    pub running_trials: IntGauge,
    trial_start: GaugeVec,
    trial_timeout: GaugeVec,
    trial_progress: GaugeVec,
    trial_step: GaugeVec,
    last_epoch: GaugeVec,
    samples_per_second: GaugeVec,
    pub metric_points: IntCounter,
    pub trials_finished: IntCounterVec,
    pub checkpoint_write: Histogram,
    pub checkpoint_bytes: IntCounter,
    pub notices: IntCounterVec,
    pub imds_errors: IntCounter,
    pub interruption_checkpoint: Histogram,
    /// Serving (`--serve`): predictions by model, version and outcome (ok, bad_request,
    /// error), their latency, batch sizes, and each assigned version's state.
    pub predictions: IntCounterVec,
    pub prediction_seconds: HistogramVec,
    pub prediction_batch: Histogram,
    pub served_models: IntGaugeVec,
    /// Serving programs started again after they exited or stopped answering.
    pub serving_restarts: IntCounterVec,
    gpu_utilization: GaugeVec,
    gpu_memory_used: GaugeVec,
    gpu_memory_total: GaugeVec,
    gpu_temperature: GaugeVec,
    gpu_power: GaugeVec,
}

const TRIAL_LABELS: &[&str] = &["sweep", "trial"];
/// `trial` names the attempt's trial holding the GPU (empty while it is free).
const GPU_LABELS: &[&str] = &["gpu", "uuid", "model", "trial", "served"];

impl AgentMetrics {
    pub fn new() -> Arc<AgentMetrics> {
        let mut families = Families::new();
        let metrics = AgentMetrics {
            info: families.gauge_vec(
                "flotilla_agent_info",
                "Always 1; labels name the agent, its host and its version.",
                &["agent_id", "hostname", "version"],
            ),
            connected: families.gauge(
                "flotilla_agent_connected",
                "1 while the agent is linked to the leading coordinator.",
            ),
            draining: families.gauge(
                "flotilla_agent_draining",
                "1 once the agent takes no new trials.",
            ),
            slots: families.gauge_vec(
                "flotilla_agent_slots",
                "Trial slots this agent offers (total) and occupies (busy).",
                &["state"],
            ),
            gpus: families.gauge_vec(
                "flotilla_agent_gpus",
                "GPUs this agent offers (total) and that running attempts hold (busy).",
                &["state"],
            ),
            running_trials: families.gauge(
                "flotilla_agent_running_trials",
                "Attempts running on this agent.",
            ),
            trial_start: families.float_gauge_vec(
                "flotilla_agent_trial_start_time_seconds",
                "Unix time the running attempt started.",
                TRIAL_LABELS,
            ),
            trial_timeout: families.float_gauge_vec(
                "flotilla_agent_trial_timeout_seconds",
                "The running trial's time limit, when its sweep sets one.",
                TRIAL_LABELS,
            ),
            trial_progress: families.float_gauge_vec(
                "flotilla_agent_trial_last_progress_time_seconds",
                "Unix time of the running attempt's last metric point (its start until the first).",
                TRIAL_LABELS,
            ),
            trial_step: families.float_gauge_vec(
                "flotilla_agent_trial_step",
                "The last step (epoch, for built-in trainers) the running attempt reported.",
                TRIAL_LABELS,
            ),
            last_epoch: families.float_gauge_vec(
                "flotilla_agent_last_epoch_duration_seconds",
                "Time between the running attempt's last two reported steps (epochs, for built-in trainers).",
                TRIAL_LABELS,
            ),
            samples_per_second: families.float_gauge_vec(
                "flotilla_agent_samples_per_second",
                "Training throughput the running attempt last reported (built-in trainers).",
                TRIAL_LABELS,
            ),
            metric_points: families.counter(
                "flotilla_agent_metric_points_total",
                "Metric points trials on this agent reported.",
            ),
            trials_finished: families.counter_vec(
                "flotilla_agent_trials_finished_total",
                "Attempts that ended on this agent, by outcome (succeeded, failed, stopped).",
                &["outcome"],
            ),
            checkpoint_write: families.histogram(
                "flotilla_agent_checkpoint_write_duration_seconds",
                "Time to write one checkpoint object to the artifact store.",
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            checkpoint_bytes: families.counter(
                "flotilla_agent_checkpoint_bytes_total",
                "Bytes of checkpoint objects written.",
            ),
            predictions: families.counter_vec(
                "flotilla_agent_predictions_total",
                "Prediction requests served (--serve), by model, version and outcome: ok, bad_request (not a prediction request, a version not served here), rejected (inputs the version cannot take), error.",
                &["model", "version", "outcome"],
            ),
            prediction_seconds: families.histogram_vec(
                "flotilla_agent_prediction_duration_seconds",
                "Time to predict one batch, from the request's arrival to its answer.",
                &["model", "version"],
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            prediction_batch: families.histogram(
                "flotilla_agent_prediction_batch_size",
                "Inputs per prediction request.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            ),
            served_models: families.gauge_vec(
                "flotilla_agent_served_models",
                "Model versions assigned to this agent, by state (loading, ready, failed, restarting): 1 for the version's current state.",
                &["model", "version", "state"],
            ),
            serving_restarts: families.counter_vec(
                "flotilla_agent_serving_restarts_total",
                "Serving programs ([serving]) started again after they exited or stopped passing their health check, by model and version.",
                &["model", "version"],
            ),
            notices: families.counter_vec(
                "flotilla_agent_notices_total",
                "Instance notices seen in the metadata service (--imds), by kind: rebalance, interruption, terminating.",
                &["kind"],
            ),
            imds_errors: families.counter(
                "flotilla_agent_imds_errors_total",
                "Metadata service polls that failed (--imds).",
            ),
            interruption_checkpoint: families.histogram(
                "flotilla_agent_interruption_checkpoint_seconds",
                "From an interruption notice being posted to every running trial checkpointed and stopped.",
                vec![0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 180.0],
            ),
            gpu_utilization: families.float_gauge_vec(
                "flotilla_agent_gpu_utilization_ratio",
                "Fraction of the last sample period a kernel ran on the GPU (NVML).",
                GPU_LABELS,
            ),
            gpu_memory_used: families.float_gauge_vec(
                "flotilla_agent_gpu_memory_used_bytes",
                "GPU memory in use (NVML).",
                GPU_LABELS,
            ),
            gpu_memory_total: families.float_gauge_vec(
                "flotilla_agent_gpu_memory_total_bytes",
                "GPU memory installed (NVML).",
                GPU_LABELS,
            ),
            gpu_temperature: families.float_gauge_vec(
                "flotilla_agent_gpu_temperature_celsius",
                "GPU die temperature (NVML).",
                GPU_LABELS,
            ),
            gpu_power: families.float_gauge_vec(
                "flotilla_agent_gpu_power_watts",
                "GPU power draw (NVML).",
                GPU_LABELS,
            ),
            registry: families.registry().clone(),
            names: families.names().to_vec(),
        };
        Arc::new(metrics)
    }

    /// The series of one attempt, removed when the returned value is dropped.
    pub fn trial(self: &Arc<Self>, trial: TrialId, timeout: Option<Duration>) -> TrialSeries {
        let labels = [trial.sweep.to_string(), trial.to_string()];
        let now = unix_now();
        let label_refs = [labels[0].as_str(), labels[1].as_str()];
        self.trial_start.with_label_values(&label_refs).set(now);
        self.trial_progress.with_label_values(&label_refs).set(now);
        if let Some(timeout) = timeout {
            self.trial_timeout
                .with_label_values(&label_refs)
                .set(timeout.as_secs_f64());
        }
        TrialSeries {
            metrics: Arc::clone(self),
            labels,
            last_step: None,
        }
    }

    /// Replaces the GPU series with these readings (none: the series disappear), each
    /// labelled with the trial holding that GPU.
    pub fn set_gpus(&self, readings: &[GpuReading], holders: &[(u32, Option<Holder>)]) {
        for family in [
            &self.gpu_utilization,
            &self.gpu_memory_used,
            &self.gpu_memory_total,
            &self.gpu_temperature,
            &self.gpu_power,
        ] {
            family.reset();
        }
        for reading in readings {
            let index = reading.index.to_string();
            // The trial holding it, or the model version whose serving program does.
            let holder = holders
                .iter()
                .find(|(gpu, _)| *gpu == reading.index)
                .and_then(|(_, holder)| holder.clone());
            let (trial, served) = match holder {
                Some(Holder::Attempt(attempt)) => (attempt.trial.to_string(), String::new()),
                Some(Holder::Replica(model)) => (String::new(), model.to_string()),
                None => (String::new(), String::new()),
            };
            let labels = [
                index.as_str(),
                reading.uuid.as_str(),
                reading.model.as_str(),
                trial.as_str(),
                served.as_str(),
            ];
            let values = [
                (&self.gpu_utilization, reading.utilization),
                (
                    &self.gpu_memory_used,
                    reading.memory_used_bytes.map(|b| b as f64),
                ),
                (
                    &self.gpu_memory_total,
                    reading.memory_total_bytes.map(|b| b as f64),
                ),
                (&self.gpu_temperature, reading.temperature_celsius),
                (&self.gpu_power, reading.power_watts),
            ];
            for (family, value) in values {
                if let Some(value) = value {
                    family.with_label_values(&labels).set(value);
                }
            }
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One running attempt's series, kept by its trial actor.
pub struct TrialSeries {
    metrics: Arc<AgentMetrics>,
    labels: [String; 2],
    /// The last reported step and when it arrived.
    last_step: Option<(u64, Instant)>,
}

impl TrialSeries {
    fn labels(&self) -> [&str; 2] {
        [self.labels[0].as_str(), self.labels[1].as_str()]
    }

    /// A metric point arrived.
    pub fn point(&mut self, step: u64, values: &Metrics) {
        let metrics = Arc::clone(&self.metrics);
        let labels = self.labels();
        metrics.metric_points.inc();
        metrics
            .trial_progress
            .with_label_values(&labels)
            .set(unix_now());
        metrics
            .trial_step
            .with_label_values(&labels)
            .set(step as f64);
        if let Some(rate) = values.get("samples_per_second") {
            metrics
                .samples_per_second
                .with_label_values(&labels)
                .set(*rate);
        }
        let now = Instant::now();
        if let Some((previous, at)) = self.last_step
            && step > previous
        {
            let per_step = now.duration_since(at).as_secs_f64() / (step - previous) as f64;
            metrics.last_epoch.with_label_values(&labels).set(per_step);
        }
        if self.last_step.is_none_or(|(previous, _)| step > previous) {
            self.last_step = Some((step, now));
        }
    }

    /// The attempt ended with this outcome.
    pub fn finished(&self, outcome: &TrialOutcome) {
        let name = match outcome {
            TrialOutcome::Succeeded { .. } => "succeeded",
            TrialOutcome::Failed { .. } => "failed",
            TrialOutcome::Stopped { .. } => "stopped",
        };
        self.metrics
            .trials_finished
            .with_label_values(&[name])
            .inc();
    }
}

impl Drop for TrialSeries {
    fn drop(&mut self) {
        let metrics = Arc::clone(&self.metrics);
        let labels = self.labels();
        for family in [
            &metrics.trial_start,
            &metrics.trial_timeout,
            &metrics.trial_progress,
            &metrics.trial_step,
            &metrics.last_epoch,
            &metrics.samples_per_second,
        ] {
            let _ = family.remove_label_values(&labels);
        }
    }
}

/// One GPU's readings; a reading the GPU does not support is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub utilization: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_celsius: Option<f64>,
    pub power_watts: Option<f64>,
}

/// Reads the host's GPUs through NVML, when the NVIDIA driver's library loads.
pub struct Gpus {
    nvml: Option<nvml_wrapper::Nvml>,
}

impl Gpus {
    /// Loads `libnvidia-ml.so.1`; without it (no driver) the agent reports no GPU series.
    pub fn open() -> Gpus {
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => Gpus { nvml: Some(nvml) },
            Err(error) => {
                tracing::info!(%error, "NVML is not available; no GPU metrics");
                Gpus { nvml: None }
            }
        }
    }

    /// How many GPUs NVML sees (`None`: no driver).
    pub fn count(&self) -> Option<u32> {
        self.nvml
            .as_ref()
            .map(|nvml| nvml.device_count().unwrap_or(0))
    }

    /// Every GPU's readings (blocking NVML calls: run off the async threads).
    pub fn read(&self) -> Vec<GpuReading> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        let mut readings = Vec::new();
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            let memory = device.memory_info().ok();
            readings.push(GpuReading {
                index,
                uuid: device.uuid().unwrap_or_default(),
                model: device.name().unwrap_or_default(),
                utilization: device
                    .utilization_rates()
                    .ok()
                    .map(|rates| f64::from(rates.gpu) / 100.0),
                memory_used_bytes: memory.as_ref().map(|memory| memory.used),
                memory_total_bytes: memory.as_ref().map(|memory| memory.total),
                temperature_celsius: device
                    .temperature(TemperatureSensor::Gpu)
                    .ok()
                    .map(f64::from),
                power_watts: device
                    .power_usage()
                    .ok()
                    .map(|milliwatts| f64::from(milliwatts) / 1000.0),
            });
        }
        readings
    }
}

#[derive(Clone)]
struct Endpoint {
    metrics: Arc<AgentMetrics>,
    gpus: Arc<Gpus>,
    pool: crate::gpus::GpuPool,
}

async fn metrics_page(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let gpus = Arc::clone(&endpoint.gpus);
    let readings = tokio::task::spawn_blocking(move || gpus.read())
        .await
        .unwrap_or_default();
    endpoint
        .metrics
        .set_gpus(&readings, &endpoint.pool.holders());
    flotilla_telemetry::exposition(&endpoint.metrics.registry)
}

/// Serves `/metrics` and `/healthz` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    gpus: Arc<Gpus>,
    pool: crate::gpus::GpuPool,
    tokens: Option<flotilla_telemetry::tokens::TokenFile>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Endpoint {
            metrics,
            gpus,
            pool,
        });
    flotilla_telemetry::serve_gated(listener, app, tokens, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::SweepId;

    fn scrape(metrics: &AgentMetrics) -> String {
        let mut body = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &metrics.registry.gather(),
            &mut body,
        )
        .expect("encode");
        String::from_utf8(body).expect("utf-8")
    }

    #[test]
    fn gpu_series_are_absent_without_gpus_and_only_for_supported_readings() {
        let metrics = AgentMetrics::new();
        metrics.set_gpus(&[], &[]);
        assert!(!scrape(&metrics).contains("flotilla_agent_gpu_"));
        let holder = flotilla_protocol::AttemptId {
            trial: TrialId {
                sweep: SweepId(2),
                number: 5,
            },
            attempt: 1,
        };
        metrics.set_gpus(
            &[GpuReading {
                index: 0,
                uuid: "GPU-1".into(),
                model: "NVIDIA A10G".into(),
                utilization: Some(0.5),
                memory_used_bytes: Some(1 << 30),
                memory_total_bytes: Some(24 << 30),
                temperature_celsius: Some(61.0),
                power_watts: None,
            }],
            &[(0, Some(holder.into()))],
        );
        let text = scrape(&metrics);
        assert!(text.contains(
            r#"flotilla_agent_gpu_utilization_ratio{gpu="0",model="NVIDIA A10G",served="",trial="s2-t5",uuid="GPU-1"} 0.5"#
        ));
        assert!(text.contains("flotilla_agent_gpu_temperature_celsius{"));
        assert!(!text.contains("flotilla_agent_gpu_power_watts"));
        metrics.set_gpus(&[], &[]);
        assert!(!scrape(&metrics).contains("flotilla_agent_gpu_"));
    }

    #[test]
    fn trial_series_follow_points_and_vanish_when_the_attempt_ends() {
        let metrics = AgentMetrics::new();
        let trial = TrialId {
            sweep: SweepId(3),
            number: 7,
        };
        let mut series = metrics.trial(trial, Some(Duration::from_secs(600)));
        let mut values = Metrics::new();
        values.insert("samples_per_second".into(), 1234.0);
        series.point(1, &values);
        series.point(2, &values);
        let text = scrape(&metrics);
        assert!(text.contains(r#"flotilla_agent_trial_step{sweep="s3",trial="s3-t7"} 2"#));
        assert!(
            text.contains(r#"flotilla_agent_samples_per_second{sweep="s3",trial="s3-t7"} 1234"#)
        );
        assert!(
            text.contains(r#"flotilla_agent_trial_timeout_seconds{sweep="s3",trial="s3-t7"} 600"#)
        );
        assert!(text.contains("flotilla_agent_last_epoch_duration_seconds{"));
        assert!(text.contains("flotilla_agent_metric_points_total 2"));
        series.finished(&TrialOutcome::Stopped {
            reason: flotilla_protocol::messages::StopReason::AgentShutdown,
            duration_ms: 5,
        });
        drop(series);
        let text = scrape(&metrics);
        assert!(!text.contains("s3-t7"));
        assert!(text.contains(r#"flotilla_agent_trials_finished_total{outcome="stopped"} 1"#));
    }

    #[test]
    fn without_a_driver_nvml_reads_nothing() {
        // On hosts with an NVIDIA driver this reads real GPUs; the series' presence is then
        // the driver's business. Without one, the agent must run and report none.
        let gpus = Gpus::open();
        if gpus.nvml.is_none() {
            assert!(gpus.read().is_empty());
        }
    }
}
