//! The daemon's links: loopback calls (and a plain-http hub) never go
//! through a proxy, and only the gateway the daemon started gets the gateway key
//! (an impostor holding the port before the start, while the gateway
//! cannot bind, or after it died gets nothing at all).

mod common;
use common::*;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener that records every connection and request head it gets and
/// answers each request like a healthy gateway would (`{"status":"ok"}`),
/// to lure the daemon into trusting it.
struct Recorder {
    port: u16,
    connections: Arc<Mutex<usize>>,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn on(port: u16) -> Recorder {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the recorder");
        Recorder::serve(listener)
    }

    /// Bind `port` as soon as it is free (the gateway that held it is
    /// dying), within `within`.
    async fn when_free(port: u16, within: Duration) -> Recorder {
        let deadline = Instant::now() + within;
        loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => return Recorder::serve(l),
                Err(e) => assert!(Instant::now() < deadline, "port {port} never freed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn serve(listener: tokio::net::TcpListener) -> Recorder {
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(Mutex::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (connections.clone(), heads.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                *c.lock().expect("lock") += 1;
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65_536 {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if !buf.is_empty() {
                        h.lock()
                            .expect("lock")
                            .push(String::from_utf8_lossy(&buf).into_owned());
                    }
                    let body = r#"{"status":"ok","version":"impostor"}"#;
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        Recorder {
            port,
            connections,
            heads,
            task,
        }
    }

    fn connections(&self) -> usize {
        *self.connections.lock().expect("lock")
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }

    fn keys_seen(&self) -> usize {
        self.heads()
            .iter()
            .filter(|h| h.to_ascii_lowercase().contains("authorization:"))
            .count()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const FOREIGN: &str = "held by a process the daemon did not start";

/// Poll `GET /agent` until `last_error` mentions `needle`.
async fn wait_last_error(d: &TestDaemon, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = d.get_json("/agent").await;
        if v["last_error"].as_str().is_some_and(|e| e.contains(needle)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "last_error never said `{needle}`: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_run(d: &TestDaemon) -> String {
    let r = d
        .post("/runs")
        .json(&json!({"input": "what is the secret plan", "platform": "web"}))
        .send()
        .await
        .expect("post run");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let v: Value = r.json().await.expect("json");
    v["run_id"].as_str().expect("run_id").to_owned()
}

/// Poll the run until it has ended; returns it.
async fn wait_ended(d: &TestDaemon, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let v = d.get_json(&format!("/runs/{id}")).await;
        if ["completed", "failed", "cancelled"].contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(Instant::now() < deadline, "run never ended: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn loopback_calls_and_a_plain_http_hub_never_go_through_a_proxy() {
    let proxy = Recorder::on(free_port()).await;
    let hub = Recorder::on(free_port()).await;
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let mut w = GatewayWorld::new();
    w.extra = format!(
        "[hub]\nurl = \"http://127.0.0.1:{}\"\nheartbeat_interval = \"200ms\"\n",
        hub.port
    );
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        w.env.push((name.to_owned(), url.clone()));
        w.env.push((name.to_lowercase(), url.clone()));
    }
    w.env.push(("NO_PROXY".into(), String::new()));
    w.env.push(("no_proxy".into(), String::new()));
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let id = start_run(&d).await;
    let run = wait_ended(&d, &id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "Hello from the fake gateway.");
    // The hub got its heartbeats directly, with the credential.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hub.heads().iter().any(|h| {
        h.starts_with("POST /v1/tenant-runtime/tenant-test/heartbeat ")
            && h.to_ascii_lowercase().contains("authorization: bearer")
    }) {
        assert!(Instant::now() < deadline, "no heartbeat: {:?}", hub.heads());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.connections(), 0, "the proxy saw: {:?}", proxy.heads());
}

#[tokio::test]
async fn an_impostor_holding_the_port_before_the_start_gets_nothing_and_the_agent_says_why() {
    let w = GatewayWorld::new();
    let impostor = Recorder::on(w.port).await;
    let d = w.daemon().await;
    let agent = wait_last_error(&d, FOREIGN).await;
    assert_ne!(agent["state"], "running", "{agent}");
    assert!(agent["pid"].is_null(), "no gateway was started: {agent}");
    // A run waits for an agent that never comes, and fails saying so.
    let id = start_run(&d).await;
    let run = wait_ended(&d, &id).await;
    assert_eq!(run["status"], "failed", "{run}");
    // The refusal path reads /proc: not even a connection, let alone a key.
    assert_eq!(impostor.keys_seen(), 0);
    assert_eq!(impostor.connections(), 0, "{:?}", impostor.heads());
    assert!(
        d.logs()
            .iter()
            .any(|l| l.contains("gateway port already in use")),
        "the refusal is logged"
    );
}

#[tokio::test]
async fn a_gateway_that_could_not_bind_never_lets_the_port_holder_pass_for_it() {
    // The real gateway stays alive when its port is taken (hermes-agent
    // 0.19.0: `api_server_port_in_use`, not retried): whoever holds the
    // port would answer the readiness probe.
    let w = GatewayWorld::new().fake("no_listen", "1");
    let d = w.daemon().await;
    w.wait_agent(&d, "starting").await;
    let impostor = Recorder::on(w.port).await;
    let agent = wait_last_error(&d, FOREIGN).await;
    assert_eq!(agent["state"], "starting", "{agent}");
    assert!(agent["pid"].is_number(), "{agent}");
    // The status can be read before the log line reaches the test's reader.
    d.wait_for_log("not talking to the gateway port", Duration::from_secs(10))
        .await;
    let logs = d.logs();
    let refusals = logs
        .iter()
        .filter(|l| l.contains("not talking to the gateway port"))
        .count();
    assert_eq!(refusals, 1, "one log line per refusal episode");
    assert_eq!(impostor.keys_seen(), 0);
    assert_eq!(impostor.connections(), 0, "{:?}", impostor.heads());
}

#[tokio::test]
async fn an_impostor_on_the_port_after_the_gateway_died_gets_no_key() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    // The next gateway will not listen, so the impostor keeps the port
    // whichever binds first.
    std::fs::write(w.home().join("fake_gateway.json"), r#"{"no_listen": true}"#)
        .expect("control file");
    w.crash_gateway(9).await;
    let impostor = Recorder::when_free(w.port, Duration::from_secs(10)).await;
    let id = start_run(&d).await;
    wait_last_error(&d, FOREIGN).await;
    let run = wait_ended(&d, &id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(impostor.keys_seen(), 0, "{:?}", impostor.heads());
    // A connection made in the moment between a check and its connect
    // (the gateway dying, the impostor binding) may reach it, but the
    // daemon drops it before writing: not one byte, not even a keyless
    // health probe (supervisor::gateway_connect).
    assert!(
        impostor.heads().is_empty(),
        "the impostor read: {:?}",
        impostor.heads()
    );
}

/// Lines of the fake gateway's accomplice log (`accomplice` switch).
fn accomplice_log(w: &GatewayWorld) -> Vec<String> {
    std::fs::read_to_string(w.home().join("fake_gateway/accomplice.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_gateways_own_tool_taking_its_port_while_it_shuts_down_gets_nothing() {
    // hermes-agent 0.19.0 closes its API listener first on SIGTERM and
    // exits after its teardown. The agent's shell tool (the gateway's
    // user, group and cgroup) can stop it and bind the port in between:
    // a process of the gateway's own group, while the gateway lives.
    let w = GatewayWorld::new()
        .fake("term_close_listener", "1")
        .fake("accomplice", "1");
    let d = w.daemon().await;
    let agent = w.wait_agent(&d, "running").await;
    let pid = agent["pid"].as_u64().expect("pid") as libc::pid_t;
    // The tool's `kill -TERM`.
    // SAFETY: plain syscall on the gateway this test's daemon started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !accomplice_log(&w).iter().any(|l| l == "bound") {
        assert!(
            Instant::now() < deadline,
            "the accomplice never bound the port"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The gateway is still alive: the port changed hands, not the process.
    let still = d.get_json("/agent").await;
    assert_eq!(still["pid"].as_u64(), Some(pid as u64), "{still}");
    let id = start_run(&d).await;
    // The refusal (health probe or run, whichever checks first), logged
    // once per episode whatever `last_error` says by then; or, had the
    // accomplice passed for the gateway, what it read.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        let read: Vec<String> = accomplice_log(&w)
            .into_iter()
            .filter(|l| l.starts_with("read"))
            .collect();
        assert!(read.is_empty(), "the accomplice read: {read:?}");
        let logs = d.logs();
        if let Some(l) = logs
            .iter()
            .find(|l| l.contains("not talking to the gateway port"))
        {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "no refusal: {logs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refusal.contains(FOREIGN), "{refusal}");
    // Whatever becomes of the run (the daemon replaces the unhealthy
    // gateway), the accomplice never read a byte: no health probe, no
    // key, no prompt.
    wait_ended(&d, &id).await;
    let log = accomplice_log(&w);
    assert!(
        !log.iter().any(|l| l.starts_with("read")),
        "the accomplice read: {log:?}"
    );
}
