//! Directory handles: the one way the daemon opens, reads and replaces a
//! file in a directory the agent can write to.
//!
//! A base directory is opened once from an operator path (`DirHandle::open`,
//! or `open_home` for the Hermes home, whose parent belongs to the agent's
//! user); everything below it is named *relative to the handle* and opened
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so no path is
//! re-resolved between a check and its use and no symlink the agent plants
//! is ever followed. Kernels without `openat2` (before 5.6, or a seccomp
//! filter that answers `ENOSYS`) get a per-component `openat(O_NOFOLLOW)`
//! walk with the same refusals.
//!
//! Writes are `atomic::write`: an exclusive temp file with a random name,
//! renamed over the target within the same directory handle. Reads are
//! `read_capped`: regular files only, at most `max` bytes.
//!
//! Everything here blocks: call it on the blocking pool.

mod atomic;
mod resolve;
#[cfg(test)]
mod tests;

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

pub use resolve::Symlinks;

/// Why a capped read gave no content.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("larger than {max} bytes")]
    TooLarge { max: u64 },
    /// A symlink on the way, a directory, a FIFO, a device…: never read.
    #[error("not a regular file (a symlink, a directory or a special file)")]
    NotRegular,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// An open directory; names below it are resolved beneath it.
#[derive(Debug)]
pub struct DirHandle {
    fd: OwnedFd,
}

/// What `stat` says about an entry, without following it.
pub type Stat = libc::stat;

impl DirHandle {
    /// Open an operator-configured directory (its path is followed as the
    /// operator wrote it).
    pub fn open(path: &Path) -> io::Result<DirHandle> {
        open_path(path, 0)
    }

    /// Open the Hermes home: like `open`, but a symlink as its last
    /// component is refused (`ELOOP`), since the directory holding it is
    /// the agent's user's home and the agent could swap it.
    pub fn open_home(path: &Path) -> io::Result<DirHandle> {
        open_path(path, libc::O_NOFOLLOW)
    }

    /// Adopt an already opened directory (for example, one a caller opened
    /// beneath another handle).
    pub fn from_fd(fd: OwnedFd) -> DirHandle {
        DirHandle { fd }
    }

    /// Open the directory `rel` beneath this one; symlinks refused.
    pub fn open_dir(&self, rel: &Path) -> io::Result<DirHandle> {
        let fd = self.open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0, Symlinks::Refuse)?;
        Ok(DirHandle { fd })
    }

    /// Open `rel` beneath this directory with `flags` (`O_CLOEXEC` is
    /// always added). `mode` only matters with `O_CREAT`.
    pub fn open_beneath(
        &self,
        rel: &Path,
        flags: libc::c_int,
        mode: u32,
        symlinks: Symlinks,
    ) -> io::Result<OwnedFd> {
        resolve::open_beneath(self.fd.as_fd(), rel, flags, mode, symlinks)
    }

    /// Read the regular file `rel` (no symlink anywhere on the way), at
    /// most `max` bytes. `Ok(None)` when it does not exist.
    pub fn read_capped(&self, rel: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = match self.open_beneath(rel, flags, 0, Symlinks::Refuse) {
            Ok(fd) => fd,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
                    Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::ENXIO) => {
                        Err(ReadError::NotRegular)
                    }
                    _ => Err(ReadError::Io(e)),
                };
            }
        };
        let st = fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(ReadError::NotRegular);
        }
        if st.st_size as u64 > max {
            return Err(ReadError::TooLarge { max });
        }
        let mut out = Vec::with_capacity(st.st_size as usize);
        // The file may grow after `fstat`: read one byte past the cap.
        File::from(fd).take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(ReadError::TooLarge { max });
        }
        Ok(Some(out))
    }

    /// Replace `rel` atomically with `bytes`, permission bits exactly
    /// `mode`; see `atomic::write`. A target that exists and is not a
    /// regular file (a symlink included) is refused and left alone.
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        atomic::write(parent.as_ref().unwrap_or(self), name, bytes, mode)
    }

    /// Remove the entry `rel` (a symlink is removed, never followed).
    /// Missing is fine.
    pub fn remove(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        let dir = parent.as_ref().unwrap_or(self);
        let c = cstr(name)?;
        // SAFETY: valid fd and NUL-terminated name.
        let r = unsafe { libc::unlinkat(dir.fd.as_raw_fd(), c.as_ptr(), 0) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(()),
            _ => Err(e),
        }
    }

    /// Open the directory `rel` beneath this one, creating each missing
    /// component with `mode` (`mkdirat` in the handle of its parent, then
    /// opened with symlinks refused: a planted link is never followed).
    pub fn create_dirs(&self, rel: &Path, mode: u32) -> io::Result<DirHandle> {
        let mut cur: Option<DirHandle> = None;
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Err(invalid("only plain names may be created"));
            };
            let dir = cur.as_ref().unwrap_or(self);
            let c = cstr(name)?;
            // SAFETY: valid fd and NUL-terminated name.
            let r = unsafe { libc::mkdirat(dir.fd.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
            let next = dir.open_dir(Path::new(name))?;
            cur = Some(next);
        }
        cur.ok_or_else(|| invalid("no directory named"))
    }

    /// Remove the directory `rel` if it is empty (anything else is left).
    pub fn remove_empty_dir(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        let dir = parent.as_ref().unwrap_or(self);
        let c = cstr(name)?;
        // SAFETY: valid fd and NUL-terminated name.
        let r = unsafe { libc::unlinkat(dir.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTEMPTY | libc::EEXIST) => Ok(()),
            _ => Err(e),
        }
    }

    /// `lstat` of the entry `rel` (not followed); `None` when missing.
    pub fn stat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        let (parent, name) = self.parent_of(rel)?;
        parent.as_ref().unwrap_or(self).stat_entry(name)
    }

    /// Permission bits of the regular file `rel`, or `default`.
    pub fn mode_or(&self, rel: &Path, default: u32) -> u32 {
        match self.stat(rel) {
            Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFREG => st.st_mode & 0o7777,
            _ => default,
        }
    }

    /// `fstat` of the directory itself.
    pub fn metadata(&self) -> io::Result<Stat> {
        fstat(self.fd.as_fd())
    }

    /// The names in this directory (without `.` and `..`), at most `max`,
    /// in no particular order.
    pub fn entries(&self, max: usize) -> io::Result<Vec<OsString>> {
        // `fdopendir` takes ownership of its descriptor: give it a new open
        // of the same directory (`.` beneath it), with its own offset.
        let own = resolve::reopen_dir(self.fd.as_fd())?;
        // SAFETY: `own` is a valid directory fd whose ownership passes to
        // the DIR stream (closed by `closedir` below).
        let dir = unsafe { libc::fdopendir(own.as_raw_fd()) };
        if dir.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(own);
        let mut out = Vec::new();
        let result = loop {
            if out.len() >= max {
                break Ok(());
            }
            // SAFETY: errno is reset to tell the end from an error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `dir` is a valid stream; the entry is copied out
            // before the next call.
            let ent = unsafe { libc::readdir(dir) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break match e.raw_os_error() {
                    Some(0) | None => Ok(()),
                    _ => Err(e),
                };
            }
            // SAFETY: `d_name` is NUL-terminated within the entry.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            let name = name.to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push(OsStr::from_bytes(name).to_owned());
        };
        // SAFETY: `dir` came from `fdopendir` and is closed once.
        unsafe { libc::closedir(dir) };
        result.map(|()| out)
    }

    /// `lstat` of a direct entry of this directory; `None` when missing.
    pub fn stat_entry(&self, name: &OsStr) -> io::Result<Option<Stat>> {
        let c = cstr(name)?;
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut st: Stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, NUL-terminated name, `st` is writable.
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 {
            return Ok(Some(st));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        }
    }

    /// Remove this directory's leftover temp files of [`atomic::write`]
    /// (a write cut by a crash or `kill -9`) last modified before
    /// `older_than` ago: younger ones may belong to a write in progress.
    /// Only regular files and symlinks are removed (`unlinkat`, never
    /// followed); at most `max` entries are looked at. Returns how many
    /// were removed.
    pub fn sweep_temps(&self, older_than: std::time::Duration, max: usize) -> io::Result<usize> {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(older_than)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        let mut removed = 0;
        for name in self.entries(max)? {
            if !name.as_bytes().starts_with(atomic::TEMP_PREFIX.as_bytes()) {
                continue;
            }
            let Some(st) = self.stat_entry(&name)? else {
                continue;
            };
            let kind = st.st_mode & libc::S_IFMT;
            if (kind == libc::S_IFREG || kind == libc::S_IFLNK) && st.st_mtime <= cutoff {
                self.remove(Path::new(&name))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// fsync the directory (makes a rename in it durable).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: valid fd.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The directory holding `rel` (opened beneath this one, `None` when it
    /// is this one) and the last component.
    fn parent_of<'a>(&self, rel: &'a Path) -> io::Result<(Option<DirHandle>, &'a OsStr)> {
        let name = match rel.components().next_back() {
            Some(Component::Normal(n)) => n,
            _ => return Err(invalid("the path names no file")),
        };
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        match parent {
            None => Ok((None, name)),
            Some(p) => Ok((Some(self.open_dir(p)?), name)),
        }
    }
}

impl AsFd for DirHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `(st_dev, st_ino)`: what a file *is*, whatever name reaches it.
pub fn identity(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// `fstat` of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: Stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, `st` is writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Replace the file at `path` atomically (see `write_atomic`); its
/// directory is an operator path, opened as given.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    DirHandle::open(dir)?.write_atomic(Path::new(name), bytes, mode)
}

/// `write_file` for a file directly in the Hermes home (`open_home`).
pub fn write_home_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    DirHandle::open_home(dir)?.write_atomic(Path::new(name), bytes, mode)
}

/// `read_capped` of the file at `path`; its directory is an operator path,
/// opened as given (missing: `None`).
pub fn read_file(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let (dir, name) = split(path)?;
    match DirHandle::open(dir) {
        Ok(d) => d.read_capped(Path::new(name), max),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `read_file` for a file directly in the Hermes home (`open_home`).
pub fn read_home_file(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let (dir, name) = split(path)?;
    match DirHandle::open_home(dir) {
        Ok(d) => d.read_capped(Path::new(name), max),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(ReadError::NotRegular),
        Err(e) => Err(e.into()),
    }
}

fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = match path.components().next_back() {
        Some(Component::Normal(n)) => n,
        _ => return Err(invalid("the path names no file")),
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name))
}

fn open_path(path: &Path, extra: libc::c_int) -> io::Result<DirHandle> {
    let c = cstr(path.as_os_str())?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | extra;
    // SAFETY: NUL-terminated path; the returned fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        // `O_DIRECTORY | O_NOFOLLOW` on a symlink says `ENOTDIR`: say what
        // it is (used only to choose the message).
        let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if e.raw_os_error() == Some(libc::ENOTDIR) && extra & libc::O_NOFOLLOW != 0 && link {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        return Err(e);
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(DirHandle {
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
    })
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| invalid("the path contains a NUL byte"))
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}
