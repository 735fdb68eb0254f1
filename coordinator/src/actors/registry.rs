//! Registry: which agents exist, how to reach them, and whether they are alive.
//!
//! Place in the tree: child of the Leader. Agent sessions report registrations, heartbeats
//! and disconnects here. A disconnect alone does not lose an agent — it may reconnect within
//! moments and report its running trials. An agent is lost when no heartbeat arrived for
//! `agent_timeout`; the Scheduler is then told, and the agent's trials run elsewhere. Each
//! registration is stored; agents known from the store are listed as disconnected until
//! they register with this leader.
//!
//! Failure: linked to the Leader; a failure stops the coordinator (state is in the store).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_protocol::AgentId;
use flotilla_protocol::messages::{AgentInfo, Registration};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::scheduler::{AgentLink, SchedulerMsg};
use crate::clock::now_ms;
use crate::store::{AgentRecord, StateStore, StateWrite};

pub enum RegistryMsg {
    Register {
        registration: Registration,
        link: AgentLink,
        reply: RpcReplyPort<Vec<flotilla_protocol::AttemptId>>,
    },
    Heartbeat {
        agent: AgentId,
        connection: u64,
    },
    Disconnected {
        agent: AgentId,
        connection: u64,
    },
    CheckLiveness,
    List(RpcReplyPort<Vec<AgentInfo>>),
}

pub struct RegistryArgs {
    pub scheduler: ActorRef<SchedulerMsg>,
    pub agent_timeout: Duration,
    pub store: Arc<dyn StateStore>,
    /// Agents registered with earlier leaders (or before a restart), listed as disconnected
    /// until they register again.
    pub known: BTreeMap<AgentId, AgentRecord>,
}

struct AgentEntry {
    registration: Registration,
    link: AgentLink,
    connected: bool,
    last_seen: Instant,
}

pub struct RegistryState {
    scheduler: ActorRef<SchedulerMsg>,
    agent_timeout: Duration,
    agents: BTreeMap<AgentId, AgentEntry>,
    store: Arc<dyn StateStore>,
    known: BTreeMap<AgentId, AgentRecord>,
}

pub struct Registry;

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RegistryMsg>,
        args: RegistryArgs,
    ) -> Result<RegistryState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(250), || RegistryMsg::CheckLiveness);
        Ok(RegistryState {
            scheduler: args.scheduler,
            agent_timeout: args.agent_timeout,
            agents: BTreeMap::new(),
            store: args.store,
            known: args.known,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RegistryMsg>,
        message: RegistryMsg,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RegistryMsg::Register {
                registration,
                link,
                reply,
            } => {
                let agent = registration.agent_id.clone();
                let record = AgentRecord {
                    id: agent.clone(),
                    hostname: registration.hostname.clone(),
                    slots: registration.slots,
                    gpus: registration.gpus,
                    version: registration.version.clone(),
                    registered_ms: now_ms(),
                };
                // Kept for operators (`cluster agents` after a takeover); not awaited.
                drop(
                    state
                        .store
                        .write(vec![StateWrite::Agent(Box::new(record.clone()))]),
                );
                state.known.insert(agent.clone(), record);
                let message = SchedulerMsg::AgentUp {
                    agent: agent.clone(),
                    slots: registration.slots,
                    gpus: registration.gpus,
                    link: link.clone(),
                    running: registration.running.clone(),
                    finished: registration.finished.clone(),
                    reply,
                };
                state.agents.insert(
                    agent,
                    AgentEntry {
                        registration,
                        link: link.clone(),
                        connected: true,
                        last_seen: Instant::now(),
                    },
                );
                state.scheduler.cast(message)?;
            }
            RegistryMsg::Heartbeat { agent, connection } => {
                if let Some(entry) = state
                    .agents
                    .get_mut(&agent)
                    .filter(|entry| entry.link.connection == connection)
                {
                    entry.last_seen = Instant::now();
                }
            }
            RegistryMsg::Disconnected { agent, connection } => {
                if let Some(entry) = state
                    .agents
                    .get_mut(&agent)
                    .filter(|entry| entry.link.connection == connection)
                {
                    tracing::info!(%agent, "agent disconnected; waiting for it to come back");
                    entry.connected = false;
                }
            }
            RegistryMsg::CheckLiveness => {
                let timeout = state.agent_timeout;
                let lost: Vec<AgentId> = state
                    .agents
                    .iter()
                    .filter(|(_, entry)| entry.last_seen.elapsed() > timeout)
                    .map(|(agent, _)| agent.clone())
                    .collect();
                for agent in lost {
                    if let Some(entry) = state.agents.remove(&agent) {
                        // If it is only quiet, not gone, it must register again.
                        entry.link.close.cancel();
                    }
                    tracing::warn!(%agent, timeout_ms = timeout.as_millis() as u64, "no heartbeat from agent; declaring it lost");
                    state.scheduler.cast(SchedulerMsg::AgentDown { agent })?;
                }
            }
            RegistryMsg::List(reply) => {
                let usage = super::ask(&state.scheduler, SchedulerMsg::Usage)
                    .await
                    .unwrap_or_default();
                let now = now_ms();
                let remembered = state
                    .known
                    .values()
                    .filter(|record| !state.agents.contains_key(&record.id))
                    .map(|record| AgentInfo {
                        id: record.id.clone(),
                        hostname: record.hostname.clone(),
                        slots: record.slots,
                        busy_slots: 0,
                        gpus: record.gpus,
                        connected: false,
                        last_seen_ms_ago: now.saturating_sub(record.registered_ms),
                        running: Vec::new(),
                        draining: false,
                        version: record.version.clone(),
                    });
                let mut agents: Vec<AgentInfo> = state
                    .agents
                    .iter()
                    .map(|(agent, entry)| {
                        let mut usage = usage.get(agent).cloned().unwrap_or_default();
                        usage.running.sort();
                        AgentInfo {
                            id: agent.clone(),
                            hostname: entry.registration.hostname.clone(),
                            slots: entry.registration.slots,
                            busy_slots: usage.busy_slots,
                            gpus: entry.registration.gpus,
                            connected: entry.connected,
                            last_seen_ms_ago: entry.last_seen.elapsed().as_millis() as u64,
                            running: usage.running,
                            draining: usage.draining,
                            version: entry.registration.version.clone(),
                        }
                    })
                    .collect();
                agents.extend(remembered);
                agents.sort_by(|a, b| a.id.cmp(&b.id));
                let _ = reply.send(agents);
            }
        }
        Ok(())
    }
}
