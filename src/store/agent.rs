//! The agent's transition history (written by the supervisor only).

use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreResult;

/// Rows kept in `agent_transitions`.
pub const KEEP: i64 = 10_000;

/// One recorded state change.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub at_ms: i64,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub delay_ms: Option<u64>,
    pub detail: Option<String>,
}

/// Append a transition and prune the oldest past [`KEEP`].
pub fn insert(conn: &Connection, t: &Transition) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO agent_transitions (at, from_state, to_state, reason, pid, exit_code, signal, delay_ms, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            t.at_ms,
            t.from,
            t.to,
            t.reason,
            t.pid,
            t.exit_code,
            t.signal,
            t.delay_ms.map(|d| d as i64),
            t.detail
        ],
    )?;
    let id = conn.last_insert_rowid();
    if id % 100 == 0 {
        conn.execute("DELETE FROM agent_transitions WHERE id <= ?1", [id - KEEP])?;
    }
    Ok(())
}

/// The newest `limit` transitions, oldest first.
pub fn recent(conn: &Connection, limit: u32) -> StoreResult<Vec<Transition>> {
    let mut stmt = conn.prepare(
        "SELECT at, from_state, to_state, reason, pid, exit_code, signal, delay_ms, detail
         FROM (SELECT * FROM agent_transitions ORDER BY id DESC LIMIT ?1) ORDER BY id",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(Transition {
            at_ms: r.get(0)?,
            from: r.get(1)?,
            to: r.get(2)?,
            reason: r.get(3)?,
            pid: r.get(4)?,
            exit_code: r.get(5)?,
            signal: r.get(6)?,
            delay_ms: r.get::<_, Option<i64>>(7)?.map(|d| d.max(0) as u64),
            detail: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
