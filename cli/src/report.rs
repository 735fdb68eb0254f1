//! What the CLI shows: live progress, leaderboards, tables and the results file.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use flotilla_sdk::{
    AgentGpus, AgentInfo, Client, Direction, Objective, PhaseSummary, ResumingWatch, SdkError,
    SequencedEventStream, SweepEvent, SweepSpec, SweepSummary, TrialId, TrialRecord, TrialState,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

/// A sweep's events from one connection, or from whichever leader answers.
enum Events {
    /// From the sweep's first event, on one connection.
    Replayed(SequencedEventStream),
    Resuming(Box<ResumingWatch>),
}

impl Events {
    async fn next(&mut self) -> Option<Result<SweepEvent, SdkError>> {
        match self {
            Events::Replayed(stream) => stream
                .next()
                .await
                .map(|event| event.map(|(_, event)| event)),
            Events::Resuming(watch) => watch.next().await,
        }
    }
}

/// The live counts of a watch, from its events: each trial ended once (by trial, however
/// often a replay shows its end), the trials started and not yet ended or paused (a set, so a
/// replay that shows a trial only by its end, or its start twice, cannot make it drift), and
/// the best feasible result of the current phase.
#[derive(Debug, Default)]
struct Tally {
    /// Ended trials: whether each failed.
    ended: HashMap<TrialId, bool>,
    running: HashSet<TrialId>,
    best: Option<f64>,
}

impl Tally {
    fn apply(&mut self, event: &SweepEvent, direction: Direction) {
        match event {
            SweepEvent::TrialStarted { attempt, .. } => {
                self.running.insert(attempt.trial);
            }
            SweepEvent::TrialFinished(trial) => {
                self.running.remove(&trial.id);
                self.ended
                    .insert(trial.id, trial.state == TrialState::Failed);
                if trial.feasible
                    && let Some(value) = trial.objective
                    && self
                        .best
                        .is_none_or(|incumbent| direction.is_better(value, incumbent))
                {
                    self.best = Some(value);
                }
            }
            SweepEvent::TrialPaused(trial) => {
                self.running.remove(&trial.id);
            }
            // The next phase starts from scratch: its best is its own.
            SweepEvent::PhaseFinished { .. } => self.best = None,
            _ => {}
        }
    }

    fn done(&self) -> usize {
        self.ended.values().filter(|failed| !**failed).count()
    }

    fn failed(&self) -> usize {
        self.ended.values().filter(|failed| **failed).count()
    }
}

/// Follows a sweep's events with a progress bar until it ends; with `resuming`, through any
/// number of leader changes.
pub async fn watch_with_progress(
    client: &Client,
    submitted: &SweepSummary,
    resuming: Option<ResumingWatch>,
) -> anyhow::Result<SweepSummary> {
    let bar = ProgressBar::new(u64::from(submitted.max_trials));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let resumes = resuming.is_some();
    // Both watches replay the sweep from its first event (each trial's current state, then
    // live events), so the counts start from zero and follow the coordinator's. Each trial
    // ends once (a resuming watch drops an end a new leader announces again); `running` is
    // the set of trials started and not yet ended or paused, so a replay that shows a trial
    // only by its end, or shows a start twice, cannot make it drift.
    let mut events = match resuming {
        Some(watch) => Events::Resuming(Box::new(watch)),
        None => Events::Replayed(client.watch_from(submitted.id, 0).await?),
    };
    let mut tally = Tally::default();
    let direction = submitted.direction;
    let render = |tally: &Tally| {
        let best = tally
            .best
            .map_or("-".to_string(), |value| format!("{value:.5}"));
        format!(
            "done {} · running {} · failed {} · best {} {best}",
            tally.done(),
            tally.running.len(),
            tally.failed(),
            submitted.objective_metric
        )
    };
    bar.set_position(tally.ended.len() as u64);
    bar.set_message(render(&tally));
    let mut finished = None;
    while let Some(event) = events.next().await {
        let event = event?;
        match &event {
            SweepEvent::Metric { .. } => continue,
            SweepEvent::SweepFinished(summary) => {
                finished = Some(summary.clone());
                break;
            }
            SweepEvent::PhaseFinished { phase, winner } => {
                bar.println(phase_line(
                    phase,
                    winner.as_ref(),
                    &submitted.objective_metric,
                ));
            }
            _ => {}
        }
        tally.apply(&event, direction);
        bar.set_position(tally.ended.len() as u64);
        bar.set_message(render(&tally));
    }
    bar.finish_and_clear();
    let summary = match finished {
        Some(summary) => summary,
        None if resumes => anyhow::bail!(
            "the watch of sweep {} ended before the sweep did",
            submitted.id
        ),
        None => client.status(submitted.id).await?,
    };
    println!("{}", outcome_line(&summary));
    if let Some(message) = &summary.message {
        println!("sweep {}: {message}", summary.id);
    }
    Ok(summary)
}

/// One line naming a phase's winner (or saying it has none).
fn phase_line(phase: &PhaseSummary, winner: Option<&TrialRecord>, metric: &str) -> String {
    match winner {
        Some(winner) => format!(
            "phase {}: winner {} {metric} = {} ({})",
            phase.name,
            winner.id,
            format_objective(winner.objective),
            format_params(winner)
        ),
        None if phase.done => format!(
            "phase {}: no trial succeeded while meeting the constraints",
            phase.name
        ),
        None => format!(
            "phase {}: not finished ({} of {} trials)",
            phase.name, phase.trials, phase.max_trials
        ),
    }
}

fn format_params(trial: &TrialRecord) -> String {
    trial
        .params
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn format_objective(value: Option<f64>) -> String {
    value.map_or("-".into(), |value| format!("{value:.6}"))
}

/// Ranked trials: feasible succeeded trials by objective, then the rest.
pub fn ranked<'a>(summary: &SweepSummary, trials: &'a [TrialRecord]) -> Vec<&'a TrialRecord> {
    flotilla_report::ranked(summary.direction, trials)
}

pub fn print_leaderboard(summary: &SweepSummary, trials: &[TrialRecord], limit: usize) {
    let phased = summary.phases.len() > 1;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["rank", "trial"];
    if phased {
        header.push("phase");
    }
    header.extend([
        summary.objective_metric.as_str(),
        "feasible",
        "state",
        "params",
        "time",
    ]);
    table.set_header(header);
    for (rank, trial) in ranked(summary, trials).into_iter().take(limit).enumerate() {
        let mut row = vec![(rank + 1).to_string(), trial.id.to_string()];
        if phased {
            row.push(flotilla_report::phase_name(summary, trial));
        }
        row.extend([
            format_objective(trial.objective),
            if trial.feasible {
                "yes".into()
            } else {
                "no".into()
            },
            trial.state.name().to_string(),
            format_params(trial),
            trial
                .duration_ms
                .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0)),
        ]);
        table.add_row(row);
    }
    println!("{table}");
    if phased {
        for (phase, winner) in flotilla_report::phase_winners(summary, trials) {
            println!("{}", phase_line(phase, winner, &summary.objective_metric));
        }
    }
    match &summary.best {
        Some(best) => println!(
            "best: {} {} = {} ({})",
            best.id,
            summary.objective_metric,
            format_objective(best.objective),
            format_params(best)
        ),
        None => println!("no trial succeeded while meeting the constraints"),
    }
}

pub fn print_trial(trial: &TrialRecord) {
    println!("trial      {}", trial.id);
    println!("state      {}", trial.state.name());
    println!("objective  {}", format_objective(trial.objective));
    println!("feasible   {}", trial.feasible);
    println!("params     {}", format_params(trial));
    let metrics = trial
        .metrics
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ");
    println!("metrics    {metrics}");
    println!(
        "agent      {}",
        trial.agent.as_ref().map_or("-".into(), ToString::to_string)
    );
}

/// After a multi-objective sweep's leaderboard (ranked by its primary objective): its Pareto
/// front. Nothing for a single objective.
pub fn print_front_of(spec: &SweepSpec, trials: &[TrialRecord]) {
    if !spec.objective.is_multi() {
        return;
    }
    let front = spec.objective.front(trials);
    println!(
        "Pareto front: {} trial{} no other beats in every objective",
        front.len(),
        if front.len() == 1 { "" } else { "s" }
    );
    print_front(&spec.objective, &front);
}

/// A multi-objective sweep's Pareto front as a table: each trial, its value of every
/// objective, and its parameters.
pub fn print_front(objective: &Objective, front: &[&TrialRecord]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["trial".to_string()];
    header.extend(
        objective
            .goals()
            .map(|(metric, direction)| format!("{metric} ({})", direction_word(direction))),
    );
    header.push("params".into());
    table.set_header(header);
    for trial in front {
        let mut row = vec![trial.id.to_string()];
        let values = objective
            .values(trial.objective, &trial.metrics)
            .unwrap_or_default();
        row.extend(values.iter().map(|value| format!("{value:.6}")));
        row.push(format_params(trial));
        table.add_row(row);
    }
    println!("{table}");
}

fn direction_word(direction: Direction) -> &'static str {
    match direction {
        Direction::Minimize => "min",
        Direction::Maximize => "max",
    }
}

pub fn print_summaries(summaries: &[SweepSummary]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "sweep", "name", "state", "done", "running", "pending", "failed", "best",
    ]);
    for summary in summaries {
        table.add_row(vec![
            summary.id.to_string(),
            summary.name.clone(),
            format!("{:?}", summary.state),
            format!("{}/{}", summary.counts.finished(), summary.max_trials),
            summary.counts.running.to_string(),
            summary.counts.pending.to_string(),
            summary.counts.failed.to_string(),
            summary.best.as_ref().map_or("-".into(), |best| {
                format!("{} {}", best.id, format_objective(best.objective))
            }),
        ]);
    }
    println!("{table}");
    for summary in summaries {
        if let Some(message) = &summary.message {
            println!("sweep {} {:?}: {message}", summary.id, summary.state);
        }
    }
}

/// The agents' table; `gpus` (protocol 10) shows each agent's GPUs as used/total.
pub fn print_agents(agents: &[AgentInfo], gpus: Option<&[AgentGpus]>) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "agent",
        "host",
        "slots",
        "busy",
        "gpus",
        "state",
        "last seen",
        "running",
    ]);
    for agent in agents {
        table.add_row(vec![
            agent.id.to_string(),
            agent.hostname.clone(),
            agent.slots.to_string(),
            agent.busy_slots.to_string(),
            match gpus.and_then(|gpus| gpus.iter().find(|gpus| gpus.agent == agent.id)) {
                Some(gpus) => format!("{}/{} used", gpus.busy_gpus, gpus.gpus),
                None => agent.gpus.to_string(),
            },
            match (agent.connected, agent.draining) {
                (true, false) => "connected",
                (true, true) => "draining",
                (false, _) => "disconnected",
            }
            .to_string(),
            format!("{}ms ago", agent.last_seen_ms_ago),
            agent
                .running
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    println!("{table}");
}

pub fn print_cluster_status(status: &flotilla_sdk::ClusterStatus) {
    println!(
        "leader: {} at {} (epoch {})",
        status.leader, status.leader_address, status.epoch.0
    );
    println!("state store: {}", status.store);
    println!(
        "agents: {} connected, {} slot(s), {} busy",
        status.agents, status.slots, status.busy_slots
    );
    let mut replicas = Table::new();
    replicas.load_preset(UTF8_FULL_CONDENSED);
    replicas.set_header(vec!["coordinator", "role", "campaign revision"]);
    for replica in &status.replicas {
        replicas.add_row(vec![
            replica.address.clone(),
            if replica.leader { "leader" } else { "follower" }.to_string(),
            replica.campaign_revision.to_string(),
        ]);
    }
    println!("{replicas}");
    if status.etcd.is_empty() {
        return;
    }
    let mut members = Table::new();
    members.load_preset(UTF8_FULL_CONDENSED);
    members.set_header(vec![
        "etcd member",
        "endpoint",
        "health",
        "raft",
        "version",
        "db size",
    ]);
    for member in &status.etcd {
        members.add_row(vec![
            member.name.clone(),
            member.endpoint.clone(),
            match &member.error {
                None if member.healthy => "healthy".to_string(),
                None => "unhealthy".to_string(),
                Some(error) => format!("unhealthy: {error}"),
            },
            if member.raft_leader { "leader" } else { "" }.to_string(),
            member.version.clone(),
            format!("{} KiB", member.db_size_bytes / 1024),
        ]);
    }
    println!("{members}");
}

pub fn trial_json(trial: &TrialRecord) -> Value {
    json!({
        "id": trial.id.to_string(),
        "number": trial.id.number,
        "attempt": trial.attempt,
        "state": trial.state.name(),
        "params": trial.params,
        "metrics": trial.metrics,
        "objective": trial.objective,
        "feasible": trial.feasible,
        "agent": trial.agent.as_ref().map(ToString::to_string),
        "failures": trial.failures,
        "started_ms": trial.started_ms,
        "finished_ms": trial.finished_ms,
        "duration_ms": trial.duration_ms,
        "dispatch_latency_us": trial.dispatch_latency_us,
        "message": trial.message,
        "phase": trial.phase,
        "rungs": trial.rungs,
        "checkpoint": trial.checkpoint.as_ref().map(|checkpoint| json!({
            "uri": checkpoint.uri,
            "attempt": checkpoint.attempt,
            "step": checkpoint.step,
            "epoch": checkpoint.epoch,
            "bytes": checkpoint.bytes,
        })),
    })
}

fn results_json(summary: &SweepSummary, spec: &SweepSpec, trials: &[TrialRecord]) -> Value {
    json!({
        "sweep": {
            "id": summary.id.to_string(),
            "name": summary.name,
            "state": format!("{:?}", summary.state),
            "message": summary.message,
            "objective": { "metric": summary.objective_metric, "direction": summary.direction },
            "constraints": spec.constraints.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "warm_start": spec.warm_start,
            "counts": {
                "succeeded": summary.counts.succeeded,
                "failed": summary.counts.failed,
                "stopped": summary.counts.stopped,
                "paused": summary.counts.paused,
                "running": summary.counts.running,
                "pending": summary.counts.pending,
            },
            "created_ms": summary.created_ms,
            "finished_ms": summary.finished_ms,
            "best_trial": summary.best.as_ref().map(|best| best.id.to_string()),
            "also": spec.objective.also,
            "front": spec.objective.is_multi().then(|| {
                spec.objective.front(trials).iter().map(|trial| trial.id.to_string()).collect::<Vec<_>>()
            }),
        },
        "phases": flotilla_report::phase_winners(summary, trials).map(|(phase, winner)| json!({
            "name": phase.name,
            "max_trials": phase.max_trials,
            "trials": phase.trials,
            "done": phase.done,
            "winner": winner.map(|winner| json!({
                "trial": winner.id.to_string(),
                "objective": winner.objective,
                "params": winner.params,
            })),
        })).collect::<Vec<_>>(),
        "trials": trials.iter().map(trial_json).collect::<Vec<_>>(),
    })
}

pub fn write_results(
    path: &Path,
    summary: &SweepSummary,
    spec: &SweepSpec,
    trials: &[TrialRecord],
) -> anyhow::Result<()> {
    write_json(path, &results_json(summary, spec, trials))
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || character == '-' {
                character
            } else {
                '_'
            }
        })
        .collect()
}

/// `<id>-<name>-report.html` (or `.md`).
pub fn report_file_name(summary: &SweepSummary, html: bool) -> String {
    format!(
        "{}-{}-report.{}",
        summary.id,
        file_safe(&summary.name),
        if html { "html" } else { "md" }
    )
}

/// Writes a sweep's report: one HTML page with its plots inline, or Markdown with the plots
/// as SVG files in `<stem>-plots/` beside it.
pub fn write_report(
    path: &Path,
    detail: &flotilla_sdk::SweepDetail,
    trials: &[TrialRecord],
    html: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let report = flotilla_report::Report { detail, trials };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = if html {
        report.html()
    } else {
        let stem = path
            .file_stem()
            .map_or("report".into(), |stem| stem.to_string_lossy().into_owned());
        let plot_dir = format!("{stem}-plots");
        let plots = path.with_file_name(&plot_dir);
        std::fs::create_dir_all(&plots)
            .with_context(|| format!("cannot create {}", plots.display()))?;
        for plot in report.plots() {
            let file = plots.join(format!("{}.svg", plot.id));
            std::fs::write(&file, plot.svg)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        report.markdown(&plot_dir)
    };
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The autoscaler's part of `flotilla cluster status` (and the answer to `cluster scale`).
pub fn print_autoscale(status: &flotilla_sdk::AutoscaleStatus) {
    if status.provider == "none" {
        println!("autoscaling: off");
        return;
    }
    println!(
        "autoscaling: {} — desired {}, actual {}, bounds [{}, {}], demand {} slot(s)",
        status.provider, status.desired, status.actual, status.min, status.max, status.demand_slots
    );
    println!("  last decision: {}", status.reason);
    if !status.protected.is_empty() {
        println!(
            "  protected from scale-in (busy): {}",
            status.protected.join(", ")
        );
    }
    if !status.terminating.is_empty() {
        println!("  terminating: {}", status.terminating.join(", "));
    }
    if let Some(error) = &status.error {
        println!("  last provider error: {error}");
    }
}

/// Prints a line whenever the autoscaled fleet's desired or actual size changes (for
/// `flotilla up --autoscale`), until aborted.
pub async fn follow_fleet(client: flotilla_sdk::Client) {
    let mut last = None;
    loop {
        if let Ok(status) = client.autoscale_status().await {
            print_fleet_change(&status, &mut last);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Prints the fleet's size and the autoscaler's reason when they changed since `last`.
fn print_fleet_change(status: &flotilla_sdk::AutoscaleStatus, last: &mut Option<(u32, u32)>) {
    let now = (status.desired, status.actual);
    if *last != Some(now) {
        println!(
            "fleet: {} agent(s) running, {} desired — {}",
            status.actual, status.desired, status.reason
        );
        *last = Some(now);
    }
}

/// Waits until the autoscaler has brought the fleet down to zero agents, printing the fleet
/// as it changes (as [`follow_fleet`] does), its last line at zero.
pub async fn wait_for_empty_fleet(
    client: &flotilla_sdk::Client,
    limit: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    println!("waiting for the autoscaler to scale the fleet to zero…");
    let mut last = None;
    loop {
        let status = client.autoscale_status().await?;
        print_fleet_change(&status, &mut last);
        if status.actual == 0 && status.desired == 0 {
            println!("fleet scaled to zero");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the fleet still has {} agent(s) ({} desired) after {limit:?}: {}",
                status.actual,
                status.desired,
                status.reason
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `sweep s1 Completed: 10 succeeded, 0 failed, 0 stopped`.
fn outcome_line(summary: &SweepSummary) -> String {
    format!(
        "sweep {} {:?}: {} succeeded, {} failed, {} stopped",
        summary.id,
        summary.state,
        summary.counts.succeeded,
        summary.counts.failed,
        summary.counts.stopped
    )
}

/// One line per event, with its sequence number, for `flotilla sweep watch`.
pub fn event_line(seq: u64, event: &SweepEvent) -> Option<String> {
    let line = match event {
        SweepEvent::TrialStarted { attempt, agent, .. } => format!(
            "trial {} attempt {} started on {agent}",
            attempt.trial, attempt.attempt
        ),
        SweepEvent::TrialFinished(trial) => format!(
            "trial {} {} {}",
            trial.id,
            trial.state.name(),
            trial
                .message
                .as_deref()
                .map_or_else(|| format_objective(trial.objective), str::to_string)
        ),
        SweepEvent::TrialPaused(trial) => format!("trial {} paused", trial.id),
        SweepEvent::PhaseFinished { phase, .. } => format!("phase {} finished", phase.name),
        SweepEvent::SweepFinished(summary) => outcome_line(summary),
        // Metric points, and kinds this build does not know.
        _ => return None,
    };
    Some(format!("[{seq}] {line}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_sdk::{AgentId, AttemptId, SweepId};

    fn ended(number: u32, state: TrialState, objective: f64) -> SweepEvent {
        let id = TrialId {
            sweep: SweepId(1),
            number,
        };
        SweepEvent::TrialFinished(TrialRecord {
            state,
            objective: Some(objective),
            feasible: state == TrialState::Succeeded,
            agent: Some(AgentId("a".into())),
            ..TrialRecord::pending(id, Default::default(), 0)
        })
    }

    fn started(number: u32) -> SweepEvent {
        SweepEvent::TrialStarted {
            attempt: AttemptId {
                trial: TrialId {
                    sweep: SweepId(1),
                    number,
                },
                attempt: 0,
            },
            agent: AgentId("a".into()),
            params: Default::default(),
        }
    }

    /// The counts never drift from the coordinator's: a replay that shows trials only by
    /// their ends, a start shown twice, a stopped trial and an end announced again leave
    /// running at what is really running and each trial counted once.
    #[test]
    fn the_tally_follows_replays_without_drifting() {
        let mut tally = Tally::default();
        let events = [
            // A reconnect's replay: trial 0 ended in the gap, 1 still runs.
            ended(0, TrialState::Succeeded, 0.5),
            started(1),
            started(1),
            started(2),
            started(3),
            // Early stopping ends trial 2; trial 3 fails; trial 1 succeeds, announced twice.
            ended(2, TrialState::Stopped, 0.4),
            ended(3, TrialState::Failed, 0.0),
            ended(1, TrialState::Succeeded, 0.8),
            ended(1, TrialState::Succeeded, 0.8),
            started(4),
        ];
        for event in &events {
            tally.apply(event, Direction::Maximize);
        }
        assert_eq!(tally.running.len(), 1, "{tally:?}");
        assert_eq!((tally.done(), tally.failed()), (3, 1));
        assert_eq!(tally.best, Some(0.8));
    }
}
