//! The agent cannot redirect the managed scope through its own `.env`: a
//! reserved binding it writes there (`HERMES_MANAGED_DIR` above all, which
//! hermes-agent 0.19.0 reads after loading that file over its environment)
//! is gone before the next gateway reads the file, however the gateway is
//! restarted, and every other byte of the file is kept. A `.env` the daemon
//! cannot check is never handed to a gateway. Written while the gateway
//! runs (0.19.0 reloads the file per turn), it is removed at once and that
//! gateway replaced when idle; a `.env` swapped for a link meanwhile
//! replaces the gateway with none. An external secret source in
//! `config.yaml` that may override (it could set `HERMES_MANAGED_DIR`) keeps
//! the gateway down the same ways.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

const LONG: Duration = Duration::from_secs(20);
/// The tenant's own lines: kept byte for byte.
const SEED: &str = "# tenant notes\r\nKEEP=1\nML=\"two\nlines\"\n";

async fn agent(d: &TestDaemon) -> Value {
    d.get_json("/agent").await
}

/// Poll `GET /agent` until `pred` holds.
async fn wait_agent(d: &TestDaemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let v = agent(d).await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "agent never {what}; last: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `.env` bytes the gateway with `pid` loaded at its start.
async fn env_seen_by(w: &GatewayWorld, pid: u64) -> String {
    let path = w.home().join(format!("fake_gateway/env_at_start.{pid}"));
    let deadline = Instant::now() + LONG;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text;
        }
        assert!(Instant::now() < deadline, "gateway {pid} recorded no .env");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A managed scope of the agent's own making: another port and key.
fn evil_scope(w: &GatewayWorld) -> (PathBuf, String) {
    let evil = w.dir.join("agent-owned-scope");
    std::fs::create_dir_all(&evil).expect("evil dir");
    let port = free_port();
    std::fs::write(
        evil.join(".env"),
        format!("API_SERVER_PORT={port}\nAPI_SERVER_KEY=agent-chosen-key-0123456789\n"),
    )
    .expect("evil .env");
    (evil, port.to_string())
}

/// A `.env` of the agent's own, outside the home, that redirects the
/// managed scope (what it links the tenant `.env` to).
fn agent_env_file(w: &GatewayWorld) -> PathBuf {
    let (evil, port) = evil_scope(w);
    let elsewhere = w.dir.join("agent-env");
    std::fs::write(
        &elsewhere,
        format!(
            "HERMES_MANAGED_DIR={}\nAPI_SERVER_PORT={port}\n",
            evil.display()
        ),
    )
    .expect("target");
    elsewhere
}

/// What the agent's shell appends to the tenant `.env`.
fn agent_appends(home: &Path, evil: &Path, port: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(home.join(".env"))
        .expect("open .env");
    write!(
        f,
        "HERMES_MANAGED_DIR={}\nAPI_SERVER_PORT={port}\n",
        evil.display()
    )
    .expect("append");
}

/// A world whose `.env` holds the tenant's seed, with a running gateway.
async fn running_world() -> (GatewayWorld, TestDaemon, u64) {
    let w = GatewayWorld::new();
    std::fs::create_dir_all(w.home()).expect("home");
    std::fs::write(w.home().join(".env"), SEED).expect("seed");
    let d = w.daemon().await;
    let v = w.wait_agent(&d, "running").await;
    let pid = v["pid"].as_u64().expect("pid");
    assert_eq!(env_seen_by(&w, pid).await, SEED);
    (w, d, pid)
}

/// After the agent's write and a restart of some kind: the next gateway
/// loaded the seed alone, runs on the daemon's port, and no log line
/// holds the agent's directory.
async fn next_gateway_saw_only_the_seed(w: &GatewayWorld, d: &TestDaemon, old: u64, evil: &Path) {
    // The fake's own record first: without the guard this fails at once
    // (the gateway listens on the agent's port and never turns healthy).
    let deadline = Instant::now() + LONG;
    let pid = loop {
        if let Some(p) = spawned(w).into_iter().find(|p| *p != old) {
            break p;
        }
        assert!(Instant::now() < deadline, "no new gateway was started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(env_seen_by(w, pid).await, SEED, "gateway {pid} loaded");
    // The guard may also have asked for a restart when idle: whichever
    // gateway runs now loaded the seed too.
    let v = wait_agent(d, "running a new gateway", |v| {
        v["state"] == "running" && v["pid"].as_u64().is_some_and(|p| p != old)
    })
    .await;
    let now = v["pid"].as_u64().expect("pid");
    assert_eq!(env_seen_by(w, now).await, SEED, "gateway {now} loaded");
    assert_eq!(
        std::fs::read_to_string(w.home().join(".env")).expect("read"),
        SEED
    );
    d.wait_for_log("HERMES_MANAGED_DIR", Duration::from_secs(5))
        .await;
    let evil = evil.display().to_string();
    assert!(
        !d.logs().iter().any(|l| l.contains(&evil)),
        "a log line holds the value"
    );
}

#[tokio::test]
async fn a_managed_dir_the_agent_writes_is_gone_before_a_restarted_gateway_starts() {
    let (w, d, pid) = running_world().await;
    let (evil, port) = evil_scope(&w);
    agent_appends(&w.home(), &evil, &port);
    let r = d.post("/agent/restart").send().await.expect("restart");
    assert_eq!(r.status(), 202);
    next_gateway_saw_only_the_seed(&w, &d, pid, &evil).await;
}

#[tokio::test]
async fn a_managed_dir_the_agent_writes_is_gone_before_a_crashed_gateway_comes_back() {
    let (w, d, pid) = running_world().await;
    let (evil, port) = evil_scope(&w);
    agent_appends(&w.home(), &evil, &port);
    w.crash_gateway(11).await;
    next_gateway_saw_only_the_seed(&w, &d, pid, &evil).await;
}

#[tokio::test]
async fn a_env_file_that_cannot_be_checked_is_never_given_to_a_gateway() {
    let (w, d, pid) = running_world().await;
    // The agent swaps `.env` for a link to a file of its own.
    let env = w.home().join(".env");
    std::fs::remove_file(&env).expect("rm");
    std::os::unix::fs::symlink(agent_env_file(&w), &env).expect("symlink");
    let spawns_before = spawned(&w).len();
    let r = d.post("/agent/restart").send().await.expect("restart");
    assert_eq!(r.status(), 202);
    let v = wait_agent(&d, "refused to start", |v| v["state"] == "failed").await;
    let err = v["last_error"].as_str().unwrap_or_default();
    assert!(err.contains(".env cannot be checked"), "{v}");
    assert!(!err.contains(&w.dir.display().to_string()), "{v}");
    assert_eq!(spawned(&w).len(), spawns_before, "a gateway was started");
    assert_ne!(v["pid"].as_u64(), Some(pid));

    // Fixed by hand: the next start goes through.
    std::fs::remove_file(&env).expect("rm link");
    std::fs::write(&env, SEED).expect("restore");
    let r = d.post("/agent/start").send().await.expect("start");
    assert_eq!(r.status(), 202);
    let v = wait_agent(&d, "running again", |v| v["state"] == "running").await;
    let pid = v["pid"].as_u64().expect("pid");
    assert_eq!(env_seen_by(&w, pid).await, SEED);
}

/// Pids of every gateway start, in order (the fake's `spawns.log`).
fn spawned(w: &GatewayWorld) -> Vec<u64> {
    std::fs::read_to_string(w.home().join("fake_gateway/spawns.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_reserved_key_written_while_the_gateway_runs_is_removed_and_that_gateway_replaced() {
    let (w, d, pid) = running_world().await;
    let (evil, port) = evil_scope(&w);
    agent_appends(&w.home(), &evil, &port);
    // Nobody asks for a restart: the file is made right again at once...
    let deadline = Instant::now() + LONG;
    while std::fs::read_to_string(w.home().join(".env")).expect("read") != SEED {
        assert!(Instant::now() < deadline, "the binding stayed in .env");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the gateway, which may have read it on a turn, is replaced
    // (when idle) by one that did not.
    next_gateway_saw_only_the_seed(&w, &d, pid, &evil).await;
}

/// What the agent writes into `config.yaml` (with its own `bin/bws`): a
/// Bitwarden source, `override_existing` left at its default (on).
/// hermes-agent 0.19.0 runs it right before the managed `.env`, so it could
/// set `HERMES_MANAGED_DIR` (checked against the real loader: README).
const OVERRIDING: &str = "model: x\nsecrets:\n  bitwarden:\n    enabled: true\n    project_id: p\n";
/// The same source, told not to override: it only fills unset variables.
const FILLING: &str = "model: x\nsecrets:\n  bitwarden:\n    enabled: true\n    project_id: p\n    override_existing: false\n";

fn refused_for_the_secret_source(v: &Value, w: &GatewayWorld) -> bool {
    let err = v["last_error"].as_str().unwrap_or_default();
    v["state"] == "failed"
        && err.contains("secrets.bitwarden")
        && err.contains("override_existing")
        && !err.contains(&w.dir.display().to_string())
}

#[tokio::test]
async fn a_secret_source_that_may_override_keeps_the_gateway_down_until_it_cannot() {
    let (w, d, pid) = running_world().await;
    std::fs::write(w.home().join("config.yaml"), OVERRIDING).expect("config");
    let spawns_before = spawned(&w).len();
    let r = d.post("/agent/restart").send().await.expect("restart");
    assert_eq!(r.status(), 202);
    let v = wait_agent(&d, "refused to start", |v| {
        refused_for_the_secret_source(v, &w)
    })
    .await;
    assert_eq!(spawned(&w).len(), spawns_before, "a gateway was started");
    assert_ne!(v["pid"].as_u64(), Some(pid));

    // Told not to override: the next start goes through, and the tenant's
    // file is as it wrote it.
    std::fs::write(w.home().join("config.yaml"), FILLING).expect("config");
    let r = d.post("/agent/start").send().await.expect("start");
    assert_eq!(r.status(), 202);
    wait_agent(&d, "running again", |v| v["state"] == "running").await;
    assert_eq!(
        std::fs::read_to_string(w.home().join("config.yaml")).expect("read"),
        FILLING
    );
}

#[tokio::test]
async fn a_secret_source_written_while_the_gateway_runs_replaces_it_with_none() {
    let (w, d, pid) = running_world().await;
    // Nobody asks for a restart: the guard sees the file change, the
    // gateway (which would run the source before its next cron job) is
    // replaced when idle, and the replacement is refused.
    std::fs::write(w.home().join("config.yaml"), OVERRIDING).expect("config");
    let v = wait_agent(&d, "replaced and refused", |v| {
        refused_for_the_secret_source(v, &w)
    })
    .await;
    assert_ne!(v["pid"].as_u64(), Some(pid));
    d.wait_for_log("config.yaml is fixed", Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn a_env_swapped_for_a_link_while_the_gateway_runs_replaces_it_with_none() {
    let (w, d, pid) = running_world().await;
    // The gateway would follow the link on its next turn: the daemon cannot
    // check it (never follows a link), so that gateway goes and none
    // replaces it, without anyone asking.
    let env = w.home().join(".env");
    let staged = w.home().join(".env.link");
    std::os::unix::fs::symlink(agent_env_file(&w), &staged).expect("symlink");
    std::fs::rename(&staged, &env).expect("swap");
    let v = wait_agent(&d, "replaced and refused", |v| {
        v["state"] == "failed"
            && v["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(".env cannot be checked"))
    })
    .await;
    assert_ne!(v["pid"].as_u64(), Some(pid));
    assert!(
        !spawned(&w).into_iter().any(|p| p != pid),
        "a gateway was started on the link"
    );
}
