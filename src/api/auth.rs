//! Bearer tokens (`[api]` tokens, `config::api`): who is calling, and whether
//! their scope allows the route.
//!
//! Invariants:
//! - A presented token is compared with every configured token in constant
//!   time (`subtle`), so neither timing nor the order of the tokens tells an
//!   attacker how much of a guess was right.
//! - Probes (`/healthz`, `/readyz`) and webhooks (which carry their own
//!   signatures) never ask for a token; `/metrics` does only with
//!   `protect_metrics`.
//! - With no tokens configured every caller is `anonymous` with the `admin`
//!   scope (the API is open; `tidemark coordinator` warns at start).
//! - Refusals are 401 (no token, unknown token) or 403 (scope too small),
//!   in the API's JSON error shape; the token is never echoed or logged.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::app::App;
use crate::config::Scope;

/// Who made a request, as the routes see it (a request extension).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name (`anonymous` when the API is open).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

impl Caller {
    /// Refuses unless the caller's scope includes `needed`.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                name: self.name.clone(),
                has: self.scope.as_str(),
                needs: needed.as_str(),
            })
        }
    }
}

/// The caller a request's `Authorization` header names.
fn caller(app: &App, request: &Request) -> Result<Caller, ApiError> {
    let tokens = &app.config.api.tokens;
    if tokens.is_empty() {
        return Ok(Caller {
            name: "anonymous".into(),
            scope: Scope::Admin,
        });
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::NotAuthenticated {
            code: "missing_token",
            message: "this route needs an API token: send `Authorization: Bearer <token>`".into(),
        })?;
    // Every token is compared, whatever matched: no early exit to time.
    let mut found: Option<&crate::config::ApiToken> = None;
    for token in tokens {
        if bool::from(token.secret.0.as_slice().ct_eq(presented.as_bytes())) {
            found = Some(token);
        }
    }
    found
        .map(|t| Caller {
            name: t.name.clone(),
            scope: t.scope,
        })
        .ok_or_else(|| ApiError::NotAuthenticated {
            code: "bad_token",
            message: "the API token is not one this server knows".into(),
        })
}

async fn gate(app: &App, mut request: Request, next: Next, needed: Scope) -> Result<Response, ApiError> {
    let caller = caller(app, &request)?;
    caller.require(needed)?;
    tracing::debug!(caller = %caller.name, path = %request.uri().path(), "API request authorised");
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Middleware: the route needs a `read` token.
pub async fn read(State(app): State<App>, request: Request, next: Next) -> Result<Response, ApiError> {
    gate(&app, request, next, Scope::Read).await
}

/// Middleware: the route needs a `sync` token.
pub async fn sync(State(app): State<App>, request: Request, next: Next) -> Result<Response, ApiError> {
    gate(&app, request, next, Scope::Sync).await
}

/// Middleware: `/metrics` needs a `read` token only with `protect_metrics`.
pub async fn metrics(State(app): State<App>, request: Request, next: Next) -> Result<Response, ApiError> {
    if app.config.api.protect_metrics {
        gate(&app, request, next, Scope::Read).await
    } else {
        Ok(next.run(request).await)
    }
}
