//! `[scheduling]`: the sweep's share of the cluster and the team it counts for.

use serde::{Deserialize, Serialize};

/// `[scheduling]`: the sweep's part of the cluster when sweeps compete for slots.
///
/// Sweeps share slots and GPUs by weighted dominant-resource fairness: while several have
/// trials queued, each holds slots (or GPUs, for GPU trials) in proportion to its weight.
/// A sweep without a team weighs its `share`. A team's sweeps together weigh the team's
/// share (`flotilla coordinator --team-share NAME=WEIGHT`, 1 when not given) and divide it
/// by their own `share`s, so a team that submits ten sweeps does not get ten times the
/// cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    /// The sweep's weight: 2 holds twice the slots of 1 while both have trials queued.
    #[serde(default = "default_share")]
    pub share: f64,
    /// The team the sweep counts for (letters, digits, `-`, `_` and `.`; at most 63).
    #[serde(default)]
    pub team: Option<String>,
}

impl Default for Scheduling {
    fn default() -> Self {
        Scheduling {
            share: default_share(),
            team: None,
        }
    }
}

fn default_share() -> f64 {
    1.0
}

/// The largest `scheduling.share` (and team share): weights further apart than this are
/// more likely a typo than a policy.
pub const MAX_SHARE: f64 = 1000.0;

/// Whether `name` may name a team: 1 to 63 letters, digits, `-`, `_` or `.`.
pub fn valid_team_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Scheduling {
    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        let share = self.share;
        if !share.is_finite() || share <= 0.0 || share > MAX_SHARE {
            problem(
                "scheduling.share",
                format!("must be a number above 0 and at most {MAX_SHARE}, not {share}"),
            );
        }
        if let Some(team) = &self.team
            && !valid_team_name(team)
        {
            problem(
                "scheduling.team",
                format!("{team:?} is not a team name: 1 to 63 letters, digits, '-', '_' or '.'"),
            );
        }
    }
}
