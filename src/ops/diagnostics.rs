//! `GET /diagnostics`: what support needs without SSH, as one `tar.gz`:
//! versions, the effective configuration, the agent's status and recent
//! transitions, recent runs (ids, states, errors), the hub link, the
//! drain and activity, database stats with `PRAGMA quick_check`, disk and
//! memory, and the last lines of each log. Every entry is capped and
//! passed through `ops::redact`; the whole archive is built in memory
//! (at most [`MAX_UNCOMPRESSED`] before compression) on the blocking pool.

use std::io::Write;
use std::sync::Arc;

use serde_json::{Value, json};

use super::Ops;
use super::logs::{Caps, Filter};
use super::redact::redact;
use crate::agent::AgentHandle;
use crate::config::Config;
use crate::hub::HubLink;
use crate::store::{Store, StoreError};

/// Files in the archive (for the test and the document).
pub const FILES: &[&str] = &[
    "versions.json",
    "config.txt",
    "agent.json",
    "runs.json",
    "hub.json",
    "database.json",
    "system.json",
    "logs/gateway.log",
    "logs/daemon.log",
];
/// Bound on the archive's content before compression.
pub const MAX_UNCOMPRESSED: usize = 8 * 1024 * 1024;
/// Log lines per source, and their bytes.
const LOG_TAIL: Caps = Caps {
    lines: 2000,
    bytes: 2 * 1024 * 1024,
};
/// Recent runs and transitions listed.
const RECENT: u32 = 50;
/// Cap of any one JSON entry.
const MAX_ENTRY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DiagnosticsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building the archive: {0}")]
    Archive(#[from] std::io::Error),
    #[error("building the archive: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What the bundle reads from the running daemon.
pub struct Sources<'a> {
    pub config: &'a Arc<Config>,
    pub store: &'a Store,
    pub agent: &'a AgentHandle,
    pub link: &'a HubLink,
    pub ops: &'a Arc<Ops>,
}

/// Build the archive (gzip-compressed tar).
pub async fn bundle(s: Sources<'_>) -> Result<Vec<u8>, DiagnosticsError> {
    let transitions = s
        .store
        .read(|c| crate::store::agent::recent(c, RECENT))
        .await?;
    let runs = s
        .store
        .read(|c| crate::store::runs::list(c, None, None, RECENT, None))
        .await?;
    let db = s.store.read(database_stats).await?;
    let activity = s.ops.activity().await?;
    let status = s.agent.status();
    let clock = s.link.clock();
    let versions = json!({
        "daemon": crate::VERSION,
        "schema": s.store.schema_version(),
        "agent_release": status.release,
        "generated_at": crate::store::ms_to_rfc3339(crate::store::now_ms()),
    });
    let agent = json!({
        "status": status,
        "transitions": transitions,
    });
    let runs: Vec<Value> = runs
        .items
        .iter()
        .map(|r| {
            json!({
                "run_id": r.run_id,
                "status": r.status,
                "platform": r.platform,
                "created_at": r.created_at,
                "finished_at": r.finished_at,
                "error": r.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
            })
        })
        .collect();
    let hub = json!({
        "url_set": s.config.hub.url.is_some(),
        "access": s.link.access().as_str(),
        "open_runs": s.link.open_runs(),
        "cron_jobs_due": s.link.cron_jobs_due(),
        "clock_skew_s": clock.skew_s,
        "clock_warning": clock.warning,
        "drain": s.ops.drain.view(),
        "activity": activity,
    });
    let config_text = format!("{:#?}\n", s.config);
    let data_dir = s.config.data_dir.clone();
    let (gw, dm) = (s.ops.gateway_log.clone(), s.ops.daemon_log.clone());
    let json_entries = vec![
        ("versions.json", versions),
        ("agent.json", agent),
        ("runs.json", Value::Array(runs)),
        ("hub.json", hub),
        ("database.json", db),
    ];
    let archive = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut entries: Vec<(&str, Vec<u8>)> = Vec::new();
        for (name, v) in json_entries {
            entries.push((name, capped_json(&v)));
        }
        entries.push((
            "config.txt",
            cap(redact(&config_text).into_owned().into_bytes()),
        ));
        entries.push(("system.json", capped_json(&system(&data_dir))));
        for (name, files) in [("logs/gateway.log", gw), ("logs/daemon.log", dm)] {
            let page = files.tail(&Filter::default(), LOG_TAIL);
            let mut text = String::new();
            for l in page.items {
                text.push_str(&l.time);
                text.push(' ');
                if let Some(s) = &l.stream {
                    text.push_str(s);
                    text.push(' ');
                }
                text.push_str(&l.text);
                text.push('\n');
            }
            entries.push((name, text.into_bytes()));
        }
        write_archive(entries)
    })
    .await??;
    Ok(archive)
}

fn cap(mut v: Vec<u8>) -> Vec<u8> {
    v.truncate(MAX_ENTRY);
    v
}

/// Pretty JSON, redacted, capped.
fn capped_json(v: &Value) -> Vec<u8> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    cap(redact(&text).into_owned().into_bytes())
}

fn write_archive(entries: Vec<(&str, Vec<u8>)>) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = (crate::store::now_ms() / 1000).max(0) as u64;
    let mut total = 0usize;
    for (name, mut data) in entries {
        // Whatever would pass the bound is cut (the logs come last).
        data.truncate(MAX_UNCOMPRESSED.saturating_sub(total));
        total += data.len();
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, data.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

fn database_stats(c: &rusqlite::Connection) -> Result<Value, StoreError> {
    let pragma = |name: &str| -> Result<i64, StoreError> {
        Ok(c.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))?)
    };
    // At most 20 problems listed; `ok` when none.
    let mut stmt = c.prepare("PRAGMA quick_check(20)")?;
    let check: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    let count = |table: &str| -> Result<i64, StoreError> {
        Ok(c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
    };
    Ok(json!({
        "page_size": pragma("page_size")?,
        "page_count": pragma("page_count")?,
        "freelist_count": pragma("freelist_count")?,
        "quick_check": check,
        "rows": {
            "runs": count("runs")?,
            "messages": count("messages")?,
            "sessions": count("sessions")?,
            "cron_jobs": count("cron_jobs")?,
        },
    }))
}

/// Disk of the data volume, memory of the VM and of the daemon.
fn system(data_dir: &std::path::Path) -> Value {
    let disk = nix_statvfs(data_dir);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "data_volume": disk,
        "mem_total_kib": kib(&meminfo, "MemTotal:"),
        "mem_available_kib": kib(&meminfo, "MemAvailable:"),
        "daemon_rss_kib": kib(&status, "VmRSS:"),
        "daemon_hwm_kib": kib(&status, "VmHWM:"),
        "loadavg": load.split_whitespace().take(3).collect::<Vec<_>>(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn nix_statvfs(path: &std::path::Path) -> Value {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Value::Null;
    };
    // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Value::Null;
    }
    let frsize = s.f_frsize as u64;
    json!({
        "total_bytes": s.f_blocks as u64 * frsize,
        "available_bytes": s.f_bavail as u64 * frsize,
    })
}
