//! `/files`: tenant-visible roots, directory pages, text previews and
//! streamed downloads. Path checks live in `crate::files`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::ApiQuery;
use super::{AppState, page_size};
use crate::error::ApiError;
use crate::files::{Listing, PathError, Preview, content_disposition, content_type};
use crate::store::cursor;

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::Invalid(m) => ApiError::InvalidArgument(m),
            e @ (PathError::NotFound | PathError::NoRoot(_) | PathError::RootUnavailable(_)) => {
                ApiError::NotFound(e.to_string())
            }
            e @ (PathError::IsDirectory(_)
            | PathError::NotDirectory(_)
            | PathError::NotRegular(_)) => ApiError::InvalidArgument(e.to_string()),
            e @ PathError::Binary(_) => ApiError::UnsupportedMediaType(e.to_string()),
            e @ PathError::TooLarge { .. } => ApiError::FileTooLarge {
                message: e.to_string(),
            },
            PathError::Io(e) => ApiError::internal(e),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    root: Option<String>,
    path: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    root: String,
    path: String,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PathError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(crate::identity::spawn_as_agent(f)
        .await
        .map_err(ApiError::internal)??)
}

/// Without `root`: the roots. With `root` (and `path`): one page of that
/// directory.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let files = state.files.clone();
    let limit = page_size(&state, q.limit)? as usize;
    // Without `root`, `path` and `cursor` name nothing and are ignored (as
    // the document says): the roots listing does not depend on them, and
    // OpenAPI cannot make one query parameter require another.
    let Some(root) = q.root else {
        // Still checked, so an ignored value is refused the same way a used
        // one would be.
        if q.path
            .as_ref()
            .is_some_and(|p| p.len() > crate::files::MAX_PATH_BYTES)
        {
            return Err(ApiError::InvalidArgument(format!(
                "`path` is longer than {} bytes",
                crate::files::MAX_PATH_BYTES
            )));
        }
        if let Some(c) = q.cursor.as_deref() {
            cursor::decode(c)?;
        }
        let roots = blocking(move || Ok(files.list_roots())).await?;
        return Ok(Json(json!({ "roots": roots })));
    };
    let after = match q.cursor.as_deref() {
        Some(c) => Some(cursor::decode(c)?),
        None => None,
    };
    let path = q.path.unwrap_or_default();
    let listing: Listing = blocking(move || {
        let root = files.root(&root)?.clone();
        files.list_dir(&root, &path, after.as_deref(), limit)
    })
    .await?;
    let mut v = serde_json::to_value(&listing).map_err(ApiError::internal)?;
    v["next_cursor"] = match &listing.next_cursor {
        Some(c) => Value::String(cursor::encode(c)),
        None => Value::Null,
    };
    Ok(Json(v))
}

/// A text preview, up to `files.preview_bytes`.
pub async fn content(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> Result<Json<Preview>, ApiError> {
    let files = state.files.clone();
    let p = blocking(move || {
        let root = files.root(&q.root)?.clone();
        files.preview(&root, &q.path)
    })
    .await?;
    Ok(Json(p))
}

/// The file's bytes, streamed, as an attachment.
pub async fn download(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    let files = state.files.clone();
    let dl = blocking(move || {
        let root = files.root(&q.root)?.clone();
        files.open_download(&root, &q.path)
    })
    .await?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(dl.file));
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(dl.size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&dl.name)),
    );
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&dl.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}
