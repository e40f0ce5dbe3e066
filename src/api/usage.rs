//! `/usage`: tokens, tool calls, runs and agent running time over a
//! billing period.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::AppState;
use super::extract::ApiQuery;
use crate::error::ApiError;
use crate::hub::usage_report::{self, UsageReport};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    period: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub async fn usage(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    let period = usage_report::resolve(
        q.period.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
        crate::store::now_ms(),
    )
    .map_err(|e| ApiError::InvalidArgument(e.0))?;
    let report = usage_report::report(&state.store, &state.config.tenant_id, period).await?;
    Ok(Json(report))
}
