//! `/connections`: MCP servers in the agent's managed `mcp_servers`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::extract::{ApiJson, ApiPath};
use crate::error::ApiError;
use crate::policy::ConnectionView;
use crate::policy::restart::Applies;

#[derive(serde::Deserialize)]
pub struct Name {
    name: String,
}

#[derive(Serialize)]
pub struct List {
    pub connections: Vec<ConnectionView>,
}

#[derive(Serialize)]
pub struct Changed {
    /// `now` or `after-current-runs` (the gateway restarts when idle).
    pub applies: Applies,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionView>,
}

pub async fn list(State(state): State<AppState>) -> Result<Json<List>, ApiError> {
    Ok(Json(List {
        connections: state.agent_config.connection_views().await?,
    }))
}

/// `202`: written; the gateway picks it up at its restart (when idle).
pub async fn put(
    State(state): State<AppState>,
    ApiPath(Name { name }): ApiPath<Name>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Changed>), ApiError> {
    let (applies, view) = state.agent_config.put_connection(name, body).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Changed {
            applies,
            connection: Some(view),
        }),
    ))
}

pub async fn remove(
    State(state): State<AppState>,
    ApiPath(Name { name }): ApiPath<Name>,
) -> Result<(StatusCode, Json<Changed>), ApiError> {
    let applies = state.agent_config.delete_connection(name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Changed {
            applies,
            connection: None,
        }),
    ))
}
