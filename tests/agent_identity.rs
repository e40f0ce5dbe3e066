//! The agent under its own identity (`gateway.user`, `gateway.group`): the
//! gateway runs as that user with no capability and no way to regain one,
//! cannot reach the daemon's state, and the daemon touches the agent's files
//! as the agent. Needs root to switch users (CI runs as root); elsewhere each
//! test prints why it is skipped. The production shape (an unprivileged
//! daemon with ambient capabilities, cgroups) is tested under systemd in
//! tests/deploy.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::GatewayWorld;

/// An id no account uses here: the test needs no entry in the user database.
const AGENT_ID: u32 = 64_123;
/// The daemon's own unprivileged id in the production-shape test.
const DAEMON_ID: u32 = 64_124;
/// A Python every user can execute (the test runner's may live under /root).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to run the gateway as another user");
    }
    if !Path::new(SYSTEM_PYTHON).exists() {
        return Some("needs /usr/bin/python3 (executable by the agent's user)");
    }
    None
}

/// A world whose gateway runs as `AGENT_ID` and owns its home.
fn world() -> GatewayWorld {
    let mut w = GatewayWorld::new();
    // The agent must reach its home under the (root-only) temp dir.
    std::fs::set_permissions(&w.dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    std::fs::create_dir_all(w.home()).expect("home");
    std::os::unix::fs::chown(w.home(), Some(AGENT_ID), Some(AGENT_ID)).expect("chown home");
    let managed = w.dir.join("managed");
    w.extra = format!(
        "user = \"{AGENT_ID}\"\ngroup = \"{AGENT_ID}\"\nmanaged_dir = \"{}\"\n",
        managed.display()
    );
    w
}

fn config_with_system_python(w: &GatewayWorld) -> String {
    w.config().replacen(&common::python(), SYSTEM_PYTHON, 1)
}

async fn daemon(w: &GatewayWorld) -> common::TestDaemon {
    common::TestDaemon::start_with(common::Options {
        config_extra: config_with_system_python(w),
        env: w.env.clone(),
        dir: Some(w.dir.clone()),
    })
    .await
}

fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or("")
}

/// Run `python3 -c code` as the agent's user; `true` when it exits 0.
fn as_agent_succeeds(code: &str) -> bool {
    // setpriv (util-linux) clears the supplementary groups before the
    // switch; std's Command cannot (setgroups is unstable).
    std::process::Command::new("setpriv")
        .arg(format!("--reuid={AGENT_ID}"))
        .arg(format!("--regid={AGENT_ID}"))
        .args(["--clear-groups", "--", SYSTEM_PYTHON, "-c", code])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn gateway_runs_as_its_own_user_without_capabilities() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let w = world();
    let d = daemon(&w).await;
    let agent = w.wait_agent(&d, "running").await;
    let pid = agent["pid"].as_u64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let ids = format!("{AGENT_ID}\t{AGENT_ID}\t{AGENT_ID}\t{AGENT_ID}");
    assert_eq!(status_field(&status, "Uid:"), ids, "{status}");
    assert_eq!(status_field(&status, "Gid:"), ids, "{status}");
    assert_eq!(status_field(&status, "Groups:"), AGENT_ID.to_string());
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, cap),
            "0000000000000000",
            "{cap} {status}"
        );
    }
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
    // HOME is not the daemon's (no passwd entry for the id: not set to root's).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        !environ.split(|b| *b == 0).any(|e| e == b"HOME=/root"),
        "the gateway inherited the daemon's HOME"
    );
    // The working directory is the agent's home.
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(cwd, std::fs::canonicalize(w.home()).expect("canon"));
}

#[tokio::test]
async fn the_agent_cannot_reach_the_daemons_state_and_reads_its_managed_scope() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let w = world();
    let d = daemon(&w).await;
    w.wait_agent(&d, "running").await;
    let data = d.dir.join("data");
    let db = data.join("tenantd.db");
    let key = data.join("gateway_api_key");
    let cred = d.dir.join("credential");
    assert!(db.exists() && key.exists() && cred.exists());
    for path in [&db, &key, &cred] {
        let code = format!("open({:?}, 'rb').read(1)", path.display().to_string());
        assert!(
            !as_agent_succeeds(&code),
            "the agent could read {}",
            path.display()
        );
    }
    let code = format!(
        "import sqlite3; sqlite3.connect('file:{}?mode=rw', uri=True).execute('delete from usage_ledger').connection.commit()",
        db.display()
    );
    assert!(!as_agent_succeeds(&code), "the agent opened the database");
    // The managed scope: readable by the agent (that is how the gateway
    // learns its key and port), not writable (that is what makes it managed).
    let managed_env = w.dir.join("managed").join(".env");
    let meta = std::fs::metadata(&managed_env).expect("managed .env");
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), AGENT_ID);
    let read = format!(
        "assert 'API_SERVER_KEY' in open({:?}).read()",
        managed_env.display().to_string()
    );
    assert!(
        as_agent_succeeds(&read),
        "the agent cannot read its managed scope"
    );
    let write = format!(
        "open({:?}, 'a').write('X=1')",
        managed_env.display().to_string()
    );
    assert!(
        !as_agent_succeeds(&write),
        "the agent could write its managed scope"
    );
}

#[tokio::test]
async fn the_daemon_writes_the_agents_files_as_the_agent() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let w = world();
    let d = daemon(&w).await;
    w.wait_agent(&d, "running").await;
    // Closed to everyone but its owner: the daemon must act as the agent.
    std::fs::set_permissions(w.home(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let resp = d
        .put("/env/IDENTITY_TEST_KEY")
        .json(&serde_json::json!({"value": "v"}))
        .send()
        .await
        .expect("PUT env");
    assert!(
        resp.status().is_success(),
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let env = std::fs::metadata(w.home().join(".env")).expect(".env written");
    assert_eq!(
        (env.uid(), env.gid()),
        (AGENT_ID, AGENT_ID),
        "owned by the agent"
    );
    // A planned stop writes its marker in the home, as the agent: the fake
    // gateway sees it (events.log says planned=true) and the restart works.
    let before = w.wait_agent(&d, "running").await["pid"].as_u64();
    let resp = d.post("/agent/restart").send().await.expect("restart");
    assert!(resp.status().is_success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = w.wait_agent(&d, "running").await;
        if a["pid"].as_u64() != before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no new gateway: {a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = std::fs::read_to_string(w.home().join("fake_gateway").join("events.log"))
        .expect("events.log");
    assert!(events.contains("planned=true"), "{events}");
}

fn write_owned(path: &Path, text: &str, owner: u32) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(path, Some(owner), Some(owner)).expect("chown");
}

fn skill_dir(home: &Path, name: &str) -> std::path::PathBuf {
    let dir = home.join("skills").join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for d in [home.join("skills"), dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::os::unix::fs::chown(&d, Some(AGENT_ID), Some(AGENT_ID)).expect("chown");
    }
    dir
}

fn skill_md(name: &str) -> String {
    format!("---\nname: {name}\ndescription: a skill\n---\n# {name}\n")
}

async fn skill_names(d: &common::TestDaemon) -> Vec<String> {
    let v = d.get_json("/skills").await;
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_skills_index_reads_and_watches_the_tree_as_the_agent() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut w = world();
    w.extra.push_str("\n[skills]\ndebounce = \"100ms\"\n");
    let home = w.home();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    write_owned(
        &skill_dir(&home, "mine").join("SKILL.md"),
        &skill_md("mine"),
        AGENT_ID,
    );
    // Readable by the daemon's own user (root here), not by the agent: a
    // daemon acting as itself would index it.
    write_owned(
        &skill_dir(&home, "foreign").join("SKILL.md"),
        &skill_md("foreign"),
        AGENT_ID + 1,
    );
    let d = daemon(&w).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !skill_names(&d).await.contains(&"mine".to_owned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's skill was never indexed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Listed by its directory (as an unreadable skill is), never read.
    let v = d.get_json("/skills").await;
    let foreign = v["items"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["path"] == "foreign"))
        .cloned()
        .unwrap_or_default();
    assert!(
        foreign["description"] != "a skill" && foreign["error"].is_string(),
        "a file the agent cannot read was read: the scan did not run as the agent: {foreign}"
    );
    // Far below the 5 min rescan: seen through the watch the agent's
    // identity set up.
    write_owned(
        &skill_dir(&home, "later").join("SKILL.md"),
        &skill_md("later"),
        AGENT_ID,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !skill_names(&d).await.contains(&"later".to_owned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "a new skill was not seen by the watcher"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The production shape: an unprivileged daemon holding only the ambient
/// capabilities the unit gives it (CAP_SETUID, CAP_SETGID, CAP_KILL), a
/// member of the agent's group, supervising a gateway of another user.
/// The gateway must reach `running`: the daemon verifies who holds the
/// gateway port by reading the agent's /proc as the agent. (A nested
/// `as_agent` used to restore the daemon's ids half-way through that check,
/// so under systemd the agent never became `running`; as root the daemon's
/// CAP_SYS_PTRACE hid it.)
#[tokio::test]
async fn an_unprivileged_daemon_with_ambient_capabilities_runs_the_agent() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: needs setpriv (util-linux)");
        return;
    }
    let w = world();
    let data = w.dir.join("data");
    let managed = w.dir.join("managed");
    for dir in [&data, &managed] {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::os::unix::fs::chown(dir, Some(DAEMON_ID), Some(DAEMON_ID)).expect("chown");
    }
    let cred = w.dir.join("credential");
    common::write_private(&cred, common::TOKEN);
    std::os::unix::fs::chown(&cred, Some(DAEMON_ID), Some(DAEMON_ID)).expect("chown");
    let wrapper: Vec<String> = [
        "setpriv".to_string(),
        format!("--reuid={DAEMON_ID}"),
        format!("--regid={DAEMON_ID}"),
        format!("--groups={AGENT_ID}"),
        "--inh-caps=+setuid,+setgid,+kill".into(),
        "--ambient-caps=+setuid,+setgid,+kill".into(),
    ]
    .into();
    let d = common::TestDaemon::start_wrapped(
        common::Options {
            config_extra: config_with_system_python(&w),
            env: w.env.clone(),
            dir: Some(w.dir.clone()),
        },
        &wrapper,
    )
    .await;
    let daemon = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("status");
    assert_eq!(
        status_field(&daemon, "Uid:").split('\t').next(),
        Some("64124")
    );
    assert_eq!(status_field(&daemon, "CapEff:"), "00000000000000e0");
    let agent = w.wait_agent(&d, "running").await;
    let pid = agent["pid"].as_u64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(
        status_field(&status, "Uid:").split('\t').next(),
        Some("64123")
    );
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, cap),
            "0000000000000000",
            "{cap} {status}"
        );
    }
    let logs = d.logs();
    assert!(
        !logs.iter().any(|l| l.contains("not held by the gateway")),
        "the port check refused the daemon's own gateway:\n{}",
        logs.join("\n")
    );
}
