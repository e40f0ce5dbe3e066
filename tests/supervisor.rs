//! The gateway supervisor against `tests/fake_gateway.py`: lifecycle,
//! health, backoff, crash loop, exit codes 75/78, stop escalation, no
//! orphans, never two gateways, desired state across daemon restarts.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

fn fake_gateway() -> String {
    format!("{}/tests/fake_gateway.py", env!("CARGO_MANIFEST_DIR"))
}

/// One test's world is common's `GatewayWorld` (a directory kept across
/// daemon restarts, a gateway port, fake switches); `Records` reads what
/// the fake gateway and the daemon leave in it.
type World = GatewayWorld;

trait Records {
    fn managed(&self) -> PathBuf;
    fn control(&self, v: Value);
    fn spawns(&self) -> Vec<u32>;
    fn events(&self) -> String;
    fn grandchild_of(&self, pid: u32) -> Option<u32>;
    fn gateway_processes(&self) -> Vec<u32>;
    fn transitions(&self) -> Vec<Tr>;
}

impl Records for GatewayWorld {
    fn managed(&self) -> PathBuf {
        self.dir.join("data").join("gateway-managed")
    }

    /// Write the fake gateway's control file.
    fn control(&self, v: Value) {
        std::fs::create_dir_all(self.home()).expect("home");
        std::fs::write(self.home().join("fake_gateway.json"), v.to_string()).expect("control");
    }

    /// `(pid, start_time)` of every gateway start, in order.
    fn spawns(&self) -> Vec<u32> {
        std::fs::read_to_string(self.home().join("fake_gateway/spawns.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    fn events(&self) -> String {
        std::fs::read_to_string(self.home().join("fake_gateway/events.log")).unwrap_or_default()
    }

    fn grandchild_of(&self, pid: u32) -> Option<u32> {
        std::fs::read_to_string(self.home().join(format!("fake_gateway/grandchild.{pid}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Live processes carrying this world's managed-dir marker.
    fn gateway_processes(&self) -> Vec<u32> {
        let marker = format!("HERMES_MANAGED_DIR={}", self.managed().display());
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if !alive(pid) {
                continue;
            }
            if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
                if env.split(|b| *b == 0).any(|x| x == marker.as_bytes()) {
                    out.push(pid);
                }
            }
        }
        out
    }

    fn transitions(&self) -> Vec<Tr> {
        let path = self.dir.join("data/tenantd.db");
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open db");
        let mut stmt = conn
            .prepare("SELECT at, from_state, to_state, reason, exit_code, signal, delay_ms, pid FROM agent_transitions ORDER BY id")
            .expect("prepare");
        stmt.query_map([], |r| {
            Ok(Tr {
                at: r.get(0)?,
                from: r.get(1)?,
                to: r.get(2)?,
                reason: r.get(3)?,
                exit_code: r.get(4)?,
                signal: r.get(5)?,
                delay_ms: r.get(6)?,
                pid: r.get(7)?,
            })
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }
}

#[derive(Debug, Clone)]
#[allow(dead_code)]
struct Tr {
    at: i64,
    from: String,
    to: String,
    reason: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    delay_ms: Option<i64>,
    pid: Option<u32>,
}

/// The transitions once the table has caught up with `GET /agent` (rows
/// are written by a queue behind the state machine).
async fn settled(w: &World, d: &TestDaemon) -> Vec<Tr> {
    let deadline = Instant::now() + LONG;
    loop {
        let state = agent(d).await["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let trs = w.transitions();
        if trs.last().is_some_and(|t| t.to == state) {
            return trs;
        }
        assert!(
            Instant::now() < deadline,
            "transitions never caught up with {state}: {trs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has(trs: &[Tr], from: &str, to: &str, reason: &str) -> bool {
    trs.iter()
        .any(|t| t.from == from && t.to == to && t.reason == reason)
}

/// A live, non-zombie process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s[s.rfind(')').expect("stat") + 2..].chars().next();
            state != Some('Z')
        }
        Err(_) => false,
    }
}

/// Wait until `/proc/PID` is gone entirely (not even a zombie).
async fn wait_gone(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            panic!("process {pid} still exists: {stat}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn agent(d: &TestDaemon) -> Value {
    let r = d.get("/agent").send().await.expect("GET /agent");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

async fn command(d: &TestDaemon, what: &str) -> Value {
    let r = d
        .post(&format!("/agent/{what}"))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 202, "POST /agent/{what}");
    r.json().await.expect("json")
}

/// Poll `GET /agent` until `pred` holds; returns that snapshot.
async fn wait_agent(
    d: &TestDaemon,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = agent(d).await;
        if pred(&v) {
            return v;
        }
        if Instant::now() > deadline {
            panic!("agent never reached {what} within {within:?}; last: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_state(d: &TestDaemon, state: &str, within: Duration) -> Value {
    wait_agent(d, within, state, |v| v["state"] == state).await
}

const LONG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn starts_to_running_with_managed_scope_capabilities_and_logs() {
    let w = World::new();
    let d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    assert_eq!(v["desired"], "running");
    let pid = v["pid"].as_u64().expect("pid") as u32;
    assert!(alive(pid));
    assert_eq!(v["release"], "0.19.0-fake");
    let v = wait_agent(&d, LONG, "capabilities", |v| {
        v["capabilities"]["fake"] == true
    })
    .await;
    assert!(v["uptime_s"].is_u64(), "{v}");

    // The managed scope holds the daemon's keys, private.
    use std::os::unix::fs::PermissionsExt;
    let env_path = w.managed().join(".env");
    let text = std::fs::read_to_string(&env_path).expect("managed .env");
    assert!(
        text.contains(&format!("API_SERVER_PORT={}", w.port)),
        "{text}"
    );
    assert!(text.contains("API_SERVER_ENABLED=true"), "{text}");
    // The gateway's own respawn-storm breaker is off (the daemon owns
    // backoff), in the scope that wins over the tenant's .env and in the
    // process environment.
    assert!(text.contains("\nHERMES_GATEWAY_MAX_STARTS=0\n"), "{text}");
    // No container-mode re-exec: the child stays the gateway.
    assert!(text.contains("\nHERMES_DEV=1\n"), "{text}");
    let pid = v["pid"].as_u64().expect("pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|e| e == b"HERMES_GATEWAY_MAX_STARTS=0"),
        "the gateway's environment does not disable its respawn breaker"
    );
    let key_line = text
        .lines()
        .find(|l| l.starts_with("API_SERVER_KEY="))
        .expect("key line");
    let key = key_line.trim_start_matches("API_SERVER_KEY=");
    assert!(key.len() >= 32);
    for p in [env_path.clone(), d.data_dir().join("gateway_api_key")] {
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", p.display());
    }
    // The key is a secret: not in the API answer, not in the daemon's logs.
    assert!(!v.to_string().contains(key));
    assert!(!d.logs().join("\n").contains(key));

    // The gateway's output reaches tracing (target gateway) and the log file.
    d.wait_for_log("a line on stderr", LONG).await;
    let line = d.wait_for_log("listening on 127.0.0.1", LONG).await;
    assert!(line.contains("\"target\":\"gateway\""), "{line}");
    let file = std::fs::read_to_string(d.data_dir().join("logs/gateway.log")).expect("log file");
    assert!(file.contains("a line on stderr"), "{file}");

    let trs = settled(&w, &d).await;
    assert!(
        has(&trs, "stopped", "starting", "desired_running"),
        "{trs:?}"
    );
    assert!(has(&trs, "starting", "running", "healthy"), "{trs:?}");

    let version: Value = d
        .get("/version")
        .send()
        .await
        .expect("version")
        .json()
        .await
        .expect("json");
    assert_eq!(version["agent_release"], "0.19.0-fake");
}

/// What systemd gives the daemon is the daemon's: READY=1 arrives on its
/// notification socket, and the gateway's environment carries none of it
/// (nor the daemon's own HERMES_TENANTD_* settings).
#[tokio::test]
async fn the_gateway_gets_none_of_the_service_managers_variables() {
    let mut w = World::new();
    let sock_path = w.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(LONG)).expect("timeout");
    for (k, v) in [
        ("NOTIFY_SOCKET", sock_path.to_string_lossy().into_owned()),
        // Another process's watchdog: the daemon must not ping it, and the
        // gateway must not see it.
        ("WATCHDOG_USEC", "600000000".to_owned()),
        ("WATCHDOG_PID", "1".to_owned()),
        ("LISTEN_FDS", "0".to_owned()),
        ("HERMES_TENANTD_LOG__LEVEL", "info".to_owned()),
    ] {
        w.env.push((k.to_owned(), v));
    }
    let d = w.daemon().await;
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification from the daemon");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");

    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid") as u32;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("gateway environ");
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter_map(|kv| kv.split(|b| *b == b'=').next())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "HERMES_MANAGED_DIR"), "{names:?}");
    for leaked in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
    ] {
        assert!(!names.iter().any(|n| n == leaked), "{leaked} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("HERMES_TENANTD_")),
        "{names:?}"
    );
}

#[tokio::test]
async fn stop_and_start_are_idempotent_planned_and_leave_nothing_behind() {
    let w = World::new().fake("grandchild", "1");
    let d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid") as u32;
    let grandchild = w.grandchild_of(pid).expect("grandchild pid");
    assert!(alive(grandchild));

    let r = command(&d, "stop").await;
    assert_eq!(r["desired"], "stopped");
    let v = wait_state(&d, "stopped", LONG).await;
    assert_eq!(v["pid"], Value::Null);
    assert_eq!(v["last_exit"]["reason"], "planned");
    // The real gateway exits 1 on SIGTERM; a planned stop is not a crash.
    assert_eq!(v["last_exit"]["code"], 1);
    assert_eq!(v["restarts"], 0);
    wait_gone(pid, LONG).await;
    wait_gone(grandchild, LONG).await;
    assert!(
        w.events().contains(&format!("{pid} sigterm planned=true")),
        "planned-stop marker not seen by the gateway: {}",
        w.events()
    );
    // Idempotent stop.
    let r = command(&d, "stop").await;
    assert_eq!(r["state"], "stopped");

    command(&d, "start").await;
    let v = wait_state(&d, "running", LONG).await;
    let spawned = w.spawns().len();
    // Double start is a no-op.
    let r = command(&d, "start").await;
    assert_eq!(r["state"], "running");
    assert_eq!(r["pid"], v["pid"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.spawns().len(), spawned);

    let trs = settled(&w, &d).await;
    assert!(has(&trs, "running", "stopping", "stop"), "{trs:?}");
    assert!(has(&trs, "stopping", "stopped", "stop"), "{trs:?}");
    assert!(has(&trs, "stopped", "starting", "start"), "{trs:?}");
}

#[tokio::test]
async fn restart_command_replaces_the_process() {
    let w = World::new();
    let d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid");
    command(&d, "restart").await;
    let v = wait_agent(&d, LONG, "running with a new pid", |v| {
        v["state"] == "running" && v["pid"].as_u64().is_some_and(|p| p != pid)
    })
    .await;
    assert_eq!(v["restarts"], 1);
    wait_gone(pid as u32, LONG).await;
    let trs = settled(&w, &d).await;
    assert!(has(&trs, "running", "stopping", "restart"), "{trs:?}");
    assert!(has(&trs, "stopped", "starting", "restart"), "{trs:?}");
}

/// The agent plants a symlink at the planned-stop marker's name pointing
/// at a file outside its home: the daemon replaces the link (never writes
/// through it), the stop is still announced as planned, the restart works.
#[tokio::test]
async fn planned_stop_marker_symlink_is_never_written_through() {
    let w = World::new();
    let d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid");
    let outside = w.dir.join("outside-victim");
    std::fs::write(&outside, "precious bytes").expect("victim");
    let before = hermes_tenantd::hex::sha256(&std::fs::read(&outside).expect("read"));
    let marker = w.home().join(".gateway-planned-stop.json");
    std::os::unix::fs::symlink(&outside, &marker).expect("plant");
    // And at the temp name an older daemon used (`.NAME.tmpPID`).
    let old_temp = w
        .home()
        .join(format!(".gateway-planned-stop.json.tmp{}", d.pid()));
    std::os::unix::fs::symlink(&outside, &old_temp).expect("plant");
    command(&d, "restart").await;
    wait_agent(&d, LONG, "running with a new pid", |v| {
        v["state"] == "running" && v["pid"].as_u64().is_some_and(|p| p != pid)
    })
    .await;
    let after = hermes_tenantd::hex::sha256(&std::fs::read(&outside).expect("read"));
    assert_eq!(before, after, "the link's target was written through");
    assert!(
        w.events().contains(&format!("{pid} sigterm planned=true")),
        "the marker was written as a file of its own: {}",
        w.events()
    );
    assert!(
        std::fs::symlink_metadata(&marker).is_err(),
        "the marker is removed after the stop"
    );
}

#[tokio::test]
async fn ready_after_a_delay_stays_starting_until_health_answers() {
    let w = World::new().fake("ready_delay", "1.0");
    let d = w.daemon().await;
    let started = Instant::now();
    wait_state(&d, "starting", LONG).await;
    let v = wait_state(&d, "running", LONG).await;
    assert!(started.elapsed() >= Duration::from_millis(700), "{v}");
    assert_eq!(w.spawns().len(), 1);
}

#[tokio::test]
async fn never_ready_hits_the_start_timeout_and_backs_off() {
    let w = World::new().fake("never_ready", "1");
    let config = w
        .config()
        .replace("start_timeout = \"10s\"", "start_timeout = \"700ms\"");
    let d = TestDaemon::start_with(Options {
        config_extra: config,
        env: w.env.clone(),
        dir: Some(w.dir.clone()),
    })
    .await;
    let v = wait_agent(&d, LONG, "backoff after start timeout", |v| {
        v["state"] == "backoff" && v["reason"] == "start_timeout"
    })
    .await;
    assert!(
        v["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("/health"),
        "{v}"
    );
    let trs = settled(&w, &d).await;
    assert!(
        has(&trs, "starting", "stopping", "start_timeout"),
        "{trs:?}"
    );
    assert!(has(&trs, "stopping", "backoff", "start_timeout"), "{trs:?}");
    // And it tries again.
    wait_agent(&d, LONG, "a second start", |_| w.spawns().len() >= 2).await;
}

#[tokio::test]
async fn crashes_back_off_growing_to_the_cap_then_crash_loop_fails_and_start_clears_it() {
    let w = World::new()
        .fake("exit_after", "0.05")
        .fake("exit_code", "3");
    let config = w
        .config()
        .replace("crash_loop_count = 10", "crash_loop_count = 5")
        .replace("start_timeout = \"10s\"", "start_timeout = \"5s\"");
    let d = TestDaemon::start_with(Options {
        config_extra: config,
        env: w.env.clone(),
        dir: Some(w.dir.clone()),
    })
    .await;
    let v = wait_agent(&d, LONG, "failed crash_loop", |v| {
        v["state"] == "failed" && v["reason"] == "crash_loop"
    })
    .await;
    assert_eq!(v["last_exit"]["reason"], "crash");
    assert_eq!(v["last_exit"]["code"], 3);
    assert!(
        v["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("restarts"),
        "{v}"
    );
    let trs = settled(&w, &d).await;
    let delays: Vec<i64> = trs
        .iter()
        .filter(|t| t.to == "backoff")
        .map(|t| t.delay_ms.expect("delay"))
        .collect();
    // 100, 200, 400, 400, 400 ms (jitter takes off at most 20 %).
    assert_eq!(delays.len(), 5, "{trs:?}");
    let full = [100, 200, 400, 400, 400];
    for (d, f) in delays.iter().zip(full) {
        assert!(*d <= f && *d >= f * 8 / 10 - 1, "delays {delays:?}");
    }
    // The wait really happened: each respawn came at least `delay` later.
    for (i, t) in trs.iter().enumerate().filter(|(_, t)| t.to == "backoff") {
        let next = trs[i + 1..]
            .iter()
            .find(|n| n.to == "starting")
            .expect("a start after backoff");
        assert!(
            next.at - t.at >= t.delay_ms.expect("delay") - 5,
            "{t:?} -> {next:?}"
        );
        assert_eq!(next.reason, "retry");
    }
    let failed = trs.iter().find(|t| t.to == "failed").expect("failed");
    assert_eq!(failed.reason, "crash_loop");
    assert_eq!(failed.delay_ms, Some(400));

    // Still retried at the cap while failed.
    let n = w.spawns().len();
    wait_agent(&d, LONG, "a retry while failed", |_| w.spawns().len() > n).await;

    // A start while failed clears the backoff and tries now.
    let mut cleared = false;
    for _ in 0..10 {
        wait_state(&d, "failed", LONG).await;
        let r = command(&d, "start").await;
        if r["state"] == "starting" && r["reason"] == "start" {
            cleared = true;
            break;
        }
    }
    assert!(cleared, "a start while failed did not start at once");
    // That start crashes too, but the window and backoff were cleared: the
    // next step is a short backoff, not failed.
    let v = wait_agent(&d, LONG, "backoff after the cleared start", |v| {
        v["state"] == "backoff" || v["state"] == "failed"
    })
    .await;
    assert_eq!(v["state"], "backoff", "{v}");
    let trs = settled(&w, &d).await;
    let last = trs
        .iter()
        .rev()
        .find(|t| t.to == "backoff")
        .expect("backoff");
    assert!(last.delay_ms.expect("delay") <= 100, "{last:?}");
    assert!(has(&trs, "failed", "starting", "start"), "{trs:?}");

    // Healthy again: it settles in running.
    w.control(serde_json::json!({"exit_after": null}));
    wait_state(&d, "running", LONG).await;
}

#[tokio::test]
async fn exit_75_respawns_at_once_without_a_backoff_step() {
    let w = World::new()
        .fake("exit_after", "0.5")
        .fake("exit_code", "75")
        .fake("exit_spawns", "1");
    let d = w.daemon().await;
    wait_agent(&d, LONG, "second process running", |v| {
        v["state"] == "running" && w.spawns().len() == 2
    })
    .await;
    let trs = settled(&w, &d).await;
    assert!(!trs.iter().any(|t| t.to == "backoff"), "{trs:?}");
    let i = trs
        .iter()
        .position(|t| t.to == "stopped" && t.reason == "restart_request")
        .expect("restart_request");
    assert_eq!(trs[i].exit_code, Some(75));
    let next = &trs[i + 1];
    assert_eq!(
        (next.to.as_str(), next.reason.as_str()),
        ("starting", "restart_request")
    );
    // No backoff step: the next transition is straight to `starting` (a
    // backoff would record a `backoff` state with its delay in between).
    assert!(next.delay_ms.unwrap_or(0) == 0, "{trs:?}");
    let v = agent(&d).await;
    assert_eq!(v["last_exit"]["reason"], "restart_request");
    assert_eq!(v["restarts"], 1);
}

#[tokio::test]
async fn exit_78_fails_with_config_until_the_config_changes_or_a_start() {
    let w = World::new()
        .fake("exit_after", "0.3")
        .fake("exit_code", "78")
        .fake("exit_spawns", "2");
    let d = w.daemon().await;
    let v = wait_agent(&d, LONG, "failed config", |v| {
        v["state"] == "failed" && v["reason"] == "config"
    })
    .await;
    assert_eq!(v["last_exit"]["code"], 78);
    // No restart on its own.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(w.spawns().len(), 1);
    assert_eq!(agent(&d).await["state"], "failed");

    // A configuration change lifts it (the second start exits 78 again).
    std::fs::write(w.home().join("config.yaml"), "model: {}\n").expect("config");
    wait_agent(&d, LONG, "second failed config", |v| {
        v["state"] == "failed" && w.spawns().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.spawns().len(), 2);

    // A start from the hub lifts it too.
    command(&d, "start").await;
    wait_state(&d, "running", LONG).await;
    let trs = settled(&w, &d).await;
    assert!(
        has(&trs, "starting", "failed", "config") || has(&trs, "running", "failed", "config"),
        "{trs:?}"
    );
    assert!(has(&trs, "failed", "starting", "config_changed"), "{trs:?}");
    assert!(has(&trs, "failed", "starting", "start"), "{trs:?}");
    assert!(!trs.iter().any(|t| t.to == "backoff"), "{trs:?}");
}

#[tokio::test]
async fn unhealthy_gateway_is_restarted() {
    let w = World::new();
    let d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid");
    let r = d
        .client
        .post(format!("http://127.0.0.1:{}/fake/unhealthy", w.port))
        .json(&serde_json::json!({"on": true}))
        .send()
        .await
        .expect("fake control");
    assert_eq!(r.status(), 200);
    let v = wait_agent(&d, LONG, "running again with a new pid", |v| {
        v["state"] == "running" && v["pid"].as_u64().is_some_and(|p| p != pid)
    })
    .await;
    assert_eq!(v["restarts"], 1);
    let trs = settled(&w, &d).await;
    assert!(has(&trs, "running", "unhealthy", "unhealthy"), "{trs:?}");
    assert!(has(&trs, "unhealthy", "stopping", "unhealthy"), "{trs:?}");
    assert!(has(&trs, "stopping", "backoff", "unhealthy"), "{trs:?}");
    wait_gone(pid as u32, LONG).await;
}

#[tokio::test]
async fn death_by_signal_is_a_crash_with_the_signal_recorded() {
    let w = World::new();
    let d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid");
    w.crash_gateway(11).await;
    let v = wait_agent(&d, LONG, "running again with a new pid", |v| {
        v["state"] == "running" && v["pid"].as_u64().is_some_and(|p| p != pid)
    })
    .await;
    assert_eq!(v["last_exit"]["reason"], "crash", "{v}");
    assert_eq!(v["last_exit"]["signal"], 11, "{v}");
    assert_eq!(v["last_exit"]["code"], Value::Null, "{v}");
    let trs = settled(&w, &d).await;
    let b = trs.iter().find(|t| t.to == "backoff").expect("backoff");
    assert_eq!(
        (b.from.as_str(), b.reason.as_str(), b.signal),
        ("running", "crash", Some(11))
    );
}

#[tokio::test]
async fn stop_escalates_to_sigkill_when_sigterm_is_ignored_and_reaps_everything() {
    let w = World::new()
        .fake("ignore_term", "1")
        .fake("grandchild", "1")
        .fake("grandchild_ignore_term", "1");
    let config = w
        .config()
        .replace("stop_grace = \"3s\"", "stop_grace = \"600ms\"");
    let d = TestDaemon::start_with(Options {
        config_extra: config,
        env: w.env.clone(),
        dir: Some(w.dir.clone()),
    })
    .await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid") as u32;
    let grandchild = w.grandchild_of(pid).expect("grandchild");
    let asked = Instant::now();
    command(&d, "stop").await;
    wait_state(&d, "stopping", LONG).await;
    let v = wait_state(&d, "stopped", LONG).await;
    let took = asked.elapsed();
    assert!(took >= Duration::from_millis(550), "stopped after {took:?}");
    assert_eq!(v["last_exit"]["signal"], 9, "{v}");
    assert!(
        w.events().contains(&format!("{pid} sigterm")),
        "{}",
        w.events()
    );
    wait_gone(pid, LONG).await;
    wait_gone(grandchild, LONG).await;
    assert!(w.gateway_processes().is_empty());
    assert!(
        d.logs().iter().any(|l| l.contains("grace period; SIGKILL")),
        "no escalation logged"
    );
}

#[tokio::test]
async fn a_crashed_gateways_tool_processes_are_killed_with_it() {
    let w = World::new()
        .fake("grandchild", "1")
        .fake("exit_after", "0.8")
        .fake("exit_code", "1")
        .fake("exit_spawns", "1");
    let d = w.daemon().await;
    wait_agent(&d, LONG, "second process running", |v| {
        v["state"] == "running" && w.spawns().len() == 2
    })
    .await;
    let first = w.spawns()[0];
    let gc = w.grandchild_of(first).expect("grandchild");
    wait_gone(first, LONG).await;
    wait_gone(gc, LONG).await;
}

#[tokio::test]
async fn daemon_killed_then_restarted_never_yields_two_gateways() {
    let w = World::new().fake("grandchild", "1");
    let mut d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid") as u32;
    let gc = w.grandchild_of(pid).expect("grandchild");
    d.kill();
    // PR_SET_PDEATHSIG: the gateway dies with the daemon.
    wait_gone(pid, LONG).await;
    // Its tool subprocess may outlive it; the next daemon must clear it.
    let d2 = w.daemon().await;
    let v = wait_state(&d2, "running", LONG).await;
    let pid2 = v["pid"].as_u64().expect("pid") as u32;
    assert_ne!(pid, pid2);
    wait_gone(gc, LONG).await;
    let procs = w.gateway_processes();
    let gc2 = w.grandchild_of(pid2).expect("new grandchild");
    let mut expected = vec![pid2, gc2];
    expected.sort();
    let mut procs = procs;
    procs.sort();
    assert_eq!(procs, expected);
}

#[tokio::test]
async fn a_leftover_gateway_from_an_older_daemon_is_stopped_before_spawning() {
    let w = World::new();
    // A gateway that a previous daemon left (no parent-death signal), on the
    // same port, with the same managed dir.
    std::fs::create_dir_all(w.home()).expect("home");
    std::fs::create_dir_all(w.managed()).expect("managed");
    use std::os::unix::process::CommandExt;
    let mut leftover = std::process::Command::new(python())
        .arg(fake_gateway())
        .process_group(0)
        .env("HERMES_HOME", w.home())
        .env("HERMES_MANAGED_DIR", w.managed())
        .env("API_SERVER_PORT", w.port.to_string())
        .env("API_SERVER_KEY", "leftover-key-0123456789abcdef0123")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn leftover");
    let old = leftover.id();
    let deadline = Instant::now() + LONG;
    while std::net::TcpStream::connect(("127.0.0.1", w.port)).is_err() {
        assert!(Instant::now() < deadline, "leftover never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid") as u32;
    assert_ne!(pid, old);
    let status = leftover.wait().expect("leftover reaped");
    assert!(!status.success());
    assert_eq!(w.gateway_processes(), vec![pid]);
    let trs = settled(&w, &d).await;
    assert!(
        has(&trs, "stopped", "stopped", "leftover_stopped"),
        "{trs:?}"
    );
    d.wait_for_log("left by a previous daemon", LONG).await;
}

#[tokio::test]
async fn a_foreign_process_on_the_port_is_not_taken_for_the_gateway() {
    let w = World::new();
    // Someone else listens on the gateway's port (and would answer /health).
    let squatter = std::net::TcpListener::bind(("127.0.0.1", w.port)).expect("bind");
    let d = w.daemon().await;
    let v = wait_agent(&d, LONG, "port_in_use", |v| v["reason"] == "port_in_use").await;
    assert_eq!(v["state"], "backoff", "{v}");
    assert!(
        v["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("in use"),
        "{v}"
    );
    assert!(w.spawns().is_empty(), "spawned while the port was taken");
    drop(squatter);
    wait_state(&d, "running", LONG).await;
}

#[tokio::test]
async fn desired_state_survives_daemon_restarts() {
    let w = World::new();
    let mut d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid") as u32;
    command(&d, "stop").await;
    wait_state(&d, "stopped", LONG).await;
    assert!(d.terminate().success());
    drop(d);

    let mut d = w.daemon().await;
    let v = agent(&d).await;
    assert_eq!(v["desired"], "stopped");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let v = agent(&d).await;
    assert_eq!(v["state"], "stopped", "{v}");
    assert_eq!(w.spawns().len(), 1);
    wait_gone(pid, LONG).await;

    command(&d, "start").await;
    let v = wait_state(&d, "running", LONG).await;
    let pid2 = v["pid"].as_u64().expect("pid") as u32;
    // A graceful daemon stop stops the gateway but keeps desired = running.
    assert!(d.terminate().success());
    wait_gone(pid2, LONG).await;
    drop(d);
    // The daemon flushed its records before exiting.
    let trs = w.transitions();
    assert!(
        has(&trs, "stopping", "stopped", "daemon_shutdown"),
        "{trs:?}"
    );

    let d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    assert_eq!(v["desired"], "running");
    assert_eq!(w.gateway_processes().len(), 1);
}

/// A suspension the hub set holds across daemon restarts even with no hub
/// configured to repeat it: the agent is not started, and the API refuses to.
#[tokio::test]
async fn a_persisted_suspension_keeps_the_agent_stopped_after_a_daemon_restart() {
    let w = World::new();
    let mut d = w.daemon().await;
    let v = wait_state(&d, "running", LONG).await;
    let pid = v["pid"].as_u64().expect("pid") as u32;
    assert!(d.terminate().success());
    drop(d);
    wait_gone(pid, LONG).await;
    {
        let c = rusqlite::Connection::open(w.dir.join("data/tenantd.db")).expect("open db");
        // Desired running (as the operator last asked), access suspended.
        for (k, v) in [("agent.desired", "running"), ("hub.access", "suspended")] {
            c.execute(
                "INSERT INTO daemon_state (key, value, updated_at) VALUES (?1, ?2, 0)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [k, v],
            )
            .expect("daemon_state");
        }
    }

    let d = w.daemon().await;
    let v = agent(&d).await;
    assert_eq!(v["desired"], "stopped", "{v}");
    // Absence of a spawn needs time to pass: several supervisor ticks.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(agent(&d).await["state"], "stopped");
    assert_eq!(w.spawns().len(), 1, "the suspended agent was started");
    let r = d.post("/agent/start").send().await.expect("POST");
    expect_problem(r, 403, "suspended").await;
    assert_eq!(w.spawns().len(), 1);
}

#[tokio::test]
async fn concurrent_start_stop_restart_calls_end_consistent() {
    let w = World::new();
    let d = w.daemon().await;
    wait_state(&d, "running", LONG).await;
    let cmds = [
        "start", "stop", "restart", "stop", "start", "restart", "start", "stop",
    ];
    let mut futs = Vec::new();
    for round in 0..3 {
        for (i, c) in cmds.iter().enumerate() {
            let req = d.post(&format!("/agent/{c}"));
            futs.push(async move {
                tokio::time::sleep(Duration::from_millis(
                    ((i * 7 + round * 3) % 11) as u64 * 10,
                ))
                .await;
                req.send().await.expect("send").status().as_u16()
            });
        }
    }
    let sampler = async {
        let mut max = 0;
        for _ in 0..60 {
            max = max.max(w.gateway_processes().len());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        max
    };
    let (codes, max_seen) = tokio::join!(futures_join_all(futs), sampler);
    assert!(codes.iter().all(|c| *c == 202), "{codes:?}");
    assert!(max_seen <= 1, "saw {max_seen} gateways at once");
    // Settle: whatever was asked last decides.
    let v = wait_agent(&d, LONG, "settled", |v| {
        (v["desired"] == "running" && v["state"] == "running")
            || (v["desired"] == "stopped" && v["state"] == "stopped")
    })
    .await;
    let live = w.gateway_processes();
    if v["desired"] == "running" {
        assert_eq!(live, vec![v["pid"].as_u64().expect("pid") as u32]);
    } else {
        assert!(live.is_empty(), "{live:?}");
    }
    // A final stop leaves nothing.
    command(&d, "stop").await;
    wait_state(&d, "stopped", LONG).await;
    let deadline = Instant::now() + LONG;
    while !w.gateway_processes().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn futures_join_all<F>(futs: Vec<F>) -> Vec<u16>
where
    F: std::future::Future<Output = u16> + Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn missing_gateway_command_reports_failed_and_the_rest_works() {
    let w = World::new();
    let config = w.config().replace(
        &format!("command = \"{} {}\"", python(), fake_gateway()),
        "command = \"hermes-not-installed-here gateway run\"",
    );
    let d = TestDaemon::start_with(Options {
        config_extra: config,
        env: vec![],
        dir: Some(w.dir.clone()),
    })
    .await;
    let v = wait_state(&d, "failed", LONG).await;
    assert_eq!(v["reason"], "spawn");
    assert!(
        v["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("not found"),
        "{v}"
    );
    let r = d.get("/version").send().await.expect("version");
    assert_eq!(r.status(), 200);
    let r = d.get("/memory/stats").send().await.expect("memory");
    assert_eq!(r.status(), 200);
}
