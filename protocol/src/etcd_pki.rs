//! etcd's own certificates: a CA apart from the cluster CA, a certificate for the members
//! (client-facing server and peer), and one client certificate per etcd user.
//!
//! etcd runs with `--client-cert-auth` and auth enabled, so the common name of a client
//! certificate *is* its etcd user: [`ROOT`] (sets up users and roles), [`COORDINATOR`]
//! (reads and writes the cluster's prefix) and [`AGENT`] (checkpoint-lease keys only). The
//! CA is separate so that no QUIC certificate (signed by the cluster CA) is ever accepted by
//! etcd, and no etcd certificate by a coordinator.
//!
//! `flotilla certs init` writes the set into `CERTS/etcd/`:
//!
//! | file | holder |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the etcd CA (keep the key offline) |
//! | `member.pem`, `member-key.pem` | every etcd member (server and peer TLS) |
//! | `root.pem`, `root-key.pem` | whoever runs `flotilla certs etcd-auth` |
//! | `coordinator.pem`, `coordinator-key.pem` | coordinators |
//! | `agent.pem`, `agent-key.pem` | agents |

use std::path::{Path, PathBuf};

use rcgen::{ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};

use crate::tls::{
    ClusterCa, IssuedPem, TlsError, generation_error, host_name, name, with_loopback, write_private,
};

/// The etcd user of the root certificate: it creates users and roles and enables auth.
pub const ROOT: &str = "root";
/// The etcd user of coordinators' client certificates.
pub const COORDINATOR: &str = "flotilla-coordinator";
/// The etcd user of agents' client certificates.
pub const AGENT: &str = "flotilla-agent";

/// The folder under a certificates directory that holds the etcd set.
pub const DIR: &str = "etcd";

/// What an etcd certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdCert {
    /// An etcd member: serves clients and peers, and is a client of its peers.
    Member,
    Root,
    Coordinator,
    Agent,
}

impl EtcdCert {
    pub const ALL: [EtcdCert; 4] = [
        EtcdCert::Member,
        EtcdCert::Root,
        EtcdCert::Coordinator,
        EtcdCert::Agent,
    ];

    /// The name `flotilla certs issue etcd-NAME` takes, and the default file stem.
    pub fn name(self) -> &'static str {
        match self {
            EtcdCert::Member => "member",
            EtcdCert::Root => "root",
            EtcdCert::Coordinator => "coordinator",
            EtcdCert::Agent => "agent",
        }
    }

    pub fn from_name(name: &str) -> Option<EtcdCert> {
        EtcdCert::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The certificate's common name: the etcd user it authenticates as.
    pub fn common_name(self) -> &'static str {
        match self {
            EtcdCert::Member => "flotilla-etcd-member",
            EtcdCert::Root => ROOT,
            EtcdCert::Coordinator => COORDINATOR,
            EtcdCert::Agent => AGENT,
        }
    }
}

impl ClusterCa {
    /// A new etcd CA.
    pub fn generate_etcd() -> Result<ClusterCa, TlsError> {
        ClusterCa::generate("flotilla etcd")
    }

    /// Issues an etcd certificate. Member certificates name `hosts` (DNS names or IP
    /// addresses; loopback is always included) and serve as both server and client (peers
    /// dial each other); the others are client certificates for their etcd user.
    pub fn issue_etcd_pem(&self, kind: EtcdCert, hosts: &[String]) -> Result<IssuedPem, TlsError> {
        let key = KeyPair::generate().map_err(generation_error)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = name(kind.common_name(), "etcd");
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if kind == EtcdCert::Member {
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            for host in with_loopback(hosts) {
                params.subject_alt_names.push(host_name(host)?);
            }
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        self.sign(&params, key)
    }
}

/// Makes a new etcd CA and writes it with one certificate of each kind into `dir`
/// (`CERTS/etcd`), member certificates naming `hosts`. Refuses to overwrite anything.
pub fn write_etcd_material(dir: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(dir).map_err(|error| TlsError::Write {
        path: dir.into(),
        message: error.to_string(),
    })?;
    let ca = ClusterCa::generate_etcd()?;
    let mut written = Vec::new();
    write_private(&dir.join("ca.pem"), &ca.cert_pem(), false, &mut written)?;
    write_private(&dir.join("ca-key.pem"), &ca.key_pem(), true, &mut written)?;
    for kind in EtcdCert::ALL {
        ca.issue_etcd_pem(kind, hosts)?
            .write(dir, kind.name(), false, &mut written)?;
    }
    Ok(written)
}
