//! The election: every coordinator replica campaigns in `<prefix>/v1/election` with a lease
//! of `lease_ttl`. The winner's election key has a create revision, which becomes its
//! **epoch**: greater than every earlier leader's, checked by agents, and compared by every
//! state write (see [`crate::store::etcd`]). The election value is the leader's QUIC address,
//! which followers hand to clients and agents. The lease and its self-fencing
//! ([`Fence`], [`keep_alive`]) live in [`flotilla_etcd`], shared with agents' checkpoint
//! leases.

use std::time::Duration;

use etcd_client::{Client, LeaderKey};
pub use flotilla_etcd::{EtcdConfig, Fence, connect, grant, keep_alive};

/// The current leader's election value (its address), if there is a leader.
pub async fn current_leader(client: &mut Client, config: &EtcdConfig) -> Option<String> {
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        client.leader(config.election_name()),
    )
    .await
    .ok()?
    .ok()?;
    answer
        .kv()
        .and_then(|kv| kv.value_str().ok())
        .map(str::to_string)
}

/// One etcd member's status, asked of that member alone (its own connection, `config`'s
/// credentials) within `timeout`; the error says why there is none.
pub async fn member_status(
    config: &EtcdConfig,
    endpoint: &str,
    timeout: Duration,
) -> Result<etcd_client::StatusResponse, String> {
    let one = EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        ..config.clone()
    };
    let answer = tokio::time::timeout(timeout, async {
        let mut single = connect(&one).await?;
        single.status().await
    })
    .await;
    match answer {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
    }
}

/// What a won election gives the new leader.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub key: Vec<u8>,
    /// The election key's create revision: the leader epoch.
    pub revision: i64,
}

impl Leadership {
    pub fn from_key(key: &LeaderKey) -> Leadership {
        Leadership {
            key: key.key().to_vec(),
            revision: key.rev(),
        }
    }
}
