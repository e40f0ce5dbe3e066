//! Building one release: a virtualenv with `hermes-agent==<version>` made
//! by pip in a staging directory, checked with `hermes --version`, then
//! published with one rename (`Layout::publish`). Nothing half-built is
//! ever visible as `DIR/<version>`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::layout::{Layout, tree_size};
use super::scrub;
use crate::config::ReleasesConfig;

/// The distribution a release installs.
pub const PACKAGE: &str = "hermes-agent";
/// Bytes of a failing command's output kept for `last_error`.
const TAIL_BYTES: usize = 600;
/// Longest `hermes --version`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished install left.
pub struct Installed {
    pub size: u64,
}

/// Build `version` and publish it. `Err` is a message for `last_error`
/// (no host path in it); the staging directory is removed on failure.
pub async fn install(
    cfg: &ReleasesConfig,
    layout: &Layout,
    version: &str,
    sha256: Option<&str>,
) -> Result<Installed, String> {
    let l = layout.clone();
    let free = tokio::task::spawn_blocking(move || l.free_bytes())
        .await
        .map_err(|e| format!("disk check: {e}"))?
        .map_err(|e| format!("cannot read the free space of the release volume: {e}"))?;
    if free < cfg.min_free_bytes {
        return Err(format!(
            "not enough disk space: {free} bytes free, releases.min_free_bytes is {}",
            cfg.min_free_bytes
        ));
    }
    let (l, v) = (layout.clone(), version.to_owned());
    let stage = tokio::task::spawn_blocking(move || l.staging(&v))
        .await
        .map_err(|e| format!("staging: {e}"))?
        .map_err(|e| format!("cannot create the staging directory: {e}"))?;
    let result = build(cfg, &stage, version, sha256).await;
    let (l, v, s) = (layout.clone(), version.to_owned(), stage.clone());
    let outcome = match result {
        Ok(()) => tokio::task::spawn_blocking(move || {
            let size = tree_size(&s);
            l.publish(&v, &s)
                .map(|()| Installed { size })
                .map_err(|e| format!("cannot publish the release: {e}"))
        })
        .await
        .map_err(|e| format!("publish: {e}"))?,
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&stage)).await;
    }
    outcome
}

async fn build(
    cfg: &ReleasesConfig,
    stage: &Path,
    version: &str,
    sha256: Option<&str>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + cfg.install_timeout;
    let cache = cfg.dir.join(".cache");
    run(
        "python -m venv",
        command(&cfg.python, &cache, false)
            .arg("-m")
            .arg("venv")
            .arg(stage),
        deadline,
    )
    .await?;
    let pip = stage.join("bin/pip");
    let index = index_args(cfg);
    let spec = format!("{PACKAGE}=={version}");
    let target = match sha256 {
        // Hash pinned: fetch the one distribution, check it, install that
        // file (its dependencies from the index as usual).
        Some(want) => {
            let dl = stage.join(".download");
            run(
                "pip download",
                command(&pip, &cache, false)
                    .args(["download", "--no-deps", "--dest"])
                    .arg(&dl)
                    .args(&index)
                    .arg(&spec),
                deadline,
            )
            .await?;
            let file = single_file(&dl).await?;
            let got = sha256_file(&file).await?;
            if got != want {
                return Err(format!(
                    "sha256 mismatch for {PACKAGE} {version}: expected {want}, got {got}"
                ));
            }
            file.into_os_string()
        }
        None => spec.into(),
    };
    let mut install = command(&pip, &cache, false);
    install.arg("install").args(&index).arg(&target);
    for extra in &cfg.extra_packages {
        install.arg(extra);
    }
    run("pip install", &mut install, deadline).await?;
    let _ = tokio::fs::remove_dir_all(stage.join(".download")).await;
    // The entry point must run and say it is this version.
    let out = run(
        "hermes --version",
        command(&stage.join("bin/hermes"), &cache, true).arg("--version"),
        tokio::time::Instant::now() + VERSION_TIMEOUT,
    )
    .await?;
    if !out.contains(version) {
        return Err(format!(
            "`hermes --version` does not report {version}: {}",
            scrub(&out)
        ));
    }
    Ok(())
}

fn index_args(cfg: &ReleasesConfig) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(u) = &cfg.index_url {
        v.push("--index-url".into());
        v.push(u.clone());
    }
    if let Some(f) = &cfg.find_links {
        v.push("--find-links".into());
        v.push(f.clone());
        if cfg.index_url.is_none() {
            v.push("--no-index".into());
        }
    }
    v
}

/// A child with a clean environment: nothing of the daemon's (its
/// settings, systemd's sockets) reaches pip or the release's code.
fn command(program: &Path, cache: &Path, as_agent: bool) -> Command {
    let mut c = Command::new(program);
    c.env_clear();
    for k in [
        "PATH",
        "LANG",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
        "https_proxy",
        "http_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "PIP_CERT",
    ] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c.env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .env("PIP_CACHE_DIR", cache)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // What pip and the release's code run with: none of the daemon's
    // ambient capabilities (CAP_SETUID, CAP_KILL...), no way to gain
    // privileges, and `hermes --version` as the agent's user when there is
    // one (it is the release's own code). A daemon killed mid-install takes
    // pip with it (the next start removes the half-built directory; nothing
    // may still write into it).
    let run_as = as_agent
        .then(crate::identity::agent)
        .flatten()
        .filter(|a| a.is_separate())
        .map(|a| (a.uid, a.gid));
    // SAFETY: only async-signal-safe calls (setgroups, setresgid,
    // setresuid, prctl) between fork and exec; nothing allocates.
    unsafe {
        c.pre_exec(move || {
            if let Some((uid, gid)) = run_as {
                let groups = [gid as libc::gid_t];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// Run to completion before `deadline`; the output (stdout then stderr,
/// capped) on success, a short message with its tail on failure.
async fn run(
    what: &str,
    cmd: &mut Command,
    deadline: tokio::time::Instant,
) -> Result<String, String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let read = async {
        let (a, b) = tokio::join!(capped(out), capped(err));
        let status = child.wait().await;
        (a, b, status)
    };
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) => Err(format!("{what}: timed out (releases.install_timeout)")),
        Ok((_, _, Err(e))) => Err(format!("{what}: {e}")),
        Ok((o, e, Ok(status))) => {
            let text = format!("{o}{e}");
            if status.success() {
                Ok(text)
            } else {
                Err(format!("{what} failed ({status}): {}", scrub(&tail(&text))))
            }
        }
    }
}

/// Read a pipe to its end, keeping at most 64 KiB (the tail matters most:
/// it keeps the last bytes).
async fn capped<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> String {
    const CAP: usize = 64 * 1024;
    let Some(mut r) = r else {
        return String::new();
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > CAP {
                    kept.drain(..kept.len() - CAP);
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn tail(s: &str) -> String {
    let t = s.trim_end();
    let start = t.len().saturating_sub(TAIL_BYTES);
    let start = (start..=t.len())
        .find(|i| t.is_char_boundary(*i))
        .unwrap_or(t.len());
    t[start..].to_owned()
}

async fn single_file(dir: &Path) -> Result<PathBuf, String> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("pip download left nothing: {e}"))?
            .flatten()
            .map(|e| e.path())
            .take(3)
            .collect();
        match files.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(format!(
                "pip download left {} files, expected one",
                files.len()
            )),
        }
    })
    .await
    .map_err(|e| format!("download: {e}"))?
}

async fn sha256_file(p: &Path) -> Result<String, String> {
    let p = p.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f =
            std::fs::File::open(&p).map_err(|e| format!("cannot read the download: {e}"))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("cannot read the download: {e}"))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        Ok(crate::hex::encode(ctx.finish().as_ref()))
    })
    .await
    .map_err(|e| format!("hash: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_paths_and_keep_the_tail() {
        assert_eq!(
            scrub("ERROR: No matching distribution\n in /var/lib/x/releases/.store/a"),
            "ERROR: No matching distribution in <path>"
        );
        assert_eq!(
            scrub("see https://pypi.org/simple"),
            "see https://pypi.org/simple"
        );
        assert_eq!(
            scrub("from https://u:secret@idx.example/simple"),
            "from <url>"
        );
        let long = "é".repeat(1000);
        assert!(tail(&long).len() <= TAIL_BYTES);
    }
}
