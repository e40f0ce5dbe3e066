//! The SSE relay at the limit (issue 17, item 4): events per second through
//! the daemon against reading the same event source directly, with no
//! Python anywhere in the measurement.
//!
//! - The event source is this bench binary started again by the daemon as
//!   its gateway (`gateway.command = "<this binary> --fake-gateway"`, see
//!   [`source`]): it is the daemon's supervised child holding the port, so
//!   the daemon's port check accepts it. It speaks what the relay needs of
//!   hermes-agent 0.19.0's runs API (`/health`, `/v1/capabilities`,
//!   `POST /v1/runs`, `GET /v1/runs/{id}/events`, bearer key), with the
//!   event shapes of `tests/fake_gateway_runs.py` (`events:N`).
//! - The client ([`Counter`]) counts `data:` lines of an SSE body without
//!   parsing JSON, on a one-thread runtime.
//! - Rounds alternate direct (`POST /v1/runs`, `GET .../events` on the
//!   source) and through the daemon (`POST /runs`, `GET /runs/{id}/events`),
//!   each timed from the submit to the end of the stream, and print
//!   events/s of both and their ratio, plus the CPU each of the three
//!   processes used per event in that phase (utime + stime, `/proc/PID/stat`)
//!   and how busy the machine's cores were.
//!
//! - A third phase each round is the relay's own floor, the event log
//!   alone ([`log_alone`]): the same number of events, shaped as the relay
//!   logs them, appended through the daemon's `Store::write` +
//!   `store::runs::append_events` (blocks of 256 events), 256 and 2048
//!   events a transaction (what the relay's writer commits when it keeps up
//!   and the most it takes when it lags), on a fresh data dir. The bench
//!   prints the daemon's ratio to both limits.
//!
//! `cargo bench --bench relay` (`BENCH_EVENTS` per run, default 200000;
//! `BENCH_ROUNDS`, default 5). Figures, not pass/fail.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

mod common;
use common::{cpu_secs, env_or, free_port, machine_busy_secs, spawn_daemon, write_private};

const TOKEN: &str = "bench-credential-0123456789abcdef";
const TENANT: &str = "bench";
/// The argument that makes this binary the fake gateway.
const SOURCE_ARG: &str = "--fake-gateway";

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The fake gateway: the runs API of hermes-agent 0.19.0 as far as the
/// relay uses it, emitting `events:N` message deltas as fast as the reader
/// takes them.
mod source {
    use std::collections::HashMap;
    use std::fmt::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::{Value, json};
    use subtle::ConstantTimeEq;

    /// Events written per body chunk: a fast source hands the socket large
    /// writes, as the Python fake does when its reader lags.
    const EVENTS_PER_CHUNK: u64 = 256;

    struct Source {
        key: String,
        next_id: AtomicU64,
        /// Submitted runs not yet read: id -> number of deltas.
        runs: Mutex<HashMap<String, u64>>,
    }

    type Shared = State<Arc<Source>>;

    fn authorized(s: &Source, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|t| !s.key.is_empty() && bool::from(t.ct_eq(s.key.as_bytes())))
    }

    fn refused() -> Response {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "invalid API key", "code": "invalid_api_key"}})),
        )
            .into_response()
    }

    async fn health() -> Json<Value> {
        Json(json!({"status": "ok", "platform": "hermes-agent", "version": "0.19.0-bench"}))
    }

    async fn capabilities(State(s): Shared, headers: HeaderMap) -> Response {
        if !authorized(&s, &headers) {
            return refused();
        }
        Json(json!({
            "object": "hermes.api_server.capabilities",
            "features": {"run_submission": true, "run_events_sse": true, "run_stop": true, "run_approval_response": true},
            "endpoints": {"runs": {"method": "POST", "path": "/v1/runs"}},
        }))
        .into_response()
    }

    async fn submit(State(s): Shared, headers: HeaderMap, Json(body): Json<Value>) -> Response {
        if !authorized(&s, &headers) {
            return refused();
        }
        let input = body["input"].as_str().unwrap_or("");
        let n = input
            .split_whitespace()
            .find_map(|w| w.strip_prefix("events:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let id = format!(
            "run_{:032x}",
            s.next_id.fetch_add(1, Ordering::Relaxed) + 0x5eed_0000
        );
        if let Ok(mut runs) = s.runs.lock() {
            runs.insert(id.clone(), n);
        }
        (
            StatusCode::ACCEPTED,
            Json(json!({"run_id": id, "status": "started"})),
        )
            .into_response()
    }

    /// `data:` frames as `json.dumps` writes them in the Python fake.
    fn deltas(out: &mut String, id: &str, from: u64, to: u64) {
        for i in from..to {
            let t = super::now_secs();
            let _ = write!(
                out,
                "data: {{\"event\": \"message.delta\", \"run_id\": \"{id}\", \"timestamp\": {t}, \"delta\": \"d{i} \", \"sent_at\": {t}}}\n\n"
            );
        }
    }

    async fn events(State(s): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
        if !authorized(&s, &headers) {
            return refused();
        }
        // One consumer per run, as the real gateway.
        let Some(n) = s.runs.lock().ok().and_then(|mut r| r.remove(&id)) else {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {"message": "run not found", "code": "run_not_found"}})),
            )
                .into_response();
        };
        let body = futures_util::stream::unfold(0u64, move |sent| {
            let id = id.clone();
            async move {
                if sent > n {
                    return None;
                }
                let mut out = String::with_capacity(160 * EVENTS_PER_CHUNK as usize);
                let to = (sent + EVENTS_PER_CHUNK).min(n);
                deltas(&mut out, &id, sent, to);
                if to == n {
                    let _ = write!(
                        out,
                        "data: {{\"event\": \"run.completed\", \"run_id\": \"{id}\", \"timestamp\": {}, \"output\": \"{n} deltas\", \"usage\": {{\"input_tokens\": 1, \"output_tokens\": {n}, \"total_tokens\": {}}}}}\n\n: stream closed\n\n",
                        super::now_secs(),
                        n + 1
                    );
                    return Some((Ok::<_, std::convert::Infallible>(out), n + 1));
                }
                Some((Ok(out), to))
            }
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    /// Serve on `API_SERVER_HOST:API_SERVER_PORT` with `API_SERVER_KEY`,
    /// which the daemon sets in the gateway's environment. Two workers,
    /// like the daemon.
    pub fn serve() {
        let env = |k: &str| std::env::var(k).unwrap_or_default();
        let port: u16 = env("API_SERVER_PORT").parse().unwrap_or(8642);
        let state = Arc::new(Source {
            key: env("API_SERVER_KEY"),
            next_id: AtomicU64::new(0),
            runs: Mutex::new(HashMap::new()),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let app = Router::new()
                .route("/health", get(health))
                .route("/v1/health", get(health))
                .route("/v1/capabilities", get(capabilities))
                .route("/v1/runs", post(submit))
                .route("/v1/runs/{id}/events", get(events))
                .with_state(state);
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind the gateway port");
            println!("bench event source listening on 127.0.0.1:{port}");
            axum::serve(listener, app).await.expect("serve");
        });
    }
}

/// Counts the events of an SSE body: `data:` lines, without parsing them.
/// Keeps the last one to check that the stream ended with the run's end.
#[derive(Default)]
struct Counter {
    /// A line split across chunks.
    carry: Vec<u8>,
    events: u64,
    last: Vec<u8>,
}

/// Longest line the counter holds across chunks.
const MAX_LINE: usize = 1 << 20;

impl Counter {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        let mut rest = chunk;
        if !self.carry.is_empty() {
            let Some(p) = rest.iter().position(|b| *b == b'\n') else {
                if self.carry.len() + rest.len() > MAX_LINE {
                    return Err("an SSE line longer than 1 MiB".into());
                }
                self.carry.extend_from_slice(rest);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&rest[..p]);
            self.line(&line);
            rest = &rest[p + 1..];
        }
        let mut lines = rest.split(|b| *b == b'\n');
        // The last piece has no newline yet (empty when the chunk ended one).
        let tail = lines.next_back().unwrap_or_default();
        for line in lines {
            self.line(line);
        }
        if tail.len() > MAX_LINE {
            return Err("an SSE line longer than 1 MiB".into());
        }
        self.carry.extend_from_slice(tail);
        Ok(())
    }

    fn line(&mut self, line: &[u8]) {
        if line.starts_with(b"data:") {
            self.events += 1;
            self.last.clear();
            self.last.extend_from_slice(line);
        }
    }

    /// Whether the last event was the run's end.
    fn ended(&self) -> bool {
        let last = String::from_utf8_lossy(&self.last);
        last.contains("run.completed")
    }
}

/// Read a response to its end; the number of events.
async fn count(resp: reqwest::Response) -> Result<u64, String> {
    if !resp.status().is_success() {
        return Err(format!("event stream answered {}", resp.status()));
    }
    let mut body = resp.bytes_stream();
    let mut c = Counter::default();
    while let Some(chunk) = body.next().await {
        c.feed(&chunk.map_err(|e| e.to_string())?)?;
    }
    if !c.ended() {
        return Err(format!(
            "the stream ended after {} events without run.completed",
            c.events
        ));
    }
    Ok(c.events)
}

/// Send; the 2xx answer's JSON.
async fn json_of(req: reqwest::RequestBuilder) -> Result<Value, String> {
    req.send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// `POST {runs}` a run of `input`, then read `GET {runs}/{id}/events` to
/// its end (both runs APIs have this shape); the number of events.
async fn one_run(
    client: &reqwest::Client,
    runs: &str,
    bearer: &str,
    input: String,
) -> Result<u64, String> {
    let r = json_of(
        client
            .post(runs)
            .bearer_auth(bearer)
            .json(&json!({"input": input})),
    )
    .await?;
    let id = r["run_id"].as_str().ok_or("no run_id")?;
    let resp = client
        .get(format!("{runs}/{id}/events"))
        .bearer_auth(bearer)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    count(resp).await
}

/// One phase: events/s, and CPU µs per event of source, daemon, client,
/// and what everything else on the machine used meanwhile.
struct Phase {
    events: u64,
    secs: f64,
    source_us: f64,
    daemon_us: f64,
    client_us: f64,
    others_us: f64,
    cores_busy: f64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }

    fn row(&self) -> String {
        format!(
            "{:>9.0} events/s; CPU per event: source {:.2} µs, daemon {:.2} µs, client {:.2} µs, rest of the machine {:.2} µs; cores busy {:.2}",
            self.rate(),
            self.source_us,
            self.daemon_us,
            self.client_us,
            self.others_us,
            self.cores_busy
        )
    }
}

struct Pids {
    daemon: u32,
    source: u32,
    client: u32,
}

async fn measure<F, Fut>(pids: &Pids, run: F) -> Result<Phase, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<u64, String>>,
{
    let (s0, d0, c0, m0) = (
        cpu_secs(pids.source),
        cpu_secs(pids.daemon),
        cpu_secs(pids.client),
        machine_busy_secs(),
    );
    let t = Instant::now();
    let events = run().await?;
    let secs = t.elapsed().as_secs_f64();
    let (s, d, c, m) = (
        cpu_secs(pids.source) - s0,
        cpu_secs(pids.daemon) - d0,
        cpu_secs(pids.client) - c0,
        machine_busy_secs() - m0,
    );
    let per = |x: f64| x * 1e6 / events.max(1) as f64;
    Ok(Phase {
        events,
        secs,
        source_us: per(s),
        daemon_us: per(d),
        client_us: per(c),
        others_us: per((m - s - d - c).max(0.0)),
        cores_busy: m / secs,
    })
}

/// Bytes this process has passed to write(2) so far (`/proc/self/io`
/// `wchar`; in the log-alone phase that is SQLite's WAL and database).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The relay's own durable-write floor: the event log alone.
mod log_alone {
    use std::borrow::Cow;
    use std::path::Path;
    use std::sync::Arc;

    use hermes_tenantd::store::runs::{self as run_store, NewRun, StoredEvent};
    use hermes_tenantd::store::{Store, StoreOptions};

    /// Events in one of the relay's batches (`runs::sequencer`): the
    /// source writes 256 frames per body chunk. The relay's writer commits
    /// one batch per transaction when it keeps up, up to 8 when it lags.
    pub const BATCH: u64 = 256;
    pub const WRITER_MOST: u64 = 8 * BATCH;
    const RUN: &str = "run_fedcba9876543210fedcba9876543210";
    const GATEWAY_RUN: &str = "run_000000000000000000000000deadbeef";

    /// A fresh store (the daemon's default options) holding one run.
    pub async fn open(dir: &Path) -> Result<Store, String> {
        let path = dir.join("tenantd.db");
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let store = tokio::task::spawn_blocking(move || {
            Store::open_blocking(&path, &StoreOptions::default())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        store
            .write(|c| {
                c.execute(
                    "INSERT INTO sessions (id, platform, title, created_at, updated_at, message_count)
                     VALUES ('s1', 'api', NULL, 0, 0, 0)",
                    [],
                )?;
                run_store::insert(
                    c,
                    &NewRun {
                        id: RUN.into(),
                        session_id: "s1".into(),
                        platform: "api".into(),
                        input: serde_json::json!("bench"),
                        instructions: None,
                    },
                )
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(store)
    }

    /// A delta as the relay logs it: the source's frame, `gateway_run_id`
    /// first and the daemon's run id in `run_id`.
    fn delta(seq: u64) -> StoredEvent {
        let t = super::now_secs();
        StoredEvent {
            seq: seq as i64,
            name: Cow::Borrowed("message.delta"),
            data: Arc::from(format!(
                "{{\"gateway_run_id\":\"{GATEWAY_RUN}\",\"event\": \"message.delta\", \"run_id\": \"{RUN}\", \"timestamp\": {t}, \"delta\": \"d{seq} \", \"sent_at\": {t}}}"
            )),
        }
    }

    /// Append `events` deltas and the run's end, `per_tx` events per
    /// transaction; the number of events logged.
    pub async fn append(store: &Store, events: u64, per_tx: u64) -> Result<u64, String> {
        let mut seq = 0u64;
        while seq <= events {
            let to = (seq + per_tx).min(events + 1);
            let batch: Vec<StoredEvent> = (seq + 1..=to)
                .map(|s| {
                    if s == events + 1 {
                        StoredEvent {
                            seq: s as i64,
                            name: Cow::Borrowed("run.completed"),
                            data: Arc::from(format!(
                                "{{\"gateway_run_id\":\"{GATEWAY_RUN}\",\"event\": \"run.completed\", \"run_id\": \"{RUN}\", \"output\": \"{events} deltas\"}}"
                            )),
                        }
                    } else {
                        delta(s)
                    }
                })
                .collect();
            store
                .write(move |c| run_store::append_events(c, RUN, &batch))
                .await
                .map_err(|e| e.to_string())?;
            seq = to;
        }
        Ok(seq)
    }
}

/// One log-alone phase on a fresh data dir (removed after); the phase and
/// the bytes written.
async fn log_phase(
    pids: &Pids,
    dir: &std::path::Path,
    round: usize,
    events: u64,
    per_tx: u64,
) -> Result<(Phase, u64), String> {
    let log_dir = dir.join(format!("log-{round}"));
    let store = log_alone::open(&log_dir).await?;
    let w0 = written_bytes();
    let phase = measure(pids, || log_alone::append(&store, events, per_tx)).await?;
    let written = written_bytes() - w0;
    drop(store);
    let _ = std::fs::remove_dir_all(&log_dir);
    Ok((phase, written))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    if std::env::args().any(|a| a == SOURCE_ARG) {
        return source::serve();
    }
    let events: u64 = env_or("BENCH_EVENTS", 200_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let cred = dir.path().join("credential");
    write_private(&cred, TOKEN);
    let port = free_port();
    let exe = std::env::current_exe().expect("exe");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"{TENANT}\"\ndata_dir = \"{data}\"\n[listen]\naddr = \"127.0.0.1:0\"\n[auth]\ncredential_file = \"{cred}\"\n[log]\nformat = \"json\"\nlevel = \"warn,hermes_tenantd::daemon=info\"\n[gateway]\ncommand = \"'{exe}' {SOURCE_ARG}\"\nhermes_home = \"{home}\"\nport = {port}\nstart_timeout = \"20s\"\n",
            data = dir.path().join("data").display(),
            cred = cred.display(),
            exe = exe.display(),
            home = dir.path().join("home").display(),
        ),
    )
    .expect("config");
    let (mut child, addr) = spawn_daemon(&config);
    let daemon = child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::new();
    let base = format!("http://{addr}/v1/tenant-runtime/{TENANT}");
    let gw = format!("http://127.0.0.1:{port}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let result: Result<(), String> = rt.block_on(async {
        // The source must be supervised and running; its pid is the
        // gateway's.
        let deadline = Instant::now() + Duration::from_secs(30);
        let source = loop {
            let v = json_of(client.get(format!("{base}/agent")).bearer_auth(TOKEN)).await?;
            if v["state"] == "running" {
                break v["pid"].as_u64().ok_or("no gateway pid")? as u32;
            }
            if Instant::now() > deadline {
                return Err(format!("the event source is not running: {v}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let key = std::fs::read_to_string(dir.path().join("data/gateway_api_key"))
            .map_err(|e| e.to_string())?
            .trim()
            .to_owned();
        let pids = Pids {
            daemon,
            source,
            client: std::process::id(),
        };
        let (client, key, gw, base) = (&client, &key, &gw, &base);
        // The limit: the source's own runs API; the daemon: its runs API.
        let direct_runs = format!("{gw}/v1/runs");
        let daemon_runs = format!("{base}/runs");
        let direct = |input: String| one_run(client, &direct_runs, key, input);
        let via = |input: String| one_run(client, &daemon_runs, TOKEN, input);

        // One short run each way first: connections, caches, the store.
        direct("events:1000".into()).await?;
        via("events:1000".into()).await?;
        println!(
            "hermes-tenantd SSE relay at the limit ({cpus} CPUs, load average {})",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "  {events} message.delta events per run, as fast as the Rust event source emits; rounds alternate direct / through the daemon:"
        );
        println!(
            "  and the event log alone: the same events appended through the daemon's Store::write + store::runs::append_events, {} (and {}) per transaction, fresh data dir, default store options:",
            log_alone::BATCH,
            log_alone::WRITER_MOST
        );
        let (mut ratios, mut log_ratios, mut wide_ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut daemon_us, mut log_us, mut log_bytes) = (Vec::new(), Vec::new(), Vec::new());
        let (mut direct_rates, mut via_rates, mut log_rates) = (Vec::new(), Vec::new(), Vec::new());
        let mut log_wide_rates = Vec::new();
        for round in 1..=rounds {
            let input = format!("events:{events}");
            let d = measure(&pids, || direct(input.clone())).await?;
            let v = measure(&pids, || via(input)).await?;
            if v.events != d.events {
                return Err(format!(
                    "direct read {} events, through the daemon {}",
                    d.events, v.events
                ));
            }
            use log_alone::{BATCH, WRITER_MOST};
            let (l, written) = log_phase(&pids, dir.path(), round, events, BATCH).await?;
            let (lw, _) = log_phase(&pids, dir.path(), round, events, WRITER_MOST).await?;
            if [l.events, lw.events].iter().any(|n| *n != d.events) {
                return Err(format!("logged {} events, direct read {}", l.events, d.events));
            }
            let per = |x: u64| x as f64 / l.events as f64;
            println!("    round {round}: direct  {}", d.row());
            println!("             daemon  {}", v.row());
            println!(
                "             log     {:>9.0} events/s ({BATCH} a transaction; {:>9.0} with {WRITER_MOST}); CPU per event (this process: making and logging them) {:.2} µs; {:.0} B written per event ({:.0} MB/s)",
                l.rate(),
                lw.rate(),
                l.client_us,
                per(written),
                written as f64 / l.secs / 1e6
            );
            println!(
                "             ratio daemon / direct: {:.2} x; daemon / log alone: {:.2} x ({:.2} x with {WRITER_MOST})",
                v.rate() / d.rate(),
                v.rate() / l.rate(),
                v.rate() / lw.rate(),
            );
            log_wide_rates.push(lw.rate());
            ratios.push(v.rate() / d.rate());
            log_ratios.push(v.rate() / l.rate());
            wide_ratios.push(v.rate() / lw.rate());
            daemon_us.push(v.daemon_us);
            log_us.push(l.client_us);
            log_bytes.push(per(written));
            direct_rates.push(d.rate());
            via_rates.push(v.rate());
            log_rates.push(l.rate());
        }
        let direct_rate = median(direct_rates);
        let bytes = median(log_bytes);
        println!(
            "  median: direct {:.0} events/s, through the daemon {:.0} events/s, log alone {:.0} events/s ({} a transaction) and {:.0} ({})",
            direct_rate,
            median(via_rates),
            median(log_rates),
            log_alone::BATCH,
            median(log_wide_rates),
            log_alone::WRITER_MOST,
        );
        println!(
            "  median ratios: daemon / direct {:.2} x; daemon / log alone {:.2} x ({} a transaction), {:.2} x ({}); CPU per event: daemon {:.2} µs, log alone {:.2} µs",
            median(ratios),
            median(log_ratios),
            log_alone::BATCH,
            median(wide_ratios),
            log_alone::WRITER_MOST,
            median(daemon_us),
            median(log_us)
        );
        println!(
            "  0.8 x direct is {:.0} events/s: the log alone would write {:.0} MB/s at that rate ({bytes:.0} B per event)",
            0.8 * direct_rate,
            0.8 * direct_rate * bytes / 1e6
        );
        Ok(())
    });
    // SIGTERM: the daemon stops its gateway (the source) on the way out.
    // SAFETY: kill(2) on the daemon's pid, which this process started.
    unsafe {
        libc::kill(daemon as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    if let Err(e) = result {
        eprintln!("relay bench failed: {e}");
        std::process::exit(1);
    }
}
