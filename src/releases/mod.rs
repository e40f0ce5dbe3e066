//! Agent releases on the VM: installed side by side (`layout`, `install`),
//! activated behind a health gate with automatic rollback (`switch`),
//! watched for a crash loop after activation, driven by the API and by the
//! hub's `desired.agent_release`, and recovered after a daemon crash
//! (`recover`).
//!
//! One worker task does every install and switch, one at a time, from a
//! bounded queue; the API and the heartbeat only validate, record and
//! enqueue. Knows nothing of HTTP.

pub mod install;
pub mod layout;
pub mod records;
pub mod recover;
mod switch;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentHandle, Desired};
use crate::config::ReleasesConfig;
use crate::hub::HubLink;
use crate::runs::GatewayClient;
use crate::store::{Store, StoreError, ms_to_rfc3339, now_ms};
pub use layout::{Layout, valid_version};
pub use records::{Release, ReleaseState};

/// Queued jobs at most; a full queue is `503`.
const QUEUE: usize = 16;
/// Release rows kept at most (failed installs included): a new version
/// beyond is refused until some are deleted.
const MAX_RELEASES: usize = 100;
/// `daemon_state` key: the last `desired.agent_release` acted on.
const DESIRED_KEY: &str = "releases.desired";

/// Why a request about releases is refused.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "`{0}` is not a release version (PEP 440, starting with a digit, at most 64 characters)"
    )]
    InvalidVersion(String),
    #[error("sha256 must be 64 lowercase hex digits")]
    InvalidSha256,
    #[error("release {0} is not installed")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "release {0} is quarantined: it failed its health gate too often; DELETE it, then POST it again to retry"
    )]
    Quarantined(String),
    #[error("too many release operations are queued; retry later")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A release as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseView {
    pub version: String,
    pub state: ReleaseState,
    pub installed_at: Option<String>,
    pub size: Option<u64>,
    pub last_error: Option<String>,
    pub sha256: Option<String>,
    pub gate_failures: u32,
}

impl From<Release> for ReleaseView {
    fn from(r: Release) -> Self {
        ReleaseView {
            installed_at: r.installed_at_ms.map(ms_to_rfc3339),
            version: r.version,
            state: r.state,
            size: r.size,
            last_error: r.last_error,
            sha256: r.sha256,
            gate_failures: r.gate_failures,
        }
    }
}

/// What the heartbeat reports (kept fresh by the worker).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReleasesReport {
    pub active: Option<String>,
    pub items: Vec<ReportItem>,
    /// The hub's `desired.agent_release` the daemon last acted on.
    pub desired: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportItem {
    pub version: String,
    pub state: ReleaseState,
    pub last_error: Option<String>,
}

enum Job {
    Install {
        version: String,
        sha256: Option<String>,
    },
    Activate {
        version: String,
    },
    Desired {
        version: String,
        sha256: Option<String>,
    },
}

/// What the worker and the switch share.
struct Ctx {
    cfg: ReleasesConfig,
    layout: Layout,
    store: Store,
    agent: AgentHandle,
    link: HubLink,
    wait_for_runs: Duration,
    /// The gateway's API, for the gate's smoke run.
    gateway: GatewayClient,
    /// Held for a whole activation (and by a delete).
    switching: Mutex<()>,
    report: watch::Sender<ReleasesReport>,
}

impl Ctx {
    /// The row of `version`.
    async fn get(&self, version: &str) -> Result<Option<Release>, StoreError> {
        let v = version.to_owned();
        self.store.read(move |c| records::get(c, &v)).await
    }
}

/// The releases service; cheap to clone.
#[derive(Clone)]
pub struct Releases {
    ctx: Arc<Ctx>,
    jobs: mpsc::Sender<Job>,
}

impl Releases {
    /// Start the worker on `cancel`. Run `recover::recover` before.
    pub fn start(
        cfg: ReleasesConfig,
        store: Store,
        agent: AgentHandle,
        link: HubLink,
        wait_for_runs: Duration,
        gateway: GatewayClient,
        cancel: CancellationToken,
    ) -> (Releases, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let ctx = Arc::new(Ctx {
            layout: Layout::new(cfg.dir.clone()),
            cfg,
            store,
            agent,
            link,
            wait_for_runs,
            gateway,
            switching: Mutex::new(()),
            report: watch::Sender::new(ReleasesReport::default()),
        });
        let this = Releases {
            ctx: ctx.clone(),
            jobs: tx,
        };
        let task = tokio::spawn(worker::worker(ctx, rx, cancel));
        (this, task)
    }

    /// Every known release, newest first.
    pub async fn list(&self) -> Result<Vec<ReleaseView>, ReleaseError> {
        let rows = self.ctx.store.read(records::list).await?;
        Ok(rows.into_iter().map(ReleaseView::from).collect())
    }

    /// The heartbeat's view.
    pub fn report(&self) -> ReleasesReport {
        self.ctx.report.borrow().clone()
    }

    /// Install `version` in the background (idempotent: an installed or
    /// installing release is returned as it is). `true` when a new install
    /// was queued.
    pub async fn install(
        &self,
        version: &str,
        sha256: Option<&str>,
    ) -> Result<(ReleaseView, bool), ReleaseError> {
        check_version(version)?;
        if let Some(h) = sha256 {
            if h.len() != 64
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(ReleaseError::InvalidSha256);
            }
        }
        let permit = self.jobs.try_reserve().map_err(|_| ReleaseError::Busy)?;
        // Installed by the role (same directory): known from now on, no pip.
        let (l, v) = (self.ctx.layout.clone(), version.to_owned());
        let on_disk = tokio::task::spawn_blocking(move || l.installed(&v))
            .await
            .unwrap_or(false);
        let (v, h) = (version.to_owned(), sha256.map(str::to_owned));
        let (row, queued) = self
            .ctx
            .store
            .write(
                move |c| -> Result<Result<(Release, bool), ReleaseError>, StoreError> {
                    let tx = c.transaction()?;
                    let existing = records::get(&tx, &v)?;
                    if existing.is_none() && records::count(&tx)? >= MAX_RELEASES {
                        return Ok(Err(ReleaseError::Conflict(format!(
                            "{MAX_RELEASES} releases are recorded; DELETE some first"
                        ))));
                    }
                    if let Some(r) = &existing {
                        let failed_install =
                            r.state == ReleaseState::Failed && r.installed_at_ms.is_none();
                        if r.state == ReleaseState::Quarantined {
                            return Ok(Err(ReleaseError::Quarantined(v)));
                        }
                        if !failed_install && h.is_some() && r.sha256.is_some() && r.sha256 != h {
                            return Ok(Err(ReleaseError::Conflict(format!(
                                "release {v} is already known with another sha256"
                            ))));
                        }
                        // Installed (or on its way): nothing to do. A failed
                        // install is tried again.
                        if !failed_install {
                            return Ok(Ok((r.clone(), false)));
                        }
                    }
                    let r = Release {
                        version: v.clone(),
                        state: if on_disk {
                            ReleaseState::Ready
                        } else {
                            ReleaseState::Installing
                        },
                        sha256: h.clone(),
                        installed_at_ms: on_disk.then(now_ms),
                        size: None,
                        last_error: None,
                        gate_failures: existing.map_or(0, |e| e.gate_failures),
                    };
                    records::put(&tx, &r, now_ms())?;
                    tx.commit()?;
                    Ok(Ok((r, !on_disk)))
                },
            )
            .await??;
        if queued {
            permit.send(Job::Install {
                version: version.to_owned(),
                sha256: sha256.map(str::to_owned),
            });
        }
        refresh(&self.ctx).await;
        Ok((row.into(), queued))
    }

    /// Activate `version` in the background behind the health gate.
    pub async fn activate(&self, version: &str) -> Result<ReleaseView, ReleaseError> {
        check_version(version)?;
        let row = self
            .ctx
            .get(version)
            .await?
            .ok_or_else(|| ReleaseError::NotFound(version.to_owned()))?;
        match row.state {
            ReleaseState::Quarantined => return Err(ReleaseError::Quarantined(row.version)),
            ReleaseState::Installing => {
                return Err(ReleaseError::Conflict(format!(
                    "release {version} is still installing"
                )));
            }
            ReleaseState::Active => return Ok(row.into()),
            ReleaseState::Failed if row.installed_at_ms.is_none() => {
                return Err(ReleaseError::Conflict(format!(
                    "release {version} failed to install; POST it again"
                )));
            }
            ReleaseState::Ready | ReleaseState::Failed => {}
        }
        if self.ctx.agent.status().desired == Desired::Stopped {
            return Err(ReleaseError::Conflict(
                "the agent is stopped; start it before activating a release (the health gate needs it running)".into(),
            ));
        }
        self.jobs
            .try_send(Job::Activate {
                version: version.to_owned(),
            })
            .map_err(|_| ReleaseError::Busy)?;
        Ok(row.into())
    }

    /// Remove an inactive release (files and row).
    pub async fn delete(&self, version: &str) -> Result<(), ReleaseError> {
        check_version(version)?;
        let _one = self.ctx.switching.lock().await;
        let row = self
            .ctx
            .get(version)
            .await?
            .ok_or_else(|| ReleaseError::NotFound(version.to_owned()))?;
        let l = self.ctx.layout.clone();
        let v = version.to_owned();
        let (current, previous) = tokio::task::spawn_blocking(move || {
            (l.pointer(layout::CURRENT), l.pointer(layout::PREVIOUS))
        })
        .await
        .map_err(|e| ReleaseError::Store(StoreError::Join(e)))?;
        if row.state == ReleaseState::Active || current.as_deref() == Some(version) {
            return Err(ReleaseError::Conflict(format!(
                "release {version} is active; activate another release first"
            )));
        }
        if previous.as_deref() == Some(version) {
            return Err(ReleaseError::Conflict(format!(
                "release {version} is the rollback target of the active release"
            )));
        }
        if row.state == ReleaseState::Installing {
            return Err(ReleaseError::Conflict(format!(
                "release {version} is installing"
            )));
        }
        let l = self.ctx.layout.clone();
        tokio::task::spawn_blocking(move || l.remove(&v))
            .await
            .map_err(|e| ReleaseError::Store(StoreError::Join(e)))?
            .map_err(|e| ReleaseError::Store(StoreError::Io(e)))?;
        let v = version.to_owned();
        self.ctx
            .store
            .write(move |c| records::delete(c, &v))
            .await?;
        refresh(&self.ctx).await;
        Ok(())
    }

    /// The hub's `desired.agent_release` from a heartbeat reply. Acted on
    /// when it differs from the last one acted on (an edge, like
    /// `hub::decision`); never blocks the heartbeat.
    pub fn desired(&self, version: &str, sha256: Option<&str>) {
        if !valid_version(version) {
            tracing::warn!("ignored a desired agent release that is not a version");
            return;
        }
        if self.ctx.report.borrow().desired.as_deref() == Some(version) {
            return;
        }
        let _ = self.jobs.try_send(Job::Desired {
            version: version.to_owned(),
            sha256: sha256.map(str::to_owned),
        });
    }
}

fn check_version(v: &str) -> Result<(), ReleaseError> {
    if valid_version(v) {
        Ok(())
    } else {
        Err(ReleaseError::InvalidVersion(v.chars().take(80).collect()))
    }
}

/// One line, printable, without host paths (for `last_error`).
pub(crate) fn scrub(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let words: Vec<&str> = one
        .split_whitespace()
        .map(|w| {
            if w.contains("://") && w.contains('@') {
                // A URL with credentials (an index's basic auth).
                "<url>"
            } else if w.contains('/') && !w.contains("://") {
                "<path>"
            } else {
                w
            }
        })
        .collect();
    let mut out = words.join(" ");
    if out.len() > 1000 {
        let mut end = 1000;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

async fn refresh(ctx: &Ctx) {
    let desired = ctx.store.get_state(DESIRED_KEY).await.ok().flatten();
    let Ok(rows) = ctx.store.read(records::list).await else {
        return;
    };
    let report = ReleasesReport {
        active: rows
            .iter()
            .find(|r| r.state == ReleaseState::Active)
            .map(|r| r.version.clone()),
        items: rows
            .into_iter()
            .take(50)
            .map(|r| ReportItem {
                version: r.version,
                state: r.state,
                last_error: r.last_error,
            })
            .collect(),
        desired,
    };
    ctx.report.send_if_modified(|r| {
        let changed = *r != report;
        *r = report;
        changed
    });
}
