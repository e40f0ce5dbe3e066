//! Run relay benchmark against the fake gateway: throughput and added
//! latency of events through the daemon versus reading the gateway
//! directly, 100 subscribers on one run, and the daemon's RSS meanwhile.
//! Prints figures; asserts nothing.
//!
//! `cargo bench --bench runs` (`BENCH_EVENTS=20000` events per run,
//! `BENCH_ROUNDS=3` throughput rounds, `BENCH_PIN=1` to give the fake
//! gateway a CPU of its own and the daemon and the client the other).

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

const TOKEN: &str = "bench-credential-0123456789abcdef";
const TENANT: &str = "bench";

mod common;
use common::{cpu_secs, free_port, machine_busy_secs, spawn_daemon, status_kib, write_private};

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Read an SSE body; returns (events, per-event latency in ms from the
/// fake gateway's `sent_at`).
async fn drain(resp: reqwest::Response) -> (usize, Vec<f64>) {
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut n = 0;
    let mut lat = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.extend_from_slice(&chunk);
        // Whole lines, then what is left moved to the front once per chunk
        // (a drain per line is quadratic in the chunk's size, and the
        // daemon sends many events per chunk).
        let mut start = 0;
        while let Some(pos) = memchr::memchr(b'\n', &buf[start..]) {
            let line = &buf[start..start + pos];
            start += pos + 1;
            if let Some(data) = line.strip_prefix(b"data: ") {
                n += 1;
                if let Ok(v) = serde_json::from_slice::<Value>(data) {
                    if let Some(sent) = v["sent_at"].as_f64() {
                        lat.push((now_secs() - sent) * 1000.0);
                    }
                    if matches!(v["event"].as_str(), Some("run.completed" | "run.failed")) {
                        return (n, lat);
                    }
                }
            }
        }
        buf.drain(..start);
    }
    (n, lat)
}

/// CPU seconds of the gateway, the daemon and this process (the client),
/// and the machine's busy seconds, at one moment.
struct Usage {
    at: Instant,
    gateway: f64,
    daemon: f64,
    client: f64,
    machine: f64,
}

/// One phase: events/s, CPU µs per event of each process, busy cores.
struct PhaseUse {
    rate: f64,
    gateway_us: f64,
    daemon_us: f64,
    client_us: f64,
    cores: f64,
}

impl Usage {
    fn now(gateway: u32, daemon: u32, client: u32) -> Usage {
        Usage {
            at: Instant::now(),
            gateway: cpu_secs(gateway),
            daemon: cpu_secs(daemon),
            client: cpu_secs(client),
            machine: machine_busy_secs(),
        }
    }

    /// From `before` to now, for `n` events timed at `took`.
    fn since(self, before: &Usage, n: usize, took: Duration) -> PhaseUse {
        let per = |a: f64, b: f64| (a - b) * 1e6 / n.max(1) as f64;
        PhaseUse {
            rate: n as f64 / took.as_secs_f64(),
            gateway_us: per(self.gateway, before.gateway),
            daemon_us: per(self.daemon, before.daemon),
            client_us: per(self.client, before.client),
            cores: (self.machine - before.machine) / (self.at - before.at).as_secs_f64(),
        }
    }
}

/// The gateway's pid, as the daemon reports it.
async fn agent_pid(client: &reqwest::Client, base: &str) -> u32 {
    let v: Value = client
        .get(format!("{base}/agent"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("agent")
        .json()
        .await
        .expect("json");
    v["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("gateway pid")
}

/// Every thread of `pid` (and the threads it starts later) to one CPU.
fn pin_to(pid: u32, cpu: usize) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset failed for pid {pid}");
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let pin = std::env::var("BENCH_PIN").is_ok_and(|v| v == "1");
    let dir = tempfile::tempdir().expect("tempdir");
    let cred = dir.path().join("credential");
    write_private(&cred, TOKEN);
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"{TENANT}\"\ndata_dir = \"{data}\"\n[listen]\naddr = \"127.0.0.1:0\"\n[auth]\ncredential_file = \"{cred}\"\n[log]\nformat = \"json\"\nlevel = \"warn,hermes_tenantd::daemon=info\"\n[gateway]\ncommand = \"python3 {gw}\"\nhermes_home = \"{home}\"\nport = {port}\nstart_timeout = \"20s\"\n[runs]\nsubscribers_per_run = 200\n[store]\nsynchronous = \"{sync}\"\n",
            sync = std::env::var("BENCH_SYNC").unwrap_or_else(|_| "full".to_owned()),
            data = dir.path().join("data").display(),
            cred = cred.display(),
            gw = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_gateway.py"),
            home = dir.path().join("home").display(),
        ),
    )
    .expect("config");
    let (mut child, addr) = spawn_daemon(&config);
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = reqwest::Client::new();
    let base = format!("http://{addr}/v1/tenant-runtime/{TENANT}");
    let gw = format!("http://127.0.0.1:{port}");

    rt.block_on(async {
        // Wait for the fake gateway to be supervised and running.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: Value = client.get(format!("{base}/agent")).bearer_auth(TOKEN).send().await.expect("agent").json().await.expect("json");
            if v["state"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "agent not running: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let key = std::fs::read_to_string(dir.path().join("data/gateway_api_key")).expect("gateway key");
        let key = key.trim().to_owned();
        let idle_rss = rss_kib(pid);

        let direct = |input: String| {
            let (client, gw, key) = (client.clone(), gw.clone(), key.clone());
            async move {
                let r: Value = client.post(format!("{gw}/v1/runs")).bearer_auth(&key).json(&json!({"input": input})).send().await.expect("submit").json().await.expect("json");
                let id = r["run_id"].as_str().expect("run_id").to_owned();
                let t = Instant::now();
                let resp = client.get(format!("{gw}/v1/runs/{id}/events")).bearer_auth(&key).send().await.expect("events");
                let (n, lat) = drain(resp).await;
                (n, t.elapsed(), lat)
            }
        };
        let via = |input: String| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let r: Value = client.post(format!("{base}/runs")).bearer_auth(TOKEN).json(&json!({"input": input})).send().await.expect("submit").json().await.expect("json");
                let id = r["run_id"].as_str().expect("run_id").to_owned();
                let t = Instant::now();
                let resp = client.get(format!("{base}/runs/{id}/events")).bearer_auth(TOKEN).send().await.expect("events");
                let (n, lat) = drain(resp).await;
                (n, t.elapsed(), lat)
            }
        };

        println!("hermes-tenantd run relay benchmark (fake gateway in Python)");
        let gw_pid = agent_pid(&client, &base).await;
        if pin {
            // The source on a core of its own in both phases; the daemon
            // and the client share the other. Whether the relay keeps up
            // with a source that is not starved by it.
            pin_to(gw_pid, 0);
            pin_to(pid, 1);
            pin_to(std::process::id(), 1);
        }
        // Throughput: as fast as the fake gateway emits, `rounds` rounds of
        // (direct, through the daemon); medians. CPU per event of each
        // process, and the machine's busy cores, over each phase.
        let me = std::process::id();
        let (mut ratios, mut d_rates, mut v_rates) = (Vec::new(), Vec::new(), Vec::new());
        let mut rows = Vec::new();
        for _ in 0..rounds {
            let p0 = Usage::now(gw_pid, pid, me);
            let (dn, dt, _) = direct(format!("events:{events}")).await;
            let d = Usage::now(gw_pid, pid, me).since(&p0, dn, dt);
            let p0 = Usage::now(gw_pid, pid, me);
            let (vn, vt, _) = via(format!("events:{events}")).await;
            let v = Usage::now(gw_pid, pid, me).since(&p0, vn, vt);
            ratios.push(v.rate / d.rate);
            d_rates.push(d.rate);
            v_rates.push(v.rate);
            rows.push((d, v));
        }
        println!(
            "  throughput, {events} events as fast as the gateway emits, {rounds} rounds{}:",
            if pin { ", gateway pinned to CPU 0, daemon and client to CPU 1" } else { "" }
        );
        println!(
            "    through the daemon / direct: {:.2} (median; {:.2}-{:.2}); direct {:.0} events/s, through the daemon {:.0}",
            pct(&mut ratios.clone(), 0.5),
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
            pct(&mut d_rates, 0.5),
            pct(&mut v_rates, 0.5),
        );
        println!("    CPU µs per event (busy cores of the machine over the phase):");
        println!("      {:<10} {:>10} {:>9} {:>9} {:>9} {:>9}", "phase", "events/s", "gateway", "daemon", "client", "cores");
        for (d, v) in &rows {
            for (name, u) in [("direct", d), ("daemon", v)] {
                println!(
                    "      {name:<10} {:>10.0} {:>9.2} {:>9} {:>9.2} {:>9.2}",
                    u.rate,
                    u.gateway_us,
                    if name == "direct" { "-".to_owned() } else { format!("{:.2}", u.daemon_us) },
                    u.client_us,
                    u.cores
                );
            }
        }

        // Latency at a paced rate.
        let paced = format!("events:{} rate:1000", (events / 10).max(500));
        let (_, _, mut dl) = direct(paced.clone()).await;
        let (_, _, mut vl) = via(paced.clone()).await;
        let (d50, d99, v50, v99) = (pct(&mut dl, 0.5), pct(&mut dl, 0.99), pct(&mut vl, 0.5), pct(&mut vl, 0.99));
        println!("  latency at 1000 events/s (gateway sent_at -> client), ms:");
        println!("    direct:  p50 {d50:.3}  p99 {d99:.3}");
        println!("    daemon:  p50 {v50:.3}  p99 {v99:.3}  (added p50 {:.3}, p99 {:.3})", v50 - d50, v99 - d99);

        // 100 subscribers on one run.
        let r: Value = client.post(format!("{base}/runs")).bearer_auth(TOKEN).json(&json!({"input": format!("events:{} rate:2000", events / 4)})).send().await.expect("submit").json().await.expect("json");
        let id = r["run_id"].as_str().expect("run_id").to_owned();
        let t = Instant::now();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (client, url) = (client.clone(), format!("{base}/runs/{id}/events"));
            tasks.push(tokio::spawn(async move {
                let resp = client.get(url).bearer_auth(TOKEN).send().await.expect("events");
                drain(resp).await.0
            }));
        }
        let mut counts = Vec::new();
        for t in tasks {
            counts.push(t.await.expect("subscriber"));
        }
        sampler.abort();
        let all_same = counts.iter().all(|c| *c == counts[0]);
        println!(
            "  100 subscribers on one run of {} events at 2000/s: {:.2} s, every subscriber got {} events: {all_same}",
            events / 4,
            t.elapsed().as_secs_f64(),
            counts[0]
        );
        println!(
            "  daemon RSS: idle {:.1} MiB, peak during 100 subscribers {:.1} MiB",
            idle_rss as f64 / 1024.0,
            peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
        );
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
}
