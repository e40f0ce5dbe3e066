//! `/memory`: the agent's long-term memories.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::conversations::parse_mode;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{AppState, page_size};
use crate::error::ApiError;
use crate::store::conversations::Page;
use crate::store::memory::{self, Memory, MemoryHit, MemoryStats, NewMemory};

pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewMemory>,
) -> Result<(StatusCode, Json<Memory>), ApiError> {
    let m = state.store.write(move |c| memory::insert(c, &body)).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    source: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<Memory>>, ApiError> {
    let limit = page_size(&state, q.limit)?;
    let page = state
        .store
        .read(move |c| memory::list(c, q.source.as_deref(), limit, q.cursor.as_deref()))
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: Option<String>,
    mode: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn search(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<Page<MemoryHit>>, ApiError> {
    let limit = page_size(&state, q.limit)?;
    let query =
        q.q.filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ApiError::InvalidArgument("`q` is required".into()))?;
    // Characters, as the document's `maxLength` counts.
    if query.chars().count() > 1024 {
        return Err(ApiError::InvalidArgument(
            "`q` is longer than 1024 characters".into(),
        ));
    }
    let plain = parse_mode(q.mode.as_deref())?;
    let page = state
        .store
        .read(move |c| memory::search(c, &query, plain, limit, q.cursor.as_deref()))
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
pub struct IdPath {
    id: i64,
}

pub async fn remove(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<IdPath>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .write(move |c| memory::delete(c, path.id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn stats(State(state): State<AppState>) -> Result<Json<MemoryStats>, ApiError> {
    Ok(Json(state.store.read(memory::stats).await?))
}
