//! Tenant-visible files: named roots, and the path resolution that keeps
//! every request inside its root. This module is the security boundary of
//! the files API and of `/skill-files`.
//!
//! A client path is checked as text first (`path`: no `..`, no absolute
//! path, no NUL or control bytes, no backslash, no `%XX` left after the one
//! decoding the HTTP layer did, bounded length). The root is opened as a
//! directory handle (a root inside the Hermes home beneath the home's
//! handle, no symlinks; another root with its last component not followed)
//! and the path is opened *beneath that handle* in one `openat2` call with
//! `RESOLVE_BENEATH`: nothing is re-resolved between a check and the open.
//! A symlink inside the root keeps working while its target stays in the
//! root; one that leaves it (absolute, or `..` out) is refused by the
//! kernel (`EXDEV`). Without `openat2` every symlink is refused.
//!
//! What was opened is then checked (`private`): by the path the kernel
//! gives for the descriptor (`.env`, the Hermes home's state, the daemon's
//! trees) and by identity (`(st_dev, st_ino)` against the daemon's private
//! files, collected per request), which also refuses hard links to them.
//! Refusals look like a missing file.
//!
//! Everything here blocks: call it on the blocking pool.

mod attachment;
mod path;
mod private;
#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, FileRoot};
use crate::dir_handle::{DirHandle, Stat, Symlinks, fstat};

pub use attachment::{content_disposition, content_type};
pub use path::parse_relative;
pub use private::PrivatePaths;
use private::{PrivateIds, is_private_name};

/// Longest client path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single path component, in bytes (the usual `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Deepest client path accepted, in components.
pub const MAX_DEPTH: usize = 64;
/// Most files `list_tree` returns.
pub const MAX_TREE_ENTRIES: usize = 2000;
/// Most directories `list_tree` walks.
pub const MAX_TREE_DIRS: usize = 10_000;
/// Most entries read from one directory (a page is chosen among them).
pub const MAX_DIR_SCAN: usize = 100_000;

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

/// A path that passed every check, opened.
#[derive(Debug)]
pub struct Resolved {
    /// The open file or directory.
    pub fd: OwnedFd,
    /// Its `fstat`.
    pub stat: Stat,
    /// What the kernel calls it now (`/proc/self/fd`).
    pub real: PathBuf,
    /// Normalised path relative to the root (`""` for the root).
    pub rel: String,
}

/// An opened root and what none of its entries may be.
struct OpenRoot {
    dir: DirHandle,
    real: PathBuf,
    ids: PrivateIds,
}

/// The configured roots plus what none of them may expose.
#[derive(Debug, Clone)]
pub struct FileRoots {
    roots: Vec<FileRoot>,
    skills: FileRoot,
    hermes_home: PathBuf,
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
            hermes_home: config.gateway.hermes_home.clone(),
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
                available: self.open_root(r).is_ok(),
            })
            .collect()
    }

    /// Open a root's directory. Under the Hermes home, every component
    /// below the home is the agent's: opened beneath the home's handle
    /// with no symlinks. Elsewhere, its last component is not followed
    /// (its parent may be the agent's user's home).
    fn open_root(&self, root: &FileRoot) -> Result<OpenRoot, PathError> {
        let unavailable = || PathError::RootUnavailable(root.name.clone());
        let dir = match root.path.strip_prefix(&self.hermes_home) {
            Ok(rest) => {
                let home = DirHandle::open_home(&self.hermes_home).map_err(|_| unavailable())?;
                if rest.as_os_str().is_empty() {
                    home
                } else {
                    home.open_dir(rest).map_err(|_| unavailable())?
                }
            }
            Err(_) => DirHandle::open_home(&root.path).map_err(|_| unavailable())?,
        };
        let real = fd_path(&dir).ok_or_else(unavailable)?;
        let ids = self.private.identities();
        let st = dir.metadata().map_err(|_| unavailable())?;
        if self.private.is_private(&real) || ids.contains(&st) {
            tracing::warn!(root = %root.name, "a file root points at private state; refusing it");
            return Err(unavailable());
        }
        Ok(OpenRoot { dir, real, ids })
    }

    /// Open `raw` beneath `root`: see the module comment.
    pub fn resolve(&self, root: &FileRoot, raw: &str) -> Result<Resolved, PathError> {
        let parts = parse_relative(raw)?;
        let r = self.open_root(root)?;
        self.open_in(&r, &parts.join("/"))
    }

    fn open_in(&self, r: &OpenRoot, rel: &str) -> Result<Resolved, PathError> {
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = r
            .dir
            .open_beneath(Path::new(rel), flags, 0, Symlinks::StayBeneath)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO) | Some(libc::EOPNOTSUPP) => PathError::NotRegular(rel.to_owned()),
                Some(libc::ENAMETOOLONG) => PathError::Invalid("path is too long".into()),
                // ENOENT, ENOTDIR, EACCES, ELOOP (a loop), EXDEV (a
                // symlink out of the root): as if there were nothing.
                Some(_) => PathError::NotFound,
                None => PathError::Io(e),
            })?;
        let stat = fstat(fd.as_fd())?;
        let Some(real) = fd_path(&fd) else {
            tracing::warn!("cannot read what an opened file is called; refusing it");
            return Err(PathError::NotFound);
        };
        if !real.starts_with(&r.real) || self.private.is_private(&real) || r.ids.contains(&stat) {
            tracing::debug!("path names private state or leaves its root");
            return Err(PathError::NotFound);
        }
        Ok(Resolved {
            fd,
            stat,
            real,
            rel: rel.to_owned(),
        })
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
        let parts = parse_relative(raw)?;
        let open = self.open_root(root)?;
        let r = self.open_in(&open, &parts.join("/"))?;
        if !is_dir(&r.stat) {
            return Err(PathError::NotDirectory(r.rel));
        }
        // Read through the descriptor we checked, not a path.
        let dir = DirHandle::from_fd(r.fd);
        let filter = self.private.entries_of(&r.real);
        let mut names: Vec<String> = Vec::new();
        for name in dir.entries(MAX_DIR_SCAN)? {
            let Ok(name) = name.into_string() else {
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
            let Ok(Some(lst)) = dir.stat_entry(OsStr::new(&name)) else {
                continue; // removed meanwhile
            };
            let symlink = lst.st_mode & libc::S_IFMT == libc::S_IFLNK;
            let st = if symlink {
                // Shown as what it points to, if that is in the root and
                // not private; else hidden like the refusal it would get.
                let rel = join_rel(&r.rel, &name);
                match self.open_in(&open, &rel) {
                    Ok(t) => t.stat,
                    Err(_) => continue,
                }
            } else if open.ids.contains(&lst) {
                continue;
            } else {
                lst
            };
            entries.push(Entry {
                name,
                kind: kind_of(&st),
                symlink,
                size: is_file(&st).then_some(st.st_size as u64),
                modified: modified(&st),
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
        check_regular(&r)?;
        let limit = self.preview_bytes;
        let size = r.stat.st_size as u64;
        if size > limit {
            return Err(PathError::TooLarge {
                path: r.rel,
                size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        File::from(r.fd).take(limit + 1).read_to_end(&mut bytes)?;
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
            size,
            modified: modified(&r.stat),
            content,
        })
    }

    /// Open a regular file for streaming.
    pub fn open_download(&self, root: &FileRoot, raw: &str) -> Result<Download, PathError> {
        let r = self.resolve(root, raw)?;
        check_regular(&r)?;
        let name = r
            .real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "download".into());
        Ok(Download {
            size: r.stat.st_size as u64,
            file: File::from(r.fd),
            name,
        })
    }

    /// Every regular file under a directory, depth-first, paths relative
    /// to the root; symlinks are not followed; capped at
    /// [`MAX_TREE_ENTRIES`] files and [`MAX_TREE_DIRS`] directories.
    pub fn list_tree(&self, root: &FileRoot, raw: &str) -> Result<Vec<TreeFile>, PathError> {
        let parts = parse_relative(raw)?;
        let open = self.open_root(root)?;
        let r = self.open_in(&open, &parts.join("/"))?;
        if !is_dir(&r.stat) {
            return Err(PathError::NotDirectory(r.rel));
        }
        let mut walk = TreeWalk {
            private: &self.private,
            ids: &open.ids,
            out: Vec::new(),
            dirs_left: MAX_TREE_DIRS,
        };
        walk.dir(&DirHandle::from_fd(r.fd), &r.real, &r.rel, 0);
        let mut out = walk.out;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// State of one `list_tree` walk: each directory is opened beneath its
/// parent's handle (no symlinks), so a directory swapped for a link while
/// the walk runs is refused, not followed.
struct TreeWalk<'a> {
    private: &'a PrivatePaths,
    ids: &'a PrivateIds,
    out: Vec<TreeFile>,
    dirs_left: usize,
}

impl TreeWalk<'_> {
    /// `false` once a cap is reached.
    fn dir(&mut self, dir: &DirHandle, real: &Path, rel: &str, depth: usize) -> bool {
        if self.dirs_left == 0 {
            return false;
        }
        self.dirs_left -= 1;
        let Ok(entries) = dir.entries(MAX_DIR_SCAN) else {
            return true;
        };
        let mut names: Vec<String> = entries
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .filter(|n| !is_private_name(n))
            .collect();
        names.sort_unstable();
        for name in names {
            let path = real.join(&name);
            if self.private.is_private(&path) {
                continue;
            }
            let Ok(Some(st)) = dir.stat_entry(OsStr::new(&name)) else {
                continue;
            };
            if self.ids.contains(&st) {
                continue;
            }
            let child_rel = join_rel(rel, &name);
            if is_dir(&st) && depth < MAX_DEPTH {
                let Ok(child) = dir.open_dir(Path::new(&name)) else {
                    continue;
                };
                if !self.dir(&child, &path, &child_rel, depth + 1) {
                    return false;
                }
            } else if is_file(&st) {
                if self.out.len() >= MAX_TREE_ENTRIES {
                    return false;
                }
                self.out.push(TreeFile {
                    path: child_rel,
                    size: st.st_size as u64,
                    modified: modified(&st),
                });
            }
        }
        true
    }
}

/// What the kernel calls an open descriptor now. Read from
/// `/proc/self/fd`, never resolved: it names the file already opened.
fn fd_path(fd: &impl AsFd) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())).ok()
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn check_regular(r: &Resolved) -> Result<(), PathError> {
    if is_dir(&r.stat) {
        return Err(PathError::IsDirectory(r.rel.clone()));
    }
    if !is_file(&r.stat) {
        return Err(PathError::NotRegular(r.rel.clone()));
    }
    Ok(())
}

fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_file(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

fn kind_of(st: &Stat) -> &'static str {
    if is_file(st) {
        "file"
    } else if is_dir(st) {
        "dir"
    } else {
        "other"
    }
}

/// The mtime as RFC 3339 with a four-digit year: the agent sets mtimes at
/// will, so through unix ms and the clamped formatter.
fn modified(st: &Stat) -> Option<String> {
    let ms = st
        .st_mtime
        .saturating_mul(1000)
        .saturating_add(st.st_mtime_nsec / 1_000_000);
    Some(crate::timestamp::format(ms))
}
