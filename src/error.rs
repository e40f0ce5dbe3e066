//! The one error type of the callback API, rendered as problem JSON in one
//! place: `{"code", "message", "status"}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// Every way a request can fail. `code()` and `status()` are exhaustive
/// matches: a new variant forces a decision about both.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid credential")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("the tenant is suspended; runs are refused until access is restored")]
    Suspended,
    /// `--dev` without an agent: a run cannot be relayed until one is
    /// installed. The message says how.
    #[error("{0}")]
    AgentNotInstalled(String),
    #[error("`{0}` is reserved and managed by the platform")]
    Reserved(String),
    /// A settings key the hub's agent policy enforces.
    #[error("`{0}` is enforced by the platform's agent policy and cannot be changed")]
    PolicyEnforced(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("invalid search query: {0}")]
    InvalidQuery(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    FileTooLarge { message: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// The daemon drains for maintenance: new work is refused for now.
    #[error("{message}")]
    Draining { message: String, retry_after_s: u64 },
    #[error("the request took longer than {0:?}")]
    Timeout(std::time::Duration),
    /// The data volume is full (`SQLITE_FULL`, `ENOSPC`, `EDQUOT`): nothing
    /// was written; the same request succeeds once space is freed.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The source is logged, never shown to the client.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    /// An I/O failure of a write: a full volume is the client's to know
    /// (`507`, retry later); anything else is internal.
    pub fn from_io(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => ApiError::InsufficientStorage(NO_SPACE.into()),
            _ => ApiError::internal(e),
        }
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Suspended => "suspended",
            ApiError::AgentNotInstalled(_) => "agent_not_installed",
            ApiError::Reserved(_) => "reserved",
            ApiError::PolicyEnforced(_) => "policy_enforced",
            ApiError::NotFound(_) => "not_found",
            ApiError::InvalidArgument(_) => "invalid_argument",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::FileTooLarge { .. } => "file_too_large",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Draining { .. } => "draining",
            ApiError::Timeout(_) => "timeout",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Suspended => StatusCode::FORBIDDEN,
            ApiError::AgentNotInstalled(_) => StatusCode::CONFLICT,
            ApiError::Reserved(_) => StatusCode::FORBIDDEN,
            ApiError::PolicyEnforced(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::FileTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Draining { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

const NO_SPACE: &str = "the data volume is full; nothing was written; retry once space is freed";

/// The body of every error response.
#[derive(Debug, Serialize)]
pub struct Problem<'a> {
    pub code: &'a str,
    pub message: String,
    pub status: u16,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(source) = &self {
            // The chain goes to the log only; the client sees `internal`.
            tracing::error!(error = %source, source = ?source.source(), "internal error");
        }
        let body = Problem {
            code: self.code(),
            message: self.to_string(),
            status: status.as_u16(),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::TooManyRequests { retry_after_s, .. }
        | ApiError::Draining { retry_after_s, .. } = &self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        if matches!(self, ApiError::Unauthenticated) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::InvalidQuery(m) => ApiError::InvalidQuery(m),
            StoreError::Invalid(m) => ApiError::InvalidArgument(m),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Busy => ApiError::Unavailable("the database is busy, retry".into()),
            StoreError::Full => ApiError::InsufficientStorage(NO_SPACE.into()),
            StoreError::Io(e) => ApiError::from_io(e),
            other @ (StoreError::Sqlite(_)
            | StoreError::Join(_)
            | StoreError::TooNew { .. }
            | StoreError::Migration { .. }) => ApiError::internal(other),
        }
    }
}

impl From<crate::hub::Suspended> for ApiError {
    fn from(_: crate::hub::Suspended) -> Self {
        ApiError::Suspended
    }
}
