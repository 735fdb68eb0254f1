//! Run logs: what the trials of a logged sweep wrote when they started and ended, and the
//! checks made on them.

use std::path::Path;

/// One line of a logged sweep's run log.
#[derive(Debug, Clone)]
pub struct RunEvent {
    pub start: bool,
    pub trial: String,
    pub attempt: u32,
    /// Missing when the trial was stopped while taking the time.
    pub at_ns: Option<u128>,
}

/// Reads `<name>.runs`.
pub fn run_events(path: &Path) -> Vec<RunEvent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let start = match words.next()? {
                "start" => true,
                "end" => false,
                _ => return None,
            };
            Some(RunEvent {
                start,
                trial: words.next()?.to_string(),
                attempt: words.next()?.parse().ok()?,
                // A trial stopped while logging its start loses the `date` it was running.
                at_ns: words.next().and_then(|word| word.parse().ok()),
            })
        })
        .collect()
}

/// Panics if two attempts of one trial were running at the same time, or an attempt started
/// but never ended.
pub fn assert_no_trial_ran_twice_at_once(events: &[RunEvent]) {
    type Interval = (Option<Option<u128>>, Option<Option<u128>>);
    let mut intervals: std::collections::BTreeMap<(String, u32), Interval> = Default::default();
    for event in events {
        let entry = intervals
            .entry((event.trial.clone(), event.attempt))
            .or_default();
        if event.start {
            assert!(
                entry.0.is_none(),
                "attempt {}#{} started twice",
                event.trial,
                event.attempt
            );
            entry.0 = Some(event.at_ns);
        } else {
            entry.1 = Some(event.at_ns);
        }
    }
    let mut by_trial: std::collections::BTreeMap<String, Vec<(u128, u128, u32)>> =
        Default::default();
    for ((trial, attempt), (start, end)) in intervals {
        let start =
            start.unwrap_or_else(|| panic!("attempt {trial}#{attempt} ended without starting"));
        let end = end
            .unwrap_or_else(|| panic!("attempt {trial}#{attempt} never ended"))
            .unwrap_or_else(|| panic!("attempt {trial}#{attempt} ended without a time"));
        // Stopped while logging its start: it ran no longer than until its end.
        let start = start.unwrap_or(end);
        by_trial
            .entry(trial)
            .or_default()
            .push((start, end, attempt));
    }
    for (trial, mut runs) in by_trial {
        runs.sort();
        for pair in runs.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "trial {trial}: attempt {} started before attempt {} ended",
                pair[1].2,
                pair[0].2
            );
        }
    }
}
