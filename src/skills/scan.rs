//! The disk side of the skills index: which `SKILL.md` files there are,
//! and reading one. The tree is agent-writable, so every scan is bounded
//! (skills, directory entries, depth, watched directories) and never
//! follows a symlink: a symlinked directory is not entered, a symlinked
//! `SKILL.md` is not read. Blocking: call from the blocking pool.

use std::fs::DirEntry;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::Value as Json;

use super::{Parsed, parse_skill_md};
use crate::dir_handle::{DirHandle, ReadError};

/// Largest `SKILL.md` read; a bigger one is listed with an error.
pub const MAX_SKILL_MD_BYTES: u64 = 1024 * 1024;
/// Most skills in the index; a tree with more is indexed up to this.
pub const MAX_SKILLS: usize = 5_000;
/// Most directory entries one scan reads (all levels together).
pub const MAX_SCAN_ENTRIES: usize = 100_000;
/// Most directories watched for changes (the skills directory, its
/// entries and theirs); changes beyond are found by the periodic rescan.
pub const MAX_WATCHED_DIRS: usize = 8_192;
// Depth is fixed by the layout: `skills/<skill>/SKILL.md` and
// `skills/<category>/<skill>/SKILL.md`; nothing deeper is read.

/// A skill directory found on disk.
#[derive(Debug, Clone)]
pub struct DiskSkill {
    /// Relative to the skills directory: `skill` or `category/skill`.
    pub path: String,
    pub category: Option<String>,
    pub size: u64,
    pub mtime_ns: i64,
}

/// A skill ready to be written to the index.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub disk: DiskSkill,
    pub parsed: Parsed,
    pub content_hash: String,
}

/// What one scan found, within the caps.
#[derive(Debug, Default)]
pub struct Scan {
    pub skills: Vec<DiskSkill>,
    /// Directories to watch (relative; `""` is the skills directory).
    pub dirs: Vec<String>,
    /// Directory entries read.
    pub entries: usize,
    /// A cap stopped the scan: there may be skills it did not see.
    pub truncated: bool,
    /// More directories than `MAX_WATCHED_DIRS`: the rest are not watched
    /// (the periodic rescan still finds their changes).
    pub watches_capped: bool,
}

impl Scan {
    /// Count one entry; `false` once the budget is spent.
    fn visit(&mut self) -> bool {
        if self.entries >= MAX_SCAN_ENTRIES {
            self.truncated = true;
            return false;
        }
        self.entries += 1;
        true
    }

    fn watch(&mut self, rel: String) {
        if self.dirs.len() < MAX_WATCHED_DIRS {
            self.dirs.push(rel);
        } else {
            self.watches_capped = true;
        }
    }

    fn add(&mut self, skill: DiskSkill, max_skills: usize) -> bool {
        if self.skills.len() >= max_skills {
            self.truncated = true;
            return false;
        }
        self.skills.push(skill);
        true
    }
}

/// Visible subdirectories of `dir` (no `.` names, no symlinks), sorted,
/// reading at most what is left of the scan's entry budget.
fn subdirs(dir: &Path, scan: &mut Scan) -> Vec<String> {
    let Ok(iter) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in iter {
        if !scan.visit() {
            break;
        }
        if let Some(name) = e.ok().and_then(|e| visible_dir(&e)) {
            v.push(name);
        }
    }
    v.sort();
    v
}

/// The entry's name when it is a directory (the entry's own type: a
/// symlink to a directory is not one) not starting with `.`.
fn visible_dir(e: &DirEntry) -> Option<String> {
    let name = e.file_name().into_string().ok()?;
    (!name.starts_with('.') && e.file_type().ok()?.is_dir()).then_some(name)
}

/// `rel/SKILL.md` when it is a regular file (not followed if a symlink).
fn skill_md(dir: &Path, rel: &str, category: Option<&str>) -> Option<DiskSkill> {
    let meta = std::fs::symlink_metadata(dir.join(rel).join("SKILL.md")).ok()?;
    meta.is_file().then(|| DiskSkill {
        path: rel.to_owned(),
        category: category.map(str::to_owned),
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    })
}

/// Skills on disk under `scope` (one top-level entry) or everywhere, at
/// most `max_skills` of them and within the caps above.
pub fn scan_disk(skills_dir: &Path, scope: Option<&str>, max_skills: usize) -> Scan {
    let mut scan = Scan::default();
    let tops = match scope {
        Some(t) => vec![t.to_owned()],
        None => {
            scan.watch(String::new());
            subdirs(skills_dir, &mut scan)
        }
    };
    for top in tops {
        let is_dir = std::fs::symlink_metadata(skills_dir.join(&top)).is_ok_and(|m| m.is_dir());
        if top.starts_with('.') || top.contains('/') || !is_dir {
            continue;
        }
        scan.watch(top.clone());
        if let Some(s) = skill_md(skills_dir, &top, None) {
            if !scan.add(s, max_skills) {
                break;
            }
        }
        for sub in subdirs(&skills_dir.join(&top), &mut scan) {
            let rel = format!("{top}/{sub}");
            if let Some(s) = skill_md(skills_dir, &rel, Some(&top)) {
                if !scan.add(s, max_skills) {
                    break;
                }
            }
            scan.watch(rel);
        }
        if scan.truncated {
            break;
        }
    }
    scan
}

/// Read and parse one skill (capped, not through a symlink).
pub fn read_skill(skills_dir: &Path, disk: DiskSkill) -> Indexed {
    let dir_name = disk
        .path
        .rsplit('/')
        .next()
        .unwrap_or(&disk.path)
        .to_owned();
    let bytes = read_skill_md(skills_dir, &disk.path, MAX_SKILL_MD_BYTES);
    let (parsed, hash) = match bytes {
        Ok(b) => {
            let hash = crate::hex::sha256(&b);
            let parsed = match std::str::from_utf8(&b) {
                Ok(t) => parse_skill_md(t, &dir_name),
                Err(_) => unparsed(&dir_name, "SKILL.md is not UTF-8 text".into()),
            };
            (parsed, hash)
        }
        Err(error) => (unparsed(&dir_name, error), String::new()),
    };
    Indexed {
        disk,
        parsed,
        content_hash: hash,
    }
}

/// The skills tree as a handle: beneath the Hermes home's handle, no
/// symlink followed (the tree is the agent's to change).
fn open_tree(skills_dir: &Path) -> Option<DirHandle> {
    let home = DirHandle::open_home(skills_dir.parent()?).ok()?;
    home.open_dir(Path::new(skills_dir.file_name()?)).ok()
}

/// The bytes of `rel/SKILL.md` in the skills tree: through a directory
/// handle, no symlink followed at any level, at most `max` bytes. Blocking.
pub fn read_skill_md(skills_dir: &Path, rel: &str, max: u64) -> Result<Vec<u8>, String> {
    let tree =
        open_tree(skills_dir).ok_or_else(|| "the skills tree cannot be opened".to_owned())?;
    match tree.read_capped(&Path::new(rel).join("SKILL.md"), max) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err("SKILL.md is gone".into()),
        Err(ReadError::TooLarge { .. }) => Err(format!("SKILL.md is larger than {max} bytes")),
        Err(ReadError::NotRegular) => {
            Err("SKILL.md is a symlink or not a regular file; not read".into())
        }
        Err(ReadError::Io(e)) => Err(format!("SKILL.md cannot be read: {e}")),
    }
}

fn unparsed(dir_name: &str, error: String) -> Parsed {
    Parsed {
        name: dir_name.to_owned(),
        description: String::new(),
        front_matter: Json::Object(Default::default()),
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_not_followed_and_caps_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("skills");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("evil")).expect("mkdir");
        std::fs::write(outside.join("evil/SKILL.md"), "---\nname: e\n---\n").expect("w");
        std::fs::create_dir_all(root.join("real")).expect("mkdir");
        std::fs::write(root.join("real/SKILL.md"), "x").expect("w");
        std::os::unix::fs::symlink(&outside, root.join("linked")).expect("ln");
        std::fs::create_dir_all(root.join("mdlink")).expect("mkdir");
        std::os::unix::fs::symlink(outside.join("evil/SKILL.md"), root.join("mdlink/SKILL.md"))
            .expect("ln");
        for i in 0..5 {
            std::fs::create_dir_all(root.join(format!("cat/s{i}"))).expect("mkdir");
            std::fs::write(root.join(format!("cat/s{i}/SKILL.md")), "x").expect("w");
        }
        let s = scan_disk(&root, None, 100);
        let paths: Vec<&str> = s.skills.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            ["cat/s0", "cat/s1", "cat/s2", "cat/s3", "cat/s4", "real"]
        );
        assert!(!s.truncated);
        assert!(scan_disk(&root, Some("linked"), 100).skills.is_empty());
        let capped = scan_disk(&root, None, 3);
        assert_eq!(capped.skills.len(), 3);
        assert!(capped.truncated);
    }
}
