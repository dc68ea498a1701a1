//! The API's OpenAPI 3.1 document, generated from the handlers themselves
//! (`utoipa`): every route is registered through `utoipa_axum::routes!`, which
//! takes only handlers carrying their `#[utoipa::path]`, so the document and
//! the router cannot drift apart. Served at `/openapi.json`.

use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The document's fixed parts; the paths come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "tidemark",
        description = "Incremental sync of knowledge-base sources: request syncs, follow them, read status. \
                       Routes under /v1 need a bearer token whose scope (read < sync < admin) covers them, \
                       when the server has tokens configured.",
    ),
    modifiers(&BearerTokens),
    tags(
        (name = "sync", description = "Requesting syncs and following them"),
        (name = "status", description = "Sources, runs and queues"),
        (name = "operations", description = "Probes, metrics and this document"),
        (name = "webhooks", description = "Change notifications from sources (signed, no token)"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the `/v1` routes name.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An [api] token: NAME SCOPE TOKEN in tokens_file or tokens_env"))
                    .build(),
            ),
        );
    }
}
