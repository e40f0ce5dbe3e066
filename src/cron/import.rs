//! One-time import of the gateway's own cron jobs (`HERMES_HOME/cron/
//! jobs.json`) into SQLite. Imported jobs are removed from that file (so the
//! gateway does not fire them too); jobs that cannot be read stay there and
//! are named in the log. Runs once per database (a `daemon_state` key).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{CronError, CronService, active, next_for, parse_schedule, spec};
use crate::store::cron::{self as db, JobRow};

const DONE_KEY: &str = "cron.jobs_json_imported";
/// Largest `jobs.json` read (the gateway caps a prompt at 5,000 characters;
/// 4 MiB is hundreds of jobs).
pub const MAX_JOBS_JSON_BYTES: u64 = 4 * 1024 * 1024;
/// Most jobs imported; the rest stay in `jobs.json` (named in one line).
pub const MAX_IMPORTED_JOBS: usize = 500;

fn iso_ms(v: Option<&Value>) -> Option<i64> {
    let s = v?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc().timestamp_millis())
        })
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// One Hermes job to a row, or why not.
pub fn map_job(j: &Map<String, Value>, now: i64) -> Result<JobRow, String> {
    let prompt = j
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.trim().is_empty())
        .ok_or("no prompt")?
        .to_owned();
    let schedule = match j.get("schedule") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => spec::schedule_object(o).map_err(|e| e.to_string())?,
        _ => return Err("no schedule".into()),
    };
    parse_schedule(&schedule, "UTC").map_err(|e| e.to_string())?;
    let id = j
        .get("id")
        .and_then(Value::as_str)
        .filter(|i| valid_id(i))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("cron_{}", crate::auth::random_token(8)));
    let state = j
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("scheduled");
    let repeat = j.get("repeat").and_then(Value::as_object);
    let next_run_at = iso_ms(j.get("next_run_at"));
    let created_at = iso_ms(j.get("created_at")).unwrap_or(now);
    Ok(JobRow {
        name: j
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| prompt.trim().chars().take(50).collect()),
        id,
        schedule,
        timezone: "UTC".into(),
        prompt,
        enabled: j.get("enabled").and_then(Value::as_bool).unwrap_or(true),
        paused: state == "paused",
        state: if state == "completed" {
            "completed"
        } else {
            "scheduled"
        }
        .into(),
        skills: j.get("skills").and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        }),
        deliver: j
            .get("deliver")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
        repeat_times: repeat.and_then(|r| r.get("times")).and_then(Value::as_i64),
        repeat_completed: repeat
            .and_then(|r| r.get("completed"))
            .and_then(Value::as_i64)
            .unwrap_or(0),
        // An interval keeps the gateway's rhythm: it counts from its next firing.
        anchor_at: next_run_at.unwrap_or(created_at),
        created_at,
        updated_at: now,
        last_run_at: iso_ms(j.get("last_run_at")),
        last_status: j
            .get("last_status")
            .and_then(Value::as_str)
            .map(str::to_owned),
        last_error: j
            .get("last_error")
            .and_then(Value::as_str)
            .map(str::to_owned),
        next_run_at,
        origin: "import".into(),
    })
}

/// The gateway's jobs file, beneath the Hermes home.
const JOBS_FILE: &str = "cron/jobs.json";

/// The parsed file (`None`: absent), read with a cap and without
/// following a symlink; serde_json limits nesting to 128 levels.
fn read(path: &Path) -> Result<Option<Value>, crate::agent_file::ReadError> {
    let Some(b) = crate::agent_file::read_capped(path, MAX_JOBS_JSON_BYTES)? else {
        return Ok(None);
    };
    serde_json::from_slice(&b).map(Some).map_err(|e| {
        // Category and position only: the message could quote a prompt.
        let why = format!("not valid JSON ({:?} at line {})", e.classify(), e.line());
        std::io::Error::new(std::io::ErrorKind::InvalidData, why).into()
    })
}

/// Rewrite the file atomically with only `remaining` jobs.
fn write_back(home: &Path, mut doc: Value, remaining: Vec<Value>) -> std::io::Result<()> {
    if let Value::Object(o) = &mut doc {
        o.insert("jobs".into(), Value::Array(remaining));
        o.insert(
            "updated_at".into(),
            Value::String(chrono::Utc::now().to_rfc3339()),
        );
    }
    let home = crate::dir_handle::DirHandle::open_home(home)?;
    let mode = home.mode_or(Path::new(JOBS_FILE), 0o600);
    let text = serde_json::to_string_pretty(&doc)?;
    home.write_atomic(Path::new(JOBS_FILE), text.as_bytes(), mode)
}

pub(super) async fn import_once(cron: &Arc<CronService>, home: &Path) -> Result<(), CronError> {
    if cron.store.get_state(DONE_KEY).await?.is_some() {
        return Ok(());
    }
    let path: PathBuf = home.join(JOBS_FILE);
    let h = home.to_path_buf();
    let doc = match crate::identity::spawn_as_agent(move || read(&h.join(JOBS_FILE))).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            // Left for a later start: the file may be mid-write.
            tracing::warn!(path = %path.display(), error = %e, "cannot read the gateway's cron jobs; not imported");
            return Ok(());
        }
        Err(e) => return Err(CronError::Store(e.into())),
    };
    let Some(doc) = doc else {
        cron.store.set_state(DONE_KEY, "no file".into()).await?;
        return Ok(());
    };
    let jobs = doc
        .get("jobs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let now = cron.clock.now_ms();
    let mut remaining = Vec::new();
    let mut imported = 0usize;
    let mut over_cap = 0usize;
    for j in jobs {
        if imported >= MAX_IMPORTED_JOBS {
            over_cap += 1;
            remaining.push(j);
            continue;
        }
        let row = match j.as_object().map(|o| map_job(o, now)) {
            Some(Ok(r)) => r,
            Some(Err(why)) => {
                let job = j
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
                tracing::warn!(%job, reason = %why, "gateway cron job not imported; left in jobs.json");
                remaining.push(j);
                continue;
            }
            None => {
                remaining.push(j);
                continue;
            }
        };
        let mut row = row;
        if row.next_run_at.is_none() && active(&row) {
            row.next_run_at = next_for(&row, now);
        }
        if !active(&row) {
            row.next_run_at = None;
        }
        let r = row.clone();
        match cron
            .store
            .write(move |c| db::insert_job(c, &r, usize::MAX))
            .await
        {
            Ok(()) | Err(crate::store::StoreError::Conflict(_)) => {
                imported += 1;
                tracing::info!(job_id = %row.id, schedule = %row.schedule, "imported a cron job from the gateway's jobs.json");
            }
            Err(e) => return Err(e.into()),
        }
    }
    if over_cap > 0 {
        tracing::warn!(
            left = over_cap,
            max = MAX_IMPORTED_JOBS,
            "gateway cron jobs over the import cap; left in jobs.json"
        );
    }
    let total = imported + remaining.len();
    if imported > 0 {
        let h = home.to_path_buf();
        let left = remaining.len();
        match crate::identity::spawn_as_agent(move || write_back(&h, doc, remaining)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(path = %path.display(), error = %e, "imported cron jobs could not be removed from jobs.json; the gateway may fire them too");
            }
            Err(e) => return Err(CronError::Store(e.into())),
        }
        tracing::info!(imported, left, total, path = %path.display(), "gateway cron jobs imported");
    }
    cron.store
        .set_state(DONE_KEY, format!("imported {imported} of {total}"))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jobs_json_is_read_capped_and_never_through_a_symlink() {
        use crate::agent_file::ReadError;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("jobs.json");
        assert!(read(&p).expect("absent").is_none());
        std::fs::write(&p, r#"{"jobs": [], "secret": "PROMPT-TEXT"#).expect("write");
        let e = read(&p).expect_err("invalid");
        assert!(!e.to_string().contains("PROMPT-TEXT"), "{e}");
        let big = format!(
            "{{\"jobs\": [], \"pad\": \"{}\"}}",
            "x".repeat(MAX_JOBS_JSON_BYTES as usize)
        );
        std::fs::write(&p, big).expect("write");
        assert!(matches!(read(&p), Err(ReadError::TooLarge { .. })));
        let outside = dir.path().join("outside.json");
        std::fs::write(&outside, r#"{"jobs": []}"#).expect("write");
        std::fs::remove_file(&p).expect("rm");
        std::os::unix::fs::symlink(&outside, &p).expect("symlink");
        assert!(matches!(read(&p), Err(ReadError::NotRegular)));
    }

    #[test]
    fn maps_a_hermes_job() {
        let j = json!({"id": "a1b2c3d4e5f6", "name": "news", "prompt": "summarise", "skills": ["web"],
            "schedule": {"kind": "cron", "expr": "0 8 * * *", "display": "0 8 * * *"},
            "repeat": {"times": 5, "completed": 2}, "enabled": true, "state": "paused",
            "deliver": "telegram", "next_run_at": "2030-01-01T08:00:00+00:00"});
        let r = map_job(j.as_object().expect("obj"), 0).expect("maps");
        assert_eq!(r.id, "a1b2c3d4e5f6");
        assert_eq!(r.schedule, "0 8 * * *");
        assert!(r.paused);
        assert_eq!(r.repeat_times, Some(5));
        assert_eq!(r.repeat_completed, 2);
        assert_eq!(r.deliver.as_deref(), Some("telegram"));
        let bad = json!({"id": "x", "prompt": "p", "schedule": "nonsense here"});
        assert!(map_job(bad.as_object().expect("obj"), 0).is_err());
    }
}
