//! Which trial wins: pure rules over trial records.

use flotilla_protocol::messages::{TrialRecord, TrialState};
use flotilla_protocol::spec::Direction;

/// The best succeeded, feasible trial with an objective value; ties go to the earlier trial.
pub fn best_trial<'a>(
    trials: impl IntoIterator<Item = &'a TrialRecord>,
    direction: Direction,
) -> Option<&'a TrialRecord> {
    let mut best: Option<&TrialRecord> = None;
    for trial in trials {
        if trial.state != TrialState::Succeeded || !trial.feasible {
            continue;
        }
        let Some(value) = trial.objective.filter(|value| value.is_finite()) else {
            continue;
        };
        let better = match best.and_then(|incumbent| incumbent.objective) {
            None => true,
            Some(incumbent) => direction.is_better(value, incumbent),
        };
        if better {
            best = Some(trial);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_protocol::{SweepId, TrialId};

    use super::*;

    fn record(
        number: u32,
        state: TrialState,
        objective: Option<f64>,
        feasible: bool,
    ) -> TrialRecord {
        TrialRecord {
            state,
            objective,
            feasible,
            ..TrialRecord::pending(
                TrialId {
                    sweep: SweepId(1),
                    number,
                },
                BTreeMap::new(),
                0,
            )
        }
    }

    #[test]
    fn best_respects_direction_feasibility_and_state() {
        let trials = vec![
            record(0, TrialState::Succeeded, Some(0.5), true),
            record(1, TrialState::Succeeded, Some(0.1), false),
            record(2, TrialState::Failed, Some(0.0), true),
            record(3, TrialState::Succeeded, Some(0.3), true),
            record(4, TrialState::Succeeded, None, true),
            record(5, TrialState::Succeeded, Some(f64::NAN), true),
            record(6, TrialState::Succeeded, Some(0.3), true),
        ];
        assert_eq!(
            best_trial(&trials, Direction::Minimize).map(|t| t.id.number),
            Some(3)
        );
        assert_eq!(
            best_trial(&trials, Direction::Maximize).map(|t| t.id.number),
            Some(0)
        );
        assert!(best_trial(&trials[1..3], Direction::Minimize).is_none());
    }
}
