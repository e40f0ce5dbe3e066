//! Liveness, readiness, metrics and version.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store answers a query (it was opened and migrated before
/// the listener started).
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|_| ApiError::Unavailable("the store does not answer".into()))?;
    if !state.store.writable().await {
        // Reads still work; the hub should not route writes here.
        return Err(ApiError::Unavailable(
            "the store cannot write: the data volume is full".into(),
        ));
    }
    Ok(Json(json!({
        "status": "ready",
        "schema_version": state.store.schema_version(),
    })))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store.clone();
    let db_bytes = tokio::task::spawn_blocking(move || store.disk_bytes())
        .await
        .unwrap_or(0);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(db_bytes),
    )
}

pub async fn version(State(state): State<AppState>) -> Json<Value> {
    let agent = state.agent.status();
    Json(json!({
        "daemon": crate::VERSION,
        "tenant_id": state.config.tenant_id,
        "schema_version": state.store.schema_version(),
        "agent_release": agent.release,
        "capabilities": crate::CAPABILITIES,
    }))
}
