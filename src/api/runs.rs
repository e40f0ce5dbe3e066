//! `/runs`: start, inspect, follow (SSE), stop, approve.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{AppState, page_size};
use crate::error::ApiError;
use crate::runs::{RunError, StartRun};
use crate::store::conversations::Page;
use crate::store::runs::{self as run_store, Run};

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Invalid(m) => ApiError::InvalidArgument(m),
            RunError::NotFound(id) => ApiError::NotFound(format!("run `{id}` does not exist")),
            RunError::Conflict(m) => ApiError::Conflict(m),
            RunError::Suspended => ApiError::Suspended,
            RunError::AgentNotInstalled(m) => ApiError::AgentNotInstalled(m),
            RunError::Busy {
                message,
                retry_after_s,
            } => ApiError::TooManyRequests {
                message,
                retry_after_s,
            },
            RunError::Unavailable(m) => ApiError::Unavailable(m),
            e @ RunError::Draining { retry_after_s } => ApiError::Draining {
                message: e.to_string(),
                retry_after_s,
            },
            RunError::Store(s) => ApiError::from(s),
        }
    }
}

pub async fn start(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<StartRun>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let run = state.runs.start(body).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

#[derive(Deserialize)]
pub struct RunPath {
    run_id: String,
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
) -> Result<Json<Run>, ApiError> {
    Ok(Json(state.runs.get(&p.run_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    session_id: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<Run>>, ApiError> {
    let limit = page_size(&state, q.limit)?;
    if let Some(s) = &q.status {
        if !run_store::STATUSES.contains(&s.as_str()) {
            return Err(ApiError::InvalidArgument(format!(
                "`status` must be one of {}",
                run_store::STATUSES.join(", ")
            )));
        }
    }
    let page = state
        .store
        .read(move |c| {
            run_store::list(
                c,
                q.session_id.as_deref(),
                q.status.as_deref(),
                limit,
                q.cursor.as_deref(),
            )
        })
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Same as the `Last-Event-ID` header (which wins).
    after: Option<i64>,
}

pub async fn events(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Checked even when the header wins: a bad value is refused either way.
    if q.after.is_some_and(|n| n < 0) {
        return Err(ApiError::InvalidArgument(
            "`after` must be an event id (0 or more)".into(),
        ));
    }
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::InvalidArgument("`Last-Event-ID` must be an event id".into())
            })?,
        None => q.after.unwrap_or(0),
    };
    let rx = state.runs.subscribe(&p.run_id, after).await?;
    let body = crate::runs::sse::body(rx, state.config.runs.keepalive);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Tell a buffering reverse proxy (nginx) to pass events on at once.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

pub async fn stop(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.runs.stop(&p.run_id).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    choice: String,
}

pub async fn approval(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
    ApiJson(body): ApiJson<ApprovalBody>,
) -> Result<Json<Run>, ApiError> {
    Ok(Json(state.runs.approve(&p.run_id, &body.choice).await?))
}
