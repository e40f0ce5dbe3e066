//! A release rollback: the previous build started on the store a newer
//! build migrated runs when the store's compatibility floor allows it, and
//! refuses, saying what to do, when it does not.

mod common;
use common::*;
use hermes_tenantd::store::migrations::{self, FLOOR_KEY};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// `hermes-tenantd ARGS --config CONFIG`, waited for.
fn cli(args: &[&str], config: &Path) -> Output {
    Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hermes-tenantd")
}

/// A store migrated by this build, then left as a newer build would leave
/// it: `user_version` and the recorded floor. Returns the config that
/// `migrate` used (the same data directory as `TestDaemon` on `dir`).
fn newer_store(dir: &Path, version: i64, floor: i64) -> std::path::PathBuf {
    let config = dir.join("migrate.toml");
    let credential = dir.join("credential");
    write_private(&credential, TOKEN);
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"{TENANT}\"\ndata_dir = \"{}\"\n\n[listen]\naddr = \"127.0.0.1:0\"\n\n[auth]\ncredential_file = \"{}\"\n",
            dir.join("data").display(),
            credential.display()
        ),
    )
    .expect("config");
    let out = cli(&["migrate"], &config);
    assert!(out.status.success(), "{out:?}");
    let conn = rusqlite::Connection::open(dir.join("data/tenantd.db")).expect("open");
    conn.pragma_update(None, "user_version", version)
        .expect("version");
    let floors = conn
        .execute(
            "UPDATE daemon_state SET value = ?1 WHERE key = ?2",
            rusqlite::params![floor.to_string(), FLOOR_KEY],
        )
        .expect("floor");
    assert_eq!(floors, 1, "this build recorded no floor");
    config
}

fn schema_on_disk(dir: &Path) -> (i64, String) {
    let conn = rusqlite::Connection::open(dir.join("data/tenantd.db")).expect("open");
    let version = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    let floor = conn
        .query_row(
            "SELECT value FROM daemon_state WHERE key = ?1",
            [FLOOR_KEY],
            |r| r.get(0),
        )
        .expect("floor");
    (version, floor)
}

#[tokio::test]
async fn a_rollback_runs_on_a_newer_store_whose_floor_it_meets() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let latest = migrations::latest();
    let newer = latest + 1;
    let config = newer_store(&dir, newer, latest);

    // The command line says what the daemon will do.
    let out = cli(&["migrate"], &config);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!("schema version {latest};"))
            && said.contains(&format!("the database has schema {newer}"))
            && said.contains("no migration applied"),
        "{said}"
    );
    let out = Command::new(binary())
        .arg("version")
        .output()
        .expect("version");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("(schema {latest};"))
            && said.contains(&format!("floor is {latest} or lower")),
        "{said}"
    );

    let d = TestDaemon::start_with(Options {
        dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    let warning = d
        .wait_for_log("written by a newer hermes-tenantd", Duration::from_secs(10))
        .await;
    assert!(
        warning.contains("WARN")
            && warning.contains(&format!("schema {newer}"))
            && warning.contains(&format!("(schema {latest})")),
        "{warning}"
    );
    // `schema_version` keeps its meaning: the schema this build writes.
    let version = d.get_json("/version").await;
    assert_eq!(version["schema_version"], latest, "{version}");
    assert!(
        !d.logs().iter().any(|l| l.contains("applied migration")),
        "migrated a newer store"
    );

    // It writes and reads.
    let r = d
        .post("/conversations/rolled-back/messages")
        .json(&json!({"messages": [{"role": "user", "content": "written after the rollback"}]}))
        .send()
        .await
        .expect("append");
    assert_eq!(r.status(), 201);
    let found = d.get_json("/conversations/search?q=rollback").await;
    assert_eq!(found["items"].as_array().map(Vec::len), Some(1), "{found}");
    drop(d);

    // The newer build finds its schema as it left it.
    assert_eq!(schema_on_disk(&dir), (newer, latest.to_string()));
}

#[test]
fn a_newer_store_whose_floor_is_above_this_build_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let latest = migrations::latest();
    let config = newer_store(dir, latest + 2, latest + 1);
    // `run` and `migrate` refuse alike, before touching the store.
    for command in ["run", "migrate"] {
        let out = cli(&[command], &config);
        assert!(!out.status.success(), "{command}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("schema version is {}", latest + 2))
                && err.contains(&format!("its floor is {}", latest + 1))
                && err.contains("deploy the newer release again")
                && err.contains("restore the database from a backup"),
            "{command}: {err}"
        );
    }
    assert_eq!(schema_on_disk(dir), (latest + 2, (latest + 1).to_string()));
}
