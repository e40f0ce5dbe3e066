//! `/agent/releases`: agent releases installed on the VM, their install,
//! activation (behind the health gate) and removal.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{ApiJson, ApiPath};
use crate::error::ApiError;
use crate::releases::{ReleaseError, ReleaseView};

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::InvalidVersion(_) | ReleaseError::InvalidSha256 => {
                ApiError::InvalidArgument(e.to_string())
            }
            ReleaseError::NotFound(_) => ApiError::NotFound(e.to_string()),
            ReleaseError::Conflict(_) | ReleaseError::Quarantined(_) => {
                ApiError::Conflict(e.to_string())
            }
            ReleaseError::Busy => ApiError::Unavailable(e.to_string()),
            ReleaseError::Store(s) => s.into(),
        }
    }
}

#[derive(Deserialize)]
pub struct VersionPath {
    version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallBody {
    version: String,
    #[serde(default)]
    sha256: Option<String>,
}

#[derive(Serialize)]
pub struct ReleaseList {
    releases: Vec<ReleaseView>,
}

pub async fn list(State(state): State<AppState>) -> Result<Json<ReleaseList>, ApiError> {
    Ok(Json(ReleaseList {
        releases: state.releases.list().await?,
    }))
}

/// `202` and the release (`installing`, or as it already is: idempotent).
pub async fn install(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<InstallBody>,
) -> Result<(StatusCode, Json<ReleaseView>), ApiError> {
    let (view, _queued) = state
        .releases
        .install(&body.version, body.sha256.as_deref())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// `202`: the switch runs in the background; `GET` shows its outcome.
pub async fn activate(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<VersionPath>,
) -> Result<(StatusCode, Json<ReleaseView>), ApiError> {
    state.hub.ensure_active().map_err(|_| ApiError::Suspended)?;
    let view = state.releases.activate(&p.version).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

pub async fn remove(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<VersionPath>,
) -> Result<StatusCode, ApiError> {
    state.releases.delete(&p.version).await?;
    Ok(StatusCode::NO_CONTENT)
}
