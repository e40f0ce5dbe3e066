mod common;
use common::*;

#[tokio::test]
async fn healthz_and_version_answer() {
    let d = TestDaemon::start().await;
    let r = d
        .client
        .get(d.url("/v1/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = d
        .get("/version")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(v["tenant_id"], TENANT);
    assert_eq!(
        v["schema_version"],
        hermes_tenantd::store::migrations::latest()
    );
}
