//! Conversations: append, list, messages, full-text search.

mod common;
use common::*;
use serde_json::{Value, json};

async fn append(d: &TestDaemon, session: &str, body: Value) -> Value {
    let r = d
        .post(&format!("/conversations/{session}/messages"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    r.json().await.expect("json")
}

async fn search(d: &TestDaemon, query: &str) -> Value {
    let r = d
        .get(&format!("/conversations/search?{query}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    r.json().await.expect("json")
}

#[tokio::test]
async fn appended_messages_are_found_ranked_with_highlighted_snippets() {
    let d = TestDaemon::start().await;
    append(
        &d,
        "s-web",
        json!({"platform": "web", "title": "Trip", "messages": [
            {"role": "user", "content": "Plan a trip to Lisbon in spring", "created_at": "2026-03-01T10:00:00Z"},
            {"role": "assistant", "content": "Lisbon in spring is lovely. Lisbon trams, Lisbon food, Lisbon views.", "created_at": "2026-03-01T10:00:05Z", "tokens_used": 42,
             "tool_calls": [{"name": "web.search", "arguments": {"q": "lisbon"}}]}
        ]}),
    )
    .await;
    append(
        &d,
        "s-tg",
        json!({"platform": "telegram", "messages": [
            {"role": "user", "content": "What is the weather in Porto? <script>alert(1)</script> Lisbon maybe", "created_at": 1780000000.5}
        ]}),
    )
    .await;

    let v = search(&d, "q=lisbon").await;
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    // Four mentions in a short message rank first (bm25: lower is better).
    assert_eq!(items[0]["role"], "assistant");
    assert!(items[0]["score"].as_f64() <= items[1]["score"].as_f64());
    assert!(
        items[0]["snippet"]
            .as_str()
            .expect("snippet")
            .contains("<mark>Lisbon</mark>")
    );
    // Content is escaped: only our <mark> is markup.
    let tg = items
        .iter()
        .find(|i| i["platform"] == "telegram")
        .expect("telegram hit");
    let snippet = tg["snippet"].as_str().expect("snippet");
    assert!(snippet.contains("&lt;script&gt;"), "{snippet}");
    assert!(!snippet.contains("<script>"), "{snippet}");
    assert_eq!(tg["created_at"], "2026-05-28T20:26:40.500Z");

    // Filters.
    let v = search(&d, "q=lisbon&platform=telegram").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
    let v = search(&d, "q=lisbon&role=user").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2));
    let v = search(
        &d,
        "q=lisbon&since=2026-03-01T10:00:01Z&until=2026-04-01T00:00:00Z",
    )
    .await;
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["role"], "assistant");
    let v = search(&d, "q=lisbon&session_id=s-tg").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
    // Stemming (porter): "trams" matches "tram".
    let v = search(&d, "q=tram").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));

    // Tool calls and tokens round-trip.
    let m: Value = d.get_json("/conversations/s-web/messages").await;
    let items = m["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["tool_calls"][0]["name"], "web.search");
    assert_eq!(items[1]["tokens_used"], 42);
}

#[tokio::test]
async fn search_pagination_is_stable_and_complete() {
    let d = TestDaemon::start().await;
    let messages: Vec<Value> = (0..37)
        .map(|i| json!({"role": "user", "content": format!("needle number {i} {}", "hay ".repeat(i % 5))}))
        .collect();
    append(&d, "s1", json!({"messages": messages})).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("q=needle&limit=10&cursor={c}"),
            None => "q=needle&limit=10".into(),
        };
        let v = search(&d, &q).await;
        for it in v["items"].as_array().expect("items") {
            seen.push(it["message_id"].as_i64().expect("id"));
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), 37, "{seen:?}");
    assert_eq!(unique.len(), 37, "duplicates across pages");
    // Same query again gives the same order.
    let first = search(&d, "q=needle&limit=10").await;
    let ids: Vec<i64> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["message_id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, seen[..10].to_vec());
}

#[tokio::test]
async fn bad_fts_syntax_is_a_400_and_plain_mode_accepts_anything() {
    let d = TestDaemon::start().await;
    append(
        &d,
        "s1",
        json!({"messages": [{"role": "user", "content": "state-of-the-art \"quoted\" thing"}]}),
    )
    .await;
    for bad in [
        "%22unterminated",
        "AND",
        "foo%20AND",
        "(foo",
        "nosuchcol:foo",
        "NEAR(",
        "*",
    ] {
        let r = d
            .get(&format!("/conversations/search?q={bad}"))
            .send()
            .await
            .expect("send");
        expect_problem(r, 400, "invalid_query").await;
    }
    let v = search(&d, "q=state-of-the-art&mode=plain").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
    // Quotes and brackets are literal in plain mode: no error, the word matches.
    let v = search(&d, "q=%22quoted%22%20(&mode=plain").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
    let v = search(&d, "q=absent%20(&mode=plain").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0));
    let r = d.get("/conversations/search").send().await.expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d
        .get("/conversations/search?q=x&role=robot")
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d
        .get("/conversations/search?q=x&since=yesterday")
        .send()
        .await
        .expect("send");
    let v = expect_problem(r, 400, "invalid_argument").await;
    assert!(
        v["message"].as_str().unwrap_or_default().contains("since"),
        "{v}"
    );
}

#[tokio::test]
async fn sessions_list_newest_first_with_cursor_and_import_is_idempotent() {
    let d = TestDaemon::start().await;
    for i in 0..5 {
        append(
            &d,
            &format!("s{i}"),
            json!({"platform": if i % 2 == 0 { "web" } else { "discord" }, "messages": [
                {"role": "user", "content": format!("hello {i}"), "created_at": 1_700_000_000 + i * 60, "external_id": format!("ext-{i}")}
            ]}),
        )
        .await;
    }
    let v: Value = d.get_json("/conversations?limit=2").await;
    let ids: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["s4", "s3"]);
    let c = v["next_cursor"].as_str().expect("cursor");
    let v: Value = d
        .get_json(&format!("/conversations?limit=2&cursor={c}"))
        .await;
    let ids: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["s2", "s1"]);
    let v: Value = d.get_json("/conversations?platform=discord").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2));

    // Re-importing the same external ids inserts nothing.
    let again = append(
        &d,
        "s1",
        json!({"messages": [
            {"role": "user", "content": "hello 1", "external_id": "ext-1"},
            {"role": "assistant", "content": "new", "external_id": "ext-new"}
        ]}),
    )
    .await;
    assert_eq!(again["inserted"], 1);
    assert_eq!(again["skipped"], 1);
    let s: Value = d.get_json("/conversations/s1/messages").await;
    assert_eq!(s["items"].as_array().map(Vec::len), Some(2));

    let r = d
        .get("/conversations/nope/messages")
        .send()
        .await
        .expect("send");
    expect_problem(r, 404, "not_found").await;
    let r = d
        .get("/conversations?cursor=zz")
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;
}

#[tokio::test]
async fn a_bad_message_rejects_the_whole_batch_and_writes_nothing() {
    let d = TestDaemon::start().await;
    let r = d
        .post("/conversations/s1/messages")
        .json(&json!({"messages": [
            {"role": "user", "content": "fine"},
            {"role": "robot", "content": "bad role"}
        ]}))
        .send()
        .await
        .expect("send");
    let v = expect_problem(r, 400, "invalid_argument").await;
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("messages[1].role"), "{msg}");
    let r = d
        .post("/conversations/s1/messages")
        .json(&json!({"messages": [
            {"role": "user", "content": "fine"},
            {"role": "user", "content": "x", "tokens_used": -1}
        ]}))
        .send()
        .await
        .expect("send");
    let v = expect_problem(r, 400, "invalid_argument").await;
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tokens_used"),
        "{v}"
    );
    let r = d
        .post("/conversations/bad%20id/messages")
        .json(&json!({"messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    // Nothing was written by the refused batches.
    let r = d
        .get("/conversations/s1/messages")
        .send()
        .await
        .expect("send");
    expect_problem(r, 404, "not_found").await;
    let v: Value = d.get_json("/conversations").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0));
}

/// Values `schema/openapi.yaml` calls valid and the daemon once refused
/// (schemathesis found them): integral floats, lengths in characters, an
/// empty cursor everywhere, ignored `path` without `root`; and values it
/// calls invalid stay refused.
#[tokio::test]
async fn inputs_the_document_calls_valid_are_taken() {
    let d = TestDaemon::start().await;
    let long = "€".repeat(100_000); // 100,000 characters, 300,000 bytes
    let r = d
        .post("/conversations/doc-valid/messages")
        .json(&json!({"title": "é".repeat(512), "messages": [
            {"role": "user", "content": long, "tokens_used": 3362.0}
        ]}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let page = d.get_json("/conversations/doc-valid/messages").await;
    assert_eq!(page["items"][0]["tokens_used"], 3362);
    assert_eq!(
        page["items"][0]["content"]
            .as_str()
            .map(|c| c.chars().count()),
        Some(100_000)
    );

    let r = d
        .post("/conversations/doc-valid/messages")
        .json(&json!({"messages": [{"role": "user", "content": "x", "tokens_used": 1.5}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400, "a fraction is not an integer");

    for path in ["/skills?cursor=", "/files?path=a/b", "/files?cursor=61"] {
        let r = d.get(path).send().await.expect("send");
        assert_eq!(r.status(), 200, "{path}");
    }
    for path in [
        "/conversations/doc-valid/messages?cursor=3A",
        "/conversations/doc-valid/messages?cursor=2b35",
        "/files?cursor=zz",
    ] {
        let r = d.get(path).send().await.expect("send");
        assert_eq!(r.status(), 400, "{path}");
    }
}

#[tokio::test]
async fn search_sort_recent_pages_newest_first_and_bad_sort_is_a_400() {
    let d = TestDaemon::start().await;
    let messages: Vec<Value> = (0..23)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("needle {}", "hay ".repeat(i % 4))}))
        .collect();
    let appended = append(&d, "s1", json!({"platform": "web", "messages": messages})).await;
    let mut stored: Vec<i64> = appended["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.as_i64().expect("id"))
        .collect();
    stored.reverse();
    for extra in ["", "&platform=web", "&role=user"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("q=needle&sort=recent&limit=5{extra}&cursor={c}"),
                None => format!("q=needle&sort=recent&limit=5{extra}"),
            };
            let v = search(&d, &q).await;
            for it in v["items"].as_array().expect("items") {
                assert!(
                    it["snippet"]
                        .as_str()
                        .expect("snippet")
                        .contains("<mark>needle</mark>"),
                    "{it}"
                );
                assert!(it["score"].is_null(), "no bm25 in recent order: {it}");
                seen.push(it["message_id"].as_i64().expect("id"));
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let want: Vec<i64> = if extra == "&role=user" {
            // Even positions in request order were the user's.
            let mut ids: Vec<i64> = stored.iter().rev().step_by(2).copied().collect();
            ids.reverse();
            ids
        } else {
            stored.clone()
        };
        assert_eq!(seen, want, "{extra}");
    }
    let r = d
        .get("/conversations/search?q=needle&sort=oldest")
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;
}
