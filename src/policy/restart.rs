//! Changes the running gateway only reads at start (hermes-agent 0.19.0
//! connects its MCP servers once, in `gateway/run.py` before serving; the
//! `mcp_servers` watcher lives in the interactive CLI only): restart it
//! once no run is in flight, through `hub::decision::quiesce` and its
//! new-run gate, so no run is cut. Bursts of changes make one restart.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentCommand, AgentHandle, AgentState, Desired};
use crate::hub::HubLink;

/// Changes closer together than this make one restart.
const SETTLE: Duration = Duration::from_millis(300);

/// When a change reaches the agent, as the API answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Applies {
    /// In effect at once (read live, agent idle, or not running: its next
    /// start reads it).
    Now,
    /// After the runs in flight end (bounded by `hub.stop_wait_for_runs`).
    AfterCurrentRuns,
}

/// Restarts the gateway when idle after a start-time-only change.
#[derive(Clone)]
pub struct Restarter {
    wake: Arc<Notify>,
    agent: AgentHandle,
    link: HubLink,
    /// Generation of the last change and of the last one in effect.
    generation: watch::Sender<(u64, u64)>,
}

impl Restarter {
    pub fn start(
        agent: AgentHandle,
        link: HubLink,
        bound: Duration,
        cancel: CancellationToken,
    ) -> (Restarter, JoinHandle<()>) {
        let this = Restarter {
            wake: Arc::new(Notify::new()),
            agent,
            link,
            generation: watch::Sender::new((0, 0)),
        };
        let task = tokio::spawn(run(this.clone(), bound, cancel));
        (this, task)
    }

    /// A start-time-only change was written: restart when idle.
    pub fn changed(&self) -> Applies {
        self.generation.send_modify(|g| g.0 += 1);
        self.wake.notify_one();
        let s = self.agent.status();
        let running = s.desired == Desired::Running
            && matches!(
                s.state,
                AgentState::Running | AgentState::Starting | AgentState::Unhealthy
            );
        if running && self.link.open_runs() > 0 {
            Applies::AfterCurrentRuns
        } else {
            Applies::Now
        }
    }

    /// A change is written that the running gateway has not restarted
    /// with yet.
    pub fn pending(&self) -> bool {
        let (changed, applied) = *self.generation.borrow();
        changed != applied
    }
}

async fn run(this: Restarter, bound: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = this.wake.notified() => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SETTLE) => {}
        }
        let generation = this.generation.borrow().0;
        if apply(&this, bound, &cancel).await {
            this.generation.send_modify(|g| g.1 = g.1.max(generation));
        } else if !cancel.is_cancelled() {
            tracing::warn!("an agent configuration change waits for the next gateway start");
        }
    }
}

async fn apply(this: &Restarter, bound: Duration, cancel: &CancellationToken) -> bool {
    let agent = &this.agent;
    let s = agent.status();
    if s.desired == Desired::Stopped {
        return true; // its next start reads the file
    }
    match s.state {
        AgentState::Running => {}
        // On its way up: it may have read the old file; restart it once up.
        AgentState::Starting | AgentState::Unhealthy => {
            if !crate::env_apply::wait_running(agent, cancel, None).await {
                return false;
            }
        }
        // Stopped, failed, backing off: the next start reads it.
        _ => return true,
    }
    let gate = crate::hub::decision::quiesce(
        &this.link,
        bound,
        "the agent's configuration changed (MCP connections)",
    )
    .await;
    let before = agent.status();
    if before.state != AgentState::Running || before.desired == Desired::Stopped {
        return true;
    }
    tracing::info!("restarting the gateway so its configuration change takes effect");
    if agent
        .send(AgentCommand::Restart, before.desired_by)
        .await
        .is_err()
    {
        return false;
    }
    let back = crate::env_apply::wait_running(agent, cancel, before.pid).await;
    drop(gate);
    back
}
