//! The admin API (`/admin/api/...`), as the official `APINodeAdminClient` calls it, plus an
//! upload route for remote tools (the body is the archive).

use super::auth::AdminKey;
use super::{ApiError, AppState};
use apinode_runtime::{GenerationInfo, Mapping, MappingEntry, Runtime};
use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

type JsonResult = Result<Json<Value>, ApiError>;

pub(super) fn routes(max_archive_bytes: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/admin/api/services",
            get(list_services).post(create_service),
        )
        .route("/admin/api/services/{service}", delete(delete_service))
        .route(
            "/admin/api/services/{service}/generations",
            get(list_generations),
        )
        .route(
            "/admin/api/services/{service}/generations/actions/importFromArchive",
            post(import_from_archive),
        )
        .route(
            "/admin/api/services/{service}/generations/actions/upload",
            post(upload).layer(DefaultBodyLimit::max(max_archive_bytes)),
        )
        .route(
            "/admin/api/services/{service}/generations/{generation}/preload",
            post(preload),
        )
        .route("/admin/api/services/{service}/actions/enable", post(enable))
        .route(
            "/admin/api/services/{service}/actions/disable",
            post(disable),
        )
        .route(
            "/admin/api/services/{service}/actions/setMapping",
            post(set_mapping),
        )
        .route(
            "/admin/api/services/{service}/actions/switchToNewest",
            post(switch_to_newest),
        )
        .route(
            "/admin/api/services/{service}/actions/switchTo/{generation}",
            post(switch_to),
        )
        .route("/admin/api/metrics", get(metrics))
        .route("/admin/api/keys", get(list_keys).post(create_key))
        .route("/admin/api/keys/{secret}", delete(delete_key))
        .route("/admin/api/keys/{id}/key", delete(delete_key_by_id))
}

fn ok() -> JsonResult {
    Ok(Json(json!({"ok": true})))
}

/// Parses a JSON body; an empty body is `{}`.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid {what} body: {e}")))
}

async fn list_services(State(state): State<AppState>, _: AdminKey) -> JsonResult {
    let services: Vec<Value> = state
        .runtime
        .list_services()
        .into_iter()
        .map(|s| json!({"serviceId": s.id, "enabled": s.enabled}))
        .collect();
    Ok(Json(Value::Array(services)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateService {
    service_id: Option<String>,
}

async fn create_service(State(state): State<AppState>, key: AdminKey, body: Bytes) -> JsonResult {
    let request: CreateService = json_body(&body, "create-service")?;
    let service = request
        .service_id
        .ok_or_else(|| ApiError::bad_request("field `serviceId` is required"))?;
    state.runtime.create_service(&service, &key.0)?;
    ok()
}

async fn delete_service(
    State(state): State<AppState>,
    key: AdminKey,
    Path(service): Path<String>,
) -> JsonResult {
    state.runtime.delete_service(&service, &key.0)?;
    ok()
}

fn generation_json(g: &GenerationInfo) -> Value {
    json!({
        "generation": g.id,
        "importedOn": g.imported_on,
        "preloaded": g.loaded,
        "archiveSize": g.archive_size,
        "archiveSha256": g.archive_sha256,
        "endpoints": g.endpoints.iter()
            .map(|(id, kind)| json!({"id": id, "kind": kind.as_str()}))
            .collect::<Vec<_>>(),
    })
}

fn mapping_json(mapping: &Mapping) -> Value {
    json!({
        "entries": mapping.entries.iter()
            .map(|e| json!({"generation": e.generation, "proba": e.proba}))
            .collect::<Vec<_>>(),
        "hashBased": mapping.hash_based,
    })
}

async fn list_generations(
    State(state): State<AppState>,
    _: AdminKey,
    Path(service): Path<String>,
) -> JsonResult {
    let view = state.runtime.list_generations(&service)?;
    Ok(Json(json!({
        "generations": view.generations.iter().map(generation_json).collect::<Vec<_>>(),
        "mapping": view.mapping.as_ref().map(mapping_json),
        "enabled": view.enabled,
    })))
}

/// Runs an import on the blocking pool: verifying and indexing a big bundle takes a while.
async fn import_blocking(
    runtime: Arc<Runtime>,
    work: impl FnOnce(&Runtime) -> apinode_runtime::Result<GenerationInfo> + Send + 'static,
) -> JsonResult {
    let info = tokio::task::spawn_blocking(move || work(&runtime))
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("the import task failed: {e}"),
            )
        })??;
    Ok(Json(generation_json(&info)))
}

async fn import_from_archive(
    State(state): State<AppState>,
    key: AdminKey,
    Path(service): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> JsonResult {
    let path = params
        .get("filePath")
        .filter(|p| !p.is_empty())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(
                "query parameter `filePath` is required: the archive's path on the node",
            )
        })?;
    import_blocking(state.runtime.clone(), move |runtime| {
        runtime.import_generation_from_file(&service, std::path::Path::new(&path), &key.0)
    })
    .await
}

async fn upload(
    State(state): State<AppState>,
    key: AdminKey,
    Path(service): Path<String>,
    body: Bytes,
) -> JsonResult {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body must be the bundle archive (it is empty)",
        ));
    }
    import_blocking(state.runtime.clone(), move |runtime| {
        runtime.import_generation(&service, body, "(uploaded archive)", &key.0)
    })
    .await
}

async fn preload(
    State(state): State<AppState>,
    _: AdminKey,
    Path((service, generation)): Path<(String, String)>,
) -> JsonResult {
    state.runtime.preload_generation(&service, &generation)?;
    ok()
}

async fn enable(
    State(state): State<AppState>,
    key: AdminKey,
    Path(service): Path<String>,
) -> JsonResult {
    state.runtime.set_enabled(&service, true, &key.0)?;
    ok()
}

async fn disable(
    State(state): State<AppState>,
    key: AdminKey,
    Path(service): Path<String>,
) -> JsonResult {
    state.runtime.set_enabled(&service, false, &key.0)?;
    ok()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MappingBody {
    entries: Vec<MappingEntryBody>,
    #[serde(default)]
    hash_based: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingEntryBody {
    generation: String,
    proba: f64,
}

async fn set_mapping(
    State(state): State<AppState>,
    key: AdminKey,
    Path(service): Path<String>,
    body: Bytes,
) -> JsonResult {
    let body: MappingBody = json_body(&body, "mapping")?;
    let mapping = Mapping {
        entries: body
            .entries
            .into_iter()
            .map(|e| MappingEntry {
                generation: e.generation,
                proba: e.proba,
            })
            .collect(),
        hash_based: body.hash_based,
    };
    state.runtime.set_mapping(&service, mapping, &key.0)?;
    ok()
}

async fn switch_to_newest(
    State(state): State<AppState>,
    key: AdminKey,
    Path(service): Path<String>,
) -> JsonResult {
    let generation = state.runtime.switch_to_newest(&service, &key.0)?;
    Ok(Json(json!({"ok": true, "generation": generation})))
}

async fn switch_to(
    State(state): State<AppState>,
    key: AdminKey,
    Path((service, generation)): Path<(String, String)>,
) -> JsonResult {
    state.runtime.switch_to(&service, &generation, &key.0)?;
    Ok(Json(json!({"ok": true, "generation": generation})))
}

async fn metrics(State(state): State<AppState>, _: AdminKey) -> JsonResult {
    let metrics = state.runtime.metrics();
    let services: serde_json::Map<String, Value> = metrics
        .services
        .iter()
        .map(|s| {
            let endpoints: serde_json::Map<String, Value> = s
                .endpoints
                .iter()
                .map(|(id, m)| {
                    (
                        id.clone(),
                        json!({
                            "requests": m.requests,
                            "errors": m.errors,
                            "items": m.items,
                            "totalMicros": m.total_micros,
                        }),
                    )
                })
                .collect();
            (
                s.service.clone(),
                json!({
                    "enabled": s.enabled,
                    "generations": s.generations,
                    "activeGenerations": s.active_generations,
                    "residentBytes": s.resident_bytes,
                    "endpoints": endpoints,
                }),
            )
        })
        .collect();
    let mut body = json!({
        "uptimeSeconds": metrics.uptime_seconds,
        "services": services,
    });
    if let Some(audit) = &state.audit {
        body["audit"] = audit.metrics_json();
    }
    Ok(Json(body))
}

fn key_json(k: &apinode_runtime::AdminKeyInfo) -> Value {
    json!({
        "id": k.id,
        "label": k.label,
        "description": k.description,
        "createdBy": k.created_by,
        "createdOn": k.created_on,
        "expiry": k.expiry,
    })
}

async fn list_keys(State(state): State<AppState>, _: AdminKey) -> JsonResult {
    Ok(Json(Value::Array(
        state
            .runtime
            .list_admin_keys()
            .iter()
            .map(key_json)
            .collect(),
    )))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateKey {
    label: Option<String>,
    description: Option<String>,
    created_by: Option<String>,
    expiry: Option<Value>,
}

async fn create_key(State(state): State<AppState>, key: AdminKey, body: Bytes) -> JsonResult {
    let request: CreateKey = json_body(&body, "create-key")?;
    let (info, secret) = state.runtime.create_admin_key(
        request.label,
        request.description,
        request.created_by,
        request.expiry.filter(|v| !v.is_null()),
        &key.0,
    )?;
    let mut body = key_json(&info);
    body["key"] = Value::String(secret);
    Ok(Json(body))
}

async fn delete_key(
    State(state): State<AppState>,
    key: AdminKey,
    Path(secret): Path<String>,
) -> JsonResult {
    state.runtime.delete_admin_key(&secret, &key.0)?;
    ok()
}

async fn delete_key_by_id(
    State(state): State<AppState>,
    key: AdminKey,
    Path(id): Path<String>,
) -> JsonResult {
    state.runtime.delete_admin_key_by_id(&id, &key.0)?;
    ok()
}
