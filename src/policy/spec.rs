//! The body of `PUT /agent-policy`, validated whole before anything is
//! written: `{version, enforced, defaults, features}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::PolicyError;
use crate::settings;

/// The toolsets hermes-agent 0.19.0 lets a configuration switch
/// (`hermes_cli/tools_config.py` `CONFIGURABLE_TOOLSETS`): the features a
/// policy may turn on or off.
pub const FEATURES: &[&str] = &[
    "web",
    "browser",
    "terminal",
    "file",
    "code_execution",
    "vision",
    "video",
    "image_gen",
    "video_gen",
    "x_search",
    "tts",
    "skills",
    "todo",
    "memory",
    "context_engine",
    "session_search",
    "clarify",
    "delegation",
    "cronjob",
    "homeassistant",
    "spotify",
    "discord",
    "discord_admin",
    "yuanbao",
    "computer_use",
];

/// What hermes-agent 0.19.0 enables for the `api_server` platform when
/// nothing is configured (`_get_platform_tools({}, "api_server")`): the
/// base a policy's features are applied to.
pub const API_SERVER_DEFAULT_FEATURES: &[&str] = &[
    "browser",
    "code_execution",
    "cronjob",
    "delegation",
    "file",
    "image_gen",
    "memory",
    "session_search",
    "skills",
    "terminal",
    "todo",
    "vision",
    "web",
];

/// A validated policy (the stored body; the version is kept beside it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Dotted settings keys the tenant cannot change.
    pub enforced: BTreeMap<String, Json>,
    /// Dotted settings keys applied where the tenant has not set them.
    pub defaults: BTreeMap<String, Json>,
    /// Toolset name → on/off.
    pub features: BTreeMap<String, bool>,
}

impl Policy {
    /// The toolsets the `api_server` platform gets, when the policy says
    /// anything about features.
    pub fn api_server_toolsets(&self) -> Option<Vec<String>> {
        if self.features.is_empty() {
            return None;
        }
        let mut on: std::collections::BTreeSet<String> = API_SERVER_DEFAULT_FEATURES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for (name, enabled) in &self.features {
            if *enabled {
                on.insert(name.clone());
            } else {
                on.remove(name);
            }
        }
        Some(on.into_iter().collect())
    }
}

/// Parse and validate a `PUT /agent-policy` body.
pub fn parse(body: Json) -> Result<(i64, Policy), PolicyError> {
    let Json::Object(mut obj) = body else {
        return Err(invalid("the body must be a JSON object"));
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "version" | "enforced" | "defaults" | "features"
        ) {
            return Err(invalid(format!("unknown field `{key}`")));
        }
    }
    let version = parse_version(obj.remove("version"))?;
    let enforced = leaves("enforced", obj.remove("enforced"))?;
    let defaults = leaves("defaults", obj.remove("defaults"))?;
    if let Some(key) = enforced.keys().find(|k| defaults.contains_key(*k)) {
        return Err(invalid(format!(
            "`defaults.{key}` is also enforced; a key is one or the other"
        )));
    }
    let features = match obj.remove("features") {
        None | Some(Json::Null) => BTreeMap::new(),
        Some(Json::Object(m)) => {
            let mut out = BTreeMap::new();
            for (name, v) in m {
                if !FEATURES.contains(&name.as_str()) {
                    return Err(invalid(format!(
                        "`features.{name}` is not a feature hermes-agent knows (one of {})",
                        FEATURES.join(", ")
                    )));
                }
                let Json::Bool(on) = v else {
                    return Err(invalid(format!("`features.{name}` must be true or false")));
                };
                out.insert(name, on);
            }
            out
        }
        Some(_) => return Err(invalid("`features` must be an object of booleans")),
    };
    Ok((
        version,
        Policy {
            enforced,
            defaults,
            features,
        },
    ))
}

/// `version`: an integer from 1 (the hub's counter; compared, never
/// interpreted).
pub fn parse_version(v: Option<Json>) -> Result<i64, PolicyError> {
    match v {
        Some(Json::Number(n)) => match n.as_i64() {
            Some(v) if v >= 1 => Ok(v),
            _ => Err(invalid("`version` must be an integer of at least 1")),
        },
        None => Err(invalid("`version` is required")),
        Some(_) => Err(invalid("`version` must be an integer of at least 1")),
    }
}

pub(super) fn leaves(field: &str, v: Option<Json>) -> Result<BTreeMap<String, Json>, PolicyError> {
    let v = match v {
        None | Some(Json::Null) => return Ok(BTreeMap::new()),
        Some(v) => v,
    };
    let out = settings::validate_leaves(field, v).map_err(|e| match e {
        settings::SettingsError::Invalid(m) => PolicyError::Invalid(m),
        other => PolicyError::Settings(other),
    })?;
    for (key, value) in &out {
        if settings::is_secret(key) || url_with_credentials(value) {
            return Err(invalid(format!(
                "`{field}.{key}` holds a secret; secrets reach the agent through env keys (PUT /env/{{name}}), never through the policy"
            )));
        }
    }
    Ok(out)
}

/// A URL carrying a user name or password (`https://user:pass@host`).
fn url_with_credentials(v: &Json) -> bool {
    v.as_str()
        .and_then(|s| reqwest::Url::parse(s).ok())
        .is_some_and(|u| !u.username().is_empty() || u.password().is_some())
}

fn invalid(m: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(m.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_policy_is_taken_whole_or_refused_naming_the_field() {
        let (v, p) = parse(json!({
            "version": 3,
            "enforced": {"model": {"default": "m1"}},
            "defaults": {"agent.max_turns": 20},
            "features": {"terminal": false, "spotify": true},
        }))
        .expect("valid");
        assert_eq!(v, 3);
        assert_eq!(p.enforced["model.default"], json!("m1"));
        assert_eq!(p.defaults["agent.max_turns"], json!(20));
        let ts = p.api_server_toolsets().expect("features");
        assert!(ts.contains(&"spotify".to_owned()) && !ts.contains(&"terminal".to_owned()));
        assert!(ts.contains(&"web".to_owned()));

        for (body, field) in [
            (json!({"enforced": {}}), "version"),
            (json!({"version": 0}), "version"),
            (json!({"version": 1.5}), "version"),
            (
                json!({"version": 1, "enforced": {"nope": 1}}),
                "enforced.nope",
            ),
            (
                json!({"version": 1, "enforced": {"model.default": 3}}),
                "enforced.model.default",
            ),
            (
                json!({"version": 1, "enforced": {"model.api_key": "sk-1"}}),
                "enforced.model.api_key",
            ),
            (
                json!({"version": 1, "defaults": {"model.base_url": "https://u:p@h/v1"}}),
                "defaults.model.base_url",
            ),
            (
                json!({"version": 1, "features": {"warp": true}}),
                "features.warp",
            ),
            (
                json!({"version": 1, "features": {"web": "yes"}}),
                "features.web",
            ),
            (
                json!({"version": 1, "enforced": {"agent.max_turns": 3}, "defaults": {"agent.max_turns": 4}}),
                "defaults.agent.max_turns",
            ),
            (json!({"version": 1, "extra": 1}), "extra"),
        ] {
            match parse(body.clone()) {
                Err(PolicyError::Invalid(m)) => assert!(m.contains(field), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
