//! One autoscaling step against a provider: read the group, decide, and carry it out —
//! desired capacity, scale-in protection of busy instances, and the termination lifecycle
//! hook (drain first, heartbeat while trials checkpoint, then complete).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::decide::{Decision, Observation, Policy, Scaler};
use crate::provider::{Group, Lifecycle, Provider, ProviderError};

/// AWS takes at most this many instance ids per SetInstanceProtection call.
const PROTECT_BATCH: usize = 50;

/// What the coordinator knows of its agents. Agent ids are instance ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Slots of pending plus running trials.
    pub demand_slots: u32,
    /// Agents running at least one trial.
    pub busy: BTreeSet<String>,
    /// Agents connected now.
    pub connected: BTreeSet<String>,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The group as read at the start of the step.
    pub group: Group,
    pub decision: Decision,
    /// The group's desired capacity after the step: the decision's, unless setting it
    /// failed.
    pub desired: u32,
    /// Instances protected from scale-in after the step, sorted.
    pub protected: Vec<String>,
    /// Agents on terminating instances: the coordinator tells them to drain (idempotent).
    pub drain: Vec<String>,
    /// Instances whose lifecycle hook was completed.
    pub completed: Vec<String>,
    /// Instances whose protection changed: (id, now protected).
    pub protection: Vec<(String, bool)>,
    /// Calls that failed after the group was read; the next step tries again.
    pub errors: Vec<ProviderError>,
}

pub struct Reconciler {
    scaler: Scaler,
    /// How often a waiting lifecycle hook is kept alive.
    heartbeat_every: Duration,
    /// Last heartbeat per instance held by the hook.
    heartbeats: HashMap<String, Duration>,
}

impl Reconciler {
    /// `policy.min`/`max` are replaced by the group's own bounds at every step: the group is
    /// where they live (`flotilla cluster scale --min --max` changes them there).
    pub fn new(policy: Policy, heartbeat_every: Duration) -> Reconciler {
        Reconciler {
            scaler: Scaler::new(policy),
            heartbeat_every,
            heartbeats: HashMap::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        self.scaler.policy()
    }

    /// An operator set the desired count: it is the new starting point.
    pub fn manual(&mut self, now: Duration, desired: u32) {
        self.scaler.manual(now, desired);
    }

    pub async fn step(
        &mut self,
        provider: &dyn Provider,
        now: Duration,
        view: &ClusterView,
    ) -> Result<Step, ProviderError> {
        let group = provider.group().await?;
        let mut policy = self.scaler.policy().clone();
        policy.min = group.min;
        policy.max = group.max;
        self.scaler.set_policy(policy);

        let live = || group.instances.iter().filter(|i| i.lifecycle.counts());
        let busy_instances = live().filter(|i| view.busy.contains(&i.id)).count() as u32;
        let decision = self.scaler.decide(Observation {
            now,
            demand_slots: view.demand_slots,
            busy_instances,
            desired: group.desired,
        });
        let mut errors = Vec::new();
        let mut desired = group.desired;
        if decision.changes(group.desired) {
            match provider.set_desired(decision.desired).await {
                Ok(()) => desired = decision.desired,
                Err(error) => errors.push(error),
            }
        }

        // Busy instances are protected from scale-in; idle ones are not, so the group
        // shrinks by idle instances only.
        let mut protection = Vec::new();
        for protect in [true, false] {
            let ids: Vec<String> = live()
                .filter(|i| view.busy.contains(&i.id) == protect && i.protected != protect)
                .map(|i| i.id.clone())
                .collect();
            for batch in ids.chunks(PROTECT_BATCH) {
                match provider.protect(batch, protect).await {
                    Ok(()) => protection.extend(batch.iter().map(|id| (id.clone(), protect))),
                    Err(error) => errors.push(error),
                }
            }
        }

        // Terminating instances held by the hook: drain their agents, keep the hook alive
        // while trials checkpoint and stop, and let the instance go once nothing runs there.
        let mut drain = Vec::new();
        let mut completed = Vec::new();
        let waiting: Vec<&str> = group
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::TerminatingWait)
            .map(|i| i.id.as_str())
            .collect();
        self.heartbeats
            .retain(|id, _| waiting.contains(&id.as_str()));
        for id in waiting {
            if view.connected.contains(id) {
                drain.push(id.to_string());
            }
            if view.busy.contains(id) {
                let due = self
                    .heartbeats
                    .get(id)
                    .is_none_or(|last| now.saturating_sub(*last) >= self.heartbeat_every);
                if due {
                    match provider.heartbeat(id).await {
                        Ok(()) => {
                            self.heartbeats.insert(id.to_string(), now);
                        }
                        Err(error) => errors.push(error),
                    }
                }
            } else {
                match provider.complete(id).await {
                    Ok(()) => {
                        self.heartbeats.remove(id);
                        completed.push(id.to_string());
                    }
                    Err(error) => errors.push(error),
                }
            }
        }
        let mut protected: BTreeSet<String> = group
            .instances
            .iter()
            .filter(|i| i.protected)
            .map(|i| i.id.clone())
            .collect();
        for (id, now_protected) in &protection {
            if *now_protected {
                protected.insert(id.clone());
            } else {
                protected.remove(id);
            }
        }
        Ok(Step {
            group,
            decision,
            desired,
            protected: protected.into_iter().collect(),
            drain,
            completed,
            protection,
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::provider::Instance;

    /// A provider in memory: the group does what it is told and logs every call. (The real
    /// providers are tested against moto_server and local agent processes.)
    struct Recorded {
        group: Mutex<Group>,
        calls: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Provider for Recorded {
        fn describe_self(&self) -> String {
            "recorded".into()
        }
        async fn group(&self) -> Result<Group, ProviderError> {
            Ok(self
                .group
                .lock()
                .map_err(|e| ProviderError::new("group", e))?
                .clone())
        }
        async fn set_desired(&self, desired: u32) -> Result<(), ProviderError> {
            self.calls
                .lock()
                .map_err(|e| ProviderError::new("x", e))?
                .push(format!("desired {desired}"));
            Ok(())
        }
        async fn set_bounds(&self, min: u32, max: u32) -> Result<(), ProviderError> {
            self.calls
                .lock()
                .map_err(|e| ProviderError::new("x", e))?
                .push(format!("bounds {min} {max}"));
            Ok(())
        }
        async fn protect(&self, ids: &[String], protected: bool) -> Result<(), ProviderError> {
            self.calls
                .lock()
                .map_err(|e| ProviderError::new("x", e))?
                .push(format!("protect {} {protected}", ids.join(",")));
            Ok(())
        }
        async fn heartbeat(&self, id: &str) -> Result<(), ProviderError> {
            self.calls
                .lock()
                .map_err(|e| ProviderError::new("x", e))?
                .push(format!("heartbeat {id}"));
            Ok(())
        }
        async fn complete(&self, id: &str) -> Result<(), ProviderError> {
            self.calls
                .lock()
                .map_err(|e| ProviderError::new("x", e))?
                .push(format!("complete {id}"));
            Ok(())
        }
    }

    fn instance(id: &str, lifecycle: Lifecycle, protected: bool) -> Instance {
        Instance {
            id: id.into(),
            lifecycle,
            protected,
        }
    }

    fn ids(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[tokio::test]
    async fn protects_the_busy_unprotects_the_idle_and_holds_the_hook_while_trials_run() {
        let provider = Recorded {
            group: Mutex::new(Group {
                name: "g".into(),
                min: 0,
                max: 4,
                desired: 3,
                instances: vec![
                    instance("i-busy", Lifecycle::InService, false),
                    instance("i-idle", Lifecycle::InService, true),
                    instance("i-going", Lifecycle::TerminatingWait, false),
                    instance("i-gone", Lifecycle::TerminatingWait, false),
                ],
            }),
            calls: Mutex::new(Vec::new()),
        };
        let mut reconciler = Reconciler::new(Policy::default(), Duration::from_secs(60));
        // Three slots of demand at one slot each: the desired 3 stays.
        let view = ClusterView {
            demand_slots: 3,
            busy: ids(&["i-busy", "i-going"]),
            connected: ids(&["i-busy", "i-idle", "i-going"]),
        };
        let step = reconciler
            .step(&provider, Duration::from_secs(0), &view)
            .await
            .expect("step");
        assert_eq!(step.drain, vec!["i-going".to_string()]);
        assert_eq!(step.completed, vec!["i-gone".to_string()]);
        assert_eq!(step.desired, 3);
        assert_eq!(step.protected, vec!["i-busy".to_string()]);
        let calls = provider.calls.lock().expect("calls").clone();
        assert_eq!(
            calls,
            vec![
                "protect i-busy true",
                "protect i-idle false",
                "heartbeat i-going",
                "complete i-gone",
            ]
        );
        // Within the heartbeat interval the hook is not pinged again; after it, it is.
        provider.calls.lock().expect("calls").clear();
        reconciler
            .step(&provider, Duration::from_secs(30), &view)
            .await
            .expect("step");
        reconciler
            .step(&provider, Duration::from_secs(61), &view)
            .await
            .expect("step");
        let calls = provider.calls.lock().expect("calls").clone();
        let heartbeats = calls
            .iter()
            .filter(|call| call.starts_with("heartbeat"))
            .count();
        assert_eq!(heartbeats, 1, "{calls:?}");
    }
}
