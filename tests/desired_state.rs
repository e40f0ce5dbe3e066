//! Who decides whether the agent runs (`hub::decision`): the hub's desired
//! state is applied when it changes, a local wake (a run) stands until the
//! hub decides again, a hub stop waits for the runs in flight, suspension
//! is immediate, and the last hub decision survives a daemon restart.
//! Real daemon, fake gateway with its runs API, fake hub at a 1 s interval.

mod common;

use std::time::Duration;

use common::hub::FakeHub;
use common::*;
use serde_json::{Value, json};

/// A daemon supervising the fake gateway and beating to `hub` every 1 s.
fn world(hub: &FakeHub) -> GatewayWorld {
    let mut w = GatewayWorld::new();
    w.extra = format!(
        "[hub]\nurl = \"http://127.0.0.1:{}\"\nheartbeat_interval = \"1s\"\nrequest_timeout = \"500ms\"\nstop_wait_for_runs = \"60s\"\n",
        hub.port
    );
    w
}

/// Poll `GET /agent` until it is in `state` with `desired` set by `by`
/// (the snapshot before the supervisor's first step says `stopped` too).
async fn wait_agent_by(d: &TestDaemon, state: &str, by: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = d.get_json("/agent").await;
        if a["state"] == state && a["desired_by"] == by {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent never {state} by {by}: {a}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Log lines of supervisor commands of `kind` (`Start`, `Stop`).
fn commands(d: &TestDaemon, kind: &str) -> usize {
    d.logs()
        .iter()
        .filter(|l| l.contains("\"agent command\"") && l.contains(kind))
        .count()
}

/// Wait for `n` more beats than the hub has now; returns them.
async fn more_beats(hub: &FakeHub, n: usize) -> Vec<Value> {
    let before = hub.beats().await.len();
    let beats = hub.wait_beats(before + n, Duration::from_secs(30)).await;
    beats[before..].to_vec()
}

#[tokio::test]
async fn a_run_woken_under_a_repeated_hub_stop_completes_and_the_agent_stays_up_until_the_hub_decides_again()
 {
    let hub = FakeHub::start();
    hub.control(json!({"desired": {"agent": "stopped"}})).await;
    let w = world(&hub);
    let d = w.daemon().await;
    wait_agent_by(&d, "stopped", "hub").await;

    // 12 deltas at 4/s: the run spans several beats that all say `stopped`.
    let run = start_run(&d, json!({"input": "events:12 rate:4"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    let done = wait_run(&d, &id, "completed").await;
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(
        done["output"].as_str().map(|o| o.is_empty()),
        Some(false),
        "{done}"
    );
    let a = d.get_json("/agent").await;
    assert_eq!(
        (&a["state"], &a["desired_by"]),
        (&json!("running"), &json!("run")),
        "{a}"
    );

    // The hub keeps repeating `stopped`: nothing new, the wake stands, and
    // the beats show the hub who woke the agent.
    let beats = more_beats(&hub, 3).await;
    for b in &beats {
        assert_eq!(b["body"]["agent"]["desired"], "running", "{b}");
        assert_eq!(b["body"]["agent"]["desired_by"], "run", "{b}");
    }
    assert_eq!(d.get_json("/agent").await["state"], "running");
    assert_eq!(commands(&d, "Stop"), 1, "only the first stop was applied");

    // A new decision (a greater version of the same value) stops it.
    hub.control(json!({"desired": {"agent": "stopped", "version": 2}}))
        .await;
    wait_agent_by(&d, "stopped", "hub").await;
    assert_eq!(commands(&d, "Stop"), 2);
}

#[tokio::test]
async fn a_hub_stop_during_a_run_waits_for_the_run_then_stops_the_agent() {
    let hub = FakeHub::start();
    let w = world(&hub);
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    hub.wait_beats(1, Duration::from_secs(10)).await;

    let run = start_run(&d, json!({"input": "events:16 rate:4"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    wait_run(&d, &id, "running").await;
    hub.control(json!({"desired": {"agent": "stopped"}})).await;
    d.wait_for_log("waiting for the runs in flight", Duration::from_secs(10))
        .await;
    // The stop waits: the run is still going and the agent is up.
    assert_eq!(d.get_json("/agent").await["state"], "running");
    assert_eq!(commands(&d, "Stop"), 0);

    let done = wait_run(&d, &id, "completed").await;
    assert!(done["error"].is_null(), "{done}");
    wait_agent_by(&d, "stopped", "hub").await;
    assert_eq!(commands(&d, "Stop"), 1);
    d.wait_for_log("the runs in flight have ended", Duration::from_secs(1))
        .await;

    // The next run is a newer decision: it wakes the agent and completes.
    let run = start_run(&d, json!({"input": "after the stop"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    wait_run(&d, &id, "completed").await;
    wait_agent_by(&d, "running", "run").await;
}

/// Documented behaviour: a suspension is immediate. The run in flight
/// ends `failed` with code `suspended`, new runs get `403 suspended`, and
/// back to active the hub's last agent decision applies again.
#[tokio::test]
async fn a_suspension_during_a_run_stops_the_agent_at_once_and_refuses_new_runs() {
    let hub = FakeHub::start();
    let w = world(&hub);
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;

    let run = start_run(&d, json!({"input": "hang"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    wait_run(&d, &id, "running").await;
    hub.control(json!({"desired": {"access": "suspended"}}))
        .await;
    let failed = wait_run(&d, &id, "failed").await;
    assert_eq!(failed["error"]["code"], "suspended", "{failed}");
    wait_agent_by(&d, "stopped", "hub").await;
    let r = d
        .post("/runs")
        .json(&json!({"input": "hello"}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 403, "suspended").await;

    hub.control(json!({"desired": {"access": "active"}})).await;
    w.wait_agent(&d, "running").await;
    let again = start_run(&d, json!({"input": "hello"})).await;
    let id = again["run_id"].as_str().expect("run_id").to_owned();
    wait_run(&d, &id, "completed").await;
}

#[tokio::test]
async fn across_daemon_restarts_the_newer_decision_wins() {
    let hub = FakeHub::start();
    hub.control(json!({"desired": {"agent": "stopped", "version": 1}}))
        .await;
    let w = world(&hub);
    let mut d = w.daemon().await;
    wait_agent_by(&d, "stopped", "hub").await;

    // A run wakes the agent after the hub's stop: the wake is newer, and a
    // restart does not let the hub's repeated stop undo it.
    let run = start_run(&d, json!({"input": "wake up"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    wait_run(&d, &id, "completed").await;
    d.terminate();
    drop(d);
    let mut d = w.daemon().await;
    wait_agent_by(&d, "running", "run").await;
    let beats = more_beats(&hub, 2).await;
    assert_eq!(
        beats[1]["body"]["agent"]["desired_by"], "run",
        "{:?}",
        beats[1]
    );
    assert_eq!(d.get_json("/agent").await["state"], "running");
    assert_eq!(commands(&d, "Stop"), 0);

    // A newer hub stop that is still waiting for a run when the daemon
    // dies is not forgotten: after the restart it is applied.
    let run = start_run(&d, json!({"input": "hang"})).await;
    let id = run["run_id"].as_str().expect("run_id").to_owned();
    wait_run(&d, &id, "running").await;
    hub.control(json!({"desired": {"agent": "stopped", "version": 2}}))
        .await;
    d.wait_for_log("waiting for the runs in flight", Duration::from_secs(10))
        .await;
    d.kill();
    drop(d);
    let mut d = w.daemon().await;
    wait_agent_by(&d, "stopped", "hub").await;
    let v = wait_run(&d, &id, "failed").await;
    assert_eq!(v["error"]["code"], "agent_restarted", "{v}");

    // Applied and recorded: the next daemon keeps the agent stopped.
    d.terminate();
    drop(d);
    let d = w.daemon().await;
    more_beats(&hub, 2).await;
    let a = d.get_json("/agent").await;
    assert_eq!(
        (&a["state"], &a["desired"]),
        (&json!("stopped"), &json!("stopped")),
        "{a}"
    );
    assert_eq!(commands(&d, "Start"), 0);
    assert_eq!(commands(&d, "Stop"), 0);
}

/// A cron firing wakes the agent as `cron` and an operator command is
/// `operator`: both stand under the hub's repeated stop.
#[tokio::test]
async fn a_cron_firing_and_an_operator_start_are_local_decisions_too() {
    let hub = FakeHub::start();
    hub.control(json!({"desired": {"agent": "stopped"}})).await;
    let w = world(&hub);
    let d = w.daemon().await;
    wait_agent_by(&d, "stopped", "hub").await;

    let r = d
        .post("/agent-cron")
        .json(&json!({"schedule": "0 0 1 1 *", "prompt": "manual please"}))
        .send()
        .await
        .expect("create job");
    assert_eq!(r.status(), 201);
    let job: Value = r.json().await.expect("json");
    let id = job["id"].as_str().expect("id");
    let r = d
        .post(&format!("/agent-cron/{id}/run"))
        .send()
        .await
        .expect("fire");
    assert_eq!(r.status(), 202);
    let firing: Value = r.json().await.expect("json");
    let run_id = firing["run_id"].as_str().expect("run id");
    wait_run(&d, run_id, "completed").await;
    wait_agent_by(&d, "running", "cron").await;
    let beats = more_beats(&hub, 2).await;
    assert_eq!(beats[1]["body"]["agent"]["desired_by"], "cron");
    assert_eq!(d.get_json("/agent").await["state"], "running");

    let r = d.post("/agent/stop").send().await.expect("stop");
    assert_eq!(r.status(), 202);
    wait_agent_by(&d, "stopped", "operator").await;
    let r = d.post("/agent/start").send().await.expect("start");
    assert_eq!(r.status(), 202);
    wait_agent_by(&d, "running", "operator").await;
    more_beats(&hub, 2).await;
    assert_eq!(d.get_json("/agent").await["state"], "running");
    assert_eq!(
        commands(&d, "Stop"),
        2,
        "the hub's first stop and the operator's"
    );
}
