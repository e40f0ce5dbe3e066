//! What no root may expose: by name, by path and by identity.
//!
//! Names and paths catch the obvious (`.env` anywhere, the Hermes home's
//! state, the daemon's data directory). Identity — `(st_dev, st_ino)` of the
//! opened file — catches what a name cannot: a hard link the agent made to
//! the daemon's database, credential or key, under an innocent name inside
//! a root. Identities are collected when a request needs them, never kept:
//! the files they describe are replaced by rename.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::config::Config;
use crate::dir_handle::{DirHandle, Stat, identity};

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

/// Deepest a private tree (data dir, managed dir…) is walked for
/// identities, and how many entries at most: these are the daemon's own,
/// small directories.
const ID_TREE_DEPTH: usize = 3;
const ID_MAX: usize = 4096;

/// Paths no root may expose.
#[derive(Debug, Clone, Default)]
pub struct PrivatePaths {
    /// Exact paths and everything under them.
    trees: Vec<PathBuf>,
    /// Directory whose entries named like a pattern are private.
    in_dir: Vec<(PathBuf, &'static str)>,
    /// The trees as configured, walked for identities.
    id_trees: Vec<PathBuf>,
    /// The Hermes home, whose `HERMES_PRIVATE` entries are identities too.
    hermes_home: Option<PathBuf>,
}

/// `(st_dev, st_ino)` of every private file and directory, right now.
#[derive(Debug, Default)]
pub struct PrivateIds(HashSet<(u64, u64)>);

impl PrivateIds {
    pub fn contains(&self, st: &Stat) -> bool {
        self.0.contains(&identity(st))
    }
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
        p.hermes_home = Some(config.gateway.hermes_home.clone());
        p
    }

    fn add_tree(&mut self, path: PathBuf) {
        if let Ok(c) = std::fs::canonicalize(&path) {
            if c != path {
                self.trees.push(c);
            }
        }
        self.id_trees.push(path.clone());
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
    pub fn entries_of(&self, dir: &Path) -> DirFilter {
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

    /// `true` when `path` (absolute, as the kernel names an opened file)
    /// must not be served.
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
            matches(pat, &first.to_string_lossy())
        })
    }

    /// The identities of every private file and directory now: the trees
    /// (walked without following symlinks inside them, capped) and the
    /// Hermes home's private entries. Blocking.
    pub fn identities(&self) -> PrivateIds {
        let mut ids = HashSet::new();
        for t in &self.id_trees {
            collect_tree(t, 0, &mut ids);
        }
        if let Some(home) = &self.hermes_home {
            collect_home(home, &mut ids);
        }
        PrivateIds(ids)
    }
}

fn collect_tree(path: &Path, depth: usize, ids: &mut HashSet<(u64, u64)>) {
    if ids.len() >= ID_MAX {
        return;
    }
    // The top is an operator path (followed); below it, nothing is.
    let meta = if depth == 0 {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    let Ok(meta) = meta else {
        return;
    };
    ids.insert((meta.dev(), meta.ino()));
    if !meta.is_dir() || depth >= ID_TREE_DEPTH {
        return;
    }
    let Ok(iter) = std::fs::read_dir(path) else {
        return;
    };
    for e in iter.flatten() {
        collect_tree(&e.path(), depth + 1, ids);
        if ids.len() >= ID_MAX {
            return;
        }
    }
}

/// The Hermes home's private entries (not followed: the agent's own
/// symlinks name nothing of the daemon's).
fn collect_home(home: &Path, ids: &mut HashSet<(u64, u64)>) {
    let Ok(dir) = DirHandle::open_home(home) else {
        return;
    };
    let Ok(entries) = dir.entries(ID_MAX) else {
        return;
    };
    for name in entries {
        let Some(n) = name.to_str() else {
            continue;
        };
        if !HERMES_PRIVATE.iter().any(|p| matches(p, n)) {
            continue;
        }
        if let Ok(Some(st)) = dir.stat_entry(&name) {
            if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                ids.insert(identity(&st));
            }
        }
    }
}

/// Private entries of one directory, by name.
pub struct DirFilter {
    exact: Vec<String>,
    patterns: Vec<&'static str>,
}

impl DirFilter {
    pub fn hides(&self, name: &str) -> bool {
        is_private_name(name)
            || self.exact.iter().any(|e| e == name)
            || self.patterns.iter().any(|p| matches(p, name))
    }
}

pub fn is_private_name(name: &str) -> bool {
    PRIVATE_NAMES.contains(&name) || name.starts_with(".env.")
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}
