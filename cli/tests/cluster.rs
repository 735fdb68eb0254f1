//! Multi-process cluster tests: a real `flotilla coordinator` and real `flotilla agent`
//! processes talking QUIC with mutual TLS on loopback, driven through the CLI.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// A child process killed (SIGKILL) and reaped when dropped, also when a test fails.
struct Process {
    child: Child,
}

impl Process {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
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

struct Cluster {
    dir: tempfile::TempDir,
    address: String,
    coordinator: Option<Process>,
    agents: Vec<(String, Process)>,
    queries: std::cell::Cell<u32>,
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    socket.local_addr().expect("local address").port()
}

impl Cluster {
    fn new() -> Cluster {
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

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .expect("log file")
    }

    fn start_coordinator(&mut self) {
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
            .env("FLOTILLA_LOG", "info")
            .stdout(self.log("coordinator"))
            .stderr(self.log("coordinator"))
            .spawn()
            .expect("start coordinator");
        self.coordinator = Some(Process { child });
    }

    fn start_agent(&mut self, name: &str, slots: u32) {
        self.start_agent_with(name, slots, &[]);
    }

    fn start_agent_with(&mut self, name: &str, slots: u32, extra: &[&str]) {
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

    fn flotilla(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("FLOTILLA_COORDINATOR", &self.address)
            .env("FLOTILLA_CERTS", self.path("certs"))
            .stdin(Stdio::null())
            .output()
            .expect("run flotilla")
    }

    fn flotilla_ok(&self, args: &[&str]) -> String {
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

    /// Waits until the coordinator answers and `agents` agents are registered.
    fn wait_for_agents(&self, agents: usize) {
        wait_until("agents to register", Duration::from_secs(60), || {
            let output = self.flotilla(&["cluster", "agents"]);
            output.status.success()
                && String::from_utf8_lossy(&output.stdout)
                    .matches(" connected ")
                    .count()
                    >= agents
        });
    }

    fn results(&self, sweep: &str) -> Value {
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

    fn write_sweep(&self, name: &str, trials: u32, parallel: u32, sleep: &str) -> PathBuf {
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

fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn sweep_state(cluster: &Cluster, sweep: &str) -> Value {
    cluster.results(sweep)["sweep"].clone()
}

fn trials(results: &Value) -> Vec<Value> {
    results["trials"].as_array().expect("trials array").clone()
}

/// Every trial succeeded exactly once: ids are unique, states final, counts agree.
fn assert_all_succeeded_once(results: &Value, expected: usize) {
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

#[test]
fn forty_trial_sweep_on_three_agents_completes_and_best_agrees() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator();
    for index in 0..3 {
        cluster.start_agent(&format!("agent-{index}"), 2);
    }
    cluster.wait_for_agents(3);
    let sweep_file = cluster.write_sweep("forty", 40, 6, "0.05");
    let results_path = cluster.path("forty.json");
    let stdout = cluster.flotilla_ok(&[
        "sweep",
        "submit",
        sweep_file.to_str().expect("utf-8"),
        "--watch",
        "--results",
        results_path.to_str().expect("utf-8"),
    ]);
    assert!(stdout.contains("40 succeeded"), "{stdout}");
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(&results_path).expect("results file"))
            .expect("JSON");
    assert_all_succeeded_once(&results, 40);
    let agents_used: std::collections::BTreeSet<String> = trials(&results)
        .iter()
        .filter_map(|trial| trial["agent"].as_str().map(String::from))
        .collect();
    assert_eq!(
        agents_used.len(),
        3,
        "trials spread over every agent: {agents_used:?}"
    );
    // The objective is x itself: the best trial is the one with the smallest x.
    let minimum = trials(&results)
        .iter()
        .min_by(|a, b| {
            a["objective"]
                .as_f64()
                .expect("f64")
                .total_cmp(&b["objective"].as_f64().expect("f64"))
        })
        .map(|trial| trial["id"].as_str().expect("id").to_string())
        .expect("a trial");
    assert_eq!(results["sweep"]["best_trial"], minimum.as_str());
    let best: Value =
        serde_json::from_str(&cluster.flotilla_ok(&["sweep", "best", "s1", "--json"]))
            .expect("best JSON");
    assert_eq!(best["id"], minimum.as_str());
    for trial in trials(&results) {
        let x = trial["params"]["x"].as_f64().expect("x");
        assert!(
            (trial["objective"].as_f64().expect("objective") - x).abs() < 1e-4,
            "{trial}"
        );
    }
    let listing = cluster.flotilla_ok(&["sweep", "list"]);
    assert!(
        listing.contains("forty") && listing.contains("Completed"),
        "{listing}"
    );
}

#[test]
fn killing_an_agent_mid_sweep_loses_no_trial() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator();
    for index in 0..3 {
        cluster.start_agent(&format!("agent-{index}"), 2);
    }
    cluster.wait_for_agents(3);
    let sweep_file = cluster.write_sweep("kill-agent", 40, 6, "0.6");
    cluster.flotilla_ok(&["sweep", "submit", sweep_file.to_str().expect("utf-8")]);
    let mut victims = Vec::new();
    wait_until("trials running on agent-1", Duration::from_secs(60), || {
        let results = cluster.results("s1");
        victims = trials(&results)
            .iter()
            .filter(|trial| trial["state"] == "running" && trial["agent"] == "agent-1")
            .map(|trial| trial["id"].as_str().expect("id").to_string())
            .collect();
        !victims.is_empty()
    });
    cluster.agents[1].1.kill();
    wait_until("the sweep to complete", Duration::from_secs(180), || {
        sweep_state(&cluster, "s1")["state"] == "Completed"
    });
    let results = cluster.results("s1");
    assert_all_succeeded_once(&results, 40);
    for victim in &victims {
        let trial = trials(&results)
            .into_iter()
            .find(|trial| trial["id"] == victim.as_str())
            .expect("victim trial");
        assert_ne!(trial["agent"], "agent-1", "{trial}");
        assert!(
            trial["attempt"].as_u64().expect("attempt") >= 1,
            "re-run under a new attempt: {trial}"
        );
    }
}

#[test]
fn restarting_the_coordinator_mid_sweep_resumes_it() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator();
    cluster.start_agent("agent-0", 2);
    cluster.start_agent("agent-1", 2);
    cluster.wait_for_agents(2);
    let sweep_file = cluster.write_sweep("restart", 30, 4, "0.4");
    cluster.flotilla_ok(&["sweep", "submit", sweep_file.to_str().expect("utf-8")]);
    wait_until("some trials to finish", Duration::from_secs(60), || {
        sweep_state(&cluster, "s1")["counts"]["succeeded"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    });
    if let Some(coordinator) = cluster.coordinator.as_mut() {
        coordinator.kill();
    }
    cluster.start_coordinator();
    wait_until(
        "the resumed sweep to complete",
        Duration::from_secs(180),
        || {
            let output = cluster.flotilla(&["sweep", "status", "s1"]);
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("Completed")
        },
    );
    let results = cluster.results("s1");
    assert_all_succeeded_once(&results, 30);
    let log = std::fs::read_to_string(cluster.path("coordinator.log")).unwrap_or_default();
    assert!(
        log.contains("sweep resumed from the store"),
        "the second coordinator resumed the sweep"
    );
    for (_, agent) in &mut cluster.agents {
        agent.terminate();
    }
}

/// One LSTM trial whose agent is SIGKILLed after it has written checkpoints: the
/// coordinator re-places it, the surviving agent resumes from the latest checkpoint the lost
/// attempt reported, and the trial ends with exactly the metrics of the same trial run
/// without interruption next to it (training is deterministic and resume is exact).
#[test]
fn a_trainer_trial_on_a_killed_agent_resumes_from_its_checkpoint_elsewhere() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator();
    let artifacts = cluster.path("artifacts");
    let artifacts = artifacts.to_str().expect("utf-8 path");
    for name in ["agent-0", "agent-1"] {
        cluster.start_agent_with(name, 1, &["--artifacts", artifacts, "--device", "cpu"]);
    }
    cluster.wait_for_agents(2);
    let sweep = |name: &str| {
        let path = cluster.path(&format!("{name}.toml"));
        let text = format!(
            r#"
name = "{name}"

[objective]
metric = "accuracy"
direction = "maximize"

[space.learning_rate]
type = "categorical"
choices = [0.003]

[budget]
max_trials = 1
max_parallel = 1

[trial]
trainer = "lstm_classifier"

[trial.settings]
samples = 800
seq_len = 32
hidden_size = 32
num_heads = 2
epochs = 30
checkpoint_every = 1
"#
        );
        std::fs::write(&path, text).expect("write sweep file");
        path
    };
    let interrupted = sweep("interrupted");
    cluster.flotilla_ok(&["sweep", "submit", interrupted.to_str().expect("utf-8")]);
    // The victim is whichever agent runs the trial once it has checkpointed twice.
    let mut victim = None;
    wait_until("two checkpoints of s1-t0", Duration::from_secs(120), || {
        let trial = trials(&cluster.results("s1")).remove(0);
        assert_ne!(
            trial["state"], "succeeded",
            "finished before it could be interrupted: {trial}"
        );
        victim = trial["agent"].as_str().map(String::from);
        trial["checkpoint"]["epoch"].as_u64().unwrap_or(0) >= 2
    });
    let victim = victim.expect("the trial's agent");
    // The same trial, uninterrupted, takes the other agent's only slot meanwhile.
    let reference = sweep("reference");
    cluster.flotilla_ok(&["sweep", "submit", reference.to_str().expect("utf-8")]);
    let index = cluster
        .agents
        .iter()
        .position(|(name, _)| *name == victim)
        .expect("victim agent");
    cluster.agents[index].1.kill();
    let survivor = if victim == "agent-0" {
        "agent-1"
    } else {
        "agent-0"
    };

    wait_until("both sweeps to complete", Duration::from_secs(240), || {
        ["s1", "s2"]
            .iter()
            .all(|sweep| sweep_state(&cluster, sweep)["state"] == "Completed")
    });
    let resumed = trials(&cluster.results("s1")).remove(0);
    let straight = trials(&cluster.results("s2")).remove(0);
    assert_eq!(resumed["state"], "succeeded", "{resumed}");
    assert_eq!(resumed["agent"], survivor, "{resumed}");
    assert_eq!(
        resumed["failures"], 0,
        "agent loss spends no retry: {resumed}"
    );
    let attempt = resumed["attempt"].as_u64().expect("attempt");
    assert!(attempt >= 1, "{resumed}");
    assert_eq!(
        resumed["checkpoint"]["attempt"], attempt,
        "the latest checkpoint is the new attempt's: {resumed}"
    );
    assert_eq!(resumed["checkpoint"]["epoch"], 30, "{resumed}");

    let log = std::fs::read_to_string(cluster.path(&format!("{survivor}.log"))).unwrap_or_default();
    let resume_line = log
        .lines()
        .find(|line| line.contains("resuming from") && line.contains("attempt 0"))
        .unwrap_or_else(|| panic!("{survivor} did not resume attempt 0's checkpoint:\n{log}"));
    assert!(resume_line.contains(artifacts), "{resume_line}");
    assert!(!resume_line.contains(", 0 epochs done"), "{resume_line}");

    // Exact resume: every metric but the wall-clock throughput is identical.
    let (resumed, straight) = (
        resumed["metrics"].as_object().expect("metrics"),
        straight["metrics"].as_object().expect("metrics"),
    );
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        straight.keys().collect::<Vec<_>>()
    );
    for (name, value) in straight {
        if name != "samples_per_second" {
            assert_eq!(&resumed[name], value, "{name}");
        }
    }
}

#[test]
fn peers_without_the_right_certificate_are_refused() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator();
    wait_until("the coordinator to answer", Duration::from_secs(60), || {
        cluster.flotilla(&["sweep", "list"]).status.success()
    });

    // An agent certificate trying to act as a client.
    let output = cluster.flotilla(&["sweep", "list", "--identity", "agent"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("RoleNotPermitted") && stderr.contains("agent"),
        "{stderr}"
    );

    // A client certificate from another CA (the coordinator's CA is trusted, the client's is not).
    let other = cluster.path("other-ca");
    let output = Command::new(BIN)
        .args(["certs", "init", "--out"])
        .arg(&other)
        .output()
        .expect("certs init");
    assert!(output.status.success());
    let mixed = cluster.path("mixed");
    std::fs::create_dir_all(&mixed).expect("mkdir");
    std::fs::copy(cluster.path("certs/ca.pem"), mixed.join("ca.pem")).expect("copy");
    std::fs::copy(other.join("client.pem"), mixed.join("client.pem")).expect("copy");
    std::fs::copy(other.join("client-key.pem"), mixed.join("client-key.pem")).expect("copy");
    let output = cluster.flotilla(&["sweep", "list", "--certs", mixed.to_str().expect("utf-8")]);
    assert!(
        !output.status.success(),
        "a foreign client certificate must be refused"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error:"), "{stderr}");

    // A client with no certificate at all.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let address = cluster.address.parse().expect("address");
    let refused = runtime.block_on(connect_without_certificate(
        &cluster.path("certs/ca.pem"),
        address,
    ));
    assert!(
        refused,
        "a client without a certificate must not get past the handshake"
    );

    // A client certificate may not list agents (admin only).
    let output = cluster.flotilla(&["cluster", "agents", "--identity", "client"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("admin"));
}

/// Connects with TLS but presents no client certificate; true when the coordinator refuses.
async fn connect_without_certificate(ca_path: &Path, address: std::net::SocketAddr) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ca = CertificateDer::from_pem_file(ca_path).expect("CA");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"flotilla".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(std::sync::Arc::new(tls))
        .expect("quic config");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("bind")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let Ok(connecting) = endpoint.connect(address, "coordinator.flotilla") else {
        return true;
    };
    let Ok(connection) = connecting.await else {
        return true;
    };
    let Ok((mut send, mut recv)) = connection.open_bi().await else {
        return true;
    };
    let hello =
        flotilla_protocol::handshake::hello(flotilla_protocol::messages::Role::Client, "no-cert");
    if flotilla_protocol::framing::write_frame(&mut send, &hello)
        .await
        .is_err()
    {
        return true;
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        flotilla_protocol::framing::read_frame::<_, flotilla_protocol::messages::HelloReply>(
            &mut recv,
        ),
    )
    .await;
    !matches!(
        reply,
        Ok(Ok(Some(flotilla_protocol::messages::HelloReply::Welcome(
            _
        ))))
    )
}

#[test]
fn malformed_sweep_files_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(repo_file("examples/logreg.toml")).expect("logreg example");
    let empty_space = {
        let start = good.find("[space.lr]").expect("space");
        let end = good.find("[algorithm]").expect("algorithm");
        format!("{}[space]\n\n{}", &good[..start], &good[end..])
    };
    let cases = [
        (
            "unknown-field",
            good.replace("max_parallel = 4", "max_paralel = 4"),
            "max_paralel",
        ),
        (
            "bad-range",
            good.replace("low = 0.001", "low = 2.0"),
            "space.lr.high",
        ),
        (
            "unknown-metric",
            good.replace("class_1_accuracy >= 0.5", "recall >= 0.5"),
            "constraints[0]",
        ),
        (
            "empty-space",
            empty_space,
            "space: the search space is empty",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        let output = Command::new(BIN)
            .args(["sweep", "validate"])
            .arg(&path)
            .output()
            .expect("run");
        assert!(!output.status.success(), "{name} must be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "{name}: expected '{expected}' in:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("{name}.toml")),
            "{name}: the error names the file:\n{stderr}"
        );
    }
    for example in ["examples/logreg.toml", "examples/quickstart.toml"] {
        let output = Command::new(BIN)
            .args(["sweep", "validate"])
            .arg(repo_file(example))
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A file of this checkout. The directory is read when the test runs (cargo and nextest set
/// `CARGO_MANIFEST_DIR` for test processes), so a test binary reused from another checkout
/// of the same sources through a shared target directory still reads this one's files.
fn repo_file(relative: &str) -> std::path::PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    crate_dir.join("..").join(relative)
}

#[test]
fn an_operator_cordons_uncordons_and_drains_agents_from_the_cli() {
    let mut cluster = Cluster::new();
    cluster.start_coordinator();
    cluster.start_agent("agent-0", 2);
    cluster.start_agent("agent-1", 2);
    cluster.wait_for_agents(2);

    // Without --autoscale there is no fleet to size, and the CLI says so.
    let status = cluster.flotilla_ok(&["cluster", "status"]);
    assert!(status.contains("autoscaling: off"), "{status}");
    let scale = cluster.flotilla(&["cluster", "scale", "--desired", "2"]);
    assert!(!scale.status.success());
    let stderr = String::from_utf8_lossy(&scale.stderr);
    assert!(stderr.contains("does not autoscale"), "{stderr}");
    let unknown = cluster.flotilla(&["agent", "cordon", "nobody"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no connected agent 'nobody'"), "{stderr}");

    // A cordoned agent gets nothing new: a sweep runs on the other one only.
    let out = cluster.flotilla_ok(&["agent", "cordon", "agent-1"]);
    assert!(out.contains("agent-1 cordoned"), "{out}");
    let file = cluster.write_sweep("cordoned", 4, 4, "0.2");
    cluster.flotilla_ok(&["sweep", "submit", file.to_str().expect("utf-8")]);
    wait_until("sweep s1 to complete", Duration::from_secs(60), || {
        sweep_state(&cluster, "s1")["state"] == "Completed"
    });
    let results = cluster.results("s1");
    assert_all_succeeded_once(&results, 4);
    for trial in trials(&results) {
        assert_eq!(trial["agent"], "agent-0", "{trial}");
    }

    // Long trials start on agent-0 (agent-1 still cordoned); then agent-1 is uncordoned and
    // agent-0 drained: its trials stop as preempted and finish on agent-1 under a new
    // attempt, without spending a retry.
    let file = cluster.write_sweep("drained", 2, 2, "4");
    cluster.flotilla_ok(&["sweep", "submit", file.to_str().expect("utf-8")]);
    wait_until(
        "both trials running on agent-0",
        Duration::from_secs(60),
        || {
            trials(&cluster.results("s2"))
                .iter()
                .filter(|t| t["state"] == "running" && t["agent"] == "agent-0")
                .count()
                == 2
        },
    );
    let out = cluster.flotilla_ok(&["agent", "uncordon", "agent-1"]);
    assert!(out.contains("agent-1 uncordoned"), "{out}");
    let out = cluster.flotilla_ok(&["agent", "drain", "agent-0"]);
    assert!(out.contains("agent-0 draining"), "{out}");
    wait_until("sweep s2 to complete", Duration::from_secs(60), || {
        sweep_state(&cluster, "s2")["state"] == "Completed"
    });
    let results = cluster.results("s2");
    assert_all_succeeded_once(&results, 2);
    for trial in trials(&results) {
        assert_eq!(trial["agent"], "agent-1", "{trial}");
        assert!(trial["attempt"].as_u64().expect("attempt") >= 1, "{trial}");
    }
    // The drained agent's process is still up, connected, and takes nothing new.
    let agents = cluster.flotilla_ok(&["cluster", "agents"]);
    let line = agents
        .lines()
        .find(|line| line.contains("agent-0"))
        .unwrap_or_else(|| panic!("agent-0 missing:\n{agents}"));
    assert!(line.contains("draining"), "{agents}");
}
