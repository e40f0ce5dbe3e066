//! Cron jobs, their firing history and pending hub deliveries.

use rusqlite::{Connection, OptionalExtension, params};

use super::{StoreError, StoreResult};

/// One job as stored (times in unix milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    pub schedule: String,
    pub timezone: String,
    pub prompt: String,
    pub enabled: bool,
    pub paused: bool,
    pub state: String,
    pub skills: Option<Vec<String>>,
    pub deliver: Option<String>,
    pub repeat_times: Option<i64>,
    pub repeat_completed: i64,
    pub anchor_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_run_at: Option<i64>,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    pub next_run_at: Option<i64>,
    pub origin: String,
}

const JOB_COLUMNS: &str = "id, name, schedule, timezone, prompt, enabled, paused, state, skills, deliver, repeat_times, repeat_completed, anchor_at, created_at, updated_at, last_run_at, last_status, last_error, next_run_at, origin";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let skills: Option<String> = r.get(8)?;
    Ok(JobRow {
        id: r.get(0)?,
        name: r.get(1)?,
        schedule: r.get(2)?,
        timezone: r.get(3)?,
        prompt: r.get(4)?,
        enabled: r.get(5)?,
        paused: r.get(6)?,
        state: r.get(7)?,
        skills: skills.and_then(|s| serde_json::from_str(&s).ok()),
        deliver: r.get(9)?,
        repeat_times: r.get(10)?,
        repeat_completed: r.get(11)?,
        anchor_at: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
        last_run_at: r.get(15)?,
        last_status: r.get(16)?,
        last_error: r.get(17)?,
        next_run_at: r.get(18)?,
        origin: r.get(19)?,
    })
}

fn skills_text(s: &Option<Vec<String>>) -> Option<String> {
    s.as_ref()
        .map(|v| serde_json::to_string(v).unwrap_or_else(|_| "[]".into()))
}

/// Insert a job unless the tenant already has `max_jobs`.
pub fn insert_job(conn: &mut Connection, job: &JobRow, max_jobs: usize) -> StoreResult<()> {
    let tx = conn.transaction()?;
    let n: i64 = tx.query_row("SELECT count(*) FROM cron_jobs", [], |r| r.get(0))?;
    if n as usize >= max_jobs {
        return Err(StoreError::Conflict(format!(
            "this tenant already has {n} cron jobs, the limit (cron.max_jobs)"
        )));
    }
    let exists: bool = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM cron_jobs WHERE id = ?1)",
        [&job.id],
        |r| r.get(0),
    )?;
    if exists {
        return Err(StoreError::Conflict(format!(
            "cron job `{}` already exists",
            job.id
        )));
    }
    tx.execute(
        &format!("INSERT INTO cron_jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"),
        params![
            job.id, job.name, job.schedule, job.timezone, job.prompt, job.enabled, job.paused,
            job.state, skills_text(&job.skills), job.deliver, job.repeat_times, job.repeat_completed,
            job.anchor_at, job.created_at, job.updated_at, job.last_run_at, job.last_status,
            job.last_error, job.next_run_at, job.origin
        ],
    )?;
    tx.commit()?;
    Ok(())
}

/// Replace every column of an existing job.
pub fn update_job(conn: &Connection, job: &JobRow) -> StoreResult<()> {
    let n = conn.execute(
        "UPDATE cron_jobs SET name = ?2, schedule = ?3, timezone = ?4, prompt = ?5, enabled = ?6, paused = ?7, state = ?8, skills = ?9, deliver = ?10, repeat_times = ?11, repeat_completed = ?12, anchor_at = ?13, updated_at = ?14, last_run_at = ?15, last_status = ?16, last_error = ?17, next_run_at = ?18 WHERE id = ?1",
        params![
            job.id, job.name, job.schedule, job.timezone, job.prompt, job.enabled, job.paused,
            job.state, skills_text(&job.skills), job.deliver, job.repeat_times, job.repeat_completed,
            job.anchor_at, job.updated_at, job.last_run_at, job.last_status, job.last_error,
            job.next_run_at
        ],
    )?;
    if n == 0 {
        return Err(not_found(&job.id));
    }
    Ok(())
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("cron job `{id}` does not exist"))
}

pub fn get_job(conn: &Connection, id: &str) -> StoreResult<JobRow> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM cron_jobs WHERE id = ?1"),
        [id],
        job_row,
    )
    .optional()?
    .ok_or_else(|| not_found(id))
}

/// Every job, oldest first, optionally filtered.
pub fn list_jobs(
    conn: &Connection,
    enabled: Option<bool>,
    paused: Option<bool>,
) -> StoreResult<Vec<JobRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM cron_jobs WHERE (?1 IS NULL OR enabled = ?1) AND (?2 IS NULL OR paused = ?2) ORDER BY created_at, id"
    ))?;
    let rows = stmt
        .query_map(params![enabled, paused], job_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Delete a job and its history; `false` when there was none.
pub fn delete_job(conn: &Connection, id: &str) -> StoreResult<bool> {
    Ok(conn.execute("DELETE FROM cron_jobs WHERE id = ?1", [id])? > 0)
}

pub fn set_next_run(conn: &Connection, id: &str, next: Option<i64>) -> StoreResult<()> {
    conn.execute(
        "UPDATE cron_jobs SET next_run_at = ?2 WHERE id = ?1",
        params![id, next],
    )?;
    Ok(())
}

/// A firing's outcome on its job (`ok`, `error`, `cancelled`).
pub fn set_last_result(
    conn: &Connection,
    id: &str,
    status: &str,
    error: Option<&str>,
) -> StoreResult<()> {
    conn.execute(
        "UPDATE cron_jobs SET last_status = ?2, last_error = ?3 WHERE id = ?1",
        params![id, status, error],
    )?;
    Ok(())
}

/// One line of a job's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub id: i64,
    pub job_id: String,
    pub trigger: String,
    pub scheduled_at: Option<i64>,
    pub fired_at: i64,
    pub run_id: Option<String>,
    pub status: String,
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

const HISTORY_COLUMNS: &str =
    "id, job_id, trigger, scheduled_at, fired_at, run_id, status, finished_at, duration_ms, error";

fn history_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryRow> {
    Ok(HistoryRow {
        id: r.get(0)?,
        job_id: r.get(1)?,
        trigger: r.get(2)?,
        scheduled_at: r.get(3)?,
        fired_at: r.get(4)?,
        run_id: r.get(5)?,
        status: r.get(6)?,
        finished_at: r.get(7)?,
        duration_ms: r.get(8)?,
        error: r.get(9)?,
    })
}

/// Append a history line and keep only the newest `keep` per job. Returns
/// its id, or `None` when the job no longer exists.
pub fn insert_history(conn: &Connection, h: &HistoryRow, keep: usize) -> StoreResult<Option<i64>> {
    let n = conn.execute(
        "INSERT INTO cron_runs (job_id, trigger, scheduled_at, fired_at, run_id, status, finished_at, duration_ms, error)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE EXISTS(SELECT 1 FROM cron_jobs WHERE id = ?1)",
        params![
            h.job_id, h.trigger, h.scheduled_at, h.fired_at, h.run_id, h.status, h.finished_at,
            h.duration_ms, h.error
        ],
    )?;
    if n == 0 {
        return Ok(None);
    }
    let id = conn.last_insert_rowid();
    conn.execute(
        "DELETE FROM cron_runs WHERE job_id = ?1 AND id <= (SELECT id FROM cron_runs WHERE job_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![h.job_id, keep as i64],
    )?;
    Ok(Some(id))
}

/// Record how a firing ended.
pub fn finish_history(
    conn: &Connection,
    id: i64,
    status: &str,
    finished_at: i64,
    duration_ms: Option<i64>,
    error: Option<&str>,
) -> StoreResult<()> {
    conn.execute(
        "UPDATE cron_runs SET status = ?2, finished_at = ?3, duration_ms = ?4, error = ?5 WHERE id = ?1",
        params![id, status, finished_at, duration_ms, error],
    )?;
    Ok(())
}

pub fn set_history_run(conn: &Connection, id: i64, run_id: &str) -> StoreResult<()> {
    conn.execute(
        "UPDATE cron_runs SET run_id = ?2 WHERE id = ?1",
        params![id, run_id],
    )?;
    Ok(())
}

/// Newest first.
pub fn list_history(conn: &Connection, job_id: &str, limit: u32) -> StoreResult<Vec<HistoryRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {HISTORY_COLUMNS} FROM cron_runs WHERE job_id = ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![job_id, limit], history_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Firings left `running` (the daemon stopped while they ran).
pub fn unfinished_history(conn: &Connection) -> StoreResult<Vec<HistoryRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {HISTORY_COLUMNS} FROM cron_runs WHERE status = 'running' ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([], history_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A delivery waiting for the hub's acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub id: i64,
    pub job_id: String,
    pub run_id: String,
    pub deliver: String,
    pub output: String,
    pub attempts: i64,
}

/// Queue a delivery; beyond `max` pending, the oldest are dropped (counted
/// in the return value).
pub fn insert_delivery(
    conn: &mut Connection,
    job_id: &str,
    run_id: &str,
    deliver: &str,
    output: &str,
    now: i64,
    max: usize,
) -> StoreResult<usize> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO cron_deliveries (job_id, run_id, deliver, output, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![job_id, run_id, deliver, output, now],
    )?;
    let dropped = tx.execute(
        "DELETE FROM cron_deliveries WHERE id IN (SELECT id FROM cron_deliveries ORDER BY id DESC LIMIT -1 OFFSET ?1)",
        [max as i64],
    )?;
    tx.commit()?;
    Ok(dropped)
}

/// Deliveries due at `now`, oldest first.
pub fn due_deliveries(conn: &Connection, now: i64, limit: u32) -> StoreResult<Vec<DeliveryRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, job_id, run_id, deliver, output, attempts FROM cron_deliveries WHERE next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![now, limit], |r| {
            Ok(DeliveryRow {
                id: r.get(0)?,
                job_id: r.get(1)?,
                run_id: r.get(2)?,
                deliver: r.get(3)?,
                output: r.get(4)?,
                attempts: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The earliest next attempt, if any delivery is pending.
pub fn next_delivery_at(conn: &Connection) -> StoreResult<Option<i64>> {
    Ok(conn.query_row(
        "SELECT min(next_attempt_at) FROM cron_deliveries",
        [],
        |r| r.get(0),
    )?)
}

pub fn pending_deliveries(conn: &Connection) -> StoreResult<i64> {
    Ok(conn.query_row("SELECT count(*) FROM cron_deliveries", [], |r| r.get(0))?)
}

pub fn ack_delivery(conn: &Connection, id: i64) -> StoreResult<()> {
    conn.execute("DELETE FROM cron_deliveries WHERE id = ?1", [id])?;
    Ok(())
}

pub fn retry_delivery(conn: &Connection, id: i64, next: i64, error: &str) -> StoreResult<()> {
    conn.execute(
        "UPDATE cron_deliveries SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
        params![id, next, error],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().expect("open");
        c.pragma_update(None, "foreign_keys", "ON").expect("fk");
        super::super::migrations::apply(&mut c).expect("migrate");
        c
    }

    fn job(id: &str) -> JobRow {
        JobRow {
            id: id.into(),
            name: id.into(),
            schedule: "every 1m".into(),
            timezone: "UTC".into(),
            prompt: "p".into(),
            enabled: true,
            paused: false,
            state: "scheduled".into(),
            skills: Some(vec!["a".into()]),
            deliver: None,
            repeat_times: None,
            repeat_completed: 0,
            anchor_at: 0,
            created_at: 0,
            updated_at: 0,
            last_run_at: None,
            last_status: None,
            last_error: None,
            next_run_at: Some(60_000),
            origin: "api".into(),
        }
    }

    fn firing(job_id: &str, at: i64) -> HistoryRow {
        HistoryRow {
            id: 0,
            job_id: job_id.into(),
            trigger: "schedule".into(),
            scheduled_at: Some(at),
            fired_at: at,
            run_id: None,
            status: "skipped".into(),
            finished_at: Some(at),
            duration_ms: None,
            error: None,
        }
    }

    #[test]
    fn job_limit_history_bound_and_cascade() {
        let mut c = db();
        insert_job(&mut c, &job("a"), 2).expect("a");
        assert!(matches!(
            insert_job(&mut c, &job("a"), 2),
            Err(StoreError::Conflict(_))
        ));
        insert_job(&mut c, &job("b"), 2).expect("b");
        let e = insert_job(&mut c, &job("c"), 2).unwrap_err();
        assert!(e.to_string().contains("cron.max_jobs"), "{e}");
        assert_eq!(get_job(&c, "a").expect("get"), job("a"));
        for t in 0..10 {
            insert_history(&c, &firing("a", t), 3).expect("insert");
        }
        let h = list_history(&c, "a", 100).expect("list");
        assert_eq!(
            h.iter().map(|f| f.fired_at).collect::<Vec<_>>(),
            vec![9, 8, 7]
        );
        assert_eq!(
            insert_history(&c, &firing("zzz", 1), 3).expect("no job"),
            None
        );
        assert!(delete_job(&c, "a").expect("delete"));
        assert!(list_history(&c, "a", 100).expect("list").is_empty());
        assert!(!delete_job(&c, "a").expect("again"));
    }

    #[test]
    fn deliveries_are_bounded_oldest_dropped_and_retried_later() {
        let mut c = db();
        for i in 0..5 {
            insert_delivery(&mut c, "j", &format!("r{i}"), "telegram", "out", 100, 3)
                .expect("insert");
        }
        assert_eq!(pending_deliveries(&c).expect("count"), 3);
        let due = due_deliveries(&c, 100, 10).expect("due");
        assert_eq!(
            due.iter().map(|d| d.run_id.as_str()).collect::<Vec<_>>(),
            vec!["r2", "r3", "r4"]
        );
        retry_delivery(&c, due[0].id, 500, "hub answered 503").expect("retry");
        ack_delivery(&c, due[1].id).expect("ack");
        let due = due_deliveries(&c, 100, 10).expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(next_delivery_at(&c).expect("next"), Some(100));
        ack_delivery(&c, due[0].id).expect("ack");
        assert_eq!(next_delivery_at(&c).expect("next"), Some(500));
        let later = due_deliveries(&c, 500, 10).expect("due");
        assert_eq!(later[0].attempts, 1);
    }
}
