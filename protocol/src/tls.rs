//! The cluster CA, role-carrying certificates, and QUIC/TLS configurations.
//!
//! Every certificate is signed by the cluster CA and carries its holder's [`Role`] as a URI
//! subject alternative name, `urn:flotilla:role:<role>`. The coordinator's certificate also
//! names [`COORDINATOR_SERVER_NAME`], which clients and agents verify instead of a host name:
//! the CA is private to the cluster, so the role is the identity that matters, and
//! coordinators can move between hosts without new certificates.
//!
//! Both directions are verified (TLS 1.3, client certificates required). There is no switch
//! that turns verification off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::handshake::ALPN;
use crate::messages::Role;
use crate::revocation::RevocationList;

/// The DNS name every coordinator certificate carries and every peer verifies.
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.flotilla";
const ROLE_URI_PREFIX: &str = "urn:flotilla:role:";
/// The SAN URI prefix that binds an agent certificate to one agent id
/// (`flotilla certs issue agent --id NAME`).
const AGENT_ID_URI_PREFIX: &str = "urn:flotilla:agent:";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS configuration failed: {0}")]
    Config(String),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error(
        "the peer's certificate names no Flotilla role (expected a SAN URI {ROLE_URI_PREFIX}<role>)"
    )]
    NoRole,
    #[error("the peer's certificate does not parse: {0}")]
    BadCertificate(String),
    #[error("{path}: {message}")]
    Revocation { path: PathBuf, message: String },
}

/// A certificate chain, its private key, and the CAs that peers must be signed by.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Every CA in `ca.pem`: usually one; two while the cluster's CA is being rotated (a peer
    /// signed by either is accepted).
    pub ca: Vec<CertificateDer<'static>>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl Identity {
    /// Loads `ca.pem`, `<name>.pem` and `<name>-key.pem` from `dir` (the layout written by
    /// `flotilla certs init`).
    pub fn load_from_dir(dir: &Path, name: &str) -> Result<Identity, TlsError> {
        Self::load(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}-key.pem")),
        )
    }

    pub fn load(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
        let ca = read_certificates(ca_path)?;
        if ca.is_empty() {
            return Err(TlsError::Pem {
                path: ca_path.into(),
                message: "holds no certificate".into(),
            });
        }
        let chain = read_certificates(cert_path)?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                path: cert_path.into(),
                message: "holds no certificate".into(),
            });
        }
        let key_bytes = read_file(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|error| TlsError::Pem {
            path: key_path.into(),
            message: format!("no private key: {error}"),
        })?;
        Ok(Identity { chain, key, ca })
    }

    /// The role this identity's own certificate carries.
    pub fn role(&self) -> Result<Role, TlsError> {
        role_of_certificate(&self.chain[0])
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.into(),
        message: error.to_string(),
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.into(),
            message: error.to_string(),
        })
}

/// A certificate authority for one cluster, able to issue role certificates and to revoke
/// them (a CRL, see [`crate::revocation`]).
pub struct ClusterCa {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

/// A freshly issued certificate and key in PEM.
pub struct IssuedPem {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's serial number, as `flotilla certs revoke` takes it.
    pub serial: String,
}

impl ClusterCa {
    /// A new CA with a fresh key.
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate().map_err(generation_error)?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("{cluster_name} CA"), "ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let certificate = params.self_signed(&key).map_err(generation_error)?;
        Ok(ClusterCa {
            cert_der: certificate.der().clone(),
            cert_pem: certificate.pem(),
            issuer: Issuer::new(params, key),
            key_pem,
        })
    }

    /// The CA kept by `flotilla certs init` in `dir`: `ca-key.pem` and, of the certificates
    /// in `ca.pem` (two while the CA is rotated), the one that key belongs to.
    pub fn load_from_dir(dir: &Path) -> Result<ClusterCa, TlsError> {
        let key_path = dir.join("ca-key.pem");
        let key_pem = String::from_utf8(read_file(&key_path)?).map_err(|_| TlsError::Pem {
            path: key_path.clone(),
            message: "is not text".into(),
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|error| TlsError::Pem {
            path: key_path.clone(),
            message: format!("no CA key: {error}"),
        })?;
        let ca_path = dir.join("ca.pem");
        let public_key = rcgen::PublicKeyData::der_bytes(&key).to_vec();
        for certificate in read_certificates(&ca_path)? {
            let (_, parsed) =
                x509_parser::parse_x509_certificate(certificate.as_ref()).map_err(|error| {
                    TlsError::Pem {
                        path: ca_path.clone(),
                        message: error.to_string(),
                    }
                })?;
            if parsed.public_key().subject_public_key.data.as_ref() != public_key.as_slice() {
                continue;
            }
            let issuer =
                Issuer::from_ca_cert_der(&certificate, key).map_err(|error| TlsError::Pem {
                    path: ca_path.clone(),
                    message: error.to_string(),
                })?;
            let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", certificate.to_vec()));
            return Ok(ClusterCa {
                cert_pem,
                cert_der: certificate,
                issuer,
                key_pem,
            });
        }
        Err(TlsError::Pem {
            path: ca_path,
            message: format!("holds no certificate for the key in {}", key_path.display()),
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// Issues a certificate for `role`. Coordinator certificates also get
    /// [`COORDINATOR_SERVER_NAME`] plus `extra_names` (DNS names or IP addresses).
    pub fn issue_pem(
        &self,
        role: Role,
        common_name: &str,
        extra_names: &[String],
    ) -> Result<IssuedPem, TlsError> {
        self.issue_bound_pem(role, common_name, extra_names, None)
    }

    /// Issues a certificate for `role` that also names `agent_id` (agents: the coordinator
    /// refuses it for any other id).
    pub fn issue_bound_pem(
        &self,
        role: Role,
        common_name: &str,
        extra_names: &[String],
        agent_id: Option<&str>,
    ) -> Result<IssuedPem, TlsError> {
        let key = KeyPair::generate().map_err(generation_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, role.name());
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let role_uri = format!("{ROLE_URI_PREFIX}{}", role.name());
        params
            .subject_alt_names
            .push(SanType::URI(role_uri.try_into().map_err(generation_error)?));
        if let Some(id) = agent_id {
            let id_uri = format!("{AGENT_ID_URI_PREFIX}{id}");
            params
                .subject_alt_names
                .push(SanType::URI(id_uri.try_into().map_err(generation_error)?));
        }
        if role == Role::Coordinator {
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let mut names = vec![COORDINATOR_SERVER_NAME.to_string()];
            names.extend(extra_names.iter().cloned());
            for host in names {
                params.subject_alt_names.push(host_name(host)?);
            }
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        self.sign(&params, key)
    }

    /// Signs `params` for `key` with this CA.
    pub(crate) fn sign(
        &self,
        params: &CertificateParams,
        key: KeyPair,
    ) -> Result<IssuedPem, TlsError> {
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generation_error)?;
        Ok(IssuedPem {
            serial: crate::revocation::format_serial(&crate::revocation::serial_of(cert.der())?),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `role` as an in-memory [`Identity`].
    pub fn issue(&self, role: Role, common_name: &str) -> Result<Identity, TlsError> {
        self.identity_from(self.issue_pem(role, common_name, &[])?)
    }

    /// Issues an agent certificate bound to `agent_id` as an in-memory [`Identity`].
    pub fn issue_agent(&self, agent_id: &str) -> Result<Identity, TlsError> {
        self.identity_from(self.issue_bound_pem(Role::Agent, agent_id, &[], Some(agent_id))?)
    }

    fn identity_from(&self, issued: IssuedPem) -> Result<Identity, TlsError> {
        let chain = vec![
            CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
                .map_err(|error| TlsError::Generate(error.to_string()))?,
        ];
        let key = PrivatePkcs8KeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|error| TlsError::Generate(error.to_string()))?;
        Ok(Identity {
            chain,
            key: PrivateKeyDer::Pkcs8(key),
            ca: vec![self.cert_der()],
        })
    }

    /// Writes the CA and one certificate per role into `dir` (the `flotilla certs init` layout).
    pub fn write_cluster_material(
        &self,
        dir: &Path,
        coordinator_names: &[String],
    ) -> Result<Vec<PathBuf>, TlsError> {
        std::fs::create_dir_all(dir).map_err(|error| TlsError::Write {
            path: dir.into(),
            message: error.to_string(),
        })?;
        let mut written = Vec::new();
        write_private(&dir.join("ca.pem"), &self.cert_pem(), false, &mut written)?;
        write_private(&dir.join("ca-key.pem"), &self.key_pem, true, &mut written)?;
        for role in Role::ALL {
            let common_name = format!("flotilla-{}", role.name());
            self.write_role(dir, role, &common_name, coordinator_names, &mut written)?;
        }
        Ok(written)
    }

    /// Writes this CA's certificate into `dir` as `ca.pem` (no CA key), replacing one an
    /// earlier CA left there: for processes started with an in-memory CA's certificates
    /// (`flotilla up --autoscale`'s agent processes; see [`ClusterCa::write_bound_agent`]).
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf, TlsError> {
        std::fs::create_dir_all(dir).map_err(|error| TlsError::Write {
            path: dir.into(),
            message: error.to_string(),
        })?;
        let path = dir.join("ca.pem");
        remove_if_present(&path)?;
        write_private(&path, &self.cert_pem(), false, &mut Vec::new())?;
        Ok(path)
    }

    /// Issues an agent certificate bound to `agent_id` and writes `agent-ID.pem` and
    /// `agent-ID-key.pem` into `dir`, replacing earlier ones: for a launcher that holds the CA
    /// and starts agents (`flotilla up --autoscale`), so each agent process gets a certificate
    /// of its own, issued when it is started. Returns the name to pass as `--identity`.
    pub fn write_bound_agent(&self, dir: &Path, agent_id: &str) -> Result<String, TlsError> {
        let stem = format!("agent-{agent_id}");
        let issued = self.issue_bound_pem(Role::Agent, agent_id, &[], Some(agent_id))?;
        issued.write(dir, &stem, true, &mut Vec::new())?;
        Ok(stem)
    }

    /// Issues a certificate for `role` and writes `ROLE.pem` and `ROLE-key.pem` into `dir`.
    fn write_role(
        &self,
        dir: &Path,
        role: Role,
        common_name: &str,
        extra_names: &[String],
        written: &mut Vec<PathBuf>,
    ) -> Result<(), TlsError> {
        let issued = self.issue_pem(role, common_name, extra_names)?;
        issued.write(dir, role.name(), false, written)
    }
}

impl IssuedPem {
    /// Writes `STEM.pem` (0644) and `STEM-key.pem` (0600) into `dir`, appending their paths
    /// to `written`. An existing file is an error, unless `replace` (then it is replaced).
    pub fn write(
        &self,
        dir: &Path,
        stem: &str,
        replace: bool,
        written: &mut Vec<PathBuf>,
    ) -> Result<(), TlsError> {
        for (path, contents, secret) in [
            (dir.join(format!("{stem}.pem")), &self.cert_pem, false),
            (dir.join(format!("{stem}-key.pem")), &self.key_pem, true),
        ] {
            if replace {
                remove_if_present(&path)?;
            }
            write_private(&path, contents, secret, written)?;
        }
        Ok(())
    }
}

pub(crate) fn remove_if_present(path: &Path) -> Result<(), TlsError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(TlsError::Write {
            path: path.into(),
            message: error.to_string(),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn write_private(
    path: &Path,
    contents: &str,
    secret: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| TlsError::Write {
            path: path.into(),
            message: error.to_string(),
        })?;
    file.write_all(contents.as_bytes())
        .map_err(|error| TlsError::Write {
            path: path.into(),
            message: error.to_string(),
        })?;
    written.push(path.into());
    Ok(())
}

pub(crate) fn name(common_name: &str, unit: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Flotilla");
    name.push(DnType::OrganizationalUnitName, unit);
    name.push(DnType::CommonName, common_name);
    name
}

/// `localhost`, `127.0.0.1`, then `extra` (without repeats): the host names a server
/// certificate (a coordinator's, an etcd member's) carries so that loopback always works.
pub fn with_loopback(extra: &[String]) -> Vec<String> {
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for host in extra {
        if !hosts.contains(host) {
            hosts.push(host.clone());
        }
    }
    hosts
}

/// A subject alternative name for a host: an IP address, or else a DNS name.
pub(crate) fn host_name(host: String) -> Result<SanType, TlsError> {
    Ok(match host.parse::<std::net::IpAddr>() {
        Ok(address) => SanType::IpAddress(address),
        Err(_) => SanType::DnsName(host.try_into().map_err(generation_error)?),
    })
}

pub(crate) fn generation_error(error: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(error.to_string())
}

/// The role a certificate carries in its `urn:flotilla:role:` SAN URI.
pub fn role_of_certificate(certificate: &CertificateDer<'_>) -> Result<Role, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|error| TlsError::BadCertificate(error.to_string()))?;
    let Ok(Some(names)) = parsed.subject_alternative_name() else {
        return Err(TlsError::NoRole);
    };
    names
        .value
        .general_names
        .iter()
        .find_map(|general_name| match general_name {
            x509_parser::extensions::GeneralName::URI(uri) => {
                uri.strip_prefix(ROLE_URI_PREFIX).and_then(Role::from_name)
            }
            _ => None,
        })
        .ok_or(TlsError::NoRole)
}

/// The agent id an agent certificate is bound to (its `urn:flotilla:agent:` SAN URI), if any.
pub fn agent_id_of_certificate(
    certificate: &CertificateDer<'_>,
) -> Result<Option<String>, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|error| TlsError::BadCertificate(error.to_string()))?;
    let Ok(Some(names)) = parsed.subject_alternative_name() else {
        return Ok(None);
    };
    Ok(names
        .value
        .general_names
        .iter()
        .find_map(|general_name| match general_name {
            x509_parser::extensions::GeneralName::URI(uri) => {
                uri.strip_prefix(AGENT_ID_URI_PREFIX).map(str::to_string)
            }
            _ => None,
        }))
}

/// The verified certificate the peer on a QUIC connection presented.
pub fn peer_certificate(
    connection: &quinn::Connection,
) -> Result<CertificateDer<'static>, TlsError> {
    let identity = connection
        .peer_identity()
        .ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    chain.first().cloned().ok_or(TlsError::NoPeerCertificate)
}

/// The verified role of the peer on a QUIC connection.
pub fn peer_role(connection: &quinn::Connection) -> Result<Role, TlsError> {
    role_of_certificate(&peer_certificate(connection)?)
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn roots(identity: &Identity) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for (index, ca) in identity.ca.iter().enumerate() {
        roots.add(ca.clone()).map_err(|error| {
            TlsError::Config(format!("CA certificate {} of ca.pem: {error}", index + 1))
        })?;
    }
    Ok(Arc::new(roots))
}

/// Connection liveness: keep-alives well inside the idle timeout, so an idle but healthy
/// connection stays up while a vanished peer is noticed within the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections to a coordinator (agents, routers, clients) probe it more often and give up
/// sooner: a leader that died or froze is noticed within `CLIENT_IDLE_TIMEOUT` by every
/// peer, a request or watch included, and they look for the next leader. (QUIC uses the
/// smaller of the two sides' idle timeouts, so this one governs these connections.)
const CLIENT_KEEP_ALIVE: Duration = Duration::from_millis(400);
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

fn transport(keep_alive: Duration, idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    transport.max_idle_timeout(Some(
        idle.try_into()
            .expect("a few seconds is a valid QUIC idle timeout"),
    ));
    transport.max_concurrent_bidi_streams(1024u32.into());
    Arc::new(transport)
}

/// A QUIC server configuration that demands a client certificate signed by the cluster CA
/// and not revoked by `revoked` (certificates of a CA without a CRL there are accepted: while
/// the CA is rotated, only one of the two may have one).
pub fn server_config(
    identity: &Identity,
    revoked: &RevocationList,
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = tls_server(identity, revoked, ALPN)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(KEEP_ALIVE, IDLE_TIMEOUT));
    Ok(config)
}

/// A TLS 1.3 server configuration with `identity`'s certificate that demands a client
/// certificate signed by the cluster CA and not revoked by `revoked` (certificates of a CA
/// without a CRL there are accepted: while the CA is rotated, only one of the two may have
/// one), speaking `alpn`. The QUIC endpoint and agents' serving endpoints use it.
pub(crate) fn tls_server(
    identity: &Identity,
    revoked: &RevocationList,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider())
            .with_crls(revoked.crls())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|error| TlsError::Config(error.to_string()))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// A QUIC client configuration that presents `identity` and trusts only the cluster CA.
pub fn client_config(identity: &Identity) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_root_certificates(roots(identity)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|error| TlsError::Config(error.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(CLIENT_KEEP_ALIVE, CLIENT_IDLE_TIMEOUT));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_role() {
        let ca = ClusterCa::generate("test").expect("ca");
        for role in Role::ALL {
            let identity = ca.issue(role, "x").expect("issue");
            assert_eq!(identity.role().expect("role"), role);
        }
        assert!(matches!(
            role_of_certificate(&ca.cert_der()),
            Err(TlsError::NoRole)
        ));
    }

    #[test]
    fn material_written_to_disk_loads_back() {
        let dir = std::env::temp_dir().join(format!("flotilla-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = ClusterCa::generate("test").expect("ca");
        ca.write_cluster_material(&dir, &["127.0.0.1".into()])
            .expect("write");
        let agent = Identity::load_from_dir(&dir, "agent").expect("load");
        assert_eq!(agent.role().expect("role"), Role::Agent);
        assert!(
            server_config(
                &Identity::load_from_dir(&dir, "coordinator").expect("load"),
                &RevocationList::default()
            )
            .is_ok()
        );
        assert!(client_config(&agent).is_ok());
        let missing = Identity::load_from_dir(&dir, "nobody").expect_err("missing");
        assert!(missing.to_string().contains("nobody.pem"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bound_agent_identity_written_to_disk_replaces_an_earlier_cas() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("flotilla-tls-one-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = ClusterCa::generate("first").expect("ca");
        first.write_ca(&dir).expect("write");
        first.write_bound_agent(&dir, "a").expect("write");
        let second = ClusterCa::generate("second").expect("ca");
        second.write_ca(&dir).expect("write over the first");
        let stem = second
            .write_bound_agent(&dir, "a")
            .expect("write over the first");
        assert_eq!(stem, "agent-a");
        assert!(!dir.join("ca-key.pem").exists());
        let agent = Identity::load_from_dir(&dir, &stem).expect("load");
        assert_eq!(agent.role().expect("role"), Role::Agent);
        assert_eq!(
            agent_id_of_certificate(&agent.chain[0]).expect("parse"),
            Some("a".to_string())
        );
        assert_eq!(agent.ca, vec![second.cert_der()]);
        let mode = std::fs::metadata(dir.join("agent-a-key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_ca_written_to_disk_loads_back_and_issues() {
        let dir = std::env::temp_dir().join(format!("flotilla-tls-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = ClusterCa::generate("test").expect("ca");
        ca.write_cluster_material(&dir, &[]).expect("write");
        let loaded = ClusterCa::load_from_dir(&dir).expect("load");
        assert_eq!(loaded.cert_der(), ca.cert_der());
        let agent = loaded.issue_agent("gpu-1").expect("issue");
        assert_eq!(
            agent_id_of_certificate(&agent.chain[0]).expect("parse"),
            Some("gpu-1".to_string())
        );
        // Certificates issued without an id name none.
        let plain = ca.issue(Role::Client, "c").expect("issue");
        assert_eq!(
            agent_id_of_certificate(&plain.chain[0]).expect("parse"),
            None
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
