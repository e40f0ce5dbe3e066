//! The link to the hub: heartbeats out (status, resources, usage deltas),
//! desired state back (agent running/stopped, access active/suspended,
//! interval, the hub's clock), and the state other modules read from it.
//!
//! [`HubLink`] is the shared, cheap-to-clone view: whether the tenant is
//! suspended (runs refuse with `403 suspended`), the open-run and
//! cron-due counters other modules feed, and the last clock skew seen.
//! [`heartbeat`] is the task that talks to the hub; [`uptime`] records
//! the agent's running time for the usage report.

pub mod client;
pub mod decision;
pub mod heartbeat;
pub mod metrics;
pub mod payload;
pub mod reply;
pub mod resources;
pub mod schedule;
pub mod uptime;
pub mod usage_report;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{Store, StoreResult};

pub use metrics::HubMetrics;

/// `daemon_state` key holding the access the hub granted last.
pub const ACCESS_KEY: &str = "hub.access";

/// Whether the tenant may use the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Active,
    Suspended,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Active => "active",
            Access::Suspended => "suspended",
        }
    }

    fn parse(s: &str) -> Option<Access> {
        match s {
            "active" => Some(Access::Active),
            "suspended" => Some(Access::Suspended),
            _ => None,
        }
    }
}

/// The hub has suspended this tenant: new runs are refused.
#[derive(Debug, thiserror::Error)]
#[error("this tenant is suspended by the platform; new runs are refused until access is restored")]
pub struct Suspended;

/// Shared view of the hub link; cheap to clone.
#[derive(Clone)]
pub struct HubLink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HubLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubLink")
            .field("access", &self.access())
            .field("open_runs", &self.open_runs())
            .field("cron_jobs_due", &self.cron_jobs_due())
            .finish()
    }
}

/// Reads a live count owned by another module.
type CountSource = Box<dyn Fn() -> u64 + Send + Sync>;
/// Reads the hub-driven configuration's report (`policy`).
type AgentConfigSource = Box<dyn Fn() -> crate::policy::Report + Send + Sync>;

/// One hold on the new-run gate (see [`HubLink::hold_gate`]).
pub(crate) struct GateHold(HubLink);

impl Drop for GateHold {
    fn drop(&mut self) {
        self.0.release_gate();
    }
}

struct Inner {
    /// `true` while suspended; a watch so the runs service can hold a
    /// receiver (`Runs::new(.., link.suspended(), ..)`).
    suspended: watch::Sender<bool>,
    /// `true` while a hub stop is being committed (no run open, Stop on
    /// its way): a run arriving then waits and wakes the agent after it.
    hub_stopping: watch::Sender<bool>,
    /// Holders of the gate (`hold_gate`); it is up while any is held.
    gate_holders: std::sync::Mutex<usize>,
    open_runs: AtomicU64,
    open_runs_source: std::sync::OnceLock<CountSource>,
    cron_jobs_due: AtomicU64,
    agent_config_source: std::sync::OnceLock<AgentConfigSource>,
    /// Hub clock minus ours, in ms; meaningful once `skew_known`.
    skew_ms: AtomicI64,
    skew_known: AtomicBool,
    skew_warning: AtomicBool,
    /// Drain state and activity for the beat (set once at start).
    ops: std::sync::OnceLock<Arc<crate::ops::Ops>>,
}

/// Counts one open run while alive (see [`HubLink::run_opened`]).
#[derive(Debug)]
pub struct OpenRun {
    link: HubLink,
}

impl Drop for OpenRun {
    fn drop(&mut self) {
        let _ = self
            .link
            .inner
            .open_runs
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }
}

/// The last clock comparison with the hub.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockView {
    /// Hub clock minus ours, in seconds; `None` before the first reply
    /// that carried `now`.
    pub skew_s: Option<f64>,
    pub warning: bool,
}

impl HubLink {
    /// A link with the access persisted by an earlier run (default active).
    pub async fn load(store: &Store) -> StoreResult<HubLink> {
        let access = store
            .get_state(ACCESS_KEY)
            .await?
            .and_then(|v| Access::parse(&v))
            .unwrap_or(Access::Active);
        Ok(HubLink::new(access))
    }

    pub fn new(access: Access) -> HubLink {
        HubLink {
            inner: Arc::new(Inner {
                suspended: watch::Sender::new(access == Access::Suspended),
                hub_stopping: watch::Sender::new(false),
                gate_holders: std::sync::Mutex::new(0),
                open_runs: AtomicU64::new(0),
                open_runs_source: std::sync::OnceLock::new(),
                cron_jobs_due: AtomicU64::new(0),
                agent_config_source: std::sync::OnceLock::new(),
                skew_ms: AtomicI64::new(0),
                skew_known: AtomicBool::new(false),
                skew_warning: AtomicBool::new(false),
                ops: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn access(&self) -> Access {
        if *self.inner.suspended.borrow() {
            Access::Suspended
        } else {
            Access::Active
        }
    }

    /// `Err(Suspended)` while the hub has suspended the tenant: call before
    /// starting a run (the API maps it to `403 suspended`).
    pub fn ensure_active(&self) -> Result<(), Suspended> {
        match self.access() {
            Access::Active => Ok(()),
            Access::Suspended => Err(Suspended),
        }
    }

    /// Persist and apply a new access; returns `true` if it changed.
    pub async fn set_access(&self, store: &Store, access: Access) -> StoreResult<bool> {
        if self.access() == access {
            return Ok(false);
        }
        store
            .set_state(ACCESS_KEY, access.as_str().to_owned())
            .await?;
        self.inner
            .suspended
            .send_replace(access == Access::Suspended);
        Ok(true)
    }

    /// A receiver that is `true` while the tenant is suspended.
    pub fn suspended(&self) -> watch::Receiver<bool> {
        self.inner.suspended.subscribe()
    }

    /// A receiver that is `true` while a hub stop is being committed (see
    /// `hub::decision`): a run must not take the agent as running then.
    pub fn hub_stopping(&self) -> watch::Receiver<bool> {
        self.inner.hub_stopping.subscribe()
    }

    /// Raise the new-run gate until the returned hold is dropped. Holds
    /// nest: a hub stop and an `.env` restart at once keep the gate up
    /// until both are done.
    pub(crate) fn hold_gate(&self) -> GateHold {
        let mut n = self
            .inner
            .gate_holders
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *n += 1;
        self.inner.hub_stopping.send_replace(true);
        GateHold(self.clone())
    }

    fn release_gate(&self) {
        let mut n = self
            .inner
            .gate_holders
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.inner.hub_stopping.send_replace(false);
        }
    }

    /// Count a run as open until the returned guard is dropped.
    pub fn run_opened(&self) -> OpenRun {
        self.inner.open_runs.fetch_add(1, Ordering::Relaxed);
        OpenRun { link: self.clone() }
    }

    /// Let the runs service report its own count (for example
    /// `move || runs.open_runs() as u64`) instead of holding guards. Set
    /// once; a later call is ignored.
    pub fn set_open_runs_source(&self, source: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.inner.open_runs_source.set(Box::new(source));
    }

    pub fn open_runs(&self) -> u64 {
        match self.inner.open_runs_source.get() {
            Some(source) => source(),
            None => self.inner.open_runs.load(Ordering::Relaxed),
        }
    }

    /// Let `policy` report the applied policy and the connections in each
    /// beat. Set once; a later call is ignored.
    pub fn set_agent_config_source(
        &self,
        source: impl Fn() -> crate::policy::Report + Send + Sync + 'static,
    ) {
        let _ = self.inner.agent_config_source.set(Box::new(source));
    }

    pub fn agent_config(&self) -> Option<crate::policy::Report> {
        self.inner.agent_config_source.get().map(|f| f())
    }

    /// Set by the cron scheduler: jobs whose time has come and that have
    /// not started yet.
    pub fn set_cron_jobs_due(&self, n: u64) {
        self.inner.cron_jobs_due.store(n, Ordering::Relaxed);
    }

    pub fn cron_jobs_due(&self) -> u64 {
        self.inner.cron_jobs_due.load(Ordering::Relaxed)
    }

    /// Give the beat the drain state and the activity signal. Set once.
    pub fn set_ops(&self, ops: Arc<crate::ops::Ops>) {
        let _ = self.inner.ops.set(ops);
    }

    pub fn ops(&self) -> Option<&Arc<crate::ops::Ops>> {
        self.inner.ops.get()
    }

    pub fn clock(&self) -> ClockView {
        let known = self.inner.skew_known.load(Ordering::Acquire);
        ClockView {
            skew_s: known.then(|| self.inner.skew_ms.load(Ordering::Relaxed) as f64 / 1000.0),
            warning: self.inner.skew_warning.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_clock(&self, skew_ms: i64, warning: bool) {
        self.inner.skew_ms.store(skew_ms, Ordering::Relaxed);
        self.inner.skew_warning.store(warning, Ordering::Relaxed);
        self.inner.skew_known.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_holds_nest() {
        let link = HubLink::new(Access::Active);
        let gate = link.hub_stopping();
        let hub_stop = link.hold_gate();
        let env_restart = link.hold_gate();
        assert!(*gate.borrow());
        drop(hub_stop);
        assert!(*gate.borrow(), "the other hold keeps the gate up");
        drop(env_restart);
        assert!(!*gate.borrow());
    }

    #[test]
    fn open_run_guard_counts_and_never_underflows() {
        let link = HubLink::new(Access::Active);
        let a = link.run_opened();
        let b = link.run_opened();
        assert_eq!(link.open_runs(), 2);
        drop(a);
        assert_eq!(link.open_runs(), 1);
        drop(b);
        assert_eq!(link.open_runs(), 0);
        link.inner.open_runs.store(0, Ordering::Relaxed);
        drop(OpenRun { link: link.clone() });
        assert_eq!(link.open_runs(), 0);
        link.set_open_runs_source(|| 7);
        assert_eq!(link.open_runs(), 7);
    }

    #[tokio::test]
    async fn access_is_persisted_and_reloaded() {
        let dir = tempfile::tempdir().expect("tmp");
        let store =
            Store::open_blocking(&dir.path().join("db"), &Default::default()).expect("open store");
        let link = HubLink::load(&store).await.expect("load");
        assert!(link.ensure_active().is_ok());
        assert!(
            link.set_access(&store, Access::Suspended)
                .await
                .expect("set")
        );
        assert!(
            !link
                .set_access(&store, Access::Suspended)
                .await
                .expect("set")
        );
        assert!(link.ensure_active().is_err());
        assert!(*link.suspended().borrow());
        let again = HubLink::load(&store).await.expect("reload");
        assert_eq!(again.access(), Access::Suspended);
    }

    fn config(hub: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("config.toml");
        std::fs::write(&file, format!("tenant_id = \"t\"\n[hub]\n{hub}\n")).expect("write");
        crate::config::Config::load_with_env(
            &crate::config::Source {
                file: Some(file),
                dev: false,
            },
            std::iter::empty(),
        )
    }

    #[test]
    fn hub_keys_have_defaults_and_bad_values_name_the_key() {
        let c = config("url = \"https://hub.example\"").expect("valid");
        assert_eq!(c.hub.heartbeat_interval, std::time::Duration::from_secs(30));
        assert_eq!(c.hub.request_timeout, std::time::Duration::from_secs(10));
        assert_eq!(c.hub.backoff_max, std::time::Duration::from_secs(300));
        assert_eq!(
            c.hub.clock_skew_threshold,
            std::time::Duration::from_secs(60)
        );
        assert_eq!(c.hub.usage_batch, 500);
        assert_eq!(
            c.hub.stop_wait_for_runs,
            std::time::Duration::from_secs(600)
        );
        assert!((c.hub.heartbeat_jitter - 0.1).abs() < 1e-9);
        let short = config("heartbeat_interval = \"3s\"").expect("valid");
        assert_eq!(short.hub.request_timeout, std::time::Duration::from_secs(1));
        for (text, key) in [
            (
                "heartbeat_jitter_percent = 80",
                "hub.heartbeat_jitter_percent",
            ),
            ("usage_batch = 0", "hub.usage_batch"),
            ("backoff_max = \"soon\"", "hub.backoff_max"),
            ("clock_skew_threshold = \"0s\"", "hub.clock_skew_threshold"),
            ("request_timeout = \"x\"", "hub.request_timeout"),
            ("stop_wait_for_runs = \"0s\"", "hub.stop_wait_for_runs"),
        ] {
            let e = config(text).expect_err(text);
            assert!(e.to_string().contains(key), "{e}");
        }
    }
}
