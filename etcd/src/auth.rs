//! etcd users and roles for a cluster: least privilege per party.
//!
//! etcd authenticates a TLS client as the user its certificate's common name names
//! (`--client-cert-auth`), so the users here have no passwords. [`enable`] makes:
//!
//! | user | role | may |
//! |---|---|---|
//! | `root` | `root` | everything (it runs [`enable`]) |
//! | `flotilla-coordinator` | `flotilla-coordinator` | read and write `<prefix>/` (election, state, checkpoint pointers) |
//! | `flotilla-agent` | `flotilla-agent` | read and write `<prefix>/v1/checkpoints/` only |
//!
//! then turns authentication on. An agent's certificate therefore cannot touch the
//! election or the coordinators' fenced state; it can only take and move checkpoint leases.
//! Running it again is harmless: what exists is kept, and missing grants are added (a
//! second prefix on the same etcd adds that prefix to the same roles).

use etcd_client::{Client, Error, Permission, UserAddOptions};
use flotilla_protocol::etcd_pki;

use crate::EtcdConfig;

/// A role and the key prefixes it may read and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: &'static str,
    pub prefixes: Vec<String>,
}

/// The grants for the cluster under `config.prefix`.
pub fn grants(config: &EtcdConfig) -> Vec<Grant> {
    vec![
        Grant {
            user: etcd_pki::COORDINATOR,
            prefixes: vec![format!("{}/", config.prefix.trim_end_matches('/'))],
        },
        Grant {
            user: etcd_pki::AGENT,
            prefixes: vec![config.checkpoints_prefix()],
        },
    ]
}

fn exists(error: &Error) -> bool {
    error.to_string().contains("already exists")
}

/// Creates the users and roles of [`grants`] and enables authentication, as the `root`
/// user (`client` must connect with the root certificate). Returns what it did, one line
/// each, for the operator.
pub async fn enable(client: &mut Client, config: &EtcdConfig) -> Result<Vec<String>, Error> {
    let mut done = Vec::new();
    let no_password = || Some(UserAddOptions::new().with_no_pwd());
    for user in std::iter::once(etcd_pki::ROOT).chain(grants(config).iter().map(|g| g.user)) {
        match client.user_add(user, "", no_password()).await {
            Ok(_) => done.push(format!("added user {user} (authenticated by certificate)")),
            Err(error) if exists(&error) => done.push(format!("user {user} exists")),
            Err(error) => return Err(error),
        }
    }
    match client.role_add(etcd_pki::ROOT).await {
        Ok(_) => done.push("added role root".into()),
        Err(error) if exists(&error) => {}
        Err(error) => return Err(error),
    }
    client
        .user_grant_role(etcd_pki::ROOT, etcd_pki::ROOT)
        .await?;
    for grant in grants(config) {
        match client.role_add(grant.user).await {
            Ok(_) => done.push(format!("added role {}", grant.user)),
            Err(error) if exists(&error) => {}
            Err(error) => return Err(error),
        }
        for prefix in &grant.prefixes {
            client
                .role_grant_permission(
                    grant.user,
                    Permission::read_write(prefix.as_bytes()).with_prefix(),
                )
                .await?;
            done.push(format!("role {} may read and write {prefix}*", grant.user));
        }
        client.user_grant_role(grant.user, grant.user).await?;
    }
    client.auth_enable().await?;
    done.push("authentication enabled".into());
    Ok(done)
}
