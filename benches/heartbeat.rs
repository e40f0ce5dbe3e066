//! Heartbeat cost: CPU time, allocations and payload size per beat (in
//! process, against the fake hub), and the daemon's RSS over a long run of
//! beats against an unreachable hub (the real binary, beating every ~10 ms
//! so 24 h of 30-second beats pass in seconds).
//!
//! `cargo bench --bench heartbeat` (needs python3 for tests/fake_hub.py;
//! `BENCH_BEATS=40000` for a longer RSS run, default 10,000).
//! Figures, not pass/fail.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hermes_tenantd::agent::{self, AgentStatus, Desired};
use hermes_tenantd::auth::Credentials;
use hermes_tenantd::config::{Config, Source};
use hermes_tenantd::hub::heartbeat::{Deps, Heartbeat};
use hermes_tenantd::hub::{Access, HubLink};
use hermes_tenantd::metrics::Metrics;
use hermes_tenantd::store::{Store, StoreOptions, usage};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TOKEN: &str = "bench-credential-0123456789abcdef";

/// utime + stime of a process, in seconds (clock ticks of 10 ms).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

mod common;
use common::write_private;

fn status_kib(pid: &str, field: &str) -> u64 {
    common::status_kib(pid.parse().unwrap_or(0), field)
}

fn rss_kib(pid: &str) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn fake_hub() -> (Child, u16) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_hub.py");
    let mut child = Command::new("python3")
        .args([script, "--quiet"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 tests/fake_hub.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port");
    let v: serde_json::Value = serde_json::from_str(&line).expect("port JSON");
    (child, v["port"].as_u64().expect("port") as u16)
}

fn config(dir: &Path, hub_port: u16, extra: &str) -> Config {
    let cred = dir.join("credential");
    write_private(&cred, TOKEN);
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        format!(
            "tenant_id = \"bench\"\ndata_dir = \"{}\"\n[auth]\ncredential_file = \"{}\"\n[hub]\nurl = \"http://127.0.0.1:{hub_port}\"\nheartbeat_interval = \"30s\"\n{extra}\n",
            dir.join("data").display(),
            cred.display()
        ),
    )
    .expect("config");
    Config::load_with_env(
        &Source {
            file: Some(file),
            dev: false,
        },
        std::iter::empty(),
    )
    .expect("valid config")
}

fn seed(store_path: &Path, n: usize) {
    let c = rusqlite::Connection::open(store_path).expect("db");
    for i in 0..n {
        usage::record(
            &c,
            &usage::NewUsage {
                run_id: Some(format!("run_{i:032x}")),
                session_id: Some(format!("sess_{:08x}", i / 10)),
                tokens_in: 1200 + i as i64,
                tokens_out: 800,
                tool_calls: 3,
            },
        )
        .expect("record");
    }
}

async fn per_beat(hub_port: u16, pending: usize, beats: u32) {
    let dir = tempfile::tempdir().expect("tmp");
    let config = Arc::new(config(dir.path(), hub_port, ""));
    let db = config.data_dir.join("tenantd.db");
    let store = Store::open_blocking(
        &db,
        &StoreOptions {
            readers: 2,
            ..Default::default()
        },
    )
    .expect("store");
    seed(&db, pending);
    let (agent, _channels) = agent::channel(
        AgentStatus::initial(Desired::Running),
        agent::GatewayEndpoint {
            base_url: "http://127.0.0.1:9".into(),
            api_key: "unused-by-this-benchmark".into(),
        },
    );
    let credentials = Arc::new(
        Credentials::load(&config.auth.credential_file, Duration::from_secs(1)).expect("cred"),
    );
    let mut hb = Heartbeat::new(Deps {
        config: config.clone(),
        store,
        agent,
        link: HubLink::new(Access::Active),
        metrics: Arc::new(Metrics::new()),
        credentials,
        releases: None,
    })
    .await
    .expect("client")
    .expect("hub configured");
    // Warm up: connection, statements, sysinfo.
    for _ in 0..20 {
        hb.beat().await.expect("beat");
    }
    let (body, _) = hb.build().await.expect("build");
    let payload = body.len();

    let me = std::process::id().to_string();
    let (a0, b0, c0, t0) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
        cpu_seconds(&me),
        Instant::now(),
    );
    for _ in 0..beats {
        hb.beat().await.expect("beat");
    }
    let wall = t0.elapsed();
    let cpu = cpu_seconds(&me) - c0;
    let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
    let bytes = ALLOC_BYTES.load(Ordering::Relaxed) - b0;

    let (a1, c1) = (ALLOCS.load(Ordering::Relaxed), cpu_seconds(&me));
    for _ in 0..beats {
        let _ = hb.build().await.expect("build");
    }
    let build_cpu = cpu_seconds(&me) - c1;
    let build_allocs = ALLOCS.load(Ordering::Relaxed) - a1;

    println!(
        "| {pending:>4} | {payload:>7} | {:>6.3} | {:>5.0} | {:>8.0} | {:>6.3} | {:>5.0} | {:>6.2} |",
        cpu * 1000.0 / f64::from(beats),
        allocs as f64 / f64::from(beats),
        bytes as f64 / f64::from(beats),
        build_cpu * 1000.0 / f64::from(beats),
        build_allocs as f64 / f64::from(beats),
        wall.as_secs_f64() * 1000.0 / f64::from(beats),
    );
}

/// The real daemon beating every ~10 ms at a closed port, RSS sampled.
fn rss_against_unreachable_hub(total_beats: u64) {
    let dir = tempfile::tempdir().expect("tmp");
    // A port nobody listens on: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let cred = dir.path().join("credential");
    write_private(&cred, TOKEN);
    let data = dir.path().join("data");
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        format!(
            "tenant_id = \"bench\"\ndata_dir = \"{}\"\n[listen]\naddr = \"127.0.0.1:0\"\n[auth]\ncredential_file = \"{}\"\n[log]\nlevel = \"error\"\n[hub]\nurl = \"http://127.0.0.1:{port}\"\nheartbeat_interval = \"10ms\"\nbackoff_max = \"10ms\"\nheartbeat_jitter_percent = 0\n",
            data.display(),
            cred.display()
        ),
    )
    .expect("config");
    // Migrate first so usage can be seeded before the daemon starts.
    let status = Command::new(env!("CARGO_BIN_EXE_hermes-tenantd"))
        .args(["migrate", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .status()
        .expect("migrate");
    assert!(status.success());
    seed(&data.join("tenantd.db"), 500);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hermes-tenantd"))
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let pid = child.id().to_string();
    // Beats are counted by the failure metric: read it from /metrics.
    std::thread::sleep(Duration::from_millis(500));
    let addr = find_listen_addr(&pid);
    println!("| beats | simulated hours at 30 s | RSS KiB | of which anonymous |");
    println!("|---:|---:|---:|---:|");
    let start = Instant::now();
    let mut next_report = 0u64;
    loop {
        let beats = failed_beats(&addr);
        if beats >= next_report {
            println!(
                "| {beats} | {:.1} | {} | {} |",
                beats as f64 * 30.0 / 3600.0,
                rss_kib(&pid),
                status_kib(&pid, "RssAnon:")
            );
            next_report += total_beats / 8;
        }
        if beats >= total_beats || start.elapsed() > Duration::from_secs(900) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "(peak VmHWM {} KiB, {} s wall)",
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?"),
        start.elapsed().as_secs()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The daemon's listening address, from its listening socket in /proc.
fn find_listen_addr(pid: &str) -> String {
    // Inodes of the process's sockets, then the LISTEN entry in /proc/net/tcp.
    let mut inodes = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                let t = t.to_string_lossy().into_owned();
                if let Some(i) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.push(i.to_owned());
                }
            }
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
            let port = u16::from_str_radix(f[1].rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
            return format!("127.0.0.1:{port}");
        }
    }
    panic!("daemon not listening");
}

fn failed_beats(addr: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with("hermes_tenantd_hub_heartbeats_failed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn main() {
    hermes_tenantd::tls::install_provider();
    let (mut hub, port) = fake_hub();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("## Per beat (in process, fake hub on loopback, no ack so the batch stays)");
    println!();
    println!(
        "| pending usage | payload B | CPU ms/beat | allocs/beat | alloc B/beat | build-only CPU ms | build allocs | wall ms/beat |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let _ = http
            .post(format!("http://127.0.0.1:{port}/control"))
            .body(r#"{"ack": false}"#)
            .send()
            .await;
        for (pending, beats) in [(0, 2000), (10, 2000), (500, 300)] {
            per_beat(port, pending, beats).await;
        }
    });
    let _ = hub.kill();
    let _ = hub.wait();
    println!();
    println!(
        "## Daemon RSS, beating every ~10 ms at an unreachable hub, 500 usage entries pending"
    );
    println!();
    let beats = std::env::var("BENCH_BEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    rss_against_unreachable_hub(beats);
}
