//! From a sweep's winner to production, end to end: a real coordinator, two agents that
//! train and serve (`--serve`), a real `flotilla router`, and a load generator that sends
//! labelled traffic through the router and returns the labels as feedback.
//!
//! 1. A sweep trains two LSTM classifiers; trial 0 becomes `churn@1.0.0` in production, the
//!    winner `churn@1.1.0` is rolled out as a canary and promoted to 100% by the controller,
//!    across a coordinator crash and restart in its last stage.
//! 2. A deliberately degraded model (one epoch at a learning rate of 1e-7: an untrained
//!    network) is rolled out as `churn@1.2.0` and rolled back automatically on accuracy;
//!    afterwards the router sends every request to the production version.
//! 3. A registered artifact whose bytes changed in the store is refused at load: the agents
//!    report it failed with a digest mismatch and the rollout of it is rolled back.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use flotilla_harness::*;

// Wide margins: the test is about the loop (stages, promotion, rollback, failover), and its
// agents share two cores with the rest of the suite, so latency is noisy.
const POLICY: &str = r#"
stages = [
    { weight = 0.2, min_duration = "5s", min_requests = 250 },
    { weight = 0.5, min_duration = "3s", min_requests = 40 },
]
false_rollback = 0.01
false_promotion = 0.05
error_margin = 0.05
latency_margin = 1.0
accuracy_margin = 0.05
min_samples = 40
max_stage_duration = "3m"
"#;

fn lstm_sweep(name: &str, rates: &str, epochs: u32) -> String {
    format!(
        r#"
name = "{name}"

[objective]
metric = "accuracy"
direction = "maximize"

[space.learning_rate]
type = "categorical"
choices = [{rates}]

[algorithm]
name = "grid"

[budget]
max_trials = 2
max_parallel = 2

[trial]
trainer = "lstm_classifier"

[trial.settings]
samples = 600
seq_len = 24
hidden_size = 24
num_heads = 2
epochs = {epochs}
checkpoint_every = 0
"#
    )
}

/// One HTTP/1.1 exchange on a fresh connection: (status, headers lowercased, body). Status 0
/// when the connection failed.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, BTreeMap<String, String>, String) {
    http_with(port, method, path, body, "")
}

/// curl (an outside HTTPS client) against an agent's serving endpoint: `GET /v1/models` at
/// `url` with `args`; the HTTP status (0 when no HTTP answer came: a refused handshake) and
/// the body.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let output = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Who may call an agent's serving endpoint: routers (and admins) over mutual TLS; plain
/// HTTP, TLS without a certificate, another CA's certificate and a client certificate are
/// refused.
fn check_serving_endpoint_trust(cluster: &Cluster, port: u16) {
    let certs = cluster.path("certs");
    let https = format!("https://127.0.0.1:{port}/v1/models");
    // curl presenting DIR/STEM.pem and its key.
    let with = |dir: &std::path::Path, stem: &str| {
        let cert = dir.join(format!("{stem}.pem")).display().to_string();
        let key = dir.join(format!("{stem}-key.pem")).display().to_string();
        curl(&https, &["-k", "--cert", &cert, "--key", &key])
    };
    let (status, body) = curl(&format!("http://127.0.0.1:{port}/v1/models"), &[]);
    assert_eq!(status, 0, "plain HTTP was answered: {body}");
    let (status, body) = curl(&https, &["-k"]);
    assert_eq!(
        status, 0,
        "TLS without a client certificate was answered: {body}"
    );
    let other = cluster.path("other-ca");
    let output = std::process::Command::new(flotilla_bin())
        .args(["certs", "init", "--out"])
        .arg(&other)
        .output()
        .expect("certs init");
    assert!(output.status.success());
    let (status, body) = with(&other, "router");
    assert_eq!(
        status, 0,
        "another CA's router certificate was answered: {body}"
    );
    let (status, body) = with(&certs, "client");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("router and admin certificates, not a client"),
        "{body}"
    );
    let (status, body) = with(&certs, "router");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"models\""), "{body}");

    // A second router's certificate, revoked while it holds a kept-alive connection: the
    // agent reloads crl.pem, refuses the next request on that connection and every new
    // handshake with it, and the first router's certificate still works.
    cluster.flotilla_ok(&["certs", "issue", "router", "--name", "router-2"]);
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let mut kept = cluster.serving_stream(port, "router-2");
    kept.write_all(request.as_bytes()).expect("send");
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).expect("an answer");
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut rest = vec![0u8; 4096];
    let _ = kept.sock.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = kept.read(&mut rest);
    let revoked = certs.join("router-2.pem").display().to_string();
    cluster.flotilla_ok(&["certs", "revoke", &revoked]);
    wait_until(
        "the agent to refuse the revoked router certificate",
        Duration::from_secs(15),
        || with(&certs, "router-2").0 == 0,
    );
    let _ = kept.sock.set_read_timeout(Some(Duration::from_secs(5)));
    let answered = kept
        .write_all(request.as_bytes())
        .and_then(|()| kept.read(&mut first))
        .is_ok_and(|read| read > 0);
    assert!(
        !answered,
        "a revoked certificate's open connection was still answered"
    );
    let (status, body) = with(&certs, "router");
    assert_eq!(status, 200, "{body}");
}

/// Sends labelled traffic through the router until stopped, counting answers per version.
struct Load {
    stop: Arc<AtomicBool>,
    versions: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Answers other than 200, by status.
    failures: Arc<Mutex<BTreeMap<u16, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `feedback_token`: a bearer token with the feedback scope.
    fn start(router: u16, feedback_token: &str) -> Load {
        let authorization = format!("Authorization: Bearer {feedback_token}\r\n");
        let data = flotilla_train::data::SyntheticSeries {
            samples: 2000,
            seq_len: 24,
            features: 4,
            num_classes: 2,
            minority_fraction: 0.25,
            seed: 991,
        }
        .generate();
        let data = Arc::new(data);
        let stop = Arc::new(AtomicBool::new(false));
        let versions = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(BTreeMap::new()));
        let threads = (0..2)
            .map(|thread| {
                let (data, stop, versions) = (data.clone(), stop.clone(), versions.clone());
                let failures = failures.clone();
                let authorization = authorization.clone();
                std::thread::spawn(move || {
                    let width = data.seq_len * data.features;
                    let mut next = thread * 1000;
                    // Users, drawn independently of the rows sent: a key tied to the rows
                    // would give each side its own slice of the data (and class balance).
                    let mut user: u64 = 0x9e37_79b9 + thread as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let rows: Vec<usize> = (0..4).map(|k| (next + k) % data.y.len()).collect();
                        next += 4;
                        user = user
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let instances: Vec<&[f32]> = rows
                            .iter()
                            .map(|&row| &data.x[row * width..(row + 1) * width])
                            .collect();
                        let body = serde_json::json!({
                            "model": "churn",
                            "key": format!("user-{}", (user >> 33) % 997),
                            "instances": instances,
                        })
                        .to_string();
                        let (status, headers, _) = http(router, "POST", "/v1/predict", &body);
                        if status != 200 {
                            *failures
                                .lock()
                                .expect("failures")
                                .entry(status)
                                .or_default() += 1;
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        if let Some(version) = headers.get("x-flotilla-version") {
                            *versions
                                .lock()
                                .expect("versions")
                                .entry(version.clone())
                                .or_default() += 1;
                        }
                        if let Some(id) = headers.get("x-flotilla-request-id") {
                            let labels: Vec<usize> = rows.iter().map(|&row| data.y[row]).collect();
                            let feedback =
                                serde_json::json!({ "request_id": id, "labels": labels })
                                    .to_string();
                            let (status, _, _) = http_with(
                                router,
                                "POST",
                                "/v1/feedback",
                                &feedback,
                                &authorization,
                            );
                            if status != 200 {
                                // Feedback failures, apart from predictions' (1000 + status).
                                *failures
                                    .lock()
                                    .expect("failures")
                                    .entry(1000 + status)
                                    .or_default() += 1;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            versions,
            failures,
            threads,
        }
    }

    /// Answers per version since the last call.
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.versions.lock().expect("versions"))
    }

    /// Answers other than 200 since the last call, by status.
    fn take_failures(&self) -> BTreeMap<u16, u64> {
        std::mem::take(&mut *self.failures.lock().expect("failures"))
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("load thread");
        }
    }
}

fn rollout(cluster: &Cluster) -> Value {
    let text = cluster.flotilla_ok(&["rollout", "status", "churn", "--json"]);
    let rollouts: Value = serde_json::from_str(&text).expect("rollouts JSON");
    rollouts[0].clone()
}

/// Waits for the newest rollout of `churn` to end and returns it.
fn finished_rollout(cluster: &Cluster) -> Value {
    let mut last = Value::Null;
    wait_until("the rollout to end", Duration::from_secs(240), || {
        last = rollout(cluster);
        last["state"] != "Running" && last["state"] != "Paused"
    });
    last
}

fn versions(cluster: &Cluster) -> BTreeMap<String, String> {
    let text = cluster.flotilla_ok(&["model", "list", "churn", "--json"]);
    let versions: Value = serde_json::from_str(&text).expect("models JSON");
    versions
        .as_array()
        .expect("array")
        .iter()
        .map(|version| {
            let v = &version["version"];
            (
                format!("{}.{}.{}", v["major"], v["minor"], v["patch"]),
                version["stage"].as_str().expect("stage").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_sweep_winner_is_promoted_behind_the_router_and_a_degraded_canary_rolled_back() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    let serving_ports: Vec<u16> = ["serve-0", "serve-1"]
        .into_iter()
        .map(|name| cluster.start_serving_agent(name, 2))
        .collect();
    cluster.wait_for_agents(2, Duration::from_secs(60));
    check_serving_endpoint_trust(&cluster, serving_ports[0]);
    let (_router, router_port) = cluster.start_router(&[]);

    // Train: two reasonable models, and a degraded one.
    let good = cluster.path("churn.toml");
    std::fs::write(&good, lstm_sweep("churn", "0.003, 0.01", 8)).expect("write sweep");
    cluster.flotilla_ok(&["sweep", "submit", good.to_str().expect("utf-8"), "--watch"]);
    let bad = cluster.path("degraded.toml");
    std::fs::write(&bad, lstm_sweep("degraded", "0.0000001", 1)).expect("write sweep");
    cluster.flotilla_ok(&["sweep", "submit", bad.to_str().expect("utf-8"), "--watch"]);
    let policy = cluster.path("policy.toml");
    std::fs::write(&policy, POLICY).expect("write policy");
    let policy = policy.to_str().expect("utf-8");

    // Register: trial 0 in production, the winner as a staging version.
    let registered = cluster.flotilla_ok(&[
        "model",
        "register",
        "--from",
        "s1/0",
        "--name",
        "churn",
        "--stage",
        "production",
    ]);
    assert!(
        registered.contains("churn@1.0.0 (production)"),
        "{registered}"
    );
    let registered = cluster.flotilla_ok(&["model", "register", "--from", "s1", "--name", "churn"]);
    assert!(registered.contains("churn@1.1.0 (staging)"), "{registered}");
    let shown = cluster.flotilla_ok(&["model", "show", "churn@1.1.0"]);
    assert!(
        shown.contains("sha256:") && shown.contains("sweep s1 'churn'"),
        "{shown}"
    );
    // Versions are immutable.
    let again = cluster.flotilla(&[
        "model",
        "register",
        "--from",
        "s1",
        "--name",
        "churn",
        "--version",
        "1.1.0",
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already registered"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Labels need a token with the feedback scope, made while the router runs (it rereads
    // its token file): none, an unknown one or one without the scope is refused.
    let token = |name: &str, scope: &str| {
        let certs = cluster.path("certs");
        let output = cluster.flotilla_ok(&[
            "certs",
            "token",
            "create",
            name,
            "--scope",
            scope,
            "--certs",
            certs.to_str().expect("utf-8"),
        ]);
        output.trim().to_string()
    };
    let feedback_token = token("labeller", "feedback");
    let predict_token = token("reader", "predict");
    let probe = r#"{"request_id": "none", "labels": [1]}"#;
    let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n");
    wait_until(
        "the router to take the new feedback token",
        Duration::from_secs(30),
        || {
            http_with(
                router_port,
                "POST",
                "/v1/feedback",
                probe,
                &bearer(&feedback_token),
            )
            .0 == 404
        },
    );
    let (status, _, body) = http(router_port, "POST", "/v1/feedback", probe);
    assert_eq!(status, 401, "feedback without a token: {body}");
    assert!(body.contains("bearer token"), "{body}");
    let (status, _, body) = http_with(
        router_port,
        "POST",
        "/v1/feedback",
        probe,
        &bearer("flt_forged"),
    );
    assert_eq!(status, 401, "feedback with an unknown token: {body}");
    let (status, _, body) = http_with(
        router_port,
        "POST",
        "/v1/feedback",
        probe,
        &bearer(&predict_token),
    );
    assert_eq!(status, 403, "feedback with a predict-only token: {body}");

    // The router serves the production version once an agent has loaded it.
    let load = Load::start(router_port, &feedback_token);
    wait_until(
        "the router to serve churn@1.0.0",
        Duration::from_secs(60),
        || load.take().contains_key("1.0.0"),
    );
    // A router started with --gate-predictions wants the predict scope for predictions and
    // routes as well.
    let (gated_router, gated_port) = cluster.start_router(&["--gate-predictions"]);
    wait_until(
        "the gated router to answer its routes",
        Duration::from_secs(30),
        || http_with(gated_port, "GET", "/v1/routes", "", &bearer(&predict_token)).0 == 200,
    );
    for path in ["/v1/routes", "/v1/predict"] {
        let method = if path == "/v1/routes" { "GET" } else { "POST" };
        let (status, _, body) = http(gated_port, method, path, "{}");
        assert_eq!(status, 401, "{path} without a token: {body}");
        let (status, _, body) = http_with(gated_port, method, path, "{}", &bearer(&feedback_token));
        assert_eq!(status, 403, "{path} with a feedback-only token: {body}");
    }
    let (status, _, body) = http_with(gated_port, "GET", "/v1/routes", "", &bearer(&predict_token));
    assert!(status == 200 && body.contains("churn"), "{status} {body}");
    // Past the gate, a body that is no prediction request is the client's error.
    let (status, _, body) = http_with(
        gated_port,
        "POST",
        "/v1/predict",
        "{}",
        &bearer(&predict_token),
    );
    assert_eq!(status, 400, "{body}");
    drop(gated_router);

    // From here on every request is answered: through stage changes, the coordinator's
    // restart, a promotion and two rollbacks (routers keep their routes while the coordinator
    // is away, and versions leaving service stay loaded until routers know).
    load.take_failures();

    // 1. The winner as a canary: promoted through every stage to 100%, with the coordinator
    //    killed and restarted in the middle (the last stage lasts long enough for that); the
    //    restarted leader carries on from the stored rollout.
    let slow_policy = cluster.path("slow-policy.toml");
    std::fs::write(
        &slow_policy,
        POLICY.replace(
            r#"{ weight = 0.5, min_duration = "3s""#,
            r#"{ weight = 0.5, min_duration = "25s""#,
        ),
    )
    .expect("write policy");
    let slow_policy = slow_policy.to_str().expect("utf-8");
    cluster.flotilla_ok(&["rollout", "start", "churn@1.1.0", "--policy", slow_policy]);
    wait_until(
        "the canary to reach the last stage",
        Duration::from_secs(120),
        || {
            let current = rollout(&cluster);
            assert_eq!(current["state"], "Running", "{current:#}");
            current["stage"] == 1
        },
    );
    cluster.kill_coordinator(0);
    cluster.start_coordinator(0);
    let promoted = finished_rollout(&cluster);
    assert_eq!(promoted["state"], "Promoted", "{promoted:#}");
    let stages: Vec<u64> = promoted["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .filter(|d| d["decision"]["verdict"] != "hold")
        .map(|d| d["stage"].as_u64().expect("stage"))
        .collect();
    assert_eq!(
        stages,
        [0, 1],
        "advanced from stage 0, promoted from 1: {promoted:#}"
    );
    assert!(promoted["traffic"]["canary"]["labelled"].as_u64() > Some(0));
    let stages = versions(&cluster);
    assert_eq!(stages["1.0.0"], "Archived");
    assert_eq!(stages["1.1.0"], "Production");
    load.take();
    wait_until(
        "all traffic on churn@1.1.0",
        Duration::from_secs(30),
        || {
            let seen = load.take();
            seen.get("1.1.0").is_some_and(|n| *n >= 20) && seen.len() == 1
        },
    );

    // 2. The degraded model: rolled back on accuracy, everything back on 1.1.0.
    let registered = cluster.flotilla_ok(&["model", "register", "--from", "s2", "--name", "churn"]);
    assert!(registered.contains("churn@1.2.0"), "{registered}");
    cluster.flotilla_ok(&["rollout", "start", "churn@1.2.0", "--policy", policy]);
    let rolled_back = finished_rollout(&cluster);
    assert_eq!(rolled_back["state"], "RolledBack", "{rolled_back:#}");
    let last = rolled_back["decisions"]
        .as_array()
        .and_then(|d| d.last())
        .expect("a decision")
        .clone();
    assert_eq!(
        last["decision"]["verdict"],
        serde_json::json!({ "rollback": { "metric": "accuracy" } }),
        "{rolled_back:#}"
    );
    // Before any promotion; usually at the first stage, but the degraded model is only
    // about ten points worse and with the machine loaded the first stage can end before its
    // labels suffice (the earliest-stage property is tested on simulated traffic).
    assert!(
        last["stage"].as_u64() < Some(2),
        "caught before 100%: {rolled_back:#}"
    );
    assert_eq!(rolled_back["canary_weight"], 0.0);
    let stages = versions(&cluster);
    assert_eq!(stages["1.1.0"], "Production");
    assert_eq!(stages["1.2.0"], "Staging");
    load.take();
    wait_until(
        "all traffic back on churn@1.1.0",
        Duration::from_secs(30),
        || {
            let seen = load.take();
            seen.get("1.1.0").is_some_and(|n| *n >= 20) && seen.len() == 1
        },
    );

    // 3. A corrupted artifact: refused at load, the rollout rolled back.
    let registered =
        cluster.flotilla_ok(&["model", "register", "--from", "s1/1", "--name", "churn"]);
    assert!(registered.contains("churn@1.3.0"), "{registered}");
    let artifact = cluster.path("artifacts/models/churn/1.3.0/model.ckpt");
    let mut bytes = std::fs::read(&artifact).expect("read the sealed artifact");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&artifact, bytes).expect("corrupt the artifact");
    cluster.flotilla_ok(&["rollout", "start", "churn@1.3.0", "--policy", policy]);
    let refused = finished_rollout(&cluster);
    assert_eq!(refused["state"], "RolledBack", "{refused:#}");
    let reason = refused["decisions"]
        .as_array()
        .and_then(|d| d.last())
        .map(|d| d["decision"]["reason"].to_string())
        .expect("a decision");
    assert!(
        reason.contains("SHA-256") && reason.contains("refusing to load"),
        "{reason}"
    );
    let log = cluster.agent_log("serve-0");
    assert!(log.contains("is not the one recorded"), "{log}");
    assert_eq!(
        load.take_failures(),
        BTreeMap::new(),
        "requests that were not answered with 200"
    );
    load.stop();
    // What the controller decided, with its evidence (shown when the test is run with
    // --nocapture).
    eprintln!("{}", cluster.flotilla_ok(&["rollout", "status", "churn"]));
}
