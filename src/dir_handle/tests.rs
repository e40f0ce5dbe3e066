use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use super::*;

fn digest(p: &Path) -> String {
    crate::hex::sha256(&std::fs::read(p).expect("read"))
}

struct World {
    _tmp: tempfile::TempDir,
    base: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("home");
    std::fs::create_dir_all(base.join("cron")).expect("mkdir");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("victim"), "precious").expect("write");
    World {
        _tmp: tmp,
        base,
        outside,
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn replaces_content_with_exact_mode_and_leaves_no_temp() {
    let w = world();
    std::fs::write(w.base.join(".env"), "old").expect("seed");
    let d = DirHandle::open_home(&w.base).expect("open");
    d.write_atomic(Path::new(".env"), b"new", 0o600)
        .expect("write");
    d.write_atomic(Path::new("cron/jobs.json"), b"{}", 0o640)
        .expect("nested");
    assert_eq!(
        std::fs::read_to_string(w.base.join(".env")).expect("read"),
        "new"
    );
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777;
    assert_eq!(mode(&w.base.join(".env")), 0o600);
    assert_eq!(mode(&w.base.join("cron/jobs.json")), 0o640);
    assert_eq!(names(&w.base), vec![".env", "cron"]);
    assert_eq!(names(&w.base.join("cron")), vec!["jobs.json"]);
    let owner = std::fs::metadata(&w.base).expect("meta").uid();
    assert_eq!(
        std::fs::metadata(w.base.join(".env")).expect("m").uid(),
        owner
    );
}

#[test]
fn a_symlinked_target_is_refused_and_its_target_unchanged() {
    let w = world();
    let victim = w.outside.join("victim");
    let before = digest(&victim);
    symlink(&victim, w.base.join(".env")).expect("symlink");
    let d = DirHandle::open_home(&w.base).expect("open");
    let e = d
        .write_atomic(Path::new(".env"), b"EVIL", 0o600)
        .expect_err("refused");
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
    assert_eq!(digest(&victim), before);
    assert!(matches!(
        d.read_capped(Path::new(".env"), 1 << 20),
        Err(ReadError::NotRegular)
    ));
    assert!(
        std::fs::symlink_metadata(w.base.join(".env"))
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert_eq!(names(&w.base), vec![".env", "cron"], "no temp left");
}

#[test]
fn a_symlinked_parent_directory_is_refused() {
    let w = world();
    std::fs::remove_dir(w.base.join("cron")).expect("rmdir");
    symlink(&w.outside, w.base.join("cron")).expect("symlink");
    std::fs::write(w.outside.join("jobs.json"), "outside jobs").expect("write");
    let before = digest(&w.outside.join("jobs.json"));
    let d = DirHandle::open_home(&w.base).expect("open");
    let e = d
        .write_atomic(Path::new("cron/jobs.json"), b"EVIL", 0o600)
        .expect_err("refused");
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
    assert!(matches!(
        d.read_capped(Path::new("cron/jobs.json"), 1 << 20),
        Err(ReadError::NotRegular)
    ));
    assert_eq!(digest(&w.outside.join("jobs.json")), before);
    assert_eq!(names(&w.outside), vec!["jobs.json", "victim"]);
    // The walk (kernels without openat2) refuses it the same way.
    let e = resolve::walk(
        d.as_fd(),
        Path::new("cron/jobs.json"),
        libc::O_RDONLY | libc::O_CLOEXEC,
        0,
    )
    .expect_err("walk refuses");
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
}

#[test]
fn the_home_itself_as_a_symlink_is_refused() {
    let w = world();
    let link = w.base.with_file_name("home-link");
    symlink(&w.outside, &link).expect("symlink");
    let e = DirHandle::open_home(&link).expect_err("refused");
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
    assert!(
        DirHandle::open(&link).is_ok(),
        "operator paths are followed"
    );
}

#[test]
fn files_planted_at_temp_names_change_nothing() {
    let w = world();
    let victim = w.outside.join("victim");
    let before = digest(&victim);
    // Every name an older daemon used, as symlinks to the victim.
    for n in [
        ".env.tmp1",
        ".gateway-planned-stop.json.tmp1",
        "jobs.json.tenantd-tmp",
    ] {
        symlink(&victim, w.base.join(n)).expect("symlink");
    }
    symlink(&victim, w.base.join("cron/jobs.json.tenantd-tmp")).expect("symlink");
    std::fs::write(w.base.join(".tenantd-tmp-planted"), "planted").expect("write");
    let d = DirHandle::open_home(&w.base).expect("open");
    for _ in 0..20 {
        d.write_atomic(Path::new(".env"), b"A=1\n", 0o600)
            .expect("write");
        d.write_atomic(Path::new("cron/jobs.json"), b"{}", 0o600)
            .expect("write");
    }
    assert_eq!(digest(&victim), before);
    assert_eq!(
        std::fs::read_to_string(w.base.join(".tenantd-tmp-planted")).expect("read"),
        "planted"
    );
    assert_eq!(
        names(&w.base),
        vec![
            ".env",
            ".env.tmp1",
            ".gateway-planned-stop.json.tmp1",
            ".tenantd-tmp-planted",
            "cron",
            "jobs.json.tenantd-tmp"
        ]
    );
    // Temp names carry 128 random bits.
    let a = atomic::temp_name();
    let b = atomic::temp_name();
    assert_ne!(a, b);
    assert_eq!(a.as_bytes().len(), atomic::TEMP_PREFIX.len() + 32);
}

#[test]
fn capped_reads_refuse_large_and_special_files() {
    let w = world();
    std::fs::write(w.base.join("config.yaml"), "x".repeat(100)).expect("write");
    let d = DirHandle::open_home(&w.base).expect("open");
    assert_eq!(
        d.read_capped(Path::new("config.yaml"), 100)
            .expect("read")
            .map(|b| b.len()),
        Some(100)
    );
    assert!(matches!(
        d.read_capped(Path::new("config.yaml"), 99),
        Err(ReadError::TooLarge { max: 99 })
    ));
    assert!(
        d.read_capped(Path::new("missing"), 10)
            .expect("ok")
            .is_none()
    );
    assert!(matches!(
        d.read_capped(Path::new("cron"), 10),
        Err(ReadError::NotRegular)
    ));
    // A FIFO would block a plain open for ever.
    let fifo = std::ffi::CString::new(w.base.join("fifo").as_os_str().as_bytes()).expect("c");
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(matches!(
        d.read_capped(Path::new("fifo"), 10),
        Err(ReadError::NotRegular)
    ));
    // `..` and absolute names are not names beneath the handle.
    assert!(d.read_capped(Path::new("../outside/victim"), 10).is_err());
    assert!(d.read_capped(Path::new("/etc/passwd"), 10).is_err());
}

#[test]
fn in_root_symlinks_may_be_followed_only_when_asked_and_never_out() {
    let w = world();
    std::fs::write(w.base.join("a.txt"), "a").expect("write");
    symlink("a.txt", w.base.join("inside")).expect("symlink");
    symlink("../outside/victim", w.base.join("up")).expect("symlink");
    symlink(w.outside.join("victim"), w.base.join("abs")).expect("symlink");
    let d = DirHandle::open_home(&w.base).expect("open");
    let open = |n: &str, s| d.open_beneath(Path::new(n), libc::O_RDONLY, 0, s);
    assert!(open("inside", Symlinks::StayBeneath).is_ok());
    assert!(open("inside", Symlinks::Refuse).is_err());
    for n in ["up", "abs"] {
        let e = open(n, Symlinks::StayBeneath).expect_err("escapes");
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{n}: {e}");
    }
}

#[test]
fn remove_takes_the_link_not_its_target_and_entries_lists() {
    let w = world();
    let victim = w.outside.join("victim");
    symlink(&victim, w.base.join("marker")).expect("symlink");
    let d = DirHandle::open_home(&w.base).expect("open");
    d.remove(Path::new("marker")).expect("remove");
    d.remove(Path::new("marker")).expect("missing is fine");
    assert!(victim.exists());
    let mut e: Vec<String> = d
        .entries(100)
        .expect("entries")
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    e.sort();
    assert_eq!(e, vec!["cron"]);
    assert_eq!(d.entries(0).expect("capped").len(), 0);
}

#[test]
fn the_walk_opens_plain_names_and_refuses_any_symlink() {
    let w = world();
    std::fs::write(w.base.join("cron/jobs.json"), "{}").expect("write");
    symlink("jobs.json", w.base.join("cron/link.json")).expect("symlink");
    let d = DirHandle::open_home(&w.base).expect("open");
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    let fd = resolve::walk(d.as_fd(), Path::new("cron/jobs.json"), flags, 0).expect("plain");
    assert_eq!(fstat(fd.as_fd()).expect("stat").st_size, 2);
    assert!(
        resolve::walk(d.as_fd(), Path::new(""), flags, 0).is_ok(),
        "the dir itself"
    );
    let e = resolve::walk(d.as_fd(), Path::new("cron/link.json"), flags, 0).expect_err("link");
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
}

#[test]
fn sweep_removes_only_stale_temps_and_never_follows_a_link() {
    let w = world();
    let victim = w.outside.join("victim");
    let before = digest(&victim);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let stale = w.base.join(".tenantd-tmp-stale");
    std::fs::write(&stale, "cut write").expect("write");
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .and_then(|f| f.set_modified(old))
        .expect("age");
    std::fs::write(w.base.join(".tenantd-tmp-young"), "in progress").expect("write");
    std::fs::create_dir(w.base.join(".tenantd-tmp-dir")).expect("mkdir");
    std::fs::write(w.base.join("config.yaml"), "x: 1").expect("write");
    symlink(&victim, w.base.join(".tenantd-tmp-link")).expect("symlink");
    let d = DirHandle::open_home(&w.base).expect("open");

    let ten_min = std::time::Duration::from_secs(600);
    assert_eq!(d.sweep_temps(ten_min, 100).expect("sweep"), 1);
    assert_eq!(
        names(&w.base),
        vec![
            ".tenantd-tmp-dir",
            ".tenantd-tmp-link",
            ".tenantd-tmp-young",
            "config.yaml",
            "cron"
        ]
    );
    // With no age bound the young file and the link go too (the link is
    // removed, its target untouched); a directory and other names stay.
    assert_eq!(
        d.sweep_temps(std::time::Duration::ZERO, 100)
            .expect("sweep"),
        2
    );
    assert_eq!(
        names(&w.base),
        vec![".tenantd-tmp-dir", "config.yaml", "cron"]
    );
    assert_eq!(digest(&victim), before);
}
