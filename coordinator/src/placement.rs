//! Where queued trials and serving replicas run: pure functions over demands and free
//! capacity.
//!
//! Fairness: sweeps take turns (round robin, starting after the sweep served last), one
//! trial per turn, so a 10,000-trial sweep cannot starve one submitted after it. Spread:
//! a trial goes to the eligible agent with the most free slots (ties: the lowest agent id),
//! which keeps load even and process start-up parallel across hosts.
//!
//! Serving replicas ([`place_replicas`]) are placed before queued trials, hold their slots
//! and GPUs like a trial, and spread the same way: a replica goes first to an agent that
//! already runs it (a new leader keeps replicas where they are), then to the agent with the
//! fewest replicas, then the most free GPUs (GPU replicas) or slots.

use std::collections::{BTreeMap, VecDeque};

use flotilla_protocol::models::ModelRef;
use flotilla_protocol::{AgentId, SweepId};

/// What a queued trial needs.
pub trait Demand {
    fn slots(&self) -> u32;
    fn gpus(&self) -> u32;
}

/// An agent's free capacity as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub agent: AgentId,
    pub free_slots: u32,
    /// GPUs not reserved by trials already placed there.
    pub free_gpus: u32,
}

/// Pops every trial that fits somewhere and says where it goes. `last_served` is updated
/// so the next call continues the round robin.
pub fn assign<T: Demand>(
    queues: &mut BTreeMap<SweepId, VecDeque<T>>,
    last_served: &mut Option<SweepId>,
    agents: &mut [Capacity],
) -> Vec<(T, AgentId)> {
    let mut placed = Vec::new();
    loop {
        let order = turn_order(queues, *last_served);
        let mut progressed = false;
        for sweep in order {
            let Some(queue) = queues.get_mut(&sweep) else {
                continue;
            };
            let Some(head) = queue.front() else { continue };
            let Some(index) = choose_agent(agents, head.slots(), head.gpus()) else {
                continue;
            };
            let Some(trial) = queue.pop_front() else {
                continue;
            };
            agents[index].free_slots -= trial.slots();
            agents[index].free_gpus -= trial.gpus();
            placed.push((trial, agents[index].agent.clone()));
            *last_served = Some(sweep);
            progressed = true;
        }
        queues.retain(|_, queue| !queue.is_empty());
        if !progressed || queues.is_empty() {
            return placed;
        }
    }
}

/// Sweeps with queued trials, starting after `last_served`.
fn turn_order<T>(
    queues: &BTreeMap<SweepId, VecDeque<T>>,
    last_served: Option<SweepId>,
) -> Vec<SweepId> {
    let mut order: Vec<SweepId> = queues
        .iter()
        .filter(|(_, queue)| !queue.is_empty())
        .map(|(sweep, _)| *sweep)
        .collect();
    if let Some(last) = last_served {
        let split = order.partition_point(|sweep| *sweep <= last);
        order.rotate_left(split);
    }
    order
}

/// The eligible agent with the most free slots; ties go to the lowest agent id.
pub fn choose_agent(agents: &[Capacity], slots: u32, gpus: u32) -> Option<usize> {
    agents
        .iter()
        .enumerate()
        .filter(|(_, agent)| agent.free_slots >= slots && agent.free_gpus >= gpus)
        .max_by(|(_, left), (_, right)| {
            left.free_slots
                .cmp(&right.free_slots)
                .then_with(|| right.agent.cmp(&left.agent))
        })
        .map(|(index, _)| index)
}

/// A served program's version that wants `replicas` agents, each replica holding `slots`
/// and `gpus` there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDemand {
    pub model: ModelRef,
    pub replicas: u32,
    pub slots: u32,
    pub gpus: u32,
    /// Agents that may take a new replica (serving agents of a recent enough protocol).
    pub eligible: Vec<AgentId>,
    /// Agents that report running it already: kept, or taken first, whatever their free
    /// capacity says (the program holds its resources there already).
    pub running: Vec<AgentId>,
    /// Agents where its program failed to start (reported `Failed`): the replica stays
    /// there, shown as failed and not placed again, but holds no slot or GPU.
    pub failed: Vec<AgentId>,
    /// A version leaving service: it keeps the replicas it has and gets no new ones.
    pub retiring: bool,
}

/// Adds the replicas each demand is missing to `held` (model → agents), taking their slots
/// and GPUs out of `agents`; returns the new placements. Replicas already held are not
/// moved. A replica that fits nowhere stays missing until capacity frees.
pub fn place_replicas(
    demands: &[ReplicaDemand],
    held: &mut BTreeMap<ModelRef, Vec<AgentId>>,
    agents: &mut [Capacity],
) -> Vec<(ModelRef, AgentId)> {
    let mut placed = Vec::new();
    for demand in demands {
        let mut holders = held.get(&demand.model).cloned().unwrap_or_default();
        if demand.retiring {
            continue;
        }
        while holders.len() < demand.replicas as usize {
            let mut load: BTreeMap<&AgentId, usize> = BTreeMap::new();
            for agent in held.values().flatten().chain(holders.iter()) {
                *load.entry(agent).or_default() += 1;
            }
            let best = agents
                .iter()
                .enumerate()
                .filter(|(_, agent)| !holders.contains(&agent.agent))
                .filter(|(_, agent)| {
                    let runs = demand.running.contains(&agent.agent);
                    let fits = agent.free_slots >= demand.slots && agent.free_gpus >= demand.gpus;
                    runs || (fits && demand.eligible.contains(&agent.agent))
                })
                .min_by_key(|(_, agent)| {
                    let runs = demand.running.contains(&agent.agent);
                    let load = load.get(&agent.agent).copied().unwrap_or_default();
                    // A GPU replica goes where most GPUs are free; a CPU replica where
                    // most slots are, sparing agents with free GPUs for work that needs them.
                    let room = if demand.gpus > 0 {
                        (agent.free_gpus, agent.free_slots, 0)
                    } else {
                        (agent.free_slots, 0, u32::MAX - agent.free_gpus)
                    };
                    (!runs, load, std::cmp::Reverse(room), agent.agent.clone())
                })
                .map(|(index, _)| index);
            let Some(index) = best else { break };
            let agent = &mut agents[index];
            agent.free_slots = agent.free_slots.saturating_sub(demand.slots);
            agent.free_gpus = agent.free_gpus.saturating_sub(demand.gpus);
            holders.push(agent.agent.clone());
            placed.push((demand.model.clone(), agent.agent.clone()));
        }
        held.insert(demand.model.clone(), holders);
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Ask {
        sweep: u64,
        n: u32,
        slots: u32,
        gpus: u32,
    }

    impl Demand for Ask {
        fn slots(&self) -> u32 {
            self.slots
        }
        fn gpus(&self) -> u32 {
            self.gpus
        }
    }

    fn agent(name: &str, free: u32, gpus: u32) -> Capacity {
        Capacity {
            agent: AgentId(name.into()),
            free_slots: free,
            free_gpus: gpus,
        }
    }

    fn queue(sweep: u64, count: u32, slots: u32, gpus: u32) -> VecDeque<Ask> {
        (0..count)
            .map(|n| Ask {
                sweep,
                n,
                slots,
                gpus,
            })
            .collect()
    }

    #[test]
    fn sweeps_take_turns() {
        let mut queues = BTreeMap::from([
            (SweepId(1), queue(1, 10, 1, 0)),
            (SweepId(2), queue(2, 10, 1, 0)),
        ]);
        let mut agents = vec![agent("a", 4, 0)];
        let mut last = None;
        let placed = assign(&mut queues, &mut last, &mut agents);
        let sweeps: Vec<u64> = placed.iter().map(|(ask, _)| ask.sweep).collect();
        assert_eq!(sweeps, vec![1, 2, 1, 2]);
        assert_eq!(last, Some(SweepId(2)));
        agents[0].free_slots = 1;
        let next = assign(&mut queues, &mut last, &mut agents);
        assert_eq!(
            next[0].0.sweep, 1,
            "the round robin continues after the sweep served last"
        );
    }

    #[test]
    fn trials_spread_over_agents_and_never_overcommit() {
        let mut queues = BTreeMap::from([(SweepId(1), queue(1, 20, 1, 0))]);
        let mut agents = vec![agent("a", 2, 0), agent("b", 3, 0), agent("c", 2, 0)];
        let placed = assign(&mut queues, &mut None, &mut agents);
        assert_eq!(placed.len(), 7);
        assert!(agents.iter().all(|agent| agent.free_slots == 0));
        assert_eq!(placed[0].1, AgentId("b".into()), "most free slots first");
        assert_eq!(queues[&SweepId(1)].len(), 13);
    }

    #[test]
    fn gpu_and_multi_slot_demands_only_go_where_they_fit() {
        let mut queues = BTreeMap::from([(SweepId(1), queue(1, 3, 2, 1))]);
        let mut agents = vec![agent("cpu", 8, 0), agent("gpu", 6, 1)];
        let placed = assign(&mut queues, &mut None, &mut agents);
        assert_eq!(
            placed.len(),
            1,
            "one GPU is reserved by one trial at a time"
        );
        assert_eq!(placed[0].1, AgentId("gpu".into()));
        assert_eq!((agents[1].free_slots, agents[1].free_gpus), (4, 0));
    }

    #[test]
    fn a_head_that_fits_nowhere_does_not_block_other_sweeps() {
        let mut queues = BTreeMap::from([
            (SweepId(1), queue(1, 2, 5, 0)),
            (SweepId(2), queue(2, 2, 1, 0)),
        ]);
        let mut agents = vec![agent("a", 2, 0)];
        let placed = assign(&mut queues, &mut None, &mut agents);
        assert_eq!(
            placed.iter().map(|(ask, _)| ask.sweep).collect::<Vec<_>>(),
            vec![2, 2]
        );
        assert_eq!(queues[&SweepId(1)].len(), 2);
    }

    fn demand(
        model: &str,
        replicas: u32,
        slots: u32,
        gpus: u32,
        eligible: &[&str],
    ) -> ReplicaDemand {
        ReplicaDemand {
            model: model.parse().expect("model ref"),
            replicas,
            slots,
            gpus,
            eligible: eligible
                .iter()
                .map(|name| AgentId((*name).into()))
                .collect(),
            running: Vec::new(),
            failed: Vec::new(),
            retiring: false,
        }
    }

    fn names(agents: &[AgentId]) -> Vec<&str> {
        agents.iter().map(|agent| agent.0.as_str()).collect()
    }

    #[test]
    fn replicas_spread_hold_capacity_and_wait_when_nothing_fits() {
        let mut agents = vec![agent("a", 1, 1), agent("b", 1, 0), agent("c", 2, 2)];
        let mut held = BTreeMap::new();
        let demands = [
            demand("gpu@1.0.0", 2, 1, 1, &["a", "b", "c"]),
            demand("cpu@1.0.0", 3, 1, 0, &["a", "b", "c"]),
        ];
        let placed = place_replicas(&demands, &mut held, &mut agents);
        let gpu: ModelRef = "gpu@1.0.0".parse().expect("ref");
        let cpu: ModelRef = "cpu@1.0.0".parse().expect("ref");
        // GPU replicas: the most free GPUs first, never on the agent without one.
        assert_eq!(names(&held[&gpu]), vec!["c", "a"]);
        // CPU replicas: the fewest replicas first; `a` has no slot left, so one is missing.
        assert_eq!(names(&held[&cpu]), vec!["b", "c"]);
        assert_eq!(placed.len(), 4);
        assert!(agents.iter().all(|agent| agent.free_slots == 0));
        assert_eq!(
            agents
                .iter()
                .map(|agent| agent.free_gpus)
                .collect::<Vec<_>>(),
            vec![0, 0, 1]
        );
        // A CPU replica prefers the agent with fewer free GPUs when slots tie.
        let mut two = vec![agent("g", 1, 1), agent("h", 1, 0)];
        let mut other = BTreeMap::new();
        place_replicas(
            &[demand("x@1.0.0", 1, 1, 0, &["g", "h"])],
            &mut other,
            &mut two,
        );
        assert_eq!(
            names(&other[&"x@1.0.0".parse::<ModelRef>().expect("ref")]),
            vec!["h"]
        );
        // Capacity frees on `a`: the missing replica goes there, the others stay.
        agents[0].free_slots = 1;
        assert_eq!(agents[0].free_gpus, 0);
        let placed = place_replicas(&demands, &mut held, &mut agents);
        assert_eq!(placed, vec![(cpu.clone(), AgentId("a".into()))]);
        assert_eq!(names(&held[&cpu]), vec!["b", "c", "a"]);
    }

    #[test]
    fn agents_that_run_a_replica_keep_it_and_retiring_versions_get_no_new_ones() {
        let mut agents = vec![agent("a", 0, 0), agent("b", 4, 0), agent("c", 4, 0)];
        let mut held = BTreeMap::new();
        let mut wanted = demand("m@2.0.0", 2, 1, 0, &["b", "c"]);
        // A new leader: `a` reports running it though its slots look taken.
        wanted.running = vec![AgentId("a".into())];
        let mut retiring = demand("m@1.0.0", 2, 1, 0, &["b", "c"]);
        retiring.retiring = true;
        place_replicas(&[wanted.clone(), retiring], &mut held, &mut agents);
        let model: ModelRef = "m@2.0.0".parse().expect("ref");
        assert_eq!(names(&held[&model]), vec!["a", "b"]);
        assert!(!held.contains_key(&"m@1.0.0".parse::<ModelRef>().expect("ref")));
        // An agent not eligible (not serving) gets none.
        let mut only_c = demand("n@1.0.0", 3, 1, 0, &["c"]);
        only_c.running.clear();
        place_replicas(&[only_c], &mut held, &mut agents);
        assert_eq!(
            names(&held[&"n@1.0.0".parse::<ModelRef>().expect("ref")]),
            vec!["c"]
        );
    }
}
