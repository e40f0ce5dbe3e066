//! Plain SQL migrations from `schema/`, embedded in the binary, applied in
//! order, one transaction each, tracked with `PRAGMA user_version`.

use rusqlite::Connection;

use super::{StoreError, StoreResult};

/// Every migration, in order. Its position (1-based) is the `user_version`
/// it leaves behind.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_core", include_str!("../../schema/0001_core.sql")),
    ("0002_agent", include_str!("../../schema/0002_agent.sql")),
    ("0003_hub", include_str!("../../schema/0003_hub.sql")),
    ("0004_runs", include_str!("../../schema/0004_runs.sql")),
    ("0005_skills", include_str!("../../schema/0005_skills.sql")),
    ("0006_cron", include_str!("../../schema/0006_cron.sql")),
    (
        "0007_fidelity",
        include_str!("../../schema/0007_fidelity.sql"),
    ),
    ("0008_policy", include_str!("../../schema/0008_policy.sql")),
    (
        "0009_releases",
        include_str!("../../schema/0009_releases.sql"),
    ),
    (
        "0010_search_facets",
        include_str!("../../schema/0010_search_facets.sql"),
    ),
    (
        "0011_run_event_blocks",
        include_str!("../../schema/0011_run_event_blocks.sql"),
    ),
];

/// The schema version this build writes.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Bring the database up to [`latest`]. Refuses a database from a newer
/// build. Returns the version now in force.
pub fn apply(conn: &mut Connection) -> StoreResult<i64> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > latest() {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest(),
        });
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        run(conn).map_err(|source| StoreError::Migration { name, source })?;
        tracing::info!(migration = name, version, "applied migration");
    }
    Ok(latest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_in_schema_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schema");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("schema dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| n.trim_end_matches(".sql").to_owned())
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(n, _)| *n).collect();
        assert_eq!(files, listed);
        for (i, name) in listed.iter().enumerate() {
            assert!(name.starts_with(&format!("{:04}_", i + 1)), "{name}");
        }
    }

    #[test]
    fn applying_twice_is_a_no_op_and_newer_is_refused() {
        let mut c = Connection::open_in_memory().expect("open");
        assert_eq!(apply(&mut c).expect("first"), latest());
        let tables = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .expect("count")
        };
        let before = tables(&c);
        assert_eq!(apply(&mut c).expect("second"), latest());
        assert_eq!(tables(&c), before);
        c.pragma_update(None, "user_version", latest() + 1)
            .expect("bump");
        let err = apply(&mut c).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    }
}
