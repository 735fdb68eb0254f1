//! Webhook notifications (Slack-compatible JSON) for sweeps that end.
//!
//! `--notify-webhook URL` (repeatable) posts `{"text": …, "blocks": […]}` to each URL when a
//! sweep completes, fails, times out or is cancelled. Delivery runs on one task owned by the
//! coordinator, never in an actor handler: each post has a 10 s timeout and is retried up to
//! five times with exponential backoff (1 s doubling, ±20 %), honouring `Retry-After` on 429.
//! Other 4xx answers are not retried. Webhook URLs carry secrets (Slack's path is the
//! credential), so logs name a webhook only by its number and host, and errors are logged
//! without their URL.
//!
//! With a signing secret (`--notify-secret-file`), every delivery carries
//! `X-Flotilla-Signature: t=UNIX_SECONDS,v1=HEX`, where HEX is HMAC-SHA256 with the secret over
//! `"{t}.{body}"` (the exact bytes posted), and `X-Flotilla-Delivery: ID`, the same on every
//! retry of one notice. A receiver recomputes the HMAC, compares in constant time, and refuses
//! a `t` more than five minutes old (replays). docs/operations.md shows a receiver's check.

use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::messages::{SweepState, SweepSummary};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What can be announced.
#[derive(Debug, Clone)]
pub enum Notice {
    SweepFinished(Box<SweepSummary>),
}

/// Where notices go; cheap to clone. Sending never blocks.
#[derive(Debug, Clone)]
pub struct Notifier {
    sender: mpsc::UnboundedSender<Notice>,
}

impl Notifier {
    pub fn sweep_finished(&self, summary: &SweepSummary) {
        let _ = self
            .sender
            .send(Notice::SweepFinished(Box::new(summary.clone())));
    }
}

/// A webhook and how logs name it (its number and host, never its path).
#[derive(Debug, Clone)]
pub struct Webhook {
    url: reqwest::Url,
    label: String,
    /// Signs deliveries when set (see the module's docs).
    secret: Option<SigningSecret>,
}

/// The shared secret webhook deliveries are signed with. Debug never shows it.
#[derive(Clone)]
pub struct SigningSecret(Arc<[u8]>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

impl SigningSecret {
    /// Reads a secret from a file (surrounding whitespace dropped); at least 16 bytes.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<SigningSecret> {
        let text = std::fs::read(path)
            .map_err(|error| anyhow::anyhow!("--notify-secret-file {}: {error}", path.display()))?;
        Self::new(text.trim_ascii())
            .map_err(|error| anyhow::anyhow!("--notify-secret-file {}: {error}", path.display()))
    }

    pub fn new(secret: &[u8]) -> anyhow::Result<SigningSecret> {
        if secret.len() < 16 {
            anyhow::bail!(
                "a webhook signing secret needs at least 16 bytes (e.g. `openssl rand -hex 32`)"
            );
        }
        Ok(SigningSecret(secret.into()))
    }

    /// `t=UNIX,v1=HEX` for `body` sent at `unix_seconds`.
    pub fn signature(&self, unix_seconds: u64, body: &[u8]) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(unix_seconds.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("t={unix_seconds},v1={hex}")
    }
}

impl Webhook {
    /// Parses the `index`th (from 1) `--notify-webhook`; the error does not repeat the URL.
    pub fn parse(index: usize, text: &str) -> anyhow::Result<Webhook> {
        let url = reqwest::Url::parse(text)
            .map_err(|error| anyhow::anyhow!("--notify-webhook #{index} is not a URL ({error})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            anyhow::bail!(
                "--notify-webhook #{index} must be an http:// or https:// URL with a host"
            );
        }
        let label = format!("webhook #{index} ({})", url.host_str().unwrap_or("?"));
        Ok(Webhook {
            url,
            label,
            secret: None,
        })
    }

    /// Signs this webhook's deliveries with `secret`.
    pub fn signed_with(mut self, secret: SigningSecret) -> Webhook {
        self.secret = Some(secret);
        self
    }

    pub fn is_signed(&self) -> bool {
        self.secret.is_some()
    }
}

/// Header names of a signed delivery.
pub const SIGNATURE_HEADER: &str = "x-flotilla-signature";
pub const DELIVERY_HEADER: &str = "x-flotilla-delivery";

const ATTEMPTS: u32 = 5;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the delivery task; it stops when `shutdown` fires (after at most 5 s more for
/// deliveries in flight).
pub fn start(
    webhooks: Vec<Webhook>,
    shutdown: CancellationToken,
) -> anyhow::Result<(Notifier, impl Future<Output = ()> + Send + 'static)> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| anyhow::anyhow!("cannot build the webhook client: {error}"))?;
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let task = async move {
        let mut deliveries = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                notice = receiver.recv() => {
                    let Some(notice) = notice else { break };
                    let body: Arc<[u8]> = serde_json::to_vec(&payload(&notice))
                        .unwrap_or_default()
                        .into();
                    let delivery = format!("{:016x}", rand::random::<u64>());
                    for webhook in &webhooks {
                        deliveries.spawn(deliver(
                            client.clone(),
                            webhook.clone(),
                            body.clone(),
                            delivery.clone(),
                        ));
                    }
                }
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
                () = shutdown.cancelled() => break,
            }
        }
        let drained = async { while deliveries.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .is_err()
        {
            tracing::warn!("webhook deliveries still in flight at shutdown were dropped");
        }
    };
    Ok((Notifier { sender }, task))
}

/// Posts one payload, retrying as the module describes.
async fn deliver(client: reqwest::Client, webhook: Webhook, body: Arc<[u8]>, delivery: String) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let mut request = client
            .post(webhook.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DELIVERY_HEADER, &delivery)
            .body(body.to_vec());
        if let Some(secret) = &webhook.secret {
            // Signed at each attempt, so a retry's timestamp is fresh.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            request = request.header(SIGNATURE_HEADER, secret.signature(now, &body));
        }
        let wait = match request.send().await {
            Ok(response) if response.status().is_success() => {
                tracing::info!(webhook = %webhook.label, attempt, "notification delivered");
                return;
            }
            Ok(response) => {
                let status = response.status();
                if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    tracing::warn!(webhook = %webhook.label, %status, "notification refused; not retrying");
                    return;
                }
                tracing::warn!(webhook = %webhook.label, attempt, %status, "notification failed");
                response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .map(|seconds| Duration::from_secs(seconds.min(60)))
            }
            Err(error) => {
                let error = error.without_url();
                tracing::warn!(webhook = %webhook.label, attempt, %error, "notification failed");
                None
            }
        };
        if attempt == ATTEMPTS {
            break;
        }
        let jitter = 0.8 + 0.4 * rand::random::<f64>();
        tokio::time::sleep(wait.unwrap_or(delay.mul_f64(jitter))).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    tracing::error!(webhook = %webhook.label, attempts = ATTEMPTS, "notification not delivered");
}

/// The Slack-compatible body: `text` (what plain webhooks and notifications show) and
/// `blocks` (Slack's layout).
pub fn payload(notice: &Notice) -> Value {
    match notice {
        Notice::SweepFinished(summary) => {
            let (mark, verb) = match summary.state {
                SweepState::Completed => (":white_check_mark:", "completed"),
                SweepState::Failed => (":x:", "failed"),
                SweepState::TimedOut => (":hourglass:", "timed out"),
                SweepState::Cancelled => (":no_entry_sign:", "was cancelled"),
                SweepState::Running => (":arrow_forward:", "is running"),
            };
            let counts = &summary.counts;
            let mut text = format!(
                "{mark} Sweep *{}* ({}) {verb}: {} succeeded, {} stopped, {} failed of {} trials.",
                summary.name,
                summary.id,
                counts.succeeded,
                counts.stopped,
                counts.failed,
                summary.max_trials
            );
            match &summary.best {
                Some(best) => {
                    let params = best
                        .params
                        .iter()
                        .map(|(name, value)| format!("{name}={}", value.exact()))
                        .collect::<Vec<_>>()
                        .join(", ");
                    text.push_str(&format!(
                        " Best {} = {} ({}: {params}).",
                        summary.objective_metric,
                        best.objective
                            .map_or("-".to_string(), |value| format!("{value:.5}")),
                        best.id
                    ));
                }
                None => text.push_str(" No feasible trial succeeded."),
            }
            let took = summary
                .finished_ms
                .map(|finished| finished.saturating_sub(summary.created_ms) as f64 / 1000.0);
            let context = match took {
                Some(seconds) => format!(
                    "flotilla · sweep {} · ran {seconds:.0} s · `flotilla sweep report {}`",
                    summary.id, summary.id
                ),
                None => format!("flotilla · sweep {}", summary.id),
            };
            json!({
                "text": text,
                "blocks": [
                    { "type": "section", "text": { "type": "mrkdwn", "text": text } },
                    { "type": "context", "elements": [ { "type": "mrkdwn", "text": context } ] },
                ],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature is HMAC-SHA256 over "t.body": checked against a value computed
    /// independently (Python: hmac.new(b"0123456789abcdef", b"1700000000.{}", "sha256")).
    #[test]
    fn signatures_are_hmac_sha256_over_the_timestamp_and_body() {
        let secret = SigningSecret::new(b"0123456789abcdef").expect("long enough");
        assert_eq!(
            secret.signature(1_700_000_000, b"{}"),
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
        assert_ne!(
            secret.signature(1_700_000_001, b"{}"),
            secret.signature(1_700_000_000, b"{}")
        );
        assert!(SigningSecret::new(b"short").is_err());
        assert_eq!(format!("{secret:?}"), "SigningSecret(..)");
    }

    #[test]
    fn urls_are_checked_without_repeating_them() {
        let error = Webhook::parse(2, "hooks.slack.com/services/SECRET")
            .expect_err("no scheme")
            .to_string();
        assert!(error.contains("#2") && !error.contains("SECRET"), "{error}");
        let error = Webhook::parse(1, "ftp://example.invalid/SECRET")
            .expect_err("not http")
            .to_string();
        assert!(!error.contains("SECRET"), "{error}");
        let webhook =
            Webhook::parse(3, "https://hooks.slack.com/services/T0/B0/SECRET").expect("valid");
        assert_eq!(webhook.label, "webhook #3 (hooks.slack.com)");
    }

    /// Serves `answers` in order, one per connection, and counts the requests.
    async fn receiver(
        answers: Vec<String>,
    ) -> (Webhook, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            for answer in answers {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buffer = vec![0; 64 * 1024];
                let _ = stream.read(&mut buffer).await;
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        let webhook = Webhook::parse(1, &format!("http://{address}/hook")).expect("valid");
        (webhook, count)
    }

    const CLOSE: &str = "content-length: 0\r\nconnection: close\r\n\r\n";

    fn body() -> Arc<[u8]> {
        serde_json::to_vec(&json!({"text": "x"}))
            .expect("JSON")
            .into()
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_and_too_many_requests_is() {
        let client = reqwest::Client::new();
        let (webhook, count) = receiver(vec![format!("HTTP/1.1 404 Not Found\r\n{CLOSE}")]).await;
        deliver(client.clone(), webhook, body(), "d1".into()).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

        let (webhook, count) = receiver(vec![
            format!("HTTP/1.1 429 Too Many Requests\r\nretry-after: 0\r\n{CLOSE}"),
            format!("HTTP/1.1 200 OK\r\n{CLOSE}"),
        ])
        .await;
        deliver(client, webhook, body(), "d2".into()).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
