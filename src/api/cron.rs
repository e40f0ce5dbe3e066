//! `/agent-cron`: the tenant's scheduled jobs (CRUD, pause/resume, run now,
//! history). Every rule lives in `cron::CronService`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{AppState, page_size};
use crate::cron::{CronError, Firing, Job};
use crate::error::ApiError;

impl From<CronError> for ApiError {
    fn from(e: CronError) -> Self {
        match e {
            CronError::Invalid(m) => ApiError::InvalidArgument(m),
            CronError::NotFound(m) => ApiError::NotFound(m),
            CronError::Conflict(m) => ApiError::Conflict(m),
            CronError::Run(r) => ApiError::from(r),
            CronError::Store(s) => ApiError::from(s),
        }
    }
}

#[derive(Deserialize)]
pub struct JobPath {
    job_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    enabled: Option<bool>,
    paused: Option<bool>,
}

#[derive(Serialize)]
pub struct JobList {
    jobs: Vec<Job>,
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let jobs = state.cron.list(q.enabled, q.paused).await?;
    Ok(Json(JobList { jobs }))
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.cron.create(&body).await?)))
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<JobPath>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.cron.get(&p.job_id).await?))
}

pub async fn update(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<JobPath>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.cron.update(&p.job_id, &body).await?))
}

pub async fn remove(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<JobPath>,
) -> Result<StatusCode, ApiError> {
    state.cron.delete(&p.job_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn pause(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<JobPath>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.cron.set_paused(&p.job_id, true).await?))
}

pub async fn resume(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<JobPath>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.cron.set_paused(&p.job_id, false).await?))
}

pub async fn run_now(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<JobPath>,
) -> Result<(StatusCode, Json<Firing>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.cron.run_now(&p.job_id).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<u32>,
}

#[derive(Serialize)]
pub struct History {
    runs: Vec<Firing>,
}

pub async fn history(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<JobPath>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    let limit = page_size(&state, q.limit)?;
    let runs = state.cron.history(&p.job_id, limit).await?;
    Ok(Json(History { runs }))
}
