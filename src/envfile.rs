//! The Hermes `.env`: names, write-only values, reserved keys.
//!
//! The gateway re-reads this file on every turn with python-dotenv and lets
//! it override its process environment, so a reserved key (the API server
//! settings the daemon owns, the daemon's own settings, the operator's
//! list) must never be in it: every rewrite drops such lines, and so does
//! [`EnvFile::sanitize`] at start. Values are never logged or returned.
//! Lines the daemon does not manage (comments, other keys) are kept as
//! they are. Writes are serialised and atomic (see `dir_handle`).

use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

/// Names reserved by the platform whatever the configuration says.
pub const BUILTIN_RESERVED: &[&str] = &[
    "HERMES_HOME",
    "HERMES_MANAGED_DIR",
    "HERMES_GATEWAY_EXTERNAL_SUPERVISOR",
    "HERMES_GATEWAY_MAX_STARTS",
    "HERMES_GATEWAY_START_WINDOW_S",
];
/// Prefixes reserved by the platform.
pub const BUILTIN_RESERVED_PREFIXES: &[&str] = &["API_SERVER_", "HERMES_TENANTD_"];
/// Largest `.env` the daemon will rewrite.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

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
    #[error("the environment file is not UTF-8 text; fix it by hand before changing keys")]
    NotUtf8,
    /// A symlink (or a directory, a FIFO…) where `.env` should be: never
    /// written through; the tenant or the agent must put a file back.
    #[error("the environment file is a symlink or not a regular file; it is not written through")]
    NotRegular,
    #[error("environment file: {0}")]
    Io(#[from] std::io::Error),
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
    reserved: Vec<String>,
    value_max_bytes: usize,
    lock: Mutex<()>,
}

impl EnvFile {
    pub fn new(hermes_home: &Path, reserved: Vec<String>, value_max_bytes: usize) -> EnvFile {
        EnvFile {
            path: hermes_home.join(".env"),
            reserved,
            value_max_bytes,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reserved: built in, or listed by the operator (`NAME` or `PREFIX_*`).
    pub fn is_reserved(&self, name: &str) -> bool {
        BUILTIN_RESERVED.contains(&name)
            || BUILTIN_RESERVED_PREFIXES
                .iter()
                .any(|p| name.starts_with(p))
            || self.reserved.iter().any(|r| match r.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => r == name,
            })
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

    fn check_value(&self, value: &str) -> Result<(), EnvError> {
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
        Ok(())
    }

    /// Names present in the file, in file order, without duplicates.
    pub async fn names(&self) -> Result<Vec<String>, EnvError> {
        let path = self.path.clone();
        let text = blocking(move || read_text(&path, false)).await?;
        let mut out: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(k) = line_key(line) {
                if !out.iter().any(|x| x == k) {
                    out.push(k.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Set `name` to `value` (replacing every earlier line for it).
    pub async fn set(&self, name: &str, value: &str) -> Result<(), EnvError> {
        self.check_name(name)?;
        self.check_value(value)?;
        let line = format!("{name}={}", quote(value));
        self.rewrite(name.to_owned(), Some(line)).await.map(|_| ())
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

    /// Drop reserved lines found in the file (at start). Returns their names.
    pub async fn sanitize(&self) -> Result<Vec<String>, EnvError> {
        let _guard = self.lock.lock().await;
        let path = self.path.clone();
        let text = blocking({
            let path = path.clone();
            move || read_text(&path, true)
        })
        .await?;
        let (kept, stripped) = self.strip_reserved(&text);
        if !stripped.is_empty() {
            for n in &stripped {
                tracing::warn!(name = %n, "removed a reserved key from the Hermes .env");
            }
            blocking(move || write_text(&path, &kept)).await?;
        }
        Ok(stripped)
    }

    /// Returns whether a line for `name` was present before.
    async fn rewrite(&self, name: String, new_line: Option<String>) -> Result<bool, EnvError> {
        let _guard = self.lock.lock().await;
        let path = self.path.clone();
        let text = blocking({
            let path = path.clone();
            move || read_text(&path, true)
        })
        .await?;
        let (kept, stripped) = self.strip_reserved(&text);
        for n in &stripped {
            tracing::warn!(name = %n, "removed a reserved key from the Hermes .env");
        }
        let mut out = String::with_capacity(kept.len() + 64);
        let mut found = false;
        for line in kept.lines() {
            if line_key(line) == Some(name.as_str()) {
                found = true;
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        if let Some(l) = new_line {
            out.push_str(&l);
            out.push('\n');
        }
        if !found && out == text {
            return Ok(false);
        }
        blocking(move || write_text(&path, &out)).await?;
        Ok(found)
    }

    fn strip_reserved(&self, text: &str) -> (String, Vec<String>) {
        let mut kept = String::with_capacity(text.len());
        let mut stripped = Vec::new();
        for line in text.lines() {
            match line_key(line) {
                Some(k) if self.is_reserved(k) => stripped.push(k.to_owned()),
                _ => {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
        (kept, stripped)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EnvError> + Send + 'static,
) -> Result<T, EnvError> {
    crate::identity::spawn_as_agent(f)
        .await
        .map_err(|e| EnvError::Io(std::io::Error::other(e)))?
}

/// `strict`: refuse a file that is not UTF-8 (it is about to be rewritten,
/// and a lossy copy would damage lines the daemon does not own).
fn read_text(path: &Path, strict: bool) -> Result<String, EnvError> {
    use crate::dir_handle::ReadError;
    let bytes = match crate::dir_handle::read_home_file(path, MAX_FILE_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(String::new()),
        Err(ReadError::TooLarge { .. }) => return Err(EnvError::TooLarge),
        Err(ReadError::NotRegular) => return Err(EnvError::NotRegular),
        Err(ReadError::Io(e)) => return Err(e.into()),
    };
    match String::from_utf8(bytes) {
        Ok(t) => Ok(t),
        Err(_) if strict => Err(EnvError::NotUtf8),
        Err(e) => Ok(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn write_text(path: &Path, text: &str) -> Result<(), EnvError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match crate::dir_handle::write_home_file(path, text.as_bytes(), 0o600) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(EnvError::NotRegular),
        other => Ok(other?),
    }
}

/// The key a `.env` line assigns, python-dotenv style (`KEY=…`,
/// `export KEY=…`, spaces around `=`); `None` for comments and blanks.
pub fn line_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let t = t
        .strip_prefix("export")
        .filter(|r| r.starts_with([' ', '\t']))
        .map(str::trim_start)
        .unwrap_or(t);
    let (key, _) = t.split_once('=')?;
    let key = key.trim_end();
    let key = key
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .unwrap_or(key);
    (!key.is_empty() && !key.contains(char::is_whitespace)).then_some(key)
}

/// Single-quoted for python-dotenv: only `\` and `'` are escapes there.
fn quote(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    s.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
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

    #[test]
    fn line_keys_parse_like_dotenv() {
        assert_eq!(line_key("A=1"), Some("A"));
        assert_eq!(line_key("  export B = 2"), Some("B"));
        assert_eq!(line_key("# C=3"), None);
        assert_eq!(line_key(""), None);
        assert_eq!(line_key("exported=1"), Some("exported"));
        assert_eq!(line_key("'D'=4"), Some("D"));
    }

    #[test]
    fn quoting_escapes_backslash_and_quote() {
        assert_eq!(quote(r#"a'b\c"d"#), r#"'a\'b\\c"d'"#);
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
