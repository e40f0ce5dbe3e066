//! A policy the gateway refuses is not left in force: when the gateway
//! exits 78 (hermes-agent's EX_CONFIG, "fatal configuration error") before
//! any start with the newest policy succeeded, the previous version (or no
//! policy) is written back and the refused one is recorded `rolled_back`
//! with the reason. The supervisor, waiting in `failed`/`config`, sees the
//! managed `config.yaml` change and starts the gateway again.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{AgentConfig, PolicyError, Unproven, json_pairs, lock, parse_stored};
use crate::agent::{AgentState, AgentStatus};
use crate::store::{now_ms, policy as sql};

/// Follow the agent's status until `cancel` (also for `mcp_log`).
pub(super) async fn watch(this: Arc<AgentConfig>, cancel: CancellationToken) {
    let mut rx = this.agent.subscribe();
    loop {
        let status = rx.borrow_and_update().clone();
        this.follow_mcp(&status).await;
        this.on_status(&status).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

impl AgentConfig {
    async fn on_status(&self, s: &AgentStatus) {
        let Some(u) = lock(&self.unproven).clone() else {
            return;
        };
        if s.state == AgentState::Running && s.pid.is_some() && s.pid != u.pid {
            // A gateway started with the policy in place and serves.
            *lock(&self.unproven) = None;
            let v = u.version;
            if let Err(e) = self
                .store
                .write(move |c| sql::mark_proven(c, v, now_ms()))
                .await
            {
                tracing::warn!(error = %e, "cannot record that the policy works");
            }
            return;
        }
        let refused = s
            .last_exit
            .as_ref()
            .is_some_and(|e| e.reason == "config" && Some(&e.at) != u.exit_at.as_ref());
        if refused {
            if let Err(e) = self.roll_back(&u).await {
                tracing::error!(error = %e, version = u.version, "cannot roll the refused policy back");
            }
        }
    }

    async fn roll_back(&self, u: &Unproven) -> Result<(), PolicyError> {
        let _guard = self.lock.lock().await;
        let version = u.version;
        match self.store.read(sql::applied).await? {
            Some(row) if row.version == version => {}
            // Superseded meanwhile: the newer one is judged on its own.
            _ => return Ok(()),
        }
        let previous = self.store.read(move |c| sql::previous(c, version)).await?;
        let to = previous.as_ref().map(|r| r.version);
        let policy = previous
            .as_ref()
            .map(|r| parse_stored(&r.body))
            .transpose()?;
        let conns = self.load_connections().await?;
        self.write_managed(policy.as_ref(), &conns).await?;
        let written = self.defaults_written().await?;
        let back = policy
            .as_ref()
            .map(|p| p.defaults.clone())
            .unwrap_or_default();
        let now_written = match self.settings.sync_defaults(written.clone(), back).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot restore the previous policy's defaults in config.yaml");
                written
            }
        };
        let message = match to {
            Some(to) => format!(
                "the gateway refused policy version {version} (exit 78, fatal configuration error); rolled back to version {to}"
            ),
            None => format!(
                "the gateway refused policy version {version} (exit 78, fatal configuration error); rolled back to no policy"
            ),
        };
        let pairs = json_pairs(&now_written);
        let msg = message.clone();
        self.store
            .write(move |c| {
                let tx = c.transaction()?;
                sql::roll_back(&tx, version, &msg, to, now_ms())?;
                sql::replace_defaults_written(&tx, &pairs)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.settings
            .set_enforced(policy.map(|p| p.enforced).unwrap_or_default());
        *lock(&self.unproven) = None;
        self.refresh_report().await?;
        tracing::warn!(version, rolled_back_to = ?to, "{message}");
        Ok(())
    }
}
