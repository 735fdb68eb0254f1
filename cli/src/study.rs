//! `flotilla study`: ask/tell optimization from the shell, on the SDK's `Study`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use flotilla_sdk::{AlgorithmName, Direction, ParamSpec, Study, TellOutcome};

#[derive(Subcommand)]
pub enum StudyCommand {
    /// Create a study file from a search space (SPACE.json: name → {"type": "float"|"int"|
    /// "categorical", "low", "high", "log", "choices", "when"}, the sweep file's schema).
    Create {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        space: PathBuf,
        #[arg(long, value_parser = parse_direction)]
        direction: Direction,
        /// bayesian, tpe, random or sobol.
        #[arg(long, default_value = "bayesian", value_parser = parse_sampler)]
        sampler: AlgorithmName,
        /// Seed for reproducible suggestions (random when absent; recorded in the file).
        #[arg(long)]
        seed: Option<u64>,
        /// Seed the study with another study's told trials (repeatable): those whose
        /// parameters lie in this space count as results already in.
        #[arg(long = "warm-start", value_name = "DB")]
        warm_start: Vec<PathBuf>,
    },
    /// Suggest the next trial: prints {"trial": N, "params": {...}}.
    Ask {
        #[arg(long)]
        db: PathBuf,
    },
    /// Report a trial's result.
    Tell {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        trial: u32,
        /// The objective's value (required unless --state failed; with --state pruned, its
        /// value where the trial stopped).
        #[arg(long, allow_hyphen_values = true)]
        value: Option<f64>,
        /// With --state pruned: the share of a complete trial's resource it had spent, in
        /// (0, 1] (e.g. 3 of 30 epochs: 0.1).
        #[arg(long)]
        fidelity: Option<f64>,
        /// NAME=VALUE for each constraint; a constraint holds when its value is <= 0.
        #[arg(long = "constraint", allow_hyphen_values = true)]
        constraints: Vec<String>,
        /// complete, failed (crashed: the samplers avoid its region) or pruned (stopped part
        /// way: a lower-fidelity result).
        #[arg(long, default_value = "complete", value_parser = ["complete", "failed", "pruned"])]
        state: String,
    },
    /// The best feasible trial: prints {"trial": N, "value": V, "params": {...}}.
    Best {
        #[arg(long)]
        db: PathBuf,
    },
}

fn parse_direction(text: &str) -> Result<Direction, String> {
    match text {
        "minimize" => Ok(Direction::Minimize),
        "maximize" => Ok(Direction::Maximize),
        other => Err(format!("'{other}' is not minimize or maximize")),
    }
}

fn parse_sampler(text: &str) -> Result<AlgorithmName, String> {
    let name: AlgorithmName = text.parse()?;
    if flotilla_sdk::STUDY_SAMPLERS.contains(&name) {
        Ok(name)
    } else {
        Err(format!(
            "'{text}' cannot run a study (use bayesian, tpe, random or sobol)"
        ))
    }
}

fn read_space(path: &Path) -> anyhow::Result<BTreeMap<String, ParamSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the space file {}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| {
        anyhow::anyhow!(
            "{}:{}:{}: {error}",
            path.display(),
            error.line(),
            error.column()
        )
    })
}

fn parse_constraint(text: &str) -> anyhow::Result<(String, f64)> {
    let Some((name, value)) = text.split_once('=') else {
        bail!("--constraint {text}: expected NAME=VALUE");
    };
    let value: f64 = value
        .trim()
        .parse()
        .with_context(|| format!("--constraint {text}: '{value}' is not a number"))?;
    if name.trim().is_empty() {
        bail!("--constraint {text}: the name is empty");
    }
    Ok((name.trim().to_string(), value))
}

pub fn run(command: StudyCommand) -> anyhow::Result<()> {
    match command {
        StudyCommand::Create {
            db,
            space,
            direction,
            sampler,
            seed,
            warm_start,
        } => {
            let space = read_space(&space)?;
            Study::create_warm(&db, &space, direction, sampler, seed, &warm_start)?;
            eprintln!(
                "created {} ({} parameters, {})",
                db.display(),
                space.len(),
                sampler.as_str()
            );
        }
        StudyCommand::Ask { db } => {
            let trial = Study::open(&db)?.ask()?;
            println!("{}", serde_json::to_string(&trial)?);
        }
        StudyCommand::Tell {
            db,
            trial,
            value,
            fidelity,
            constraints,
            state,
        } => {
            let outcome = if state == "failed" {
                TellOutcome::Failed
            } else {
                let Some(value) = value else {
                    bail!("--value is required unless --state failed");
                };
                let constraints = constraints
                    .iter()
                    .map(|text| parse_constraint(text))
                    .collect::<anyhow::Result<_>>()?;
                match (state.as_str(), fidelity) {
                    ("pruned", Some(fidelity)) => TellOutcome::Pruned {
                        value,
                        constraints,
                        fidelity,
                    },
                    ("pruned", None) => bail!(
                        "--fidelity is required with --state pruned (the share of a complete \
                         trial's resource the trial had spent, in (0, 1])"
                    ),
                    (_, Some(_)) => bail!("--fidelity applies to --state pruned only"),
                    _ => TellOutcome::Complete { value, constraints },
                }
            };
            Study::open(&db)?.tell(trial, outcome)?;
        }
        StudyCommand::Best { db } => match Study::open(&db)?.best()? {
            Some(best) => println!("{}", serde_json::to_string(&best)?),
            None => bail!(
                "{}: no completed trial meets its constraints yet",
                db.display()
            ),
        },
    }
    Ok(())
}
