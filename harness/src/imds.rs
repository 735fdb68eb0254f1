//! An IMDSv2 responder for the spot tests and the interruption benchmark.

use std::time::Duration;

/// A stand-in for the EC2 instance metadata service (no real one runs off EC2): it speaks
/// IMDSv2 as the agent's watcher uses it — a session token from `PUT /latest/api/token`, then
/// token-carrying GETs, 404 while there is no notice — and serves the notices a test posts.
/// It refuses a GET without the token it issued (401), as the service does.
pub struct ImdsResponder {
    address: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ImdsState>>,
}

#[derive(Default)]
pub struct ImdsState {
    rebalance: Option<String>,
    instance_action: Option<String>,
    tokens_issued: u32,
    /// Every request: method, path, whether it carried a token this responder issued.
    requests: Vec<(String, String, bool)>,
}

impl ImdsResponder {
    pub fn start() -> ImdsResponder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the responder");
        let address = listener.local_addr().expect("responder address");
        let state = std::sync::Arc::new(std::sync::Mutex::new(ImdsState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || ImdsResponder::serve(stream, &shared));
            }
        });
        ImdsResponder { address, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn post_rebalance(&self) {
        self.state.lock().expect("responder state").rebalance =
            Some(r#"{"noticeTime": "2026-12-01T08:20:00Z"}"#.into());
    }

    pub fn post_interruption(&self) {
        let at = std::time::SystemTime::now() + Duration::from_secs(120);
        let at = humantime::format_rfc3339_seconds(at);
        self.state.lock().expect("responder state").instance_action =
            Some(format!(r#"{{"action": "terminate", "time": "{at}"}}"#));
    }

    pub fn requests(&self) -> Vec<(String, String, bool)> {
        self.state.lock().expect("responder state").requests.clone()
    }

    /// One connection: requests until the client closes it (keep-alive).
    fn serve(stream: std::net::TcpStream, state: &std::sync::Mutex<ImdsState>) {
        use std::io::{BufRead, BufReader, Write};
        let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        let mut writer = stream;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let mut headers = Vec::new();
            let mut body_length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                    if name == "content-length" {
                        body_length = value.parse().unwrap_or(0);
                    }
                    headers.push((name, value.to_string()));
                }
            }
            let mut body = vec![0; body_length];
            if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                return;
            }
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
            };
            let (status, text) = {
                let mut state = state.lock().expect("responder state");
                let issued = |token: &str| {
                    token
                        .strip_prefix("token-")
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| n >= 1 && n <= state.tokens_issued)
                };
                let authorised = header("x-aws-ec2-metadata-token").is_some_and(|t| issued(&t));
                state
                    .requests
                    .push((method.clone(), path.clone(), authorised));
                match (method.as_str(), path.as_str()) {
                    ("PUT", "/latest/api/token") => {
                        match header("x-aws-ec2-metadata-token-ttl-seconds")
                            .and_then(|ttl| ttl.parse::<u32>().ok())
                        {
                            Some(1..=21600) => {
                                state.tokens_issued += 1;
                                (200, format!("token-{}", state.tokens_issued))
                            }
                            _ => (400, "missing or invalid ttl".to_string()),
                        }
                    }
                    ("GET", _) if !authorised => (401, String::new()),
                    ("GET", "/latest/meta-data/events/recommendations/rebalance") => {
                        match &state.rebalance {
                            Some(notice) => (200, notice.clone()),
                            None => (404, String::new()),
                        }
                    }
                    ("GET", "/latest/meta-data/spot/instance-action") => {
                        match &state.instance_action {
                            Some(notice) => (200, notice.clone()),
                            None => (404, String::new()),
                        }
                    }
                    _ => (404, String::new()),
                }
            };
            let reason = match status {
                200 => "OK",
                400 => "Bad Request",
                401 => "Unauthorized",
                _ => "Not Found",
            };
            let response = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            if writer.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }
}
