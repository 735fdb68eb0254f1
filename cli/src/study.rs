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
        /// minimize or maximize; repeated for a multi-objective study (one per objective, in
        /// the order `tell --value` gives their values).
        #[arg(long = "direction", required = true, value_parser = parse_direction)]
        directions: Vec<Direction>,
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
        /// value where the trial stopped); repeated in a multi-objective study, one per
        /// objective in the order of its directions.
        #[arg(long = "value", allow_hyphen_values = true)]
        values: Vec<f64>,
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
    /// The best feasible trial: prints {"trial": N, "value": V, "params": {...}}; for a
    /// multi-objective study the Pareto front, one line per trial:
    /// {"trial": N, "values": [...], "params": {...}}.
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
            directions,
            sampler,
            seed,
            warm_start,
        } => {
            let space = read_space(&space)?;
            Study::create_multi(&db, &space, &directions, sampler, seed, &warm_start)?;
            eprintln!(
                "created {} ({} parameters, {} objective{}, {})",
                db.display(),
                space.len(),
                directions.len(),
                if directions.len() == 1 { "" } else { "s" },
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
            values,
            fidelity,
            constraints,
            state,
        } => {
            let outcome = if state == "failed" {
                TellOutcome::Failed
            } else {
                let constraints = constraints
                    .iter()
                    .map(|text| parse_constraint(text))
                    .collect::<anyhow::Result<_>>()?;
                match (state.as_str(), &values[..], fidelity) {
                    (_, [], _) => bail!("--value is required unless --state failed"),
                    (_, _, Some(_)) if state != "pruned" => {
                        bail!("--fidelity applies to --state pruned only")
                    }
                    ("pruned", [value], Some(fidelity)) => TellOutcome::Pruned {
                        value: *value,
                        constraints,
                        fidelity,
                    },
                    ("pruned", [_], None) => bail!(
                        "--fidelity is required with --state pruned (the share of a complete \
                         trial's resource the trial had spent, in (0, 1])"
                    ),
                    ("pruned", _, _) => bail!(
                        "--state pruned takes one --value (pruning applies to single-objective \
                         studies)"
                    ),
                    (_, [value], _) => TellOutcome::Complete {
                        value: *value,
                        constraints,
                    },
                    // One value per objective of a multi-objective study.
                    _ => TellOutcome::Objectives {
                        values,
                        constraints,
                    },
                }
            };
            Study::open(&db)?.tell(trial, outcome)?;
        }
        StudyCommand::Best { db } => {
            let study = Study::open(&db)?;
            if study.directions()?.len() > 1 {
                let front = study.front()?;
                if front.is_empty() {
                    bail!(
                        "{}: no completed trial meets its constraints yet",
                        db.display()
                    );
                }
                for trial in front {
                    println!("{}", serde_json::to_string(&trial)?);
                }
                return Ok(());
            }
            match study.best()? {
                Some(best) => println!("{}", serde_json::to_string(&best)?),
                None => bail!(
                    "{}: no completed trial meets its constraints yet",
                    db.display()
                ),
            }
        }
    }
    Ok(())
}
