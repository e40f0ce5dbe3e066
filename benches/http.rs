//! The HTTP surface: what an idle daemon costs, and how many authenticated
//! requests per second it serves.
//!
//! 1. Memory after start on a fresh data directory (VmRSS, and its anonymous
//!    and file-backed parts: the binary's pages are the file-backed ones).
//! 2. `wrk` (Debian package `wrk`) against authenticated GETs, 1 thread and
//!    32 keep-alive connections for `BENCH_HTTP_SECONDS` (default 5) each;
//!    wrk is pinned to the last CPU and the daemon to the others when there
//!    is more than one. Without wrk the throughput rows are skipped (said).
//! 3. Memory after the load (VmRSS, VmHWM).
//!
//! `cargo bench --bench http`. Figures, not pass/fail.

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{spawn_daemon, status_kib, write_private};

const TOKEN: &str = "bench-credential-0123456789abcdef";
const TENANT: &str = "bench";

fn memory_row(pid: u32) -> String {
    let mib = |f| status_kib(pid, f) as f64 / 1024.0;
    format!(
        "VmRSS {:.1} MiB (anon {:.1}, file {:.1}), VmHWM {:.1} MiB",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:"),
        mib("VmHWM:")
    )
}

/// `wrk`'s Requests/sec and latency line for one URL.
fn wrk(url: &str, seconds: u64, cpu: Option<usize>) -> Option<(f64, String)> {
    let mut cmd = match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string(), "wrk"]);
            cmd
        }
        None => Command::new("wrk"),
    };
    let out = cmd
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "--latency", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(url)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    let non2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map(|l| format!(", {}", l.trim()))
        .unwrap_or_default();
    Some((
        rps,
        format!("p50 {} p99 {}{}", pct("50%"), pct("99%"), non2xx),
    ))
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_HTTP_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().expect("tempdir");
    let cred = dir.path().join("credential");
    write_private(&cred, TOKEN);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"{TENANT}\"\ndata_dir = \"{}\"\n[listen]\naddr = \"127.0.0.1:0\"\n[auth]\ncredential_file = \"{}\"\n[log]\nformat = \"json\"\nlevel = \"warn,hermes_tenantd::daemon=info\"\n[gateway]\nhermes_home = \"{}\"\n",
            dir.path().join("data").display(),
            cred.display(),
            dir.path().join("home").display(),
        ),
    )
    .expect("config");
    let (mut child, addr) = spawn_daemon(&config);
    let pid = child.id();
    if cpus > 1 {
        // The daemon (every thread) on all CPUs but the last, which is wrk's.
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", &format!("0-{}", cpus - 2)])
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .status();
    }
    std::thread::sleep(Duration::from_secs(2));
    println!("hermes-tenantd HTTP bench ({cpus} CPUs)");
    println!("  idle after start:     {}", memory_row(pid));

    let base = format!("http://{addr}/v1/tenant-runtime/{TENANT}");
    // Something to read: 2,000 messages in 20 sessions and 500 memories.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        for s in 0..20 {
            let messages: Vec<serde_json::Value> = (0..100)
                .map(|i| {
                    serde_json::json!({
                        "role": if i % 2 == 0 { "user" } else { "assistant" },
                        "content": format!("message {i} of session {s} about the quarterly invoice and the weekly report"),
                    })
                })
                .collect();
            let r = client
                .post(format!("{base}/conversations/s{s}/messages"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({"platform": "web", "messages": messages}))
                .send()
                .await
                .expect("append");
            assert_eq!(r.status(), 201, "append");
        }
        for i in 0..500 {
            let r = client
                .post(format!("{base}/memory"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({"content": format!("fact {i}: the user prefers short invoices"), "tags": ["bench"]}))
                .send()
                .await
                .expect("memory");
            assert_eq!(r.status(), 201, "memory");
        }
    });
    println!("  after seeding:        {}", memory_row(pid));

    let wrk_cpu = (cpus > 1).then(|| cpus - 1);
    let rows = [
        ("GET /version", "/version"),
        ("GET /agent", "/agent"),
        ("GET /usage", "/usage"),
        ("GET /memory?limit=20", "/memory?limit=20"),
        (
            "GET /conversations/search?q=invoice&limit=20",
            "/conversations/search?q=invoice&limit=20",
        ),
    ];
    let have_wrk = Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if have_wrk {
        println!("  wrk -t1 -c32 -d{seconds}s, authenticated (Bearer), keep-alive:");
        for (name, path) in rows {
            match wrk(&format!("{base}{path}"), seconds, wrk_cpu) {
                Some((rps, lat)) => println!("    {name:<48} {rps:>9.0} req/s  {lat}"),
                None => println!("    {name:<48} wrk failed"),
            }
        }
        println!("  after the load:       {}", memory_row(pid));
    } else {
        println!("  wrk not found (apt-get install wrk): throughput rows skipped");
    }
    let _ = child.kill();
    let _ = child.wait();
}
