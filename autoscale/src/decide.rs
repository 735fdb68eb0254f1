//! The autoscaling decision: demand in, desired instances out. Pure: no clock, no network,
//! no provider; the Autoscaler actor feeds it observations and carries out what it returns.
//!
//! - **Demand** is the trial slots the cluster needs now: pending trials plus running ones.
//!   It needs `ceil(demand / slots_per_instance)` instances, clamped to `[min, max]`.
//! - **Scale out at once**: when more instances are needed than are desired, the new figure
//!   applies on the next check.
//! - **Scale in slowly**: the desired count only falls to the highest need seen over the last
//!   `scale_in_window` (a stabilization window), so demand that dips and comes back does not
//!   shed instances that the next wave would start again.
//! - **Scale to zero after a grace period**: with no demand at all, one instance stays until
//!   demand has been zero for `idle_grace` (a fresh sweep then starts without a cold boot);
//!   after that the fleet may go to `min`, which may be zero.
//! - **Never below the busy**: instances with running trials are never counted away; the
//!   desired count is at least their number (they are also protected from scale-in by the
//!   provider, so the group takes idle instances first).

use std::collections::VecDeque;
use std::time::Duration;

/// What the autoscaler may do. `min`/`max` are instances.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// Trial slots one instance brings (one per GPU on a g5).
    pub slots_per_instance: u32,
    /// The desired count never falls below the highest need of this long ago or since.
    pub scale_in_window: Duration,
    /// Demand must have been zero this long before the last instance goes.
    pub idle_grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min: 0,
            max: 4,
            slots_per_instance: 1,
            scale_in_window: Duration::from_secs(300),
            idle_grace: Duration::from_secs(600),
        }
    }
}

impl Policy {
    /// Checks the policy; the message names the field that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.slots_per_instance == 0 {
            return Err("slots_per_instance must be at least 1".into());
        }
        if self.min > self.max {
            return Err(format!(
                "min ({}) must not exceed max ({})",
                self.min, self.max
            ));
        }
        Ok(())
    }

    /// Instances `demand` slots need, within `[min, max]`.
    pub fn needed(&self, demand_slots: u32) -> u32 {
        demand_slots
            .div_ceil(self.slots_per_instance.max(1))
            .clamp(self.min, self.max)
    }
}

/// One look at the cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Time since an arbitrary origin; only differences matter.
    pub now: Duration,
    /// Slots of pending plus running trials.
    pub demand_slots: u32,
    /// Instances running at least one trial.
    pub busy_instances: u32,
    /// The group's desired capacity as last set.
    pub desired: u32,
}

/// What to do after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    /// Why, in words, for logs and `flotilla cluster status`.
    pub reason: String,
}

impl Decision {
    pub fn changes(&self, current: u32) -> bool {
        self.desired != current
    }
}

/// The decision function with the little memory it needs: recent needs (for the scale-in
/// window) and when demand last stopped.
#[derive(Debug, Clone)]
pub struct Scaler {
    policy: Policy,
    /// Need at each observation within the scale-in window, oldest first.
    recent: VecDeque<(Duration, u32)>,
    /// When demand last became zero, while it still is.
    idle_since: Option<Duration>,
}

impl Scaler {
    pub fn new(policy: Policy) -> Scaler {
        Scaler {
            policy,
            recent: VecDeque::new(),
            idle_since: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (an operator changed min/max); the window's memory is kept.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Forgets the window: an operator set the desired count by hand, and it is the new
    /// starting point (it still holds for a window before demand can lower it).
    pub fn manual(&mut self, now: Duration, desired: u32) {
        self.recent.clear();
        self.recent.push_back((now, desired));
    }

    pub fn decide(&mut self, observation: Observation) -> Decision {
        let Observation {
            now,
            demand_slots,
            busy_instances,
            desired,
        } = observation;
        let policy = &self.policy;
        let mut need = policy.needed(demand_slots);
        let mut reason;
        // Once the idle grace is over, nothing more holds the fleet up: the grace was the
        // wait before going to zero.
        let mut grace_over = false;
        if demand_slots == 0 {
            let since = *self.idle_since.get_or_insert(now);
            let idle_for = now.saturating_sub(since);
            if idle_for < policy.idle_grace && desired > 0 {
                need = need.max(1).min(policy.max);
                reason = format!(
                    "no demand for {}s; keeping one instance for the {}s grace",
                    idle_for.as_secs(),
                    policy.idle_grace.as_secs()
                );
            } else {
                grace_over = true;
                reason = format!("no demand for {}s", idle_for.as_secs());
            }
        } else {
            self.idle_since = None;
            reason = format!(
                "{demand_slots} slot(s) of demand need {need} instance(s) at {} slot(s) each",
                policy.slots_per_instance
            );
        }

        // The scale-in window: remember this need, forget needs older than the window.
        self.recent.push_back((now, need));
        while let Some(&(at, _)) = self.recent.front() {
            if now.saturating_sub(at) > policy.scale_in_window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        let mut target = need;
        if need < desired && !grace_over {
            let held = self
                .recent
                .iter()
                .map(|&(_, need)| need)
                .max()
                .unwrap_or(need)
                .min(desired);
            if held > need {
                target = held;
                reason = format!(
                    "{reason}; holding {held} (highest need within the {}s scale-in window)",
                    policy.scale_in_window.as_secs()
                );
            }
        }
        if target < busy_instances {
            target = busy_instances;
            reason = format!("{reason}; {busy_instances} instance(s) still busy");
        }
        Decision {
            desired: target,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 0,
            max: 4,
            slots_per_instance: 2,
            scale_in_window: Duration::from_secs(60),
            idle_grace: Duration::from_secs(120),
        }
    }

    /// Runs a demand curve sampled every `step` seconds (busy = instances the running part
    /// of demand occupies, as a fully packed fleet would have) and returns the desired
    /// capacity after each observation, applying every decision as the actor does.
    fn run(policy: Policy, step: u64, curve: &[(u32, u32)]) -> Vec<u32> {
        let mut scaler = Scaler::new(policy);
        let mut desired = 0;
        curve
            .iter()
            .enumerate()
            .map(|(index, &(demand_slots, busy_instances))| {
                let decision = scaler.decide(Observation {
                    now: Duration::from_secs(index as u64 * step),
                    demand_slots,
                    busy_instances,
                    desired,
                });
                desired = decision.desired;
                desired
            })
            .collect()
    }

    #[test]
    fn needed_rounds_up_and_clamps() {
        let policy = policy();
        assert_eq!(policy.needed(0), 0);
        assert_eq!(policy.needed(1), 1);
        assert_eq!(policy.needed(2), 1);
        assert_eq!(policy.needed(3), 2);
        assert_eq!(policy.needed(100), 4);
        let floor = Policy { min: 1, ..policy };
        assert_eq!(floor.needed(0), 1);
    }

    #[test]
    fn a_burst_scales_out_at_once_and_in_only_after_the_window() {
        // 10 s checks: a burst of 8 slots for 30 s, then nothing.
        let curve = [
            (0, 0),
            (8, 0),
            (8, 4),
            (8, 4),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ];
        // Out to 4 on the first check with demand; held at 4 for the 60 s window after the
        // last need of 4 (t=30 → until t=90); then one instance for the rest of the 120 s
        // idle grace (idle since t=40 → until t=160); then zero at once.
        assert_eq!(
            run(policy(), 10, &curve),
            vec![0, 4, 4, 4, 4, 4, 4, 4, 4, 4, 1, 1, 1, 1, 1, 1, 0, 0]
        );
    }

    #[test]
    fn steady_demand_holds_steady() {
        let curve = [(6, 3); 12];
        assert_eq!(run(policy(), 10, &curve), vec![3; 12]);
    }

    #[test]
    fn draining_to_zero_steps_down_with_the_window() {
        // Demand falls 8 → 6 → 4 → 2 → 0 every 30 s; the running part keeps instances busy.
        let mut curve = Vec::new();
        for (demand, busy) in [(8, 4), (6, 3), (4, 2), (2, 1), (0, 0)] {
            curve.extend([(demand, busy); 3]);
        }
        curve.extend([(0, 0); 15]);
        let desired = run(policy(), 10, &curve);
        // Never rises once the burst is in, never drops below what is busy, ends at zero.
        assert!(
            desired.windows(2).all(|pair| pair[1] <= pair[0]),
            "{desired:?}"
        );
        for (index, &(_, busy)) in curve.iter().enumerate() {
            assert!(desired[index] >= busy, "{desired:?}");
        }
        assert_eq!(
            desired,
            vec![
                4, 4, 4, // 8 slots
                4, 4, 4, // 6 slots: 3 needed, 4 held (need of 4 at t≤20 within 60 s)
                4, 4, 4, // 4 slots: 2 needed, 4 held until t=80
                3, 3, 3, // 2 slots: the window now holds the 3 of t=30..50
                2, 2, 2, // no demand since t=120: the 2 of t=60..80 held
                1, 1, 1, 1, 1, 1, 1, 1, 1, // one kept for the rest of the 120 s idle grace
                0, 0, 0, 0, 0, 0 // from t=240
            ]
        );
    }

    #[test]
    fn flapping_demand_does_not_flap_the_fleet() {
        // Demand alternates between 8 and 2 slots every check.
        let curve: Vec<(u32, u32)> = (0..20)
            .map(|index| if index % 2 == 0 { (8, 4) } else { (2, 1) })
            .collect();
        let desired = run(policy(), 10, &curve);
        assert_eq!(desired, vec![4; 20]);
    }

    #[test]
    fn busy_instances_are_never_counted_away() {
        // Demand vanished (a sweep was cancelled) but three instances still wind down trials.
        let mut scaler = Scaler::new(Policy {
            idle_grace: Duration::ZERO,
            scale_in_window: Duration::ZERO,
            ..policy()
        });
        let decision = scaler.decide(Observation {
            now: Duration::from_secs(1000),
            demand_slots: 0,
            busy_instances: 3,
            desired: 4,
        });
        assert_eq!(decision.desired, 3);
        assert!(
            decision.reason.contains("3 instance(s) still busy"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn min_and_max_bound_every_answer() {
        let bounded = Policy {
            min: 1,
            max: 2,
            ..policy()
        };
        let curve = [(0, 0), (20, 0), (20, 2), (0, 0), (0, 0)];
        for desired in run(bounded, 100, &curve) {
            assert!((1..=2).contains(&desired));
        }
    }

    #[test]
    fn a_manual_count_holds_for_a_window_then_demand_rules() {
        let mut scaler = Scaler::new(policy());
        scaler.manual(Duration::from_secs(0), 3);
        let at = |scaler: &mut Scaler, secs, desired| {
            scaler
                .decide(Observation {
                    now: Duration::from_secs(secs),
                    demand_slots: 2,
                    busy_instances: 1,
                    desired,
                })
                .desired
        };
        assert_eq!(at(&mut scaler, 30, 3), 3);
        assert_eq!(at(&mut scaler, 61, 3), 1);
    }

    #[test]
    fn policy_validation_names_the_field() {
        let wrong = Policy {
            slots_per_instance: 0,
            ..policy()
        };
        assert!(
            wrong
                .validate()
                .expect_err("an error")
                .contains("slots_per_instance")
        );
        let wrong = Policy { min: 5, ..policy() };
        assert!(wrong.validate().expect_err("an error").contains("min (5)"));
    }
}
