//! Agent cron: jobs stored in SQLite (the source of truth), fired by one
//! scheduler task that keeps an in-memory queue of `(next_run_at, job)` in
//! step with every change. A firing is a run (platform `cron`); a job never
//! overlaps itself; firings missed while the daemon was down are handled by
//! the grace rule at start; outputs for hub-owned targets are delivered by
//! [`delivery`].

pub mod delivery;
pub mod import;
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
        loop {
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
            }
        }
    }

    /// Fire a job: a scheduled firing (at `scheduled`), a catch-up at start,
    /// or a manual one. Returns the history line it wrote.
    async fn fire(
        self: &Arc<Self>,
        id: &str,
        scheduled: Option<i64>,
        trigger: Trigger,
    ) -> Result<Firing, CronError> {
        let jid = id.to_owned();
        let job = self.store.read(move |c| db::get_job(c, &jid)).await?;
        let now = self.clock.now_ms();
        if trigger != Trigger::Manual && (!active(&job) || job.next_run_at != scheduled) {
            // Changed since it was queued; the change requeued it.
            return Err(CronError::Conflict("stale queue entry".into()));
        }
        let keep = self.config.history_per_job;
        // Scheduled firings move the schedule on whatever happens next.
        let mut updated = job.clone();
        if trigger != Trigger::Manual {
            let after = now.max(scheduled.unwrap_or(now));
            updated.next_run_at = next_for(&job, after);
        }
        let overlapping = {
            let mut m = self
                .inflight
                .lock()
                .map_err(|_| CronError::Conflict("cron state poisoned".into()))?;
            match m.get(id) {
                Some(f) => Some(f.run_id.clone()),
                None => {
                    m.insert(
                        id.to_owned(),
                        InFlight {
                            run_id: None,
                            stop_requested: false,
                        },
                    );
                    None
                }
            }
        };
        if let Some(prev) = overlapping {
            let why = format!(
                "the previous firing is still running{}",
                prev.map(|r| format!(" (run {r})")).unwrap_or_default()
            );
            if trigger == Trigger::Manual {
                return Err(CronError::Conflict(format!("cron job `{id}`: {why}")));
            }
            let mut h = HistoryRow {
                id: 0,
                job_id: id.to_owned(),
                trigger: trigger.as_str().into(),
                scheduled_at: scheduled,
                fired_at: now,
                run_id: None,
                status: "skipped".into(),
                finished_at: Some(now),
                duration_ms: None,
                error: Some(format!("skipped: {why}")),
            };
            let next = updated.next_run_at;
            let (jid, row) = (id.to_owned(), h.clone());
            let hid = self
                .store
                .write(move |c| {
                    db::set_next_run(c, &jid, next)?;
                    db::insert_history(c, &row, keep)
                })
                .await?;
            self.requeue(id, next);
            self.count("skipped");
            tracing::info!(job_id = %id, "cron firing skipped: the previous one is still running");
            h.id = hid.unwrap_or(0);
            return Ok(h.into());
        }
        if trigger != Trigger::Manual {
            updated.repeat_completed += 1;
            let sched_one_shot = Schedule::parse(&job.schedule)
                .map(|s| s.is_one_shot())
                .unwrap_or(false);
            let reached = updated
                .repeat_times
                .is_some_and(|t| updated.repeat_completed >= t);
            if sched_one_shot || reached {
                updated.state = "completed".into();
                updated.next_run_at = None;
            }
        }
        updated.last_run_at = Some(now);
        updated.last_status = Some("running".into());
        updated.last_error = None;
        let h = HistoryRow {
            id: 0,
            job_id: id.to_owned(),
            trigger: trigger.as_str().into(),
            scheduled_at: scheduled,
            fired_at: now,
            run_id: None,
            status: "running".into(),
            finished_at: None,
            duration_ms: None,
            error: None,
        };
        let row = updated.clone();
        let written = self
            .store
            .write(move |c| {
                let tx = c.transaction()?;
                db::update_job(&tx, &row)?;
                let hid = db::insert_history(&tx, &h, keep)?;
                tx.commit()?;
                Ok(hid)
            })
            .await;
        let hid = match written {
            Ok(Some(hid)) => hid,
            Ok(None) | Err(_) => {
                self.clear_inflight(id);
                return Err(written.err().map(CronError::from).unwrap_or_else(|| {
                    CronError::NotFound(format!("cron job `{id}` does not exist"))
                }));
            }
        };
        if trigger != Trigger::Manual {
            self.requeue(id, updated.next_run_at);
        }
        let instructions = self.skill_instructions(job.skills.as_deref()).await;
        let started = self
            .runs
            .start(StartRun {
                input: Value::String(job.prompt.clone()),
                session_id: None,
                instructions,
                platform: Some("cron".into()),
                conversation_history: None,
            })
            .await;
        match started {
            Ok(run) => {
                let run_id = run.run_id.clone();
                let stop_now = match self.inflight.lock() {
                    Ok(mut m) => {
                        let f = m.entry(id.to_owned()).or_insert(InFlight {
                            run_id: None,
                            stop_requested: false,
                        });
                        f.run_id = Some(run_id.clone());
                        f.stop_requested
                    }
                    Err(_) => false,
                };
                if stop_now {
                    // Deleted while the run was being started.
                    if let Err(e) = self.runs.stop(&run_id).await {
                        tracing::info!(job_id = %id, run_id = %run_id, error = %e, "deleted cron job: its run could not be stopped");
                    }
                }
                let rid = run_id.clone();
                self.store
                    .write(move |c| db::set_history_run(c, hid, &rid))
                    .await?;
                self.count("started");
                if let (Trigger::Schedule, Some(t)) = (trigger, scheduled) {
                    self.metrics
                        .cron_fire_lag_seconds
                        .observe((now - t).max(0) as f64 / 1000.0);
                }
                tracing::info!(job_id = %id, run_id = %run_id, trigger = trigger.as_str(), "cron job fired");
                let this = self.clone();
                let jid = id.to_owned();
                let rid = run_id.clone();
                tokio::spawn(async move { this.watch(jid, hid, rid, now).await });
                let hid_row = HistoryRow {
                    id: hid,
                    job_id: id.to_owned(),
                    trigger: trigger.as_str().into(),
                    scheduled_at: scheduled,
                    fired_at: now,
                    run_id: Some(run_id),
                    status: "running".into(),
                    finished_at: None,
                    duration_ms: None,
                    error: None,
                };
                Ok(hid_row.into())
            }
            Err(e) => {
                let msg = e.to_string();
                self.count("start_failed");
                tracing::warn!(job_id = %id, error = %msg, "cron firing could not start a run");
                self.record_end(id, hid, "failed", now, Some(msg.clone()))
                    .await?;
                self.clear_inflight(id);
                Err(CronError::Run(e))
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .cron_firings
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn clear_inflight(&self, id: &str) {
        if let Ok(mut m) = self.inflight.lock() {
            m.remove(id);
        }
    }

    /// Follow a firing's run to its end and record the outcome.
    async fn watch(self: Arc<Self>, job_id: String, hid: i64, run_id: String, fired_at: i64) {
        // Events end at the terminal one; then (or if streaming is refused)
        // the stored run is polled until it is final.
        if let Ok(mut events) = self.runs.subscribe(&run_id, 0).await {
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    ev = events.recv() => if ev.is_none() { break },
                }
            }
        }
        let run = loop {
            match self.runs.get(&run_id).await {
                Ok(run) if crate::store::runs::is_terminal(&run.status) => break Some(run),
                Ok(_) => {}
                Err(RunError::NotFound(_)) => break None,
                Err(e) => tracing::debug!(error = %e, "cron: cannot read run"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        };
        let (status, error, output) = match &run {
            Some(r) => (
                r.status.clone(),
                r.error.as_ref().map(|e| e.message.clone()),
                r.output.clone(),
            ),
            None => (
                "failed".to_owned(),
                Some("the run was lost".to_owned()),
                None,
            ),
        };
        if let Err(e) = self
            .record_end(&job_id, hid, &status, fired_at, error)
            .await
        {
            tracing::warn!(job_id = %job_id, error = %e, "cron: cannot record a firing's end");
        }
        self.clear_inflight(&job_id);
        if status == "completed" {
            self.queue_delivery(&job_id, &run_id, output).await;
        }
    }

    async fn record_end(
        &self,
        job_id: &str,
        hid: i64,
        status: &str,
        fired_at: i64,
        error: Option<String>,
    ) -> Result<(), CronError> {
        let now = self.clock.now_ms();
        let (jid, st) = (job_id.to_owned(), status.to_owned());
        self.store
            .write(move |c| {
                let tx = c.transaction()?;
                db::finish_history(&tx, hid, &st, now, Some(now - fired_at), error.as_deref())?;
                let last = match st.as_str() {
                    "completed" => "ok",
                    "cancelled" => "cancelled",
                    _ => "error",
                };
                db::set_last_result(&tx, &jid, last, error.as_deref())?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn queue_delivery(&self, job_id: &str, run_id: &str, output: Option<String>) {
        let jid = job_id.to_owned();
        let Ok(job) = self.store.read(move |c| db::get_job(c, &jid)).await else {
            return;
        };
        let Some(deliver) = job.deliver.filter(|d| d != "local") else {
            return;
        };
        if self.hub.is_none() {
            tracing::warn!(job_id, deliver = %deliver, "cron output not delivered: no hub.url configured");
            return;
        }
        let mut output = output.unwrap_or_default();
        if output.len() > MAX_DELIVERY_BYTES {
            let mut cut = MAX_DELIVERY_BYTES;
            while !output.is_char_boundary(cut) {
                cut -= 1;
            }
            output.truncate(cut);
        }
        let (jid, rid, max, now) = (
            job_id.to_owned(),
            run_id.to_owned(),
            self.config.deliveries_max,
            self.clock.now_ms(),
        );
        match self
            .store
            .write(move |c| db::insert_delivery(c, &jid, &rid, &deliver, &output, now, max))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                dropped = n,
                "cron deliveries over cron.deliveries_max: the oldest were dropped"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot queue a cron delivery"),
        }
        self.delivery_wake.notify_one();
    }

    // ---- the operations behind the API ------------------------------------

    pub async fn list(
        &self,
        enabled: Option<bool>,
        paused: Option<bool>,
    ) -> Result<Vec<Job>, CronError> {
        let rows = self
            .store
            .read(move |c| db::list_jobs(c, enabled, paused))
            .await?;
        Ok(rows.into_iter().map(|j| self.view(j)).collect())
    }

    pub async fn get(&self, id: &str) -> Result<Job, CronError> {
        let jid = id.to_owned();
        let row = self.store.read(move |c| db::get_job(c, &jid)).await?;
        Ok(self.view(row))
    }

    /// Validate a merged row and set its next firing.
    fn finish_row(&self, row: &mut JobRow, schedule_changed: bool) -> Result<(), CronError> {
        let now = self.clock.now();
        if row.prompt.trim().is_empty() {
            return Err(CronError::Invalid("prompt: must not be empty".into()));
        }
        let chars = row.prompt.chars().count();
        if chars > self.config.max_prompt_chars {
            return Err(CronError::Invalid(format!(
                "prompt: {chars} characters; at most {} are accepted (cron.max_prompt_chars)",
                self.config.max_prompt_chars
            )));
        }
        if row.name.chars().count() > 200 {
            return Err(CronError::Invalid("name: at most 200 characters".into()));
        }
        let (s, tz) = parse_schedule(&row.schedule, &row.timezone)?;
        row.timezone = tz.name().to_owned();
        if let Some(gap) = s.shortest_gap(now, tz) {
            if gap < self.config.min_interval {
                return Err(CronError::Invalid(format!(
                    "schedule: fires every {}; the minimum interval is {} (cron.min_interval)",
                    humantime::format_duration(gap),
                    humantime::format_duration(self.config.min_interval)
                )));
            }
        }
        if schedule_changed {
            row.anchor_at = now.timestamp_millis();
            if let Schedule::OnceAt(at) = s {
                if at <= now {
                    return Err(CronError::Invalid(format!(
                        "schedule: {} is in the past",
                        at.to_rfc3339()
                    )));
                }
            }
        }
        row.next_run_at = next_for(row, now.timestamp_millis());
        if active(row) && row.next_run_at.is_none() {
            if schedule_changed {
                return Err(CronError::Invalid(format!(
                    "schedule: `{}` never fires",
                    row.schedule
                )));
            }
            // A one-shot whose time passed while it could not fire.
            row.state = "completed".into();
            row.last_status = Some("missed".into());
            row.last_error = Some("its time passed while the job was paused or disabled".into());
        }
        Ok(())
    }

    pub async fn create(&self, body: &Value) -> Result<Job, CronError> {
        let p = spec::parse(body)?;
        let now = self.clock.now_ms();
        let prompt = p
            .prompt
            .ok_or_else(|| CronError::Invalid("prompt: is required".into()))?;
        let schedule = p
            .schedule
            .ok_or_else(|| CronError::Invalid("schedule: is required (or `cron`)".into()))?;
        let name = p
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| prompt.trim().chars().take(50).collect());
        let mut row = JobRow {
            id: format!("cron_{}", crate::auth::random_token(8)),
            name,
            schedule: schedule.trim().to_owned(),
            timezone: p.timezone.unwrap_or_else(|| "UTC".into()),
            prompt,
            enabled: p.enabled.unwrap_or(true),
            paused: p.paused.unwrap_or(false),
            state: "scheduled".into(),
            skills: p.skills.flatten(),
            deliver: p.deliver.flatten(),
            repeat_times: p.repeat.flatten(),
            repeat_completed: 0,
            anchor_at: now,
            created_at: now,
            updated_at: now,
            last_run_at: None,
            last_status: None,
            last_error: None,
            next_run_at: None,
            origin: "api".into(),
        };
        self.finish_row(&mut row, true)?;
        let (r, max) = (row.clone(), self.config.max_jobs);
        self.store
            .write(move |c| db::insert_job(c, &r, max))
            .await?;
        self.requeue(&row.id, row.next_run_at);
        tracing::info!(job_id = %row.id, schedule = %row.schedule, "cron job created");
        Ok(self.view(row))
    }

    pub async fn update(&self, id: &str, body: &Value) -> Result<Job, CronError> {
        let p = spec::parse(body)?;
        let jid = id.to_owned();
        let mut row = self.store.read(move |c| db::get_job(c, &jid)).await?;
        let before = row.clone();
        if let Some(n) = p.name {
            row.name = n;
        }
        if let Some(s) = p.schedule {
            row.schedule = s.trim().to_owned();
        }
        if let Some(t) = p.timezone {
            row.timezone = t;
        }
        if let Some(pr) = p.prompt {
            row.prompt = pr;
        }
        if let Some(e) = p.enabled {
            row.enabled = e;
        }
        if let Some(pa) = p.paused {
            row.paused = pa;
        }
        if let Some(s) = p.skills {
            row.skills = s;
        }
        if let Some(d) = p.deliver {
            row.deliver = d;
        }
        let schedule_changed = row.schedule != before.schedule || row.timezone != before.timezone;
        if let Some(r) = p.repeat {
            row.repeat_times = r;
        }
        if schedule_changed {
            row.state = "scheduled".into();
            row.repeat_completed = 0;
        } else if row.repeat_times != before.repeat_times {
            let reached = row.repeat_times.is_some_and(|t| row.repeat_completed >= t);
            let one_shot_done = Schedule::parse(&row.schedule)
                .map(|s| s.is_one_shot())
                .unwrap_or(false)
                && before.state == "completed";
            row.state = if reached || one_shot_done {
                "completed"
            } else {
                "scheduled"
            }
            .into();
        }
        row.updated_at = self.clock.now_ms();
        self.finish_row(&mut row, schedule_changed)?;
        let r = row.clone();
        self.store.write(move |c| db::update_job(c, &r)).await?;
        self.requeue(id, row.next_run_at);
        Ok(self.view(row))
    }

    /// Delete a job and its history; a firing in flight is stopped.
    pub async fn delete(&self, id: &str) -> Result<(), CronError> {
        let jid = id.to_owned();
        let existed = self.store.write(move |c| db::delete_job(c, &jid)).await?;
        if !existed {
            return Err(CronError::NotFound(format!(
                "cron job `{id}` does not exist"
            )));
        }
        self.requeue(id, None);
        let run = match self.inflight.lock() {
            Ok(mut m) => m.get_mut(id).and_then(|f| {
                f.stop_requested = f.run_id.is_none();
                f.run_id.clone()
            }),
            Err(_) => None,
        };
        if let Some(run_id) = run {
            match self.runs.stop(&run_id).await {
                Ok(_) => {
                    tracing::info!(job_id = %id, run_id = %run_id, "deleted cron job: its run was stopped")
                }
                Err(e) => {
                    tracing::info!(job_id = %id, run_id = %run_id, error = %e, "deleted cron job: its run could not be stopped")
                }
            }
        }
        tracing::info!(job_id = %id, "cron job deleted");
        Ok(())
    }

    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<Job, CronError> {
        let jid = id.to_owned();
        let mut row = self.store.read(move |c| db::get_job(c, &jid)).await?;
        row.paused = paused;
        row.updated_at = self.clock.now_ms();
        row.next_run_at = next_for(&row, row.updated_at);
        if !paused && active(&row) && row.next_run_at.is_none() {
            // A one-shot whose time passed while it was paused.
            row.state = "completed".into();
            row.last_status = Some("missed".into());
            row.last_error = Some("its time passed while the job was paused".into());
        }
        let r = row.clone();
        self.store.write(move |c| db::update_job(c, &r)).await?;
        self.requeue(id, row.next_run_at);
        Ok(self.view(row))
    }

    /// Fire now, out of schedule; `409` if a firing is in flight.
    pub async fn run_now(self: &Arc<Self>, id: &str) -> Result<Firing, CronError> {
        self.fire(id, None, Trigger::Manual).await
    }

    pub async fn history(&self, id: &str, limit: u32) -> Result<Vec<Firing>, CronError> {
        let jid = id.to_owned();
        let rows = self
            .store
            .read(move |c| {
                db::get_job(c, &jid)?;
                db::list_history(c, &jid, limit)
            })
            .await?;
        Ok(rows.into_iter().map(Firing::from).collect())
    }

    /// Jobs in the queue (metrics, benchmarks).
    pub fn queued(&self) -> usize {
        self.queue.lock().map(|q| q.by_job.len()).unwrap_or(0)
    }
}
