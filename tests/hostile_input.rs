//! Hostile input cannot reduce capacity: junk cursors on every paginated
//! route answer 4xx (never 5xx), and afterwards every read route and
//! readiness still answer 200.

mod common;
use common::*;
use futures_util::StreamExt;
use rand::Rng;
use serde_json::json;

/// Every route that takes a `cursor` (the `{sid}` one is filled in).
const PAGINATED: &[&str] = &[
    "/conversations",
    "/conversations/search?q=hello",
    "/conversations/s-1/messages",
    "/memory",
    "/memory/search?q=hello",
    "/runs",
    "/skills",
    "/files",
];

/// Percent-encode every byte, so any byte sequence reaches the daemon.
fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// One junk cursor: raw bytes, random UTF-8, base64-looking text, hex of
/// junk, or a well-formed cursor of the wrong shape.
fn junk(rng: &mut impl Rng) -> String {
    let len = rng.random_range(0..40);
    match rng.random_range(0..6) {
        0 => percent(&(0..len).map(|_| rng.random::<u8>()).collect::<Vec<_>>()),
        1 => {
            let s: String = (0..len).map(|_| rng.random::<char>()).collect();
            percent(s.as_bytes())
        }
        2 => {
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
            let s: Vec<u8> = (0..len)
                .map(|_| B64[rng.random_range(0..B64.len())])
                .collect();
            percent(&s)
        }
        3 => {
            let bytes: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        // A multi-byte character where a hex pair is expected (the panic
        // this test was written for), then more hex.
        4 => format!("%E2%82%AC{}", "0".repeat(len % 4)),
        _ => {
            let text = format!(
                "{}|{}|{}",
                rng.random::<i64>(),
                rng.random::<u32>(),
                "x".repeat(len)
            );
            text.bytes().map(|b| format!("{b:02x}")).collect()
        }
    }
}

#[tokio::test]
async fn junk_cursors_never_fail_the_server_and_reads_stay_up() {
    let d = TestDaemon::start().await;
    // Some data so cursors reach the keyset queries.
    let r = d
        .post("/conversations/s-1/messages")
        .json(&json!({"messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .expect("send");
    assert!(r.status().is_success(), "{}", r.status());
    let r = d
        .post("/memory")
        .json(&json!({"content": "hello memory"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);

    let mut rng = rand::rng();
    let mut urls = Vec::new();
    for _ in 0..1000 {
        let cursor = junk(&mut rng);
        for route in PAGINATED {
            let sep = if route.contains('?') { '&' } else { '?' };
            urls.push(format!("{}{sep}cursor={cursor}", d.tenant_url(route)));
        }
    }
    let failures: Vec<String> = futures_util::stream::iter(urls)
        .map(|url| {
            let req = d.client.get(&url).bearer_auth(TOKEN);
            async move {
                let r = req.send().await.expect("send");
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                (status.is_server_error() || !body.starts_with('{'))
                    .then(|| format!("{status} {url}: {body}"))
            }
        })
        .buffer_unordered(8)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Capacity intact: readiness and every read route (more times than
    // there are reader connections).
    for _ in 0..3 {
        let r = d
            .client
            .get(d.url("/v1/readyz"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        for route in PAGINATED.iter().filter(|r| **r != "/files") {
            let r = d.get(route).send().await.expect("send");
            assert_eq!(r.status(), 200, "{route}");
        }
    }
}
