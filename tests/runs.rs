//! Runs through the daemon against the fake gateway's runs API: relay,
//! multi-subscriber fan-out, resume, replay, stop, approval, agent death,
//! wake on run, chat-completions fallback, recording.

mod common;
use common::*;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
struct Frame {
    id: i64,
    event: String,
    data: Value,
}

/// Read SSE frames until the stream ends or `max` frames were read.
async fn read_frames(resp: reqwest::Response, max: usize) -> Vec<Frame> {
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut frames = Vec::new();
    let (mut id, mut event, mut data) = (None, None, String::new());
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("event stream stalled")
    {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        while let Some(pos) = buf.find('\n') {
            let line: String = buf.drain(..=pos).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !data.is_empty() {
                    frames.push(Frame {
                        id: id.take().expect("every frame has an id"),
                        event: event.take().expect("every frame has an event name"),
                        data: serde_json::from_str(&data).expect("data is JSON"),
                    });
                    data.clear();
                    if frames.len() >= max {
                        return frames;
                    }
                }
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().parse().expect("numeric id"));
            } else if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }
    frames
}

async fn events(d: &TestDaemon, run_id: &str, last: Option<i64>) -> reqwest::Response {
    let mut req = d.get(&format!("/runs/{run_id}/events"));
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l.to_string());
    }
    req.send().await.expect("events")
}

/// A daemon over a running fake gateway (with `w`'s switches) and a run
/// started on it: (daemon, run, run id).
async fn run_on(w: &GatewayWorld, input: &str) -> (TestDaemon, Value, String) {
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let run = start_run(&d, json!({ "input": input })).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    (d, run, id)
}

fn names(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(|f| f.event.as_str()).collect()
}

/// Every event names the run by the daemon's id; the gateway's id is kept
/// in `gateway_run_id`.
fn assert_ids(frames: &[Frame], run_id: &str) {
    for f in frames {
        assert_eq!(f.data["run_id"], run_id, "{f:?}");
        let gid = f.data["gateway_run_id"].as_str().unwrap_or_default();
        assert!(gid.starts_with("run_") && gid != run_id, "{f:?}");
    }
}

/// The session's last message is the run's output marked partial (or,
/// with `None`, the run left no assistant message at all).
async fn assert_partial(d: &TestDaemon, run: &Value, text: Option<&str>) {
    let session = run["session_id"].as_str().expect("session");
    let m: Value = d
        .get_json(&format!("/conversations/{session}/messages"))
        .await;
    let items = m["items"].as_array().expect("items");
    let assistant: Vec<&Value> = items.iter().filter(|m| m["role"] == "assistant").collect();
    match text {
        Some(text) => {
            assert_eq!(run["output"], text, "{run}");
            assert_eq!(assistant.len(), 1, "{m}");
            assert_eq!(assistant[0]["content"], text, "{m}");
            assert_eq!(assistant[0]["partial"], true, "{m}");
        }
        None => {
            assert!(run["output"].is_null(), "{run}");
            assert!(assistant.is_empty(), "{m}");
        }
    }
}

fn assert_sequence(frames: &[Frame], from: i64) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.id, from + i as i64, "ids must be consecutive: {frames:?}");
        assert_eq!(
            f.data["event"],
            f.event.as_str(),
            "event line names the JSON event"
        );
    }
}

#[tokio::test]
async fn a_run_is_relayed_with_names_and_ids_and_recorded() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let run = start_run(
        &d,
        json!({"input": "what is the weather in lisbon", "platform": "web"}),
    )
    .await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let session = run["session_id"].as_str().expect("session").to_owned();
    assert!(["queued", "running"].contains(&run["status"].as_str().unwrap_or_default()));

    let frames = read_frames(events(&d, &id, None).await, 1000).await;
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "message.delta",
            "message.delta",
            "message.delta",
            "tool.started",
            "tool.completed",
            "run.completed"
        ]
    );
    assert_sequence(&frames, 1);
    // The daemon's run id; the gateway's other fields pass through.
    assert_ids(&frames, &id);
    assert_eq!(frames[0].data["delta"], "Hello");
    assert!(frames[0].data["timestamp"].is_f64());

    let v = wait_run(&d, &id, "completed").await;
    assert_eq!(v["output"], "Hello from the fake gateway.");
    assert_eq!(v["usage"]["total_tokens"], 18);
    assert_eq!(v["tool_calls"], 1);
    assert_eq!(v["last_event_id"], 6);

    let m: Value = d
        .get_json(&format!("/conversations/{session}/messages"))
        .await;
    let items = m["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{m}");
    assert_eq!(items[0]["role"], "user");
    assert_eq!(items[0]["platform"], "web");
    assert_eq!(items[1]["role"], "assistant");
    assert_eq!(items[1]["tokens_used"], 18);
    assert_eq!(items[1]["tool_calls"][0]["tool"], "web_search");
    assert_eq!(items[1]["partial"], false);
    assert!(v["refused_approvals"].as_array().is_some_and(Vec::is_empty));
    let s: Value = d.get_json("/conversations/search?q=lisbon").await;
    assert_eq!(s["items"][0]["session_id"], session.as_str());

    let conn = rusqlite::Connection::open(d.data_dir().join("tenantd.db")).expect("db");
    let (tin, tout, tools): (i64, i64, i64) = conn
        .query_row(
            "SELECT tokens_in, tokens_out, tool_calls FROM usage_ledger WHERE run_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("one usage row");
    assert_eq!((tin, tout, tools), (12, 6, 1));

    let list: Value = d.get_json(&format!("/runs?session_id={session}")).await;
    assert_eq!(list["items"][0]["run_id"], id.as_str());
}

#[tokio::test]
async fn concurrent_subscribers_resume_and_replay_see_the_same_sequence() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let run = start_run(&d, json!({"input": "events:300 rate:1500"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();

    let (a, b, first) = tokio::join!(
        async { read_frames(events(&d, &id, None).await, usize::MAX).await },
        async { read_frames(events(&d, &id, None).await, usize::MAX).await },
        async { read_frames(events(&d, &id, None).await, 10).await },
    );
    assert_eq!(a.len(), 301);
    assert_sequence(&a, 1);
    assert_eq!(a, b, "two subscribers saw different sequences");
    assert_eq!(first.len(), 10);
    // Reconnect after id 10: exactly the rest, no gap, no duplicate.
    let rest = read_frames(events(&d, &id, Some(10)).await, usize::MAX).await;
    assert_eq!(rest.first().map(|f| f.id), Some(11));
    assert_sequence(&rest, 11);
    let mut joined = first.clone();
    joined.extend(rest);
    assert_eq!(joined, a);
    assert_ids(&a, &id);
    // A finished run replays in full, again and again.
    for _ in 0..2 {
        let replay = read_frames(events(&d, &id, None).await, usize::MAX).await;
        assert_eq!(replay, a);
    }
    let r = d
        .get(&format!("/runs/{id}/events"))
        .header("Last-Event-ID", "x")
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d.get("/runs/run_nope/events").send().await.expect("send");
    expect_problem(r, 404, "not_found").await;
}

/// A fast gateway writes many frames at once, so the relay's batches hold
/// many events and a reader's resume point falls inside one: read in
/// pieces while the run streams, the pieces join up exactly.
#[tokio::test]
async fn a_fast_run_read_in_pieces_joins_up_exactly_wherever_a_reader_stops() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let run = start_run(&d, json!({"input": "events:20000 rate:20000"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();

    let mut all = read_frames(events(&d, &id, None).await, 777).await;
    for max in [1500, 4321, usize::MAX] {
        let last = all.last().expect("frames").id;
        let more = read_frames(events(&d, &id, Some(last)).await, max).await;
        assert_eq!(
            more.first().map(|f| f.id),
            Some(last + 1),
            "resumed after {last}"
        );
        all.extend(more);
    }
    assert_eq!(all.len(), 20001);
    assert_sequence(&all, 1);
    assert_ids(&all, &id);
    assert_eq!(all.last().map(|f| f.event.as_str()), Some("run.completed"));
    // The log holds the same, from the start and from inside.
    let replay = read_frames(events(&d, &id, None).await, usize::MAX).await;
    assert_eq!(replay, all);
    let tail = read_frames(events(&d, &id, Some(12345)).await, usize::MAX).await;
    assert_eq!(tail[..], all[12345..]);
}

#[tokio::test]
async fn a_slow_subscriber_does_not_hold_back_another() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let run = start_run(&d, json!({"input": "events:5000"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    // The slow one connects first and reads nothing for now.
    let slow = events(&d, &id, None).await;
    let fast = read_frames(events(&d, &id, None).await, usize::MAX).await;
    assert_eq!(fast.len(), 5001);
    wait_run(&d, &id, "completed").await;
    // Now the slow one reads: complete and in order (caught up from the log).
    let late = read_frames(slow, usize::MAX).await;
    assert_eq!(late.len(), 5001);
    assert_sequence(&late, 1);
}

/// An idle stream gets keep-alive comments; headers say SSE, not cached,
/// not buffered by a proxy.
#[tokio::test]
async fn an_idle_event_stream_gets_keep_alive_comments() {
    let mut w = GatewayWorld::new();
    w.extra = "[runs]\nkeepalive = \"200ms\"\n".into();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let run = start_run(&d, json!({"input": "hang please"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let resp = events(&d, &id, None).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while seen.matches(": keep-alive\n\n").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("no keep-alive within 10 s")
            .expect("stream ended")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // The first event may come after a keep-alive when the fake gateway is
    // slow to send it (a loaded box): comments first, then event 1.
    let first_event = seen.trim_start_matches(": keep-alive\n\n");
    assert!(
        first_event.starts_with("id: 1\nevent: message.delta\n"),
        "{seen}"
    );
    let r = d
        .post(&format!("/runs/{id}/stop"))
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn stop_and_approval_pass_through() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;

    let run = start_run(&d, json!({"input": "hang please"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let first = read_frames(events(&d, &id, None).await, 1).await;
    assert_eq!(first[0].event, "message.delta");
    let r = d
        .post(&format!("/runs/{id}/stop"))
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), 202);
    let rest = read_frames(events(&d, &id, Some(1)).await, usize::MAX).await;
    assert_eq!(rest.last().map(|f| f.event.as_str()), Some("run.cancelled"));
    let v = wait_run(&d, &id, "cancelled").await;
    assert_partial(&d, &v, Some("working")).await;
    let r = d
        .post(&format!("/runs/{id}/stop"))
        .send()
        .await
        .expect("stop");
    expect_problem(r, 409, "conflict").await;

    let run = start_run(&d, json!({"input": "needs approval"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let frames = read_frames(events(&d, &id, None).await, 2).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[1].event, "approval.request");
    let v = wait_run(&d, &id, "waiting_for_approval").await;
    assert_eq!(v["pending_approval"]["command"], "rm -rf /tmp/x");
    let r = d
        .post(&format!("/runs/{id}/approval"))
        .json(&json!({"choice": "maybe"}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d
        .post(&format!("/runs/{id}/approval"))
        .json(&json!({"choice": "deny"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let rest = read_frames(events(&d, &id, Some(2)).await, usize::MAX).await;
    let names: Vec<&str> = rest.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        names,
        ["approval.responded", "message.delta", "run.completed"]
    );
    assert!(!names.contains(&"tool.started"), "a denied tool ran");
    let v = wait_run(&d, &id, "completed").await;
    assert!(v["pending_approval"].is_null());
    assert_eq!(v["refused_approvals"][0]["reason"], "denied", "{v}");
    assert_eq!(v["refused_approvals"][0]["command"], "rm -rf /tmp/x", "{v}");
    let r = d
        .post(&format!("/runs/{id}/approval"))
        .json(&json!({"choice": "once"}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 409, "conflict").await;
}

#[tokio::test]
async fn a_gateway_killed_mid_run_fails_the_run_with_agent_restarted() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    let agent = w.wait_agent(&d, "running").await;
    let pid = agent["pid"].as_u64().expect("pid") as u32;
    let run = start_run(&d, json!({"input": "hang"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let first = read_frames(events(&d, &id, None).await, 1).await;
    assert_eq!(first.len(), 1);
    signal(pid, "KILL");
    let rest = read_frames(events(&d, &id, Some(1)).await, usize::MAX).await;
    let last = rest.last().expect("a terminal event");
    assert_eq!(last.event, "run.failed");
    assert_eq!(last.data["code"], "agent_restarted");
    assert_eq!(last.data["run_id"], id.as_str());
    let v = wait_run(&d, &id, "failed").await;
    assert_eq!(v["error"]["code"], "agent_restarted");
    assert_partial(&d, &v, Some("working")).await;
}

#[tokio::test]
async fn partial_output_is_kept_one_way_when_the_agent_fails_the_run_or_says_nothing() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let run = start_run(&d, json!({"input": "please fail"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let v = wait_run(&d, &id, "failed").await;
    assert_eq!(v["error"]["code"], "agent_error");
    assert_partial(&d, &v, Some("about to fail")).await;

    // Stopped before the agent said anything: nothing to keep.
    let run = start_run(&d, json!({"input": "delay:30 then talk"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let r = d
        .post(&format!("/runs/{id}/stop"))
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), 202);
    let v = wait_run(&d, &id, "cancelled").await;
    assert_partial(&d, &v, None).await;
}

#[tokio::test]
async fn a_run_stopped_while_waiting_for_approval_is_cancelled_not_expired() {
    let (d, _, id) = run_on(&GatewayWorld::new(), "needs approval").await;
    let first = read_frames(events(&d, &id, None).await, 2).await;
    assert_eq!(first[1].event, "approval.request");
    wait_run(&d, &id, "waiting_for_approval").await;
    let r = d
        .post(&format!("/runs/{id}/stop"))
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), 202);
    let rest = read_frames(events(&d, &id, Some(2)).await, usize::MAX).await;
    assert_eq!(names(&rest), ["message.delta", "run.cancelled"]);
    let v = wait_run(&d, &id, "cancelled").await;
    assert!(
        v["refused_approvals"].as_array().is_some_and(Vec::is_empty),
        "{v}"
    );
    assert_partial(&d, &v, Some("I need to run a command. Stopped.")).await;
}

#[tokio::test]
async fn an_unanswered_approval_that_the_gateway_denies_is_an_event_and_on_the_record() {
    let (d, _, id) = run_on(
        &GatewayWorld::new().fake("approval_timeout", "1"),
        "needs approval",
    )
    .await;
    let frames = read_frames(events(&d, &id, None).await, usize::MAX).await;
    assert_eq!(
        names(&frames),
        [
            "message.delta",
            "approval.request",
            "approval.expired",
            "message.delta",
            "run.completed"
        ]
    );
    assert_sequence(&frames, 1);
    assert_ids(&frames, &id);
    assert_eq!(frames[2].data["command"], "rm -rf /tmp/x");
    let v = wait_run(&d, &id, "completed").await;
    assert!(v["pending_approval"].is_null(), "{v}");
    let refused = v["refused_approvals"]
        .as_array()
        .expect("refused_approvals");
    assert_eq!(refused.len(), 1, "{v}");
    assert_eq!(refused[0]["reason"], "expired");
    assert_eq!(refused[0]["command"], "rm -rf /tmp/x");
    assert_eq!(refused[0]["pattern_key"], "rm");
    let r = d
        .post(&format!("/runs/{id}/approval"))
        .json(&json!({"choice": "once"}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 409, "conflict").await;
}

#[tokio::test]
async fn a_run_wakes_a_stopped_agent_and_in_flight_runs_are_closed_after_a_daemon_restart() {
    let w = GatewayWorld::new();
    let mut d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let r = d.post("/agent/stop").send().await.expect("stop");
    assert_eq!(r.status(), 202);
    w.wait_agent(&d, "stopped").await;
    let run = start_run(&d, json!({"input": "wake up"})).await;
    assert_eq!(run["status"], "queued");
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    wait_run(&d, &id, "completed").await;

    let run = start_run(&d, json!({"input": "hang"})).await;
    let hung = run["run_id"].as_str().expect("run_id").to_owned();
    // Its first delta is logged before the daemon dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = d.get_json(&format!("/runs/{hung}")).await;
        if v["last_event_id"].as_i64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no event logged: {v}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    d.kill();
    let dir = d.dir.clone();
    drop(d);
    let d = w.daemon_in(dir).await;
    let v = wait_run(&d, &hung, "failed").await;
    assert_eq!(v["error"]["code"], "agent_restarted");
    // Rebuilt from the logged deltas, kept as after any other failure.
    assert_partial(&d, &v, Some("working")).await;
    let frames = read_frames(events(&d, &hung, None).await, usize::MAX).await;
    assert_eq!(frames.last().map(|f| f.event.as_str()), Some("run.failed"));
    assert_ids(&frames, &hung);
}

#[tokio::test]
async fn without_the_runs_api_the_daemon_falls_back_to_chat_completions() {
    let w = GatewayWorld::new().fake("no_runs", "1");
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let run = start_run(&d, json!({"input": "fallback please"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let frames = read_frames(events(&d, &id, None).await, usize::MAX).await;
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "message.delta").count(),
        3,
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"run.completed"));
    let v = wait_run(&d, &id, "completed").await;
    assert_eq!(v["output"], "You said: fallback please");
    assert_eq!(v["usage"]["total_tokens"], 10);
}

#[tokio::test]
async fn bad_run_requests_are_refused_clearly() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    for (body, needle) in [
        (json!({"input": ""}), "input"),
        (json!({"input": 5}), "input"),
        (json!({"input": "x", "platform": "myspace"}), "platform"),
        (json!({"input": "x", "session_id": "bad id"}), "session_id"),
        (json!({"inputs": "x"}), "inputs"),
        (json!({"input": "x".repeat(300_000)}), "bytes"),
    ] {
        let r = d.post("/runs").json(&body).send().await.expect("send");
        let v = expect_problem(r, 400, "invalid_argument").await;
        assert!(
            v["message"].as_str().unwrap_or_default().contains(needle),
            "{v}"
        );
    }
    let r = d.get("/runs?status=bogus").send().await.expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d.get("/runs/run_nope").send().await.expect("send");
    expect_problem(r, 404, "not_found").await;
}

#[tokio::test]
async fn a_suspended_tenant_gets_403_for_runs_and_agent_start() {
    let w = GatewayWorld::new();
    let mut d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    d.kill();
    let dir = d.dir.clone();
    drop(d);
    // The hub suspended the tenant (as its heartbeat reply would persist it).
    let conn = rusqlite::Connection::open(dir.join("data/tenantd.db")).expect("db");
    conn.execute(
        "INSERT INTO daemon_state (key, value, updated_at) VALUES ('hub.access', 'suspended', 0)
         ON CONFLICT (key) DO UPDATE SET value = 'suspended'",
        [],
    )
    .expect("suspend");
    drop(conn);
    let d = w.daemon_in(dir).await;
    let r = d
        .post("/runs")
        .json(&json!({"input": "hello"}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 403, "suspended").await;
    let r = d.post("/agent/start").send().await.expect("send");
    expect_problem(r, 403, "suspended").await;
    let r = d.post("/agent/restart").send().await.expect("send");
    expect_problem(r, 403, "suspended").await;
}

#[tokio::test]
async fn a_run_reads_as_finished_as_soon_as_its_stream_ends() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    // Several times: the race it guards against (the record written after
    // the stream ended) lost 10 of 10 tries against the real gateway.
    for i in 0..5 {
        let run = start_run(&d, json!({"input": format!("turn {i}"), "platform": "web"})).await;
        let id = run["run_id"].as_str().expect("run_id").to_owned();
        let frames = read_frames(events(&d, &id, None).await, 1000).await;
        assert_eq!(
            frames.last().map(|f| f.event.as_str()),
            Some("run.completed")
        );
        // No waiting: the very first read after the stream ended.
        let v: Value = d.get_json(&format!("/runs/{id}")).await;
        assert_eq!(v["status"], "completed", "try {i}: {v}");
        assert!(v["output"].is_string(), "try {i}: {v}");
    }
}
