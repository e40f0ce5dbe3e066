//! Runs and their event logs.

use std::borrow::Cow;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::conversations::Page;
use super::{StoreError, StoreResult, cursor, ms_to_rfc3339, now_ms};

/// Run states; the last three are terminal.
pub const STATUSES: &[&str] = &[
    "queued",
    "running",
    "waiting_for_approval",
    "stopping",
    "completed",
    "failed",
    "cancelled",
];

pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub session_id: String,
    pub platform: String,
    pub input: serde_json::Value,
    pub instructions: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub run_id: String,
    pub status: String,
    pub session_id: String,
    pub platform: String,
    pub input: serde_json::Value,
    pub instructions: Option<String>,
    pub output: Option<String>,
    pub usage: Option<serde_json::Value>,
    pub error: Option<RunError>,
    pub pending_approval: Option<serde_json::Value>,
    pub tool_calls: i64,
    pub last_event_id: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// Approvals the agent asked for and did not get: `{reason: "expired"
    /// | "denied", command, description, pattern_key}`, in order.
    pub refused_approvals: Vec<serde_json::Value>,
    #[serde(skip)]
    pub gateway_run_id: Option<String>,
}

const COLUMNS: &str = "id, status, session_id, platform, input, instructions, output, usage, error_code, error_message, pending_approval, tool_calls, last_seq, created_at, started_at, finished_at, gateway_run_id, refused_approvals";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    let json = |i: usize| -> rusqlite::Result<Option<serde_json::Value>> {
        Ok(r.get::<_, Option<String>>(i)?
            .and_then(|t| serde_json::from_str(&t).ok()))
    };
    let code: Option<String> = r.get(8)?;
    let message: Option<String> = r.get(9)?;
    let created: i64 = r.get(13)?;
    let started: Option<i64> = r.get(14)?;
    let finished: Option<i64> = r.get(15)?;
    Ok(Run {
        run_id: r.get(0)?,
        status: r.get(1)?,
        session_id: r.get(2)?,
        platform: r.get(3)?,
        input: json(4)?.unwrap_or(serde_json::Value::Null),
        instructions: r.get(5)?,
        output: r.get(6)?,
        usage: json(7)?,
        error: code.map(|code| RunError {
            code,
            message: message.unwrap_or_default(),
        }),
        pending_approval: json(10)?,
        tool_calls: r.get(11)?,
        last_event_id: r.get(12)?,
        created_at: ms_to_rfc3339(created),
        started_at: started.map(ms_to_rfc3339),
        finished_at: finished.map(ms_to_rfc3339),
        duration_ms: finished.map(|f| f - started.unwrap_or(created)),
        gateway_run_id: r.get(16)?,
        refused_approvals: match json(17)? {
            Some(serde_json::Value::Array(items)) => items,
            _ => Vec::new(),
        },
    })
}

pub fn insert(conn: &Connection, r: &NewRun) -> StoreResult<Run> {
    let now = now_ms();
    conn.execute(
        "INSERT INTO runs (id, session_id, platform, status, input, instructions, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?6)",
        params![r.id, r.session_id, r.platform, r.input.to_string(), r.instructions, now],
    )?;
    get(conn, &r.id)
}

pub fn get(conn: &Connection, id: &str) -> StoreResult<Run> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"),
        [id],
        run_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("run `{id}` does not exist")))
}

pub fn list(
    conn: &Connection,
    session_id: Option<&str>,
    status: Option<&str>,
    limit: u32,
    after: Option<&str>,
) -> StoreResult<Page<Run>> {
    let (c_time, c_id) = cursor::time_id(after)?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM runs
         WHERE (?1 IS NULL OR session_id = ?1) AND (?2 IS NULL OR status = ?2)
           AND (?3 IS NULL OR created_at < ?3 OR (created_at = ?3 AND id < ?4))
         ORDER BY created_at DESC, id DESC LIMIT ?5"
    ))?;
    let items = stmt
        .query_map(
            params![session_id, status, c_time, c_id, limit as i64 + 1],
            run_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cursor::page(items, limit, |r| {
        cursor::time_id_text(&r.created_at, &r.run_id)
    }))
}

/// One event of a run's log, as the relay numbers it, the log keeps it and
/// subscribers get it. Cheap to clone: the name is usually a static string
/// ([`event_name`]) and the text is shared.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub name: Cow<'static, str>,
    pub data: Arc<str>,
}

/// Event names the gateway and the daemon send, kept as static strings so
/// a relayed event's name costs no allocation.
const KNOWN_NAMES: &[&str] = &[
    "message.delta",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "tool.started",
    "tool.completed",
    "tool.progress",
    "approval.request",
    "approval.responded",
    "approval.expired",
    "message",
];

/// An event's name: the static string when it is a known one.
pub fn event_name(name: &str) -> Cow<'static, str> {
    match KNOWN_NAMES.iter().find(|k| **k == name) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(name.to_owned()),
    }
}

/// Most events in one block of the log: one relay batch
/// (`runs::sequencer`).
const BLOCK_EVENTS: usize = 256;
/// A block is closed once its packed events pass this many bytes.
const BLOCK_BYTES: usize = 256 * 1024;

/// Append events (already numbered) and move `last_seq`, in one
/// transaction.
pub fn append_events<'a>(
    conn: &mut Connection,
    run_id: &str,
    events: impl IntoIterator<Item = &'a StoredEvent>,
) -> StoreResult<()> {
    let tx = conn.transaction()?;
    append_events_in(&tx, run_id, events)?;
    tx.commit()?;
    Ok(())
}

/// [`append_events`] inside the caller's transaction: one
/// `run_event_blocks` row per run of consecutive seqs, at most
/// [`BLOCK_EVENTS`] events or about [`BLOCK_BYTES`] each.
pub fn append_events_in<'a>(
    tx: &Connection,
    run_id: &str,
    events: impl IntoIterator<Item = &'a StoredEvent>,
) -> StoreResult<()> {
    let now = now_ms();
    let mut insert = tx.prepare_cached(
        "INSERT INTO run_event_blocks (run_id, first_seq, last_seq, events, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut block = Vec::new();
    let (mut first, mut next, mut count) = (0i64, 0i64, 0usize);
    for e in events {
        if count > 0 && (e.seq != next || count >= BLOCK_EVENTS || block.len() >= BLOCK_BYTES) {
            insert.execute(params![run_id, first, next - 1, block, now])?;
            block.clear();
            count = 0;
        }
        if count == 0 {
            first = e.seq;
        }
        for part in [e.name.as_bytes(), e.data.as_bytes()] {
            let len = u32::try_from(part.len())
                .map_err(|_| StoreError::Invalid("a run event is larger than 4 GiB".into()))?;
            block.extend_from_slice(&len.to_le_bytes());
            block.extend_from_slice(part);
        }
        next = e.seq + 1;
        count += 1;
    }
    if count == 0 {
        return Ok(());
    }
    insert.execute(params![run_id, first, next - 1, block, now])?;
    tx.execute(
        "UPDATE runs SET last_seq = ?2, updated_at = ?3 WHERE id = ?1",
        params![run_id, next - 1, now],
    )?;
    Ok(())
}

fn corrupt_block() -> StoreError {
    StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
        2,
        rusqlite::types::Type::Blob,
        "a run event block is corrupt".into(),
    ))
}

/// Call `f(seq, name, data)` for each event of one block, in order, until
/// it returns `false`. A block that does not hold exactly
/// `first..=last` well-formed events is an error, never a panic.
fn each_in_block(
    blob: &[u8],
    first: i64,
    last: i64,
    mut f: impl FnMut(i64, &str, &str) -> bool,
) -> StoreResult<()> {
    fn field<'b>(rest: &mut &'b [u8]) -> StoreResult<&'b str> {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(corrupt_block)?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt_block());
        }
        let (text, tail) = tail.split_at(len);
        *rest = tail;
        std::str::from_utf8(text).map_err(|_| corrupt_block())
    }
    let mut rest = blob;
    let mut seq = first;
    while !rest.is_empty() {
        let name = field(&mut rest)?;
        let data = field(&mut rest)?;
        if seq > last {
            return Err(corrupt_block());
        }
        if !f(seq, name, data) {
            return Ok(());
        }
        seq += 1;
    }
    if seq != last + 1 {
        return Err(corrupt_block());
    }
    Ok(())
}

/// Events after `after_seq`, at most `limit`: rows a build before blocks
/// logged first (they all come before a run's blocks), then blocks.
pub fn events_after(
    conn: &Connection,
    run_id: &str,
    after_seq: i64,
    limit: u32,
) -> StoreResult<Vec<StoredEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, name, data FROM run_events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut out = stmt
        .query_map(params![run_id, after_seq, limit as i64], |r| {
            Ok(StoredEvent {
                seq: r.get(0)?,
                name: event_name(r.get_ref(1)?.as_str()?),
                data: Arc::from(r.get_ref(2)?.as_str()?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let limit = limit as usize;
    let after = out.last().map_or(after_seq, |e| e.seq);
    // From the block holding `after + 1` on (the primary key's order).
    let mut stmt = conn.prepare_cached(
        "SELECT first_seq, last_seq, events FROM run_event_blocks
         WHERE run_id = ?1 AND last_seq > ?2
           AND first_seq >= (SELECT coalesce(max(first_seq), 0) FROM run_event_blocks
                             WHERE run_id = ?1 AND first_seq <= ?2 + 1)
         ORDER BY first_seq",
    )?;
    let mut rows = stmt.query(params![run_id, after])?;
    while out.len() < limit {
        let Some(row) = rows.next()? else { break };
        each_in_block(
            row.get_ref(2)?.as_blob().map_err(|_| corrupt_block())?,
            row.get(0)?,
            row.get(1)?,
            |seq, name, data| {
                if seq > after {
                    out.push(StoredEvent {
                        seq,
                        name: event_name(name),
                        data: Arc::from(data),
                    });
                }
                out.len() < limit
            },
        )?;
    }
    Ok(out)
}

/// A change to a run's row.
#[derive(Debug, Clone, Default)]
pub struct RunUpdate {
    pub status: Option<&'static str>,
    pub gateway_run_id: Option<String>,
    pub started: bool,
    pub output: Option<String>,
    pub usage: Option<serde_json::Value>,
    pub error: Option<(String, String)>,
    /// `Some(None)` clears it.
    pub pending_approval: Option<Option<serde_json::Value>>,
    pub tool_calls: Option<i64>,
    /// The whole list of refused approvals (replaces the stored one).
    pub refused_approvals: Option<serde_json::Value>,
}

pub fn update(conn: &Connection, id: &str, u: &RunUpdate) -> StoreResult<()> {
    let now = now_ms();
    let finished = u.status.is_some_and(is_terminal).then_some(now);
    conn.execute(
        // A finished run stays finished: a late intermediate update (the
        // stop handler's `stopping` landing after the relay recorded
        // `cancelled`) never moves it back.
        "UPDATE runs SET
            status = CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN status
                          ELSE coalesce(?2, status) END,
            gateway_run_id = coalesce(?3, gateway_run_id),
            started_at = CASE WHEN ?4 AND started_at IS NULL THEN ?10 ELSE started_at END,
            output = coalesce(?5, output),
            usage = coalesce(?6, usage),
            error_code = coalesce(?7, error_code),
            error_message = coalesce(?8, error_message),
            pending_approval = CASE WHEN ?11 THEN ?9 ELSE pending_approval END,
            tool_calls = coalesce(?12, tool_calls),
            finished_at = coalesce(finished_at, ?13),
            refused_approvals = coalesce(?14, refused_approvals),
            updated_at = ?10
         WHERE id = ?1",
        params![
            id,
            u.status,
            u.gateway_run_id,
            u.started,
            u.output,
            u.usage.as_ref().map(|v| v.to_string()),
            u.error.as_ref().map(|e| e.0.clone()),
            u.error.as_ref().map(|e| e.1.clone()),
            u.pending_approval
                .as_ref()
                .and_then(|p| p.as_ref().map(|v| v.to_string())),
            now,
            u.pending_approval.is_some(),
            u.tool_calls,
            finished,
            u.refused_approvals.as_ref().map(|v| v.to_string()),
        ],
    )?;
    Ok(())
}

/// Runs not in a terminal state (at start-up they can only be leftovers of
/// a previous process).
pub fn unfinished(conn: &Connection) -> StoreResult<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, last_seq FROM runs WHERE status NOT IN ('completed', 'failed', 'cancelled')",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The text a run's logged `message.delta` events add up to, at most
/// `cap` bytes (a delta that would pass the cap is left out, as the relay
/// does). Rebuilds the partial output of a run a dead process left behind.
pub fn logged_output(conn: &Connection, run_id: &str, cap: usize) -> StoreResult<String> {
    #[derive(serde::Deserialize)]
    struct Delta<'a> {
        #[serde(borrow, default)]
        delta: Option<std::borrow::Cow<'a, str>>,
    }
    let mut out = String::new();
    let mut add = |data: &str| {
        if let Ok(Delta { delta: Some(d) }) = serde_json::from_str::<Delta<'_>>(data) {
            push_capped(&mut out, &d, cap);
        }
    };
    // Rows a build before blocks logged come first, then the blocks.
    let mut stmt = conn.prepare_cached(
        "SELECT data FROM run_events WHERE run_id = ?1 AND name = 'message.delta' ORDER BY seq",
    )?;
    let mut rows = stmt.query([run_id])?;
    while let Some(row) = rows.next()? {
        add(row.get_ref(0)?.as_str().unwrap_or_default());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT first_seq, last_seq, events FROM run_event_blocks WHERE run_id = ?1 ORDER BY first_seq",
    )?;
    let mut rows = stmt.query([run_id])?;
    while let Some(row) = rows.next()? {
        each_in_block(
            row.get_ref(2)?.as_blob().map_err(|_| corrupt_block())?,
            row.get(0)?,
            row.get(1)?,
            |_, name, data| {
                if name == "message.delta" {
                    add(data);
                }
                true
            },
        )?;
    }
    Ok(out)
}

/// Append `piece` to a run's output unless that would pass `cap` bytes.
pub fn push_capped(out: &mut String, piece: &str, cap: usize) {
    if out.len() + piece.len() <= cap {
        out.push_str(piece);
    }
}

/// Delete finished runs (and their events) older than `before_ms`.
pub fn prune(conn: &Connection, before_ms: i64) -> StoreResult<usize> {
    Ok(conn.execute(
        "DELETE FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1",
        [before_ms],
    )?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};

    #[tokio::test]
    async fn a_finished_run_is_never_moved_back_by_a_late_update() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open_blocking(&dir.path().join("t.db"), &StoreOptions::default()).expect("open");
        let run = store
            .write(|c| {
                c.execute(
                    "INSERT INTO sessions (id, platform, title, created_at, updated_at, message_count)
                     VALUES ('s1', 'api', NULL, 0, 0, 0)",
                    [],
                )?;
                insert(
                    c,
                    &NewRun {
                        id: "run_1".into(),
                        session_id: "s1".into(),
                        platform: "api".into(),
                        input: serde_json::json!("hi"),
                        instructions: None,
                    },
                )?;
                update(
                    c,
                    "run_1",
                    &RunUpdate {
                        status: Some("cancelled"),
                        ..RunUpdate::default()
                    },
                )?;
                // The stop handler's update, landing after the relay's.
                update(
                    c,
                    "run_1",
                    &RunUpdate {
                        status: Some("stopping"),
                        ..RunUpdate::default()
                    },
                )?;
                get(c, "run_1")
            })
            .await
            .expect("write");
        assert_eq!(run.status, "cancelled");
        assert!(run.finished_at.is_some());
    }

    /// A session `s1` and a queued run `id` in it (for tests elsewhere too).
    pub(crate) fn session_and_run(c: &Connection, id: &str) -> StoreResult<Run> {
        c.execute(
            "INSERT OR IGNORE INTO sessions (id, platform, title, created_at, updated_at, message_count)
             VALUES ('s1', 'api', NULL, 0, 0, 0)",
            [],
        )?;
        insert(
            c,
            &NewRun {
                id: id.into(),
                session_id: "s1".into(),
                platform: "api".into(),
                input: serde_json::json!("hi"),
                instructions: None,
            },
        )
    }

    fn delta(seq: i64) -> StoredEvent {
        StoredEvent {
            seq,
            name: event_name("message.delta"),
            data: Arc::from(format!(r#"{{"event":"message.delta","delta":"{seq} "}}"#)),
        }
    }

    fn seqs(events: &[StoredEvent]) -> Vec<i64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_are_logged_in_blocks_and_read_back_from_inside_one() {
        let mut c = Connection::open_in_memory().expect("open");
        crate::store::migrations::apply(&mut c).expect("migrate");
        session_and_run(&c, "run_1").expect("run");
        let first: Vec<StoredEvent> = (1..=600).map(delta).collect();
        append_events(&mut c, "run_1", &first).expect("append");
        append_events(&mut c, "run_1", &[delta(601)]).expect("append one");
        let blocks: Vec<(i64, i64)> = c
            .prepare("SELECT first_seq, last_seq FROM run_event_blocks ORDER BY first_seq")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(blocks, [(1, 256), (257, 512), (513, 600), (601, 601)]);
        assert_eq!(get(&c, "run_1").expect("run").last_event_id, 601);

        let all = events_after(&c, "run_1", 0, 1000).expect("read");
        assert_eq!(seqs(&all), (1..=601).collect::<Vec<_>>());
        assert_eq!(&*all[299].data, &*delta(300).data);
        assert_eq!(all[299].name, "message.delta");
        let page = events_after(&c, "run_1", 300, 100).expect("read");
        assert_eq!(
            seqs(&page),
            (301..=400).collect::<Vec<_>>(),
            "from inside a block"
        );
        let page = events_after(&c, "run_1", 250, 10).expect("read");
        assert_eq!(
            seqs(&page),
            (251..=260).collect::<Vec<_>>(),
            "across two blocks"
        );
        assert_eq!(
            seqs(&events_after(&c, "run_1", 600, 500).expect("read")),
            [601]
        );
        assert!(
            events_after(&c, "run_1", 601, 500)
                .expect("read")
                .is_empty()
        );
        let text = logged_output(&c, "run_1", usize::MAX).expect("output");
        assert!(
            text.starts_with("1 2 3 ") && text.ends_with("600 601 "),
            "{text}"
        );
    }

    /// A store written before 0011 keeps its `run_events` rows: a run
    /// caught by the upgrade reads them, then what this build logged.
    #[test]
    fn an_upgraded_store_reads_old_rows_then_blocks() {
        let mut c = Connection::open_in_memory().expect("open");
        // Everything before the blocks, whatever number they get at merge.
        let migrations = crate::store::migrations::MIGRATIONS;
        let blocks = migrations
            .iter()
            .position(|(name, _)| name.ends_with("_run_event_blocks"))
            .expect("the blocks migration");
        let (before, _) = migrations.split_at(blocks);
        for (version, (_, sql)) in before.iter().enumerate() {
            c.execute_batch(sql).expect("old schema");
            c.pragma_update(None, "user_version", version as i64 + 1)
                .expect("version");
        }
        session_and_run(&c, "run_1").expect("run");
        for seq in 1..=5 {
            c.execute(
                "INSERT INTO run_events (run_id, seq, name, data, created_at) VALUES ('run_1', ?1, 'message.delta', ?2, 0)",
                params![seq, &*delta(seq).data],
            )
            .expect("old row");
        }
        c.execute("UPDATE runs SET last_seq = 5 WHERE id = 'run_1'", [])
            .expect("last_seq");
        crate::store::migrations::apply(&mut c).expect("upgrade");
        // What the new build logs goes on from `last_seq`.
        let last = unfinished(&c).expect("unfinished")[0].1;
        let new: Vec<StoredEvent> = (last + 1..=last + 3).map(delta).collect();
        append_events(&mut c, "run_1", &new).expect("append");

        assert_eq!(
            seqs(&events_after(&c, "run_1", 0, 500).expect("read")),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(&events_after(&c, "run_1", 3, 3).expect("read")),
            [4, 5, 6]
        );
        assert_eq!(
            seqs(&events_after(&c, "run_1", 5, 500).expect("read")),
            [6, 7, 8]
        );
        assert_eq!(
            logged_output(&c, "run_1", usize::MAX).expect("output"),
            "1 2 3 4 5 6 7 8 "
        );
        // Retention removes both.
        c.execute("UPDATE runs SET finished_at = 1 WHERE id = 'run_1'", [])
            .expect("finish");
        assert_eq!(prune(&c, 2).expect("prune"), 1);
        let left: i64 = c
            .query_row(
                "SELECT (SELECT count(*) FROM run_events) + (SELECT count(*) FROM run_event_blocks)",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(left, 0);
    }

    #[test]
    fn a_corrupt_block_is_an_error_not_a_panic() {
        let mut good = Vec::new();
        for part in [&b"message.delta"[..], b"{}"] {
            good.extend_from_slice(&(part.len() as u32).to_le_bytes());
            good.extend_from_slice(part);
        }
        assert!(each_in_block(&good, 7, 7, |_, _, _| true).is_ok());
        assert!(
            each_in_block(&good, 7, 8, |_, _, _| true).is_err(),
            "too few events"
        );
        assert!(
            each_in_block(&good, 7, 6, |_, _, _| true).is_err(),
            "too many"
        );
        for cut in 0..good.len() {
            let r = each_in_block(&good[..cut], 7, 7, |_, _, _| true);
            assert!(r.is_err(), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(each_in_block(&huge, 7, 7, |_, _, _| true).is_err());
        let mut bad_utf8 = good;
        bad_utf8[4] = 0xff;
        assert!(each_in_block(&bad_utf8, 7, 7, |_, _, _| true).is_err());
    }
}
