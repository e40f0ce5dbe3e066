//! Cron figures (not pass/fail), against the release daemon and the fake
//! gateway: time to rebuild the scheduler from N jobs at start, memory held
//! with them, and firing jitter (start minus planned time) at p50/p99 with
//! 100 jobs due in the same second.
//!
//! `cargo bench --bench cron`. Knobs: `BENCH_JOBS` (10000), `BENCH_DUE` (100),
//! `BENCH_CYCLES` (5, of a 3-second schedule).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Utc};
use common::{GatewayWorld, TestDaemon};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn rebuilt(d: &TestDaemon) -> (u64, u64) {
    let line = d
        .logs()
        .into_iter()
        .find(|l| l.contains("cron scheduler rebuilt"))
        .expect("rebuild log line");
    let v: Value = serde_json::from_str(&line).expect("json log");
    let f = |k: &str| {
        v[k].as_u64()
            .or_else(|| v["fields"][k].as_u64())
            .unwrap_or(0)
    };
    (f("jobs"), f("elapsed_ms"))
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let jobs = env_num("BENCH_JOBS", 10_000) as usize;
    let due = env_num("BENCH_DUE", 100) as usize;
    let cycles = env_num("BENCH_CYCLES", 5) as usize;
    let mut w = GatewayWorld::new();
    w.extra =
        "[cron]\nmax_jobs = 100000\nmin_interval = \"1s\"\n\n[runs]\nqueue_depth = 1000\n".into();

    let mut d = w.daemon().await;
    let (_, empty_ms) = rebuilt(&d);
    let rss_empty = status_kb(d.pid(), "RssAnon:");

    // N jobs far from firing: a month six months away, or intervals of hours.
    let month = (Utc::now().month() + 5) % 12 + 1;
    let zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"];
    let began = Instant::now();
    let bodies: Vec<Value> = (0..jobs)
        .map(|i| {
            let schedule = if i % 4 == 3 {
                format!("every {}h", 2 + i % 40)
            } else {
                format!("{} {} {} {month} *", i % 60, i % 24, 1 + i % 28)
            };
            json!({"schedule": schedule, "timezone": zones[i % zones.len()],
                   "prompt": format!("job number {i}: summarise something")})
        })
        .collect();
    let d_ref = &d;
    futures_util::stream::iter(bodies)
        .map(|b| async move {
            let r = d_ref
                .post("/agent-cron")
                .json(&b)
                .send()
                .await
                .expect("POST");
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let create_s = began.elapsed().as_secs_f64();
    let rss_full = status_kb(d.pid(), "RssAnon:");

    // Restart: rebuild from the store.
    let keep = d.keep_dir();
    d.terminate();
    let d = w.daemon().await;
    let (loaded, rebuild_ms) = rebuilt(&d);
    let rss_restarted = status_kb(d.pid(), "RssAnon:");

    println!("cron bench: {jobs} jobs");
    println!(
        "  create via API (8 in flight): {create_s:.1} s ({:.0}/s)",
        jobs as f64 / create_s
    );
    println!(
        "  scheduler rebuild at start: {rebuild_ms} ms for {loaded} jobs (empty store: {empty_ms} ms)"
    );
    println!(
        "  anonymous RSS: {} KiB empty, {} KiB after creating {jobs}, {} KiB after a restart with them",
        rss_empty, rss_full, rss_restarted
    );

    // Jitter: `due` jobs due in the same second, every 3 seconds.
    let mut ids = Vec::new();
    for i in 0..due {
        let r: Value = d
            .post("/agent-cron")
            .json(&json!({"schedule": "*/3 * * * * *", "prompt": format!("due job {i}")}))
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("json");
        ids.push(r["id"].as_str().expect("id").to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(3 * cycles as u64 + 30);
    let mut lags: Vec<i64>;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        lags = Vec::new();
        let mut min_fired = usize::MAX;
        let mut skipped = 0;
        for id in &ids {
            let h: Value = d
                .get(&format!("/agent-cron/{id}/runs?limit=200"))
                .send()
                .await
                .expect("GET")
                .json()
                .await
                .expect("json");
            let runs = h["runs"].as_array().cloned().unwrap_or_default();
            let mut n = 0;
            for f in runs.iter().filter(|f| f["trigger"] == "schedule") {
                if f["status"] == "skipped" {
                    skipped += 1;
                }
                let t = |k: &str| {
                    DateTime::parse_from_rfc3339(f[k].as_str().unwrap_or_default())
                        .map(|t| t.timestamp_millis())
                        .unwrap_or(0)
                };
                lags.push(t("fired_at") - t("scheduled_at"));
                n += 1;
            }
            min_fired = min_fired.min(n);
        }
        if min_fired >= cycles || Instant::now() > deadline {
            println!(
                "  {due} jobs due together, {} firings, {skipped} skipped (previous run still going)",
                lags.len()
            );
            break;
        }
    }
    lags.sort_unstable();
    println!(
        "  firing jitter (fired_at - planned): p50 {} ms, p99 {} ms, max {} ms",
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        lags.last().copied().unwrap_or(0)
    );
    drop(d);
    drop(keep);
}
