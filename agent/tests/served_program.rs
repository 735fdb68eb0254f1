//! The serving-program supervisor against real programs (`python3` scripts, standard library
//! only): a ready program that starts failing its health checks is stopped, restarted
//! (counted, reported restarting) and ready again; one that was ready once and then exits on
//! every start is reported failed after the limit of failed restarts in a row; stopping the
//! version leaves no process behind. The schedule is shortened through `Timing`, so each
//! case takes seconds instead of the minutes the defaults would.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_agent::served_program::{Program, Timing, Update};
use flotilla_protocol::spec::ServingSpec;
use tokio_util::sync::CancellationToken;

/// Answers `GET /healthz` 200 for the first three checks, 500 after: a program that loads,
/// serves a while, then wedges.
const WEDGES: &str = r#"
import http.server, os

checks = [0]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        checks[0] += 1
        self.send_response(200 if checks[0] <= 3 else 500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["FLOTILLA_SERVE_PORT"])), Handler).serve_forever()
"#;

/// Ready on its first start, exits after two health checks; every later start finds its
/// marker and exits with status 4 before it listens.
const COMES_BACK_BROKEN: &str = r#"
import http.server, os, pathlib, sys

marker = pathlib.Path(os.environ["FLOTILLA_MODEL_DIR"]) / "started"
if marker.exists():
    print("the model file is gone", file=sys.stderr)
    sys.exit(4)
marker.write_text("1")
checks = [0]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        checks[0] += 1
        if checks[0] > 2:
            os._exit(1)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["FLOTILLA_SERVE_PORT"])), Handler).serve_forever()
"#;

fn timing() -> Timing {
    Timing {
        start_attempts: 3,
        health_interval: Duration::from_millis(150),
        health_failures: 3,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        max_consecutive_failures: 3,
        stop_grace: Duration::from_secs(2),
    }
}

fn program(dir: &Path, script: &str) -> Program {
    let path = dir.join("serve.py");
    std::fs::write(&path, script).expect("write the program");
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).expect("model dir");
    Program {
        model: "demo@1.0.0".parse().expect("model ref"),
        serving: ServingSpec {
            command: "python3".into(),
            args: vec![path.display().to_string()],
            env: BTreeMap::new(),
            workdir: None,
            health: "/healthz".into(),
            ready_timeout: Duration::from_secs(20),
            replicas: 1,
            slots: 1,
            gpus: 0,
        },
        model_dir,
        gpus: None,
        timing: timing(),
    }
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.parse::<u32>().is_ok())
                && std::fs::read(entry.path().join("cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        })
        .count()
}

struct Run {
    updates: Arc<Mutex<Vec<Update>>>,
    restarts: Arc<Mutex<u32>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn supervise(program: Program) -> Run {
    let updates = Arc::new(Mutex::new(Vec::new()));
    let restarts = Arc::new(Mutex::new(0));
    let stop = CancellationToken::new();
    let (seen, counted, token) = (updates.clone(), restarts.clone(), stop.clone());
    let task = tokio::spawn(async move {
        program
            .supervise(
                reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .expect("client"),
                token,
                move |update| seen.lock().expect("updates").push(update),
                move || *counted.lock().expect("restarts") += 1,
            )
            .await;
    });
    Run {
        updates,
        restarts,
        stop,
        task,
    }
}

impl Run {
    fn updates(&self) -> Vec<Update> {
        self.updates.lock().expect("updates").clone()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&[Update]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(&self.updates()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.updates()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_fails_its_health_checks_is_restarted_and_serves_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = supervise(program(dir.path(), WEDGES));
    run.wait_for("ready, restarting, ready again", |updates| {
        updates.len() >= 3 && matches!(updates[2], Update::Ready { .. })
    })
    .await;
    let updates = run.updates();
    assert!(matches!(updates[0], Update::Ready { .. }), "{updates:?}");
    match &updates[1] {
        Update::Restarting { restarts, reason } => {
            assert_eq!(*restarts, 1);
            assert!(
                reason.contains("failed 3 health checks in a row") && reason.contains("500"),
                "{reason}"
            );
        }
        other => panic!("expected a restart, got {other:?} in {updates:?}"),
    }
    let (Update::Ready { port: first }, Update::Ready { port: second }) =
        (&updates[0], &updates[2])
    else {
        unreachable!()
    };
    assert_ne!(first, second, "a new process on a new port");
    assert!(*run.restarts.lock().expect("restarts") >= 1);
    let script = dir.path().join("serve.py").display().to_string();
    assert_eq!(processes_with(&script), 1, "one program at a time");
    // The version leaves service: the program is stopped and nothing is left.
    run.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .expect("the supervisor returns once stopped")
        .expect("no panic");
    assert_eq!(processes_with(&script), 0, "the program is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_never_comes_back_is_failed_after_the_restart_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut run = supervise(program(dir.path(), COMES_BACK_BROKEN));
    tokio::time::timeout(Duration::from_secs(30), &mut run.task)
        .await
        .expect("the supervisor gives up on its own")
        .expect("no panic");
    let updates = run.updates();
    assert!(matches!(updates[0], Update::Ready { .. }), "{updates:?}");
    let restarts: Vec<u32> = updates
        .iter()
        .filter_map(|update| match update {
            Update::Restarting { restarts, .. } => Some(*restarts),
            _ => None,
        })
        .collect();
    assert_eq!(restarts, vec![1, 2, 3], "{updates:?}");
    assert_eq!(*run.restarts.lock().expect("restarts"), 3);
    match updates.last() {
        Some(Update::Failed(message)) => assert!(
            message.contains("exited with status 4")
                && message.contains("the model file is gone")
                && message.contains("3 restarts in a row did not bring it back"),
            "{message}"
        ),
        other => panic!("expected a failure last, got {other:?}"),
    }
    let script = dir.path().join("serve.py").display().to_string();
    assert_eq!(processes_with(&script), 0, "nothing left running");
}
