//! Checkpoint leases: with etcd configured, a trial's checkpoints are fenced per attempt.
//!
//! The agent holds one etcd lease (renewed when it runs out) and, for every built-in trainer
//! attempt it runs, the trial's *owner* key bound to that lease
//! (`<prefix>/v1/checkpoints/<trial>/owner`, value: the attempt). Checkpoint objects are
//! written under unique names; the trial's `latest` pointer (`…/latest`, JSON
//! `CheckpointRef`) is moved only by a transaction that compares the owner key's create
//! revision with the one this attempt created, and only while the lease's [`Fence`] holds
//! on the monotonic clock. An agent that is paused, partitioned or dead loses its lease; its
//! owner keys vanish and its later pointer moves are refused, by itself and by etcd.
//!
//! A new attempt takes the owner key only once no other attempt holds it (the old lease is
//! gone or the old attempt released it), then reads `latest` and resumes from it. So the
//! pointer only moves forward and never to a stale attempt's object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_etcd::etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use flotilla_etcd::{EtcdConfig, Fence};
use flotilla_protocol::AttemptId;
use flotilla_protocol::messages::CheckpointRef;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct CheckpointLeases {
    client: Client,
    config: EtcdConfig,
    /// The agent's current lease and its fence; replaced when the fence runs out.
    current: tokio::sync::Mutex<Option<(i64, Arc<Fence>)>>,
    stop: CancellationToken,
    /// Keep-alive tasks, stopped at shutdown.
    tasks: TaskTracker,
}

impl std::fmt::Debug for CheckpointLeases {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CheckpointLeases")
            .field("endpoints", &self.config.endpoints)
            .field("root", &self.config.root())
            .finish()
    }
}

/// An attempt's hold on its trial's checkpoints.
#[derive(Clone)]
pub struct Ownership {
    pub attempt: AttemptId,
    owner_key: String,
    latest_key: String,
    /// The owner key's create revision: the pointer moves only while it is unchanged.
    revision: i64,
    fence: Arc<Fence>,
}

/// Why an attempt did not get its trial's checkpoint lease.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseError {
    /// etcd did not answer within the wait (members down, no quorum): nothing about the
    /// trial is wrong, so the agent hands the attempt back rather than failing it.
    Unavailable(String),
    /// etcd answered no: another attempt still holds the trial, or its pointer is not one.
    Refused(String),
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::Unavailable(message) | LeaseError::Refused(message) => {
                formatter.write_str(message)
            }
        }
    }
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Ownership")
            .field("attempt", &self.attempt)
            .field("owner_key", &self.owner_key)
            .field("revision", &self.revision)
            .field("fence_valid", &self.fence.is_valid())
            .finish()
    }
}

fn etcd(what: &str, error: impl std::fmt::Display) -> String {
    format!("etcd ({what}): {error}")
}

impl CheckpointLeases {
    pub async fn connect(config: EtcdConfig) -> Result<Arc<CheckpointLeases>, String> {
        let mut client = flotilla_etcd::connect(&config)
            .await
            .map_err(|error| etcd("connect", error))?;
        flotilla_etcd::check_access(&mut client, &config, &config.checkpoints_prefix()).await?;
        Ok(Arc::new(CheckpointLeases {
            client,
            config,
            current: tokio::sync::Mutex::new(None),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }))
    }

    /// How long a new attempt waits for an old attempt's hold to go: the old agent's lease
    /// runs out within one TTL of its last keep-alive.
    pub fn takeover_wait(&self) -> Duration {
        self.config.lease_ttl * 2 + Duration::from_secs(5)
    }

    /// The current lease, granting a new one when the last ran out.
    async fn lease(&self) -> Result<(i64, Arc<Fence>), String> {
        let mut current = self.current.lock().await;
        if let Some((lease, fence)) = current.as_ref()
            && fence.is_valid()
        {
            return Ok((*lease, fence.clone()));
        }
        let mut client = self.client.clone();
        let (lease, fence) = flotilla_etcd::grant(&mut client, &self.config)
            .await
            .map_err(|error| etcd("lease", error))?;
        self.tasks.spawn(flotilla_etcd::keep_alive(
            self.client.clone(),
            lease,
            self.config.lease_ttl,
            fence.clone(),
            self.stop.child_token(),
        ));
        *current = Some((lease, fence.clone()));
        Ok((lease, fence))
    }

    /// Takes `attempt`'s trial for it, waiting up to `wait` for another attempt's hold to
    /// go, and returns the trial's latest checkpoint as of then. A request etcd does not
    /// answer (a member down, no quorum, a timeout) is tried again until `wait` has passed;
    /// then the error is [`LeaseError::Unavailable`].
    pub async fn acquire(
        &self,
        attempt: AttemptId,
        wait: Duration,
    ) -> Result<(Ownership, Option<CheckpointRef>), LeaseError> {
        let trial = attempt.trial.to_string();
        let owner_key = self.config.checkpoint_owner_key(&trial);
        let latest_key = self.config.checkpoint_latest_key(&trial);
        let deadline = Instant::now() + wait;
        let mut client = self.client.clone();
        let mut logged = false;
        let mut unanswered = false;
        loop {
            let attempted = async {
                let (lease, fence) = self.lease().await?;
                let put = flotilla_etcd::etcd_client::PutOptions::new().with_lease(lease);
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        owner_key.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![
                        TxnOp::put(owner_key.clone(), attempt.to_string(), Some(put)),
                        TxnOp::get(latest_key.clone(), None),
                    ])
                    .or_else(vec![TxnOp::get(owner_key.clone(), None)]);
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn))
                    .await
                    .map_err(|_| etcd("take the checkpoint lease", "timed out"))?;
                match answer {
                    Ok(answer) => Ok(Some((answer, fence))),
                    // The lease ended at the server before our fence noticed: take a new one.
                    Err(error) if error.to_string().contains("lease not found") => {
                        fence.revoke();
                        Ok(None)
                    }
                    Err(error) => Err(etcd("take the checkpoint lease", error)),
                }
            };
            let (answer, fence) = match attempted.await {
                Ok(Some(answered)) => answered,
                Ok(None) => continue,
                Err(message) => {
                    if Instant::now() >= deadline {
                        return Err(LeaseError::Unavailable(format!(
                            "{message} (tried for {wait:?})"
                        )));
                    }
                    if !unanswered {
                        tracing::warn!(%attempt, %message, "etcd did not answer; trying again");
                        unanswered = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let responses = answer.op_responses();
            if answer.succeeded() {
                let revision = answer.header().map_or(0, |header| header.revision());
                let latest = responses.iter().find_map(|response| match response {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                    _ => None,
                });
                let latest = match latest {
                    Some(bytes) => Some(serde_json::from_slice::<CheckpointRef>(&bytes).map_err(
                        |error| {
                            LeaseError::Refused(format!(
                                "{latest_key} holds no checkpoint pointer: {error}"
                            ))
                        },
                    )?),
                    None => None,
                };
                let ownership = Ownership {
                    attempt,
                    owner_key,
                    latest_key,
                    revision,
                    fence,
                };
                return Ok((ownership, latest));
            }
            let holder = responses
                .iter()
                .find_map(|response| match response {
                    TxnOpResponse::Get(get) => get
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                    _ => None,
                })
                .unwrap_or_default();
            if Instant::now() >= deadline {
                return Err(LeaseError::Refused(format!(
                    "{holder} still holds the checkpoints of {trial} after {wait:?}; \
                     not starting {attempt} beside it"
                )));
            }
            if !logged {
                tracing::info!(%attempt, %holder, "waiting for the previous attempt's checkpoint lease to go");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Moves the trial's latest pointer to `checkpoint`, if this attempt still holds it.
    pub async fn move_latest(
        &self,
        ownership: &Ownership,
        checkpoint: &CheckpointRef,
    ) -> Result<(), String> {
        if !ownership.fence.is_valid() {
            return Err("this agent's checkpoint lease ran out; it writes no more pointers".into());
        }
        let value = serde_json::to_vec(checkpoint).map_err(|error| error.to_string())?;
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                ownership.owner_key.clone(),
                CompareOp::Equal,
                ownership.revision,
            )])
            .and_then(vec![TxnOp::put(ownership.latest_key.clone(), value, None)]);
        let mut client = self.client.clone();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn))
            .await
            .map_err(|_| etcd("move the latest checkpoint", "timed out"))?
            .map_err(|error| etcd("move the latest checkpoint", error))?;
        if answer.succeeded() {
            Ok(())
        } else {
            Err(format!(
                "{} no longer holds the checkpoint lease (another attempt took over)",
                ownership.attempt
            ))
        }
    }

    /// Gives the trial up, so the next attempt need not wait for the lease to expire.
    ///
    /// The owner key is bound to the agent's lease, which outlives the attempt: a release
    /// that etcd did not answer (no quorum, a timeout) is retried by an owned task until etcd
    /// answers, the lease runs out (the key goes with it) or the agent shuts down (the lease
    /// is revoked). Otherwise the key would hold the trial until the agent stopped.
    pub async fn release(&self, ownership: &Ownership) {
        if release_once(self.client.clone(), ownership).await.is_ok() {
            return;
        }
        let client = self.client.clone();
        let ownership = ownership.clone();
        let stop = self.stop.child_token();
        self.tasks.spawn(async move {
            let mut pause = Duration::from_millis(200);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = ownership.fence.lost() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                if release_once(client.clone(), &ownership).await.is_ok() {
                    tracing::info!(attempt = %ownership.attempt, "released the checkpoint lease after a retry");
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        });
    }
    /// Stops the keep-alives and revokes the lease (its owner keys go with it).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some((lease, _)) = self.current.lock().await.take() {
            let mut client = self.client.clone();
            let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
        }
    }
}

/// One try at deleting `ownership`'s owner key (if it is still this attempt's): `Ok` once
/// etcd answered, whether or not the key was still there.
async fn release_once(mut client: Client, ownership: &Ownership) -> Result<(), String> {
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            ownership.owner_key.clone(),
            CompareOp::Equal,
            ownership.revision,
        )])
        .and_then(vec![TxnOp::delete(ownership.owner_key.clone(), None)]);
    match tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            tracing::debug!(%error, attempt = %ownership.attempt, "could not release the checkpoint lease");
            Err(error.to_string())
        }
        Err(_) => Err("timed out".into()),
    }
}
