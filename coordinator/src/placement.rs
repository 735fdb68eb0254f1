//! Where queued trials and serving replicas run: pure functions over demands and free
//! capacity.
//!
//! Fairness ([`FairShare::assign`]): weighted dominant-resource fairness. A sweep's use of
//! the cluster is its *dominant share*: the larger of the fraction of all slots and the
//! fraction of all GPUs its placed and running trials hold. Divided by the sweep's weight
//! (1 unless given), it orders the sweeps: the next trial placed is the head of the sweep
//! with the lowest weighted share whose head fits somewhere; ties go round robin, starting
//! after the sweep served last. So a 10,000-trial sweep cannot starve one submitted after
//! it, a sweep of 4-slot trials gets as many slots as a sweep of 1-slot trials (not as many
//! trials), and a sweep of weight 2 holds twice the slots of a sweep of weight 1 while both
//! have work queued. The ordering is work-conserving: what one sweep cannot use goes to the
//! others.
//!
//! Large demands are not starved by small ones: when the most deprived sweep's head (say a
//! 4-slot or one-GPU trial) fits nowhere because 1-slot trials keep taking each freed slot,
//! it gets a *reservation* on the agent closest to holding it. Other sweeps place nothing on
//! that agent until the head fits there (or anywhere else) and is placed. A sweep holds one
//! reservation for each large trial it is short of its part (its weight's part of the
//! cluster), on distinct agents, and at most one agent in ten is reserved at once (always at
//! least one), as in a backfilling batch scheduler without run-time estimates.
//!
//! Spread: a trial goes to the eligible agent with the most free slots (ties: the lowest
//! agent id), which keeps load even and process start-up parallel across hosts.
//!
//! Serving replicas ([`place_replicas`]) are placed before queued trials, hold their slots
//! and GPUs like a trial, and spread the same way: a replica goes first to an agent that
//! already runs it (a new leader keeps replicas where they are), then to the agent with the
//! fewest replicas, then the most free GPUs (GPU replicas) or slots.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use flotilla_protocol::models::ModelRef;
use flotilla_protocol::spec::Scheduling;
use flotilla_protocol::{AgentId, SweepId};

/// What a queued trial needs.
pub trait Demand {
    fn slots(&self) -> u32;
    fn gpus(&self) -> u32;
}

/// An agent's capacity as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub agent: AgentId,
    pub free_slots: u32,
    /// GPUs not reserved by trials already placed there.
    pub free_gpus: u32,
    /// All its slots, free or not.
    pub slots: u32,
    /// All its GPUs, free or not.
    pub gpus: u32,
}

/// Slots and GPUs held (by a sweep's trials) or asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub slots: u32,
    pub gpus: u32,
}

impl Usage {
    pub fn add(&mut self, slots: u32, gpus: u32) {
        self.slots += slots;
        self.gpus += gpus;
    }

    pub fn remove(&mut self, slots: u32, gpus: u32) {
        self.slots = self.slots.saturating_sub(slots);
        self.gpus = self.gpus.saturating_sub(gpus);
    }

    /// The larger of the fractions of `total` held: slots or GPUs.
    pub fn dominant_share(&self, total: Usage) -> f64 {
        let fraction = |held: u32, all: u32| {
            if all == 0 {
                0.0
            } else {
                f64::from(held) / f64::from(all)
            }
        };
        fraction(self.slots, total.slots).max(fraction(self.gpus, total.gpus))
    }
}

/// An agent held back for one sweep's head until it fits there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub sweep: SweepId,
    pub agent: AgentId,
}

/// The placement state kept between calls: whose turn is next among equals, and the
/// reservations held for large demands.
#[derive(Debug, Clone, Default)]
pub struct FairShare {
    last_served: Option<SweepId>,
    /// At most one per sweep, on distinct agents.
    reservations: Vec<Reservation>,
}

/// Agents per reservation: at most one agent in this many is held back at once (at least
/// one reservation is always allowed), so reservations cost little capacity however many
/// sweeps of large trials wait.
const AGENTS_PER_RESERVATION: usize = 10;

impl FairShare {
    /// The reservations held now.
    pub fn reservations(&self) -> &[Reservation] {
        &self.reservations
    }

    /// How many agents `sweep` holds back.
    fn reserved_by(&self, sweep: SweepId) -> usize {
        self.reservations
            .iter()
            .filter(|r| r.sweep == sweep)
            .count()
    }

    /// Pops every trial that fits somewhere and says where it goes. `held` is what each
    /// sweep's placed and running trials hold (a sweep missing holds nothing), `weights`
    /// each sweep's weight (missing: 1; zero or less counts as a very small weight).
    /// `agents` are the agents that may take trials; their free capacity is reduced by what
    /// is placed.
    pub fn assign<T: Demand>(
        &mut self,
        queues: &mut BTreeMap<SweepId, VecDeque<T>>,
        held: &BTreeMap<SweepId, Usage>,
        weights: &BTreeMap<SweepId, f64>,
        agents: &mut [Capacity],
    ) -> Vec<(T, AgentId)> {
        queues.retain(|_, queue| !queue.is_empty());
        let total = agents.iter().fold(Usage::default(), |mut total, agent| {
            total.add(agent.slots, agent.gpus);
            total
        });
        let mut holding: BTreeMap<SweepId, Usage> = queues
            .keys()
            .map(|sweep| (*sweep, held.get(sweep).copied().unwrap_or_default()))
            .collect();
        self.drop_stale_reservations(queues, agents);
        let most_reservations = (agents.len() / AGENTS_PER_RESERVATION).max(1);
        let mut placed = Vec::new();
        loop {
            // With the cluster full (the common case when a result frees nothing useful),
            // no head is tried against every agent.
            let order = self.turn_order(queues, &holding, weights, total);
            let most_served = order.last().map_or(0.0, |(_, share)| *share);
            let weight_sum: f64 = order
                .iter()
                .map(|(sweep, _)| weight_of(weights, sweep))
                .sum();
            // How many large heads each sweep is short of its part: as many reservations as
            // that (a reservation yields one start each time its agent drains).
            let wanted = |sweep: &SweepId, queues: &BTreeMap<SweepId, VecDeque<T>>| {
                let Some(head) = queues.get(sweep).and_then(VecDeque::front) else {
                    return 0;
                };
                let (slots, gpus) = (head.slots(), head.gpus());
                if slots <= 1 && gpus == 0 {
                    return 0;
                }
                let part = weight_of(weights, sweep) / weight_sum;
                let has = holding
                    .get(sweep)
                    .copied()
                    .unwrap_or_default()
                    .dominant_share(total);
                let per_trial = Usage { slots, gpus }.dominant_share(total);
                if part <= has || per_trial <= 0.0 {
                    return 0;
                }
                ((part - has) / per_trial).ceil() as usize
            };
            let mut kept: BTreeMap<SweepId, usize> = BTreeMap::new();
            self.reservations.retain(|r| {
                let count = kept.entry(r.sweep).or_default();
                *count += 1;
                *count <= wanted(&r.sweep, queues)
            });
            // Reserved agent → the sweep it is held for.
            let mut reserved: HashMap<AgentId, SweepId> = self
                .reservations
                .iter()
                .map(|r| (r.agent.clone(), r.sweep))
                .collect();
            // The most free on agents open to all, and on those held for each sweep (only
            // agents with something free are looked up).
            let mut most_free = Usage::default();
            let mut own_free: BTreeMap<SweepId, Usage> = BTreeMap::new();
            for agent in agents.iter() {
                if agent.free_slots == 0 && agent.free_gpus == 0 {
                    continue;
                }
                let most = match reserved.get(&agent.agent) {
                    Some(holder) => own_free.entry(*holder).or_default(),
                    None => &mut most_free,
                };
                most.slots = most.slots.max(agent.free_slots);
                most.gpus = most.gpus.max(agent.free_gpus);
            }
            let mut progressed = false;
            for (sweep, share) in order {
                let Some(head) = queues.get(&sweep).and_then(VecDeque::front) else {
                    continue;
                };
                let (slots, gpus) = (head.slots(), head.gpus());
                let fits = |free: Usage| slots <= free.slots && gpus <= free.gpus;
                let could_fit = fits(most_free) || own_free.get(&sweep).is_some_and(|f| fits(*f));
                let withheld =
                    |agent: &AgentId| reserved.get(agent).is_some_and(|holder| *holder != sweep);
                let chosen = could_fit
                    .then(|| choose_agent_except(agents, slots, gpus, withheld))
                    .flatten();
                if let Some(index) = chosen {
                    let Some(trial) = queues.get_mut(&sweep).and_then(VecDeque::pop_front) else {
                        continue;
                    };
                    agents[index].free_slots -= slots;
                    agents[index].free_gpus -= gpus;
                    holding.entry(sweep).or_default().add(slots, gpus);
                    placed.push((trial, agents[index].agent.clone()));
                    self.last_served = Some(sweep);
                    let used = &agents[index].agent;
                    self.reservations
                        .retain(|r| !(r.sweep == sweep && &r.agent == used));
                    progressed = true;
                    break;
                }
                // A sweep whose head fits nowhere holds agents back, if it is below another
                // sweep's share, and unless any one freed slot would do (it is ahead of the
                // others for that anyway): one agent for each large head it is short of
                // its part. The most deprived come first.
                if share < most_served {
                    let more = wanted(&sweep, queues)
                        .saturating_sub(self.reserved_by(sweep))
                        .min(most_reservations.saturating_sub(self.reservations.len()));
                    for index in closest_agents(agents, slots, gpus, &reserved, more) {
                        let agent = agents[index].agent.clone();
                        reserved.insert(agent.clone(), sweep);
                        self.reservations.push(Reservation { sweep, agent });
                    }
                }
            }
            queues.retain(|_, queue| !queue.is_empty());
            if !progressed || queues.is_empty() {
                self.drop_stale_reservations(queues, agents);
                return placed;
            }
        }
    }

    /// A reservation ends when its sweep has nothing queued or its agent is gone (left,
    /// draining, cordoned) or could never hold the head.
    fn drop_stale_reservations<T: Demand>(
        &mut self,
        queues: &BTreeMap<SweepId, VecDeque<T>>,
        agents: &[Capacity],
    ) {
        if self.reservations.is_empty() {
            return;
        }
        let by_id: BTreeMap<&AgentId, &Capacity> =
            agents.iter().map(|agent| (&agent.agent, agent)).collect();
        self.reservations.retain(|reservation| {
            let head = queues.get(&reservation.sweep).and_then(VecDeque::front);
            head.is_some_and(|head| {
                by_id
                    .get(&reservation.agent)
                    .is_some_and(|agent| agent.slots >= head.slots() && agent.gpus >= head.gpus())
            })
        });
    }

    /// Sweeps with queued trials and their weighted dominant shares, the lowest first;
    /// equal shares in round-robin order, starting after the sweep served last.
    fn turn_order<T>(
        &self,
        queues: &BTreeMap<SweepId, VecDeque<T>>,
        holding: &BTreeMap<SweepId, Usage>,
        weights: &BTreeMap<SweepId, f64>,
        total: Usage,
    ) -> Vec<(SweepId, f64)> {
        let weighted = |sweep: &SweepId| {
            let weight = weight_of(weights, sweep);
            holding
                .get(sweep)
                .copied()
                .unwrap_or_default()
                .dominant_share(total)
                / weight
        };
        let mut order: Vec<(SweepId, f64)> = queues
            .iter()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(sweep, _)| (*sweep, weighted(sweep)))
            .collect();
        if let Some(last) = self.last_served {
            let split = order.partition_point(|(sweep, _)| *sweep <= last);
            order.rotate_left(split);
        }
        // A stable sort keeps the round-robin order among equals.
        order.sort_by(|left, right| left.1.total_cmp(&right.1));
        order
    }
}

/// The weight in the fair share of each `active` sweep (trials queued or held; only they
/// compete, so the work grows with them, not with every sweep ever registered). A sweep
/// without a team weighs its `share`. The active sweeps of a team together weigh the team's
/// share from `teams` (1 for a team not named there) and divide it in proportion to their
/// own `share`s; so a team's weight does not grow with the number of sweeps it submits. A
/// sweep missing from `sweeps` has the default share and no team.
pub fn weights(
    sweeps: &BTreeMap<SweepId, Scheduling>,
    teams: &BTreeMap<String, f64>,
    active: &BTreeSet<SweepId>,
) -> BTreeMap<SweepId, f64> {
    let default = Scheduling::default();
    let scheduling = |sweep: &SweepId| sweeps.get(sweep).unwrap_or(&default);
    let mut team_total: BTreeMap<&str, f64> = BTreeMap::new();
    for sweep in active {
        let scheduling = scheduling(sweep);
        if let Some(team) = &scheduling.team {
            *team_total.entry(team.as_str()).or_default() += scheduling.share;
        }
    }
    active
        .iter()
        .map(|sweep| {
            let scheduling = scheduling(sweep);
            let weight = match &scheduling.team {
                None => scheduling.share,
                Some(team) => {
                    let team_share = teams.get(team).copied().unwrap_or(1.0);
                    let total = team_total.get(team.as_str()).copied().unwrap_or(0.0);
                    if total > 0.0 {
                        team_share * scheduling.share / total
                    } else {
                        team_share
                    }
                }
            };
            (*sweep, weight)
        })
        .collect()
}

fn weight_of(weights: &BTreeMap<SweepId, f64>, sweep: &SweepId) -> f64 {
    weights.get(sweep).copied().unwrap_or(1.0).max(1e-6)
}

/// The eligible agent with the most free slots, leaving out those `withheld`; ties go to
/// the lowest agent id.
fn choose_agent_except(
    agents: &[Capacity],
    slots: u32,
    gpus: u32,
    withheld: impl Fn(&AgentId) -> bool,
) -> Option<usize> {
    agents
        .iter()
        .enumerate()
        .filter(|(_, agent)| agent.free_slots >= slots && agent.free_gpus >= gpus)
        .filter(|(_, agent)| !withheld(&agent.agent))
        .max_by(|(_, left), (_, right)| {
            left.free_slots
                .cmp(&right.free_slots)
                .then_with(|| right.agent.cmp(&left.agent))
        })
        .map(|(index, _)| index)
}

/// Up to `count` agents not yet reserved that could hold `slots` and `gpus` once enough of
/// what runs there finishes, the closest to it now first: the fewest GPUs missing, then the
/// fewest slots, then the lowest id.
fn closest_agents(
    agents: &[Capacity],
    slots: u32,
    gpus: u32,
    reserved: &HashMap<AgentId, SweepId>,
    count: usize,
) -> Vec<usize> {
    if count == 0 {
        return Vec::new();
    }
    let mut candidates: Vec<(u32, u32, &AgentId, usize)> = agents
        .iter()
        .enumerate()
        .filter(|(_, agent)| agent.slots >= slots && agent.gpus >= gpus)
        .filter(|(_, agent)| !reserved.contains_key(&agent.agent))
        .map(|(index, agent)| {
            (
                gpus.saturating_sub(agent.free_gpus),
                slots.saturating_sub(agent.free_slots),
                &agent.agent,
                index,
            )
        })
        .collect();
    candidates.sort_unstable();
    candidates
        .into_iter()
        .take(count)
        .map(|(_, _, _, index)| index)
        .collect()
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
            slots: free,
            gpus,
        }
    }

    /// Places with nothing held before and every weight 1.
    fn assign(
        fair: &mut FairShare,
        queues: &mut BTreeMap<SweepId, VecDeque<Ask>>,
        agents: &mut [Capacity],
    ) -> Vec<(Ask, AgentId)> {
        fair.assign(queues, &BTreeMap::new(), &BTreeMap::new(), agents)
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
        let mut fair = FairShare::default();
        let placed = assign(&mut fair, &mut queues, &mut agents);
        let sweeps: Vec<u64> = placed.iter().map(|(ask, _)| ask.sweep).collect();
        assert_eq!(sweeps, vec![1, 2, 1, 2]);
        assert_eq!(fair.last_served, Some(SweepId(2)));
        agents[0].free_slots = 1;
        let next = assign(&mut fair, &mut queues, &mut agents);
        assert_eq!(
            next[0].0.sweep, 1,
            "the round robin continues after the sweep served last"
        );
    }

    #[test]
    fn trials_spread_over_agents_and_never_overcommit() {
        let mut queues = BTreeMap::from([(SweepId(1), queue(1, 20, 1, 0))]);
        let mut agents = vec![agent("a", 2, 0), agent("b", 3, 0), agent("c", 2, 0)];
        let placed = assign(&mut FairShare::default(), &mut queues, &mut agents);
        assert_eq!(placed.len(), 7);
        assert!(agents.iter().all(|agent| agent.free_slots == 0));
        assert_eq!(placed[0].1, AgentId("b".into()), "most free slots first");
        assert_eq!(queues[&SweepId(1)].len(), 13);
    }

    #[test]
    fn gpu_and_multi_slot_demands_only_go_where_they_fit() {
        let mut queues = BTreeMap::from([(SweepId(1), queue(1, 3, 2, 1))]);
        let mut agents = vec![agent("cpu", 8, 0), agent("gpu", 6, 1)];
        let placed = assign(&mut FairShare::default(), &mut queues, &mut agents);
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
        let placed = assign(&mut FairShare::default(), &mut queues, &mut agents);
        assert_eq!(
            placed.iter().map(|(ask, _)| ask.sweep).collect::<Vec<_>>(),
            vec![2, 2]
        );
        assert_eq!(queues[&SweepId(1)].len(), 2);
    }

    fn held(entries: &[(u64, u32, u32)]) -> BTreeMap<SweepId, Usage> {
        entries
            .iter()
            .map(|(sweep, slots, gpus)| {
                (
                    SweepId(*sweep),
                    Usage {
                        slots: *slots,
                        gpus: *gpus,
                    },
                )
            })
            .collect()
    }

    fn count(placed: &[(Ask, AgentId)], sweep: u64) -> usize {
        placed.iter().filter(|(ask, _)| ask.sweep == sweep).count()
    }

    #[test]
    fn weights_divide_the_slots() {
        let mut queues = BTreeMap::from([
            (SweepId(1), queue(1, 50, 1, 0)),
            (SweepId(2), queue(2, 50, 1, 0)),
        ]);
        let weights = BTreeMap::from([(SweepId(1), 2.0)]);
        let mut agents = vec![agent("a", 6, 0), agent("b", 6, 0)];
        let placed =
            FairShare::default().assign(&mut queues, &BTreeMap::new(), &weights, &mut agents);
        assert_eq!((count(&placed, 1), count(&placed, 2)), (8, 4));
    }

    #[test]
    fn multi_slot_trials_get_as_many_slots_not_as_many_trials() {
        let mut queues = BTreeMap::from([
            (SweepId(1), queue(1, 50, 4, 0)),
            (SweepId(2), queue(2, 50, 1, 0)),
        ]);
        let mut agents = vec![agent("a", 8, 0), agent("b", 8, 0)];
        let placed = assign(&mut FairShare::default(), &mut queues, &mut agents);
        assert_eq!((count(&placed, 1), count(&placed, 2)), (2, 8));
    }

    #[test]
    fn what_a_sweep_already_holds_counts() {
        let mut queues = BTreeMap::from([
            (SweepId(1), queue(1, 50, 1, 0)),
            (SweepId(2), queue(2, 50, 1, 0)),
        ]);
        // Sweep 1 came first and holds 6 of 8 slots; the 2 free go to sweep 2.
        let mut agents = vec![Capacity {
            free_slots: 2,
            ..agent("a", 8, 0)
        }];
        let placed = FairShare::default().assign(
            &mut queues,
            &held(&[(1, 6, 0)]),
            &BTreeMap::new(),
            &mut agents,
        );
        assert_eq!((count(&placed, 1), count(&placed, 2)), (0, 2));
        // GPUs are a resource of their own: a sweep holding the only GPU has the largest
        // share though it holds one slot.
        let mut queues = BTreeMap::from([
            (SweepId(1), queue(1, 5, 1, 0)),
            (SweepId(2), queue(2, 5, 1, 0)),
        ]);
        let mut agents = vec![Capacity {
            free_slots: 1,
            free_gpus: 0,
            ..agent("g", 8, 1)
        }];
        let placed = FairShare::default().assign(
            &mut queues,
            &held(&[(1, 1, 1), (2, 6, 0)]),
            &BTreeMap::new(),
            &mut agents,
        );
        assert_eq!(
            count(&placed, 2),
            1,
            "6/8 of the slots is less than 1/1 of the GPUs"
        );
    }

    /// Trials of a busy 1-slot sweep finish one at a time on a full cluster; each call
    /// places what fits, as the Scheduler does after every result.
    fn free_one_at_a_time(
        fair: &mut FairShare,
        queues: &mut BTreeMap<SweepId, VecDeque<Ask>>,
        agents: &mut [Capacity],
        held: &mut BTreeMap<SweepId, Usage>,
        rounds: usize,
    ) -> Vec<(Ask, AgentId)> {
        let mut placed = Vec::new();
        for round in 0..rounds {
            // A trial of sweep 1 finishes on agent `round % agents`.
            let index = round % agents.len();
            agents[index].free_slots += 1;
            held.get_mut(&SweepId(1))
                .expect("sweep 1 holds slots")
                .remove(1, 0);
            let now = fair.assign(queues, held, &BTreeMap::new(), agents);
            for (ask, _) in &now {
                held.entry(SweepId(ask.sweep))
                    .or_default()
                    .add(ask.slots, ask.gpus);
            }
            placed.extend(now);
        }
        placed
    }

    #[test]
    fn a_large_trial_is_not_starved_by_small_ones() {
        // Sweep 1's 1-slot trials fill both agents; sweep 2 then asks for 4-slot trials.
        let mut agents = vec![
            Capacity {
                free_slots: 0,
                ..agent("a", 4, 0)
            },
            Capacity {
                free_slots: 0,
                ..agent("b", 4, 0)
            },
        ];
        let mut queues = BTreeMap::from([
            (SweepId(1), queue(1, 100, 1, 0)),
            (SweepId(2), queue(2, 3, 4, 0)),
        ]);
        let mut holding = held(&[(1, 8, 0)]);
        let mut fair = FairShare::default();
        assert!(
            fair.assign(&mut queues, &holding, &BTreeMap::new(), &mut agents)
                .is_empty()
        );
        assert_eq!(
            fair.reservations(),
            &[Reservation {
                sweep: SweepId(2),
                agent: AgentId("a".into())
            }],
            "the deprived sweep's head holds the agent closest to fitting it"
        );
        // Slots free on both agents in turn: those on `b` go to sweep 1, those on `a` wait.
        let placed = free_one_at_a_time(&mut fair, &mut queues, &mut agents, &mut holding, 8);
        let large: Vec<&AgentId> = placed
            .iter()
            .filter(|(ask, _)| ask.sweep == 2)
            .map(|(_, agent)| agent)
            .collect();
        assert_eq!(large, vec![&AgentId("a".into())], "placed once `a` drained");
        assert!(
            placed
                .iter()
                .filter(|(ask, _)| ask.sweep == 1)
                .all(|(_, agent)| agent.0 == "b"),
            "nothing else went to the reserved agent"
        );
        // Sweep 2 now holds half the slots, as much as sweep 1: no new reservation while it
        // has its fair share.
        assert_eq!(holding[&SweepId(2)].slots, 4);
        assert!(fair.reservations().is_empty());
    }

    #[test]
    fn a_waiting_large_sweep_reserves_an_agent_per_trial_it_is_short_within_the_cap() {
        // 40 full agents of 4 slots held by sweep 1 (weight 18); sweeps 2 and 3 (weight 1
        // each) ask for 4-slot trials: each is owed 1/20 of 160 slots, two trials.
        let full = |n: usize| -> Vec<Capacity> {
            (0..n)
                .map(|i| Capacity {
                    free_slots: 0,
                    ..agent(&format!("agent-{i:02}"), 4, 0)
                })
                .collect()
        };
        let queues = || {
            BTreeMap::from([
                (SweepId(1), queue(1, 100, 1, 0)),
                (SweepId(2), queue(2, 5, 4, 0)),
                (SweepId(3), queue(3, 5, 4, 0)),
            ])
        };
        let weights = BTreeMap::from([(SweepId(1), 18.0)]);
        let mut fair = FairShare::default();
        let mut agents = full(40);
        fair.assign(&mut queues(), &held(&[(1, 160, 0)]), &weights, &mut agents);
        let reserved: Vec<(u64, &str)> = fair
            .reservations()
            .iter()
            .map(|r| (r.sweep.0, r.agent.0.as_str()))
            .collect();
        assert_eq!(
            reserved,
            vec![
                (2, "agent-00"),
                (2, "agent-01"),
                (3, "agent-02"),
                (3, "agent-03")
            ]
        );
        // Sweep 2 gets one trial running: it keeps one reservation.
        let mut queue_now = queues();
        fair.assign(
            &mut queue_now,
            &held(&[(1, 156, 0), (2, 4, 0)]),
            &weights,
            &mut agents,
        );
        assert_eq!(fair.reserved_by(SweepId(2)), 1);
        // Two agents: one in ten rounds down to the one reservation always allowed.
        let mut fair = FairShare::default();
        let mut agents = full(2);
        fair.assign(
            &mut queues(),
            &held(&[(1, 8, 0)]),
            &BTreeMap::new(),
            &mut agents,
        );
        assert_eq!(fair.reservations().len(), 1);
    }

    #[test]
    fn a_gpu_trial_is_not_starved_by_cpu_trials_on_the_gpu_agent() {
        // The only GPU agent is full of sweep 1's CPU trials; sweep 2 needs its GPU.
        let mut agents = vec![Capacity {
            free_slots: 0,
            ..agent("g", 4, 1)
        }];
        let mut queues = BTreeMap::from([
            (SweepId(1), queue(1, 100, 1, 0)),
            (SweepId(2), queue(2, 2, 1, 1)),
        ]);
        let mut holding = held(&[(1, 4, 0)]);
        let mut fair = FairShare::default();
        let placed = free_one_at_a_time(&mut fair, &mut queues, &mut agents, &mut holding, 1);
        assert_eq!(placed.len(), 1);
        assert_eq!(
            placed[0].0.sweep, 2,
            "the freed slot with the free GPU goes to the GPU trial"
        );
    }

    #[test]
    fn a_reservation_ends_with_its_queue_or_its_agent() {
        let mut agents = vec![Capacity {
            free_slots: 1,
            ..agent("a", 4, 0)
        }];
        let mut queues = BTreeMap::from([
            (SweepId(1), queue(1, 5, 1, 0)),
            (SweepId(2), queue(2, 1, 4, 0)),
        ]);
        let holding = held(&[(1, 3, 0)]);
        let none = BTreeMap::new();
        let mut fair = FairShare::default();
        assert!(
            fair.assign(&mut queues, &holding, &none, &mut agents)
                .is_empty()
        );
        assert_eq!(fair.reservations().len(), 1);
        // The agent leaves (or drains, or is cordoned): the reservation goes with it.
        let mut others = vec![agent("b", 1, 0)];
        let placed = fair.assign(&mut queues, &holding, &none, &mut others);
        assert_eq!(placed.len(), 1, "sweep 1 uses what sweep 2 cannot");
        assert!(fair.reservations().is_empty());
        fair.assign(&mut queues, &holding, &none, &mut agents);
        assert_eq!(fair.reservations().len(), 1);
        // Sweep 2's queue is withdrawn (cancelled): the reservation ends and sweep 1 may
        // use `a`.
        queues.remove(&SweepId(2));
        let placed = fair.assign(&mut queues, &holding, &none, &mut agents);
        assert_eq!(placed.len(), 1);
        assert!(fair.reservations().is_empty());
    }

    #[test]
    fn a_team_weighs_its_share_however_many_sweeps_it_runs() {
        let scheduling = |share: f64, team: Option<&str>| Scheduling {
            share,
            team: team.map(str::to_string),
        };
        let sweeps = BTreeMap::from([
            (SweepId(1), scheduling(1.0, None)),
            (SweepId(2), scheduling(1.0, Some("vision"))),
            (SweepId(3), scheduling(3.0, Some("vision"))),
            (SweepId(4), scheduling(1.0, Some("vision"))),
            (SweepId(5), scheduling(2.0, Some("nlp"))),
            (SweepId(6), scheduling(2.0, None)),
        ]);
        let teams = BTreeMap::from([("nlp".to_string(), 3.0)]);
        // Sweep 4 has nothing queued or running: it takes no part of its team's share.
        let active: BTreeSet<SweepId> = [1, 2, 3, 5, 6].into_iter().map(SweepId).collect();
        let weights = weights(&sweeps, &teams, &active);
        assert!(
            !weights.contains_key(&SweepId(4)),
            "only active sweeps are weighed"
        );
        assert_eq!(weights[&SweepId(1)], 1.0);
        assert_eq!(weights[&SweepId(6)], 2.0);
        // vision (team share 1, not named) splits 1 : 3 between its two active sweeps.
        assert_eq!(weights[&SweepId(2)], 0.25);
        assert_eq!(weights[&SweepId(3)], 0.75);
        // nlp weighs 3 with one sweep.
        assert_eq!(weights[&SweepId(5)], 3.0);
        // Placed by these weights, vision's two sweeps together hold what sweep 1 holds.
        let mut queues: BTreeMap<SweepId, VecDeque<Ask>> = [1, 2, 3]
            .into_iter()
            .map(|sweep| (SweepId(sweep), queue(sweep, 100, 1, 0)))
            .collect();
        let mut agents = vec![agent("a", 16, 0)];
        let placed =
            FairShare::default().assign(&mut queues, &BTreeMap::new(), &weights, &mut agents);
        assert_eq!(count(&placed, 1), 8);
        assert_eq!((count(&placed, 2), count(&placed, 3)), (2, 6));
    }

    /// A cluster over time: trials of random length finish and free their slots, and
    /// each sweep's slot-seconds over a window where all have work queued are compared
    /// with its weighted fair share.
    #[test]
    fn long_run_shares_follow_the_weights_with_mixed_trial_sizes() {
        // (sweep, weight, slots per trial, gpus per trial)
        let sweeps = [
            (1, 1.0, 1, 0),
            (2, 1.0, 4, 0),
            (3, 2.0, 1, 0),
            (4, 1.0, 2, 1),
        ];
        let weights: BTreeMap<SweepId, f64> = sweeps
            .iter()
            .map(|(sweep, weight, _, _)| (SweepId(*sweep), *weight))
            .collect();
        let mut queues: BTreeMap<SweepId, VecDeque<Ask>> = sweeps
            .iter()
            .map(|(sweep, _, slots, gpus)| (SweepId(*sweep), queue(*sweep, 100_000, *slots, *gpus)))
            .collect();
        let mut agents: Vec<Capacity> = (0..16)
            .map(|n| agent(&format!("agent-{n:02}"), 8, u32::from(n % 4 == 0) * 2))
            .collect();
        let mut holding: BTreeMap<SweepId, Usage> = BTreeMap::new();
        let mut fair = FairShare::default();
        // (end time, sweep, agent index, slots, gpus)
        let mut running: Vec<(u64, u64, usize, u32, u32)> = Vec::new();
        let mut slot_time: BTreeMap<u64, u64> = BTreeMap::new();
        let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
        let mut now = 0u64;
        while now < 200_000 {
            for (ask, agent) in fair.assign(&mut queues, &holding, &weights, &mut agents) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let length = 500 + rng % 1500;
                let index = agents.iter().position(|a| a.agent == agent).expect("agent");
                holding
                    .entry(SweepId(ask.sweep))
                    .or_default()
                    .add(ask.slots, ask.gpus);
                running.push((now + length, ask.sweep, index, ask.slots, ask.gpus));
            }
            running.sort_by_key(|trial| std::cmp::Reverse(trial.0));
            let (end, sweep, index, slots, gpus) = running.pop().expect("something runs");
            if end > 20_000 {
                // Slot-time held since the last event, measured after a warm-up.
                for (_, sweep, _, slots, _) in
                    running.iter().chain([&(end, sweep, index, slots, gpus)])
                {
                    *slot_time.entry(*sweep).or_default() +=
                        u64::from(*slots) * (end - now.max(20_000));
                }
            }
            now = end;
            agents[index].free_slots += slots;
            agents[index].free_gpus += gpus;
            holding
                .entry(SweepId(sweep))
                .or_default()
                .remove(slots, gpus);
        }
        let total: u64 = slot_time.values().sum();
        // Sweep 4's trials take a GPU each; its share is measured in GPUs (4 agents have 2
        // each), where it is the only user, and it holds few slots. The other three divide
        // the rest of the slots 1 : 1 : 2.
        let rest = total - slot_time[&4];
        let share = |sweep: u64| slot_time[&sweep] as f64 / rest as f64;
        for (sweep, expected) in [(1, 0.25), (2, 0.25), (3, 0.5)] {
            let ratio = share(sweep) / expected;
            assert!(
                (0.9..=1.1).contains(&ratio),
                "sweep {sweep}: {:.3} of the slots against a fair {expected} ({ratio:.2})",
                share(sweep)
            );
        }
        assert!(slot_time[&4] > 0, "the GPU sweep ran");
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
