//! SQL of the hub-driven agent configuration (migration `0008_policy`):
//! policy versions, the values the policy's defaults wrote, MCP
//! connections, the specialization and the files it installed.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::StoreResult;

/// Policy rows kept (the applied one, what it may roll back to, history).
const POLICY_ROWS_KEPT: i64 = 20;

/// One received policy version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub version: i64,
    /// `{enforced, defaults, features}` as JSON text.
    pub body: String,
    pub received_at: i64,
    pub applied_at: Option<i64>,
    pub proven_at: Option<i64>,
    /// `applied`, `superseded` or `rolled_back`.
    pub state: String,
    pub error: Option<String>,
}

const POLICY_COLUMNS: &str =
    "version, body, received_at, applied_at, proven_at, state, error FROM agent_policy";

fn policy_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PolicyRow> {
    Ok(PolicyRow {
        version: r.get(0)?,
        body: r.get(1)?,
        received_at: r.get(2)?,
        applied_at: r.get(3)?,
        proven_at: r.get(4)?,
        state: r.get(5)?,
        error: r.get(6)?,
    })
}

/// The highest version ever received (applied, superseded or rolled back).
pub fn max_version(c: &Connection) -> StoreResult<Option<i64>> {
    Ok(c.query_row("SELECT max(version) FROM agent_policy", [], |r| r.get(0))?)
}

/// The policy in force.
pub fn applied(c: &Connection) -> StoreResult<Option<PolicyRow>> {
    Ok(c.query_row(
        &format!("SELECT {POLICY_COLUMNS} WHERE state = 'applied'"),
        [],
        policy_row,
    )
    .optional()?)
}

/// The most recent rolled-back version (for `last_error`).
pub fn last_rolled_back(c: &Connection) -> StoreResult<Option<PolicyRow>> {
    Ok(c.query_row(
        &format!(
            "SELECT {POLICY_COLUMNS} WHERE state = 'rolled_back' ORDER BY version DESC LIMIT 1"
        ),
        [],
        policy_row,
    )
    .optional()?)
}

/// What a refused `version` rolls back to: the newest version below it
/// that was in force before (never one that was itself rolled back).
pub fn previous(c: &Connection, below: i64) -> StoreResult<Option<PolicyRow>> {
    Ok(c.query_row(
        &format!(
            "SELECT {POLICY_COLUMNS} WHERE state = 'superseded' AND version < ?1
             ORDER BY version DESC LIMIT 1"
        ),
        [below],
        policy_row,
    )
    .optional()?)
}

/// Make `version` the policy in force (the one before becomes
/// `superseded`, or is set `rolled_back` by the caller first).
pub fn put_applied(
    tx: &Transaction<'_>,
    version: i64,
    body: &str,
    now: i64,
    proven_at: Option<i64>,
) -> StoreResult<()> {
    tx.execute(
        "UPDATE agent_policy SET state = 'superseded' WHERE state = 'applied'",
        [],
    )?;
    tx.execute(
        "INSERT INTO agent_policy (version, body, received_at, applied_at, proven_at, state)
         VALUES (?1, ?2, ?3, ?3, ?4, 'applied')
         ON CONFLICT (version) DO UPDATE SET state = 'applied', applied_at = ?3",
        params![version, body, now, proven_at],
    )?;
    tx.execute(
        "DELETE FROM agent_policy WHERE version NOT IN
         (SELECT version FROM agent_policy ORDER BY version DESC LIMIT ?1)",
        [POLICY_ROWS_KEPT],
    )?;
    Ok(())
}

/// The applied `version` was refused by the gateway: it is `rolled_back`
/// with `error`, and `to` (a superseded version) is in force again, or no
/// policy at all.
pub fn roll_back(
    tx: &Transaction<'_>,
    version: i64,
    error: &str,
    to: Option<i64>,
    now: i64,
) -> StoreResult<()> {
    tx.execute(
        "UPDATE agent_policy SET state = 'rolled_back', error = ?2 WHERE version = ?1",
        params![version, error],
    )?;
    if let Some(to) = to {
        tx.execute(
            "UPDATE agent_policy SET state = 'applied', applied_at = ?2 WHERE version = ?1",
            params![to, now],
        )?;
    }
    Ok(())
}

/// A gateway ran with `version` in place.
pub fn mark_proven(c: &Connection, version: i64, now: i64) -> StoreResult<()> {
    c.execute(
        "UPDATE agent_policy SET proven_at = ?2 WHERE version = ?1 AND proven_at IS NULL",
        params![version, now],
    )?;
    Ok(())
}

/// What the defaults wrote into the tenant's file: `(key, JSON value)`.
pub fn defaults_written(c: &Connection) -> StoreResult<Vec<(String, String)>> {
    let mut st = c.prepare("SELECT key, value FROM policy_defaults_written ORDER BY key")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn replace_defaults_written(
    tx: &Transaction<'_>,
    pairs: &[(String, String)],
) -> StoreResult<()> {
    tx.execute("DELETE FROM policy_defaults_written", [])?;
    for (k, v) in pairs {
        tx.execute(
            "INSERT INTO policy_defaults_written (key, value) VALUES (?1, ?2)",
            params![k, v],
        )?;
    }
    Ok(())
}

/// One MCP connection: name, spec (JSON text), last change (ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRow {
    pub name: String,
    pub spec: String,
    pub updated_at: i64,
}

pub fn connections(c: &Connection) -> StoreResult<Vec<ConnectionRow>> {
    let mut st = c.prepare("SELECT name, spec, updated_at FROM agent_connections ORDER BY name")?;
    let rows = st.query_map([], |r| {
        Ok(ConnectionRow {
            name: r.get(0)?,
            spec: r.get(1)?,
            updated_at: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn count_connections(c: &Connection) -> StoreResult<i64> {
    Ok(c.query_row("SELECT count(*) FROM agent_connections", [], |r| r.get(0))?)
}

pub fn put_connection(c: &Connection, name: &str, spec: &str, now: i64) -> StoreResult<()> {
    c.execute(
        "INSERT INTO agent_connections (name, spec, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        params![name, spec, now],
    )?;
    Ok(())
}

/// `true` when there was one.
pub fn delete_connection(c: &Connection, name: &str) -> StoreResult<bool> {
    Ok(c.execute("DELETE FROM agent_connections WHERE name = ?1", [name])? > 0)
}

/// The specialization in force: version, body (JSON text), applied (ms).
pub fn specialization(c: &Connection) -> StoreResult<Option<(i64, String, i64)>> {
    Ok(c.query_row(
        "SELECT version, body, applied_at FROM agent_specialization WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()?)
}

/// The files the specialization installed: `(path, sha256)`.
pub fn specialization_files(c: &Connection) -> StoreResult<Vec<(String, String)>> {
    let mut st = c.prepare("SELECT path, sha256 FROM specialization_files ORDER BY path")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Replace the specialization (`None`: remove it) and its files.
pub fn put_specialization(
    tx: &Transaction<'_>,
    row: Option<(i64, &str, i64)>,
    files: &[(String, String)],
) -> StoreResult<()> {
    tx.execute("DELETE FROM agent_specialization", [])?;
    tx.execute("DELETE FROM specialization_files", [])?;
    if let Some((version, body, now)) = row {
        tx.execute(
            "INSERT INTO agent_specialization (id, version, body, applied_at) VALUES (1, ?1, ?2, ?3)",
            params![version, body, now],
        )?;
    }
    for (path, sha) in files {
        tx.execute(
            "INSERT INTO specialization_files (path, sha256) VALUES (?1, ?2)",
            params![path, sha],
        )?;
    }
    Ok(())
}

const SPECIALIZATION_MAX: &str = "specialization.max_version";

/// The highest specialization version ever received (a DELETE keeps it).
pub fn max_specialization_version(c: &Connection) -> StoreResult<Option<i64>> {
    let v: Option<String> = c
        .query_row(
            "SELECT value FROM daemon_state WHERE key = ?1",
            [SPECIALIZATION_MAX],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()))
}

pub fn set_max_specialization_version(tx: &Transaction<'_>, v: i64, now: i64) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO daemon_state (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        params![SPECIALIZATION_MAX, v.to_string(), now],
    )?;
    Ok(())
}
