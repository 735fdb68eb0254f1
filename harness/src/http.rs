//! Plain HTTP/1.1 on loopback, Prometheus scrapes, and headless Chromium.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Output};
use std::time::Duration;

/// A plain HTTP/1.1 GET on loopback; returns the status code and the body.
pub fn http_get(address: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    http_get_with(address, path_and_query, None)
}

/// [`http_get`] with `Authorization: Bearer TOKEN` when `bearer` is given.
pub fn http_get_with(
    address: &str,
    path_and_query: &str,
    bearer: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    // Chunked bodies (Prometheus answers so) are de-chunked well enough for JSON: the
    // chunk sizes sit on their own lines between the pieces.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query-string value.
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request on a fresh connection to 127.0.0.1:`port`, with extra header lines
/// (each ending in `\r\n`): (status, headers lowercased, body); status 0 when the
/// connection failed.
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    extra_headers: &str,
) -> (u16, BTreeMap<String, String>, String) {
    let failed = |error: std::io::Error| (0, BTreeMap::new(), error.to_string());
    let mut stream = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(stream) => stream,
        Err(error) => return failed(error),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    let mut text = String::new();
    if let Err(error) = stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.read_to_string(&mut text).map(|_| ()))
    {
        return failed(error);
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// The samples of one metric family an endpoint's `/metrics` (127.0.0.1:`port`) serves now:
/// (series with its labels, value). Empty when the endpoint does not answer.
pub fn scrape(port: u16, family: &str) -> Vec<(String, f64)> {
    let Ok((_, text)) = http_get(&format!("127.0.0.1:{port}"), "/metrics") else {
        return Vec::new();
    };
    text.lines()
        .filter(|line| {
            line.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Headless Chromium (Debian's `chromium`) with a fresh profile and no background traffic,
/// run with `args` (for instance `--dump-dom URL` or `--screenshot=PATH URL`).
pub fn chromium(args: &[&str]) -> Output {
    let profile = tempfile::tempdir().expect("a profile directory");
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs (./scripts/test.sh installs Debian's chromium)")
}
