//! Reading a file the agent can write: never through a symlink at the last
//! component, never a FIFO or device (an open would block or never end),
//! never more than a cap. Blocking: call from the blocking pool.
//!
//! Built on `dir_handle` (the file's directory opened once, no symlink
//! followed below it).

use std::path::Path;

pub use crate::dir_handle::ReadError;

/// The whole file, at most `max` bytes; `None` when it does not exist.
/// Opened through a handle on its directory (`DirHandle::open_home`: that
/// directory itself must not be a symlink), never through a symlink, never
/// a FIFO or device.
pub fn read_capped(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    crate::dir_handle::read_home_file(path, max)
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
