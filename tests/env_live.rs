//! `.env` changes reach the agent for the very next run, deletes too, and
//! a run in flight is not cut: the daemon restarts the gateway when it is
//! idle (`env_apply`). The fake gateway, like hermes-agent 0.19.0, keeps
//! the environment it had at start (`env:NAME` runs report it).

mod common;
use common::*;

use serde_json::{Value, json};

/// Post `env:NAME` and return what the gateway said.
async fn probe(d: &TestDaemon, name: &str) -> String {
    let run = start_run(d, json!({"input": format!("env:{name}")})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let v = wait_run(d, &id, "completed").await;
    v["output"].as_str().unwrap_or_default().to_owned()
}

async fn pid(d: &TestDaemon) -> Option<u64> {
    d.get_json("/agent").await["pid"].as_u64()
}

#[tokio::test]
async fn a_set_or_deleted_key_is_what_the_very_next_run_sees() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    assert_eq!(probe(&d, "PROBE_KEY").await, "PROBE_KEY unset");

    let r = d
        .put("/env/PROBE_KEY")
        .json(&json!({"value": "v1"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    // At once, no waiting: the very next run sees the new value.
    assert_eq!(probe(&d, "PROBE_KEY").await, "PROBE_KEY=v1");
    let env: Value = d.get_json("/env").await;
    assert_eq!(env["agent"]["pending"], false, "{env}");
    assert!(env["agent"]["applied_at"].is_string(), "{env}");

    let r = d.delete("/env/PROBE_KEY").send().await.expect("delete");
    assert_eq!(r.status(), 204);
    assert_eq!(probe(&d, "PROBE_KEY").await, "PROBE_KEY unset");
}

#[tokio::test]
async fn a_run_in_flight_finishes_before_the_gateway_restarts_for_a_change() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let before = pid(&d).await;
    // A run streaming for about 2 s.
    let long = start_run(&d, json!({"input": "events:40 rate:20"})).await;
    let long_id = long["run_id"].as_str().expect("run_id").to_owned();
    wait_run(&d, &long_id, "running").await;

    let r = d
        .put("/env/PROBE_KEY")
        .json(&json!({"value": "v2"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let env: Value = d.get_json("/env").await;
    assert_eq!(env["agent"]["pending"], true, "{env}");
    // Posted while the change waits: it waits too, then sees the new file.
    assert_eq!(probe(&d, "PROBE_KEY").await, "PROBE_KEY=v2");
    // The long run was not cut by the restart.
    let v = wait_run(&d, &long_id, "completed").await;
    assert_eq!(v["output"], "40 deltas", "{v}");
    assert_ne!(pid(&d).await, before, "the gateway was not restarted");
}

#[tokio::test]
async fn a_change_while_the_agent_is_stopped_needs_no_restart() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let r = d.post("/agent/stop").send().await.expect("stop");
    assert_eq!(r.status(), 202);
    w.wait_agent(&d, "stopped").await;
    let r = d
        .put("/env/PROBE_KEY")
        .json(&json!({"value": "v3"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    // Still stopped (a change is no reason to start it), and applied.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let env: Value = d.get_json("/env").await;
        if env["agent"]["pending"] == false {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still pending: {env}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(d.get_json("/agent").await["state"], "stopped");
    // A run wakes it, and it reads the file at that start.
    assert_eq!(probe(&d, "PROBE_KEY").await, "PROBE_KEY=v3");
}
