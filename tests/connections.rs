//! MCP connections (issue 14): written into the managed `mcp_servers` with
//! `${ENV}` references (never a token), the gateway restarted when idle so
//! it connects them, removed cleanly. Against the real binary supervising
//! `tests/fake_gateway.py`.

mod common;
use common::*;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn managed_config(w: &GatewayWorld) -> String {
    std::fs::read_to_string(w.dir.join("data/gateway-managed/config.yaml")).unwrap_or_default()
}

async fn wait_status(d: &TestDaemon, name: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = d.get_json("/connections").await;
        let found = v["connections"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name).cloned());
        if found.as_ref().is_some_and(|c| c["status"] == status) {
            return found.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "{name} never {status}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_connection_reaches_the_managed_scope_with_env_references_and_leaves_cleanly() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    let before = w.wait_agent(&d, "running").await;

    let r = d
        .put("/env/GH_TOKEN")
        .json(&json!({"value": "ghp-secret-value-123"}))
        .send()
        .await
        .expect("PUT env");
    assert!(r.status().is_success());
    let r = d
        .put("/connections/github")
        .json(&json!({
            "transport": "http",
            "url": "https://mcp.example.test/mcp",
            "headers": {"Authorization": "Bearer ${GH_TOKEN}"},
        }))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["applies"], "now", "{v}");
    assert_eq!(
        v["connection"]["headers"]["Authorization"],
        "Bearer ${GH_TOKEN}"
    );

    let managed = managed_config(&w);
    assert!(
        managed.contains("mcp_servers:") && managed.contains("github:"),
        "{managed}"
    );
    assert!(managed.contains("Bearer ${GH_TOKEN}"), "{managed}");
    assert!(
        !managed.contains("ghp-secret"),
        "the token stays in .env: {managed}"
    );

    // The gateway restarts (it connects MCP servers at start) and then
    // runs with it.
    let c = wait_status(&d, "github", "loaded").await;
    assert_eq!(c["transport"], "http");
    let after = w.wait_agent(&d, "running").await;
    assert_ne!(
        before["pid"], after["pid"],
        "restarted to load the connection"
    );

    // A stdio server, disabled: written with `enabled: false`.
    let r = d
        .put("/connections/files-1")
        .json(&json!({"transport": "stdio", "command": "npx", "args": ["-y", "srv"], "enabled": false}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 202);
    wait_status(&d, "files-1", "disabled").await;
    assert!(managed_config(&w).contains("enabled: false"));

    // Bad input names the field and writes nothing.
    let snapshot = managed_config(&w);
    for (path, body, field) in [
        (
            "/connections/Bad_Name",
            json!({"transport": "stdio", "command": "x"}),
            "name",
        ),
        (
            "/connections/x",
            json!({"transport": "http", "url": "https://h/", "headers": {"Authorization": "Bearer literal"}}),
            "headers.Authorization",
        ),
        (
            "/connections/x",
            json!({"transport": "http", "url": "https://h/", "headers": {"X-Key": "${API_SERVER_KEY}"}}),
            "API_SERVER_KEY",
        ),
        ("/connections/x", json!({"transport": "http"}), "url"),
        (
            "/connections/x",
            json!({"transport": "carrier-pigeon"}),
            "transport",
        ),
    ] {
        let r = d.put(path).json(&body).send().await.expect("PUT");
        expect_invalid_field(r, field).await;
    }
    assert_eq!(managed_config(&w), snapshot);

    // Removed: only it leaves the file.
    let r = d
        .delete("/connections/github")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 202);
    let managed = managed_config(&w);
    assert!(
        !managed.contains("github") && managed.contains("files-1"),
        "{managed}"
    );
    let r = d
        .delete("/connections/github")
        .send()
        .await
        .expect("DELETE");
    expect_problem(r, 404, "not_found").await;
    let v = d.get_json("/connections").await;
    assert_eq!(v["connections"].as_array().map(Vec::len), Some(1), "{v}");
}

#[tokio::test]
async fn a_connection_change_waits_for_the_run_in_flight() {
    let w = GatewayWorld::new();
    let d = w.daemon().await;
    let before = w.wait_agent(&d, "running").await;
    let run = start_run(&d, json!({"input": "events:20 rate:10"})).await;
    let run_id = run["run_id"].as_str().expect("run id").to_owned();
    wait_run(&d, &run_id, "running").await;

    let r = d
        .put("/connections/docs")
        .json(&json!({"transport": "stdio", "command": "docs-mcp"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["applies"], "after-current-runs", "{v}");
    assert_eq!(v["connection"]["status"], "pending_reload", "{v}");

    // The run is not cut: it completes on the gateway it started on, then
    // the gateway restarts with the connection.
    let done = wait_run(&d, &run_id, "completed").await;
    assert_eq!(done["status"], "completed", "{done}");
    wait_status(&d, "docs", "loaded").await;
    let after = w.wait_agent(&d, "running").await;
    assert_ne!(before["pid"], after["pid"]);
}

#[tokio::test]
async fn a_connection_the_gateway_failed_to_connect_is_reported_failed_with_its_error() {
    // The fake gateway logs, at each start, what hermes-agent 0.19.0 logs
    // for an MCP server it cannot reach.
    let w = GatewayWorld::new().fake("mcp_fail", "broken");
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    for name in ["broken", "fine"] {
        let r = d
            .put(&format!("/connections/{name}"))
            .json(&json!({"transport": "http", "url": "http://127.0.0.1:9/mcp"}))
            .send()
            .await
            .expect("PUT");
        assert_eq!(r.status(), 202);
    }
    let c = wait_status(&d, "broken", "failed").await;
    assert!(
        c["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Connection refused"),
        "{c}"
    );
    wait_status(&d, "fine", "loaded").await;
}
