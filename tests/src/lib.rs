//! The cluster harness: a real etcd (one member or three on loopback ports), several
//! `flotilla coordinator` processes campaigning in it, `flotilla agent` processes, and the
//! CLI to drive them. Any process can be killed (SIGKILL), paused (SIGSTOP), resumed
//! (SIGCONT) and restarted. Everything lives in a temporary directory and every process is
//! killed when the harness is dropped, also when a test fails.
//!
//! The tests run the `flotilla` binary built with the workspace (`target/<profile>/flotilla`,
//! next to the test binary's `deps/` folder), or the one named by `FLOTILLA_BIN`.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_etcd::EtcdConfig;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub mod bench;

/// The `flotilla` binary under test.
pub fn flotilla_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FLOTILLA_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // Tests run from target/<profile>/deps/, the benchmark from target/<profile>/.
    let bin = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("flotilla"))
        .find(|bin| bin.exists());
    bin.unwrap_or_else(|| {
        panic!(
            "no flotilla binary next to {}: build the workspace (cargo test --workspace builds \
             it) or set FLOTILLA_BIN",
            exe.display()
        )
    })
}

pub fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
    listener.local_addr().expect("local address").port()
}

pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    socket.local_addr().expect("local address").port()
}

/// Polls `condition` until it holds, or panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Process {
    child: Child,
}

impl Process {
    pub fn spawn(command: &mut Command, log: &Path) -> Process {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        Process { child }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn kill(&mut self) {
        // A stopped process must be continued for SIGKILL to be reaped promptly.
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (up to 30 s) for the exit; its status, if it exited.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        kill(self.pid(), Signal::SIGTERM).ok()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pause(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP");
    }

    pub fn resume(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A network namespace joined to this one by a veth pair on a /30 from 198.18.0.0/15 (the
/// range reserved for network tests), with no route anywhere else. A process started in it
/// reaches the host side's address (and the host reaches its address) until [`Netns::cut`].
pub struct Netns {
    pub name: String,
    host_link: String,
    /// The host side's address, reachable from inside.
    pub host_ip: String,
    /// The namespace's address, reachable from the host.
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    /// Namespace number `index` of this test process.
    pub fn create(index: u32) -> Result<Netns, String> {
        let id = std::process::id();
        let name = format!("flt{id}n{index}");
        let host_link = format!("flt{id}h{index}");
        let peer_link = format!("flt{id}p{index}");
        // 198.18.A.B/30 with a block per (process, index): A.B from the low bits of both.
        let block = ((id % 4000) * 4 + index) * 4;
        let (third, fourth) = (block / 256 % 256, block % 256);
        let host_ip = format!("198.18.{third}.{}", fourth + 1);
        let ns_ip = format!("198.18.{third}.{}", fourth + 2);
        ip(&["netns", "add", &name])?;
        let netns = Netns {
            name: name.clone(),
            host_link: host_link.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &peer_link,
        ])?;
        ip(&["link", "set", &peer_link, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        let inside = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &name, "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &peer_link])?;
        inside(&["link", "set", &peer_link, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Whether this machine lets tests make namespaces (root, iproute2, no sandbox in the
    /// way); the reason when it does not.
    pub fn supported() -> Result<(), String> {
        Netns::create(99).map(drop)
    }

    /// Cuts the link: nothing passes between the namespace and the host until [`Netns::heal`].
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]).expect("cut the link");
    }

    pub fn heal(&self) {
        ip(&["link", "set", &self.host_link, "up"]).expect("heal the link");
    }

    /// `command` run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_link]);
    }
}

/// `moto_server` (PyPI `moto[server]`, an AWS-compatible endpoint) on a loopback port, for
/// agents whose artifact store is S3; killed when dropped. `FLOTILLA_MOTO_SERVER` names the
/// program (`scripts/test.sh` installs it into a virtualenv).
pub struct Moto {
    pub port: u16,
    process: Process,
}

impl Moto {
    pub fn start(log: &Path) -> Moto {
        let program = std::env::var("FLOTILLA_MOTO_SERVER").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/flotilla-moto-venv/bin/moto_server")
        });
        assert!(
            Path::new(&program).exists(),
            "{program} is missing: run scripts/test.sh, or set FLOTILLA_MOTO_SERVER"
        );
        let port = free_tcp_port();
        let process = Process::spawn(
            Command::new(&program).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
            log,
        );
        wait_until("moto_server to listen", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Moto { port, process }
    }

    /// Creates a bucket (unsigned: moto does not check signatures).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// The environment an S3 client needs to reach this endpoint.
    pub fn environment(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }

    /// The keys under `prefix/` in `bucket` (ListObjectsV2, unsigned).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            stream,
            "GET /{bucket}?list-type=2&prefix={prefix} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.process.kill();
    }
}

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

/// Sweep files, trial scripts and certificates for a cluster, and the processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub etcd: Etcd,
    pub lease_ttl: Duration,
    pub agent_timeout: Duration,
    /// Extra arguments every coordinator starts with.
    pub coordinator_args: Vec<String>,
    /// Environment variables every coordinator starts with.
    pub coordinator_env: Vec<(String, String)>,
    pub coordinators: Vec<Coordinator>,
    pub agents: Vec<Agent>,
    /// The artifact store agents start with (`--artifacts`): a folder of the harness unless
    /// changed, e.g. to an `s3://` location.
    pub artifacts: String,
    /// Environment variables every agent starts with (S3 settings, …).
    pub agent_env: Vec<(String, String)>,
}

pub struct Coordinator {
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

impl Cluster {
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
        let output = Command::new(flotilla_bin())
            .args(["certs", "init", "--out"])
            .arg(dir.path().join("certs"))
            .args(host_ips.iter().flat_map(|ip| ["--etcd-host", ip]))
            .output()
            .expect("run certs init");
        assert!(
            output.status.success(),
            "certs init: {}",
            String::from_utf8_lossy(&output.stderr)
        );
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
            etcd,
            lease_ttl,
            agent_timeout: Duration::from_secs(3),
            coordinator_args: Vec::new(),
            coordinator_env: Vec::new(),
            coordinators,
            agents: Vec::new(),
            artifacts: dir.path().join("artifacts").display().to_string(),
            agent_env: Vec::new(),
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
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
        let etcd = match &self.coordinators[index].netns {
            Some(ns) => self
                .etcd
                .members
                .iter()
                .map(|member| format!("https://{}:{}", ns.host_ip, member.client_port))
                .collect::<Vec<_>>()
                .join(","),
            None => self.etcd.endpoints().join(","),
        };
        let ttl = format!("{}s", self.lease_ttl.as_secs());
        let agent_timeout = format!("{}ms", self.agent_timeout.as_millis());
        let certs = self.path("certs");
        let log = self.path(&format!("{}.log", self.coordinators[index].name));
        let coordinator = &mut self.coordinators[index];
        let mut command = match &coordinator.netns {
            Some(ns) => ns.command(&flotilla_bin()),
            None => Command::new(flotilla_bin()),
        };
        command
            .args(["coordinator", "--listen", &coordinator.address])
            .args(["--etcd", &etcd, "--lease-ttl", &ttl])
            .args(["--agent-timeout", &agent_timeout])
            .args(["--name", &coordinator.name])
            .args(["--metrics-listen", &coordinator.metrics])
            .args(&self.coordinator_args)
            .envs(self.coordinator_env.iter().map(|(k, v)| (k, v)))
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

    pub fn coordinator(&self, index: usize) -> &Process {
        self.coordinators[index]
            .process
            .as_ref()
            .expect("the coordinator runs")
    }

    pub fn start_agent(&mut self, name: &str, slots: u32) {
        self.start_agent_with(name, slots, &[]);
    }

    /// An agent with extra command-line arguments.
    pub fn start_agent_with(&mut self, name: &str, slots: u32, extra: &[&str]) {
        let work_dir = self.path(&format!("agent-{name}"));
        let etcd = self.etcd.endpoints().join(",");
        let ttl = format!("{}s", self.lease_ttl.as_secs());
        let metrics = format!("127.0.0.1:{}", free_tcp_port());
        let mut command = Command::new(flotilla_bin());
        command
            .args(["agent", "--coordinator", &self.addresses()])
            .args(["--etcd", &etcd, "--checkpoint-lease-ttl", &ttl])
            .args(["--id", name, "--slots", &slots.to_string()])
            .args(["--stop-grace", "2s"])
            .args(["--metrics-listen", &metrics])
            .arg("--certs")
            .arg(self.path("certs"))
            .arg("--work-dir")
            .arg(&work_dir)
            .args(["--artifacts", &self.artifacts])
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

    /// Runs the CLI against the cluster (admin certificate).
    pub fn flotilla(&self, args: &[&str]) -> Output {
        Command::new(flotilla_bin())
            .args(args)
            .args(["--coordinator", &self.addresses()])
            .arg("--certs")
            .arg(self.path("certs"))
            .args(["--identity", "admin"])
            .output()
            .expect("run flotilla")
    }

    pub fn flotilla_ok(&self, args: &[&str]) -> String {
        let output = self.flotilla(args);
        assert!(
            output.status.success(),
            "flotilla {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
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

    /// A sweep of `trials` command trials that each log their start and end (with the trial
    /// id, attempt and a nanosecond timestamp) to `<dir>/<name>.runs`, sleep `sleep`, and
    /// report `loss = x`.
    pub fn write_logged_sweep(
        &self,
        name: &str,
        trials: u32,
        parallel: u32,
        sleep: &str,
    ) -> PathBuf {
        let runs = self.path(&format!("{name}.runs"));
        let script = self.path(&format!("{name}.sh"));
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
log() {{ echo "$1 $FLOTILLA_TRIAL_ID $FLOTILLA_ATTEMPT $(date +%s%N) $2" >> {runs}; }}
trap 'log end stopped; exit 143' TERM
log start
sleep {sleep}
log end ok
echo "@flotilla step=0 loss=$1"
"#,
                runs = runs.display()
            ),
        )
        .expect("write the trial script");
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
name = "{name}"

[objective]
metric = "loss"
direction = "minimize"

[space.x]
type = "float"
low = 1.0
high = 100.0

[algorithm]
name = "random"
seed = 11

[budget]
max_trials = {trials}
max_parallel = {parallel}

[trial]
command = "sh"
args = ["{script}", "{{x}}"]
metrics = ["loss"]
"#,
                script = script.display()
            ),
        )
        .expect("write the sweep file");
        path
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

/// One line of a logged sweep's run log.
#[derive(Debug, Clone)]
pub struct RunEvent {
    pub start: bool,
    pub trial: String,
    pub attempt: u32,
    /// Missing when the trial was stopped while taking the time.
    pub at_ns: Option<u128>,
}

/// Reads `<name>.runs`.
pub fn run_events(path: &Path) -> Vec<RunEvent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let start = match words.next()? {
                "start" => true,
                "end" => false,
                _ => return None,
            };
            Some(RunEvent {
                start,
                trial: words.next()?.to_string(),
                attempt: words.next()?.parse().ok()?,
                // A trial stopped while logging its start loses the `date` it was running.
                at_ns: words.next().and_then(|word| word.parse().ok()),
            })
        })
        .collect()
}

/// Panics if two attempts of one trial were running at the same time, or an attempt started
/// but never ended.
pub fn assert_no_trial_ran_twice_at_once(events: &[RunEvent]) {
    type Interval = (Option<Option<u128>>, Option<Option<u128>>);
    let mut intervals: std::collections::BTreeMap<(String, u32), Interval> = Default::default();
    for event in events {
        let entry = intervals
            .entry((event.trial.clone(), event.attempt))
            .or_default();
        if event.start {
            assert!(
                entry.0.is_none(),
                "attempt {}#{} started twice",
                event.trial,
                event.attempt
            );
            entry.0 = Some(event.at_ns);
        } else {
            entry.1 = Some(event.at_ns);
        }
    }
    let mut by_trial: std::collections::BTreeMap<String, Vec<(u128, u128, u32)>> =
        Default::default();
    for ((trial, attempt), (start, end)) in intervals {
        let start =
            start.unwrap_or_else(|| panic!("attempt {trial}#{attempt} ended without starting"));
        let end = end
            .unwrap_or_else(|| panic!("attempt {trial}#{attempt} never ended"))
            .unwrap_or_else(|| panic!("attempt {trial}#{attempt} ended without a time"));
        // Stopped while logging its start: it ran no longer than until its end.
        let start = start.unwrap_or(end);
        by_trial
            .entry(trial)
            .or_default()
            .push((start, end, attempt));
    }
    for (trial, mut runs) in by_trial {
        runs.sort();
        for pair in runs.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "trial {trial}: attempt {} started before attempt {} ended",
                pair[1].2,
                pair[0].2
            );
        }
    }
}

/// A plain HTTP/1.1 GET on loopback; returns the status code and the body.
pub fn http_get(address: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    http_get_with(address, path_and_query, None)
}

/// [`http_get`] with `Authorization: Bearer TOKEN` when `bearer` is given.
pub fn http_get_with(
    address: &str,
    path_and_query: &str,
    bearer: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    // Chunked bodies (Prometheus answers so) are de-chunked well enough for JSON: the
    // chunk sizes sit on their own lines between the pieces.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query-string value.
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Headless Chromium (Debian's `chromium`) with a fresh profile and no background traffic,
/// run with `args` (for instance `--dump-dom URL` or `--screenshot=PATH URL`).
pub fn chromium(args: &[&str]) -> Output {
    let profile = tempfile::tempdir().expect("a profile directory");
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs (./scripts/test.sh installs Debian's chromium)")
}
