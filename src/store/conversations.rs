//! Sessions and messages, with FTS5 search over message content.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{StoreError, StoreResult, cursor, ms_to_rfc3339, now_ms};

// Search lives in its own module; these paths are the ones callers know.
pub use super::message_search::{
    SEARCH_SQL, SearchFilter, SearchHit, SearchSort, classify_fts_error, plain_query,
    render_snippet, search,
};

/// Most messages accepted in one append.
pub const MAX_BATCH: usize = 1000;
/// Largest message content accepted, in bytes.
/// A message's content from the API, in characters (the document's
/// `maxLength`).
pub const MAX_CONTENT_CHARS: usize = 256 * 1024;
/// A message's content read from the agent's state.db, in bytes (a cap on
/// hostile input, before any decoding).
pub const MAX_CONTENT_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

/// A point in time as clients send it: RFC 3339 text or unix seconds
/// (fractions allowed, as the gateway stores them).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimeInput {
    Seconds(f64),
    Text(String),
}

impl TimeInput {
    pub fn to_ms(&self, field: &str) -> StoreResult<i64> {
        match self {
            TimeInput::Seconds(s) if s.is_finite() && *s >= 0.0 && *s < 1.0e11 => {
                Ok((s * 1000.0).round() as i64)
            }
            TimeInput::Seconds(_) => Err(StoreError::Invalid(format!(
                "`{field}` is out of range for unix seconds"
            ))),
            TimeInput::Text(t) => parse_time_text(t, field),
        }
    }
}

/// `digits[.digits]`, ASCII only.
fn is_decimal(t: &str) -> bool {
    let (int, frac) = t.split_once('.').unwrap_or((t, "1"));
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(int) && digits(frac)
}

/// Parse RFC 3339 or unix seconds given as text (query strings).
pub fn parse_time_text(t: &str, field: &str) -> StoreResult<i64> {
    // Seconds as the document's pattern has them (`123` or `123.5`):
    // `f64::from_str` alone would also take `1e9`, `inf` or `+5`.
    if is_decimal(t) {
        if let Ok(secs) = t.parse::<f64>() {
            return TimeInput::Seconds(secs).to_ms(field);
        }
    }
    if chrono::DateTime::parse_from_rfc3339(t).is_ok() {
        return crate::timestamp::parse_rfc3339(t)
            .ok_or_else(|| StoreError::Invalid(crate::timestamp::out_of_range(field)));
    }
    Err(StoreError::Invalid(format!(
        "`{field}` must be RFC 3339 (2026-01-31T12:00:00Z) or unix seconds"
    )))
}

const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// An optional integer as JSON Schema has it: `3` or `3.0`, never `3.5`.
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        // ±2^63 are exactly representable; anything in [-2^63, 2^63) with
        // no fraction converts without loss.
        Some(f) if f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f) => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!("expected an integer, got {n}"))),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    pub role: Role,
    pub content: String,
    #[serde(default)]
    pub tool_calls: Option<serde_json::Value>,
    /// JSON Schema's `integer` includes `3362.0` (an integral number in any
    /// notation); serde's `i64` would refuse it.
    #[serde(default, deserialize_with = "integral")]
    pub tokens_used: Option<i64>,
    #[serde(default)]
    pub created_at: Option<TimeInput>,
    /// A caller's id for the message; appending it again is a no-op.
    #[serde(default)]
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendMessages {
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    pub messages: Vec<NewMessage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Appended {
    pub session_id: String,
    pub inserted: usize,
    pub skipped: usize,
    /// Ids of the inserted messages, in request order.
    pub ids: Vec<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: String,
    pub platform: String,
    pub title: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub message_count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: i64,
    pub session_id: String,
    pub platform: String,
    pub role: String,
    pub content: String,
    pub tool_calls: Option<serde_json::Value>,
    pub tokens_used: i64,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Written from a run's output when the run ended without completing.
    pub partial: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub fn validate_session_id(id: &str) -> StoreResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "`session_id` must be 1-128 characters of letters, digits, `-`, `_`, `.`, `:`".into(),
        ))
    }
}

pub fn validate_platform(p: &str) -> StoreResult<()> {
    let b = p.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "`platform` must be 1-32 lowercase letters, digits, `-` or `_`, starting with a letter"
                .into(),
        ))
    }
}

/// Check an append before any write, so a bad message rejects the whole
/// batch and nothing is half-written.
fn validate_append(req: &AppendMessages) -> StoreResult<Vec<i64>> {
    if req.messages.is_empty() {
        return Err(StoreError::Invalid("`messages` must not be empty".into()));
    }
    if req.messages.len() > MAX_BATCH {
        return Err(StoreError::Invalid(format!(
            "`messages` holds {} entries; at most {MAX_BATCH} per request",
            req.messages.len()
        )));
    }
    if let Some(p) = &req.platform {
        validate_platform(p)?;
    }
    // Lengths in characters, as the document's `maxLength` counts.
    if req.title.as_ref().is_some_and(|t| t.chars().count() > 512) {
        return Err(StoreError::Invalid(
            "`title` is longer than 512 characters".into(),
        ));
    }
    let now = now_ms();
    let mut times = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        // Characters, as the document's `maxLength` counts (JSON Schema
        // cannot count bytes); the request body limit bounds the bytes.
        if m.content.chars().count() > MAX_CONTENT_CHARS {
            return Err(StoreError::Invalid(format!(
                "`messages[{i}].content` is longer than {MAX_CONTENT_CHARS} characters"
            )));
        }
        if m.content.contains('\0') {
            return Err(StoreError::Invalid(format!(
                "`messages[{i}].content` contains a NUL byte"
            )));
        }
        if m.tokens_used.is_some_and(|t| t < 0) {
            return Err(StoreError::Invalid(format!(
                "`messages[{i}].tokens_used` must not be negative"
            )));
        }
        if let Some(tc) = &m.tool_calls {
            if !(tc.is_array() || tc.is_object() || tc.is_null()) {
                return Err(StoreError::Invalid(format!(
                    "`messages[{i}].tool_calls` must be an array or an object"
                )));
            }
        }
        if let Some(x) = &m.external_id {
            if x.is_empty() || x.chars().count() > 256 {
                return Err(StoreError::Invalid(format!(
                    "`messages[{i}].external_id` must be 1-256 characters"
                )));
            }
        }
        times.push(match &m.created_at {
            Some(t) => t.to_ms(&format!("messages[{i}].created_at"))?,
            None => now,
        });
    }
    Ok(times)
}

/// Append messages to a session (created if new) in one transaction.
pub fn append(
    conn: &mut Connection,
    session_id: &str,
    req: &AppendMessages,
) -> StoreResult<Appended> {
    let tx = conn.transaction()?;
    let appended = append_in(&tx, session_id, req)?;
    tx.commit()?;
    Ok(appended)
}

/// [`append`] inside a transaction the caller owns.
pub fn append_in(tx: &Connection, session_id: &str, req: &AppendMessages) -> StoreResult<Appended> {
    validate_session_id(session_id)?;
    let times = validate_append(req)?;
    let existing: Option<String> = tx
        .query_row(
            "SELECT platform FROM sessions WHERE id = ?1",
            [session_id],
            |r| r.get(0),
        )
        .optional()?;
    let platform = match (&existing, &req.platform) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => "api".to_owned(),
    };
    let first = times.iter().copied().min().unwrap_or_else(now_ms);
    let last = times.iter().copied().max().unwrap_or_else(now_ms);
    tx.execute(
        "INSERT INTO sessions (id, platform, title, created_at, updated_at, message_count)
         VALUES (?1, ?2, ?3, ?4, ?5, 0)
         ON CONFLICT (id) DO UPDATE SET
            title = coalesce(excluded.title, sessions.title),
            created_at = min(sessions.created_at, excluded.created_at),
            updated_at = max(sessions.updated_at, excluded.updated_at)",
        params![session_id, platform, req.title, first, last],
    )?;
    let mut ids = Vec::with_capacity(req.messages.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (session_id, platform, role, content, tool_calls, tokens_used, created_at, external_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (external_id) DO NOTHING
             RETURNING id",
        )?;
        for (m, at) in req.messages.iter().zip(&times) {
            let tool_calls = m
                .tool_calls
                .as_ref()
                .filter(|v| !v.is_null())
                .map(|v| v.to_string());
            let id: Option<i64> = insert
                .query_row(
                    params![
                        session_id,
                        platform,
                        m.role.as_str(),
                        m.content,
                        tool_calls,
                        m.tokens_used.unwrap_or(0),
                        at,
                        m.external_id
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = id {
                ids.push(id);
            }
        }
    }
    tx.execute(
        "UPDATE sessions SET message_count = message_count + ?2 WHERE id = ?1",
        params![session_id, ids.len() as i64],
    )?;
    Ok(Appended {
        session_id: session_id.to_owned(),
        inserted: ids.len(),
        skipped: req.messages.len() - ids.len(),
        ids,
    })
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: r.get(0)?,
        platform: r.get(1)?,
        title: r.get(2)?,
        created_at: ms_to_rfc3339(r.get(3)?),
        updated_at: ms_to_rfc3339(r.get(4)?),
        message_count: r.get(5)?,
    })
}

/// Sessions, most recently updated first.
pub fn list_sessions(
    conn: &Connection,
    platform: Option<&str>,
    limit: u32,
    after: Option<&str>,
) -> StoreResult<Page<Session>> {
    let (c_time, c_id) = cursor::time_id(after)?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, platform, title, created_at, updated_at, message_count FROM sessions
         WHERE (?1 IS NULL OR platform = ?1)
           AND (?2 IS NULL OR updated_at < ?2 OR (updated_at = ?2 AND id < ?3))
         ORDER BY updated_at DESC, id DESC
         LIMIT ?4",
    )?;
    let items = stmt
        .query_map(
            params![platform, c_time, c_id, limit as i64 + 1],
            session_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cursor::page(items, limit, |s| {
        cursor::time_id_text(&s.updated_at, &s.id)
    }))
}

pub fn get_session(conn: &Connection, id: &str) -> StoreResult<Session> {
    conn.query_row(
        "SELECT id, platform, title, created_at, updated_at, message_count FROM sessions WHERE id = ?1",
        [id],
        session_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("session `{id}` does not exist")))
}

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let tool_calls: Option<String> = r.get(5)?;
    Ok(Message {
        id: r.get(0)?,
        session_id: r.get(1)?,
        platform: r.get(2)?,
        role: r.get(3)?,
        content: r.get(4)?,
        tool_calls: tool_calls.and_then(|t| serde_json::from_str(&t).ok()),
        tokens_used: r.get(6)?,
        created_at: ms_to_rfc3339(r.get(7)?),
        external_id: r.get(8)?,
        partial: r.get(9)?,
    })
}

/// Mark the message with `external_id` as written from partial output.
pub fn mark_partial(conn: &Connection, external_id: &str) -> StoreResult<()> {
    conn.execute(
        "UPDATE messages SET partial = 1 WHERE external_id = ?1",
        [external_id],
    )?;
    Ok(())
}

/// Messages of one session in the order they were stored.
pub fn list_messages(
    conn: &Connection,
    session_id: &str,
    limit: u32,
    after: Option<&str>,
) -> StoreResult<Page<Message>> {
    validate_session_id(session_id)?;
    get_session(conn, session_id)?;
    let after_id = cursor::int(after, 0)?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, session_id, platform, role, content, tool_calls, tokens_used, created_at, external_id, partial
         FROM messages WHERE session_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let items = stmt
        .query_map(params![session_id, after_id, limit as i64 + 1], message_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cursor::page(items, limit, |m| m.id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_used_is_any_integral_number() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<NewMessage>(
                serde_json::json!({"role": "user", "content": "x", "tokens_used": v}),
            )
            .map(|m| m.tokens_used)
        };
        assert_eq!(parse(serde_json::json!(3362)).expect("int"), Some(3362));
        assert_eq!(parse(serde_json::json!(3362.0)).expect("float"), Some(3362));
        assert_eq!(parse(serde_json::Value::Null).expect("null"), None);
        assert!(parse(serde_json::json!(3362.5)).is_err());
        assert!(parse(serde_json::json!(1e19)).is_err());
        assert!(parse(serde_json::json!("3")).is_err());
    }

    #[test]
    fn time_text_takes_plain_seconds_only() {
        assert_eq!(
            parse_time_text("1769860800", "since").expect("s"),
            1_769_860_800_000
        );
        assert_eq!(parse_time_text("1.5", "since").expect("frac"), 1500);
        for bad in ["1e9", "inf", "NaN", "+5", "-5", ".5", "5.", "\u{0661}"] {
            assert!(parse_time_text(bad, "since").is_err(), "{bad}");
        }
    }
}
