//! Heartbeat and hub link, against the real binary and a fake hub
//! (`tests/fake_hub.py`, Python stdlib) that records beats and answers as
//! the test tells it: ack, 500, hang, garbage, desired state, clock, interval.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::hub::FakeHub;
use common::*;
use serde_json::{Value, json};

/// `[hub]` for a daemon talking to `hub` at a 200 ms interval.
fn hub_section(hub: &FakeHub, extra: &str) -> String {
    let timeout = if extra.contains("request_timeout") {
        ""
    } else {
        "request_timeout = \"1s\"\n"
    };
    format!(
        "[hub]\nurl = \"http://127.0.0.1:{}\"\nheartbeat_interval = \"200ms\"\n{timeout}backoff_max = \"1600ms\"\n{extra}\n",
        hub.port
    )
}

async fn start_daemon(hub: &FakeHub, extra: &str, dir: Option<std::path::PathBuf>) -> TestDaemon {
    TestDaemon::start_with(Options {
        config_extra: hub_section(hub, extra),
        dir,
        ..Default::default()
    })
    .await
}

// ---- the daemon's database, opened directly -----------------------------------------

fn db(d: &TestDaemon) -> rusqlite::Connection {
    db_at(&d.data_dir())
}

fn db_at(data_dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(data_dir.join("tenantd.db")).expect("open daemon db");
    c.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    c
}

/// Seed a usage ledger entry as a finished run would; returns its seq.
fn seed_usage(
    c: &rusqlite::Connection,
    run: &str,
    tokens_in: i64,
    created_at_ms: Option<i64>,
) -> i64 {
    let at = created_at_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    c.execute(
        "INSERT INTO usage_ledger (run_id, session_id, tokens_in, tokens_out, tool_calls, created_at)
         VALUES (?1, 'sess-1', ?2, ?3, 2, ?4)",
        rusqlite::params![run, tokens_in, tokens_in * 2, at],
    )
    .expect("seed usage");
    c.last_insert_rowid()
}

fn unreported_seqs(c: &rusqlite::Connection) -> Vec<i64> {
    let mut s = c
        .prepare("SELECT seq FROM usage_ledger WHERE reported = 0 ORDER BY seq")
        .expect("prepare");
    s.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<Vec<i64>, _>>()
        .expect("rows")
}

fn entry_seqs(beat: &Value) -> Vec<i64> {
    beat["body"]["usage"]["entries"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["seq"].as_i64()).collect())
        .unwrap_or_default()
}

async fn metrics(d: &TestDaemon) -> String {
    d.client
        .get(d.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn gaps(beats: &[Value]) -> Vec<f64> {
    beats
        .windows(2)
        .map(|w| w[1]["t"].as_f64().unwrap_or(0.0) - w[0]["t"].as_f64().unwrap_or(0.0))
        .collect()
}

fn count_logs(d: &TestDaemon, needles: &[&str]) -> usize {
    d.logs()
        .iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

async fn wait_logs(d: &TestDaemon, needles: &[&str], n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while count_logs(d, needles) < n {
        if Instant::now() > deadline {
            panic!(
                "fewer than {n} log lines with {needles:?}:\n{}",
                d.logs().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- a focused JSON Schema validator ----------------------------------------------
//
// Covers exactly the keywords `schema/heartbeat.schema.json` uses and fails
// loudly on any other, so the schema cannot grow a rule this test ignores.
// (The `jsonschema` crate was not added: it pulls a regex engine, an HTTP
// resolver and more for one test.)

mod schema {
    use serde_json::Value;

    const IGNORED: &[&str] = &["$schema", "$id", "title", "description", "$defs"];

    pub fn validate(root: &Value, v: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        check(root, root, v, "$", &mut errs);
        errs
    }

    fn resolve<'a>(root: &'a Value, r: &str) -> &'a Value {
        let path = r.strip_prefix("#/").expect("local $ref only");
        path.split('/').fold(root, |node, part| &node[part])
    }

    fn type_ok(t: &str, v: &Value) -> bool {
        match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            other => panic!("validator: unknown type {other}"),
        }
    }

    fn pattern_ok(p: &str, s: &str) -> bool {
        match p {
            "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$" => {
                !s.is_empty()
                    && s.len() <= 128
                    && s.as_bytes()[0].is_ascii_alphanumeric()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
            }
            "^[0-9a-f]{32}$" => {
                s.len() == 32
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
            r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$" => {
                s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok()
            }
            other => panic!("validator: unknown pattern {other}"),
        }
    }

    fn check(root: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let Some(obj) = schema.as_object() else {
            panic!("validator: schema at {at} is not an object");
        };
        for (k, rule) in obj {
            match k.as_str() {
                k if IGNORED.contains(&k) => {}
                "$ref" => check(
                    root,
                    resolve(root, rule.as_str().expect("ref")),
                    v,
                    at,
                    errs,
                ),
                "type" => {
                    let ok = match rule {
                        Value::String(t) => type_ok(t, v),
                        Value::Array(ts) => {
                            ts.iter().any(|t| type_ok(t.as_str().expect("type"), v))
                        }
                        _ => panic!("validator: bad type rule"),
                    };
                    if !ok {
                        errs.push(format!("{at}: {v} is not of type {rule}"));
                    }
                }
                "const" => {
                    if v != rule {
                        errs.push(format!("{at}: {v} != const {rule}"));
                    }
                }
                "enum" => {
                    if !rule.as_array().expect("enum").contains(v) {
                        errs.push(format!("{at}: {v} not in {rule}"));
                    }
                }
                "required" => {
                    if let Some(o) = v.as_object() {
                        for name in rule.as_array().expect("required") {
                            let name = name.as_str().expect("name");
                            if !o.contains_key(name) {
                                errs.push(format!("{at}: missing `{name}`"));
                            }
                        }
                    }
                }
                "properties" => {
                    if let Some(o) = v.as_object() {
                        for (name, sub) in rule.as_object().expect("properties") {
                            if let Some(val) = o.get(name) {
                                check(root, sub, val, &format!("{at}.{name}"), errs);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    assert_eq!(rule, &Value::Bool(false), "validator: only `false`");
                    if let Some(o) = v.as_object() {
                        let known = obj.get("properties").and_then(|p| p.as_object());
                        for name in o.keys() {
                            if !known.is_some_and(|k| k.contains_key(name)) {
                                errs.push(format!("{at}: unexpected `{name}`"));
                            }
                        }
                    }
                }
                "items" => {
                    if let Some(a) = v.as_array() {
                        for (i, item) in a.iter().enumerate() {
                            check(root, rule, item, &format!("{at}[{i}]"), errs);
                        }
                    }
                }
                "minimum" | "maximum" | "exclusiveMinimum" => {
                    if let (Some(n), Some(bound)) = (v.as_f64(), rule.as_f64()) {
                        let ok = match k.as_str() {
                            "minimum" => n >= bound,
                            "maximum" => n <= bound,
                            _ => n > bound,
                        };
                        if !ok {
                            errs.push(format!("{at}: {n} violates {k} {bound}"));
                        }
                    }
                }
                "minLength" => {
                    if let Some(s) = v.as_str() {
                        if (s.chars().count() as u64) < rule.as_u64().expect("minLength") {
                            errs.push(format!("{at}: shorter than {rule}"));
                        }
                    }
                }
                "pattern" => {
                    if let Some(s) = v.as_str() {
                        if !pattern_ok(rule.as_str().expect("pattern"), s) {
                            errs.push(format!("{at}: `{s}` does not match {rule}"));
                        }
                    }
                }
                "oneOf" => {
                    let matching = rule
                        .as_array()
                        .expect("oneOf")
                        .iter()
                        .filter(|sub| {
                            let mut e = Vec::new();
                            check(root, sub, v, at, &mut e);
                            e.is_empty()
                        })
                        .count();
                    if matching != 1 {
                        errs.push(format!("{at}: matches {matching} of oneOf"));
                    }
                }
                other => panic!("validator: keyword `{other}` at {at} is not supported"),
            }
        }
    }
}

fn heartbeat_schema() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/heartbeat.schema.json"
    ))
    .expect("schema file");
    serde_json::from_str(&text).expect("schema JSON")
}

// ---- tests ------------------------------------------------------------------------

#[tokio::test]
async fn beats_arrive_at_the_interval_and_match_the_schema() {
    let hub = FakeHub::start();
    let d = start_daemon(&hub, "", None).await;
    let beats = hub.wait_beats(10, Duration::from_secs(15)).await;
    let schema = heartbeat_schema();
    for b in &beats {
        let errs = schema::validate(&schema, &b["body"]);
        assert!(
            errs.is_empty(),
            "beat {} fails the schema: {errs:#?}\n{}",
            b["i"],
            b["body"]
        );
        assert_eq!(b["tenant"], TENANT);
        assert_eq!(b["auth"], format!("Bearer {TOKEN}"));
        assert_eq!(b["content_type"], "application/json");
    }
    let first = &beats[0]["body"];
    assert_eq!(first["seq"], 1);
    assert!(
        first["host"]["cpu_percent"].is_null(),
        "no CPU figure on the first beat"
    );
    assert!(first["host"]["memory"]["total_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(
        first["host"]["disk"]["total_bytes"].as_u64().unwrap_or(0) > 0,
        "{first}"
    );
    // No gateway command here: the first beat races the supervisor's first
    // (failing) spawn, so either side of it is right; nothing else is.
    let state = first["agent"]["state"].as_str().expect("agent state");
    assert!(
        ["stopped", "starting", "failed"].contains(&state),
        "{first}"
    );
    assert_eq!(first["access"], "active");
    for (i, b) in beats.iter().enumerate() {
        assert_eq!(b["body"]["seq"], i as u64 + 1);
        assert_eq!(b["body"]["boot_id"], first["boot_id"]);
    }
    // sysinfo needs ~200 ms between CPU samples; beats 200 ms ± 10 % apart
    // get a figure on most, not all.
    assert!(
        beats[1..]
            .iter()
            .any(|b| b["body"]["host"]["cpu_percent"].is_number()),
        "no CPU figure on any later beat"
    );
    assert!(beats[5]["body"]["link"]["last_success_at"].is_string());

    let g = gaps(&beats);
    let mut sorted = g.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    assert!(
        (0.17..=0.35).contains(&median),
        "median gap {median}: {g:?}"
    );
    // No burst; a late gap on a loaded machine is allowed (the median above
    // holds the interval).
    assert!(g.iter().all(|x| *x >= 0.05), "gaps {g:?}");
    // ±10 % jitter: not every gap the same.
    assert!(
        sorted[sorted.len() - 1] - sorted[0] > 0.01,
        "no jitter: {g:?}"
    );

    // The validator can fail: a mutated beat is refused.
    let mut bad = first.clone();
    bad["agent"]["state"] = json!("dancing");
    bad["extra"] = json!(1);
    bad.as_object_mut().expect("object").remove("seq");
    assert_eq!(schema::validate(&schema, &bad).len(), 3);

    let m = metrics(&d).await;
    assert!(
        metric(&m, "hermes_tenantd_hub_heartbeats_sent_total").unwrap_or(0.0) >= 10.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "hermes_tenantd_hub_heartbeat_last_success_timestamp_seconds"
        )
        .unwrap_or(0.0)
            > 1.7e9
    );
    // The state metric shows the state the agent reports (no gateway is
    // configured here, so the supervisor reports `failed`).
    let agent: Value = d
        .get("/agent")
        .send()
        .await
        .expect("agent")
        .json()
        .await
        .expect("json");
    let state = agent["state"].as_str().expect("state").to_owned();
    assert_eq!(
        metric(
            &m,
            &format!("hermes_tenantd_agent_state{{state=\"{state}\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    assert!(m.contains("hermes_tenantd_hub_heartbeat_payload_bytes"));
}

#[tokio::test]
async fn first_beat_goes_out_at_once_then_waits_the_interval() {
    let hub = FakeHub::start();
    let started = Instant::now();
    let d = TestDaemon::start_with(Options {
        config_extra: format!(
            "[hub]\nurl = \"http://127.0.0.1:{}\"\nheartbeat_interval = \"30s\"\n",
            hub.port
        ),
        ..Default::default()
    })
    .await;
    // "At once" against a 30 s interval: well before the first interval ends.
    hub.wait_beats(1, Duration::from_secs(15)).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        hub.beats().await.len(),
        1,
        "a second beat came before the interval"
    );
    drop(d);
}

#[tokio::test]
async fn hub_down_backs_off_then_delivers_every_delta_once() {
    let hub = FakeHub::start();
    hub.control(json!({"mode": "500"})).await;
    let d = start_daemon(&hub, "", None).await;
    let c = db(&d);
    let mut seeded: Vec<i64> = (0..3)
        .map(|i| seed_usage(&c, &format!("run-{i}"), 10 + i, None))
        .collect();

    // Failures: the gaps grow, then stay under the cap (1.6 s).
    let failing = hub.wait_beats(8, Duration::from_secs(20)).await;
    let g = gaps(&failing);
    assert!(g[0] < 0.6, "first retry is one interval at most: {g:?}");
    assert!(
        g.iter().all(|x| *x <= 1.6 + 0.5),
        "gap above the cap: {g:?}"
    );
    assert!(
        g[g.len() - 1] >= 0.7 && g[g.len() - 2] >= 0.7,
        "backoff did not grow: {g:?}"
    );
    assert!(g[g.len() - 1] > 3.0 * g[0], "backoff did not grow: {g:?}");
    for b in failing.iter().skip(1) {
        assert_eq!(
            b["body"]["link"]["consecutive_failures"]
                .as_u64()
                .unwrap_or(0),
            b["body"]["seq"].as_u64().unwrap_or(0) - 1
        );
    }
    assert_eq!(
        unreported_seqs(&c),
        seeded,
        "nothing marked while the hub fails"
    );
    assert_eq!(
        count_logs(&d, &["agent command"]),
        0,
        "a failing hub must not touch the agent"
    );

    // More usage while the hub is away, then the hub comes back.
    seeded.extend((3..5).map(|i| seed_usage(&c, &format!("run-{i}"), 10 + i, None)));
    let before = hub.beats().await.len();
    hub.control(json!({"mode": "ack"})).await;
    let beats = hub
        .wait_until("4 acknowledged beats", Duration::from_secs(10), |b| {
            b.iter().filter(|x| x["mode"] == "ack").count() >= 4
        })
        .await;
    let acked: Vec<&Value> = beats[before..]
        .iter()
        .filter(|b| b["mode"] == "ack")
        .collect();
    assert_eq!(
        entry_seqs(acked[0]),
        seeded,
        "the first beat after the outage carries everything"
    );
    for b in &acked[1..] {
        assert!(
            entry_seqs(b).is_empty(),
            "delta sent again after its ack: {}",
            b["body"]["usage"]
        );
    }
    let all: BTreeSet<i64> = beats.iter().flat_map(entry_seqs).collect();
    assert_eq!(all, seeded.iter().copied().collect::<BTreeSet<_>>());
    assert!(unreported_seqs(&c).is_empty(), "ledger marked reported");
    let ok_gaps = gaps(&beats[beats.len() - 3..]);
    assert!(
        ok_gaps.iter().all(|x| *x < 0.8),
        "back to the normal interval: {ok_gaps:?}"
    );

    let m = metrics(&d).await;
    assert!(
        metric(
            &m,
            "hermes_tenantd_hub_heartbeats_failed_total{reason=\"status\"}"
        )
        .unwrap_or(0.0)
            >= 7.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "hermes_tenantd_hub_usage_acknowledged_total"),
        Some(5.0)
    );
    assert_eq!(
        metric(&m, "hermes_tenantd_hub_heartbeat_consecutive_failures"),
        Some(0.0)
    );
}

#[tokio::test]
async fn killed_between_send_and_ack_resends_the_same_seqs() {
    let hub = FakeHub::start();
    hub.control(json!({"mode": "hang", "hang_s": 30})).await;
    let mut d = start_daemon(&hub, "", None).await;
    let keep = d.keep_dir();
    let dir = d.dir.clone();
    let c = db(&d);
    let seeded = vec![
        seed_usage(&c, "run-a", 7, None),
        seed_usage(&c, "run-b", 9, None),
    ];
    drop(c);
    let sent = hub
        .wait_until("a beat carrying the usage", Duration::from_secs(10), |b| {
            b.iter().any(|x| entry_seqs(x) == seeded)
        })
        .await;
    let old_boot = sent[0]["body"]["boot_id"].clone();
    d.kill();
    assert_eq!(unreported_seqs(&db_at(&dir.join("data"))), seeded);

    hub.control(json!({"mode": "ack"})).await;
    let before = hub.beats().await.len();
    let d = start_daemon(&hub, "", Some(dir.clone())).await;
    let beats = hub
        .wait_until(
            "two beats from the new boot",
            Duration::from_secs(10),
            |b| {
                b.len() >= before + 2
                    && b[before..].iter().all(|x| x["body"]["boot_id"] != old_boot)
            },
        )
        .await;
    let resent = &beats[before];
    assert_eq!(resent["body"]["seq"], 1, "beat seq restarts with the boot");
    assert_eq!(entry_seqs(resent), seeded, "same deltas, same seqs");
    assert_eq!(resent["body"]["usage"]["entries"][0]["tokens_in"], 7);
    assert_eq!(resent["body"]["usage"]["entries"][1]["run_id"], "run-b");
    assert!(entry_seqs(&beats[before + 1]).is_empty());
    assert!(unreported_seqs(&db(&d)).is_empty());
    drop(keep);
}

#[tokio::test]
async fn desired_state_and_suspension_reach_the_agent_and_persist() {
    let hub = FakeHub::start();
    let mut d = start_daemon(&hub, "", None).await;
    let keep = d.keep_dir();
    let dir = d.dir.clone();
    hub.wait_beats(1, Duration::from_secs(5)).await;
    assert_eq!(count_logs(&d, &["agent command"]), 0);

    hub.control(json!({"desired": {"agent": "stopped"}})).await;
    wait_logs(
        &d,
        &["\"agent command\"", "Stop"],
        1,
        Duration::from_secs(5),
    )
    .await;
    hub.wait_until("desired stopped reported", Duration::from_secs(5), |b| {
        b.last()
            .is_some_and(|x| x["body"]["agent"]["desired"] == "stopped")
    })
    .await;
    // Repeating the same desired state sends nothing more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(count_logs(&d, &["\"agent command\""]), 1);

    hub.control(json!({"desired": {"agent": "running"}})).await;
    wait_logs(
        &d,
        &["\"agent command\"", "Start"],
        1,
        Duration::from_secs(5),
    )
    .await;

    hub.control(json!({"desired": {"access": "suspended", "agent": "running"}}))
        .await;
    wait_logs(
        &d,
        &["\"agent command\"", "Stop"],
        2,
        Duration::from_secs(5),
    )
    .await;
    hub.wait_until("suspension reported", Duration::from_secs(5), |b| {
        b.last().is_some_and(|x| {
            x["body"]["access"] == "suspended" && x["body"]["agent"]["desired"] == "stopped"
        })
    })
    .await;
    let stored: String = db(&d)
        .query_row(
            "SELECT value FROM daemon_state WHERE key = 'hub.access'",
            [],
            |r| r.get(0),
        )
        .expect("access persisted");
    assert_eq!(stored, "suspended");
    assert_eq!(
        metric(&metrics(&d).await, "hermes_tenantd_hub_access_suspended"),
        Some(1.0)
    );
    // Suspension wins over `agent: running`: no Start while suspended.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(count_logs(&d, &["\"agent command\"", "Start"]), 1);

    // A restart keeps the suspension, even with a hub that says nothing.
    hub.control(json!({"desired": null})).await;
    d.terminate();
    let before = hub.beats().await.len();
    let d = start_daemon(&hub, "", Some(dir.clone())).await;
    let beats = hub.wait_beats(before + 1, Duration::from_secs(5)).await;
    // The supervisor kept the stopped desire across the restart, and
    // nothing starts the agent while suspended.
    let agent: Value = d
        .get("/agent")
        .send()
        .await
        .expect("agent")
        .json()
        .await
        .expect("json");
    assert_eq!(agent["desired"], "stopped", "{agent}");
    assert_eq!(count_logs(&d, &["\"agent command\"", "Start"]), 0);
    assert_eq!(beats[before]["body"]["access"], "suspended");
    assert_eq!(
        metric(&metrics(&d).await, "hermes_tenantd_hub_access_suspended"),
        Some(1.0)
    );

    // Back to active: the agent is started again.
    hub.control(json!({"desired": {"access": "active"}})).await;
    wait_logs(
        &d,
        &["\"agent command\"", "Start"],
        1,
        Duration::from_secs(5),
    )
    .await;
    hub.wait_until("access active reported", Duration::from_secs(5), |b| {
        b.last().is_some_and(|x| x["body"]["access"] == "active")
    })
    .await;
    assert_eq!(
        metric(&metrics(&d).await, "hermes_tenantd_hub_access_suspended"),
        Some(0.0)
    );
    drop(keep);
}

#[tokio::test]
async fn hung_hub_blocks_nothing_else() {
    let hub = FakeHub::start();
    hub.control(json!({"mode": "hang", "hang_s": 30})).await;
    // A 5 s timeout: a call blocked behind the beat would take seconds.
    let d = start_daemon(&hub, "request_timeout = \"5s\"", None).await;
    hub.wait_beats(1, Duration::from_secs(5)).await;
    // While the beat hangs, the API answers promptly.
    for _ in 0..20 {
        for path in ["/version", "/usage"] {
            let t = Instant::now();
            let r = d.get(path).send().await.expect("send");
            assert_eq!(r.status(), 200, "{path}");
            assert!(
                t.elapsed() < Duration::from_millis(4500),
                "{path} took {:?}",
                t.elapsed()
            );
        }
        let r = d
            .client
            .get(d.url("/v1/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The hung beat times out and counts as failed; beats go on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&d).await;
        if metric(
            &m,
            "hermes_tenantd_hub_heartbeats_failed_total{reason=\"timeout\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no timeout counted: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.control(json!({"mode": "ack"})).await;
    hub.wait_until("beats after the hang", Duration::from_secs(10), |b| {
        b.iter().filter(|x| x["mode"] == "ack").count() >= 2
    })
    .await;
    assert_eq!(count_logs(&d, &["agent command"]), 0);
}

#[tokio::test]
async fn malformed_reply_is_a_failed_beat_and_applies_nothing() {
    let hub = FakeHub::start();
    hub.control(json!({"mode": "garbage"})).await;
    let d = start_daemon(&hub, "", None).await;
    let c = db(&d);
    let seq = seed_usage(&c, "run-x", 3, None);
    hub.wait_until("garbage beats with usage", Duration::from_secs(10), |b| {
        b.iter().filter(|x| entry_seqs(x) == vec![seq]).count() >= 2
    })
    .await;
    wait_logs(
        &d,
        &["heartbeat failed", "malformed reply"],
        1,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(unreported_seqs(&c), vec![seq]);
    let m = metrics(&d).await;
    assert!(
        metric(
            &m,
            "hermes_tenantd_hub_heartbeats_failed_total{reason=\"malformed\"}"
        )
        .unwrap_or(0.0)
            >= 2.0
    );

    hub.control(json!({"mode": "ack"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !unreported_seqs(&c).is_empty() {
        assert!(Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ack_beyond_the_beat_is_clamped() {
    let hub = FakeHub::start();
    // The hub acknowledges far ahead, but only what a beat carried is marked.
    hub.control(json!({"mode": "hang", "hang_s": 30})).await;
    let d = start_daemon(&hub, "usage_batch = 2\n", None).await;
    let c = db(&d);
    let seeded: Vec<i64> = (0..5)
        .map(|i| seed_usage(&c, &format!("r{i}"), 1, None))
        .collect();
    hub.wait_until("a beat with a full batch", Duration::from_secs(10), |b| {
        b.iter().any(|x| entry_seqs(x).len() == 2)
    })
    .await;
    let beats = hub.beats().await;
    let full = beats
        .iter()
        .find(|x| entry_seqs(x).len() == 2)
        .expect("beat");
    assert_eq!(full["body"]["usage"]["more"], true);
    hub.control(json!({"mode": "ack", "ack_seq": 1_000_000}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !unreported_seqs(&c).is_empty() {
        assert!(Instant::now() < deadline, "never fully acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let beats = hub.beats().await;
    let acked: Vec<Vec<i64>> = beats
        .iter()
        .filter(|b| b["mode"] == "ack")
        .map(entry_seqs)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        acked,
        vec![
            seeded[0..2].to_vec(),
            seeded[2..4].to_vec(),
            seeded[4..5].to_vec()
        ]
    );
    assert!(unreported_seqs(&c).is_empty());
    drop(d);
}

#[tokio::test]
async fn clock_skew_and_interval_override_are_applied() {
    let hub = FakeHub::start();
    let d = start_daemon(&hub, "", None).await;
    hub.wait_beats(2, Duration::from_secs(5)).await;
    assert_eq!(hub.beats().await[1]["body"]["clock"]["warning"], false);

    hub.control(json!({"now_offset_s": 3600})).await;
    wait_logs(
        &d,
        &["clock skew with the hub beyond the threshold"],
        1,
        Duration::from_secs(5),
    )
    .await;
    let beats = hub
        .wait_until("a beat reporting the skew", Duration::from_secs(5), |b| {
            b.last()
                .is_some_and(|x| x["body"]["clock"]["warning"] == true)
        })
        .await;
    let skew = beats.last().expect("beat")["body"]["clock"]["skew_s"]
        .as_f64()
        .expect("skew");
    assert!((3595.0..3605.0).contains(&skew), "{skew}");
    let m = metrics(&d).await;
    assert_eq!(
        metric(&m, "hermes_tenantd_hub_clock_skew_warning"),
        Some(1.0)
    );
    assert!(metric(&m, "hermes_tenantd_hub_clock_skew_seconds").unwrap_or(0.0) > 3500.0);

    hub.control(json!({"now_offset_s": 0, "interval_s": 0.6}))
        .await;
    wait_logs(
        &d,
        &["the hub changed the heartbeat interval"],
        1,
        Duration::from_secs(5),
    )
    .await;
    wait_logs(
        &d,
        &["back within the threshold"],
        1,
        Duration::from_secs(5),
    )
    .await;
    let before = hub.beats().await.len();
    let beats = hub.wait_beats(before + 4, Duration::from_secs(10)).await;
    let mut g = gaps(&beats[before..]);
    g.sort_by(|a, b| a.total_cmp(b));
    let median = g[g.len() / 2];
    assert!(
        (0.54..0.75).contains(&median) && g[0] > 0.35,
        "gaps with a 0.6 s override: {g:?}"
    );
    assert_eq!(
        beats.last().expect("beat")["body"]["link"]["interval_s"],
        0.6
    );
}

#[tokio::test]
async fn usage_endpoint_sums_the_period() {
    let d = TestDaemon::start().await;
    let c = db(&d);
    let ms = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("time")
            .timestamp_millis()
    };
    seed_usage(&c, "oct-1", 100, Some(ms("2026-10-05T10:00:00Z")));
    seed_usage(&c, "oct-2", 50, Some(ms("2026-10-31T23:59:59Z")));
    seed_usage(&c, "nov-1", 7, Some(ms("2026-11-01T00:00:00Z")));
    c.execute(
        "INSERT INTO agent_uptime_hours (hour_start, running_ms) VALUES (?1, 1800000), (?2, 3600000)",
        [ms("2026-10-05T10:00:00Z"), ms("2026-11-02T00:00:00Z")],
    )
    .expect("seed uptime");

    let oct: Value = d.get_json("/usage?period=2026-10").await;
    assert_eq!(oct["period"], "2026-10");
    assert_eq!(oct["from"], "2026-10-01T00:00:00.000Z");
    assert_eq!(oct["to"], "2026-11-01T00:00:00.000Z");
    assert_eq!(oct["tokens_in"], 150);
    assert_eq!(oct["tokens_out"], 300);
    assert_eq!(oct["tool_calls"], 4);
    assert_eq!(oct["runs"], 2);
    assert_eq!(oct["agent_uptime_s"], 1800);
    assert_eq!(oct["unreported"], 2);
    assert_eq!(oct["tenant_id"], TENANT);

    let range: Value = d
        .get_json("/usage?from=2026-10-31&to=2026-11-03T00:00:00Z")
        .await;
    assert_eq!(range["period"], Value::Null);
    assert_eq!(range["runs"], 2);
    assert_eq!(range["tokens_in"], 57);
    assert_eq!(range["agent_uptime_s"], 3600);

    let now: Value = d.get_json("/usage").await;
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    assert_eq!(now["period"], month);

    for q in [
        "?period=2026-13",
        "?period=2026-10&from=2026-10-01",
        "?to=2026-10-01",
        "?from=soon",
        "?bogus=1",
    ] {
        expect_problem(
            d.get(&format!("/usage{q}")).send().await.expect("send"),
            400,
            "invalid_argument",
        )
        .await;
    }
    let r = d
        .client
        .get(d.tenant_url("/usage"))
        .send()
        .await
        .expect("send");
    expect_problem(r, 401, "unauthenticated").await;
}

#[tokio::test]
async fn https_hub_is_trusted_through_the_ca_file_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let (cert_path, key_path) = (dir.path().join("hub.crt"), dir.path().join("hub.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    write_private(&key_path, &key.serialize_pem());
    let hub = FakeHub::start_tls(&cert_path, &key_path);
    let https = |ca: &str| {
        format!(
            "[hub]\nurl = \"https://127.0.0.1:{}\"\nheartbeat_interval = \"200ms\"\nrequest_timeout = \"2s\"\nbackoff_max = \"400ms\"\n{ca}\n",
            hub.port
        )
    };

    // Not in the system roots: the handshake fails, no beat reaches the hub.
    let untrusted = TestDaemon::start_with(Options {
        config_extra: https(""),
        ..Default::default()
    })
    .await;
    wait_logs(
        &untrusted,
        &["heartbeat failed", "connect"],
        2,
        Duration::from_secs(10),
    )
    .await;
    assert!(hub.beats().await.is_empty());
    drop(untrusted);

    // With hub.ca_file the same hub is trusted.
    let d = TestDaemon::start_with(Options {
        config_extra: https(&format!("ca_file = \"{}\"", cert_path.display())),
        ..Default::default()
    })
    .await;
    let beats = hub.wait_beats(3, Duration::from_secs(10)).await;
    assert_eq!(beats[0]["auth"], format!("Bearer {TOKEN}"));
    let m = metrics(&d).await;
    assert_eq!(
        metric(&m, "hermes_tenantd_hub_heartbeat_consecutive_failures"),
        Some(0.0),
        "{m}"
    );

    // A CA file without a certificate stops the start, naming the key.
    let bad = dir.path().join("empty.pem");
    std::fs::write(&bad, "not a certificate\n").expect("write");
    let cred = dir.path().join("credential");
    write_private(&cred, TOKEN);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"t\"\ndata_dir = \"{}\"\n[listen]\naddr = \"127.0.0.1:0\"\n[auth]\ncredential_file = \"{}\"\n{}",
            dir.path().join("data").display(),
            cred.display(),
            https(&format!("ca_file = \"{}\"", bad.display()))
        ),
    )
    .expect("config");
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hub.ca_file"), "{err}");
}
