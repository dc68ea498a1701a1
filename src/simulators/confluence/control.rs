//! The `/_sim/` control endpoints that change the simulated space over HTTP
//! (tests and the demo drive it with them): create, list, edit, delete (to
//! the trash), purge and restore pages; set a page's read restriction; replace
//! the space's permission assignments:
//! - `PUT /_sim/pages/{id}/restrictions/read` with
//!   `{"users":[{"accountId","email"?,"publicName"?,"displayName"?}],"groups":[{"name","id"}]}`
//!   (both lists may be omitted; empty = no restriction): 204, or 404.
//! - `PUT /_sim/space/permissions` with `[{"id"?,"principal":{"type","id"},"operation":{"key","targetType"}}]`: 204.
//!
//! Invariants: these are not Confluence endpoints; they sit outside the API
//! gate, so they are never counted, failed, delayed or rate limited. Each one
//! does exactly what the matching [`ConfluenceSim`] method does; an unknown page
//! is a 404 with Atlassian's v2 error body. The shared `/_sim/stats` endpoints
//! come from [`crate::simulators::http`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::api::error_response;
use super::{ConfluenceSim, SimPage, SimRestriction, SimSpacePermission};

/// The page control routes.
pub(super) fn routes() -> Router<ConfluenceSim> {
    Router::new()
        .route("/_sim/pages", post(ctl_create).get(ctl_list))
        .route("/_sim/pages/{id}", put(ctl_update).delete(ctl_delete))
        .route("/_sim/pages/{id}/purge", post(ctl_purge))
        .route("/_sim/pages/{id}/restore", post(ctl_restore))
        .route("/_sim/pages/{id}/restrictions/read", put(ctl_read_restriction))
        .route("/_sim/space/permissions", put(ctl_space_permissions))
}

#[derive(Deserialize)]
struct CreateBody {
    title: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    body: String,
}

#[derive(Deserialize)]
struct UpdateBody {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

async fn ctl_create(State(sim): State<ConfluenceSim>, Json(b): Json<CreateBody>) -> Response {
    let id = sim.create_page(&b.title, b.parent_id.as_deref(), &b.body);
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

async fn ctl_list(State(sim): State<ConfluenceSim>) -> Json<Vec<SimPage>> {
    Json(sim.pages())
}

async fn ctl_update(State(sim): State<ConfluenceSim>, Path(id): Path<String>, Json(b): Json<UpdateBody>) -> Response {
    if sim.update_page(&id, b.title.as_deref(), b.body.as_deref()) {
        Json(json!({"id": id})).into_response()
    } else {
        error_response(404, false, &format!("Page {id} not found"))
    }
}

/// 204 when `done`, else a 404 saying `why`.
fn no_content_or_404(done: bool, why: String) -> Response {
    if done {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error_response(404, false, &why)
    }
}

async fn ctl_delete(State(sim): State<ConfluenceSim>, Path(id): Path<String>) -> Response {
    no_content_or_404(sim.delete_page(&id), format!("Page {id} not found"))
}

async fn ctl_purge(State(sim): State<ConfluenceSim>, Path(id): Path<String>) -> Response {
    no_content_or_404(sim.purge_page(&id), format!("Page {id} is not in the trash"))
}

async fn ctl_restore(State(sim): State<ConfluenceSim>, Path(id): Path<String>) -> Response {
    no_content_or_404(sim.restore_page(&id), format!("Page {id} is not in the trash"))
}

async fn ctl_read_restriction(
    State(sim): State<ConfluenceSim>,
    Path(id): Path<String>,
    Json(r): Json<SimRestriction>,
) -> Response {
    no_content_or_404(
        sim.set_read_restriction(&id, r.users, r.groups),
        format!("Page {id} not found"),
    )
}

async fn ctl_space_permissions(
    State(sim): State<ConfluenceSim>,
    Json(perms): Json<Vec<SimSpacePermission>>,
) -> Response {
    sim.set_space_permissions(perms);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::simulators::confluence::{SimConfig, start};

    /// The /_sim control endpoints create, edit, delete and list pages and report
    /// call counts, without counting themselves; deleting a parent re-parents children.
    #[tokio::test]
    async fn control_endpoints_drive_the_simulator() {
        let (sim, base) = start(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let created: Value = http
            .post(format!("{base}/_sim/pages"))
            .json(&json!({"title": "Root", "body": "<p>r</p>"}))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let root = created["id"].as_str().expect("id").to_owned();
        let child = sim.create_page("Child", Some(&root), "<p>c</p>");
        let resp = http
            .put(format!("{base}/_sim/pages/{child}"))
            .json(&json!({"title": "Child v2"}))
            .send()
            .await
            .expect("send");
        assert!(resp.status().is_success());
        let listed: Vec<SimPage> = http
            .get(format!("{base}/_sim/pages"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[1].title.as_str(), listed[1].version), ("Child v2", 2));
        assert_eq!(listed[1].parent_id.as_deref(), Some(root.as_str()));
        let resp = http
            .delete(format!("{base}/_sim/pages/{root}"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        assert_eq!(sim.pages()[0].parent_id, None);
        http.get(format!("{base}/wiki/api/v2/pages?id={child}"))
            .send()
            .await
            .expect("send");
        let stats: Value = http
            .get(format!("{base}/_sim/stats"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(stats["total"], 1);
        assert_eq!(stats["by_endpoint"]["GET /wiki/api/v2/pages"], 1);
        http.post(format!("{base}/_sim/stats/reset"))
            .send()
            .await
            .expect("send");
        assert_eq!(sim.total_calls(), 0);
    }
}
