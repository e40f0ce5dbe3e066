//! Runs: one agent turn each. The daemon is the gateway's only reader of a
//! run's event stream; it numbers every event, logs it to SQLite in
//! batches, and fans it out to any number of subscribers through a bounded
//! broadcast. A subscriber that falls behind is caught up from SQLite, so
//! it never slows the reader or another subscriber.

mod event_ids;
mod frames;
pub mod gateway;
mod record;
mod relay;
mod sequencer;
pub mod sse;
mod subscribe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentHandle, AgentState, AgentStatus};
use crate::store::conversations::{self, AppendMessages, NewMessage, Role};
use crate::store::runs::{self as run_store, NewRun, Run};
use crate::store::{Store, StoreError};
pub use gateway::GatewayClient;
pub use subscribe::EventStream;

/// Platforms a run may come from.
pub const PLATFORMS: &[&str] = &[
    "web", "telegram", "discord", "slack", "whatsapp", "cron", "api",
];

/// Limits of the runs service.
#[derive(Debug, Clone)]
pub struct RunLimits {
    pub max_input_bytes: usize,
    pub subscribers_per_run: usize,
    pub subscribers_total: usize,
    /// Runs waiting for the agent or for a slot at the gateway.
    pub queue_depth: usize,
    pub retention: Duration,
    pub keepalive: Duration,
    /// Bound on waiting for the agent to become ready (wake on run).
    pub wake_timeout: Duration,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            max_input_bytes: 256 * 1024,
            subscribers_per_run: 64,
            subscribers_total: 1024,
            queue_depth: 64,
            retention: Duration::from_secs(7 * 24 * 3600),
            keepalive: Duration::from_secs(15),
            wake_timeout: Duration::from_secs(120),
        }
    }
}

/// Why a run request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error("run `{0}` does not exist")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the tenant is suspended; runs are refused until access is restored")]
    Suspended,
    /// `--dev` without an agent (`AgentState::NotInstalled`).
    #[error("{0}")]
    AgentNotInstalled(String),
    #[error("{message}")]
    Busy { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "the daemon is draining for maintenance; new runs are refused (send `queue: true` to queue one)"
    )]
    Draining { retry_after_s: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `POST /runs` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    pub input: Value,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub conversation_history: Option<Value>,
    /// While the daemon drains: accept the run and start it when the drain
    /// ends, instead of `503 draining`.
    #[serde(default)]
    pub queue: bool,
}

/// One relayed event in memory: the log's own type, so the relay hands
/// the writer and subscribers the same shared text.
pub use crate::store::runs::StoredEvent as LiveEvent;

/// Events relayed together, in seq order with no gap: what one body chunk
/// of the gateway's stream held. One broadcast, one writer-queue send and
/// one subscriber wake-up carry a whole batch.
pub type EventBatch = Arc<[LiveEvent]>;

/// Batches the live broadcast keeps for subscribers that lag (one that
/// falls further behind is caught up from the log): 64 events at token
/// rate, at most 16384 (64 × `sequencer::BATCH_EVENTS`) at full speed.
pub(crate) const LIVE_BATCHES: usize = 64;

pub fn is_terminal_event(name: &str) -> bool {
    matches!(name, "run.completed" | "run.failed" | "run.cancelled")
}

/// A run whose relay is alive.
pub(crate) struct ActiveRun {
    pub(crate) events: broadcast::Sender<EventBatch>,
    /// Highest sequence number committed to SQLite.
    pub(crate) committed: watch::Sender<i64>,
    /// `true` once the run's end (status, output, usage) is recorded: an
    /// event stream ends only then, so a client that reads the run after
    /// its stream never sees it still `running`.
    pub(crate) finished: watch::Sender<bool>,
    /// Past the wait for the agent: talking to the gateway (what a gateway
    /// restart must wait for; runs still waiting at the gate are not).
    pub(crate) at_gateway: std::sync::atomic::AtomicBool,
    pub(crate) subscribers: Arc<Semaphore>,
    /// Cancels a run that has not reached the gateway yet.
    pub(crate) cancel_queued: CancellationToken,
    pub(crate) gateway_run_id: watch::Sender<Option<String>>,
    pub(crate) chat_fallback: std::sync::atomic::AtomicBool,
    /// A stop was asked for at the gateway: events after it are the run
    /// unwinding (the gateway denies a pending approval on a stop), not an
    /// approval that expired.
    pub(crate) stop_requested: std::sync::atomic::AtomicBool,
}

/// The runs service.
pub struct Runs {
    pub(crate) store: Store,
    pub(crate) agent: AgentHandle,
    pub(crate) gateway: GatewayClient,
    pub(crate) limits: RunLimits,
    pub(crate) active: Mutex<HashMap<String, Arc<ActiveRun>>>,
    pub(crate) subscribers_total: Arc<Semaphore>,
    pub(crate) queued: Arc<Semaphore>,
    pub(crate) suspended: watch::Receiver<bool>,
    /// `true` while the hub's stop is being committed (`hub::decision`).
    pub(crate) hub_stopping: watch::Receiver<bool>,
    /// `Some(deadline in ms)` while the daemon drains (`ops::drain`): new
    /// runs are refused unless they ask to be queued.
    pub(crate) draining: watch::Sender<Option<i64>>,
    pub(crate) shutdown: CancellationToken,
}

/// Why a run cannot reach an agent that is not installed: the
/// supervisor's own words (they say how to install one).
fn not_installed_message(agent: &AgentStatus) -> String {
    agent
        .last_error
        .clone()
        .unwrap_or_else(|| "no agent is installed".into())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", crate::auth::random_token(16))
}

/// The text of a run's input, for the conversation record.
/// Text the conversation record takes as a user message: not blank, no NUL.
fn prompt_text(s: &str) -> bool {
    !s.trim().is_empty() && !s.contains('\0')
}

/// A message list as the document has it: `{role, content}` objects (both
/// strings), at least one from the user, and no user message blank (so the
/// last one, the run's prompt, is not).
fn valid_messages(items: &[Value]) -> bool {
    let mut users = 0;
    for item in items {
        let (Some(role), Some(content)) = (item["role"].as_str(), item["content"].as_str()) else {
            return false;
        };
        if role == "user" {
            if !prompt_text(content) {
                return false;
            }
            users += 1;
        }
    }
    users > 0
}

fn input_text(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

impl Runs {
    pub fn new(
        store: Store,
        agent: AgentHandle,
        gateway: GatewayClient,
        limits: RunLimits,
        suspended: watch::Receiver<bool>,
        hub_stopping: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> Arc<Runs> {
        Arc::new(Runs {
            subscribers_total: Arc::new(Semaphore::new(limits.subscribers_total)),
            queued: Arc::new(Semaphore::new(limits.queue_depth)),
            store,
            agent,
            gateway,
            limits,
            active: Mutex::new(HashMap::new()),
            suspended,
            hub_stopping,
            draining: watch::Sender::new(None),
            shutdown,
        })
    }

    /// Close runs a previous process left unfinished: the gateway lost
    /// them with its memory, so they end `failed` / `agent_restarted`.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let leftovers = self.store.read(run_store::unfinished).await?;
        let n = leftovers.len();
        for (id, last_seq) in leftovers {
            record::write_terminal_failure(
                &self.store,
                &id,
                last_seq,
                "agent_restarted",
                "the daemon restarted while the run was in flight",
            )
            .await?;
        }
        if n > 0 {
            tracing::warn!(
                runs = n,
                "closed runs left unfinished by a previous process"
            );
        }
        Ok(n)
    }

    /// Delete finished runs older than the retention (periodic).
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let before = crate::store::now_ms() - self.limits.retention.as_millis() as i64;
        self.store.write(move |c| run_store::prune(c, before)).await
    }

    /// Start a run: record it `queued`, record the user's message, and hand
    /// it to a relay task. Returns at once.
    pub async fn start(self: &Arc<Self>, req: StartRun) -> Result<Run, RunError> {
        if *self.suspended.borrow() {
            return Err(RunError::Suspended);
        }
        // `--dev` without an agent: nothing will relay the run, so say so
        // now instead of leaving it queued until the wake timeout.
        let agent = self.agent.status();
        if agent.state == AgentState::NotInstalled {
            return Err(RunError::AgentNotInstalled(not_installed_message(&agent)));
        }
        let platform = req.platform.clone().unwrap_or_else(|| "api".into());
        if !PLATFORMS.contains(&platform.as_str()) {
            return Err(RunError::Invalid(format!(
                "`platform` must be one of {}",
                PLATFORMS.join(", ")
            )));
        }
        let text = input_text(&req.input);
        let valid = match &req.input {
            Value::String(s) => prompt_text(s),
            Value::Array(items) => valid_messages(items),
            _ => false,
        };
        if !valid {
            return Err(RunError::Invalid(
                "`input` must be a non-blank string or a list of {role, content} with a user message, no user message blank or holding a NUL"
                    .into(),
            ));
        }
        let size = req.input.to_string().len()
            + req.instructions.as_ref().map_or(0, String::len)
            + req
                .conversation_history
                .as_ref()
                .map_or(0, |h| h.to_string().len());
        if size > self.limits.max_input_bytes {
            return Err(RunError::Invalid(format!(
                "the run's input is {size} bytes; at most {} are accepted",
                self.limits.max_input_bytes
            )));
        }
        if let Some(h) = &req.conversation_history {
            if !h
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_object))
            {
                return Err(RunError::Invalid(
                    "`conversation_history` must be a list of {role, content}".into(),
                ));
            }
        }
        let session_id = match &req.session_id {
            Some(s) => {
                conversations::validate_session_id(s)?;
                s.clone()
            }
            None => new_id("sess"),
        };
        if !req.queue {
            self.refuse_if_draining()?;
        }
        let permit = self
            .queued
            .clone()
            .try_acquire_owned()
            .map_err(|_| RunError::Busy {
                message: "too many runs are waiting for the agent; retry later".into(),
                retry_after_s: 5,
            })?;

        let run_id = new_id("run");
        let new = NewRun {
            id: run_id.clone(),
            session_id: session_id.clone(),
            platform: platform.clone(),
            input: req.input.clone(),
            instructions: req.instructions.clone(),
        };
        let record = AppendMessages {
            platform: Some(platform),
            title: None,
            messages: vec![NewMessage {
                role: Role::User,
                content: text,
                tool_calls: None,
                tokens_used: None,
                created_at: None,
                external_id: Some(format!("{run_id}:input")),
            }],
        };
        let run = self
            .store
            .write(move |c| {
                let tx = c.transaction()?;
                let run = run_store::insert(&tx, &new)?;
                conversations::append_in(&tx, &new.session_id, &record)?;
                tx.commit()?;
                Ok(run)
            })
            .await?;

        let (events, _) = broadcast::channel(LIVE_BATCHES);
        let active = Arc::new(ActiveRun {
            events,
            committed: watch::channel(0).0,
            finished: watch::channel(false).0,
            at_gateway: std::sync::atomic::AtomicBool::new(false),
            subscribers: Arc::new(Semaphore::new(self.limits.subscribers_per_run)),
            cancel_queued: self.shutdown.child_token(),
            gateway_run_id: watch::channel(None).0,
            chat_fallback: std::sync::atomic::AtomicBool::new(false),
            stop_requested: std::sync::atomic::AtomicBool::new(false),
        });
        if let Ok(mut map) = self.active.lock() {
            map.insert(run_id.clone(), active.clone());
        }
        let this = self.clone();
        tokio::spawn(async move {
            relay::drive(this, run_id, active, req, session_id, permit).await;
        });
        Ok(run)
    }

    pub async fn get(&self, id: &str) -> Result<Run, RunError> {
        let id = id.to_owned();
        self.store
            .read(move |c| run_store::get(c, &id))
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => RunError::NotFound(id_of(&e)),
                other => RunError::Store(other),
            })
    }

    pub(crate) fn active(&self, id: &str) -> Option<Arc<ActiveRun>> {
        self.active.lock().ok().and_then(|m| m.get(id).cloned())
    }

    /// Number of runs in flight (for the heartbeat).
    pub fn open_runs(&self) -> usize {
        self.active.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Runs accepted but not at the gateway yet (waiting for the agent or
    /// for the end of a drain).
    pub fn queued_runs(&self) -> usize {
        self.open_runs().saturating_sub(self.runs_at_gateway())
    }

    /// `Err(Draining)` while the daemon drains, with a `Retry-After` of the
    /// time left to the drain's deadline (5 s to 5 min).
    pub(crate) fn refuse_if_draining(&self) -> Result<(), RunError> {
        match *self.draining.borrow() {
            None => Ok(()),
            Some(deadline_ms) => {
                let left_s = (deadline_ms - crate::store::now_ms()).max(0) / 1000;
                Err(RunError::Draining {
                    retry_after_s: (left_s as u64).clamp(5, 300),
                })
            }
        }
    }

    /// Refuse new runs (`Some(deadline ms)`) or take them again (`None`).
    pub(crate) fn set_draining(&self, deadline_ms: Option<i64>) {
        self.draining.send_replace(deadline_ms);
    }

    /// `Some(deadline ms)` while draining.
    pub fn draining(&self) -> watch::Receiver<Option<i64>> {
        self.draining.subscribe()
    }

    /// Runs in flight at the gateway (not those waiting for the agent).
    pub fn runs_at_gateway(&self) -> usize {
        self.active
            .lock()
            .map(|m| {
                m.values()
                    .filter(|a| a.at_gateway.load(std::sync::atomic::Ordering::SeqCst))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Stop a run: a queued one is cancelled here; one at the gateway is
    /// asked to stop there (its `run.cancelled` then ends it).
    pub async fn stop(&self, id: &str) -> Result<Run, RunError> {
        let run = self.get(id).await?;
        if run_store::is_terminal(&run.status) {
            return Err(RunError::Conflict(format!(
                "run `{id}` has already ended ({})",
                run.status
            )));
        }
        let Some(active) = self.active(id) else {
            return Err(RunError::Conflict(format!("run `{id}` is not in flight")));
        };
        let gid = active.gateway_run_id.borrow().clone();
        match gid {
            None => active.cancel_queued.cancel(),
            Some(_)
                if active
                    .chat_fallback
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                active.cancel_queued.cancel()
            }
            Some(gid) => {
                active
                    .stop_requested
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.gateway.stop(&gid).await.map_err(map_gateway)?;
                let rid = id.to_owned();
                self.store
                    .write(move |c| {
                        run_store::update(
                            c,
                            &rid,
                            &run_store::RunUpdate {
                                status: Some("stopping"),
                                ..Default::default()
                            },
                        )
                    })
                    .await?;
            }
        }
        self.get(id).await
    }

    /// Answer a pending approval.
    pub async fn approve(&self, id: &str, choice: &str) -> Result<Run, RunError> {
        if !["once", "session", "always", "deny"].contains(&choice) {
            return Err(RunError::Invalid(
                "`choice` must be one of once, session, always, deny".into(),
            ));
        }
        let run = self.get(id).await?;
        let gid = self
            .active(id)
            .and_then(|a| a.gateway_run_id.borrow().clone())
            .or(run.gateway_run_id.clone());
        match (run.status.as_str(), gid) {
            ("waiting_for_approval", Some(gid)) => {
                self.gateway
                    .approval(&gid, choice)
                    .await
                    .map_err(map_gateway)?;
                self.get(id).await
            }
            _ => Err(RunError::Conflict(format!(
                "run `{id}` has no pending approval"
            ))),
        }
    }

    /// Subscribe to a run's events after `after_seq`.
    pub async fn subscribe(
        self: &Arc<Self>,
        id: &str,
        after_seq: i64,
    ) -> Result<EventStream, RunError> {
        subscribe::open(self.clone(), id, after_seq).await
    }
}

fn id_of(e: &StoreError) -> String {
    e.to_string()
        .split('`')
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

fn map_gateway(e: gateway::GatewayError) -> RunError {
    match e {
        gateway::GatewayError::Rejected {
            status: 409,
            message,
            ..
        } => RunError::Conflict(message),
        gateway::GatewayError::Rejected { status: 404, .. } => {
            RunError::Conflict("the agent no longer knows this run".into())
        }
        gateway::GatewayError::Rejected { message, .. } => RunError::Invalid(message),
        gateway::GatewayError::RateLimited { retry_after } => RunError::Busy {
            message: "the agent is at its run limit".into(),
            retry_after_s: retry_after.as_secs().max(1),
        },
        gateway::GatewayError::Unavailable(m) | gateway::GatewayError::Other(m) => {
            RunError::Unavailable(format!("the agent did not answer: {m}"))
        }
        gateway::GatewayError::NotOurs(m) => RunError::Unavailable(m),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn message_lists_as_the_document_has_them() {
        let ok = |v: serde_json::Value| super::valid_messages(v.as_array().expect("array"));
        assert!(ok(json!([{"role": "user", "content": "hi"}])));
        assert!(ok(
            json!([{"role": "system", "content": ""}, {"role": "user", "content": "hi"}])
        ));
        assert!(!ok(json!([])));
        assert!(
            !ok(json!([{"role": "assistant", "content": "hi"}])),
            "no user message"
        );
        assert!(
            !ok(json!([{"role": "user", "content": " "}])),
            "blank prompt"
        );
        assert!(
            !ok(json!([{"role": "user", "content": ""}, {"role": "user", "content": "hi"}])),
            "a blank user message anywhere"
        );
        assert!(
            !ok(json!([1, {"role": "user", "content": "hi"}])),
            "not an object"
        );
        assert!(
            !ok(json!([{"role": "user", "content": 5}])),
            "content not text"
        );
        assert!(!ok(json!([{"role": "user", "content": "a\u{0}"}])), "NUL");
        assert!(!super::prompt_text("a\u{0}b"));
    }
}
