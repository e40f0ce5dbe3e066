//! `GET /logs`: the gateway's and the daemon's lines, capped, with a
//! cursor; `follow=true` as SSE that resumes after `Last-Event-ID` with no
//! line twice; and no secret (the credential, the gateway key, `.env`
//! values, Authorization headers) in a served line or a log file.

mod common;
use common::*;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

/// Secrets the test plants: a value in the `.env` before start, and one
/// set through the API.
const FILE_SECRET: &str = "leak-file-value-5f2b9c1e";
const PUT_SECRET: &str = "leak-put-value-8d41a7c3";

fn cursor_key(c: &str) -> (i64, u32) {
    let (a, b) = c.split_once('.').expect("cursor");
    (
        i64::from_str_radix(a, 16).expect("hex"),
        u32::from_str_radix(b, 16).expect("hex"),
    )
}

async fn say(d: &TestDaemon, text: &str) {
    let run = start_run(d, json!({ "input": format!("say: {text}") })).await;
    wait_run(d, run["run_id"].as_str().expect("id"), "completed").await;
}

/// Poll `GET /logs` until a line contains `needle`; returns the page.
async fn wait_line(d: &TestDaemon, query: &str, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = d.get_json(&format!("/logs?{query}")).await;
        let found = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|l| l["text"].as_str().is_some_and(|t| t.contains(needle)));
        if found {
            return page;
        }
        assert!(Instant::now() < deadline, "no line with {needle}: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn world_with_env_secret() -> GatewayWorld {
    let w = GatewayWorld::new();
    std::fs::create_dir_all(w.home()).expect("home");
    std::fs::write(w.home().join(".env"), format!("LEAK_FILE={FILE_SECRET}\n"))
        .expect("write .env");
    w
}

#[tokio::test]
async fn secrets_never_reach_the_logs_api_or_the_files() {
    let w = world_with_env_secret();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let r = d
        .put("/env/LEAK_PUT")
        .json(&json!({ "value": PUT_SECRET }))
        .send()
        .await
        .expect("put env");
    assert!(r.status().is_success(), "{}", r.status());
    // The change reaches the gateway (a restart), then the leaking run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.get_json("/env").await["agent"]["pending"] != false {
        assert!(Instant::now() < deadline, "the .env change never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.wait_agent(&d, "running").await;
    let key = std::fs::read_to_string(d.data_dir().join("gateway_api_key")).expect("key");
    let key = key.trim().to_owned();
    say(&d, &format!("the credential is {TOKEN} leak")).await;
    let page = wait_line(&d, "source=gateway&limit=1000", "LEAK_PUT=").await;
    let text = page.to_string();
    assert!(text.contains("[REDACTED]"), "{text}");

    let daemon = d.get_json("/logs?source=daemon&limit=1000").await;
    assert!(
        !daemon["items"].as_array().expect("items").is_empty(),
        "the daemon's own log is served: {daemon}"
    );
    let mut served = text;
    served.push_str(&daemon.to_string());
    let mut files = String::new();
    for entry in std::fs::read_dir(d.data_dir().join("logs")).expect("logs dir") {
        let path = entry.expect("entry").path();
        files.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
    }
    assert!(files.contains("LEAK_FILE="), "the line itself was written");
    for secret in [TOKEN, key.as_str(), FILE_SECRET, PUT_SECRET] {
        assert!(!served.contains(secret), "{secret} served");
        assert!(!files.contains(secret), "{secret} in a log file");
    }
}

#[tokio::test]
async fn pages_have_a_cursor_caps_and_filters() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    for i in 0..3 {
        say(&d, &format!("page-line-{i}")).await;
    }
    let page = wait_line(&d, "source=gateway&q=page-line-", "page-line-2").await;
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{page}");
    assert!(
        items[0]["text"]
            .as_str()
            .expect("text")
            .contains("page-line-0")
    );
    // Newest last, and `limit` caps.
    let one = d
        .get_json("/logs?source=gateway&q=page-line-&limit=1")
        .await;
    assert_eq!(one["items"].as_array().expect("items").len(), 1);
    assert!(
        one["items"][0]["text"]
            .as_str()
            .expect("t")
            .contains("page-line-2")
    );
    assert_eq!(one["truncated"], true);
    // After a cursor: only what follows it.
    let first = items[0]["cursor"].as_str().expect("cursor");
    let rest = d
        .get_json(&format!("/logs?source=gateway&q=page-line-&cursor={first}"))
        .await;
    let texts: Vec<String> = rest["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|l| l["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(texts.len(), 2, "{rest}");
    assert!(texts[0].contains("page-line-1") && texts[1].contains("page-line-2"));
    for (query, code) in [
        ("source=kernel", "invalid_argument"),
        ("limit=0", "invalid_argument"),
        ("limit=1001", "invalid_argument"),
        ("cursor=zz", "invalid_argument"),
        ("level=loud", "invalid_argument"),
        ("since=yesterday", "invalid_argument"),
        ("bogus=1", "invalid_argument"),
    ] {
        let r = d.get(&format!("/logs?{query}")).send().await.expect("get");
        expect_problem(r, 400, code).await;
    }
}

/// Read SSE frames until one's text contains `needle`; returns the
/// (id, text) of every frame read.
async fn read_until(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
    needle: &str,
) -> Vec<(String, String)> {
    let mut frames = Vec::new();
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                let v: Value = serde_json::from_str(&data).expect("json");
                let text = v["text"].as_str().unwrap_or_default().to_owned();
                let done = text.contains(needle);
                frames.push((id, text));
                if done {
                    return frames;
                }
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .unwrap_or_else(|_| panic!("no frame with {needle}: {frames:?}"))
            .expect("stream ended")
            .expect("chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn follow_streams_new_lines_in_order_and_resumes_without_duplicates() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    say(&d, "follow-1").await;
    let resp = d
        .get("/logs?source=gateway&follow=true&q=follow-")
        .send()
        .await
        .expect("follow");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ct"),
        "text/event-stream"
    );
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let backlog = read_until(&mut body, &mut buf, "follow-1").await;
    assert_eq!(backlog.len(), 1, "{backlog:?}");
    say(&d, "follow-2").await;
    say(&d, "follow-3").await;
    let live = read_until(&mut body, &mut buf, "follow-3").await;
    let texts: Vec<&str> = live.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.len(), 2, "{live:?}");
    assert!(texts[0].contains("follow-2") && texts[1].contains("follow-3"));
    assert!(cursor_key(&live[0].0) < cursor_key(&live[1].0));
    let last_id = live[1].0.clone();
    drop(body);

    // Lines written while disconnected arrive after a resume, once each.
    say(&d, "follow-4").await;
    let resp = d
        .get("/logs?source=gateway&follow=true&q=follow-")
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .expect("resume");
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let resumed = read_until(&mut body, &mut buf, "follow-4").await;
    assert_eq!(resumed.len(), 1, "no line twice: {resumed:?}");
    assert!(cursor_key(&resumed[0].0) > cursor_key(&last_id));
}

#[tokio::test]
async fn followers_are_capped() {
    let d = TestDaemon::start().await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let r = d
            .get("/logs?source=daemon&follow=true")
            .send()
            .await
            .expect("follow");
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let r = d
        .get("/logs?source=daemon&follow=true")
        .send()
        .await
        .expect("follow");
    expect_problem(r, 429, "rate_limited").await;
    drop(open);
    // A slot comes back once a follower leaves.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = d
            .get("/logs?source=daemon&follow=true")
            .send()
            .await
            .expect("follow");
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no follower slot came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
