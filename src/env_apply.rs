//! `.env` changes reach the agent for the very next run.
//!
//! hermes-agent 0.19.0 reads the Hermes `.env` at start and re-applies it
//! per turn with `load_dotenv(override=True)` (`gateway/run.py`,
//! `hermes_cli/env_loader.py`): a changed value showed up one run late, a
//! deleted key stayed in the process for good, and tool subprocesses kept
//! what the gateway had at start. The only way the gateway sees exactly the
//! file is a fresh process. So after a `PUT`/`DELETE /env/{name}` the
//! gateway is restarted **when it is idle**: no run in flight (bounded by
//! `hub.stop_wait_for_runs`, like a hub stop), with the new-run gate raised
//! so a run posted meanwhile waits for the restarted gateway instead of
//! reaching the old one. Bursts of changes make one restart. A stopped
//! agent needs none: its next start reads the file.
//!
//! `GET /env` says whether a change is pending and when the last one took
//! effect (`EnvApplyState`).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentCommand, AgentHandle, AgentState, Desired};
use crate::hub::HubLink;
use crate::runs::Runs;
use crate::store::{ms_to_rfc3339, now_ms};

/// Changes closer together than this make one restart.
const SETTLE: Duration = Duration::from_millis(300);
/// Longest wait for the restarted gateway to be running again.
const BACK_WITHIN: Duration = Duration::from_secs(180);

/// Where the last `.env` change stands, for `GET /env`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EnvApplyState {
    /// A change is written to `.env` but the running gateway has not
    /// restarted with it yet.
    pub pending: bool,
    /// RFC 3339 time of the last change.
    pub changed_at: Option<String>,
    /// RFC 3339 time the last change took effect (the gateway restarted
    /// with it, or was not running and will read it at its next start).
    pub applied_at: Option<String>,
}

/// The handle the env routes use.
#[derive(Clone)]
pub struct EnvApply {
    state: watch::Sender<EnvApplyState>,
    wake: Arc<Notify>,
    link: HubLink,
    /// The gate raised by `changed()`, handed to the applier.
    pending_gate: Arc<std::sync::Mutex<Option<crate::hub::GateHold>>>,
}

impl EnvApply {
    /// Start the applier task on `cancel`.
    pub fn start(
        agent: AgentHandle,
        runs: Arc<Runs>,
        link: HubLink,
        wait_for_runs: Duration,
        cancel: CancellationToken,
    ) -> (EnvApply, JoinHandle<()>) {
        let this = EnvApply {
            state: watch::Sender::new(EnvApplyState::default()),
            wake: Arc::new(Notify::new()),
            link: link.clone(),
            pending_gate: Arc::new(std::sync::Mutex::new(None)),
        };
        let task = tokio::spawn(run(this.clone(), agent, runs, link, wait_for_runs, cancel));
        (this, task)
    }

    /// `.env` changed: restart the gateway when it is idle.
    pub fn changed(&self) {
        // Before the change is acknowledged: a run posted right after it
        // waits for the gateway that reads it.
        let mut pending = self.pending_gate.lock().unwrap_or_else(|p| p.into_inner());
        if pending.is_none() {
            *pending = Some(self.link.hold_gate());
        }
        drop(pending);
        self.state.send_modify(|s| {
            s.pending = true;
            s.changed_at = Some(ms_to_rfc3339(now_ms()));
        });
        self.wake.notify_one();
    }

    pub fn state(&self) -> EnvApplyState {
        self.state.borrow().clone()
    }
}

async fn run(
    this: EnvApply,
    agent: AgentHandle,
    runs: Arc<Runs>,
    link: HubLink,
    wait_for_runs: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = this.wake.notified() => {}
        }
        // Held (new runs wait) until the gateway runs with the new file;
        // the hold `changed()` took is released for it (a change from now
        // on takes a new one and makes another round).
        let gate = crate::hub::decision::hold_gate(&link);
        let taken = this
            .pending_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(taken);
        // Let a burst of changes settle into one restart.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SETTLE) => {}
        }
        // What the restart will carry: changes after this point need
        // another round (the notify is set again).
        let generation = this.state.borrow().changed_at.clone();
        let applied = apply(&agent, &runs, &link, wait_for_runs, &cancel).await;
        drop(gate);
        if cancel.is_cancelled() {
            return;
        }
        if applied {
            this.state.send_modify(|s| {
                if s.changed_at == generation {
                    s.pending = false;
                }
                s.applied_at = Some(ms_to_rfc3339(now_ms()));
            });
        } else {
            // Not restarted (the supervisor refused or the gateway did not
            // come back): try again on the next change; the state says it
            // is still pending.
            tracing::warn!(
                "the .env change is not applied yet; it will be at the next gateway start"
            );
        }
    }
}

/// Restart a running gateway once no run is in flight; `true` when the
/// change is in effect (or will be at the next start of a stopped agent).
async fn apply(
    agent: &AgentHandle,
    runs: &Runs,
    link: &HubLink,
    wait_for_runs: Duration,
    cancel: &CancellationToken,
) -> bool {
    let status = agent.status();
    if status.desired == Desired::Stopped || status.state != AgentState::Running {
        // Stopped, failed or on its way up: the next start reads the file.
        // (A gateway that is starting right now may have read the old one:
        // restart it once it runs.)
        if status.desired == Desired::Running
            && matches!(status.state, AgentState::Starting | AgentState::Unhealthy)
        {
            if !wait_running(agent, cancel, None).await {
                return false;
            }
        } else {
            return true;
        }
    }
    // New runs wait (the caller holds the gate); the runs already at the
    // gateway finish first (at most `wait_for_runs`): the daemon's one wait.
    let _hold = tokio::select! {
        _ = cancel.cancelled() => return false,
        hold = crate::hub::decision::quiesce_counting(
            link,
            wait_for_runs,
            "an .env change restarts the gateway",
            || runs.runs_at_gateway() as u64,
        ) => hold,
    };
    let before = agent.status();
    if before.state != AgentState::Running || before.desired == Desired::Stopped {
        return true;
    }
    let old_pid = before.pid;
    tracing::info!("restarting the gateway so the .env change takes effect");
    if agent
        .send(AgentCommand::Restart, before.desired_by)
        .await
        .is_err()
    {
        return false;
    }
    wait_running(agent, cancel, old_pid).await
}

/// Wait until the agent is running (with another pid than `old`, when
/// given), at most `BACK_WITHIN` (also `policy::restart`'s wait).
pub(crate) async fn wait_running(
    agent: &AgentHandle,
    cancel: &CancellationToken,
    old: Option<u32>,
) -> bool {
    let mut rx = agent.subscribe();
    let deadline = Instant::now() + BACK_WITHIN;
    loop {
        {
            let s = rx.borrow_and_update();
            if s.state == AgentState::Running && (old.is_none() || s.pid != old) {
                return true;
            }
            if s.desired == Desired::Stopped {
                // Stopped meanwhile (hub, operator): the next start reads it.
                return true;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep_until(deadline) => return false,
            r = rx.changed() => if r.is_err() { return false; },
        }
    }
}
