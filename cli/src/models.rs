//! `flotilla model …` and `flotilla rollout …`: the model registry and canary rollouts.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use flotilla_sdk::{
    ModelRef, ModelStage, ModelVersion, RegisterModel, RolloutAction, RolloutPolicy, RolloutRecord,
    SemVer, StartRollout, SweepId,
};

use flotilla_protocol::models::ServeState;

use crate::Connection;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Register a trial's checkpoint as a model version: an agent copies it into the
    /// artifact store and records its SHA-256; lineage (sweep, trial, parameters, metrics)
    /// is kept with it.
    Register {
        /// SWEEP for the sweep's winner, or SWEEP/TRIAL.
        #[arg(long)]
        from: String,
        #[arg(long)]
        name: String,
        /// MAJOR.MINOR.PATCH (default: the next minor version, 1.0.0 for the first).
        #[arg(long)]
        version: Option<String>,
        /// staging (default; roll it out with `flotilla rollout start`) or production (serve
        /// it at once, archiving the current production version; admin certificate).
        #[arg(long, default_value = "staging")]
        stage: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Versions of one model, or of every model.
    List {
        name: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// One version: lineage, metrics, artifact and digest.
    Show {
        /// NAME@VERSION
        model: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Move a version to staging, production or archived (admin certificate).
    Stage {
        /// NAME@VERSION
        model: String,
        stage: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Start a canary rollout of a staging version against the production one (admin).
    Start {
        /// NAME@VERSION of the canary.
        model: String,
        /// A TOML policy (stages, error rates, margins); defaults for what it leaves out.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Rollouts with their stage, weight, traffic and the decisions taken, with evidence.
    Status {
        model: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Hold the canary's weight; no verdicts until resumed (admin).
    Pause {
        model: String,
        #[command(flatten)]
        connection: Connection,
    },
    Resume {
        model: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// All traffic to the canary now; it becomes the production version (admin).
    Promote {
        model: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// All traffic back to the baseline now (admin).
    Abort {
        model: String,
        #[command(flatten)]
        connection: Connection,
    },
}

fn parse_from(from: &str) -> anyhow::Result<(SweepId, Option<u32>)> {
    let (sweep, trial) = match from.split_once('/') {
        Some((sweep, trial)) => (sweep, Some(trial)),
        None => (from, None),
    };
    let sweep: SweepId = sweep
        .parse()
        .map_err(|_| anyhow::anyhow!("--from {from:?}: '{sweep}' is not a sweep id"))?;
    let trial = trial
        .map(|trial| {
            trial
                .parse::<u32>()
                .map_err(|_| anyhow::anyhow!("--from {from:?}: '{trial}' is not a trial number"))
        })
        .transpose()?;
    Ok((sweep, trial))
}

fn parse_ref(text: &str) -> anyhow::Result<ModelRef> {
    text.parse()
        .map_err(|message: String| anyhow::anyhow!(message))
}

fn parse_stage(text: &str) -> anyhow::Result<ModelStage> {
    text.parse()
        .map_err(|message: String| anyhow::anyhow!(message))
}

pub async fn model(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Register {
            from,
            name,
            version,
            stage,
            description,
            connection,
        } => {
            let (sweep, trial) = parse_from(&from)?;
            let version = version
                .map(|text| text.parse::<SemVer>().map_err(|m| anyhow::anyhow!(m)))
                .transpose()?;
            let stage = parse_stage(&stage)?;
            // Straight into production is an operator's decision.
            let identity = if stage == ModelStage::Staging {
                "client"
            } else {
                "admin"
            };
            let client = connection.connect(identity).await?;
            let registered = client
                .register_model(RegisterModel {
                    name,
                    version,
                    sweep,
                    trial,
                    description,
                    stage,
                })
                .await;
            client.close().await;
            let registered = registered?;
            println!(
                "registered {} ({}) from sweep {} trial {}: sha256 {}",
                registered.reference(),
                registered.stage.as_str(),
                registered.lineage.sweep,
                registered.lineage.trial.number,
                registered.artifact.sha256
            );
            Ok(())
        }
        ModelCommand::List {
            name,
            json,
            connection,
        } => {
            let client = connection.connect("client").await?;
            let versions = client.models(name.as_deref()).await;
            client.close().await;
            let versions = versions?;
            if json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
            } else {
                print_versions(&versions);
            }
            Ok(())
        }
        ModelCommand::Show {
            model,
            json,
            connection,
        } => {
            let reference = parse_ref(&model)?;
            let client = connection.connect("client").await?;
            let versions = client.models(Some(&reference.name)).await;
            let placements = client.model_placements(Some(&reference.name)).await;
            client.close().await;
            let Some(version) = versions?
                .into_iter()
                .find(|version| version.version == reference.version)
            else {
                bail!("no model version {reference}");
            };
            let placements: Vec<_> = placements?
                .into_iter()
                .filter(|placement| placement.model == reference)
                .collect();
            if json {
                let mut value = serde_json::to_value(&version)?;
                value["placements"] = serde_json::to_value(&placements)?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_version(&version);
                print_placements(&version, &placements);
            }
            Ok(())
        }
        ModelCommand::Stage {
            model,
            stage,
            connection,
        } => {
            let reference = parse_ref(&model)?;
            let stage = parse_stage(&stage)?;
            let client = connection.connect("admin").await?;
            let changed = client.set_model_stage(reference, stage).await;
            client.close().await;
            for version in changed? {
                println!("{} is {}", version.reference(), version.stage.as_str());
            }
            Ok(())
        }
    }
}

fn print_versions(versions: &[ModelVersion]) {
    if versions.is_empty() {
        println!("no model versions");
        return;
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "MODEL",
        "VERSION",
        "STAGE",
        "FROM",
        "OBJECTIVE",
        "SHA-256",
        "CREATED",
    ]);
    for version in versions {
        table.add_row([
            version.name.clone(),
            version.version.to_string(),
            version.stage.as_str().to_string(),
            format!("{}/{}", version.lineage.sweep, version.lineage.trial.number),
            version
                .lineage
                .objective
                .map_or("-".into(), |objective| format!("{objective:.4}")),
            version.artifact.sha256.chars().take(12).collect(),
            age(version.created_ms),
        ]);
    }
    println!("{table}");
}

fn print_version(version: &ModelVersion) {
    println!("{} ({})", version.reference(), version.stage.as_str());
    if !version.description.is_empty() {
        println!("  {}", version.description);
    }
    let lineage = &version.lineage;
    println!(
        "  from:      sweep {} '{}', trial {}, trainer {}, epoch {}",
        lineage.sweep, lineage.sweep_name, lineage.trial.number, lineage.trainer, lineage.epoch
    );
    println!("  source:    {}", lineage.checkpoint);
    println!(
        "  artifact:  {} ({} bytes)",
        version.artifact.uri, version.artifact.bytes
    );
    println!("  sha256:    {}", version.artifact.sha256);
    let params: Vec<String> = lineage
        .params
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    println!("  params:    {}", params.join(" "));
    let metrics: Vec<String> = lineage
        .metrics
        .iter()
        .filter(|(name, _)| !name.starts_with("confusion"))
        .map(|(name, value)| format!("{name}={value:.4}"))
        .collect();
    println!("  metrics:   {}", metrics.join(" "));
    println!("  created:   {}", age(version.created_ms));
    match &version.serving {
        None => println!("  served by: the agents' built-in inference"),
        Some(serving) => {
            println!(
                "  served by: {} {} (health {}, ready within {}, {} replica(s) of {} slot(s) and {} GPU(s))",
                serving.command,
                serving.args.join(" "),
                serving.health,
                humantime::format_duration(serving.ready_timeout),
                serving.replicas,
                serving.slots,
                serving.gpus
            );
        }
    }
}

/// Where the version runs and how each replica is; for a served program, the replicas that
/// wait for an agent with free slots and GPUs.
fn print_placements(version: &ModelVersion, placements: &[flotilla_protocol::models::Placement]) {
    let missing = version
        .serving
        .as_ref()
        .map_or(0, |serving| serving.replicas as usize)
        .saturating_sub(placements.len());
    let served = matches!(version.stage, ModelStage::Production) || !placements.is_empty();
    if placements.is_empty() && !(served && missing > 0) {
        println!("  runs on:   no agent (not in production or in a rollout, or no serving agent)");
        return;
    }
    println!("  runs on:");
    for placement in placements {
        let (state, detail) = match &placement.state {
            None => ("assigned".to_string(), String::new()),
            Some(ServeState::Restarting { restarts, reason }) => (
                format!("restarting ({restarts} restarts)"),
                format!(": {reason}"),
            ),
            Some(ServeState::Failed(message)) => ("failed".to_string(), format!(": {message}")),
            Some(state) => (state.as_str().to_string(), String::new()),
        };
        let gpus = if placement.gpus.is_empty() {
            String::new()
        } else {
            format!(
                " (GPU {})",
                placement
                    .gpus
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        println!(
            "    {:<24} {:<32} {state}{gpus}{detail}",
            placement.agent.0,
            placement.endpoint.as_deref().unwrap_or("-")
        );
    }
    if served && missing > 0 {
        println!("    {missing} replica(s) waiting for a serving agent with free slots and GPUs");
    }
}

fn age(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let seconds = now.saturating_sub(unix_ms) / 1000;
    format!(
        "{} ago",
        humantime::format_duration(std::time::Duration::from_secs(seconds))
    )
}

pub async fn rollout(command: RolloutCommand) -> anyhow::Result<()> {
    let (model, action, connection) = match command {
        RolloutCommand::Start {
            model,
            policy,
            connection,
        } => {
            let reference = parse_ref(&model)?;
            let policy = match policy {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let policy: RolloutPolicy = toml::from_str(&text)
                        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
                    policy
                        .validate()
                        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
                    Some(policy)
                }
                None => None,
            };
            let client = connection.connect("admin").await?;
            let started = client
                .start_rollout(StartRollout {
                    model: reference.name,
                    canary: reference.version,
                    policy,
                })
                .await;
            client.close().await;
            let started = started?;
            println!(
                "rollout {} of {}: canary {} against {} at {:.1}% of requests",
                started.id,
                started.model,
                started.canary,
                started.baseline,
                started.canary_weight * 100.0
            );
            return Ok(());
        }
        RolloutCommand::Status {
            model,
            json,
            connection,
        } => {
            let client = connection.connect("client").await?;
            let rollouts = client.rollouts(model.as_deref()).await;
            client.close().await;
            let rollouts = rollouts?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rollouts)?);
            } else if rollouts.is_empty() {
                println!("no rollouts");
            } else {
                for rollout in &rollouts {
                    print_rollout(rollout);
                }
            }
            return Ok(());
        }
        RolloutCommand::Pause { model, connection } => (model, RolloutAction::Pause, connection),
        RolloutCommand::Resume { model, connection } => (model, RolloutAction::Resume, connection),
        RolloutCommand::Promote { model, connection } => {
            (model, RolloutAction::Promote, connection)
        }
        RolloutCommand::Abort { model, connection } => (model, RolloutAction::Abort, connection),
    };
    let client = connection.connect("admin").await?;
    let record = client.rollout_action(&model, action).await;
    client.close().await;
    print_rollout(&record?);
    Ok(())
}

fn print_rollout(rollout: &RolloutRecord) {
    let stages = rollout.policy.stages.len();
    println!(
        "rollout {} of {}: {} → {} — {}, stage {}/{}, canary at {:.1}%",
        rollout.id,
        rollout.model,
        rollout.baseline,
        rollout.canary,
        rollout.state.as_str(),
        (rollout.stage as usize + 1).min(stages),
        stages,
        rollout.canary_weight * 100.0
    );
    let arm = |name: &str, arm: &flotilla_rollout::Arm| {
        let rate = |a: u64, b: u64| {
            if b == 0 {
                "-".to_string()
            } else {
                format!("{:.2}%", 100.0 * a as f64 / b as f64)
            }
        };
        let latency = if arm.requests == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.2} ms",
                1000.0 * (arm.log_latency_sum / arm.requests as f64).exp()
            )
        };
        println!(
            "  {name:<9} {:>8} requests, errors {}, typical latency {latency}, accuracy {} of {} labelled",
            arm.requests,
            rate(arm.errors, arm.requests),
            rate(arm.correct, arm.labelled),
            arm.labelled
        );
    };
    arm("baseline", &rollout.traffic.baseline);
    arm("canary", &rollout.traffic.canary);
    for decision in &rollout.decisions {
        println!(
            "  {} {:?} at stage {} (weight {:.1}%) by {}: {}",
            age_short(decision.at_ms),
            decision.decision.verdict,
            decision.stage + 1,
            decision.weight * 100.0,
            decision.by,
            decision.decision.reason
        );
        for evidence in &decision.decision.evidence {
            let show = |value: Option<f64>| value.map_or("-".into(), |v| format!("{v:.4}"));
            println!(
                "      {:<9} baseline {} canary {} (n = {}, {}) ln Λ harm {} safety {}{}{}",
                evidence.metric.name(),
                show(evidence.baseline),
                show(evidence.canary),
                evidence.samples.0,
                evidence.samples.1,
                show(evidence.harm),
                show(evidence.safety),
                if evidence.harmful { " HARMFUL" } else { "" },
                if evidence.safe { " safe" } else { "" },
            );
        }
    }
}

fn age_short(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{:>6.1}s ago", now.saturating_sub(unix_ms) as f64 / 1000.0)
}
