//! Operational metrics: what the coordinator exports to Prometheus, and the HTTP endpoint
//! that serves them (`/metrics`, `/healthz`, `/readyz`).
//!
//! Two kinds of series:
//! - **Counters and histograms** are updated where the event happens (a trial finishes, a
//!   point arrives) in one process-wide [`CoordinatorMetrics`].
//! - **Gauges of state** (trials and sweeps by state, agents, slots, queue depth, leadership)
//!   are read from the actors at scrape time, so they can never drift from what the
//!   coordinator holds. A follower exports `flotilla_is_leader 0` and no state gauges.
//!
//! Names follow Prometheus conventions: `flotilla_` prefix, base units (`_seconds`,
//! `_bytes`), `_total` for counters.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use flotilla_protocol::messages::{SweepState, TrialCounts};
use flotilla_telemetry::Families;
use prometheus::{GaugeVec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::actors::ask;
use crate::actors::leader::LeaderMsg;
use crate::actors::registry::RegistryMsg;
use crate::gateway::Standing;

/// Every series the coordinator exports.
pub struct CoordinatorMetrics {
    pub registry: Registry,
    pub trials: IntGaugeVec,
    pub sweeps: IntGaugeVec,
    pub agents: IntGaugeVec,
    pub slots: IntGaugeVec,
    pub queued_trials: IntGauge,
    pub is_leader: IntGauge,
    pub leader_epoch: IntGauge,
    pub elections_won: IntCounter,
    pub dispatch_latency: Histogram,
    /// The coordinator's own part of it: decision → the start handed to the agent's link.
    pub placement_latency: Histogram,
    pub trial_duration: Histogram,
    pub trials_finished: IntCounterVec,
    pub early_stopped: IntCounter,
    pub metric_points: IntCounter,
    pub checkpoints: IntCounter,
    pub checkpoint_bytes: IntCounter,
    pub autoscaler_desired: IntGauge,
    pub autoscaler_actual: IntGauge,
    pub autoscaler_demand: IntGauge,
    pub autoscaler_errors: IntCounterVec,
    /// Rollout verdicts other than hold, by model and verdict (advance, promote, rollback,
    /// abort), and each model's canary weight while a rollout runs.
    pub rollout_decisions: IntCounterVec,
    pub canary_weight: GaugeVec,
    /// Certificates the revocation list in force revokes, and connections closed because
    /// their certificate was revoked while they were open.
    pub revoked_certificates: IntGauge,
    pub revoked_connections_closed: IntCounter,
    pub agents_auto_cordoned: IntCounter,
    pub sweep_failures: IntCounter,
    /// Finished sweeps moved to the archive, and archive passes that failed.
    pub sweeps_archived: IntCounter,
    pub archive_failures: IntCounter,
    /// Sweeps whose trials the leader holds in memory (running, and finished ones read
    /// recently), and trials held in them.
    pub sweeps_resident: IntGauge,
    /// etcd's database size per member (allocated, and in use), the quota they are measured
    /// against, and the leader's maintenance passes (compaction, defragmentation).
    pub etcd_db_size: IntGaugeVec,
    pub etcd_db_size_in_use: IntGaugeVec,
    pub etcd_quota: IntGauge,
    pub etcd_maintenance: IntCounterVec,
    /// Every family's name (see [`flotilla_telemetry::Families::names`]).
    pub names: Vec<&'static str>,
}

impl CoordinatorMetrics {
    fn new() -> CoordinatorMetrics {
        let mut families = Families::new();
        CoordinatorMetrics {
            trials: families.gauge_vec(
                "flotilla_trials",
                "Trials of every sweep this leader holds, by state.",
                &["state"],
            ),
            sweeps: families.gauge_vec(
                "flotilla_sweeps",
                "Sweeps this leader holds, by state.",
                &["state"],
            ),
            agents: families.gauge_vec(
                "flotilla_agents",
                "Agents known to this leader: connected, draining (connected, taking no new trials) or disconnected.",
                &["state"],
            ),
            slots: families.gauge_vec(
                "flotilla_slots",
                "Trial slots of connected agents: total, busy, and draining (on draining agents).",
                &["state"],
            ),
            queued_trials: families.gauge(
                "flotilla_queued_trials",
                "Trials waiting for a slot.",
            ),
            is_leader: families.gauge(
                "flotilla_is_leader",
                "1 while this coordinator leads, 0 while it follows.",
            ),
            leader_epoch: families.gauge(
                "flotilla_leader_epoch",
                "The epoch this coordinator leads (0 while following).",
            ),
            elections_won: families.counter(
                "flotilla_elections_won_total",
                "Terms this coordinator started as leader.",
            ),
            dispatch_latency: families.histogram(
                "flotilla_dispatch_latency_seconds",
                "From the placement decision to the agent's report that the attempt started.",
                vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            placement_latency: families.histogram(
                "flotilla_placement_seconds",
                "From the placement decision to the start command handed to the agent's connection (the placement's durable write included).",
                vec![
                    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
                    1.0,
                ],
            ),
            trial_duration: families.histogram(
                "flotilla_trial_duration_seconds",
                "Run time of trials' final attempts, as measured by the agents.",
                vec![
                    1.0,
                    5.0,
                    15.0,
                    60.0,
                    300.0,
                    900.0,
                    3600.0,
                    4.0 * 3600.0,
                    12.0 * 3600.0,
                ],
            ),
            trials_finished: families.counter_vec(
                "flotilla_trials_finished_total",
                "Trials that ended, by outcome (succeeded, failed, stopped).",
                &["outcome"],
            ),
            rollout_decisions: families.counter_vec(
                "flotilla_rollout_decisions_total",
                "Canary rollout verdicts other than hold, by model and verdict: advance, promote, rollback (the controller), abort (an operator).",
                &["model", "verdict"],
            ),
            canary_weight: families.float_gauge_vec(
                "flotilla_rollout_canary_weight",
                "The canary's share of a model's requests during its rollout (0 after a rollback, 1 after a promotion).",
                &["model"],
            ),
            early_stopped: families.counter(
                "flotilla_trials_early_stopped_total",
                "Trials stopped by the sweep's early-stopping rule.",
            ),
            metric_points: families.counter(
                "flotilla_metric_points_received_total",
                "Metric points received from agents.",
            ),
            checkpoints: families.counter(
                "flotilla_checkpoints_total",
                "Checkpoints agents reported.",
            ),
            checkpoint_bytes: families.counter(
                "flotilla_checkpoint_bytes_total",
                "Bytes of the checkpoints agents reported.",
            ),
            autoscaler_desired: families.gauge(
                "flotilla_autoscaler_desired_instances",
                "Instances the autoscaler asked the provider for (the group's desired capacity).",
            ),
            autoscaler_actual: families.gauge(
                "flotilla_autoscaler_actual_instances",
                "Instances pending or in service in the autoscaled group.",
            ),
            autoscaler_demand: families.gauge(
                "flotilla_autoscaler_demand_slots",
                "Trial slots of pending plus running trials at the autoscaler's last check.",
            ),
            autoscaler_errors: families.counter_vec(
                "flotilla_autoscaler_errors_total",
                "Provider calls that failed, by call.",
                &["call"],
            ),
            revoked_certificates: families.gauge(
                "flotilla_revoked_certificates",
                "Certificates revoked by the CRL this coordinator enforces (crl.pem).",
            ),
            sweep_failures: families.counter(
                "flotilla_sweep_failures_total",
                "Sweeps stopped because their own actor failed (the rest of the cluster went on).",
            ),
            sweeps_archived: families.counter(
                "flotilla_sweeps_archived_total",
                "Finished sweeps moved from the state store to the archive after their retention.",
            ),
            archive_failures: families.counter(
                "flotilla_archive_failures_total",
                "Sweeps the leader could not archive on a pass (kept in the store, tried again).",
            ),
            sweeps_resident: families.gauge(
                "flotilla_sweeps_resident",
                "Sweeps whose trials the leader holds in memory: running ones and finished ones read recently.",
            ),
            etcd_db_size: families.gauge_vec(
                "flotilla_etcd_db_size_bytes",
                "Size of each etcd member's database file, as its status reports.",
                &["member"],
            ),
            etcd_db_size_in_use: families.gauge_vec(
                "flotilla_etcd_db_size_in_use_bytes",
                "Bytes of each etcd member's database in use (the rest is freed by defragmentation).",
                &["member"],
            ),
            etcd_quota: families.gauge(
                "flotilla_etcd_quota_bytes",
                "The etcd backend quota the database size is measured against (--etcd-quota-bytes).",
            ),
            etcd_maintenance: families.counter_vec(
                "flotilla_etcd_maintenance_total",
                "etcd maintenance the leader ran, by operation (compact, defragment) and result (ok, error).",
                &["operation", "result"],
            ),
            agents_auto_cordoned: families.counter(
                "flotilla_agents_auto_cordoned_total",
                "Agents cordoned automatically for losing the trials they ran too often.",
            ),
            revoked_connections_closed: families.counter(
                "flotilla_revoked_connections_closed_total",
                "Open connections closed because their certificate was revoked.",
            ),
            registry: families.registry().clone(),
            names: families.names().to_vec(),
        }
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<CoordinatorMetrics> = LazyLock::new(CoordinatorMetrics::new);

const TRIAL_STATES: [&str; 6] = [
    "pending",
    "running",
    "paused",
    "succeeded",
    "failed",
    "stopped",
];

fn trial_counts(counts: &TrialCounts) -> [i64; 6] {
    [
        counts.pending,
        counts.running,
        counts.paused,
        counts.succeeded,
        counts.failed,
        counts.stopped,
    ]
    .map(i64::from)
}

fn sweep_state_name(state: SweepState) -> &'static str {
    match state {
        SweepState::Running => "running",
        SweepState::Completed => "completed",
        SweepState::Cancelled => "cancelled",
        SweepState::TimedOut => "timed_out",
        SweepState::Failed => "failed",
    }
}

/// Sets the state gauges from the actors (a leader) or clears them (a follower).
async fn refresh(standing: &Standing) {
    let metrics = &*METRICS;
    metrics.trials.reset();
    metrics.sweeps.reset();
    metrics.agents.reset();
    metrics.slots.reset();
    metrics.queued_trials.set(0);
    let Standing::Leading(context) = standing else {
        metrics.is_leader.set(0);
        metrics.leader_epoch.set(0);
        return;
    };
    metrics.is_leader.set(1);
    metrics.leader_epoch.set(context.epoch.0 as i64);
    let mut totals = [0i64; 6];
    if let Ok(sweeps) = ask(&context.leader, |reply| LeaderMsg::List {
        archived: false,
        reply,
    })
    .await
    {
        for sweep in &sweeps {
            for (total, count) in totals.iter_mut().zip(trial_counts(&sweep.counts)) {
                *total += count;
            }
            metrics
                .sweeps
                .with_label_values(&[sweep_state_name(sweep.state)])
                .inc();
        }
    }
    for (state, total) in TRIAL_STATES.iter().zip(totals) {
        metrics.trials.with_label_values(&[state]).set(total);
    }
    metrics.queued_trials.set(totals[0]);
    if let Ok(agents) = ask(&context.registry, RegistryMsg::List).await {
        let (mut total, mut busy, mut draining_slots) = (0, 0, 0);
        for agent in &agents {
            let state = match (agent.connected, agent.draining) {
                (false, _) => "disconnected",
                (true, true) => "draining",
                (true, false) => "connected",
            };
            metrics.agents.with_label_values(&[state]).inc();
            if agent.connected {
                total += i64::from(agent.slots);
                busy += i64::from(agent.busy_slots);
                if agent.draining {
                    draining_slots += i64::from(agent.slots);
                }
            }
        }
        metrics.slots.with_label_values(&["total"]).set(total);
        metrics.slots.with_label_values(&["busy"]).set(busy);
        metrics
            .slots
            .with_label_values(&["draining"])
            .set(draining_slots);
    }
}

/// One scrape at a time: a refresh resets the state gauges before filling them again, so two
/// interleaved scrapes (a pair of Prometheus servers) could each read a half-filled set.
static SCRAPE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn metrics_page(State(standing): State<watch::Receiver<Standing>>) -> impl IntoResponse {
    let _scrape = SCRAPE.lock().await;
    let current = standing.borrow().clone();
    refresh(&current).await;
    flotilla_telemetry::exposition(&METRICS.registry)
}

/// Ready = this coordinator leads and may act (a follower redirects, so it takes no work).
async fn ready(State(standing): State<watch::Receiver<Standing>>) -> impl IntoResponse {
    match &*standing.borrow() {
        Standing::Leading(_) => (StatusCode::OK, "leading\n".to_string()),
        Standing::Following {
            leader: Some(leader),
        } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("following; the leader is at {leader}\n"),
        ),
        Standing::Following { leader: None } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "following; no leader is elected\n".to_string(),
        ),
    }
}

/// Serves `/metrics`, `/healthz` (the process answers), `/readyz` (it leads) and the web
/// view ([`crate::web`]) until `shutdown` fires. With `tokens`, the API and `/metrics` need
/// a bearer token with the read scope.
pub async fn serve(
    listener: tokio::net::TcpListener,
    standing: watch::Receiver<Standing>,
    tokens: Option<flotilla_telemetry::tokens::TokenFile>,
    shutdown: CancellationToken,
) {
    let app = crate::web::routes()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(standing);
    flotilla_telemetry::serve_gated(listener, app, tokens, shutdown).await
}

pub use flotilla_telemetry::bind;
