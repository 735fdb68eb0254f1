//! Serving programs: a sweep's own `[serving]` program, run by the agent for one assigned
//! version of a command trial's model.
//!
//! The agent unpacks the version's sealed checkpoint into a folder and starts the program
//! there with `FLOTILLA_MODEL_DIR` (that folder), `FLOTILLA_SERVE_PORT` (a free loopback
//! port it must listen on), `FLOTILLA_MODEL_NAME` and `FLOTILLA_MODEL_VERSION`, plus the
//! table's `env`. The version is ready once `GET http://127.0.0.1:PORT<health>` answers 2xx;
//! until then it gets no traffic.
//!
//! - **At load** a program that exits before it is ready is started again, up to
//!   [`START_ATTEMPTS`] times with a short backoff; one that exits on every start is
//!   reported failed with its exit status and the last lines of its stderr, and never
//!   receives traffic. One that is still not ready after `ready_timeout` is stopped and
//!   reported failed.
//! - **Once ready** it is checked every [`HEALTH_INTERVAL`]; if it exits, or fails
//!   [`HEALTH_FAILURES`] checks in a row, it is stopped and started again with exponential
//!   backoff (capped at [`MAX_BACKOFF`]), each restart counted
//!   (`flotilla_agent_serving_restarts_total`) and the version reported `restarting` (no
//!   traffic) until it is ready again. After [`MAX_CONSECUTIVE_FAILURES`] starts in a row that
//!   never became ready, the version is reported failed.
//! - **Stopping** (the version leaves service, or the agent shuts down): SIGTERM to the
//!   program's process group, SIGKILL after [`STOP_GRACE`].
//!
//! Every line the program writes to stderr (and stdout) goes to the agent's log, tagged with
//! the model version.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_protocol::models::ModelRef;
use flotilla_protocol::spec::ServingSpec;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Starts a program gets at load before the version is reported failed.
pub const START_ATTEMPTS: u32 = 3;
/// Between health checks of a ready program.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Failed health checks in a row that make a ready program restart.
pub const HEALTH_FAILURES: u32 = 3;
/// The longest wait between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Starts in a row that never became ready after which a once-ready version is failed.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 10;
/// Between SIGTERM and SIGKILL when a program is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of stderr kept for a failure's message.
const TAIL_LINES: usize = 5;

/// The supervisor's schedule: the constants above, shortened only by tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub start_attempts: u32,
    pub health_interval: Duration,
    pub health_failures: u32,
    /// The first restart's backoff, doubled for each failed start in a row.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub max_consecutive_failures: u32,
    pub stop_grace: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            start_attempts: START_ATTEMPTS,
            health_interval: HEALTH_INTERVAL,
            health_failures: HEALTH_FAILURES,
            first_backoff: Duration::from_millis(500),
            max_backoff: MAX_BACKOFF,
            max_consecutive_failures: MAX_CONSECUTIVE_FAILURES,
            stop_grace: STOP_GRACE,
        }
    }
}

/// What the supervisor reports as the program's state changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Ready { port: u16 },
    Restarting { restarts: u32, reason: String },
    Failed(String),
}

/// One version's program.
pub struct Program {
    pub model: ModelRef,
    pub serving: ServingSpec,
    /// The unpacked checkpoint.
    pub model_dir: PathBuf,
    /// The GPUs this replica holds, shown to the program as `CUDA_VISIBLE_DEVICES`;
    /// `None` on an agent without GPUs (nothing is set).
    pub gpus: Option<Vec<u32>>,
    pub timing: Timing,
}

/// A started program: its process group and what it said last.
struct Running {
    child: tokio::process::Child,
    group: Pid,
    port: u16,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Reads its stdout and stderr into the log; `None` once it has ended.
    output: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.is_empty() {
            "no stderr".to_string()
        } else {
            format!(
                "stderr: {}",
                tail.iter().cloned().collect::<Vec<_>>().join(" | ")
            )
        }
    }

    /// SIGTERM to the group, SIGKILL after `grace`; reaps the program.
    async fn stop(mut self, grace: Duration) {
        let _ = killpg(self.group, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(pid = %self.group, "the serving program ignored SIGTERM; killing it");
        }
        let _ = killpg(self.group, Signal::SIGKILL);
        let _ = self.child.wait().await;
        // The output readers end once the pipes close; a grandchild holding them is not
        // waited for.
        self.drain(Duration::from_millis(500)).await;
        if let Some(output) = self.output.take() {
            output.abort();
        }
    }

    /// Waits up to `limit` for the output readers to reach the end of the pipes.
    async fn drain(&mut self, limit: Duration) {
        if let Some(output) = &mut self.output
            && tokio::time::timeout(limit, output).await.is_ok()
        {
            self.output = None;
        }
    }
}

/// How a wait for readiness ended.
enum Start {
    Ready,
    Exited(String),
    TimedOut,
    Stopped,
}

/// A free loopback port (bound and released; the program binds it next).
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|error| format!("no free loopback port: {error}"))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|error| format!("no free loopback port: {error}"))
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "exited".to_string(),
        },
        Err(error) => format!("could not be waited for: {error}"),
    }
}

impl Program {
    fn spawn(&self) -> Result<Running, String> {
        let port = free_port()?;
        let serving = &self.serving;
        let mut command = tokio::process::Command::new(&serving.command);
        command
            .args(&serving.args)
            .envs(&serving.env)
            .env("FLOTILLA_MODEL_DIR", &self.model_dir)
            .env("FLOTILLA_SERVE_PORT", port.to_string())
            .env("FLOTILLA_MODEL_NAME", &self.model.name)
            .env("FLOTILLA_MODEL_VERSION", self.model.version.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(workdir) = &serving.workdir {
            command.current_dir(workdir);
        }
        // As for trials: on an agent with GPUs, a replica holding none sees none.
        if let Some(gpus) = &self.gpus {
            let visible = crate::gpus::visible_devices(gpus);
            command
                .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
                .env("CUDA_VISIBLE_DEVICES", &visible)
                .env("FLOTILLA_GPUS", visible);
        }
        // Should the agent itself die (SIGKILL, a crash), its programs go with it instead of
        // holding their ports as orphans; the coordinator places the version elsewhere.
        // The one use of `unsafe` in the agent: `pre_exec` runs in the forked child before
        // exec. SAFETY: the closure only calls prctl(2), which is async-signal-safe, and
        // touches no memory of the parent.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start '{}': {error}", serving.command))?;
        let pid = child
            .id()
            .ok_or("the serving program exited before it could be tracked")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let model = self.model.to_string();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let kept = tail.clone();
        let output = tokio::spawn(async move {
            let err = async {
                let Some(stderr) = stderr else { return };
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(model = %model, stream = "stderr", "{line}");
                    let mut tail = kept.lock().unwrap_or_else(|p| p.into_inner());
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.chars().take(300).collect());
                }
            };
            let out = async {
                let Some(stdout) = stdout else { return };
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(model = %model, stream = "stdout", "{line}");
                }
            };
            tokio::join!(err, out);
        });
        Ok(Running {
            child,
            group: Pid::from_raw(pid as i32),
            port,
            tail,
            output: Some(output),
        })
    }

    fn health_url(&self, port: u16) -> String {
        format!("http://127.0.0.1:{port}{}", self.serving.health)
    }

    async fn healthy(&self, http: &reqwest::Client, port: u16) -> Result<(), String> {
        match http
            .get(self.health_url(port))
            .timeout(Duration::from_secs(1))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!(
                "GET {} answered {}",
                self.serving.health,
                response.status()
            )),
            Err(error) => Err(format!("GET {} failed: {error}", self.serving.health)),
        }
    }

    /// Waits until the program passes its health check, exits, runs out of time or is
    /// stopped.
    async fn wait_ready(
        &self,
        running: &mut Running,
        http: &reqwest::Client,
        stop: &CancellationToken,
    ) -> Start {
        let deadline = tokio::time::Instant::now() + self.serving.ready_timeout;
        loop {
            if self.healthy(http, running.port).await.is_ok() {
                return Start::Ready;
            }
            tokio::select! {
                () = stop.cancelled() => return Start::Stopped,
                status = running.child.wait() => {
                    // Let the last stderr lines arrive before they are quoted.
                    running.drain(Duration::from_millis(300)).await;
                    return Start::Exited(format!("{} ({})", describe_exit(status), running.tail()));
                }
                () = tokio::time::sleep_until(deadline) => return Start::TimedOut,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Watches a ready program until it exits, fails its health checks, or is stopped
    /// (`None`).
    async fn watch(
        &self,
        running: &mut Running,
        http: &reqwest::Client,
        stop: &CancellationToken,
    ) -> Option<String> {
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                status = running.child.wait() => {
                    running.drain(Duration::from_millis(300)).await;
                    return Some(format!("{} ({})", describe_exit(status), running.tail()));
                }
                () = tokio::time::sleep(self.timing.health_interval) => {}
            }
            match self.healthy(http, running.port).await {
                Ok(()) => failures = 0,
                Err(problem) => {
                    failures += 1;
                    if failures >= self.timing.health_failures {
                        return Some(format!(
                            "failed {failures} health checks in a row (last: {problem})"
                        ));
                    }
                }
            }
        }
    }

    /// Runs the program until `stop`, reporting its state through `update`; returns when
    /// it is stopped or has failed for good. `restarted` counts each restart.
    pub async fn supervise(
        self,
        http: reqwest::Client,
        stop: CancellationToken,
        update: impl Fn(Update),
        restarted: impl Fn(),
    ) {
        let mut ever_ready = false;
        // Starts in a row that did not become ready.
        let mut failed_starts = 0u32;
        let mut restarts = 0u32;
        loop {
            let mut running = match self.spawn() {
                Ok(running) => running,
                Err(message) => {
                    update(Update::Failed(message));
                    return;
                }
            };
            tracing::info!(model = %self.model, port = running.port, command = %self.serving.command, "serving program started");
            let mut became_ready = false;
            let reason = match self.wait_ready(&mut running, &http, &stop).await {
                Start::Stopped => {
                    running.stop(self.timing.stop_grace).await;
                    return;
                }
                Start::TimedOut => {
                    let message = format!(
                        "the serving program did not answer GET {} with 2xx within its ready_timeout of {}; it was stopped ({})",
                        self.serving.health,
                        humantime::format_duration(self.serving.ready_timeout),
                        running.tail()
                    );
                    running.stop(self.timing.stop_grace).await;
                    if !ever_ready {
                        update(Update::Failed(message));
                        return;
                    }
                    message
                }
                Start::Exited(reason) => {
                    running.stop(self.timing.stop_grace).await;
                    format!("the serving program {reason}")
                }
                Start::Ready => {
                    ever_ready = true;
                    became_ready = true;
                    tracing::info!(model = %self.model, port = running.port, "serving program ready");
                    update(Update::Ready { port: running.port });
                    let ended = self.watch(&mut running, &http, &stop).await;
                    running.stop(self.timing.stop_grace).await;
                    match ended {
                        None => return,
                        Some(reason) => format!("the serving program {reason}"),
                    }
                }
            };
            failed_starts = if became_ready { 0 } else { failed_starts + 1 };
            let timing = self.timing;
            if !ever_ready && failed_starts >= timing.start_attempts {
                update(Update::Failed(format!(
                    "{reason}; it did so on each of {} starts and is not served",
                    timing.start_attempts
                )));
                return;
            }
            if failed_starts >= timing.max_consecutive_failures {
                update(Update::Failed(format!(
                    "{reason}; {} restarts in a row did not bring it back",
                    timing.max_consecutive_failures
                )));
                return;
            }
            let backoff = if ever_ready {
                restarts += 1;
                restarted();
                tracing::warn!(model = %self.model, restarts, %reason, "restarting the serving program");
                update(Update::Restarting {
                    restarts,
                    reason: reason.clone(),
                });
                timing.backoff(failed_starts + 1)
            } else {
                tracing::warn!(model = %self.model, attempt = failed_starts, %reason, "the serving program did not start; trying again");
                Duration::from_millis(250 * u64::from(failed_starts))
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }
}

impl Timing {
    /// 0.5 s, 1 s, 2 s, … up to [`MAX_BACKOFF`] (by default), by starts in a row that
    /// failed.
    fn backoff(&self, failed: u32) -> Duration {
        let exponent = failed.saturating_sub(1).min(16);
        (self.first_backoff * 2u32.pow(exponent)).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let timing = Timing::default();
        assert_eq!(timing.backoff(1), Duration::from_millis(500));
        assert_eq!(timing.backoff(2), Duration::from_secs(1));
        assert_eq!(timing.backoff(4), Duration::from_secs(4));
        assert_eq!(timing.backoff(20), MAX_BACKOFF);
    }
}
