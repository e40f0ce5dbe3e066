//! Opening a name beneath a directory descriptor without following what
//! the agent planted: `openat2` where the kernel has it, else a walk.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

/// What to do with a symlink met while resolving a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    /// Refuse any symlink, at any component (`ELOOP`).
    Refuse,
    /// Follow a symlink only while its target stays beneath the directory
    /// (`RESOLVE_BENEATH`: absolute targets and `..` out are `EXDEV`).
    /// Without `openat2` this degrades to `Refuse`.
    StayBeneath,
}

/// Set once the kernel has answered `ENOSYS` to `openat2`.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// How often `openat2` is retried when it answers `EAGAIN` (a concurrent
/// rename anywhere on the system while resolving; the kernel's advice is
/// to try again).
const EAGAIN_RETRIES: usize = 16;

/// Open `rel` beneath `dir`. `rel` must be relative and free of `..`;
/// `""` and `.` name `dir` itself.
pub(super) fn open_beneath(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: libc::c_int,
    mode: u32,
    symlinks: Symlinks,
) -> io::Result<OwnedFd> {
    check_relative(rel)?;
    let flags = flags | libc::O_CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2(dir, rel, flags, mode, symlinks) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                tracing::info!("the kernel has no openat2; resolving names component by component");
            }
            // Some container seccomp profiles answer EPERM for syscalls
            // they do not know. Not remembered: it may be a real refusal,
            // which the walk then reports the same way.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            other => return other,
        }
    }
    walk(dir, rel, flags, mode)
}

/// A second, independent open of the directory `dir` itself.
pub(super) fn reopen_dir(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    openat(
        dir,
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )
}

fn check_relative(rel: &Path) -> io::Result<()> {
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only plain relative names are opened beneath a directory",
                ));
            }
        }
    }
    Ok(())
}

fn openat2(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: libc::c_int,
    mode: u32,
    symlinks: Symlinks,
) -> io::Result<OwnedFd> {
    let name = if rel.as_os_str().is_empty() {
        CString::from(c".")
    } else {
        cstring(rel.as_os_str().as_bytes())?
    };
    let mut resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    if symlinks == Symlinks::Refuse {
        resolve |= libc::RESOLVE_NO_SYMLINKS;
    }
    // SAFETY: an all-zero `open_how` is valid; fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    // The kernel refuses a mode without `O_CREAT`/`O_TMPFILE`.
    if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        how.mode = u64::from(mode);
    }
    how.resolve = resolve;
    for _ in 0..EAGAIN_RETRIES {
        // SAFETY: valid fd, NUL-terminated name, `how` lives across the
        // call and its size is passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor owned by nothing else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// The fallback: every directory component opened with
/// `O_NOFOLLOW | O_DIRECTORY` from the previous one, the last with
/// `O_NOFOLLOW`. Symlinks are always refused (`ELOOP`).
pub(super) fn walk(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let parts: Vec<&[u8]> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.as_bytes()),
            _ => None,
        })
        .collect();
    let Some((last, inner)) = parts.split_last() else {
        return openat(dir, c".", flags, mode);
    };
    let mut held: Option<OwnedFd> = None;
    for part in inner {
        let name = cstring(part)?;
        let at = held.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
        let next = openat(
            at,
            &name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )
        .map_err(|e| symlink_as_eloop(e, at, &name))?;
        held = Some(next);
    }
    let at = held.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
    let name = cstring(last)?;
    openat(at, &name, flags | libc::O_NOFOLLOW, mode).map_err(|e| symlink_as_eloop(e, at, &name))
}

/// `O_NOFOLLOW` on a symlink gives `ENOTDIR` with `O_DIRECTORY` (or
/// `ELOOP`); say `ELOOP` either way, as `openat2` does.
fn symlink_as_eloop(e: io::Error, at: BorrowedFd<'_>, name: &CString) -> io::Error {
    if e.raw_os_error() != Some(libc::ENOTDIR) {
        return e;
    }
    // SAFETY: an all-zero `stat` is valid; fd and name are valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            at.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        io::Error::from_raw_os_error(libc::ELOOP)
    } else {
        e
    }
}

fn openat(
    dir: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: valid fd, NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the name contains a NUL byte"))
}
