//! Identifiers carried on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A sweep, numbered by the coordinator in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SweepId(pub u64);

/// One trial of a sweep: a point of the search space, run until it has a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrialId {
    pub sweep: SweepId,
    /// Position of the trial in its sweep, from 0.
    pub number: u32,
}

/// One attempt at running a trial. A trial that is re-placed (agent lost, crash retry)
/// gets a new attempt number; messages about older attempts are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptId {
    pub trial: TrialId,
    pub attempt: u32,
}

/// The leader's term. Every coordinator command carries it; agents refuse commands from
/// an epoch older than the newest they have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Epoch(pub u64);

/// An agent's stable name; it survives reconnects so the coordinator can match the agent's
/// running trials to their assignments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentId(pub String);

impl fmt::Display for SweepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl FromStr for SweepId {
    type Err = String;

    /// Accepts `s12` (as printed) or a bare `12`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text.strip_prefix('s').unwrap_or(text);
        digits
            .parse::<u64>()
            .map(SweepId)
            .map_err(|_| format!("'{text}' is not a sweep id (expected something like s3 or 3)"))
    }
}

impl fmt::Display for TrialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-t{}", self.sweep, self.number)
    }
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.trial, self.attempt)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_id_parses_both_forms_and_rejects_garbage() {
        assert_eq!("s12".parse::<SweepId>(), Ok(SweepId(12)));
        assert_eq!("7".parse::<SweepId>(), Ok(SweepId(7)));
        assert!("sx".parse::<SweepId>().is_err());
        assert!("".parse::<SweepId>().is_err());
    }

    #[test]
    fn ids_display_compactly() {
        let attempt = AttemptId {
            trial: TrialId {
                sweep: SweepId(3),
                number: 14,
            },
            attempt: 2,
        };
        assert_eq!(attempt.to_string(), "s3-t14#2");
    }
}
