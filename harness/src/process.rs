//! Processes: the `flotilla` binary under test, free ports, waiting, and a child process
//! that is killed and reaped when dropped.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `flotilla` binary under test: the one named by `FLOTILLA_BIN`, or the workspace's
/// (`target/<profile>/flotilla`, next to the test binary's `deps/` folder, or next to a
/// benchmark).
pub fn flotilla_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FLOTILLA_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // Tests run from target/<profile>/deps/, benchmark programs from target/<profile>/.
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
    pub child: Child,
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

    /// A process whose stdout the test reads (`child.stdout`); stderr is discarded.
    pub fn spawn_piped(command: &mut Command) -> Process {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        self.signal_and_wait(Signal::SIGTERM)
    }

    /// SIGINT (Ctrl-C), then waits (up to 30 s) for the exit; its status, if it exited.
    pub fn interrupt(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_and_wait(Signal::SIGINT)
    }

    fn signal_and_wait(&mut self, signal: Signal) -> Option<std::process::ExitStatus> {
        kill(self.pid(), signal).ok()?;
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

/// A child started elsewhere (with its own output settings), owned from now on.
impl From<Child> for Process {
    fn from(child: Child) -> Process {
        Process { child }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Processes whose command line mentions `needle` (arguments are NUL-separated there).
pub fn processes_with(needle: &str) -> Vec<u32> {
    processes_with_all(&[needle])
}

/// Processes whose command line mentions every one of `needles`.
pub fn processes_with_all(needles: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline);
            if needles.iter().all(|needle| cmdline.contains(needle)) {
                found.push(pid);
            }
        }
    }
    found
}
