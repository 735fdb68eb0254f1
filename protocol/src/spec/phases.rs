//! `[[phases]]`: a sweep in phases, each with its space and budget, and the sweep seen as
//! its phases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AlgorithmSpec, ParamSpec, SweepSpec, check_algorithm};

/// One phase of a multi-phase sweep. The objective, constraints, trial, resources, retries
/// and early stopping are the sweep's; the phase brings its space and its budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// Shown in progress, leaderboards and reports.
    pub name: String,
    /// What this phase searches. A parameter an earlier phase fixed may be searched again
    /// (e.g. a finer learning-rate range); the phase's value then replaces the fixed one.
    #[serde(default)]
    pub space: BTreeMap<String, ParamSpec>,
    /// The phase's algorithm; the sweep's `[algorithm]` when absent.
    #[serde(default)]
    pub algorithm: Option<AlgorithmSpec>,
    pub max_trials: u32,
    /// Trials of this phase running at once; the sweep's `budget.max_parallel` when absent.
    #[serde(default)]
    pub max_parallel: Option<u32>,
}

/// A phase with the sweep's defaults filled in; a single-phase sweep is one of these.
#[derive(Debug, Clone, Copy)]
pub struct Phase<'a> {
    pub name: &'a str,
    pub space: &'a BTreeMap<String, ParamSpec>,
    pub algorithm: &'a AlgorithmSpec,
    pub max_trials: u32,
    pub max_parallel: u32,
}

impl SweepSpec {
    /// A phased sweep's phases: named once each, each searching something within a budget.
    pub(super) fn check_phases(&self, problem: &mut impl FnMut(&str, String)) {
        if self.phases.is_empty() && self.space.is_empty() {
            problem(
                "space",
                "the search space is empty; define at least one parameter".into(),
            );
        }
        if !self.phases.is_empty() {
            if !self.space.is_empty() {
                problem(
                    "space",
                    "a phased sweep declares its parameters per phase (phases[N].space), not here"
                        .into(),
                );
            }
            if self.budget.max_trials != 0 {
                problem(
                    "budget.max_trials",
                    "a phased sweep sets max_trials per phase (phases[N].max_trials)".into(),
                );
            }
        }
        for (index, phase) in self.phases.iter().enumerate() {
            let path = format!("phases[{index}]");
            if phase.name.trim().is_empty() {
                problem(&format!("{path}.name"), "must not be empty".into());
            } else if self.phases[..index]
                .iter()
                .any(|earlier| earlier.name == phase.name)
            {
                problem(
                    &format!("{path}.name"),
                    format!("'{}' names an earlier phase too", phase.name),
                );
            }
            if phase.space.is_empty() {
                problem(
                    &format!("{path}.space"),
                    "the phase searches nothing; define at least one parameter".into(),
                );
            }
            if phase.max_trials == 0 {
                problem(&format!("{path}.max_trials"), "must be at least 1".into());
            }
            if phase.max_parallel == Some(0) {
                problem(&format!("{path}.max_parallel"), "must be at least 1".into());
            }
            if let Some(algorithm) = &phase.algorithm {
                check_algorithm(algorithm, &format!("{path}.algorithm"), &mut *problem);
            }
        }
    }

    /// The sweep's phases with its defaults filled in: one per `[[phases]]` entry, or the
    /// whole sweep as a single phase named after it.
    pub fn phases(&self) -> Vec<Phase<'_>> {
        if self.phases.is_empty() {
            return vec![Phase {
                name: &self.name,
                space: &self.space,
                algorithm: &self.algorithm,
                max_trials: self.budget.max_trials,
                max_parallel: self.budget.max_parallel,
            }];
        }
        self.phases
            .iter()
            .map(|phase| Phase {
                name: &phase.name,
                space: &phase.space,
                algorithm: phase.algorithm.as_ref().unwrap_or(&self.algorithm),
                max_trials: phase.max_trials,
                max_parallel: phase.max_parallel.unwrap_or(self.budget.max_parallel),
            })
            .collect()
    }

    /// Every searched space with the path prefix its problems are reported under.
    pub(super) fn spaces(&self) -> Vec<(String, &BTreeMap<String, ParamSpec>)> {
        if self.phases.is_empty() {
            return vec![("space.".to_string(), &self.space)];
        }
        self.phases
            .iter()
            .enumerate()
            .map(|(index, phase)| (format!("phases[{index}].space."), &phase.space))
            .collect()
    }

    /// Whether some phase searches the parameter `name`.
    pub fn is_searched(&self, name: &str) -> bool {
        self.spaces()
            .iter()
            .any(|(_, space)| space.contains_key(name))
    }

    /// Whether some phase's parameter `name` has a condition.
    pub fn is_conditional(&self, name: &str) -> bool {
        self.spaces()
            .iter()
            .any(|(_, space)| space.get(name).is_some_and(|param| param.when.is_some()))
    }
}
