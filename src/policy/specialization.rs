//! The default specialization (issue 14.2): a persona written where
//! hermes-agent 0.19.0 reads it (`HERMES_HOME/SOUL.md`, loaded by
//! `agent/prompt_builder.py` `load_soul_md` whenever a run's system prompt
//! is built), a skills bundle in its own category
//! (`skills/hub-specialization/<skill>/...`) and settings defaults.
//!
//! The daemon acts as the agent on these files (`identity::spawn_as_agent`,
//! `dir_handle`: no symlink followed, atomic writes). It remembers the
//! SHA-256 of every file it installed and removes, on `DELETE` or when a
//! newer bundle drops it, only a file still holding what it wrote; a
//! persona the tenant has since edited is left, and the `SOUL.md` that was
//! there before the first install is put back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{AgentConfig, PolicyError};
use crate::dir_handle::DirHandle;
use crate::store::{ms_to_rfc3339, now_ms, policy as sql};

/// The skills category the bundle lives in.
pub const CATEGORY: &str = "hub-specialization";
const MAX_PERSONA: usize = 64 * 1024;
const MAX_FILES: usize = 200;
const MAX_FILE: usize = 256 * 1024;
const MAX_BUNDLE: usize = 2 * 1024 * 1024;
/// Largest `SOUL.md` kept to be put back on `DELETE`.
const MAX_PREVIOUS_SOUL: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkillFile {
    pub path: String,
    pub content: String,
}

/// What is stored: the request, and what the first install found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Specialization {
    pub persona: Option<String>,
    pub skills: Vec<SkillFile>,
    pub defaults: BTreeMap<String, Json>,
    /// `SOUL.md` before the first install (`None`: there was none).
    #[serde(default)]
    pub previous_persona: Option<String>,
}

/// `GET /agent-specialization`.
#[derive(Debug, Serialize)]
pub struct SpecializationView {
    pub version: Option<i64>,
    pub applied_at: Option<String>,
    pub persona: Option<String>,
    /// Installed files, relative to `skills/hub-specialization/`.
    pub skills: Vec<String>,
    pub defaults: BTreeMap<String, Json>,
    pub category: &'static str,
}

/// Parse a `PUT /agent-specialization` body, whole.
pub fn parse(body: Json) -> Result<(i64, Specialization), PolicyError> {
    let bad = |m: String| Err(PolicyError::Invalid(m));
    let Json::Object(mut obj) = body else {
        return bad("the body must be a JSON object".into());
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "version" | "persona" | "skills" | "settings") {
            return bad(format!("unknown field `{key}`"));
        }
    }
    let version = super::spec::parse_version(obj.remove("version"))?;
    let persona = match obj.remove("persona") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s.len() <= MAX_PERSONA && !s.contains('\0') => Some(s),
        Some(_) => {
            return bad(format!(
                "`persona` must be markdown text of at most {MAX_PERSONA} bytes"
            ));
        }
    };
    let mut skills = Vec::new();
    let mut total = 0usize;
    match obj.remove("skills") {
        None | Some(Json::Null) => {}
        Some(Json::Array(items)) if items.len() <= MAX_FILES => {
            let mut seen = std::collections::BTreeSet::new();
            for (i, item) in items.into_iter().enumerate() {
                let Json::Object(mut f) = item else {
                    return bad(format!("`skills[{i}]` must be {{path, content}}"));
                };
                let (Some(Json::String(path)), Some(Json::String(content))) =
                    (f.remove("path"), f.remove("content"))
                else {
                    return bad(format!("`skills[{i}]` must be {{path, content}} strings"));
                };
                if !f.is_empty() {
                    return bad(format!(
                        "`skills[{i}]` has fields other than path and content"
                    ));
                }
                if !valid_path(&path) {
                    return bad(format!(
                        "`skills[{i}].path` must be <skill>/<file> with plain names ([A-Za-z0-9._-], no leading dot; the skill [a-z0-9_-]{{1,64}}), at most 5 levels"
                    ));
                }
                if !seen.insert(path.clone()) {
                    return bad(format!("`skills[{i}].path` repeats `{path}`"));
                }
                if content.len() > MAX_FILE {
                    return bad(format!("`skills[{i}].content` is over {MAX_FILE} bytes"));
                }
                total += content.len();
                if total > MAX_BUNDLE {
                    return bad(format!("`skills` is over {MAX_BUNDLE} bytes in all"));
                }
                skills.push(SkillFile { path, content });
            }
        }
        Some(_) => {
            return bad(format!(
                "`skills` must be a list of at most {MAX_FILES} files"
            ));
        }
    }
    let defaults = super::spec::leaves("settings", obj.remove("settings"))?;
    Ok((
        version,
        Specialization {
            persona,
            skills,
            defaults,
            previous_persona: None,
        },
    ))
}

fn valid_path(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    (2..=5).contains(&parts.len())
        && super::connections::check_name(parts[0]).is_ok()
        && parts.iter().all(|c| {
            (1..=128).contains(&c.len())
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

impl AgentConfig {
    /// `PUT /agent-specialization`.
    pub async fn put_specialization(&self, body: Json) -> Result<SpecializationView, PolicyError> {
        let (version, mut spec) = parse(body)?;
        let _guard = self.lock.lock().await;
        if let Some(have) = self.store.read(sql::max_specialization_version).await? {
            if version <= have {
                return Err(PolicyError::Stale { got: version, have });
            }
        }
        let current = self.specialization().await?;
        let installed = self.store.read(sql::specialization_files).await?;
        spec.previous_persona = current
            .as_ref()
            .and_then(|(_, s)| s.previous_persona.clone());
        let first_persona = current.as_ref().is_none_or(|(_, s)| s.persona.is_none());
        // A tenant config.yaml the defaults cannot go into refuses the
        // change before anything is written.
        self.settings.tenant_values().await?;
        let old = current.map(|(_, s)| s);
        let outcome = self
            .install_as_agent(old.clone(), spec.clone(), installed, first_persona)
            .await?;
        if first_persona && spec.persona.is_some() {
            spec.previous_persona = outcome.previous_persona;
        }
        let policy_defaults = self
            .applied()
            .await?
            .map(|(_, p)| p.defaults)
            .unwrap_or_default();
        let text =
            serde_json::to_string(&spec).map_err(|e| PolicyError::Io(std::io::Error::other(e)))?;
        let files = outcome.files;
        let now = now_ms();
        let synced = self
            .sync_all_defaults(&spec.defaults, &policy_defaults)
            .await;
        let stored = match synced {
            Ok(()) => {
                let files = files.clone();
                self.store
                    .write(move |c| {
                        let tx = c.transaction()?;
                        sql::put_specialization(&tx, Some((version, &text, now)), &files)?;
                        sql::set_max_specialization_version(&tx, version, now)?;
                        tx.commit()?;
                        Ok(())
                    })
                    .await
                    .map_err(PolicyError::from)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            // Back to what the store still says.
            let back = old.clone().unwrap_or_else(|| Specialization {
                previous_persona: spec.previous_persona.clone(),
                ..Specialization::default()
            });
            if let Err(e) = self.install_as_agent(Some(spec), back, files, false).await {
                tracing::error!(error = %e, "cannot put the previous specialization back");
            }
            let special = old.map(|s| s.defaults).unwrap_or_default();
            if let Err(e) = self.sync_all_defaults(&special, &policy_defaults).await {
                tracing::warn!(error = %e, "cannot restore the defaults after a failed specialization");
            }
            return Err(e);
        }
        self.refresh_report().await?;
        tracing::info!(version, "agent specialization installed");
        self.specialization_view().await
    }

    async fn install_as_agent(
        &self,
        old: Option<Specialization>,
        new: Specialization,
        installed: Vec<(String, String)>,
        first_persona: bool,
    ) -> Result<Installed, PolicyError> {
        let home = self.hermes_home.clone();
        crate::identity::spawn_as_agent(move || {
            install(&home, old.as_ref(), &new, &installed, first_persona)
        })
        .await
        .map_err(|e| PolicyError::Io(std::io::Error::other(e)))?
    }

    /// `DELETE /agent-specialization`: only what it installed goes.
    pub async fn delete_specialization(&self) -> Result<(), PolicyError> {
        let _guard = self.lock.lock().await;
        let Some((_, current)) = self.specialization().await? else {
            return Err(PolicyError::NotFound(
                "no specialization is installed".into(),
            ));
        };
        let installed = self.store.read(sql::specialization_files).await?;
        let empty = Specialization {
            previous_persona: current.previous_persona.clone(),
            ..Specialization::default()
        };
        self.install_as_agent(Some(current), empty, installed, false)
            .await?;
        let policy_defaults = self
            .applied()
            .await?
            .map(|(_, p)| p.defaults)
            .unwrap_or_default();
        self.sync_all_defaults(&BTreeMap::new(), &policy_defaults)
            .await?;
        self.store
            .write(|c| {
                let tx = c.transaction()?;
                sql::put_specialization(&tx, None, &[])?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.refresh_report().await?;
        tracing::info!("agent specialization removed");
        Ok(())
    }

    /// `GET /agent-specialization`.
    pub async fn specialization_view(&self) -> Result<SpecializationView, PolicyError> {
        let current = self.store.read(sql::specialization).await?;
        let files = self.store.read(sql::specialization_files).await?;
        let (version, applied_at, spec) = match current {
            Some((v, body, at)) => (Some(v), Some(ms_to_rfc3339(at)), parse_body(&body)?),
            None => (None, None, Specialization::default()),
        };
        Ok(SpecializationView {
            version,
            applied_at,
            persona: spec.persona,
            skills: files.into_iter().map(|(p, _)| p).collect(),
            defaults: spec.defaults,
            category: CATEGORY,
        })
    }

    pub(super) async fn specialization(
        &self,
    ) -> Result<Option<(i64, Specialization)>, PolicyError> {
        match self.store.read(sql::specialization).await? {
            Some((v, body, _)) => Ok(Some((v, parse_body(&body)?))),
            None => Ok(None),
        }
    }
}

fn parse_body(body: &str) -> Result<Specialization, PolicyError> {
    serde_json::from_str(body)
        .map_err(|e| PolicyError::Io(std::io::Error::other(format!("stored specialization: {e}"))))
}

/// What an install left on disk.
struct Installed {
    /// `(path under the category, sha256)` of every bundle file.
    files: Vec<(String, String)>,
    /// `SOUL.md` as found before the first persona install.
    previous_persona: Option<String>,
}

/// Bring the disk from `old` (whose files hashed `installed`) to `new`.
/// Blocking; runs as the agent. A file or persona the tenant changed since
/// it was installed is never removed or overwritten by a removal. On a
/// failure half-way (a symlink the agent planted, a full disk) what this
/// call changed is put back as `old` had it, and the error returned.
fn install(
    home: &Path,
    old: Option<&Specialization>,
    new: &Specialization,
    installed: &[(String, String)],
    first_persona: bool,
) -> Result<Installed, PolicyError> {
    let home = DirHandle::open_home(home)?;
    let mut undo = Undo::default();
    match apply(&home, old, new, installed, first_persona, &mut undo) {
        Ok(done) => Ok(done),
        Err(e) => {
            undo.revert(&home, old);
            Err(match e {
                PolicyError::Io(io)
                    if matches!(io.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR | libc::EEXIST)) =>
                {
                    PolicyError::Blocked(
                        "a symlink or another file is in the way in the Hermes home; nothing was changed".into(),
                    )
                }
                other => other,
            })
        }
    }
}

/// What an unfinished `apply` changed.
#[derive(Default)]
struct Undo {
    /// `SOUL.md` before it was replaced or removed (`Some(None)`: absent).
    soul: Option<Option<Vec<u8>>>,
    /// Bundle files written or removed (paths under the category).
    touched: Vec<String>,
}

impl Undo {
    /// Best effort: every step is tried, failures are only logged.
    fn revert(&self, home: &DirHandle, old: Option<&Specialization>) {
        let soul = Path::new(SOUL);
        let put_back = match &self.soul {
            Some(Some(bytes)) => home.write_atomic(soul, bytes, home.mode_or(soul, 0o644)),
            Some(None) => home.remove(soul),
            None => Ok(()),
        };
        let Ok(cat) = home.open_dir(&category()) else {
            log_revert(put_back);
            return;
        };
        let mut result = put_back;
        for path in &self.touched {
            let rel = Path::new(path);
            let step = match old.and_then(|o| o.skills.iter().find(|f| f.path == *path)) {
                Some(f) => write_file(&cat, rel, f.content.as_bytes()),
                None => remove_file(&cat, rel),
            };
            result = result.and(step);
        }
        log_revert(result);
    }
}

fn log_revert(r: std::io::Result<()>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot put the previous specialization back entirely");
    }
}

const SOUL: &str = "SOUL.md";

fn category() -> PathBuf {
    PathBuf::from("skills").join(CATEGORY)
}

/// Write a bundle file, creating its directories.
fn write_file(cat: &DirHandle, rel: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        cat.create_dirs(parent, 0o755)?;
    }
    cat.write_atomic(rel, bytes, 0o644)
}

/// Remove a bundle file and the directories it leaves empty.
fn remove_file(cat: &DirHandle, rel: &Path) -> std::io::Result<()> {
    cat.remove(rel)?;
    let mut dir = rel.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        cat.remove_empty_dir(d)?;
        dir = d.parent();
    }
    Ok(())
}

fn apply(
    home: &DirHandle,
    old: Option<&Specialization>,
    new: &Specialization,
    installed: &[(String, String)],
    first_persona: bool,
    undo: &mut Undo,
) -> Result<Installed, PolicyError> {
    let soul = Path::new(SOUL);
    let read =
        |p: &Path| -> Option<Vec<u8>> { home.read_capped(p, MAX_PREVIOUS_SOUL).ok().flatten() };
    let mut previous_persona = None;
    let old_persona = old.and_then(|o| o.persona.as_deref());
    match (&new.persona, old_persona) {
        (Some(p), _) => {
            let before = read(soul);
            if first_persona {
                previous_persona = before.clone().and_then(|b| String::from_utf8(b).ok());
            }
            undo.soul = Some(before);
            let mode = home.mode_or(soul, 0o644);
            home.write_atomic(soul, p.as_bytes(), mode)?;
        }
        (None, Some(ours)) => {
            // Ours still there: put back what was there before.
            let before = read(soul);
            if before.as_deref() == Some(ours.as_bytes()) {
                undo.soul = Some(before);
                match &new.previous_persona {
                    Some(prev) => {
                        let mode = home.mode_or(soul, 0o644);
                        home.write_atomic(soul, prev.as_bytes(), mode)?;
                    }
                    None => home.remove(soul)?,
                }
            }
        }
        (None, None) => {}
    }
    let mut files = Vec::new();
    let cat = if new.skills.is_empty() {
        home.open_dir(&category()).ok()
    } else {
        Some(home.create_dirs(&category(), 0o755)?)
    };
    let Some(cat) = cat else {
        return Ok(Installed {
            files,
            previous_persona,
        });
    };
    for f in &new.skills {
        undo.touched.push(f.path.clone());
        write_file(&cat, Path::new(&f.path), f.content.as_bytes())?;
        files.push((f.path.clone(), crate::hex::sha256(f.content.as_bytes())));
    }
    // Files of the old bundle the new one drops: removed if unchanged.
    for (path, sha) in installed {
        if new.skills.iter().any(|f| f.path == *path) {
            continue;
        }
        let rel = Path::new(path);
        let now = cat.read_capped(rel, MAX_FILE as u64).ok().flatten();
        if now.as_deref().map(crate::hex::sha256).as_deref() == Some(sha.as_str()) {
            undo.touched.push(path.clone());
            remove_file(&cat, rel)?;
        } else {
            tracing::info!(path = %path, "a specialization file changed since it was installed; left in place");
        }
    }
    if new.skills.is_empty() {
        home.remove_empty_dir(&category())?;
    }
    Ok(Installed {
        files,
        previous_persona,
    })
}
