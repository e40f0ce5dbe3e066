//! Gateways a previous daemon left behind (crash, upgrade): found by the
//! persisted process record, the managed-dir marker and the agent's cgroup,
//! stopped before anything is spawned. Never adopted.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    KILL_WAIT, Machine, PROCESS_KEY, ProcessRecord, TransitionExtra, process, remove_planned_stop,
};
use crate::agent::AgentState;

impl Machine {
    /// Stop any gateway a previous daemon left running (crash, upgrade):
    /// the recorded process (checked by start time) and every process
    /// carrying this daemon's managed-dir marker. Never adopted: its
    /// output pipes and exit status belong to a dead parent.
    pub(super) async fn stop_leftovers(&mut self) {
        let recorded: Option<ProcessRecord> = match self.store.get_state(PROCESS_KEY).await {
            Ok(Some(text)) if !text.is_empty() => serde_json::from_str(&text).ok(),
            _ => None,
        };
        let marker = self.marker.clone();
        let rec = recorded.clone();
        let found = tokio::task::spawn_blocking(move || {
            let pgid = rec
                .as_ref()
                .filter(|r| process::is_alive(r.pid, Some(r.start_time)))
                .map(|r| r.pgid);
            process::find_gateway_processes(pgid, &marker)
        })
        .await
        .unwrap_or_default();
        // Whatever is still in the agent's cgroup belongs to no gateway of
        // this daemon: a previous daemon's, or detached by one.
        let containment = self.containment.clone();
        let stray = tokio::task::spawn_blocking(move || {
            containment
                .cgroup()
                .map(|cg| cg.procs())
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        if !stray.is_empty() {
            tracing::warn!(pids = ?stray, "killing processes left in the agent cgroup");
            self.kill_cgroup().await;
        }
        if found.is_empty() {
            if recorded.is_some() {
                self.persist_process(None);
            }
            return;
        }
        let pids: Vec<u32> = found.iter().map(|(p, _)| *p).collect();
        tracing::warn!(?pids, "stopping a gateway left by a previous daemon");
        if let Some(r) = recorded
            .as_ref()
            .filter(|r| process::is_alive(r.pid, Some(r.start_time)))
        {
            let home = self.cfg.hermes_home.clone();
            let (pid, st) = (r.pid, r.start_time);
            let _ = tokio::task::spawn_blocking(move || {
                crate::identity::as_agent(|| process::write_planned_stop(&home, pid, st))
            })
            .await;
        }
        process::signal_all(&found, libc::SIGTERM);
        let pgid = recorded.as_ref().map(|r| r.pgid);
        let gone = self.wait_gone(pgid, self.cfg.stop_grace).await;
        if !gone {
            let marker = self.marker.clone();
            let left =
                tokio::task::spawn_blocking(move || process::find_gateway_processes(pgid, &marker))
                    .await
                    .unwrap_or_default();
            tracing::warn!(
                count = left.len(),
                "leftover gateway ignored SIGTERM; SIGKILL"
            );
            process::signal_all(&left, libc::SIGKILL);
            if !self.wait_gone(pgid, KILL_WAIT).await {
                tracing::error!("leftover gateway processes survive SIGKILL");
            }
        }
        remove_planned_stop(&self.cfg).await;
        self.persist_process(None);
        self.transition(
            AgentState::Stopped,
            "leftover_stopped",
            TransitionExtra {
                pid: recorded.map(|r| r.pid),
                detail: Some(format!("{} process(es)", pids.len())),
                ..Default::default()
            },
        );
    }

    pub(super) async fn wait_gone(&self, pgid: Option<u32>, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let marker = self.marker.clone();
            let left =
                tokio::task::spawn_blocking(move || process::find_gateway_processes(pgid, &marker))
                    .await
                    .unwrap_or_default();
            if left.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
