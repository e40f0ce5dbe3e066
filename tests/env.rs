//! Env keys: names only on read, reserved names refused, values never in a
//! response or a log line, concurrent writes never corrupt `.env`.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Value, json};

fn options(home: &Path) -> Options {
    Options {
        config_extra: format!(
            "[gateway]\nhermes_home = \"{}\"\n\n[env]\nreserved = [\"CORP_TOKEN\", \"BILLING_*\"]\nvalue_max_bytes = 1024\n",
            home.display()
        ),
        ..Options::default()
    }
}

#[tokio::test]
async fn keys_are_write_only_and_reserved_names_are_refused() {
    let home = tempfile::tempdir().expect("tempdir");
    let env_path = home.path().join(".env");
    std::fs::write(
        &env_path,
        "# managed by hand\nEXISTING=1\nAPI_SERVER_KEY=planted-by-tenant-0000\n",
    )
    .expect("seed");
    let d = TestDaemon::start_with(options(home.path())).await;
    d.wait_for_log("removed a reserved key", std::time::Duration::from_secs(5))
        .await;
    let text = std::fs::read_to_string(&env_path).expect("read");
    assert!(
        !text.contains("API_SERVER_KEY"),
        "stripped at start: {text}"
    );
    assert!(text.contains("# managed by hand\nEXISTING=1"), "{text}");

    let mut bodies = String::new();
    let secret = "sk-VALUE-must-never-leak-'quoted'\\slash $HOME";
    let r = d
        .put("/env/OPENAI_API_KEY")
        .json(&json!({"value": secret}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    bodies.push_str(&body);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["name"], "OPENAI_API_KEY");
    assert_eq!(v["set_by"], "tenant");
    let r = d
        .put("/env/HUB_FEATURE")
        .json(&json!({"value": "hub-secret-value-42", "set_by": "hub"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    bodies.push_str(&r.text().await.expect("body"));

    let r = d.get("/env").send().await.expect("send");
    let body = r.text().await.expect("body");
    bodies.push_str(&body);
    let v: Value = serde_json::from_str(&body).expect("json");
    let keys = v["keys"].as_array().expect("keys");
    let names: Vec<&str> = keys.iter().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(names, vec!["EXISTING", "OPENAI_API_KEY", "HUB_FEATURE"]);
    assert_eq!(keys[0]["set_by"], Value::Null);
    assert_eq!(keys[2]["set_by"], "hub");
    assert!(keys.iter().all(|k| k.get("value").is_none()));

    let mode = std::fs::metadata(&env_path)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    if let Some(parsed) = dotenv_values(&env_path) {
        assert_eq!(parsed["OPENAI_API_KEY"], secret);
        assert_eq!(parsed["EXISTING"], "1");
    }

    for name in [
        "API_SERVER_KEY",
        "API_SERVER_PORT",
        "HERMES_HOME",
        "HERMES_TENANTD_DATA_DIR",
        "HERMES_GATEWAY_MAX_STARTS",
        "HERMES_DEV",
        "CORP_TOKEN",
        "BILLING_ACCOUNT",
    ] {
        let r = d
            .put(&format!("/env/{name}"))
            .json(&json!({"value": "x"}))
            .send()
            .await
            .expect("send");
        expect_problem(r, 403, "reserved").await;
        let r = d
            .delete(&format!("/env/{name}"))
            .send()
            .await
            .expect("send");
        expect_problem(r, 403, "reserved").await;
    }
    for name in ["lower", "1ABC", "A-B", "A%20B", &"A".repeat(129)] {
        let r = d
            .put(&format!("/env/{name}"))
            .json(&json!({"value": "x"}))
            .send()
            .await
            .expect("send");
        expect_problem(r, 400, "invalid_argument").await;
    }
    for bad in [
        json!({"value": "line1\nline2-LEAKCHECK"}),
        json!({"value": "nul\u{0}-LEAKCHECK"}),
        json!({"value": "r\r-LEAKCHECK"}),
        json!({"value": "LEAKCHECK".repeat(200)}),
        json!({"value": 12345}),
        json!({"value": "LEAKCHECK", "extra": 1}),
        json!({}),
    ] {
        let r = d
            .put("/env/GOOD_NAME")
            .json(&bad)
            .send()
            .await
            .expect("send");
        let v = expect_problem(r, 400, "invalid_argument").await;
        assert!(!v.to_string().contains("LEAKCHECK"), "{v}");
    }

    let r = d.delete("/env/OPENAI_API_KEY").send().await.expect("send");
    assert_eq!(r.status(), 204);
    let r = d.delete("/env/OPENAI_API_KEY").send().await.expect("send");
    expect_problem(r, 404, "not_found").await;
    assert!(
        !std::fs::read_to_string(&env_path)
            .expect("read")
            .contains("OPENAI_API_KEY")
    );

    for needle in ["sk-VALUE", "hub-secret-value", "LEAKCHECK"] {
        assert!(!bodies.contains(needle), "response leaked {needle}");
        assert!(
            !d.logs().iter().any(|l| l.contains(needle)),
            "log leaked {needle}"
        );
    }
    assert!(
        d.logs().iter().any(|l| l.contains("OPENAI_API_KEY")),
        "names are logged"
    );
}

#[tokio::test]
async fn concurrent_puts_never_corrupt_the_file() {
    let home = tempfile::tempdir().expect("tempdir");
    let d = TestDaemon::start_with(options(home.path())).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let req = d
            .put(&format!("/env/KEY_{}", i % 20))
            .json(&json!({"value": format!("value-{i}-{}", "z".repeat(200))}));
        tasks.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("send"), 200);
    }
    let text = std::fs::read_to_string(home.path().join(".env")).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20, "{text}");
    for i in 0..20 {
        let prefix = format!("KEY_{i}='value-");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(&prefix)).count(),
            1,
            "{text}"
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with(&format!("{}'", "z".repeat(200))))
    );
    let leftovers: Vec<_> = std::fs::read_dir(home.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".env" && n != "skills")
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

/// The file as python-dotenv (what the gateway uses) reads it, when it is
/// installed here; `None` otherwise.
fn dotenv_values(path: &Path) -> Option<serde_json::Map<String, Value>> {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import json,sys\nfrom dotenv import dotenv_values\nprint(json.dumps(dotenv_values(sys.argv[1], interpolate=False)))")
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("python-dotenv not available; skipping the parser cross-check");
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `.env` made a symlink to a file outside the home (by the agent): a PUT
/// or DELETE is refused with problem JSON (`409 conflict`) and the link's
/// target never changes; the link stays for the tenant to fix.
#[tokio::test]
async fn a_symlinked_env_file_is_never_written_through() {
    let home = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "KEEP=1\n").expect("victim");
    let before = hermes_tenantd::hex::sha256(&std::fs::read(&victim).expect("read"));
    let env_path = home.path().join(".env");
    std::os::unix::fs::symlink(&victim, &env_path).expect("plant");
    let d = TestDaemon::start_with(options(home.path())).await;
    let r = d
        .put("/env/OPENAI_API_KEY")
        .json(&json!({"value": "sk-never-written"}))
        .send()
        .await
        .expect("send");
    let v = expect_problem(r, 409, "conflict").await;
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains("symlink"), "{v}");
    assert!(
        !message.contains(outside.path().to_str().unwrap_or("@")),
        "no host path: {v}"
    );
    let r = d.delete("/env/KEEP").send().await.expect("send");
    expect_problem(r, 409, "conflict").await;
    let after = hermes_tenantd::hex::sha256(&std::fs::read(&victim).expect("read"));
    assert_eq!(before, after);
    assert!(
        std::fs::symlink_metadata(&env_path)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert!(!d.logs().iter().any(|l| l.contains("sk-never-written")));
}

#[tokio::test]
async fn reserved_key_hidden_behind_a_carriage_return_is_removed_at_start() {
    let home = tempfile::tempdir().expect("tempdir");
    let env_path = home.path().join(".env");
    std::fs::write(
        &env_path,
        "FOO=1\rAPI_SERVER_KEY=evil-planted-0000\r\nBAR=2\n",
    )
    .expect("seed");
    let d = TestDaemon::start_with(options(home.path())).await;
    let line = d
        .wait_for_log("removed a reserved key", std::time::Duration::from_secs(5))
        .await;
    assert!(line.contains("API_SERVER_KEY"), "{line}");
    assert_eq!(
        std::fs::read(&env_path).expect("read"),
        b"FOO=1\rBAR=2\n".to_vec()
    );
    if let Some(parsed) = dotenv_values(&env_path) {
        assert!(parsed.get("API_SERVER_KEY").is_none(), "{parsed:?}");
        assert_eq!(parsed["FOO"], "1");
    }
    assert!(!d.logs().iter().any(|l| l.contains("evil-planted")));
}

#[tokio::test]
async fn foreign_multiline_value_survives_a_put_byte_for_byte() {
    let home = tempfile::tempdir().expect("tempdir");
    let env_path = home.path().join(".env");
    let seed = "# hand-written\r\nCERT=\"-----BEGIN-----\nMIIB\\\"x\\\"\r\n  indented\n-----END-----\" # pem\nexport OTHER='a b'\rTARGET=old\n\nTAIL=1";
    std::fs::write(&env_path, seed).expect("seed");
    let d = TestDaemon::start_with(options(home.path())).await;
    let r = d
        .put("/env/TARGET")
        .json(&json!({"value": "new value"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = d
        .put("/env/ADDED")
        .json(&json!({"value": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let want = seed.replace("TARGET=old\n", "TARGET='new value'\n") + "\nADDED='x'\n";
    assert_eq!(std::fs::read_to_string(&env_path).expect("read"), want);
    if let Some(parsed) = dotenv_values(&env_path) {
        assert_eq!(
            parsed["CERT"],
            "-----BEGIN-----\nMIIB\"x\"\n  indented\n-----END-----"
        );
        assert_eq!(parsed["TARGET"], "new value");
        assert_eq!(parsed["TAIL"], "1");
        assert_eq!(parsed["ADDED"], "x");
    }
    let r = d.delete("/env/TARGET").send().await.expect("send");
    assert_eq!(r.status(), 204);
    let want = want.replace("TARGET='new value'\n", "");
    assert_eq!(std::fs::read_to_string(&env_path).expect("read"), want);
}

#[tokio::test]
async fn an_oversized_env_file_is_refused_with_a_stable_code() {
    let home = tempfile::tempdir().expect("tempdir");
    let env_path = home.path().join(".env");
    let big = format!("BIG='{}'\n", "x".repeat(1024 * 1024 + 1));
    std::fs::write(&env_path, &big).expect("seed");
    let d = TestDaemon::start_with(options(home.path())).await;
    let r = d
        .put("/env/OTHER")
        .json(&json!({"value": "v"}))
        .send()
        .await
        .expect("send");
    let v = expect_problem(r, 413, "file_too_large").await;
    assert!(!v.to_string().contains("xxxx"), "{v}");
    let r = d.get("/env").send().await.expect("send");
    expect_problem(r, 413, "file_too_large").await;
    assert_eq!(std::fs::read_to_string(&env_path).expect("read"), big);
    d.wait_for_log(
        "refused to read the Hermes .env",
        std::time::Duration::from_secs(5),
    )
    .await;
}
