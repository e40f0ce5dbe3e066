//! The skills watcher: a long-running task that keeps the index equal to
//! the skills tree. Order at start: watch first, then a full rescan (so
//! nothing changed between the two is missed). File events are debounced
//! and mapped to the top-level entry they touch; only that entry is
//! re-scanned. A queue overflow, a vanished tree, or the periodic timer
//! cause a full rescan (which skips `SKILL.md` files whose size and mtime
//! are unchanged).

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Indexed, apply, known, read_skill, scan_disk};
use crate::config::SkillsConfig;
use crate::store::{Store, StoreResult};

/// Longest a burst of events may postpone indexing.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Events buffered between the notify thread and the task.
const QUEUE: usize = 4096;

/// What one reconciliation did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reconciled {
    pub scanned: usize,
    pub upserted: usize,
    pub deleted: usize,
}

/// Bring the index in line with the disk for one top-level entry (or all).
/// `force` re-reads every `SKILL.md` in scope (events: an edit may keep
/// size and mtime); otherwise unchanged size+mtime are skipped.
pub async fn reconcile(
    store: &Store,
    skills_dir: &Path,
    scope: Option<String>,
    force: bool,
) -> StoreResult<Reconciled> {
    let scope_q = scope.clone();
    let known = store.read(move |c| known(c, scope_q.as_deref())).await?;
    let dir = skills_dir.to_path_buf();
    let (upserts, deletes, scanned) = crate::identity::spawn_as_agent(move || {
        let disk = scan_disk(&dir, scope.as_deref());
        let scanned = disk.len();
        let on_disk: HashSet<String> = disk.iter().map(|d| d.path.clone()).collect();
        let mut upserts: Vec<Indexed> = Vec::new();
        for d in disk {
            let unchanged = known
                .get(&d.path)
                .is_some_and(|(size, mtime, _)| *size == d.size && *mtime == d.mtime_ns);
            if unchanged && !force {
                continue;
            }
            let indexed = read_skill(&dir, d);
            // Same bytes as indexed: nothing to write.
            if force
                && known.get(&indexed.disk.path).is_some_and(|(s, m, h)| {
                    *h == indexed.content_hash
                        && *s == indexed.disk.size
                        && *m == indexed.disk.mtime_ns
                })
            {
                continue;
            }
            upserts.push(indexed);
        }
        let deletes: Vec<String> = known.into_keys().filter(|p| !on_disk.contains(p)).collect();
        (upserts, deletes, scanned)
    })
    .await?;
    let result = Reconciled {
        scanned,
        upserted: upserts.len(),
        deleted: deletes.len(),
    };
    if !upserts.is_empty() || !deletes.is_empty() {
        store.write(move |c| apply(c, &upserts, &deletes)).await?;
    }
    Ok(result)
}

/// Start the watcher task.
pub fn start(
    store: Store,
    skills_dir: PathBuf,
    config: SkillsConfig,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        run(store, skills_dir, config, cancel).await;
    })
}

enum Scope {
    All,
    Top(String),
    Ignore,
}

fn scope_of(skills_dir: &Path, path: &Path) -> Scope {
    let Ok(rel) = path.strip_prefix(skills_dir) else {
        return Scope::All;
    };
    match rel.components().next() {
        None => Scope::All,
        Some(Component::Normal(n)) => match n.to_str() {
            Some(s) if !s.starts_with('.') => Scope::Top(s.to_owned()),
            _ => Scope::Ignore,
        },
        Some(_) => Scope::All,
    }
}

fn relevant(ev: &Event) -> bool {
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false, // our own reads
        _ => true,
    }
}

async fn run(store: Store, dir: PathBuf, config: SkillsConfig, cancel: CancellationToken) {
    let mut rescan = tokio::time::interval(config.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await; // the first tick is immediate; the start scan is below
    loop {
        if !dir_exists(&dir).await {
            full(&store, &dir, "skills directory absent").await;
            tracing::info!(dir = %dir.display(), "waiting for the skills directory");
            while !dir_exists(&dir).await {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let flag = overflow.clone();
        // Created as the agent: notify's event-loop thread is spawned here
        // and inherits this thread's file-system identity, so every watch it
        // adds (and every directory it walks) is checked as the agent's.
        let watch_dir = dir.clone();
        let made = crate::identity::spawn_as_agent(move || {
            let mut watcher =
                notify::recommended_watcher(move |res: notify::Result<Event>| match res {
                    Ok(ev) => {
                        if relevant(&ev) && tx.try_send(ev).is_err() {
                            flag.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(_) => flag.store(true, Ordering::Relaxed),
                })
                .map_err(|e| ("cannot create the skills watcher", e))?;
            watcher
                .watch(&watch_dir, RecursiveMode::Recursive)
                .map_err(|e| ("cannot watch the skills directory", e))?;
            Ok::<_, (&str, notify::Error)>(watcher)
        })
        .await;
        let watcher = match made {
            Ok(Ok(w)) => w,
            Ok(Err((what, e))) => {
                tracing::error!(error = %e, dir = %dir.display(), "{what}; retrying");
                if sleep_or_cancel(&cancel, Duration::from_secs(5)).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "skills watcher set-up task failed; retrying");
                if sleep_or_cancel(&cancel, Duration::from_secs(5)).await {
                    return;
                }
                continue;
            }
        };
        full(&store, &dir, "start").await;

        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = rescan.tick() => {
                    full(&store, &dir, "periodic").await;
                    continue;
                }
                ev = rx.recv() => ev,
            };
            let Some(first) = first else { break };
            let mut all = first.need_rescan();
            let mut tops: HashSet<String> = HashSet::new();
            let mut absorb = |ev: &Event, all: &mut bool| {
                *all |= ev.need_rescan();
                for p in &ev.paths {
                    match scope_of(&dir, p) {
                        Scope::All => *all = true,
                        Scope::Top(t) => {
                            tops.insert(t);
                        }
                        Scope::Ignore => {}
                    }
                }
            };
            absorb(&first, &mut all);
            let deadline = Instant::now() + MAX_DELAY;
            loop {
                let wait = config
                    .debounce
                    .min(deadline.saturating_duration_since(Instant::now()));
                if wait.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = rx.recv() => match ev {
                        Some(ev) => absorb(&ev, &mut all),
                        None => break,
                    },
                    _ = tokio::time::sleep(wait) => break,
                }
            }
            all |= overflow.swap(false, Ordering::Relaxed);
            if !dir.is_dir() {
                tracing::warn!(dir = %dir.display(), "the skills directory went away");
                break;
            }
            if all {
                full(&store, &dir, "events").await;
            } else {
                for top in tops {
                    match reconcile(&store, &dir, Some(top.clone()), true).await {
                        Ok(r) if r.upserted + r.deleted > 0 => tracing::info!(
                            scope = %top,
                            upserted = r.upserted,
                            deleted = r.deleted,
                            "skills index updated"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, scope = %top, "skills reindex failed"),
                    }
                }
            }
        }
        drop(watcher);
    }
}

async fn full(store: &Store, dir: &Path, why: &'static str) {
    let started = Instant::now();
    match reconcile(store, dir, None, false).await {
        Ok(r) => tracing::info!(
            why,
            scanned = r.scanned,
            upserted = r.upserted,
            deleted = r.deleted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "skills index reconciled"
        ),
        Err(e) => tracing::warn!(error = %e, why, "skills rescan failed"),
    }
}

/// `true` when cancelled.
async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// `true` when the skills directory exists, checked as the agent (it is in
/// the agent's home).
async fn dir_exists(dir: &Path) -> bool {
    let d = dir.to_path_buf();
    crate::identity::spawn_as_agent(move || d.is_dir())
        .await
        .unwrap_or(false)
}
