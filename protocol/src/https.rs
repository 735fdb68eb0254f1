//! HTTPS between routers and agents' serving endpoints, with cluster certificates on both
//! sides (mutual TLS).
//!
//! An agent serves predictions with its own agent certificate and takes requests only from
//! peers whose certificate (signed by the cluster CA, not revoked) carries the router or
//! admin role ([`may_call_serving`]). A router verifies that the endpoint's certificate is
//! signed by the cluster CA and carries the agent role. As on the QUIC side, the role is the
//! identity that matters, not a host name: an agent's certificate names no host, and agents
//! come and go with autoscaling. Agent certificates are client certificates (their extended
//! key usage is client authentication), so the router checks the chain for that usage.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::messages::Role;
use crate::revocation::RevocationList;
use crate::tls::{Identity, TlsError, provider, role_of_certificate, tls_server};

/// The roles whose certificates an agent's serving endpoint answers.
pub fn may_call_serving(role: Role) -> bool {
    matches!(role, Role::Router | Role::Admin)
}

/// The TLS configuration of an agent's serving endpoint: its own certificate, and a client
/// certificate signed by the cluster CA and not revoked by `revoked` required of every peer.
/// The role is checked after the handshake ([`may_call_serving`]).
pub fn serving_server_config(
    identity: &Identity,
    revoked: &RevocationList,
) -> Result<rustls::ServerConfig, TlsError> {
    tls_server(identity, revoked, HTTP1)
}

/// The ALPN protocol of serving endpoints.
const HTTP1: &[u8] = b"http/1.1";

/// The TLS configuration a router calls agents' serving endpoints with: it presents
/// `identity` and accepts only agent certificates of the cluster CA.
pub fn serving_client_config(identity: &Identity) -> Result<rustls::ClientConfig, TlsError> {
    let anchors = identity
        .ca
        .iter()
        .enumerate()
        .map(|(index, ca)| {
            webpki::anchor_from_trusted_cert(ca)
                .map(|anchor| anchor.to_owned())
                .map_err(|error| {
                    TlsError::Config(format!("CA certificate {} of ca.pem: {error}", index + 1))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let verifier = Arc::new(AgentCertificate {
        anchors,
        provider: provider(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| TlsError::Config(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|error| TlsError::Config(error.to_string()))?;
    tls.alpn_protocols = vec![HTTP1.to_vec()];
    Ok(tls)
}

/// Accepts a serving endpoint's certificate when it chains to the cluster CA (for client
/// authentication, the usage agent certificates carry) and has the agent role; the host
/// name is not checked (see the module documentation).
#[derive(Debug)]
struct AgentCertificate {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn invalid(message: String) -> rustls::Error {
    rustls::Error::General(message)
}

impl ServerCertVerifier for AgentCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|error| invalid(format!("the serving endpoint's certificate: {error}")))?;
        certificate
            .verify_for_usage(
                self.provider.signature_verification_algorithms.all,
                &self.anchors,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|error| {
                invalid(format!(
                    "the serving endpoint's certificate is not one of this cluster's: {error}"
                ))
            })?;
        match role_of_certificate(end_entity) {
            Ok(Role::Agent) => Ok(ServerCertVerified::assertion()),
            Ok(role) => Err(invalid(format!(
                "the serving endpoint's certificate has the {} role, not agent",
                role.name()
            ))),
            Err(error) => Err(invalid(format!(
                "the serving endpoint's certificate: {error}"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ClusterCa;

    /// Runs a TLS handshake in memory; the first error either side saw.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<Option<Vec<CertificateDer<'static>>>, rustls::Error> {
        let name = ServerName::try_from("agent.flotilla").expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).expect("write");
            }
            server.read_tls(&mut wire.as_slice()).expect("read");
            server.process_new_packets()?;
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).expect("write");
            }
            client.read_tls(&mut wire.as_slice()).expect("read");
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server.peer_certificates().map(<[_]>::to_vec));
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn routers_reach_agents_and_nothing_else_passes_for_either() {
        let ca = ClusterCa::generate("test").expect("ca");
        let agent = ca.issue_agent("gpu-1").expect("agent");
        let router = ca.issue(Role::Router, "router").expect("router");
        let revoked = RevocationList::default();

        // A router reaches an agent, and the agent sees the router's role.
        let peer = handshake(
            serving_client_config(&router).expect("client"),
            serving_server_config(&agent, &revoked).expect("server"),
        )
        .expect("a router reaches an agent")
        .expect("the router's certificate");
        assert_eq!(role_of_certificate(&peer[0]).expect("role"), Role::Router);
        assert!(may_call_serving(Role::Router) && may_call_serving(Role::Admin));
        assert!(!may_call_serving(Role::Client) && !may_call_serving(Role::Agent));

        // A router refuses an endpoint that is not an agent of its cluster: a coordinator's
        // certificate, or another cluster's agent.
        let coordinator = ca.issue(Role::Coordinator, "c").expect("coordinator");
        let error = handshake(
            serving_client_config(&router).expect("client"),
            serving_server_config(&coordinator, &revoked).expect("server"),
        )
        .expect_err("a coordinator posing as a serving agent");
        assert!(error.to_string().contains("not agent"), "{error}");
        let other = ClusterCa::generate("other").expect("ca");
        let stranger = other.issue_agent("gpu-1").expect("agent");
        // The stranger would refuse our router too; a server that asks for no certificate
        // shows the router's own check.
        let mut stranger_server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(stranger.chain.clone(), stranger.key.clone_key())
            .expect("server");
        stranger_server.alpn_protocols = vec![HTTP1.to_vec()];
        let error = handshake(
            serving_client_config(&router).expect("client"),
            stranger_server,
        )
        .expect_err("another cluster's agent");
        assert!(
            error.to_string().contains("not one of this cluster's"),
            "{error}"
        );

        // (An agent refusing other clusters' and other roles' certificates is tried with an
        // outside client, curl, in the CLI's rollout test.)
    }
}
