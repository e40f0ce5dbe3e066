//! Fleet view: what the hub sees when a fleet restarts at once.
//!
//! 1. Measured: 250 real heartbeat loops (the daemon's `Heartbeat`, each
//!    with its own store) in one process against one fake hub on loopback,
//!    started together, with ±10 % jitter and without. Time is scaled by
//!    1/10 (3 s interval for 30 s), so a 0.1 s bucket is one second.
//! 2. Model: 10,000 VMs driven by the same `Schedule` (no network), over
//!    two hours, after a simultaneous restart, and after a 10-minute hub
//!    outage.
//!
//! `cargo bench --bench fleet` (needs python3). Figures, not pass/fail.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hermes_tenantd::agent::{self, AgentStatus, Desired};
use hermes_tenantd::auth::Credentials;
use hermes_tenantd::config::{Config, Source};
use hermes_tenantd::hub::heartbeat::{Deps, Heartbeat};
use hermes_tenantd::hub::schedule::Schedule;
use hermes_tenantd::hub::{Access, HubLink};
use hermes_tenantd::metrics::Metrics;
use hermes_tenantd::store::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

mod common;
use common::write_private;

const VMS: usize = 250;
const SCALE: f64 = 10.0; // real seconds per simulated... 30 s becomes 3 s
const INTERVALS: usize = 10;

async fn run_fleet(port: u16, jitter_percent: u32) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tmp");
    let cred = dir.path().join("credential");
    write_private(&cred, "fleet-credential-0123456789abcdef");
    let credentials = Arc::new(Credentials::load(&cred, Duration::from_secs(1)).expect("cred"));
    let mut beats = Vec::new();
    let mut keep = Vec::new();
    for i in 0..VMS {
        let vm = dir.path().join(format!("vm{i:04}"));
        std::fs::create_dir_all(&vm).expect("vm dir");
        let file = vm.join("config.toml");
        std::fs::write(
            &file,
            format!(
                "tenant_id = \"vm-{i:04}\"\ndata_dir = \"{}\"\n[auth]\ncredential_file = \"{}\"\n[hub]\nurl = \"http://127.0.0.1:{port}\"\nheartbeat_interval = \"{}ms\"\nheartbeat_jitter_percent = {jitter_percent}\nrequest_timeout = \"2s\"\n",
                vm.display(),
                cred.display(),
                (30_000.0 / SCALE) as u64
            ),
        )
        .expect("config");
        let config = Arc::new(
            Config::load_with_env(
                &Source {
                    file: Some(file),
                    dev: false,
                },
                std::iter::empty(),
            )
            .expect("config"),
        );
        let db = vm.join("tenantd.db");
        let store = tokio::task::spawn_blocking(move || {
            Store::open_blocking(
                &db,
                &StoreOptions {
                    readers: 1,
                    ..Default::default()
                },
            )
        })
        .await
        .expect("join")
        .expect("store");
        let (agent, channels) = agent::channel(
            AgentStatus::initial(Desired::Running),
            agent::GatewayEndpoint {
                base_url: "http://127.0.0.1:9".into(),
                api_key: "unused-by-the-fleet-simulation".into(),
            },
        );
        keep.push(channels);
        beats.push(
            Heartbeat::new(Deps {
                config,
                store,
                agent,
                link: HubLink::new(Access::Active),
                metrics: Arc::new(Metrics::new()),
                credentials: credentials.clone(),
                releases: None,
            })
            .await
            .expect("client")
            .expect("hub"),
        );
    }
    let cancel = CancellationToken::new();
    // All at once, like a fleet restarted by one deploy.
    let tasks: Vec<_> = beats.into_iter().map(|b| b.spawn(cancel.clone())).collect();
    let run = Duration::from_secs_f64(30.0 / SCALE * INTERVALS as f64 + 0.5);
    tokio::time::sleep(run).await;
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let http = reqwest::Client::new();
    let v: serde_json::Value = http
        .get(format!("http://127.0.0.1:{port}/beats"))
        .send()
        .await
        .expect("beats")
        .json()
        .await
        .expect("json");
    let _ = http
        .post(format!("http://127.0.0.1:{port}/reset"))
        .send()
        .await;
    drop(keep);
    v["beats"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["t"].as_f64()).collect())
        .unwrap_or_default()
}

/// Per simulated interval: beats, busiest simulated second, spread.
fn report(label: &str, times: &[f64]) {
    let Some(t0) = times.iter().copied().reduce(f64::min) else {
        println!("{label}: no beats");
        return;
    };
    let interval = 30.0 / SCALE;
    println!();
    println!("### {label}: {} beats from {VMS} loops", times.len());
    println!();
    println!("| simulated window | beats | busiest second | seconds with beats |");
    println!("|---|---:|---:|---:|");
    // Windows start half an interval early so a window holds one beat per VM.
    for k in 0..INTERVALS {
        let lo = if k == 0 {
            -1.0
        } else {
            (k as f64 - 0.5) * interval
        };
        let hi = (k as f64 + 0.5) * interval;
        let mut buckets = std::collections::BTreeMap::<i64, u32>::new();
        for t in times.iter().map(|t| t - t0).filter(|t| *t >= lo && *t < hi) {
            *buckets
                .entry((t / interval * 30.0).floor() as i64)
                .or_default() += 1;
        }
        let n: u32 = buckets.values().sum();
        let busiest = buckets.values().max().copied().unwrap_or(0);
        println!(
            "| {:>3}-{:>3} s | {n} | {busiest} | {} |",
            (lo.max(0.0) / interval * 30.0) as i64,
            (hi / interval * 30.0) as i64,
            buckets.len()
        );
    }
}

/// Arrivals per second over one window, for `n` VMs following `Schedule`,
/// each failing while `down(t)` holds.
fn model(n: usize, jitter: f64, horizon_s: f64, down: impl Fn(f64) -> bool) -> Vec<u32> {
    let sched = Schedule {
        interval: Duration::from_secs(30),
        jitter,
        backoff_max: Duration::from_secs(300),
    };
    let mut rng = rand::rng();
    let mut per_second = vec![0u32; horizon_s as usize + 1];
    for _ in 0..n {
        let mut t = 0.0;
        let mut failures = 0;
        while t < horizon_s {
            per_second[t as usize] += 1;
            failures = if down(t) { failures + 1 } else { 0 };
            t += sched.next_delay(failures, &mut rng).as_secs_f64();
        }
    }
    per_second
}

fn peak(per_second: &[u32], from: usize, to: usize) -> u32 {
    per_second[from.min(per_second.len())..to.min(per_second.len())]
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
}

fn main() {
    hermes_tenantd::tls::install_provider();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_hub.py");
    let mut hub = Command::new("python3")
        .args([script, "--quiet"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(hub.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port");
    let port = serde_json::from_str::<serde_json::Value>(&line).expect("json")["port"]
        .as_u64()
        .expect("port") as u16;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .expect("runtime");
    println!("## Measured: {VMS} heartbeat loops, one fake hub, time scaled 1/{SCALE}");
    for (label, jitter) in [("with ±10 % jitter", 10), ("without jitter", 0)] {
        let times = rt.block_on(run_fleet(port, jitter));
        report(label, &times);
    }
    let _ = hub.kill();
    let _ = hub.wait();

    let n = 10_000;
    println!();
    println!("## Model: {n} VMs restarted at once (same Schedule code, no network)");
    println!();
    println!("| window | busiest second, ±10 % jitter | busiest second, no jitter |");
    println!("|---|---:|---:|");
    let horizon = 2.0 * 3600.0;
    let with = model(n, 0.1, horizon, |_| false);
    let without = model(n, 0.0, horizon, |_| false);
    for (label, from, to) in [
        ("0-1 s (first beat, at once)", 0, 1),
        ("15-45 s (second beat)", 15, 45),
        ("4.5-5 min", 270, 300),
        ("30 min", 1800, 1830),
        ("2 h", 7170, 7200),
    ] {
        println!(
            "| {label} | {} | {} |",
            peak(&with, from, to),
            peak(&without, from, to)
        );
    }
    println!();
    println!("Uniform spread would be {:.0} beats/s.", n as f64 / 30.0);
    println!();
    println!("## Model: {n} VMs, hub down from 10 to 20 min, then back (±10 % jitter)");
    println!();
    let outage = model(n, 0.1, 3600.0, |t| (600.0..1200.0).contains(&t));
    println!("| window | busiest second | beats in window |");
    println!("|---|---:|---:|");
    for (label, from, to) in [
        ("before (5-10 min)", 300, 600),
        ("outage (10-20 min)", 600, 1200),
        ("first 5 min back", 1200, 1500),
        ("5-10 min back", 1500, 1800),
        ("30-40 min after", 2400, 3000),
    ] {
        let sum: u32 = outage[from..to].iter().sum();
        println!("| {label} | {} | {sum} |", peak(&outage, from, to));
    }
}
