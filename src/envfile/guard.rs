//! The run-time half of the reserved-key rule.
//!
//! hermes-agent 0.19.0 loads the tenant `.env` over its environment at the
//! start of every turn and of every cron job, and only then looks up
//! `HERMES_MANAGED_DIR` (`hermes_cli/env_loader.py`): a binding the agent
//! writes while the gateway runs would redirect the managed scope (the
//! policy overlay of `config.yaml`, the managed `.env`) from the next turn
//! on, and python-dotenv never unsets a key, so once read it stays in the
//! process until it restarts. The supervisor drops such bindings before
//! every spawn; this task does it while the gateway runs: one inotify watch
//! on the Hermes home (non-recursive, filtered to `.env`), a bounded queue
//! of one pending wake-up, and [`EnvFile::sanitize`] (the same function, the
//! same lock) on every change and every `RECHECK` (a lost watch, a
//! recreated home). When it removed a binding, `on_removed` (the daemon's
//! restart-when-idle of `env_apply`) replaces a gateway that may have read
//! it without cutting a run. Names are logged, never values. A file that
//! cannot be checked (a symlink, too large), which the gateway would still
//! read on its next turn, is left as it is but replaced the same way, once
//! until a check succeeds again (warned about once); the next spawn refuses
//! it (`supervisor`).
//!
//! The same watch covers `config.yaml`: an external secret source that may
//! override (`secret_sources`), which 0.19.0 runs again before every cron
//! job, is reported once (`warn`) and the gateway replaced when idle; the
//! supervisor then refuses to start one on that file until it is fixed.
//!
//! What this cannot do: a turn that starts between the agent's write and
//! the daemon's rewrite (milliseconds) reads the binding; that gateway is
//! restarted once idle. A cron job that starts before the restart runs the
//! secret source.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::EnvFile;

/// How often the file is checked without an event, and the watch renewed
/// when the home was replaced.
const RECHECK: Duration = Duration::from_secs(30);
/// Wait before retrying a watch that could not be set up.
const RETRY: Duration = Duration::from_secs(5);
/// Least time between two event-driven checks: an agent rewriting the file
/// in a loop gets at most a few log lines (and rewrites) a second.
const MIN_GAP: Duration = Duration::from_millis(100);

/// What the guard calls after it found something a running gateway may
/// have read and the next one must not: a reserved binding it removed, or
/// a secret source that may override.
pub type OnRemoved = Box<dyn Fn() + Send + Sync>;

/// Guard `env_file` until `cancel`.
pub fn spawn(
    env_file: Arc<EnvFile>,
    on_removed: OnRemoved,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut guard = Guard {
            env_file,
            on_removed,
            failing: false,
            unwatched: false,
            overriding: false,
        };
        guard.run(cancel).await;
    })
}

struct Guard {
    env_file: Arc<EnvFile>,
    on_removed: OnRemoved,
    /// The last check failed (logged once until one succeeds).
    failing: bool,
    /// The last watch could not be set up (logged once until one is).
    unwatched: bool,
    /// `config.yaml` held a secret source that may override at the last
    /// check (the gateway is replaced once, on the change to it).
    overriding: bool,
}

impl Guard {
    async fn run(&mut self, cancel: CancellationToken) {
        let Some(home) = self.env_file.path().parent().map(Path::to_path_buf) else {
            return;
        };
        loop {
            let (tx, mut rx) = mpsc::channel::<()>(1);
            let watched = match watch(&home, tx).await {
                Ok(w) => {
                    self.unwatched = false;
                    Some(w)
                }
                Err(e) => {
                    // Absent until the first spawn creates it: not worth a
                    // warning. Anything else (an inotify limit) degrades the
                    // guard to a check every `RETRY`.
                    if !self.unwatched && dir_id(&home).await.is_some() {
                        tracing::warn!(error = %e, "cannot watch the Hermes home for .env changes; checking it every {} s", RETRY.as_secs());
                        self.unwatched = true;
                    }
                    None
                }
            };
            // A change made before the watch existed.
            self.check().await;
            let mut recheck =
                tokio::time::interval(if watched.is_some() { RECHECK } else { RETRY });
            recheck.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    Some(()) = rx.recv() => {
                        self.check().await;
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(MIN_GAP) => {}
                        }
                    }
                    _ = recheck.tick() => {
                        self.check().await;
                        let current = dir_id(&home).await;
                        if watched.as_ref().map(|(_, id)| *id) != current || current.is_none() {
                            break;
                        }
                    }
                }
            }
        }
    }

    async fn check(&mut self) {
        self.check_env().await;
        self.check_secret_sources().await;
    }

    async fn check_secret_sources(&mut self) {
        let Some(home) = self.env_file.path().parent() else {
            return;
        };
        let result = crate::secret_sources::check(home).await;
        let overriding = result.is_err();
        if let Err(why) = result {
            if !self.overriding {
                tracing::warn!(reason = %why, "the gateway will be replaced when idle and not started again until config.yaml is fixed");
                (self.on_removed)();
            }
        }
        self.overriding = overriding;
    }

    async fn check_env(&mut self) {
        match self.env_file.sanitize().await {
            Ok(removed) => {
                self.failing = false;
                if !removed.is_empty() {
                    // The gateway may have read them already (per turn).
                    (self.on_removed)();
                }
            }
            Err(e) => {
                if !self.failing {
                    // The gateway reads `.env` per turn, through a link or
                    // not: one it cannot be sure of is replaced (once per
                    // failing streak), and the supervisor refuses the next.
                    tracing::warn!(error = %e, "cannot check the Hermes .env for reserved keys; the gateway will be replaced when idle and not started on it");
                    (self.on_removed)();
                }
                self.failing = true;
            }
        }
    }
}

/// `(device, inode)` of the home, read as the agent; `None` when absent.
async fn dir_id(home: &Path) -> Option<(u64, u64)> {
    let home = home.to_path_buf();
    crate::identity::spawn_as_agent(move || dir_identity(&home).ok())
        .await
        .ok()
        .flatten()
}

/// `(device, inode)` of a directory (blocking; as whoever calls it).
fn dir_identity(dir: &Path) -> Result<(u64, u64), String> {
    let m = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    m.is_dir()
        .then_some((m.dev(), m.ino()))
        .ok_or_else(|| "not a directory".to_owned())
}

/// A watch on `home` that wakes `tx` on any change to its `.env` or
/// `config.yaml` (or a lost event), with the identity of the directory it
/// watches.
async fn watch(
    home: &Path,
    tx: mpsc::Sender<()>,
) -> Result<(RecommendedWatcher, (u64, u64)), String> {
    let handler = move |res: notify::Result<Event>| {
        let wake = match res {
            Ok(ev) => touches_guarded(&ev),
            Err(_) => true,
        };
        if wake {
            // Full: a check is already due and reads the file as it is then.
            let _ = tx.try_send(());
        }
    };
    let dir: PathBuf = home.to_path_buf();
    // Created as the agent (its event thread inherits the identity), as
    // the skills watcher does: the home is closed to the daemon's user.
    crate::identity::spawn_as_agent(move || {
        let id = dir_identity(&dir)?;
        let mut w = RecommendedWatcher::new(
            handler,
            notify::Config::default().with_follow_symlinks(false),
        )
        .map_err(|e| e.to_string())?;
        w.watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| e.to_string())?;
        Ok((w, id))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A write, create, rename or removal of `.env` or `config.yaml` itself
/// (not our reads), or an event without paths (a queue overflow).
fn touches_guarded(ev: &Event) -> bool {
    let kind = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    kind && (ev.paths.is_empty()
        || ev.paths.iter().any(|p| {
            matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some(".env" | "config.yaml")
            )
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    fn ev(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_changes_to_env_or_config_itself_wake_the_guard() {
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(touches_guarded(&ev(rename, "/home/h/.env")));
        assert!(touches_guarded(&ev(
            EventKind::Create(CreateKind::File),
            "/home/h/.env"
        )));
        assert!(touches_guarded(&ev(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/home/h/.env"
        )));
        // Our own reads, and the busy files next to it.
        assert!(!touches_guarded(&ev(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "/home/h/.env"
        )));
        assert!(!touches_guarded(&ev(rename, "/home/h/state.db-wal")));
        assert!(!touches_guarded(&ev(rename, "/home/h/.env.bak")));
        assert!(touches_guarded(&ev(rename, "/home/h/config.yaml")));
        assert!(!touches_guarded(&ev(rename, "/home/h/config.yaml.tmp")));
        // A lost event (queue overflow) has no path: check anyway.
        assert!(touches_guarded(&Event::new(EventKind::Other)));
    }
}
