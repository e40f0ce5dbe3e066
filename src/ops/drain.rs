//! Drain: the daemon stops taking work so it can be restarted without
//! cutting a run. New runs are refused (`503 draining`) or queued
//! (`queue: true`), cron firings are held, and the runs already at the
//! gateway finish. Built on the one mechanism for "the gateway must go
//! down without cutting a run": the counted new-run gate
//! (`HubLink::hold_gate`, held for the drain's whole life so queued runs
//! wait behind it) and `hub::decision::quiesce_counting` (the wait).
//!
//! A drain lives in memory only: a restarted daemon is not draining.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hub::HubLink;
use crate::runs::Runs;
use crate::store::{ms_to_rfc3339, now_ms};

/// Longest drain deadline a caller may ask for.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Where a drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not draining: runs and cron firings are taken.
    Off,
    /// New work is held; runs at the gateway are still finishing.
    Draining,
    /// New work is held and no run is at the gateway: safe to restart.
    Drained,
    /// The deadline passed with runs still at the gateway; work stays held.
    DeadlinePassed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Inner {
    phase: Phase,
    since_ms: i64,
    deadline_ms: i64,
    /// One per `begin`: a superseded drain's task never writes the phase.
    generation: u64,
}

/// What `GET /agent`, the heartbeat and the control socket show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainView {
    pub state: Phase,
    pub since: Option<String>,
    pub deadline_at: Option<String>,
    /// Runs at the gateway (what a drain waits for).
    pub runs_in_flight: u64,
    /// Runs accepted with `queue: true` (or before the drain) that wait
    /// for its end.
    pub queued_runs: u64,
}

/// The drain of this daemon; cheap to clone.
#[derive(Clone)]
pub struct Drain {
    link: HubLink,
    runs: Arc<Runs>,
    state: Arc<watch::Sender<Inner>>,
    /// The running drain's task, cancelled to end it.
    current: Arc<Mutex<Option<CancellationToken>>>,
}

impl Drain {
    pub fn new(link: HubLink, runs: Arc<Runs>) -> Drain {
        Drain {
            link,
            runs,
            state: Arc::new(watch::Sender::new(Inner {
                phase: Phase::Off,
                since_ms: 0,
                deadline_ms: 0,
                generation: 0,
            })),
            current: Arc::new(Mutex::new(None)),
        }
    }

    pub fn phase(&self) -> Phase {
        self.state.borrow().phase
    }

    pub fn view(&self) -> DrainView {
        let s = *self.state.borrow();
        let on = s.phase != Phase::Off;
        DrainView {
            state: s.phase,
            since: on.then(|| ms_to_rfc3339(s.since_ms)),
            deadline_at: on.then(|| ms_to_rfc3339(s.deadline_ms)),
            runs_in_flight: self.runs.runs_at_gateway() as u64,
            queued_runs: self.runs.queued_runs() as u64,
        }
    }

    /// Start draining with `deadline` (or, when a drain is on, move its
    /// deadline: the wait starts again with the new bound). Returns at once.
    pub fn begin(&self, deadline: Duration) {
        let deadline = deadline.min(MAX_DEADLINE);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let before = *self.state.borrow();
        let since_ms = match before.phase {
            Phase::Off => now_ms(),
            _ => before.since_ms,
        };
        let generation = before.generation + 1;
        if let Some(old) = current.take() {
            old.cancel();
        }
        let deadline_ms = now_ms() + deadline.as_millis() as i64;
        // Refuse first, then raise the gate and count: a run is either
        // refused, or accepted before and counted (or queued at the gate).
        self.runs.set_draining(Some(deadline_ms));
        self.state.send_replace(Inner {
            phase: Phase::Draining,
            since_ms,
            deadline_ms,
            generation,
        });
        let token = CancellationToken::new();
        *current = Some(token.clone());
        drop(current);
        tracing::info!(
            deadline_s = deadline.as_secs(),
            runs_in_flight = self.runs.runs_at_gateway(),
            "draining: new runs and cron firings are held"
        );
        let this = self.clone();
        tokio::spawn(async move { this.run(deadline, generation, token).await });
    }

    /// End the drain: runs and cron firings are taken again (the queued
    /// ones start). Returns whether a drain was on.
    pub fn cancel(&self) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some(token) = current.take() else {
            return false;
        };
        token.cancel();
        self.runs.set_draining(None);
        self.state.send_modify(|s| {
            s.phase = Phase::Off;
            s.generation += 1;
        });
        tracing::info!("drain cancelled: runs and cron firings are taken again");
        true
    }

    /// Wait until the drain is over one way or the other: `Drained`,
    /// `DeadlinePassed` or `Off` (cancelled).
    pub async fn settled(&self) -> Phase {
        let mut rx = self.state.subscribe();
        loop {
            let phase = rx.borrow_and_update().phase;
            if phase != Phase::Draining {
                return phase;
            }
            if rx.changed().await.is_err() {
                return phase;
            }
        }
    }

    async fn run(self, deadline: Duration, generation: u64, token: CancellationToken) {
        // Held for the drain's whole life: queued runs wait behind it.
        let _gate = self.link.hold_gate();
        let runs = self.runs.clone();
        let wait = crate::hub::decision::quiesce_counting(
            &self.link,
            deadline,
            "the daemon is draining",
            move || runs.runs_at_gateway() as u64,
        );
        let held = tokio::select! {
            _ = token.cancelled() => return,
            held = wait => held,
        };
        drop(held);
        let phase = if self.runs.runs_at_gateway() == 0 {
            Phase::Drained
        } else {
            Phase::DeadlinePassed
        };
        // Only if this drain is still the current one.
        let settled = self.state.send_if_modified(|s| {
            let current = s.generation == generation && s.phase == Phase::Draining;
            if current {
                s.phase = phase;
            }
            current
        });
        if settled {
            tracing::info!(state = ?phase, "drain settled");
        }
        token.cancelled().await;
    }
}

impl Drain {
    /// A planned stop (SIGTERM): hold new work and wait for the runs at
    /// the gateway, at most `grace`, before the gateway is stopped.
    pub async fn before_stop(&self, grace: Duration) {
        if self.phase() == Phase::Drained {
            return;
        }
        self.begin(grace);
        if self.settled().await == Phase::DeadlinePassed {
            tracing::warn!(
                grace_s = grace.as_secs(),
                runs = self.runs.runs_at_gateway(),
                "stopping with runs still in flight after gateway.stop_grace"
            );
        }
    }
}
