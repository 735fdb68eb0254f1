//! Flotilla's etcd primitives, shared by coordinators (election, fenced state) and agents
//! (checkpoint leases): how to connect, where the keys live, and leases that fence their
//! holder on the monotonic clock.
//!
//! Every coordinator replica campaigns in one etcd election (`<prefix>/v1/election`) with a
//! lease of `lease_ttl`. The winner's election key has a create revision, which becomes its
//! **epoch**: it is greater than every earlier leader's, agents refuse commands from older
//! epochs, and every state write is an etcd transaction that compares it (see
//! [`crate::store::etcd`]). The election value is the leader's QUIC address, which followers
//! hand to clients and agents.
//!
//! A leader keeps its lease alive and **fences itself**: each keep-alive answer extends a
//! deadline measured on the monotonic clock from the moment the keep-alive was *sent*, minus
//! a margin, so the deadline passes before the lease can expire at the server. Once it has
//! passed (a lost keep-alive, a process paused with SIGSTOP, an etcd without quorum) the
//! leader stops acting: the store refuses writes and the session layer refuses to send
//! commands before anything else runs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use etcd_client;

use etcd_client::{Client, ConnectOptions};
use tokio_util::sync::CancellationToken;

pub mod auth;

/// How this coordinator reaches etcd and campaigns.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://10.0.0.5:2379`.
    pub endpoints: Vec<String>,
    /// The cluster's key prefix; keys live under `<prefix>/v1/`.
    pub prefix: String,
    /// The leader's lease. A dead leader is replaced about this long after it died.
    pub lease_ttl: Duration,
    /// TLS with a client certificate, for `https://` endpoints. etcd authenticates the
    /// client as the user its certificate's common name names (`--client-cert-auth`).
    pub tls: Option<EtcdTls>,
}

/// The files a process reaches etcd over TLS with: etcd's CA, and a client certificate and
/// key for one etcd user (see `flotilla_protocol::etcd_pki`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdTls {
    /// `DIR/ca.pem`, `DIR/STEM.pem` and `DIR/STEM-key.pem` (the `CERTS/etcd` layout).
    pub fn in_dir(dir: &Path, stem: &str) -> EtcdTls {
        EtcdTls {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        }
    }

    fn options(&self) -> Result<etcd_client::TlsOptions, etcd_client::Error> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|error| {
                etcd_client::Error::InvalidArgs(format!(
                    "cannot read {} (etcd TLS): {error}",
                    path.display()
                ))
            })
        };
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)?))
            .identity(etcd_client::Identity::from_pem(
                read(&self.cert)?,
                read(&self.key)?,
            )))
    }
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: "/flotilla".into(),
            lease_ttl: Duration::from_secs(5),
            tls: None,
        }
    }

    /// True when every endpoint is `https://`.
    pub fn is_tls(&self) -> bool {
        !self.endpoints.is_empty()
            && self
                .endpoints
                .iter()
                .all(|endpoint| endpoint.starts_with("https://"))
    }

    /// The versioned root of every key Flotilla writes.
    pub fn root(&self) -> String {
        format!("{}/v1", self.prefix.trim_end_matches('/'))
    }

    pub fn election_name(&self) -> String {
        format!("{}/election", self.root())
    }

    /// Every checkpoint-lease key: the only keys agents may touch.
    pub fn checkpoints_prefix(&self) -> String {
        format!("{}/checkpoints/", self.root())
    }

    /// The key an agent holds, bound to its lease, while an attempt of `trial` runs there.
    pub fn checkpoint_owner_key(&self, trial: &str) -> String {
        format!("{}{trial}/owner", self.checkpoints_prefix())
    }

    /// The trial's latest checkpoint pointer, moved only by the owner.
    pub fn checkpoint_latest_key(&self, trial: &str) -> String {
        format!("{}{trial}/latest", self.checkpoints_prefix())
    }

    /// etcd leases are whole seconds.
    pub fn lease_ttl_secs(&self) -> i64 {
        self.lease_ttl.as_secs().max(1) as i64
    }
}

/// Connects to etcd. Requests need a member that has a leader (`require_leader`), so a
/// member cut off from its quorum fails requests instead of serving stale answers.
/// `https://` endpoints need [`EtcdConfig::tls`] and `http://` ones refuse it: a
/// certificate is never configured and then silently not used.
pub async fn connect(config: &EtcdConfig) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_require_leader(true);
    let any_https = config
        .endpoints
        .iter()
        .any(|endpoint| endpoint.starts_with("https://"));
    match (&config.tls, config.is_tls()) {
        (Some(tls), true) => options = options.with_tls(tls.options()?),
        (Some(_), false) => {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "etcd TLS is configured but not every endpoint is https:// ({})",
                config.endpoints.join(",")
            )));
        }
        (None, _) if !any_https => {}
        (None, _) => {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "https:// etcd endpoints ({}) need a CA, a client certificate and its key",
                config.endpoints.join(",")
            )));
        }
    }
    Client::connect(&config.endpoints, Some(options)).await
}

/// How long [`check_access`] waits for etcd's answer.
const CHECK_LIMIT: Duration = Duration::from_secs(5);

/// Reads `key` once, within [`CHECK_LIMIT`], so that credentials etcd refuses (a certificate of
/// another CA, a user without a role for the key) fail a process's start with a clear
/// error rather than a stream of retries. An etcd that does not answer in time is not an
/// error here: members may come up after the process.
pub async fn check_access(
    client: &mut Client,
    config: &EtcdConfig,
    key: &str,
) -> Result<(), String> {
    let error = match tokio::time::timeout(CHECK_LIMIT, client.get(key, None)).await {
        Ok(Ok(_)) | Err(_) => return Ok(()),
        Ok(Err(error)) => error_chain(&error),
    };
    let refused = [
        "permission denied",
        "certificate",
        "user name",
        "authentication",
        "handshake",
        "alert",
    ]
    .iter()
    .any(|sign| error.to_lowercase().contains(sign));
    if !refused {
        tracing::warn!(%error, "etcd did not answer yet");
        return Ok(());
    }
    let credentials = match &config.tls {
        Some(tls) => format!(
            "CA {}, certificate {}",
            tls.ca.display(),
            tls.cert.display()
        ),
        None => "no client certificate".to_string(),
    };
    Err(format!(
        "etcd at {} refused access to {key} with {credentials}: {error}",
        config.endpoints.join(",")
    ))
}

/// An error and its sources, `: `-separated (transport errors hide the TLS reason in
/// their sources).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// A leader's right to act, measured on this process's monotonic clock.
pub struct Fence {
    valid_until: Mutex<Instant>,
    lost: CancellationToken,
}

impl Fence {
    /// A fence valid until `valid_until`.
    pub fn new(valid_until: Instant) -> Fence {
        Fence {
            valid_until: Mutex::new(valid_until),
            lost: CancellationToken::new(),
        }
    }

    /// True while this process may still act as leader.
    pub fn is_valid(&self) -> bool {
        if self.lost.is_cancelled() {
            return false;
        }
        let until = self
            .valid_until
            .lock()
            .map_or(Instant::now(), |until| *until);
        if Instant::now() >= until {
            self.lost.cancel();
            return false;
        }
        true
    }

    /// Moves the deadline later (never earlier); ignored once lost.
    pub fn extend(&self, until: Instant) {
        if let Ok(mut current) = self.valid_until.lock()
            && until > *current
            && !self.lost.is_cancelled()
        {
            *current = until;
        }
    }

    /// Ends the fence now.
    pub fn revoke(&self) {
        self.lost.cancel();
    }

    /// Resolves once the fence is no longer valid.
    pub async fn lost(&self) {
        loop {
            let until = self
                .valid_until
                .lock()
                .map_or(Instant::now(), |until| *until);
            tokio::select! {
                () = self.lost.cancelled() => return,
                () = tokio::time::sleep_until(until.into()) => {}
            }
            if !self.is_valid() {
                return;
            }
        }
    }
}

/// How much earlier than the server's lease expiry the fence closes.
pub fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(200))
}

/// Grants a lease of `config.lease_ttl` and a fence that holds while it is kept alive.
pub async fn grant(
    client: &mut Client,
    config: &EtcdConfig,
) -> Result<(i64, std::sync::Arc<Fence>), etcd_client::Error> {
    let ttl = config.lease_ttl;
    let granted_at = Instant::now();
    let lease =
        match tokio::time::timeout(ttl, client.lease_grant(config.lease_ttl_secs(), None)).await {
            Ok(lease) => lease?,
            Err(_) => {
                return Err(etcd_client::Error::InvalidArgs(
                    "granting a lease timed out".into(),
                ));
            }
        };
    let granted = Duration::from_secs(lease.ttl().max(0) as u64);
    let fence = std::sync::Arc::new(Fence::new(
        granted_at + granted.saturating_sub(fence_margin(ttl)),
    ));
    Ok((lease.id(), fence))
}

/// Keeps `lease` alive every `ttl / 3` and extends `fence` with each answer, until the lease
/// is gone (the fence is revoked) or `stop` fires. A keep-alive not answered within a third
/// of the TTL is retried on a fresh stream; the fence simply runs out if none succeed.
pub async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    fence: std::sync::Arc<Fence>,
    stop: CancellationToken,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let margin = fence_margin(ttl);
    'streams: while !stop.is_cancelled() && !fence.lost.is_cancelled() {
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = tokio::time::timeout(period, client.lease_keep_alive(lease)) => opened,
        };
        let (mut keeper, mut answers) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot open the lease keep-alive stream");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(period / 2) => continue,
                }
            }
            Err(_) => continue,
        };
        loop {
            let sent = Instant::now();
            let answer = tokio::select! {
                () = stop.cancelled() => return,
                answer = tokio::time::timeout(period, async {
                    keeper.keep_alive().await?;
                    answers.message().await
                }) => answer,
            };
            match answer {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    if !fence.is_valid() {
                        // The fence closed while etcd was unreachable: this process has
                        // stopped acting on the lease, so nothing bound to it (a leader key,
                        // an owner key whose release failed) may outlive it. Renewing it
                        // now would keep those keys forever; revoke it instead.
                        tracing::warn!(
                            lease,
                            "the fence ran out before etcd answered; revoking the lease"
                        );
                        let _ = tokio::time::timeout(period, client.lease_revoke(lease)).await;
                        return;
                    }
                    let granted = Duration::from_secs(answer.ttl() as u64);
                    fence.extend(sent + granted.saturating_sub(margin));
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(lease, "the lease has expired at the server");
                    fence.revoke();
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    tracing::warn!(lease, "lease keep-alive failed; retrying");
                    continue 'streams;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until((sent + period).into()) => {}
            }
        }
    }
}
