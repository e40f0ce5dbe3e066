//! Settings: config.yaml read with secrets redacted, PATCH merges and keeps
//! what it does not manage, bad patches change nothing.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

const SEED: &str = "\
model:
  default: anthropic/claude-opus-4.6
  provider: openrouter
  api_key: sk-or-SECRET-123
terminal:
  backend: docker
toolsets:
- all
memory:
  memory_enabled: true
  memory_char_limit: 2200
skills:
  disabled: [x]
";

#[tokio::test]
async fn patch_round_trip_keeps_unmanaged_keys_and_redacts_secrets() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("config.yaml");
    std::fs::write(&path, SEED).expect("seed");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let d = TestDaemon::start_with(Options {
        config_extra: format!("[gateway]\nhermes_home = \"{}\"\n", home.path().display()),
        ..Options::default()
    })
    .await;

    let r = d.get("/settings").send().await.expect("send");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    assert!(!text.contains("SECRET"), "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["model"]["default"], "anthropic/claude-opus-4.6");
    assert_eq!(v["model"]["api_key"], "********");
    assert_eq!(v["toolsets"], json!(["all"]));
    assert!(v.get("terminal").is_none(), "only managed keys are shown");

    // Dotted and nested keys together; the GET body's redacted secret sent
    // back unchanged keeps the real one.
    let r = d
        .patch("/settings")
        .json(&json!({
            "model.default": "openai/gpt-5",
            "model": {"api_key": "********"},
            "display.personality": "concise",
            "toolsets": ["web", "terminal"],
            "memory": {"memory_char_limit": 3000, "user_profile_enabled": false},
            "agent.reasoning_effort": "high",
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["model"]["default"], "openai/gpt-5");
    assert_eq!(v["model"]["provider"], "openrouter");
    assert_eq!(v["display"]["personality"], "concise");
    assert_eq!(v["memory"]["memory_char_limit"], 3000);
    assert_eq!(v["memory"]["memory_enabled"], true);
    let again: Value = d.get_json("/settings").await;
    assert_eq!(again, v, "GET after PATCH shows the same");

    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
    assert_eq!(yaml["model"]["api_key"].as_str(), Some("sk-or-SECRET-123"));
    assert_eq!(yaml["terminal"]["backend"].as_str(), Some("docker"));
    assert_eq!(yaml["skills"]["disabled"][0].as_str(), Some("x"));
    assert_eq!(yaml["agent"]["reasoning_effort"].as_str(), Some("high"));
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the file's mode is kept");

    // Unknown keys and wrong types: 400, and the file is untouched.
    let before = std::fs::read_to_string(&path).expect("read");
    for bad in [
        json!({"model.default": "ok", "terminal.backend": "local"}),
        json!({"nope": true}),
        json!({"model": {"temperature": 0.2}}),
        json!({"memory.memory_enabled": "yes"}),
        json!({"memory.memory_char_limit": -5}),
        json!({"toolsets": "web"}),
        json!({"model.base_url": "ftp://x"}),
        json!({"agent.reasoning_effort": "extreme"}),
        json!(["model.default"]),
    ] {
        let r = d.patch("/settings").json(&bad).send().await.expect("send");
        expect_problem(r, 400, "invalid_argument").await;
    }
    assert_eq!(std::fs::read_to_string(&path).expect("read"), before);

    // Unset with null.
    let r = d
        .patch("/settings")
        .json(&json!({"display.personality": null}))
        .send()
        .await
        .expect("send");
    let v: Value = r.json().await.expect("json");
    assert!(v["display"].get("personality").is_none(), "{v}");
    assert!(!d.logs().iter().any(|l| l.contains("SECRET")));
}

#[tokio::test]
async fn broken_config_yaml_is_a_conflict_not_overwritten() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("config.yaml");
    std::fs::write(&path, "model: [unclosed\napi_key: sk-SECRET\n").expect("seed");
    let d = TestDaemon::start_with(Options {
        config_extra: format!("[gateway]\nhermes_home = \"{}\"\n", home.path().display()),
        ..Options::default()
    })
    .await;
    let r = d.get("/settings").send().await.expect("send");
    let v = expect_problem(r, 409, "conflict").await;
    assert!(!v.to_string().contains("SECRET"), "{v}");
    let r = d
        .patch("/settings")
        .json(&json!({"model.default": "x"}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 409, "conflict").await;
    assert!(
        std::fs::read_to_string(&path)
            .expect("read")
            .contains("[unclosed")
    );
}

#[tokio::test]
async fn hostile_config_yaml_is_refused_quickly_and_never_rewritten() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("config.yaml");
    let d = TestDaemon::start_with(Options {
        config_extra: format!("[gateway]\nhermes_home = \"{}\"\n", home.path().display()),
        ..Options::default()
    })
    .await;

    // Billion laughs, and a quadratic fan-out that passes serde_yaml_ng's
    // own alias-jump limit (4 million nodes from 20 KB).
    let mut laughs = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=9 {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        laughs.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
    }
    let fan_out = format!(
        "a: &a [{}]\nb: [{}]\n",
        vec!["x"; 2000].join(","),
        vec!["*a"; 2000].join(",")
    );
    for doc in [laughs, fan_out] {
        std::fs::write(&path, &doc).expect("seed");
        let r = d.get("/settings").send().await.expect("send");
        expect_problem(r, 409, "conflict").await;
        let r = d
            .patch("/settings")
            .json(&json!({"model": {"default": "x/y"}}))
            .send()
            .await
            .expect("send");
        expect_problem(r, 409, "conflict").await;
        assert_eq!(std::fs::read_to_string(&path).expect("read"), doc);
    }

    std::fs::write(
        &path,
        format!("model:\n  default: '{}'\n", "x".repeat(1024 * 1024)),
    )
    .expect("seed");
    let r = d.get("/settings").send().await.expect("send");
    let v = expect_problem(r, 413, "file_too_large").await;
    assert!(!v.to_string().contains("xxxx"), "{v}");
    d.wait_for_log(
        "refused to read the gateway's config.yaml",
        std::time::Duration::from_secs(5),
    )
    .await;

    std::fs::remove_file(&path).expect("rm");
    let outside = home.path().join("outside.yaml");
    std::fs::write(&outside, SEED).expect("outside");
    std::os::unix::fs::symlink(&outside, &path).expect("symlink");
    let r = d.get("/settings").send().await.expect("send");
    expect_problem(r, 409, "conflict").await;
}
