//! SQL of the activity signal: when the tenant last used the agent. Both
//! are one index lookup (`runs_by_time`, `messages_by_time`).

use rusqlite::{Connection, OptionalExtension};

use super::StoreResult;

/// Creation time (ms) of the newest run, if any.
pub fn last_run_ms(c: &Connection) -> StoreResult<Option<i64>> {
    Ok(c.query_row("SELECT max(created_at) FROM runs", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .optional()?
    .flatten())
}

/// Time (ms) of the newest message of any conversation (the daemon's runs
/// and the gateway's own platforms, once imported), if any.
pub fn last_message_ms(c: &Connection) -> StoreResult<Option<i64>> {
    Ok(
        c.query_row("SELECT max(created_at) FROM messages", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten(),
    )
}
