//! The hub's agent policy (issue 14): enforced keys reach the managed
//! scope and are refused to the tenant, defaults fill only what the tenant
//! has not set, versions only move forward, and a policy the gateway
//! refuses (exit 78) is rolled back. Against the real binary supervising
//! `tests/fake_gateway.py`.

mod common;
use common::*;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TENANT_CONFIG: &str = "\
model:
  default: tenant-model
agent:
  max_turns: 10
terminal:
  backend: local
";

fn managed_config(w: &GatewayWorld) -> String {
    std::fs::read_to_string(w.dir.join("data/gateway-managed/config.yaml")).unwrap_or_default()
}

fn tenant_config(w: &GatewayWorld) -> String {
    std::fs::read_to_string(w.home().join("config.yaml")).expect("tenant config.yaml")
}

async fn put_policy(d: &TestDaemon, body: Value) -> reqwest::Response {
    d.put("/agent-policy")
        .json(&body)
        .send()
        .await
        .expect("PUT")
}

async fn world() -> (GatewayWorld, TestDaemon) {
    let w = GatewayWorld::new();
    std::fs::create_dir_all(w.home()).expect("home");
    std::fs::write(w.home().join("config.yaml"), TENANT_CONFIG).expect("seed");
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    (w, d)
}

#[tokio::test]
async fn enforced_keys_win_defaults_fill_only_unset_keys_and_versions_only_move_forward() {
    let (w, d) = world().await;

    let r = put_policy(
        &d,
        json!({
            "version": 5,
            "enforced": {"model": {"default": "hub-model"}},
            "defaults": {"agent.max_turns": 50, "display.personality": "helpful"},
            "features": {"terminal": false, "spotify": true},
        }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["version"], 5);
    assert_eq!(v["applies"], "now");
    assert_eq!(
        v["settings"]["model.default"],
        json!({"value": "hub-model", "source": "enforced"})
    );
    assert_eq!(
        v["settings"]["agent.max_turns"],
        json!({"value": 10, "source": "tenant"})
    );
    assert_eq!(
        v["settings"]["display.personality"],
        json!({"value": "helpful", "source": "default"})
    );
    assert_eq!(v["settings"]["memory.provider"]["source"], "agent");

    // The managed scope holds the enforced value and the features; the
    // tenant's file keeps its own values and gains only the unset default.
    let managed = managed_config(&w);
    assert!(managed.contains("default: hub-model"), "{managed}");
    assert!(
        managed.contains("api_server:") && managed.contains("spotify"),
        "{managed}"
    );
    assert!(!managed.contains("terminal"), "{managed}");
    let tenant = tenant_config(&w);
    assert!(
        tenant.contains("tenant-model") && tenant.contains("max_turns: 10"),
        "{tenant}"
    );
    assert!(
        tenant.contains("personality: helpful") && tenant.contains("backend: local"),
        "{tenant}"
    );

    // The tenant cannot change an enforced key (dotted or nested), and
    // nothing of a refused patch is written.
    for body in [
        json!({"model.default": "mine"}),
        json!({"model": {"default": "mine"}, "agent.max_turns": 3}),
    ] {
        let r = d
            .patch("/settings")
            .json(&body)
            .send()
            .await
            .expect("PATCH");
        let p = expect_problem(r, 403, "policy_enforced").await;
        assert!(
            p["message"]
                .as_str()
                .unwrap_or_default()
                .contains("model.default"),
            "{p}"
        );
    }
    assert!(tenant_config(&w).contains("max_turns: 10"));
    let r = d
        .patch("/settings")
        .json(&json!({"display.personality": "mine"}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), 200);
    let s = d.get_json("/settings").await;
    assert_eq!(s["model"]["default"], "hub-model", "{s}");
    assert_eq!(s["enforced_keys"], json!(["model.default"]), "{s}");
    // The GET body sent back is not a change of the enforced key.
    let r = d.patch("/settings").json(&s).send().await.expect("PATCH");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    // Older or equal versions are refused whole.
    for version in [5, 4] {
        let r = put_policy(
            &d,
            json!({"version": version, "enforced": {"model.default": "old"}}),
        )
        .await;
        expect_problem(r, 409, "conflict").await;
    }
    // Bad input names the field; nothing changes.
    for (body, field) in [
        (
            json!({"version": 6, "enforced": {"model.api_key": "sk-live"}}),
            "enforced.model.api_key",
        ),
        (
            json!({"version": 6, "enforced": {"nope": 1}}),
            "enforced.nope",
        ),
        (
            json!({"version": 6, "defaults": {"agent.max_turns": "many"}}),
            "defaults.agent.max_turns",
        ),
        (
            json!({"version": 6, "features": {"warp": true}}),
            "features.warp",
        ),
    ] {
        expect_invalid_field(put_policy(&d, body).await, field).await;
    }
    assert_eq!(d.get_json("/agent-policy").await["version"], 5);
    assert!(managed_config(&w).contains("hub-model"));

    // A newer policy: its default does not override the tenant's own
    // value; dropping the enforced key gives the tenant its key back.
    let r = put_policy(
        &d,
        json!({"version": 6, "defaults": {"display.personality": "other"}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["settings"]["display.personality"],
        json!({"value": "mine", "source": "tenant"})
    );
    assert_eq!(
        v["settings"]["model.default"],
        json!({"value": "tenant-model", "source": "tenant"})
    );
    assert!(!managed_config(&w).contains("hub-model"));
    let r = d
        .patch("/settings")
        .json(&json!({"model.default": "mine"}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), 200);
    // The previous default the policy wrote (agent.max_turns was the
    // tenant's, personality now the tenant's) is left alone.
    assert!(tenant_config(&w).contains("personality: mine"));
}

#[tokio::test]
async fn a_default_the_policy_wrote_follows_the_policy() {
    let (w, d) = world().await;
    let r = put_policy(
        &d,
        json!({"version": 1, "defaults": {"memory.memory_char_limit": 1000}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(tenant_config(&w).contains("memory_char_limit: 1000"));
    let r = put_policy(
        &d,
        json!({"version": 2, "defaults": {"memory.memory_char_limit": 2000}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(tenant_config(&w).contains("memory_char_limit: 2000"));
    let r = put_policy(&d, json!({"version": 3})).await;
    assert_eq!(r.status(), 200);
    assert!(
        !tenant_config(&w).contains("memory_char_limit"),
        "{}",
        tenant_config(&w)
    );
}

/// Poll `GET /agent-policy` until `pred` holds (30 s at most).
async fn wait_policy(d: &TestDaemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = d.get_json("/agent-policy").await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never seen: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_policy_the_gateway_refuses_with_exit_78_is_rolled_back() {
    let w = GatewayWorld::new().fake("reject_managed", "model-that-breaks");
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;

    let r = put_policy(
        &d,
        json!({"version": 1, "enforced": {"model.default": "good-model"}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = d.post("/agent/restart").send().await.expect("restart");
    assert!(r.status().is_success());
    wait_policy(&d, "version 1 proven", |v| v["proven"] == true).await;

    let r = put_policy(
        &d,
        json!({"version": 2, "enforced": {"model.default": "model-that-breaks"}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(managed_config(&w).contains("model-that-breaks"));
    // Its next start refuses it: exit 78, then the previous version is
    // back and the gateway runs again with it.
    let r = d.post("/agent/restart").send().await.expect("restart");
    assert!(r.status().is_success());
    let v = wait_policy(&d, "the rollback", |v| v["version"] == 1).await;
    assert_eq!(v["last_error"]["version"], 2, "{v}");
    assert!(
        v["last_error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exit 78"),
        "{v}"
    );
    assert_eq!(v["enforced"]["model.default"], "good-model");
    let managed = managed_config(&w);
    assert!(
        managed.contains("good-model") && !managed.contains("model-that-breaks"),
        "{managed}"
    );
    let a = w.wait_agent(&d, "running").await;
    assert_eq!(a["last_exit"]["code"], 78, "{a}");

    // The refused version stays used up; a newer one is taken.
    let r = put_policy(
        &d,
        json!({"version": 2, "enforced": {"model.default": "x"}}),
    )
    .await;
    expect_problem(r, 409, "conflict").await;
    let r = put_policy(
        &d,
        json!({"version": 3, "enforced": {"model.default": "fixed"}}),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_heartbeat_reports_the_policy_version_in_force() {
    let hub = common::hub::FakeHub::start();
    let d = TestDaemon::start_with(Options {
        config_extra: format!(
            "[hub]\nurl = \"http://127.0.0.1:{}\"\nheartbeat_interval = \"200ms\"\n",
            hub.port
        ),
        ..Options::default()
    })
    .await;
    let r = put_policy(&d, json!({"version": 7, "features": {"web": false}})).await;
    assert_eq!(r.status(), 200);
    hub.wait_until(
        "policy version 7 in a beat",
        Duration::from_secs(30),
        |beats| {
            beats
                .iter()
                .any(|b| b["body"]["agent_config"]["policy_version"] == 7)
        },
    )
    .await;
}

#[tokio::test]
async fn a_specialization_installs_and_removes_only_its_own_files() {
    let (w, d) = world().await;
    let home = w.home();
    let soul = home.join("SOUL.md");
    std::fs::write(&soul, "the tenant's own soul\n").expect("soul");
    let tenant_skill = home.join("skills/mine/tool/SKILL.md");
    std::fs::create_dir_all(tenant_skill.parent().expect("parent")).expect("dir");
    std::fs::write(&tenant_skill, "---\nname: tool\n---\n").expect("skill");
    let cat = home.join("skills/hub-specialization");

    let body = json!({
        "version": 1,
        "persona": "# Support agent\nBe brief.\n",
        "skills": [
            {"path": "triage/SKILL.md", "content": "---\nname: triage\ndescription: t\n---\nsteps\n"},
            {"path": "triage/scripts/run.sh", "content": "echo hi\n"},
            {"path": "faq/SKILL.md", "content": "---\nname: faq\ndescription: f\n---\n"},
        ],
        "settings": {"display.personality": "support"},
    });
    let r = d
        .put("/agent-specialization")
        .json(&body)
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(
        std::fs::read_to_string(&soul).expect("soul"),
        "# Support agent\nBe brief.\n"
    );
    assert!(cat.join("triage/scripts/run.sh").is_file());
    assert!(tenant_config(&w).contains("personality: support"));
    let v = d.get_json("/agent-specialization").await;
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["skills"].as_array().map(Vec::len), Some(3), "{v}");

    // Same or older version: 409; bad bundles: 400 naming the field.
    let r = d
        .put("/agent-specialization")
        .json(&json!({"version": 1}))
        .send()
        .await
        .expect("PUT");
    expect_problem(r, 409, "conflict").await;
    for (body, field) in [
        (
            json!({"version": 2, "skills": [{"path": "../x/SKILL.md", "content": ""}]}),
            "skills[0].path",
        ),
        (
            json!({"version": 2, "skills": [{"path": "a/.hidden", "content": ""}]}),
            "skills[0].path",
        ),
        (
            json!({"version": 2, "skills": [{"path": "a/b", "content": "x".repeat(300 * 1024)}]}),
            "skills[0].content",
        ),
        (
            json!({"version": 2, "settings": {"model.api_key": "sk"}}),
            "settings.model.api_key",
        ),
    ] {
        let r = d
            .put("/agent-specialization")
            .json(&body)
            .send()
            .await
            .expect("PUT");
        expect_invalid_field(r, field).await;
    }

    // The tenant edits one installed file: a newer bundle that drops it,
    // and the removal, leave it; unchanged ones go.
    std::fs::write(cat.join("faq/SKILL.md"), "edited by the tenant\n").expect("edit");
    let r = d
        .put("/agent-specialization")
        .json(&json!({"version": 2, "persona": "# Support agent v2\n",
                      "skills": [{"path": "triage/SKILL.md", "content": "---\nname: triage\ndescription: t2\n---\n"}]}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 200);
    assert!(
        !cat.join("triage/scripts").exists(),
        "dropped file and its empty directory removed"
    );
    assert!(
        cat.join("faq/SKILL.md").is_file(),
        "the tenant's edit is kept"
    );
    assert!(
        !tenant_config(&w).contains("personality: support"),
        "the dropped default goes"
    );

    let r = d
        .delete("/agent-specialization")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 204);
    assert_eq!(
        std::fs::read_to_string(&soul).expect("soul"),
        "the tenant's own soul\n"
    );
    assert!(!cat.join("triage").exists());
    assert!(cat.join("faq/SKILL.md").is_file());
    assert!(
        tenant_skill.is_file(),
        "the tenant's own skills are untouched"
    );
    let r = d
        .delete("/agent-specialization")
        .send()
        .await
        .expect("DELETE");
    expect_problem(r, 404, "not_found").await;
    let r = d
        .put("/agent-specialization")
        .json(&json!({"version": 2}))
        .send()
        .await
        .expect("PUT");
    expect_problem(r, 409, "conflict").await;
}

#[tokio::test]
async fn a_specialization_blocked_half_way_leaves_nothing_behind() {
    let (w, d) = world().await;
    let home = w.home();
    let soul = home.join("SOUL.md");
    std::fs::write(&soul, "before\n").expect("soul");
    // The agent plants a symlink where the bundle's second skill goes.
    let cat = home.join("skills/hub-specialization");
    std::fs::create_dir_all(&cat).expect("dir");
    let outside = tempfile::tempdir().expect("outside");
    std::os::unix::fs::symlink(outside.path(), cat.join("zz")).expect("symlink");

    let r = d
        .put("/agent-specialization")
        .json(&json!({"version": 1, "persona": "# new\n", "skills": [
            {"path": "aa/SKILL.md", "content": "a"},
            {"path": "zz/SKILL.md", "content": "z"},
        ]}))
        .send()
        .await
        .expect("PUT");
    expect_problem(r, 409, "conflict").await;
    assert_eq!(std::fs::read_to_string(&soul).expect("soul"), "before\n");
    assert!(!cat.join("aa").exists(), "the first file was taken back");
    assert!(
        std::fs::read_dir(outside.path())
            .expect("outside")
            .next()
            .is_none(),
        "nothing written through the link"
    );
    assert_eq!(
        d.get_json("/agent-specialization").await["version"],
        Value::Null
    );
}

#[tokio::test]
async fn the_policy_and_connections_survive_a_daemon_restart() {
    let (w, mut d) = world().await;
    let r = put_policy(
        &d,
        json!({"version": 4, "enforced": {"agent.max_turns": 7}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = d
        .put("/connections/kept")
        .json(&json!({"transport": "stdio", "command": "kept-mcp"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 202);
    d.kill();
    drop(d);
    // The managed file is made again from the store at start.
    std::fs::remove_file(w.dir.join("data/gateway-managed/config.yaml")).expect("rm");

    let d = w.daemon().await;
    let managed = managed_config(&w);
    assert!(
        managed.contains("max_turns: 7") && managed.contains("kept-mcp"),
        "{managed}"
    );
    let r = d
        .patch("/settings")
        .json(&json!({"agent.max_turns": 8}))
        .send()
        .await
        .expect("PATCH");
    expect_problem(r, 403, "policy_enforced").await;
    assert_eq!(d.get_json("/agent-policy").await["version"], 4);
    let r = put_policy(&d, json!({"version": 4})).await;
    expect_problem(r, 409, "conflict").await;
}
