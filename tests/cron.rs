//! Agent cron through the real daemon, the fake gateway (whose runs the
//! firings start) and a fake hub (deliveries): CRUD and validation, firing
//! with history, pause/resume, run now, no overlap, delete cancels, one-shot
//! and repeat, missed firings at restart, jobs.json import, delivery retry.

mod common;
use common::*;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const CRON_FAST: &str = "[cron]\nmin_interval = \"1s\"\nmax_jobs = 5\nmax_prompt_chars = 100\n";

fn world(extra: &str) -> GatewayWorld {
    let mut w = GatewayWorld::new();
    w.extra = extra.to_owned();
    w
}

/// Poll `f` until it yields `Some`, or fail after `timeout`.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn json_of(resp: reqwest::Response, status: u16) -> Value {
    let got = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "{text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("json")
    }
}

async fn create(d: &TestDaemon, body: Value) -> Value {
    json_of(
        d.post("/agent-cron")
            .json(&body)
            .send()
            .await
            .expect("POST"),
        201,
    )
    .await
}

async fn job(d: &TestDaemon, id: &str) -> Value {
    json_of(
        d.get(&format!("/agent-cron/{id}"))
            .send()
            .await
            .expect("GET"),
        200,
    )
    .await
}

async fn history(d: &TestDaemon, id: &str) -> Vec<Value> {
    let v = json_of(
        d.get(&format!("/agent-cron/{id}/runs?limit=200"))
            .send()
            .await
            .expect("GET runs"),
        200,
    )
    .await;
    v["runs"].as_array().cloned().unwrap_or_default()
}

fn count(h: &[Value], status: &str) -> usize {
    h.iter().filter(|f| f["status"] == status).count()
}

fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("timestamp"))
        .expect("rfc3339")
        .with_timezone(&Utc)
}

fn iso_in(secs: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
async fn crud_round_trip_in_three_shapes_and_every_bad_input_is_a_400_naming_the_field() {
    let w = world(CRON_FAST);
    let d = w.daemon().await;

    // The design's shape.
    let a = create(
        &d,
        json!({"name": "inbox", "schedule": "0 8 * * 1-5", "timezone": "Europe/Paris",
               "prompt": "summarise my inbox", "skills": ["mail"], "deliver": "telegram:42"}),
    )
    .await;
    let id = a["id"].as_str().expect("id").to_owned();
    assert_eq!(a["timezone"], "Europe/Paris");
    assert_eq!(a["enabled"], true);
    assert_eq!(a["paused"], false);
    assert_eq!(a["state"], "scheduled");
    let next = ts(&a["next_run_at"]);
    assert!(next > Utc::now());
    // 08:00 Paris is 06:00 or 07:00 UTC.
    assert!(matches!(chrono::Timelike::hour(&next), 6 | 7), "{next}");
    assert_eq!(job(&d, &id).await, a);

    // The platform's shape.
    let b = create(
        &d,
        json!({"cron": "*/5 * * * *", "prompt": "check the weather", "enabled": false}),
    )
    .await;
    assert_eq!(b["schedule"], "*/5 * * * *");
    assert_eq!(b["enabled"], false);
    assert!(b["next_run_at"].is_null(), "{b}");
    assert_eq!(b["name"], "check the weather");

    // Hermes' jobs API shape, with its stored schedule object.
    let c = create(
        &d,
        json!({"name": "digest", "schedule": {"kind": "interval", "minutes": 30, "display": "every 30m"},
               "prompt": "digest", "deliver": "local", "skills": [], "repeat": 3, "enabled": true}),
    )
    .await;
    assert_eq!(c["schedule"], "every 30m");
    assert_eq!(c["repeat"], json!({"times": 3, "completed": 0}));

    // List and filters.
    let all = json_of(d.get("/agent-cron").send().await.expect("list"), 200).await;
    assert_eq!(all["jobs"].as_array().expect("jobs").len(), 3);
    let enabled = json_of(
        d.get("/agent-cron?enabled=false")
            .send()
            .await
            .expect("list"),
        200,
    )
    .await;
    assert_eq!(enabled["jobs"].as_array().expect("jobs").len(), 1);
    assert_eq!(enabled["jobs"][0]["id"], b["id"]);

    // PATCH merges; a new zone moves next_run_at.
    let p = json_of(
        d.patch(&format!("/agent-cron/{id}"))
            .json(&json!({"timezone": "America/New_York", "deliver": null}))
            .send()
            .await
            .expect("PATCH"),
        200,
    )
    .await;
    assert_eq!(p["prompt"], "summarise my inbox");
    assert_eq!(p["skills"], json!(["mail"]));
    assert!(p["deliver"].is_null());
    let h = chrono::Timelike::hour(&ts(&p["next_run_at"]));
    assert!(
        matches!(h, 12 | 13),
        "08:00 New York is 12:00 or 13:00 UTC, got {p}"
    );

    // Bad input: 400 naming the field and the reason; nothing written.
    let cases = [
        (
            json!({"schedule": "* * * *", "prompt": "x"}),
            "schedule: expected 5 or 6 fields",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "61 * * * *", "prompt": "x"}),
            "schedule:",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "every banana", "prompt": "x"}),
            "schedule:",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "0 8 * * *", "timezone": "Mars/Olympus", "prompt": "x"}),
            "timezone:",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "0 8 * * *", "prompt": "   "}),
            "prompt:",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "0 8 * * *"}),
            "prompt:",
            400,
            "invalid_argument",
        ),
        (json!({"prompt": "x"}), "schedule:", 400, "invalid_argument"),
        (
            json!({"schedule": "0 8 * * *", "prompt": "x".repeat(101)}),
            "prompt:",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "0 8 * * *", "prompt": "x", "colour": "red"}),
            "colour:",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "0 0 25 * * *", "prompt": "x"}),
            "schedule:",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "0 0 30 2 *", "prompt": "x"}),
            "schedule:",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "2001-01-01T00:00:00Z", "prompt": "x"}),
            "schedule:",
            400,
            "invalid_argument",
        ),
        (
            json!({"schedule": "0 8 * * *", "cron": "0 9 * * *", "prompt": "x"}),
            "cron:",
            400,
            "invalid_argument",
        ),
    ];
    for (body, start, status, code) in cases {
        let resp = d
            .post("/agent-cron")
            .json(&body)
            .send()
            .await
            .expect("POST");
        let v = expect_problem(resp, status, code).await;
        let msg = v["message"].as_str().expect("message");
        assert!(msg.starts_with(start), "{body} -> {msg}");
    }
    let v = expect_problem(
        d.patch(&format!("/agent-cron/{id}"))
            .json(&json!({"schedule": "1 2 3"}))
            .send()
            .await
            .expect("PATCH"),
        400,
        "invalid_argument",
    )
    .await;
    assert!(v["message"].as_str().expect("m").contains("got 3"), "{v}");
    assert_eq!(
        job(&d, &id).await["schedule"],
        "0 8 * * 1-5",
        "nothing half-written"
    );

    // Minimum interval is configurable: 1s here, so every second is fine; the
    // job limit (5) is a 409 that says which.
    create(&d, json!({"schedule": "0 0 1 1 *", "prompt": "x"})).await;
    create(&d, json!({"schedule": "0 0 1 1 *", "prompt": "y"})).await;
    let v = expect_problem(
        d.post("/agent-cron")
            .json(&json!({"schedule": "0 0 1 1 *", "prompt": "z"}))
            .send()
            .await
            .expect("POST"),
        409,
        "conflict",
    )
    .await;
    assert!(
        v["message"].as_str().expect("m").contains("cron.max_jobs"),
        "{v}"
    );

    // DELETE, then 404 everywhere.
    assert_eq!(
        d.delete(&format!("/agent-cron/{id}"))
            .send()
            .await
            .expect("DELETE")
            .status(),
        204
    );
    for resp in [
        d.get(&format!("/agent-cron/{id}"))
            .send()
            .await
            .expect("GET"),
        d.delete(&format!("/agent-cron/{id}"))
            .send()
            .await
            .expect("DELETE"),
        d.post(&format!("/agent-cron/{id}/run"))
            .send()
            .await
            .expect("run"),
        d.get(&format!("/agent-cron/{id}/runs"))
            .send()
            .await
            .expect("runs"),
    ] {
        expect_problem(resp, 404, "not_found").await;
    }
}

#[tokio::test]
async fn minimum_interval_is_enforced_by_default() {
    let w = world("");
    let d = w.daemon().await;
    let v = expect_problem(
        d.post("/agent-cron")
            .json(&json!({"schedule": "* * * * * *", "prompt": "x"}))
            .send()
            .await
            .expect("POST"),
        400,
        "invalid_argument",
    )
    .await;
    let m = v["message"].as_str().expect("m");
    assert!(
        m.contains("minimum interval") && m.contains("cron.min_interval"),
        "{m}"
    );
    let v = expect_problem(
        d.post("/agent-cron")
            .json(&json!({"schedule": "every 10s", "prompt": "x"}))
            .send()
            .await
            .expect("POST"),
        400,
        "invalid_argument",
    )
    .await;
    assert!(
        v["message"].as_str().expect("m").starts_with("schedule:"),
        "{v}"
    );
    create(&d, json!({"schedule": "every 1m", "prompt": "x"})).await;
}

#[tokio::test]
async fn every_second_job_fires_with_run_ids_and_pause_resume_stop_and_restart_it() {
    let w = world(CRON_FAST);
    let d = w.daemon().await;
    let j = create(
        &d,
        json!({"schedule": "* * * * * *", "prompt": "hello from cron"}),
    )
    .await;
    let id = j["id"].as_str().expect("id").to_owned();

    let h = poll("two completed firings", Duration::from_secs(20), || async {
        let h = history(&d, &id).await;
        (count(&h, "completed") >= 2).then_some(h)
    })
    .await;
    for f in h.iter().filter(|f| f["status"] == "completed") {
        assert_eq!(f["trigger"], "schedule");
        let run_id = f["run_id"].as_str().expect("run id");
        let run = json_of(
            d.get(&format!("/runs/{run_id}")).send().await.expect("run"),
            200,
        )
        .await;
        assert_eq!(run["platform"], "cron");
        assert_eq!(run["status"], "completed");
        assert_eq!(run["input"], "hello from cron");
        assert!(f["duration_ms"].as_i64().expect("duration") >= 0);
        // Planned on a whole second and never fired early. How late it fired
        // is a figure (bench `cron`), not something a loaded CI box can promise.
        let planned = ts(&f["scheduled_at"]);
        let fired = ts(&f["fired_at"]);
        assert_eq!(chrono::Timelike::nanosecond(&planned), 0, "{f}");
        assert!(fired >= planned, "{f}");
    }
    let j = job(&d, &id).await;
    assert!(j["last_run_at"].is_string(), "{j}");

    // Pause: no firing starts any more, and next_run_at is null.
    let p = json_of(
        d.post(&format!("/agent-cron/{id}/pause"))
            .send()
            .await
            .expect("pause"),
        200,
    )
    .await;
    assert_eq!(p["paused"], true);
    assert!(p["next_run_at"].is_null(), "{p}");
    // Let a firing that had already started end.
    poll("no firing running", Duration::from_secs(10), || async {
        (count(&history(&d, &id).await, "running") == 0).then_some(())
    })
    .await;
    let before = history(&d, &id).await.len();
    // Absence of firings needs time to pass: 2.5 s is 2 scheduled seconds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(history(&d, &id).await.len(), before, "a paused job fired");

    // Resume: next_run_at is the next second, and it fires again.
    let asked = Utc::now();
    let r = json_of(
        d.post(&format!("/agent-cron/{id}/resume"))
            .send()
            .await
            .expect("resume"),
        200,
    )
    .await;
    let answered = Utc::now();
    // The first whole second after the daemon handled the call, which lies
    // between `asked` and `answered` however slow the machine is.
    let next = ts(&r["next_run_at"]);
    assert!(
        next > asked && next <= answered + chrono::Duration::seconds(1),
        "next_run_at {next} not the second after [{asked}, {answered}]"
    );
    poll("a firing after resume", Duration::from_secs(10), || async {
        (history(&d, &id).await.len() > before).then_some(())
    })
    .await;

    // The job and its history survive a restart; the scheduler is rebuilt.
    let mut d = d;
    let keep = d.keep_dir();
    assert!(d.terminate().success(), "clean exit on SIGTERM");
    let n_before = count(&history_after_restart(&w).await, "completed");
    drop(keep);
    assert!(n_before >= 3);
}

/// Start again on the same directory, wait for one more completed firing of
/// the only job, and return its history.
async fn history_after_restart(w: &GatewayWorld) -> Vec<Value> {
    let d = w.daemon().await;
    let jobs = json_of(d.get("/agent-cron").send().await.expect("list"), 200).await;
    let id = jobs["jobs"][0]["id"].as_str().expect("id").to_owned();
    let start = count(&history(&d, &id).await, "completed");
    assert!(start >= 2, "history kept");
    poll(
        "a firing after the restart",
        Duration::from_secs(20),
        || async {
            let h = history(&d, &id).await;
            (count(&h, "completed") > start).then_some(h)
        },
    )
    .await
}

#[tokio::test]
async fn run_now_fires_once_and_leaves_the_schedule_alone() {
    let w = world(CRON_FAST);
    let d = w.daemon().await;
    let j = create(
        &d,
        json!({"schedule": "0 0 1 1 *", "prompt": "manual please"}),
    )
    .await;
    let id = j["id"].as_str().expect("id").to_owned();
    let f = json_of(
        d.post(&format!("/agent-cron/{id}/run"))
            .send()
            .await
            .expect("run"),
        202,
    )
    .await;
    assert_eq!(f["trigger"], "manual");
    let run_id = f["run_id"].as_str().expect("run id").to_owned();
    let h = poll(
        "the manual firing completes",
        Duration::from_secs(20),
        || async {
            let h = history(&d, &id).await;
            (count(&h, "completed") == 1).then_some(h)
        },
    )
    .await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["run_id"], run_id.as_str());
    let after = job(&d, &id).await;
    assert_eq!(after["next_run_at"], j["next_run_at"]);
    assert_eq!(after["last_status"], "ok");
}

/// A job's skills reach its run: the SKILL.md of each installed one in the
/// run's instructions, the missing ones named; the job fires regardless.
#[tokio::test]
async fn a_jobs_skills_are_loaded_into_its_runs_instructions() {
    let w = world(CRON_FAST);
    let skill = w.home().join("skills/research/arxiv");
    std::fs::create_dir_all(&skill).expect("skill dir");
    std::fs::write(
        skill.join("SKILL.md"),
        "---\nname: arxiv\ndescription: Search arXiv papers\n---\n# arXiv\nUse the export API; cite ids.\n",
    )
    .expect("SKILL.md");
    let d = w.daemon().await;
    poll("the skill indexed", Duration::from_secs(20), || async {
        let v = json_of(d.get("/skills").send().await.expect("skills"), 200).await;
        v["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["name"] == "arxiv"))
            .then_some(())
    })
    .await;
    let j = create(
        &d,
        json!({"schedule": "0 0 1 1 *", "prompt": "new papers?", "skills": ["arxiv", "not-installed"]}),
    )
    .await;
    let id = j["id"].as_str().expect("id").to_owned();
    let f = json_of(
        d.post(&format!("/agent-cron/{id}/run"))
            .send()
            .await
            .expect("run"),
        202,
    )
    .await;
    let run_id = f["run_id"].as_str().expect("run id").to_owned();
    let run = json_of(
        d.get(&format!("/runs/{run_id}")).send().await.expect("run"),
        200,
    )
    .await;
    assert_eq!(run["input"], "new papers?");
    let ins = run["instructions"].as_str().expect("instructions");
    assert!(ins.contains("## Skill: arxiv"), "{ins}");
    assert!(ins.contains("Use the export API; cite ids."), "{ins}");
    assert!(
        ins.contains("Not installed, so not loaded: not-installed."),
        "{ins}"
    );

    // Without skills, no instructions.
    let j = create(&d, json!({"schedule": "0 0 1 1 *", "prompt": "plain"})).await;
    let id = j["id"].as_str().expect("id").to_owned();
    let f = json_of(
        d.post(&format!("/agent-cron/{id}/run"))
            .send()
            .await
            .expect("run"),
        202,
    )
    .await;
    let run_id = f["run_id"].as_str().expect("run id").to_owned();
    let run = json_of(
        d.get(&format!("/runs/{run_id}")).send().await.expect("run"),
        200,
    )
    .await;
    assert!(run["instructions"].is_null(), "{run}");
}

#[tokio::test]
async fn a_job_never_overlaps_itself_and_delete_stops_its_run() {
    let w = world(CRON_FAST);
    let d = w.daemon().await;
    let j = create(
        &d,
        json!({"schedule": "* * * * * *", "prompt": "hang until stopped"}),
    )
    .await;
    let id = j["id"].as_str().expect("id").to_owned();
    let h = poll("two skipped firings", Duration::from_secs(20), || async {
        let h = history(&d, &id).await;
        (count(&h, "skipped") >= 2).then_some(h)
    })
    .await;
    let with_runs: Vec<&Value> = h.iter().filter(|f| !f["run_id"].is_null()).collect();
    assert_eq!(with_runs.len(), 1, "only one run at a time: {h:?}");
    assert_eq!(with_runs[0]["status"], "running");
    let run_id = with_runs[0]["run_id"].as_str().expect("run").to_owned();
    for s in h.iter().filter(|f| f["status"] == "skipped") {
        assert!(
            s["error"].as_str().expect("why").contains("still running"),
            "{s}"
        );
    }
    assert_eq!(job(&d, &id).await["running_run_id"], run_id.as_str());
    // Run now while it runs: refused.
    expect_problem(
        d.post(&format!("/agent-cron/{id}/run"))
            .send()
            .await
            .expect("run"),
        409,
        "conflict",
    )
    .await;

    assert_eq!(
        d.delete(&format!("/agent-cron/{id}"))
            .send()
            .await
            .expect("DELETE")
            .status(),
        204
    );
    poll("the run is cancelled", Duration::from_secs(20), || async {
        let r: Value = d
            .get(&format!("/runs/{run_id}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (r["status"] == "cancelled").then_some(())
    })
    .await;
    expect_problem(
        d.get(&format!("/agent-cron/{id}"))
            .send()
            .await
            .expect("GET"),
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn one_shot_completes_and_repeat_times_ends_a_job() {
    let w = world(CRON_FAST);
    let d = w.daemon().await;
    let once = create(&d, json!({"schedule": iso_in(2), "prompt": "once"})).await;
    let once_id = once["id"].as_str().expect("id").to_owned();
    let rep = create(
        &d,
        json!({"schedule": "every 1s", "prompt": "twice", "repeat": {"times": 2}}),
    )
    .await;
    let rep_id = rep["id"].as_str().expect("id").to_owned();

    for id in [&once_id, &rep_id] {
        poll("the job completes", Duration::from_secs(20), || async {
            let j = job(&d, id).await;
            (j["state"] == "completed"
                && j["running_run_id"].is_null()
                && count(&history(&d, id).await, "running") == 0)
                .then_some(())
        })
        .await;
    }
    let o = job(&d, &once_id).await;
    assert!(o["next_run_at"].is_null(), "{o}");
    assert_eq!(history(&d, &once_id).await.len(), 1);
    let r = job(&d, &rep_id).await;
    assert_eq!(r["repeat"], json!({"times": 2, "completed": 2}));
    assert!(r["next_run_at"].is_null(), "{r}");
    // Nothing more fires: the queue no longer holds them (checked over 2 s).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(history(&d, &rep_id).await.len(), 2);
    assert_eq!(history(&d, &once_id).await.len(), 1);
}

#[tokio::test]
async fn firings_missed_while_down_run_once_within_grace_and_are_recorded_otherwise() {
    let w = world("[cron]\nmin_interval = \"1s\"\nmissed_grace = \"8s\"\n");
    let mut d = w.daemon().await;
    // Times are whole seconds: `old` is due 2-3 s from t0, `recent` 11-12 s.
    let t0 = Utc::now();
    let old = create(&d, json!({"schedule": iso_in(3), "prompt": "old one-shot"})).await;
    let recent = create(
        &d,
        json!({"schedule": iso_in(12), "prompt": "recent one-shot"}),
    )
    .await;
    let every = create(
        &d,
        json!({"schedule": "every 1s", "prompt": "every second"}),
    )
    .await;
    let keep = d.keep_dir();
    d.kill();
    // The daemon is down while the times pass (this wait is the scenario).
    // Restart 1.2 s after `recent` was due: it is within the 8 s grace
    // (unless the restart takes over 5 s), `old` is over 10 s past it.
    let until = t0 + chrono::Duration::milliseconds(13_200);
    while Utc::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = w.daemon().await;
    drop(keep);

    // Past the grace window: recorded as missed, never run.
    let o = job(&d, old["id"].as_str().expect("id")).await;
    assert_eq!(o["state"], "completed", "{o}");
    assert_eq!(o["last_status"], "missed", "{o}");
    let h = history(&d, old["id"].as_str().expect("id")).await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["status"], "missed");
    assert!(h[0]["run_id"].is_null());

    // Within the grace window: runs once at start.
    let rid = recent["id"].as_str().expect("id").to_owned();
    let h = poll(
        "the catch-up firing completes",
        Duration::from_secs(20),
        || async {
            let h = history(&d, &rid).await;
            (count(&h, "completed") == 1).then_some(h)
        },
    )
    .await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["trigger"], "catch_up");

    // The recurring job: the rest recorded as missed, the latest caught up
    // once, then on schedule again.
    let eid = every["id"].as_str().expect("id").to_owned();
    let h = poll(
        "catch-up and schedule again",
        Duration::from_secs(20),
        || async {
            let h = history(&d, &eid).await;
            let caught = h.iter().any(|f| f["trigger"] == "catch_up");
            let scheduled = h
                .iter()
                .any(|f| f["trigger"] == "schedule" && f["status"] == "completed");
            (caught && scheduled).then_some(h)
        },
    )
    .await;
    let missed: Vec<&Value> = h.iter().filter(|f| f["status"] == "missed").collect();
    assert_eq!(missed.len(), 1, "{h:?}");
    assert!(
        missed[0]["error"]
            .as_str()
            .expect("e")
            .contains("missed while the daemon was down")
    );
    assert_eq!(h.iter().filter(|f| f["trigger"] == "catch_up").count(), 1);
}

#[tokio::test]
async fn gateway_jobs_json_is_imported_once_and_removed_from_the_file() {
    let w = world(CRON_FAST);
    let cron_dir = w.home().join("cron");
    std::fs::create_dir_all(&cron_dir).expect("mkdir");
    let file = cron_dir.join("jobs.json");
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"jobs": [
            {"id": "a1b2c3d4e5f6", "name": "news", "prompt": "morning news", "skills": ["web"],
             "schedule": {"kind": "cron", "expr": "0 8 * * *", "display": "0 8 * * *"},
             "repeat": {"times": null, "completed": 0}, "enabled": true, "state": "scheduled",
             "deliver": "telegram", "next_run_at": "2099-01-01T08:00:00+00:00"},
            {"id": "0123456789ab", "name": "walk", "prompt": "remind me to walk",
             "schedule": {"kind": "interval", "minutes": 30, "display": "every 30m"},
             "enabled": true, "state": "paused", "deliver": "local"},
            {"id": "ffffffffffff", "name": "broken", "prompt": "x", "schedule": {"kind": "weird"}}
        ], "updated_at": "2026-01-01T00:00:00Z"}))
        .expect("json"),
    )
    .expect("write jobs.json");

    let mut d = w.daemon().await;
    let jobs = json_of(d.get("/agent-cron").send().await.expect("list"), 200).await;
    let jobs = jobs["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let news = jobs
        .iter()
        .find(|j| j["id"] == "a1b2c3d4e5f6")
        .expect("news imported");
    assert_eq!(news["schedule"], "0 8 * * *");
    assert_eq!(news["deliver"], "telegram");
    assert_eq!(news["next_run_at"], "2099-01-01T08:00:00.000Z");
    let walk = jobs
        .iter()
        .find(|j| j["id"] == "0123456789ab")
        .expect("walk imported");
    assert_eq!(walk["schedule"], "every 30m");
    assert_eq!(walk["paused"], true);
    assert!(
        d.logs()
            .iter()
            .any(|l| l.contains("gateway cron jobs imported"))
    );

    // Removed from the gateway's file; the broken one stays there.
    let left: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let left = left["jobs"].as_array().expect("jobs");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], "ffffffffffff");

    // Only on the first start: a job added to the file later stays there.
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"jobs": [
            {"id": "bbbbbbbbbbbb", "prompt": "late", "schedule": "every 30m"}
        ]}))
        .expect("json"),
    )
    .expect("write");
    let keep = d.keep_dir();
    d.kill();
    let d = w.daemon().await;
    drop(keep);
    let jobs = json_of(d.get("/agent-cron").send().await.expect("list"), 200).await;
    assert_eq!(jobs["jobs"].as_array().expect("jobs").len(), 2);
    let still: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    assert_eq!(still["jobs"][0]["id"], "bbbbbbbbbbbb");
}

/// The fake hub, killed on drop.
struct FakeHub {
    child: Child,
    port: u16,
}

impl FakeHub {
    fn start(fail: u32) -> FakeHub {
        let mut child = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fake_delivery_hub.py"
            ))
            .arg("--fail")
            .arg(fail.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fake hub");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let v: Value = serde_json::from_str(&line).expect("port json");
        FakeHub {
            child,
            port: v["port"].as_u64().expect("port") as u16,
        }
    }

    async fn attempts(&self) -> Vec<Value> {
        reqwest::get(format!("http://127.0.0.1:{}/deliveries", self.port))
            .await
            .expect("hub")
            .json()
            .await
            .expect("json")
    }

    async fn set_fail(&self, n: u32) {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/control", self.port))
            .json(&json!({"fail": n}))
            .send()
            .await
            .expect("control");
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hub_config(port: u16) -> String {
    format!(
        "{CRON_FAST}delivery_backoff_base = \"100ms\"\ndelivery_backoff_cap = \"400ms\"\n\n[hub]\nurl = \"http://127.0.0.1:{port}\"\n"
    )
}

#[tokio::test]
async fn delivery_is_retried_until_the_hub_acks_and_survives_a_restart() {
    let hub = FakeHub::start(2);
    let w = world(&hub_config(hub.port));
    let mut d = w.daemon().await;
    let j = create(
        &d,
        json!({"schedule": "0 0 1 1 *", "prompt": "deliver me", "deliver": "telegram:123"}),
    )
    .await;
    let id = j["id"].as_str().expect("id").to_owned();
    let f = json_of(
        d.post(&format!("/agent-cron/{id}/run"))
            .send()
            .await
            .expect("run"),
        202,
    )
    .await;
    let run_id = f["run_id"].as_str().expect("run").to_owned();

    let attempts = poll(
        "an acknowledged delivery",
        Duration::from_secs(20),
        || async {
            let a = hub.attempts().await;
            a.iter().any(|x| x["answered"] == 200).then_some(a)
        },
    )
    .await;
    assert_eq!(attempts.len(), 3, "two refusals then the ack: {attempts:?}");
    assert_eq!(attempts[0]["answered"], 503);
    assert_eq!(attempts[1]["answered"], 503);
    for a in &attempts {
        assert_eq!(a["path"], format!("/v1/tenant-runtime/{TENANT}/deliveries"));
        assert_eq!(a["auth"], format!("Bearer {TOKEN}"));
        assert_eq!(a["body"]["job_id"], id.as_str());
        assert_eq!(a["body"]["run_id"], run_id.as_str());
        assert_eq!(a["body"]["deliver"], "telegram:123");
        assert!(
            a["body"]["output"].as_str().is_some_and(|o| !o.is_empty()),
            "{a}"
        );
    }

    // A local job delivers nothing.
    let local = create(
        &d,
        json!({"schedule": "0 0 1 1 *", "prompt": "keep it here", "deliver": "local"}),
    )
    .await;
    let lid = local["id"].as_str().expect("id").to_owned();
    d.post(&format!("/agent-cron/{lid}/run"))
        .send()
        .await
        .expect("run");
    poll(
        "the local firing completes",
        Duration::from_secs(20),
        || async { (count(&history(&d, &lid).await, "completed") == 1).then_some(()) },
    )
    .await;

    // The hub is away across a daemon restart: the delivery is kept in
    // SQLite and sent once it is back.
    hub.set_fail(1_000_000).await;
    let f = json_of(
        d.post(&format!("/agent-cron/{id}/run"))
            .send()
            .await
            .expect("run"),
        202,
    )
    .await;
    let second = f["run_id"].as_str().expect("run").to_owned();
    poll(
        "a refused attempt for the second run",
        Duration::from_secs(20),
        || async {
            hub.attempts()
                .await
                .iter()
                .any(|a| a["body"]["run_id"] == second.as_str())
                .then_some(())
        },
    )
    .await;
    let keep = d.keep_dir();
    d.kill();
    hub.set_fail(0).await;
    let d2 = w.daemon().await;
    drop(keep);
    poll(
        "the kept delivery is acknowledged",
        Duration::from_secs(20),
        || async {
            hub.attempts()
                .await
                .iter()
                .any(|a| a["body"]["run_id"] == second.as_str() && a["answered"] == 200)
                .then_some(())
        },
    )
    .await;
    let all = hub.attempts().await;
    assert!(
        all.iter().all(|a| a["body"]["job_id"] == id.as_str()),
        "nothing delivered for the local job: {all:?}"
    );
    drop(d2);
}
