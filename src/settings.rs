//! The gateway's `config.yaml`: the settings the hub may read and change
//! (model, personality, toolsets, memory) and the skills' enabled state
//! (`skills.disabled`). Every change is a read-modify-write under one lock,
//! written atomically; keys the daemon does not manage are kept (YAML
//! comments and formatting are not: the file is re-emitted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use serde_yaml_ng::{Mapping, Value as Yaml};
use tokio::sync::Mutex;

/// What a secret reads as.
pub const REDACTED: &str = "********";
/// Largest `config.yaml` the daemon reads (the gateway's own is ~10 KiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Invalid(String),
    #[error("config.yaml cannot be used: {0}")]
    Unusable(String),
    #[error("config.yaml is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("config.yaml: {0}")]
    Io(#[from] std::io::Error),
    /// The hub's policy enforces this key: the tenant cannot change it.
    #[error("`{0}` is enforced by the platform's policy and cannot be changed")]
    Enforced(String),
}

/// The type a managed setting must have.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str(usize),
    Secret,
    Url,
    Bool,
    Int(i64, i64),
    StrList(usize),
    Enum(&'static [&'static str]),
}

/// Every setting `GET/PATCH /settings` manages, by dotted key.
const SETTINGS: &[(&str, Kind)] = &[
    ("model.default", Kind::Str(256)),
    ("model.provider", Kind::Str(64)),
    ("model.base_url", Kind::Url),
    ("model.api_key", Kind::Secret),
    ("display.personality", Kind::Str(64)),
    ("toolsets", Kind::StrList(64)),
    ("memory.memory_enabled", Kind::Bool),
    ("memory.user_profile_enabled", Kind::Bool),
    ("memory.memory_char_limit", Kind::Int(0, 1_000_000)),
    ("memory.user_char_limit", Kind::Int(0, 1_000_000)),
    ("memory.provider", Kind::Str(64)),
    ("agent.max_turns", Kind::Int(1, 10_000)),
    (
        "agent.reasoning_effort",
        Kind::Enum(&["none", "minimal", "low", "medium", "high", "xhigh"]),
    ),
];

/// The gateway's `config.yaml`, with writes serialised.
#[derive(Debug)]
pub struct HermesConfig {
    path: PathBuf,
    lock: Mutex<()>,
    /// Keys the hub's policy enforces (dotted) and their values: refused
    /// by `patch`, shown as effective by `get` (set by `policy`).
    enforced: std::sync::RwLock<BTreeMap<String, Json>>,
}

impl HermesConfig {
    pub fn new(hermes_home: &Path) -> HermesConfig {
        HermesConfig {
            path: hermes_home.join("config.yaml"),
            lock: Mutex::new(()),
            enforced: std::sync::RwLock::new(BTreeMap::new()),
        }
    }

    /// Replace the enforced keys (the policy in force).
    pub fn set_enforced(&self, keys: BTreeMap<String, Json>) {
        *self.enforced.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    fn enforced(&self) -> BTreeMap<String, Json> {
        self.enforced
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole document as a mapping (empty when there is no file).
    pub async fn load(&self) -> Result<Mapping, SettingsError> {
        let path = self.path.clone();
        blocking(move || load_blocking(&path)).await
    }

    /// Read-modify-write under the lock; `f` returns whether it changed
    /// anything (nothing is written otherwise) and a result.
    pub async fn update<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Mapping) -> Result<(bool, R), SettingsError> + Send + 'static,
    ) -> Result<R, SettingsError> {
        let _guard = self.lock.lock().await;
        let path = self.path.clone();
        blocking(move || {
            let mut doc = load_blocking(&path)?;
            let (changed, result) = f(&mut doc)?;
            if changed {
                let text = serde_yaml_ng::to_string(&Yaml::Mapping(doc))
                    .map_err(|e| SettingsError::Unusable(e.to_string()))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_file(&path, text.as_bytes())?;
            }
            Ok(result)
        })
        .await
    }

    /// Names in `skills.disabled`.
    pub async fn disabled_skills(&self) -> Result<Vec<String>, SettingsError> {
        Ok(disabled_in(&self.load().await?))
    }

    /// Add `name` to, or remove it from, `skills.disabled`.
    pub async fn set_skill_enabled(
        &self,
        name: String,
        enabled: bool,
    ) -> Result<(), SettingsError> {
        self.update(move |doc| {
            let skills = child_mapping(doc, "skills")?;
            let key = Yaml::String("disabled".into());
            let mut list: Vec<String> = match skills.get(&key) {
                None | Some(Yaml::Null) => Vec::new(),
                Some(Yaml::Sequence(s)) => s
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                Some(_) => {
                    return Err(SettingsError::Unusable(
                        "`skills.disabled` is not a list".into(),
                    ));
                }
            };
            let had = list.contains(&name);
            let changed = if enabled {
                list.retain(|n| *n != name);
                had
            } else if !had {
                list.push(name);
                true
            } else {
                false
            };
            if changed {
                skills.insert(
                    key,
                    Yaml::Sequence(list.into_iter().map(Yaml::String).collect()),
                );
            }
            Ok((changed, ()))
        })
        .await
    }

    /// The managed settings, nested, secrets redacted; an enforced key
    /// shows the enforced value (what the gateway uses) and is listed in
    /// `enforced_keys`.
    pub async fn get(&self) -> Result<Json, SettingsError> {
        Ok(self.mark_enforced(view(&self.load().await?)))
    }

    fn mark_enforced(&self, mut v: Json) -> Json {
        let enforced = self.enforced();
        if let Json::Object(out) = &mut v {
            for (key, value) in &enforced {
                let parts: Vec<&str> = key.split('.').collect();
                insert_nested(out, &parts, value.clone());
            }
            out.insert(
                ENFORCED_KEYS.into(),
                Json::Array(enforced.into_keys().map(Json::String).collect()),
            );
        }
        v
    }

    /// The tenant's own value of every managed setting that is set (dotted
    /// key, secrets redacted).
    pub async fn tenant_values(&self) -> Result<BTreeMap<String, Json>, SettingsError> {
        let doc = self.load().await?;
        Ok(SETTINGS
            .iter()
            .filter_map(|(key, kind)| {
                let v = get_path(&doc, key).filter(|v| !v.is_null())?;
                Some(((*key).to_owned(), to_json(*kind, v)))
            })
            .collect())
    }

    /// Make the policy's defaults the tenant's values where the tenant has
    /// not set the key. `written` is what earlier defaults wrote: a key
    /// still holding that value is the default's (replaced by the new
    /// default, or removed when the policy no longer has one); any other
    /// value is the tenant's and is kept. Returns what the defaults now
    /// hold in the file.
    pub async fn sync_defaults(
        &self,
        written: BTreeMap<String, Json>,
        defaults: BTreeMap<String, Json>,
    ) -> Result<BTreeMap<String, Json>, SettingsError> {
        let mut typed = Vec::new();
        for (key, value) in &defaults {
            let kind = kind_of(key)
                .ok_or_else(|| SettingsError::Invalid(format!("unknown setting `{key}`")))?;
            typed.push((key.clone(), validate(key, kind, value.clone())?));
        }
        self.update(move |doc| {
            let mut changed = false;
            let mut now = BTreeMap::new();
            let ours = |doc: &Mapping, key: &str| {
                let current = get_path(doc, key).filter(|v| !v.is_null());
                match (current, written.get(key)) {
                    (None, _) => true,
                    (Some(v), Some(w)) => kind_of(key)
                        .is_some_and(|k| to_json(k, v) == *w && !matches!(k, Kind::Secret)),
                    (Some(_), None) => false,
                }
            };
            for (key, value) in typed {
                let Some(value) = value else { continue };
                if ours(doc, &key) {
                    let json = defaults.get(&key).cloned().unwrap_or(Json::Null);
                    if get_path(doc, &key) != Some(&value) {
                        set_path(doc, &key, Some(value))?;
                        changed = true;
                    }
                    now.insert(key, json);
                }
            }
            for key in written.keys() {
                if !defaults.contains_key(key) && get_path(doc, key).is_some() && ours(doc, key) {
                    set_path(doc, key, None)?;
                    changed = true;
                }
            }
            Ok((changed, now))
        })
        .await
    }

    /// Merge a patch (nested objects and/or dotted keys; `null` unsets).
    /// All of it is validated before anything is written.
    pub async fn patch(&self, patch: Json) -> Result<Json, SettingsError> {
        let Json::Object(mut obj) = patch else {
            return Err(SettingsError::Invalid(
                "the body must be a JSON object of settings".into(),
            ));
        };
        // A GET body sent back: its list of enforced keys is not a setting.
        match obj.remove(ENFORCED_KEYS) {
            None => {}
            Some(Json::Array(a)) if a.iter().all(Json::is_string) => {}
            Some(_) => {
                return Err(SettingsError::Invalid(format!(
                    "`{ENFORCED_KEYS}` is read-only (a list of names)"
                )));
            }
        }
        let mut leaves = Vec::new();
        flatten("", obj, &mut leaves)?;
        if leaves.is_empty() {
            return Err(SettingsError::Invalid("no settings given".into()));
        }
        let mut changes: Vec<(&'static str, Option<Yaml>)> = Vec::new();
        let enforced = self.enforced();
        for (key, value) in leaves {
            let (name, kind) = SETTINGS
                .iter()
                .find(|(k, _)| *k == key)
                .ok_or_else(|| SettingsError::Invalid(format!("unknown setting `{key}`")))?;
            match enforced.get(*name) {
                // Sent back unchanged (a GET body): not a change.
                Some(v) if *v == value => continue,
                Some(_) => return Err(SettingsError::Enforced((*name).to_owned())),
                None => {}
            }
            if matches!(kind, Kind::Secret) && value.as_str() == Some(REDACTED) {
                continue; // a GET body sent back: keep the secret
            }
            changes.push((name, validate(name, *kind, value)?));
        }
        let v = self
            .update(move |doc| {
                for (key, value) in changes {
                    set_path(doc, key, value)?;
                }
                Ok((true, view(doc)))
            })
            .await?;
        Ok(self.mark_enforced(v))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SettingsError> + Send + 'static,
) -> Result<T, SettingsError> {
    crate::identity::spawn_as_agent(f)
        .await
        .map_err(|e| SettingsError::Io(std::io::Error::other(e)))?
}

/// The tenant `config.yaml` as a mapping, read as the agent, never through
/// a symlink, capped (missing: empty), for checks of what the gateway will
/// find in it (`secret_sources`).
/// Not logged here: the callers (the spawn check, the `.env` guard, every
/// 30 s) report a refusal once themselves.
pub async fn read_tenant_config(path: PathBuf) -> Result<Mapping, SettingsError> {
    blocking(move || load(&path, false)).await
}

fn load_blocking(path: &Path) -> Result<Mapping, SettingsError> {
    load(path, true)
}

/// `config.yaml` as a mapping; `warn`: log a refused read.
fn load(path: &Path, warn: bool) -> Result<Mapping, SettingsError> {
    let Some(bytes) = read_file(path, warn)? else {
        return Ok(Mapping::new());
    };
    let text =
        String::from_utf8(bytes).map_err(|_| SettingsError::Unusable("not UTF-8 text".into()))?;
    match crate::bounded_yaml::from_str(&text) {
        Ok(Yaml::Mapping(m)) => Ok(m),
        Ok(Yaml::Null) => Ok(Mapping::new()),
        Ok(_) => Err(SettingsError::Unusable(
            "the top level is not a mapping".into(),
        )),
        Err(e @ crate::bounded_yaml::YamlError::TooManyNodes) => {
            Err(SettingsError::Unusable(e.to_string()))
        }
        // The location only: the parser's message could quote a secret.
        Err(e) => Err(SettingsError::Unusable(match e.location() {
            Some(l) => format!("not valid YAML (line {}, column {})", l.line(), l.column()),
            None => "not valid YAML".into(),
        })),
    }
}

/// Replace `config.yaml` (in the Hermes home, never through a symlink),
/// keeping its permission bits.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SettingsError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(SettingsError::Io(std::io::Error::other("no file name")));
    };
    let home = crate::dir_handle::DirHandle::open_home(dir)?;
    let mode = home.mode_or(Path::new(name), 0o600);
    match home.write_atomic(Path::new(name), bytes, mode) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(not_regular()),
        other => Ok(other?),
    }
}

fn not_regular() -> SettingsError {
    SettingsError::Unusable(
        "it is a symlink or not a regular file; it is not written through".into(),
    )
}

/// The file's bytes, capped (`None`: absent). One log line, no content,
/// when refused.
fn read_file(path: &Path, warn: bool) -> Result<Option<Vec<u8>>, SettingsError> {
    use crate::agent_file::{ReadError, read_capped};
    read_capped(path, MAX_FILE_BYTES).map_err(|e| {
        if warn && !matches!(e, ReadError::Io(_)) {
            tracing::warn!(error = %e, "refused to read the gateway's config.yaml");
        }
        match e {
            ReadError::TooLarge { .. } => SettingsError::TooLarge,
            ReadError::NotRegular => not_regular(),
            ReadError::Io(e) => SettingsError::Io(e),
        }
    })
}

fn disabled_in(doc: &Mapping) -> Vec<String> {
    doc.get("skills")
        .and_then(|s| s.get("disabled"))
        .and_then(Yaml::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The mapping under `key`, created if missing.
fn child_mapping<'a>(doc: &'a mut Mapping, key: &str) -> Result<&'a mut Mapping, SettingsError> {
    let k = Yaml::String(key.to_owned());
    let entry = doc.entry(k).or_insert(Yaml::Mapping(Mapping::new()));
    if entry.is_null() {
        *entry = Yaml::Mapping(Mapping::new());
    }
    // `model: some-name` is Hermes' short form of `model: {default: …}`.
    if key == "model" {
        if let Yaml::String(s) = entry {
            let mut m = Mapping::new();
            m.insert(Yaml::String("default".into()), Yaml::String(s.clone()));
            *entry = Yaml::Mapping(m);
        }
    }
    entry
        .as_mapping_mut()
        .ok_or_else(|| SettingsError::Unusable(format!("`{key}` is not a mapping")))
}

pub(crate) fn set_path(
    doc: &mut Mapping,
    key: &str,
    value: Option<Yaml>,
) -> Result<(), SettingsError> {
    let (parents, leaf) = match key.rsplit_once('.') {
        Some((p, l)) => (p.split('.').collect::<Vec<_>>(), l),
        None => (Vec::new(), key),
    };
    let mut cur = doc;
    for p in parents {
        cur = child_mapping(cur, p)?;
    }
    let k = Yaml::String(leaf.to_owned());
    match value {
        Some(v) => {
            cur.insert(k, v);
        }
        None => {
            cur.remove(&k);
        }
    }
    Ok(())
}

pub(crate) fn get_path<'a>(doc: &'a Mapping, key: &str) -> Option<&'a Yaml> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut cur = doc.get(first)?;
    for p in parts {
        cur = match cur {
            Yaml::String(_) if first == "model" && p == "default" => cur,
            Yaml::Mapping(m) => m.get(p)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn view(doc: &Mapping) -> Json {
    let mut out = Map::new();
    for (key, kind) in SETTINGS {
        let Some(v) = get_path(doc, key) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        let json = to_json(*kind, v);
        let parts: Vec<&str> = key.split('.').collect();
        insert_nested(&mut out, &parts, json);
    }
    Json::Object(out)
}

/// A stored value as JSON, a secret redacted.
fn to_json(kind: Kind, v: &Yaml) -> Json {
    match kind {
        Kind::Secret => match v.as_str() {
            Some("") => Json::String(String::new()),
            _ => Json::String(REDACTED.into()),
        },
        _ => serde_json::to_value(v).unwrap_or(Json::Null),
    }
}

/// The member of `GET /settings` listing the enforced keys.
pub const ENFORCED_KEYS: &str = "enforced_keys";

fn kind_of(key: &str) -> Option<Kind> {
    SETTINGS.iter().find(|(k, _)| *k == key).map(|(_, k)| *k)
}

/// Every managed setting, by dotted key.
pub fn setting_keys() -> impl Iterator<Item = &'static str> {
    SETTINGS.iter().map(|(k, _)| *k)
}

/// Whether `key` holds a secret (never accepted from a policy: secrets go
/// through env keys).
pub fn is_secret(key: &str) -> bool {
    matches!(kind_of(key), Some(Kind::Secret))
}

/// A settings object (nested and/or dotted keys) as validated dotted
/// leaves; `field` names the member in errors (`enforced`, `defaults`).
/// `null` is refused: a policy sets values, it does not unset them.
pub fn validate_leaves(field: &str, v: Json) -> Result<BTreeMap<String, Json>, SettingsError> {
    let Json::Object(obj) = v else {
        return Err(SettingsError::Invalid(format!(
            "`{field}` must be an object of settings"
        )));
    };
    let mut leaves = Vec::new();
    flatten("", obj, &mut leaves)?;
    let mut out = BTreeMap::new();
    for (key, value) in leaves {
        let Some(kind) = kind_of(&key) else {
            return Err(SettingsError::Invalid(format!(
                "`{field}.{key}` is not a setting this daemon manages"
            )));
        };
        if value.is_null() {
            return Err(SettingsError::Invalid(format!(
                "`{field}.{key}` must have a value"
            )));
        }
        validate(&format!("{field}.{key}"), kind, value.clone())?;
        out.insert(key, value);
    }
    Ok(out)
}

/// The YAML value of a validated setting.
pub fn to_yaml(key: &str, v: &Json) -> Result<Yaml, SettingsError> {
    let kind =
        kind_of(key).ok_or_else(|| SettingsError::Invalid(format!("unknown setting `{key}`")))?;
    validate(key, kind, v.clone())?
        .ok_or_else(|| SettingsError::Invalid(format!("`{key}` must have a value")))
}

fn insert_nested(map: &mut Map<String, Json>, parts: &[&str], value: Json) {
    match parts {
        [] => {}
        [last] => {
            map.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let e = map
                .entry((*first).to_owned())
                .or_insert_with(|| Json::Object(Map::new()));
            if let Json::Object(m) = e {
                insert_nested(m, rest, value);
            }
        }
    }
}

fn flatten(
    prefix: &str,
    obj: Map<String, Json>,
    out: &mut Vec<(String, Json)>,
) -> Result<(), SettingsError> {
    for (k, v) in obj {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        let is_group = SETTINGS.iter().any(|(s, _)| {
            s.len() > key.len() && s.starts_with(&key) && s[key.len()..].starts_with('.')
        });
        match v {
            Json::Object(inner) if is_group => flatten(&key, inner, out)?,
            other => out.push((key, other)),
        }
    }
    Ok(())
}

fn validate(key: &str, kind: Kind, v: Json) -> Result<Option<Yaml>, SettingsError> {
    let bad = |what: &str| Err(SettingsError::Invalid(format!("`{key}` must be {what}")));
    if v.is_null() {
        return Ok(None);
    }
    let string = |v: Json, max: usize| match v {
        Json::String(s) if s.len() <= max && !s.contains(['\n', '\r', '\0']) => {
            Ok(Some(Yaml::String(s)))
        }
        _ => bad(&format!("a single-line string of at most {max} bytes")),
    };
    match kind {
        Kind::Str(max) => string(v, max),
        Kind::Secret => string(v, 4096),
        Kind::Url => match v {
            Json::String(s)
                if s.len() <= 2048
                    && reqwest::Url::parse(&s)
                        .is_ok_and(|u| matches!(u.scheme(), "http" | "https")) =>
            {
                Ok(Some(Yaml::String(s)))
            }
            _ => bad("an http(s) URL"),
        },
        Kind::Bool => match v {
            Json::Bool(b) => Ok(Some(Yaml::Bool(b))),
            _ => bad("true or false"),
        },
        Kind::Int(min, max) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(Yaml::Number(n.into()))),
            _ => bad(&format!("an integer between {min} and {max}")),
        },
        Kind::StrList(max) => match v {
            Json::Array(items)
                if items.len() <= max
                    && items.iter().all(|i| {
                        i.as_str().is_some_and(|s| {
                            !s.is_empty() && s.len() <= 128 && !s.contains(['\n', '\r', '\0'])
                        })
                    }) =>
            {
                Ok(Some(Yaml::Sequence(
                    items
                        .into_iter()
                        .filter_map(|i| i.as_str().map(|s| Yaml::String(s.to_owned())))
                        .collect(),
                )))
            }
            _ => bad(&format!("a list of at most {max} names")),
        },
        Kind::Enum(options) => match v.as_str() {
            Some(s) if options.contains(&s) => Ok(Some(Yaml::String(s.to_owned()))),
            _ => bad(&format!("one of {}", options.join(", "))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn patch_merges_keeps_foreign_keys_and_redacts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = HermesConfig::new(dir.path());
        std::fs::write(
            c.path(),
            "model: old-model\nterminal:\n  backend: local\nskills:\n  disabled: [a]\n",
        )
        .expect("seed");
        let v = c
            .patch(json!({"model.provider": "custom", "model": {"api_key": "sk-123"}, "memory.memory_enabled": false}))
            .await
            .expect("patch");
        assert_eq!(v["model"]["default"], "old-model");
        assert_eq!(v["model"]["provider"], "custom");
        assert_eq!(v["model"]["api_key"], REDACTED);
        assert_eq!(v["memory"]["memory_enabled"], false);
        let text = std::fs::read_to_string(c.path()).expect("read");
        assert!(text.contains("backend: local"), "{text}");
        assert!(text.contains("sk-123"), "{text}");
        // Sending the redacted value back keeps the secret.
        c.patch(json!({"model": {"api_key": REDACTED}}))
            .await
            .expect("patch");
        assert!(
            std::fs::read_to_string(c.path())
                .expect("read")
                .contains("sk-123")
        );
        assert_eq!(c.disabled_skills().await.expect("list"), vec!["a"]);
    }

    #[tokio::test]
    async fn unknown_and_mistyped_settings_are_refused_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = HermesConfig::new(dir.path());
        for bad in [
            json!({"nope": 1}),
            json!({"model.default": 3}),
            json!({"memory.memory_char_limit": -1}),
            json!({"memory.memory_char_limit": 1.5}),
            json!({"toolsets": "all"}),
            json!({"agent.reasoning_effort": "max"}),
            json!({"model.base_url": "file:///etc/passwd"}),
            json!({"model": {"default": "x", "unknown": 1}}),
            json!({}),
            json!([1]),
        ] {
            assert!(
                matches!(c.patch(bad.clone()).await, Err(SettingsError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(!c.path().exists(), "nothing may be written");
    }

    #[tokio::test]
    async fn skill_enabled_state_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = HermesConfig::new(dir.path());
        c.set_skill_enabled("x".into(), false).await.expect("off");
        c.set_skill_enabled("x".into(), false)
            .await
            .expect("off again");
        assert_eq!(c.disabled_skills().await.expect("list"), vec!["x"]);
        c.set_skill_enabled("x".into(), true).await.expect("on");
        assert!(c.disabled_skills().await.expect("list").is_empty());
    }
}
