//! Imports the gateway's own conversation history (`HERMES_HOME/state.db`:
//! its messaging platforms, CLI and cron) into the daemon's conversation
//! store, incrementally, so the whole tenant history is searchable in one
//! place.
//!
//! Every turn is imported whatever its `source`, exactly once (keyed by the
//! gateway's message id). The daemon's own runs are left out by their
//! identity: the gateway stores a run under the session id the daemon gave
//! it, and the daemon recorded that run's turns itself. Turns sent to the
//! gateway's API by anyone else (`api_server` sessions the daemon never
//! ran) are imported like the rest.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

mod state_db;

use rusqlite::{Connection, OptionalExtension, params};
use tokio_util::sync::CancellationToken;

use crate::store::conversations::{self, AppendMessages, NewMessage, Role, TimeInput};
use crate::store::{Store, StoreError, now_ms};

/// `daemon_state` key: the highest gateway message id imported.
const CURSOR_KEY: &str = "history_sync.last_message_id";
use state_db::{SourceMessage, read_batch};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("gateway state.db: {0}")]
    Source(#[from] rusqlite::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A session id the daemon's store accepts, derived from the gateway's.
fn local_session_id(id: &str) -> String {
    let cleaned: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if cleaned.is_empty() {
        "gateway".into()
    } else {
        cleaned
    }
}

fn platform_of(source: &str) -> String {
    let p = source.to_ascii_lowercase();
    if conversations::validate_platform(&p).is_ok() {
        p
    } else {
        "gateway".into()
    }
}

/// Whether `session_id` is one the daemon's own runs wrote (a run row, or
/// a run's input message once the run row was pruned): the gateway's copy
/// of those turns is not imported again.
fn is_daemon_run_session(conn: &Connection, session_id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE session_id = ?1)
             OR EXISTS (SELECT 1 FROM messages
                        WHERE session_id = ?1 AND external_id LIKE 'run\\_%:input' ESCAPE '\\')",
        [session_id],
        |r| r.get(0),
    )
}

/// Import one batch into the daemon's store, advancing the cursor in the
/// same transaction. Returns (messages read, messages inserted).
fn import(conn: &mut Connection, batch: &[SourceMessage]) -> Result<(usize, usize), StoreError> {
    let Some(last) = batch.last().map(|m| m.id) else {
        return Ok((0, 0));
    };
    let mut by_session: BTreeMap<String, (String, Option<String>, Vec<NewMessage>)> =
        BTreeMap::new();
    let mut daemon_runs: HashMap<String, bool> = HashMap::new();
    for m in batch {
        // A session that could not be read is not imported: it might be
        // one of the daemon's own.
        let Some(source) = m.source.as_deref() else {
            continue;
        };
        let Some(session_id) = m.session_id.as_deref() else {
            continue;
        };
        let session = local_session_id(session_id);
        let own = match daemon_runs.get(&session) {
            Some(own) => *own,
            None => {
                let own = is_daemon_run_session(conn, &session)?;
                daemon_runs.insert(session.clone(), own);
                own
            }
        };
        if own {
            continue;
        }
        let Some(role) = Role::parse(&m.role) else {
            continue;
        };
        let content = m.content.clone().unwrap_or_default();
        if content.len() > conversations::MAX_CONTENT_BYTES || content.contains('\0') {
            continue;
        }
        let tool_calls = m
            .tool_calls
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .filter(|v| v.is_array() || v.is_object());
        let entry = by_session
            .entry(session)
            .or_insert_with(|| (platform_of(source), m.title.clone(), Vec::new()));
        entry.2.push(NewMessage {
            role,
            content,
            tool_calls,
            tokens_used: m.tokens.filter(|t| *t >= 0),
            created_at: Some(TimeInput::Seconds(
                if m.timestamp.is_finite() && m.timestamp >= 0.0 {
                    m.timestamp
                } else {
                    0.0
                },
            )),
            external_id: Some(format!("statedb:{}", m.id)),
        });
    }
    let tx = conn.transaction()?;
    let mut inserted = 0;
    for (session, (platform, title, messages)) in by_session {
        for chunk in messages.chunks(conversations::MAX_BATCH) {
            let r = conversations::append_in(
                &tx,
                &session,
                &AppendMessages {
                    platform: Some(platform.clone()),
                    title: title.clone().filter(|t| t.len() <= 512),
                    messages: chunk.to_vec(),
                },
            )?;
            inserted += r.inserted;
        }
    }
    tx.execute(
        "INSERT INTO daemon_state (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        params![CURSOR_KEY, last.to_string(), now_ms()],
    )?;
    tx.commit()?;
    Ok((batch.len(), inserted))
}

/// One full pass: import everything new. Returns messages inserted.
pub async fn sync_once(store: &Store, db: PathBuf) -> Result<usize, SyncError> {
    let mut total = 0;
    loop {
        let after: i64 = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT value FROM daemon_state WHERE key = ?1",
                    [CURSOR_KEY],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0))
            })
            .await?;
        let path = db.clone();
        let (batch, more) = crate::identity::spawn_as_agent(move || read_batch(&path, after))
            .await
            .map_err(StoreError::from)??;
        let (_, inserted) = store.write(move |c| import(c, &batch)).await?;
        total += inserted;
        if !more {
            return Ok(total);
        }
    }
}

/// The periodic component: a pass at start, then every `interval`.
pub fn spawn(
    store: Store,
    hermes_home: PathBuf,
    interval: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let db = hermes_home.join("state.db");
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let exists = tokio::fs::try_exists(&db).await.unwrap_or(false);
            if !exists {
                continue;
            }
            match sync_once(&store, db.clone()).await {
                Ok(0) => warned = false,
                Ok(n) => {
                    warned = false;
                    tracing::info!(messages = n, "imported the gateway's conversation history");
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot import the gateway's history; will retry");
                }
                Err(_) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_symlinked_state_db_is_not_opened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let real = tmp.path().join("elsewhere.db");
        let conn = rusqlite::Connection::open(&real).expect("open");
        conn.execute_batch(
            "CREATE TABLE sessions (id TEXT, source TEXT, title TEXT);
             CREATE TABLE messages (id INTEGER, session_id TEXT, role TEXT, content TEXT,
                                    tool_calls TEXT, timestamp REAL, token_count INTEGER);",
        )
        .expect("schema");
        drop(conn);
        let link = tmp.path().join("state.db");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(super::read_batch(&real, 0).is_ok());
        assert!(super::read_batch(&link, 0).is_err());
    }

    #[test]
    fn session_ids_and_platforms_are_made_acceptable() {
        assert_eq!(
            super::local_session_id("20261125_1430 a/b"),
            "20261125_1430_a_b"
        );
        assert_eq!(super::local_session_id(""), "gateway");
        assert_eq!(super::platform_of("Telegram"), "telegram");
        assert_eq!(super::platform_of("weird source!"), "gateway");
    }
}
