//! Serving, measured on real processes: what the router adds to a prediction against a direct
//! call to the serving agent (latency p50/p99 one request at a time, requests/s with several
//! clients), and the LSTM's prediction latency per batch size (through the agent's HTTPS
//! endpoint, and the model alone in this process). Direct calls use the router's
//! certificate, as the router does: agents answer router and admin certificates only.
//!
//! Setup: a coordinator, one agent with `--serve`, `flotilla router`, all on loopback; one LSTM
//! trial of the seeds' shape trained and registered as `bench@1.0.0` in production.
//!
//! A served program (`[serving]`, examples/served-command.toml's softmax model and its
//! program) is measured the same way, in the same run: the program called directly on its
//! loopback port (plain HTTP, as the agent calls it), the agent's endpoint (HTTPS, passing
//! the request on), and the router.
//! Clients keep their HTTP/1.1 connections alive, as a service calling the router would.
//!
//! ```text
//! cargo bench -p flotilla --bench serving -- [--requests 2000] [--clients 8] [--seconds 10]
//! ```
//!
//! Run by bench/serving.sh; results in docs/benchmarks.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flotilla_harness::{Cluster, one_trial_sweep, wait_until};

const SEQ_LEN: usize = 48;
const FEATURES: usize = 4;

struct Options {
    requests: usize,
    clients: usize,
    seconds: u64,
}

fn options() -> Options {
    let mut options = Options {
        requests: 2000,
        clients: 8,
        seconds: 10,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut args = args.iter().filter(|arg| *arg != "--bench");
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--requests" => {
                options.requests = value.parse().expect("--requests N");
                assert!(options.requests > 0, "--requests must be at least 1");
            }
            "--clients" => options.clients = value.parse().expect("--clients N"),
            "--seconds" => options.seconds = value.parse().expect("--seconds N"),
            other => panic!("unknown option {other}"),
        }
    }
    options
}

/// Where requests go: the router (plain HTTP) or an agent's serving endpoint (HTTPS with
/// the router's certificate, as the router itself calls it).
#[derive(Clone)]
enum Target {
    /// Plain HTTP: the router, or a serving program on its loopback port.
    Router(u16),
    Agent(u16, Arc<rustls::ClientConfig>),
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<Box<dyn Stream>>,
    port: u16,
}

impl Connection {
    fn open(target: &Target) -> Connection {
        let port = match target {
            Target::Router(port) | Target::Agent(port, _) => *port,
        };
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let stream: Box<dyn Stream> = match target {
            Target::Router(_) => Box::new(tcp),
            Target::Agent(_, config) => {
                let name = rustls::pki_types::ServerName::try_from("agent.flotilla").expect("name");
                let tls = rustls::ClientConnection::new(config.clone(), name).expect("TLS");
                Box::new(rustls::StreamOwned::new(tls, tcp))
            }
        };
        Connection {
            reader: BufReader::new(stream),
            port,
        }
    }

    /// POSTs `body` to `path`; the status and the body.
    fn post(&mut self, path: &str, body: &str) -> (u16, Vec<u8>) {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .expect("send");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("content length");
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("body");
        (status, body)
    }
}

/// `rows` labelled-series inputs of the benchmark's shape.
fn inputs(rows: usize) -> Vec<Vec<f32>> {
    let data = flotilla_train::data::SyntheticSeries {
        samples: rows.max(1),
        seq_len: SEQ_LEN,
        features: FEATURES,
        num_classes: 2,
        minority_fraction: 0.25,
        seed: 5,
    }
    .generate();
    let width = SEQ_LEN * FEATURES;
    (0..rows)
        .map(|row| data.x[row * width..(row + 1) * width].to_vec())
        .collect()
}

fn batch_body(rows: usize, router: bool) -> String {
    let instances = inputs(rows);
    if router {
        serde_json::json!({ "model": "bench", "instances": instances }).to_string()
    } else {
        serde_json::json!({ "instances": instances }).to_string()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A table of p50, p99 and max of each path's sorted latencies (ms).
fn print_latencies(paths: &[(&str, &Vec<f64>)]) {
    println!("| path | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    for (name, latencies) in paths {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            latencies[latencies.len() - 1]
        );
    }
}

/// What the routed path adds to the direct one, in ms and as a ratio, at p50 and p99.
fn print_overhead(what: &str, direct: &[f64], routed: &[f64]) {
    println!(
        "{what}: p50 +{:.3} ms, p99 +{:.3} ms; ratio router/direct p50 {:.2}, p99 {:.2}",
        percentile(routed, 0.5) - percentile(direct, 0.5),
        percentile(routed, 0.99) - percentile(direct, 0.99),
        percentile(routed, 0.5) / percentile(direct, 0.5),
        percentile(routed, 0.99) / percentile(direct, 0.99),
    );
}

/// Latencies (ms, sorted) of `requests` sequential requests after 100 of warm-up.
fn sequential(target: &Target, path: &str, body: &str, requests: usize) -> Vec<f64> {
    let mut connection = Connection::open(target);
    for _ in 0..100 {
        let (status, answer) = connection.post(path, body);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    }
    let mut latencies: Vec<f64> = (0..requests)
        .map(|_| {
            let started = Instant::now();
            let (status, _) = connection.post(path, body);
            assert_eq!(status, 200);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// Requests/s of `clients` connections sending as fast as answers come, for `seconds`.
fn throughput(target: &Target, path: &str, body: &str, clients: usize, seconds: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, done) = (stop.clone(), done.clone());
            let (path, body, target) = (path.to_string(), body.to_string(), target.clone());
            std::thread::spawn(move || {
                let mut connection = Connection::open(&target);
                while !stop.load(Ordering::Relaxed) {
                    let (status, _) = connection.post(&path, &body);
                    assert_eq!(status, 200);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let start_count = done.load(Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let counted = done.load(Ordering::Relaxed) - start_count;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("client");
    }
    counted as f64 / elapsed
}

fn main() {
    let options = options();
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    let agent_port = cluster.start_serving_agent("serve-0", 1);
    cluster.wait_for_agents(1, Duration::from_secs(60));
    let (_router, router_port) = cluster.start_router(&[]);
    let sweep = cluster.write_file(
        "bench.toml",
        &one_trial_sweep(
            "bench",
            &format!(
                r#"[trial]
trainer = "lstm_classifier"
[trial.settings]
samples = 600
seq_len = {SEQ_LEN}
features = {FEATURES}
hidden_size = 64
num_heads = 2
epochs = 2
checkpoint_every = 0
"#
            ),
        ),
    );
    cluster.flotilla_ok(&["sweep", "submit", sweep.to_str().expect("utf-8"), "--watch"]);
    cluster.flotilla_ok(&[
        "model",
        "register",
        "--from",
        "s1",
        "--name",
        "bench",
        "--stage",
        "production",
    ]);
    let direct_path = "/v1/models/bench/versions/1.0.0/predict";
    let one_direct = batch_body(1, false);
    let one_routed = batch_body(1, true);
    let router = Target::Router(router_port);
    let identity =
        flotilla_protocol::tls::Identity::load_from_dir(&cluster.path("certs"), "router")
            .expect("the router certificate");
    let agent = Target::Agent(
        agent_port,
        Arc::new(flotilla_protocol::https::serving_client_config(&identity).expect("TLS")),
    );
    wait_until("the router to serve bench", Duration::from_secs(60), || {
        let mut connection = Connection::open(&router);
        connection.post("/v1/predict", &one_routed).0 == 200
    });

    println!(
        "# model: LSTM classifier, hidden 64, 2 attention heads, inputs {SEQ_LEN} steps × {FEATURES} features"
    );
    println!(
        "## one request at a time, batch of 1 ({} requests)",
        options.requests
    );
    let direct = sequential(&agent, direct_path, &one_direct, options.requests);
    let routed = sequential(&router, "/v1/predict", &one_routed, options.requests);
    print_latencies(&[("agent directly", &direct), ("through the router", &routed)]);
    print_overhead("router overhead", &direct, &routed);

    println!(
        "## throughput, batch of 1, {} keep-alive clients, {} s",
        options.clients, options.seconds
    );
    let direct_rps = throughput(
        &agent,
        direct_path,
        &one_direct,
        options.clients,
        options.seconds,
    );
    let routed_rps = throughput(
        &router,
        "/v1/predict",
        &one_routed,
        options.clients,
        options.seconds,
    );
    println!(
        "agent directly {direct_rps:.0} req/s, through the router {routed_rps:.0} req/s (ratio {:.2})",
        routed_rps / direct_rps
    );

    served_program(&cluster, &agent, &router, &options);

    println!(
        "## prediction latency per batch size (through the agent's HTTP endpoint; the model alone in-process)"
    );
    println!(
        "| batch | HTTP p50 ms | HTTP p99 ms | model p50 ms | model p99 ms | inputs/s (model) |"
    );
    println!("|---|---|---|---|---|---|");
    let versions: serde_json::Value =
        serde_json::from_str(&cluster.flotilla_ok(&["model", "list", "bench", "--json"]))
            .expect("models JSON");
    let uri = versions[0]["artifact"]["uri"]
        .as_str()
        .expect("artifact uri")
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let predictor = runtime
        .block_on(flotilla_train::inference::Predictor::load(&uri))
        .expect("load the model");
    for batch in [1usize, 8, 32, 128, 512] {
        let requests = (options.requests / batch.max(1)).clamp(50, 500);
        let http = sequential(&agent, direct_path, &batch_body(batch, false), requests);
        let inputs = inputs(batch);
        let mut model: Vec<f64> = (0..requests)
            .map(|_| {
                let started = Instant::now();
                predictor.predict(&inputs).expect("predict");
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        model.sort_by(f64::total_cmp);
        println!(
            "| {batch} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} |",
            percentile(&http, 0.5),
            percentile(&http, 0.99),
            percentile(&model, 0.5),
            percentile(&model, 0.99),
            batch as f64 / (percentile(&model, 0.5) / 1000.0)
        );
    }
}

/// The loopback port of the running serving program whose command line holds `needle`
/// (read from its `FLOTILLA_SERVE_PORT`).
fn program_port(needle: &str) -> Option<u16> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(needle) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        for variable in environ.split(|byte| *byte == 0) {
            if let Some(port) = variable.strip_prefix(b"FLOTILLA_SERVE_PORT=") {
                return std::str::from_utf8(port).ok()?.parse().ok();
            }
        }
    }
    None
}

/// A sweep's own serving program: direct, through the agent, through the router.
fn served_program(cluster: &Cluster, agent: &Target, router: &Target, options: &Options) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let program = cluster.path("bench_serve.py");
    std::fs::copy(root.join("examples/serving/softmax_serve.py"), &program)
        .expect("copy the serving program");
    let sweep = cluster.path("served.toml");
    std::fs::write(
        &sweep,
        format!(
            r#"
name = "served"
[objective]
metric = "accuracy"
direction = "maximize"
[space.lr]
type = "categorical"
choices = [0.3]
[budget]
max_trials = 1
max_parallel = 1
[trial]
command = "python3"
args = ["{trial}"]
metrics = ["val_loss", "accuracy", "epoch"]
[serving]
command = "python3"
args = ["{program}"]
env = {{ PYTHONPATH = "{python}" }}
"#,
            trial = root.join("examples/trials/softmax.py").display(),
            program = program.display(),
            python = root.join("python").display(),
        ),
    )
    .expect("write sweep");
    cluster.flotilla_ok(&["sweep", "submit", sweep.to_str().expect("utf-8"), "--watch"]);
    cluster.flotilla_ok(&[
        "model",
        "register",
        "--from",
        "s2",
        "--name",
        "served",
        "--stage",
        "production",
    ]);
    let routed_body = r#"{"model": "served", "instances": [[1.5, -0.3, 4.2, 0.7]]}"#;
    let body = r#"{"instances": [[1.5, -0.3, 4.2, 0.7]]}"#;
    wait_until(
        "the router to serve served",
        Duration::from_secs(60),
        || Connection::open(router).post("/v1/predict", routed_body).0 == 200,
    );
    let port = program_port(program.to_str().expect("utf-8")).expect("the program's port");
    let direct = Target::Router(port);
    let program_path = "/v1/models/served:predict";
    let agent_path = "/v1/models/served/versions/1.0.0/predict";
    println!(
        "## a served program (examples/serving/softmax_serve.py, Python's http.server), one request at a time, batch of 1 ({} requests)",
        options.requests
    );
    let alone = sequential(&direct, program_path, body, options.requests);
    let via_agent = sequential(agent, agent_path, body, options.requests);
    let routed = sequential(router, "/v1/predict", routed_body, options.requests);
    print_latencies(&[
        ("program directly", &alone),
        ("agent (HTTPS) → program", &via_agent),
        ("router → agent → program", &routed),
    ]);
    print_overhead("router overhead on a served program", &alone, &routed);
    let direct_rps = throughput(
        &direct,
        program_path,
        body,
        options.clients,
        options.seconds,
    );
    let routed_rps = throughput(
        router,
        "/v1/predict",
        routed_body,
        options.clients,
        options.seconds,
    );
    println!(
        "served program: directly {direct_rps:.0} req/s, through the router {routed_rps:.0} req/s (ratio {:.2})",
        routed_rps / direct_rps
    );
}
