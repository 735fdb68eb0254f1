//! Rollouts and routes: one Rollout actor per active rollout, the routes routers follow,
//! and the traffic counters they report.

use super::*;

/// Whether a router's counters can be real: errors within requests, correct within labelled,
/// finite sums, and counts far from overflowing when summed.
fn plausible(pair: &Pair) -> bool {
    const LIMIT: u64 = 1 << 52;
    [pair.baseline, pair.canary].iter().all(|arm| {
        arm.requests < LIMIT
            && arm.labelled < LIMIT
            && arm.errors <= arm.requests
            && arm.correct <= arm.labelled
            && arm.log_latency_sum.is_finite()
            && arm.log_latency_sq_sum.is_finite()
            && arm.log_latency_sq_sum >= 0.0
    })
}

impl ModelsState {
    pub(super) async fn spawn_controller(
        &mut self,
        myself: &ActorRef<ModelsMsg>,
        record: RolloutRecord,
    ) -> Result<(), ActorProcessingErr> {
        let id = record.id;
        let args = RolloutArgs {
            record,
            store: self.store.clone(),
            models: myself.clone(),
        };
        let (controller, _) = Actor::spawn_linked(None, Rollout, args, myself.get_cell()).await?;
        self.controllers.insert(id, controller);
        Ok(())
    }

    pub(super) async fn start_rollout(
        &mut self,
        myself: &ActorRef<ModelsMsg>,
        request: StartRollout,
    ) -> Result<RolloutRecord, ApiError> {
        let name = &request.model;
        let policy = request.policy.unwrap_or_default();
        policy
            .validate()
            .map_err(|error| invalid(format!("rollout policy: {error}")))?;
        if !self.models.keys().any(|(model, _)| model == name) {
            return Err(api_error(
                ApiErrorKind::NotFound,
                format!("no model named '{name}' is registered"),
            ));
        }
        if self
            .seals
            .values()
            .any(|seal| &seal.version.name == name && seal.version.stage == ModelStage::Production)
        {
            return Err(invalid(format!(
                "a production version of '{name}' is being registered; start the rollout once it is"
            )));
        }
        let Some(baseline) = self.production(name).map(|model| model.version) else {
            return Err(invalid(format!(
                "model '{name}' has no production version to compare a canary with; register one with --stage production"
            )));
        };
        let Some(canary) = self.models.get(&(name.clone(), request.canary)) else {
            return Err(api_error(
                ApiErrorKind::NotFound,
                format!("no model version {name}@{}", request.canary),
            ));
        };
        if canary.stage != ModelStage::Staging {
            return Err(invalid(format!(
                "{name}@{} is {}; only a staging version can be a canary",
                request.canary,
                canary.stage.as_str()
            )));
        }
        if let Some(active) = self.active_rollout(name) {
            return Err(invalid(format!(
                "model '{name}' already has an active rollout (id {}, canary {})",
                active.id, active.canary
            )));
        }
        let now = now_ms();
        let record = RolloutRecord {
            id: self.rollouts.keys().next_back().map_or(1, |last| last + 1),
            model: name.clone(),
            baseline,
            canary: request.canary,
            canary_weight: policy.stages[0].weight,
            policy,
            state: RolloutState::Running,
            stage: 0,
            started_ms: now,
            stage_started_ms: now,
            stage_paused_ms: 0,
            paused_since_ms: None,
            stage_start: Pair::default(),
            traffic: Pair::default(),
            decisions: Vec::new(),
            finished_ms: None,
        };
        self.commit(vec![StateWrite::Rollout(Box::new(record.clone()))])
            .await?;
        self.spawn_controller(myself, record.clone())
            .await
            .map_err(|error| api_error(ApiErrorKind::Internal, error.to_string()))?;
        tracing::info!(rollout = record.id, model = %name, %baseline, canary = %record.canary, "rollout started");
        Ok(record)
    }

    /// Stores a promoted rollout with its consequences in one write: the canary becomes the
    /// production version, the baseline is archived.
    pub(super) async fn promote(&mut self, record: &RolloutRecord) -> Result<(), ApiError> {
        let mut writes = vec![StateWrite::Rollout(Box::new(record.clone()))];
        writes.extend(self.promotion_writes(record));
        self.commit(writes).await?;
        tracing::info!(rollout = record.id, model = %record.model, canary = %record.canary, "canary is the production version");
        Ok(())
    }

    /// The stage changes a promotion makes (none once they are made).
    pub(super) fn promotion_writes(&self, record: &RolloutRecord) -> Vec<StateWrite> {
        let now = now_ms();
        let mut writes = Vec::new();
        for (version, stage) in [
            (record.baseline, ModelStage::Archived),
            (record.canary, ModelStage::Production),
        ] {
            if let Some(model) = self.models.get(&(record.model.clone(), version))
                && model.stage != stage
            {
                let mut model = model.clone();
                model.stage = stage;
                model.stage_changed_ms = now;
                writes.push(StateWrite::Model(Box::new(model)));
            }
        }
        writes
    }

    /// A store whose batch was cut short (a local state file torn mid-write) may hold a
    /// promoted rollout whose stage changes are missing: make them.
    pub(super) async fn repair_promotions(&mut self) -> Result<(), ActorProcessingErr> {
        let mut newest: BTreeMap<&str, &RolloutRecord> = BTreeMap::new();
        for rollout in self.rollouts.values() {
            newest.insert(rollout.model.as_str(), rollout);
        }
        let writes: Vec<StateWrite> = newest
            .values()
            .filter(|rollout| rollout.state == RolloutState::Promoted)
            .flat_map(|rollout| self.promotion_writes(rollout))
            .collect();
        if !writes.is_empty() {
            tracing::warn!(
                changes = writes.len(),
                "completing a promotion the store did not finish"
            );
            self.commit(writes)
                .await
                .map_err(|error| format!("repairing a promotion: {}", error.message))?;
        }
        Ok(())
    }

    pub(super) fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        let names: std::collections::BTreeSet<&String> =
            self.models.keys().map(|(name, _)| name).collect();
        for name in names {
            let target = |version: SemVer| RouteTarget {
                version,
                endpoints: self.endpoints(&ModelRef {
                    name: name.clone(),
                    version,
                }),
            };
            if let Some(rollout) = self.active_rollout(name) {
                routes.push(Route {
                    model: name.clone(),
                    baseline: target(rollout.baseline),
                    canary: Some(target(rollout.canary)),
                    canary_weight: rollout.canary_weight,
                    rollout: Some(rollout.id),
                });
            } else if let Some(production) = self.production(name) {
                routes.push(Route {
                    model: name.clone(),
                    baseline: target(production.version),
                    canary: None,
                    canary_weight: 0.0,
                    rollout: None,
                });
            }
        }
        routes
    }

    /// Hands each active rollout its traffic, summed over routers; a canary that failed to
    /// load everywhere it was assigned is reported as unavailable.
    pub(super) fn check_rollouts(&mut self) {
        for (id, controller) in &self.controllers {
            let Some(rollout) = self.rollouts.get(id) else {
                continue;
            };
            let mut total = Pair::default();
            for counters in self.routers.values() {
                if let Some(pair) = counters.get(id) {
                    total.baseline.merge(&pair.baseline);
                    total.canary.merge(&pair.canary);
                }
            }
            let canary = ModelRef {
                name: rollout.model.clone(),
                version: rollout.canary,
            };
            let states: Vec<&ServeState> = self
                .agents
                .values()
                .filter(|entry| entry.endpoint.is_some())
                .filter_map(|entry| {
                    entry
                        .models
                        .iter()
                        .find(|(model, _)| *model == canary)
                        .map(|(_, state)| state)
                })
                .collect();
            let failures: Vec<&String> = states
                .iter()
                .filter_map(|state| match state {
                    ServeState::Failed(message) => Some(message),
                    _ => None,
                })
                .collect();
            if !states.is_empty() && failures.len() == states.len() {
                let _ = controller.cast(RolloutMsg::CanaryUnavailable(format!(
                    "{canary} failed to load on every serving agent: {}",
                    failures[0]
                )));
            } else {
                let _ = controller.cast(RolloutMsg::Check(total));
            }
        }
        // Counters of ended rollouts are no longer needed.
        let active: std::collections::HashSet<u64> = self.controllers.keys().copied().collect();
        for counters in self.routers.values_mut() {
            counters.retain(|rollout, _| active.contains(rollout));
        }
    }

    /// Rollouts, newest first, of every model or of one.
    pub(super) fn rollouts_of(&self, model: Option<&str>) -> Vec<RolloutRecord> {
        self.rollouts
            .values()
            .rev()
            .filter(|rollout| model.is_none_or(|model| rollout.model == model))
            .cloned()
            .collect()
    }

    /// An operator's action on the active rollout of `model`, answered by its controller.
    pub(super) fn act(
        &self,
        model: String,
        action: RolloutAction,
        reply: RpcReplyPort<Result<RolloutRecord, ApiError>>,
    ) {
        let active = self.active_rollout(&model);
        let controller = active.and_then(|rollout| self.controllers.get(&rollout.id).cloned());
        let canary_ready = active.is_some_and(|rollout| {
            !self
                .endpoints(&ModelRef {
                    name: rollout.model.clone(),
                    version: rollout.canary,
                })
                .is_empty()
        });
        let Some(controller) = controller else {
            let _ = reply.send(Err(api_error(
                ApiErrorKind::NotFound,
                format!("model '{model}' has no active rollout"),
            )));
            return;
        };
        if action == RolloutAction::Promote && !canary_ready {
            let _ = reply.send(Err(invalid(format!(
                "the canary of '{model}' is not ready on any serving agent; promoting it would leave the model unserved"
            ))));
            return;
        }
        // The controller answers; Models must not wait on it (it reports back).
        tokio::spawn(async move {
            let answer =
                super::super::ask(&controller, |reply| RolloutMsg::Act { action, reply }).await;
            let _ = reply.send(match answer {
                Ok(Ok(record)) => Ok(record),
                Ok(Err(message)) => Err(invalid(message)),
                Err(error) => Err(api_error(ApiErrorKind::Unavailable, error.to_string())),
            });
        });
    }

    /// A router's counters, kept where plausible; answered with the routes.
    pub(super) fn router_sync(&mut self, report: RouterReport) -> Vec<Route> {
        let counters = report
            .rollouts
            .iter()
            .filter(|traffic| {
                let valid = plausible(&traffic.traffic);
                if !valid {
                    tracing::warn!(router = %report.router, rollout = traffic.rollout, "ignoring impossible counters from a router");
                }
                valid
            })
            .map(|traffic| (traffic.rollout, traffic.traffic))
            .collect();
        self.routers.insert(report.router, counters);
        self.routes()
    }

    /// A Rollout actor stored a change; an ended rollout's controller is let go.
    pub(super) async fn rollout_changed(&mut self, record: RolloutRecord) {
        if !record.state.is_active() {
            self.controllers.remove(&record.id);
        }
        self.rollouts.insert(record.id, record);
        self.assign().await;
    }
}
