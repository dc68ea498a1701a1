//! The `/_sim/` control endpoints that change the simulated drive over HTTP
//! (tests and the demo drive it with them): create, list, edit, trash, move and
//! delete files, share and unshare them, and expire change tokens.
//!
//! Invariants: these are not Drive endpoints; they sit outside the API gate, so
//! they are never counted, logged, failed, delayed or rate limited. Each one
//! does exactly what the matching [`GdriveSim`] method does; an unknown file is
//! a 404 `notFound` with Google's error body. The shared `/_sim/stats`
//! endpoints come from [`crate::simulators::http`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{file_not_found, google_error, permission_base_json};
use super::{GdriveSim, PermissionError, SimFile, SimPermission};

/// The file and token control routes.
pub(super) fn routes() -> Router<GdriveSim> {
    Router::new()
        .route("/_sim/files", post(ctl_create).get(ctl_list))
        .route("/_sim/files/{id}", put(ctl_update).delete(ctl_delete))
        .route("/_sim/files/{id}/trash", post(ctl_trash))
        .route("/_sim/files/{id}/move", post(ctl_move))
        .route("/_sim/files/{id}/permissions", post(ctl_share))
        .route("/_sim/files/{id}/permissions/{permission_id}", delete(ctl_unshare))
        .route("/_sim/tokens/expire", post(ctl_expire))
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct UpdateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct MoveBody {
    parent: String,
}

/// A permissions.create request body: `{type, role, emailAddress?, domain?, allowFileDiscovery?}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShareBody {
    r#type: String,
    role: String,
    #[serde(default)]
    email_address: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    allow_file_discovery: Option<bool>,
}

#[derive(Deserialize, Default)]
struct ExpireBody {
    #[serde(default)]
    before: Option<u64>,
}

async fn ctl_create(State(sim): State<GdriveSim>, Json(b): Json<CreateBody>) -> Response {
    let parent = b.parent.unwrap_or_else(|| sim.root_folder_id());
    let mime = b.mime_type.unwrap_or_else(|| "text/plain".to_owned());
    match sim.create_file(&b.name, &parent, &mime, &b.content) {
        Some(id) => (StatusCode::CREATED, Json(json!({"id": id}))).into_response(),
        None => file_not_found(&parent),
    }
}

async fn ctl_list(State(sim): State<GdriveSim>) -> Json<Vec<SimFile>> {
    Json(sim.files())
}

async fn ctl_update(State(sim): State<GdriveSim>, Path(id): Path<String>, Json(b): Json<UpdateBody>) -> Response {
    if sim.update_file(&id, b.name.as_deref(), b.content.as_deref()) {
        Json(json!({"id": id})).into_response()
    } else {
        file_not_found(&id)
    }
}

async fn ctl_delete(State(sim): State<GdriveSim>, Path(id): Path<String>) -> Response {
    if sim.delete_file(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        file_not_found(&id)
    }
}

async fn ctl_trash(State(sim): State<GdriveSim>, Path(id): Path<String>) -> Response {
    if sim.trash_file(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        file_not_found(&id)
    }
}

async fn ctl_move(State(sim): State<GdriveSim>, Path(id): Path<String>, Json(b): Json<MoveBody>) -> Response {
    if sim.move_file(&id, &b.parent) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        google_error(
            400,
            "global",
            "badRequest",
            &format!("Cannot move {id} to {}", b.parent),
            None,
        )
    }
}

/// Google's error for a refused share or unshare.
fn permission_error(id: &str, permission_id: &str, e: PermissionError) -> Response {
    match e {
        PermissionError::FileNotFound => file_not_found(id),
        PermissionError::PermissionNotFound => google_error(
            404,
            "global",
            "notFound",
            &format!("Permission not found: {permission_id}."),
            Some(("parameter", "permissionId")),
        ),
        // The reference documents no reason for removing an inherited grant (or
        // the owner's); the closest documented one is 403
        // `insufficientFilePermissions` ("Resolve errors": the user "doesn't have
        // write access to a file, and your app is attempting to modify the
        // file"). Tools report `cannotDeletePermission` for some refused
        // deletes, undocumented, so not used here.
        PermissionError::Inherited | PermissionError::Owner => google_error(
            403,
            "global",
            "insufficientFilePermissions",
            &format!("The user does not have sufficient permissions for file {id}."),
            None,
        ),
        PermissionError::Invalid(message) => google_error(400, "global", "invalid", &message, None),
    }
}

async fn ctl_share(State(sim): State<GdriveSim>, Path(id): Path<String>, Json(b): Json<ShareBody>) -> Response {
    let perm = SimPermission {
        id: String::new(),
        r#type: b.r#type,
        role: b.role,
        email_address: b.email_address,
        domain: b.domain,
        allow_file_discovery: b.allow_file_discovery,
    };
    match sim.share(&id, perm) {
        Ok(p) => Json(permission_base_json(&p)).into_response(),
        Err(e) => permission_error(&id, "", e),
    }
}

async fn ctl_unshare(State(sim): State<GdriveSim>, Path((id, permission_id)): Path<(String, String)>) -> Response {
    match sim.unshare(&id, &permission_id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => permission_error(&id, &permission_id, e),
    }
}

async fn ctl_expire(State(sim): State<GdriveSim>, body: Option<Json<ExpireBody>>) -> Json<Value> {
    match body.map(|Json(b)| b).unwrap_or_default().before {
        Some(before) => sim.expire_tokens_before(before),
        None => sim.expire_all_tokens(),
    }
    Json(json!({"next_change_id": sim.next_change_id()}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulators::gdrive::model::FIRST_CHANGE;
    use crate::simulators::gdrive::{SimConfig, get_json, start};

    /// Control endpoints create, move, trash, delete and list files, and expire
    /// tokens, without counting themselves as API calls.
    #[tokio::test]
    async fn control_endpoints() {
        let (sim, base) = start(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let created: Value = http
            .post(format!("{base}/_sim/files"))
            .json(&json!({"name": "x.txt", "content": "x"}))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let id = created["id"].as_str().expect("id").to_owned();
        let outside = sim.create_folder("Outside", &sim.drive_root_id()).expect("folder");
        let resp = http
            .post(format!("{base}/_sim/files/{id}/move"))
            .json(&json!({"parent": outside}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        let resp = http
            .post(format!("{base}/_sim/files/{id}/trash"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        let listed: Vec<SimFile> = http
            .get(format!("{base}/_sim/files"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let f = listed.iter().find(|f| f.id == id).expect("listed");
        assert!(f.trashed && f.parent.as_deref() == Some(outside.as_str()));
        let resp = http
            .delete(format!("{base}/_sim/files/{id}"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        http.post(format!("{base}/_sim/tokens/expire"))
            .send()
            .await
            .expect("send");
        let (status, _) = get_json(&http, &format!("{base}/drive/v3/changes?pageToken={FIRST_CHANGE}")).await;
        assert_eq!(status, 400);
        assert_eq!(sim.total_calls(), 1);
        assert!(sim.files_in_tree().is_empty());
    }
}
