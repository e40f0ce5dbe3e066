//! What the gate in front of the gateway key costs per request: a client
//! from `supervisor::gateway_connect::client` with `KeyGate::bearer` before
//! each request, against its limit, a plain loopback client sending the
//! same request to the same server, interleaved round by round. Two
//! shapes: a new connection per request (the check before the connect,
//! whose verification the connector layer reuses, and the confirm after
//! it: two reads of the port's listeners) and a kept-alive connection (the
//! check alone: one read); the reads per request are counted
//! (`KeyGate::listener_reads`) and printed. Then one read alone,
//! from netlink (`sock_diag`) and from `/proc/self/net/tcp{,6}`. This
//! process plays the gateway (its own listener, its own pid as the
//! child).
//!
//! `cargo bench --bench gateway_connect` (`BENCH_REQUESTS` per round and
//! mode, default 400; `BENCH_ROUNDS`, default 5). Figures, not pass/fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hermes_tenantd::agent::{AgentStatus, Desired, KeyGate};
use hermes_tenantd::supervisor::gateway_connect;
use hermes_tenantd::supervisor::gateway_socket::{listeners, proc_listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A keep-alive HTTP/1.1 server answering every request head with `ok`.
async fn serve(listener: tokio::net::TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Gated,
}

/// Microseconds per request over `n` sequential requests.
async fn run(http: &reqwest::Client, gate: Option<&KeyGate>, url: &str, n: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        let mut req = http.get(url);
        if let Some(g) = gate {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                g.bearer().await.expect("the port is ours"),
            );
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.bytes().await.expect("body").as_ref(), b"ok");
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let n = env_or("BENCH_REQUESTS", 400);
    let rounds = env_or("BENCH_ROUNDS", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(serve(listener));
        let url = format!("http://127.0.0.1:{port}/health");
        let mut st = AgentStatus::initial(Desired::Running);
        st.pid = Some(std::process::id());
        let (_status, rx) = tokio::sync::watch::channel(st);
        let gate = Arc::new(KeyGate::new(Some(port), "bench-key-0123456789abcdef", rx));

        let plain = |pool: usize| {
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(pool)
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("client")
        };
        let gated = |pool: usize| {
            gateway_connect::client(&gate, Duration::from_secs(5))
                .pool_max_idle_per_host(pool)
                .build()
                .expect("client")
        };
        let shapes = [
            ("new connection per request", 0usize),
            ("kept-alive connection", 1usize),
        ];
        println!(
            "{} UTC, load average {}, {rounds} rounds x {n} requests per mode, interleaved",
            chrono_free_now(),
            loadavg()
        );
        let tables = || {
            ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .map(|t| t.lines().count().saturating_sub(1))
                        .unwrap_or(0)
                })
                .sum::<usize>()
        };
        println!("TCP sockets in the tables: {}", tables());
        for (name, pool) in shapes {
            let (p, g) = (plain(pool), gated(pool));
            // Warm both (first connection, first walk).
            run(&p, None, &url, 10).await;
            run(&g, Some(&gate), &url, 10).await;
            let (mut plain_us, mut gated_us) = (Vec::new(), Vec::new());
            let reads_before = gate.listener_reads();
            for round in 0..rounds {
                // Alternate which goes first so drift falls on both.
                let order = if round % 2 == 0 {
                    [Mode::Plain, Mode::Gated]
                } else {
                    [Mode::Gated, Mode::Plain]
                };
                for mode in order {
                    match mode {
                        Mode::Plain => plain_us.push(run(&p, None, &url, n).await),
                        Mode::Gated => gated_us.push(run(&g, Some(&gate), &url, n).await),
                    }
                }
            }
            let (pm, gm) = (median(plain_us.clone()), median(gated_us.clone()));
            let reads = (gate.listener_reads() - reads_before) as f64 / (rounds * n) as f64;
            println!(
                "{name}: plain {pm:.1} µs/request (rounds {}), gated {gm:.1} µs/request (rounds {}), {:.2} x, +{:.1} µs, {reads:.2} reads of the listeners per gated request",
                fmt(&plain_us),
                fmt(&gated_us),
                gm / pm,
                gm - pm
            );
        }
        // The read the gate adds per request, alone: the netlink dump it
        // uses against the /proc tables it used before, interleaved, with
        // the TIME_WAIT sockets the rounds above left in the tables.
        println!("TCP sockets in the tables now: {}", tables());
        let reads = n.max(10);
        let (mut diag_us, mut proc_us) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let started = Instant::now();
            for _ in 0..reads {
                std::hint::black_box(listeners(port).expect("sock_diag"));
            }
            diag_us.push(started.elapsed().as_secs_f64() * 1e6 / reads as f64);
            let started = Instant::now();
            for _ in 0..reads / 10 {
                std::hint::black_box(proc_listeners(port).expect("read /proc"));
            }
            proc_us.push(started.elapsed().as_secs_f64() * 1e6 / (reads / 10) as f64);
        }
        println!(
            "listeners(port), netlink: {:.1} µs (rounds {}); from /proc/self/net/tcp{{,6}}: {:.1} µs (rounds {})",
            median(diag_us.clone()),
            fmt(&diag_us),
            median(proc_us.clone()),
            fmt(&proc_us)
        );
    });
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// `date -u`'s shape without a date crate.
fn chrono_free_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
