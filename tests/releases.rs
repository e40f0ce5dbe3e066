//! Agent releases against the real binary: fake releases are
//! virtualenv-shaped directories (`bin/hermes`, `bin/python`) whose `hermes`
//! runs `tests/fake_gateway.py` in a mode (good, fails health, exits 78,
//! crashes after N s); installs use a wheel built here
//! (`tests/make_release_wheel.py`) from a local `--find-links` directory.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::hub::FakeHub;
use common::*;
use serde_json::{Value, json};

/// How a fake release's gateway behaves.
enum Mode {
    Good,
    FailsHealth,
    Exits78,
    CrashesAfter(f64),
    /// Healthy, capabilities answered, but every run ends `run.failed`.
    FailsRuns,
}

fn releases_dir(w: &GatewayWorld) -> PathBuf {
    w.dir.join("data/releases")
}

/// `releases/<version>/bin/{hermes,python}`, as the role or an install
/// leaves it.
fn fake_release(w: &GatewayWorld, version: &str, mode: Mode) {
    let bin = releases_dir(w).join(version).join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let env = match mode {
        Mode::Good => String::new(),
        Mode::FailsHealth => "export FAKE_GW_NEVER_READY=1\n".into(),
        // Never opens the port: a fake that served for its 10 ms could
        // pass the gate before its exit (the port check takes ~35 µs).
        Mode::Exits78 => {
            "export FAKE_GW_NO_LISTEN=1 FAKE_GW_EXIT_AFTER=0.01 FAKE_GW_EXIT_CODE=78\n".into()
        }
        Mode::CrashesAfter(s) => format!("export FAKE_GW_EXIT_AFTER={s} FAKE_GW_EXIT_CODE=1\n"),
        Mode::FailsRuns => "export FAKE_GW_RUNS_FAIL=1\n".into(),
    };
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then echo \"Hermes Agent v{version}\"; exit 0; fi\nexport FAKE_GW_VERSION={version}\n{env}exec {py} {gw}\n",
        py = python(),
        gw = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_gateway.py"),
    );
    std::fs::write(bin.join("hermes"), script).unwrap();
    std::fs::set_permissions(bin.join("hermes"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::os::unix::fs::symlink(python(), bin.join("python"));
}

/// `[hub]` for a daemon beating every 200 ms to `hub`.
fn hub_section(hub: &FakeHub) -> String {
    format!(
        "[hub]\nurl = \"http://127.0.0.1:{}\"\nheartbeat_interval = \"200ms\"\nrequest_timeout = \"1s\"\nbackoff_max = \"1600ms\"\n",
        hub.port
    )
}

fn world(extra: &str) -> GatewayWorld {
    let mut w = GatewayWorld::new();
    w.extra = format!(
        "[releases]\ngate_timeout = \"8s\"\nwatch_window = \"60s\"\nquarantine_after = 2\nextra_packages = []\nmin_free_bytes = 1\n{extra}\n"
    );
    w
}

async fn list(d: &TestDaemon) -> Vec<Value> {
    let v = d.get_json("/agent/releases").await;
    v["releases"].as_array().cloned().unwrap_or_default()
}

fn find<'a>(l: &'a [Value], version: &str) -> Option<&'a Value> {
    l.iter().find(|r| r["version"] == version)
}

/// Poll until `version` is in `state`; returns the release.
async fn wait_release(d: &TestDaemon, version: &str, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let l = list(d).await;
        if let Some(r) = find(&l, version) {
            if r["state"] == state {
                return r.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "release {version} never reached {state}: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll until the gateway runs and reports `version` on /health.
async fn wait_running_release(d: &TestDaemon, version: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = d.get_json("/agent").await;
        if a["state"] == "running" && a["release"] == version {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never ran release {version}: {a}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn activate(d: &TestDaemon, version: &str) -> reqwest::Response {
    d.post(&format!("/agent/releases/{version}/activate"))
        .send()
        .await
        .unwrap()
}

/// Activate `version` (202) and wait until it is in `state`.
async fn activate_until(d: &TestDaemon, version: &str, state: &str) -> Value {
    assert_eq!(activate(d, version).await.status(), 202);
    wait_release(d, version, state, Duration::from_secs(60)).await
}

fn current(w: &GatewayWorld) -> Option<String> {
    std::fs::read_link(releases_dir(w).join("current"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The one active release agrees with the pointer and the gateway.
async fn assert_consistent(d: &TestDaemon, w: &GatewayWorld, version: &str) {
    wait_running_release(d, version).await;
    let l = list(d).await;
    let active: Vec<&Value> = l.iter().filter(|r| r["state"] == "active").collect();
    assert_eq!(active.len(), 1, "exactly one active release: {l:?}");
    assert_eq!(active[0]["version"], version, "{l:?}");
    assert_eq!(current(w).as_deref(), Some(version));
}

#[tokio::test]
async fn gate_failure_rolls_back_and_quarantines_after_two() {
    let w = world("keep = 10");
    fake_release(&w, "1.0.0", Mode::Good);
    fake_release(&w, "2.0.0", Mode::FailsHealth);
    fake_release(&w, "3.0.0", Mode::Exits78);
    let d = w.daemon().await;
    // No release active yet: gateway.command runs (the fake's default version).
    wait_running_release(&d, "0.19.0-fake").await;
    let l = list(&d).await;
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        assert_eq!(find(&l, v).expect(v)["state"], "ready", "{l:?}");
    }

    activate_until(&d, "1.0.0", "active").await;
    assert_consistent(&d, &w, "1.0.0").await;

    // /health never answers: the gate times out, 1.0.0 comes back.
    let r = activate_until(&d, "2.0.0", "failed").await;
    assert!(
        r["last_error"].as_str().unwrap().contains("health gate"),
        "{r}"
    );
    assert_eq!(r["gate_failures"], 1);
    assert_consistent(&d, &w, "1.0.0").await;

    // Exits 78 at once: failed without waiting for the timeout.
    let r = activate_until(&d, "3.0.0", "failed").await;
    assert!(r["last_error"].as_str().unwrap().contains("78"), "{r}");
    assert_consistent(&d, &w, "1.0.0").await;

    // A second failure quarantines; a quarantined release is refused.
    activate_until(&d, "2.0.0", "quarantined").await;
    assert_consistent(&d, &w, "1.0.0").await;
    expect_problem(activate(&d, "2.0.0").await, 409, "conflict").await;

    // The active release cannot be deleted; the quarantined one can.
    let resp = d.delete("/agent/releases/1.0.0").send().await.unwrap();
    expect_problem(resp, 409, "conflict").await;
    let resp = d.delete("/agent/releases/2.0.0").send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(find(&list(&d).await, "2.0.0").is_none());
    assert!(!releases_dir(&w).join("2.0.0").exists());
    let resp = d.delete("/agent/releases/2.0.0").send().await.unwrap();
    expect_problem(resp, 404, "not_found").await;
    // A release the role put in the directory after start: known at once, no pip.
    fake_release(&w, "4.0.0", Mode::Good);
    let resp = d
        .post("/agent/releases")
        .json(&json!({"version": "4.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.json::<Value>().await.unwrap()["state"], "ready");
    // Bad input is refused whole.
    expect_problem(activate(&d, "..%2Fetc").await, 400, "invalid_argument").await;
    let resp = d
        .post("/agent/releases")
        .json(&json!({"version": "1.0.0", "sha256": "XYZ"}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400, "invalid_argument").await;
}

/// With `releases.smoke_input`, the gate also asks the new release for a
/// run: one that serves health but fails runs is rolled back, one that
/// completes it becomes active.
#[tokio::test]
async fn a_release_that_fails_the_smoke_run_is_rolled_back() {
    let w = world("keep = 10\nsmoke_input = \"say hello\"\nsmoke_timeout = \"20s\"");
    fake_release(&w, "1.0.0", Mode::Good);
    fake_release(&w, "2.0.0", Mode::FailsRuns);
    let d = w.daemon().await;
    wait_running_release(&d, "0.19.0-fake").await;

    activate_until(&d, "1.0.0", "active").await;
    assert_consistent(&d, &w, "1.0.0").await;

    // Healthy and answers its capabilities, so only the run tells.
    let r = activate_until(&d, "2.0.0", "failed").await;
    assert!(
        r["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("smoke run ended run.failed")),
        "{r}"
    );
    assert_consistent(&d, &w, "1.0.0").await;
    assert_eq!(current(&w).as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn crash_loop_within_the_watch_window_rolls_back() {
    let mut w = world("keep = 10");
    w.env.push((
        "HERMES_TENANTD_GATEWAY__CRASH_LOOP_COUNT".into(),
        "2".into(),
    ));
    fake_release(&w, "1.0.0", Mode::Good);
    fake_release(&w, "2.0.0", Mode::CrashesAfter(4.0));
    let d = w.daemon().await;
    activate_until(&d, "1.0.0", "active").await;
    assert_eq!(activate(&d, "2.0.0").await.status(), 202);
    // It passes its gate (healthy for 4 s), then crash-loops.
    wait_release(&d, "2.0.0", "active", Duration::from_secs(60)).await;
    let r = wait_release(&d, "2.0.0", "failed", Duration::from_secs(90)).await;
    assert!(
        r["last_error"].as_str().unwrap().contains("crash loop"),
        "{r}"
    );
    assert_consistent(&d, &w, "1.0.0").await;
}

/// `true` once the process is gone (or a zombie).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_dead(d: &TestDaemon) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dead(d.pid()) {
        assert!(
            Instant::now() < deadline,
            "the daemon did not die at its kill point"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn kill_at_every_step_of_a_switch_leaves_a_healthy_release() {
    let mut w = world("keep = 10");
    fake_release(&w, "1.0.0", Mode::Good);
    fake_release(&w, "2.0.0", Mode::Good);
    fake_release(&w, "9.0.0", Mode::Exits78);
    {
        let d = w.daemon().await;
        assert_eq!(activate(&d, "1.0.0").await.status(), 202);
        wait_release(&d, "1.0.0", "active", Duration::from_secs(60)).await;
    }
    let mut active = "1.0.0".to_owned();
    // (step, target, the target survives the kill as the active release)
    let steps = [
        ("switch_recorded", "good", false),
        ("pointer_switched", "good", false),
        ("gateway_restarted", "good", false),
        ("gate_passed", "good", false),
        ("activation_recorded", "good", true),
        ("failure_recorded", "bad", false),
        ("pointer_restored", "bad", false),
    ];
    for (step, kind, survives) in steps {
        let target = match kind {
            "bad" => "9.0.0".to_owned(),
            _ if active == "1.0.0" => "2.0.0".to_owned(),
            _ => "1.0.0".to_owned(),
        };
        w.env.retain(|(k, _)| k != "TENANTD_TEST_KILL_AT");
        w.env.push(("TENANTD_TEST_KILL_AT".into(), step.into()));
        let mut d = w.daemon().await;
        wait_running_release(&d, &active).await;
        assert_eq!(activate(&d, &target).await.status(), 202, "{step}");
        wait_dead(&d).await;
        d.kill();
        drop(d);

        w.env.retain(|(k, _)| k != "TENANTD_TEST_KILL_AT");
        let d = w.daemon().await;
        let expected = if survives {
            target.clone()
        } else {
            active.clone()
        };
        assert_consistent(&d, &w, &expected).await;
        if kind == "bad" {
            let l = list(&d).await;
            let st = &find(&l, "9.0.0").expect("9.0.0")["state"];
            assert!(st == "failed" || st == "quarantined", "{step}: {l:?}");
        } else if !survives {
            let l = list(&d).await;
            assert_eq!(
                find(&l, &target).expect("target")["state"],
                "ready",
                "{step}: {l:?}"
            );
        }
        active = expected;
    }
}

#[tokio::test]
async fn the_hub_desired_release_is_activated_and_a_quarantined_one_not_retried() {
    let hub = FakeHub::start();
    let mut w = world("keep = 10");
    w.extra = w
        .extra
        .replace("quarantine_after = 2", "quarantine_after = 1");
    w.extra.push_str(&hub_section(&hub));
    fake_release(&w, "1.0.0", Mode::Good);
    fake_release(&w, "9.0.0", Mode::Exits78);
    let d = w.daemon().await;
    wait_running_release(&d, "0.19.0-fake").await;
    hub.control(json!({"desired": {"agent_release": "1.0.0"}}))
        .await;
    wait_release(&d, "1.0.0", "active", Duration::from_secs(60)).await;
    assert_consistent(&d, &w, "1.0.0").await;
    hub.wait_until(
        "the active release reported",
        Duration::from_secs(20),
        |b| {
            b.last().is_some_and(|x| {
                x["body"]["releases"]["active"] == "1.0.0"
                    && x["body"]["releases"]["desired"] == "1.0.0"
            })
        },
    )
    .await;

    hub.control(json!({"desired": {"agent_release": "9.0.0"}}))
        .await;
    let r = wait_release(&d, "9.0.0", "quarantined", Duration::from_secs(60)).await;
    assert_eq!(r["gate_failures"], 1);
    assert_consistent(&d, &w, "1.0.0").await;
    let seen = hub
        .wait_until("the quarantine reported", Duration::from_secs(20), |b| {
            b.last().is_some_and(|x| {
                x["body"]["releases"]["items"].as_array().is_some_and(|i| {
                    i.iter()
                        .any(|r| r["version"] == "9.0.0" && r["state"] == "quarantined")
                })
            })
        })
        .await
        .len();
    // The hub keeps asking; the daemon does not try again.
    hub.wait_beats(seen + 10, Duration::from_secs(30)).await;
    let l = list(&d).await;
    assert_eq!(find(&l, "9.0.0").unwrap()["gate_failures"], 1, "{l:?}");
    assert_consistent(&d, &w, "1.0.0").await;
}

fn build_wheel(dir: &Path, version: &str, extra: &[&str]) {
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/make_release_wheel.py"
        ))
        .arg(dir)
        .arg(version)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn sha256_hex(p: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

async fn install(d: &TestDaemon, body: Value) -> reqwest::Response {
    d.post("/agent/releases").json(&body).send().await.unwrap()
}

#[tokio::test]
async fn install_from_find_links_verifies_publishes_and_prunes() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    for v in ["1.0.0", "2.0.0", "5.0.0"] {
        build_wheel(&wheels, v, &[]);
    }
    build_wheel(&wheels, "3.0.0", &["--wrong-version"]);
    let w = world(&format!(
        "find_links = \"{}\"\nkeep = 2\ninstall_timeout = \"5m\"",
        wheels.display()
    ));
    let d = w.daemon().await;
    let long = Duration::from_secs(240);

    let resp = install(&d, json!({"version": "1.0.0"})).await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["state"], "installing");
    // Idempotent while installing.
    assert_eq!(install(&d, json!({"version": "1.0.0"})).await.status(), 202);
    let r = wait_release(&d, "1.0.0", "ready", long).await;
    assert!(
        r["size"].as_u64().unwrap() > 0 && r["installed_at"].is_string(),
        "{r}"
    );
    activate_until(&d, "1.0.0", "active").await;
    assert_consistent(&d, &w, "1.0.0").await;

    // A pinned hash that does not match: failed, nothing visible.
    let resp = install(&d, json!({"version": "2.0.0", "sha256": "0".repeat(64)})).await;
    assert_eq!(resp.status(), 202);
    let r = wait_release(&d, "2.0.0", "failed", long).await;
    assert!(
        r["last_error"]
            .as_str()
            .unwrap()
            .contains("sha256 mismatch"),
        "{r}"
    );
    assert!(
        !r["last_error"]
            .as_str()
            .unwrap()
            .contains(&*w.dir.display().to_string())
    );
    assert!(!releases_dir(&w).join("2.0.0").exists());
    // The right hash: installed.
    let sha = sha256_hex(&wheels.join("hermes_agent-2.0.0-py3-none-any.whl"));
    assert_eq!(
        install(&d, json!({"version": "2.0.0", "sha256": sha}))
            .await
            .status(),
        202
    );
    wait_release(&d, "2.0.0", "ready", long).await;

    // `hermes --version` says another version: never published.
    assert_eq!(install(&d, json!({"version": "3.0.0"})).await.status(), 202);
    let r = wait_release(&d, "3.0.0", "failed", long).await;
    assert!(
        r["last_error"].as_str().unwrap().contains("--version"),
        "{r}"
    );
    assert!(!releases_dir(&w).join("3.0.0").exists());

    // keep = 2: after 2.0.0 then 5.0.0 are active, 1.0.0 (neither current
    // nor previous) is pruned; the previous one stays for a rollback.
    activate_until(&d, "2.0.0", "active").await;
    assert_eq!(install(&d, json!({"version": "5.0.0"})).await.status(), 202);
    wait_release(&d, "5.0.0", "ready", long).await;
    assert!(releases_dir(&w).join("1.0.0").exists(), "previous kept");
    activate_until(&d, "5.0.0", "active").await;
    assert_consistent(&d, &w, "5.0.0").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while find(&list(&d).await, "1.0.0").is_some() {
        assert!(Instant::now() < deadline, "1.0.0 never pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!releases_dir(&w).join("1.0.0").exists());
    assert!(releases_dir(&w).join("2.0.0").exists(), "previous kept");
    // Nothing a build left behind.
    let store: Vec<_> = std::fs::read_dir(releases_dir(&w).join(".store"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(store.len(), 2, "{store:?}");
}

#[tokio::test]
async fn a_kill_during_install_leaves_nothing_half_built() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    build_wheel(&wheels, "1.0.0", &[]);
    let w = world(&format!("find_links = \"{}\"", wheels.display()));
    let mut d = w.daemon().await;
    assert_eq!(install(&d, json!({"version": "1.0.0"})).await.status(), 202);
    // Mid-build (venv + pip take seconds): the staging directory exists.
    let store = releases_dir(&w).join(".store");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&store).map(|r| r.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no build started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.kill();
    drop(d);
    let d = w.daemon().await;
    let r = wait_release(&d, "1.0.0", "failed", Duration::from_secs(30)).await;
    assert!(
        r["last_error"].as_str().unwrap().contains("interrupted"),
        "{r}"
    );
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0);
    assert!(!releases_dir(&w).join("1.0.0").exists());
    // The gateway still runs what it ran before (no release: gateway.command).
    wait_running_release(&d, "0.19.0-fake").await;
    // POST again: installed this time.
    assert_eq!(install(&d, json!({"version": "1.0.0"})).await.status(), 202);
    wait_release(&d, "1.0.0", "ready", Duration::from_secs(240)).await;
}

#[tokio::test]
async fn a_desired_release_not_on_the_vm_is_installed_then_activated() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    build_wheel(&wheels, "1.2.0", &[]);
    let hub = FakeHub::start();
    let mut w = world(&format!("find_links = \"{}\"", wheels.display()));
    w.extra.push_str(&hub_section(&hub));
    let d = w.daemon().await;
    wait_running_release(&d, "0.19.0-fake").await;
    hub.control(json!({"desired": {"agent_release": "1.2.0"}}))
        .await;
    // Reported while it installs, then active behind the gate.
    wait_release(&d, "1.2.0", "active", Duration::from_secs(240)).await;
    assert_consistent(&d, &w, "1.2.0").await;
    hub.wait_until(
        "the installed release reported active",
        Duration::from_secs(20),
        |b| {
            b.last()
                .is_some_and(|x| x["body"]["releases"]["active"] == "1.2.0")
        },
    )
    .await;
}

#[tokio::test]
async fn a_kill_right_after_an_install_is_published_keeps_the_release() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    build_wheel(&wheels, "1.0.0", &[]);
    let mut w = world(&format!("find_links = \"{}\"", wheels.display()));
    w.env
        .push(("TENANTD_TEST_KILL_AT".into(), "install_published".into()));
    let mut d = w.daemon().await;
    assert_eq!(install(&d, json!({"version": "1.0.0"})).await.status(), 202);
    wait_dead(&d).await;
    d.kill();
    drop(d);
    w.env.clear();
    let d = w.daemon().await;
    // Visible on disk before the kill, its row still said `installing`.
    let r = wait_release(&d, "1.0.0", "ready", Duration::from_secs(30)).await;
    assert!(
        r["installed_at"].is_string() && r["size"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert!(releases_dir(&w).join("1.0.0/bin/hermes").exists());
    activate_until(&d, "1.0.0", "active").await;
    assert_consistent(&d, &w, "1.0.0").await;
}
