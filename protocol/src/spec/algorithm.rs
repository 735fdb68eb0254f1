//! `[algorithm]`: the sampler that suggests each trial's parameters, and its options.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a sweep chooses its trials' parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmName {
    /// Independent uniform draws (log-uniform on log dimensions).
    Random,
    /// Every combination of a grid over the space.
    Grid,
    /// Gaussian-process Bayesian optimization with log expected improvement, constraint
    /// models and a Sobol initial design.
    #[default]
    Bayesian,
    /// Multivariate Tree-structured Parzen Estimator.
    Tpe,
    /// Scrambled Sobol points: an even, model-free design.
    Sobol,
}

impl AlgorithmName {
    pub const ALL: [AlgorithmName; 5] = [
        AlgorithmName::Bayesian,
        AlgorithmName::Tpe,
        AlgorithmName::Random,
        AlgorithmName::Sobol,
        AlgorithmName::Grid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlgorithmName::Random => "random",
            AlgorithmName::Grid => "grid",
            AlgorithmName::Bayesian => "bayesian",
            AlgorithmName::Tpe => "tpe",
            AlgorithmName::Sobol => "sobol",
        }
    }
}

impl FromStr for AlgorithmName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AlgorithmName::ALL
            .into_iter()
            .find(|name| name.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = AlgorithmName::ALL.iter().map(|n| n.as_str()).collect();
                format!("unknown algorithm '{text}' (known: {})", known.join(", "))
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmSpec {
    #[serde(default)]
    pub name: AlgorithmName,
    /// Seed for reproducible suggestions; chosen at submission when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Grid only: points per float dimension (default 5).
    #[serde(default)]
    pub grid_points: Option<u32>,
    /// Bayesian and TPE: trials taken from a Sobol design before the model is used
    /// (default 10).
    #[serde(default)]
    pub initial_trials: Option<u32>,
}

/// Problems with an algorithm's options, reported under `path` (`algorithm`,
/// `phases[1].algorithm`).
pub(super) fn check_algorithm(
    algorithm: &AlgorithmSpec,
    path: &str,
    problem: &mut impl FnMut(&str, String),
) {
    if algorithm.name == AlgorithmName::Grid && algorithm.grid_points == Some(0) {
        problem(&format!("{path}.grid_points"), "must be at least 1".into());
    }
    if algorithm.grid_points.is_some() && algorithm.name != AlgorithmName::Grid {
        problem(
            &format!("{path}.grid_points"),
            format!(
                "applies to the grid algorithm only, not '{}'",
                algorithm.name.as_str()
            ),
        );
    }
    if algorithm.initial_trials.is_some()
        && !matches!(algorithm.name, AlgorithmName::Bayesian | AlgorithmName::Tpe)
    {
        problem(
            &format!("{path}.initial_trials"),
            format!(
                "applies to the bayesian and tpe algorithms only, not '{}'",
                algorithm.name.as_str()
            ),
        );
    }
}
