//! Who decides whether the agent runs: the one rule, in one place.
//!
//! - The hub's desired agent state is an **edge**: it is applied when the
//!   hub changes it — a value different from the last hub decision
//!   recorded, or the same value with a greater `desired.version` (any
//!   version is greater than none) — and never re-applied because a reply
//!   repeats it.
//! - A local decision (a run or a cron firing that wakes the agent, an
//!   operator's `POST /agent/*`) is newer than the hub's last decision and
//!   stands until the hub says something new. The beat reports
//!   `agent.desired_by`, so the hub sees the wake-up and can decide again.
//! - A hub stop waits for the runs in flight (`hub.stop_wait_for_runs`),
//!   and is dropped if the desired state changes meanwhile (an operator
//!   command); a hub start is applied at once.
//! - Suspension is not a decision but a state: while suspended every beat
//!   stops the agent at once (runs in flight end). Back to active, the
//!   hub's latest agent decision is applied (the reply's, else the
//!   recorded one, else `running`).
//! - The last hub decision is persisted (`daemon_state` key
//!   `hub.desired_agent`) once applied, so a daemon restart neither
//!   re-stops an agent woken since, nor forgets a newer hub decision (one
//!   not yet applied when the daemon died is new again after it).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Access, HubLink};
use crate::agent::{AgentCommand, AgentHandle, Desired, DesiredBy};
use crate::store::Store;

/// `daemon_state` key of the last hub decision applied (JSON).
pub const DECISION_KEY: &str = "hub.desired_agent";

/// How often a pending hub stop looks at the open-run count (the count
/// lives in the runs service's map, which has no change signal).
const RUNS_POLL: Duration = Duration::from_millis(250);
/// Bound on the supervisor accepting a command.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// One agent decision of the hub: the value and its version, if the hub
/// sends one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubDecision {
    pub agent: Desired,
    #[serde(default)]
    pub version: Option<u64>,
}

impl HubDecision {
    /// The edge rule: new when the value differs from the last decision,
    /// or when its version is greater (no version is lower than any).
    pub fn supersedes(&self, last: Option<&HubDecision>) -> bool {
        last.is_none_or(|l| self.agent != l.agent || self.version > l.version)
    }
}

/// What a reply asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing new: the agent stays as the newest decision left it.
    Keep,
    /// Suspended: stop now, runs or not.
    Suspend,
    /// Apply this hub decision (a stop waits for the runs in flight).
    Apply(Desired, &'static str),
}

/// The rule as a pure function: what to do with a reply, and the hub
/// decision to remember from now on.
pub fn judge(
    access: Access,
    resumed: bool,
    reply: Option<HubDecision>,
    last: Option<HubDecision>,
) -> (Verdict, Option<HubDecision>) {
    let new = reply.is_some_and(|r| r.supersedes(last.as_ref()));
    let remember = match (reply, last) {
        (None, l) => l,
        (Some(r), _) if new => Some(r),
        // The same value again: keep the highest version seen, so the
        // hub's next greater version is recognised as new.
        (Some(r), l) => Some(HubDecision {
            agent: r.agent,
            version: r.version.max(l.and_then(|l| l.version)),
        }),
    };
    let verdict = match access {
        Access::Suspended => Verdict::Suspend,
        Access::Active if resumed => Verdict::Apply(
            remember.map_or(Desired::Running, |d| d.agent),
            "access restored",
        ),
        Access::Active if new => Verdict::Apply(
            remember.map_or(Desired::Running, |d| d.agent),
            "hub desired state",
        ),
        Access::Active => Verdict::Keep,
    };
    (verdict, remember)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Suspend,
    Decision,
}

/// Applies the hub's replies to the agent under [`judge`]. Owned by the
/// heartbeat task; never waits on the supervisor (commands go from a
/// spawned task, one at a time).
pub struct Decisions {
    agent: AgentHandle,
    link: HubLink,
    store: Store,
    stop_wait: Duration,
    last: Option<HubDecision>,
    loaded: bool,
    task: Option<(Pending, JoinHandle<()>)>,
}

impl Decisions {
    pub fn new(agent: AgentHandle, link: HubLink, store: Store, stop_wait: Duration) -> Decisions {
        Decisions {
            agent,
            link,
            store,
            stop_wait,
            last: None,
            loaded: false,
            task: None,
        }
    }

    /// Apply one well-formed reply's desired state (after its access has
    /// been applied to the link). Returns the state asked of the
    /// supervisor, if a command goes out.
    pub async fn apply(&mut self, resumed: bool, reply: Option<HubDecision>) -> Option<Desired> {
        self.load().await;
        let (verdict, remember) = judge(self.link.access(), resumed, reply, self.last);
        let changed = remember != self.last;
        self.last = remember;
        match verdict {
            Verdict::Keep | Verdict::Suspend => {
                if changed {
                    // Seen but nothing to apply now (same value, or
                    // suspended): recorded for the next comparison.
                    persist(&self.store, remember).await;
                }
                (verdict == Verdict::Suspend && self.suspend()).then_some(Desired::Stopped)
            }
            Verdict::Apply(want, why) => {
                self.decide(want, why, remember);
                Some(want)
            }
        }
    }

    /// Stop the agent for a suspension unless it is stopped already or a
    /// suspension stop is on its way; a pending hub decision is dropped.
    /// Returns `true` if a command was sent.
    pub fn suspend(&mut self) -> bool {
        match &self.task {
            Some((Pending::Suspend, t)) if !t.is_finished() => return false,
            Some((Pending::Decision, t)) if !t.is_finished() => t.abort(),
            _ => {}
        }
        self.task = None;
        if self.agent.status().desired == Desired::Stopped {
            return false;
        }
        tracing::info!(
            command = ?AgentCommand::Stop,
            reason = "suspended",
            "asking the supervisor to change the agent"
        );
        let agent = self.agent.clone();
        let task = tokio::spawn(async move {
            send(&agent, AgentCommand::Stop).await;
        });
        self.task = Some((Pending::Suspend, task));
        true
    }

    /// Carry out a new hub decision: supersedes a pending one.
    fn decide(&mut self, want: Desired, why: &'static str, remember: Option<HubDecision>) {
        if let Some((_, t)) = self.task.take() {
            t.abort();
        }
        let agent = self.agent.clone();
        let link = self.link.clone();
        let store = self.store.clone();
        let stop_wait = self.stop_wait;
        // Taken now, not when the task first runs: a decision made between
        // the two (an operator's start) must count as newer than this one.
        let before = agent.status();
        let task = tokio::spawn(async move {
            // Held from the last look at the open runs until the Stop is
            // accepted (cleared on every exit, an abort included).
            let _committing = if want == Desired::Stopped {
                Some(wait_for_runs(&link, stop_wait).await)
            } else {
                None
            };
            let now = agent.status();
            let changed = (now.desired, now.desired_by) != (before.desired, before.desired_by);
            if changed && now.desired_by != DesiredBy::Hub {
                // Someone else decided while the runs finished: the newer
                // decision stands; the hub sees it in the next beat.
                tracing::info!(
                    desired = ?now.desired,
                    desired_by = now.desired_by.as_str(),
                    "a newer decision came while the hub's stop waited; the stop is dropped"
                );
                persist(&store, remember).await;
                return;
            }
            let cmd = match want {
                Desired::Running => AgentCommand::Start,
                Desired::Stopped => AgentCommand::Stop,
            };
            tracing::info!(command = ?cmd, reason = why, "asking the supervisor to change the agent");
            if send(&agent, cmd).await {
                persist(&store, remember).await;
            }
        });
        self.task = Some((Pending::Decision, task));
    }

    async fn load(&mut self) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        match self.store.get_state(DECISION_KEY).await {
            Ok(Some(v)) if !v.is_empty() => match serde_json::from_str(&v) {
                Ok(d) => self.last = Some(d),
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable hub decision record"),
            },
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the last hub decision"),
        }
    }
}

/// A hold on the new-run gate (`HubLink::hold_gate`), released on drop.
pub(crate) type Committing = super::GateHold;

/// Raise the new-run gate (runs wait for the agent) until the returned
/// value is dropped.
pub(crate) fn hold_gate(link: &HubLink) -> Committing {
    link.hold_gate()
}

/// Wait until no run is in flight, at most `bound` (the stop goes ahead
/// after it), and hold the gate that makes new runs wait for the stop.
/// Runs that start meanwhile are waited for too: the agent is running, so
/// they did not wake it. The gate is raised before the last count, so a
/// run is either counted (and waited for) or sees the gate (and wakes the
/// agent after the stop): none reaches a gateway that is being stopped.
async fn wait_for_runs(link: &HubLink, bound: Duration) -> Committing {
    quiesce(link, bound, "the hub decided to stop the agent").await
}

/// `wait_for_runs` for any reason the gateway must go down (`why` is for
/// the log): hold the new-run gate, wait for the runs in flight (at most
/// `bound`), and return the gate, dropped once the gateway may serve again.
pub(crate) async fn quiesce(link: &HubLink, bound: Duration, why: &str) -> Committing {
    quiesce_counting(link, bound, why, || link.open_runs()).await
}

/// `quiesce` with another count of the runs to wait for: a drain holds
/// the gate itself for its whole life, so the runs queued behind it are
/// not in flight and only those past the gate (`Runs::runs_at_gateway`)
/// are waited for.
pub(crate) async fn quiesce_counting(
    link: &HubLink,
    bound: Duration,
    why: &str,
    in_flight: impl Fn() -> u64,
) -> Committing {
    let deadline = Instant::now() + bound;
    let mut logged = false;
    loop {
        let gate = link.hold_gate();
        let open = in_flight();
        if open == 0 {
            if logged {
                tracing::info!(why, "the runs in flight have ended; going ahead");
            }
            return gate;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                why,
                open_runs = open,
                waited_s = bound.as_secs(),
                "runs still in flight after the wait bound; going ahead anyway"
            );
            return gate;
        }
        drop(gate);
        if !logged {
            logged = true;
            tracing::info!(
                why,
                open_runs = open,
                wait_s = bound.as_secs(),
                "waiting for the runs in flight before the gateway goes down"
            );
        }
        tokio::time::sleep(RUNS_POLL).await;
    }
}

/// Send `cmd` on the hub's behalf; `true` once the supervisor accepted it.
async fn send(agent: &AgentHandle, cmd: AgentCommand) -> bool {
    match tokio::time::timeout(ACCEPT_TIMEOUT, agent.send(cmd, DesiredBy::Hub)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "agent command not delivered");
            false
        }
        Err(_) => {
            tracing::warn!("the supervisor did not accept the command within 60 s");
            false
        }
    }
}

async fn persist(store: &Store, decision: Option<HubDecision>) {
    let value = decision
        .and_then(|d| serde_json::to_string(&d).ok())
        .unwrap_or_default();
    if let Err(e) = store.set_state(DECISION_KEY, value).await {
        tracing::error!(error = %e, "cannot persist the hub's agent decision");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(agent: Desired, version: Option<u64>) -> Option<HubDecision> {
        Some(HubDecision { agent, version })
    }

    const STOP: Desired = Desired::Stopped;
    const RUN: Desired = Desired::Running;

    #[test]
    fn a_repeated_decision_is_not_applied_again() {
        let (v, last) = judge(Access::Active, false, d(STOP, None), None);
        assert_eq!(v, Verdict::Apply(STOP, "hub desired state"));
        let (v, again) = judge(Access::Active, false, d(STOP, None), last);
        assert_eq!(v, Verdict::Keep);
        assert_eq!(again, last);
        // A reply without a desired agent state keeps the record.
        assert_eq!(
            judge(Access::Active, false, None, last),
            (Verdict::Keep, last)
        );
    }

    #[test]
    fn a_changed_value_or_a_greater_version_is_new() {
        let (v, last) = judge(Access::Active, false, d(RUN, None), d(STOP, None));
        assert_eq!(v, Verdict::Apply(RUN, "hub desired state"));
        assert_eq!(last, d(RUN, None));
        let (v, _) = judge(Access::Active, false, d(STOP, Some(4)), d(STOP, Some(3)));
        assert_eq!(v, Verdict::Apply(STOP, "hub desired state"));
        let (v, last) = judge(Access::Active, false, d(STOP, Some(3)), d(STOP, Some(3)));
        assert_eq!(v, Verdict::Keep);
        assert_eq!(last, d(STOP, Some(3)));
        // An older version with the same value changes nothing, and the
        // highest version stays the reference.
        let (v, last) = judge(Access::Active, false, d(STOP, Some(2)), d(STOP, Some(3)));
        assert_eq!((v, last), (Verdict::Keep, d(STOP, Some(3))));
        // A first version is greater than none; a hub that stops sending
        // versions repeats its decision.
        let (v, last) = judge(Access::Active, false, d(STOP, Some(0)), d(STOP, None));
        assert_eq!(
            (v, last),
            (Verdict::Apply(STOP, "hub desired state"), d(STOP, Some(0)))
        );
        let (v, last) = judge(Access::Active, false, d(STOP, None), last);
        assert_eq!((v, last), (Verdict::Keep, d(STOP, Some(0))));
    }

    #[test]
    fn suspension_stops_and_records_and_resumption_applies_the_latest_decision() {
        let (v, last) = judge(Access::Suspended, false, d(RUN, Some(5)), d(STOP, Some(4)));
        assert_eq!((v, last), (Verdict::Suspend, d(RUN, Some(5))));
        let (v, _) = judge(Access::Suspended, false, None, last);
        assert_eq!(v, Verdict::Suspend);
        // Back to active: the recorded decision even without a new one.
        let (v, _) = judge(Access::Active, true, None, last);
        assert_eq!(v, Verdict::Apply(RUN, "access restored"));
        let (v, _) = judge(Access::Active, true, None, d(STOP, None));
        assert_eq!(v, Verdict::Apply(STOP, "access restored"));
        let (v, _) = judge(Access::Active, true, None, None);
        assert_eq!(v, Verdict::Apply(RUN, "access restored"));
    }

    #[test]
    fn the_record_round_trips_and_old_records_read() {
        let json = serde_json::to_string(&HubDecision {
            agent: STOP,
            version: Some(9),
        })
        .expect("json");
        assert_eq!(json, r#"{"agent":"stopped","version":9}"#);
        let old: HubDecision = serde_json::from_str(r#"{"agent":"running"}"#).expect("read");
        assert_eq!(
            old,
            HubDecision {
                agent: RUN,
                version: None
            }
        );
    }

    // ---- carrying decisions out, against a stand-in supervisor ----------------

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::mpsc;

    use crate::agent::{AgentStatus, GatewayEndpoint, channel};

    struct Bench {
        decisions: Decisions,
        open: Arc<AtomicU64>,
        /// Commands the stand-in supervisor accepted, in order.
        seen: mpsc::UnboundedReceiver<(String, DesiredBy)>,
        store: Store,
        _dir: tempfile::TempDir,
    }

    /// A `Decisions` whose supervisor applies each command to the status
    /// (desired and who set it) and reports it; `open` is the open-run count.
    fn bench(desired: Desired, by: DesiredBy, stop_wait: Duration) -> Bench {
        let dir = tempfile::tempdir().expect("tmp");
        let store =
            Store::open_blocking(&dir.path().join("db"), &Default::default()).expect("open store");
        let endpoint = GatewayEndpoint {
            base_url: "http://127.0.0.1:9".into(),
            api_key: "unused-in-this-test-0123456789".into(),
        };
        let initial = AgentStatus {
            desired_by: by,
            ..AgentStatus::initial(desired)
        };
        let (handle, mut ch) = channel(initial, endpoint);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(req) = ch.commands.recv().await {
                ch.status.send_modify(|s| {
                    s.desired = match req.cmd {
                        AgentCommand::Stop => Desired::Stopped,
                        AgentCommand::Start | AgentCommand::Restart => Desired::Running,
                    };
                    s.desired_by = req.by;
                });
                let _ = seen_tx.send((format!("{:?}", req.cmd), req.by));
                let _ = req.reply.send(ch.status.borrow().clone());
            }
        });
        let link = HubLink::new(Access::Active);
        let open = Arc::new(AtomicU64::new(0));
        let count = open.clone();
        link.set_open_runs_source(move || count.load(Ordering::Relaxed));
        Bench {
            decisions: Decisions::new(handle, link, store.clone(), stop_wait),
            open,
            seen,
            store,
            _dir: dir,
        }
    }

    impl Bench {
        /// Wait for the pending decision's task to end; the gate for new
        /// runs is always down then.
        async fn settle(&mut self) {
            if let Some((_, t)) = self.decisions.task.take() {
                t.await.expect("decision task");
            }
            assert!(!*self.decisions.link.hub_stopping().borrow());
        }

        async fn recorded(&self) -> Option<HubDecision> {
            let v = self.store.get_state(DECISION_KEY).await.expect("read");
            v.and_then(|v| serde_json::from_str(&v).ok())
        }
    }

    #[tokio::test]
    async fn a_hub_stop_waits_for_the_open_runs_then_is_recorded() {
        let mut b = bench(RUN, DesiredBy::Run, Duration::from_secs(600));
        b.open.store(1, Ordering::Relaxed);
        let stop = d(STOP, Some(3));
        assert_eq!(b.decisions.apply(false, stop).await, Some(STOP));
        // An absence needs a window: a few polls of the open-run count.
        tokio::time::sleep(RUNS_POLL * 3).await;
        assert!(
            b.decisions
                .task
                .as_ref()
                .is_some_and(|(_, t)| !t.is_finished())
        );
        assert!(
            b.seen.try_recv().is_err(),
            "nothing sent while a run is open"
        );
        assert_eq!(
            b.recorded().await,
            None,
            "not recorded before it is applied"
        );
        b.open.store(0, Ordering::Relaxed);
        b.settle().await;
        assert_eq!(b.seen.recv().await, Some(("Stop".into(), DesiredBy::Hub)));
        assert_eq!(b.recorded().await, stop);
        // The same reply again: nothing more.
        assert_eq!(b.decisions.apply(false, stop).await, None);
        assert!(b.decisions.task.is_none());
    }

    #[tokio::test]
    async fn a_pending_hub_stop_gives_way_to_a_newer_operator_decision() {
        let mut b = bench(RUN, DesiredBy::Run, Duration::from_secs(600));
        b.open.store(1, Ordering::Relaxed);
        b.decisions.apply(false, d(STOP, None)).await;
        let agent = b.decisions.agent.clone();
        agent
            .send(AgentCommand::Start, DesiredBy::Operator)
            .await
            .expect("start");
        assert_eq!(
            b.seen.recv().await,
            Some(("Start".into(), DesiredBy::Operator))
        );
        b.open.store(0, Ordering::Relaxed);
        b.settle().await;
        assert!(b.seen.try_recv().is_err(), "the hub's stop was dropped");
        // Seen, so the repeated reply is not new.
        assert_eq!(b.recorded().await, d(STOP, None));
    }

    #[tokio::test]
    async fn a_hub_stop_goes_ahead_after_the_bound() {
        let mut b = bench(RUN, DesiredBy::Run, Duration::from_millis(300));
        b.open.store(1, Ordering::Relaxed);
        b.decisions.apply(false, d(STOP, None)).await;
        b.settle().await;
        assert_eq!(b.seen.recv().await, Some(("Stop".into(), DesiredBy::Hub)));
    }

    #[tokio::test]
    async fn a_suspension_drops_a_pending_stop_and_stops_at_once() {
        let mut b = bench(RUN, DesiredBy::Run, Duration::from_secs(600));
        b.open.store(1, Ordering::Relaxed);
        b.decisions.apply(false, d(STOP, None)).await;
        let before = b.decisions.link.clone();
        b.decisions.link = HubLink::new(Access::Suspended);
        assert_eq!(b.decisions.apply(false, None).await, Some(STOP));
        b.settle().await;
        assert_eq!(b.seen.recv().await, Some(("Stop".into(), DesiredBy::Hub)));
        assert!(
            !*before.hub_stopping().borrow(),
            "the dropped stop let go of the gate"
        );
        // Already stopped: the next beat sends nothing.
        assert_eq!(b.decisions.apply(false, None).await, None);
    }
}
