//! Multi-process cluster tests: a real `flotilla coordinator` and real `flotilla agent`
//! processes talking QUIC with mutual TLS on loopback, driven through the CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use flotilla_harness::imds::ImdsResponder;
use flotilla_harness::*;

#[test]
fn forty_trial_sweep_on_three_agents_completes_and_best_agrees() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    for index in 0..3 {
        cluster.start_agent(&format!("agent-{index}"), 2);
    }
    cluster.wait_for_agents(3, Duration::from_secs(60));
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
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    for index in 0..3 {
        cluster.start_agent(&format!("agent-{index}"), 2);
    }
    cluster.wait_for_agents(3, Duration::from_secs(60));
    let sweep_file = cluster.write_sweep("kill-agent", 40, 6, "0.6");
    cluster.flotilla_ok(&["sweep", "submit", sweep_file.to_str().expect("utf-8")]);
    let mut victims = Vec::new();
    wait_until("trials running on agent-1", Duration::from_secs(60), || {
        let results = cluster.expect_results("s1");
        victims = trials(&results)
            .iter()
            .filter(|trial| trial["state"] == "running" && trial["agent"] == "agent-1")
            .map(|trial| trial["id"].as_str().expect("id").to_string())
            .collect();
        !victims.is_empty()
    });
    cluster.agents[1].kill();
    wait_until("the sweep to complete", Duration::from_secs(180), || {
        cluster.sweep_state("s1")["state"] == "Completed"
    });
    let results = cluster.expect_results("s1");
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
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    cluster.start_agent("agent-0", 2);
    cluster.start_agent("agent-1", 2);
    cluster.wait_for_agents(2, Duration::from_secs(60));
    let sweep_file = cluster.write_sweep("restart", 30, 4, "0.4");
    cluster.flotilla_ok(&["sweep", "submit", sweep_file.to_str().expect("utf-8")]);
    wait_until("some trials to finish", Duration::from_secs(60), || {
        cluster.sweep_state("s1")["counts"]["succeeded"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    });
    cluster.kill_coordinator(0);
    cluster.start_coordinator(0);
    wait_until(
        "the resumed sweep to complete",
        Duration::from_secs(180),
        || {
            let output = cluster.flotilla(&["sweep", "status", "s1"]);
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("Completed")
        },
    );
    let results = cluster.expect_results("s1");
    assert_all_succeeded_once(&results, 30);
    let log = cluster.log("coordinator");
    assert!(
        log.contains("sweep resumed from the store"),
        "the second coordinator resumed the sweep"
    );
    for agent in &mut cluster.agents {
        if let Some(mut process) = agent.process.take() {
            process.terminate();
        }
    }
}

/// One LSTM trial whose agent is SIGKILLed after it has written checkpoints: the
/// coordinator re-places it, the surviving agent resumes from the latest checkpoint the lost
/// attempt reported, and the trial ends with exactly the metrics of the same trial run
/// without interruption next to it (training is deterministic and resume is exact).
#[test]
fn a_trainer_trial_on_a_killed_agent_resumes_from_its_checkpoint_elsewhere() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    let artifacts = cluster.path("artifacts");
    let artifacts = artifacts.to_str().expect("utf-8 path");
    for name in ["agent-0", "agent-1"] {
        cluster.start_agent_with(name, 1, &["--artifacts", artifacts, "--device", "cpu"]);
    }
    cluster.wait_for_agents(2, Duration::from_secs(60));
    let sweep = |name: &str| cluster.write_lstm_sweep(name, 30);
    let interrupted = sweep("interrupted");
    cluster.flotilla_ok(&["sweep", "submit", interrupted.to_str().expect("utf-8")]);
    // The victim is whichever agent runs the trial once it has checkpointed twice.
    let mut victim = None;
    wait_until("two checkpoints of s1-t0", Duration::from_secs(120), || {
        let trial = trials(&cluster.expect_results("s1")).remove(0);
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
        .position(|agent| agent.name == victim)
        .expect("victim agent");
    cluster.agents[index].kill();
    let survivor = if victim == "agent-0" {
        "agent-1"
    } else {
        "agent-0"
    };

    wait_until("both sweeps to complete", Duration::from_secs(240), || {
        ["s1", "s2"]
            .iter()
            .all(|sweep| cluster.sweep_state(sweep)["state"] == "Completed")
    });
    let resumed = trials(&cluster.expect_results("s1")).remove(0);
    let straight = trials(&cluster.expect_results("s2")).remove(0);
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

    let log = cluster.agent_log(survivor);
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
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    cluster.wait_for_coordinator(Duration::from_secs(60));

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
    let output = Command::new(flotilla_bin())
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
    let address = cluster.addresses().parse().expect("address");
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
        let output = Command::new(flotilla_bin())
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
        let output = Command::new(flotilla_bin())
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
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    cluster.start_agent("agent-0", 2);
    cluster.start_agent("agent-1", 2);
    cluster.wait_for_agents(2, Duration::from_secs(60));

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

    // A cordoned agent gets nothing new: a sweep runs on the other one only. The cordon is
    // stored, so it holds across a coordinator restart.
    let out = cluster.flotilla_ok(&["agent", "cordon", "agent-1"]);
    assert!(out.contains("agent-1 cordoned"), "{out}");
    cluster.terminate_coordinator(0);
    cluster.start_coordinator(0);
    // A cordoned agent is listed as draining, not as connected.
    wait_until(
        "agent-0 back and agent-1 back, still cordoned",
        Duration::from_secs(60),
        || {
            let output = cluster.flotilla(&["cluster", "agents"]);
            let agents = String::from_utf8_lossy(&output.stdout);
            let line = |name: &str, state: &str| {
                agents
                    .lines()
                    .any(|line| line.contains(name) && line.contains(state))
            };
            line("agent-0", " connected ") && line("agent-1", "draining")
        },
    );
    let file = cluster.write_sweep("cordoned", 4, 4, "0.2");
    cluster.flotilla_ok(&["sweep", "submit", file.to_str().expect("utf-8")]);
    wait_until("sweep s1 to complete", Duration::from_secs(60), || {
        cluster.sweep_state("s1")["state"] == "Completed"
    });
    let results = cluster.expect_results("s1");
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
            trials(&cluster.expect_results("s2"))
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
        cluster.sweep_state("s2")["state"] == "Completed"
    });
    let results = cluster.expect_results("s2");
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

/// The spot path end to end: an LSTM trial runs on a spot agent that watches an IMDS
/// responder. A rebalance recommendation stops the agent taking trials while the trial goes
/// on; an interruption notice makes it checkpoint the trial at once (periodic checkpoints
/// are off, so that is the only checkpoint there is) and report it preempted. The trial
/// resumes on the on-demand agent from that checkpoint and succeeds, with no retry spent
/// although the sweep allows none.
#[test]
fn a_spot_interruption_notice_checkpoints_the_trial_which_resumes_elsewhere() {
    let imds = ImdsResponder::start();
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    let artifacts = cluster.path("artifacts");
    let artifacts = artifacts.to_str().expect("utf-8 path");
    let imds_url = imds.url();
    cluster.start_agent_with(
        "spot-0",
        1,
        &[
            "--artifacts",
            artifacts,
            "--device",
            "cpu",
            "--imds",
            &imds_url,
            "--imds-interval",
            "200ms",
        ],
    );
    let metrics_port = cluster.agent("spot-0").metrics_port();
    cluster.wait_for_agents(1, Duration::from_secs(60));
    let sweep = cluster.path("spot.toml");
    std::fs::write(
        &sweep,
        r#"
name = "spot"

[objective]
metric = "accuracy"
direction = "maximize"

[space.learning_rate]
type = "categorical"
choices = [0.003]

[budget]
max_trials = 1
max_parallel = 1

[retries]
max_retries = 0

[trial]
trainer = "lstm_classifier"

[trial.settings]
samples = 800
seq_len = 32
hidden_size = 32
num_heads = 2
epochs = 80
checkpoint_every = 0
"#,
    )
    .expect("write sweep file");
    cluster.flotilla_ok(&["sweep", "submit", sweep.to_str().expect("utf-8")]);
    // Progress comes from the spot agent's own metrics (the coordinator keeps a running
    // attempt's metrics out of its record until the attempt ends).
    wait_until("two epochs of s1-t0", Duration::from_secs(120), || {
        let trial = trials(&cluster.expect_results("s1")).remove(0);
        assert_ne!(trial["state"], "succeeded", "finished too soon: {trial}");
        scrape(metrics_port, "flotilla_agent_trial_step")
            .iter()
            .any(|(_, step)| *step >= 2.0)
    });
    cluster.start_agent_with(
        "on-demand-0",
        1,
        &["--artifacts", artifacts, "--device", "cpu"],
    );
    cluster.wait_for_agents(2, Duration::from_secs(60));

    // A rebalance recommendation: the spot agent takes nothing new, its trial goes on.
    imds.post_rebalance();
    wait_until(
        "the spot agent to report draining",
        Duration::from_secs(30),
        || {
            let agents = cluster.flotilla_ok(&["cluster", "agents"]);
            agents
                .lines()
                .any(|line| line.contains("spot-0") && line.contains("draining"))
        },
    );
    let trial = trials(&cluster.expect_results("s1")).remove(0);
    assert_eq!(trial["state"], "running", "{trial}");
    assert_eq!(trial["agent"], "spot-0", "{trial}");
    assert_eq!(trial["attempt"], 0, "{trial}");

    // The interruption notice: checkpoint now, resume elsewhere.
    imds.post_interruption();
    wait_until("sweep s1 to complete", Duration::from_secs(240), || {
        cluster.sweep_state("s1")["state"] == "Completed"
    });
    let trial = trials(&cluster.expect_results("s1")).remove(0);
    assert_eq!(trial["state"], "succeeded", "{trial}");
    assert_eq!(trial["agent"], "on-demand-0", "{trial}");
    assert_eq!(
        trial["failures"], 0,
        "a preemption spends no retry: {trial}"
    );
    assert_eq!(trial["attempt"], 1, "{trial}");
    assert_eq!(trial["checkpoint"]["epoch"], 80, "{trial}");
    let notices = scrape(metrics_port, "flotilla_agent_notices_total");
    for kind in ["rebalance", "interruption"] {
        assert!(
            notices
                .iter()
                .any(|(series, count)| series.contains(kind) && *count == 1.0),
            "{kind} counted once: {notices:?}"
        );
    }
    assert_eq!(
        scrape(
            metrics_port,
            "flotilla_agent_interruption_checkpoint_seconds_count"
        ),
        vec![(
            "flotilla_agent_interruption_checkpoint_seconds_count".to_string(),
            1.0
        )]
    );

    let spot_log = cluster.agent_log("spot-0");
    assert!(
        spot_log.contains("spot interruption notice"),
        "the spot agent did not act on the notice:\n{spot_log}"
    );
    assert!(
        spot_log.contains("every trial checkpointed and stopped"),
        "{spot_log}"
    );
    let log = cluster.agent_log("on-demand-0");
    let resume_line = log
        .lines()
        .find(|line| line.contains("resuming from") && line.contains("attempt 0"))
        .unwrap_or_else(|| panic!("on-demand-0 did not resume attempt 0's checkpoint:\n{log}"));
    assert!(resume_line.contains(artifacts), "{resume_line}");
    assert!(!resume_line.contains(", 0 epochs done"), "{resume_line}");

    // IMDSv2 only: a token first, and every read carried it.
    let requests = imds.requests();
    assert_eq!(
        requests
            .first()
            .map(|(method, path, _)| (method.as_str(), path.as_str())),
        Some(("PUT", "/latest/api/token")),
        "{requests:?}"
    );
    for (method, path, authorised) in &requests {
        if method == "GET" {
            assert!(authorised, "GET {path} without a session token");
        }
    }
    for path in [
        "/latest/meta-data/spot/instance-action",
        "/latest/meta-data/events/recommendations/rebalance",
    ] {
        assert!(
            requests.iter().any(|(_, polled, _)| polled == path),
            "{path} was never polled: {requests:?}"
        );
    }
}

/// Rotating the cluster CA without downtime, as docs/operations.md describes: every process
/// first trusts both CAs (`ca.pem` holds the two), then switches to certificates from the new
/// CA, then drops the old one. Processes restart one at a time between phases; agents
/// reconnect after each restart and a sweep submitted before the rotation completes with no
/// trial lost. At the end a certificate from the old CA is refused.
#[test]
fn the_cluster_ca_is_rotated_in_three_phases_without_losing_a_trial() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    cluster.start_agent("agent-0", 2);
    cluster.wait_for_agents(1, Duration::from_secs(60));
    let file = cluster.write_sweep("rotation", 12, 2, "2");
    cluster.flotilla_ok(&["sweep", "submit", file.to_str().expect("utf-8")]);

    let certs = cluster.path("certs");
    let old = cluster.path("old-ca");
    let new = cluster.path("new-ca");
    std::fs::create_dir_all(&old).expect("mkdir");
    // The cluster CA's files (etcd's own CA under certs/etcd is not part of this rotation).
    for name in std::fs::read_dir(&certs).expect("certs dir") {
        let path = name.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, old.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let output = Command::new(flotilla_bin())
        .args(["certs", "init", "--out"])
        .arg(&new)
        .output()
        .expect("certs init");
    assert!(output.status.success());
    let read = |path: PathBuf| std::fs::read_to_string(path).expect("read a PEM file");
    let bundle = read(old.join("ca.pem")) + &read(new.join("ca.pem"));
    // A client directory: a CA file and one client certificate.
    let base = cluster.dir.path().to_path_buf();
    let client_dir = |name: &str, ca: &str, leaf: &Path| {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("ca.pem"), ca).expect("write ca.pem");
        for file in ["client.pem", "client-key.pem"] {
            std::fs::copy(leaf.join(file), dir.join(file)).expect("copy");
        }
        dir
    };
    let restart_all = |cluster: &mut Cluster| {
        cluster.terminate_coordinator(0);
        cluster.start_coordinator(0);
        cluster.wait_for_agents(1, Duration::from_secs(60));
        let mut agent = cluster.agents.remove(0);
        if let Some(mut process) = agent.process.take() {
            process.terminate();
        }
        cluster.start_agent(&agent.name, 2);
        cluster.wait_for_agents(1, Duration::from_secs(60));
    };
    let works = |cluster: &Cluster, dir: &Path| {
        cluster
            .flotilla(&["sweep", "list", "--certs", dir.to_str().expect("utf-8")])
            .status
            .success()
    };

    // Phase 1: everyone trusts both CAs; certificates are still the old CA's.
    std::fs::write(certs.join("ca.pem"), &bundle).expect("write the bundle");
    restart_all(&mut cluster);
    let new_client = client_dir("new-client", &bundle, &new);
    assert!(
        works(&cluster, &new_client),
        "a new-CA client is trusted in phase 1"
    );

    // Phase 2: certificates from the new CA; old-CA clients still get in.
    for role in ["coordinator", "agent", "client", "admin", "router"] {
        for file in [format!("{role}.pem"), format!("{role}-key.pem")] {
            std::fs::copy(new.join(&file), certs.join(&file)).expect("copy a new certificate");
        }
    }
    restart_all(&mut cluster);
    let old_client = client_dir("old-client", &bundle, &old);
    assert!(
        works(&cluster, &old_client),
        "an old-CA client is trusted in phase 2"
    );

    // Phase 3: the old CA is dropped.
    std::fs::copy(new.join("ca.pem"), certs.join("ca.pem")).expect("copy the new CA");
    restart_all(&mut cluster);
    assert!(
        !works(&cluster, &old_client),
        "an old-CA client must be refused after the rotation"
    );
    assert!(works(&cluster, &certs), "the new certificates work");

    wait_until("the sweep to complete", Duration::from_secs(120), || {
        cluster.sweep_state("s1")["state"] == "Completed"
    });
    assert_all_succeeded_once(&cluster.expect_results("s1"), 12);
}

/// The permission table (docs/protocol.md, `ClientRequest::access`) is what a real
/// coordinator enforces: every kind of request, sent with a client, an admin and a router
/// certificate, is refused with `PermissionDenied` exactly when the table says so, and the
/// refusal names the request and the certificate's role. A router certificate's RouterSync
/// is answered with routes; a client certificate's is refused.
#[test]
fn every_request_is_answered_only_for_the_roles_the_table_names() {
    use flotilla_protocol::messages::{ApiErrorKind, ClientRequest, ClientResponse, Role};
    use flotilla_protocol::tls::Identity;

    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    cluster.wait_for_coordinator(Duration::from_secs(60));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let address = cluster.addresses().parse().expect("address");
    let mut checked = 0;
    for role in [Role::Client, Role::Admin, Role::Router] {
        let identity =
            Identity::load_from_dir(&cluster.path("certs"), role.name()).expect("certificate");
        runtime.block_on(async {
            let client = flotilla_sdk::Client::connect(address, &identity)
                .await
                .unwrap_or_else(|error| panic!("{} connects: {error}", role.name()));
            for request in ClientRequest::example_of_each_kind() {
                let name = request.name();
                let allowed = request.access().permits(role);
                // A permitted watch streams until the sweep changes: its first answer may
                // not come, which shows it was not refused.
                let answer =
                    tokio::time::timeout(Duration::from_secs(5), client.send(&request)).await;
                let denied = match &answer {
                    Ok(Ok(ClientResponse::Error(error))) => {
                        error.kind == ApiErrorKind::PermissionDenied
                    }
                    Ok(Ok(_)) => false,
                    Ok(Err(error)) => panic!("{name} as {}: {error}", role.name()),
                    Err(_) => {
                        assert!(
                            matches!(request, ClientRequest::WatchSweep(_)),
                            "{name} as {} was not answered",
                            role.name()
                        );
                        false
                    }
                };
                assert_eq!(
                    denied,
                    !allowed,
                    "{name} with {} certificate: {answer:?}",
                    role.with_article()
                );
                if let Ok(Ok(ClientResponse::Error(error))) = &answer
                    && denied
                {
                    assert!(
                        error.message.contains(name) && error.message.contains(role.name()),
                        "the refusal names the request and the role: {}",
                        error.message
                    );
                }
                if matches!(request, ClientRequest::RouterSync(_)) && allowed {
                    assert!(
                        matches!(answer, Ok(Ok(ClientResponse::Routes(_)))),
                        "a router's sync is answered with routes: {answer:?}"
                    );
                }
                checked += 1;
            }
        });
    }
    assert_eq!(checked, 3 * ClientRequest::example_of_each_kind().len());
    // The CLI shows the refusal in words.
    let output = cluster.flotilla(&["cluster", "agents", "--identity", "router"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin"), "{stderr}");
}

/// Per-agent certificates and revocation against a real coordinator: an agent certificate
/// bound to `gpu-2` cannot register as `gpu-1` (nor can the fleet-wide one, under
/// `--require-agent-ids`); revoking `gpu-1`'s certificate closes its open connection and
/// refuses it from then on, and a revoked client certificate is refused at the next
/// handshake while another client's still works.
#[test]
fn agents_are_bound_to_their_ids_and_revoked_certificates_are_dropped() {
    use flotilla_protocol::messages::{HelloReply, RefusalReason, Role};
    use flotilla_protocol::tls::Identity;

    let mut cluster = Cluster::standalone();
    let certs = cluster.path("certs");
    let certs_arg = certs.to_str().expect("utf-8").to_string();
    for id in ["gpu-1", "gpu-2"] {
        let issued =
            cluster.flotilla_ok(&["certs", "issue", "agent", "--id", id, "--certs", &certs_arg]);
        assert!(issued.contains("serial "), "{issued}");
    }
    let issued = cluster.flotilla_ok(&[
        "certs", "issue", "client", "--name", "alice", "--certs", &certs_arg,
    ]);
    assert!(issued.contains("alice.pem"), "{issued}");
    let shown = cluster.flotilla_ok(&[
        "certs",
        "show",
        certs.join("agent-gpu-2.pem").to_str().expect("utf-8"),
    ]);
    assert!(
        shown.contains("agent id  gpu-2") && shown.contains("revoked   no"),
        "{shown}"
    );

    cluster.start_coordinator_with(0, &["--require-agent-ids"], &[]);
    cluster.start_agent_with("gpu-1", 1, &["--identity", "agent-gpu-1"]);
    cluster.wait_for_agents(1, Duration::from_secs(60));

    // The CLI refuses a certificate bound to another id before connecting.
    let output = cluster.flotilla(&[
        "agent",
        "--coordinator",
        &cluster.addresses(),
        "--certs",
        &certs_arg,
        "--identity",
        "agent-gpu-2",
        "--id",
        "gpu-1",
        "--work-dir",
        cluster.path("liar").to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bound to agent gpu-2"), "{stderr}");

    // The coordinator refuses it too, for a peer that says hello as gpu-1 anyway, and the
    // fleet-wide certificate, which names no agent.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let address: std::net::SocketAddr = cluster.addresses().parse().expect("address");
    let hello_as = |identity: &str, name: &str| {
        let identity = Identity::load_from_dir(&certs, identity).expect("identity");
        runtime.block_on(hello(address, &identity, Role::Agent, name))
    };
    match hello_as("agent-gpu-2", "gpu-1") {
        Ok(HelloReply::Refused(refusal)) => {
            assert_eq!(refusal.reason, RefusalReason::RoleNotPermitted);
            assert!(
                refusal.message.contains("belongs to agent \"gpu-2\""),
                "{}",
                refusal.message
            );
        }
        other => panic!("gpu-2's certificate registering as gpu-1: {other:?}"),
    }
    match hello_as("agent", "gpu-3") {
        Ok(HelloReply::Refused(refusal)) => {
            assert!(
                refusal.message.contains("names no agent id"),
                "{}",
                refusal.message
            );
        }
        other => panic!("the fleet-wide certificate under --require-agent-ids: {other:?}"),
    }
    assert!(
        matches!(hello_as("agent-gpu-2", "gpu-2"), Ok(HelloReply::Welcome(_))),
        "gpu-2's certificate as gpu-2 is welcome"
    );

    // Revoke gpu-1 while it is connected, and alice's client certificate.
    assert!(
        cluster
            .flotilla(&["sweep", "list", "--identity", "alice"])
            .status
            .success()
    );
    let revoked = cluster.flotilla_ok(&[
        "certs",
        "revoke",
        certs.join("agent-gpu-1.pem").to_str().expect("utf-8"),
        certs.join("alice.pem").to_str().expect("utf-8"),
        "--certs",
        &certs_arg,
    ]);
    assert!(revoked.contains("revokes 2 certificate(s)"), "{revoked}");
    let gpu1_connected = |cluster: &Cluster| {
        let output = cluster.flotilla(&["cluster", "agents"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|line| line.contains("gpu-1") && line.contains(" connected "))
    };
    wait_until(
        "the revoked agent to be dropped",
        Duration::from_secs(30),
        || !gpu1_connected(&cluster),
    );
    // It keeps trying; it stays out.
    std::thread::sleep(Duration::from_secs(6));
    assert!(!gpu1_connected(&cluster), "a revoked agent got back in");
    let log = cluster.log("coordinator");
    assert!(log.contains("its certificate was revoked"), "{log}");
    let output = cluster.flotilla(&["sweep", "list", "--identity", "alice"]);
    assert!(
        !output.status.success(),
        "a revoked client certificate is refused"
    );
    assert!(
        cluster.flotilla(&["sweep", "list"]).status.success(),
        "other clients still work"
    );
    let shown = cluster.flotilla_ok(&[
        "certs",
        "show",
        certs.join("alice.pem").to_str().expect("utf-8"),
    ]);
    assert!(shown.contains("revoked   yes"), "{shown}");

    // A list that no longer parses is reported and ignored: the revocations stay in force.
    std::fs::write(certs.join("crl.pem"), "not a CRL\n").expect("spoil crl.pem");
    wait_until(
        "the coordinator to report the spoiled list",
        Duration::from_secs(30),
        || {
            cluster
                .log("coordinator")
                .contains("the revocation list changed but cannot be used")
        },
    );
    let output = cluster.flotilla(&["sweep", "list", "--identity", "alice"]);
    assert!(
        !output.status.success(),
        "a spoiled list must not let a revoked certificate back in"
    );
}

/// Opens a QUIC connection with `identity` and says hello as `role` named `name`; the answer.
async fn hello(
    address: std::net::SocketAddr,
    identity: &flotilla_protocol::tls::Identity,
    role: flotilla_protocol::messages::Role,
    name: &str,
) -> Result<flotilla_protocol::messages::HelloReply, String> {
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("bind")).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(
        flotilla_protocol::tls::client_config(identity).map_err(|e| e.to_string())?,
    );
    let connection = endpoint
        .connect(address, flotilla_protocol::tls::COORDINATOR_SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    flotilla_protocol::framing::write_frame(
        &mut send,
        &flotilla_protocol::handshake::hello(role, name),
    )
    .await
    .map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        flotilla_protocol::framing::read_frame::<_, flotilla_protocol::messages::HelloReply>(
            &mut recv,
        ),
    )
    .await
    .map_err(|_| "no reply".to_string())?
    .map_err(|e| e.to_string())?
    .ok_or_else(|| "closed".to_string())?;
    connection.close(0u32.into(), b"done");
    Ok(reply)
}
