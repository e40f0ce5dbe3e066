//! Agent release figures (not pass/fail): gateway down time when switching
//! between two installed releases, and the time a failed activation takes
//! to roll back (and the gateway's down time during it).
//!
//! `cargo bench --bench releases` (release build). Fake releases run
//! `tests/fake_gateway.py` (Python start-up is most of the figure). The
//! gateway's `/health` is polled every 5 ms from outside; down time is the
//! gap between the last answer of the old release and the first of the
//! new one. Knobs: `BENCH_SWITCHES` (10), `BENCH_ROLLBACKS` (5).

#[path = "common/mod.rs"]
mod bench_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Options, TestDaemon};

fn fake_release(dir: &Path, version: &str, extra_env: &str) {
    let bin = dir.join(version).join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then echo {version}; exit 0; fi\nexport FAKE_GW_VERSION={version}\n{extra_env}exec {py} {gw}\n",
        py = common::python(),
        gw = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_gateway.py"),
    );
    std::fs::write(bin.join("hermes"), script).expect("write");
    std::fs::set_permissions(bin.join("hermes"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
}

async fn state_of(d: &TestDaemon, version: &str) -> String {
    let v = d.get_json("/agent/releases").await;
    v["releases"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["version"] == version))
        .and_then(|r| r["state"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// Polls the gateway's /health every 5 ms: (when, version or None).
fn probe(
    port: u16,
    stop: Arc<Mutex<bool>>,
) -> std::thread::JoinHandle<Vec<(Instant, Option<String>)>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !*stop.lock().expect("lock") {
            let v = std::process::Command::new("curl")
                .args([
                    "-s",
                    "-m",
                    "0.2",
                    &format!("http://127.0.0.1:{port}/health"),
                ])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .and_then(|j| j["version"].as_str().map(str::to_owned));
            seen.push((Instant::now(), v));
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}

/// Gap between the last answer from `old` and the first from `new`.
fn down_time(seen: &[(Instant, Option<String>)], old: &str, new: &str) -> Option<Duration> {
    let first_new = seen.iter().position(|(_, v)| v.as_deref() == Some(new))?;
    let last_old = seen[..first_new]
        .iter()
        .rposition(|(_, v)| v.as_deref() == Some(old))?;
    Some(seen[first_new].0 - seen[last_old].0)
}

fn stats(name: &str, mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        println!("{name}: no sample");
        return None;
    }
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_millis();
    println!(
        "{name}: n={} p50={} ms p90={} ms max={} ms",
        v.len(),
        p(0.5),
        p(0.9),
        p(1.0)
    );
    Some(v[(v.len() - 1) / 2])
}

/// The limit: the same fake release started directly (no daemon), from
/// spawn to its first `/health` answer, with the 5 ms curl probe the
/// switch is measured with. A switch cannot beat a cold start of the new
/// release; what it adds is the stop of the old one and the daemon's work.
fn direct_start(release_dir: &Path, home: &Path) -> Option<Duration> {
    let port = common::free_port();
    let t0 = Instant::now();
    let mut child = std::process::Command::new(release_dir.join("bin/hermes"))
        .env("HERMES_HOME", home)
        .env("API_SERVER_PORT", port.to_string())
        .env("API_SERVER_HOST", "127.0.0.1")
        .env("API_SERVER_ENABLED", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut up = None;
    while t0.elapsed() < Duration::from_secs(30) {
        let ok = std::process::Command::new("curl")
            .args([
                "-sf",
                "-m",
                "0.2",
                &format!("http://127.0.0.1:{port}/health"),
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            up = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    up
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let switches = bench_common::env_or("BENCH_SWITCHES", 10u64);
    let rollbacks = bench_common::env_or("BENCH_ROLLBACKS", 5u64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let releases = tmp.path().join("data/releases");
    fake_release(&releases, "1.0.0", "");
    fake_release(&releases, "2.0.0", "");
    fake_release(
        &releases,
        "9.0.0",
        "export FAKE_GW_EXIT_AFTER=0.01 FAKE_GW_EXIT_CODE=78\n",
    );
    let port = common::free_port();
    let config = format!(
        "[gateway]\ncommand = \"{py} {gw}\"\nhermes_home = \"{home}\"\nport = {port}\nhealth_interval = \"100ms\"\nbackoff_base = \"50ms\"\n\n[releases]\nkeep = 10\nquarantine_after = 100\ngate_timeout = \"30s\"\n",
        py = common::python(),
        gw = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_gateway.py"),
        home = tmp.path().join("home").display(),
    );
    let d = TestDaemon::start_with(Options {
        config_extra: config,
        env: vec![],
        dir: Some(tmp.path().to_path_buf()),
    })
    .await;

    let mut active = "0.19.0-fake".to_owned();
    let mut downs = Vec::new();
    let mut totals = Vec::new();
    for i in 0..switches {
        let target = if i % 2 == 0 { "1.0.0" } else { "2.0.0" };
        let stop = Arc::new(Mutex::new(false));
        let prober = probe(port, stop.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        d.post(&format!("/agent/releases/{target}/activate"))
            .send()
            .await
            .expect("activate");
        while state_of(&d, target).await != "active" {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "switch to {target} never finished"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        totals.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
        *stop.lock().expect("lock") = true;
        let seen = prober.join().expect("probe");
        if let Some(dt) = down_time(&seen, &active, target) {
            downs.push(dt);
        }
        active = target.to_owned();
    }
    // The limit, measured in this run between the same releases.
    let direct_home = tmp.path().join("direct-home");
    std::fs::create_dir_all(&direct_home).expect("mkdir");
    let direct: Vec<Duration> = (0..switches)
        .filter_map(|i| {
            let v = if i % 2 == 0 { "1.0.0" } else { "2.0.0" };
            direct_start(&releases.join(v), &direct_home)
        })
        .collect();
    let limit = stats(
        "limit: the release started directly -> first /health",
        direct,
    );
    let down = stats("switch: gateway down time", downs);
    stats("switch: POST activate -> active", totals);
    if let (Some(limit), Some(down)) = (limit, down) {
        println!(
            "switch down time / direct start (p50): {:.2}",
            down.as_secs_f64() / limit.as_secs_f64().max(1e-6)
        );
    }

    let mut backs = Vec::new();
    let mut rb_downs = Vec::new();
    for _ in 0..rollbacks {
        let stop = Arc::new(Mutex::new(false));
        let prober = probe(port, stop.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        d.post("/agent/releases/9.0.0/activate")
            .send()
            .await
            .expect("activate");
        loop {
            let failed = state_of(&d, "9.0.0").await == "failed";
            let a = d.get_json("/agent").await;
            if failed && a["state"] == "running" && a["release"] == active.as_str() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "rollback never finished"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        backs.push(t0.elapsed());
        *stop.lock().expect("lock") = true;
        let seen = prober.join().expect("probe");
        // Down from the old release's last answer to its first again.
        let last_up = seen.iter().position(|(_, v)| v.is_none());
        if let Some(first_down) = last_up {
            if let Some(back) = seen[first_down..]
                .iter()
                .position(|(_, v)| v.as_deref() == Some(active.as_str()))
            {
                rb_downs.push(seen[first_down + back].0 - seen[first_down].0);
            }
        }
    }
    let back = stats(
        "rollback: POST activate (exits 78) -> old release running again",
        backs,
    );
    if let (Some(limit), Some(back)) = (limit, back) {
        println!(
            "rollback / direct start (p50): {:.2}",
            back.as_secs_f64() / limit.as_secs_f64().max(1e-6)
        );
    }
    stats("rollback: gateway down time", rb_downs);
}
