//! Autoscaler: sizes the agent fleet from demand while this coordinator leads.
//!
//! Every `interval` it asks the Scheduler for demand (slots of pending plus running trials)
//! and who is busy, runs one [`Reconciler`] step against the provider (desired capacity,
//! scale-in protection of busy instances, termination lifecycle hooks) and has the
//! Scheduler drain agents whose instances are being terminated. Agent ids are instance ids.
//! Operators reach it through `flotilla cluster status` and `flotilla cluster scale`.
//!
//! Supervision: a child of the Leader. Provider errors are logged, counted and shown in the
//! status; the next tick tries again. If the actor itself fails, the Leader's term ends with
//! it, like any other leader child.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_autoscale::{ClusterView, Policy, Provider, Reconciler};
use flotilla_protocol::AgentId;
use flotilla_protocol::messages::{AutoscaleStatus, ScaleRequest};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::scheduler::SchedulerMsg;
use crate::metrics::METRICS;

/// How the coordinator autoscales (`flotilla coordinator --autoscale`).
#[derive(Clone)]
pub struct AutoscalerConfig {
    pub provider: Arc<dyn Provider>,
    /// `min`/`max` are taken from the group at every check.
    pub policy: Policy,
    pub interval: Duration,
    /// How often a termination lifecycle hook held by running trials is kept alive.
    pub heartbeat_every: Duration,
}

impl AutoscalerConfig {
    pub fn new(provider: Arc<dyn Provider>, policy: Policy) -> AutoscalerConfig {
        AutoscalerConfig {
            provider,
            policy,
            interval: Duration::from_secs(10),
            heartbeat_every: Duration::from_secs(60),
        }
    }
}

pub enum AutoscalerMsg {
    Tick,
    Status(RpcReplyPort<AutoscaleStatus>),
    Scale {
        request: ScaleRequest,
        reply: RpcReplyPort<Result<AutoscaleStatus, String>>,
    },
}

pub struct AutoscalerArgs {
    pub config: AutoscalerConfig,
    pub scheduler: ActorRef<SchedulerMsg>,
}

pub struct AutoscalerState {
    provider: Arc<dyn Provider>,
    scheduler: ActorRef<SchedulerMsg>,
    reconciler: Reconciler,
    started: Instant,
    status: AutoscaleStatus,
    /// Agents already told to drain because their instance is terminating.
    drained: BTreeSet<String>,
}

pub struct Autoscaler;

impl Actor for Autoscaler {
    type Msg = AutoscalerMsg;
    type State = AutoscalerState;
    type Arguments = AutoscalerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AutoscalerMsg>,
        args: AutoscalerArgs,
    ) -> Result<AutoscalerState, ActorProcessingErr> {
        let config = args.config;
        myself.send_interval(config.interval, || AutoscalerMsg::Tick);
        let _ = myself.cast(AutoscalerMsg::Tick);
        tracing::info!(provider = %config.provider.describe_self(), interval = ?config.interval, "autoscaling");
        Ok(AutoscalerState {
            status: AutoscaleStatus {
                provider: config.provider.describe_self(),
                min: config.policy.min,
                max: config.policy.max,
                desired: 0,
                actual: 0,
                demand_slots: 0,
                protected: Vec::new(),
                terminating: Vec::new(),
                reason: "not checked yet".into(),
                error: None,
            },
            provider: config.provider,
            scheduler: args.scheduler,
            reconciler: Reconciler::new(config.policy, config.heartbeat_every),
            started: Instant::now(),
            drained: BTreeSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<AutoscalerMsg>,
        message: AutoscalerMsg,
        state: &mut AutoscalerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AutoscalerMsg::Tick => state.tick().await,
            AutoscalerMsg::Status(reply) => {
                let _ = reply.send(state.status.clone());
            }
            AutoscalerMsg::Scale { request, reply } => {
                let result = state.scale(request).await;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

impl AutoscalerState {
    async fn tick(&mut self) {
        let demand = match super::ask(&self.scheduler, SchedulerMsg::Demand).await {
            Ok(demand) => demand,
            Err(error) => {
                tracing::warn!(%error, "autoscaler: the scheduler did not answer");
                return;
            }
        };
        let view = ClusterView {
            demand_slots: demand.pending_slots + demand.running_slots,
            busy: demand.busy,
            connected: demand.connected,
        };
        METRICS.autoscaler_demand.set(i64::from(view.demand_slots));
        let step = match self
            .reconciler
            .step(self.provider.as_ref(), self.started.elapsed(), &view)
            .await
        {
            Ok(step) => step,
            Err(error) => {
                tracing::warn!(%error, "autoscaler: cannot read the group");
                METRICS
                    .autoscaler_errors
                    .with_label_values(&[error.call])
                    .inc();
                self.status.error = Some(error.to_string());
                return;
            }
        };
        if step.decision.changes(step.group.desired) {
            tracing::info!(
                from = step.group.desired,
                to = step.decision.desired,
                reason = %step.decision.reason,
                "autoscaler: changing desired capacity"
            );
        }
        for (instance, protected) in &step.protection {
            tracing::info!(%instance, protected, "autoscaler: scale-in protection changed");
        }
        for agent in &step.drain {
            if self.drained.insert(agent.clone()) {
                tracing::info!(%agent, "autoscaler: instance terminating; draining its agent");
                let _ = self.scheduler.cast(SchedulerMsg::Drain {
                    agent: AgentId(agent.clone()),
                    reply: None,
                });
            }
        }
        for instance in &step.completed {
            tracing::info!(%instance, "autoscaler: lifecycle hook completed; the instance may go");
        }
        for error in &step.errors {
            tracing::warn!(%error, "autoscaler: provider call failed; retrying next check");
            METRICS
                .autoscaler_errors
                .with_label_values(&[error.call])
                .inc();
        }
        let group = &step.group;
        let terminating: Vec<String> = group
            .instances
            .iter()
            .filter(|i| !i.lifecycle.counts())
            .map(|i| i.id.clone())
            .collect();
        self.drained.retain(|agent| terminating.contains(agent));
        METRICS.autoscaler_desired.set(i64::from(step.desired));
        METRICS.autoscaler_actual.set(i64::from(group.actual()));
        self.status = AutoscaleStatus {
            provider: self.provider.describe_self(),
            min: group.min,
            max: group.max,
            desired: step.desired,
            actual: group.actual(),
            demand_slots: view.demand_slots,
            protected: step.protected,
            terminating,
            reason: step.decision.reason,
            error: step.errors.first().map(ToString::to_string),
        };
    }

    async fn scale(&mut self, request: ScaleRequest) -> Result<AutoscaleStatus, String> {
        if request.min.is_some() || request.max.is_some() {
            let min = request.min.unwrap_or(self.status.min);
            let max = request.max.unwrap_or(self.status.max);
            if min > max {
                return Err(format!("--min ({min}) must not exceed --max ({max})"));
            }
            self.provider
                .set_bounds(min, max)
                .await
                .map_err(|error| error.to_string())?;
            self.status.min = min;
            self.status.max = max;
        }
        if let Some(desired) = request.desired {
            if desired < self.status.min || desired > self.status.max {
                return Err(format!(
                    "--desired {desired} is outside the group's bounds [{}, {}]; change --min/--max too",
                    self.status.min, self.status.max
                ));
            }
            self.provider
                .set_desired(desired)
                .await
                .map_err(|error| error.to_string())?;
            self.reconciler.manual(self.started.elapsed(), desired);
            tracing::info!(desired, "autoscaler: desired capacity set by an operator");
        }
        self.tick().await;
        Ok(self.status.clone())
    }
}
