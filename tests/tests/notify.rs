//! Webhook notifications from a real coordinator process: when a sweep completes it posts
//! Slack-compatible JSON to `--notify-webhook`, signed with the `--notify-secret-file` secret
//! (HMAC-SHA256, checked here independently), retries after a failed delivery under the same
//! delivery id, and never writes the webhook's secret path to its log. The receiving end is a small HTTP server in
//! this test (it stands in for Slack, which cannot be reached from here).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_harness::{Cluster, wait_until};
use serde_json::Value;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    /// Lower-case header names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

type Received = Arc<Mutex<Vec<Request>>>;

/// Answers 500 to the first request and 200 to the rest.
fn webhook_receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let received: Received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let mut length = 0;
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    let name = name.trim().to_ascii_lowercase();
                    if name == "content-length" {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    headers.push((name, value.trim().to_string()));
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let first = {
                let mut log = log.lock().expect("lock");
                log.push(Request {
                    path,
                    headers,
                    body,
                });
                log.len() == 1
            };
            let status = if first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            );
        }
    });
    (address, received)
}

#[test]
fn a_finished_sweep_is_announced_by_webhook_with_a_retry_and_no_secret_in_the_log() {
    let (address, received) = webhook_receiver();
    let secret_path = "/services/T000/B000/SECRET123";
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    let signing_secret = "9f1c2b7e4d5a6c3b8e0f1a2d3c4b5a69";
    let secret_file = cluster.path("webhook-secret");
    std::fs::write(&secret_file, format!("{signing_secret}\n")).expect("write the secret");
    cluster.coordinator_args = vec![
        "--notify-webhook".into(),
        format!("http://{address}{secret_path}"),
        "--notify-secret-file".into(),
        secret_file.display().to_string(),
    ];
    cluster.start_coordinator(0);
    cluster.wait_for_leader(0, Duration::from_secs(30));
    cluster.start_agent("a0", 2);
    cluster.wait_for_agents(1, Duration::from_secs(30));
    let file = cluster.write_logged_sweep("announced", 4, 2, "0.1");
    let sweep = cluster.submit(&file);
    wait_until("the sweep to complete", Duration::from_secs(60), || {
        cluster
            .progress(&sweep)
            .is_some_and(|(state, _)| state == "Completed")
    });
    wait_until(
        "the notification to be retried and delivered",
        Duration::from_secs(30),
        || received.lock().expect("lock").len() >= 2,
    );
    let requests = received.lock().expect("lock").clone();
    assert_eq!(requests.len(), 2, "one failure, one delivery: {requests:?}");
    let deliveries: Vec<_> = requests
        .iter()
        .map(|request| {
            request
                .header("x-flotilla-delivery")
                .expect("a delivery id")
        })
        .collect();
    assert_eq!(
        deliveries[0], deliveries[1],
        "a retry keeps its delivery id"
    );
    for request in &requests {
        assert_eq!(request.path, secret_path);
        check_signature(request, signing_secret.as_bytes());
        let payload: Value = serde_json::from_slice(&request.body).expect("JSON");
        let text = payload["text"].as_str().expect("a text field");
        assert!(
            text.contains(&format!(
                "Sweep *announced* ({sweep}) completed: 4 succeeded"
            )),
            "{text}"
        );
        assert!(text.contains("Best loss = "), "{text}");
        assert_eq!(payload["blocks"][0]["type"], "section");
        assert_eq!(payload["blocks"][0]["text"]["text"], text);
    }
    // The coordinator logs a delivery once the receiver's answer is back, which may be a
    // moment after the receiver has counted the request.
    let log_path = cluster.path(&format!("{}.log", cluster.coordinators[0].name));
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("the delivery to be logged", Duration::from_secs(10), || {
        read_log().contains("notification delivered")
    });
    let log = read_log();
    assert!(log.contains("notification failed"), "{log}");
    assert!(log.contains("notification delivered"), "{log}");
    assert!(log.contains("webhook #1 (127.0.0.1)"), "{log}");
    assert!(
        !log.contains("SECRET123"),
        "the webhook's secret is in the log"
    );
}

/// What a receiver does: recompute HMAC-SHA256 over "t.body" and compare; a forged body
/// with the same header must fail the same check.
fn check_signature(request: &Request, secret: &[u8]) {
    use hmac::Mac;
    let header = request
        .header("x-flotilla-signature")
        .expect("a signed delivery");
    let (timestamp, signature) = header
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("signature header shape: {header}"));
    let sent: u64 = timestamp.parse().expect("a unix time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        now.abs_diff(sent) < 300,
        "a fresh timestamp: {sent} vs {now}"
    );
    let expected = |body: &[u8]| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("key");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    assert_eq!(signature, expected(&request.body), "the signature verifies");
    let mut forged = request.body.clone();
    forged.extend_from_slice(b" ");
    assert_ne!(
        signature,
        expected(&forged),
        "a changed body does not verify"
    );
}
