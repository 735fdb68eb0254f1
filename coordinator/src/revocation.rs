//! Keeps the coordinator's certificate revocation list current.
//!
//! The list is `crl.pem` (written by `flotilla certs revoke`), read at start and polled every
//! [`POLL`]: when its contents change, the QUIC endpoint gets a new server configuration (new
//! handshakes are checked against the new list by rustls) and the gateway's sessions are told
//! (a connection whose certificate is now revoked is closed). A list that does not parse is
//! reported and ignored: the previous one stays in force, so a half-written file never lets a
//! revoked certificate back in. The watcher is a task owned by the coordinator's tracker and
//! stops with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::revocation::RevocationList;
use flotilla_protocol::tls::{self, Identity};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::METRICS;

/// How often the file is checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// Reads the list at `path` (none there: nothing revoked).
pub fn load(path: &Path) -> anyhow::Result<RevocationList> {
    let list = RevocationList::load(path)?;
    METRICS.revoked_certificates.set(list.len() as i64);
    Ok(list)
}

/// Polls `path` until `shutdown`, installing each new list on `endpoint` and in `sender`.
pub async fn watch_file(
    path: PathBuf,
    identity: Identity,
    endpoint: quinn::Endpoint,
    sender: watch::Sender<Arc<RevocationList>>,
    shutdown: CancellationToken,
) {
    let mut last = std::fs::read(&path).ok();
    let mut ticker = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let current = tokio::fs::read(&path).await.ok();
        if current == last {
            continue;
        }
        // A removed file revokes nothing, as at start.
        let list = RevocationList::from_pem(current.as_deref().unwrap_or_default());
        last = current;
        let list = match list {
            Ok(list) => list,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "the revocation list changed but cannot be used; the previous one stays in force");
                continue;
            }
        };
        match tls::server_config(&identity, &list) {
            Ok(config) => endpoint.set_server_config(Some(config)),
            Err(error) => {
                tracing::error!(%error, "cannot configure TLS with the new revocation list; the previous one stays in force");
                continue;
            }
        }
        tracing::info!(path = %path.display(), revoked = list.len(), "revocation list reloaded");
        METRICS.revoked_certificates.set(list.len() as i64);
        sender.send_replace(Arc::new(list));
    }
}
