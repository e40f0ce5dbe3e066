//! The hub-managed settings the gateway cannot be talked out of: the API
//! server key the daemon generates, and the managed scope
//! (`HERMES_MANAGED_DIR/.env`) whose keys win over the tenant's own files.

use std::io;
use std::os::unix::fs::PermissionsExt;
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
    "HERMES_GATEWAY_MAX_STARTS",
    "HERMES_DEV",
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
    crate::dir_handle::write_file(&path, key.as_bytes(), 0o600)?;
    Ok(key)
}

/// Write the managed `.env` atomically: the daemon's `API_SERVER_*` keys,
/// plus any other line already in the file (policy keys other parts of the
/// daemon may own). Blocking.
///
/// `reader_gid`: the agent's group when it runs as another user. The scope
/// is the daemon's (owner) and readable by that group, never writable by
/// it: that is what makes it "managed". `None`: owner-only.
pub fn write_managed_env(
    dir: &Path,
    port: u16,
    key: &str,
    reader_gid: Option<u32>,
) -> io::Result<()> {
    let file_mode = prepare_scope(dir, reader_gid)?;
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
    // The daemon owns restarts and their backoff: the gateway's own
    // respawn-storm breaker (hermes-agent 0.19.0: more than 5 starts in
    // 120 s, planned ones included, sleep 10 s, 20 s, ... before serving)
    // is off; `<= 0` disables it (hermes_cli/gateway.py).
    out.push_str("HERMES_GATEWAY_MAX_STARTS=0\n");
    // The process the daemon starts stays the gateway: hermes-agent 0.19.0
    // replaces itself with `<backend> exec ... hermes` when
    // `HERMES_HOME/.container-mode` (the agent's to write) exists, unless
    // `HERMES_DEV=1` (`hermes_cli/config.py` get_container_exec_info, its
    // only use). The key gate credits the child's own listener alone
    // (`supervisor::gateway_socket`).
    out.push_str("HERMES_DEV=1\n");
    // Unchanged (every respawn but the first): no rewrite, no fsync.
    if std::fs::read(&path).is_ok_and(|old| old == out.as_bytes())
        && std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o777 == file_mode)
    {
        return Ok(());
    }
    crate::dir_handle::write_file(&path, out.as_bytes(), file_mode)
}

/// Replace the managed `config.yaml` (the hub's policy and connections,
/// rendered whole by `policy`) atomically; same scope rules as the `.env`.
/// Blocking.
pub fn write_managed_config(dir: &Path, text: &[u8], reader_gid: Option<u32>) -> io::Result<()> {
    let file_mode = prepare_scope(dir, reader_gid)?;
    let path = dir.join("config.yaml");
    if std::fs::read(&path).is_ok_and(|old| old == text)
        && std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o777 == file_mode)
    {
        return Ok(());
    }
    crate::dir_handle::write_file(&path, text, file_mode)
}

/// Create the scope directory; the mode its files get.
fn prepare_scope(dir: &Path, reader_gid: Option<u32>) -> io::Result<u32> {
    match reader_gid {
        Some(gid) => {
            create_shared_dir(dir, gid)?;
            Ok(0o640)
        }
        None => {
            create_private_dir(dir)?;
            Ok(0o600)
        }
    }
}

/// Create `dir` (and parents) owned by the daemon, readable (not writable)
/// by group `gid`: mode 0750 (the files written in it take the directory's
/// group: `dir_handle`'s ownership rule; not set-group-id, which the unit's
/// `RestrictSUIDSGID=` refuses). Changing the group needs the daemon to be a
/// member of it (the unit's `SupplementaryGroups=`).
pub fn create_shared_dir(dir: &Path, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("the managed scope is not a directory"));
    }
    if meta.gid() != gid {
        std::os::unix::fs::lchown(dir, None, Some(gid))?;
    }
    if meta.permissions().mode() & 0o7777 != 0o750 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    Ok(())
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
        write_managed_env(&m, 9001, "k".repeat(40).as_str(), None).expect("write");
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
