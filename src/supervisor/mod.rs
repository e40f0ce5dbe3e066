//! The gateway supervisor: owns the `hermes gateway` child process and is
//! the only part of the daemon that sends signals. One task runs a state
//! machine fed by one event at a time (command, child exit, probe result,
//! timer), which is what serialises concurrent start/stop/restart calls.
//!
//! States: `stopped`, `starting`, `running`, `unhealthy`, `backoff`,
//! `failed`, `stopping`; every transition is logged and recorded in
//! `agent_transitions`. The desired state is persisted in `daemon_state`.

pub mod backoff;
pub mod cgroup;
mod exits;
pub mod gateway_connect;
pub mod gateway_socket;
mod health;
mod leftovers;
pub mod logs;
pub mod managed;
pub mod port_listeners;
pub mod probe;
pub mod process;
mod records;
pub mod sock_diag;
mod spawn;

use spawn::{
    command_found, config_fingerprint, enter_empty_cgroup, kill_cgroup_detached, log_containment,
    port_in_use, prepare_spawn, remove_planned_stop,
};

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{
    self, AgentChannels, AgentCommand, AgentHandle, AgentRequest, AgentState, AgentStatus, Desired,
    DesiredBy, GatewayEndpoint, LastExit,
};
use crate::config::{Config, GatewayConfig};
use crate::store::{self, Store, agent::Transition};
use backoff::{Backoff, CrashWindow};
use logs::GatewayLog;
use probe::{HealthError, Prober};
pub use records::{PROCESS_KEY, ProcessRecord};
use records::{Record, write_records};

/// `daemon_state` key of the desired state (`running` / `stopped`).
pub const DESIRED_KEY: &str = "agent.desired";
/// `daemon_state` key of who set it (`hub`, `run`, `cron`, `operator`).
pub const DESIRED_BY_KEY: &str = "agent.desired_by";

/// Exit code asking for a restart now (EX_TEMPFAIL).
pub const EXIT_RESTART: i32 = 75;
/// Exit code for a fatal configuration error (EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

/// How often a starting gateway's `/health` is polled.
const READY_POLL: Duration = Duration::from_millis(100);
/// After SIGKILL, how long before the supervisor reports the process as
/// unkillable (it keeps waiting; a process in `D` state cannot be reaped).
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Bounded queue to the transition writer.
const RECORD_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("gateway API key in {path}: {source}")]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gateway log directory {path}: {source}")]
    Logs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot build the gateway client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A supervisor ready to run, with its configuration loaded.
pub struct Supervisor {
    cfg: GatewayConfig,
    /// Agent releases: the `current` one, when set, is what is started.
    releases: crate::releases::Layout,
    store: Store,
    channels: AgentChannels,
    endpoint: GatewayEndpoint,
    log: GatewayLog,
    desired: Desired,
    desired_by: DesiredBy,
    containment: Arc<cgroup::Containment>,
    prober: Prober,
    /// `--dev`: a missing gateway command is `not_installed`, not a failure.
    dev: bool,
    /// The tenant's `.env`, checked for reserved keys before every spawn.
    env_file: Arc<crate::envfile::EnvFile>,
}

impl Supervisor {
    /// Load (or generate) the gateway key, read the desired state, and
    /// build the [`AgentHandle`] everybody else uses. `suspended` is the
    /// access the hub granted last (persisted): a suspended tenant's agent
    /// is not started at daemon start, whatever the desired state says and
    /// whether or not a hub is configured to say so again.
    pub async fn prepare(
        config: Arc<Config>,
        store: Store,
        suspended: bool,
        env_file: Arc<crate::envfile::EnvFile>,
    ) -> Result<(AgentHandle, Supervisor), SupervisorError> {
        let data_dir = config.data_dir.clone();
        let key = tokio::task::spawn_blocking(move || managed::load_or_create_key(&data_dir))
            .await?
            .map_err(|source| SupervisorError::Key {
                path: config.data_dir.join(managed::KEY_FILE),
                source,
            })?;
        crate::ops::redact::remember(crate::ops::redact::Kind::GatewayKey, &key);
        let log_dir = config.data_dir.join("logs");
        let gw = config.gateway.clone();
        let dir = log_dir.clone();
        let log = tokio::task::spawn_blocking(move || {
            GatewayLog::open(&dir, gw.log_file_bytes, gw.log_files)
        })
        .await?
        .map_err(|source| SupervisorError::Logs {
            path: log_dir,
            source,
        })?;
        let desired = match store.get_state(DESIRED_KEY).await?.as_deref() {
            _ if suspended => Desired::Stopped,
            Some("stopped") => Desired::Stopped,
            // A new tenant's agent runs.
            _ => Desired::Running,
        };
        let desired_by = match store.get_state(DESIRED_BY_KEY).await?.as_deref() {
            _ if suspended => DesiredBy::Hub,
            Some(v) => DesiredBy::parse(v).unwrap_or(DesiredBy::Operator),
            None => DesiredBy::Operator,
        };
        let mut initial = AgentStatus::initial(desired);
        initial.desired_by = desired_by;
        let limits = config.gateway.limits.clone();
        let containment = tokio::task::spawn_blocking(move || cgroup::setup(&limits)).await?;
        log_containment(&containment);
        let endpoint = GatewayEndpoint {
            base_url: format!("http://127.0.0.1:{}", config.gateway.port),
            api_key: key,
        };
        let (handle, channels) = agent::channel(initial, endpoint.clone());
        let containment = Arc::new(containment);
        let gate = handle.gate();
        let prober =
            Prober::new(endpoint.clone(), gate.clone()).map_err(SupervisorError::Client)?;
        Ok((
            handle,
            Supervisor {
                cfg: config.gateway.clone(),
                releases: crate::releases::Layout::new(config.releases.dir.clone()),
                store,
                channels,
                endpoint,
                log,
                desired,
                desired_by,
                containment,
                prober,
                dev: config.dev,
                env_file,
            },
        ))
    }

    /// Run until `cancel`; then stop the gateway (with its grace period)
    /// and return. The desired state is left as it is, so the next daemon
    /// restores it.
    pub fn start(self, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let (record_tx, record_rx) = mpsc::channel(RECORD_QUEUE);
            let writer = tokio::spawn(write_records(self.store.clone(), record_rx));
            let (probe_tx, probe_rx) = mpsc::channel(8);
            let AgentChannels { status, commands } = self.channels;
            let marker = format!("HERMES_MANAGED_DIR={}", self.cfg.managed_dir.display());
            let machine = Machine {
                backoff: Backoff::new(self.cfg.backoff_base, self.cfg.backoff_cap),
                crashes: CrashWindow::new(self.cfg.crash_loop_window, self.cfg.crash_loop_count),
                prober: self.prober,
                endpoint: self.endpoint,
                cfg: self.cfg,
                releases: self.releases,
                store: self.store,
                log: self.log,
                status_tx: status,
                status: AgentStatus {
                    desired_by: self.desired_by,
                    ..AgentStatus::initial(self.desired)
                },
                record_tx,
                probe_tx,
                child: None,
                phase: Phase::Idle,
                generation: 0,
                probe_inflight: false,
                shutting_down: false,
                marker,
                containment: self.containment,
                dev: self.dev,
                env_file: self.env_file,
            };
            machine.run(commands, probe_rx, cancel).await;
            let _ = writer.await;
        })
    }
}

/// The live child.
struct Child {
    process: tokio::process::Child,
    pid: u32,
    start_time: u64,
}

/// What to do once a stopping gateway has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Stay stopped (desired: stopped).
    Idle,
    /// Spawn again at once (restart command).
    Respawn,
    /// Count a failure and back off (unhealthy, start timeout).
    Retry(&'static str),
    /// The daemon is shutting down.
    Exit,
}

#[derive(Debug)]
enum Phase {
    /// No child: `stopped`, or `failed` waiting for a command.
    Idle,
    Starting {
        deadline: Instant,
        next_poll: Instant,
    },
    Running {
        failures: u32,
        next_probe: Instant,
        reset_at: Option<Instant>,
    },
    Stopping {
        kill_at: Instant,
        killed: bool,
        then: After,
        cause: &'static str,
    },
    /// `backoff`, or `failed` (crash loop, spawn error) retried at the cap.
    Waiting { until: Instant },
    /// `failed` on exit code 78: wait for the configuration to change.
    ConfigFailed {
        fingerprint: Vec<Option<(i64, u64)>>,
        next_check: Instant,
    },
}

enum ProbeKind {
    Health(Result<Option<String>, HealthError>),
    Capabilities(Result<serde_json::Value, String>),
}

struct ProbeMsg {
    generation: u64,
    kind: ProbeKind,
}

enum Event {
    Shutdown,
    Command(Option<AgentRequest>),
    Exited(std::io::Result<ExitStatus>),
    Probe(ProbeMsg),
    Timer,
}

struct Machine {
    cfg: GatewayConfig,
    releases: crate::releases::Layout,
    store: Store,
    log: GatewayLog,
    endpoint: GatewayEndpoint,
    prober: Prober,
    status_tx: watch::Sender<AgentStatus>,
    status: AgentStatus,
    record_tx: mpsc::Sender<Record>,
    probe_tx: mpsc::Sender<ProbeMsg>,
    child: Option<Child>,
    phase: Phase,
    /// Incremented per spawn; probe results of older children are ignored.
    generation: u64,
    probe_inflight: bool,
    backoff: Backoff,
    crashes: CrashWindow,
    shutting_down: bool,
    /// `HERMES_MANAGED_DIR=...`: marks this daemon's gateway processes.
    marker: String,
    /// The agent's cgroup, or why process groups are all there is.
    containment: Arc<cgroup::Containment>,
    /// `--dev`: a missing gateway command is `not_installed`, not a failure.
    dev: bool,
    env_file: Arc<crate::envfile::EnvFile>,
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.process.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Machine {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<AgentRequest>,
        mut probes: mpsc::Receiver<ProbeMsg>,
        cancel: CancellationToken,
    ) {
        self.stop_leftovers().await;
        if self.status.desired == Desired::Running && !cancel.is_cancelled() {
            self.spawn_now("desired_running").await;
        } else {
            self.publish();
        }
        let mut commands_open = true;
        loop {
            if self.shutting_down && self.child.is_none() {
                break;
            }
            let deadline = self.deadline();
            let listen = !self.shutting_down;
            let event = tokio::select! {
                _ = cancel.cancelled(), if listen => Event::Shutdown,
                r = wait_child(&mut self.child) => Event::Exited(r),
                Some(p) = probes.recv() => Event::Probe(p),
                c = commands.recv(), if listen && commands_open => Event::Command(c),
                _ = sleep_until_opt(deadline) => Event::Timer,
            };
            match event {
                Event::Shutdown => self.on_shutdown().await,
                Event::Command(None) => commands_open = false,
                Event::Command(Some(req)) => {
                    self.on_command(req.cmd, req.by).await;
                    let _ = req.reply.send(self.status.clone());
                }
                Event::Exited(r) => self.on_exit(r).await,
                Event::Probe(p) => self.on_probe(p).await,
                Event::Timer => self.on_timer().await,
            }
        }
        tracing::info!("gateway supervisor stopped");
    }

    /// The next time-driven action of the current phase.
    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle => None,
            Phase::Starting {
                deadline,
                next_poll,
            } => Some(if self.probe_inflight {
                *deadline
            } else {
                (*next_poll).min(*deadline)
            }),
            Phase::Running {
                next_probe,
                reset_at,
                ..
            } => {
                let probe = (!self.probe_inflight).then_some(*next_probe);
                match (probe, reset_at) {
                    (Some(p), Some(r)) => Some(p.min(*r)),
                    (p, r) => p.or(*r),
                }
            }
            Phase::Stopping { kill_at, .. } => Some(*kill_at),
            Phase::Waiting { until } => Some(*until),
            Phase::ConfigFailed { next_check, .. } => Some(*next_check),
        }
    }

    // ---- status and records ---------------------------------------------------

    fn publish(&self) {
        self.status_tx.send_replace(self.status.clone());
    }

    /// Change state, log it, record it, publish the snapshot.
    fn transition(&mut self, to: AgentState, reason: &str, extra: TransitionExtra) {
        let from = self.status.state;
        let now = store::now_ms();
        self.status.state = to;
        self.status.since = store::ms_to_rfc3339(now);
        self.status.reason = Some(reason.to_owned());
        if to != AgentState::Running && to != AgentState::Unhealthy {
            self.status.running_since_ms = None;
        }
        tracing::info!(
            from = from.as_str(),
            to = to.as_str(),
            reason,
            pid = extra.pid,
            exit_code = extra.exit_code,
            signal = extra.signal,
            delay_ms = extra.delay.map(|d| d.as_millis() as u64),
            detail = extra.detail.as_deref(),
            "agent state"
        );
        let rec = Record::Transition(Transition {
            at_ms: now,
            from: from.as_str().to_owned(),
            to: to.as_str().to_owned(),
            reason: reason.to_owned(),
            pid: extra.pid,
            exit_code: extra.exit_code,
            signal: extra.signal,
            delay_ms: extra.delay.map(|d| d.as_millis() as u64),
            detail: extra.detail,
        });
        if self.record_tx.try_send(rec).is_err() {
            tracing::warn!("transition record queue full; dropping a record");
        }
        self.publish();
    }

    /// Record the desired state and who decided it (the newest decision
    /// owns it, even when the value does not change), in one transaction.
    async fn set_desired(&mut self, desired: Desired, by: DesiredBy) {
        if self.status.desired == desired && self.status.desired_by == by {
            return;
        }
        self.status.desired = desired;
        self.status.desired_by = by;
        let value = match desired {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        };
        let pairs = vec![
            (DESIRED_KEY, value.to_owned()),
            (DESIRED_BY_KEY, by.as_str().to_owned()),
        ];
        if let Err(e) = self.store.set_states(pairs).await {
            tracing::error!(error = %e, "cannot persist the desired agent state");
        }
        self.publish();
    }

    // ---- commands -------------------------------------------------------------

    async fn on_command(&mut self, cmd: AgentCommand, by: DesiredBy) {
        tracing::info!(command = ?cmd, by = by.as_str(), state = self.status.state.as_str(), "agent command");
        match cmd {
            AgentCommand::Start => {
                self.set_desired(Desired::Running, by).await;
                match &mut self.phase {
                    Phase::Starting { .. } | Phase::Running { .. } => {}
                    Phase::Stopping { then, .. } => {
                        // Stopping for a stop or an unhealthy restart: come
                        // back at once instead.
                        if matches!(*then, After::Idle | After::Retry(_)) {
                            *then = After::Respawn;
                        }
                    }
                    Phase::Idle | Phase::Waiting { .. } | Phase::ConfigFailed { .. } => {
                        // A start while failed or backing off clears the backoff.
                        self.backoff.reset();
                        self.crashes.clear();
                        self.spawn_now("start").await;
                    }
                }
            }
            AgentCommand::Stop => {
                self.set_desired(Desired::Stopped, by).await;
                match &mut self.phase {
                    Phase::Starting { .. } | Phase::Running { .. } => {
                        self.begin_stop(After::Idle, "stop").await;
                    }
                    Phase::Stopping { then, .. } => *then = After::Idle,
                    Phase::Waiting { .. } | Phase::ConfigFailed { .. } => {
                        self.phase = Phase::Idle;
                        self.transition(AgentState::Stopped, "stop", TransitionExtra::default());
                    }
                    Phase::Idle => {
                        if self.status.state != AgentState::Stopped {
                            self.transition(
                                AgentState::Stopped,
                                "stop",
                                TransitionExtra::default(),
                            );
                        }
                    }
                }
            }
            AgentCommand::Restart => {
                self.set_desired(Desired::Running, by).await;
                match &mut self.phase {
                    Phase::Starting { .. } | Phase::Running { .. } => {
                        self.begin_stop(After::Respawn, "restart").await;
                    }
                    Phase::Stopping { then, .. } => *then = After::Respawn,
                    Phase::Idle | Phase::Waiting { .. } | Phase::ConfigFailed { .. } => {
                        self.backoff.reset();
                        self.crashes.clear();
                        self.spawn_now("restart").await;
                    }
                }
            }
        }
    }

    async fn on_shutdown(&mut self) {
        self.shutting_down = true;
        match &mut self.phase {
            Phase::Stopping { then, .. } => *then = After::Exit,
            Phase::Starting { .. } | Phase::Running { .. } => {
                self.begin_stop(After::Exit, "daemon_shutdown").await;
            }
            Phase::Idle | Phase::Waiting { .. } | Phase::ConfigFailed { .. } => {
                self.phase = Phase::Idle;
            }
        }
    }

    // ---- spawning ---------------------------------------------------------------

    /// Write the managed scope and spawn the gateway; `starting`, or
    /// `failed` (retried at the cap) if it cannot be spawned.
    async fn spawn_now(&mut self, why: &'static str) {
        if self.child.is_some() {
            return;
        }
        let counts_as_restart = !matches!(why, "desired_running" | "start");
        let prepared = {
            let cfg = self.cfg.clone();
            let key = self.endpoint.api_key.clone();
            let containment = self.containment.clone();
            let releases = self.releases.clone();
            let dev = self.dev;
            tokio::task::spawn_blocking(move || {
                if dev && releases.current_venv().is_none() && !command_found(&cfg) {
                    return Ok(None);
                }
                let spec = prepare_spawn(&cfg, &key, &releases)?;
                let procs = match containment.cgroup() {
                    Some(cg) => Some(enter_empty_cgroup(cg)?),
                    None => None,
                };
                Ok::<_, String>(Some((spec, procs)))
            })
            .await
        };
        let (spec, cgroup_procs) = match prepared {
            Ok(Ok(Some(prepared))) => prepared,
            Ok(Ok(None)) => return self.not_installed(),
            Ok(Err(message)) => return self.spawn_failed(message),
            Err(e) => return self.spawn_failed(format!("preparing the spawn failed: {e}")),
        };
        // The gateway loads the tenant's `.env` over its environment, and
        // the agent may have written a reserved key into it since the last
        // start (`HERMES_MANAGED_DIR` would redirect the whole managed
        // scope). Checked here, after the previous gateway's cgroup was
        // emptied (above) and before the new one can read the file; a file
        // that cannot be checked is never handed to a gateway.
        if let Err(e) = self.env_file.sanitize().await {
            return self.spawn_failed(format!(
                "not starting the gateway: the Hermes .env cannot be checked for reserved keys: {e}"
            ));
        }
        // Likewise an external secret source in the tenant `config.yaml`
        // that may override (hermes-agent 0.19.0 runs it right before the
        // managed `.env`): it could set `HERMES_MANAGED_DIR` too.
        if let Err(why) = crate::secret_sources::check(&self.cfg.hermes_home).await {
            return self.spawn_failed(format!("not starting the gateway: {why}"));
        }
        // Something else on the port would answer our readiness probe and
        // make a gateway that cannot bind look healthy.
        if port_in_use(self.cfg.port).await {
            let message = format!(
                "port {} on 127.0.0.1 is already in use, held by a process the daemon did not start; the gateway cannot listen",
                self.cfg.port
            );
            tracing::error!(port = self.cfg.port, "gateway port already in use");
            self.status.last_error = Some(message.clone());
            self.status.pid = None;
            let extra = TransitionExtra {
                detail: Some(message),
                ..Default::default()
            };
            return self.retry_later("port_in_use", extra, Instant::now());
        }
        let spawned = match process::spawn(&spec, cgroup_procs.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                let message = if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "gateway command `{}` not found (set gateway.command or gateway.venv)",
                        spec.program.display()
                    )
                } else {
                    format!("cannot start `{}`: {e}", spec.program.display())
                };
                return self.spawn_failed(message);
            }
        };
        let process::Spawned {
            mut child,
            pid,
            start_time,
        } = spawned;
        // The identity goes to the store first thing, so a daemon crash
        // leaves the next daemon a trail (besides the marker).
        let record = ProcessRecord {
            pid,
            start_time,
            pgid: pid,
        };
        self.persist_process(Some(record));
        for (stream, fd) in [
            (
                "stdout",
                child.stdout.take().and_then(|s| s.into_owned_fd().ok()),
            ),
            (
                "stderr",
                child.stderr.take().and_then(|s| s.into_owned_fd().ok()),
            ),
        ] {
            if let Some(fd) = fd {
                if let Err(e) = self.log.pump(fd, stream, pid) {
                    tracing::warn!(error = %e, stream, "cannot read the gateway's output");
                }
            }
        }
        self.generation += 1;
        self.probe_inflight = false;
        self.child = Some(Child {
            process: child,
            pid,
            start_time,
        });
        if counts_as_restart {
            self.status.restarts += 1;
        }
        self.status.pid = Some(pid);
        self.status.pid_start_time = Some(start_time);
        self.status.last_error = None;
        self.status.capabilities = None;
        let now = Instant::now();
        self.phase = Phase::Starting {
            deadline: now + self.cfg.start_timeout,
            next_poll: now,
        };
        self.transition(
            AgentState::Starting,
            why,
            TransitionExtra {
                pid: Some(pid),
                ..Default::default()
            },
        );
    }

    /// `--dev` on a machine without an agent: one warning that says how to
    /// install one, state `not_installed`, and no retry (nothing changes
    /// until one is installed; a start command looks again). Runs are
    /// refused at once meanwhile (`runs`).
    fn not_installed(&mut self) {
        self.phase = Phase::Idle;
        self.status.pid = None;
        if self.status.state == AgentState::NotInstalled {
            return;
        }
        let name = self.cfg.command.first().map_or("hermes", String::as_str);
        let message = format!(
            "no agent installed: the gateway command `{name}` was not found; install hermes-agent with `scripts/dev-agent`, then start the daemon again"
        );
        tracing::warn!("{message}");
        self.status.last_error = Some(message.clone());
        self.transition(
            AgentState::NotInstalled,
            "not_installed",
            TransitionExtra {
                detail: Some(message),
                ..Default::default()
            },
        );
    }

    fn spawn_failed(&mut self, message: String) {
        tracing::error!(error = %message, "gateway spawn failed");
        self.status.last_error = Some(message.clone());
        self.status.pid = None;
        let delay = self.backoff.cap();
        self.phase = Phase::Waiting {
            until: Instant::now() + delay,
        };
        self.transition(
            AgentState::Failed,
            "spawn",
            TransitionExtra {
                delay: Some(delay),
                detail: Some(message),
                ..Default::default()
            },
        );
    }

    /// Queue the gateway's identity for the store (in order with the
    /// transitions, without holding up a respawn on an fsync). A daemon that
    /// dies before it lands still has the managed-dir marker to find it by.
    fn persist_process(&self, record: Option<ProcessRecord>) {
        if self.record_tx.try_send(Record::Process(record)).is_err() {
            tracing::warn!("record queue full; the gateway's identity was not persisted");
        }
    }

    // ---- stopping ---------------------------------------------------------------

    /// Announce a planned stop, SIGTERM the group, arm the SIGKILL deadline.
    async fn begin_stop(&mut self, then: After, cause: &'static str) {
        let Some(child) = &self.child else {
            return;
        };
        let (pid, start_time) = (child.pid, child.start_time);
        let home = self.cfg.hermes_home.clone();
        let marker = tokio::task::spawn_blocking(move || {
            crate::identity::as_agent(|| process::write_planned_stop(&home, pid, start_time))
        })
        .await;
        if !matches!(marker, Ok(Ok(()))) {
            tracing::warn!(pid, "cannot write the planned-stop marker; stopping anyway");
        }
        process::signal_group(pid, libc::SIGTERM);
        self.phase = Phase::Stopping {
            kill_at: Instant::now() + self.cfg.stop_grace,
            killed: false,
            then,
            cause,
        };
        self.transition(
            AgentState::Stopping,
            cause,
            TransitionExtra {
                pid: Some(pid),
                ..Default::default()
            },
        );
    }
}

#[derive(Debug, Default)]
struct TransitionExtra {
    pid: Option<u32>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    delay: Option<Duration>,
    detail: Option<String>,
}

fn last_exit(reason: &str, code: Option<i32>, signal: Option<i32>) -> LastExit {
    LastExit {
        at: store::ms_to_rfc3339(store::now_ms()),
        code,
        signal,
        reason: reason.to_owned(),
    }
}
