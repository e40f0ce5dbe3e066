//! Bad input: a clear problem JSON, nothing lost, no panic.

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn oversized_body_is_413_and_the_limit_is_configurable() {
    let d = TestDaemon::start_with(Options {
        env: vec![("HERMES_TENANTD_LIMITS__BODY_BYTES".into(), "4096".into())],
        ..Default::default()
    })
    .await;
    let big = "x".repeat(5000);
    let r = d
        .post("/memory")
        .json(&json!({"content": big}))
        .send()
        .await
        .expect("send");
    let v = expect_problem(r, 413, "payload_too_large").await;
    assert!(
        v["message"].as_str().unwrap_or_default().contains("4096"),
        "{v}"
    );
    // Chunked body without Content-Length is caught too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b'{'; 3000]), Ok(vec![b' '; 3000])];
    let stream = futures_util::stream::iter(chunks);
    let r = d
        .post("/memory")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("send");
    expect_problem(r, 413, "payload_too_large").await;
    // The daemon still serves.
    let r = d
        .post("/memory")
        .json(&json!({"content": "small"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn malformed_json_is_400_naming_the_problem() {
    let d = TestDaemon::start().await;
    let send = |body: &'static str| {
        d.post("/memory")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let v = expect_problem(
        send("{\"content\": ").await.expect("send"),
        400,
        "invalid_argument",
    )
    .await;
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid JSON"),
        "{v}"
    );
    let v = expect_problem(
        send("{\"content\": 7}").await.expect("send"),
        400,
        "invalid_argument",
    )
    .await;
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("content"),
        "{v}"
    );
    let v = expect_problem(send("{}").await.expect("send"), 400, "invalid_argument").await;
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("content"),
        "{v}"
    );
    let r = d
        .post("/memory")
        .body("{\"content\":\"x\"}")
        .send()
        .await
        .expect("send");
    expect_problem(r, 415, "unsupported_media_type").await;
    let r = d.get("/memory?limit=0").send().await.expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d.get("/memory?limit=many").send().await.expect("send");
    let v = expect_problem(r, 400, "invalid_argument").await;
    assert!(
        v["message"].as_str().unwrap_or_default().contains("limit"),
        "{v}"
    );
    let r = d.get("/memory?limit=100000").send().await.expect("send");
    expect_problem(r, 400, "invalid_argument").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problem_json() {
    let d = TestDaemon::start().await;
    let r = d.client.get(d.url("/nope")).send().await.expect("send");
    expect_problem(r, 404, "not_found").await;
    let r = d
        .client
        .delete(d.url("/v1/healthz"))
        .send()
        .await
        .expect("send");
    expect_problem(r, 405, "method_not_allowed").await;
}
