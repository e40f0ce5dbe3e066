//! The daemon's one atomic file replacement.
//!
//! A reader sees the old content or the new, never a mix, and nothing the
//! agent plants changes where the bytes go: the temp file is created
//! exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`) under a name with 128
//! random bits, so neither a symlink nor a file planted at a guessed name
//! is ever opened; it is renamed over the target inside the same directory
//! descriptor, so the directory is not looked up again.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;

use super::DirHandle;

/// Prefix of every temp file (so an operator can tell what left one).
pub const TEMP_PREFIX: &str = ".tenantd-tmp-";
/// Attempts at a fresh temp name (a collision needs 128 random bits to
/// repeat, so more than one is already a sign someone is planting).
const NAME_ATTEMPTS: usize = 4;

/// Replace `name` in `dir` with `bytes`, permission bits exactly `mode`:
/// exclusive temp file, `fchown` to the owner of the file it replaces (or
/// of the directory; `EPERM` tolerated, so a daemon running as another user
/// does not take the gateway's files away from it), `fchmod`, write,
/// fsync, `renameat`, fsync the directory. The temp is unlinked on failure.
/// A target that is not a regular file (a symlink, a directory…) is
/// refused: `ELOOP` for a symlink, `EISDIR` for the rest.
pub(super) fn write(dir: &DirHandle, name: &OsStr, bytes: &[u8], mode: u32) -> io::Result<()> {
    let target = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"))?;
    let existing = dir.stat_entry(name)?;
    if let Some(st) = &existing {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFLNK => return Err(io::Error::from_raw_os_error(libc::ELOOP)),
            _ => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
        }
    }
    let owner = match &existing {
        Some(st) => (st.st_uid, st.st_gid),
        None => {
            let st = dir.metadata()?;
            (st.st_uid, st.st_gid)
        }
    };
    let (tmp, file) = create_temp(dir, mode)?;
    let result = fill(&file, owner, bytes, mode).and_then(|()| {
        drop(file);
        // SAFETY: valid fds and NUL-terminated names.
        let r = unsafe {
            libc::renameat(
                dir.as_fd().as_raw_fd(),
                tmp.as_ptr(),
                dir.as_fd().as_raw_fd(),
                target.as_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    });
    if let Err(e) = result {
        // SAFETY: valid fd and NUL-terminated name.
        unsafe { libc::unlinkat(dir.as_fd().as_raw_fd(), tmp.as_ptr(), 0) };
        return Err(e);
    }
    dir.sync()
}

/// A new, empty temp file in `dir` that nobody else had a name for.
fn create_temp(dir: &DirHandle, mode: u32) -> io::Result<(CString, File)> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut last = io::Error::from_raw_os_error(libc::EEXIST);
    for _ in 0..NAME_ATTEMPTS {
        let name = temp_name();
        // SAFETY: valid fd and NUL-terminated name; the new fd is owned
        // by the `File` below.
        let fd = unsafe {
            libc::openat(
                dir.as_fd().as_raw_fd(),
                name.as_ptr(),
                flags,
                (mode & 0o777) as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor owned by nothing else.
            let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            return Ok((name, file));
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EEXIST) {
            return Err(last);
        }
        tracing::warn!("a temp file name was taken; something may be planting files");
    }
    Err(last)
}

/// `.tenantd-tmp-` and 128 random bits in hex.
pub(super) fn temp_name() -> CString {
    let name = format!("{TEMP_PREFIX}{:032x}", rand::random::<u128>());
    // Hex digits and a fixed prefix: never a NUL.
    CString::new(name).unwrap_or_default()
}

fn fill(file: &File, owner: (u32, u32), bytes: &[u8], mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    if unsafe { libc::fchown(file.as_raw_fd(), owner.0, owner.1) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e);
        }
    }
    // After `fchown` (which may clear mode bits); `mode` at `openat` was
    // filtered by the umask, this is exact.
    // SAFETY: valid fd.
    if unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut w = file;
    w.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
