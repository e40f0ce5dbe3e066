//! Hub-driven agent configuration (issue 14): the agent policy (enforced
//! settings, defaults, features) and the MCP connections, applied to the
//! gateway's managed scope and the tenant's `config.yaml`.
//!
//! The managed `config.yaml` (`HERMES_MANAGED_DIR`, daemon-owned, read-only
//! to the agent) is rendered whole from the store on every change and
//! written with the one atomic write (`supervisor::managed`), so it is
//! always exactly what the store says. hermes-agent 0.19.0 overlays it per
//! leaf key on the tenant's file and re-reads it (mtime and size) when it
//! builds a run's agent, so enforced settings and features apply from the
//! next run; MCP servers are connected only at gateway start, so a
//! connection change restarts the gateway when idle (`restart`).
//!
//! A policy the gateway refuses (exit 78 at its next start, before a start
//! with it succeeded) is rolled back to the previous version (`rollback`).
//! Every change is serialised by one lock.

pub mod connections;
mod mcp_log;
pub mod restart;
mod rollback;
pub mod spec;
pub mod specialization;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value as Json;
use serde_yaml_ng::{Mapping, Value as Yaml};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentHandle, AgentState, AgentStatus};
use crate::settings::{self, HermesConfig, SettingsError};
use crate::store::{Store, StoreError, ms_to_rfc3339, now_ms, policy as sql};
use connections::Connection;
use restart::{Applies, Restarter};
use spec::Policy;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Invalid(String),
    #[error("version {got} is not newer than version {have}, the newest received; nothing changed")]
    Stale { got: i64, have: i64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Limit(String),
    /// The agent's files are in a state the change cannot go through
    /// (a symlink planted where a bundle directory goes).
    #[error("{0}")]
    Blocked(String),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the managed scope: {0}")]
    Io(#[from] std::io::Error),
}

/// What the heartbeat reports (never a secret: names and states only).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// The policy version in force.
    pub policy_version: Option<i64>,
    /// Why the last refused policy was rolled back.
    pub policy_last_error: Option<String>,
    /// The specialization version installed.
    pub specialization_version: Option<i64>,
    pub connections: Vec<ConnectionReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectionReport {
    pub name: String,
    pub status: &'static str,
}

/// A policy version not yet seen working: the gateway's state when it
/// was applied, so a later start (new pid) or a later exit 78 (new exit)
/// can be told from what was there before.
#[derive(Debug, Clone)]
struct Unproven {
    version: i64,
    pid: Option<u32>,
    exit_at: Option<String>,
}

/// The hub-driven configuration service.
pub struct AgentConfig {
    store: Store,
    settings: Arc<HermesConfig>,
    hermes_home: PathBuf,
    managed_dir: PathBuf,
    reader_gid: Option<u32>,
    agent: AgentHandle,
    restarter: Restarter,
    reserved: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Serialises every change.
    lock: tokio::sync::Mutex<()>,
    unproven: std::sync::Mutex<Option<Unproven>>,
    /// `(name, updated_at, enabled)` of every connection, for reports.
    connections: std::sync::Mutex<Vec<(String, i64, bool)>>,
    /// The gateway's MCP connection failures (`mcp_log`).
    mcp_log: std::sync::Mutex<mcp_log::McpLog>,
    /// Policy version, its last error, specialization version.
    report_version: std::sync::Mutex<(Option<i64>, Option<String>, Option<i64>)>,
}

/// The `GET/PUT /agent-policy` view.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub version: Option<i64>,
    pub applied_at: Option<String>,
    /// A gateway has started and run with this version in place.
    pub proven: bool,
    pub enforced: BTreeMap<String, Json>,
    pub defaults: BTreeMap<String, Json>,
    pub features: BTreeMap<String, bool>,
    /// The toolsets the `api_server` platform gets (`platform_toolsets`),
    /// when the policy has features.
    pub api_server_toolsets: Option<Vec<String>>,
    /// Every managed setting: its effective value and where it comes from.
    pub settings: BTreeMap<String, Effective>,
    pub last_error: Option<LastError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applies: Option<Applies>,
}

#[derive(Debug, Serialize)]
pub struct Effective {
    pub value: Json,
    /// `enforced`, `tenant`, `default` or `agent` (the gateway's built-in).
    pub source: &'static str,
}

#[derive(Debug, Serialize)]
pub struct LastError {
    pub version: i64,
    pub message: String,
}

/// One connection as `GET /connections` shows it.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    pub name: String,
    #[serde(flatten)]
    pub spec: Connection,
    pub updated_at: String,
    pub status: &'static str,
    /// Why the gateway could not connect it (`status: failed`), as it
    /// logged it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AgentConfig {
    /// Load what the store holds, make the managed `config.yaml` say
    /// exactly that (a crash between a write and its commit heals here),
    /// and start the restart and rollback tasks. Before the gateway starts.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        store: Store,
        settings: Arc<HermesConfig>,
        hermes_home: PathBuf,
        managed_dir: PathBuf,
        reader_gid: Option<u32>,
        agent: AgentHandle,
        link: crate::hub::HubLink,
        wait_for_runs: std::time::Duration,
        reserved: Box<dyn Fn(&str) -> bool + Send + Sync>,
        cancel: CancellationToken,
    ) -> Result<(Arc<AgentConfig>, Vec<JoinHandle<()>>), PolicyError> {
        let (restarter, restart_task) =
            Restarter::start(agent.clone(), link.clone(), wait_for_runs, cancel.clone());
        let this = Arc::new(AgentConfig {
            store,
            settings,
            hermes_home,
            managed_dir,
            reader_gid,
            agent,
            restarter,
            reserved,
            lock: tokio::sync::Mutex::new(()),
            unproven: std::sync::Mutex::new(None),
            connections: std::sync::Mutex::new(Vec::new()),
            report_version: std::sync::Mutex::new((None, None, None)),
            mcp_log: std::sync::Mutex::new(mcp_log::McpLog::default()),
        });
        let applied = this.applied().await?;
        let conns = this.load_connections().await?;
        this.write_managed(applied.as_ref().map(|(_, p)| p), &conns)
            .await?;
        if let Some((row, p)) = &applied {
            this.settings.set_enforced(p.enforced.clone());
            if row.proven_at.is_none() {
                *lock(&this.unproven) = Some(Unproven {
                    version: row.version,
                    pid: None,
                    exit_at: None,
                });
            }
        }
        this.refresh_report().await?;
        {
            let this = this.clone();
            link.set_agent_config_source(move || this.report());
        }
        let watcher = tokio::spawn(rollback::watch(this.clone(), cancel));
        Ok((this, vec![restart_task, watcher]))
    }

    // ---- policy -------------------------------------------------------------

    /// `PUT /agent-policy`: validated whole, refused unless newer than any
    /// version received, then the managed file, the tenant's defaults and
    /// the store, in that order (each step undone if a later one fails).
    pub async fn put_policy(&self, body: Json) -> Result<PolicyView, PolicyError> {
        let (version, policy) = spec::parse(body)?;
        let _guard = self.lock.lock().await;
        if let Some(have) = self.store.read(sql::max_version).await? {
            if version <= have {
                return Err(PolicyError::Stale { got: version, have });
            }
        }
        let previous = self.applied().await?.map(|(_, p)| p);
        let conns = self.load_connections().await?;
        let written = self.defaults_written().await?;
        self.write_managed(Some(&policy), &conns).await?;
        let special = self.specialization().await?.map(|(_, s)| s.defaults);
        let merged = merge_defaults(special.as_ref(), &policy.defaults);
        let now_written = match self.settings.sync_defaults(written.clone(), merged).await {
            Ok(w) => w,
            Err(e) => {
                self.restore_managed(previous.as_ref(), &conns).await;
                return Err(e.into());
            }
        };
        let body_text = serde_json::to_string(&policy)
            .map_err(|e| PolicyError::Io(std::io::Error::other(e)))?;
        let pairs = json_pairs(&now_written);
        let now = now_ms();
        let committed = self
            .store
            .write(move |c| {
                let tx = c.transaction()?;
                sql::put_applied(&tx, version, &body_text, now, None)?;
                sql::replace_defaults_written(&tx, &pairs)?;
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = committed {
            self.restore_managed(previous.as_ref(), &conns).await;
            let back = previous.map(|p| p.defaults).unwrap_or_default();
            let back = merge_defaults(special.as_ref(), &back);
            if let Err(e) = self.settings.sync_defaults(now_written, back).await {
                tracing::warn!(error = %e, "cannot restore the tenant's defaults after a failed policy commit");
            }
            return Err(e.into());
        }
        self.settings.set_enforced(policy.enforced.clone());
        let s = self.agent.status();
        *lock(&self.unproven) = Some(Unproven {
            version,
            pid: s.pid,
            exit_at: s.last_exit.map(|e| e.at),
        });
        self.refresh_report().await?;
        tracing::info!(version, "agent policy applied");
        let mut view = self.policy_view().await?;
        // Read by the gateway when it builds a run's agent: no restart.
        view.applies = Some(Applies::Now);
        Ok(view)
    }

    /// `GET /agent-policy`.
    pub async fn policy_view(&self) -> Result<PolicyView, PolicyError> {
        let applied = self.applied().await?;
        let written = self.defaults_written().await?;
        let tenant = self.settings.tenant_values().await?;
        let rolled = self.store.read(sql::last_rolled_back).await?;
        let (row, policy) = match applied {
            Some((row, p)) => (Some(row), p),
            None => (None, Policy::default()),
        };
        let mut effective = BTreeMap::new();
        for key in settings::setting_keys() {
            let e = if let Some(v) = policy.enforced.get(key) {
                Effective {
                    value: v.clone(),
                    source: "enforced",
                }
            } else if let Some(v) = tenant.get(key) {
                let source = if written.get(key) == Some(v) {
                    "default"
                } else {
                    "tenant"
                };
                Effective {
                    value: v.clone(),
                    source,
                }
            } else {
                Effective {
                    value: Json::Null,
                    source: "agent",
                }
            };
            effective.insert(key.to_owned(), e);
        }
        Ok(PolicyView {
            version: row.as_ref().map(|r| r.version),
            applied_at: row.as_ref().and_then(|r| r.applied_at).map(ms_to_rfc3339),
            proven: row.as_ref().is_some_and(|r| r.proven_at.is_some()),
            api_server_toolsets: policy.api_server_toolsets(),
            enforced: policy.enforced,
            defaults: policy.defaults,
            features: policy.features,
            settings: effective,
            last_error: rolled.and_then(|r| {
                Some(LastError {
                    version: r.version,
                    message: r.error?,
                })
            }),
            applies: None,
        })
    }

    // ---- connections ----------------------------------------------------------

    /// `PUT /connections/{name}`.
    pub async fn put_connection(
        &self,
        name: String,
        body: Json,
    ) -> Result<(Applies, ConnectionView), PolicyError> {
        connections::check_name(&name)?;
        let conn = connections::parse(body, &*self.reserved)?;
        let _guard = self.lock.lock().await;
        let mut conns = self.load_connections().await?;
        let existed = conns.iter().any(|(n, _)| *n == name);
        if !existed && conns.len() as i64 >= connections::MAX_CONNECTIONS {
            return Err(PolicyError::Limit(format!(
                "at most {} connections; delete one first",
                connections::MAX_CONNECTIONS
            )));
        }
        let before = conns.clone();
        conns.retain(|(n, _)| *n != name);
        conns.push((name.clone(), conn.clone()));
        conns.sort_by(|a, b| a.0.cmp(&b.0));
        self.change_connections(&before, &conns, {
            let (name, spec) = (
                name.clone(),
                serde_json::to_string(&conn)
                    .map_err(|e| PolicyError::Io(std::io::Error::other(e)))?,
            );
            move |c: &mut rusqlite::Connection| sql::put_connection(c, &name, &spec, now_ms())
        })
        .await?;
        let applies = self.restarter.changed();
        tracing::info!(connection = %name, "MCP connection written to the managed scope");
        let view = self
            .connection_views()
            .await?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| PolicyError::NotFound("no such connection".into()))?;
        Ok((applies, view))
    }

    /// `DELETE /connections/{name}`.
    pub async fn delete_connection(&self, name: String) -> Result<Applies, PolicyError> {
        connections::check_name(&name)?;
        let _guard = self.lock.lock().await;
        let before = self.load_connections().await?;
        if !before.iter().any(|(n, _)| *n == name) {
            return Err(PolicyError::NotFound(format!(
                "no connection named `{name}`"
            )));
        }
        let after: Vec<_> = before.iter().filter(|(n, _)| *n != name).cloned().collect();
        self.change_connections(&before, &after, {
            let name = name.clone();
            move |c: &mut rusqlite::Connection| sql::delete_connection(c, &name).map(|_| ())
        })
        .await?;
        tracing::info!(connection = %name, "MCP connection removed from the managed scope");
        Ok(self.restarter.changed())
    }

    /// `GET /connections`.
    pub async fn connection_views(&self) -> Result<Vec<ConnectionView>, PolicyError> {
        let rows = self.store.read(sql::connections).await?;
        let status = self.agent.status();
        let mut out = Vec::new();
        for row in rows {
            let Ok(spec) = serde_json::from_str::<Connection>(&row.spec) else {
                continue;
            };
            let (state, error) = self.status_of(&status, &row.name, spec.enabled, row.updated_at);
            out.push(ConnectionView {
                status: state,
                error,
                name: row.name,
                spec,
                updated_at: ms_to_rfc3339(row.updated_at),
            });
        }
        Ok(out)
    }

    /// Managed file first, then the store; the file is rewritten from
    /// `before` if the store refuses.
    async fn change_connections(
        &self,
        before: &[(String, Connection)],
        after: &[(String, Connection)],
        write: impl FnOnce(&mut rusqlite::Connection) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), PolicyError> {
        let policy = self.applied().await?.map(|(_, p)| p);
        self.write_managed(policy.as_ref(), after).await?;
        if let Err(e) = self.store.write(write).await {
            self.restore_managed(policy.as_ref(), before).await;
            return Err(e.into());
        }
        self.refresh_report().await?;
        Ok(())
    }

    // ---- shared -----------------------------------------------------------------

    /// Bring the defaults in the tenant's file to `special` + `policy`
    /// and record what they now hold.
    async fn sync_all_defaults(
        &self,
        special: &BTreeMap<String, Json>,
        policy: &BTreeMap<String, Json>,
    ) -> Result<(), PolicyError> {
        let written = self.defaults_written().await?;
        let now = self
            .settings
            .sync_defaults(written, merge_defaults(Some(special), policy))
            .await?;
        let pairs = json_pairs(&now);
        self.store
            .write(move |c| {
                let tx = c.transaction()?;
                sql::replace_defaults_written(&tx, &pairs)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn applied(&self) -> Result<Option<(sql::PolicyRow, Policy)>, PolicyError> {
        let Some(row) = self.store.read(sql::applied).await? else {
            return Ok(None);
        };
        let policy = parse_stored(&row.body)?;
        Ok(Some((row, policy)))
    }

    async fn load_connections(&self) -> Result<Vec<(String, Connection)>, PolicyError> {
        let rows = self.store.read(sql::connections).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.name, serde_json::from_str(&r.spec).ok()?)))
            .collect())
    }

    async fn defaults_written(&self) -> Result<BTreeMap<String, Json>, PolicyError> {
        let pairs = self.store.read(sql::defaults_written).await?;
        Ok(pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_str(&v).ok()?)))
            .collect())
    }

    async fn write_managed(
        &self,
        policy: Option<&Policy>,
        conns: &[(String, Connection)],
    ) -> Result<(), PolicyError> {
        let text = render(policy, conns)?;
        let dir = self.managed_dir.clone();
        let gid = self.reader_gid;
        tokio::task::spawn_blocking(move || {
            crate::supervisor::managed::write_managed_config(&dir, text.as_bytes(), gid)
        })
        .await
        .map_err(|e| PolicyError::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Best effort: put back what the store still says.
    async fn restore_managed(&self, policy: Option<&Policy>, conns: &[(String, Connection)]) {
        if let Err(e) = self.write_managed(policy, conns).await {
            tracing::error!(error = %e, "cannot restore the managed config.yaml");
        }
    }

    async fn refresh_report(&self) -> Result<(), PolicyError> {
        let applied = self.store.read(sql::applied).await?;
        let rolled = self.store.read(sql::last_rolled_back).await?;
        let rows = self.store.read(sql::connections).await?;
        let special = self.store.read(sql::specialization).await?;
        *lock(&self.report_version) = (
            applied.map(|r| r.version),
            rolled.and_then(|r| r.error),
            special.map(|(v, _, _)| v),
        );
        *lock(&self.connections) = rows
            .into_iter()
            .map(|r| {
                let enabled = serde_json::from_str::<Connection>(&r.spec).is_ok_and(|c| c.enabled);
                (r.name, r.updated_at, enabled)
            })
            .collect();
        Ok(())
    }

    /// The heartbeat's view, from memory (no I/O).
    pub fn report(&self) -> Report {
        let (policy_version, policy_last_error, specialization_version) =
            lock(&self.report_version).clone();
        let status = self.agent.status();
        Report {
            policy_version,
            policy_last_error,
            specialization_version,
            connections: lock(&self.connections)
                .iter()
                .map(|(name, updated, enabled)| ConnectionReport {
                    name: name.clone(),
                    status: self.status_of(&status, name, *enabled, *updated).0,
                })
                .collect(),
        }
    }
}

impl AgentConfig {
    /// How a connection stands for the agent. hermes-agent 0.19.0 reports
    /// no per-server MCP state over its API (`/v1/toolsets` lists built-in
    /// toolsets only), so: whether the running gateway started after the
    /// connection was last written (`loaded`, else `pending_reload`), and
    /// whether that start logged a failure for it (`failed`, `mcp_log`).
    fn status_of(
        &self,
        agent: &AgentStatus,
        name: &str,
        enabled: bool,
        updated_at: i64,
    ) -> (&'static str, Option<String>) {
        if !enabled {
            return ("disabled", None);
        }
        if agent.state != AgentState::Running {
            return ("agent_not_running", None);
        }
        match agent.running_since_ms {
            Some(since) if since >= updated_at => match self.mcp_failure(agent.pid, name) {
                Some(error) => ("failed", Some(error)),
                None => ("loaded", None),
            },
            _ => ("pending_reload", None),
        }
    }
}

/// The managed `config.yaml`: enforced settings, the features as the
/// `api_server` platform's toolsets, and `mcp_servers`.
fn render(policy: Option<&Policy>, conns: &[(String, Connection)]) -> Result<String, PolicyError> {
    let mut doc = Mapping::new();
    if let Some(p) = policy {
        for (key, value) in &p.enforced {
            settings::set_path(&mut doc, key, Some(settings::to_yaml(key, value)?))?;
        }
        if let Some(toolsets) = p.api_server_toolsets() {
            settings::set_path(
                &mut doc,
                "platform_toolsets.api_server",
                Some(Yaml::Sequence(
                    toolsets.into_iter().map(Yaml::String).collect(),
                )),
            )?;
        }
    }
    if !conns.is_empty() {
        let mut servers = Mapping::new();
        for (name, c) in conns {
            servers.insert(Yaml::String(name.clone()), c.to_yaml());
        }
        doc.insert(Yaml::String("mcp_servers".into()), Yaml::Mapping(servers));
    }
    let body = if doc.is_empty() {
        "{}\n".to_owned()
    } else {
        serde_yaml_ng::to_string(&Yaml::Mapping(doc))
            .map_err(|e| PolicyError::Io(std::io::Error::other(e)))?
    };
    Ok(format!(
        "# Managed by hermes-tenantd from the hub's agent policy and connections;\n# rewritten whole on every change. Edits here are lost.\n{body}"
    ))
}

/// The defaults in force: the specialization's, the policy's over them.
fn merge_defaults(
    special: Option<&BTreeMap<String, Json>>,
    policy: &BTreeMap<String, Json>,
) -> BTreeMap<String, Json> {
    let mut out = special.cloned().unwrap_or_default();
    out.extend(policy.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

fn parse_stored(body: &str) -> Result<Policy, PolicyError> {
    serde_json::from_str(body)
        .map_err(|e| PolicyError::Io(std::io::Error::other(format!("stored policy: {e}"))))
}

fn json_pairs(m: &BTreeMap<String, Json>) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
