//! The live web view: a read-only page served with the metrics endpoint.
//!
//! `/` is plain HTML, CSS and JavaScript compiled into the binary (nothing is fetched from
//! outside at run time). The page polls a small JSON API that reads the leader's actors:
//!
//! - `GET /api/sweeps`: every sweep's summary.
//! - `GET /api/sweeps/{id}`: the summary, every trial (parameters as text and as numbers) and
//!   the ids of the sweep's plots.
//! - `GET /api/sweeps/{id}/plots/{history|parallel|importance|curves|front}.svg`: the
//!   report's plots, drawn by `flotilla-report` exactly as in `flotilla sweep report` (`front`
//!   for a multi-objective sweep only).
//! - `GET /api/agents`: the agents and their slots.
//!
//! A follower answers the API with 503 and the leader's QUIC address. Nothing here changes
//! state; like `/metrics`, the port belongs on a private network.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flotilla_protocol::SweepId;
use flotilla_protocol::messages::{SweepSummary, TrialRecord};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::actors::ask;
use crate::actors::leader::LeaderMsg;
use crate::actors::registry::RegistryMsg;
use crate::actors::sweep::SweepMsg;
use crate::gateway::{SessionContext, Standing};

const INDEX: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/app.css");

/// The page and its API, for the metrics endpoint's router.
pub fn routes() -> Router<watch::Receiver<Standing>> {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/sweeps", get(sweeps))
        .route("/api/sweeps/{id}", get(sweep))
        .route("/api/sweeps/{id}/plots/{plot}", get(plot))
        .route("/api/agents", get(agents))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            ("content-type", content_type),
            ("cache-control", "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An API error: its status and a JSON body naming what was wrong.
struct Refusal(StatusCode, Value);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn problem(status: StatusCode, message: String) -> Refusal {
    Refusal(status, json!({ "error": message }))
}

fn unavailable(error: anyhow::Error) -> Refusal {
    problem(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
}

fn leading(standing: &watch::Receiver<Standing>) -> Result<Arc<SessionContext>, Refusal> {
    match &*standing.borrow() {
        Standing::Leading(context) => Ok(Arc::clone(context)),
        Standing::Following { leader } => Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "error": "this coordinator follows; the leader serves the web view",
                "leader": leader,
            }),
        )),
    }
}

fn parse_id(id: &str) -> Result<SweepId, Refusal> {
    id.trim_start_matches('s')
        .parse()
        .map(SweepId)
        .map_err(|_| problem(StatusCode::BAD_REQUEST, format!("'{id}' is not a sweep id")))
}

async fn sweep_actor(
    context: &SessionContext,
    id: SweepId,
) -> Result<ractor::ActorRef<SweepMsg>, Refusal> {
    match ask(&context.leader, |reply| LeaderMsg::Lookup {
        sweep: id,
        reply,
    })
    .await
    {
        Ok(Some(actor)) => Ok(actor),
        Ok(None) => Err(problem(StatusCode::NOT_FOUND, format!("no sweep {id}"))),
        Err(error) => Err(problem(StatusCode::SERVICE_UNAVAILABLE, error.to_string())),
    }
}

fn summary_json(summary: &SweepSummary) -> Value {
    json!({
        "id": summary.id.to_string(),
        "name": summary.name,
        "state": format!("{:?}", summary.state),
        "objective": summary.objective_metric,
        "direction": format!("{:?}", summary.direction).to_lowercase(),
        "max_trials": summary.max_trials,
        "counts": summary.counts,
        "best": summary.best.as_ref().map(|best| json!({
            "id": best.id.to_string(),
            "objective": best.objective,
        })),
        "created_ms": summary.created_ms,
        "finished_ms": summary.finished_ms,
        "phases": summary.phases.iter().map(|phase| json!({
            "name": phase.name,
            "trials": phase.trials,
            "max_trials": phase.max_trials,
            "done": phase.done,
            "winner": phase.winner,
        })).collect::<Vec<_>>(),
    })
}

fn trial_json(trial: &TrialRecord) -> Value {
    json!({
        "id": trial.id.to_string(),
        "number": trial.id.number,
        "state": trial.state.name(),
        "objective": trial.objective,
        "feasible": trial.feasible,
        "phase": trial.phase,
        "attempt": trial.attempt,
        "agent": trial.agent.as_ref().map(ToString::to_string),
        "params": trial.params.iter()
            .map(|(name, value)| (name.clone(), Value::String(value.exact())))
            .collect::<serde_json::Map<_, _>>(),
        "metrics": trial.metrics,
        "duration_s": trial.duration_ms.map(|ms| ms as f64 / 1000.0),
        "message": trial.message,
    })
}

async fn sweeps(
    State(standing): State<watch::Receiver<Standing>>,
) -> Result<Json<Vec<Value>>, Refusal> {
    let context = leading(&standing)?;
    let mut list = ask(&context.leader, |reply| LeaderMsg::List {
        archived: true,
        reply,
    })
    .await
    .map_err(unavailable)?;
    list.sort_by_key(|summary| std::cmp::Reverse(summary.id.0));
    Ok(Json(list.iter().map(summary_json).collect()))
}

async fn sweep(
    State(standing): State<watch::Receiver<Standing>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Refusal> {
    let context = leading(&standing)?;
    let actor = sweep_actor(&context, parse_id(&id)?).await?;
    let summary = ask(&actor, SweepMsg::Summary).await.map_err(unavailable)?;
    let objective = ask(&actor, SweepMsg::Objective)
        .await
        .map_err(unavailable)?;
    let trials = ask(&actor, SweepMsg::Trials).await.map_err(unavailable)?;
    // The front is drawn for a multi-objective sweep only.
    let plots: Vec<&str> = flotilla_report::PLOTS
        .into_iter()
        .filter(|plot| *plot != "front" || objective.is_multi())
        .collect();
    Ok(Json(json!({
        "summary": summary_json(&summary),
        "trials": trials.iter().map(trial_json).collect::<Vec<_>>(),
        "plots": plots,
    })))
}

async fn plot(
    State(standing): State<watch::Receiver<Standing>>,
    Path((id, plot)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let context = leading(&standing)?;
    let name = plot.strip_suffix(".svg").unwrap_or(&plot);
    let actor = sweep_actor(&context, parse_id(&id)?).await?;
    let detail = ask(&actor, SweepMsg::Detail).await.map_err(unavailable)?;
    let trials = ask(&actor, SweepMsg::Trials).await.map_err(unavailable)?;
    let report = flotilla_report::Report {
        detail: &detail,
        trials: &trials,
    };
    let svg = report.plot(name).map(|found| found.svg).ok_or_else(|| {
        problem(
            StatusCode::NOT_FOUND,
            format!(
                "no plot '{name}'; there are {}",
                flotilla_report::PLOTS.join(", ")
            ),
        )
    })?;
    Ok((
        [
            ("content-type", "image/svg+xml"),
            ("cache-control", "no-cache"),
        ],
        svg,
    )
        .into_response())
}

async fn agents(
    State(standing): State<watch::Receiver<Standing>>,
) -> Result<Json<Vec<Value>>, Refusal> {
    let context = leading(&standing)?;
    let agents = ask(&context.registry, RegistryMsg::List)
        .await
        .map_err(unavailable)?;
    Ok(Json(
        agents
            .iter()
            .map(|agent| {
                json!({
                    "id": agent.id.to_string(),
                    "hostname": agent.hostname,
                    "slots": agent.slots,
                    "busy_slots": agent.busy_slots,
                    "gpus": agent.gpus,
                    "connected": agent.connected,
                    "draining": agent.draining,
                    "running": agent.running.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "last_seen_ms_ago": agent.last_seen_ms_ago,
                    "version": agent.version,
                })
            })
            .collect(),
    ))
}
