//! The agent's long-term memories, with FTS5 over content and tags.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::conversations::{Page, classify_fts_error, plain_query, render_snippet};
use super::{StoreError, StoreResult, cursor, ms_to_rfc3339, now_ms};

pub const MAX_CONTENT_CHARS: usize = 64 * 1024;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_CHARS: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMemory {
    pub content: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub id: i64,
    pub content: String,
    pub tags: Vec<String>,
    pub source: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryHit {
    #[serde(flatten)]
    pub memory: Memory,
    pub snippet: String,
    pub score: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryStats {
    pub count: i64,
    pub total_bytes: i64,
    pub by_source: BTreeMap<String, i64>,
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

fn validate(m: &NewMemory) -> StoreResult<()> {
    if m.content.trim().is_empty() {
        return Err(StoreError::Invalid("`content` must not be empty".into()));
    }
    // Characters, as the document's `maxLength` counts (JSON Schema cannot
    // count bytes); the request body limit bounds the bytes.
    if m.content.chars().count() > MAX_CONTENT_CHARS {
        return Err(StoreError::Invalid(format!(
            "`content` is longer than {MAX_CONTENT_CHARS} characters"
        )));
    }
    if m.content.contains('\0') {
        return Err(StoreError::Invalid("`content` contains a NUL byte".into()));
    }
    if m.tags.len() > MAX_TAGS {
        return Err(StoreError::Invalid(format!(
            "`tags` holds more than {MAX_TAGS} entries"
        )));
    }
    for (i, t) in m.tags.iter().enumerate() {
        if t.trim().is_empty() || t.chars().count() > MAX_TAG_CHARS || t.contains('\0') {
            return Err(StoreError::Invalid(format!(
                "`tags[{i}]` must be 1-{MAX_TAG_CHARS} characters of text"
            )));
        }
    }
    if let Some(s) = &m.source {
        super::conversations::validate_platform(s).map_err(|_| {
            StoreError::Invalid(
                "`source` must be 1-32 lowercase letters, digits, `-` or `_`".into(),
            )
        })?;
    }
    Ok(())
}

fn memory_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Memory> {
    let tags: String = r.get(2)?;
    Ok(Memory {
        id: r.get(0)?,
        content: r.get(1)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        source: r.get(3)?,
        created_at: ms_to_rfc3339(r.get(4)?),
    })
}

pub fn insert(conn: &Connection, m: &NewMemory) -> StoreResult<Memory> {
    validate(m)?;
    let tags =
        serde_json::to_string(&m.tags).map_err(|e| StoreError::Invalid(format!("`tags`: {e}")))?;
    let source = m.source.clone().unwrap_or_else(|| "hub".into());
    // An explicit transaction: in autocommit mode an `INSERT … RETURNING`
    // commits when its statement is reset, and rusqlite drops the error
    // there, so a full disk answered 201 for a row that was rolled back.
    let tx = conn.unchecked_transaction()?;
    let row = tx.query_row(
        "INSERT INTO memories (content, tags, source, created_at) VALUES (?1, ?2, ?3, ?4)
         RETURNING id, content, tags, source, created_at",
        params![m.content, tags, source, now_ms()],
        memory_row,
    )?;
    tx.commit()?;
    Ok(row)
}

/// Memories, newest first.
pub fn list(
    conn: &Connection,
    source: Option<&str>,
    limit: u32,
    after: Option<&str>,
) -> StoreResult<Page<Memory>> {
    let before_id = cursor::int(after, i64::MAX)?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, content, tags, source, created_at FROM memories
         WHERE (?1 IS NULL OR source = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    let items = stmt
        .query_map(params![source, before_id, limit as i64 + 1], memory_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cursor::page(items, limit, |m| m.id.to_string()))
}

pub fn search(
    conn: &Connection,
    query: &str,
    plain: bool,
    limit: u32,
    after: Option<&str>,
) -> StoreResult<Page<MemoryHit>> {
    let q = if plain {
        plain_query(query)
    } else {
        query.to_owned()
    };
    if q.trim().is_empty() {
        return Err(StoreError::Invalid("`q` must not be empty".into()));
    }
    let offset = cursor::int(after, 0)?;
    let mut stmt = conn.prepare_cached(
        // One page ranked first, snippets for that page only (see
        // conversations::SEARCH_SQL).
        "WITH top AS MATERIALIZED (
            SELECT rowid AS id, bm25(memories_fts) AS score FROM memories_fts
             WHERE memories_fts MATCH ?1 ORDER BY score, rowid LIMIT ?2 OFFSET ?3)
         SELECT m.id, m.content, m.tags, m.source, m.created_at,
                snippet(memories_fts, 0, char(1), char(2), '…', 16), top.score
           FROM top
           CROSS JOIN memories m ON m.id = top.id
           CROSS JOIN memories_fts ON memories_fts.rowid = top.id AND memories_fts MATCH ?1
          ORDER BY top.score, top.id",
    )?;
    let rows = stmt
        .query_map(params![q, limit as i64 + 1, offset], |r| {
            Ok(MemoryHit {
                memory: memory_row(r)?,
                snippet: render_snippet(&r.get::<_, String>(5)?),
                score: r.get(6)?,
            })
        })
        .map_err(classify_fts_error)?;
    let mut items = Vec::new();
    for row in rows {
        items.push(row.map_err(classify_fts_error)?);
    }
    Ok(cursor::page(items, limit, |_| {
        (offset + limit as i64).to_string()
    }))
}

pub fn delete(conn: &Connection, id: i64) -> StoreResult<()> {
    let n = conn.execute("DELETE FROM memories WHERE id = ?1", [id])?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("memory {id} does not exist")));
    }
    Ok(())
}

pub fn stats(conn: &Connection) -> StoreResult<MemoryStats> {
    let (count, total_bytes, oldest, newest): (i64, i64, Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(length(CAST(content AS BLOB))), 0), min(created_at), max(created_at) FROM memories",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let mut stmt = conn.prepare_cached("SELECT source, count(*) FROM memories GROUP BY source")?;
    let by_source = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
    Ok(MemoryStats {
        count,
        total_bytes,
        by_source,
        oldest: oldest.map(ms_to_rfc3339),
        newest: newest.map(ms_to_rfc3339),
    })
}

/// A memory by id (tests and tools).
pub fn get(conn: &Connection, id: i64) -> StoreResult<Option<Memory>> {
    Ok(conn
        .query_row(
            "SELECT id, content, tags, source, created_at FROM memories WHERE id = ?1",
            [id],
            memory_row,
        )
        .optional()?)
}
