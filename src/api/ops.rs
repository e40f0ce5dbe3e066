//! `POST /drain`, `DELETE /drain`: hold new work before a restart.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::AppState;
use super::extract::ApiJson;
use crate::error::ApiError;
use crate::ops::DrainView;

/// Default bound on the wait for the runs in flight.
const DEFAULT_DEADLINE_S: u64 = 600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    #[serde(default)]
    deadline_s: Option<u64>,
}

/// Start draining (or move the running drain's deadline). Returns at
/// once; `GET /agent` says when it is `drained`.
pub async fn drain(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<DrainBody>,
) -> Result<(StatusCode, Json<DrainView>), ApiError> {
    let max = crate::ops::drain::MAX_DEADLINE.as_secs();
    let deadline_s = body.deadline_s.unwrap_or(DEFAULT_DEADLINE_S);
    if deadline_s == 0 || deadline_s > max {
        return Err(ApiError::InvalidArgument(format!(
            "`deadline_s` must be 1 to {max}"
        )));
    }
    state.ops.drain.begin(Duration::from_secs(deadline_s));
    Ok((StatusCode::ACCEPTED, Json(state.ops.drain.view())))
}

/// End the drain (idempotent): queued runs start, cron firings resume.
pub async fn cancel_drain(State(state): State<AppState>) -> Json<DrainView> {
    state.ops.drain.cancel();
    Json(state.ops.drain.view())
}
