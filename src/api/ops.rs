//! `POST /drain`, `DELETE /drain` (hold new work before a restart) and
//! `GET /logs` (the log files, capped, redacted, followable).

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::extract::{ApiJson, ApiQuery};
use crate::error::ApiError;
use crate::ops::DrainView;

/// Default bound on the wait for the runs in flight.
const DEFAULT_DEADLINE_S: u64 = 600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// A JSON number: `600` and `600.0` are the same integer to JSON
    /// Schema, so both are taken; a fraction is refused.
    #[serde(default)]
    deadline_s: Option<serde_json::Number>,
}

/// `n` as a whole number of seconds, when it is one.
fn whole_seconds(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u32::MAX as f64)
            .map(|f| f as u64)
    })
}

/// Start draining (or move the running drain's deadline). Returns at
/// once; `GET /agent` says when it is `drained`.
pub async fn drain(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<DrainBody>,
) -> Result<(StatusCode, Json<DrainView>), ApiError> {
    let max = crate::ops::drain::MAX_DEADLINE.as_secs();
    let deadline_s = match &body.deadline_s {
        None => DEFAULT_DEADLINE_S,
        Some(n) => whole_seconds(n).unwrap_or(0),
    };
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

/// Lines per page unless asked (and at most).
const LOG_LINES_DEFAULT: u32 = 200;
const LOG_LINES_MAX: u32 = 1000;
/// Bytes of line text per response.
const LOG_BYTES_MAX: usize = 1024 * 1024;
/// Longest `q`.
const LOG_QUERY_MAX: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    source: Option<String>,
    since: Option<String>,
    until: Option<String>,
    level: Option<String>,
    q: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    follow: Option<bool>,
}

fn parse_time(field: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|t| {
        crate::timestamp::parse_rfc3339(t)
            .map(|ms| ms * 1000)
            .ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "`{field}` must be an RFC 3339 time with a four-digit year"
                ))
            })
    })
    .transpose()
}

/// `GET /logs`: the gateway's or the daemon's log lines (redacted), newest
/// last; after `cursor` (or `since`) oldest first, else the last `limit`.
/// `follow=true`: server-sent events, resumable with `Last-Event-ID`.
pub async fn logs(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<LogsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use crate::ops::logs::{Caps, Cursor, Filter, Level, Source};
    let source = match q.source.as_deref() {
        None => Source::Gateway,
        Some(s) => Source::parse(s).ok_or_else(|| {
            ApiError::InvalidArgument("`source` must be gateway or daemon".into())
        })?,
    };
    let min_level = q
        .level
        .as_deref()
        .map(|l| {
            Level::parse(l).ok_or_else(|| {
                ApiError::InvalidArgument(
                    "`level` must be error, warn, info, debug or trace".into(),
                )
            })
        })
        .transpose()?;
    if q.q
        .as_ref()
        .is_some_and(|t| t.chars().count() > LOG_QUERY_MAX)
    {
        return Err(ApiError::InvalidArgument(format!(
            "`q` must be at most {LOG_QUERY_MAX} characters"
        )));
    }
    let limit = match q.limit {
        None => LOG_LINES_DEFAULT,
        Some(n @ 1..=LOG_LINES_MAX) => n,
        Some(_) => {
            return Err(ApiError::InvalidArgument(format!(
                "`limit` must be 1 to {LOG_LINES_MAX}"
            )));
        }
    } as usize;
    let header_cursor = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().ok().and_then(Cursor::parse).ok_or_else(|| {
            ApiError::InvalidArgument("`Last-Event-ID` must be a log cursor".into())
        })?),
        None => None,
    };
    let query_cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            Cursor::parse(c)
                .ok_or_else(|| ApiError::InvalidArgument("`cursor` is not a log cursor".into()))
        })
        .transpose()?;
    let filter = Filter {
        since_us: parse_time("since", q.since.as_deref())?,
        until_us: parse_time("until", q.until.as_deref())?,
        min_level,
        q: q.q.clone(),
    };
    let after = header_cursor.or(query_cursor);
    let files = state.ops.log_files(source);
    if q.follow == Some(true) {
        let permit = state
            .ops
            .followers
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyRequests {
                message: format!(
                    "at most {} log followers at once; retry later",
                    crate::ops::MAX_FOLLOWERS
                ),
                retry_after_s: 10,
            })?;
        let rx = crate::ops::follow::start(
            files,
            filter,
            after,
            limit,
            permit,
            state.ops.shutdown.clone(),
        );
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
        });
        return Ok((
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
                (HeaderName::from_static("x-accel-buffering"), "no"),
            ],
            Body::from_stream(body),
        )
            .into_response());
    }
    let caps = Caps {
        lines: limit,
        bytes: LOG_BYTES_MAX,
    };
    let forward = after.is_some() || filter.since_us.is_some();
    let page = tokio::task::spawn_blocking(move || {
        if forward {
            files.after(after, &filter, caps).0
        } else {
            files.tail(&filter, caps)
        }
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(page).into_response())
}

/// `GET /diagnostics`: a `tar.gz` for support (bounded, redacted).
pub async fn diagnostics(State(state): State<AppState>) -> Result<Response, ApiError> {
    use crate::ops::diagnostics::{self, DiagnosticsError, Sources};
    let archive = diagnostics::bundle(Sources {
        config: &state.config,
        store: &state.store,
        agent: &state.agent,
        link: &state.hub,
        ops: &state.ops,
    })
    .await
    .map_err(|e| match e {
        DiagnosticsError::Store(s) => ApiError::from(s),
        DiagnosticsError::Archive(io) => ApiError::internal(io),
        DiagnosticsError::Join(j) => ApiError::internal(j),
    })?;
    let name = format!(
        "attachment; filename=\"hermes-tenantd-diagnostics-{}.tar.gz\"",
        state.config.tenant_id
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_DISPOSITION, name),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        archive,
    )
        .into_response())
}
