//! The spot and lifecycle watcher (`--imds`): polls the EC2 instance metadata service
//! (IMDSv2) for notices that this instance is going away and tells AgentRoot.
//!
//! Every poll takes a session token (`PUT /latest/api/token`, kept until shortly before it
//! expires or until the service refuses it) and reads three documents with it:
//!
//! - `meta-data/events/recommendations/rebalance`: the instance is at elevated risk of
//!   interruption. The agent stops accepting trials; running ones go on.
//! - `meta-data/spot/instance-action`: the spot instance is stopped, hibernated or terminated
//!   at the time given (two minutes after the notice). Every running trial checkpoints now
//!   and is reported as preempted (no retry spent); the agent drains.
//! - `meta-data/autoscaling/target-lifecycle-state`: `Terminated` once the group's
//!   termination lifecycle hook holds the instance. The agent drains as for an interruption;
//!   the coordinator's autoscaler keeps the hook alive and completes it once the agent is
//!   idle.
//!
//! A document that is absent (404) means no notice. Each notice is acted on once. A service
//! that cannot be reached is logged (once per outage) and counted, and polling goes on.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::ActorRef;
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::metrics::AgentMetrics;
use crate::root::AgentMsg;

/// The instance metadata service's address on EC2.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// How long a spot interruption notice comes before the instance goes away.
pub const SPOT_NOTICE: Duration = Duration::from_secs(120);
/// Session tokens are asked for this long (the service's maximum is six hours).
const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// One metadata request's limit: the service is on the instance itself.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
const INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
const LIFECYCLE_STATE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";

#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// The service's base URL (`http://169.254.169.254` on EC2).
    pub endpoint: String,
    /// Between polls. AWS suggests every five seconds for interruption notices.
    pub interval: Duration,
}

impl ImdsConfig {
    pub fn new(endpoint: impl Into<String>) -> ImdsConfig {
        ImdsConfig {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            interval: Duration::from_secs(2),
        }
    }
}

/// A notice that this instance is going away, or may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A rebalance recommendation: stop taking trials.
    Rebalance,
    /// A spot interruption: `action` (terminate, stop, hibernate) happens at `at`.
    Interruption {
        action: String,
        at: Option<SystemTime>,
    },
    /// The group's termination lifecycle hook holds this instance.
    Terminating,
}

impl Notice {
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Rebalance => "rebalance",
            Notice::Interruption { .. } => "interruption",
            Notice::Terminating => "terminating",
        }
    }

    /// When the notice was posted, as well as the agent can tell: two minutes before a spot
    /// interruption's time, else `seen` (polling delay included either way where known).
    pub fn posted(&self, seen: SystemTime) -> SystemTime {
        match self {
            Notice::Interruption { at: Some(at), .. } => at
                .checked_sub(SPOT_NOTICE)
                .filter(|posted| *posted <= seen)
                .unwrap_or(seen),
            _ => seen,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("{what} {url}: {message}")]
    Request {
        what: &'static str,
        url: String,
        message: String,
    },
}

/// An IMDSv2 session.
pub struct Imds {
    client: reqwest::Client,
    endpoint: String,
    token: Option<(String, Instant)>,
}

impl Imds {
    pub fn new(endpoint: &str) -> Result<Imds, ImdsError> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // The service is link-local: a proxy from the environment must not be used.
            .no_proxy()
            .build()
            .map_err(|error| ImdsError::Request {
                what: "building a client for",
                url: endpoint.to_string(),
                message: error.to_string(),
            })?;
        Ok(Imds {
            client,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: None,
        })
    }

    async fn token(&mut self) -> Result<String, ImdsError> {
        if let Some((token, expires)) = &self.token
            && Instant::now() < *expires
        {
            return Ok(token.clone());
        }
        let url = format!("{}/latest/api/token", self.endpoint);
        let failed = |message: String| ImdsError::Request {
            what: "PUT",
            url: url.clone(),
            message,
        };
        let response = self
            .client
            .put(&url)
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                TOKEN_TTL.as_secs().to_string(),
            )
            .send()
            .await
            .map_err(|error| failed(error.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("status {}", response.status())));
        }
        let token = response
            .text()
            .await
            .map_err(|error| failed(error.to_string()))?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(failed("an empty token".into()));
        }
        // Renewed a minute early, so a request never carries an expired token.
        let expires = Instant::now() + TOKEN_TTL - Duration::from_secs(60);
        self.token = Some((token.clone(), expires));
        Ok(token)
    }

    /// One document: `None` when absent (404, the usual answer: no notice).
    async fn get(&mut self, path: &str) -> Result<Option<String>, ImdsError> {
        let token = self.token().await?;
        let url = format!("{}{path}", self.endpoint);
        let failed = |message: String| ImdsError::Request {
            what: "GET",
            url: url.clone(),
            message,
        };
        let response = self
            .client
            .get(&url)
            .header("X-aws-ec2-metadata-token", token)
            .send()
            .await
            .map_err(|error| failed(error.to_string()))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED => {
                // Expired or revoked: the next poll takes a new one.
                self.token = None;
                Err(failed("the session token was refused (401)".into()))
            }
            status if status.is_success() => response
                .text()
                .await
                .map(Some)
                .map_err(|error| failed(error.to_string())),
            status => Err(failed(format!("status {status}"))),
        }
    }

    /// The notices the service holds now, in the order they are acted on.
    pub async fn poll(&mut self) -> Result<Vec<Notice>, ImdsError> {
        let mut notices = Vec::new();
        if self.get(REBALANCE).await?.is_some() {
            notices.push(Notice::Rebalance);
        }
        if let Some(body) = self.get(INSTANCE_ACTION).await? {
            notices.push(parse_instance_action(&body));
        }
        if let Some(state) = self.get(LIFECYCLE_STATE).await?
            && state.trim() == "Terminated"
        {
            notices.push(Notice::Terminating);
        }
        Ok(notices)
    }
}

/// `{"action": "terminate", "time": "2026-12-01T08:22:00Z"}`. A body that does not parse is
/// still a notice: the instance is going away either way.
fn parse_instance_action(body: &str) -> Notice {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let action = value["action"].as_str().unwrap_or("terminate").to_string();
    let at = value["time"]
        .as_str()
        .and_then(|time| humantime::parse_rfc3339_weak(time).ok());
    if value.is_null() {
        tracing::warn!(%body, "spot/instance-action is not the JSON expected; treating it as a termination notice");
    }
    Notice::Interruption { action, at }
}

/// Polls until `shutdown`, telling `root` of each notice once.
pub async fn watch(
    config: ImdsConfig,
    root: ActorRef<AgentMsg>,
    metrics: Arc<AgentMetrics>,
    shutdown: CancellationToken,
) {
    let mut imds = match Imds::new(&config.endpoint) {
        Ok(imds) => imds,
        Err(error) => {
            tracing::error!(%error, "the spot and lifecycle watcher cannot start");
            return;
        }
    };
    tracing::info!(endpoint = %config.endpoint, "watching the instance metadata service for spot and lifecycle notices");
    let mut seen: Vec<&'static str> = Vec::new();
    let mut failing = false;
    loop {
        match imds.poll().await {
            Ok(notices) => {
                if failing {
                    tracing::info!("the instance metadata service answers again");
                    failing = false;
                }
                for notice in notices {
                    if seen.contains(&notice.kind()) {
                        continue;
                    }
                    seen.push(notice.kind());
                    metrics.notices.with_label_values(&[notice.kind()]).inc();
                    let _ = root.cast(AgentMsg::Notice {
                        notice,
                        seen: SystemTime::now(),
                    });
                }
            }
            Err(error) => {
                metrics.imds_errors.inc();
                if !failing {
                    tracing::warn!(%error, "cannot read the instance metadata service; spot notices may be missed until it answers");
                    failing = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_action_carries_its_time() {
        let notice = parse_instance_action(r#"{"action": "stop", "time": "2026-12-01T08:22:00Z"}"#);
        let at = humantime::parse_rfc3339("2026-12-01T08:22:00Z").expect("time");
        assert_eq!(
            notice,
            Notice::Interruption {
                action: "stop".into(),
                at: Some(at),
            }
        );
        // Posted two minutes before the action, unless that is later than when it was seen.
        assert_eq!(notice.posted(at), at - SPOT_NOTICE);
        let early = at - Duration::from_secs(600);
        assert_eq!(notice.posted(early), early);
    }

    #[test]
    fn an_unreadable_instance_action_is_still_a_termination() {
        assert_eq!(
            parse_instance_action("garbage"),
            Notice::Interruption {
                action: "terminate".into(),
                at: None,
            }
        );
    }
}
