//! Serving agents: what each reports, and what each is told to serve.

use super::*;

impl ModelsState {
    /// An agent's serving report, with the link to reach it.
    pub(super) async fn agent_serving(
        &mut self,
        agent: AgentId,
        connection: u64,
        commands: mpsc::UnboundedSender<CoordinatorCommand>,
        version: u16,
        report: ServingReport,
    ) {
        let entry = self.agents.entry(agent).or_insert_with(|| ServingAgent {
            connection,
            commands: commands.clone(),
            version,
            endpoint: None,
            models: Vec::new(),
            gpus: BTreeMap::new(),
            assigned: None,
        });
        if entry.connection != connection {
            // A new connection: it knows nothing of what the old one was told.
            entry.connection = connection;
            entry.commands = commands;
            entry.version = version;
            entry.assigned = None;
        }
        entry.endpoint = report.endpoint;
        entry.models = report.models;
        entry.gpus = report.gpus;
        self.assign().await;
    }

    /// An agent's connection closed: its pending seals fail and its served programs'
    /// replicas go elsewhere.
    pub(super) async fn agent_gone(&mut self, agent: &AgentId, connection: u64) {
        if self
            .agents
            .get(agent)
            .is_none_or(|entry| entry.connection != connection)
        {
            return;
        }
        self.agents.remove(agent);
        let lost: Vec<u64> = self
            .seals
            .iter()
            .filter(|(_, seal)| seal.agent == *agent)
            .map(|(request, _)| *request)
            .collect();
        for request in lost {
            if let Some(seal) = self.seals.remove(&request) {
                let _ = seal.reply.send(Err(api_error(
                    ApiErrorKind::Unavailable,
                    format!(
                        "agent {agent} disconnected while sealing the artifact; register again"
                    ),
                )));
            }
        }
        self.assign().await;
    }

    /// Versions that should be served: each production version and each active rollout's
    /// baseline and canary.
    pub(super) fn desired(&self) -> Vec<ServedModel> {
        let mut wanted: Vec<&ModelVersion> = self
            .models
            .values()
            .filter(|model| model.stage == ModelStage::Production)
            .collect();
        for rollout in self.rollouts.values().filter(|r| r.state.is_active()) {
            for version in [rollout.baseline, rollout.canary] {
                if let Some(model) = self.models.get(&(rollout.model.clone(), version))
                    && !wanted.iter().any(|w| w.reference() == model.reference())
                {
                    wanted.push(model);
                }
            }
        }
        wanted
            .into_iter()
            .map(|model| ServedModel {
                model: model.reference(),
                artifact: model.artifact.clone(),
                serving: model.serving.clone(),
            })
            .collect()
    }

    /// Agents that can serve.
    pub(super) fn serving_agents(&self) -> impl Iterator<Item = (&AgentId, &ServingAgent)> {
        self.agents
            .iter()
            .filter(|(_, entry)| entry.endpoint.is_some() && entry.version >= SERVING_VERSION)
    }

    /// Has the Scheduler place each served program's version on `replicas` serving agents,
    /// where each replica holds the slots and GPUs its `[serving]` table asks for (as a trial
    /// does). Replicas stay where they are while their agents do; a new leader keeps them on
    /// the agents that report running them and, until agents have had time to report,
    /// places no others. Built-in models need no placement: every serving agent holds them.
    pub(super) async fn place(&mut self, wanted: &[ServedModel]) {
        let settled = self.started.elapsed() >= CHECK_WARMUP;
        let eligible: Vec<AgentId> = if settled {
            self.serving_agents().map(|(id, _)| id.clone()).collect()
        } else {
            Vec::new()
        };
        // Agents that report the version, running (or starting) or failed.
        let reporting = |model: &ModelRef, failed: bool| -> Vec<AgentId> {
            self.serving_agents()
                .filter(|(_, entry)| {
                    entry.models.iter().any(|(served, state)| {
                        served == model && matches!(state, ServeState::Failed(_)) == failed
                    })
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        let retiring = self
            .retired
            .values()
            .map(|(_, served)| (served, true))
            .filter(|(served, _)| !wanted.iter().any(|w| w.model == served.model));
        let demands: Vec<ReplicaDemand> = wanted
            .iter()
            .map(|served| (served, false))
            .chain(retiring)
            .filter_map(|(served, retiring)| {
                let serving = served.serving.as_ref()?;
                Some(ReplicaDemand {
                    model: served.model.clone(),
                    replicas: serving.replicas.max(1),
                    slots: serving.slots,
                    gpus: serving.gpus,
                    eligible: eligible.clone(),
                    running: reporting(&served.model, false),
                    failed: reporting(&served.model, true),
                    retiring,
                })
            })
            .collect();
        let answer = self
            .scheduler
            .call(
                |reply| SchedulerMsg::Replicas { demands, reply },
                Some(Duration::from_secs(2)),
            )
            .await;
        match answer {
            Ok(ractor::rpc::CallResult::Success(placements)) => {
                for (model, agents) in &placements {
                    let before = self.placements.get(model);
                    if before != Some(agents) {
                        tracing::info!(%model, agents = ?agents.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(), "serving replicas placed");
                    }
                }
                self.placements = placements;
            }
            other => {
                // Placement waits for the next tick; what is served stays as it is.
                tracing::warn!(answer = ?other.map(|_| ()), "the scheduler did not place serving replicas");
            }
        }
    }

    /// Whether `agent` should hold `served`.
    pub(super) fn placed_on(&self, served: &ServedModel, agent: &AgentId) -> bool {
        served.serving.is_none()
            || self
                .placements
                .get(&served.model)
                .is_some_and(|agents| agents.contains(agent))
    }

    /// Tells every serving agent whose assignment changed what to serve. A version that is
    /// no longer wanted stays for [`RETIRE_GRACE`] where it was.
    pub(super) async fn assign(&mut self) {
        let wanted = self.desired();
        for served in &self.current {
            if !wanted.iter().any(|w| w.model == served.model) {
                self.retired
                    .insert(served.model.clone(), (Instant::now(), served.clone()));
            }
        }
        for served in &wanted {
            self.retired.remove(&served.model);
        }
        self.retired
            .retain(|_, (since, _)| since.elapsed() < RETIRE_GRACE);
        self.place(&wanted).await;
        self.current = wanted.clone();
        let mut all = wanted;
        all.extend(self.retired.values().map(|(_, served)| served.clone()));
        all.sort_by(|a, b| a.model.cmp(&b.model));
        let agents: Vec<AgentId> = self.serving_agents().map(|(id, _)| id.clone()).collect();
        for agent in agents {
            let desired: Vec<ServedModel> = all
                .iter()
                .filter(|served| self.placed_on(served, &agent))
                .cloned()
                .collect();
            let Some(entry) = self.agents.get_mut(&agent) else {
                continue;
            };
            if entry.assigned.as_ref() == Some(&desired) {
                continue;
            }
            let command = CoordinatorCommand {
                epoch: self.epoch,
                command: Command::Serve(desired.clone()),
            };
            if entry.commands.send(command).is_ok() {
                tracing::debug!(%agent, versions = desired.len(), "serving assignment sent");
                entry.assigned = Some(desired);
            }
        }
    }

    /// Where versions of `name` (or of every model) are assigned, with each agent's report.
    pub(super) fn placements(&self, name: Option<&str>) -> Vec<Placement> {
        let mut placements = Vec::new();
        for (agent, entry) in self.serving_agents() {
            for served in entry.assigned.iter().flatten() {
                if name.is_some_and(|name| served.model.name != name) {
                    continue;
                }
                let state = entry
                    .models
                    .iter()
                    .find(|(model, _)| *model == served.model)
                    .map(|(_, state)| state.clone());
                placements.push(Placement {
                    model: served.model.clone(),
                    agent: agent.clone(),
                    endpoint: entry.endpoint.clone(),
                    state,
                    gpus: entry.gpus.get(&served.model).cloned().unwrap_or_default(),
                });
            }
        }
        placements.sort_by(|a, b| (&a.model, &a.agent).cmp(&(&b.model, &b.agent)));
        placements
    }

    pub(super) fn endpoints(&self, reference: &ModelRef) -> Vec<String> {
        self.agents
            .values()
            .filter(|entry| {
                entry
                    .models
                    .iter()
                    .any(|(model, state)| model == reference && *state == ServeState::Ready)
            })
            .filter_map(|entry| entry.endpoint.clone())
            .collect()
    }
}
