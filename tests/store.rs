//! The store: migrations, refusal of a newer schema, durability across SIGKILL.

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn acknowledged_messages_survive_sigkill_and_the_db_is_intact() {
    let mut d = TestDaemon::start().await;
    let keep = d.keep_dir();
    const N: usize = 200;
    for i in 0..N {
        let r = d
            .post(&format!("/conversations/s{}/messages", i % 7))
            .json(
                &json!({"messages": [{"role": "user", "content": format!("durable message {i}")}]}),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 201, "append {i}");
    }
    d.kill();
    let dir = d.dir.clone();
    drop(d);

    let d = TestDaemon::start_with(Options {
        dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    let v: serde_json::Value = d
        .get_json("/conversations/search?q=durable&limit=200")
        .await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(N));
    drop(d);
    let conn = rusqlite::Connection::open(dir.join("data/tenantd.db")).expect("open");
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(ok, "ok");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n as usize, N);
    // The FTS index agrees with the table.
    conn.execute(
        "INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)",
        [],
    )
    .expect("fts integrity");
    drop(keep);
}

#[tokio::test]
async fn restart_applies_no_migration_twice_and_a_newer_schema_is_refused() {
    let mut d = TestDaemon::start().await;
    let keep = d.keep_dir();
    let dir = d.dir.clone();
    assert!(d.terminate().success());
    drop(d);
    let d = TestDaemon::start_with(Options {
        dir: Some(dir.clone()),
        ..Default::default()
    })
    .await;
    assert!(
        !d.logs().iter().any(|l| l.contains("applied migration")),
        "migration re-applied"
    );
    drop(d);

    let conn = rusqlite::Connection::open(dir.join("data/tenantd.db")).expect("open");
    conn.pragma_update(None, "user_version", 999).expect("bump");
    // A newer build whose change this one cannot run beside (its floor).
    let floors = conn
        .execute(
            "UPDATE daemon_state SET value = '999' WHERE key = 'schema.compat_floor'",
            [],
        )
        .expect("floor");
    assert_eq!(floors, 1);
    drop(conn);
    let out = std::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(dir.join("config.toml"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("999") && err.contains("newer"), "{err}");
    drop(keep);
}

#[test]
fn cli_check_config_names_the_bad_key_and_search_reads_the_db() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "tenant_id = \"t1\"\n[gateway]\nstop_grace = \"forever\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.stop_grace"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    std::fs::write(
        &cfg,
        format!(
            "tenant_id = \"t1\"\ndata_dir = \"{}\"\n",
            dir.path().join("d").display()
        ),
    )
    .expect("write");
    let out = std::process::Command::new(binary())
        .args(["migrate", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open(dir.path().join("d/tenantd.db")).expect("open");
    conn.execute(
        "INSERT INTO sessions (id, platform, created_at, updated_at) VALUES ('s', 'cli', 0, 0)",
        [],
    )
    .expect("session");
    conn.execute("INSERT INTO messages (session_id, platform, role, content, created_at) VALUES ('s', 'cli', 'user', 'operators grep here', 0)", []).expect("msg");
    drop(conn);
    let out = std::process::Command::new(binary())
        .args(["search", "--config"])
        .arg(&cfg)
        .arg("grep")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Piped: the snippet as plain text, no `<mark>` tags (bold only on a terminal).
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("operators grep here") && !stdout.contains("<mark>"),
        "{stdout}"
    );
}
