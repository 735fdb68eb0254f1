//! A real etcd of one or three members on loopback ports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flotilla_etcd::EtcdConfig;

use crate::process::{Process, flotilla_bin, free_tcp_port, wait_until};

/// One etcd member.
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    pub client_port: u16,
    extra_ips: Vec<String>,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

/// A real etcd, secured as the operations runbook says: TLS for clients and peers,
/// `--client-cert-auth`, and authentication on with the users and roles of
/// `flotilla certs etcd-auth` (coordinators: the cluster prefix; agents: checkpoint leases).
/// One member, or a cluster of three on loopback ports.
pub struct Etcd {
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
    /// The etcd certificates (`CERTS/etcd`).
    pub pki: PathBuf,
    /// etcd's `--election-timeout` when not its default (1 s). etcd grants no lease shorter
    /// than 1.5 election timeouts, rounded up to whole seconds: 2 s with the default.
    pub election_timeout: Option<Duration>,
}

impl Etcd {
    pub fn start(dir: &Path, size: usize) -> Etcd {
        Etcd::start_listening(dir, size, &[])
    }

    /// Members that also serve clients on `extra_ips` (host sides of namespaces), each on
    /// its client port. The certificates are `dir/certs/etcd` (made when missing, naming
    /// `extra_ips`).
    pub fn start_listening(dir: &Path, size: usize, extra_ips: &[String]) -> Etcd {
        Etcd::start_with(dir, size, extra_ips, None)
    }

    /// Like [`Etcd::start_listening`], with `--election-timeout` (and a heartbeat a tenth
    /// of it) when given.
    pub fn start_with(
        dir: &Path,
        size: usize,
        extra_ips: &[String],
        election_timeout: Option<Duration>,
    ) -> Etcd {
        let pki = dir.join("certs").join(flotilla_protocol::etcd_pki::DIR);
        if !pki.join("ca.pem").exists() {
            flotilla_protocol::etcd_pki::write_etcd_material(&pki, extra_ips)
                .expect("etcd certificates");
        }
        let members: Vec<EtcdMember> = (0..size)
            .map(|index| {
                let name = format!("etcd{index}");
                let client_port = free_tcp_port();
                EtcdMember {
                    client_port,
                    extra_ips: extra_ips.to_vec(),
                    client_url: format!("https://127.0.0.1:{client_port}"),
                    peer_url: format!("https://127.0.0.1:{}", free_tcp_port()),
                    data_dir: dir.join(format!("{name}.data")),
                    log: dir.join(format!("{name}.log")),
                    name,
                    process: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial_cluster,
            pki,
            election_timeout,
        };
        for index in 0..size {
            etcd.start_member(index);
        }
        etcd.wait_healthy(Duration::from_secs(30));
        let certs = etcd.pki.parent().expect("CERTS").to_path_buf();
        let output = Command::new(flotilla_bin())
            .args(["certs", "etcd-auth", "--etcd", &etcd.endpoints().join(",")])
            .arg("--certs")
            .arg(&certs)
            .output()
            .expect("run flotilla certs etcd-auth");
        assert!(
            output.status.success(),
            "certs etcd-auth: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        etcd
    }

    /// Starts (or restarts, on its data directory) member `index`.
    pub fn start_member(&mut self, index: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let file = |name: &str| self.pki.join(name);
        let (ca, cert, key) = (file("ca.pem"), file("member.pem"), file("member-key.pem"));
        let member = &mut self.members[index];
        let mut command = Command::new("etcd");
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(
                std::iter::once(member.client_url.clone())
                    .chain(
                        member
                            .extra_ips
                            .iter()
                            .map(|ip| format!("https://{ip}:{}", member.client_port)),
                    )
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("--advertise-client-urls")
            .arg(&member.client_url)
            .arg("--listen-peer-urls")
            .arg(&member.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&member.peer_url)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("flotilla-test")
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&ca)
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .arg("--peer-client-cert-auth")
            .arg("--peer-trusted-ca-file")
            .arg(&ca)
            .arg("--peer-cert-file")
            .arg(&cert)
            .arg("--peer-key-file")
            .arg(&key)
            .arg("--logger")
            .arg("zap");
        if let Some(election) = self.election_timeout {
            command
                .arg("--election-timeout")
                .arg(election.as_millis().to_string())
                .arg("--heartbeat-interval")
                .arg((election.as_millis() / 10).max(10).to_string());
        }
        member.process = Some(Process::spawn(&mut command, &member.log));
    }

    pub fn kill_member(&mut self, index: usize) {
        if let Some(mut process) = self.members[index].process.take() {
            process.kill();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| member.client_url.clone())
            .collect()
    }

    /// How a process holding `user`'s etcd certificate connects (root, coordinator, agent).
    pub fn config(&self, user: flotilla_protocol::etcd_pki::EtcdCert) -> EtcdConfig {
        let mut config = EtcdConfig::new(self.endpoints());
        config.tls = Some(flotilla_etcd::EtcdTls::in_dir(&self.pki, user.name()));
        config
    }

    /// `etcdctl` with the root certificate.
    pub fn etcdctl(&self) -> Command {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoints().join(","))
            .arg("--cacert")
            .arg(self.pki.join("ca.pem"))
            .arg("--cert")
            .arg(self.pki.join("root.pem"))
            .arg("--key")
            .arg(self.pki.join("root-key.pem"));
        command
    }

    /// Waits until etcd answers a linearizable read (a quorum is up).
    pub fn wait_healthy(&self, limit: Duration) {
        wait_until("etcd to serve linearizable reads", limit, || {
            self.etcdctl()
                .args(["--command-timeout=1s", "get", "health-probe"])
                .output()
                .is_ok_and(|output| output.status.success())
        });
    }
}
