//! Ask/tell studies: Flotilla's samplers for trials you run yourself.
//!
//! A study lives in one file, a journal of JSON lines: the study's definition first, then
//! one line per `ask` and per `tell`. Every change is appended and synced before the call
//! returns, so a crash loses at most the line being written; a torn last line (no newline)
//! is ignored on load. Each operation takes an exclusive lock on the file, re-reads the
//! journal and appends, so several processes may share a study, one writer at a time.
//!
//! ```no_run
//! # fn demo() -> Result<(), flotilla_sdk::StudyError> {
//! use std::collections::BTreeMap;
//! use flotilla_sdk::{AlgorithmName, Direction, ParamSpec, Study, TellOutcome};
//!
//! let space = BTreeMap::from([("x".to_string(), ParamSpec::float(-5.0, 5.0))]);
//! let study = Study::create("quadratic.study", &space, Direction::Minimize, AlgorithmName::Bayesian, Some(7))?;
//! for _ in 0..20 {
//!     let trial = study.ask()?;
//!     let x = trial.params["x"].as_f64().unwrap_or_default();
//!     study.tell(trial.trial, TellOutcome::complete((x - 1.0).powi(2)))?;
//! }
//! println!("{:?}", study.best()?);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_protocol::messages::Params;
use flotilla_protocol::spec::{AlgorithmName, AlgorithmSpec, Direction, ParamSpec, validate_space};
use flotilla_suggest::{TunerSpace, observation};
use flotilla_tuner::{Observation, Outcome};
use serde::{Deserialize, Serialize};

/// How long an operation waits for another writer to release the study.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The algorithms a study can use.
pub const STUDY_SAMPLERS: [AlgorithmName; 4] = [
    AlgorithmName::Bayesian,
    AlgorithmName::Tpe,
    AlgorithmName::Random,
    AlgorithmName::Sobol,
];

#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; a study is created once (use another --db path)")]
    Exists { path: PathBuf },
    #[error("{path} is not a study file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: another process has held the study's lock for {seconds} s")]
    Locked { path: PathBuf, seconds: u64 },
    #[error("invalid search space:\n{}", problems.join("\n"))]
    InvalidSpace { problems: Vec<String> },
    #[error("the sampler '{0}' cannot run a study (use bayesian, tpe, random or sobol)")]
    UnsupportedSampler(String),
    #[error("trial {trial} {problem}")]
    Trial { trial: u32, problem: String },
    #[error("the study has no more points to suggest")]
    Exhausted,
    #[error("warm start from {path}: {problem}")]
    WarmStart { path: PathBuf, problem: String },
    #[error("the study has {0} objectives: no single trial is best (its Pareto front is)")]
    MultiObjective(usize),
}

/// What `tell` reports about a trial.
#[derive(Debug, Clone, PartialEq)]
pub enum TellOutcome {
    /// The objective's value, and each constraint's value (satisfied when `<= 0`).
    Complete {
        value: f64,
        constraints: BTreeMap<String, f64>,
    },
    Failed,
    /// Stopped part way (Optuna's "pruned"): the objective's `value` where it stopped, seen
    /// at `fidelity` ∈ (0, 1], the share of a complete trial's resource it had spent. The
    /// samplers treat it as a lower-fidelity result, and `best` never names it. Single-objective
    /// studies only.
    Pruned {
        value: f64,
        constraints: BTreeMap<String, f64>,
        fidelity: f64,
    },
    /// A multi-objective study's result: each objective's value, in the order of the study's
    /// directions, and each constraint's value.
    Objectives {
        values: Vec<f64>,
        constraints: BTreeMap<String, f64>,
    },
}

impl TellOutcome {
    pub fn complete(value: f64) -> TellOutcome {
        TellOutcome::Complete {
            value,
            constraints: BTreeMap::new(),
        }
    }
}

/// A trial handed out by `ask`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AskedTrial {
    pub trial: u32,
    pub params: Params,
}

/// The best feasible completed trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestTrial {
    pub trial: u32,
    pub value: f64,
    pub params: Params,
}

/// A trial on a multi-objective study's Pareto front.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontTrial {
    pub trial: u32,
    pub values: Vec<f64>,
    pub params: Params,
}

/// One trial of a study as the journal records it.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyTrial {
    pub trial: u32,
    pub params: Params,
    /// `None` while the trial is pending.
    pub outcome: Option<TellOutcome>,
}

/// A journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Entry {
    Create {
        space: BTreeMap<String, ParamSpec>,
        /// The (first) objective's direction.
        direction: Direction,
        /// A multi-objective study's further objectives' directions.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<Direction>,
        sampler: AlgorithmName,
        seed: u64,
        /// Studies whose told trials seed this one (absolute paths).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warm_start: Vec<PathBuf>,
    },
    Ask {
        trial: u32,
        params: Params,
    },
    Tell {
        trial: u32,
        state: TellState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
        /// A multi-objective study's values, in the order of its directions.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        values: Vec<f64>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        constraints: BTreeMap<String, f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fidelity: Option<f64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TellState {
    Complete,
    Failed,
    Pruned,
}

/// The study as loaded from its journal.
struct Loaded {
    space: BTreeMap<String, ParamSpec>,
    /// One per objective.
    directions: Vec<Direction>,
    sampler: AlgorithmName,
    seed: u64,
    warm_start: Vec<PathBuf>,
    trials: Vec<StudyTrial>,
    /// Constraint names in first-told order: the samplers' constraint order.
    constraint_names: Vec<String>,
}

/// A study file. Cheap to hold: every operation re-reads the file under its lock.
#[derive(Debug, Clone)]
pub struct Study {
    path: PathBuf,
}

impl Study {
    /// Creates a study file at `path` (which must not exist). The seed is drawn at random
    /// when `None`, and recorded.
    pub fn create(
        path: impl AsRef<Path>,
        space: &BTreeMap<String, ParamSpec>,
        direction: Direction,
        sampler: AlgorithmName,
        seed: Option<u64>,
    ) -> Result<Study, StudyError> {
        Study::create_warm(path, space, direction, sampler, seed, &[])
    }

    /// A multi-objective study (Optuna's `directions`): one direction per objective; `tell`
    /// takes [`TellOutcome::Objectives`], the sampler searches the Pareto front of the
    /// objectives (ParEGO around it, see `flotilla_tuner::pareto`), and [`Study::front`]
    /// answers with the front. One direction makes a single-objective study.
    pub fn create_multi(
        path: impl AsRef<Path>,
        space: &BTreeMap<String, ParamSpec>,
        directions: &[Direction],
        sampler: AlgorithmName,
        seed: Option<u64>,
        warm_start: &[PathBuf],
    ) -> Result<Study, StudyError> {
        let Some((&direction, also)) = directions.split_first() else {
            return Err(StudyError::InvalidSpace {
                problems: vec!["  a study needs at least one objective direction".into()],
            });
        };
        Study::create_with(
            path,
            space,
            direction,
            also.to_vec(),
            sampler,
            seed,
            warm_start,
        )
    }

    /// [`Study::create`], seeded with the told trials of the studies at `warm_start` (a
    /// warm start): at every `ask` their trials whose parameters lie in this space (by name;
    /// others are left out) join the history as results already in, and count towards a
    /// model-based sampler's initial design. They must optimize in the same direction (a
    /// multi-objective study: the same directions, in order); constraints are matched by name.
    pub fn create_warm(
        path: impl AsRef<Path>,
        space: &BTreeMap<String, ParamSpec>,
        direction: Direction,
        sampler: AlgorithmName,
        seed: Option<u64>,
        warm_start: &[PathBuf],
    ) -> Result<Study, StudyError> {
        Study::create_with(
            path,
            space,
            direction,
            Vec::new(),
            sampler,
            seed,
            warm_start,
        )
    }

    fn create_with(
        path: impl AsRef<Path>,
        space: &BTreeMap<String, ParamSpec>,
        direction: Direction,
        also: Vec<Direction>,
        sampler: AlgorithmName,
        seed: Option<u64>,
        warm_start: &[PathBuf],
    ) -> Result<Study, StudyError> {
        let path = path.as_ref().to_path_buf();
        let directions: Vec<Direction> = std::iter::once(direction).chain(also.clone()).collect();
        let mut sources = Vec::new();
        for source in warm_start {
            let warm = Study::open(source)?;
            let theirs = warm.locked(|_, loaded| Ok(loaded.directions.clone()))?;
            if theirs != directions {
                return Err(StudyError::WarmStart {
                    path: source.clone(),
                    problem: format!(
                        "it optimizes in other directions ({theirs:?}, this study {directions:?})"
                    ),
                });
            }
            sources.push(
                std::fs::canonicalize(source).map_err(|source_error| StudyError::Io {
                    path: source.clone(),
                    source: source_error,
                })?,
            );
        }
        if !STUDY_SAMPLERS.contains(&sampler) {
            return Err(StudyError::UnsupportedSampler(sampler.as_str().into()));
        }
        let mut problems: Vec<String> = validate_space(space, "")
            .into_iter()
            .map(|problem| format!("  {}: {}", problem.path, problem.message))
            .collect();
        if space.is_empty() {
            problems.push("  the space has no parameters".into());
        }
        if !problems.is_empty() {
            return Err(StudyError::InvalidSpace { problems });
        }
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => StudyError::Exists { path: path.clone() },
                _ => StudyError::Io {
                    path: path.clone(),
                    source,
                },
            })?;
        let seed = seed.unwrap_or_else(rand::random);
        let entry = Entry::Create {
            space: space.clone(),
            direction,
            also,
            sampler,
            seed,
            warm_start: sources,
        };
        append(&mut file, &path, &entry)?;
        Ok(Study { path })
    }

    /// Opens an existing study file. Its journal is read (and checked) by each operation,
    /// under the lock, so opening only checks that the file is there.
    pub fn open(path: impl AsRef<Path>) -> Result<Study, StudyError> {
        let path = path.as_ref().to_path_buf();
        std::fs::metadata(&path).map_err(|source| StudyError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Study { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new trial's parameters, chosen by the study's sampler from every trial so far
    /// (trials asked but not told count as pending).
    pub fn ask(&self) -> Result<AskedTrial, StudyError> {
        self.locked(|file, loaded| {
            let space =
                TunerSpace::new(&loaded.space).map_err(|error| StudyError::InvalidSpace {
                    problems: vec![format!("  {error}")],
                })?;
            let trial = loaded.trials.len() as u32;
            let mut history = warm_history(&space, loaded)?;
            let warm = history.len() as u32;
            history.extend(self::history(&space, loaded));
            let algorithm = AlgorithmSpec {
                name: loaded.sampler,
                ..AlgorithmSpec::default()
            };
            let mut sampler = flotilla_suggest::sampler(
                &algorithm,
                &space,
                loaded.seed,
                u64::MAX,
                loaded.directions.len(),
            );
            // Results brought in by a warm start count as trials already run.
            let point = sampler
                .suggest(trial + warm, &history)
                .ok_or(StudyError::Exhausted)?;
            let params = space.params_of(&point);
            append(
                file,
                &self.path,
                &Entry::Ask {
                    trial,
                    params: params.clone(),
                },
            )?;
            Ok(AskedTrial { trial, params })
        })
    }

    /// Records a trial's result. A trial is told once.
    pub fn tell(&self, trial: u32, outcome: TellOutcome) -> Result<(), StudyError> {
        self.locked(|file, loaded| {
            let problem = |problem: &str| StudyError::Trial {
                trial,
                problem: problem.to_string(),
            };
            let known = loaded.trials.get(trial as usize).ok_or_else(|| {
                problem(&format!(
                    "was never asked (the study has {} trials)",
                    loaded.trials.len()
                ))
            })?;
            if known.outcome.is_some() {
                return Err(problem("was already told"));
            }
            let objectives = loaded.directions.len();
            // One value for a single-objective study is a plain complete result.
            let outcome = match outcome {
                TellOutcome::Objectives {
                    values,
                    constraints,
                } if objectives == 1 && values.len() == 1 => TellOutcome::Complete {
                    value: values[0],
                    constraints,
                },
                other => other,
            };
            match &outcome {
                TellOutcome::Complete { .. } | TellOutcome::Pruned { .. } if objectives > 1 => {
                    return Err(problem(&format!(
                        "needs {objectives} values, one per objective (this study has \
                         {objectives}); a multi-objective trial is told complete or failed"
                    )));
                }
                TellOutcome::Objectives { values, .. } if values.len() != objectives => {
                    return Err(problem(&format!(
                        "was told {} values; the study has {objectives} objective{}",
                        values.len(),
                        if objectives == 1 { "" } else { "s" }
                    )));
                }
                _ => {}
            }
            // Every value told must be a number (a crash is told as failed, not as NaN).
            let (told, constraints) = match &outcome {
                TellOutcome::Complete { value, constraints }
                | TellOutcome::Pruned {
                    value, constraints, ..
                } => (std::slice::from_ref(value), Some(constraints)),
                TellOutcome::Objectives {
                    values,
                    constraints,
                } => (values.as_slice(), Some(constraints)),
                TellOutcome::Failed => (&[][..], None),
            };
            if let Some(bad) = told.iter().find(|value| !value.is_finite()) {
                return Err(problem(&format!(
                    "value {bad} is not a finite number (tell it as failed instead)"
                )));
            }
            if let Some((name, bad)) = constraints
                .into_iter()
                .flatten()
                .find(|(_, value)| !value.is_finite())
            {
                return Err(problem(&format!(
                    "constraint {name}={bad} is not a finite number"
                )));
            }
            let entry = match outcome {
                TellOutcome::Complete { value, constraints } => Entry::Tell {
                    trial,
                    state: TellState::Complete,
                    value: Some(value),
                    values: Vec::new(),
                    constraints,
                    fidelity: None,
                },
                TellOutcome::Objectives {
                    values,
                    constraints,
                } => Entry::Tell {
                    trial,
                    state: TellState::Complete,
                    value: None,
                    values,
                    constraints,
                    fidelity: None,
                },
                TellOutcome::Failed => Entry::Tell {
                    trial,
                    state: TellState::Failed,
                    value: None,
                    values: Vec::new(),
                    constraints: BTreeMap::new(),
                    fidelity: None,
                },
                TellOutcome::Pruned {
                    value,
                    constraints,
                    fidelity,
                } => {
                    if !(fidelity > 0.0 && fidelity <= 1.0) {
                        return Err(problem(&format!(
                            "fidelity {fidelity} is not in (0, 1] (the share of a complete \
                             trial's resource it had spent)"
                        )));
                    }
                    Entry::Tell {
                        trial,
                        state: TellState::Pruned,
                        value: Some(value),
                        values: Vec::new(),
                        constraints,
                        fidelity: Some(fidelity),
                    }
                }
            };
            append(file, &self.path, &entry)
        })
    }

    /// The best completed trial that meets every constraint it was told with (of a
    /// single-objective study; a multi-objective study has a [`Study::front`] instead).
    pub fn best(&self) -> Result<Option<BestTrial>, StudyError> {
        self.locked(|_, loaded| {
            let [direction] = loaded.directions[..] else {
                return Err(StudyError::MultiObjective(loaded.directions.len()));
            };
            let mut best: Option<BestTrial> = None;
            for trial in &loaded.trials {
                let Some(TellOutcome::Complete { value, constraints }) = &trial.outcome else {
                    continue;
                };
                if constraints.values().any(|c| *c > 0.0) {
                    continue;
                }
                if best
                    .as_ref()
                    .is_none_or(|incumbent| direction.is_better(*value, incumbent.value))
                {
                    best = Some(BestTrial {
                        trial: trial.trial,
                        value: *value,
                        params: trial.params.clone(),
                    });
                }
            }
            Ok(best)
        })
    }

    /// The Pareto front: the completed trials that meet every constraint they were told with
    /// and that no other such trial dominates (at least as good in every objective, better in
    /// one), in trial order. For a single-objective study, the trials tied for the best.
    pub fn front(&self) -> Result<Vec<FrontTrial>, StudyError> {
        self.locked(|_, loaded| {
            let results: Vec<FrontTrial> = loaded
                .trials
                .iter()
                .filter_map(|trial| {
                    let (values, constraints) = match &trial.outcome {
                        Some(TellOutcome::Complete { value, constraints }) => {
                            (vec![*value], constraints)
                        }
                        Some(TellOutcome::Objectives {
                            values,
                            constraints,
                        }) => (values.clone(), constraints),
                        _ => return None,
                    };
                    constraints.values().all(|c| *c <= 0.0).then(|| FrontTrial {
                        trial: trial.trial,
                        values,
                        params: trial.params.clone(),
                    })
                })
                .collect();
            let losses: Vec<Vec<f64>> = results
                .iter()
                .map(|result| losses(&loaded.directions, &result.values))
                .collect();
            Ok(flotilla_tuner::pareto::nondominated(&losses)
                .into_iter()
                .map(|index| results[index].clone())
                .collect())
        })
    }

    /// The directions of the study's objectives, one per objective.
    pub fn directions(&self) -> Result<Vec<Direction>, StudyError> {
        self.locked(|_, loaded| Ok(loaded.directions.clone()))
    }

    /// Every trial so far.
    pub fn trials(&self) -> Result<Vec<StudyTrial>, StudyError> {
        self.locked(|_, loaded| Ok(loaded.trials.clone()))
    }

    /// Runs `operation` holding the study's exclusive lock, on the freshly loaded journal.
    fn locked<T>(
        &self,
        operation: impl FnOnce(&mut File, &Loaded) -> Result<T, StudyError>,
    ) -> Result<T, StudyError> {
        let io = |source| StudyError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StudyError::Locked {
                        path: self.path.clone(),
                        seconds: LOCK_WAIT.as_secs(),
                    });
                }
                Err(std::fs::TryLockError::Error(error)) => return Err(io(error)),
            }
        }
        let loaded = load(&mut file, &self.path)?;
        let result = operation(&mut file, &loaded);
        let _ = file.unlock();
        result
    }
}

/// `values` as losses (a maximized objective negated).
fn losses(directions: &[Direction], values: &[f64]) -> Vec<f64> {
    values
        .iter()
        .zip(directions)
        .map(|(value, direction)| direction.loss(*value))
        .collect()
}

/// The samplers' view of the study.
fn history(space: &TunerSpace, loaded: &Loaded) -> Vec<Observation> {
    observations(space, loaded, &loaded.constraint_names)
}

/// `loaded`'s trials as observations in `space`, constraints in the order of `names`.
fn observations(space: &TunerSpace, loaded: &Loaded, names: &[String]) -> Vec<Observation> {
    let ordered = |constraints: &BTreeMap<String, f64>| -> Vec<f64> {
        names
            .iter()
            .map(|name| constraints.get(name).copied().unwrap_or(f64::NAN))
            .collect()
    };
    loaded
        .trials
        .iter()
        .filter_map(|trial| {
            let outcome = match &trial.outcome {
                None => Outcome::Pending,
                Some(TellOutcome::Failed) => Outcome::Failed,
                Some(TellOutcome::Complete { value, constraints }) => Outcome::Complete {
                    value: loaded.directions[0].loss(*value),
                    constraints: ordered(constraints),
                },
                Some(TellOutcome::Objectives {
                    values,
                    constraints,
                }) => Outcome::Objectives {
                    values: losses(&loaded.directions, values),
                    constraints: ordered(constraints),
                    fidelity: 1.0,
                },
                Some(TellOutcome::Pruned {
                    value,
                    constraints,
                    fidelity,
                }) => Outcome::Partial {
                    value: loaded.directions[0].loss(*value),
                    constraints: ordered(constraints),
                    fidelity: *fidelity,
                },
            };
            observation(space, &trial.params, outcome)
        })
        .collect::<Vec<Observation>>()
}

/// The told trials of the studies `loaded` warm-starts from that lie in `space`, as results
/// (their pending trials are left out; constraints are matched by this study's names).
fn warm_history(space: &TunerSpace, loaded: &Loaded) -> Result<Vec<Observation>, StudyError> {
    let mut warm = Vec::new();
    for source in &loaded.warm_start {
        let theirs = Study::open(source)
            .and_then(|study| study.locked(|_, theirs| Ok(history_of(space, theirs, loaded))))
            .map_err(|error| StudyError::WarmStart {
                path: source.clone(),
                problem: error.to_string(),
            })?;
        warm.extend(
            theirs
                .into_iter()
                .filter(|observation| observation.outcome != Outcome::Pending),
        );
    }
    Ok(warm)
}

/// `theirs`' trials in `space`, with constraints in `ours`' order.
fn history_of(space: &TunerSpace, theirs: &Loaded, ours: &Loaded) -> Vec<Observation> {
    let mut names = ours.constraint_names.clone();
    for name in &theirs.constraint_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    observations(space, theirs, &names)
}

fn append(file: &mut File, path: &Path, entry: &Entry) -> Result<(), StudyError> {
    let io = |source| StudyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut line = serde_json::to_string(entry).map_err(|error| StudyError::Corrupt {
        path: path.to_path_buf(),
        message: error.to_string(),
    })?;
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_data().map_err(io)
}

fn load(file: &mut File, path: &Path) -> Result<Loaded, StudyError> {
    let corrupt = |line: usize, message: String| StudyError::Corrupt {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text))
        .map_err(|source| StudyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    // A last line without its newline was torn by a crash mid-write: it never happened,
    // and it is cut off so that the next line starts cleanly (the caller holds the lock).
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    if complete.len() < text.len() && !complete.is_empty() {
        file.set_len(complete.len() as u64)
            .map_err(|source| StudyError::Io {
                path: path.to_path_buf(),
                source,
            })?;
    }
    let mut lines = complete.lines().enumerate();
    let Some((_, first)) = lines.next() else {
        return Err(corrupt(1, "empty file (no study definition)".into()));
    };
    let Entry::Create {
        space,
        direction,
        also,
        sampler,
        seed,
        warm_start,
    } = serde_json::from_str(first).map_err(|error| corrupt(1, error.to_string()))?
    else {
        return Err(corrupt(
            1,
            "the first line is not a study definition".into(),
        ));
    };
    let mut loaded = Loaded {
        space,
        directions: std::iter::once(direction).chain(also).collect(),
        sampler,
        seed,
        warm_start,
        trials: Vec::new(),
        constraint_names: Vec::new(),
    };
    for (index, line) in lines {
        let entry: Entry =
            serde_json::from_str(line).map_err(|error| corrupt(index + 1, error.to_string()))?;
        match entry {
            Entry::Create { .. } => {
                return Err(corrupt(index + 1, "a second study definition".into()));
            }
            Entry::Ask { trial, params } => {
                if trial as usize != loaded.trials.len() {
                    return Err(corrupt(
                        index + 1,
                        format!("trial {trial} asked out of order"),
                    ));
                }
                loaded.trials.push(StudyTrial {
                    trial,
                    params,
                    outcome: None,
                });
            }
            Entry::Tell {
                trial,
                state,
                value,
                values,
                constraints,
                fidelity,
            } => {
                for name in constraints.keys() {
                    if !loaded.constraint_names.contains(name) {
                        loaded.constraint_names.push(name.clone());
                    }
                }
                let slot = loaded.trials.get_mut(trial as usize).ok_or_else(|| {
                    corrupt(index + 1, format!("trial {trial} told before it was asked"))
                })?;
                slot.outcome = Some(match (state, value) {
                    (TellState::Complete, Some(value)) => {
                        TellOutcome::Complete { value, constraints }
                    }
                    (TellState::Complete, None) if !values.is_empty() => TellOutcome::Objectives {
                        values,
                        constraints,
                    },
                    (TellState::Complete, None) => {
                        return Err(corrupt(
                            index + 1,
                            "a complete trial without a value".into(),
                        ));
                    }
                    (TellState::Failed, _) => TellOutcome::Failed,
                    (TellState::Pruned, Some(value)) => TellOutcome::Pruned {
                        value,
                        constraints,
                        fidelity: fidelity.unwrap_or(1.0),
                    },
                    (TellState::Pruned, None) => {
                        return Err(corrupt(index + 1, "a pruned trial without a value".into()));
                    }
                });
            }
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::ParamValue;

    fn space() -> BTreeMap<String, ParamSpec> {
        BTreeMap::from([
            ("x".to_string(), ParamSpec::float(-5.0, 5.0)),
            ("n".to_string(), ParamSpec::int(1, 8)),
        ])
    }

    #[test]
    fn ask_tell_best_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.study");
        let study = Study::create(
            &path,
            &space(),
            Direction::Minimize,
            AlgorithmName::Bayesian,
            Some(3),
        )
        .expect("created");
        for _ in 0..30 {
            let trial = study.ask().expect("ask");
            let x = trial.params["x"].as_f64().expect("x");
            let n = trial.params["n"].as_f64().expect("n");
            study
                .tell(
                    trial.trial,
                    TellOutcome::complete((x - 1.0).powi(2) + (n - 3.0).abs()),
                )
                .expect("tell");
        }
        let best = study.best().expect("best").expect("some trial");
        // Minimum 0 at x = 1, n = 3.
        assert!(best.value < 0.1, "{best:?}");
        // Another handle (another process) sees the same study.
        let again = Study::open(&path).expect("open");
        assert_eq!(again.best().expect("best"), Some(best));
        assert_eq!(again.trials().expect("trials").len(), 30);
    }

    #[test]
    fn pruned_trials_are_recorded_checked_and_never_best() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.study");
        let study = Study::create(
            &path,
            &space(),
            Direction::Minimize,
            AlgorithmName::Bayesian,
            Some(2),
        )
        .expect("created");
        let first = study.ask().expect("ask");
        let pruned = |value: f64, fidelity: f64| TellOutcome::Pruned {
            value,
            constraints: BTreeMap::new(),
            fidelity,
        };
        assert!(study.tell(first.trial, pruned(1.0, 0.0)).is_err());
        assert!(study.tell(first.trial, pruned(1.0, 1.5)).is_err());
        assert!(study.tell(first.trial, pruned(f64::NAN, 0.5)).is_err());
        study
            .tell(first.trial, pruned(-100.0, 0.2))
            .expect("tell pruned");
        let second = study.ask().expect("ask");
        study
            .tell(second.trial, TellOutcome::complete(3.0))
            .expect("tell complete");
        // The pruned trial's value is better, but it is not a result: the complete one wins.
        assert_eq!(study.best().expect("best").map(|best| best.trial), Some(1));
        let trials = Study::open(&path).expect("open").trials().expect("trials");
        assert_eq!(trials[0].outcome, Some(pruned(-100.0, 0.2)));
        // The samplers see it as a lower-fidelity result.
        let loaded = study.locked(|_, loaded| {
            let space = TunerSpace::new(&loaded.space).expect("space");
            Ok(history(&space, loaded))
        });
        assert!(matches!(
            loaded.expect("history")[0].outcome,
            Outcome::Partial { fidelity, .. } if fidelity == 0.2
        ));
    }

    #[test]
    fn a_conditional_space_asks_only_for_parameters_that_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let space: BTreeMap<String, ParamSpec> = serde_json::from_str(
            r#"{
                "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
                "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": true},
                "momentum": {"type": "float", "low": 0.0, "high": 0.99,
                             "when": {"optimizer": "sgd"}}
            }"#,
        )
        .expect("space");
        let study = Study::create(
            dir.path().join("conditional.study"),
            &space,
            Direction::Minimize,
            AlgorithmName::Bayesian,
            Some(5),
        )
        .expect("created");
        let mut best = f64::INFINITY;
        for _ in 0..30 {
            let trial = study.ask().expect("ask");
            let lr = trial.params["lr"].as_f64().expect("lr").log10();
            let value = match trial.params["optimizer"] {
                ParamValue::Str(ref name) if name == "sgd" => {
                    let momentum = trial.params["momentum"].as_f64().expect("sgd has momentum");
                    (lr + 1.3).powi(2) + 4.0 * (momentum - 0.9).powi(2)
                }
                _ => {
                    assert!(!trial.params.contains_key("momentum"), "{:?}", trial.params);
                    0.2 + (lr + 3.0).powi(2)
                }
            };
            best = best.min(value);
            study
                .tell(trial.trial, TellOutcome::complete(value))
                .expect("tell");
        }
        assert!(best < 0.1, "best after 30 trials {best}");
        // A condition on an unknown parameter is refused with its path.
        let mut broken = space.clone();
        broken.get_mut("momentum").expect("momentum").when = Some(
            flotilla_protocol::spec::When::new("optimiser", [ParamValue::Str("sgd".into())]),
        );
        let error = Study::create(
            dir.path().join("broken.study"),
            &broken,
            Direction::Minimize,
            AlgorithmName::Bayesian,
            None,
        )
        .expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("momentum.when: unknown parameter 'optimiser'"),
            "{error}"
        );
    }

    #[test]
    fn a_warm_started_study_uses_the_earlier_studys_results_from_its_first_ask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objective = |params: &Params| {
            let x = params["x"].as_f64().expect("x");
            let n = params["n"].as_f64().expect("n");
            (x - 1.0).powi(2) + (n - 3.0).abs()
        };
        let earlier = dir.path().join("earlier.study");
        let study = Study::create(
            &earlier,
            &space(),
            Direction::Minimize,
            AlgorithmName::Bayesian,
            Some(3),
        )
        .expect("created");
        for _ in 0..20 {
            let trial = study.ask().expect("ask");
            study
                .tell(trial.trial, TellOutcome::complete(objective(&trial.params)))
                .expect("tell");
        }
        // The same problem again, cold and warm: the cold study's first trial is its first
        // Sobol point; the warm one's comes from a model of the 20 results it was given.
        let first = |warm: &[PathBuf], name: &str| {
            let study = Study::create_warm(
                dir.path().join(name),
                &space(),
                Direction::Minimize,
                AlgorithmName::Bayesian,
                Some(9),
                warm,
            )
            .expect("created");
            objective(&study.ask().expect("ask").params)
        };
        let cold = first(&[], "cold.study");
        let warm = first(std::slice::from_ref(&earlier), "warm.study");
        assert!(warm < 0.5, "the warm study's first trial scored {warm}");
        assert!(warm < cold, "warm {warm} against cold {cold}");
        // A study that maximizes cannot learn from one that minimizes.
        assert!(matches!(
            Study::create_warm(
                dir.path().join("other.study"),
                &space(),
                Direction::Maximize,
                AlgorithmName::Bayesian,
                None,
                &[earlier],
            ),
            Err(StudyError::WarmStart { .. })
        ));
    }

    /// Two objectives that conflict (Schaffer's problem: x² and (x − 2)², whose front is
    /// x ∈ [0, 2]): the study's suggestions concentrate on the front, `front` answers with
    /// the non-dominated trials, `best` refuses, and tells of the wrong shape are refused.
    #[test]
    fn a_multi_objective_study_searches_and_reports_the_front() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mo.study");
        let space = BTreeMap::from([("x".to_string(), ParamSpec::float(-10.0, 10.0))]);
        let directions = [Direction::Minimize, Direction::Maximize];
        let study = Study::create_multi(
            &path,
            &space,
            &directions,
            AlgorithmName::Bayesian,
            Some(4),
            &[],
        )
        .expect("created");
        assert_eq!(study.directions().expect("directions"), directions);
        let mut on_front = 0;
        for number in 0..30 {
            let trial = study.ask().expect("ask");
            let x = trial.params["x"].as_f64().expect("x");
            if number >= 10 && (0.0..=2.0).contains(&x) {
                on_front += 1;
            }
            // The second objective is maximized: its negation is (x − 2)².
            let values = vec![x * x, -(x - 2.0).powi(2)];
            study
                .tell(
                    trial.trial,
                    TellOutcome::Objectives {
                        values,
                        constraints: BTreeMap::new(),
                    },
                )
                .expect("tell");
        }
        // Random points would land in [0, 2] one time in ten.
        assert!(
            on_front >= 12,
            "{on_front} of 20 modelled suggestions on the front"
        );
        let front = study.front().expect("front");
        assert!(front.len() >= 5, "{front:?}");
        // Near the true front: a point just outside [0, 2] is non-dominated among the results
        // until one closer to its end of the front comes.
        for trial in &front {
            let x = trial.params["x"].as_f64().expect("x");
            assert!((-0.2..=2.2).contains(&x), "{trial:?}");
        }
        assert!(matches!(study.best(), Err(StudyError::MultiObjective(2))));

        let trial = study.ask().expect("ask");
        let one = study.tell(trial.trial, TellOutcome::complete(1.0));
        assert!(
            one.expect_err("one value")
                .to_string()
                .contains("needs 2 values")
        );
        let three = study.tell(
            trial.trial,
            TellOutcome::Objectives {
                values: vec![1.0, 2.0, 3.0],
                constraints: BTreeMap::new(),
            },
        );
        assert!(
            three
                .expect_err("three")
                .to_string()
                .contains("was told 3 values")
        );
        let pruned = study.tell(
            trial.trial,
            TellOutcome::Pruned {
                value: 1.0,
                constraints: BTreeMap::new(),
                fidelity: 0.5,
            },
        );
        assert!(
            pruned
                .expect_err("pruned")
                .to_string()
                .contains("needs 2 values")
        );
        // The journal reads back as it was written.
        let again = Study::open(&path).expect("open");
        assert_eq!(again.front().expect("front"), front);
    }

    #[test]
    fn bad_tells_and_torn_lines_are_reported_or_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.study");
        let study = Study::create(
            &path,
            &space(),
            Direction::Maximize,
            AlgorithmName::Random,
            Some(1),
        )
        .expect("created");
        let first = study.ask().expect("ask");
        assert!(matches!(
            study.tell(5, TellOutcome::complete(1.0)),
            Err(StudyError::Trial { trial: 5, .. })
        ));
        assert!(
            study
                .tell(first.trial, TellOutcome::complete(f64::NAN))
                .is_err()
        );
        study
            .tell(first.trial, TellOutcome::Failed)
            .expect("tell failed");
        assert!(
            study.tell(first.trial, TellOutcome::complete(1.0)).is_err(),
            "told twice"
        );
        // A crash in the middle of an append leaves a torn line: it is ignored.
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"type":"ask","trial":1,"par"#)
            .expect("write");
        drop(file);
        assert_eq!(study.trials().expect("trials").len(), 1);
        let second = study.ask().expect("ask after a torn line");
        assert_eq!(second.trial, 1);
        assert_eq!(study.trials().expect("trials").len(), 2);
        assert!(matches!(
            Study::create(
                &path,
                &space(),
                Direction::Minimize,
                AlgorithmName::Random,
                None
            ),
            Err(StudyError::Exists { .. })
        ));
        let bad = BTreeMap::from([("x".to_string(), ParamSpec::float(5.0, -5.0))]);
        let error = Study::create(
            dir.path().join("b"),
            &bad,
            Direction::Minimize,
            AlgorithmName::Tpe,
            None,
        )
        .expect_err("invalid");
        assert!(error.to_string().contains("x"), "{error}");
    }
}
