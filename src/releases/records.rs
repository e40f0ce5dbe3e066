//! SQL of the `agent_releases` and `agent_release_switch` tables
//! (migration `0009_releases.sql`). Runs inside `Store` closures.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::store::StoreResult;

/// Where a release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    Installing,
    Ready,
    Active,
    Failed,
    Quarantined,
}

impl ReleaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Installing => "installing",
            ReleaseState::Ready => "ready",
            ReleaseState::Active => "active",
            ReleaseState::Failed => "failed",
            ReleaseState::Quarantined => "quarantined",
        }
    }

    fn parse(s: &str) -> ReleaseState {
        match s {
            "installing" => ReleaseState::Installing,
            "ready" => ReleaseState::Ready,
            "active" => ReleaseState::Active,
            "quarantined" => ReleaseState::Quarantined,
            _ => ReleaseState::Failed,
        }
    }
}

/// One release as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Release {
    pub version: String,
    pub state: ReleaseState,
    pub sha256: Option<String>,
    /// Unix ms the release became visible on disk (`null`: not installed).
    #[serde(skip)]
    pub installed_at_ms: Option<i64>,
    pub size: Option<u64>,
    pub last_error: Option<String>,
    pub gate_failures: u32,
}

/// An activation in flight (at most one).
#[derive(Debug, Clone, PartialEq)]
pub struct Switch {
    pub target: String,
    pub previous: Option<String>,
    pub prior_previous: Option<String>,
}

const COLUMNS: &str =
    "version, state, sha256, installed_at_ms, size_bytes, last_error, gate_failures";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Release> {
    Ok(Release {
        version: r.get(0)?,
        state: ReleaseState::parse(&r.get::<_, String>(1)?),
        sha256: r.get(2)?,
        installed_at_ms: r.get(3)?,
        size: r.get::<_, Option<i64>>(4)?.map(|n| n.max(0) as u64),
        last_error: r.get(5)?,
        gate_failures: r.get::<_, i64>(6)?.clamp(0, u32::MAX as i64) as u32,
    })
}

pub fn list(c: &Connection) -> StoreResult<Vec<Release>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM agent_releases ORDER BY installed_at_ms IS NULL, installed_at_ms DESC, version LIMIT 200"
    ))?;
    let rows = stmt.query_map([], row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn count(c: &Connection) -> StoreResult<usize> {
    let n: i64 = c.query_row("SELECT count(*) FROM agent_releases", [], |r| r.get(0))?;
    Ok(n.max(0) as usize)
}

pub fn get(c: &Connection, version: &str) -> StoreResult<Option<Release>> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM agent_releases WHERE version = ?1"),
        [version],
        row,
    )
    .optional()?)
}

/// Insert or replace a release row.
pub fn put(c: &Connection, r: &Release, now: i64) -> StoreResult<()> {
    c.execute(
        "INSERT INTO agent_releases (version, state, sha256, installed_at_ms, size_bytes, last_error, gate_failures, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(version) DO UPDATE SET state = excluded.state, sha256 = excluded.sha256,
           installed_at_ms = excluded.installed_at_ms, size_bytes = excluded.size_bytes,
           last_error = excluded.last_error, gate_failures = excluded.gate_failures,
           updated_at_ms = excluded.updated_at_ms",
        params![
            r.version,
            r.state.as_str(),
            r.sha256,
            r.installed_at_ms,
            r.size.map(|s| s.min(i64::MAX as u64) as i64),
            r.last_error,
            r.gate_failures,
            now
        ],
    )?;
    Ok(())
}

pub fn set_state(
    c: &Connection,
    version: &str,
    state: ReleaseState,
    last_error: Option<&str>,
    now: i64,
) -> StoreResult<()> {
    c.execute(
        "UPDATE agent_releases SET state = ?2, last_error = ?3, updated_at_ms = ?4 WHERE version = ?1",
        params![version, state.as_str(), last_error, now],
    )?;
    Ok(())
}

pub fn delete(c: &Connection, version: &str) -> StoreResult<()> {
    c.execute("DELETE FROM agent_releases WHERE version = ?1", [version])?;
    Ok(())
}

/// Make `version` the one active row (every other active one is `ready`).
pub fn make_active(c: &Connection, version: &str, now: i64) -> StoreResult<()> {
    c.execute(
        "UPDATE agent_releases SET state = 'ready', updated_at_ms = ?2 WHERE state = 'active' AND version <> ?1",
        params![version, now],
    )?;
    c.execute(
        "UPDATE agent_releases SET state = 'active', last_error = NULL, updated_at_ms = ?2 WHERE version = ?1",
        params![version, now],
    )?;
    Ok(())
}

pub fn switch(c: &Connection) -> StoreResult<Option<Switch>> {
    Ok(c.query_row(
        "SELECT target, previous, prior_previous FROM agent_release_switch WHERE id = 1",
        [],
        |r| {
            Ok(Switch {
                target: r.get(0)?,
                previous: r.get(1)?,
                prior_previous: r.get(2)?,
            })
        },
    )
    .optional()?)
}

pub fn begin_switch(c: &Connection, s: &Switch, now: i64) -> StoreResult<()> {
    c.execute(
        "INSERT OR REPLACE INTO agent_release_switch (id, target, previous, prior_previous, started_at_ms)
         VALUES (1, ?1, ?2, ?3, ?4)",
        params![s.target, s.previous, s.prior_previous, now],
    )?;
    Ok(())
}

pub fn end_switch(c: &Connection) -> StoreResult<()> {
    c.execute("DELETE FROM agent_release_switch", [])?;
    Ok(())
}

/// A failed gate (or watch window): `failed`, or `quarantined` at
/// `quarantine_after` failures. Returns the new state.
pub fn record_failure(
    c: &Connection,
    version: &str,
    reason: &str,
    quarantine_after: u32,
    now: i64,
) -> StoreResult<ReleaseState> {
    let failures: i64 = c
        .query_row(
            "SELECT gate_failures FROM agent_releases WHERE version = ?1",
            [version],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0)
        + 1;
    let state = if failures >= i64::from(quarantine_after) {
        ReleaseState::Quarantined
    } else {
        ReleaseState::Failed
    };
    c.execute(
        "UPDATE agent_releases SET state = ?2, last_error = ?3, gate_failures = ?4, updated_at_ms = ?5 WHERE version = ?1",
        params![version, state.as_str(), reason, failures, now],
    )?;
    Ok(state)
}
