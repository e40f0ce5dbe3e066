//! Files: roots, pages, previews, downloads; and a traversal corpus that
//! every files route must refuse without ever returning the file.

mod common;
use common::*;

use std::os::unix::fs::symlink;
use std::path::Path;

use serde_json::Value;

const SECRET: &str = "TOPSECRET-c0ffee";

struct Setup {
    _home: tempfile::TempDir,
    _outside: tempfile::TempDir,
    d: TestDaemon,
}

/// A Hermes home with a workspace full of traps, and a third root
/// misconfigured to the whole home.
async fn setup() -> Setup {
    let home = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let ws = h.join("workspace");
    std::fs::create_dir_all(ws.join("sub")).expect("mkdir");
    std::fs::create_dir_all(h.join("skills")).expect("mkdir");
    std::fs::write(ws.join("a.txt"), "hello world").expect("write");
    std::fs::write(ws.join("sub/b.md"), "# b").expect("write");
    std::fs::write(ws.join("bin.dat"), [0u8, 159, 146, 150]).expect("write");
    std::fs::write(ws.join("big.txt"), "x".repeat(5000)).expect("write");
    std::fs::write(ws.join("résumé.txt"), "cv").expect("write");
    std::fs::write(ws.join(".env"), format!("A={SECRET}")).expect("write");
    std::fs::write(ws.join(".env.local"), format!("A={SECRET}")).expect("write");
    std::fs::write(h.join(".env"), format!("OPENAI_API_KEY={SECRET}")).expect("write");
    std::fs::write(h.join("auth.json"), SECRET).expect("write");
    std::fs::write(
        h.join("config.yaml"),
        format!("model:\n  api_key: {SECRET}\n"),
    )
    .expect("write");
    std::fs::write(h.join("state.db"), SECRET).expect("write");
    std::fs::create_dir_all(h.join("logs")).expect("mkdir");
    std::fs::write(h.join("logs/agent.log"), SECRET).expect("write");
    std::fs::write(outside.path().join("secret.txt"), SECRET).expect("write");
    symlink(outside.path(), ws.join("out")).expect("symlink");
    symlink(outside.path().join("secret.txt"), ws.join("secret-link")).expect("symlink");
    symlink("loop1", ws.join("loop2")).expect("symlink");
    symlink("loop2", ws.join("loop1")).expect("symlink");
    symlink("../.env", ws.join("home-env")).expect("symlink");
    symlink("a.txt", ws.join("fine-link")).expect("symlink");
    symlink("/etc/passwd", ws.join("passwd")).expect("symlink");
    let mut opts = Options::default();
    // The data dir is created by the harness under `dir/data`; link to it.
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_path = dir.keep();
    std::fs::create_dir_all(dir_path.join("data")).expect("mkdir");
    std::fs::write(dir_path.join("data/planted.txt"), SECRET).expect("write");
    symlink(dir_path.join("data"), ws.join("daemon-data")).expect("symlink");
    opts.dir = Some(dir_path);
    opts.config_extra = format!(
        "[gateway]\nhermes_home = \"{h}\"\n\n[files]\npreview_bytes = 4096\n\n[[files.roots]]\nname = \"workspace\"\npath = \"{ws}\"\n\n[[files.roots]]\nname = \"skills\"\npath = \"{h}/skills\"\nread_only = true\n\n[[files.roots]]\nname = \"home\"\npath = \"{h}\"\nread_only = true\n\n[[files.roots]]\nname = \"data\"\npath = \"{data}\"\n",
        h = h.display(),
        ws = ws.display(),
        data = opts
            .dir
            .as_ref()
            .map(|d| d.join("data"))
            .unwrap_or_default()
            .display(),
    );
    let d = TestDaemon::start_with(opts).await;
    Setup {
        _home: home,
        _outside: outside,
        d,
    }
}

async fn json(d: &TestDaemon, path: &str) -> (u16, Value) {
    let r = d.get(path).send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    assert!(!text.contains(SECRET), "{path} leaked: {text}");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The names of a listing's entries.
fn entry_names(v: &Value) -> Vec<&str> {
    v["entries"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn roots_pages_previews_and_downloads() {
    let s = setup().await;
    let d = &s.d;
    let (st, v) = json(d, "/files").await;
    assert_eq!(st, 200);
    let roots: Vec<(&str, bool)> = v["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or(""),
                r["available"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    assert_eq!(
        roots,
        vec![
            ("workspace", true),
            ("skills", true),
            ("home", true),
            ("data", false)
        ],
        "the daemon's own data dir is never available"
    );
    assert!(
        !v.to_string().contains(d.dir.to_str().unwrap_or("@")),
        "no host paths: {v}"
    );

    // Pages of 3, hiding private and escaping entries.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/files?root=workspace&limit=3&cursor={c}"),
            None => "/files?root=workspace&limit=3".to_owned(),
        };
        let (st, v) = json(d, &q).await;
        assert_eq!(st, 200, "{v}");
        for e in v["entries"].as_array().expect("entries") {
            seen.push(e["name"].as_str().unwrap_or_default().to_owned());
        }
        cursor = v["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![
            "a.txt",
            "big.txt",
            "bin.dat",
            "fine-link",
            "résumé.txt",
            "sub"
        ],
        "private names, symlinks out of the root and loops are hidden"
    );
    let (_, v) = json(d, "/files?root=home").await;
    let names = entry_names(&v);
    assert_eq!(
        names,
        vec!["skills", "workspace"],
        "Hermes' private state is hidden: {v}"
    );

    let (st, v) = json(d, "/files/content?root=workspace&path=sub/b.md").await;
    assert_eq!((st, v["content"].as_str()), (200, Some("# b")));
    let (st, v) = json(d, "/files/content?root=workspace&path=fine-link").await;
    assert_eq!((st, v["content"].as_str()), (200, Some("hello world")));
    let r = d
        .get("/files/content?root=workspace&path=bin.dat")
        .send()
        .await
        .expect("send");
    expect_problem(r, 415, "unsupported_media_type").await;
    let r = d
        .get("/files/content?root=workspace&path=big.txt")
        .send()
        .await
        .expect("send");
    expect_problem(r, 413, "file_too_large").await;
    let r = d
        .get("/files/content?root=workspace&path=sub")
        .send()
        .await
        .expect("send");
    expect_problem(r, 400, "invalid_argument").await;
    let r = d
        .get("/files/content?root=nope&path=a.txt")
        .send()
        .await
        .expect("send");
    expect_problem(r, 404, "not_found").await;

    let r = d
        .get("/files/download?root=workspace&path=r%C3%A9sum%C3%A9.txt")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-length"], "2");
    assert!(
        h["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/plain")
    );
    let disp = h["content-disposition"].to_str().unwrap_or("");
    assert!(
        disp.starts_with("attachment;") && disp.contains("UTF-8''r%C3%A9sum%C3%A9.txt"),
        "{disp}"
    );
    assert_eq!(r.bytes().await.expect("bytes").as_ref(), b"cv");
    let r = d
        .get("/files/download?root=workspace&path=bin.dat")
        .send()
        .await
        .expect("send");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        r.bytes().await.expect("bytes").as_ref(),
        &[0u8, 159, 146, 150]
    );
}

/// Query values as they go on the wire (already percent-encoded).
fn corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "%2E%2E/%2E%2E/etc/passwd",
        "%252e%252e%252fetc%252fpasswd",
        "%252e%252e/.env",
        "..",
        "%2e%2e",
        ".%2e/.env",
        "sub/../../.env",
        "sub%2F..%2F..%2F.env",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "//etc/passwd",
        "..%5C..%5Cetc%5Cpasswd",
        "sub%5Cb.md",
        "%5C%5Cserver%5Cshare",
        "C:%5CWindows%5Csystem32",
        "a.txt%00.md",
        "%00",
        "a%0Ab",
        "out/secret.txt",
        "secret-link",
        "home-env",
        "passwd",
        "daemon-data/planted.txt",
        "daemon-data",
        "loop1",
        "loop1/x",
        ".env",
        ".env.local",
        "sub/..%2F.env",
        "%c0%ae%c0%ae/.env",
        "..%c0%af.env",
        "%u002e%u002e/.env",
        "file:///etc/passwd",
        "~/.ssh/id_rsa",
        "....//....//etc/passwd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("a".repeat(5000));
    v.push("a/".repeat(100));
    v.push(format!("{}/x", "b".repeat(300)));
    v
}

#[tokio::test]
async fn traversal_corpus_is_refused_on_every_files_route() {
    let s = setup().await;
    let d = &s.d;
    let cases = corpus();
    assert!(cases.len() >= 30);
    let mut checked = 0;
    for root in ["workspace", "home"] {
        for case in &cases {
            for route in ["/files", "/files/content", "/files/download"] {
                let url = format!("{route}?root={root}&path={case}");
                let r = d.get(&url).send().await.expect("send");
                let status = r.status().as_u16();
                let body = r.bytes().await.expect("body");
                let text = String::from_utf8_lossy(&body);
                assert!(matches!(status, 400 | 404), "{url}: {status} {text}");
                assert!(
                    !text.contains(SECRET) && !text.contains("root:x:0"),
                    "{url}: {text}"
                );
                let v: Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| panic!("{url}: not JSON: {text}"));
                assert!(v["code"].is_string(), "{url}: {v}");
                checked += 1;
            }
        }
        // Hermes' private state through the misconfigured root.
        for p in [
            ".env",
            "auth.json",
            "config.yaml",
            "state.db",
            "logs/agent.log",
            "logs",
        ] {
            for route in ["/files/content", "/files/download", "/files"] {
                let url = format!("{route}?root=home&path={p}");
                let r = d.get(&url).send().await.expect("send");
                let status = r.status().as_u16();
                let text = r.text().await.expect("body");
                assert!(matches!(status, 400 | 404), "{url}: {status} {text}");
                assert!(!text.contains(SECRET), "{url}: {text}");
            }
        }
    }
    // Root names are not paths either.
    for root in ["..", "..%2Fworkspace", "workspace%2F..", "%2Fetc", "data"] {
        let r = d
            .get(&format!("/files/content?root={root}&path=planted.txt"))
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        assert!(matches!(status, 400 | 404), "{root}: {status} {text}");
        assert!(!text.contains(SECRET));
    }
    // Through the skills routes too.
    for case in &cases {
        let r = d
            .get(&format!("/skill-files/{case}"))
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        assert!(
            matches!(status, 400 | 404),
            "/skill-files/{case}: {status} {text}"
        );
        assert!(!text.contains(SECRET) && !text.contains("root:x:0"));
    }
    eprintln!("{checked} refused requests checked");
    assert!(
        !d.logs().iter().any(|l| l.contains(SECRET)),
        "a secret reached the log"
    );
    let _ = Path::new("/");
}

/// Hard links the agent made inside a root to the daemon's credential, its
/// database and the Hermes `.env` are refused by identity, exactly like the
/// private paths themselves, and hidden from listings.
#[tokio::test]
async fn hard_links_to_private_files_are_refused_like_private_paths() {
    let s = setup().await;
    let d = &s.d;
    let ws = s._home.path().join("workspace");
    // Same filesystem (both under the temp dir), so the links can be made.
    for (target, link) in [
        (d.dir.join("credential"), "innocent.txt"),
        (d.data_dir().join("tenantd.db"), "notes.db"),
        (s._home.path().join(".env"), "readme.md"),
    ] {
        std::fs::hard_link(&target, ws.join(link)).expect("hard link");
    }
    std::fs::create_dir_all(ws.join("deep")).expect("mkdir");
    std::fs::hard_link(d.dir.join("credential"), ws.join("deep/c.txt")).expect("hard link");
    let reference = d
        .get("/files/content?root=workspace&path=.env")
        .send()
        .await
        .expect("send");
    let reference = expect_problem(reference, 404, "not_found").await;
    for path in ["innocent.txt", "notes.db", "readme.md", "deep/c.txt"] {
        for route in ["/files/content", "/files/download"] {
            let url = format!("{route}?root=workspace&path={path}");
            let r = d.get(&url).send().await.expect("send");
            let body = r.bytes().await.map(|b| b.to_vec());
            let text = String::from_utf8_lossy(body.as_deref().unwrap_or_default()).into_owned();
            assert!(
                !text.contains(TOKEN) && !text.contains(SECRET) && !text.contains("SQLite"),
                "{url}: {text}"
            );
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert_eq!(v["status"], 404, "{url}: {text}");
            assert_eq!(v["code"], reference["code"], "{url}: {text}");
            assert_eq!(v["message"], reference["message"], "{url}: {text}");
        }
    }
    let (st, v) = json(d, "/files?root=workspace&limit=100").await;
    assert_eq!(st, 200, "{v}");
    let names = entry_names(&v);
    for hidden in ["innocent.txt", "notes.db", "readme.md"] {
        assert!(!names.contains(&hidden), "{hidden} listed: {names:?}");
    }
    let (st, v) = json(d, "/files?root=workspace&path=deep").await;
    assert_eq!(
        (st, v["entries"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
}
