//! The tenant-runtime credential: read from a file the hub provisions,
//! compared in constant time, reloaded when the file changes, with the
//! previous credential honoured for an overlap so rotation has no outage.
//!
//! The overlap survives daemon restarts: a small state file in the data
//! directory (0600) keeps the SHA-256 of the credential in force and of the
//! previous one with its expiry — never a credential itself. A credential
//! that changed while the daemon was down is treated as a rotation at start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

pub const MIN_CREDENTIAL_LEN: usize = 16;
pub const MAX_CREDENTIAL_LEN: usize = 4096;
/// In the data directory: the rotation overlap, kept across restarts.
pub const CREDENTIAL_STATE_FILE: &str = "credential.state";

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "credential file {path} has mode {mode:o}: it must not be readable by group or others (chmod 600)"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("credential file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug)]
struct State {
    current: Secret,
    /// Hex SHA-256 of the previous credential, and until when it counts.
    previous: Option<(Secret, Instant)>,
}

/// The accepted credentials.
#[derive(Debug)]
pub struct Credentials {
    path: PathBuf,
    overlap: Duration,
    state_file: Option<PathBuf>,
    state: RwLock<State>,
}

/// What `state_file` holds (JSON).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Persisted {
    current_sha256: String,
    previous_sha256: Option<String>,
    /// Unix ms.
    previous_until: Option<i64>,
}

/// Hex SHA-256 of a credential.
fn digest(token: &[u8]) -> Secret {
    Secret(crate::hex::sha256(token).into_bytes())
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Read and check the credential file: owner-only mode, sane length, one
/// line of printable ASCII.
pub fn read_credential_file(path: &Path) -> Result<String, CredentialError> {
    let io = |source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_CREDENTIAL_LEN as u64 + 2 {
        return Err(CredentialError::Invalid {
            path: path.to_path_buf(),
            reason: format!("longer than {MAX_CREDENTIAL_LEN} bytes"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let token = text.trim();
    let invalid = |reason: String| CredentialError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if token.len() < MIN_CREDENTIAL_LEN {
        return Err(invalid(format!(
            "shorter than {MIN_CREDENTIAL_LEN} characters"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "must be one line of printable ASCII without spaces".into(),
        ));
    }
    Ok(token.to_owned())
}

/// Create a random credential file (mode 0600) unless one exists; returns
/// the credential in force.
pub fn ensure_generated(path: &Path) -> Result<String, CredentialError> {
    if path.exists() {
        return read_credential_file(path);
    }
    let io = |source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let token = random_token(32);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(token.as_bytes()).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(token)
}

/// `bytes` random bytes, hex-encoded.
pub fn random_token(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    crate::hex::encode(&buf)
}

impl Credentials {
    /// Load the credential file; fails if it is missing, too open or bad.
    /// The overlap is kept in memory only (see [`Credentials::load_with_state`]).
    pub fn load(path: &Path, overlap: Duration) -> Result<Credentials, CredentialError> {
        Self::load_with_state(path, overlap, None)
    }

    /// Load the credential file, and keep the rotation overlap in
    /// `state_file` so that it survives a restart. An unreadable state file
    /// is logged and ignored (the overlap is then lost, nothing else).
    /// Blocking.
    pub fn load_with_state(
        path: &Path,
        overlap: Duration,
        state_file: Option<&Path>,
    ) -> Result<Credentials, CredentialError> {
        let token = read_credential_file(path)?;
        crate::ops::redact::remember(crate::ops::redact::Kind::Credential, &token);
        let current = Secret(token.into_bytes());
        let mut previous = None;
        if let Some(file) = state_file {
            let now_ms = unix_ms();
            let saved = read_persisted(file);
            let cur = digest(&current.0);
            match saved {
                Some(p) if p.current_sha256.as_bytes() != cur.0.as_slice() => {
                    tracing::info!(
                        overlap_s = overlap.as_secs(),
                        "the credential changed while the daemon was down; the previous one stays valid for the overlap"
                    );
                    previous = Some((
                        Secret(p.current_sha256.into_bytes()),
                        Instant::now() + overlap,
                    ));
                }
                Some(Persisted {
                    previous_sha256: Some(h),
                    previous_until: Some(until),
                    ..
                }) if until > now_ms => {
                    // A shorter overlap configured since caps what is left.
                    let left = Duration::from_millis((until - now_ms) as u64).min(overlap);
                    previous = Some((Secret(h.into_bytes()), Instant::now() + left));
                }
                _ => {}
            }
        }
        let creds = Credentials {
            path: path.to_path_buf(),
            overlap,
            state_file: state_file.map(Path::to_path_buf),
            state: RwLock::new(State { current, previous }),
        };
        creds.persist();
        Ok(creds)
    }

    /// Write the state file (if any) from what is in force. Blocking.
    fn persist(&self) {
        let Some(file) = &self.state_file else {
            return;
        };
        let Ok(state) = self.state.read() else {
            return;
        };
        let now = Instant::now();
        let (previous_sha256, previous_until) = match &state.previous {
            Some((h, until)) if *until > now => (
                Some(String::from_utf8_lossy(&h.0).into_owned()),
                Some(unix_ms() + until.duration_since(now).as_millis() as i64),
            ),
            _ => (None, None),
        };
        let p = Persisted {
            current_sha256: String::from_utf8_lossy(&digest(&state.current.0).0).into_owned(),
            previous_sha256,
            previous_until,
        };
        drop(state);
        let written = serde_json::to_vec(&p)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::dir_handle::write_file(file, &bytes, 0o600));
        if let Err(e) = written {
            tracing::warn!(
                path = %file.display(),
                error = %e,
                "cannot save the credential state; a restart during a rotation would end the overlap early"
            );
        }
    }

    /// `true` if `token` is the current credential, or the previous one
    /// within its overlap. Constant time in the token's content.
    pub fn verify(&self, token: &[u8]) -> bool {
        let Ok(state) = self.state.read() else {
            return false;
        };
        let current: bool = state.current.0.ct_eq(token).into();
        let previous = match &state.previous {
            Some((hash, until)) if Instant::now() < *until => digest(token).0.ct_eq(&hash.0).into(),
            _ => false,
        };
        current | previous
    }

    /// `Bearer <current credential>` for calls to the hub, marked sensitive
    /// so it never shows in a debug print.
    pub fn bearer_header(&self) -> Option<reqwest::header::HeaderValue> {
        let state = self.state.read().ok()?;
        let mut value = Vec::with_capacity(7 + state.current.0.len());
        value.extend_from_slice(b"Bearer ");
        value.extend_from_slice(&state.current.0);
        let mut header = reqwest::header::HeaderValue::from_bytes(&value).ok()?;
        header.set_sensitive(true);
        Some(header)
    }

    /// Re-read the file. A changed credential becomes current and the old
    /// one stays valid for the overlap. An unreadable or invalid file keeps
    /// what is in force (and says so in the log).
    pub fn reload(&self) -> bool {
        let token = match read_credential_file(&self.path) {
            Ok(t) => {
                crate::ops::redact::remember(crate::ops::redact::Kind::Credential, &t);
                t
            }
            Err(e) => {
                tracing::warn!(error = %e, "credential file unusable; keeping the credential in force");
                return false;
            }
        };
        let Ok(mut state) = self.state.write() else {
            return false;
        };
        if state.current.0 == token.as_bytes() {
            return false;
        }
        let old = std::mem::replace(&mut state.current, Secret(token.into_bytes()));
        state.previous = Some((digest(&old.0), Instant::now() + self.overlap));
        drop(state);
        tracing::info!(
            overlap_s = self.overlap.as_secs(),
            "credential rotated; the previous one stays valid for the overlap"
        );
        self.persist();
        true
    }

    /// Watch the credential file's directory (rotation usually renames a
    /// new file into place) and reload on change; also re-check every
    /// `poll` in case an event was missed.
    pub fn watch(
        self: &Arc<Self>,
        cancel: CancellationToken,
        poll: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
            let file_name = this.path.file_name().map(|n| n.to_os_string());
            let watcher = {
                use notify::Watcher;
                let mut w =
                    notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                        if let Ok(ev) = res {
                            // Only changes: the reload's own open/read of the
                            // file raises access events, which would loop.
                            let change =
                                ev.kind.is_create() || ev.kind.is_modify() || ev.kind.is_remove();
                            let ours = change
                                && ev
                                    .paths
                                    .iter()
                                    .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name);
                            if ours {
                                let _ = tx.try_send(());
                            }
                        }
                    });
                match (&mut w, this.path.parent()) {
                    (Ok(w), Some(dir)) => {
                        if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                            tracing::warn!(error = %e, "cannot watch the credential directory; polling only");
                        }
                    }
                    (Err(e), _) => {
                        tracing::warn!(error = %e, "cannot watch the credential file; polling only")
                    }
                    _ => {}
                }
                w
            };
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    Some(()) = rx.recv() => {
                        // Let a writer finish before reading.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ = tick.tick() => {}
                }
                let this2 = this.clone();
                let _ = tokio::task::spawn_blocking(move || this2.reload()).await;
            }
            drop(watcher);
        })
    }
}

/// The saved state, or `None` (missing is normal; damaged is logged).
fn read_persisted(file: &Path) -> Option<Persisted> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %file.display(), error = %e, "cannot read the credential state; ignoring it");
            return None;
        }
    };
    match serde_json::from_slice::<Persisted>(&bytes) {
        Ok(p) if p.current_sha256.len() == 64 => Some(p),
        _ => {
            tracing::warn!(path = %file.display(), "the credential state is damaged; ignoring it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn world_readable_or_short_files_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("cred");
        write(&p, "0123456789abcdef0123", 0o644);
        assert!(matches!(
            read_credential_file(&p),
            Err(CredentialError::TooOpen { .. })
        ));
        write(&p, "short", 0o600);
        assert!(matches!(
            read_credential_file(&p),
            Err(CredentialError::Invalid { .. })
        ));
        write(&p, "0123456789abcdef0123\n", 0o600);
        assert_eq!(
            read_credential_file(&p).expect("ok"),
            "0123456789abcdef0123"
        );
    }

    #[test]
    fn rotation_keeps_previous_for_the_overlap_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("cred");
        write(&p, "old-credential-0123456789", 0o600);
        let c = Credentials::load(&p, Duration::from_millis(200)).expect("load");
        assert!(c.verify(b"old-credential-0123456789"));
        write(&p, "new-credential-0123456789", 0o600);
        assert!(c.reload());
        assert!(c.verify(b"new-credential-0123456789"));
        assert!(c.verify(b"old-credential-0123456789"));
        std::thread::sleep(Duration::from_millis(250));
        assert!(!c.verify(b"old-credential-0123456789"));
        assert!(!c.verify(b"old-credential-012345678"));
        assert!(!c.verify(b""));
    }

    #[test]
    fn the_overlap_survives_a_restart_and_a_rotation_while_down_starts_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("cred");
        let state = dir.path().join("credential.state");
        let long = Duration::from_secs(600);
        write(&p, "first-credential-0123456789", 0o600);
        let c = Credentials::load_with_state(&p, long, Some(&state)).expect("load");
        let mode = std::fs::metadata(&state)
            .expect("state")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        write(&p, "second-credential-0123456789", 0o600);
        assert!(c.reload());
        let text = std::fs::read_to_string(&state).expect("state");
        assert!(
            !text.contains("credential-0123456789"),
            "a secret in {text}"
        );
        drop(c);

        // Restart during the overlap: both still work.
        let c = Credentials::load_with_state(&p, long, Some(&state)).expect("reload");
        assert!(c.verify(b"second-credential-0123456789"));
        assert!(c.verify(b"first-credential-0123456789"));
        drop(c);

        // Rotated while down: the one in force before becomes the previous.
        write(&p, "third-credential-0123456789", 0o600);
        let c = Credentials::load_with_state(&p, long, Some(&state)).expect("reload");
        assert!(c.verify(b"third-credential-0123456789"));
        assert!(c.verify(b"second-credential-0123456789"));
        assert!(!c.verify(b"first-credential-0123456789"));
        drop(c);

        // A shorter overlap configured since caps what is left, and an
        // ended overlap stays ended after another restart.
        let c = Credentials::load_with_state(&p, Duration::ZERO, Some(&state)).expect("load");
        assert!(!c.verify(b"second-credential-0123456789"));
        drop(c);
        let c = Credentials::load_with_state(&p, long, Some(&state)).expect("load");
        assert!(!c.verify(b"second-credential-0123456789"));
        assert!(c.verify(b"third-credential-0123456789"));
        drop(c);

        // A damaged state file is ignored: the credential in force works.
        std::fs::write(&state, "{not json").expect("damage");
        let c = Credentials::load_with_state(&p, long, Some(&state)).expect("load");
        assert!(c.verify(b"third-credential-0123456789"));
        assert!(!c.verify(b"second-credential-0123456789"));
    }
}
