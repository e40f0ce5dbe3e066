//! Memory: create, list, search, delete, stats.

mod common;
use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn memory_round_trip_search_delete_and_stats() {
    let d = TestDaemon::start().await;
    let mut ids = Vec::new();
    for (content, tags, source) in [
        (
            "The user prefers metric units",
            vec!["preferences"],
            "agent",
        ),
        (
            "The user's dog is called Biscuit",
            vec!["pets", "family"],
            "hub",
        ),
        (
            "Prefers answers in French",
            vec!["preferences", "language"],
            "agent",
        ),
    ] {
        let r = d
            .post("/memory")
            .json(&json!({"content": content, "tags": tags, "source": source}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 201);
        let m: Value = r.json().await.expect("json");
        assert_eq!(m["content"], content);
        ids.push(m["id"].as_i64().expect("id"));
    }
    // Search by content (stemmed) and by tag.
    let v: Value = d.get_json("/memory/search?q=prefer").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2), "{v}");
    let v: Value = d.get_json("/memory/search?q=pets").await;
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], ids[1]);
    let v: Value = d.get_json("/memory/search?q=biscuit").await;
    assert!(
        v["items"][0]["snippet"]
            .as_str()
            .unwrap_or_default()
            .contains("<mark>Biscuit</mark>")
    );

    let v: Value = d.get_json("/memory?limit=2").await;
    let got: Vec<i64> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(got, vec![ids[2], ids[1]]);
    assert!(v["next_cursor"].is_string());

    let s: Value = d.get_json("/memory/stats").await;
    assert_eq!(s["count"], 3);
    assert_eq!(s["by_source"]["agent"], 2);
    assert!(s["total_bytes"].as_i64().unwrap_or(0) > 50);

    let r = d
        .delete(&format!("/memory/{}", ids[1]))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 204);
    let r = d
        .delete(&format!("/memory/{}", ids[1]))
        .send()
        .await
        .expect("send");
    expect_problem(r, 404, "not_found").await;
    let v: Value = d.get_json("/memory/search?q=biscuit").await;
    assert_eq!(
        v["items"].as_array().map(Vec::len),
        Some(0),
        "deleted memory still indexed"
    );
    let s: Value = d.get_json("/memory/stats").await;
    assert_eq!(s["count"], 2);

    let r = d.delete("/memory/abc").send().await.expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d
        .post("/memory")
        .json(&json!({"content": "  "}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d
        .post("/memory")
        .json(&json!({"content": "x", "colour": "red"}))
        .send()
        .await
        .expect("send");
    let v = expect_problem(r, 400, "invalid_argument").await;
    assert!(
        v["message"].as_str().unwrap_or_default().contains("colour"),
        "{v}"
    );
    let r = d
        .get("/memory/search?q=%22open")
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_query").await;
}
