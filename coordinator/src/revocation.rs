//! Keeps the coordinator's certificate revocation list current.
//!
//! The list is `crl.pem` (written by `flotilla certs revoke`), read at start and polled every
//! [`flotilla_protocol::revocation::POLL`]: when its contents change, the QUIC endpoint gets a new server configuration (new
//! handshakes are checked against the new list by rustls) and the gateway's sessions are told
//! (a connection whose certificate is now revoked is closed). A list that does not parse is
//! reported and ignored: the previous one stays in force, so a half-written file never lets a
//! revoked certificate back in. The watcher is a task owned by the coordinator's tracker and
//! stops with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_protocol::revocation::RevocationList;
use flotilla_protocol::tls::{self, Identity};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::METRICS;

/// Reads the list at `path` (none there: nothing revoked).
pub fn load(path: &Path) -> anyhow::Result<RevocationList> {
    let list = RevocationList::load(path)?;
    METRICS.revoked_certificates.set(list.len() as i64);
    Ok(list)
}

/// Polls `path` until `shutdown`, installing each new list on `endpoint` and in `sender`
/// ([`flotilla_protocol::revocation::watch_file`]).
pub async fn watch_file(
    path: PathBuf,
    identity: Identity,
    endpoint: quinn::Endpoint,
    sender: watch::Sender<Arc<RevocationList>>,
    shutdown: CancellationToken,
) {
    flotilla_protocol::revocation::watch_file(path, shutdown, |list| {
        let config = tls::server_config(&identity, &list).map_err(|error| {
            format!("cannot configure TLS with the new revocation list: {error}")
        })?;
        endpoint.set_server_config(Some(config));
        METRICS.revoked_certificates.set(list.len() as i64);
        sender.send_replace(Arc::new(list));
        Ok(())
    })
    .await
}
