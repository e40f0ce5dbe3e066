//! `GET /diagnostics`: a tar.gz with the expected files, under the cap,
//! with the facts support needs and no secret.

mod common;
use common::*;

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const FILE_SECRET: &str = "diag-file-value-93c1d0e7";

#[tokio::test]
async fn the_bundle_lists_the_expected_files_is_capped_and_holds_no_secret() {
    let w = GatewayWorld::new();
    std::fs::create_dir_all(w.home()).expect("home");
    std::fs::write(w.home().join(".env"), format!("LEAK_FILE={FILE_SECRET}\n")).expect(".env");
    let d = w.daemon().await;
    w.wait_agent(&d, "running").await;
    let run = start_run(&d, json!({ "input": format!("say: cred {TOKEN} leak") })).await;
    let run_id = run["run_id"].as_str().expect("id").to_owned();
    wait_run(&d, &run_id, "completed").await;
    // The gateway's lines are in its log before the bundle is taken.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(d.data_dir().join("logs/gateway.log"))
        .unwrap_or_default()
        .contains("LEAK_FILE=")
    {
        assert!(Instant::now() < deadline, "the leak never reached the log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = std::fs::read_to_string(d.data_dir().join("gateway_api_key")).expect("key");

    let r = d.get("/diagnostics").send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/gzip");
    let gz = r.bytes().await.expect("body");
    assert!(gz.len() < 8 * 1024 * 1024, "{} bytes", gz.len());
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    let mut files = std::collections::BTreeMap::new();
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text).expect("utf-8 entry");
        files.insert(name, text);
    }
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    let mut expected = hermes_tenantd::ops::diagnostics::FILES.to_vec();
    expected.sort();
    assert_eq!(names, expected);
    let total: usize = files.values().map(String::len).sum();
    assert!(total <= hermes_tenantd::ops::diagnostics::MAX_UNCOMPRESSED);

    let agent: Value = serde_json::from_str(&files["agent.json"]).expect("agent.json");
    assert_eq!(agent["status"]["state"], "running", "{agent}");
    assert!(
        agent["transitions"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
    let runs: Value = serde_json::from_str(&files["runs.json"]).expect("runs.json");
    assert!(runs.to_string().contains(&run_id), "{runs}");
    let db: Value = serde_json::from_str(&files["database.json"]).expect("database.json");
    assert_eq!(db["quick_check"], json!(["ok"]), "{db}");
    let system: Value = serde_json::from_str(&files["system.json"]).expect("system.json");
    assert!(
        system["mem_total_kib"].as_u64().is_some_and(|k| k > 0),
        "{system}"
    );
    assert!(files["logs/gateway.log"].contains("LEAK_FILE="));
    assert!(files["logs/daemon.log"].contains("listening"));
    assert!(files["config.txt"].contains("tenant_id"));

    let all: String = files.values().cloned().collect();
    for secret in [TOKEN, key.trim(), FILE_SECRET] {
        assert!(!all.contains(secret), "{secret} in the bundle");
    }
}
