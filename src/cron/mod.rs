//! Agent cron: jobs stored in SQLite (the source of truth), fired by one
//! scheduler task that keeps an in-memory queue of `(next_run_at, job)` in
//! step with every change. A firing is a run (platform `cron`); a job never
//! overlaps itself; firings missed while the daemon was down are handled by
//! the grace rule at start; outputs for hub-owned targets are delivered by
//! [`delivery`].

pub mod delivery;
mod firing;
pub mod import;
mod operations;
pub mod schedule;
pub mod skills;
pub mod spec;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::CronConfig;
use crate::hub::client::HubClient;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::runs::{RunError, Runs, StartRun};
use crate::store::cron::{self as db, HistoryRow, JobRow};
use crate::store::{Store, StoreError, ms_to_rfc3339};
pub use schedule::{Schedule, ScheduleError};

/// The time source; tests of schedule arithmetic pass explicit times, and
/// the daemon uses [`SystemClock`].
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Why a cron request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CronError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("cannot start the run: {0}")]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub schedule: String,
    pub timezone: String,
    pub prompt: String,
    pub enabled: bool,
    pub paused: bool,
    /// `scheduled` or `completed` (a one-shot that fired, or `repeat.times` reached).
    pub state: String,
    pub skills: Option<Vec<String>>,
    pub deliver: Option<String>,
    pub repeat: Option<Repeat>,
    pub created_at: String,
    pub updated_at: String,
    pub last_run_at: Option<String>,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    pub next_run_at: Option<String>,
    /// The run of a firing in flight.
    pub running_run_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Repeat {
    pub times: i64,
    pub completed: i64,
}

/// One line of a job's history.
#[derive(Debug, Clone, Serialize)]
pub struct Firing {
    pub id: i64,
    pub job_id: String,
    /// `schedule`, `manual`, `catch_up` or `missed`.
    pub trigger: String,
    pub scheduled_at: Option<String>,
    pub fired_at: String,
    pub run_id: Option<String>,
    /// `running`, `completed`, `failed`, `cancelled`, `skipped` or `missed`.
    pub status: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

impl From<HistoryRow> for Firing {
    fn from(h: HistoryRow) -> Self {
        Firing {
            id: h.id,
            job_id: h.job_id,
            trigger: h.trigger,
            scheduled_at: h.scheduled_at.map(ms_to_rfc3339),
            fired_at: ms_to_rfc3339(h.fired_at),
            run_id: h.run_id,
            status: h.status,
            finished_at: h.finished_at.map(ms_to_rfc3339),
            duration_ms: h.duration_ms,
            error: h.error,
        }
    }
}

/// The in-memory firing queue, rebuilt from SQLite at start.
#[derive(Default)]
struct Queue {
    by_time: BTreeSet<(i64, String)>,
    by_job: HashMap<String, i64>,
}

impl Queue {
    fn set(&mut self, id: &str, next: Option<i64>) {
        if let Some(old) = self.by_job.remove(id) {
            self.by_time.remove(&(old, id.to_owned()));
        }
        if let Some(t) = next {
            self.by_time.insert((t, id.to_owned()));
            self.by_job.insert(id.to_owned(), t);
        }
    }

    fn pop_due(&mut self, now: i64) -> Vec<(i64, String)> {
        let mut due = Vec::new();
        while let Some(first) = self.by_time.first() {
            if first.0 > now {
                break;
            }
            if let Some(item) = self.by_time.pop_first() {
                self.by_job.remove(&item.1);
                due.push(item);
            }
        }
        due
    }

    fn next_at(&self) -> Option<i64> {
        self.by_time.first().map(|(t, _)| *t)
    }
}

struct InFlight {
    run_id: Option<String>,
    /// The job was deleted before its run had an id: stop the run once it has.
    stop_requested: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Trigger {
    Schedule,
    CatchUp,
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
        }
    }
}

/// The cron service.
pub struct CronService {
    store: Store,
    runs: Arc<Runs>,
    metrics: Arc<Metrics>,
    config: CronConfig,
    /// Where deliveries go (none without `hub.url`).
    hub: Option<HubClient>,
    clock: Arc<dyn Clock>,
    queue: Mutex<Queue>,
    wake: Notify,
    delivery_wake: Notify,
    inflight: Mutex<HashMap<String, InFlight>>,
    started_at: i64,
    shutdown: CancellationToken,
    /// `<hermes home>/skills`, known once `prepare` ran: where a job's
    /// skills are read from when it fires.
    skills_dir: std::sync::OnceLock<PathBuf>,
}

/// Longest sleep of the scheduler between looks at the clock (wall-clock
/// jumps are noticed within this).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Missed occurrences counted at start before giving up counting.
const MISSED_COUNT_LIMIT: usize = 1000;
/// Output sent to the hub per delivery (longer output is cut).
const MAX_DELIVERY_BYTES: usize = 256 * 1024;

fn active(job: &JobRow) -> bool {
    job.enabled && !job.paused && job.state == "scheduled"
}

fn ms_to_dt(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Parse a stored or requested schedule and zone.
pub fn parse_schedule(schedule: &str, timezone: &str) -> Result<(Schedule, Tz), CronError> {
    let s = Schedule::parse(schedule).map_err(|e| CronError::Invalid(format!("schedule: {e}")))?;
    let tz = schedule::parse_timezone(timezone)
        .map_err(|e| CronError::Invalid(format!("timezone: {e}")))?;
    Ok((s, tz))
}

/// The next firing of `job` strictly after `after`, or `None`.
fn next_for(job: &JobRow, after: i64) -> Option<i64> {
    if !active(job) {
        return None;
    }
    let (s, tz) = parse_schedule(&job.schedule, &job.timezone).ok()?;
    s.next_after(ms_to_dt(after), ms_to_dt(job.anchor_at), tz)
        .map(|t| t.timestamp_millis())
}

impl CronService {
    pub fn new(
        store: Store,
        runs: Arc<Runs>,
        metrics: Arc<Metrics>,
        config: CronConfig,
        hub: Option<HubClient>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Arc<CronService> {
        let started_at = clock.now_ms();
        Arc::new(CronService {
            store,
            runs,
            metrics,
            config,
            hub,
            clock,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            delivery_wake: Notify::new(),
            inflight: Mutex::new(HashMap::new()),
            started_at,
            shutdown,
            skills_dir: std::sync::OnceLock::new(),
        })
    }

    fn requeue(&self, id: &str, next: Option<i64>) {
        if let Ok(mut q) = self.queue.lock() {
            q.set(id, next);
        }
        self.wake.notify_one();
    }

    fn running_run(&self, id: &str) -> Option<String> {
        self.inflight
            .lock()
            .ok()
            .and_then(|m| m.get(id).and_then(|f| f.run_id.clone()))
    }

    fn view(&self, j: JobRow) -> Job {
        let running_run_id = self.running_run(&j.id);
        Job {
            repeat: j.repeat_times.map(|times| Repeat {
                times,
                completed: j.repeat_completed,
            }),
            running_run_id,
            id: j.id,
            name: j.name,
            schedule: j.schedule,
            timezone: j.timezone,
            prompt: j.prompt,
            enabled: j.enabled,
            paused: j.paused,
            state: j.state,
            skills: j.skills,
            deliver: j.deliver,
            created_at: ms_to_rfc3339(j.created_at),
            updated_at: ms_to_rfc3339(j.updated_at),
            last_run_at: j.last_run_at.map(ms_to_rfc3339),
            last_status: j.last_status,
            last_error: j.last_error,
            next_run_at: j.next_run_at.map(ms_to_rfc3339),
        }
    }

    /// Load the jobs, apply the missed-firing rule, import the gateway's
    /// jobs file once, and re-attach firings left running. Call before
    /// [`spawn`](Self::spawn).
    /// The run's instructions for a job's `skills` (see [`skills`]); `None`
    /// without skills. A store or file problem leaves the skills out (logged):
    /// the job still fires.
    async fn skill_instructions(&self, names: Option<&[String]>) -> Option<String> {
        let names = names.filter(|n| !n.is_empty())?.to_vec();
        let dir = self.skills_dir.get()?.clone();
        let wanted = names.clone();
        let found = match self.store.read(move |c| skills::locate(c, &names)).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cron: cannot look up a job's skills; firing without them");
                return None;
            }
        };
        crate::identity::spawn_as_agent(move || skills::instructions(&dir, &wanted, &found))
            .await
            .ok()
            .flatten()
    }

    pub async fn prepare(self: &Arc<Self>, hermes_home: PathBuf) -> Result<(), CronError> {
        let began = std::time::Instant::now();
        let _ = self.skills_dir.set(hermes_home.join("skills"));
        import::import_once(self, &hermes_home).await?;
        let now = self.clock.now_ms();
        let jobs = self.store.read(|c| db::list_jobs(c, None, None)).await?;
        let grace = self.config.missed_grace.as_millis() as i64;
        let mut due_now = 0usize;
        for job in &jobs {
            if !active(job) {
                if job.next_run_at.is_some() {
                    let id = job.id.clone();
                    self.store
                        .write(move |c| db::set_next_run(c, &id, None))
                        .await?;
                }
                continue;
            }
            let next = match job.next_run_at {
                Some(t) if t > now => Some(t),
                None => next_for(job, now),
                Some(first_missed) => {
                    // The latest missed occurrence, found directly; the
                    // count walks at most MISSED_COUNT_LIMIT occurrences.
                    let latest = parse_schedule(&job.schedule, &job.timezone)
                        .ok()
                        .and_then(|(s, tz)| {
                            s.latest_at_or_before(ms_to_dt(now), ms_to_dt(job.anchor_at), tz)
                        })
                        .map(|t| t.timestamp_millis())
                        .filter(|t| *t >= first_missed)
                        .unwrap_or(first_missed);
                    let mut count = 1usize;
                    let mut cursor = first_missed;
                    while count < MISSED_COUNT_LIMIT {
                        match next_for(job, cursor) {
                            Some(n) if n <= latest => {
                                cursor = n;
                                count += 1;
                            }
                            _ => break,
                        }
                    }
                    let catch_up = now - latest <= grace;
                    let missed = if catch_up { count - 1 } else { count };
                    if missed > 0 {
                        self.count("missed");
                        tracing::info!(job_id = %job.id, missed, "cron firings missed while the daemon was down");
                        let h = HistoryRow {
                            id: 0,
                            job_id: job.id.clone(),
                            trigger: "missed".into(),
                            scheduled_at: Some(latest),
                            fired_at: now,
                            run_id: None,
                            status: "missed".into(),
                            finished_at: Some(now),
                            duration_ms: None,
                            error: Some(format!(
                                "{missed} firing(s) missed while the daemon was down (grace {:?})",
                                self.config.missed_grace
                            )),
                        };
                        let keep = self.config.history_per_job;
                        self.store
                            .write(move |c| db::insert_history(c, &h, keep))
                            .await?;
                    }
                    if catch_up {
                        due_now += 1;
                        Some(latest)
                    } else {
                        let mut j = job.clone();
                        let next = next_for(&j, now);
                        if next.is_none() {
                            // A one-shot whose time passed long ago.
                            j.state = "completed".into();
                            j.last_status = Some("missed".into());
                            j.last_error = Some(
                                "missed while the daemon was down, past the grace window".into(),
                            );
                            j.next_run_at = None;
                            j.updated_at = now;
                            self.store.write(move |c| db::update_job(c, &j)).await?;
                        }
                        next
                    }
                }
            };
            if next != job.next_run_at {
                let id = job.id.clone();
                self.store
                    .write(move |c| db::set_next_run(c, &id, next))
                    .await?;
            }
            if let Ok(mut q) = self.queue.lock() {
                q.set(&job.id, next);
            }
        }
        let unfinished = self.store.read(db::unfinished_history).await?;
        for h in unfinished {
            match h.run_id.clone() {
                Some(run_id) => {
                    if let Ok(mut m) = self.inflight.lock() {
                        m.insert(
                            h.job_id.clone(),
                            InFlight {
                                run_id: Some(run_id.clone()),
                                stop_requested: false,
                            },
                        );
                    }
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.watch(h.job_id, h.id, run_id, h.fired_at).await;
                    });
                }
                None => {
                    let now = self.clock.now_ms();
                    self.store
                        .write(move |c| {
                            db::finish_history(
                                c,
                                h.id,
                                "failed",
                                now,
                                None,
                                Some("the daemon stopped before the run started"),
                            )
                        })
                        .await?;
                }
            }
        }
        tracing::info!(
            jobs = jobs.len(),
            due_now,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "cron scheduler rebuilt from the store"
        );
        Ok(())
    }

    /// Start the scheduler and the delivery tasks.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let this = self.clone();
        let scheduler = tokio::spawn(async move { this.scheduler().await });
        let mut v = vec![scheduler];
        if let Some(hub) = self.hub.clone() {
            let this = self.clone();
            v.push(tokio::spawn(async move {
                delivery::run(this, hub).await;
            }));
        }
        v
    }

    async fn scheduler(self: Arc<Self>) {
        let mut draining = self.runs.draining();
        loop {
            // While the daemon drains, due firings stay queued (held, not
            // skipped): they fire when the drain ends.
            if draining.borrow_and_update().is_some() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    changed = draining.changed() => if changed.is_err() { return },
                }
                continue;
            }
            let now = self.clock.now_ms();
            let (due, next) = match self.queue.lock() {
                Ok(mut q) => (q.pop_due(now), q.next_at()),
                Err(_) => return,
            };
            for (t, id) in due {
                let this = self.clone();
                let trigger = if t < self.started_at {
                    Trigger::CatchUp
                } else {
                    Trigger::Schedule
                };
                tokio::spawn(async move {
                    match this.fire(&id, Some(t), trigger).await {
                        Ok(_)
                        | Err(CronError::NotFound(_) | CronError::Store(StoreError::NotFound(_))) =>
                            {}
                        // Changed or deleted since it was queued.
                        Err(CronError::Conflict(m)) => {
                            tracing::debug!(job_id = %id, m, "cron firing dropped")
                        }
                        Err(e) => tracing::warn!(job_id = %id, error = %e, "cron firing failed"),
                    }
                });
            }
            let wait = next
                .map(|t| Duration::from_millis((t - self.clock.now_ms()).max(0) as u64))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Ok(()) = draining.changed() => {}
            }
        }
    }
}
