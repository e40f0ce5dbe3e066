//! The release directory on disk, shared with the Ansible role:
//!
//! ```text
//! DIR/<version>          a release: a virtualenv (bin/hermes, bin/python),
//!                        a real directory (the role) or a symlink to
//!                        .store/<version>-<nonce> (the daemon)
//! DIR/current  -> DIR/<version>   what the supervisor starts
//! DIR/previous -> DIR/<version>   what a rollback goes back to
//! DIR/.store/<version>-<nonce>   a daemon install; built in place (a
//!                        virtualenv cannot move: its scripts name their
//!                        interpreter by absolute path) and visible only
//!                        once `DIR/<version>` is renamed onto it
//! ```
//!
//! Why symlinks and not a pointer file written by `dir_handle`'s atomic
//! write: the role and `gateway.venv = DIR/current` already use the link,
//! `rename(2)` of a symlink is as atomic as a file replace, and this
//! directory is the daemon's (never agent-writable), so no lookup here needs
//! `dir_handle`'s protection against a hostile writer. Blocking functions.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The pointer the supervisor starts.
pub const CURRENT: &str = "current";
/// The pointer a rollback goes back to.
pub const PREVIOUS: &str = "previous";
const STORE: &str = ".store";

/// A version as a release directory name: PEP 440 characters, starting
/// with a digit (so never `current`, `previous` or a dot file), ≤ 64 bytes.
pub fn valid_version(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'!' | b'_' | b'-'))
}

/// The release directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: PathBuf) -> Layout {
        Layout { dir }
    }

    /// Create the directory (0755: the agent runs releases, never writes
    /// them) and refuse one anybody but the daemon (or root) could write.
    pub fn prepare(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.dir.join(STORE))?;
        for d in [self.dir.clone(), self.dir.join(STORE)] {
            let m = std::fs::symlink_metadata(&d)?;
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if !m.is_dir() || (m.uid() != me && m.uid() != 0) || m.mode() & 0o022 != 0 {
                if m.is_dir() && m.uid() == me {
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
                    continue;
                }
                return Err(io::Error::other(
                    "the release directory must be a directory only the daemon (or root) can write",
                ));
            }
        }
        Ok(())
    }

    pub fn release(&self, version: &str) -> PathBuf {
        self.dir.join(version)
    }

    /// `true` when `DIR/<version>` is an installed release (has `bin/hermes`).
    pub fn installed(&self, version: &str) -> bool {
        valid_version(version) && is_executable(&self.release(version).join("bin/hermes"))
    }

    /// The version a pointer names, if it is a valid one.
    pub fn pointer(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.dir.join(name)).ok()?;
        let v = target.file_name()?.to_str()?.to_owned();
        valid_version(&v).then_some(v)
    }

    /// Point `name` at `version` (or remove it for `None`) with one
    /// `rename(2)`, then sync the directory so the switch survives a crash.
    pub fn set_pointer(&self, name: &str, version: Option<&str>) -> io::Result<()> {
        let link = self.dir.join(name);
        match version {
            Some(v) => {
                let tmp = self.dir.join(format!(".{name}.{}", nonce()));
                // Absolute, as the role writes it (`readlink current` is the
                // release's path either way).
                std::os::unix::fs::symlink(self.release(v), &tmp)?;
                if let Err(e) = std::fs::rename(&tmp, &link) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
            None => match std::fs::remove_file(&link) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
        sync_dir(&self.dir)
    }

    /// The real directory of the current release: what the supervisor runs
    /// (resolved once per spawn, so a later switch never changes the paths
    /// of a running gateway).
    pub fn current_venv(&self) -> Option<(String, PathBuf)> {
        let v = self.pointer(CURRENT)?;
        let real = std::fs::canonicalize(self.release(&v)).ok()?;
        Some((v, real))
    }

    /// A fresh, empty place to build `version` in.
    pub fn staging(&self, version: &str) -> io::Result<PathBuf> {
        let p = self.dir.join(STORE).join(format!("{version}-{}", nonce()));
        std::fs::create_dir(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(p)
    }

    /// Make a built release visible: `DIR/<version>` becomes a link to it
    /// in one rename.
    pub fn publish(&self, version: &str, built: &Path) -> io::Result<()> {
        let rel = Path::new(STORE).join(
            built
                .file_name()
                .ok_or_else(|| io::Error::other("staging path has no name"))?,
        );
        sync_dir(built)?;
        let tmp = self.dir.join(format!(".{version}.{}", nonce()));
        std::os::unix::fs::symlink(&rel, &tmp)?;
        if let Err(e) = std::fs::rename(&tmp, self.release(version)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.dir)
    }

    /// Remove a release: its name first (it stops being visible), then
    /// what it pointed at. Never the current or previous one.
    pub fn remove(&self, version: &str) -> io::Result<()> {
        if !valid_version(version)
            || self.pointer(CURRENT).as_deref() == Some(version)
            || self.pointer(PREVIOUS).as_deref() == Some(version)
        {
            return Err(io::Error::other(
                "refusing to remove the current or previous release",
            ));
        }
        let path = self.release(version);
        let target = std::fs::read_link(&path).ok();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&path)?,
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path)?,
            Ok(_) => std::fs::remove_file(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(t) = target {
            // Only what the daemon built: a link into .store.
            if t.parent() == Some(Path::new(STORE)) {
                remove_tree(&self.dir.join(t));
            }
        }
        sync_dir(&self.dir)
    }

    /// Delete what a killed install left in `.store` (nothing links to it).
    pub fn remove_unpublished(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir.join(STORE)) else {
            return 0;
        };
        let mut linked = std::collections::HashSet::new();
        if let Ok(top) = std::fs::read_dir(&self.dir) {
            for e in top.flatten() {
                if let Ok(t) = std::fs::read_link(e.path()) {
                    if t.parent() == Some(Path::new(STORE)) {
                        if let Some(n) = t.file_name() {
                            linked.insert(n.to_owned());
                        }
                    }
                }
            }
        }
        let mut removed = 0;
        for e in entries.flatten() {
            if !linked.contains(&e.file_name()) {
                remove_tree(&e.path());
                removed += 1;
            }
        }
        // Temporary links of a rename that never happened.
        if let Ok(top) = std::fs::read_dir(&self.dir) {
            for e in top.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with('.') && n != STORE && n.matches('.').count() >= 2 {
                    if let Ok(m) = e.path().symlink_metadata() {
                        if m.file_type().is_symlink() {
                            let _ = std::fs::remove_file(e.path());
                        }
                    }
                }
            }
        }
        removed
    }

    /// Versions present as `DIR/<version>` with `bin/hermes`.
    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|n| self.installed(n))
                    .take(1000)
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Free bytes for an unprivileged writer on the release volume.
    pub fn free_bytes(&self) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("path with a NUL byte"))?;
        // SAFETY: statvfs writes into the zeroed struct we own; the path is a
        // valid NUL-terminated string.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
    }
}

/// Bytes used by a tree (no symlink followed; at most 500,000 entries).
pub fn tree_size(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > 500_000 {
                return total;
            }
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total = total.saturating_add(m.blocks().saturating_mul(512));
            }
        }
    }
    total
}

fn remove_tree(p: &Path) {
    if let Err(e) = std::fs::remove_dir_all(p) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(error = %e, "cannot remove a release's files");
        }
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn sync_dir(p: &Path) -> io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_names_starting_with_a_digit() {
        for ok in ["0.19.0", "1!2.0rc1", "0.19.0+local.1", "2024.1.post1"] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in [
            "",
            "current",
            "previous",
            ".store",
            "../x",
            "1/2",
            "0.19 ",
            &"1".repeat(65),
        ] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn pointer_swap_and_publish() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path().join("r"));
        l.prepare().unwrap();
        let s = l.staging("1.0").unwrap();
        std::fs::create_dir_all(s.join("bin")).unwrap();
        std::fs::write(s.join("bin/hermes"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(s.join("bin/hermes"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert!(!l.installed("1.0"));
        l.publish("1.0", &s).unwrap();
        assert!(l.installed("1.0"));
        l.set_pointer(CURRENT, Some("1.0")).unwrap();
        assert_eq!(l.pointer(CURRENT).as_deref(), Some("1.0"));
        assert_eq!(
            l.current_venv().unwrap().1,
            std::fs::canonicalize(&s).unwrap()
        );
        assert!(l.remove("1.0").is_err(), "current is never removed");
        // A killed install's leftovers go; a published one stays.
        let junk = l.staging("2.0").unwrap();
        assert_eq!(l.remove_unpublished(), 1);
        assert!(!junk.exists() && s.exists());
        l.set_pointer(CURRENT, None).unwrap();
        l.remove("1.0").unwrap();
        assert!(!s.exists() && l.versions().is_empty());
    }
}
