//! `[api]`: where the HTTP API listens and who may use it.
//!
//! Tokens come from a file (`tokens_file`) or an environment variable
//! (`tokens_env`), one per line (or `;`-separated in a variable):
//! `NAME SCOPE TOKEN`, e.g. `ci sync 6f1e...`. Scopes nest: `read` reads
//! status, `sync` also requests syncs, `admin` also confirms mass deletions.
//! With no tokens configured the API is open (a warning says so at start).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::Secret;

/// The shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

/// `[api]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    /// Where the HTTP API is served. Default `0.0.0.0:8080`; `""` disables it.
    pub listen: String,
    /// A file of API tokens, `NAME SCOPE TOKEN` per line.
    pub tokens_file: Option<PathBuf>,
    /// ... or the environment variable holding them (lines or `;`-separated).
    pub tokens_env: Option<String>,
    /// Whether `/metrics` needs a `read` token too (default: open, like the probes).
    pub protect_metrics: bool,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            tokens_file: None,
            tokens_env: None,
            protect_metrics: false,
        }
    }
}

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read sources, runs and requests.
    Read,
    /// Also request syncs.
    Sync,
    /// Also confirm mass deletions (`allow_mass_delete`).
    Admin,
}

impl Scope {
    /// The scope's name in token files and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Sync => "sync",
            Scope::Admin => "admin",
        }
    }
}

/// One API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Who holds it (logged with each request it authorises; never the token).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The bearer token itself.
    pub secret: Secret,
}

/// Checked `[api]`.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// Where to serve, if at all.
    pub listen: Option<SocketAddr>,
    /// The tokens; empty: the API is open.
    pub tokens: Vec<ApiToken>,
    /// `/metrics` needs a `read` token.
    pub protect_metrics: bool,
}

/// Parses `NAME SCOPE TOKEN` entries (`where` names their origin in problems).
fn parse_tokens(text: &str, origin: &str, problems: &mut Vec<String>) -> Vec<ApiToken> {
    let mut tokens: Vec<ApiToken> = Vec::new();
    let entries = text.split(['\n', ';']).map(str::trim);
    for (i, entry) in entries
        .enumerate()
        .filter(|(_, e)| !e.is_empty() && !e.starts_with('#'))
    {
        let at = format!("{origin}: entry {}", i + 1);
        let fields: Vec<&str> = entry.split_whitespace().collect();
        let [name, scope, token] = fields.as_slice() else {
            problems.push(format!(
                "{at}: expected `NAME SCOPE TOKEN`, got {} field(s)",
                fields.len()
            ));
            continue;
        };
        let scope = match *scope {
            "read" => Scope::Read,
            "sync" => Scope::Sync,
            "admin" => Scope::Admin,
            other => {
                problems.push(format!(
                    "{at} ({name}): unknown scope {other:?} (known: read, sync, admin)"
                ));
                continue;
            }
        };
        if token.chars().count() < MIN_TOKEN_CHARS {
            problems.push(format!(
                "{at} ({name}): the token is shorter than {MIN_TOKEN_CHARS} characters"
            ));
            continue;
        }
        if tokens.iter().any(|t| t.name == *name) {
            problems.push(format!("{at}: duplicate token name {name:?}"));
            continue;
        }
        tokens.push(ApiToken {
            name: (*name).to_owned(),
            scope,
            secret: Secret(token.as_bytes().to_vec()),
        });
    }
    tokens
}

/// Checks `[api]`, reading its tokens.
pub(super) fn check(raw: &RawApi, env: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<String>) -> ApiConfig {
    let listen = if raw.listen.is_empty() {
        None
    } else {
        match raw.listen.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!("api.listen: {:?} is not a host:port address", raw.listen));
                None
            }
        }
    };
    // The tokens' text and where it came from (for problems), if any was named.
    let named = match (&raw.tokens_file, &raw.tokens_env) {
        (Some(_), Some(_)) => {
            problems.push("api: give tokens_file or tokens_env, not both".into());
            None
        }
        (Some(path), None) => match std::fs::read_to_string(path) {
            Ok(text) => Some((text, format!("api.tokens_file {}", path.display()))),
            Err(e) => {
                problems.push(format!("api.tokens_file: {}: {e}", path.display()));
                None
            }
        },
        (None, Some(var)) => match env(var) {
            Some(text) => Some((text, format!("api.tokens_env {var}"))),
            None => {
                problems.push(format!("api.tokens_env: environment variable {var:?} is not set"));
                None
            }
        },
        (None, None) => None,
    };
    let tokens = match named {
        Some((text, origin)) => {
            let tokens = parse_tokens(&text, &origin, problems);
            if tokens.is_empty() {
                problems.push(format!("{origin}: no token in it"));
            }
            tokens
        }
        None => Vec::new(),
    };
    if raw.protect_metrics && tokens.is_empty() {
        problems.push("api.protect_metrics: needs tokens (tokens_file or tokens_env)".into());
    }
    ApiConfig {
        listen,
        tokens,
        protect_metrics: raw.protect_metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries parse with their scopes; bad ones are named by their place.
    #[test]
    fn token_entries() {
        let mut problems = Vec::new();
        let tokens = parse_tokens(
            "# who scope token\nci sync 0123456789abcdef01\n\nops admin fedcba9876543210ff;reader read aaaaaaaaaaaaaaaaaaaa",
            "t",
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let scopes: Vec<(&str, Scope)> = tokens.iter().map(|t| (t.name.as_str(), t.scope)).collect();
        assert_eq!(
            scopes,
            [("ci", Scope::Sync), ("ops", Scope::Admin), ("reader", Scope::Read)]
        );
        assert!(Scope::Admin > Scope::Sync && Scope::Sync > Scope::Read);

        let mut problems = Vec::new();
        parse_tokens(
            "a root 0123456789abcdef01\nb read short\nc read\nd read 0123456789abcdef01\nd sync 0123456789abcdef02",
            "t",
            &mut problems,
        );
        assert_eq!(
            problems,
            [
                "t: entry 1 (a): unknown scope \"root\" (known: read, sync, admin)",
                "t: entry 2 (b): the token is shorter than 16 characters",
                "t: entry 3: expected `NAME SCOPE TOKEN`, got 2 field(s)",
                "t: entry 5: duplicate token name \"d\"",
            ]
        );
    }
}
