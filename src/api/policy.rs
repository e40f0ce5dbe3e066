//! `/agent-policy`: the hub's enforced settings, defaults and features.

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::AppState;
use super::extract::ApiJson;
use crate::error::ApiError;
use crate::policy::{PolicyError, PolicyView};

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Invalid(m) => ApiError::InvalidArgument(m),
            e @ PolicyError::Stale { .. } => ApiError::Conflict(e.to_string()),
            PolicyError::NotFound(m) => ApiError::NotFound(m),
            PolicyError::Limit(m) | PolicyError::Blocked(m) => ApiError::Conflict(m),
            PolicyError::Settings(e) => e.into(),
            PolicyError::Store(e) => e.into(),
            PolicyError::Io(e) => ApiError::from_io(e),
        }
    }
}

pub async fn get(State(state): State<AppState>) -> Result<Json<PolicyView>, ApiError> {
    Ok(Json(state.agent_config.policy_view().await?))
}

/// All or nothing; an older or equal version is `409`.
pub async fn put(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<PolicyView>, ApiError> {
    Ok(Json(state.agent_config.put_policy(body).await?))
}
