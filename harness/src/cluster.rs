//! A cluster of real `flotilla` processes: coordinators (one with its state in a file, or
//! several campaigning in a real etcd), agents and routers talking QUIC with mutual TLS on
//! loopback, and the CLI to drive them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::etcd::Etcd;
use crate::netns::Netns;
use crate::process::{Process, flotilla_bin, free_tcp_port, free_udp_port, wait_until};

/// Certificates, sweep files, trial scripts and logs in one temporary directory, and the
/// processes, every one killed when the cluster is dropped (also when a test fails).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Where the coordinators keep their state: etcd, or (`None`) the one coordinator's state
    /// file (`state/state.log`).
    etcd: Option<Etcd>,
    /// The coordinators' leases (with etcd) and the agents' checkpoint leases.
    pub lease_ttl: Duration,
    pub agent_timeout: Duration,
    /// Extra arguments every coordinator starts with.
    pub coordinator_args: Vec<String>,
    /// Environment variables every coordinator starts with.
    pub coordinator_env: Vec<(String, String)>,
    pub coordinators: Vec<Coordinator>,
    pub agents: Vec<Agent>,
    /// The artifact store agents start with (`--artifacts`): with etcd a folder of the
    /// harness unless changed (e.g. to an `s3://` location); none for a standalone cluster,
    /// whose tests name it per agent.
    pub artifacts: Option<String>,
    /// Environment variables every agent starts with (S3 settings, …).
    pub agent_env: Vec<(String, String)>,
    /// The certificate the CLI runs with (`--identity`); `None`: each command's default.
    pub cli_identity: Option<String>,
}

pub struct Coordinator {
    /// Its `--name`, and its log: `<name>.log`.
    pub name: String,
    pub address: String,
    /// Its `/metrics` endpoint (`host:port`, TCP).
    pub metrics: String,
    pub process: Option<Process>,
    /// The namespace it runs in, for partitions.
    pub netns: Option<Netns>,
}

pub struct Agent {
    pub name: String,
    pub slots: u32,
    /// Its `/metrics` endpoint (`host:port`, TCP).
    pub metrics: String,
    pub process: Option<Process>,
}

impl Agent {
    /// The port of its `/metrics` endpoint.
    pub fn metrics_port(&self) -> u16 {
        self.metrics
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("a metrics port")
    }

    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

/// `flotilla certs init` into `<dir>/certs`, with `extra` arguments.
fn init_certs(dir: &Path, extra: &[String]) {
    let output = Command::new(flotilla_bin())
        .args(["certs", "init", "--out"])
        .arg(dir.join("certs"))
        .args(extra)
        .output()
        .expect("run certs init");
    assert!(
        output.status.success(),
        "certs init: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Cluster {
    /// Certificates and one coordinator (not started) that keeps its state in a file: the
    /// smallest real cluster.
    pub fn standalone() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        init_certs(dir.path(), &[]);
        let coordinator = Coordinator {
            name: "coordinator".to_string(),
            address: format!("127.0.0.1:{}", free_udp_port()),
            metrics: format!("127.0.0.1:{}", free_tcp_port()),
            process: None,
            netns: None,
        };
        Cluster {
            etcd: None,
            lease_ttl: Duration::from_secs(10),
            agent_timeout: Duration::from_secs(3),
            coordinator_args: Vec::new(),
            coordinator_env: Vec::new(),
            coordinators: vec![coordinator],
            agents: Vec::new(),
            artifacts: None,
            agent_env: Vec::new(),
            cli_identity: None,
            dir,
        }
    }

    /// Certificates, an etcd of `etcd_members`, and `coordinators` replicas (not started).
    pub fn new(etcd_members: usize, coordinators: usize, lease_ttl: Duration) -> Cluster {
        Cluster::with_namespaces(etcd_members, coordinators, lease_ttl, Vec::new())
    }

    /// Like [`Cluster::new`], with coordinator `i` running in `namespaces[i]` (when given),
    /// reachable from the host at the namespace's address and reaching etcd through the host
    /// side of its link.
    pub fn with_namespaces(
        etcd_members: usize,
        coordinators: usize,
        lease_ttl: Duration,
        namespaces: Vec<Netns>,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let host_ips: Vec<String> = namespaces.iter().map(|ns| ns.host_ip.clone()).collect();
        let etcd_hosts: Vec<String> = host_ips
            .iter()
            .flat_map(|ip| ["--etcd-host".to_string(), ip.clone()])
            .collect();
        init_certs(dir.path(), &etcd_hosts);
        // A lease under 2 s needs etcd's election timeout shortened (see `Etcd`).
        let election = (lease_ttl < Duration::from_secs(2)).then(|| Duration::from_millis(500));
        let etcd = Etcd::start_with(dir.path(), etcd_members, &host_ips, election);
        let mut namespaces = namespaces.into_iter();
        let coordinators = (0..coordinators)
            .map(|index| {
                let netns = namespaces.next();
                let ip = netns
                    .as_ref()
                    .map_or("127.0.0.1".to_string(), |ns| ns.ns_ip.clone());
                Coordinator {
                    name: format!("c{index}"),
                    address: format!("{ip}:{}", free_udp_port()),
                    metrics: format!("{ip}:{}", free_tcp_port()),
                    process: None,
                    netns,
                }
            })
            .collect();
        Cluster {
            etcd: Some(etcd),
            lease_ttl,
            agent_timeout: Duration::from_secs(3),
            coordinator_args: Vec::new(),
            coordinator_env: Vec::new(),
            coordinators,
            agents: Vec::new(),
            artifacts: Some(dir.path().join("artifacts").display().to_string()),
            agent_env: Vec::new(),
            cli_identity: Some("admin".to_string()),
            dir,
        }
    }

    /// The cluster's etcd (a cluster made by [`Cluster::new`]).
    pub fn etcd(&self) -> &Etcd {
        self.etcd.as_ref().expect("a cluster with etcd")
    }

    pub fn etcd_mut(&mut self) -> &mut Etcd {
        self.etcd.as_mut().expect("a cluster with etcd")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What a process wrote to `<name>.log` so far (empty when nothing).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// What the agent `name` logged so far.
    pub fn agent_log(&self, name: &str) -> String {
        self.log(&format!("agent-{name}"))
    }

    /// Every coordinator's address, comma-separated, as agents and clients take them.
    pub fn addresses(&self) -> String {
        self.coordinators
            .iter()
            .map(|coordinator| coordinator.address.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn start_coordinator(&mut self, index: usize) {
        self.start_coordinator_with(index, &[], &[]);
    }

    /// Coordinator `index` with `extra` arguments and `env` in its environment, besides the
    /// cluster's `coordinator_args` and `coordinator_env`.
    pub fn start_coordinator_with(&mut self, index: usize, extra: &[&str], env: &[(&str, &str)]) {
        let agent_timeout = format!("{}ms", self.agent_timeout.as_millis());
        let certs = self.path("certs");
        let state = self.path("state/state.log");
        let log = self.path(&format!("{}.log", self.coordinators[index].name));
        let store: Vec<String> = match &self.etcd {
            None => vec!["--state".into(), state.display().to_string()],
            Some(etcd) => {
                let endpoints = match &self.coordinators[index].netns {
                    Some(ns) => etcd
                        .members
                        .iter()
                        .map(|member| format!("https://{}:{}", ns.host_ip, member.client_port))
                        .collect::<Vec<_>>()
                        .join(","),
                    None => etcd.endpoints().join(","),
                };
                vec![
                    "--etcd".into(),
                    endpoints,
                    "--lease-ttl".into(),
                    format!("{}s", self.lease_ttl.as_secs()),
                    "--name".into(),
                    self.coordinators[index].name.clone(),
                ]
            }
        };
        let coordinator = &mut self.coordinators[index];
        let mut command = match &coordinator.netns {
            Some(ns) => ns.command(&flotilla_bin()),
            None => Command::new(flotilla_bin()),
        };
        command
            .args(["coordinator", "--listen", &coordinator.address])
            .args(&store)
            .args(["--agent-timeout", &agent_timeout])
            .args(["--metrics-listen", &coordinator.metrics])
            .args(&self.coordinator_args)
            .args(extra)
            .envs(self.coordinator_env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .arg("--certs")
            .arg(certs)
            .env("FLOTILLA_LOG", "info,flotilla_coordinator::gateway=warn");
        coordinator.process = Some(Process::spawn(&mut command, &log));
    }

    pub fn kill_coordinator(&mut self, index: usize) {
        if let Some(mut process) = self.coordinators[index].process.take() {
            process.kill();
        }
    }

    /// SIGTERM to coordinator `index`, then waits for it to exit (see [`Process::terminate`]).
    pub fn terminate_coordinator(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        self.coordinators[index].process.take()?.terminate()
    }

    pub fn coordinator(&self, index: usize) -> &Process {
        self.coordinators[index]
            .process
            .as_ref()
            .expect("the coordinator runs")
    }

    pub fn start_agent(&mut self, name: &str, slots: u32) {
        self.start_agent_with(name, slots, &[]);
    }

    /// An agent with extra command-line arguments; its work directory is `agent-<name>/`,
    /// its log `agent-<name>.log`.
    pub fn start_agent_with(&mut self, name: &str, slots: u32, extra: &[&str]) {
        let work_dir = self.path(&format!("agent-{name}"));
        let metrics = format!("127.0.0.1:{}", free_tcp_port());
        let mut command = Command::new(flotilla_bin());
        command
            .args(["agent", "--coordinator", &self.addresses()])
            .args(["--id", name, "--slots", &slots.to_string()])
            .args(["--stop-grace", "2s"])
            .args(["--metrics-listen", &metrics])
            .arg("--certs")
            .arg(self.path("certs"))
            .arg("--work-dir")
            .arg(&work_dir);
        if let Some(etcd) = &self.etcd {
            let ttl = format!("{}s", self.lease_ttl.as_secs());
            command
                .args(["--etcd", &etcd.endpoints().join(",")])
                .args(["--checkpoint-lease-ttl", &ttl]);
        }
        if let Some(artifacts) = &self.artifacts {
            command.args(["--artifacts", artifacts]);
        }
        command
            .args(extra)
            .envs(self.agent_env.iter().map(|(name, value)| (name, value)))
            .env("FLOTILLA_LOG", "info");
        let process = Process::spawn(&mut command, &self.path(&format!("agent-{name}.log")));
        self.agents.push(Agent {
            name: name.to_string(),
            slots,
            metrics,
            process: Some(process),
        });
    }

    /// An agent that trains on the CPU and serves models (`--serve` on a free port), with
    /// the cluster's shared artifact store (`artifacts/` unless the cluster names one);
    /// returns its serving port.
    pub fn start_serving_agent(&mut self, name: &str, slots: u32) -> u16 {
        let port = free_tcp_port();
        let listen = format!("127.0.0.1:{port}");
        let mut extra = vec!["--device", "cpu", "--serve", &listen];
        let artifacts = self.path("artifacts").display().to_string();
        if self.artifacts.is_none() {
            extra.extend(["--artifacts", &artifacts]);
        }
        self.start_agent_with(name, slots, &extra);
        port
    }

    /// The agent called `name`.
    pub fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|agent| agent.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// `flotilla router` on a free port (log: router.log) with extra command-line arguments;
    /// returns it and its port.
    pub fn start_router(&self, extra: &[&str]) -> (Process, u16) {
        let port = free_tcp_port();
        let mut command = Command::new(flotilla_bin());
        command
            .args(["router", "--coordinator", &self.addresses(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--certs")
            .arg(self.path("certs"))
            .args(extra)
            .env("FLOTILLA_LOG", "info");
        (Process::spawn(&mut command, &self.path("router.log")), port)
    }

    /// A connection to an agent's serving endpoint on `port` (HTTPS, mutual TLS) with the
    /// cluster certificate `identity` (routers use `router`); the handshake runs on first use.
    pub fn serving_stream(
        &self,
        port: u16,
        identity: &str,
    ) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        let identity =
            flotilla_protocol::tls::Identity::load_from_dir(&self.path("certs"), identity)
                .expect("the certificate");
        let config = flotilla_protocol::https::serving_client_config(&identity).expect("TLS");
        let name = rustls::pki_types::ServerName::try_from("agent.flotilla").expect("a name");
        let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS");
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        rustls::StreamOwned::new(connection, tcp)
    }

    /// Runs the CLI against the cluster: its coordinators and certificates in the
    /// environment (`FLOTILLA_COORDINATOR`, `FLOTILLA_CERTS`), stdin closed.
    pub fn flotilla(&self, args: &[&str]) -> Output {
        let mut command = Command::new(flotilla_bin());
        command
            .args(args)
            .env("FLOTILLA_COORDINATOR", self.addresses())
            .env("FLOTILLA_CERTS", self.path("certs"))
            .stdin(Stdio::null());
        if let Some(identity) = &self.cli_identity {
            command.env("FLOTILLA_IDENTITY", identity);
        }
        command.output().expect("run flotilla")
    }

    /// [`Cluster::flotilla`] that must succeed; its stdout. A failure names the command, its
    /// output and the first coordinator's log.
    pub fn flotilla_ok(&self, args: &[&str]) -> String {
        let output = self.flotilla(args);
        assert!(
            output.status.success(),
            "flotilla {args:?} failed: {}\n{}\ncoordinator log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log(&self.coordinators[0].name)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `cluster status --json`, when a leader answers.
    pub fn status(&self) -> Option<Value> {
        let output = self.flotilla(&["cluster", "status", "--json"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// The leading replica's index and epoch, when a leader answers.
    pub fn leader(&self) -> Option<(usize, u64)> {
        let status = self.status()?;
        let name = status["leader"].as_str()?;
        let epoch = status["epoch"].as_u64()?;
        let index = self
            .coordinators
            .iter()
            .position(|coordinator| coordinator.name == name)?;
        Some((index, epoch))
    }

    /// Waits for a leader with an epoch above `above`.
    pub fn wait_for_leader(&self, above: u64, limit: Duration) -> (usize, u64) {
        let mut found = None;
        wait_until("a leader to answer", limit, || {
            found = self.leader().filter(|(_, epoch)| *epoch > above);
            found.is_some()
        });
        found.expect("a leader")
    }

    /// Waits until a coordinator answers a client.
    pub fn wait_for_coordinator(&self, limit: Duration) {
        wait_until("the coordinator to answer", limit, || {
            self.flotilla(&["sweep", "list"]).status.success()
        });
    }

    /// Waits until `agents` agents are connected to the leader.
    pub fn wait_for_agents(&self, agents: u64, limit: Duration) {
        wait_until(&format!("{agents} agents to connect"), limit, || {
            self.status()
                .is_some_and(|status| status["agents"].as_u64() == Some(agents))
        });
    }

    /// Submits a sweep file; returns its id (`s1`, …).
    pub fn submit(&self, file: &Path) -> String {
        let file = file.to_str().expect("UTF-8 path");
        let output = self.flotilla_ok(&["sweep", "submit", file]);
        output
            .split_whitespace()
            .find(|word| word.starts_with('s') && word[1..].parse::<u64>().is_ok())
            .unwrap_or_else(|| panic!("no sweep id in {output:?}"))
            .to_string()
    }

    /// Waits until the sweep is `Completed`; its results JSON.
    pub fn wait_completed(&self, sweep: &str, limit: Duration) -> Value {
        let mut results = None;
        wait_until(&format!("sweep {sweep} to complete"), limit, || {
            results = self
                .results(sweep)
                .filter(|results| results["sweep"]["state"] == "Completed");
            results.is_some()
        });
        results.expect("results")
    }

    /// The sweep's results JSON (every trial), when a leader answers.
    pub fn results(&self, sweep: &str) -> Option<Value> {
        let out = self.path(&format!("{sweep}-results.json"));
        let output = self.flotilla(&["sweep", "results", sweep, "--out", out.to_str()?]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_str(&std::fs::read_to_string(out).ok()?).ok()
    }

    /// The sweep's results JSON, which the coordinator must answer.
    pub fn expect_results(&self, sweep: &str) -> Value {
        let out = self.path(&format!("{sweep}-results.json"));
        self.flotilla_ok(&[
            "sweep",
            "results",
            sweep,
            "--out",
            &out.display().to_string(),
        ]);
        serde_json::from_str(&std::fs::read_to_string(&out).expect("results file"))
            .expect("results JSON")
    }

    /// The sweep's summary (`state`, `counts`, …) from its results.
    pub fn sweep_state(&self, sweep: &str) -> Value {
        self.expect_results(sweep)["sweep"].clone()
    }

    /// `(state, finished trials)` of a sweep, when a leader answers.
    pub fn progress(&self, sweep: &str) -> Option<(String, usize)> {
        let results = self.results(sweep)?;
        let state = results["sweep"]["state"].as_str()?.to_string();
        let done = results["trials"]
            .as_array()?
            .iter()
            .filter(|trial| trial["state"] == "succeeded")
            .count();
        Some((state, done))
    }
}

impl Drop for Cluster {
    /// When a test fails (or `FLOTILLA_KEEP_LOGS` is set), keeps the logs (every process's,
    /// and the trials' run logs) in a folder that is named on stderr, for the post-mortem.
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("FLOTILLA_KEEP_LOGS").is_none() {
            return;
        }
        let keep = std::env::temp_dir().join(format!(
            "flotilla-failed-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis())
        ));
        if std::fs::create_dir_all(&keep).is_err() {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path
                    .extension()
                    .is_some_and(|ext| ext == "log" || ext == "runs")
                {
                    let _ = std::fs::copy(&path, keep.join(entry.file_name()));
                }
            }
        }
        eprintln!("cluster logs kept in {}", keep.display());
    }
}
