//! Reading the gateway's `state.db`, which the agent can rewrite at will:
//! opened read-only and never through a symlink, schema untrusted (views,
//! triggers and non-innocuous functions in the schema refused), defensive
//! mode, no extension loading, every SQLite limit low, a deadline on each
//! batch (progress handler), and no value loaded that is larger than
//! needed: sizes are checked with `octet_length` (which SQLite answers
//! without reading the value) before a value is selected, and an
//! oversized message content is read as a prefix through incremental blob
//! I/O. Blocking: call from the blocking pool.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::{Connection, MAIN_DB, OpenFlags, OptionalExtension, params};

use crate::store::conversations::MAX_CONTENT_BYTES;

/// Messages read per pass, at most.
pub const BATCH: i64 = 2000;
/// Bytes of message text one pass holds, at most (then the pass ends and
/// the next one goes on from there).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Largest value SQLite may load or build on this connection
/// (`SQLITE_LIMIT_LENGTH`): larger ones are never selected.
pub const MAX_VALUE_BYTES: i32 = 1024 * 1024;
/// Longest one pass may run before SQLite is interrupted.
pub const PASS_DEADLINE: Duration = Duration::from_secs(10);
/// Longest session id, source, title and role taken.
const MAX_SHORT_BYTES: i64 = 512;

/// One message read from the gateway's store.
#[derive(Debug, Clone)]
pub struct SourceMessage {
    pub id: i64,
    /// `None` when too long to be a real one.
    pub session_id: Option<String>,
    /// The session's `source`; `None` when the session cannot be read.
    pub source: Option<String>,
    pub title: Option<String>,
    pub role: String,
    pub content: Option<String>,
    pub tool_calls: Option<String>,
    pub timestamp: f64,
    pub tokens: Option<i64>,
}

/// Open `db` for reading as untrusted input. Not immutable, so rows still
/// in its WAL are seen.
pub fn open(db: &Path) -> rusqlite::Result<Connection> {
    open_with_deadline(db, PASS_DEADLINE)
}

fn open_with_deadline(db: &Path, pass: Duration) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    // Extension loading is off unless enabled, and nothing here enables it.
    for (limit, value) in [
        (Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES),
        (Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000),
        (Limit::SQLITE_LIMIT_COLUMN, 200),
        (Limit::SQLITE_LIMIT_EXPR_DEPTH, 100),
        (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 4),
        (Limit::SQLITE_LIMIT_FUNCTION_ARG, 8),
        (Limit::SQLITE_LIMIT_ATTACHED, 0),
        (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 100),
        (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 16),
        (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 1),
        (Limit::SQLITE_LIMIT_WORKER_THREADS, 0),
    ] {
        conn.set_limit(limit, value)?;
    }
    conn.busy_timeout(Duration::from_secs(2))?;
    let deadline = Instant::now() + pass;
    conn.progress_handler(10_000, Some(move || Instant::now() > deadline))?;
    Ok(conn)
}

/// Messages after `after`, at most `BATCH` of them and about
/// `MAX_BATCH_BYTES` of text. The second value says whether there may be
/// more.
pub fn read_batch(db: &Path, after: i64) -> rusqlite::Result<(Vec<SourceMessage>, bool)> {
    let conn = open(db)?;
    let mut stmt = conn.prepare(
        "SELECT m.id,
                CASE WHEN octet_length(m.session_id) <= ?3 THEN m.session_id END,
                CASE WHEN octet_length(m.role) <= ?3 THEN m.role END,
                CASE WHEN octet_length(m.content) <= ?4 THEN m.content END,
                octet_length(m.content),
                CASE WHEN octet_length(m.tool_calls) <= ?4 THEN m.tool_calls END,
                CASE WHEN typeof(m.timestamp) IN ('real', 'integer') THEN m.timestamp END,
                CASE WHEN typeof(m.token_count) = 'integer' THEN m.token_count END
         FROM messages m
         WHERE m.id > ?1 ORDER BY m.id LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![
        after,
        BATCH,
        MAX_SHORT_BYTES,
        MAX_CONTENT_BYTES as i64
    ])?;
    let mut out: Vec<SourceMessage> = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    while let Some(r) = rows.next()? {
        if bytes >= MAX_BATCH_BYTES {
            more = true;
            break;
        }
        let id: i64 = r.get(0)?;
        let content_len: Option<i64> = r.get(4)?;
        let mut content: Option<String> = r.get(3)?;
        if content.is_none() && content_len.is_some_and(|n| n > MAX_CONTENT_BYTES as i64) {
            content = Some(content_prefix(&conn, id, content_len.unwrap_or(0)));
        }
        let m = SourceMessage {
            id,
            session_id: r.get(1)?,
            source: None,
            title: None,
            role: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            content,
            tool_calls: r.get(5)?,
            // Stored as REAL seconds; never assume an integer.
            timestamp: r.get::<_, Option<f64>>(6)?.unwrap_or(0.0),
            tokens: r.get(7)?,
        };
        bytes += m.content.as_ref().map_or(0, String::len)
            + m.tool_calls.as_ref().map_or(0, String::len);
        out.push(m);
    }
    drop(rows);
    more |= out.len() as i64 >= BATCH;
    sessions(&conn, &mut out)?;
    Ok((out, more))
}

/// A session's `(source, title)`.
type SessionRow = (Option<String>, Option<String>);

/// Fill in each message's session `source` and `title`. A session that
/// cannot be read leaves `source` unset (the message is not imported).
fn sessions(conn: &Connection, batch: &mut [SourceMessage]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT CASE WHEN octet_length(source) <= ?2 THEN source END,
                CASE WHEN octet_length(title) <= ?2 THEN title END
         FROM sessions WHERE id = ?1",
    )?;
    let mut cache: std::collections::HashMap<String, Option<SessionRow>> =
        std::collections::HashMap::new();
    for m in batch.iter_mut() {
        let Some(sid) = m.session_id.clone() else {
            continue;
        };
        let found = match cache.get(&sid) {
            Some(f) => f.clone(),
            None => {
                let f = stmt
                    .query_row(params![sid, MAX_SHORT_BYTES], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                    .unwrap_or(None);
                cache.insert(sid, f.clone());
                f
            }
        };
        if let Some((source, title)) = found {
            m.source = source;
            m.title = title;
        }
    }
    Ok(())
}

/// The first bytes of an oversized content, read incrementally (SQLite
/// never loads the whole value), cut at a character boundary, with a note.
fn content_prefix(conn: &Connection, id: i64, total: i64) -> String {
    let note = format!("\n[cut: the gateway's message is {total} bytes]");
    let keep = MAX_CONTENT_BYTES - note.len();
    let mut buf = Vec::with_capacity(keep);
    let read = conn
        .blob_open(MAIN_DB, c"messages", c"content", id, true)
        .and_then(|b| {
            b.take(keep as u64)
                .read_to_end(&mut buf)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
        });
    if read.is_err() {
        buf.clear();
    }
    let mut text = match std::str::from_utf8(&buf) {
        Ok(t) => t.to_owned(),
        Err(e) => String::from_utf8_lossy(&buf[..e.valid_up_to()]).into_owned(),
    };
    text.retain(|c| c != '\0');
    text.push_str(&note);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "
        CREATE TABLE sessions (id TEXT PRIMARY KEY, source TEXT NOT NULL, title TEXT);
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, role TEXT,
            content TEXT, tool_calls TEXT, timestamp REAL, token_count INTEGER);";

    #[test]
    fn connection_is_untrusted_defensive_and_limited() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("state.db");
        Connection::open(&p)
            .and_then(|c| c.execute_batch(SCHEMA))
            .expect("seed");
        let c = open_with_deadline(&p, Duration::from_millis(300)).expect("open");
        assert!(
            !c.db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA)
                .expect("cfg")
        );
        assert!(
            c.db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE)
                .expect("cfg")
        );
        assert!(
            !c.db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW)
                .expect("cfg")
        );
        assert_eq!(
            c.limit(Limit::SQLITE_LIMIT_LENGTH).expect("limit"),
            MAX_VALUE_BYTES
        );
        let big: rusqlite::Result<Vec<u8>> =
            c.query_row("SELECT zeroblob(2000000)", [], |r| r.get(0));
        assert!(big.is_err(), "a value over the length limit is refused");
        let endless: rusqlite::Result<i64> = c.query_row(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
            [],
            |r| r.get(0),
        );
        assert!(endless.is_err(), "an endless query is interrupted");
    }

    #[test]
    fn huge_values_are_never_loaded_and_content_is_kept_capped() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("state.db");
        let c = Connection::open(&p).expect("open");
        c.execute_batch(SCHEMA).expect("schema");
        let huge = "é".repeat(25 * 1024 * 1024); // 50 MB of text
        c.execute("INSERT INTO sessions VALUES ('s', 'cli', 't')", [])
            .expect("s");
        c.execute(
            "INSERT INTO messages (session_id, role, content, tool_calls, timestamp) VALUES ('s', 'user', ?1, ?1, 1.5)",
            [&huge],
        )
        .expect("huge");
        c.execute(
            "INSERT INTO messages (session_id, role, content, timestamp) VALUES (?1, 'user', 'x', 2)",
            [&huge],
        )
        .expect("huge session id");
        c.execute(
            "INSERT INTO messages (session_id, role, content, timestamp) VALUES ('s', 'user', 'after', 3)",
            [],
        )
        .expect("after");
        drop(c);
        let (batch, more) = read_batch(&p, 0).expect("read");
        assert!(!more);
        assert_eq!(batch.len(), 3);
        let first = batch[0].content.as_deref().expect("content");
        assert!(first.len() <= MAX_CONTENT_BYTES, "{}", first.len());
        assert!(first.starts_with("ééé"));
        assert!(first.ends_with("[cut: the gateway's message is 52428800 bytes]"));
        assert_eq!(batch[0].tool_calls, None);
        assert_eq!(batch[0].source.as_deref(), Some("cli"));
        assert_eq!(batch[1].session_id, None);
        assert_eq!(batch[2].content.as_deref(), Some("after"));
    }
}
