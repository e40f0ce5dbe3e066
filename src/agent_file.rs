//! Reading a file the agent can write: never through a symlink at the last
//! component, never a FIFO or device (an open would block or never end),
//! never more than a cap. Blocking: call from the blocking pool.
//!
//! Parent directories are still resolved by path; the directory-handle
//! module replaces that (one place to switch: this function).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the file is larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("the file is not a regular file")]
    NotRegular,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The whole file, at most `max` bytes; `None` when it does not exist.
/// A symlink is refused (`ELOOP` from `O_NOFOLLOW` is `NotRegular`).
pub fn read_capped(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(ReadError::NotRegular),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge { max });
    }
    // The size can change between fstat and read: the cap is on the read.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuses_links_and_fifos() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"12345").expect("write");
        assert_eq!(read_capped(&f, 5).expect("read"), Some(b"12345".to_vec()));
        assert!(matches!(
            read_capped(&f, 4),
            Err(ReadError::TooLarge { max: 4 })
        ));
        assert!(
            read_capped(&dir.path().join("none"), 4)
                .expect("ok")
                .is_none()
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).expect("symlink");
        assert!(matches!(read_capped(&link, 9), Err(ReadError::NotRegular)));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("cstr");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(read_capped(&fifo, 9), Err(ReadError::NotRegular)));
        assert!(matches!(
            read_capped(dir.path(), 9),
            Err(ReadError::NotRegular)
        ));
    }
}
