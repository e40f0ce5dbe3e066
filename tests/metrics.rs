//! Request metrics: one series per route template, method and status,
//! whatever the raw path, the method or the outcome.

mod common;
use common::*;

async fn scrape(d: &TestDaemon) -> String {
    let r = d
        .client
        .get(d.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    r.text().await.expect("text")
}

/// The value of the line that starts with `series` followed by a space.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn requests_are_counted_by_route_template_method_and_status() {
    let d = TestDaemon::start().await;
    for _ in 0..3 {
        let r = d.get("/version").send().await.expect("version");
        assert_eq!(r.status(), 200);
    }
    let r = d
        .client
        .get(d.tenant_url("/version"))
        .send()
        .await
        .expect("no credential");
    assert_eq!(r.status(), 401);
    let r = d
        .client
        .get(d.url("/v1/tenant-runtime/someone-else/version"))
        .bearer_auth("bench-nothing")
        .send()
        .await
        .expect("wrong credential");
    assert_eq!(r.status(), 401);
    // Two sessions, one template.
    for s in ["a", "b"] {
        let r = d
            .get(&format!("/conversations/{s}/messages"))
            .send()
            .await
            .expect("messages");
        assert_eq!(r.status(), 404);
    }
    let r = d.get("/no/such/route").send().await.expect("unmatched");
    assert_eq!(r.status(), 404);
    // A method the route does not serve: 405 without a credential check.
    let r = d
        .client
        .delete(d.tenant_url("/version"))
        .send()
        .await
        .expect("405");
    assert_eq!(r.status(), 405);
    // An invented method is labelled `other`, never by its name.
    let r = d
        .client
        .request(
            reqwest::Method::from_bytes(b"BREW").expect("method"),
            d.url("/v1/healthz"),
        )
        .send()
        .await
        .expect("brew");
    assert_eq!(r.status(), 405);

    let m = scrape(&d).await;
    let version = "route=\"/v1/tenant-runtime/{tenant_id}/version\"";
    let messages = "route=\"/v1/tenant-runtime/{tenant_id}/conversations/{session_id}/messages\"";
    let want = [
        (format!("{{method=\"GET\",{version},status=\"200\"}}"), 3.0),
        (format!("{{method=\"GET\",{version},status=\"401\"}}"), 2.0),
        (
            format!("{{method=\"DELETE\",{version},status=\"405\"}}"),
            1.0,
        ),
        (format!("{{method=\"GET\",{messages},status=\"404\"}}"), 2.0),
        (
            "{method=\"GET\",route=\"unmatched\",status=\"404\"}".to_owned(),
            1.0,
        ),
        (
            "{method=\"other\",route=\"/v1/healthz\",status=\"405\"}".to_owned(),
            1.0,
        ),
    ];
    for (labels, n) in want {
        let series = format!("hermes_tenantd_http_requests_total{labels}");
        assert_eq!(value(&m, &series), Some(n), "{series}\n{m}");
    }
    assert!(!m.contains("BREW"), "{m}");
    assert!(!m.contains("tenant-runtime/bench"), "raw paths: {m}");
    assert_eq!(
        value(
            &m,
            &format!(
                "hermes_tenantd_http_request_duration_seconds_count{{method=\"GET\",{version}}}"
            )
        ),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        value(&m, "hermes_tenantd_auth_failures_total"),
        Some(2.0),
        "{m}"
    );
}
