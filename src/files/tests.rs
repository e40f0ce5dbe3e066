use super::*;
use std::os::unix::fs::symlink;

struct Fixture {
    _tmp: tempfile::TempDir,
    roots: FileRoots,
    root: FileRoot,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = std::fs::canonicalize(tmp.path()).expect("canon");
    let home = base.join("home");
    let ws = home.join("workspace");
    std::fs::create_dir_all(ws.join("sub")).expect("mkdir");
    std::fs::write(ws.join("a.txt"), "hello").expect("write");
    std::fs::write(ws.join("sub/b.md"), "# b").expect("write");
    std::fs::write(ws.join("bin.dat"), [0u8, 1, 2, 3]).expect("write");
    std::fs::write(ws.join(".env"), "SECRET=1").expect("write");
    std::fs::write(ws.join("%41.txt"), "literal percent").expect("write");
    std::fs::write(home.join(".env"), "SECRET=1").expect("write");
    std::fs::write(home.join("state.db"), "db").expect("write");
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret.txt"), "nope").expect("write");
    symlink(&outside, ws.join("out")).expect("symlink");
    symlink(outside.join("secret.txt"), ws.join("secret-link")).expect("symlink");
    symlink("a.txt", ws.join("inside-link")).expect("symlink");
    symlink("loop1", ws.join("loop2")).expect("symlink");
    symlink("loop2", ws.join("loop1")).expect("symlink");
    symlink(".env", ws.join("env-link")).expect("symlink");
    symlink("../.env", ws.join("home-env-link")).expect("symlink");
    symlink("../state.db", ws.join("db-link")).expect("symlink");
    let config_text = format!(
        "tenant_id = \"t\"\ndata_dir = \"{}\"\n[gateway]\nhermes_home = \"{}\"\n[[files.roots]]\nname = \"ws\"\npath = \"{}\"\n[[files.roots]]\nname = \"home\"\npath = \"{}\"\n",
        base.join("data").display(),
        home.display(),
        ws.display(),
        home.display()
    );
    let file = base.join("c.toml");
    std::fs::write(&file, config_text).expect("write");
    let config = Config::load_with_env(
        &crate::config::Source {
            file: Some(file),
            dev: false,
        },
        Vec::new(),
    )
    .expect("config");
    let roots = FileRoots::from_config(&config);
    let root = roots.root("ws").expect("root").clone();
    Fixture {
        _tmp: tmp,
        roots,
        root,
        outside,
    }
}

#[test]
fn ordinary_paths_resolve() {
    let f = fixture();
    assert_eq!(f.roots.resolve(&f.root, "a.txt").expect("ok").rel, "a.txt");
    assert_eq!(
        f.roots.resolve(&f.root, "./sub//b.md").expect("ok").rel,
        "sub/b.md"
    );
    assert_eq!(f.roots.resolve(&f.root, "").expect("ok").rel, "");
    assert_eq!(
        f.roots.preview(&f.root, "inside-link").expect("ok").content,
        "hello"
    );
}

#[test]
fn traversal_and_tricks_are_refused() {
    let f = fixture();
    let long = "a/".repeat(3000);
    let deep = "a/".repeat(100);
    let cases: Vec<&str> = vec![
        "../outside/secret.txt",
        "sub/../../outside/secret.txt",
        "..",
        "sub/..",
        "/etc/passwd",
        "//etc/passwd",
        "%2e%2e/outside/secret.txt",
        "%252e%252e/x",
        "..%2fx",
        "a.txt\0.md",
        "..\\outside\\secret.txt",
        "sub\\b.md",
        "a\nb",
        &long,
        &deep,
        "out/secret.txt",
        "secret-link",
        "loop1",
        "loop1/x",
        ".env",
        "sub/../.env",
        "env-link",
        "home-env-link",
        "db-link",
        "missing.txt",
    ];
    for c in cases {
        let r = f.roots.resolve(&f.root, c);
        assert!(
            matches!(r, Err(PathError::Invalid(_) | PathError::NotFound)),
            "{c:?} gave {r:?}"
        );
        assert!(f.roots.preview(&f.root, c).is_err(), "{c:?}");
        assert!(f.roots.open_download(&f.root, c).is_err(), "{c:?}");
    }
    let _ = &f.outside;
}

#[test]
fn literal_percent_names_are_refused_rather_than_guessed() {
    let f = fixture();
    assert!(matches!(
        f.roots.resolve(&f.root, "%41.txt"),
        Err(PathError::Invalid(_))
    ));
}

#[test]
fn hermes_private_state_is_hidden_even_under_a_root() {
    let f = fixture();
    let home = f.roots.root("home").expect("root").clone();
    for c in [".env", "state.db", "state.db-wal"] {
        assert!(f.roots.resolve(&home, c).is_err(), "{c}");
    }
    let listing = f.roots.list_dir(&home, "", None, 100).expect("list");
    let names: Vec<&str> = listing.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["workspace"], "{names:?}");
}

#[test]
fn listing_hides_private_and_escaping_entries_and_pages() {
    let f = fixture();
    let page = f.roots.list_dir(&f.root, "", None, 3).expect("list");
    let mut all: Vec<String> = page.entries.iter().map(|e| e.name.clone()).collect();
    let mut cursor = page.next_cursor.clone();
    while let Some(c) = cursor {
        let p = f.roots.list_dir(&f.root, "", Some(&c), 3).expect("list");
        all.extend(p.entries.iter().map(|e| e.name.clone()));
        cursor = p.next_cursor;
    }
    assert_eq!(
        all,
        vec!["%41.txt", "a.txt", "bin.dat", "inside-link", "sub"],
        "{all:?}"
    );
}

#[test]
fn preview_refuses_binary_and_directories() {
    let f = fixture();
    assert!(matches!(
        f.roots.preview(&f.root, "bin.dat"),
        Err(PathError::Binary(_))
    ));
    assert!(matches!(
        f.roots.preview(&f.root, "sub"),
        Err(PathError::IsDirectory(_))
    ));
}

#[test]
fn disposition_encodes_odd_names() {
    let d = content_disposition("résumé \"x\".pdf");
    assert!(d.contains("filename=\"r_sum_ _x_.pdf\""), "{d}");
    assert!(
        d.contains("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.pdf"),
        "{d}"
    );
}

#[test]
fn a_root_swapped_for_a_symlink_is_unavailable() {
    let f = fixture();
    let ws = f.root.path.clone();
    let moved = ws.with_file_name("workspace-real");
    std::fs::rename(&ws, &moved).expect("move");
    symlink(&f.outside, &ws).expect("symlink");
    assert!(matches!(
        f.roots.resolve(&f.root, "secret.txt"),
        Err(PathError::RootUnavailable(_))
    ));
    let info = f.roots.list_roots();
    assert_eq!(
        info.iter()
            .map(|r| (r.name.as_str(), r.available))
            .collect::<Vec<_>>(),
        vec![("ws", false), ("home", true)]
    );
    // A root outside the Hermes home: its last component is not followed.
    let outside_root = FileRoot {
        name: "out".into(),
        path: ws.with_file_name("elsewhere"),
        read_only: true,
    };
    symlink(&f.outside, &outside_root.path).expect("symlink");
    assert!(matches!(
        f.roots.resolve(&outside_root, "secret.txt"),
        Err(PathError::RootUnavailable(_))
    ));
}

#[test]
fn hard_links_to_private_files_are_refused_and_hidden() {
    let f = fixture();
    let ws = f.root.path.clone();
    let home = ws.parent().expect("home").to_path_buf();
    std::fs::hard_link(home.join(".env"), ws.join("notes.txt")).expect("link");
    std::fs::hard_link(home.join("state.db"), ws.join("sub/data.bin")).expect("link");
    for p in ["notes.txt", "sub/data.bin"] {
        assert!(
            matches!(f.roots.resolve(&f.root, p), Err(PathError::NotFound)),
            "{p}"
        );
        assert!(f.roots.open_download(&f.root, p).is_err(), "{p}");
    }
    let names: Vec<String> = f
        .roots
        .list_dir(&f.root, "", None, 100)
        .expect("list")
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(!names.iter().any(|n| n == "notes.txt"), "{names:?}");
    let tree: Vec<String> = f
        .roots
        .list_tree(&f.root, "")
        .expect("tree")
        .into_iter()
        .map(|t| t.path)
        .collect();
    assert_eq!(
        tree,
        vec!["%41.txt", "a.txt", "bin.dat", "sub/b.md"],
        "{tree:?}"
    );
}
