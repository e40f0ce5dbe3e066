//! Drain and planned stop: a run in flight finishes before a restart; new
//! runs are refused (or queued) meanwhile; `hermes-tenantd drain --wait`
//! over the local control socket; SIGTERM waits for the run; the activity
//! signal moves with runs.

mod common;
use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A run the fake gateway spreads over about `secs` seconds.
fn slow(secs: u32) -> Value {
    json!({ "input": format!("events:{} rate:10", secs * 10) })
}

async fn agent(d: &TestDaemon) -> Value {
    d.get_json("/agent").await
}

/// Poll until the run is at the gateway (`running`).
async fn wait_running(d: &TestDaemon, run_id: &str) {
    wait_run(d, run_id, "running").await;
}

/// Create a cron job with `schedule`; its id.
async fn create_job(d: &TestDaemon, schedule: &str) -> String {
    let job = d
        .post("/agent-cron")
        .json(&json!({ "name": "j", "schedule": schedule, "prompt": "hi" }))
        .send()
        .await
        .expect("create job");
    assert_eq!(
        job.status(),
        201,
        "{}",
        job.text().await.unwrap_or_default()
    );
    let job: Value = job.json().await.expect("json");
    job["id"].as_str().expect("job id").to_owned()
}

fn drain_cli(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("drain")
        .arg("--config")
        .arg(d.dir.join("config.toml"))
        .args(args)
        .output()
        .expect("run hermes-tenantd drain")
}

#[tokio::test]
async fn drain_waits_for_the_run_in_flight_refuses_new_runs_and_cancels() {
    let world = GatewayWorld::new();
    let d = world.daemon().await;
    world.wait_agent(&d, "running").await;
    let before = agent(&d).await;
    assert_eq!(before["drain"]["state"], "off", "{before}");
    assert!(before["activity"]["last_run_at"].is_null(), "{before}");

    let run = start_run(&d, slow(3)).await;
    let run_id = run["run_id"].as_str().expect("run id").to_owned();
    wait_running(&d, &run_id).await;
    let busy = agent(&d).await;
    assert_eq!(busy["activity"]["active_runs"], 1, "{busy}");
    assert!(busy["activity"]["last_run_at"].is_string(), "{busy}");
    assert!(busy["activity"]["last_message_at"].is_string(), "{busy}");
    assert!(busy["activity"]["last_hub_call_at"].is_string(), "{busy}");

    // The CLI over the local socket: returns only once the run is done.
    let cli = {
        let config = d.dir.join("config.toml");
        tokio::task::spawn_blocking(move || {
            Command::new(binary())
                .args(["drain", "--wait", "--deadline", "60s", "--config"])
                .arg(config)
                .output()
                .expect("drain --wait")
        })
    };
    // The drain is on before the CLI returns: a new run is refused...
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent(&d).await["drain"]["state"] == "off" {
        assert!(Instant::now() < deadline, "the drain never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = d
        .post("/runs")
        .json(&json!({ "input": "hello" }))
        .send()
        .await
        .expect("post");
    assert!(refused.headers().get("retry-after").is_some());
    expect_problem(refused, 503, "draining").await;
    // ... unless it asks to be queued.
    let queued = start_run(&d, json!({ "input": "hello", "queue": true })).await;
    let queued_id = queued["run_id"].as_str().expect("id").to_owned();

    let out = cli.await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drain --wait failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("drained"), "{stdout}");
    // The run in flight completed before the drain said drained.
    let done = d.get_json(&format!("/runs/{run_id}")).await;
    assert_eq!(done["status"], "completed", "{done}");
    let drained = agent(&d).await;
    assert_eq!(drained["drain"]["state"], "drained", "{drained}");
    assert_eq!(drained["drain"]["queued_runs"], 1, "{drained}");
    assert_eq!(drained["activity"]["active_runs"], 0, "{drained}");
    // The queued run waits behind the drain.
    let still = d.get_json(&format!("/runs/{queued_id}")).await;
    assert_eq!(still["status"], "queued", "{still}");

    // Cancel: the queued run goes on and new runs are taken again.
    let r = d.delete("/drain").send().await.expect("delete");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["state"], "off", "{v}");
    wait_run(&d, &queued_id, "completed").await;
    let again = start_run(&d, json!({ "input": "hello" })).await;
    wait_run(&d, again["run_id"].as_str().expect("id"), "completed").await;
}

#[tokio::test]
async fn drain_over_http_and_cli_status_and_bad_input() {
    let world = GatewayWorld::new();
    let d = world.daemon().await;
    let r = d
        .post("/drain")
        .json(&json!({ "deadline_s": 0 }))
        .send()
        .await
        .expect("post");
    expect_problem(r, 400, "invalid_argument").await;
    // A fraction is not a number of seconds; a string is not a number.
    for bad in [json!({ "deadline_s": 1.5 }), json!({ "deadline_s": "30" })] {
        let r = d.post("/drain").json(&bad).send().await.expect("post");
        expect_problem(r, 400, "invalid_argument").await;
    }
    assert_eq!(agent(&d).await["drain"]["state"], "off");

    // `30.0` is the integer 30 to JSON Schema (and to the daemon).
    let r = d
        .post("/drain")
        .json(&json!({ "deadline_s": 30.0 }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.expect("json");
    assert!(v["deadline_at"].is_string(), "{v}");
    // Nothing in flight: drained at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent(&d).await["drain"]["state"] != "drained" {
        assert!(Instant::now() < deadline, "never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = drain_cli(&d, &["--status"]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("drained"));
    // A manual cron firing is refused too (no history line, no run).
    let id = create_job(&d, "every 1h").await;
    let fired = d
        .post(&format!("/agent-cron/{id}/run"))
        .send()
        .await
        .expect("fire");
    expect_problem(fired, 503, "draining").await;

    let cancel = drain_cli(&d, &["--cancel"]);
    assert!(cancel.status.success());
    assert_eq!(agent(&d).await["drain"]["state"], "off");
}

#[tokio::test]
async fn cli_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"t\"\ndata_dir = \"{}\"\n[auth]\ncredential_file = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("cred").display()
        ),
    )
    .expect("write");
    let out = Command::new(binary())
        .args(["drain", "--wait", "--config"])
        .arg(&config)
        .output()
        .expect("drain");
    assert_eq!(out.status.code(), Some(4), "{out:?}");
}

#[tokio::test]
async fn sigterm_waits_for_the_run_in_flight() {
    let world = GatewayWorld::new();
    let mut d = world.daemon().await;
    world.wait_agent(&d, "running").await;
    // About 2 s: within the world's gateway.stop_grace (3 s).
    let run = start_run(&d, slow(2)).await;
    let run_id = run["run_id"].as_str().expect("run id").to_owned();
    wait_running(&d, &run_id).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = d.terminate();
        (s, d)
    });
    let (status, mut d) = status.await.expect("join");
    assert!(status.success(), "{status:?}");
    let logs = d.logs().join("\n");
    let _keep = d.keep_dir();
    drop(d);
    let d = world.daemon().await;
    let v = d.get_json(&format!("/runs/{run_id}")).await;
    assert_eq!(v["status"], "completed", "{v}\n{logs}");
}

#[tokio::test]
async fn the_heartbeat_carries_the_drain_and_the_activity() {
    let hub = common::hub::FakeHub::start();
    let d = TestDaemon::start_with(Options {
        config_extra: format!(
            "[hub]\nurl = \"http://127.0.0.1:{}\"\nheartbeat_interval = \"3s\"\n",
            hub.port
        ),
        ..Default::default()
    })
    .await;
    let first = hub.wait_beats(1, Duration::from_secs(15)).await;
    assert_eq!(first[0]["body"]["drain"]["state"], "off", "{}", first[0]);
    assert!(first[0]["body"]["activity"].is_object(), "{}", first[0]);
    let r = d
        .post("/drain")
        .json(&json!({ "deadline_s": 60 }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let beats = hub
        .wait_until("a beat that says drained", Duration::from_secs(30), |b| {
            b.iter().any(|b| b["body"]["drain"]["state"] == "drained")
        })
        .await;
    let beat = beats
        .iter()
        .find(|b| b["body"]["drain"]["state"] == "drained")
        .expect("drained beat");
    // The drain call itself was a hub call.
    assert!(
        beat["body"]["activity"]["last_hub_call_at"].is_string(),
        "{beat}"
    );
}

#[tokio::test]
async fn cron_firings_are_held_while_draining_and_fire_after() {
    let d = TestDaemon::start_with(Options {
        config_extra: "[cron]\nmin_interval = \"1s\"\n".into(),
        ..Default::default()
    })
    .await;
    let r = d
        .post("/drain")
        .json(&json!({ "deadline_s": 600 }))
        .send()
        .await
        .expect("drain");
    assert_eq!(r.status(), 202);
    // Every second (6-field cron, seconds first).
    let id = create_job(&d, "* * * * * *").await;
    // Proving an absence takes a wait: three due times pass with no firing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history = d.get_json(&format!("/agent-cron/{id}/runs")).await;
    assert_eq!(
        history["runs"].as_array().map(Vec::len),
        Some(0),
        "fired while draining: {history}"
    );
    let r = d.delete("/drain").send().await.expect("undrain");
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history = d.get_json(&format!("/agent-cron/{id}/runs")).await;
        if history["runs"].as_array().is_some_and(|h| !h.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never fired after the drain: {history}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
