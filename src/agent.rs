//! The agent's observable status and the commands that change it: the
//! seam between the supervisor (which owns the gateway process) and its
//! readers (API, heartbeat, runs). Only the supervisor writes the status.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::supervisor::gateway_socket::KeyGate;

/// Lifecycle states of the supervised gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Stopped,
    Starting,
    Running,
    Unhealthy,
    Backoff,
    Failed,
    Stopping,
    /// `--dev` only: the gateway command is not installed. Not retried:
    /// nothing will change until an agent is installed (`scripts/dev-agent`)
    /// and the agent is started again.
    NotInstalled,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Stopped => "stopped",
            AgentState::Starting => "starting",
            AgentState::Running => "running",
            AgentState::Unhealthy => "unhealthy",
            AgentState::Backoff => "backoff",
            AgentState::Failed => "failed",
            AgentState::Stopping => "stopping",
            AgentState::NotInstalled => "not_installed",
        }
    }
}

/// What the hub (or the operator) wants the agent to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Stopped,
}

/// Who made the agent's current desired state: the hub (a change of its
/// desired state, or a suspension), a run or a cron firing that woke the
/// agent, or the operator (`POST /agent/*`, and the default of a new
/// tenant). Reported in the heartbeat so the hub sees a local wake-up and
/// can decide again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredBy {
    Hub,
    Run,
    Cron,
    Operator,
}

impl DesiredBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredBy::Hub => "hub",
            DesiredBy::Run => "run",
            DesiredBy::Cron => "cron",
            DesiredBy::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<DesiredBy> {
        match s {
            "hub" => Some(DesiredBy::Hub),
            "run" => Some(DesiredBy::Run),
            "cron" => Some(DesiredBy::Cron),
            "operator" => Some(DesiredBy::Operator),
            _ => None,
        }
    }
}

/// How the last gateway process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastExit {
    pub at: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// `crash`, `planned`, `restart_request` (75), `config` (78), `unhealthy`, `start_timeout`.
    pub reason: String,
}

/// A snapshot of the agent, published by the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentStatus {
    pub state: AgentState,
    pub desired: Desired,
    /// Who set `desired` last.
    pub desired_by: DesiredBy,
    pub pid: Option<u32>,
    /// Start time of `pid` (field 22 of `/proc/PID/stat`), set with it:
    /// the key gate credits that process alone, never a recycled pid.
    #[serde(skip)]
    pub pid_start_time: Option<u64>,
    /// RFC 3339 time of the last state change.
    pub since: String,
    /// Seconds the current gateway process has been `running`.
    pub uptime_s: Option<u64>,
    pub restarts: u64,
    pub last_exit: Option<LastExit>,
    pub last_error: Option<String>,
    /// The gateway's version from its `/health`.
    pub release: Option<String>,
    /// The gateway's `/v1/capabilities` answer, once probed.
    pub capabilities: Option<serde_json::Value>,
    /// Why the agent is in its current state (`crash_loop`, `config`,
    /// `spawn`, `unhealthy`, ...), when that says more than the state.
    pub reason: Option<String>,
    /// Unix ms when the current process became `running`; `uptime_s` is
    /// derived from it when a snapshot is taken.
    #[serde(skip)]
    pub running_since_ms: Option<i64>,
}

impl AgentStatus {
    pub fn initial(desired: Desired) -> AgentStatus {
        AgentStatus {
            state: AgentState::Stopped,
            desired,
            desired_by: DesiredBy::Operator,
            pid: None,
            pid_start_time: None,
            since: crate::store::ms_to_rfc3339(crate::store::now_ms()),
            uptime_s: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
            release: None,
            capabilities: None,
            reason: None,
            running_since_ms: None,
        }
    }

    /// This snapshot with `uptime_s` computed for `now_ms`.
    pub fn at(mut self, now_ms: i64) -> AgentStatus {
        self.uptime_s = self
            .running_since_ms
            .map(|since| u64::try_from((now_ms - since).max(0) / 1000).unwrap_or(0));
        self
    }
}

/// Where the gateway's API listens and the key it accepts. The key is a
/// secret: `Debug` does not show it.
#[derive(Clone)]
pub struct GatewayEndpoint {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base_url: String,
    /// The `API_SERVER_KEY` the daemon generated, for the managed scope.
    /// Requests get it only through [`AgentHandle::gate`].
    pub api_key: String,
}

impl GatewayEndpoint {
    /// The port of `base_url`.
    pub fn port(&self) -> Option<u16> {
        self.base_url.rsplit_once(':')?.1.parse().ok()
    }
}

impl std::fmt::Debug for GatewayEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayEndpoint")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// A request to the supervisor.
#[derive(Debug)]
pub enum AgentCommand {
    Start,
    Stop,
    Restart,
}

/// One command on its way to the supervisor: what, on whose behalf, and
/// where to answer with the status once it is accepted.
#[derive(Debug)]
pub struct AgentRequest {
    pub cmd: AgentCommand,
    pub by: DesiredBy,
    pub reply: oneshot::Sender<AgentStatus>,
}

/// Cheap, cloneable access to the agent for everyone but the supervisor.
#[derive(Clone, Debug)]
pub struct AgentHandle {
    status: watch::Receiver<AgentStatus>,
    commands: mpsc::Sender<AgentRequest>,
    endpoint: std::sync::Arc<GatewayEndpoint>,
    gate: std::sync::Arc<KeyGate>,
}

/// The supervisor's end of an [`AgentHandle`].
pub struct AgentChannels {
    pub status: watch::Sender<AgentStatus>,
    pub commands: mpsc::Receiver<AgentRequest>,
}

/// A handle and the supervisor's end of it. Commands queue (bounded) and
/// are applied one at a time, which is what serialises concurrent calls.
pub fn channel(initial: AgentStatus, endpoint: GatewayEndpoint) -> (AgentHandle, AgentChannels) {
    let (status_tx, status_rx) = watch::channel(initial);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let gate = KeyGate::new(endpoint.port(), &endpoint.api_key, status_rx.clone());
    (
        AgentHandle {
            status: status_rx,
            commands: cmd_tx,
            endpoint: std::sync::Arc::new(endpoint),
            gate: std::sync::Arc::new(gate),
        },
        AgentChannels {
            status: status_tx,
            commands: cmd_rx,
        },
    )
}

#[derive(Debug, thiserror::Error)]
#[error("the supervisor is not running")]
pub struct SupervisorGone;

impl AgentHandle {
    /// The current snapshot (with a fresh `uptime_s`).
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone().at(crate::store::now_ms())
    }

    /// The gateway's API address, for callers of the gateway (runs).
    pub fn endpoint(&self) -> &GatewayEndpoint {
        &self.endpoint
    }

    /// The only way to the gateway key: it checks that the gateway port is
    /// held by the gateway the supervisor started before it hands out the
    /// `Authorization` header.
    pub fn gate(&self) -> std::sync::Arc<KeyGate> {
        self.gate.clone()
    }

    /// A receiver to await changes.
    pub fn subscribe(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Wait until the status satisfies `pred` (for example: `running`
    /// after a wake-on-demand start), at most `timeout`. `Err` carries the
    /// last status seen.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&AgentStatus) -> bool,
        timeout: std::time::Duration,
    ) -> Result<AgentStatus, AgentStatus> {
        let mut rx = self.status.clone();
        let result = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s))).await;
        match result {
            Ok(Ok(s)) => Ok(s.clone().at(crate::store::now_ms())),
            _ => Err(self.status()),
        }
    }

    /// Send a command on behalf of `by`; resolves with the status once the
    /// supervisor has accepted it (not necessarily reached the target state).
    pub async fn send(
        &self,
        cmd: AgentCommand,
        by: DesiredBy,
    ) -> Result<AgentStatus, SupervisorGone> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(AgentRequest { cmd, by, reply })
            .await
            .map_err(|_| SupervisorGone)?;
        rx.await
            .map(|s| s.at(crate::store::now_ms()))
            .map_err(|_| SupervisorGone)
    }
}
