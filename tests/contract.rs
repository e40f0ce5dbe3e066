//! The router and `schema/openapi.yaml` list the same routes.

use std::collections::BTreeSet;

fn normalise(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            c if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

#[test]
fn router_and_openapi_document_list_the_same_routes() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/openapi.yaml"))
        .expect("read openapi.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("parse openapi.yaml");
    let mut documented = BTreeSet::new();
    let paths = doc["paths"].as_mapping().expect("paths");
    for (path, item) in paths {
        let path = path.as_str().expect("path key");
        for (method, _) in item.as_mapping().expect("path item") {
            let method = method.as_str().expect("method");
            if ["get", "post", "put", "patch", "delete"].contains(&method) {
                documented.insert((method.to_uppercase(), normalise(path)));
            }
        }
    }
    let served: BTreeSet<(String, String)> = hermes_tenantd::api::route_list()
        .into_iter()
        .map(|(m, p)| (m, normalise(&p)))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in openapi.yaml: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in openapi.yaml but not served: {unserved:?}"
    );
}

/// Every operation documents the statuses the daemon can answer on it:
/// the middleware's (shed 429, timeout/busy 503, panic 500), the auth
/// layer's (401, 404), the extractors' (400, and 413/415 with a body), a
/// full volume on writes (507).
#[test]
fn every_operation_documents_every_status_it_can_answer() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/openapi.yaml"))
        .expect("read openapi.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("parse openapi.yaml");
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_mapping().expect("paths") {
        let path = path.as_str().expect("path key");
        for (method, op) in item.as_mapping().expect("path item") {
            let method = method.as_str().expect("method");
            if !["get", "post", "put", "patch", "delete"].contains(&method) {
                continue;
            }
            let mut need = vec!["500"];
            if path.starts_with("/v1/tenant-runtime/") {
                need.extend(["400", "401", "404", "429", "503"]);
                if op.get("requestBody").is_some() {
                    need.extend(["413", "415"]);
                }
                if method != "get" {
                    need.push("507");
                }
            }
            let documented = op["responses"].as_mapping().expect("responses");
            for code in need {
                if !documented.contains_key(code) {
                    missing.push(format!("{method} {path}: {code}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "undocumented statuses: {missing:#?}");
}
