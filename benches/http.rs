//! The HTTP surface: what an idle daemon costs, and how many authenticated
//! requests per second it serves.
//!
//! 1. Memory after start on a fresh data directory (VmRSS, and its anonymous
//!    and file-backed parts: the binary's pages are the file-backed ones).
//! 2. `wrk` (Debian package `wrk`) against authenticated GETs, 1 thread and
//!    32 keep-alive connections for `BENCH_HTTP_SECONDS` (default 5) each;
//!    wrk is pinned to the last CPU and the daemon to the others when there
//!    is more than one. Without wrk the throughput rows are skipped (said).
//! 3. The limit: an axum hello-world with the same bearer check
//!    ([`hello`], this file; the bench starts its own binary again as that
//!    server, so both are built by the same profile), measured against
//!    `GET /version`, interleaved, `BENCH_HTTP_ROUNDS` (default 3) times,
//!    same wrk flags, both servers on the same CPU; prints each ratio.
//! 4. Memory after the load (VmRSS, VmHWM).
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

/// `wrk`'s Requests/sec and latency line for one URL, 32 connections.
fn wrk(url: &str, seconds: u64, cpu: Option<usize>) -> Option<(f64, String)> {
    wrk_with(url, seconds, cpu, 32)
}

fn wrk_with(url: &str, seconds: u64, cpu: Option<usize>, conns: usize) -> Option<(f64, String)> {
    let mut cmd = match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string(), "wrk"]);
            cmd
        }
        None => Command::new("wrk"),
    };
    let out = cmd
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
        ])
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

/// The limit for an authenticated GET: axum's hello-world behind the same
/// `Authorization: Bearer` check as the daemon's (constant-time compare),
/// on a runtime shaped like the daemon's (two workers).
mod hello {
    use axum::http::{HeaderMap, StatusCode, header};
    use subtle::ConstantTimeEq;

    async fn version(headers: HeaderMap) -> (StatusCode, &'static str) {
        let ok = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|t| bool::from(t.ct_eq(super::TOKEN.as_bytes())));
        if ok {
            (StatusCode::OK, "Hello, World!")
        } else {
            (StatusCode::UNAUTHORIZED, "")
        }
    }

    pub fn serve() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let app = axum::Router::new().route(
                "/v1/tenant-runtime/{tenant_id}/version",
                axum::routing::get(version),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            println!("{}", listener.local_addr().expect("addr"));
            axum::serve(listener, app).await.expect("serve");
        });
    }
}

/// Start this bench binary again as the hello-world server; its address.
fn spawn_hello() -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env("BENCH_HELLO_SERVE", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn hello");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("hello address");
    (child, line.trim().to_owned())
}

/// Pin every thread of `pid` to `cpus` (a taskset list).
fn pin(pid: u32, cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .status();
}

fn main() {
    if std::env::var_os("BENCH_HELLO_SERVE").is_some() {
        return hello::serve();
    }
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
    let (mut hello, hello_addr) = spawn_hello();
    if cpus > 1 {
        // The servers (every thread) on all CPUs but the last, which is wrk's.
        pin(pid, &format!("0-{}", cpus - 2));
        pin(hello.id(), &format!("0-{}", cpus - 2));
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
        let rounds: usize = common::env_or("BENCH_HTTP_ROUNDS", 3);
        println!(
            "  the limit: hello-world (axum, same bearer check) vs GET /version, interleaved, wrk -t1 -c8 -d{seconds}s:"
        );
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let limit = wrk_with(
                &format!("http://{hello_addr}/v1/tenant-runtime/{TENANT}/version"),
                seconds,
                wrk_cpu,
                8,
            );
            let daemon = wrk_with(&format!("{base}/version"), seconds, wrk_cpu, 8);
            match (limit, daemon) {
                (Some((l, llat)), Some((d, dlat))) => {
                    println!(
                        "    round {round}: hello-world {l:>9.0} req/s ({llat}), daemon {d:>9.0} req/s ({dlat}): {:.2} x",
                        d / l
                    );
                    ratios.push(d / l);
                }
                _ => println!("    round {round}: wrk failed"),
            }
        }
        ratios.sort_by(f64::total_cmp);
        if let Some(median) = ratios.get(ratios.len() / 2) {
            println!("    median ratio daemon / hello-world: {median:.2} x");
        }
        println!("  after the load:       {}", memory_row(pid));
        println!("  hello-world process:  {}", memory_row(hello.id()));
    } else {
        println!("  wrk not found (apt-get install wrk): throughput rows skipped");
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = hello.kill();
    let _ = hello.wait();
}
