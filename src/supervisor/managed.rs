//! The hub-managed settings the gateway cannot be talked out of: the API
//! server key the daemon generates, and the managed scope
//! (`HERMES_MANAGED_DIR/.env`) whose keys win over the tenant's own files.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::distr::{Alphanumeric, SampleString};

/// File in the data directory holding the gateway's API key.
pub const KEY_FILE: &str = "gateway_api_key";
/// Length of a generated key (the gateway refuses keys under 16).
const KEY_LEN: usize = 48;
/// Shortest stored key accepted before a new one is generated.
const KEY_MIN: usize = 32;

/// The keys the daemon owns in the managed `.env`.
pub const MANAGED_KEYS: &[&str] = &[
    "API_SERVER_ENABLED",
    "API_SERVER_HOST",
    "API_SERVER_PORT",
    "API_SERVER_KEY",
];

/// Read the stored key, or generate and store one (mode 0600). Blocking.
pub fn load_or_create_key(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim();
            if key.len() >= KEY_MIN && key.bytes().all(|b| b.is_ascii_alphanumeric()) {
                let mode = std::fs::metadata(&path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
                return Ok(key.to_owned());
            }
            tracing::warn!(path = %path.display(), "stored gateway API key is unusable; generating a new one");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key = Alphanumeric.sample_string(&mut rand::rng(), KEY_LEN);
    write_atomic(&path, key.as_bytes(), 0o600)?;
    Ok(key)
}

/// Write the managed `.env` atomically: the daemon's `API_SERVER_*` keys,
/// plus any other line already in the file (policy keys other parts of the
/// daemon may own). Blocking.
pub fn write_managed_env(dir: &Path, port: u16, key: &str) -> io::Result<()> {
    create_private_dir(dir)?;
    let path = dir.join(".env");
    let mut out = String::new();
    // Parsed as the gateway parses it (python-dotenv): a multi-line value
    // or a `\r`-separated key is one binding, kept or dropped whole.
    let old = crate::agent_file::read_capped(&path, crate::envfile::MAX_FILE_BYTES)
        .map_err(|e| match e {
            crate::agent_file::ReadError::Io(e) => e,
            other => io::Error::other(other),
        })?
        .unwrap_or_default();
    for b in crate::envfile::dotenv::parse(&old).bindings {
        let managed = b.key.as_deref().is_some_and(|k| {
            MANAGED_KEYS.contains(&crate::envfile::dotenv::effective_key(k).as_str())
        });
        let blank = b.key.is_none() && !b.error && old[b.own.clone()].trim_ascii().is_empty();
        if !managed && !blank {
            out.push_str(&String::from_utf8_lossy(&old[b.own.clone()]));
            if !out.ends_with(['\n', '\r']) {
                out.push('\n');
            }
        }
    }
    out.push_str("# Managed by hermes-tenantd; rewritten before every gateway start.\n");
    out.push_str("API_SERVER_ENABLED=true\n");
    out.push_str("API_SERVER_HOST=127.0.0.1\n");
    out.push_str(&format!("API_SERVER_PORT={port}\n"));
    out.push_str(&format!("API_SERVER_KEY={key}\n"));
    // Unchanged (every respawn but the first): no rewrite, no fsync.
    if std::fs::read(&path).is_ok_and(|old| old == out.as_bytes())
        && std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600)
    {
        return Ok(());
    }
    write_atomic(&path, out.as_bytes(), 0o600)
}

/// Create `dir` (and parents) and make it owner-only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_generated_once_private_and_long_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k1 = load_or_create_key(dir.path()).expect("create");
        assert!(k1.len() >= KEY_MIN);
        let k2 = load_or_create_key(dir.path()).expect("load");
        assert_eq!(k1, k2);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn managed_env_owns_its_keys_and_keeps_other_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().join("managed");
        create_private_dir(&m).expect("dir");
        std::fs::write(
            m.join(".env"),
            "POLICY_X=1\rAPI_SERVER_PORT=1\nexport API_SERVER_KEY=short\nML=\"a\nAPI_SERVER_HOST=b\"\n",
        )
        .expect("seed");
        write_managed_env(&m, 9001, "k".repeat(40).as_str()).expect("write");
        let text = std::fs::read_to_string(m.join(".env")).expect("read");
        assert!(text.contains("POLICY_X=1\r"), "{text}");
        assert!(text.contains("ML=\"a\nAPI_SERVER_HOST=b\"\n"), "{text}");
        assert!(text.contains("API_SERVER_PORT=9001\n"), "{text}");
        assert!(!text.contains("API_SERVER_PORT=1\n"), "{text}");
        assert!(!text.contains("short"), "{text}");
        assert_eq!(text.matches("API_SERVER_KEY=").count(), 1, "{text}");
        let mode = std::fs::metadata(m.join(".env"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
