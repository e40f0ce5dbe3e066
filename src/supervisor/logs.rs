//! The gateway's stdout and stderr: read line by line on a dedicated thread
//! per pipe (a fixed buffer, long lines cut), written to a size-capped,
//! rotating file in the data directory and emitted to tracing with the
//! target `gateway`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Longest line kept; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 8 * 1024;

/// A log file that rotates to `NAME.1 .. NAME.keep` past `max_bytes`.
pub struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> RotatingFile {
        let written = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        RotatingFile {
            path,
            file: None,
            written,
            max_bytes,
            keep,
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        if self.path.exists() {
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.written = 0;
        Ok(())
    }

    /// Append one record (already ending in a newline).
    pub fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        if self.written > 0 && self.written + record.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.path)?,
            );
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(record)?;
        }
        self.written += record.len() as u64;
        Ok(())
    }
}

/// The shared gateway log.
#[derive(Clone)]
pub struct GatewayLog {
    file: Arc<Mutex<RotatingFile>>,
}

impl GatewayLog {
    /// `dir/gateway.log`, created owner-only.
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> io::Result<GatewayLog> {
        crate::supervisor::managed::create_private_dir(dir)?;
        Ok(GatewayLog {
            file: Arc::new(Mutex::new(RotatingFile::new(
                dir.join("gateway.log"),
                max_bytes,
                keep,
            ))),
        })
    }

    fn line(&self, stream: &'static str, pid: u32, line: &[u8], truncated: bool) {
        let text = String::from_utf8_lossy(line);
        // Redacted at the source: neither tracing nor the file sees a secret.
        let text = crate::ops::redact::redact(text.trim_end_matches('\r'));
        tracing::info!(target: "gateway", stream, pid, truncated, "{text}");
        let record = format!(
            "{} {stream} {pid} {text}{}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            if truncated { " [truncated]" } else { "" }
        );
        if let Ok(mut f) = self.file.lock() {
            if let Err(e) = f.write_record(record.as_bytes()) {
                tracing::warn!(error = %e, "cannot write the gateway log file");
            }
        }
    }

    /// Read `fd` to its end on a new thread. The thread ends when every
    /// holder of the pipe's write end (the gateway and its descendants) is gone.
    pub fn pump(&self, fd: OwnedFd, stream: &'static str, pid: u32) -> io::Result<()> {
        set_blocking(&fd)?;
        let log = self.clone();
        std::thread::Builder::new()
            .name(format!("gateway-{stream}"))
            .spawn(move || log.read_lines(File::from(fd), stream, pid))?;
        Ok(())
    }

    fn read_lines(&self, mut input: impl Read, stream: &'static str, pid: u32) {
        let mut buf = [0u8; 8192];
        let mut line: Vec<u8> = Vec::with_capacity(1024);
        let mut skipping = false;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                let (part, rest, ended) = match chunk.iter().position(|b| *b == b'\n') {
                    Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                    None => (chunk, &chunk[chunk.len()..], false),
                };
                chunk = rest;
                if !skipping {
                    let room = MAX_LINE - line.len();
                    if part.len() > room {
                        line.extend_from_slice(&part[..room]);
                        self.line(stream, pid, &line, true);
                        line.clear();
                        skipping = !ended;
                    } else {
                        line.extend_from_slice(part);
                        if ended {
                            self.line(stream, pid, &line, false);
                            line.clear();
                        }
                    }
                } else if ended {
                    skipping = false;
                }
            }
        }
        if !line.is_empty() {
            self.line(stream, pid, &line, false);
        }
    }
}

fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_the_cap_and_keeps_n_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = GatewayLog::open(dir.path(), 4096, 2).expect("open");
        let line = vec![b'x'; 1000];
        for _ in 0..20 {
            log.line("stdout", 1, &line, false);
        }
        let main = dir.path().join("gateway.log");
        assert!(std::fs::metadata(&main).expect("main").len() <= 4096);
        assert!(dir.path().join("gateway.log.1").exists());
        assert!(dir.path().join("gateway.log.2").exists());
        assert!(!dir.path().join("gateway.log.3").exists());
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = GatewayLog::open(dir.path(), 1 << 20, 1).expect("open");
        let mut input = vec![b'a'; MAX_LINE * 3];
        input.extend_from_slice(b"\nshort line\npartial");
        log.read_lines(&input[..], "stderr", 7);
        let text = std::fs::read_to_string(dir.path().join("gateway.log")).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].ends_with("[truncated]"));
        assert!(lines[1].ends_with("short line"));
        assert!(lines[2].ends_with("partial"));
    }
}
