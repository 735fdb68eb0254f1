//! Rollout: one canary rollout, from its first stage to promotion or rollback.
//!
//! Place in the tree: a child of [`super::models::Models`], one per active rollout. The
//! Models actor sends it the rollout's traffic (summed over every router) each check; the
//! Rollout actor calls the pure [`flotilla_rollout::decide`] on it, applies the verdict
//! (next stage's weight, promotion, rollback), stores the record *before* telling Models, so
//! that a weight routers see is always one the store holds, and stops once the rollout ends.
//!
//! Failover: everything it needs is in the stored [`RolloutRecord`]; a new leader spawns the
//! actor again from it, and routers keep reporting counters since they first saw the rollout,
//! so the windows (since the rollout and since the stage began) carry on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_protocol::models::{DecisionRecord, RolloutAction, RolloutRecord, RolloutState};
use flotilla_rollout::{Check, Decision, Pair, Verdict, decide};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::models::ModelsMsg;
use crate::clock::now_ms;
use crate::metrics::METRICS;
use crate::store::{StateStore, StateWrite};

/// Holds kept in a record besides every other verdict: only the newest.
const HOLDS_KEPT: usize = 1;
/// A hold changes only the traffic shown; it is stored at most this often (a verdict that
/// moves the rollout is stored at once).
const HOLD_STORE_EVERY: Duration = Duration::from_secs(10);

pub enum RolloutMsg {
    /// The rollout's traffic since it began, summed over routers.
    Check(Pair),
    /// The canary cannot be served (every agent failed to load it): roll back.
    CanaryUnavailable(String),
    Act {
        action: RolloutAction,
        reply: RpcReplyPort<Result<RolloutRecord, String>>,
    },
}

pub struct RolloutArgs {
    pub record: RolloutRecord,
    pub store: Arc<dyn StateStore>,
    pub models: ActorRef<ModelsMsg>,
}

pub struct RolloutActorState {
    record: RolloutRecord,
    store: Arc<dyn StateStore>,
    models: ActorRef<ModelsMsg>,
    /// When the record was last stored: holds are stored at most every [`HOLD_STORE_EVERY`].
    last_stored: Instant,
}

pub struct Rollout;

impl Actor for Rollout {
    type Msg = RolloutMsg;
    type State = RolloutActorState;
    type Arguments = RolloutArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<RolloutMsg>,
        args: RolloutArgs,
    ) -> Result<RolloutActorState, ActorProcessingErr> {
        tracing::info!(
            rollout = args.record.id,
            model = %args.record.model,
            canary = %args.record.canary,
            stage = args.record.stage,
            weight = args.record.canary_weight,
            "rollout controller running"
        );
        // The rollback series exists from the start, so an alert on its increase sees the
        // first rollback too.
        METRICS
            .rollout_decisions
            .with_label_values(&[args.record.model.as_str(), "rollback"])
            .inc_by(0);
        METRICS
            .canary_weight
            .with_label_values(&[args.record.model.as_str()])
            .set(args.record.canary_weight);
        Ok(RolloutActorState {
            record: args.record,
            store: args.store,
            models: args.models,
            last_stored: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RolloutMsg>,
        message: RolloutMsg,
        state: &mut RolloutActorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RolloutMsg::Check(traffic) => {
                let start = &state.record.stage_start;
                if traffic.baseline.requests < start.baseline.requests
                    || traffic.canary.requests < start.canary.requests
                {
                    // Counters went back (a router's counts were lost with an old leader):
                    // the stage's window starts again from here rather than mixing periods.
                    tracing::warn!(
                        rollout = state.record.id,
                        "traffic counters went back; the stage's window starts again"
                    );
                    state.record.stage_start = traffic;
                }
                state.record.traffic = traffic;
                if state.record.state != RolloutState::Running {
                    return Ok(());
                }
                let now = now_ms();
                let decision = state.decide(now);
                let hold = decision.verdict == Verdict::Hold;
                state.apply(now, decision, "controller");
                if !hold || state.last_stored.elapsed() >= HOLD_STORE_EVERY {
                    state.commit().await?;
                }
            }
            RolloutMsg::CanaryUnavailable(reason) => {
                if !state.record.state.is_active() {
                    return Ok(());
                }
                let decision = Decision {
                    verdict: Verdict::Rollback { metric: None },
                    reason: format!("the canary cannot be served: {reason}"),
                    evidence: Vec::new(),
                };
                state.apply(now_ms(), decision, "controller");
                state.commit().await?;
            }
            RolloutMsg::Act { action, reply } => {
                let result = state.act(action);
                if result.is_ok() {
                    state.commit().await?;
                }
                let _ = reply.send(result.map(|()| state.record.clone()));
            }
        }
        if !state.record.state.is_active() {
            myself.stop(None);
        }
        Ok(())
    }
}

impl RolloutActorState {
    fn stage_elapsed(&self, now: u64) -> Duration {
        let paused = self.record.stage_paused_ms
            + self
                .record
                .paused_since_ms
                .map_or(0, |since| now.saturating_sub(since));
        Duration::from_millis(
            now.saturating_sub(self.record.stage_started_ms)
                .saturating_sub(paused),
        )
    }

    fn decide(&self, now: u64) -> Decision {
        let record = &self.record;
        let stage_traffic = record.traffic.since(&record.stage_start);
        decide(
            &record.policy,
            Check {
                stage: record.stage as usize,
                stage_elapsed: self.stage_elapsed(now),
                stage_traffic: &stage_traffic,
                total_traffic: &record.traffic,
            },
        )
    }

    /// Applies a verdict to the record (not yet stored).
    fn apply(&mut self, now: u64, decision: Decision, by: &str) {
        let record = &mut self.record;
        let entry = DecisionRecord {
            at_ms: now,
            stage: record.stage,
            weight: record.canary_weight,
            decision,
            by: by.to_string(),
        };
        match &entry.decision.verdict {
            Verdict::Hold => {}
            Verdict::Advance { stage } => {
                record.stage = *stage as u32;
                record.canary_weight = record.policy.stages[*stage].weight;
                record.stage_start = record.traffic;
                record.stage_started_ms = now;
                record.stage_paused_ms = 0;
                tracing::info!(rollout = record.id, model = %record.model, stage, weight = record.canary_weight, reason = %entry.decision.reason, "rollout advances");
            }
            Verdict::Promote => {
                record.canary_weight = 1.0;
                record.state = RolloutState::Promoted;
                record.finished_ms = Some(now);
                tracing::info!(rollout = record.id, model = %record.model, canary = %record.canary, reason = %entry.decision.reason, "canary promoted");
            }
            Verdict::Rollback { .. } => {
                record.canary_weight = 0.0;
                record.state = if by == "operator" {
                    RolloutState::Aborted
                } else {
                    RolloutState::RolledBack
                };
                record.finished_ms = Some(now);
                tracing::warn!(rollout = record.id, model = %record.model, canary = %record.canary, reason = %entry.decision.reason, "canary rolled back");
            }
        }
        let verdict = match &entry.decision.verdict {
            Verdict::Hold => None,
            Verdict::Advance { .. } => Some("advance"),
            Verdict::Promote => Some("promote"),
            Verdict::Rollback { .. } if by == "operator" => Some("abort"),
            Verdict::Rollback { .. } => Some("rollback"),
        };
        if let Some(verdict) = verdict {
            METRICS
                .rollout_decisions
                .with_label_values(&[record.model.as_str(), verdict])
                .inc();
        }
        METRICS
            .canary_weight
            .with_label_values(&[record.model.as_str()])
            .set(record.canary_weight);
        // Keep every verdict that changed something and only the newest hold.
        if matches!(entry.decision.verdict, Verdict::Hold) {
            // An operator's pause or resume is kept.
            let controller_hold = |d: &DecisionRecord| {
                d.by != "operator" && matches!(d.decision.verdict, Verdict::Hold)
            };
            let holds = record
                .decisions
                .iter()
                .filter(|d| controller_hold(d))
                .count();
            if entry.by != "operator"
                && holds >= HOLDS_KEPT
                && let Some(position) = record.decisions.iter().position(controller_hold)
            {
                record.decisions.remove(position);
            }
        }
        record.decisions.push(entry);
    }

    fn act(&mut self, action: RolloutAction) -> Result<(), String> {
        let now = now_ms();
        let record = &mut self.record;
        if !record.state.is_active() {
            return Err(format!(
                "rollout {} of {} has ended ({})",
                record.id,
                record.model,
                record.state.as_str()
            ));
        }
        let manual = |verdict: Verdict, reason: &str| Decision {
            verdict,
            reason: reason.to_string(),
            evidence: Vec::new(),
        };
        match action {
            RolloutAction::Pause => {
                if record.state == RolloutState::Paused {
                    return Err(format!("rollout {} is already paused", record.id));
                }
                record.state = RolloutState::Paused;
                record.paused_since_ms = Some(now);
                let decision = manual(Verdict::Hold, "paused by an operator");
                self.apply(now, decision, "operator");
            }
            RolloutAction::Resume => {
                if record.state != RolloutState::Paused {
                    return Err(format!("rollout {} is not paused", record.id));
                }
                if let Some(since) = record.paused_since_ms.take() {
                    record.stage_paused_ms += now.saturating_sub(since);
                }
                record.state = RolloutState::Running;
                let decision = manual(Verdict::Hold, "resumed by an operator");
                self.apply(now, decision, "operator");
            }
            RolloutAction::Promote => {
                record.paused_since_ms = None;
                let decision = manual(Verdict::Promote, "promoted by an operator");
                self.apply(now, decision, "operator");
            }
            RolloutAction::Abort => {
                record.paused_since_ms = None;
                let decision = manual(
                    Verdict::Rollback { metric: None },
                    "aborted by an operator: all traffic to the baseline",
                );
                self.apply(now, decision, "operator");
            }
        }
        Ok(())
    }

    /// Stores the record, then tells Models (which routes by it). A promotion is stored by
    /// Models, with the stage changes it makes, in one write.
    async fn commit(&mut self) -> Result<(), ActorProcessingErr> {
        self.last_stored = Instant::now();
        if self.record.state == RolloutState::Promoted {
            let record = Box::new(self.record.clone());
            super::ask(&self.models, |reply| ModelsMsg::Promote { record, reply })
                .await?
                .map_err(|message| format!("storing the promotion: {message}"))?;
            return Ok(());
        }
        self.store
            .write(vec![StateWrite::Rollout(Box::new(self.record.clone()))])
            .durable()
            .await?;
        self.models
            .cast(ModelsMsg::RolloutChanged(Box::new(self.record.clone())))?;
        Ok(())
    }
}
