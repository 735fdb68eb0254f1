//! Where queued trials run: a pure function over queues and free capacity.
//!
//! Fairness: sweeps take turns (round robin, starting after the sweep served last), one
//! trial per turn, so a 10,000-trial sweep cannot starve one submitted after it. Spread:
//! a trial goes to the eligible agent with the most free slots (ties: the lowest agent id),
//! which keeps load even and process start-up parallel across hosts.

use std::collections::{BTreeMap, VecDeque};

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
}
