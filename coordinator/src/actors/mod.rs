//! The coordinator's actors.
//!
//! ```text
//! Leader            accepts submissions, owns the sweeps; exists while this process leads
//! ├─ Registry       agents, their connections and liveness (heartbeats)
//! ├─ Scheduler      queued trials → free slots (fair across sweeps), assignments
//! ├─ Autoscaler     demand → desired instances, scale-in protection, lifecycle hooks
//! │                 (only with `--autoscale`)
//! ├─ Models         model versions (registry), what agents serve, routes for routers
//! │  └─ Rollout × N one per active canary rollout: checks, verdicts, stored decisions
//! └─ Sweep × N      one per sweep: sampler, budget, retries, results, watchers
//! ```
//!
//! Supervision: every child is linked to the Leader. A child that fails stops the Leader,
//! and with it the coordinator: control state lives in the [`crate::store`], so restarting
//! the process resumes every sweep — a crash-only design, simpler to trust than in-place
//! restarts of actors whose state would be half-updated.

pub mod autoscaler;
pub mod leader;
pub mod models;
pub mod registry;
pub mod rollout;
pub mod scheduler;
pub mod sweep;

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use flotilla_protocol::AttemptId;
use flotilla_protocol::messages::Params;
use flotilla_protocol::spec::TrialSpec;
use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};

/// How long an actor waits for another's answer before giving up.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a request and waits for the answer.
pub async fn ask<M: Message, R: Send + 'static>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<R>) -> M,
) -> anyhow::Result<R> {
    match actor.call(build, Some(ASK_TIMEOUT)).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(anyhow!("no answer within {ASK_TIMEOUT:?}")),
        Ok(CallResult::SenderError) => Err(anyhow!("the request was dropped unanswered")),
        Err(error) => Err(anyhow!("actor unreachable: {error}")),
    }
}

/// A trial attempt waiting for a slot.
#[derive(Debug, Clone)]
pub struct QueuedTrial {
    pub attempt: AttemptId,
    pub params: Params,
    pub trial: Arc<TrialSpec>,
    pub slots: u32,
    pub gpus: u32,
    /// The trial's newest checkpoint, which this attempt continues from.
    pub resume_from: Option<String>,
}

impl crate::placement::Demand for QueuedTrial {
    fn slots(&self) -> u32 {
        self.slots
    }
    fn gpus(&self) -> u32 {
        self.gpus
    }
}
