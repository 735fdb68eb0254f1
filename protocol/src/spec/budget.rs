//! `[budget]`: how many trials, how many at once, and for how long.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Trials to run; a phased sweep sets this per phase instead (left 0 here).
    #[serde(default)]
    pub max_trials: u32,
    /// Trials of this sweep running at once.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// Wall-clock budget: when it is spent, running trials are stopped and the sweep ends.
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
}

fn default_max_parallel() -> u32 {
    4
}

impl Budget {
    /// `phased`: a phased sweep's trials are counted per phase.
    pub(super) fn check(&self, unphased: bool, problem: &mut impl FnMut(&str, String)) {
        if unphased && self.max_trials == 0 {
            problem("budget.max_trials", "must be at least 1".into());
        }
        if self.max_parallel == 0 {
            problem("budget.max_parallel", "must be at least 1".into());
        }
        if self.max_duration == Some(Duration::ZERO) {
            problem("budget.max_duration", "must be longer than zero".into());
        }
    }
}
