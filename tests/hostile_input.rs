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
    // there are reader connections). `/files` has no root configured here.
    let reads = PAGINATED.iter().filter(|r| **r != "/files").chain(&[
        "/version",
        "/agent",
        "/memory/stats",
        "/usage",
        "/env",
        "/settings",
        "/agent-cron",
        "/agent-card",
    ]);
    for _ in 0..3 {
        let r = d
            .client
            .get(d.url("/v1/readyz"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        for route in reads.clone() {
            let r = d.get(route).send().await.expect("send");
            assert_eq!(r.status(), 200, "{route}");
        }
    }
}

#[tokio::test]
async fn times_outside_years_0000_to_9999_are_refused_and_never_rendered() {
    let ws = tempfile::tempdir().expect("workspace");
    let d = TestDaemon::start_with(Options {
        config_extra: format!(
            "[[files.roots]]\nname = \"workspace\"\npath = \"{}\"\n",
            ws.path().display()
        ),
        ..Default::default()
    })
    .await;
    // The usage period whose end is 10000-01-01.
    let r = d.get("/usage?period=9999-12").send().await.expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d
        .get("/usage?from=9999-12-01T00:00:00Z&to=9999-12-31T23:00:00-02:00")
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let v = d.get_json("/usage?period=9999-11").await;
    assert_eq!(v["to"], "9999-12-01T00:00:00.000Z", "{v}");

    // Cron schedules whose firing would be past 9999.
    for schedule in [
        "99999999999m",
        "every 99999999999m",
        "9999-12-31T23:00:00-02:00",
    ] {
        let r = d
            .post("/agent-cron")
            .json(&json!({"name": "far", "schedule": schedule, "prompt": "hi"}))
            .send()
            .await
            .expect("send");
        expect_problem(r, 400, "invalid_argument").await;
    }

    // Search filters.
    let r = d
        .get("/conversations/search?q=hello&since=9999-12-31T23:00:00-02:00")
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;

    // A file the agent dated far in the future lists with a four-digit
    // year (the file system may clamp the time first; either way, no 5xx).
    let path = ws.path().join("future.txt");
    std::fs::write(&path, "x").expect("write");
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let times = [
        libc::timespec {
            tv_sec: 1 << 50,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 1 << 50,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a valid NUL-terminated path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat: {}", std::io::Error::last_os_error());
    let r = d.get("/files?root=workspace").send().await.expect("send");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    let modified = v["entries"][0]["modified"].as_str().expect("modified");
    assert_eq!(modified.find('-'), Some(4), "{modified}");
}
