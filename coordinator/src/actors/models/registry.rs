//! The registry: sealing a trial's checkpoint into a version, and its stages.

use super::*;

impl ModelsState {
    pub(super) fn start_registration(
        &mut self,
        myself: &ActorRef<ModelsMsg>,
        registration: Registration,
        reply: RpcReplyPort<Result<ModelVersion, ApiError>>,
    ) -> Result<(), ()> {
        let Registration {
            request,
            lineage,
            serving,
        } = registration;
        let refuse = |reply: RpcReplyPort<Result<ModelVersion, ApiError>>, error: ApiError| {
            let _ = reply.send(Err(error));
            Err(())
        };
        if let Err(message) = check_model_name(&request.name) {
            return refuse(reply, invalid(message));
        }
        if request.stage == ModelStage::Archived {
            return refuse(reply, invalid("a new version cannot start archived"));
        }
        if request.stage == ModelStage::Production && self.active_rollout(&request.name).is_some() {
            return refuse(
                reply,
                invalid(format!(
                    "model '{}' has an active rollout; register as staging and roll it out, or abort the rollout first",
                    request.name
                )),
            );
        }
        let pending = |name: &str, version: SemVer| {
            self.seals
                .values()
                .any(|seal| seal.version.name == name && seal.version.version == version)
        };
        let newest = self
            .models
            .keys()
            .filter(|(name, _)| name == &request.name)
            .map(|(_, version)| *version)
            .chain(
                self.seals
                    .values()
                    .filter(|seal| seal.version.name == request.name)
                    .map(|seal| seal.version.version),
            )
            .max();
        let version = match (request.version, newest) {
            (Some(version), _) => version,
            (None, None) => SemVer::new(1, 0, 0),
            (None, Some(newest)) => match newest.next_minor() {
                Some(next) => next,
                None => {
                    return refuse(
                        reply,
                        invalid(format!(
                            "{}@{newest} is the newest version and its minor number cannot grow; give --version",
                            request.name
                        )),
                    );
                }
            },
        };
        if self.models.contains_key(&(request.name.clone(), version))
            || pending(&request.name, version)
        {
            return refuse(
                reply,
                invalid(format!(
                    "{}@{version} is already registered; versions are immutable, choose another",
                    request.name
                )),
            );
        }
        let Some((agent, entry)) = self
            .agents
            .iter()
            .find(|(_, entry)| entry.version >= SERVING_VERSION)
        else {
            return refuse(
                reply,
                api_error(
                    ApiErrorKind::Unavailable,
                    "no agent is connected to copy the checkpoint into the artifact store; start one and register again",
                ),
            );
        };
        let request_id = self.next_request;
        self.next_request += 1;
        let (key, format) = match serving {
            None => (
                format!("models/{}/{version}/model.ckpt", request.name),
                ArtifactFormat::BurnModel,
            ),
            Some(_) => (
                format!("models/{}/{version}/checkpoint.tar", request.name),
                ArtifactFormat::CheckpointArchive,
            ),
        };
        let command = CoordinatorCommand {
            epoch: self.epoch,
            command: Command::SealModel(SealRequest {
                request: request_id,
                source: lineage.checkpoint.clone(),
                key,
                format,
            }),
        };
        if entry.commands.send(command).is_err() {
            return refuse(
                reply,
                api_error(
                    ApiErrorKind::Unavailable,
                    format!("agent {agent} just left"),
                ),
            );
        }
        let now = now_ms();
        let model = ModelVersion {
            name: request.name,
            version,
            stage: request.stage,
            lineage,
            artifact: Artifact {
                uri: String::new(),
                sha256: String::new(),
                bytes: 0,
            },
            description: request.description,
            created_ms: now,
            stage_changed_ms: now,
            serving,
        };
        tracing::info!(model = %model.reference(), %agent, "sealing the artifact");
        self.seals.insert(
            request_id,
            PendingSeal {
                agent: agent.clone(),
                version: model,
                reply,
            },
        );
        myself.send_after(SEAL_TIMEOUT, move || ModelsMsg::SealTimedOut(request_id));
        Ok(())
    }

    pub(super) async fn complete_registration(
        &mut self,
        mut model: ModelVersion,
        artifact: Artifact,
    ) -> Result<ModelVersion, ApiError> {
        model.artifact = artifact;
        if model.stage == ModelStage::Production
            && let Some(rollout) = self.active_rollout(&model.name)
        {
            return Err(invalid(format!(
                "model '{}' got an active rollout ({} → {}) while this version was sealed; register it as staging, or abort the rollout first",
                model.name, rollout.baseline, rollout.canary
            )));
        }
        let mut writes = Vec::new();
        if model.stage == ModelStage::Production {
            writes.extend(self.archive_production(&model.name, model.created_ms));
        }
        writes.push(StateWrite::Model(Box::new(model.clone())));
        self.commit(writes).await?;
        tracing::info!(model = %model.reference(), sha256 = %model.artifact.sha256, stage = model.stage.as_str(), "model version registered");
        Ok(model)
    }

    /// The write that archives the production version of `name` (memory changes once it is
    /// durable, in `commit`).
    pub(super) fn archive_production(&self, name: &str, now: u64) -> Option<StateWrite> {
        let mut model = self.production(name)?.clone();
        model.stage = ModelStage::Archived;
        model.stage_changed_ms = now;
        Some(StateWrite::Model(Box::new(model)))
    }

    pub(super) async fn set_stage(
        &mut self,
        reference: &ModelRef,
        stage: ModelStage,
    ) -> Result<Vec<ModelVersion>, ApiError> {
        let key = (reference.name.clone(), reference.version);
        let Some(current) = self.models.get(&key).cloned() else {
            return Err(api_error(
                ApiErrorKind::NotFound,
                format!("no model version {reference}"),
            ));
        };
        if current.stage == stage {
            return Ok(vec![current]);
        }
        if let Some(rollout) = self.active_rollout(&reference.name) {
            return Err(invalid(format!(
                "model '{}' has an active rollout ({} → {}); promote or abort it instead",
                reference.name, rollout.baseline, rollout.canary
            )));
        }
        let now = now_ms();
        let mut writes = Vec::new();
        if stage == ModelStage::Production {
            writes.extend(self.archive_production(&reference.name, now));
        }
        let mut changed = current;
        changed.stage = stage;
        changed.stage_changed_ms = now;
        writes.push(StateWrite::Model(Box::new(changed)));
        let versions = writes
            .iter()
            .filter_map(|write| match write {
                StateWrite::Model(model) => Some((**model).clone()),
                _ => None,
            })
            .collect();
        self.commit(writes).await?;
        tracing::info!(model = %reference, stage = stage.as_str(), "stage changed");
        Ok(versions)
    }

    /// An agent's answer to a seal request: the version is stored once its artifact is.
    pub(super) async fn sealed(
        &mut self,
        agent: &AgentId,
        request: u64,
        result: Result<Artifact, String>,
    ) {
        let Some(seal) = self.seals.remove(&request) else {
            return;
        };
        if seal.agent != *agent {
            tracing::warn!(%agent, request, "a seal answer from an agent that was not asked");
        }
        let answer = match result {
            Ok(artifact) => self.complete_registration(seal.version, artifact).await,
            Err(message) => Err(invalid(format!(
                "{}@{}: the checkpoint could not be sealed: {message}",
                seal.version.name, seal.version.version
            ))),
        };
        let _ = seal.reply.send(answer);
        self.assign().await;
    }

    pub(super) fn seal_timed_out(&mut self, request: u64) {
        if let Some(seal) = self.seals.remove(&request) {
            let _ = seal.reply.send(Err(api_error(
                ApiErrorKind::Unavailable,
                format!(
                    "agent {} did not seal the artifact within {SEAL_TIMEOUT:?}",
                    seal.agent
                ),
            )));
        }
    }

    /// Every version, or those of one model.
    pub(super) fn versions(&self, name: Option<&str>) -> Vec<ModelVersion> {
        self.models
            .values()
            .filter(|model| name.is_none_or(|name| model.name == name))
            .cloned()
            .collect()
    }
}
