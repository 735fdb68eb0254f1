//! A sweep's own serving program behind the router and the canary, end to end: a real
//! coordinator, two serving agents, a real `flotilla router`, and command trials
//! (`examples/trials/softmax.py`) whose checkpoints are served by the sweep's `[serving]`
//! program (a copy of `examples/serving/softmax_serve.py`, so this test can find its
//! processes).
//!
//! 1. The winner-to-be goes to production: one replica (`replicas = 1`) on one agent,
//!    predictions through the router are the program's own output (KServe v1), on both the
//!    router's `/v1/predict` and `/v1/models/<name>:predict`.
//! 2. An equal version goes out as a canary and is promoted; a deliberately worse one (trained
//!    on random labels) is rolled back on accuracy, judged from feedback.
//! 3. A program killed from outside is restarted (counted) and serves again.
//! 4. A program that crashes on every start, one that never passes its health check, and a
//!    corrupted artifact are each refused before any traffic, with the reason shown by
//!    `flotilla model show`; the corrupted one never starts its program.
//! 5. The agent holding a replica is killed: the replica is placed on the other agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use flotilla_harness::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const POLICY: &str = r#"
stages = [
    { weight = 0.3, min_duration = "3s", min_requests = 60 },
    { weight = 0.5, min_duration = "3s", min_requests = 60 },
]
false_rollback = 0.01
false_promotion = 0.05
error_margin = 0.05
latency_margin = 1.5
accuracy_margin = 0.08
min_samples = 40
max_stage_duration = "3m"
"#;

/// A softmax sweep: `lrs` × `epochs` at `label_noise`, grid, served by `serving` (a TOML
/// table body).
fn sweep(name: &str, lrs: &str, epochs: u32, label_noise: f64, serving: &str) -> String {
    let trial = repo_root().join("examples/trials/softmax.py");
    format!(
        r#"
name = "{name}"
[objective]
metric = "accuracy"
direction = "maximize"
[space.lr]
type = "categorical"
choices = [{lrs}]
[space.epochs]
type = "categorical"
choices = [{epochs}]
[space.label_noise]
type = "categorical"
choices = [{label_noise:?}]
[algorithm]
name = "grid"
[budget]
max_trials = 2
max_parallel = 2
[trial]
command = "python3"
args = ["{trial}"]
metrics = ["val_loss", "accuracy", "epoch"]
timeout = "2m"
[serving]
{serving}
"#,
        trial = trial.display()
    )
}

/// One HTTP/1.1 exchange on a fresh connection (support's `http_with`).
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, BTreeMap<String, String>, String) {
    http_with(port, method, path, body, headers)
}

/// The softmax example's validation rows and labels, from its own data generator.
fn rows() -> Vec<(Vec<f64>, u64)> {
    let output = std::process::Command::new("python3")
        .current_dir(repo_root())
        .args([
            "-c",
            "import sys, json; sys.path.insert(0, 'examples/trials'); import softmax; print(json.dumps(softmax.make_data()[1]))",
        ])
        .output()
        .expect("python3");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("rows")
}

/// Labelled traffic through the router, feedback returned, answers counted per version.
struct Load {
    stop: Arc<AtomicBool>,
    versions: Arc<Mutex<BTreeMap<String, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Traffic of the softmax example's validation rows, labelled with their classes.
    fn start(router: u16, model: &str, token: &str) -> Load {
        let rows = rows()
            .into_iter()
            .map(|(x, y)| (serde_json::json!(x), serde_json::json!(y)))
            .collect();
        Load::of(router, model, token, rows)
    }

    /// Traffic of `data` (an instance and its label each), four instances a request, each
    /// answered request's labels sent back as feedback.
    fn of(router: u16, model: &str, token: &str, data: Vec<(Value, Value)>) -> Load {
        let data = Arc::new(data);
        let stop = Arc::new(AtomicBool::new(false));
        let versions = Arc::new(Mutex::new(BTreeMap::new()));
        let threads = (0..2)
            .map(|thread| {
                let (data, stop, versions) = (data.clone(), stop.clone(), versions.clone());
                let authorization = format!("Authorization: Bearer {token}\r\n");
                let model = model.to_string();
                std::thread::spawn(move || {
                    let mut next = thread * 150;
                    let mut user: u64 = 0x9e37_79b9 + thread as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let picked: Vec<&(Value, Value)> =
                            (0..4).map(|k| &data[(next + k) % data.len()]).collect();
                        next += 4;
                        user = user
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let instances: Vec<&Value> = picked.iter().map(|(x, _)| x).collect();
                        let body = serde_json::json!({
                            "model": model,
                            "key": format!("user-{}", (user >> 33) % 997),
                            "instances": instances,
                        })
                        .to_string();
                        let (status, head, _) = http(router, "POST", "/v1/predict", &body, "");
                        if status != 200 {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        if let Some(version) = head.get("x-flotilla-version").cloned() {
                            *versions
                                .lock()
                                .expect("versions")
                                .entry(version)
                                .or_default() += 1;
                        }
                        if let Some(id) = head.get("x-flotilla-request-id").cloned() {
                            let labels: Vec<&Value> = picked.iter().map(|(_, y)| y).collect();
                            let feedback =
                                serde_json::json!({ "request_id": id, "labels": labels })
                                    .to_string();
                            http(router, "POST", "/v1/feedback", &feedback, &authorization);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            versions,
            threads,
        }
    }

    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.versions.lock().expect("versions"))
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("load thread");
        }
    }
}

/// `flotilla model show NAME@VERSION --json`.
fn show(cluster: &Cluster, model: &str) -> Value {
    serde_json::from_str(&cluster.flotilla_ok(&["model", "show", model, "--json"]))
        .expect("model JSON")
}

/// The (agent, state) of each placement of a version.
fn placements(cluster: &Cluster, model: &str) -> Vec<(String, Value)> {
    show(cluster, model)["placements"]
        .as_array()
        .expect("placements")
        .iter()
        .map(|placement| {
            (
                placement["agent"].as_str().expect("agent").to_string(),
                placement["state"].clone(),
            )
        })
        .collect()
}

fn is_ready(state: &Value) -> bool {
    state == "Ready"
}

/// Waits until every placement of `model` is ready, and returns the agents.
fn wait_ready(cluster: &Cluster, model: &str) -> Vec<String> {
    let mut last = Vec::new();
    wait_until(
        &format!("{model} to be ready"),
        Duration::from_secs(90),
        || {
            last = placements(cluster, model);
            !last.is_empty() && last.iter().all(|(_, state)| is_ready(state))
        },
    );
    last.into_iter().map(|(agent, _)| agent).collect()
}

/// Waits until a placement of `model` reports failed, and returns its message.
fn wait_failed(cluster: &Cluster, model: &str) -> String {
    let mut message = String::new();
    wait_until(
        &format!("{model} to be reported failed"),
        Duration::from_secs(90),
        || {
            message = placements(cluster, model)
                .iter()
                .find_map(|(_, state)| state["Failed"].as_str().map(str::to_string))
                .unwrap_or_default();
            !message.is_empty()
        },
    );
    message
}

/// Waits for the newest rollout of `model` to end and returns it.
fn finished_rollout(cluster: &Cluster, model: &str) -> Value {
    let mut last = Value::Null;
    wait_until("the rollout to end", Duration::from_secs(240), || {
        let text = cluster.flotilla_ok(&["rollout", "status", model, "--json"]);
        last = serde_json::from_str::<Value>(&text).expect("rollouts")[0].clone();
        last["state"] != "Running" && last["state"] != "Paused"
    });
    last
}

/// A feedback token, once the router takes it (it reads the token file every second).
fn feedback_token(cluster: &Cluster, router: u16) -> String {
    let certs = cluster.path("certs");
    let token = cluster
        .flotilla_ok(&[
            "certs",
            "token",
            "create",
            "labeller",
            "--scope",
            "feedback",
            "--certs",
            certs.to_str().expect("utf-8"),
        ])
        .trim()
        .to_string();
    let probe = r#"{"request_id": "none", "labels": [1]}"#;
    let bearer = format!("Authorization: Bearer {token}\r\n");
    wait_until(
        "the router to take the token",
        Duration::from_secs(30),
        || http(router, "POST", "/v1/feedback", probe, &bearer).0 == 404,
    );
    token
}

fn register(cluster: &Cluster, from: &str, name: &str, stage: &str) -> String {
    cluster.flotilla_ok(&[
        "model", "register", "--from", from, "--name", name, "--stage", stage,
    ])
}

fn submit(cluster: &Cluster, file: &str, text: &str) {
    let path = cluster.path(file);
    std::fs::write(&path, text).expect("write sweep");
    cluster.flotilla_ok(&["sweep", "submit", path.to_str().expect("utf-8"), "--watch"]);
}

#[test]
fn a_sweeps_own_serving_program_is_served_canaried_restarted_refused_and_replaced() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    cluster.start_serving_agent("serve-0", 2);
    cluster.start_serving_agent("serve-1", 2);
    cluster.wait_for_agents(2, Duration::from_secs(60));
    let (_router, router) = cluster.start_router(&[]);

    // The serving program, copied where only this test's processes run it.
    let program = cluster.path("softmax_serve.py");
    std::fs::copy(
        repo_root().join("examples/serving/softmax_serve.py"),
        &program,
    )
    .expect("copy the serving program");
    let python = repo_root().join("python");
    let serving = format!(
        "command = \"python3\"\nargs = [\"{}\"]\nenv = {{ PYTHONPATH = \"{}\" }}\nready_timeout = \"20s\"\nreplicas = 1\n",
        program.display(),
        python.display()
    );
    submit(
        &cluster,
        "good.toml",
        &sweep("good", "0.3, 0.25", 8, 0.0, &serving),
    );
    submit(
        &cluster,
        "worse.toml",
        &sweep("worse", "0.3, 0.25", 8, 1.0, &serving),
    );
    let crash = "command = \"sh\"\nargs = [\"-c\", \"echo cannot load the model >&2; exit 3\"]\n";
    submit(
        &cluster,
        "crash.toml",
        &sweep("crash", "0.3, 0.25", 2, 0.0, crash),
    );
    let hang = "command = \"sleep\"\nargs = [\"617\"]\nready_timeout = \"2s\"\n";
    submit(
        &cluster,
        "hang.toml",
        &sweep("hang", "0.3, 0.25", 2, 0.0, hang),
    );

    // 1. Production: one replica, the program's own answers through the router.
    let registered = register(&cluster, "s1/0", "demo", "production");
    assert!(
        registered.contains("demo@1.0.0 (production)"),
        "{registered}"
    );
    let agents = wait_ready(&cluster, "demo@1.0.0");
    assert_eq!(agents.len(), 1, "replicas = 1: {agents:?}");
    let shown = cluster.flotilla_ok(&["model", "show", "demo@1.0.0"]);
    assert!(
        shown.contains("served by: python3") && shown.contains("runs on:"),
        "{shown}"
    );
    let data = rows();
    let instances: Vec<&Vec<f64>> = data.iter().take(3).map(|(x, _)| x).collect();
    let body = serde_json::json!({ "model": "demo", "instances": instances }).to_string();
    // Routers learn of the ready replica at their next report (every second).
    let mut answered = (0, BTreeMap::new(), String::new());
    wait_until("the router to route demo", Duration::from_secs(30), || {
        answered = http(router, "POST", "/v1/predict", &body, "");
        answered.0 == 200
    });
    let (_, head, answer) = answered;
    assert_eq!(
        head.get("x-flotilla-version").cloned().as_deref(),
        Some("1.0.0")
    );
    let answer: Value = serde_json::from_str(&answer).expect("JSON");
    let predictions = answer["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 3, "{answer}");
    assert!(
        predictions
            .iter()
            .all(|p| p.as_u64().is_some_and(|c| c < 3)),
        "the program's classes: {answer}"
    );
    let kserve = serde_json::json!({ "instances": instances }).to_string();
    let (status, _, answer) = http(router, "POST", "/v1/models/demo:predict", &kserve, "");
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"predictions\""), "{answer}");
    // Inputs the program cannot take: its 422, passed through.
    let bad = serde_json::json!({ "model": "demo", "instances": [[1.0, 2.0]] }).to_string();
    let (status, _, answer) = http(router, "POST", "/v1/predict", &bad, "");
    assert_eq!(status, 422, "{answer}");

    // 2. Canaries, judged on accuracy from feedback.
    let token = feedback_token(&cluster, router);
    let policy = cluster.path("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let policy = policy.to_str().expect("utf-8");
    let load = Load::start(router, "demo", &token);
    register(&cluster, "s1/1", "demo", "staging");
    cluster.flotilla_ok(&["rollout", "start", "demo@1.1.0", "--policy", policy]);
    let promoted = finished_rollout(&cluster, "demo");
    assert_eq!(promoted["state"], "Promoted", "{promoted:#}");
    register(&cluster, "s2/0", "demo", "staging");
    cluster.flotilla_ok(&["rollout", "start", "demo@1.2.0", "--policy", policy]);
    let rolled_back = finished_rollout(&cluster, "demo");
    assert_eq!(rolled_back["state"], "RolledBack", "{rolled_back:#}");
    let status = cluster.flotilla_ok(&["rollout", "status", "demo"]);
    assert!(status.contains("accuracy"), "{status}");
    // Routers follow the rollback at their next report (within a second).
    std::thread::sleep(Duration::from_secs(2));
    load.take();
    std::thread::sleep(Duration::from_secs(3));
    let after = load.take();
    assert!(
        after.keys().all(|version| version == "1.1.0"),
        "after the rollback only production answers: {after:?}"
    );
    load.stop();

    // 3. A ready program killed from outside is restarted and serves again (once the
    // rolled-back version's grace has passed, one replica of demo@1.1.0 is all that runs).
    let mut before = Vec::new();
    wait_until(
        "only demo@1.1.0's program to run",
        Duration::from_secs(30),
        || {
            before = processes_with(program.to_str().expect("utf-8"));
            before.len() == 1
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the serving program");
    wait_until("the program to restart", Duration::from_secs(60), || {
        let now = processes_with(program.to_str().expect("utf-8"));
        now.len() == 1 && now[0] != before[0]
    });
    let agents = wait_ready(&cluster, "demo@1.1.0");
    let (status, _, answer) = http(router, "POST", "/v1/predict", &body, "");
    assert_eq!(status, 200, "after the restart: {answer}");
    let log = cluster.agent_log(&agents[0]);
    assert!(log.contains("restarting the serving program"), "{log}");

    // 4. Refused before any traffic: a crash on every start, a hang, a corrupted artifact.
    register(&cluster, "s3", "crashy", "production");
    let message = wait_failed(&cluster, "crashy@1.0.0");
    assert!(
        message.contains("exited with status 3")
            && message.contains("cannot load the model")
            && message.contains("each of 3 starts"),
        "{message}"
    );
    // The router learns of the new production model at its next sync (every second).
    wait_until(
        "the router to route crashy",
        Duration::from_secs(30),
        || {
            http(router, "GET", "/v1/routes", "", "")
                .2
                .contains("\"crashy\"")
        },
    );
    let crashy = serde_json::json!({ "model": "crashy", "instances": instances }).to_string();
    let (status, _, answer) = http(router, "POST", "/v1/predict", &crashy, "");
    assert_eq!(status, 503, "no ready endpoint: {answer}");

    register(&cluster, "s4", "hangs", "production");
    let message = wait_failed(&cluster, "hangs@1.0.0");
    assert!(
        message.contains("ready_timeout of 2s") && message.contains("stopped"),
        "{message}"
    );
    wait_until(
        "the hung program to be stopped",
        Duration::from_secs(20),
        || processes_with("sleep\u{0}617").is_empty(),
    );

    register(&cluster, "s1/0", "corrupt", "staging");
    let artifact = show(&cluster, "corrupt@1.0.0")["artifact"]["uri"]
        .as_str()
        .expect("uri")
        .to_string();
    let path = artifact.strip_prefix("file://").unwrap_or(&artifact);
    let mut bytes = std::fs::read(path).expect("the sealed artifact");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(path, bytes).expect("corrupt it");
    cluster.flotilla_ok(&["model", "stage", "corrupt@1.0.0", "production"]);
    let message = wait_failed(&cluster, "corrupt@1.0.0");
    assert!(message.contains("SHA-256"), "{message}");
    for agent in ["serve-0", "serve-1"] {
        let log = cluster.agent_log(agent);
        assert!(
            !log.lines()
                .any(|line| line.contains("corrupt@1.0.0")
                    && line.contains("serving program started")),
            "a corrupted artifact's program must not start"
        );
    }

    // 5. The agent holding demo's replica goes: the replica is placed on the other one.
    let holder = wait_ready(&cluster, "demo@1.1.0")[0].clone();
    let index = cluster
        .agents
        .iter()
        .position(|agent| agent.name == holder)
        .expect("the holder");
    cluster.agents[index].kill();
    wait_until(
        "demo's replica to be placed again",
        Duration::from_secs(90),
        || {
            let now = placements(&cluster, "demo@1.1.0");
            now.len() == 1 && now[0].0 != holder && is_ready(&now[0].1)
        },
    );
    // The router follows at its next report.
    wait_until(
        "the router to send demo to the new replica",
        Duration::from_secs(30),
        || http(router, "POST", "/v1/predict", &body, "").0 == 200,
    );
}

/// A serving program that answers each instance with the GPUs it was given, as a class.
const GPU_ECHO: &str = r#"
import os
import flotilla_serve

def predict(instances):
    return [{"class": os.environ.get("CUDA_VISIBLE_DEVICES", "unset")} for _ in instances]

flotilla_serve.serve(predict)
"#;

/// Serving replicas hold slots and GPUs as trials do: on agents with one slot and one GPU
/// each (declared with `--gpus 1`; no NVIDIA driver here, so nothing runs on a GPU, but the
/// assignment and `CUDA_VISIBLE_DEVICES` are the agents' own), a replica that asks for a
/// GPU gets the agent's GPU to itself, trials go to the other agent, a replica whose agent
/// is lost moves to the agent that is free again, and a trial needing the GPU the replica
/// holds waits instead of sharing it.
#[test]
fn serving_replicas_hold_their_slots_and_gpus_like_trials() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    let artifacts = cluster.path("artifacts");
    let artifacts = artifacts.to_str().expect("utf-8").to_string();
    for name in ["gpu-a", "gpu-b"] {
        let listen = format!("127.0.0.1:{}", free_tcp_port());
        cluster.start_agent_with(
            name,
            1,
            &[
                "--artifacts",
                &artifacts,
                "--device",
                "cpu",
                "--gpus",
                "1",
                "--serve",
                &listen,
            ],
        );
    }
    cluster.wait_for_agents(2, Duration::from_secs(60));
    let (_router, router) = cluster.start_router(&[]);
    let program = cluster.path("gpu_echo.py");
    std::fs::write(&program, GPU_ECHO).expect("write the serving program");
    let serving = format!(
        "command = \"python3\"\nargs = [\"{}\"]\nenv = {{ PYTHONPATH = \"{}\" }}\nready_timeout = \"20s\"\nreplicas = 1\nslots = 1\ngpus = 1\n",
        program.display(),
        repo_root().join("python").display()
    );
    submit(
        &cluster,
        "train.toml",
        &sweep("train", "0.3, 0.25", 2, 0.0, &serving),
    );

    // The replica holds an agent's one slot and its GPU, which its program sees.
    register(&cluster, "s1/0", "gpudemo", "production");
    let holder = wait_ready(&cluster, "gpudemo@1.0.0")[0].clone();
    let other = if holder == "gpu-a" { "gpu-b" } else { "gpu-a" };
    let shown = show(&cluster, "gpudemo@1.0.0");
    assert_eq!(
        shown["placements"][0]["gpus"],
        serde_json::json!([0]),
        "{shown:#}"
    );
    let text = cluster.flotilla_ok(&["model", "show", "gpudemo@1.0.0"]);
    assert!(
        text.contains("1 slot(s) and 1 GPU(s)") && text.contains("(GPU 0)"),
        "{text}"
    );
    let body = r#"{"model": "gpudemo", "instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}"#;
    let mut answered = (0, BTreeMap::new(), String::new());
    wait_until(
        "the router to route gpudemo",
        Duration::from_secs(30),
        || {
            answered = http(router, "POST", "/v1/predict", body, "");
            answered.0 == 200
        },
    );
    let answer: Value = serde_json::from_str(&answered.2).expect("JSON");
    assert_eq!(
        answer["predictions"],
        serde_json::json!([{"class": "0"}, {"class": "0"}]),
        "CUDA_VISIBLE_DEVICES is the replica's GPU"
    );

    // Trials, GPU or not, find no room beside the replica: all run on the other agent.
    let gpu_serving = format!("{serving}\n[resources]\ngpus = 1\n");
    submit(
        &cluster,
        "gpu.toml",
        &sweep("gpu", "0.3, 0.25", 2, 0.0, &gpu_serving),
    );
    let results = cluster.expect_results("s2");
    assert_all_succeeded_once(&results, 2);
    for trial in trials(&results) {
        assert_eq!(trial["agent"], other, "{trial}");
    }

    // The holder is lost: the replica moves to the other agent, GPU and all.
    let index = cluster
        .agents
        .iter()
        .position(|agent| agent.name == holder)
        .expect("the holder");
    cluster.agents[index].kill();
    wait_until("gpudemo's replica to move", Duration::from_secs(90), || {
        let now = show(&cluster, "gpudemo@1.0.0")["placements"].clone();
        now.as_array()
            .is_some_and(|placements| placements.len() == 1)
            && now[0]["agent"] == other
            && now[0]["state"] == "Ready"
            && now[0]["gpus"] == serde_json::json!([0])
    });
    wait_until(
        "the router to send gpudemo to the moved replica",
        Duration::from_secs(30),
        || http(router, "POST", "/v1/predict", body, "").0 == 200,
    );

    // A GPU trial now has no GPU to take: it waits rather than share the replica's.
    let path = cluster.path("waits.toml");
    std::fs::write(&path, sweep("waits", "0.3", 2, 0.0, &gpu_serving)).expect("write");
    cluster.flotilla_ok(&["sweep", "submit", path.to_str().expect("utf-8")]);
    std::thread::sleep(Duration::from_secs(6));
    let waiting = cluster.sweep_state("s3");
    assert_eq!(waiting["state"], "Running", "{waiting:#}");
    assert_eq!(waiting["counts"]["running"], 0, "{waiting:#}");
    assert_eq!(waiting["counts"]["succeeded"], 0, "{waiting:#}");
    // Out of production, the replica lets go and the trial runs.
    cluster.flotilla_ok(&["model", "stage", "gpudemo@1.0.0", "archived"]);
    wait_until("the waiting trial to run", Duration::from_secs(90), || {
        cluster.sweep_state("s3")["state"] == "Completed"
    });
}

/// A regression trial: its model is one number, `bias`, added to the true relation
/// y = x1 + 2·x2; its loss is bias².
const REGRESSION_TRIAL: &str = r#"
import json
import flotilla_trial as trial

bias = float(trial.param("bias", 0.0))
trial.report(0, loss=bias * bias)
(trial.checkpoint_dir() / "model.json").write_text(json.dumps({"bias": bias}))
trial.commit(epoch=1)
"#;

/// Serves the regression model: a value per instance `[x1, x2]`, a plain JSON number.
const REGRESSION_SERVE: &str = r#"
import json
import flotilla_serve

bias = json.loads((flotilla_serve.model_dir() / "model.json").read_text())["bias"]

def predict(instances):
    values = []
    for row in instances:
        if not (isinstance(row, list) and len(row) == 2):
            raise flotilla_serve.BadInput("each instance is [x1, x2]")
        values.append(float(row[0]) + 2.0 * float(row[1]) + bias)
    return values

flotilla_serve.serve(predict)
"#;

/// Gated on error rate and squared error only (latency is shown, not gating), with a
/// squared-error margin of half the baseline's MSE.
const SQUARED_ERROR_POLICY: &str = r#"
stages = [
    { weight = 0.3, min_duration = "3s", min_requests = 60 },
    { weight = 0.5, min_duration = "3s", min_requests = 60 },
]
false_rollback = 0.01
false_promotion = 0.05
error_margin = 0.05
latency_margin = 1.5
accuracy_margin = 0.08
squared_error_margin = 0.5
metrics = ["error_rate", "squared_error"]
min_samples = 40
max_stage_duration = "3m"
"#;

/// Rows [x1, x2] and noisy true values y = x1 + 2·x2 + N(0, 1) (a fixed sequence).
fn regression_rows() -> Vec<(Value, Value)> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..600)
        .map(|i| {
            let x1 = f64::from(i % 17) / 4.0 + 0.5;
            let x2 = f64::from(i % 11) / 8.0 + 0.25;
            let noise =
                (-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos();
            let y = x1 + 2.0 * x2 + noise;
            (serde_json::json!([x1, x2]), serde_json::json!(y))
        })
        .collect()
}

/// A served program that answers numbers is judged on squared error from feedback values:
/// an equal canary (bias 0.05 against 0, noise of variance 1) is promoted, one off by 2
/// (five times the baseline's mean squared error) is rolled back on squared error, with
/// latency left out of the gates by the policy.
#[test]
fn a_served_regression_model_is_canaried_on_squared_error() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    cluster.start_serving_agent("serve-0", 2);
    cluster.start_serving_agent("serve-1", 2);
    cluster.wait_for_agents(2, Duration::from_secs(60));
    let (_router, router) = cluster.start_router(&[]);
    let trial = cluster.path("regression_trial.py");
    std::fs::write(&trial, REGRESSION_TRIAL).expect("trial");
    let serve = cluster.path("regression_serve.py");
    std::fs::write(&serve, REGRESSION_SERVE).expect("program");
    let python = repo_root().join("python");
    for (name, bias) in [("exact", "0.0"), ("equal", "0.05"), ("off", "2.0")] {
        let text = format!(
            r#"
name = "{name}"
[objective]
metric = "loss"
direction = "minimize"
[space.bias]
type = "categorical"
choices = [{bias}]
[algorithm]
name = "grid"
[budget]
max_trials = 1
[trial]
command = "python3"
args = ["{trial}"]
env = {{ PYTHONPATH = "{python}" }}
metrics = ["loss"]
timeout = "1m"
[serving]
command = "python3"
args = ["{serve}"]
env = {{ PYTHONPATH = "{python}" }}
ready_timeout = "20s"
"#,
            trial = trial.display(),
            serve = serve.display(),
            python = python.display(),
        );
        submit(&cluster, &format!("{name}.toml"), &text);
    }
    register(&cluster, "s1/0", "reg", "production");
    wait_ready(&cluster, "reg@1.0.0");
    let body = r#"{"model": "reg", "instances": [[1.0, 2.0], [0.5, 0.25]]}"#;
    let mut answered = (0, BTreeMap::new(), String::new());
    wait_until("the router to route reg", Duration::from_secs(30), || {
        answered = http(router, "POST", "/v1/predict", body, "");
        answered.0 == 200
    });
    let answer: Value = serde_json::from_str(&answered.2).expect("JSON");
    assert_eq!(
        answer["predictions"],
        serde_json::json!([5.0, 1.0]),
        "{answer}"
    );

    let token = feedback_token(&cluster, router);
    let policy = cluster.path("policy.toml");
    std::fs::write(&policy, SQUARED_ERROR_POLICY).expect("policy");
    let policy = policy.to_str().expect("utf-8");
    let load = Load::of(router, "reg", &token, regression_rows());

    register(&cluster, "s2/0", "reg", "staging");
    cluster.flotilla_ok(&["rollout", "start", "reg@1.1.0", "--policy", policy]);
    let promoted = finished_rollout(&cluster, "reg");
    assert_eq!(promoted["state"], "Promoted", "{promoted:#}");

    register(&cluster, "s3/0", "reg", "staging");
    cluster.flotilla_ok(&["rollout", "start", "reg@1.2.0", "--policy", policy]);
    let rolled_back = finished_rollout(&cluster, "reg");
    load.stop();
    assert_eq!(rolled_back["state"], "RolledBack", "{rolled_back:#}");
    let reason = rolled_back["decisions"]
        .as_array()
        .and_then(|decisions| decisions.last())
        .map(|decision| decision.to_string())
        .unwrap_or_default();
    assert!(reason.contains("squared error"), "{rolled_back:#}");
    let status = cluster.flotilla_ok(&["rollout", "status", "reg"]);
    assert!(status.contains("mean squared error"), "{status}");
}
