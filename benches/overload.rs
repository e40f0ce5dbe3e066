//! Overload: 2,000 keep-alive connections hammer a tenant route while the
//! daemon sheds what exceeds `limits.concurrency` (64 here), and one more
//! connection probes `/v1/healthz`.
//!
//! Figures: VmRSS before, its highest sample during the load and VmHWM,
//! VmRSS 10 s after the load; requests answered 200 / 429 / other; healthz
//! requests per second during the load (all must be 200).
//!
//! `cargo bench --bench overload` (`BENCH_OVERLOAD_SECONDS`, default 5;
//! `BENCH_OVERLOAD_CONNECTIONS`, default 2000). Figures, not pass/fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{env_or, spawn_daemon, status_kib, write_private};

const TOKEN: &str = "bench-credential-0123456789abcdef";
const TENANT: &str = "bench";

fn mib(pid: u32, field: &str) -> f64 {
    status_kib(pid, field) as f64 / 1024.0
}

/// One HTTP/1.1 request on a kept-alive connection; the status, or None
/// when the connection is gone.
async fn request(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Option<u16> {
    s.write_all(req).await.ok()?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head.get(9..12)?.parse().ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Some(status);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = env_or("BENCH_OVERLOAD_SECONDS", 5);
    let connections: usize = env_or("BENCH_OVERLOAD_CONNECTIONS", 2000);
    let dir = tempfile::tempdir().expect("tmp");
    let cred = dir.path().join("credential");
    write_private(&cred, TOKEN);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"{TENANT}\"\ndata_dir = \"{}\"\n\n[listen]\naddr = \"127.0.0.1:0\"\n\n[auth]\ncredential_file = \"{}\"\n\n[gateway]\ncommand = \"/bin/false\"\n\n[limits]\nconcurrency = 64\nmax_connections = 4096\n\n[log]\nformat = \"json\"\nlevel = \"warn,hermes_tenantd=info\"\n",
            dir.path().join("data").display(),
            cred.display()
        ),
    )
    .expect("config");
    let (mut child, addr) = spawn_daemon(&config);
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = mib(pid, "VmRSS:");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, shed, other, dropped) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load_req = format!(
        "GET /v1/tenant-runtime/{TENANT}/memory/search?q=hello HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (stop, ok, shed, other, dropped) = (
            stop.clone(),
            ok.clone(),
            shed.clone(),
            other.clone(),
            dropped.clone(),
        );
        let (addr, req) = (addr.clone(), load_req.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(&addr).await else {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    match request(&mut s, req.as_bytes(), &mut buf).await {
                        Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                        Some(429) => shed.fetch_add(1, Ordering::Relaxed),
                        Some(_) => other.fetch_add(1, Ordering::Relaxed),
                        None => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    };
                }
            }
        }));
    }
    let probe = {
        let (stop, addr) = (stop.clone(), addr.clone());
        tokio::spawn(async move {
            let (mut good, mut bad) = (0u64, 0u64);
            let req = b"GET /v1/healthz HTTP/1.1\r\nHost: b\r\n\r\n";
            let mut buf = Vec::new();
            let mut s = TcpStream::connect(&addr).await.ok();
            while !stop.load(Ordering::Relaxed) {
                let Some(conn) = s.as_mut() else {
                    bad += 1;
                    s = TcpStream::connect(&addr).await.ok();
                    continue;
                };
                match request(conn, req, &mut buf).await {
                    Some(200) => good += 1,
                    Some(_) => bad += 1,
                    None => {
                        bad += 1;
                        s = TcpStream::connect(&addr).await.ok();
                    }
                }
            }
            (good, bad)
        })
    };
    let start = Instant::now();
    let mut peak: f64 = 0.0;
    while start.elapsed() < Duration::from_secs(seconds) {
        peak = peak.max(mib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    let (good, bad) = probe.await.unwrap_or((0, 0));
    let hwm = mib(pid, "VmHWM:");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = mib(pid, "VmRSS:");

    println!("overload: {connections} connections, {seconds} s, limits.concurrency 64");
    println!(
        "  answered: {} 200, {} 429 (shed), {} other; {} connections dropped/refused",
        ok.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        dropped.load(Ordering::Relaxed)
    );
    println!(
        "  healthz during the load: {:.0} req/s ({good} x 200, {bad} other)",
        good as f64 / elapsed
    );
    println!(
        "  VmRSS before {before:.1} MiB, peak sample {peak:.1} MiB (VmHWM {hwm:.1}), 10 s after {after:.1} MiB"
    );
    let _ = child.kill();
    let _ = child.wait();
}
