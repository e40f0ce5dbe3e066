//! Operations: what an operator or the hub needs to run the daemon on a
//! fleet — drain before a restart (`drain`, `control`), the activity
//! signal for hibernation (`activity`).

pub mod activity;
pub mod control;
pub mod diagnostics;
pub mod drain;
pub mod follow;
pub mod logs;
pub mod redact;

use std::sync::Arc;

use crate::hub::HubLink;
use crate::runs::Runs;
use crate::store::{Store, StoreResult};

pub use activity::{Activity, ActivityView};
pub use drain::{Drain, DrainView, Phase};

/// Log followers served at once (`GET /logs?follow=true`).
pub const MAX_FOLLOWERS: usize = 4;

/// The operations state shared by the API, the heartbeat and shutdown.
pub struct Ops {
    pub drain: Drain,
    pub activity: Activity,
    pub gateway_log: Arc<logs::LogFiles>,
    pub daemon_log: Arc<logs::LogFiles>,
    pub followers: Arc<tokio::sync::Semaphore>,
    /// Ends log follows at shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
    store: Store,
    runs: Arc<Runs>,
}

impl Ops {
    pub fn new(
        link: HubLink,
        runs: Arc<Runs>,
        store: Store,
        config: &crate::config::Config,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Arc<Ops> {
        let dir = config.data_dir.join("logs");
        let keep = config.gateway.log_files;
        Arc::new(Ops {
            drain: Drain::new(link, runs.clone()),
            activity: Activity::default(),
            gateway_log: Arc::new(logs::LogFiles::new(&dir, logs::Source::Gateway, keep)),
            daemon_log: Arc::new(logs::LogFiles::new(&dir, logs::Source::Daemon, keep)),
            followers: Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWERS)),
            shutdown,
            store,
            runs,
        })
    }

    pub fn log_files(&self, source: logs::Source) -> Arc<logs::LogFiles> {
        match source {
            logs::Source::Gateway => self.gateway_log.clone(),
            logs::Source::Daemon => self.daemon_log.clone(),
        }
    }

    pub async fn activity(&self) -> StoreResult<ActivityView> {
        self.activity.view(&self.store, &self.runs).await
    }
}

/// How often the `.env` values are read again for redaction (the agent
/// can write the file itself).
const SECRETS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Learn the `.env` values now, then every 30 s until `cancel`.
pub async fn learn_env_secrets(
    env_file: Arc<crate::envfile::EnvFile>,
    cancel: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    async fn once(env_file: &crate::envfile::EnvFile) {
        match env_file.values().await {
            Ok(values) => {
                redact::remember_all(redact::Kind::EnvValue, values.iter().map(String::as_str))
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the .env values for redaction"),
        }
    }
    once(&env_file).await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SECRETS_EVERY) => once(&env_file).await,
            }
        }
    })
}
