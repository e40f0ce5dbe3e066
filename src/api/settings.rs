//! `/settings`: the managed part of the gateway's `config.yaml`.

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::AppState;
use super::extract::ApiJson;
use crate::error::ApiError;
use crate::settings::SettingsError;

impl From<SettingsError> for ApiError {
    fn from(e: SettingsError) -> Self {
        match e {
            SettingsError::Invalid(m) => ApiError::InvalidArgument(m),
            e @ SettingsError::Unusable(_) => ApiError::Conflict(e.to_string()),
            e @ SettingsError::TooLarge => ApiError::FileTooLarge {
                message: e.to_string(),
            },
            SettingsError::Io(e) => ApiError::from_io(e),
            SettingsError::Enforced(key) => ApiError::PolicyEnforced(key),
        }
    }
}

pub async fn get(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.hermes_config.get().await?))
}

/// Dotted keys and/or nested objects; `null` unsets; all or nothing.
pub async fn patch(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let v = state.hermes_config.patch(body).await?;
    tracing::info!("settings updated");
    Ok(Json(v))
}
