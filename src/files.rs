//! Tenant-visible files: named roots, and the path resolution that keeps
//! every request inside its root. This module is the security boundary of
//! the files API and of `/skill-files`.
//!
//! A client path is checked as text first (no `..`, no absolute path, no
//! NUL or control bytes, no backslash, no `%XX` left after the one decoding
//! the HTTP layer did, bounded length), then joined to the canonical root
//! and canonicalised; the result must still be inside the root and must not
//! be private (`.env`, credentials, the daemon's data directory, Hermes'
//! own state). Files and directories are then opened with `O_NOFOLLOW` and
//! the opened descriptor's real path is checked again through
//! `/proc/self/fd`, so a symlink swapped in after the check is caught.
//!
//! Everything here blocks: call it on the blocking pool.

use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, FileRoot};

/// Longest client path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single path component, in bytes (the usual `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Deepest client path accepted, in components.
pub const MAX_DEPTH: usize = 64;
/// Most files `list_tree` returns.
pub const MAX_TREE_ENTRIES: usize = 2000;

/// File names that are never served, wherever they are.
const PRIVATE_NAMES: &[&str] = &[
    ".env",
    ".ssh",
    ".gnupg",
    ".aws",
    ".netrc",
    ".git-credentials",
    ".pgpass",
    ".pypirc",
    ".npmrc",
    ".docker",
    ".kube",
];

/// Entries of the Hermes home that are its private state (a trailing `*`
/// matches a prefix, for SQLite's `-wal`/`-shm` companions).
const HERMES_PRIVATE: &[&str] = &[
    ".env",
    "auth.json",
    "config.yaml",
    "state.db*",
    "response_store.db*",
    "gateway.pid",
    "gateway_state.json",
    ".gateway-planned-stop.json",
    "state",
    "sessions",
    "memories",
    "logs",
    "cron",
    "pairing",
    "plugins",
];

/// Why a path was refused. Every refusal is a client error; `Io` is ours.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such file or directory")]
    NotFound,
    #[error("no such root `{0}`")]
    NoRoot(String),
    #[error("root `{0}` is not available")]
    RootUnavailable(String),
    #[error("`{0}` is a directory")]
    IsDirectory(String),
    #[error("`{0}` is not a directory")]
    NotDirectory(String),
    #[error("`{0}` is not a regular file")]
    NotRegular(String),
    #[error("`{0}` is a binary file; use /files/download")]
    Binary(String),
    #[error(
        "`{path}` is {size} bytes, more than the preview limit of {limit}; use /files/download"
    )]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Paths no root may expose.
#[derive(Debug, Clone, Default)]
pub struct PrivatePaths {
    /// Exact paths and everything under them.
    trees: Vec<PathBuf>,
    /// Directory whose entries named like a pattern are private.
    in_dir: Vec<(PathBuf, &'static str)>,
}

impl PrivatePaths {
    /// The daemon's own paths and the Hermes home's private entries, each
    /// as configured and as canonicalised (if it exists now).
    pub fn from_config(config: &Config) -> PrivatePaths {
        let mut p = PrivatePaths::default();
        let mut trees = vec![
            config.data_dir.clone(),
            config.auth.credential_file.clone(),
            PathBuf::from("/etc/hermes-tenantd"),
            PathBuf::from("/etc/hermes"),
        ];
        if let Some(tls) = &config.listen.tls {
            trees.push(tls.key.clone());
        }
        if let Ok(managed) = std::env::var("HERMES_MANAGED_DIR") {
            trees.push(PathBuf::from(managed));
        }
        for t in trees {
            p.add_tree(t);
        }
        p.add_dir_patterns(&config.gateway.hermes_home, HERMES_PRIVATE);
        p
    }

    fn add_tree(&mut self, path: PathBuf) {
        if let Ok(c) = std::fs::canonicalize(&path) {
            if c != path {
                self.trees.push(c);
            }
        }
        self.trees.push(path);
    }

    fn add_dir_patterns(&mut self, dir: &Path, patterns: &[&'static str]) {
        let mut dirs = vec![dir.to_path_buf()];
        if let Ok(c) = std::fs::canonicalize(dir) {
            if c != dir {
                dirs.push(c);
            }
        }
        for d in dirs {
            for pat in patterns {
                self.in_dir.push((d.clone(), pat));
            }
        }
    }

    /// A fast test for the entries of `dir` (itself not private): the
    /// private trees and patterns that sit directly in it, by name.
    fn entries_of(&self, dir: &Path) -> DirFilter {
        let mut exact = Vec::new();
        for t in &self.trees {
            if t.parent() == Some(dir) {
                if let Some(n) = t.file_name().and_then(|n| n.to_str()) {
                    exact.push(n.to_owned());
                }
            }
        }
        let patterns = self
            .in_dir
            .iter()
            .filter(|(d, _)| d == dir)
            .map(|(_, p)| *p)
            .collect();
        DirFilter { exact, patterns }
    }

    /// `true` when `path` (absolute, canonical) must not be served.
    pub fn is_private(&self, path: &Path) -> bool {
        let by_name = path.components().any(|c| match c {
            Component::Normal(n) => n.to_str().is_some_and(is_private_name),
            _ => false,
        });
        if by_name || self.trees.iter().any(|t| path.starts_with(t)) {
            return true;
        }
        self.in_dir.iter().any(|(dir, pat)| {
            let Ok(rest) = path.strip_prefix(dir) else {
                return false;
            };
            let Some(Component::Normal(first)) = rest.components().next() else {
                return false;
            };
            let first = first.to_string_lossy();
            match pat.strip_suffix('*') {
                Some(prefix) => first.starts_with(prefix),
                None => first == *pat,
            }
        })
    }
}

/// Private entries of one directory, by name.
struct DirFilter {
    exact: Vec<String>,
    patterns: Vec<&'static str>,
}

impl DirFilter {
    fn hides(&self, name: &str) -> bool {
        is_private_name(name)
            || self.exact.iter().any(|e| e == name)
            || self.patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == *p,
            })
    }
}

fn is_private_name(name: &str) -> bool {
    PRIVATE_NAMES.contains(&name) || name.starts_with(".env.")
}

/// Check a client path as text and split it into components. `""` and
/// `"."` are the root itself.
pub fn parse_relative(raw: &str) -> Result<Vec<&str>, PathError> {
    let bad = |m: &str| Err(PathError::Invalid(m.to_owned()));
    if raw.len() > MAX_PATH_BYTES {
        return bad("path is longer than 4096 bytes");
    }
    if raw.contains('\0') {
        return bad("path contains a NUL byte");
    }
    if raw.chars().any(|c| c.is_control()) {
        return bad("path contains a control character");
    }
    if raw.contains('\\') {
        return bad("path contains a backslash; use `/` between names");
    }
    if raw.starts_with('/') {
        return bad("absolute paths are not allowed; give a path relative to the root");
    }
    if has_percent_escape(raw) {
        return bad("path contains a percent-encoded sequence after decoding (encoded twice?)");
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => continue,
            ".." => return bad("`..` is not allowed in paths"),
            p if p.len() > MAX_NAME_BYTES => {
                return bad("a path component is longer than 255 bytes");
            }
            p => parts.push(p),
        }
    }
    if parts.len() > MAX_DEPTH {
        return bad("path is nested too deeply");
    }
    Ok(parts)
}

fn has_percent_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// A path that passed every check.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Canonical absolute path.
    pub real: PathBuf,
    /// Canonical root it lies in.
    pub root_real: PathBuf,
    /// Normalised path relative to the root (`""` for the root).
    pub rel: String,
}

/// The configured roots plus what none of them may expose.
#[derive(Debug, Clone)]
pub struct FileRoots {
    roots: Vec<FileRoot>,
    skills: FileRoot,
    private: PrivatePaths,
    pub preview_bytes: u64,
}

/// A root as listed to clients (no host path).
#[derive(Debug, Clone, Serialize)]
pub struct RootInfo {
    pub name: String,
    pub read_only: bool,
    pub available: bool,
}

/// One directory entry.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    /// `file`, `dir` or `other`; for a symlink, the kind of its target.
    pub kind: &'static str,
    pub symlink: bool,
    pub size: Option<u64>,
    pub modified: Option<String>,
}

/// A page of a directory.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub root: String,
    pub path: String,
    pub entries: Vec<Entry>,
    pub next_cursor: Option<String>,
}

/// A text preview.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub root: String,
    pub path: String,
    pub size: u64,
    pub modified: Option<String>,
    pub content: String,
}

/// One file of a tree listing.
#[derive(Debug, Clone, Serialize)]
pub struct TreeFile {
    pub path: String,
    pub size: u64,
    pub modified: Option<String>,
}

/// An opened file ready to stream.
pub struct Download {
    pub file: File,
    pub size: u64,
    pub name: String,
}

impl FileRoots {
    pub fn from_config(config: &Config) -> FileRoots {
        FileRoots {
            roots: config.files.roots.clone(),
            skills: FileRoot {
                name: "skills".into(),
                path: config.gateway.hermes_home.join("skills"),
                read_only: true,
            },
            private: PrivatePaths::from_config(config),
            preview_bytes: config.files.preview_bytes,
        }
    }

    /// The root that `/skill-files` and `/skills/.../files` read.
    pub fn skills_root(&self) -> &FileRoot {
        &self.skills
    }

    pub fn root(&self, name: &str) -> Result<&FileRoot, PathError> {
        self.roots
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| PathError::NoRoot(name.chars().take(64).collect()))
    }

    pub fn list_roots(&self) -> Vec<RootInfo> {
        self.roots
            .iter()
            .map(|r| RootInfo {
                name: r.name.clone(),
                read_only: r.read_only,
                available: std::fs::canonicalize(&r.path)
                    .is_ok_and(|p| p.is_dir() && !self.private.is_private(&p)),
            })
            .collect()
    }

    /// Resolve `raw` inside `root`: see the module comment.
    pub fn resolve(&self, root: &FileRoot, raw: &str) -> Result<Resolved, PathError> {
        let parts = parse_relative(raw)?;
        let root_real = std::fs::canonicalize(&root.path)
            .map_err(|_| PathError::RootUnavailable(root.name.clone()))?;
        if self.private.is_private(&root_real) {
            tracing::warn!(root = %root.name, "a file root points at private state; refusing it");
            return Err(PathError::RootUnavailable(root.name.clone()));
        }
        let mut joined = root_real.clone();
        for p in &parts {
            joined.push(p);
        }
        let real = match std::fs::canonicalize(&joined) {
            Ok(r) => r,
            Err(e) => return Err(map_resolve_error(e)),
        };
        if !real.starts_with(&root_real) {
            tracing::debug!(root = %root.name, "path leaves its root through a symlink");
            return Err(PathError::NotFound);
        }
        if self.private.is_private(&real) {
            tracing::debug!(root = %root.name, "path names private state");
            return Err(PathError::NotFound);
        }
        Ok(Resolved {
            real,
            root_real,
            rel: parts.join("/"),
        })
    }

    /// Open a resolved path without following a final symlink and check
    /// that what was opened is still what was resolved.
    fn open_checked(&self, r: &Resolved, dir: bool) -> Result<(File, Metadata), PathError> {
        let mut flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        if dir {
            flags |= libc::O_DIRECTORY;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(&r.real)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) => PathError::NotDirectory(r.rel.clone()),
                Some(libc::ELOOP) => PathError::NotFound,
                _ => map_resolve_error(e),
            })?;
        if let Ok(now) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            if now != r.real || !now.starts_with(&r.root_real) || self.private.is_private(&now) {
                tracing::warn!("a path changed between its check and its open; refusing it");
                return Err(PathError::NotFound);
            }
        }
        let meta = file.metadata()?;
        Ok((file, meta))
    }

    /// One page of a directory, sorted by name; `cursor` is the last name
    /// of the previous page.
    pub fn list_dir(
        &self,
        root: &FileRoot,
        raw: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Listing, PathError> {
        let r = self.resolve(root, raw)?;
        let (dir, meta) = self.open_checked(&r, true)?;
        if !meta.is_dir() {
            return Err(PathError::NotDirectory(r.rel));
        }
        // Read through the descriptor we checked, not the path.
        let fd_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let iter = match std::fs::read_dir(&fd_path) {
            Ok(i) => i,
            Err(_) => std::fs::read_dir(&r.real)?,
        };
        let filter = self.private.entries_of(&r.real);
        let mut names: Vec<String> = Vec::new();
        for entry in iter {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not UTF-8: cannot be named in a request either
            };
            if cursor.is_some_and(|c| name.as_str() <= c) || filter.hides(&name) {
                continue;
            }
            names.push(name);
        }
        // Only the first `limit + 1` names matter: select them in O(n).
        if names.len() > limit + 1 {
            names.select_nth_unstable(limit);
            names.truncate(limit + 1);
        }
        names.sort_unstable();
        let more = names.len() > limit;
        names.truncate(limit);
        let next_cursor = if more { names.last().cloned() } else { None };
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let path = r.real.join(&name);
            let Ok(lmeta) = std::fs::symlink_metadata(&path) else {
                continue; // removed meanwhile
            };
            let symlink = lmeta.file_type().is_symlink();
            let meta = if symlink {
                match std::fs::canonicalize(&path) {
                    Ok(t) if t.starts_with(&r.root_real) && !self.private.is_private(&t) => {
                        match std::fs::metadata(&t) {
                            Ok(m) => m,
                            Err(_) => continue,
                        }
                    }
                    _ => continue, // dangling, looping or leaving the root: hidden
                }
            } else {
                lmeta
            };
            entries.push(Entry {
                name,
                kind: kind_of(&meta),
                symlink,
                size: meta.is_file().then_some(meta.len()),
                modified: modified(&meta),
            });
        }
        Ok(Listing {
            root: root.name.clone(),
            path: r.rel,
            entries,
            next_cursor,
        })
    }

    /// The file as UTF-8 text, if it is text and no larger than the cap.
    pub fn preview(&self, root: &FileRoot, raw: &str) -> Result<Preview, PathError> {
        let r = self.resolve(root, raw)?;
        let (file, meta) = self.open_checked(&r, false)?;
        check_regular(&r, &meta)?;
        let limit = self.preview_bytes;
        if meta.len() > limit {
            return Err(PathError::TooLarge {
                path: r.rel,
                size: meta.len(),
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(PathError::TooLarge {
                path: r.rel,
                size: bytes.len() as u64,
                limit,
            });
        }
        if bytes.contains(&0) {
            return Err(PathError::Binary(r.rel));
        }
        let content = String::from_utf8(bytes).map_err(|_| PathError::Binary(r.rel.clone()))?;
        Ok(Preview {
            root: root.name.clone(),
            path: r.rel,
            size: meta.len(),
            modified: modified(&meta),
            content,
        })
    }

    /// Open a regular file for streaming.
    pub fn open_download(&self, root: &FileRoot, raw: &str) -> Result<Download, PathError> {
        let r = self.resolve(root, raw)?;
        let (file, meta) = self.open_checked(&r, false)?;
        check_regular(&r, &meta)?;
        let name = r
            .real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "download".into());
        Ok(Download {
            file,
            size: meta.len(),
            name,
        })
    }

    /// Every regular file under a directory, depth-first, paths relative
    /// to the root; symlinks are not followed; capped at
    /// [`MAX_TREE_ENTRIES`].
    pub fn list_tree(&self, root: &FileRoot, raw: &str) -> Result<Vec<TreeFile>, PathError> {
        let r = self.resolve(root, raw)?;
        let (_dir, meta) = self.open_checked(&r, true)?;
        if !meta.is_dir() {
            return Err(PathError::NotDirectory(r.rel));
        }
        let mut out = Vec::new();
        let mut stack = vec![(r.real.clone(), r.rel.clone(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            // A directory swapped for a symlink since it was listed.
            if !std::fs::canonicalize(&dir).is_ok_and(|c| c == dir) {
                continue;
            }
            let Ok(iter) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut children: Vec<(String, std::fs::FileType)> = iter
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.file_type().ok()?)))
                .filter(|(n, _)| !is_private_name(n))
                .collect();
            children.sort_by(|a, b| b.0.cmp(&a.0));
            for (name, ft) in children {
                let child_rel = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let path = dir.join(&name);
                if self.private.is_private(&path) {
                    continue;
                }
                if ft.is_dir() && depth < MAX_DEPTH {
                    stack.push((path, child_rel, depth + 1));
                } else if ft.is_file() {
                    if out.len() >= MAX_TREE_ENTRIES {
                        return Ok(out);
                    }
                    let meta = std::fs::symlink_metadata(&path).ok();
                    out.push(TreeFile {
                        path: child_rel,
                        size: meta.as_ref().map(|m| m.len()).unwrap_or(0),
                        modified: meta.as_ref().and_then(modified),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

fn check_regular(r: &Resolved, meta: &Metadata) -> Result<(), PathError> {
    if meta.is_dir() {
        return Err(PathError::IsDirectory(r.rel.clone()));
    }
    if !meta.is_file() {
        return Err(PathError::NotRegular(r.rel.clone()));
    }
    Ok(())
}

fn map_resolve_error(e: std::io::Error) -> PathError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => PathError::Invalid("too many levels of symbolic links".into()),
        Some(libc::ENAMETOOLONG) => PathError::Invalid("path is too long".into()),
        Some(libc::ENOTDIR) | Some(libc::ENOENT) | Some(libc::EACCES) => PathError::NotFound,
        _ if e.kind() == ErrorKind::NotFound => PathError::NotFound,
        _ => PathError::Io(e),
    }
}

fn kind_of(meta: &Metadata) -> &'static str {
    if meta.is_file() {
        "file"
    } else if meta.is_dir() {
        "dir"
    } else {
        "other"
    }
}

/// The mtime as RFC 3339. The agent sets mtimes at will: chrono's
/// `From<SystemTime>` panics past its range, so go through unix ms and the
/// clamped formatter.
fn modified(meta: &Metadata) -> Option<String> {
    let t = meta.modified().ok()?;
    let ms = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |v| -v),
    };
    Some(crate::timestamp::format(ms))
}

/// A content type from the file name (downloads are attachments anyway).
pub fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "md" | "markdown" | "rst" | "csv" | "tsv" | "ini" | "cfg" | "toml"
        | "yaml" | "yml" | "py" | "rs" | "sh" | "js" | "ts" | "go" | "c" | "h" | "java" => {
            "text/plain; charset=utf-8"
        }
        "json" => "application/json",
        "html" | "htm" => "text/html; charset=utf-8",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// `Content-Disposition` for a download: an ASCII fallback name plus the
/// exact name in RFC 5987 form.
pub fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
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
}
