//! `moto_server`: an AWS-compatible endpoint (S3, Auto Scaling) on loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::process::{Process, free_tcp_port, wait_until};

/// `moto_server` (PyPI `moto[server]`, an AWS-compatible endpoint) on a loopback port, for
/// agents whose artifact store is S3; killed when dropped. `FLOTILLA_MOTO_SERVER` names the
/// program (`scripts/test.sh` installs it into a virtualenv).
pub struct Moto {
    pub port: u16,
    process: Process,
    /// Holds the log of a Moto started by [`Moto::start_temporary`].
    _log_dir: Option<tempfile::TempDir>,
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
        Moto {
            port,
            process,
            _log_dir: None,
        }
    }

    /// A Moto whose log goes to a temporary directory of its own.
    pub fn start_temporary() -> Moto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut moto = Moto::start(&dir.path().join("moto.log"));
        moto._log_dir = Some(dir);
        moto
    }

    /// Its URL, for an AWS client's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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
            ("AWS_ENDPOINT", self.endpoint()),
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
