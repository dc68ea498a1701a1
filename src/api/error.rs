//! `ApiError`: every way an API request can fail, and the response each one gets.
//!
//! Invariants:
//! - Each failure has its own status and a stable `code`, so clients match on
//!   the code, never on message text: body not JSON (400), body of the wrong
//!   shape or a bad field value (422, naming the field), a body that is not
//!   declared as JSON (415), a body over the limit (413), unknown source or
//!   request (404), run record expired (410), no or unknown API token (401,
//!   with `WWW-Authenticate: Bearer`), a token whose scope is too small (403),
//!   Redis unavailable (503), any other server fault (500).
//! - 4xx bodies are `{"error": {"code", "message"[, "field"]}}` and say what
//!   was wrong with which input.
//! - 5xx bodies are generic: Redis addresses, key names and internal messages
//!   never reach clients. The detail travels in a response extension to
//!   [`log_server_errors`], which logs it once, with the method and path.

use std::sync::Arc;

use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::retry::Transient;
use crate::{queue, state};

/// A failed API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all (syntax error, truncated, not UTF-8).
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not what the route accepts (wrong shape, unknown
    /// field, bad value); also a bad query parameter.
    #[error("{field}: {message}")]
    InvalidField {
        /// The offending field (`mode`, `runs`, or `body` for the whole body).
        field: String,
        /// What was wrong with it, quoting the value received.
        message: String,
    },
    /// A body came with a `Content-Type` other than JSON.
    #[error("content type {0:?} is not supported; send application/json")]
    UnsupportedMediaType(String),
    /// The body is larger than the route accepts.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No such source. Ids that break the source-id syntax land here too: they
    /// name no resource, and one answer for "no such source" keeps clients simple.
    #[error("unknown source {id:?} (configured: {})", configured.join(", "))]
    UnknownSource {
        /// The id as it appeared in the path. (Not named `source`: thiserror
        /// would take a field of that name for the error's cause.)
        id: String,
        /// The configured source ids, as a hint.
        configured: Vec<String>,
    },
    /// The request id is not one tidemark could have issued (not a UUID).
    #[error("unknown request {0:?}: request ids are UUIDs returned by POST /v1/sources/{{source}}/syncs")]
    UnknownRequest(String),
    /// A run served the request, but its record has expired (kept 7 days).
    #[error("request {request_id:?} was served by run {run_id}, whose record has expired")]
    RunExpired {
        /// The request.
        request_id: String,
        /// The run that served it.
        run_id: String,
    },
    /// No such route.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The source takes no webhooks (no `[sources.webhook]`).
    #[error("source {0:?} has no webhook configured")]
    WebhooksNotConfigured(String),
    /// A webhook delivery failed verification; nothing was enqueued.
    #[error("{message}")]
    Unauthorized {
        /// `missing_signature`, `bad_signature`, `stale_timestamp`, `replayed`, `bad_channel_token`.
        code: &'static str,
        /// What was wrong, without echoing secrets.
        message: String,
    },
    /// No API token, or one tidemark does not know (401, `WWW-Authenticate: Bearer`).
    #[error("{message}")]
    NotAuthenticated {
        /// `missing_token` or `bad_token`.
        code: &'static str,
        /// What was wrong, without echoing the token.
        message: String,
    },
    /// A known token whose scope does not allow the request (403).
    #[error("token {name:?} has scope {has}; this needs {needs}")]
    Forbidden {
        /// The token's name.
        name: String,
        /// Its scope.
        has: &'static str,
        /// The scope the request needs.
        needs: &'static str,
    },
    /// Redis did not answer (down, paused, unreachable, pool exhausted); retrying later may work.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Anything else on our side (corrupt state, an unexpected Redis reply).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The detail of a 5xx, carried from [`ApiError::into_response`] to [`log_server_errors`].
#[derive(Debug, Clone)]
struct ServerErrorDetail(Arc<String>);

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotJson(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownSource { .. }
            | ApiError::UnknownRequest(_)
            | ApiError::NoRoute(_)
            | ApiError::WebhooksNotConfigured(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized { .. } | ApiError::NotAuthenticated { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::RunExpired { .. } => StatusCode::GONE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotJson(_) => "invalid_json",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnknownSource { .. } => "unknown_source",
            ApiError::UnknownRequest(_) => "unknown_request",
            ApiError::RunExpired { .. } => "run_expired",
            ApiError::NoRoute(_) => "not_found",
            ApiError::WebhooksNotConfigured(_) => "webhooks_not_configured",
            ApiError::Unauthorized { code, .. } | ApiError::NotAuthenticated { code, .. } => code,
            ApiError::Forbidden { .. } => "insufficient_scope",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// A bad value of `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            let message = match self {
                ApiError::Unavailable(_) => "storage is unavailable; retry later",
                _ => "internal server error",
            };
            let body = json!({"error": {"code": self.code(), "message": message}});
            let mut response = (status, Json(body)).into_response();
            response
                .extensions_mut()
                .insert(ServerErrorDetail(Arc::new(self.to_string())));
            return response;
        }
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let ApiError::InvalidField { field, .. } = &self {
            error["field"] = json!(field);
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if let ApiError::NotAuthenticated { .. } = &self {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("a valid header value"),
            );
        }
        response
    }
}

/// Middleware: logs the detail of every 5xx this API produced, once, with the request line.
pub async fn log_server_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(ServerErrorDetail(detail)) = response.extensions().get::<ServerErrorDetail>() {
        tracing::error!(%method, %path, status = response.status().as_u16(), error = %detail, "API request failed");
    }
    response
}

impl From<queue::Error> for ApiError {
    fn from(e: queue::Error) -> Self {
        // "Redis is not answering" (503: retry later) rather than "Redis answered
        // something we did not expect" (500: a bug or corrupt data); the same
        // test every component's retries use.
        if e.is_transient() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<state::Error> for ApiError {
    fn from(e: state::Error) -> Self {
        match e {
            state::Error::Queue(q) => q.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    /// A 4xx names the field and the problem; a 5xx hides its detail from the client.
    #[tokio::test]
    async fn client_errors_explain_server_errors_do_not() {
        let (status, v) = body_json(ApiError::field("mode", "\"sideways\" is not incremental or full")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(v["error"]["code"], "invalid_field");
        assert_eq!(v["error"]["field"], "mode");
        assert!(v["error"]["message"].as_str().unwrap_or("").contains("sideways"), "{v}");

        let (status, v) = body_json(ApiError::Unavailable("redis://10.0.0.7:6379 timed out".into())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error"]["code"], "unavailable");
        assert!(!v.to_string().contains("10.0.0.7"), "5xx leaked its detail: {v}");
    }

    /// The 5xx detail rides in the response extensions, for the logging middleware.
    #[test]
    fn server_errors_carry_their_detail() {
        let r = ApiError::Internal("state x: corrupt".into()).into_response();
        let detail = r.extensions().get::<ServerErrorDetail>().expect("detail attached");
        assert!(detail.0.contains("corrupt"));
        assert!(
            ApiError::NotJson("x".into())
                .into_response()
                .extensions()
                .get::<ServerErrorDetail>()
                .is_none()
        );
    }
}
