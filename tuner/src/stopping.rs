//! Early stopping: asynchronous successive halving (ASHA) and the median stopping rule.
//!
//! Both are pure bookkeeping over intermediate results: `(trial, resource, value)` where the
//! resource is what a trial spends (epochs, steps) and the value is the objective to
//! **minimize** at that point. The coordinator's Sweep actor feeds them the metric points its
//! trials report and acts on their decisions.
//!
//! **ASHA** (Li et al., *A System for Massively Parallel Hyperparameter Tuning*, MLSys 2020):
//! rungs at `min_resource · ηᵏ` up to `max_resource`. In the *stopping* form a trial that
//! reaches a rung continues only if its value is in the best `1/η` of the values recorded at
//! that rung so far; otherwise it stops at once and frees its slot. In the *promotion* form
//! every trial pauses at its next rung and a free slot first goes to a paused trial in the
//! best `1/η` of its rung (highest rung first), which resumes from its checkpoint up to the
//! next rung; only when nothing is promotable does a new trial start.
//!
//! **Hyperband** (Li et al., *Hyperband*, JMLR 2018), in its asynchronous form (the ASHA
//! paper's §3.3): ASHA bets that early results predict final ones, and is wrong for
//! configurations that learn slowly. Hyperband hedges over that bet with brackets of
//! different aggressiveness: bracket `b` runs ASHA with its first rung at
//! `min_resource · ηᵇ`, from bracket 0 (plain ASHA) to the last, which has no rung and runs
//! every trial to `max_resource`. Trials are dealt to brackets in Hyperband's proportions,
//! `nᵦ = ⌈(K+1)/(K+1−b) · η^(K−b)⌉` with `K` the number of ASHA rungs (each bracket
//! spends about the same resource), in a fixed interleaved order by trial number, so the
//! deal survives a restart.
//!
//! **Median stopping rule** (Golovin et al., *Google Vizier*, KDD 2017): after a grace
//! resource, a trial stops if its best value so far is worse than the median of the other
//! trials' running averages up to the same resource.

use std::collections::{BTreeMap, BTreeSet};

/// Rungs of an ASHA bracket.
#[derive(Debug, Clone, PartialEq)]
pub struct AshaSettings {
    /// Resource of the first rung (the grace period): no trial stops before it.
    pub min_resource: f64,
    /// Resource of a complete trial; no rung lies at or beyond it.
    pub max_resource: f64,
    /// η: one trial in η continues past each rung.
    pub reduction_factor: f64,
}

/// What a trial should do after reporting.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Continue,
    /// Stop now; the reason is meant for people.
    Stop(String),
}

#[derive(Debug, Clone)]
pub struct Asha {
    settings: AshaSettings,
    rungs: Vec<f64>,
    /// Per rung: trial → the value it had when it reached the rung.
    recorded: Vec<BTreeMap<u32, f64>>,
    /// Per rung: trials promoted out of it (promotion form).
    promoted: Vec<BTreeSet<u32>>,
}

impl Asha {
    /// `None` when the settings do not make rungs (η ≤ 1, or resources not positive and
    /// increasing).
    pub fn new(settings: AshaSettings) -> Option<Asha> {
        let valid = settings.reduction_factor > 1.0
            && settings.min_resource > 0.0
            && settings.max_resource > settings.min_resource
            && settings.max_resource.is_finite();
        if !valid {
            return None;
        }
        let mut rungs = Vec::new();
        let mut resource = settings.min_resource;
        while resource < settings.max_resource * (1.0 - 1e-9) {
            rungs.push(resource);
            resource *= settings.reduction_factor;
        }
        Some(Asha {
            recorded: vec![BTreeMap::new(); rungs.len()],
            promoted: vec![BTreeSet::new(); rungs.len()],
            rungs,
            settings,
        })
    }

    pub fn rungs(&self) -> &[f64] {
        &self.rungs
    }

    pub fn settings(&self) -> &AshaSettings {
        &self.settings
    }

    /// The values recorded at rung `rung`, by trial.
    pub fn recorded(&self, rung: usize) -> &BTreeMap<u32, f64> {
        &self.recorded[rung]
    }

    /// The highest rung at or below `resource`, if any.
    pub fn rung_at(&self, resource: f64) -> Option<usize> {
        self.rungs
            .iter()
            .rposition(|rung| resource >= rung * (1.0 - 1e-9))
    }

    /// Stopping form: `trial` reports `value` at `resource`. Each rung records a trial once,
    /// the first time the trial reaches it; the decision compares the value with the best
    /// `1/η` recorded there (the trial itself included), so the first trials to reach a rung
    /// continue and later ones must beat them.
    pub fn report(&mut self, trial: u32, resource: f64, value: f64) -> Decision {
        let Some(top) = self.rung_at(resource) else {
            return Decision::Continue;
        };
        let mut decision = Decision::Continue;
        for rung in 0..=top {
            if self.recorded[rung].contains_key(&trial) {
                continue;
            }
            let value = if value.is_finite() {
                value
            } else {
                f64::INFINITY
            };
            self.recorded[rung].insert(trial, value);
            if decision == Decision::Continue {
                let cutoff = self.cutoff(rung);
                if value > cutoff {
                    decision = Decision::Stop(format!(
                        "ASHA rung {rung} (resource {}): {} is outside the best 1/{} ({} of {} trials, cutoff {})",
                        self.rungs[rung],
                        value,
                        self.settings.reduction_factor,
                        self.keep(rung),
                        self.recorded[rung].len(),
                        cutoff
                    ));
                }
            }
        }
        decision
    }

    /// How many of a rung's trials are in its best `1/η` (at least one).
    fn keep(&self, rung: usize) -> usize {
        ((self.recorded[rung].len() as f64 / self.settings.reduction_factor).floor() as usize)
            .max(1)
    }

    /// The worst value still in the best `1/η` of rung `rung`.
    fn cutoff(&self, rung: usize) -> f64 {
        let mut values: Vec<f64> = self.recorded[rung].values().copied().collect();
        values.sort_by(f64::total_cmp);
        values[self.keep(rung) - 1]
    }

    /// Promotion form: records that `trial` paused at rung `rung` with `value`.
    pub fn paused(&mut self, trial: u32, rung: usize, value: f64) {
        if rung < self.rungs.len() {
            let value = if value.is_finite() {
                value
            } else {
                f64::INFINITY
            };
            self.recorded[rung].insert(trial, value);
        }
    }

    /// Promotion form: records that `trial` was promoted out of rung `rung` (rebuilding the
    /// bookkeeping after a restart).
    pub fn mark_promoted(&mut self, trial: u32, rung: usize) {
        if let Some(promoted) = self.promoted.get_mut(rung) {
            promoted.insert(trial);
        }
    }

    /// Promotion form: the paused trial to resume next — from the highest rung down, the best
    /// trial in the top `⌊n/η⌋` of its rung that has not been promoted — and the rung it is
    /// promoted to (a rung index, or `rungs().len()` for the full resource). The promotion is
    /// recorded. `None`: start a new trial instead.
    pub fn promote(&mut self) -> Option<(u32, usize)> {
        for rung in (0..self.rungs.len()).rev() {
            let keep = (self.recorded[rung].len() as f64 / self.settings.reduction_factor).floor()
                as usize;
            let mut ranked: Vec<(u32, f64)> =
                self.recorded[rung].iter().map(|(t, v)| (*t, *v)).collect();
            ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            if let Some((trial, _)) = ranked
                .into_iter()
                .take(keep)
                .find(|(trial, _)| !self.promoted[rung].contains(trial))
            {
                self.promoted[rung].insert(trial);
                return Some((trial, rung + 1));
            }
        }
        None
    }

    /// The resource a trial promoted to `rung` runs up to.
    pub fn resource_of(&self, rung: usize) -> f64 {
        self.rungs
            .get(rung)
            .copied()
            .unwrap_or(self.settings.max_resource)
    }
}

/// Asynchronous Hyperband: ASHA brackets of decreasing aggressiveness, trials dealt to them
/// by number.
#[derive(Debug, Clone)]
pub struct Hyperband {
    /// Bracket `b`'s ASHA; `None` for the last bracket, which stops nothing.
    brackets: Vec<Option<Asha>>,
    /// Bracket of each position in the deal; trial `t` goes to `deal[t % deal.len()]`.
    deal: Vec<usize>,
}

impl Hyperband {
    /// `None` when the settings do not make rungs (as for [`Asha::new`]).
    pub fn new(settings: AshaSettings) -> Option<Hyperband> {
        let rungs = Asha::new(settings.clone())?.rungs().len();
        let eta = settings.reduction_factor;
        let brackets: Vec<Option<Asha>> = (0..=rungs)
            .map(|bracket| {
                Asha::new(AshaSettings {
                    min_resource: settings.min_resource * eta.powi(bracket as i32),
                    ..settings.clone()
                })
            })
            .collect();
        let k = rungs as f64;
        let sizes: Vec<usize> = (0..=rungs)
            .map(|b| {
                let b = b as f64;
                ((k + 1.0) / (k + 1.0 - b) * eta.powf(k - b))
                    .ceil()
                    .max(1.0) as usize
            })
            .collect();
        // Interleave: bracket b's i-th trial sits at (i + ½)/nᵦ of the way through the deal.
        let mut slots: Vec<(f64, usize)> = sizes
            .iter()
            .enumerate()
            .flat_map(|(bracket, &n)| (0..n).map(move |i| ((i as f64 + 0.5) / n as f64, bracket)))
            .collect();
        slots.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        Some(Hyperband {
            brackets,
            deal: slots.into_iter().map(|(_, bracket)| bracket).collect(),
        })
    }

    /// The bracket trial `trial` is in (0: the most aggressive).
    pub fn bracket_of(&self, trial: u32) -> usize {
        self.deal[trial as usize % self.deal.len()]
    }

    /// How many brackets there are.
    pub fn brackets(&self) -> usize {
        self.brackets.len()
    }

    /// `trial` reports `value` at `resource`: its bracket's ASHA decides.
    pub fn report(&mut self, trial: u32, resource: f64, value: f64) -> Decision {
        let bracket = self.bracket_of(trial);
        match &mut self.brackets[bracket] {
            Some(asha) => match asha.report(trial, resource, value) {
                Decision::Stop(reason) => {
                    Decision::Stop(format!("Hyperband bracket {bracket}: {reason}"))
                }
                Decision::Continue => Decision::Continue,
            },
            None => Decision::Continue,
        }
    }
}

/// The median stopping rule over every trial's reports.
#[derive(Debug, Clone)]
pub struct MedianRule {
    /// No trial stops before this resource.
    pub grace: f64,
    /// Other trials needed (with reports up to the resource) before the rule applies.
    pub min_trials: usize,
    /// Each trial's reports.
    history: BTreeMap<u32, Series>,
}

/// One trial's reports, sorted by resource, with prefix sums so that a running average up
/// to any resource is a binary search (a report costs O(trials · log reports), not a scan of
/// every report ever made).
#[derive(Debug, Clone, Default)]
struct Series {
    /// `(resource, value)`, ordered by resource (ties in report order).
    reports: Vec<(f64, f64)>,
    /// `prefix[i]`: the sum of the first `i + 1` values.
    prefix: Vec<f64>,
    best: f64,
}

impl Series {
    fn push(&mut self, resource: f64, value: f64) {
        if self.reports.is_empty() {
            self.best = f64::INFINITY;
        }
        self.best = self.best.min(value);
        // Reports normally arrive in resource order (append); a retried attempt may report
        // smaller resources again, which are inserted and the sums redone from there.
        let at = self.reports.partition_point(|(r, _)| *r <= resource);
        self.reports.insert(at, (resource, value));
        self.prefix.truncate(at);
        for index in at..self.reports.len() {
            let before = if index == 0 {
                0.0
            } else {
                self.prefix[index - 1]
            };
            self.prefix.push(before + self.reports[index].1);
        }
    }

    /// The average of the values reported at or below `resource`, if the trial got at least
    /// as far as `resource`.
    fn running_average(&self, resource: f64) -> Option<f64> {
        if self.reports.last()?.0 < resource {
            return None;
        }
        let count = self.reports.partition_point(|(r, _)| *r <= resource);
        (count > 0).then(|| self.prefix[count - 1] / count as f64)
    }
}

impl MedianRule {
    pub fn new(grace: f64, min_trials: usize) -> MedianRule {
        MedianRule {
            grace,
            min_trials: min_trials.max(1),
            history: BTreeMap::new(),
        }
    }

    /// Records a report and decides.
    pub fn report(&mut self, trial: u32, resource: f64, value: f64) -> Decision {
        let value = if value.is_finite() {
            value
        } else {
            f64::INFINITY
        };
        let series = self.history.entry(trial).or_default();
        series.push(resource, value);
        let best = series.best;
        if resource < self.grace {
            return Decision::Continue;
        }
        let mut averages: Vec<f64> = self
            .history
            .iter()
            .filter(|(other, _)| **other != trial)
            .filter_map(|(_, series)| series.running_average(resource))
            .collect();
        if averages.len() < self.min_trials {
            return Decision::Continue;
        }
        averages.sort_by(f64::total_cmp);
        let middle = averages.len() / 2;
        let median = if averages.len().is_multiple_of(2) {
            0.5 * (averages[middle - 1] + averages[middle])
        } else {
            averages[middle]
        };
        if best > median {
            Decision::Stop(format!(
                "median rule at resource {resource}: best {best} is worse than the median {median} of {} trials' running averages",
                averages.len()
            ))
        } else {
            Decision::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asha() -> Asha {
        Asha::new(AshaSettings {
            min_resource: 1.0,
            max_resource: 27.0,
            reduction_factor: 3.0,
        })
        .expect("valid")
    }

    fn hyperband() -> Hyperband {
        Hyperband::new(AshaSettings {
            min_resource: 1.0,
            max_resource: 27.0,
            reduction_factor: 3.0,
        })
        .expect("valid")
    }

    #[test]
    fn hyperband_deals_trials_to_brackets_in_its_proportions() {
        let hyperband = hyperband();
        assert_eq!(hyperband.brackets(), 4);
        // Li et al.'s brackets for R = 27, η = 3: 27, 12, 6 and 4 configurations.
        let mut counts = [0; 4];
        for trial in 0..49 {
            counts[hyperband.bracket_of(trial)] += 1;
        }
        assert_eq!(counts, [27, 12, 6, 4]);
        // Interleaved: every bracket appears early, not after all of bracket 0.
        let first: std::collections::BTreeSet<usize> =
            (0..12).map(|trial| hyperband.bracket_of(trial)).collect();
        assert_eq!(first.len(), 4, "{first:?}");
        // The deal repeats, so it is the same after a restart.
        assert_eq!(hyperband.bracket_of(3), hyperband.bracket_of(3 + 49));
    }

    #[test]
    fn each_hyperband_bracket_judges_only_from_its_own_first_rung() {
        let mut hyperband = hyperband();
        let in_bracket = |hyperband: &Hyperband, bracket: usize| -> Vec<u32> {
            (0..49)
                .filter(|trial| hyperband.bracket_of(*trial) == bracket)
                .collect()
        };
        // Bracket 0 is ASHA from resource 1: a trial that is not in the best third of those
        // that reached resource 1 stops there.
        let zero = in_bracket(&hyperband, 0);
        assert_eq!(hyperband.report(zero[0], 1.0, 0.1), Decision::Continue);
        assert_eq!(hyperband.report(zero[1], 1.0, 0.05), Decision::Continue);
        assert!(matches!(
            hyperband.report(zero[2], 1.0, 0.9),
            Decision::Stop(reason) if reason.starts_with("Hyperband bracket 0")
        ));
        // Bracket 2 first judges at resource 9: a poor start is not held against a trial.
        let two = in_bracket(&hyperband, 2);
        assert_eq!(hyperband.report(two[0], 1.0, 0.1), Decision::Continue);
        assert_eq!(hyperband.report(two[1], 1.0, 0.9), Decision::Continue);
        assert_eq!(hyperband.report(two[1], 3.0, 0.9), Decision::Continue);
        assert_eq!(hyperband.report(two[0], 9.0, 0.1), Decision::Continue);
        assert_eq!(hyperband.report(two[2], 9.0, 0.05), Decision::Continue);
        assert!(matches!(
            hyperband.report(two[1], 9.0, 0.9),
            Decision::Stop(_)
        ));
        // The last bracket runs everything to the end.
        let last = in_bracket(&hyperband, 3);
        for (index, trial) in last.iter().enumerate() {
            for resource in [1.0, 3.0, 9.0, 26.0] {
                assert_eq!(
                    hyperband.report(*trial, resource, 10.0 + index as f64),
                    Decision::Continue
                );
            }
        }
    }

    #[test]
    fn rungs_grow_by_the_reduction_factor() {
        assert_eq!(asha().rungs(), &[1.0, 3.0, 9.0]);
        assert!(
            Asha::new(AshaSettings {
                min_resource: 1.0,
                max_resource: 9.0,
                reduction_factor: 1.0
            })
            .is_none()
        );
        assert!(
            Asha::new(AshaSettings {
                min_resource: 5.0,
                max_resource: 5.0,
                reduction_factor: 3.0
            })
            .is_none()
        );
    }

    #[test]
    fn stopping_form_matches_a_hand_worked_example() {
        // η = 3. Trials reach rung 0 (resource 1) in order with losses:
        //   t0 0.50 → 1 recorded, keep 1, cutoff 0.50: continue
        //   t1 0.40 → 2 recorded, keep 1, cutoff 0.40: continue
        //   t2 0.60 → 3 recorded, keep 1, cutoff 0.40: stop
        //   t3 0.45 → 4 recorded, keep 1, cutoff 0.40: stop
        //   t4 0.30 → 5 recorded, keep 1, cutoff 0.30: continue
        //   t5 0.42 → 6 recorded, keep 2 (0.30, 0.40), cutoff 0.40: stop
        //   t6 0.35 → 7 recorded, keep 2 (0.30, 0.35), cutoff 0.35: continue
        let mut asha = asha();
        let reports = [
            (0, 0.50, true),
            (1, 0.40, true),
            (2, 0.60, false),
            (3, 0.45, false),
            (4, 0.30, true),
            (5, 0.42, false),
            (6, 0.35, true),
        ];
        for (trial, value, continues) in reports {
            let decision = asha.report(trial, 1.0, value);
            assert_eq!(
                decision == Decision::Continue,
                continues,
                "trial {trial}: {decision:?}"
            );
        }
        // Between rungs nothing is recorded or decided.
        assert_eq!(asha.report(0, 2.0, 0.9), Decision::Continue);
        assert_eq!(asha.recorded(0).len(), 7);
        // At rung 1 (resource 3): t1 0.20 is the first there and continues; then t0 0.25:
        // 2 recorded, keep max(⌊2/3⌋, 1) = 1, cutoff 0.20, and 0.25 is worse: stop.
        assert_eq!(asha.report(1, 3.0, 0.20), Decision::Continue);
        assert!(matches!(asha.report(0, 3.0, 0.25), Decision::Stop(_)));
        // A report that jumps several rungs is recorded at each.
        let mut jump = super::Asha::new(AshaSettings {
            min_resource: 1.0,
            max_resource: 27.0,
            reduction_factor: 3.0,
        })
        .expect("valid");
        assert_eq!(jump.report(9, 10.0, 0.1), Decision::Continue);
        assert_eq!(
            (
                jump.recorded(0).len(),
                jump.recorded(1).len(),
                jump.recorded(2).len()
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn promotion_form_promotes_the_top_third_highest_rung_first() {
        let mut asha = asha();
        // Nothing paused: start new trials.
        assert_eq!(asha.promote(), None);
        for (trial, value) in [(0, 0.5), (1, 0.4)] {
            asha.paused(trial, 0, value);
        }
        // Two at rung 0: ⌊2/3⌋ = 0 promotable.
        assert_eq!(asha.promote(), None);
        asha.paused(2, 0, 0.6);
        // Three: the best (t1) goes to rung 1, once.
        assert_eq!(asha.promote(), Some((1, 1)));
        assert_eq!(asha.promote(), None);
        for (trial, value) in [(3, 0.1), (4, 0.7), (5, 0.8)] {
            asha.paused(trial, 0, value);
        }
        // Six at rung 0: top 2 are t3 (0.1) and t1 (0.4, already promoted) → t3.
        assert_eq!(asha.promote(), Some((3, 1)));
        for (trial, value) in [(6, 0.9), (7, 0.95), (8, 0.99)] {
            asha.paused(trial, 0, value);
        }
        // Nine: the top 3 adds t0 (0.5).
        assert_eq!(asha.promote(), Some((0, 1)));
        // The three promoted trials pause at rung 1; the best of them goes to rung 2 before
        // anything else.
        asha.paused(1, 1, 0.3);
        asha.paused(3, 1, 0.2);
        asha.paused(0, 1, 0.9);
        assert_eq!(asha.promote(), Some((3, 2)));
        assert_eq!(asha.resource_of(2), 9.0);
        asha.paused(3, 2, 0.1);
        // Rung 2 holds one trial: nothing to promote to the full resource yet; rung 1's best
        // and rung 0's top 3 are promoted already → new trial.
        assert_eq!(asha.promote(), None);
        assert_eq!(asha.resource_of(3), 27.0);
    }

    #[test]
    fn running_averages_hold_when_reports_come_out_of_order() {
        // A retried attempt reports epochs 1–2 again after the first attempt reached 3.
        let reports = [(1.0, 0.9), (2.0, 0.7), (3.0, 0.6), (1.0, 0.8), (2.0, 0.5)];
        let mut series = Series::default();
        for (resource, value) in reports {
            series.push(resource, value);
        }
        for at in [1.0, 2.0, 2.5, 3.0] {
            let upto: Vec<f64> = reports
                .iter()
                .filter(|(r, _)| *r <= at)
                .map(|(_, v)| *v)
                .collect();
            let expected = upto.iter().sum::<f64>() / upto.len() as f64;
            let got = series.running_average(at).expect("reached");
            assert!(
                (got - expected).abs() < 1e-12,
                "at {at}: {got} vs {expected}"
            );
        }
        assert_eq!(series.running_average(3.5), None, "never got that far");
        assert_eq!(series.best, 0.5);
    }

    #[test]
    fn median_rule_stops_trials_worse_than_the_median() {
        let mut rule = MedianRule::new(2.0, 3);
        // Three trials with decreasing losses over 4 epochs.
        for (trial, base) in [(0, 1.0), (1, 0.8), (2, 0.6)] {
            for epoch in 1..=4 {
                assert_eq!(
                    rule.report(trial, f64::from(epoch), base / f64::from(epoch)),
                    Decision::Continue
                );
            }
        }
        // Running averages at epoch 2: t0 0.75, t1 0.6, t2 0.45 → median 0.6.
        // A new trial at epoch 1 is in its grace period.
        assert_eq!(rule.report(3, 1.0, 5.0), Decision::Continue);
        // At epoch 2 its best 0.7 > 0.6: stop.
        assert!(matches!(rule.report(3, 2.0, 0.7), Decision::Stop(_)));
        // A good one continues.
        assert_eq!(rule.report(4, 1.0, 0.5), Decision::Continue);
        assert_eq!(rule.report(4, 2.0, 0.3), Decision::Continue);
    }
}
