//! `/agent-specialization`: the hub's default persona, skills bundle and
//! settings defaults.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

use super::AppState;
use super::extract::ApiJson;
use crate::error::ApiError;
use crate::policy::specialization::SpecializationView;

pub async fn get(State(state): State<AppState>) -> Result<Json<SpecializationView>, ApiError> {
    Ok(Json(state.agent_config.specialization_view().await?))
}

/// All or nothing; an older or equal version is `409`. Read by the gateway
/// when it builds a run's prompt: in effect from the next run.
pub async fn put(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<SpecializationView>, ApiError> {
    Ok(Json(state.agent_config.put_specialization(body).await?))
}

pub async fn remove(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state.agent_config.delete_specialization().await?;
    Ok(StatusCode::NO_CONTENT)
}
