//! `/conversations`: sessions, messages, append (history import), search.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{AppState, page_size};
use crate::error::ApiError;
use crate::store::conversations::{
    self, AppendMessages, Appended, Message, Page, Role, SearchFilter, SearchHit, SearchSort,
    Session, parse_time_text,
};

#[derive(Deserialize)]
pub struct SessionPath {
    session_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    platform: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list_sessions(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<Session>>, ApiError> {
    let limit = page_size(&state, q.limit)?;
    if let Some(p) = &q.platform {
        conversations::validate_platform(p)?;
    }
    let page = state
        .store
        .read(move |c| {
            conversations::list_sessions(c, q.platform.as_deref(), limit, q.cursor.as_deref())
        })
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list_messages(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<SessionPath>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> Result<Json<Page<Message>>, ApiError> {
    let limit = page_size(&state, q.limit)?;
    let page = state
        .store
        .read(move |c| {
            conversations::list_messages(c, &path.session_id, limit, q.cursor.as_deref())
        })
        .await?;
    Ok(Json(page))
}

pub async fn append_messages(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<SessionPath>,
    ApiJson(body): ApiJson<AppendMessages>,
) -> Result<(StatusCode, Json<Appended>), ApiError> {
    let appended = state
        .store
        .write(move |c| conversations::append(c, &path.session_id, &body))
        .await?;
    Ok((StatusCode::CREATED, Json(appended)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: Option<String>,
    /// `fts` (default): FTS5 syntax; `plain`: every word literally.
    mode: Option<String>,
    platform: Option<String>,
    role: Option<String>,
    session_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// `relevance` (default): best bm25 first; `recent`: newest first.
    sort: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Longest accepted search string.
const MAX_QUERY_CHARS: usize = 1024;

pub async fn search(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<Page<SearchHit>>, ApiError> {
    let limit = page_size(&state, q.limit)?;
    let query =
        q.q.filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ApiError::InvalidArgument("`q` is required".into()))?;
    // Characters, as the document's `maxLength` counts.
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::InvalidArgument(format!(
            "`q` is longer than {MAX_QUERY_CHARS} characters"
        )));
    }
    let plain = parse_mode(q.mode.as_deref())?;
    let sort = match q.sort.as_deref() {
        None => SearchSort::Relevance,
        Some(s) => SearchSort::parse(s).ok_or_else(|| {
            ApiError::InvalidArgument("`sort` must be `relevance` or `recent`".into())
        })?,
    };
    let role = match q.role.as_deref() {
        None => None,
        Some(r) => Some(Role::parse(r).ok_or_else(|| {
            ApiError::InvalidArgument("`role` must be one of system, user, assistant, tool".into())
        })?),
    };
    if let Some(p) = &q.platform {
        conversations::validate_platform(p)?;
    }
    if let Some(s) = &q.session_id {
        conversations::validate_session_id(s)?;
    }
    let filter = SearchFilter {
        query,
        plain,
        platform: q.platform,
        role,
        session_id: q.session_id,
        since_ms: q
            .since
            .as_deref()
            .map(|t| parse_time_text(t, "since"))
            .transpose()?,
        until_ms: q
            .until
            .as_deref()
            .map(|t| parse_time_text(t, "until"))
            .transpose()?,
        sort,
        limit,
        cursor: q.cursor,
    };
    let page = state
        .store
        .read(move |c| conversations::search(c, &filter))
        .await?;
    Ok(Json(page))
}

/// `mode=fts|plain`; returns `true` for plain.
pub(super) fn parse_mode(mode: Option<&str>) -> Result<bool, ApiError> {
    match mode {
        None | Some("fts") => Ok(false),
        Some("plain") => Ok(true),
        Some(_) => Err(ApiError::InvalidArgument(
            "`mode` must be `fts` or `plain`".into(),
        )),
    }
}
