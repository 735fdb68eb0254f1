//! Bearer tokens for Flotilla's HTTP endpoints (the router's feedback and, when gated,
//! predictions; the coordinator's web view and metrics), kept hashed in a file.
//!
//! The file has one token per line: `NAME SCOPES sha256:HEX`, where SCOPES is a comma-separated
//! list of `feedback`, `predict`, `read` (web view, API and metrics) or `*`, and HEX is the
//! SHA-256 of the token. Blank lines and lines starting with `#` are ignored. The tokens
//! themselves are never stored: `flotilla certs token create` prints a new one once and
//! appends its hash. A token is 32 random bytes in hex behind `flt_`, so a plain SHA-256 is
//! enough (there is nothing to guess that a salt would protect).
//!
//! [`TokenFile::watch`] rereads the file when it changes (every two seconds), so tokens are
//! added and revoked without a restart. A file that no longer parses is reported and the
//! previous tokens stay in force. A request is checked with [`TokenFile::check`]:
//! `Authorization: Bearer TOKEN`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Send labels to a router (`POST /v1/feedback`).
    Feedback,
    /// Ask for predictions and read routes where predictions are gated.
    Predict,
    /// Read the coordinator's web view, JSON API and metrics where they are gated.
    Read,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Feedback, Scope::Predict, Scope::Read];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Feedback => "feedback",
            Scope::Predict => "predict",
            Scope::Read => "read",
        }
    }

    pub fn from_name(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }
}

/// One line of a token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    /// Empty means every scope (`*`).
    pub scopes: Vec<Scope>,
    pub hash: [u8; 32],
}

impl TokenEntry {
    fn allows(&self, scope: Scope) -> bool {
        self.scopes.is_empty() || self.scopes.contains(&scope)
    }

    /// The line as the file holds it.
    pub fn line(&self) -> String {
        let scopes = if self.scopes.is_empty() {
            "*".to_string()
        } else {
            self.scopes
                .iter()
                .map(|scope| scope.name())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!("{} {scopes} sha256:{}", self.name, hex(&self.hash))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Why a request's credential was not accepted; the HTTP status and message to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of a token, as the file keeps it.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: `flt_` and 64 hex digits.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("flt_{}", hex(&bytes))
}

/// Parses a token file's text; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    let mut entries: Vec<TokenEntry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let problem = |message: String| TokenError::Parse {
            path: path.into(),
            line: index + 1,
            message,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, scopes, hash] = fields[..] else {
            return Err(problem(format!(
                "expected `NAME SCOPES sha256:HEX`, found {} field(s)",
                fields.len()
            )));
        };
        let scopes = if scopes == "*" {
            vec![]
        } else {
            scopes
                .split(',')
                .map(|scope| {
                    Scope::from_name(scope).ok_or_else(|| {
                        problem(format!(
                            "unknown scope {scope:?} (feedback, predict, read or *)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let hash = hash
            .strip_prefix("sha256:")
            .and_then(unhex)
            .ok_or_else(|| problem("the hash must be sha256: and 64 hex digits".into()))?;
        if entries.iter().any(|entry| entry.name == name) {
            return Err(problem(format!("the name {name:?} is used twice")));
        }
        entries.push(TokenEntry {
            name: name.to_string(),
            scopes,
            hash,
        });
    }
    Ok(entries)
}

/// Reads and parses a token file (a missing file holds no tokens).
pub fn read(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(error) => Err(TokenError::Read {
            path: path.into(),
            message: error.to_string(),
        }),
    }
}

/// The tokens in force, shared by request handlers and the watcher.
#[derive(Clone)]
pub struct TokenFile {
    path: PathBuf,
    by_hash: Arc<RwLock<HashMap<[u8; 32], TokenEntry>>>,
}

impl TokenFile {
    /// Loads `path`; fails when it exists but does not parse.
    pub fn load(path: &Path) -> Result<TokenFile, TokenError> {
        let file = TokenFile {
            path: path.into(),
            by_hash: Arc::default(),
        };
        file.install(read(path)?);
        Ok(file)
    }

    fn install(&self, entries: Vec<TokenEntry>) {
        let map = entries
            .into_iter()
            .map(|entry| (entry.hash, entry))
            .collect();
        *self.by_hash.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.by_hash.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The token's name when `headers` carry a bearer token that allows `scope`.
    pub fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<String, Refused> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(Refused {
                status: StatusCode::UNAUTHORIZED,
                message: format!(
                    "this endpoint needs a bearer token with the {} scope (Authorization: Bearer TOKEN; `flotilla certs token create`)",
                    scope.name()
                ),
            });
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| text.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        let hash = hash_token(token);
        let known = self.by_hash.read().unwrap_or_else(|p| p.into_inner());
        match known.get(&hash) {
            Some(entry) if entry.allows(scope) => Ok(entry.name.clone()),
            Some(entry) => Err(Refused {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "token {:?} does not have the {} scope",
                    entry.name,
                    scope.name()
                ),
            }),
            None => Err(Refused {
                status: StatusCode::UNAUTHORIZED,
                message: "the bearer token is not known here (revoked, mistyped, or from another token file)".into(),
            }),
        }
    }

    /// Rereads the file whenever it changes until `shutdown`.
    pub async fn watch(self, shutdown: CancellationToken) {
        let mut last = std::fs::read_to_string(&self.path).ok();
        let mut ticker = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let current = tokio::fs::read_to_string(&self.path).await.ok();
            if current == last {
                continue;
            }
            // A removed file holds no tokens, as at start.
            let parsed = parse(current.as_deref().unwrap_or_default(), &self.path);
            last = current;
            match parsed {
                Ok(entries) => {
                    tracing::info!(path = %self.path.display(), tokens = entries.len(), "token file reloaded");
                    self.install(entries);
                }
                Err(error) => {
                    tracing::error!(%error, "the token file changed but does not parse; the previous tokens stay in force");
                }
            }
        }
    }
}

/// Paths an endpoint gated by [`gate_reads`] still serves to anyone: liveness and readiness
/// probes, and the web view's static page and assets (they hold no data; the page asks for a
/// token before it reads the API).
pub const OPEN_PATHS: [&str; 5] = ["/healthz", "/readyz", "/", "/ui/app.js", "/ui/app.css"];

/// Puts every path of `app` but [`OPEN_PATHS`] behind a bearer token with the read scope
/// (the coordinator's web view API and metrics, an agent's metrics).
/// A refusal is 401 or 403 with a JSON body that says what was missing.
pub fn gate_reads(app: axum::Router, tokens: TokenFile) -> axum::Router {
    app.layer(axum::middleware::from_fn_with_state(tokens, require_read))
}

async fn require_read(
    axum::extract::State(tokens): axum::extract::State<TokenFile>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match tokens.check(request.headers(), Scope::Read) {
        Ok(_) => next.run(request).await,
        Err(refused) => (
            refused.status,
            [("www-authenticate", "Bearer")],
            axum::Json(serde_json::json!({ "error": refused.message })),
        )
            .into_response(),
    }
}

/// Adds a new token named `name` with `scopes` to the file at `path` (created, mode 0600, if
/// missing) and returns the token, which is not kept anywhere.
pub fn create(path: &Path, name: &str, scopes: Vec<Scope>) -> Result<String, TokenError> {
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    let refuse = |message: String| TokenError::Parse {
        path: path.into(),
        line: 0,
        message,
    };
    if !valid_name {
        return Err(refuse(format!(
            "the name {name:?} must be letters, digits, '-', '_', '.' or '@'"
        )));
    }
    let mut entries = read(path)?;
    if entries.iter().any(|entry| entry.name == name) {
        return Err(refuse(format!(
            "a token named {name:?} exists; revoke it first or choose another name"
        )));
    }
    let token = new_token();
    entries.push(TokenEntry {
        name: name.to_string(),
        scopes,
        hash: hash_token(&token),
    });
    write(path, &entries)?;
    Ok(token)
}

/// Removes the token named `name`; false when there was none.
pub fn revoke(path: &Path, name: &str) -> Result<bool, TokenError> {
    let mut entries = read(path)?;
    let before = entries.len();
    entries.retain(|entry| entry.name != name);
    if entries.len() == before {
        return Ok(false);
    }
    write(path, &entries)?;
    Ok(true)
}

/// Writes the file aside and renames it into place, so a reader never sees half of it.
fn write(path: &Path, entries: &[TokenEntry]) -> Result<(), TokenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |error: std::io::Error| TokenError::Read {
        path: path.into(),
        message: error.to_string(),
    };
    let mut text =
        String::from("# Flotilla bearer tokens: NAME SCOPES sha256:HASH (flotilla certs token)\n");
    for entry in entries {
        text.push_str(&entry.line());
        text.push('\n');
    }
    let staging = path.with_extension("new");
    let _ = std::fs::remove_file(&staging);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&staging, path).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        headers
    }

    #[test]
    fn tokens_are_stored_hashed_checked_by_scope_and_revoked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        let labeller = create(&path, "labeller", vec![Scope::Feedback]).expect("create");
        let everything = create(&path, "ops", vec![]).expect("create");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains(&labeller) && !text.contains(&everything),
            "{text}"
        );
        assert!(text.contains("labeller feedback sha256:"), "{text}");
        let file = TokenFile::load(&path).expect("load");
        assert_eq!(file.len(), 2);
        assert_eq!(
            file.check(&bearer(&labeller), Scope::Feedback),
            Ok("labeller".into())
        );
        let refused = file
            .check(&bearer(&labeller), Scope::Read)
            .expect_err("wrong scope");
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(file.check(&bearer(&everything), Scope::Read).is_ok());
        let missing = file
            .check(&HeaderMap::new(), Scope::Feedback)
            .expect_err("no header");
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert!(missing.message.contains("feedback"), "{}", missing.message);
        let wrong = file
            .check(&bearer("flt_guess"), Scope::Feedback)
            .expect_err("unknown");
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(
            create(&path, "labeller", vec![]).is_err(),
            "names are unique"
        );
        assert!(revoke(&path, "labeller").expect("revoke"));
        assert!(!revoke(&path, "labeller").expect("revoke again"));
        let file = TokenFile::load(&path).expect("load");
        assert!(file.check(&bearer(&labeller), Scope::Feedback).is_err());
    }

    #[test]
    fn a_bad_line_is_named() {
        let path = Path::new("tokens");
        let error = parse("# ok\nalice feedback sha256:00\n", path).expect_err("short hash");
        assert!(error.to_string().contains("tokens line 2"), "{error}");
        let error = parse("alice shout sha256:x\n", path).expect_err("scope");
        assert!(error.to_string().contains("\"shout\""), "{error}");
        let error = parse("alice\n", path).expect_err("fields");
        assert!(error.to_string().contains("1 field(s)"), "{error}");
    }
}
