//! Skills: the index follows the tree on disk without a restart, enabled
//! state lands in the gateway's config.yaml and survives restarts.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

fn options(home: &Path) -> Options {
    Options {
        config_extra: format!(
            "[gateway]\nhermes_home = \"{}\"\n\n[skills]\ndebounce = \"100ms\"\n",
            home.display()
        ),
        ..Options::default()
    }
}

fn write_skill(home: &Path, rel: &str, name: &str, description: &str) -> PathBuf {
    let dir = home.join("skills").join(rel);
    std::fs::create_dir_all(&dir).expect("mkdir skill");
    std::fs::write(
        dir.join("SKILL.md"),
        format!("---\nname: {name}\ndescription: {description}\nversion: 1.0.0\nmetadata:\n  hermes:\n    tags: [demo]\n---\n# {name}\n"),
    )
    .expect("write SKILL.md");
    dir
}

async fn skills(d: &TestDaemon, query: &str) -> Vec<Value> {
    let v: Value = d.get_json(&format!("/skills{query}")).await;
    v["items"].as_array().cloned().unwrap_or_default()
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Poll `GET /skills` until `pred` holds; returns how long it took.
async fn wait_for(d: &TestDaemon, what: &str, pred: impl Fn(&[Value]) -> bool) -> Duration {
    let start = Instant::now();
    // Far below the 5 min rescan: seeing the change proves the watcher did it.
    let deadline = start + Duration::from_secs(20);
    loop {
        let items = skills(d, "").await;
        if pred(&items) {
            return start.elapsed();
        }
        if Instant::now() > deadline {
            panic!("{what}: not visible within 20s; index: {items:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn skills_on_disk_are_indexed_and_followed_without_restart() {
    let home = tempfile::tempdir().expect("tempdir");
    write_skill(
        home.path(),
        "research/arxiv",
        "arxiv",
        "Search arXiv papers",
    );
    write_skill(home.path(), "notes", "notes", "Keep quick notes");
    let bad = home.path().join("skills/research/broken");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(bad.join("SKILL.md"), "---\nname: [oops\n---\n").expect("write");
    let d = TestDaemon::start_with(options(home.path())).await;

    wait_for(&d, "initial scan", |s| s.len() == 3).await;
    let all = skills(&d, "").await;
    assert_eq!(names(&all), vec!["arxiv", "broken", "notes"]);
    let arxiv = &all[0];
    assert_eq!(arxiv["category"], "research");
    assert_eq!(arxiv["path"], "research/arxiv");
    assert_eq!(arxiv["enabled"], true);
    assert_eq!(arxiv["front_matter"]["version"], "1.0.0");
    assert_eq!(arxiv["content_hash"].as_str().map(str::len), Some(64));
    assert!(arxiv.get("error").is_none());
    assert!(
        all[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not valid YAML")),
        "{}",
        all[1]
    );
    assert_eq!(all[2]["category"], Value::Null);

    // Filters: category, no category, full text prefix.
    assert_eq!(
        names(&skills(&d, "?category=research").await),
        vec!["arxiv", "broken"]
    );
    assert_eq!(names(&skills(&d, "?category=_").await), vec!["notes"]);
    assert_eq!(names(&skills(&d, "?q=pap").await), vec!["arxiv"]);
    assert_eq!(names(&skills(&d, "?q=quick%20no").await), vec!["notes"]);

    // Created.
    write_skill(home.path(), "research/pubmed", "pubmed", "Search PubMed");
    let created = wait_for(&d, "created skill", |s| names(s).contains(&"pubmed".into())).await;

    // Edited.
    write_skill(
        home.path(),
        "research/pubmed",
        "pubmed",
        "Search biomedical literature",
    );
    let edited = wait_for(&d, "edited skill", |s| {
        s.iter()
            .any(|x| x["name"] == "pubmed" && x["description"] == "Search biomedical literature")
    })
    .await;
    assert_eq!(names(&skills(&d, "?q=biomed").await), vec!["pubmed"]);

    // Renamed (directory moved to another category).
    std::fs::create_dir_all(home.path().join("skills/medicine")).expect("mkdir");
    std::fs::rename(
        home.path().join("skills/research/pubmed"),
        home.path().join("skills/medicine/pubmed"),
    )
    .expect("rename");
    let renamed = wait_for(&d, "renamed skill", |s| {
        s.iter()
            .any(|x| x["name"] == "pubmed" && x["path"] == "medicine/pubmed")
            && !s.iter().any(|x| x["path"] == "research/pubmed")
    })
    .await;

    // Fixed, then removed.
    write_skill(home.path(), "research/broken", "broken", "Fixed now");
    wait_for(&d, "fixed skill", |s| {
        s.iter()
            .any(|x| x["name"] == "broken" && x.get("error").is_none())
    })
    .await;
    std::fs::remove_dir_all(home.path().join("skills/research/arxiv")).expect("rm");
    let removed = wait_for(&d, "removed skill", |s| !names(s).contains(&"arxiv".into())).await;
    eprintln!(
        "change-to-visible: created {created:?}, edited {edited:?}, renamed {renamed:?}, removed {removed:?}"
    );
}

#[tokio::test]
async fn enabled_state_lands_in_config_yaml_and_survives_restart() {
    let home = tempfile::tempdir().expect("tempdir");
    write_skill(
        home.path(),
        "research/arxiv",
        "arxiv",
        "Search arXiv papers",
    );
    write_skill(home.path(), "notes", "notes", "Keep quick notes");
    std::fs::write(
        home.path().join("config.yaml"),
        "model:\n  default: m1\nskills:\n  disabled: []\n",
    )
    .expect("config.yaml");
    let mut d = TestDaemon::start_with(options(home.path())).await;
    wait_for(&d, "scan", |s| s.len() == 2).await;

    let r = d
        .put("/skills/arxiv/state")
        .json(&serde_json::json!({"enabled": false}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let cfg: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(home.path().join("config.yaml")).expect("read"),
    )
    .expect("yaml");
    assert_eq!(cfg["skills"]["disabled"][0].as_str(), Some("arxiv"));
    assert_eq!(cfg["model"]["default"].as_str(), Some("m1"), "kept");
    assert_eq!(names(&skills(&d, "?enabled=false").await), vec!["arxiv"]);
    assert_eq!(names(&skills(&d, "?enabled=true").await), vec!["notes"]);

    let card: Value = d.get_json("/agent-card").await;
    let card_skills: Vec<&str> = card["skills"]
        .as_array()
        .expect("skills")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(
        card_skills,
        vec!["notes"],
        "disabled skills are not advertised"
    );
    assert_eq!(card["protocolVersion"], "0.3.0");
    assert!(card["capabilities"]["streaming"].is_boolean());

    let r = d
        .put("/skills/nope/state")
        .json(&serde_json::json!({"enabled": false}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 404, "not_found").await;
    let r = d
        .put("/skills/notes/state")
        .json(&serde_json::json!({"enabled": "no"}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;

    // Down: a skill added meanwhile is picked up by the start scan.
    let keep = d.keep_dir();
    let dir = d.dir.clone();
    d.terminate();
    write_skill(
        home.path(),
        "late",
        "late",
        "Added while the daemon was down",
    );
    let d = TestDaemon::start_with(Options {
        dir: Some(dir),
        ..options(home.path())
    })
    .await;
    wait_for(&d, "start rescan", |s| names(s).contains(&"late".into())).await;
    let arxiv = skills(&d, "?q=arxiv").await;
    assert_eq!(
        arxiv[0]["enabled"], false,
        "disabled state survives a restart"
    );
    drop(keep);
}

#[tokio::test]
async fn agent_card_tags_are_unique_and_version_lists_every_route_family() {
    let home = tempfile::tempdir().expect("tempdir");
    // Category `research` plus the front matter's own `research` tag.
    let dir = home.path().join("skills/research/arxiv");
    std::fs::create_dir_all(&dir).expect("mkdir skill");
    std::fs::write(
        dir.join("SKILL.md"),
        "---\nname: arxiv\ndescription: Search arXiv\nmetadata:\n  hermes:\n    tags: [research, arxiv, research]\n---\n# arxiv\n",
    )
    .expect("write SKILL.md");
    let d = TestDaemon::start_with(options(home.path())).await;
    wait_for(&d, "scan", |s| s.len() == 1).await;
    let card: Value = d.get_json("/agent-card").await;
    assert_eq!(
        card["skills"][0]["tags"],
        serde_json::json!(["research", "arxiv"]),
        "{card}"
    );

    let v: Value = d.get_json("/version").await;
    let caps: Vec<&str> = v["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "runs",
        "agent",
        "agent-cron",
        "conversations.search",
        "agent-card",
    ] {
        assert!(caps.contains(&want), "{want} missing from {caps:?}");
    }
}

#[tokio::test]
async fn skill_files_are_listed_and_readable_but_nothing_outside() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = write_skill(
        home.path(),
        "research/arxiv",
        "arxiv",
        "Search arXiv papers",
    );
    std::fs::create_dir_all(dir.join("references")).expect("mkdir");
    std::fs::write(dir.join("references/api.md"), "# API").expect("write");
    std::fs::write(home.path().join(".env"), "OPENAI_API_KEY=TOPSECRET-1").expect("write");
    std::os::unix::fs::symlink(home.path().join(".env"), dir.join("env-link")).expect("symlink");
    let d = TestDaemon::start_with(options(home.path())).await;
    wait_for(&d, "scan", |s| s.len() == 1).await;

    let v: Value = d.get_json("/skills/research/arxiv/files").await;
    let paths: Vec<&str> = v["files"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        vec![
            "research/arxiv/SKILL.md",
            "research/arxiv/references/api.md"
        ]
    );

    let v: Value = d
        .get_json("/skill-files/research/arxiv/references/api.md")
        .await;
    assert_eq!(v["content"], "# API");

    let r = d
        .get("/skills/research/nope/files")
        .send()
        .await
        .expect("send");
    expect_problem(r, 404, "not_found").await;
    for bad in [
        "/skill-files/research/arxiv/env-link",
        "/skill-files/..%2F.env",
        "/skill-files/research/..%2F..%2F.env",
        "/skill-files/%2e%2e/.env",
        "/skill-files/research/arxiv/%252e%252e/x",
        "/skill-files/research%5Carxiv%5CSKILL.md",
        "/skill-files/research/arxiv/SKILL.md%00",
        "/skills/..%2F..%2F/x/files",
    ] {
        let r = d.get(bad).send().await.expect("send");
        let status = r.status().as_u16();
        let body = r.text().await.expect("body");
        assert!(matches!(status, 400 | 404), "{bad}: {status} {body}");
        assert!(!body.contains("TOPSECRET"), "{bad}: {body}");
    }
}

#[tokio::test]
async fn skills_tree_removed_and_recreated_is_followed() {
    let home = tempfile::tempdir().expect("tempdir");
    let d = TestDaemon::start_with(options(home.path())).await;
    d.wait_for_log(
        "waiting for the skills directory",
        std::time::Duration::from_secs(5),
    )
    .await;
    write_skill(
        home.path(),
        "first",
        "first",
        "Appears once the tree exists",
    );
    wait_for(&d, "tree created after start", |s| {
        names(s) == vec!["first"]
    })
    .await;
    std::fs::remove_dir_all(home.path().join("skills")).expect("rm tree");
    wait_for(&d, "tree removed", |s| s.is_empty()).await;
    write_skill(home.path(), "again", "again", "Back again");
    wait_for(&d, "tree recreated", |s| names(s) == vec!["again"]).await;
}
