//! Webhook notifications from a real coordinator process: when a sweep completes it posts
//! Slack-compatible JSON to `--notify-webhook`, retries after a failed delivery, and never
//! writes the webhook's secret path to its log. The receiving end is a small HTTP server in
//! this test (it stands in for Slack, which cannot be reached from here).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_cluster_tests::{Cluster, wait_until};
use serde_json::Value;

/// (path, body) of every request, in order.
type Received = Arc<Mutex<Vec<(String, String)>>>;

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
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let first = {
                let mut log = log.lock().expect("lock");
                log.push((path, String::from_utf8_lossy(&body).into_owned()));
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
    cluster.coordinator_args = vec![
        "--notify-webhook".into(),
        format!("http://{address}{secret_path}"),
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
    for (path, body) in &requests {
        assert_eq!(path, secret_path);
        let payload: Value = serde_json::from_str(body).expect("JSON");
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
    let log_path = cluster.path(&format!("{}.log", cluster.coordinators[0].name));
    let log = std::fs::read_to_string(log_path).expect("the coordinator's log");
    assert!(log.contains("notification failed"), "{log}");
    assert!(log.contains("notification delivered"), "{log}");
    assert!(log.contains("webhook #1 (127.0.0.1)"), "{log}");
    assert!(
        !log.contains("SECRET123"),
        "the webhook's secret is in the log"
    );
}
