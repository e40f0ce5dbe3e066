//! `GET /agent` and `POST /agent/start|stop|restart`: the supervised
//! gateway's status and the hub's lifecycle commands.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use crate::agent::{AgentCommand, AgentStatus, DesiredBy};
use crate::error::ApiError;

/// `GET /agent`: the status, the drain and the activity signal.
#[derive(serde::Serialize)]
pub struct AgentView {
    #[serde(flatten)]
    status: AgentStatus,
    drain: crate::ops::DrainView,
    activity: crate::ops::ActivityView,
}

pub async fn status(State(state): State<AppState>) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(AgentView {
        status: state.agent.status(),
        drain: state.ops.drain.view(),
        activity: state.ops.activity().await?,
    }))
}

async fn command(
    state: &AppState,
    cmd: AgentCommand,
) -> Result<(StatusCode, Json<AgentStatus>), ApiError> {
    let status = state
        .agent
        .send(cmd, DesiredBy::Operator)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// Idempotent: a start of a running agent is a no-op; a start while
/// `failed` or in `backoff` clears the backoff and tries now.
pub async fn start(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<AgentStatus>), ApiError> {
    // A suspended tenant's agent stays stopped until the hub restores access.
    state.hub.ensure_active().map_err(|_| ApiError::Suspended)?;
    command(&state, AgentCommand::Start).await
}

/// Idempotent: persists desired `stopped` and stops the gateway.
pub async fn stop(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<AgentStatus>), ApiError> {
    command(&state, AgentCommand::Stop).await
}

/// Persists desired `running` and restarts the gateway (a planned stop).
pub async fn restart(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<AgentStatus>), ApiError> {
    state.hub.ensure_active().map_err(|_| ApiError::Suspended)?;
    command(&state, AgentCommand::Restart).await
}
