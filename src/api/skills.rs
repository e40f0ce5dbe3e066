//! `/skills`, `/skill-files` and `/agent-card`: the skills index and what
//! is built from it.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{AppState, page_size};
use crate::error::ApiError;
use crate::files::{Preview, parse_relative};
use crate::skills::{self, NO_CATEGORY, Skill, SkillFilter};
use crate::store::conversations::Page;

/// Disabled names; a broken `config.yaml` must not take the listing down.
async fn disabled(state: &AppState) -> Vec<String> {
    match state.hermes_config.disabled_skills().await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read skills.disabled; listing every skill as enabled");
            Vec::new()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    category: Option<String>,
    enabled: Option<bool>,
    q: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A page of skills, and whether the index stopped at its caps (the
/// skills tree holds more than it indexes).
#[derive(serde::Serialize)]
pub struct SkillsPage {
    #[serde(flatten)]
    page: Page<Skill>,
    truncated: bool,
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<SkillsPage>, ApiError> {
    let limit = page_size(&state, q.limit)?;
    if q.q.as_ref().is_some_and(|s| s.len() > 1024) {
        return Err(ApiError::InvalidArgument(
            "`q` is longer than 1024 bytes".into(),
        ));
    }
    let filter = SkillFilter {
        category: q
            .category
            .map(|c| if c == NO_CATEGORY { None } else { Some(c) }),
        enabled: q.enabled,
        query: q.q.filter(|s| !s.trim().is_empty()),
    };
    let disabled = disabled(&state).await;
    let page = state
        .store
        .read(move |c| skills::list(c, &filter, &disabled, limit, q.cursor.as_deref()))
        .await?;
    Ok(Json(SkillsPage {
        page,
        truncated: state.skills_status.truncated(),
    }))
}

#[derive(Deserialize)]
pub struct SkillDir {
    category: String,
    skill: String,
}

#[derive(Deserialize)]
pub struct SkillFile {
    skill_path: String,
}

#[derive(Deserialize)]
pub struct SkillName {
    skill_name: String,
}

fn one_segment(what: &str, s: &str) -> Result<(), ApiError> {
    let parts = parse_relative(s)?;
    if parts.len() != 1 || parts[0] != s {
        return Err(ApiError::InvalidArgument(format!(
            "`{what}` must be a single path segment"
        )));
    }
    Ok(())
}

/// Every file of one skill, paths relative to the skills tree (what
/// `/skill-files/{path}` takes). `{category}` is `_` for none.
pub async fn files(
    State(state): State<AppState>,
    ApiPath(SkillDir { category, skill }): ApiPath<SkillDir>,
) -> Result<Json<Value>, ApiError> {
    if category != NO_CATEGORY {
        one_segment("category", &category)?;
    }
    one_segment("skill", &skill)?;
    let dir = state
        .store
        .read(move |c| skills::find_dir(c, &category, &skill))
        .await?;
    let files = state.files.clone();
    let d = dir.clone();
    let list = crate::identity::spawn_as_agent(move || {
        let root = files.skills_root().clone();
        files.list_tree(&root, &d)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(json!({ "path": dir, "files": list })))
}

/// One file of the skills tree as text (size-capped).
pub async fn file(
    State(state): State<AppState>,
    ApiPath(SkillFile { skill_path: path }): ApiPath<SkillFile>,
) -> Result<Json<Preview>, ApiError> {
    let files = state.files.clone();
    let p = crate::identity::spawn_as_agent(move || {
        let root = files.skills_root().clone();
        files.preview(&root, &path)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(p))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    enabled: bool,
}

/// Enable or disable by name, in `config.yaml`'s `skills.disabled`.
pub async fn set_state(
    State(state): State<AppState>,
    ApiPath(SkillName { skill_name: name }): ApiPath<SkillName>,
    ApiJson(body): ApiJson<StateBody>,
) -> Result<Json<Value>, ApiError> {
    if name.is_empty() || name.chars().count() > skills::MAX_NAME_CHARS {
        return Err(ApiError::InvalidArgument(
            "a skill name is 1-64 characters".into(),
        ));
    }
    let n = name.clone();
    if !state
        .store
        .read(move |c| skills::name_exists(c, &n))
        .await?
    {
        return Err(ApiError::NotFound(format!("no skill named `{name}`")));
    }
    state
        .hermes_config
        .set_skill_enabled(name.clone(), body.enabled)
        .await?;
    tracing::info!(skill = %name, enabled = body.enabled, "skill state changed");
    Ok(Json(json!({ "name": name, "enabled": body.enabled })))
}

/// Most skills listed on the agent card.
const CARD_SKILLS: u32 = 200;

/// The tenant's public A2A agent card.
pub async fn agent_card(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let disabled = disabled(&state).await;
    let rows = state
        .store
        .read(move |c| skills::for_card(c, &disabled, CARD_SKILLS))
        .await?;
    let cfg = &state.config.agent_card;
    let skills: Vec<Value> = rows
        .into_iter()
        .map(|s| {
            // The category first, then the front matter's tags, each once
            // (a skill in `research/` is often tagged `research` too).
            let mut tags: Vec<String> = Vec::with_capacity(s.tags.len() + 1);
            for t in s.category.into_iter().chain(s.tags) {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            json!({ "id": s.name, "name": s.name, "description": s.description, "tags": tags })
        })
        .collect();
    let mut card = json!({
        "protocolVersion": "0.3.0",
        "name": cfg.name.clone().unwrap_or_else(|| "Hermes Agent".into()),
        "description": cfg.description.clone().unwrap_or_else(|| {
            "A Hermes Agent: a self-improving assistant with persistent memory and skills.".into()
        }),
        "url": cfg.url,
        "version": crate::VERSION,
        "preferredTransport": "JSONRPC",
        "capabilities": {
            "streaming": true,
            "pushNotifications": false,
            "stateTransitionHistory": false,
        },
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": skills,
    });
    if let Some(org) = &cfg.organization {
        card["provider"] = json!({ "organization": org, "url": cfg.organization_url });
    }
    Ok(Json(card))
}
