//! Supervisor figures (not pass/fail): time from gateway death to detection,
//! to respawn and to running again; the daemon's CPU and RSS while it
//! supervises an idle gateway.
//!
//! `cargo bench --bench supervisor` (release build). Against
//! `tests/fake_gateway.py`. Knobs: `BENCH_KILLS` (20), `BENCH_IDLE_SECS` (60).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Options, TestDaemon};

fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &s[s.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

async fn agent(d: &TestDaemon) -> serde_json::Value {
    d.get("/agent")
        .send()
        .await
        .expect("GET /agent")
        .json()
        .await
        .expect("json")
}

async fn wait_running_not(d: &TestDaemon, old: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = agent(d).await;
        if v["state"] == "running" {
            if let Some(p) = v["pid"].as_u64() {
                if Some(p) != old {
                    return p;
                }
            }
        }
        assert!(Instant::now() < deadline, "not running: {v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Timestamp (µs since epoch) of the `agent state` log line to `to` for `pid`.
fn transition_us(d: &TestDaemon, to: &str, pid: Option<u64>, after_us: i64) -> Option<i64> {
    d.logs().iter().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["message"] != "agent state" || v["to"] != to {
            return None;
        }
        if let Some(p) = pid {
            if v["pid"].as_u64() != Some(p) {
                return None;
            }
        }
        let ts = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok()?;
        let us = ts.timestamp_micros();
        (us >= after_us).then_some(us)
    })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let kills = env_num("BENCH_KILLS", 20);
    let idle_secs = env_num("BENCH_IDLE_SECS", 60);
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = format!(
        "[gateway]\ncommand = \"{py} {gw}\"\nhermes_home = \"{home}\"\nport = {port}\nbackoff_base = \"1ms\"\nbackoff_cap = \"10ms\"\ncrash_loop_count = 100000\n",
        py = python(),
        gw = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_gateway.py"),
        home = tmp.path().join("home").display(),
    );
    let d = TestDaemon::start_with(Options {
        config_extra: config,
        env: vec![],
        dir: Some(tmp.path().to_path_buf()),
    })
    .await;
    let mut pid = wait_running_not(&d, None).await;

    let (mut detect, mut respawn, mut ready) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..kills {
        let t0 = chrono::Utc::now().timestamp_micros();
        // SAFETY: plain syscall on the gateway's pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let new = wait_running_not(&d, Some(pid)).await;
        // Log lines are flushed as written; give the reader thread a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let det = transition_us(&d, "backoff", Some(pid), t0).expect("detection line");
        let sp = transition_us(&d, "starting", Some(new), t0).expect("starting line");
        let rd = transition_us(&d, "running", Some(new), t0).expect("running line");
        detect.push((det - t0) as f64 / 1000.0);
        respawn.push((sp - t0) as f64 / 1000.0);
        ready.push((rd - t0) as f64 / 1000.0);
        pid = new;
    }
    println!("gateway death (SIGKILL) -> ... over {kills} kills, ms (p50 / p90 / max):");
    for (name, v) in [
        ("detected (state backoff)", &mut detect),
        ("respawned (state starting)", &mut respawn),
        ("running again (/health ok)", &mut ready),
    ] {
        let max = v.iter().cloned().fold(0.0, f64::max);
        println!(
            "  {name:<28} {:>8.2} / {:>8.2} / {:>8.2}",
            percentile(v, 0.5),
            percentile(v, 0.9),
            max
        );
    }

    // Idle supervision with the default probe period (5 s) is the next
    // daemon; this one probes every 5 s too (default health_interval).
    let dpid = d.pid();
    let tick = 100.0; // USER_HZ on Linux
    let c0 = cpu_ticks(dpid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let c1 = cpu_ticks(dpid);
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "idle supervision for {secs:.0} s: daemon CPU {:.3} % of one core ({} ticks), RSS {} KiB (peak {} KiB)",
        (c1 - c0) as f64 / tick / secs * 100.0,
        c1 - c0,
        status_kb(dpid, "VmRSS:"),
        status_kb(dpid, "VmHWM:"),
    );
    println!("fake gateway RSS {} KiB", status_kb(pid as u32, "VmRSS:"));
}
