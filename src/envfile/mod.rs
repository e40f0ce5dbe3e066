//! The Hermes `.env`: names, write-only values, reserved keys.
//!
//! The gateway (hermes-agent 0.19.0) loads this file at start and again at
//! every turn and cron job with python-dotenv, lets it override its process
//! environment, and only then looks up `HERMES_MANAGED_DIR`: so a reserved
//! key (the managed scope's directory, the API server settings the daemon
//! owns, the daemon's own settings, the operator's list) must never be in
//! it. Every rewrite drops such bindings, and so does
//! [`EnvFile::sanitize`]: at daemon start, before every gateway spawn
//! (`supervisor`, which refuses to spawn when the file cannot be checked),
//! and whenever the file changes while the gateway runs (`guard`). The
//! file is agent-writable, so it
//! is parsed exactly as python-dotenv parses it (`dotenv`), read with a
//! cap, and rewritten by byte span: a rewrite replaces or removes one
//! binding's text and keeps every other byte. Values are never logged or
//! returned. Writes are serialised and atomic (see `dir_handle`).

pub mod dotenv;
pub mod guard;
mod reserved;
mod rewrite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::agent_file::{self, ReadError};
pub use reserved::Reserved;

/// Names reserved by the platform whatever the configuration says.
pub const BUILTIN_RESERVED: &[&str] = &[
    "HERMES_HOME",
    "HERMES_MANAGED_DIR",
    "HERMES_GATEWAY_EXTERNAL_SUPERVISOR",
    "HERMES_GATEWAY_MAX_STARTS",
    "HERMES_GATEWAY_START_WINDOW_S",
    "HERMES_DEV",
];
/// Prefixes reserved by the platform.
pub const BUILTIN_RESERVED_PREFIXES: &[&str] = &["API_SERVER_", "HERMES_TENANTD_"];
/// Largest `.env` the daemon reads (a real one is a few KiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "`{0}` is not a valid name: use A-Z, 0-9 and `_`, starting with a letter, at most 128 characters"
    )]
    InvalidName(String),
    #[error("`{0}` is reserved and managed by the platform")]
    Reserved(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error("no key `{0}` in the environment file")]
    NotFound(String),
    #[error("the environment file is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("the environment file is a symlink or not a regular file")]
    NotRegular,
    #[error("the environment file is not UTF-8 text; fix it by hand before changing keys")]
    NotUtf8,
    /// The file holds a statement python-dotenv never closes (an open
    /// quote) that would swallow the change.
    #[error(
        "the environment file has a statement python-dotenv cannot parse that would swallow this change; fix it by hand"
    )]
    WouldNotReadBack,
    #[error("environment file: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ReadError> for EnvError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooLarge { .. } => EnvError::TooLarge,
            ReadError::NotRegular => EnvError::NotRegular,
            ReadError::Io(e) => EnvError::Io(e),
        }
    }
}

/// `^[A-Z][A-Z0-9_]{0,127}$`.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_uppercase()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// The daemon's view of the Hermes `.env`.
#[derive(Debug)]
pub struct EnvFile {
    path: PathBuf,
    reserved: Arc<Reserved>,
    value_max_bytes: usize,
    lock: Mutex<()>,
}

impl EnvFile {
    pub fn new(hermes_home: &Path, reserved: Vec<String>, value_max_bytes: usize) -> EnvFile {
        EnvFile {
            path: hermes_home.join(".env"),
            reserved: Arc::new(Reserved::new(reserved)),
            value_max_bytes,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reserved: built in, or listed by the operator (`NAME` or `PREFIX_*`).
    pub fn is_reserved(&self, name: &str) -> bool {
        self.reserved.is_reserved(name)
    }

    /// Check a name for a write: valid, then not reserved.
    pub fn check_name(&self, name: &str) -> Result<(), EnvError> {
        if !is_valid_name(name) {
            return Err(EnvError::InvalidName(name.chars().take(140).collect()));
        }
        if self.is_reserved(name) {
            return Err(EnvError::Reserved(name.to_owned()));
        }
        Ok(())
    }

    fn check_value(&self, value: &str) -> Result<String, EnvError> {
        if value.len() > self.value_max_bytes {
            return Err(EnvError::InvalidValue(format!(
                "value is longer than {} bytes",
                self.value_max_bytes
            )));
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(EnvError::InvalidValue(
                "value must not contain a newline, carriage return or NUL".into(),
            ));
        }
        dotenv::encode_value(value).ok_or_else(|| {
            EnvError::InvalidValue(
                "a value ending with a backslash cannot start or end with whitespace, start with a quote or hold ` #`: python-dotenv would not read it back".into(),
            )
        })
    }

    /// Names present in the file (with a value), in file order, without
    /// duplicates.
    pub async fn names(&self) -> Result<Vec<String>, EnvError> {
        let path = self.path.clone();
        blocking(move || {
            let bytes = read_file(&path)?;
            // A set, not `Vec::contains`: the file may hold 100,000 keys.
            let mut seen = std::collections::HashSet::new();
            let mut out: Vec<String> = Vec::new();
            for b in dotenv::parse(&bytes).bindings {
                if let (Some(k), Some(_)) = (b.key, b.value) {
                    if seen.insert(k.clone()) {
                        out.push(k);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Every value in the file, as python-dotenv reads them (for
    /// `ops::redact`, never for a response).
    pub async fn values(&self) -> Result<Vec<String>, EnvError> {
        let path = self.path.clone();
        blocking(move || {
            let bytes = read_file(&path)?;
            Ok(dotenv::parse(&bytes)
                .bindings
                .into_iter()
                .filter_map(|b| b.value)
                .collect())
        })
        .await
    }

    /// Set `name` to `value`: its last binding is replaced in place, earlier
    /// ones removed; appended when absent.
    pub async fn set(&self, name: &str, value: &str) -> Result<(), EnvError> {
        self.check_name(name)?;
        // Before the gateway can print it (`ops::redact`).
        crate::ops::redact::remember(crate::ops::redact::Kind::EnvValue, value);
        let encoded = self.check_value(value)?;
        let line = format!("{name}={encoded}");
        self.rewrite(name.to_owned(), Some((line, value.to_owned())))
            .await
            .map(|_| ())
    }

    /// Remove `name`; `NotFound` when it was not there.
    pub async fn remove(&self, name: &str) -> Result<(), EnvError> {
        self.check_name(name)?;
        if self.rewrite(name.to_owned(), None).await? {
            Ok(())
        } else {
            Err(EnvError::NotFound(name.to_owned()))
        }
    }

    /// Drop reserved bindings found in the file (daemon start, every
    /// gateway spawn, `guard`). Returns their names. Works on a latin-1 file too (the gateway's fallback): only
    /// the removed spans change.
    pub async fn sanitize(&self) -> Result<Vec<String>, EnvError> {
        let _guard = self.lock.lock().await;
        let (path, reserved) = (self.path.clone(), self.reserved.clone());
        let stripped = blocking(move || {
            let bytes = read_file(&path)?;
            let (out, stripped) = rewrite::strip_reserved(&bytes, &reserved);
            if !stripped.is_empty() {
                write_text(&path, &out)?;
            }
            Ok(stripped)
        })
        .await?;
        log_stripped(&stripped);
        Ok(stripped)
    }

    /// Returns whether a binding for `name` was present before. `new`:
    /// the statement to write and the value it must read back as. Read,
    /// plan and write happen in one blocking call, under the lock.
    async fn rewrite(&self, name: String, new: Option<(String, String)>) -> Result<bool, EnvError> {
        let _guard = self.lock.lock().await;
        let (path, reserved) = (self.path.clone(), self.reserved.clone());
        let plan = blocking(move || {
            let bytes = read_file(&path)?;
            let plan = rewrite::set_or_remove(&bytes, &reserved, &name, new.as_ref())?;
            if plan.bytes != bytes {
                write_text(&path, &plan.bytes)?;
            }
            Ok(plan)
        })
        .await?;
        log_stripped(&plan.stripped);
        Ok(plan.found)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EnvError> + Send + 'static,
) -> Result<T, EnvError> {
    // The file is the agent's: every access as the agent (see `identity`).
    crate::identity::spawn_as_agent(f)
        .await
        .map_err(|e| EnvError::Io(std::io::Error::other(e)))?
}

/// The file's bytes, capped; empty when it does not exist. One log line
/// (no content) when refused.
fn read_file(path: &Path) -> Result<Vec<u8>, EnvError> {
    match agent_file::read_capped(path, MAX_FILE_BYTES) {
        Ok(b) => Ok(b.unwrap_or_default()),
        Err(e) => {
            if !matches!(e, ReadError::Io(_)) {
                tracing::warn!(error = %e, "refused to read the Hermes .env");
            }
            Err(e.into())
        }
    }
}

fn log_stripped(names: &[String]) {
    for n in names {
        tracing::warn!(name = %n, "removed a reserved key from the Hermes .env");
    }
}

fn write_text(path: &Path, bytes: &[u8]) -> Result<(), EnvError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Never through a symlink at `.env` (refused, not replaced: the link's
    // target may hold keys the tenant expects).
    match crate::dir_handle::write_home_file(path, bytes, 0o600) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(EnvError::NotRegular),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        for ok in ["A", "OPENAI_API_KEY", "X1_2"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        let long = "A".repeat(129);
        for bad in ["", "a", "1A", "A-B", "A B", "Ä", long.as_str()] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn hidden_reserved_keys_are_found_and_only_they_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = EnvFile::new(dir.path(), vec![], 100);
        let seed: &[u8] = b"\xef\xbb\xbfAPI_SERVER_PORT=1\nFOO=1\rAPI_SERVER_KEY=evil\r\nM=\"a\r\nb\"\nOPENAI_API_KEY=skAPI_SERVER_HOST=0.0.0.0\nAPI_SERVER\x00_ENABLED=1\n# API_SERVER_KEY=doc\nLAST=\xe9";
        std::fs::write(f.path(), seed).expect("seed");
        let mut names = f.sanitize().await.expect("sanitize");
        names.sort();
        assert_eq!(
            names,
            [
                "API_SERVER_ENABLED",
                "API_SERVER_HOST",
                "API_SERVER_KEY",
                "API_SERVER_PORT"
            ]
        );
        let text = std::fs::read(f.path()).expect("read");
        // Latin-1 (the gateway's fallback): other bytes kept as they were.
        assert_eq!(
            text,
            b"FOO=1\rM=\"a\r\nb\"\n# API_SERVER_KEY=doc\nLAST=\xe9".to_vec()
        );
        assert!(f.sanitize().await.expect("again").is_empty());
    }

    #[tokio::test]
    async fn set_replaces_in_place_and_keeps_every_other_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = EnvFile::new(dir.path(), vec![], 100);
        let seed = "A=1\r\n  B=old # note\r\nML=\"line1\n  line2\\\"\n\"\nB=dup\r\n\n# end";
        std::fs::write(f.path(), seed).expect("seed");
        f.set("B", "new").await.expect("set");
        let text = std::fs::read_to_string(f.path()).expect("read");
        assert_eq!(
            text,
            "A=1\r\nML=\"line1\n  line2\\\"\n\"\nB='new'\r\n\n# end"
        );
        f.set("C", "c\\").await.expect("set bare");
        let text = std::fs::read_to_string(f.path()).expect("read");
        assert!(text.ends_with("# end\nC=c\\\n"), "{text:?}");
        let parsed = dotenv::parse(text.as_bytes());
        assert_eq!(parsed.get("ML"), Some("line1\n  line2\"\n"));
        assert_eq!(parsed.get("C"), Some("c\\"));
        assert!(matches!(
            f.set("D", " c\\").await,
            Err(EnvError::InvalidValue(_))
        ));
    }

    #[tokio::test]
    async fn an_open_quote_that_would_swallow_the_change_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = EnvFile::new(dir.path(), vec![], 100);
        std::fs::write(f.path(), "OPEN='never closed").expect("seed");
        assert!(matches!(
            f.set("NEW", "v").await,
            Err(EnvError::WouldNotReadBack)
        ));
        assert_eq!(
            std::fs::read_to_string(f.path()).expect("read"),
            "OPEN='never closed"
        );
    }

    #[tokio::test]
    async fn set_remove_keep_foreign_lines_and_strip_reserved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = EnvFile::new(dir.path(), vec!["CORP_*".into()], 100);
        std::fs::write(
            f.path(),
            "# comment\nKEEP=1\nAPI_SERVER_KEY=x\nCORP_TOKEN=y\nOLD=1\n",
        )
        .expect("seed");
        f.set("OLD", "two words").await.expect("set");
        f.set("NEW", "v").await.expect("set");
        let text = std::fs::read_to_string(f.path()).expect("read");
        assert_eq!(text, "# comment\nKEEP=1\nOLD='two words'\nNEW='v'\n");
        f.remove("KEEP").await.expect("remove");
        assert!(matches!(f.remove("KEEP").await, Err(EnvError::NotFound(_))));
        assert!(matches!(
            f.set("API_SERVER_PORT", "1").await,
            Err(EnvError::Reserved(_))
        ));
        assert!(matches!(
            f.set("CORP_X", "1").await,
            Err(EnvError::Reserved(_))
        ));
        assert!(matches!(
            f.set("A", "x\ny").await,
            Err(EnvError::InvalidValue(_))
        ));
        assert!(matches!(
            f.set("A", &"x".repeat(101)).await,
            Err(EnvError::InvalidValue(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f.path())
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
