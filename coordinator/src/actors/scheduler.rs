//! Scheduler: queued trials and serving replicas → free agent slots and GPUs; the owner of
//! assignments.
//!
//! Place in the tree: child of the Leader. Inputs: trials queued by Sweep actors, the
//! serving replicas the Models actor wants, agents coming and going (from the Registry),
//! and trial reports from agent sessions, which it forwards to the owning Sweep after
//! updating slot accounting. Placement itself is the pure [`crate::placement::FairShare::assign`] and
//! [`crate::placement::place_replicas`]; replicas are placed first, so a production model
//! is not kept waiting behind a long queue of trials.
//!
//! After a coordinator restart, attempts the store says were running are *expected* on their
//! agent: adopted when that agent reconnects and reports them, declared lost when it does not
//! within the adoption grace.
//!
//! Failure: linked to the Leader; a failure stops the coordinator (state is in the store).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use flotilla_protocol::messages::{
    CheckpointRef, Command, CoordinatorCommand, MetricPoint, StartAttempt, StartTrial, StopReason,
    TrialOutcome,
};
use flotilla_protocol::{AgentId, AttemptId, Epoch, SweepId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use flotilla_protocol::models::ModelRef;
use flotilla_protocol::spec::Scheduling;

use super::QueuedTrial;
use super::sweep::{LossCause, SweepMsg};
use crate::placement::{self, Capacity, FairShare, ReplicaDemand, Usage};

/// The send half of an agent session's command writer.
#[derive(Debug, Clone)]
pub struct AgentLink {
    /// Distinguishes this connection from the agent's earlier ones.
    pub connection: u64,
    pub commands: mpsc::UnboundedSender<CoordinatorCommand>,
    /// Fired to end the session (the agent was declared lost).
    pub close: CancellationToken,
    /// The protocol version negotiated with the agent: which commands it understands.
    pub version: u16,
}

/// What an agent is doing, as the Scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct AgentUsage {
    pub slots: u32,
    pub busy_slots: u32,
    pub gpus: u32,
    pub busy_gpus: u32,
    pub running: Vec<AttemptId>,
    /// Serving replicas placed there (their slots and GPUs are in the busy counts).
    pub replicas: Vec<ModelRef>,
    pub draining: bool,
}

/// Slots wanted now, and who is busy: the autoscaler's input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// Slots of trials waiting in the queues.
    pub pending_slots: u32,
    /// Slots of placed and running trials.
    pub running_slots: u32,
    /// Agents with at least one placed or running trial or serving replica.
    pub busy: BTreeSet<String>,
    /// Agents connected now.
    pub connected: BTreeSet<String>,
}

/// A restored attempt the store says was running on `agent`.
#[derive(Debug, Clone)]
pub struct ExpectedAttempt {
    pub attempt: AttemptId,
    pub agent: AgentId,
    pub slots: u32,
    pub gpus: u32,
}

pub enum SchedulerMsg {
    RegisterSweep {
        sweep: SweepId,
        actor: ActorRef<SweepMsg>,
        /// Its share and team (`[scheduling]`).
        scheduling: Scheduling,
    },
    Enqueue(Vec<QueuedTrial>),
    Expect(Vec<ExpectedAttempt>),
    /// An agent registered (first time or after a reconnect). Replies with the reported
    /// running attempts that are adopted; the agent stops the others.
    AgentUp {
        agent: AgentId,
        slots: u32,
        gpus: u32,
        link: AgentLink,
        running: Vec<AttemptId>,
        finished: Vec<(AttemptId, TrialOutcome)>,
        reply: RpcReplyPort<Vec<AttemptId>>,
    },
    /// The Registry declared the agent lost: its attempts go back to their sweeps.
    AgentDown {
        agent: AgentId,
    },
    /// The agent is shutting down: place nothing new there; its running trials finish.
    AgentDraining {
        agent: AgentId,
    },
    TrialStarted {
        agent: AgentId,
        attempt: AttemptId,
    },
    TrialMetrics {
        agent: AgentId,
        attempt: AttemptId,
        points: Vec<MetricPoint>,
    },
    TrialFinished {
        agent: AgentId,
        attempt: AttemptId,
        outcome: TrialOutcome,
    },
    TrialCheckpoint {
        agent: AgentId,
        attempt: AttemptId,
        checkpoint: CheckpointRef,
    },
    CommandRejected {
        agent: AgentId,
        attempt: Option<AttemptId>,
        reason: String,
    },
    /// Sends a command about an attempt to its agent, if the attempt is still assigned there
    /// (used for starts, once the placement is durable).
    Send {
        agent: AgentId,
        attempt: AttemptId,
        command: Command,
    },
    /// Frees the slot of a placed attempt that will not be started.
    Abandon {
        agent: AgentId,
        attempt: AttemptId,
    },
    /// Stop running attempts (cancel, deadline).
    Stop {
        attempts: Vec<AttemptId>,
        reason: StopReason,
    },
    /// A sweep whose actor failed: drop its queued attempts, stop its running ones and
    /// forget it (their results go nowhere; their slots free as they end).
    ForgetSweep {
        sweep: SweepId,
    },
    /// A finished sweep's actor is gone (its memory handed back): forget its registration.
    /// Attempts still ending on agents are released as usual; their reports go nowhere.
    Unregister {
        sweep: SweepId,
    },
    /// Removes a sweep's queued attempts and returns them.
    Withdraw {
        sweep: SweepId,
        reply: RpcReplyPort<Vec<AttemptId>>,
    },
    /// The serving replicas wanted now (every served program's version, retiring ones
    /// included): replicas no longer wanted are released, missing ones placed where they
    /// fit. Replies with where each demanded version's replicas are.
    Replicas {
        demands: Vec<ReplicaDemand>,
        reply: RpcReplyPort<BTreeMap<ModelRef, Vec<AgentId>>>,
    },
    /// Busy slots and running attempts per agent.
    Usage(RpcReplyPort<HashMap<AgentId, AgentUsage>>),
    /// What the autoscaler sizes the fleet by.
    Demand(RpcReplyPort<Demand>),
    /// Place nothing new on the agent (or again, when `cordoned` is false). Replies whether
    /// the agent is known.
    Cordon {
        agent: AgentId,
        cordoned: bool,
        reply: RpcReplyPort<bool>,
    },
    /// Cordons the agent and has it checkpoint and stop every trial it runs; they resume
    /// elsewhere without spending their retry budget. Replies whether the agent is known.
    Drain {
        agent: AgentId,
        reply: Option<RpcReplyPort<bool>>,
    },
    ExpireExpected,
    /// Places what is queued (sent to itself once after changes that may free room).
    Place,
}

pub struct SchedulerArgs {
    pub epoch: Epoch,
    /// How long a restored running attempt waits for its agent.
    pub adoption_grace: Duration,
    /// Where cordons are kept, so they outlive this leader.
    pub store: std::sync::Arc<dyn crate::store::StateStore>,
    /// Agents cordoned when the store was loaded.
    pub cordoned: BTreeSet<AgentId>,
    /// Losses of running trials within [`LOSS_WINDOW`] after which an agent is cordoned
    /// automatically (0: never).
    pub cordon_after_losses: u32,
    /// Each team's weight in the fair share (`--team-share`; a team not named weighs 1).
    pub team_shares: BTreeMap<String, f64>,
}

/// How far back an agent's losses of running trials are counted.
pub const LOSS_WINDOW: Duration = Duration::from_secs(600);

struct AgentSlots {
    slots: u32,
    gpus: u32,
    busy: u32,
    busy_gpus: u32,
    /// A draining agent finishes what it runs and takes nothing new.
    draining: bool,
    link: AgentLink,
}

struct Assignment {
    agent: AgentId,
    slots: u32,
    gpus: u32,
    decided_at: Instant,
    /// The agent reported it started (or reported it running when it reconnected): losing
    /// it now is losing a running trial.
    started: bool,
}

/// What one served program's version holds on each agent that runs a replica of it.
struct Replicas {
    slots: u32,
    gpus: u32,
    agents: Vec<AgentId>,
    /// Agents among `agents` where its program failed: placed, holding nothing.
    failed: BTreeSet<AgentId>,
}

impl Replicas {
    /// Agents where a replica holds its slots and GPUs.
    fn holding(&self) -> impl Iterator<Item = &AgentId> {
        self.agents
            .iter()
            .filter(|agent| !self.failed.contains(*agent))
    }
}

pub struct SchedulerState {
    epoch: Epoch,
    /// Something changed that may let queued trials start: place before long.
    place_wanted: bool,
    /// A `Place` message is in the mailbox.
    place_queued: bool,
    adoption_grace: Duration,
    agents: BTreeMap<AgentId, AgentSlots>,
    queues: BTreeMap<SweepId, VecDeque<QueuedTrial>>,
    /// Whose turn is next, and the reservation held for a large trial.
    fair: FairShare,
    /// What each sweep's assigned attempts hold (kept with `assignments`).
    held: BTreeMap<SweepId, Usage>,
    /// Each registered sweep's share and team.
    scheduling: BTreeMap<SweepId, Scheduling>,
    /// Each team's weight (`--team-share`).
    team_shares: BTreeMap<String, f64>,
    sweeps: HashMap<SweepId, ActorRef<SweepMsg>>,
    assignments: HashMap<AttemptId, Assignment>,
    /// The replicas Models last asked for, and where they are placed.
    replica_demands: Vec<ReplicaDemand>,
    replicas: BTreeMap<ModelRef, Replicas>,
    expected: HashMap<AttemptId, (ExpectedAttempt, Instant)>,
    /// Agents an operator (or the autoscaler) cordoned; kept across their reconnects, and in
    /// the store across restarts and leader changes.
    cordoned: BTreeSet<AgentId>,
    store: std::sync::Arc<dyn crate::store::StateStore>,
    cordon_after_losses: u32,
    /// When each agent lost the trials it ran, within [`LOSS_WINDOW`].
    losses: HashMap<AgentId, VecDeque<Instant>>,
}

pub struct Scheduler;

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(500), || SchedulerMsg::ExpireExpected);
        Ok(SchedulerState {
            epoch: args.epoch,
            place_wanted: false,
            place_queued: false,
            adoption_grace: args.adoption_grace,
            agents: BTreeMap::new(),
            queues: BTreeMap::new(),
            fair: FairShare::default(),
            held: BTreeMap::new(),
            scheduling: BTreeMap::new(),
            team_shares: args.team_shares,
            sweeps: HashMap::new(),
            assignments: HashMap::new(),
            replica_demands: Vec::new(),
            replicas: BTreeMap::new(),
            expected: HashMap::new(),
            cordoned: args.cordoned,
            store: args.store,
            cordon_after_losses: args.cordon_after_losses,
            losses: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedulerMsg>,
        message: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::RegisterSweep {
                sweep,
                actor,
                scheduling,
            } => {
                state.sweeps.insert(sweep, actor);
                state.scheduling.insert(sweep, scheduling);
            }
            SchedulerMsg::Enqueue(trials) => {
                for trial in trials {
                    state
                        .queues
                        .entry(trial.attempt.trial.sweep)
                        .or_default()
                        .push_back(trial);
                }
                state.place_wanted = true;
            }
            SchedulerMsg::Expect(attempts) => {
                let deadline = Instant::now() + state.adoption_grace;
                for expected in attempts {
                    state
                        .expected
                        .insert(expected.attempt, (expected, deadline));
                }
            }
            SchedulerMsg::AgentUp {
                agent,
                slots,
                gpus,
                link,
                running,
                finished,
                reply,
            } => {
                let adopted = state.agent_up(agent, slots, gpus, link, running, finished);
                let _ = reply.send(adopted);
                state.place_wanted = true;
            }
            SchedulerMsg::AgentDown { agent } => {
                state.agent_down(&agent);
            }
            SchedulerMsg::AgentDraining { agent } => {
                if let Some(slots) = state.agents.get_mut(&agent) {
                    tracing::info!(%agent, "agent draining; placing nothing new there");
                    slots.draining = true;
                }
                // Its serving replicas are placed elsewhere while it finishes.
                state.release_replicas_on(&agent);
                state.place_wanted = true;
            }
            SchedulerMsg::TrialStarted { agent, attempt } => {
                if let Some(assignment) = state
                    .assignments
                    .get_mut(&attempt)
                    .filter(|a| a.agent == agent)
                {
                    assignment.started = true;
                    let latency = assignment.decided_at.elapsed();
                    state.to_sweep(
                        attempt,
                        SweepMsg::Started {
                            attempt,
                            dispatch_latency: latency,
                        },
                    );
                }
            }
            SchedulerMsg::TrialMetrics {
                agent,
                attempt,
                points,
            } => {
                if state
                    .assignments
                    .get(&attempt)
                    .is_some_and(|a| a.agent == agent)
                {
                    state.to_sweep(attempt, SweepMsg::Metrics { attempt, points });
                }
            }
            SchedulerMsg::TrialCheckpoint {
                agent,
                attempt,
                checkpoint,
            } => {
                if state
                    .assignments
                    .get(&attempt)
                    .is_some_and(|a| a.agent == agent)
                {
                    state.to_sweep(
                        attempt,
                        SweepMsg::Checkpoint {
                            attempt,
                            checkpoint,
                        },
                    );
                }
            }
            SchedulerMsg::TrialFinished {
                agent,
                attempt,
                outcome,
            } => {
                state.finish(&agent, attempt, outcome);
                state.place_wanted = true;
            }
            SchedulerMsg::CommandRejected {
                agent,
                attempt,
                reason,
            } => {
                tracing::warn!(%agent, attempt = ?attempt.map(|a| a.to_string()), %reason, "agent rejected a command");
                if let Some(attempt) = attempt {
                    // The agent will not run it: placed again elsewhere, nothing spent.
                    if state.release(&agent, attempt) {
                        let cause =
                            LossCause::NotStarted(format!("agent {agent} refused it: {reason}"));
                        state.to_sweep(attempt, SweepMsg::Lost { attempt, cause });
                    }
                    state.place_wanted = true;
                }
            }
            SchedulerMsg::Send {
                agent,
                attempt,
                command,
            } => {
                let Some(assignment) = state.assignments.get(&attempt) else {
                    return Ok(());
                };
                if assignment.agent != agent {
                    return Ok(());
                }
                // An agent of protocol 10 is told how many GPUs the attempt holds there.
                let command = match command {
                    Command::StartTrial(start)
                        if state
                            .agents
                            .get(&agent)
                            .is_some_and(|slots| slots.link.version >= 10) =>
                    {
                        Command::StartAttempt(Box::new(StartAttempt {
                            start: *start,
                            gpus: assignment.gpus,
                        }))
                    }
                    command => command,
                };
                crate::metrics::METRICS
                    .placement_latency
                    .observe(assignment.decided_at.elapsed().as_secs_f64());
                state.send(&agent, command);
            }
            SchedulerMsg::Abandon { agent, attempt } => {
                if state.release(&agent, attempt) {
                    state.place_wanted = true;
                }
            }
            SchedulerMsg::Stop { attempts, reason } => {
                for attempt in attempts {
                    if let Some(assignment) = state.assignments.get(&attempt) {
                        let command = Command::StopTrial { attempt, reason };
                        state.send(&assignment.agent.clone(), command);
                    }
                }
            }
            SchedulerMsg::ForgetSweep { sweep } => {
                state.queues.remove(&sweep);
                state.sweeps.remove(&sweep);
                state.scheduling.remove(&sweep);
                state
                    .expected
                    .retain(|attempt, _| attempt.trial.sweep != sweep);
                let running: Vec<(AttemptId, AgentId)> = state
                    .assignments
                    .iter()
                    .filter(|(attempt, _)| attempt.trial.sweep == sweep)
                    .map(|(attempt, assignment)| (*attempt, assignment.agent.clone()))
                    .collect();
                tracing::warn!(%sweep, running = running.len(), "forgetting a failed sweep; stopping its trials");
                for (attempt, agent) in running {
                    let command = Command::StopTrial {
                        attempt,
                        reason: StopReason::Cancelled,
                    };
                    state.send(&agent, command);
                }
            }
            SchedulerMsg::Unregister { sweep } => {
                state.queues.remove(&sweep);
                state.sweeps.remove(&sweep);
                state.scheduling.remove(&sweep);
            }
            SchedulerMsg::Withdraw { sweep, reply } => {
                let withdrawn = state.queues.remove(&sweep).unwrap_or_default();
                let _ = reply.send(withdrawn.into_iter().map(|trial| trial.attempt).collect());
            }
            SchedulerMsg::Replicas { demands, reply } => {
                state.replica_demands = demands;
                state.release_unwanted_replicas();
                state.update_failed_replicas();
                // The answer says where the replicas are: placed now, not after the burst.
                state.place();
                let placed = state
                    .replica_demands
                    .iter()
                    .map(|demand| {
                        let agents = state
                            .replicas
                            .get(&demand.model)
                            .map(|replicas| replicas.agents.clone())
                            .unwrap_or_default();
                        (demand.model.clone(), agents)
                    })
                    .collect();
                let _ = reply.send(placed);
            }
            SchedulerMsg::Usage(reply) => {
                let mut usage: HashMap<AgentId, AgentUsage> = state
                    .agents
                    .iter()
                    .map(|(agent, slots)| {
                        let usage = AgentUsage {
                            slots: slots.slots,
                            busy_slots: slots.busy,
                            gpus: slots.gpus,
                            busy_gpus: slots.busy_gpus,
                            running: Vec::new(),
                            replicas: Vec::new(),
                            draining: slots.draining || state.cordoned.contains(agent),
                        };
                        (agent.clone(), usage)
                    })
                    .collect();
                for (attempt, assignment) in &state.assignments {
                    usage
                        .entry(assignment.agent.clone())
                        .or_default()
                        .running
                        .push(*attempt);
                }
                for (model, replicas) in &state.replicas {
                    for agent in &replicas.agents {
                        usage
                            .entry(agent.clone())
                            .or_default()
                            .replicas
                            .push(model.clone());
                    }
                }
                let _ = reply.send(usage);
            }
            SchedulerMsg::Demand(reply) => {
                // Replicas count as work: missing ones as pending, placed ones as running, so
                // the fleet grows for them and an agent serving one is never idle.
                let missing_replica_slots: u32 = state
                    .replica_demands
                    .iter()
                    .filter(|demand| !demand.retiring)
                    .map(|demand| {
                        let placed = state
                            .replicas
                            .get(&demand.model)
                            .map_or(0, |replicas| replicas.agents.len() as u32);
                        demand.replicas.saturating_sub(placed) * demand.slots.max(1)
                    })
                    .sum();
                let pending_slots = state
                    .queues
                    .values()
                    .flatten()
                    .map(|trial| trial.slots)
                    .sum::<u32>()
                    + missing_replica_slots;
                let running_slots = state.assignments.values().map(|a| a.slots).sum::<u32>()
                    + state
                        .replicas
                        .values()
                        .map(|replicas| replicas.slots * replicas.holding().count() as u32)
                        .sum::<u32>();
                let busy = state
                    .assignments
                    .values()
                    .map(|a| a.agent.0.clone())
                    .chain(
                        state
                            .replicas
                            .values()
                            .flat_map(|replicas| replicas.holding().map(|a| a.0.clone())),
                    )
                    .collect();
                let connected = state.agents.keys().map(|agent| agent.0.clone()).collect();
                let _ = reply.send(Demand {
                    pending_slots,
                    running_slots,
                    busy,
                    connected,
                });
            }
            SchedulerMsg::Cordon {
                agent,
                cordoned,
                reply,
            } => {
                let known = state.agents.contains_key(&agent);
                if cordoned {
                    tracing::info!(%agent, "agent cordoned; placing nothing new there");
                    state.cordoned.insert(agent.clone());
                } else {
                    tracing::info!(%agent, "agent uncordoned");
                    state.cordoned.remove(&agent);
                    state.losses.remove(&agent);
                    state.place_wanted = true;
                }
                // Answered once stored: an acknowledged cordon survives a leader change.
                state.store_cordon(agent, cordoned).await;
                let _ = reply.send(known);
            }
            SchedulerMsg::Drain { agent, reply } => {
                let known = state.agents.contains_key(&agent);
                let newly = state.cordoned.insert(agent.clone());
                state.drain(&agent);
                // Its serving replicas move too (placed elsewhere now; the agent stops its
                // programs when Models takes them off it).
                state.release_replicas_on(&agent);
                state.place_wanted = true;
                if newly {
                    state.store_cordon(agent, true).await;
                }
                if let Some(reply) = reply {
                    let _ = reply.send(known);
                }
            }
            SchedulerMsg::Place => {
                state.place_queued = false;
                state.place_wanted = false;
                state.place();
            }
            SchedulerMsg::ExpireExpected => {
                let now = Instant::now();
                let expired: Vec<AttemptId> = state
                    .expected
                    .iter()
                    .filter(|(_, (_, deadline))| *deadline <= now)
                    .map(|(attempt, _)| *attempt)
                    .collect();
                for attempt in expired {
                    state.expected.remove(&attempt);
                    tracing::info!(%attempt, "restored attempt was not reported by its agent; re-placing it");
                    let cause = LossCause::AgentLost;
                    state.to_sweep(attempt, SweepMsg::Lost { attempt, cause });
                }
            }
        }
        // Placement runs once after a burst of messages (results, enqueues, agents) rather
        // than once per message: the request goes to the back of the mailbox.
        if state.place_wanted && !state.place_queued {
            state.place_queued = true;
            myself.cast(SchedulerMsg::Place)?;
        }
        Ok(())
    }
}

impl SchedulerState {
    async fn store_cordon(&self, agent: AgentId, cordoned: bool) {
        let write = crate::store::StateWrite::Cordon {
            agent: agent.clone(),
            cordoned,
        };
        if let Err(error) = self.store.write(vec![write]).durable().await {
            tracing::warn!(%agent, cordoned, %error, "the cordon is in effect but not stored; it ends with this leader");
        }
    }

    fn to_sweep(&self, attempt: AttemptId, message: SweepMsg) {
        if let Some(sweep) = self.sweeps.get(&attempt.trial.sweep) {
            let _ = sweep.cast(message);
        }
    }

    /// Has the agent checkpoint and stop what it runs. An agent older than protocol 8 has
    /// no `Drain` command: each of its attempts is stopped as at its own shutdown (which
    /// checkpoints too and spends no retry budget).
    fn drain(&self, agent: &AgentId) {
        let Some(slots) = self.agents.get(agent) else {
            return;
        };
        tracing::info!(%agent, "draining agent: its trials checkpoint and resume elsewhere");
        if slots.link.version >= 8 {
            self.send(agent, Command::Drain);
        } else {
            for (attempt, assignment) in &self.assignments {
                if &assignment.agent == agent {
                    let command = Command::StopTrial {
                        attempt: *attempt,
                        reason: StopReason::AgentShutdown,
                    };
                    self.send(agent, command);
                }
            }
        }
    }

    fn send(&self, agent: &AgentId, command: Command) {
        if let Some(slots) = self.agents.get(agent) {
            let _ = slots.link.commands.send(CoordinatorCommand {
                epoch: self.epoch,
                command,
            });
        }
    }

    /// Records an assignment and what it holds for its sweep's fair share.
    fn assign(&mut self, attempt: AttemptId, assignment: Assignment) {
        self.held
            .entry(attempt.trial.sweep)
            .or_default()
            .add(assignment.slots, assignment.gpus);
        if let Some(replaced) = self.assignments.insert(attempt, assignment) {
            self.forget_held(attempt.trial.sweep, &replaced);
        }
    }

    /// Removes an assignment and what it held for its sweep.
    fn unassign(&mut self, attempt: AttemptId) -> Option<Assignment> {
        let assignment = self.assignments.remove(&attempt)?;
        self.forget_held(attempt.trial.sweep, &assignment);
        Some(assignment)
    }

    fn forget_held(&mut self, sweep: SweepId, assignment: &Assignment) {
        if let Some(held) = self.held.get_mut(&sweep) {
            held.remove(assignment.slots, assignment.gpus);
            if *held == Usage::default() {
                self.held.remove(&sweep);
            }
        }
    }

    /// Frees the attempt's slot if it is assigned to `agent`; whether it was.
    fn release(&mut self, agent: &AgentId, attempt: AttemptId) -> bool {
        if self
            .expected
            .get(&attempt)
            .is_some_and(|(expected, _)| &expected.agent == agent)
        {
            self.expected.remove(&attempt);
            return true;
        }
        let Some(assignment) = self.assignments.get(&attempt) else {
            return false;
        };
        if &assignment.agent != agent {
            return false;
        }
        let (slots, gpus) = (assignment.slots, assignment.gpus);
        self.unassign(attempt);
        if let Some(agent_slots) = self.agents.get_mut(agent) {
            agent_slots.busy = agent_slots.busy.saturating_sub(slots);
            agent_slots.busy_gpus = agent_slots.busy_gpus.saturating_sub(gpus);
        }
        true
    }

    fn finish(&mut self, agent: &AgentId, attempt: AttemptId, outcome: TrialOutcome) {
        if self.release(agent, attempt) {
            self.to_sweep(attempt, SweepMsg::Finished { attempt, outcome });
        } else {
            tracing::debug!(%agent, %attempt, "ignoring a result for an attempt not assigned to this agent");
        }
    }

    fn agent_up(
        &mut self,
        agent: AgentId,
        slots: u32,
        gpus: u32,
        link: AgentLink,
        running: Vec<AttemptId>,
        finished: Vec<(AttemptId, TrialOutcome)>,
    ) -> Vec<AttemptId> {
        let now = Instant::now();
        // Restored attempts this agent reports become assignments again.
        let mut adopted = Vec::new();
        for attempt in &running {
            let known = self
                .assignments
                .get(attempt)
                .is_some_and(|a| a.agent == agent);
            let expected = self
                .expected
                .get(attempt)
                .is_some_and(|(e, _)| e.agent == agent);
            if expected && let Some((restored, _)) = self.expected.remove(attempt) {
                self.assign(
                    *attempt,
                    Assignment {
                        agent: agent.clone(),
                        slots: restored.slots,
                        gpus: restored.gpus,
                        decided_at: now,
                        started: true,
                    },
                );
            }
            if known && let Some(assignment) = self.assignments.get_mut(attempt) {
                assignment.started = true;
            }
            if known || expected {
                adopted.push(*attempt);
            }
        }
        // Attempts assigned to this agent that it neither runs nor finished were lost with
        // its previous connection.
        let finished_attempts: Vec<AttemptId> =
            finished.iter().map(|(attempt, _)| *attempt).collect();
        let vanished: Vec<AttemptId> = self
            .assignments
            .iter()
            .filter(|(attempt, a)| {
                a.agent == agent
                    && !running.contains(attempt)
                    && !finished_attempts.contains(attempt)
            })
            .map(|(attempt, _)| *attempt)
            .collect();
        let (busy, busy_gpus) = self
            .assignments
            .values()
            .filter(|a| a.agent == agent)
            .map(|a| (a.slots, a.gpus))
            .chain(
                self.replicas
                    .values()
                    .filter(|replicas| replicas.holding().any(|holder| holder == &agent))
                    .map(|replicas| (replicas.slots, replicas.gpus)),
            )
            .fold((0, 0), |(slots, gpus), (s, g)| (slots + s, gpus + g));
        self.agents.insert(
            agent.clone(),
            AgentSlots {
                slots,
                gpus,
                busy,
                busy_gpus,
                draining: false,
                link,
            },
        );
        // Expected attempts (stored as running on this agent before a restart or takeover)
        // that it neither runs nor finished never reached it: the previous leader stored the
        // placement and died before its start command got out. No need to wait for the
        // adoption grace; a later start from that leader would be refused for its old epoch.
        let never_started: Vec<AttemptId> = self
            .expected
            .iter()
            .filter(|(attempt, (expected, _))| {
                expected.agent == agent
                    && !running.contains(attempt)
                    && !finished_attempts.contains(attempt)
            })
            .map(|(attempt, _)| *attempt)
            .collect();
        // A vanished attempt that had started went down with the agent's previous process;
        // one that had not was a start that never reached it.
        let mut lost_running = 0;
        for attempt in vanished {
            let started = self.assignments.get(&attempt).is_some_and(|a| a.started);
            if self.release(&agent, attempt) {
                let cause = if started {
                    lost_running += 1;
                    LossCause::AgentLost
                } else {
                    LossCause::NotStarted(format!("the start did not reach agent {agent}"))
                };
                self.to_sweep(attempt, SweepMsg::Lost { attempt, cause });
            }
        }
        for attempt in never_started {
            if self.release(&agent, attempt) {
                let cause = LossCause::NotStarted(format!(
                    "a previous leader placed it on agent {agent} but its start never got there"
                ));
                self.to_sweep(attempt, SweepMsg::Lost { attempt, cause });
            }
        }
        if lost_running > 0 {
            self.count_loss(&agent);
        }
        for (attempt, outcome) in finished {
            self.finish(&agent, attempt, outcome);
        }
        tracing::info!(%agent, slots, adopted = adopted.len(), "agent up");
        adopted
    }

    fn agent_down(&mut self, agent: &AgentId) {
        self.release_replicas_on(agent);
        self.agents.remove(agent);
        let lost: Vec<AttemptId> = self
            .assignments
            .iter()
            .filter(|(_, assignment)| &assignment.agent == agent)
            .map(|(attempt, _)| *attempt)
            .chain(
                self.expected
                    .iter()
                    .filter(|(_, (e, _))| &e.agent == agent)
                    .map(|(attempt, _)| *attempt),
            )
            .collect();
        tracing::warn!(%agent, lost = lost.len(), "agent lost; its attempts go back to their sweeps");
        let mut lost_running = 0;
        for attempt in lost {
            // Restored attempts (expected) were running by the store's account.
            let started = self.expected.remove(&attempt).is_some()
                || self
                    .unassign(attempt)
                    .is_some_and(|assignment| assignment.started);
            let cause = if started {
                lost_running += 1;
                LossCause::AgentLost
            } else {
                LossCause::NotStarted(format!("agent {agent} was lost before it started"))
            };
            self.to_sweep(attempt, SweepMsg::Lost { attempt, cause });
        }
        if lost_running > 0 {
            self.count_loss(agent);
        }
        self.place_wanted = true;
    }

    /// One more time `agent` went down (or came back) without the trials it ran. An agent
    /// that does so [`SchedulerState::cordon_after_losses`] times within
    /// [`LOSS_WINDOW`] is cordoned: something on that host kills what runs there.
    fn count_loss(&mut self, agent: &AgentId) {
        if self.cordon_after_losses == 0 {
            return;
        }
        let now = Instant::now();
        let losses = self.losses.entry(agent.clone()).or_default();
        losses.push_back(now);
        while losses
            .front()
            .is_some_and(|at| now.duration_since(*at) > LOSS_WINDOW)
        {
            losses.pop_front();
        }
        let count = losses.len() as u32;
        if count < self.cordon_after_losses || self.cordoned.contains(agent) {
            return;
        }
        tracing::error!(
            %agent,
            losses = count,
            window = ?LOSS_WINDOW,
            "agent lost the trials it ran {count} times; cordoned automatically (uncordon with `flotilla agent uncordon {agent}` once the host is fixed)"
        );
        crate::metrics::METRICS.agents_auto_cordoned.inc();
        self.cordoned.insert(agent.clone());
        self.losses.remove(agent);
        let write = crate::store::StateWrite::Cordon {
            agent: agent.clone(),
            cordoned: true,
        };
        let store = self.store.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(error) = store.write(vec![write]).durable().await {
                tracing::warn!(%agent, %error, "the automatic cordon is in effect but not stored; it ends with this leader");
            }
        });
    }

    /// Frees what a replica of `model` holds on `agent`, if it holds anything there.
    fn release_replica(&mut self, model: &ModelRef, agent: &AgentId) {
        let Some(replicas) = self.replicas.get_mut(model) else {
            return;
        };
        let before = replicas.agents.len();
        replicas.agents.retain(|holder| holder != agent);
        let held = !replicas.failed.remove(agent);
        if replicas.agents.len() == before {
            return;
        }
        tracing::info!(%model, %agent, "serving replica released");
        if !held {
            return;
        }
        let (slots, gpus) = (replicas.slots, replicas.gpus);
        if let Some(agent_slots) = self.agents.get_mut(agent) {
            agent_slots.busy = agent_slots.busy.saturating_sub(slots);
            agent_slots.busy_gpus = agent_slots.busy_gpus.saturating_sub(gpus);
        }
    }

    /// A replica whose program failed on its agent holds nothing there; one that runs again
    /// (the agent was told to load it anew) holds its slots and GPUs again.
    fn update_failed_replicas(&mut self) {
        for demand in &self.replica_demands {
            let Some(replicas) = self.replicas.get_mut(&demand.model) else {
                continue;
            };
            for agent in &replicas.agents {
                let failed = demand.failed.contains(agent);
                if failed == replicas.failed.contains(agent) {
                    continue;
                }
                let Some(agent_slots) = self.agents.get_mut(agent) else {
                    continue;
                };
                if failed {
                    tracing::info!(model = %demand.model, %agent, "failed serving replica frees its slots and GPUs");
                    replicas.failed.insert(agent.clone());
                    agent_slots.busy = agent_slots.busy.saturating_sub(replicas.slots);
                    agent_slots.busy_gpus = agent_slots.busy_gpus.saturating_sub(replicas.gpus);
                } else {
                    replicas.failed.remove(agent);
                    agent_slots.busy += replicas.slots;
                    agent_slots.busy_gpus += replicas.gpus;
                }
            }
        }
    }

    /// Frees every replica on `agent` (lost or drained); they are placed again elsewhere.
    fn release_replicas_on(&mut self, agent: &AgentId) {
        let models: Vec<ModelRef> = self
            .replicas
            .iter()
            .filter(|(_, replicas)| replicas.agents.contains(agent))
            .map(|(model, _)| model.clone())
            .collect();
        for model in models {
            self.release_replica(&model, agent);
        }
    }

    /// Frees replicas of versions no longer demanded, those on agents that may no longer
    /// hold them (not serving any more; a retiring version keeps what it has), and those
    /// beyond the number a version asks for.
    fn release_unwanted_replicas(&mut self) {
        let mut unwanted = Vec::new();
        for (model, replicas) in &self.replicas {
            let demand = self.replica_demands.iter().find(|d| &d.model == model);
            for agent in &replicas.agents {
                let keep = demand.is_some_and(|demand| {
                    demand.retiring
                        || demand.eligible.contains(agent)
                        || demand.running.contains(agent)
                });
                if !keep {
                    unwanted.push((model.clone(), agent.clone()));
                }
            }
        }
        // More replicas than asked for: the newest go.
        for demand in self.replica_demands.iter().filter(|d| !d.retiring) {
            if let Some(replicas) = self.replicas.get(&demand.model) {
                let keep = demand.replicas as usize;
                for agent in replicas.agents.iter().skip(keep) {
                    unwanted.push((demand.model.clone(), agent.clone()));
                }
            }
        }
        for (model, agent) in unwanted {
            self.release_replica(&model, &agent);
        }
        self.replicas
            .retain(|_, replicas| !replicas.agents.is_empty());
    }

    /// Places the serving replicas that are missing where they fit (never on a draining or
    /// cordoned agent, unless it already runs the replica).
    fn place_replicas(&mut self) {
        if self.replica_demands.is_empty() {
            return;
        }
        let mut capacity: Vec<Capacity> = self
            .agents
            .iter()
            .filter(|(_, slots)| !slots.draining)
            .map(|(agent, slots)| Capacity {
                agent: agent.clone(),
                free_slots: slots.slots.saturating_sub(slots.busy),
                free_gpus: slots.gpus.saturating_sub(slots.busy_gpus),
                slots: slots.slots,
                gpus: slots.gpus,
            })
            .collect();
        let demands: Vec<ReplicaDemand> = self
            .replica_demands
            .iter()
            .map(|demand| ReplicaDemand {
                eligible: demand
                    .eligible
                    .iter()
                    .filter(|agent| !self.cordoned.contains(*agent))
                    .cloned()
                    .collect(),
                ..demand.clone()
            })
            .collect();
        let mut held: BTreeMap<ModelRef, Vec<AgentId>> = self
            .replicas
            .iter()
            .map(|(model, replicas)| (model.clone(), replicas.agents.clone()))
            .collect();
        let placed = placement::place_replicas(&demands, &mut held, &mut capacity);
        for (model, agent) in placed {
            let Some(demand) = demands.iter().find(|d| d.model == model) else {
                continue;
            };
            if let Some(agent_slots) = self.agents.get_mut(&agent) {
                agent_slots.busy += demand.slots;
                agent_slots.busy_gpus += demand.gpus;
            }
            tracing::info!(%model, %agent, slots = demand.slots, gpus = demand.gpus, "serving replica placed");
            self.replicas
                .entry(model)
                .or_insert_with(|| Replicas {
                    slots: demand.slots,
                    gpus: demand.gpus,
                    agents: Vec::new(),
                    failed: BTreeSet::new(),
                })
                .agents
                .push(agent);
        }
    }

    /// Places the missing serving replicas, then every queued trial that fits, and sends
    /// the start commands.
    fn place(&mut self) {
        self.place_replicas();
        if self.queues.is_empty() {
            return;
        }
        let mut capacity: Vec<Capacity> = self
            .agents
            .iter()
            .filter(|(agent, slots)| !slots.draining && !self.cordoned.contains(*agent))
            .map(|(agent, slots)| Capacity {
                agent: agent.clone(),
                free_slots: slots.slots.saturating_sub(slots.busy),
                free_gpus: slots.gpus.saturating_sub(slots.busy_gpus),
                slots: slots.slots,
                gpus: slots.gpus,
            })
            .collect();
        let active = self
            .queues
            .keys()
            .chain(self.held.keys())
            .copied()
            .collect();
        let weights = placement::weights(&self.scheduling, &self.team_shares, &active);
        let placed = self
            .fair
            .assign(&mut self.queues, &self.held, &weights, &mut capacity);
        let now = Instant::now();
        for (trial, agent) in placed {
            let attempt = trial.attempt;
            if let Some(agent_slots) = self.agents.get_mut(&agent) {
                agent_slots.busy += trial.slots;
                agent_slots.busy_gpus += trial.gpus;
            }
            self.assign(
                attempt,
                Assignment {
                    agent: agent.clone(),
                    slots: trial.slots,
                    gpus: trial.gpus,
                    decided_at: now,
                    started: false,
                },
            );
            let start = StartTrial {
                attempt,
                params: trial.params,
                trial: (*trial.trial).clone(),
                resume_from: trial.resume_from,
                slots: trial.slots,
            };
            // The Sweep records the placement and has the start sent once it is durable.
            self.to_sweep(
                attempt,
                SweepMsg::Dispatched {
                    attempt,
                    agent: agent.clone(),
                    start: Box::new(start),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Scheduler with two agents of one slot and one GPU each, on a local store.
    async fn scheduler(
        dir: &std::path::Path,
    ) -> (
        ActorRef<SchedulerMsg>,
        Vec<mpsc::UnboundedReceiver<CoordinatorCommand>>,
    ) {
        let store = crate::store::local::LocalStore::open(&dir.join("state.log")).expect("store");
        let args = SchedulerArgs {
            epoch: Epoch(1),
            adoption_grace: Duration::from_secs(5),
            store: std::sync::Arc::new(store),
            cordoned: BTreeSet::new(),
            cordon_after_losses: 3,
            team_shares: BTreeMap::new(),
        };
        let (scheduler, _) = Actor::spawn(None, Scheduler, args)
            .await
            .expect("scheduler");
        let mut receivers = Vec::new();
        for (index, name) in ["a", "b"].into_iter().enumerate() {
            let (commands, receiver) = mpsc::unbounded_channel();
            receivers.push(receiver);
            let link = AgentLink {
                connection: index as u64,
                commands,
                close: CancellationToken::new(),
                version: flotilla_protocol::handshake::PROTOCOL_VERSION,
            };
            super::super::ask(&scheduler, |reply| SchedulerMsg::AgentUp {
                agent: AgentId(name.into()),
                slots: 1,
                gpus: 1,
                link,
                running: Vec::new(),
                finished: Vec::new(),
                reply,
            })
            .await
            .expect("agent up");
        }
        (scheduler, receivers)
    }

    fn demand(replicas: u32) -> ReplicaDemand {
        ReplicaDemand {
            model: "m@1.0.0".parse().expect("model"),
            replicas,
            slots: 1,
            gpus: 1,
            eligible: vec![AgentId("a".into()), AgentId("b".into())],
            running: Vec::new(),
            failed: Vec::new(),
            retiring: false,
        }
    }

    async fn place(scheduler: &ActorRef<SchedulerMsg>, replicas: u32) -> Vec<AgentId> {
        let placed = super::super::ask(scheduler, |reply| SchedulerMsg::Replicas {
            demands: vec![demand(replicas)],
            reply,
        })
        .await
        .expect("replicas");
        placed.values().next().cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn replicas_count_as_work_stay_on_a_cordoned_agent_and_leave_a_drained_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (scheduler, _receivers) = scheduler(dir.path()).await;
        let holder = place(&scheduler, 1).await;
        assert_eq!(holder.len(), 1);
        let holder = holder[0].clone();
        let other = AgentId(if holder.0 == "a" { "b" } else { "a" }.into());

        // The replica holds its agent's slot and GPU; the autoscaler sees the agent busy.
        let usage = super::super::ask(&scheduler, SchedulerMsg::Usage)
            .await
            .expect("usage");
        assert_eq!(usage[&holder].busy_slots, 1);
        assert_eq!(usage[&holder].busy_gpus, 1);
        assert_eq!(usage[&holder].replicas.len(), 1);
        let demand_now = super::super::ask(&scheduler, SchedulerMsg::Demand)
            .await
            .expect("demand");
        assert_eq!(demand_now.running_slots, 1);
        assert!(demand_now.busy.contains(&holder.0));
        assert_eq!(demand_now.pending_slots, 0);

        // Three wanted, two agents: one replica each, the third counted as pending work.
        let placed = place(&scheduler, 3).await;
        assert_eq!(placed.len(), 2, "{placed:?}");
        let demand_now = super::super::ask(&scheduler, SchedulerMsg::Demand)
            .await
            .expect("demand");
        assert_eq!(demand_now.pending_slots, 1);

        // A cordon keeps what runs there; a drain moves it (here: nowhere to go but wait).
        super::super::ask(&scheduler, |reply| SchedulerMsg::Cordon {
            agent: holder.clone(),
            cordoned: true,
            reply,
        })
        .await
        .expect("cordon");
        let placed = place(&scheduler, 1).await;
        assert_eq!(
            placed,
            vec![holder.clone()],
            "a cordoned agent keeps its replica"
        );
        super::super::ask(&scheduler, |reply| SchedulerMsg::Drain {
            agent: other.clone(),
            reply: Some(reply),
        })
        .await
        .expect("drain");
        let placed = place(&scheduler, 2).await;
        assert_eq!(
            placed,
            vec![holder],
            "the drained agent's replica is released and nothing else may take it"
        );
    }
}
