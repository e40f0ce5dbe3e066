//! The activity signal a hub uses to suspend idle VMs: when the tenant
//! last used the agent, what is running now, and when the hub last called.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::Serialize;

use crate::runs::Runs;
use crate::store::{Store, StoreResult, activity, ms_to_rfc3339, now_ms};

/// Counters fed by the API; cheap to share.
#[derive(Debug, Default)]
pub struct Activity {
    /// Last authenticated call to the tenant-runtime API (ms; 0 = none).
    last_hub_call_ms: AtomicI64,
}

/// `activity` in `GET /agent` and the heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivityView {
    pub last_run_at: Option<String>,
    pub last_message_at: Option<String>,
    pub active_runs: u64,
    pub queued_runs: u64,
    pub last_hub_call_at: Option<String>,
}

impl Activity {
    /// An authenticated request reached the API.
    pub fn hub_called(&self) {
        self.last_hub_call_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub async fn view(&self, store: &Store, runs: &Arc<Runs>) -> StoreResult<ActivityView> {
        let (run, message) = store
            .read(|c| Ok((activity::last_run_ms(c)?, activity::last_message_ms(c)?)))
            .await?;
        let now = now_ms();
        // An imported message may carry a future time: never ahead of now.
        let at = |ms: Option<i64>| ms.map(|m| ms_to_rfc3339(m.min(now)));
        let hub = self.last_hub_call_ms.load(Ordering::Relaxed);
        Ok(ActivityView {
            last_run_at: at(run),
            last_message_at: at(message),
            active_runs: runs.runs_at_gateway() as u64,
            queued_runs: runs.queued_runs() as u64,
            last_hub_call_at: (hub > 0).then(|| ms_to_rfc3339(hub)),
        })
    }
}
