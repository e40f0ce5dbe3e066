//! Run relay benchmark against the fake gateway: throughput and added
//! latency of events through the daemon versus reading the gateway
//! directly, 100 subscribers on one run, and the daemon's RSS meanwhile.
//! Prints figures; asserts nothing.
//!
//! `cargo bench --bench runs` (`BENCH_EVENTS=20000` events per run).

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

const TOKEN: &str = "bench-credential-0123456789abcdef";
const TENANT: &str = "bench";

mod common;
use common::{cpu_secs, free_port, spawn_daemon, status_kib, write_private};

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
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
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
    }
    (n, lat)
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
    let dir = tempfile::tempdir().expect("tempdir");
    let cred = dir.path().join("credential");
    write_private(&cred, TOKEN);
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"{TENANT}\"\ndata_dir = \"{data}\"\n[listen]\naddr = \"127.0.0.1:0\"\n[auth]\ncredential_file = \"{cred}\"\n[log]\nformat = \"json\"\nlevel = \"warn,hermes_tenantd::daemon=info\"\n[gateway]\ncommand = \"python3 {gw}\"\nhermes_home = \"{home}\"\nport = {port}\nstart_timeout = \"20s\"\n[runs]\nsubscribers_per_run = 200\n",
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
        // Throughput: as fast as the fake gateway emits.
        let (dn, dt, _) = direct(format!("events:{events}")).await;
        let cpu_before = cpu_secs(pid);
        let (vn, vt, _) = via(format!("events:{events}")).await;
        let cpu = cpu_secs(pid) - cpu_before;
        let d_rate = dn as f64 / dt.as_secs_f64();
        let v_rate = vn as f64 / vt.as_secs_f64();
        println!("  throughput, {events} events as fast as the gateway emits:");
        println!("    direct from the gateway: {d_rate:>9.0} events/s");
        println!("    through the daemon:      {v_rate:>9.0} events/s ({:.2} x direct)", v_rate / d_rate);
        // What the relay costs, whatever the other two processes get of
        // the machine's cores: parse, persist, fan out, write.
        println!(
            "    daemon CPU:              {:.2} µs per event ({:.0} % of a core while relaying)",
            cpu * 1e6 / vn.max(1) as f64,
            cpu * 100.0 / vt.as_secs_f64()
        );

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
