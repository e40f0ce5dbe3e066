//! A full data volume: writes answer `507 insufficient_storage`, reads keep
//! working, readiness says the store cannot write, and once space is freed
//! writes work again without a restart. Nothing acknowledged is lost.
//!
//! Needs root to mount a small tmpfs; skipped with a printed reason
//! otherwise (like the deploy suite).

mod common;
use common::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot mount a tmpfs".into());
        }
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn remember(d: &TestDaemon, content: &str) -> reqwest::Response {
    d.post("/memory")
        .json(&json!({ "content": content }))
        .send()
        .await
        .expect("send")
}

/// Fill the volume holding `path` completely; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    for chunk in [1 << 20, 1 << 12, 1 << 9, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

#[tokio::test]
async fn full_volume_is_507_reads_work_and_writes_recover_without_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let _mount = match Tmpfs::mount(&data, "16m") {
        Ok(m) => m,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let home = data.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let d = TestDaemon::start_with(Options {
        dir: Some(tmp.path().to_path_buf()),
        config_extra: format!("[gateway]\nhermes_home = \"{}\"\n", home.display()),
        ..Default::default()
    })
    .await;
    assert_eq!(remember(&d, "before the disk filled").await.status(), 201);

    let filler = fill(&data);
    // SQLite may still fit a few rows in pages it already holds; keep
    // writing until the volume refuses. Every 201 must survive.
    let mut acknowledged = vec!["before the disk filled".to_owned()];
    let mut refused = None;
    for i in 0..3000 {
        let content = format!("row {i} {}", "x".repeat(4000));
        let r = remember(&d, &content).await;
        match r.status().as_u16() {
            201 => acknowledged.push(content),
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("the full volume never refused a write");
    expect_problem(refused, 507, "insufficient_storage").await;

    // Files too: the .env rewrite needs space.
    let r = d
        .put("/env/SOME_KEY")
        .json(&json!({"value": "v".repeat(1000)}))
        .send()
        .await
        .expect("send");
    expect_problem(r, 507, "insufficient_storage").await;

    // Reads keep working; readiness says the store cannot write.
    let r = d.get("/memory?limit=200").send().await.expect("send");
    assert_eq!(r.status(), 200);
    let r = d
        .client
        .get(d.url("/v1/readyz"))
        .send()
        .await
        .expect("send");
    let v = expect_problem(r, 503, "unavailable").await;
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot write"),
        "{v}"
    );

    // Space freed: writes work again, no restart.
    std::fs::remove_file(&filler).expect("free space");
    let r = d
        .client
        .get(d.url("/v1/readyz"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(remember(&d, "after space was freed").await.status(), 201);
    acknowledged.push("after space was freed".into());

    let mut stored = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/memory?limit=200&cursor={c}"),
            None => "/memory?limit=200".to_owned(),
        };
        let v = d.get_json(&path).await;
        for item in v["items"].as_array().expect("items") {
            stored.push(item["content"].as_str().expect("content").to_owned());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    for a in &acknowledged {
        assert!(
            stored.contains(a),
            "acknowledged row lost: {}",
            &a[..a.len().min(20)]
        );
    }
}
