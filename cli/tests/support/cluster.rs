//! A cluster of real `flotilla` processes for the CLI's tests and benchmarks: a coordinator
//! and agents talking QUIC with mutual TLS on loopback, driven through the CLI.

#![allow(dead_code)] // each test or benchmark crate uses a part

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// A child process killed (SIGKILL) and reaped when dropped, also when a test fails.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub address: String,
    pub coordinator: Option<Process>,
    pub agents: Vec<(String, Process)>,
    pub queries: std::cell::Cell<u32>,
}

pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    socket.local_addr().expect("local address").port()
}

impl Cluster {
    pub fn new() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let output = Command::new(BIN)
            .args(["certs", "init", "--out"])
            .arg(&certs)
            .output()
            .expect("run certs init");
        assert!(
            output.status.success(),
            "certs init: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let address = format!("127.0.0.1:{}", free_udp_port());
        Cluster {
            dir,
            address,
            coordinator: None,
            agents: Vec::new(),
            queries: std::cell::Cell::new(0),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .expect("log file")
    }

    pub fn start_coordinator(&mut self) {
        self.start_coordinator_with(&[]);
    }

    pub fn start_coordinator_with(&mut self, extra: &[&str]) {
        self.start_coordinator_env(extra, &[]);
    }

    /// A coordinator with `extra` arguments and `env` in its environment.
    pub fn start_coordinator_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let child = Command::new(BIN)
            .args([
                "coordinator",
                "--listen",
                &self.address,
                "--agent-timeout",
                "3s",
                "--state",
            ])
            .arg(self.path("state/state.log"))
            .arg("--certs")
            .arg(self.path("certs"))
            .args(extra)
            .envs(env.iter().copied())
            .env("FLOTILLA_LOG", "info")
            .stdout(self.log("coordinator"))
            .stderr(self.log("coordinator"))
            .spawn()
            .expect("start coordinator");
        self.coordinator = Some(Process { child });
    }

    pub fn start_agent(&mut self, name: &str, slots: u32) {
        self.start_agent_with(name, slots, &[]);
    }

    pub fn start_agent_with(&mut self, name: &str, slots: u32, extra: &[&str]) {
        let child = Command::new(BIN)
            .args([
                "agent",
                "--coordinator",
                &self.address,
                "--slots",
                &slots.to_string(),
                "--id",
                name,
                "--stop-grace",
                "2s",
            ])
            .arg("--certs")
            .arg(self.path("certs"))
            .arg("--work-dir")
            .arg(self.path(name))
            .args(extra)
            .env("FLOTILLA_LOG", "info")
            .stdout(self.log(name))
            .stderr(self.log(name))
            .spawn()
            .expect("start agent");
        self.agents.push((name.to_string(), Process { child }));
    }

    /// An agent that trains on the CPU and serves models (`--serve` on a free port), with
    /// the cluster's shared artifact store; returns its serving port.
    pub fn start_serving_agent(&mut self, name: &str, slots: u32) -> u16 {
        let port = free_tcp_port();
        let artifacts = self.path("artifacts");
        let artifacts = artifacts.to_str().expect("utf-8 path").to_string();
        let listen = format!("127.0.0.1:{port}");
        self.start_agent_with(
            name,
            slots,
            &[
                "--artifacts",
                &artifacts,
                "--device",
                "cpu",
                "--serve",
                &listen,
            ],
        );
        port
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
        let connection =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("TLS");
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        rustls::StreamOwned::new(connection, tcp)
    }

    /// `flotilla router` on a free port (log: router.log); returns it and its port.
    pub fn start_router(&self) -> (Process, u16) {
        self.start_router_with(&[])
    }

    /// A router with extra command-line arguments.
    pub fn start_router_with(&self, extra: &[&str]) -> (Process, u16) {
        let port = free_tcp_port();
        let child = Command::new(BIN)
            .args(["router", "--coordinator", &self.address, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--certs")
            .arg(self.path("certs"))
            .args(extra)
            .env("FLOTILLA_LOG", "info")
            .stdout(self.log("router"))
            .stderr(self.log("router"))
            .spawn()
            .expect("start router");
        (Process { child }, port)
    }

    pub fn flotilla(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("FLOTILLA_COORDINATOR", &self.address)
            .env("FLOTILLA_CERTS", self.path("certs"))
            .stdin(Stdio::null())
            .output()
            .expect("run flotilla")
    }

    pub fn flotilla_ok(&self, args: &[&str]) -> String {
        let output = self.flotilla(args);
        assert!(
            output.status.success(),
            "flotilla {args:?} failed: {}\n{}\ncoordinator log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.path("coordinator.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    /// Waits until the coordinator answers a client.
    pub fn wait_for_coordinator(&self) {
        wait_until("the coordinator to answer", Duration::from_secs(60), || {
            self.flotilla(&["sweep", "list"]).status.success()
        });
    }

    /// Waits until the coordinator answers and `agents` agents are registered.
    pub fn wait_for_agents(&self, agents: usize) {
        wait_until("agents to register", Duration::from_secs(60), || {
            let output = self.flotilla(&["cluster", "agents"]);
            output.status.success()
                && String::from_utf8_lossy(&output.stdout)
                    .matches(" connected ")
                    .count()
                    >= agents
        });
    }

    pub fn results(&self, sweep: &str) -> Value {
        self.queries.set(self.queries.get() + 1);
        let path = self.path(&format!("results-{}.json", self.queries.get()));
        self.flotilla_ok(&[
            "sweep",
            "results",
            sweep,
            "--out",
            path.to_str().expect("utf-8 path"),
        ]);
        serde_json::from_str(&std::fs::read_to_string(&path).expect("results file"))
            .expect("results JSON")
    }

    pub fn write_sweep(&self, name: &str, trials: u32, parallel: u32, sleep: &str) -> PathBuf {
        let path = self.path(&format!("{name}.toml"));
        let text = format!(
            r#"
name = "{name}"

[objective]
metric = "loss"
direction = "minimize"

[space.x]
type = "float"
low = 1.0
high = 100.0

[space.kind]
type = "categorical"
choices = ["a", "b"]

[algorithm]
name = "random"
seed = 3

[budget]
max_trials = {trials}
max_parallel = {parallel}

[trial]
command = "sh"
args = ["-c", "sleep {sleep}; echo working; echo '@flotilla step=0 loss={{x}}'"]
metrics = ["loss"]
"#
        );
        std::fs::write(&path, text).expect("write sweep file");
        path
    }
}

pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

pub fn sweep_state(cluster: &Cluster, sweep: &str) -> Value {
    cluster.results(sweep)["sweep"].clone()
}

pub fn trials(results: &Value) -> Vec<Value> {
    results["trials"].as_array().expect("trials array").clone()
}

/// Every trial succeeded exactly once: ids are unique, states final, counts agree.
pub fn assert_all_succeeded_once(results: &Value, expected: usize) {
    let trials = trials(results);
    assert_eq!(trials.len(), expected, "trial count");
    let mut ids: Vec<&str> = trials
        .iter()
        .map(|trial| trial["id"].as_str().expect("id"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected, "duplicate trial ids");
    for trial in &trials {
        assert_eq!(trial["state"], "succeeded", "{trial}");
        assert_eq!(
            trial["failures"], 0,
            "a lost agent must not spend retries: {trial}"
        );
    }
    assert_eq!(results["sweep"]["counts"]["succeeded"], expected as u64);
    assert_eq!(results["sweep"]["counts"]["failed"], 0);
    assert_eq!(results["sweep"]["state"], "Completed");
}

pub fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
    listener.local_addr().expect("local address").port()
}

/// The samples of one metric family an agent's `/metrics` serves now: (series with its
/// labels, value). Empty when the endpoint does not answer.
pub fn scrape(port: u16, family: &str) -> Vec<(String, f64)> {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut text = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    text.lines()
        .filter(|line| {
            line.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// One HTTP/1.1 request on a fresh connection to 127.0.0.1:`port`, with extra header lines
/// (each ending in `\r\n`): (status, headers lowercased, body); status 0 when the
/// connection failed.
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    extra_headers: &str,
) -> (u16, BTreeMap<String, String>, String) {
    let failed = |error: std::io::Error| (0, BTreeMap::new(), error.to_string());
    let mut stream = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(stream) => stream,
        Err(error) => return failed(error),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    let mut text = String::new();
    if let Err(error) = stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.read_to_string(&mut text).map(|_| ()))
    {
        return failed(error);
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Processes whose command line mentions `needle` (arguments are NUL-separated there).
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}
