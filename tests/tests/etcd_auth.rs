//! etcd secured as the operations runbook says (TLS for clients and peers,
//! `--client-cert-auth`, users and roles from `flotilla certs etcd-auth`), attacked with
//! each party's credentials on a real etcd: an agent's certificate may take checkpoint
//! leases and nothing else, a coordinator's stays inside the cluster prefix, and a client
//! without an etcd certificate gets nowhere.

use std::time::Duration;

use flotilla_etcd::EtcdConfig;
use flotilla_etcd::etcd_client::{
    self, Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp,
};
use flotilla_harness::{Etcd, flotilla_bin};
use flotilla_protocol::etcd_pki::EtcdCert;
use flotilla_protocol::messages::Role;
use flotilla_protocol::tls::ClusterCa;

fn denied(what: &str, result: Result<impl std::fmt::Debug, etcd_client::Error>) {
    match result {
        Err(error) => assert!(
            error.to_string().contains("permission denied"),
            "{what}: refused, but not for want of permission: {error}"
        ),
        Ok(answer) => panic!("{what}: allowed ({answer:?})"),
    }
}

async fn connect(config: &EtcdConfig) -> Client {
    flotilla_etcd::connect(config)
        .await
        .expect("connect to etcd")
}

/// A client with only etcd's CA (no certificate of its own), or with `identity`.
async fn try_get(etcd: &Etcd, identity: Option<(&[u8], &[u8])>) -> Result<(), String> {
    let ca = std::fs::read(etcd.pki.join("ca.pem")).expect("ca.pem");
    let mut tls =
        etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
    }
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(2))
        .with_tls(tls);
    let mut client = Client::connect(etcd.endpoints(), Some(options))
        .await
        .map_err(|error| error.to_string())?;
    client
        .get("/flotilla/v1/state/", Some(GetOptions::new().with_prefix()))
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[test]
fn each_etcd_certificate_does_only_what_its_role_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path(), 1);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let coordinator_config = etcd.config(EtcdCert::Coordinator);
        let root = coordinator_config.root();
        let state_key = format!("{root}/state/sweeps/0000000001");
        let election_key = format!("{}/694d7a1b2c3d", coordinator_config.election_name());

        // The coordinator's certificate: the whole cluster prefix, nothing outside it, no
        // say over users and roles.
        let mut coordinator = connect(&coordinator_config).await;
        coordinator
            .put(state_key.clone(), "coordinator state", None)
            .await
            .expect("a coordinator writes cluster state");
        coordinator
            .put(election_key.clone(), "127.0.0.1:7070", None)
            .await
            .expect("a coordinator campaigns");
        denied(
            "a coordinator writing outside the cluster prefix",
            coordinator
                .put("/another-cluster/v1/state/x", "x", None)
                .await,
        );
        denied(
            "a coordinator adding an etcd user",
            coordinator.user_add("intruder", "password", None).await,
        );
        denied(
            "a coordinator turning etcd authentication off",
            coordinator.auth_disable().await,
        );

        // The agent's certificate: checkpoint leases, and nothing of the coordinators'.
        let agent_config = etcd.config(EtcdCert::Agent);
        let mut agent = connect(&agent_config).await;
        let owner = agent_config.checkpoint_owner_key("s1-t0");
        let lease = agent
            .lease_grant(5, None)
            .await
            .expect("an agent takes a lease");
        agent
            .put(
                owner.clone(),
                "s1-t0-a0",
                Some(etcd_client::PutOptions::new().with_lease(lease.id())),
            )
            .await
            .expect("an agent holds a checkpoint owner key");
        agent
            .put(agent_config.checkpoint_latest_key("s1-t0"), "{}", None)
            .await
            .expect("an agent moves a checkpoint pointer");
        denied(
            "an agent overwriting coordinator state",
            agent.put(state_key.clone(), "forged", None).await,
        );
        denied(
            "an agent deleting coordinator state",
            agent.delete(state_key.clone(), None).await,
        );
        denied(
            "an agent reading coordinator state",
            agent.get(state_key.clone(), None).await,
        );
        denied(
            "an agent planting an election key",
            agent.put(election_key.clone(), "10.6.6.6:7070", None).await,
        );
        denied(
            "an agent deleting the leader's election key",
            agent
                .delete(
                    coordinator_config.election_name(),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await,
        );
        let forged = Txn::new()
            .when(vec![Compare::create_revision(
                owner.clone(),
                CompareOp::Greater,
                0,
            )])
            .and_then(vec![TxnOp::put(state_key.clone(), "forged", None)]);
        denied(
            "an agent writing coordinator state inside a transaction on its own key",
            agent.txn(forged).await,
        );
        denied(
            "an agent granting itself a role",
            agent
                .user_grant_role(flotilla_protocol::etcd_pki::AGENT, "flotilla-coordinator")
                .await,
        );
        let state = coordinator
            .get(state_key.clone(), None)
            .await
            .expect("read");
        assert_eq!(
            state.kvs().first().map(|kv| kv.value().to_vec()),
            Some(b"coordinator state".to_vec()),
            "coordinator state is untouched"
        );

        // No etcd certificate, or a certificate of the cluster CA (a QUIC agent's): refused
        // at the TLS handshake.
        let refused = try_get(&etcd, None).await;
        assert!(refused.is_err(), "a client without a certificate read etcd");
        let cluster_ca = ClusterCa::generate("flotilla").expect("cluster CA");
        let quic_agent = cluster_ca
            .issue_pem(Role::Agent, "flotilla-coordinator", &[])
            .expect("issue");
        let refused = try_get(
            &etcd,
            Some((
                quic_agent.cert_pem.as_bytes(),
                quic_agent.key_pem.as_bytes(),
            )),
        )
        .await;
        assert!(
            refused.is_err(),
            "a cluster-CA certificate named flotilla-coordinator read etcd"
        );
        let root_cert = std::fs::read(etcd.pki.join("root.pem")).expect("root.pem");
        let root_key = std::fs::read(etcd.pki.join("root-key.pem")).expect("root-key.pem");
        try_get(&etcd, Some((&root_cert, &root_key)))
            .await
            .expect("the same client with the root certificate reads");

        // Plain http to a TLS member, and TLS files with http:// endpoints: named errors.
        let plain = EtcdConfig::new(
            etcd.endpoints()
                .iter()
                .map(|endpoint| endpoint.replace("https://", "http://"))
                .collect(),
        );
        let mut plain_config = plain.clone();
        plain_config.tls = agent_config.tls.clone();
        let error = flotilla_etcd::connect(&plain_config)
            .await
            .err()
            .expect("TLS files with http:// endpoints are refused");
        assert!(
            error.to_string().contains("not every endpoint is https://"),
            "{error}"
        );
        let mut unconfigured = agent_config.clone();
        unconfigured.tls = None;
        let error = flotilla_etcd::connect(&unconfigured)
            .await
            .err()
            .expect("https:// without a certificate is refused");
        assert!(
            error
                .to_string()
                .contains("need a CA, a client certificate and its key"),
            "{error}"
        );
    });

    // Setting etcd up again is harmless and says what exists.
    let output = std::process::Command::new(flotilla_bin())
        .args(["certs", "etcd-auth", "--etcd", &etcd.endpoints().join(",")])
        .arg("--certs")
        .arg(dir.path().join("certs"))
        .output()
        .expect("run certs etcd-auth");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("user flotilla-agent exists"), "{stdout}");
    assert!(stdout.contains("authentication enabled"), "{stdout}");

    // More etcd certificates from the same CA: a member naming another host, and a second
    // agent certificate (the same etcd user), which etcd accepts as that user.
    let certs = dir.path().join("certs");
    let output = std::process::Command::new(flotilla_bin())
        .args(["certs", "issue", "etcd-member", "--host", "10.0.2.1"])
        .args(["--name", "member-etcd1", "--certs"])
        .arg(&certs)
        .output()
        .expect("issue an etcd member certificate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(certs.join("etcd/member-etcd1-key.pem").exists());
    let output = std::process::Command::new(flotilla_bin())
        .args(["certs", "issue", "etcd-agent", "--certs"])
        .arg(&certs)
        .output()
        .expect("issue an etcd agent certificate");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(stdout.contains("etcd user flotilla-agent"), "{stdout}");
    let mut second_agent = etcd.config(EtcdCert::Agent);
    second_agent.tls = Some(flotilla_etcd::EtcdTls::in_dir(&etcd.pki, "agent-1"));
    runtime.block_on(async {
        let mut agent = connect(&second_agent).await;
        agent
            .put(second_agent.checkpoint_owner_key("s1-t9"), "x", None)
            .await
            .expect("the second agent certificate takes checkpoint leases");
        denied(
            "the second agent certificate writing coordinator state",
            agent
                .put("/flotilla/v1/state/sweeps/x", "forged", None)
                .await,
        );
    });
    let output = std::process::Command::new(flotilla_bin())
        .args(["certs", "issue", "etcd-nobody", "--certs"])
        .arg(&certs)
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("etcd-member, etcd-coordinator"));

    // A coordinator holding another cluster's etcd certificates (another etcd CA) fails
    // to start, naming etcd and the files it used.
    let other = dir.path().join("other-cluster");
    let output = std::process::Command::new(flotilla_bin())
        .args(["certs", "init", "--out"])
        .arg(&other)
        .output()
        .expect("run certs init");
    assert!(output.status.success());
    // A coordinator started with `certs` against this etcd: it must fail; its stderr.
    let refused_start = |certs: &std::path::Path| {
        let output = std::process::Command::new(flotilla_bin())
            .args(["coordinator", "--listen", "127.0.0.1:0"])
            .args(["--etcd", &etcd.endpoints().join(",")])
            .arg("--certs")
            .arg(certs)
            .output()
            .expect("run a coordinator");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "{stderr}");
        stderr
    };
    let stderr = refused_start(&other);
    let used = other.join("etcd").join("coordinator.pem");
    assert!(
        stderr.contains("refused access") && stderr.contains(&used.display().to_string()),
        "{stderr}"
    );

    // One whose etcd certificate is missing names the file.
    std::fs::remove_file(&used).expect("remove");
    let stderr = refused_start(&other);
    assert!(
        stderr.contains(&format!("cannot read {}", used.display())),
        "{stderr}"
    );
}
