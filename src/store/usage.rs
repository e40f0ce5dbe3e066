//! The usage ledger: one row per finished run, a monotonic `seq`, and a
//! `reported` flag the hub's acknowledgement sets.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{StoreResult, now_ms};

#[derive(Debug, Clone, Default)]
pub struct NewUsage {
    pub run_id: Option<String>,
    pub session_id: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tool_calls: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsageEntry {
    pub seq: i64,
    pub run_id: Option<String>,
    pub session_id: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tool_calls: i64,
    pub created_at_ms: i64,
}

/// Record usage; returns its sequence number.
pub fn record(conn: &Connection, u: &NewUsage) -> StoreResult<i64> {
    conn.execute(
        "INSERT INTO usage_ledger (run_id, session_id, tokens_in, tokens_out, tool_calls, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            u.run_id,
            u.session_id,
            u.tokens_in.max(0),
            u.tokens_out.max(0),
            u.tool_calls.max(0),
            now_ms()
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// The oldest entries the hub has not acknowledged, at most `limit`.
pub fn unreported(conn: &Connection, limit: u32) -> StoreResult<Vec<UsageEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, run_id, session_id, tokens_in, tokens_out, tool_calls, created_at
         FROM usage_ledger WHERE reported = 0 ORDER BY seq LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([limit as i64], |r| {
            Ok(UsageEntry {
                seq: r.get(0)?,
                run_id: r.get(1)?,
                session_id: r.get(2)?,
                tokens_in: r.get(3)?,
                tokens_out: r.get(4)?,
                tool_calls: r.get(5)?,
                created_at_ms: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Mark every entry up to and including `seq` as reported, in one
/// transaction. Returns how many rows changed.
pub fn acknowledge(conn: &mut Connection, seq: i64) -> StoreResult<usize> {
    let tx = conn.transaction()?;
    let n = tx.execute(
        "UPDATE usage_ledger SET reported = 1 WHERE reported = 0 AND seq <= ?1",
        [seq],
    )?;
    tx.commit()?;
    Ok(n)
}
