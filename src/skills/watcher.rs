//! The skills watcher: a long-running task that keeps the index equal to
//! the skills tree. Order at start: watch the skills directory first, then
//! a full rescan, then watch each directory the scan found (each on its
//! own, non-recursively, at most `MAX_WATCHED_DIRS`); a change in a
//! directory between the scan and its watch is found by the periodic
//! rescan. File events are debounced and mapped to the top-level entry
//! they touch; only that entry is re-scanned. A queue overflow, a flood
//! of distinct entries, a vanished tree, or the periodic timer cause a
//! full rescan (which skips `SKILL.md` files whose size and mtime are
//! unchanged). The event queue is bounded (`QUEUE`; a full queue sets the
//! overflow flag and drops the event), and so is what a burst collects.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::scan::{MAX_SCAN_ENTRIES, MAX_SKILLS, MAX_WATCHED_DIRS};
use super::{DiskSkill, IndexStatus, Indexed, apply, count, known, read_skill, scan_disk};
use crate::config::SkillsConfig;
use crate::store::{Store, StoreResult};

/// Longest a burst of events may postpone indexing.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Events buffered between the notify thread and the task.
const QUEUE: usize = 4096;

/// Skills read and written per store transaction: memory stays bounded
/// by this, not by the number of skills.
const CHUNK: usize = 256;
/// Most distinct top-level entries remembered from one burst of events;
/// more make it a full rescan.
const MAX_TOPS: usize = 256;

/// What one reconciliation did.
#[derive(Debug, Default, Clone)]
pub struct Reconciled {
    pub scanned: usize,
    pub upserted: usize,
    pub deleted: usize,
    /// Directory entries read.
    pub entries: usize,
    /// A cap stopped the scan (see `skills::scan`).
    pub truncated: bool,
    /// Some directories in scope are not watched (`MAX_WATCHED_DIRS`).
    pub watches_capped: bool,
    /// Directories to watch in this scope (relative to the skills dir).
    pub dirs: Vec<String>,
}

/// Bring the index in line with the disk for one top-level entry (or all).
/// `force` re-reads every `SKILL.md` in scope (events: an edit may keep
/// size and mtime); otherwise unchanged size+mtime are skipped. The index
/// never holds more than `MAX_SKILLS`: a scope gets what the rest leaves.
pub async fn reconcile(
    store: &Store,
    skills_dir: &Path,
    scope: Option<String>,
    force: bool,
) -> StoreResult<Reconciled> {
    let scope_q = scope.clone();
    let (known, total) = store
        .read(move |c| Ok((known(c, scope_q.as_deref())?, count(c)?)))
        .await?;
    let room = MAX_SKILLS.saturating_sub(total.saturating_sub(known.len()));
    let dir = skills_dir.to_path_buf();
    let scan = {
        let dir = dir.clone();
        // The tree is the agent's: read as the agent (see `identity`).
        crate::identity::spawn_as_agent(move || scan_disk(&dir, scope.as_deref(), room)).await?
    };
    let on_disk: HashSet<&str> = scan.skills.iter().map(|d| d.path.as_str()).collect();
    let deletes: Vec<String> = known
        .keys()
        .filter(|p| !on_disk.contains(p.as_str()))
        .cloned()
        .collect();
    let changed: Vec<DiskSkill> = scan
        .skills
        .iter()
        .filter(|d| {
            force
                || !known
                    .get(&d.path)
                    .is_some_and(|(size, mtime, _)| *size == d.size && *mtime == d.mtime_ns)
        })
        .cloned()
        .collect();
    let mut result = Reconciled {
        scanned: scan.skills.len(),
        deleted: deletes.len(),
        entries: scan.entries,
        truncated: scan.truncated,
        watches_capped: scan.watches_capped,
        dirs: scan.dirs,
        ..Reconciled::default()
    };
    drop(on_disk);
    if !deletes.is_empty() {
        store.write(move |c| apply(c, &[], &deletes)).await?;
    }
    let known = std::sync::Arc::new(known);
    for chunk in changed.chunks(CHUNK) {
        let chunk = chunk.to_vec();
        let (dir, known) = (dir.clone(), known.clone());
        let upserts: Vec<Indexed> = crate::identity::spawn_as_agent(move || {
            chunk
                .into_iter()
                .map(|d| read_skill(&dir, d))
                // Same bytes as indexed: nothing to write.
                .filter(|i| {
                    !known.get(&i.disk.path).is_some_and(|(s, m, h)| {
                        *h == i.content_hash && *s == i.disk.size && *m == i.disk.mtime_ns
                    })
                })
                .collect()
        })
        .await?;
        result.upserted += upserts.len();
        if !upserts.is_empty() {
            store.write(move |c| apply(c, &upserts, &[])).await?;
        }
    }
    Ok(result)
}

/// Start the watcher task.
pub fn start(
    store: Store,
    skills_dir: PathBuf,
    config: SkillsConfig,
    status: Arc<IndexStatus>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        run(store, skills_dir, config, status, cancel).await;
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

/// The watched directories, each watched on its own and non-recursively:
/// notify's recursive mode walks the whole tree at any depth, follows
/// symlinks and watches every directory it finds, which an agent-made
/// tree of a million entries (or a link to `/`) turns into a flood. The
/// set is what the scans found (`skills::scan`), capped.
struct Watches {
    watcher: RecommendedWatcher,
    root: PathBuf,
    set: HashSet<String>,
}

impl Watches {
    /// Make the watched set under `scope` what the scan found. Blocking:
    /// notify answers through its own thread.
    fn sync(&mut self, scope: Option<&str>, dirs: &[String]) {
        let in_scope = |d: &str| match scope {
            None => true,
            Some(t) => d == t || d.strip_prefix(t).is_some_and(|r| r.starts_with('/')),
        };
        let want: HashSet<&str> = dirs.iter().map(String::as_str).collect();
        let gone: Vec<String> = self
            .set
            .iter()
            .filter(|d| in_scope(d) && !want.contains(d.as_str()))
            .cloned()
            .collect();
        for d in gone {
            // Fails when the directory went away (its watch went with it).
            let _ = self.watcher.unwatch(&self.root.join(&d));
            self.set.remove(&d);
        }
        for d in dirs {
            if self.set.len() >= MAX_WATCHED_DIRS {
                break;
            }
            if !self.set.contains(d)
                && self
                    .watcher
                    .watch(&self.root.join(d), RecursiveMode::NonRecursive)
                    .is_ok()
            {
                self.set.insert(d.clone());
            }
        }
    }
}

type SharedWatches = Arc<std::sync::Mutex<Watches>>;

async fn sync_watches(w: &SharedWatches, scope: Option<String>, dirs: Vec<String>) {
    let w = w.clone();
    let _ = crate::identity::spawn_as_agent(move || {
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        w.sync(scope.as_deref(), &dirs);
    })
    .await;
}

async fn run(
    store: Store,
    dir: PathBuf,
    config: SkillsConfig,
    status: Arc<IndexStatus>,
    cancel: CancellationToken,
) {
    let mut rescan = tokio::time::interval(config.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await; // the first tick is immediate; the start scan is below
    loop {
        if !dir_exists(&dir).await {
            full(&store, &dir, &status, None, "skills directory absent").await;
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
        let handler = move |res: notify::Result<Event>| match res {
            Ok(ev) => {
                if relevant(&ev) && tx.try_send(ev).is_err() {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            Err(_) => flag.store(true, Ordering::Relaxed),
        };
        // Created as the agent: notify's event-loop thread starts here and
        // inherits this thread's file-system identity, so every watch it
        // adds is checked as the agent's (the tree is closed to the daemon's
        // own user in production).
        let watch_dir = dir.clone();
        let made = crate::identity::spawn_as_agent(move || {
            let mut watcher = RecommendedWatcher::new(
                handler,
                notify::Config::default().with_follow_symlinks(false),
            )
            .map_err(|e| ("cannot create the skills watcher", e))?;
            watcher
                .watch(&watch_dir, RecursiveMode::NonRecursive)
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
        let watches: SharedWatches = Arc::new(std::sync::Mutex::new(Watches {
            watcher,
            root: dir.clone(),
            set: HashSet::from([String::new()]),
        }));
        full(&store, &dir, &status, Some(&watches), "start").await;

        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = rescan.tick() => {
                    full(&store, &dir, &status, Some(&watches), "periodic").await;
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
                        // A flood of distinct entries: one full rescan
                        // instead of a set that grows with it.
                        Scope::Top(_) if tops.len() >= MAX_TOPS => *all = true,
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
            if !dir_exists(&dir).await {
                tracing::warn!(dir = %dir.display(), "the skills directory went away");
                break;
            }
            if all {
                full(&store, &dir, &status, Some(&watches), "events").await;
            } else {
                for top in tops {
                    match reconcile(&store, &dir, Some(top.clone()), true).await {
                        Ok(r) => {
                            if r.truncated {
                                status.set_truncated(true);
                                tracing::warn!(scope = %top, entries = r.entries, max_skills = MAX_SKILLS, max_entries = MAX_SCAN_ENTRIES, "skills tree over its caps; indexed up to them");
                            } else if r.upserted + r.deleted > 0 {
                                tracing::info!(scope = %top, upserted = r.upserted, deleted = r.deleted, "skills index updated");
                            }
                            sync_watches(&watches, Some(top), r.dirs).await;
                        }
                        Err(e) => tracing::warn!(error = %e, scope = %top, "skills reindex failed"),
                    }
                }
            }
        }
    }
}

/// A full reconciliation, its one log line, the status and the watches.
async fn full(
    store: &Store,
    dir: &Path,
    status: &IndexStatus,
    watches: Option<&SharedWatches>,
    why: &'static str,
) {
    let started = Instant::now();
    match reconcile(store, dir, None, false).await {
        Ok(r) => {
            status.set_truncated(r.truncated);
            let elapsed_ms = started.elapsed().as_millis() as u64;
            // One line per scan; a warning when a cap stopped it.
            macro_rules! scan_line {
                ($level:expr, $msg:literal) => {
                    tracing::event!(
                        $level,
                        why,
                        scanned = r.scanned,
                        upserted = r.upserted,
                        deleted = r.deleted,
                        entries = r.entries,
                        watched_dirs = r.dirs.len(),
                        watches_capped = r.watches_capped,
                        max_skills = MAX_SKILLS,
                        max_entries = MAX_SCAN_ENTRIES,
                        elapsed_ms,
                        $msg
                    )
                };
            }
            if r.truncated {
                scan_line!(
                    tracing::Level::WARN,
                    "skills tree over its caps; indexed up to them"
                );
            } else {
                scan_line!(tracing::Level::INFO, "skills index reconciled");
            }
            if let Some(w) = watches {
                sync_watches(w, None, r.dirs).await;
            }
        }
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
