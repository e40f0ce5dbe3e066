//! The gateway's own history (`HERMES_HOME/state.db`) is imported into the
//! daemon's conversation store exactly once, including rows still in its WAL.

mod common;
use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The parts of hermes-agent 0.19's state.db schema the import reads.
const GATEWAY_SCHEMA: &str = "
CREATE TABLE sessions (id TEXT PRIMARY KEY, source TEXT NOT NULL, title TEXT, model TEXT,
    started_at REAL NOT NULL, ended_at REAL, message_count INTEGER DEFAULT 0);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions(id),
    role TEXT NOT NULL, content TEXT, tool_call_id TEXT, tool_calls TEXT, tool_name TEXT,
    timestamp REAL NOT NULL, token_count INTEGER, finish_reason TEXT);
";

fn seed(home: &Path) -> rusqlite::Connection {
    std::fs::create_dir_all(home).expect("home");
    let c = rusqlite::Connection::open(home.join("state.db")).expect("state.db");
    c.pragma_update(None, "journal_mode", "WAL").expect("wal");
    // Keep everything in the WAL while this connection lives.
    c.pragma_update(None, "wal_autocheckpoint", 0)
        .expect("no checkpoint");
    c.execute_batch(GATEWAY_SCHEMA).expect("schema");
    c
}

fn add(c: &rusqlite::Connection, session: &str, source: &str, role: &str, content: &str, ts: f64) {
    c.execute(
        "INSERT OR IGNORE INTO sessions (id, source, title, started_at) VALUES (?1, ?2, 'From the gateway', ?3)",
        rusqlite::params![session, source, ts],
    )
    .expect("session");
    c.execute(
        "INSERT INTO messages (session_id, role, content, timestamp, token_count) VALUES (?1, ?2, ?3, ?4, 7)",
        rusqlite::params![session, role, content, ts],
    )
    .expect("message");
}

async fn search_count(d: &TestDaemon, q: &str) -> usize {
    let v: Value = d
        .get_json(&format!("/conversations/search?q={q}&limit=200"))
        .await;
    v["items"].as_array().map(Vec::len).unwrap_or(0)
}

async fn wait_count(d: &TestDaemon, q: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = search_count(d, q).await;
        if got == n {
            return;
        }
        assert!(got < n, "imported more than once: {got} > {n}");
        assert!(Instant::now() < deadline, "only {got} of {n} imported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn gateway_history_is_imported_once_including_wal_rows() {
    let dir = tempfile::tempdir().expect("tmp");
    let home = dir.path().join("home");
    let gw = seed(&home);
    add(
        &gw,
        "20261125_080000_tg1",
        "telegram",
        "user",
        "telegram chat about pelicans",
        1_780_000_000.25,
    );
    add(
        &gw,
        "20261125_080000_tg1",
        "telegram",
        "assistant",
        "pelicans are large birds",
        1_780_000_001.75,
    );
    add(
        &gw,
        "20261125_090000_cron",
        "cron",
        "assistant",
        "daily pelicans digest",
        1_780_000_100.5,
    );
    add(
        &gw,
        "api1",
        "api_server",
        "user",
        "pelicans sent to the gateway's api directly",
        1_780_000_200.0,
    );
    // Rows are in the WAL, not the main file.
    let wal = std::fs::metadata(home.join("state.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(wal > 0, "seeded rows should sit in the WAL");

    let extra = format!(
        "[gateway]\ncommand = \"/nonexistent/hermes gateway run\"\nhermes_home = \"{}\"\n\n[runs]\nhistory_sync_interval = \"200ms\"\n",
        home.display()
    );
    let mut d = TestDaemon::start_with(Options {
        config_extra: extra.clone(),
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    // An api_server session the daemon never ran is imported too.
    wait_count(&d, "pelicans", 4).await;
    let m: Value = d.get_json("/conversations/api1/messages").await;
    assert_eq!(m["items"][0]["platform"], "api_server", "{m}");
    let m: Value = d
        .get_json("/conversations/20261125_080000_tg1/messages")
        .await;
    let items = m["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["platform"], "telegram");
    assert_eq!(items[0]["created_at"], "2026-05-28T20:26:40.250Z");
    assert_eq!(items[1]["tokens_used"], 7);

    // New rows are picked up incrementally.
    add(
        &gw,
        "20261125_080000_tg1",
        "telegram",
        "user",
        "more pelicans please",
        1_780_000_300.0,
    );
    wait_count(&d, "pelicans", 5).await;

    // A restart imports nothing twice.
    d.kill();
    drop(d);
    let d = TestDaemon::start_with(daemon_options(dir.path(), &home)).await;
    d.wait_for_log("listening", Duration::from_secs(5)).await;
    // Give the importer a full pass (it logs nothing when nothing is new):
    // add a marker row and wait for it, then check the total.
    add(&gw, "marker", "cli", "user", "marker row", 1_780_000_400.0);
    wait_count(&d, "marker", 1).await;
    assert_eq!(search_count(&d, "pelicans").await, 5);
    drop(gw);
}

fn extra_for(home: &Path) -> String {
    format!(
        "[gateway]\ncommand = \"/nonexistent/hermes gateway run\"\nhermes_home = \"{}\"\n\n[runs]\nhistory_sync_interval = \"200ms\"\n",
        home.display()
    )
}

#[tokio::test]
async fn the_daemons_own_runs_are_not_imported_twice_but_direct_api_turns_are() {
    let dir = tempfile::tempdir().expect("tmp");
    let home = dir.path().join("home");
    let gw = seed(&home);
    let d = TestDaemon::start_with(Options {
        config_extra: extra_for(&home),
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    // A run the daemon records (it waits for an agent that never comes).
    let r = d
        .post("/runs")
        .json(&serde_json::json!({"input": "herons asked through the daemon", "session_id": "sess_daemon_run"}))
        .send()
        .await
        .expect("post run");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    wait_count(&d, "herons", 1).await;
    // The gateway stores that run's turns under the daemon's session id.
    add(
        &gw,
        "sess_daemon_run",
        "api_server",
        "user",
        "herons asked through the daemon",
        1_780_000_000.0,
    );
    add(
        &gw,
        "sess_daemon_run",
        "api_server",
        "assistant",
        "herons answer kept by the daemon",
        1_780_000_001.0,
    );
    // A client of the gateway's own API, under a session the daemon never ran.
    add(
        &gw,
        "direct_client",
        "api_server",
        "user",
        "herons asked directly",
        1_780_000_002.0,
    );
    add(&gw, "marker", "cli", "user", "marker row", 1_780_000_003.0);
    wait_count(&d, "marker", 1).await;
    assert_eq!(search_count(&d, "herons").await, 2);
    let m: Value = d.get_json("/conversations/sess_daemon_run/messages").await;
    assert_eq!(m["items"].as_array().map(Vec::len), Some(1), "{m}");
    drop(gw);
}

#[tokio::test]
async fn an_installation_that_skipped_api_server_turns_rescans_them_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let home = dir.path().join("home");
    let gw = seed(&home);
    add(
        &gw,
        "tg",
        "telegram",
        "user",
        "storks on telegram",
        1_780_000_000.0,
    );
    add(
        &gw,
        "direct",
        "api_server",
        "user",
        "storks asked directly",
        1_780_000_001.0,
    );
    let opts = || Options {
        config_extra: extra_for(&home),
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut d = TestDaemon::start_with(opts()).await;
    wait_count(&d, "storks", 2).await;
    d.kill();
    drop(d);

    // Make the store what a build before migration 0007 left: the
    // api_server turn skipped, the position past it (and no later tables).
    let db = rusqlite::Connection::open(dir.path().join("data/tenantd.db")).expect("db");
    db.execute_batch(
        "DELETE FROM messages WHERE content = 'storks asked directly';
         UPDATE daemon_state SET value = '2' WHERE key = 'history_sync.last_message_id';
         ALTER TABLE messages DROP COLUMN partial;
         ALTER TABLE runs DROP COLUMN refused_approvals;
         DROP TABLE agent_policy; DROP TABLE policy_defaults_written;
         DROP TABLE agent_connections; DROP TABLE agent_specialization;
         DROP TABLE specialization_files;
         PRAGMA user_version = 6;",
    )
    .expect("downgrade");
    drop(db);

    let d = TestDaemon::start_with(opts()).await;
    wait_count(&d, "storks", 2).await;
    add(&gw, "marker", "cli", "user", "marker row", 1_780_000_400.0);
    wait_count(&d, "marker", 1).await;
    assert_eq!(search_count(&d, "storks").await, 2);
    let m: Value = d.get_json("/conversations/direct/messages").await;
    assert_eq!(m["items"].as_array().map(Vec::len), Some(1), "{m}");
    drop(gw);
}

fn daemon_options(dir: &Path, home: &Path) -> Options {
    Options {
        config_extra: format!(
            "[gateway]\ncommand = \"/nonexistent/hermes gateway run\"\nhermes_home = \"{}\"\n\n[runs]\nhistory_sync_interval = \"200ms\"\n",
            home.display()
        ),
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_huge_message_is_stored_capped_and_the_import_goes_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let home = dir.path().join("home");
    let gw = seed(&home);
    add(
        &gw,
        "s1",
        "cli",
        "user",
        "before the giant",
        1_780_000_000.0,
    );
    add(
        &gw,
        "s1",
        "cli",
        "assistant",
        &format!("giant {}", "x".repeat(50 * 1024 * 1024)),
        1_780_000_001.0,
    );
    add(&gw, "s1", "cli", "user", "after the giant", 1_780_000_002.0);
    drop(gw);
    let d = TestDaemon::start_with(daemon_options(dir.path(), &home)).await;
    wait_count(&d, "giant", 3).await;
    let m: Value = d.get_json("/conversations/s1/messages").await;
    let items = m["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{m}");
    let giant = items[1]["content"].as_str().expect("content");
    assert!(giant.len() <= 256 * 1024, "{}", giant.len());
    assert!(giant.ends_with("[cut: the gateway's message is 52428806 bytes]"));
    assert_eq!(items[2]["content"], "after the giant");
}

#[tokio::test]
async fn a_crafted_state_db_is_refused_without_running_its_schema() {
    let dir = tempfile::tempdir().expect("tmp");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let c = rusqlite::Connection::open(home.join("state.db")).expect("state.db");
    // `messages` is a view whose rows would cost a gigabyte each and never
    // end, and `sessions` has a trigger: neither may run in the daemon.
    c.execute_batch(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, source TEXT NOT NULL, title TEXT);
         CREATE TABLE log (x);
         INSERT INTO sessions VALUES ('s', 'cli', 't');
         CREATE TRIGGER t AFTER INSERT ON sessions BEGIN INSERT INTO log VALUES (zeroblob(1000000000)); END;
         CREATE VIEW messages AS
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)
           SELECT i AS id, 's' AS session_id, 'user' AS role, zeroblob(1000000000) AS content,
                  NULL AS tool_calls, 1.0 AS timestamp, NULL AS token_count FROM n;",
    )
    .expect("crafted schema");
    drop(c);
    let d = TestDaemon::start_with(daemon_options(dir.path(), &home)).await;
    let line = d
        .wait_for_log(
            "cannot import the gateway's history",
            Duration::from_secs(20),
        )
        .await;
    assert!(line.contains("gateway state.db"), "{line}");
    let v: Value = d.get_json("/conversations").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "{v}");
    let hwm_kib = vm_hwm_kib(d.pid());
    assert!(hwm_kib < 512 * 1024, "VmHWM {hwm_kib} KiB");
}

#[tokio::test]
async fn a_state_db_symlinked_outside_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let outside = dir.path().join("outside");
    let gw = seed(&outside);
    add(
        &gw,
        "s1",
        "cli",
        "user",
        "secret from outside",
        1_780_000_000.0,
    );
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    std::os::unix::fs::symlink(outside.join("state.db"), home.join("state.db")).expect("symlink");
    let d = TestDaemon::start_with(daemon_options(dir.path(), &home)).await;
    d.wait_for_log(
        "cannot import the gateway's history",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(search_count(&d, "secret").await, 0);
    drop(gw);
}
