//! `/env`: names of the Hermes `.env` with metadata; values are write-only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rusqlite::params;
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::extract::{ApiJson, ApiPath};
use crate::envfile::EnvError;
use crate::error::ApiError;
use crate::store::{ms_to_rfc3339, now_ms};

impl From<EnvError> for ApiError {
    fn from(e: EnvError) -> Self {
        match e {
            EnvError::InvalidName(_) | EnvError::InvalidValue(_) => {
                ApiError::InvalidArgument(e.to_string())
            }
            EnvError::Reserved(n) => ApiError::Reserved(n),
            EnvError::NotFound(_) => ApiError::NotFound(e.to_string()),
            EnvError::TooLarge => ApiError::FileTooLarge {
                message: e.to_string(),
            },
            EnvError::NotRegular | EnvError::NotUtf8 | EnvError::WouldNotReadBack => {
                ApiError::Conflict(e.to_string())
            }
            EnvError::Io(e) => ApiError::from_io(e),
        }
    }
}

#[derive(serde::Deserialize)]
pub struct EnvName {
    name: String,
}

/// One key as listed: never its value.
#[derive(Debug, Serialize)]
pub struct EnvKey {
    pub name: String,
    pub reserved: bool,
    /// When the daemon last set it; `null` for keys it did not set.
    pub set_at: Option<String>,
    /// `hub` or `tenant`; `null` for keys it did not set.
    pub set_by: Option<String>,
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let names = state.env_file.names().await?;
    let meta = state
        .store
        .read(|c| {
            let mut stmt = c.prepare_cached("SELECT name, set_at, set_by FROM env_keys")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    let keys: Vec<EnvKey> = names
        .into_iter()
        .map(|name| {
            let m = meta.iter().find(|(n, _, _)| *n == name);
            EnvKey {
                reserved: state.env_file.is_reserved(&name),
                set_at: m.map(|(_, at, _)| ms_to_rfc3339(*at)),
                set_by: m.map(|(_, _, by)| by.clone()),
                name,
            }
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "keys": keys, "agent": state.env_apply.state() }),
    ))
}

/// `{"value": "…", "set_by"?: "hub"|"tenant"}`. The body is read as a
/// plain JSON value so no deserializer message can echo the secret.
pub async fn put(
    State(state): State<AppState>,
    ApiPath(EnvName { name }): ApiPath<EnvName>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<EnvKey>, ApiError> {
    state.env_file.check_name(&name)?;
    let Value::Object(mut obj) = body else {
        return Err(ApiError::InvalidArgument(
            "the body must be {\"value\": \"...\"}".into(),
        ));
    };
    let value = match obj.remove("value") {
        Some(Value::String(v)) => v,
        Some(_) => return Err(ApiError::InvalidArgument("`value` must be a string".into())),
        None => return Err(ApiError::InvalidArgument("`value` is required".into())),
    };
    let set_by = match obj.remove("set_by") {
        None | Some(Value::Null) => "tenant",
        Some(Value::String(s)) if s == "tenant" => "tenant",
        Some(Value::String(s)) if s == "hub" => "hub",
        Some(_) => {
            return Err(ApiError::InvalidArgument(
                "`set_by` must be `hub` or `tenant`".into(),
            ));
        }
    };
    if let Some(k) = obj.keys().next() {
        return Err(ApiError::InvalidArgument(format!(
            "unknown field `{}`",
            k.chars().take(64).collect::<String>()
        )));
    }
    state.env_file.set(&name, &value).await?;
    drop(value);
    let at = now_ms();
    let n = name.clone();
    state
        .store
        .write(move |c| {
            c.execute(
                "INSERT INTO env_keys (name, set_at, set_by) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET set_at = excluded.set_at, set_by = excluded.set_by",
                params![n, at, set_by],
            )?;
            Ok(())
        })
        .await?;
    tracing::info!(name = %name, set_by, "env key set");
    // The gateway only sees exactly the file after a restart (env_apply).
    state.env_apply.changed();
    Ok(Json(EnvKey {
        name,
        reserved: false,
        set_at: Some(ms_to_rfc3339(at)),
        set_by: Some(set_by.to_owned()),
    }))
}

pub async fn remove(
    State(state): State<AppState>,
    ApiPath(EnvName { name }): ApiPath<EnvName>,
) -> Result<StatusCode, ApiError> {
    state.env_file.remove(&name).await?;
    let n = name.clone();
    state
        .store
        .write(move |c| {
            c.execute("DELETE FROM env_keys WHERE name = ?1", [n])?;
            Ok(())
        })
        .await?;
    tracing::info!(name = %name, "env key removed");
    state.env_apply.changed();
    Ok(StatusCode::NO_CONTENT)
}
