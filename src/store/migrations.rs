//! Plain SQL migrations from `schema/`, embedded in the binary, applied in
//! order, one transaction each, tracked with `PRAGMA user_version`.
//!
//! # Compatibility floor: what a rollback may run on
//!
//! The Ansible role rolls a failed upgrade back by starting the previous
//! release on the store the new release has already migrated. So every
//! migration declares its **floor**: the oldest schema version whose code
//! may still run on a database that has the migration.
//!
//! - A change older code neither breaks nor is broken by (a new index; a
//!   new table older code ignores without losing anything it needs) may
//!   declare a floor below its own number: the number of the oldest
//!   schema whose code still runs correctly beside it.
//! - Anything else (a changed or dropped column, a new constraint, a table
//!   older code would need to read or keep in step, data moved elsewhere)
//!   declares its own number.
//!
//! The floor of a database is the highest floor of every migration applied
//! to it (it never goes down); each migration's transaction records it in
//! `daemon_state` ([`FLOOR_KEY`]) with the new `user_version`. A build
//! opens a database newer than itself only when that recorded floor is at
//! or below its own [`latest`]: it then runs **without migrating** (every
//! write it does is valid on the newer schema: that is what the floor
//! promises) and logs one warning. Otherwise (no floor recorded, or a
//! higher one) it refuses with [`StoreError::TooNew`]. Builds without this
//! mechanism (schema 9 and older, and any other build from before it)
//! refuse every newer database.

use rusqlite::{Connection, OptionalExtension};

use super::{StoreError, StoreResult};

/// One schema change: `schema/NAME.sql`, and its compatibility floor.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub name: &'static str,
    /// The oldest schema version whose code may run on a database that has
    /// this migration (see the module documentation). At most its own number.
    pub floor: i64,
    pub sql: &'static str,
}

/// Every migration, in order. Its position (1-based) is the `user_version`
/// it leaves behind.
pub const SCHEMA: &[Migration] = &[
    Migration {
        name: "0001_core",
        floor: 1,
        sql: include_str!("../../schema/0001_core.sql"),
    },
    Migration {
        name: "0002_agent",
        floor: 2,
        sql: include_str!("../../schema/0002_agent.sql"),
    },
    Migration {
        name: "0003_hub",
        floor: 3,
        sql: include_str!("../../schema/0003_hub.sql"),
    },
    Migration {
        name: "0004_runs",
        floor: 4,
        sql: include_str!("../../schema/0004_runs.sql"),
    },
    Migration {
        name: "0005_skills",
        floor: 5,
        sql: include_str!("../../schema/0005_skills.sql"),
    },
    Migration {
        name: "0006_cron",
        floor: 6,
        sql: include_str!("../../schema/0006_cron.sql"),
    },
    Migration {
        name: "0007_fidelity",
        floor: 7,
        sql: include_str!("../../schema/0007_fidelity.sql"),
    },
    Migration {
        name: "0008_policy",
        floor: 8,
        sql: include_str!("../../schema/0008_policy.sql"),
    },
    Migration {
        name: "0009_releases",
        floor: 9,
        sql: include_str!("../../schema/0009_releases.sql"),
    },
    // A covering index: code of schema 9 reads and writes `messages`
    // exactly as before and SQLite keeps the index in step with every write.
    Migration {
        name: "0010_search_facets",
        floor: 9,
        sql: include_str!("../../schema/0010_search_facets.sql"),
    },
    // Older code would neither see nor prune the events logged in blocks:
    // a run's log would lose its newest events.
    Migration {
        name: "0011_run_event_blocks",
        floor: 11,
        sql: include_str!("../../schema/0011_run_event_blocks.sql"),
    },
    // An FTS5 setting: older code searches, appends to and merges an
    // index of any page size alike.
    Migration {
        name: "0012_search_leaf_pages",
        floor: 11,
        sql: include_str!("../../schema/0012_search_leaf_pages.sql"),
    },
];

/// `(name, SQL)` of every entry of [`SCHEMA`], in order: the view for
/// callers that replay part of the history (tests of an upgrade).
pub const MIGRATIONS: &[(&str, &str)] = &NAMES_AND_SQL;

const NAMES_AND_SQL: [(&str, &str); SCHEMA.len()] = names_and_sql();

const fn names_and_sql<const N: usize>() -> [(&'static str, &'static str); N] {
    let mut out = [("", ""); N];
    let mut i = 0;
    while i < N {
        out[i] = (SCHEMA[i].name, SCHEMA[i].sql);
        i += 1;
    }
    out
}

/// `daemon_state` key of the database's compatibility floor (decimal text).
/// `daemon_state` exists since 0001, so every build can read it.
pub const FLOOR_KEY: &str = "schema.compat_floor";

/// The schema version this build writes.
pub fn latest() -> i64 {
    SCHEMA.len() as i64
}

/// Bring the database up to [`latest`], or run on a newer one whose floor
/// allows it (unchanged). Refuses any other newer database. Returns the
/// version this build writes.
pub fn apply(conn: &mut Connection) -> StoreResult<i64> {
    apply_schema(conn, SCHEMA)?;
    Ok(latest())
}

/// The schema a database has: its `user_version` and recorded floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnDisk {
    pub version: i64,
    pub floor: Option<i64>,
}

/// Read the database's schema version and recorded floor (no write).
pub fn on_disk(conn: &Connection) -> StoreResult<OnDisk> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let floor = if version == 0 {
        None // nothing applied yet: not even `daemon_state`
    } else {
        recorded_floor(conn)?
    };
    Ok(OnDisk { version, floor })
}

/// How [`StoreError::TooNew`] names the floor it found.
pub fn describe_floor(floor: &Option<i64>) -> String {
    match floor {
        Some(f) => format!("its floor is {f}"),
        None => "it records no floor".to_owned(),
    }
}

/// [`apply`] for a build whose migrations are `schema` (a prefix of
/// [`SCHEMA`] stands for an older build in tests). Returns what is on disk.
fn apply_schema(conn: &mut Connection, schema: &[Migration]) -> StoreResult<OnDisk> {
    let supported = schema.len() as i64;
    let found = on_disk(conn)?;
    if found.version > supported {
        return match found.floor {
            Some(floor) if floor <= supported => {
                tracing::warn!(
                    found = found.version,
                    supported,
                    floor,
                    "the database has schema {}, written by a newer hermes-tenantd; its compatibility floor {floor} lets this build (schema {supported}) run on it: no migration applied",
                    found.version
                );
                Ok(found)
            }
            floor => Err(StoreError::TooNew {
                found: found.version,
                supported,
                floor,
            }),
        };
    }
    for (index, migration) in schema.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= found.version {
            continue;
        }
        let floor = floor_at(schema, version);
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(migration.sql)?;
            tx.pragma_update(None, "user_version", version)?;
            record_floor(&tx, floor)?;
            tx.commit()
        };
        run(conn).map_err(|source| StoreError::Migration {
            name: migration.name,
            source,
        })?;
        tracing::info!(
            migration = migration.name,
            version,
            floor,
            "applied migration"
        );
    }
    if found.version == supported && supported > 0 {
        // Migrated by a build from before the floor was recorded: record it
        // now, so a rollback to a build that reads it is allowed.
        let floor = floor_at(schema, supported);
        if found.floor != Some(floor) {
            record_floor(conn, floor)?;
        }
    }
    Ok(OnDisk {
        version: supported,
        floor: Some(floor_at(schema, supported)),
    })
}

/// The floor of a database that has the first `version` migrations.
fn floor_at(schema: &[Migration], version: i64) -> i64 {
    let applied = usize::try_from(version).unwrap_or(0).min(schema.len());
    schema[..applied].iter().map(|m| m.floor).max().unwrap_or(0)
}

fn recorded_floor(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    // Anything but text holding a positive decimal number is no floor:
    // refuse, not guess.
    let floor = conn
        .query_row(
            "SELECT value FROM daemon_state WHERE key = ?1",
            [FLOOR_KEY],
            |r| {
                Ok(r.get_ref(0)?
                    .as_str()
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok()))
            },
        )
        .optional()?;
    Ok(floor.flatten().filter(|f| *f >= 1))
}

fn record_floor(conn: &Connection, floor: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO daemon_state (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        rusqlite::params![FLOOR_KEY, floor.to_string(), super::now_ms()],
    )?;
    Ok(())
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
    fn floors_follow_the_rule_and_the_names_view_matches() {
        for (index, m) in SCHEMA.iter().enumerate() {
            let version = index as i64 + 1;
            assert!((1..=version).contains(&m.floor), "{}", m.name);
            assert_eq!(MIGRATIONS[index], (m.name, m.sql));
        }
        // Before the mechanism every change counted as breaking.
        for m in &SCHEMA[..9] {
            assert_eq!(m.floor.to_string(), m.name[..4].trim_start_matches('0'));
        }
        let floor_of = |name: &str| SCHEMA.iter().find(|m| m.name == name).map(|m| m.floor);
        assert_eq!(floor_of("0010_search_facets"), Some(9));
        assert_eq!(floor_of("0011_run_event_blocks"), Some(11));
    }

    fn migrated() -> Connection {
        let mut c = Connection::open_in_memory().expect("open");
        apply(&mut c).expect("migrate");
        c
    }

    /// What a newer build would leave: its `user_version` and its floor.
    fn as_newer_build(c: &Connection, version: i64, floor: Option<i64>) {
        c.pragma_update(None, "user_version", version)
            .expect("version");
        match floor {
            Some(f) => record_floor(c, f).expect("floor"),
            None => {
                c.execute("DELETE FROM daemon_state WHERE key = ?1", [FLOOR_KEY])
                    .expect("no floor");
            }
        }
    }

    #[test]
    fn applying_twice_is_a_no_op_and_records_the_floor() {
        let mut c = migrated();
        let expected = OnDisk {
            version: latest(),
            floor: Some(SCHEMA.iter().map(|m| m.floor).max().expect("floors")),
        };
        assert_eq!(on_disk(&c).expect("on disk"), expected);
        let tables = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .expect("count")
        };
        let before = tables(&c);
        assert_eq!(apply(&mut c).expect("second"), latest());
        assert_eq!(tables(&c), before);
        assert_eq!(on_disk(&c).expect("on disk"), expected);
    }

    #[test]
    fn a_store_migrated_before_floors_existed_gets_one() {
        let mut c = migrated();
        as_newer_build(&c, latest(), None);
        apply(&mut c).expect("open");
        assert_eq!(on_disk(&c).expect("on disk").floor, Some(11));
    }

    #[test]
    fn a_newer_store_whose_floor_this_build_meets_opens_unmigrated_and_works() {
        let mut c = migrated();
        as_newer_build(&c, latest() + 1, Some(latest()));
        assert_eq!(apply(&mut c).expect("open newer"), latest());
        // Nothing migrated or rewritten: the newer build finds its own state.
        let unchanged = OnDisk {
            version: latest() + 1,
            floor: Some(latest()),
        };
        assert_eq!(on_disk(&c).expect("on disk"), unchanged);

        let req: super::super::conversations::AppendMessages = serde_json::from_value(
            serde_json::json!({"messages": [{"role": "user", "content": "after the rollback"}]}),
        )
        .expect("request");
        let appended = super::super::conversations::append(&mut c, "s1", &req).expect("write");
        assert_eq!(appended.inserted, 1);
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'rollback'",
                [],
                |r| r.get(0),
            )
            .expect("read");
        assert_eq!(n, 1);
        assert_eq!(on_disk(&c).expect("on disk"), unchanged);
    }

    #[test]
    fn a_newer_store_with_a_higher_floor_is_refused_with_what_to_do() {
        let mut c = migrated();
        as_newer_build(&c, latest() + 2, Some(latest() + 1));
        let err = apply(&mut c).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found, supported, floor: Some(f) }
                if found == latest() + 2 && supported == latest() && f == latest() + 1),
            "{err}"
        );
        let text = err.to_string();
        for needle in [
            format!("version is {}", latest() + 2),
            format!("writes schema {}", latest()),
            format!("its floor is {}", latest() + 1),
            "deploy the newer release again".to_owned(),
            "restore the database from a backup".to_owned(),
        ] {
            assert!(text.contains(&needle), "{needle}: {text}");
        }
        // Refused without touching it.
        assert_eq!(
            on_disk(&c).expect("on disk"),
            OnDisk {
                version: latest() + 2,
                floor: Some(latest() + 1)
            }
        );
    }

    #[test]
    fn a_newer_store_without_a_usable_floor_is_refused() {
        let mut c = migrated();
        as_newer_build(&c, latest() + 1, None);
        let err = apply(&mut c).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { floor: None, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("it records no floor"), "{err}");
        let texts =
            ["", "eleven", "0", "-3", "1e1"].map(|t| rusqlite::types::Value::Text(t.to_owned()));
        let blob = rusqlite::types::Value::Blob(b"11".to_vec());
        for garbage in texts.into_iter().chain([blob]) {
            c.execute(
                "INSERT INTO daemon_state (key, value, updated_at) VALUES (?1, ?2, 0)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rusqlite::params![FLOOR_KEY, garbage],
            )
            .expect("garbage floor");
            let err = apply(&mut c).unwrap_err();
            assert!(
                matches!(err, StoreError::TooNew { floor: None, .. }),
                "{garbage:?}: {err}"
            );
        }
    }

    /// The rollback itself: a build (a prefix of the schema) started on the
    /// store a newer build migrated.
    #[test]
    fn a_rollback_runs_where_the_floor_allows_and_only_there() {
        let (build_9, build_10) = (&SCHEMA[..9], &SCHEMA[..10]);
        let mut c = Connection::open_in_memory().expect("open");
        apply_schema(&mut c, build_10).expect("build 10 migrates");
        assert_eq!(
            apply_schema(&mut c, build_9).expect("build 9 runs on 10"),
            OnDisk {
                version: 10,
                floor: Some(9)
            }
        );
        apply_schema(&mut c, &SCHEMA[..11]).expect("build 11 migrates");
        let err = apply_schema(&mut c, build_10).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooNew {
                    found: 11,
                    supported: 10,
                    floor: Some(11)
                }
            ),
            "{err}"
        );
        // 0012 changes an FTS5 setting only: build 11 runs on it.
        apply(&mut c).expect("latest migrates");
        assert_eq!(
            apply_schema(&mut c, &SCHEMA[..11]).expect("build 11 runs on 12"),
            OnDisk {
                version: 12,
                floor: Some(11)
            }
        );
    }

    /// The floor moves with `user_version`, in the migration's transaction:
    /// a failed migration leaves both where they were.
    #[test]
    fn a_failed_migration_leaves_version_and_floor_together() {
        let mut schema = SCHEMA[..10].to_vec();
        schema.push(Migration {
            name: "0011_broken",
            floor: 11,
            sql: "CREATE TABLE half_done (x); CREATE TABLE (",
        });
        let mut c = Connection::open_in_memory().expect("open");
        let err = apply_schema(&mut c, &schema).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Migration {
                    name: "0011_broken",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            on_disk(&c).expect("on disk"),
            OnDisk {
                version: 10,
                floor: Some(9)
            }
        );
    }
}
