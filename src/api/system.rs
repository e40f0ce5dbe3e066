//! Liveness, readiness, metrics and version.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{AppState, TENANT_PREFIX};
use crate::error::ApiError;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store answers a query (it was opened and migrated before
/// the listener started).
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|_| ApiError::Unavailable("the store does not answer".into()))?;
    if !state.store.writable().await {
        // Reads still work; the hub should not route writes here.
        return Err(ApiError::Unavailable(
            "the store cannot write: the data volume is full".into(),
        ));
    }
    Ok(Json(json!({
        "status": "ready",
        "schema_version": state.store.schema_version(),
    })))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store.clone();
    let db_bytes = tokio::task::spawn_blocking(move || store.disk_bytes())
        .await
        .unwrap_or(0);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(db_bytes),
    )
}

/// `GET /version`. A struct, not a `json!` tree: this is the cheapest
/// authenticated route, and building a `Value` (a map, a copy of every
/// string) was a good part of its cost. Fields in the order `json!`
/// printed them (sorted), so the body is byte for byte the same.
#[derive(serde::Serialize)]
pub struct Version<'a> {
    agent_release: Option<String>,
    capabilities: &'static [String],
    daemon: &'static str,
    schema_version: i64,
    tenant_id: &'a str,
}

pub async fn version(State(state): State<AppState>) -> axum::response::Response {
    let body = Version {
        agent_release: state.agent.status().release,
        capabilities: capabilities(),
        daemon: crate::VERSION,
        schema_version: state.store.schema_version(),
        tenant_id: &state.config.tenant_id,
    };
    Json(body).into_response()
}

/// What this build can do, for `/version`, derived from the route table so
/// it cannot drift from what is served: one name per family of tenant
/// routes (its first path segment), `FAMILY.search` for a search route, and
/// `metrics` (served on the main or its own listener).
pub(super) fn capabilities() -> &'static [String] {
    static CAPABILITIES: OnceLock<Vec<String>> = OnceLock::new();
    CAPABILITIES.get_or_init(|| capabilities_of(super::route_list()))
}

fn capabilities_of(routes: Vec<(String, String)>) -> Vec<String> {
    let mut names = BTreeSet::new();
    for (_, path) in routes {
        let Some(rest) = path.strip_prefix(TENANT_PREFIX) else {
            if path == "/metrics" {
                names.insert("metrics".to_owned());
            }
            continue;
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            [] | ["version"] => {}
            [family, "search"] => {
                names.insert((*family).to_owned());
                names.insert(format!("{family}.search"));
            }
            [family, ..] => {
                names.insert((*family).to_owned());
            }
        }
    }
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_name_every_route_family_once() {
        let caps = capabilities();
        for want in [
            "agent",
            "agent-card",
            "agent-cron",
            "conversations",
            "conversations.search",
            "env",
            "files",
            "memory",
            "metrics",
            "runs",
            "settings",
            "skills",
            "usage",
        ] {
            assert!(
                caps.iter().any(|c| c == want),
                "{want} missing from {caps:?}"
            );
        }
        assert!(
            !caps.iter().any(|c| c == "version" || c.contains('{')),
            "{caps:?}"
        );
        let unique: BTreeSet<&String> = caps.iter().collect();
        assert_eq!(unique.len(), caps.len());
    }

    #[test]
    fn a_new_route_family_becomes_a_capability() {
        let caps = capabilities_of(vec![
            ("GET".into(), format!("{TENANT_PREFIX}/widgets/{{id}}")),
            ("GET".into(), "/v1/healthz".into()),
        ]);
        assert_eq!(caps, vec!["widgets".to_owned()]);
    }
}
