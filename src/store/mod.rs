//! The tenant's SQLite database: one writer connection, a small pool of
//! read-only connections, WAL. Every call runs on tokio's blocking pool,
//! never on an async worker thread.

pub mod activity;
pub mod agent;
pub mod conversations;
pub mod cron;
pub mod cursor;
pub mod hub;
pub mod memory;
pub mod message_search;
pub mod migrations;
pub mod policy;
pub mod rank;
pub mod runs;
pub mod search_index;
pub mod usage;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use crate::config::Synchronous;

/// Failures of the store. Domain failures (`NotFound`, `Invalid`, ...) carry
/// a message fit for a client; the rest are internal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database is busy")]
    Busy,
    /// SQLite could not grow the database or its WAL (`SQLITE_FULL`).
    #[error("database or disk is full")]
    Full,
    #[error("sqlite: {0}")]
    Sqlite(#[source] rusqlite::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A database newer than this build whose compatibility floor
    /// (`migrations`, module documentation) does not let this build run.
    #[error(
        "the database schema version is {found}, written by a newer hermes-tenantd; this build writes schema {supported} and runs on a newer database only when its compatibility floor is {supported} or lower, but {}: deploy the newer release again, or stop the daemon and restore the database from a backup taken before the upgrade",
        migrations::describe_floor(.floor)
    )]
    TooNew {
        found: i64,
        supported: i64,
        floor: Option<i64>,
    },
    #[error("migration {name} failed: {source}")]
    Migration {
        name: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy
            }
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full,
            _ => StoreError::Sqlite(e),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Options for opening the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub synchronous: Synchronous,
    pub readers: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::Full,
            readers: 4,
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Arc<AsyncMutex<Connection>>,
    /// When the writer was last handed out, in ms since `opened` (what
    /// [`Store::release_idle`] compares with).
    writer_used_ms: AtomicU64,
    /// The writer's page cache was released since its last use.
    writer_released: AtomicBool,
    opened: Instant,
    /// Idle readers, the most recently returned last.
    readers: Mutex<Vec<IdleReader>>,
    /// One permit per reader connection, opened or not yet opened.
    reader_slots: Arc<Semaphore>,
    synchronous: Synchronous,
    schema_version: i64,
    /// The last write failed for lack of space.
    write_blocked: AtomicBool,
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn configure(conn: &Connection, sync: Synchronous, read_only: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Small page caches keep the idle footprint low; mmap serves hot pages.
    conn.pragma_update(None, "cache_size", -2048)?;
    conn.pragma_update(None, "mmap_size", 2_i64 << 30)?; // whole file to ~2 GiB (SQLite's cap): BENCHMARKS.md "Search"
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    rank::register(conn)?;
    if read_only {
        conn.pragma_update(None, "query_only", "ON")?;
    } else {
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            },
        )?;
    }
    Ok(())
}

/// Process-wide SQLite settings. Call once at the start of `main`, before
/// any connection is opened: SQLite refuses them once initialised (they
/// then simply do not apply, which changes nothing but memory).
pub fn configure_process() {
    // No page-cache block preallocated per connection: by default SQLite
    // allocates 20 pages (~87 KiB) in one block at a connection's first
    // read and keeps all of it until the connection closes, even once its
    // cache is released (`Store::release_idle`). Pages are then allocated
    // one by one as the cache grows.
    // SAFETY: SQLITE_CONFIG_PAGECACHE takes a pointer (none: no static
    // buffer) and two ints; called before SQLite is initialised, while the
    // process has one thread, as sqlite3_config requires.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_config(
            rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(
            rc,
            "SQLite page-cache setting not applied (already initialised)"
        );
    }
}

impl Store {
    /// Open (creating if needed) the database at `path`, switch it to WAL and
    /// apply pending migrations. Blocking: call before the runtime serves.
    pub fn open_blocking(path: &Path, opts: &StoreOptions) -> StoreResult<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut writer = Connection::open(path)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "SQLite refused WAL mode");
        }
        configure(&writer, opts.synchronous, false)?;
        let schema_version = migrations::apply(&mut writer)?;
        restrict_mode(path);

        // One reader now (a store that cannot be read fails the start);
        // the others are opened when concurrent reads first need them, so
        // an idle daemon does not keep four connections' schema and caches
        // (~190 KiB each, BENCHMARKS.md "Idle memory").
        let readers = vec![IdleReader::new(open_reader(path, opts.synchronous)?)];
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Arc::new(AsyncMutex::new(writer)),
                writer_used_ms: AtomicU64::new(0),
                writer_released: AtomicBool::new(false),
                opened: Instant::now(),
                reader_slots: Arc::new(Semaphore::new(opts.readers.max(1))),
                readers: Mutex::new(readers),
                synchronous: opts.synchronous,
                schema_version,
                write_blocked: AtomicBool::new(false),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version this build writes (`migrations::latest`), also on
    /// a newer store it runs on unmigrated (that one keeps its own).
    pub fn schema_version(&self) -> i64 {
        self.inner.schema_version
    }

    /// Run `f` with the writer connection on the blocking pool. Writers are
    /// queued on an async mutex, so waiting does not hold a thread.
    pub async fn write<F, R>(&self, f: F) -> StoreResult<R>
    where
        F: FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
        R: Send + 'static,
    {
        let guard = self.inner.writer.clone().lock_owned().await;
        self.inner.mark_writer_used();
        let result = tokio::task::spawn_blocking(move || {
            // Dropped on return and on unwind alike: the connection stays in
            // its mutex with no transaction left open.
            let mut writer = Rollback(guard);
            f(&mut writer.0)
        })
        .await?;
        // Remember a full disk so readiness can say so; any write that
        // succeeds again (space freed) clears it.
        match &result {
            Ok(_) => self.inner.write_blocked.store(false, Ordering::Relaxed),
            Err(StoreError::Full) => self.inner.write_blocked.store(true, Ordering::Relaxed),
            // A refused or failed write says nothing about space.
            Err(_) => {}
        }
        result
    }

    /// Whether the store can write. After a write failed for lack of space,
    /// this tries one small write, so freeing space is seen without waiting
    /// for a client's write.
    pub async fn writable(&self) -> bool {
        if !self.inner.write_blocked.load(Ordering::Relaxed) {
            return true;
        }
        self.set_state("store.write_probe", now_ms().to_string())
            .await
            .is_ok()
    }

    /// Run `f` with a read-only connection on the blocking pool.
    pub async fn read<F, R>(&self, f: F) -> StoreResult<R>
    where
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
        R: Send + 'static,
    {
        let permit = self
            .inner
            .reader_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Busy)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // Declared before the lease so it is released after the
            // connection is back in the pool.
            let _permit = permit;
            // With a permit, an empty pool means every opened reader is in
            // use and fewer than `readers` exist: open one more.
            let pooled = lock_pool(&inner.readers).pop();
            let conn = match pooled {
                Some(idle) => idle.conn,
                None => open_reader(&inner.path, inner.synchronous)?,
            };
            // Returns the connection on return and on unwind alike: a
            // panicking closure must not shrink the pool.
            let lease = ReaderLease {
                pool: &inner.readers,
                conn: Some(conn),
            };
            match lease.conn.as_ref() {
                Some(conn) => f(conn),
                None => Err(StoreError::Busy),
            }
        })
        .await?
    }

    /// Give back what an idle store holds (blocking: call on the blocking
    /// pool). Readers unused for `idle` are closed, all but the most
    /// recently used one; that one's and the writer's page caches are
    /// released once they have been unused for `idle` (SQLite reads the
    /// pages again on the next use, from the OS page cache or the map).
    /// Each reader holds ~190 KiB (schema, caches, lookaside), so a burst
    /// of concurrent reads must not leave the pool at its peak for good.
    /// Returns how many readers it closed.
    pub fn release_idle(&self, idle: Duration) -> usize {
        let inner = &self.inner;
        let closed: Vec<IdleReader> = {
            let mut pool = lock_pool(&inner.readers);
            // The most recently used reader is last: keep it, close the
            // others that have been idle long enough.
            let keep_from = pool.len().saturating_sub(1);
            let (old, kept): (Vec<_>, Vec<_>) = pool
                .drain(..)
                .enumerate()
                .partition(|(i, r)| *i < keep_from && r.since.elapsed() >= idle);
            pool.extend(kept.into_iter().map(|(_, r)| r));
            if let Some(last) = pool.last_mut() {
                last.release_if_idle(idle);
            }
            old.into_iter().map(|(_, r)| r).collect()
        };
        // Closed outside the pool's lock (sqlite3_close frees everything
        // the connection holds).
        let n = closed.len();
        drop(closed);
        // A writer in use is not idle; one waiting in its mutex is.
        if let Ok(writer) = inner.writer.try_lock() {
            let used = Duration::from_millis(inner.writer_used_ms.load(Ordering::Relaxed));
            if inner.opened.elapsed().saturating_sub(used) >= idle
                && !inner.writer_released.swap(true, Ordering::Relaxed)
            {
                release_cache(&writer);
            }
        }
        n
    }

    /// Size of the database and its WAL in bytes.
    pub fn disk_bytes(&self) -> u64 {
        let mut total = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.inner.path.clone().into_os_string();
            p.push(suffix);
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        total
    }

    /// Cheap liveness probe of the read path.
    pub async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .map(|_| ())
    }

    /// Checkpoint the WAL into the main file (at shutdown).
    pub async fn checkpoint(&self) -> StoreResult<()> {
        self.write(|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    /// Read a persisted daemon value.
    pub async fn get_state(&self, key: &'static str) -> StoreResult<Option<String>> {
        self.read(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT value FROM daemon_state WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// Persist several daemon values in one transaction (all or none).
    pub async fn set_states(&self, pairs: Vec<(&'static str, String)>) -> StoreResult<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            for (key, value) in &pairs {
                tx.execute(
                    "INSERT INTO daemon_state (key, value, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    rusqlite::params![key, value, now_ms()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Persist a daemon value.
    pub async fn set_state(&self, key: &'static str, value: String) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO daemon_state (key, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                rusqlite::params![key, value, now_ms()],
            )?;
            Ok(())
        })
        .await
    }
}

fn open_reader(path: &Path, sync: Synchronous) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    configure(&conn, sync, true)?;
    Ok(conn)
}

impl Inner {
    fn mark_writer_used(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.writer_used_ms.store(ms, Ordering::Relaxed);
        self.writer_released.store(false, Ordering::Relaxed);
    }
}

/// A reader waiting in the pool.
struct IdleReader {
    conn: Connection,
    /// Back in the pool since.
    since: Instant,
    /// Its page cache was released since it came back.
    released: bool,
}

impl IdleReader {
    fn new(conn: Connection) -> IdleReader {
        IdleReader {
            conn,
            since: Instant::now(),
            released: false,
        }
    }

    fn release_if_idle(&mut self, idle: Duration) {
        if !self.released && self.since.elapsed() >= idle {
            release_cache(&self.conn);
            self.released = true;
        }
    }
}

/// Free the pages a connection caches (`sqlite3_db_release_memory`);
/// failure only means they stay cached.
fn release_cache(conn: &Connection) {
    if let Err(e) = conn.release_memory() {
        tracing::debug!(error = %e, "cannot release an idle connection's page cache");
    }
}

/// The reader pool's lock is held only for a push, a pop or the idle sweep,
/// none of which can panic; should it ever be poisoned, the pool itself is
/// still sound.
fn lock_pool(pool: &Mutex<Vec<IdleReader>>) -> std::sync::MutexGuard<'_, Vec<IdleReader>> {
    pool.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Leave no transaction open on a connection whatever the closure did
/// (returned early, errored or panicked): the next user must start clean.
fn end_open_transaction(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "cannot roll back a transaction left open");
        }
    }
}

/// A reader connection borrowed from the pool; back in the pool on drop.
struct ReaderLease<'a> {
    pool: &'a Mutex<Vec<IdleReader>>,
    conn: Option<Connection>,
}

impl Drop for ReaderLease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            end_open_transaction(&conn);
            lock_pool(self.pool).push(IdleReader::new(conn));
        }
    }
}

/// The writer connection for one closure; rolls back on drop whatever the
/// closure left open.
struct Rollback(tokio::sync::OwnedMutexGuard<Connection>);

impl Drop for Rollback {
    fn drop(&mut self) {
        end_open_transaction(&self.0);
    }
}

/// The database holds tenant data: owner only.
fn restrict_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (four-digit year:
/// see [`crate::timestamp`]).
pub fn ms_to_rfc3339(ms: i64) -> String {
    crate::timestamp::format(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh store with at most `readers` read connections (and the
    /// directory that holds it).
    fn store_with_readers(readers: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions {
            readers,
            ..StoreOptions::default()
        };
        let store = Store::open_blocking(&dir.path().join("t.db"), &opts).expect("open");
        (dir, store)
    }

    /// `n` reads at once, each waiting for the others inside its
    /// connection, so none can finish on a shared one.
    async fn concurrent_reads(store: &Store, n: usize) {
        let all_in = Arc::new(std::sync::Barrier::new(n));
        let reads: Vec<_> = (0..n)
            .map(|_| {
                let (store, all_in) = (store.clone(), all_in.clone());
                tokio::spawn(async move {
                    store
                        .read(move |c| {
                            all_in.wait();
                            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)
                        })
                        .await
                })
            })
            .collect();
        for r in reads {
            assert_eq!(r.await.expect("join").expect("read"), 1);
        }
    }

    /// Readers are opened on demand, never more than `readers`: one at
    /// start, all three once three reads run at once (each waits for the
    /// others, so none could finish on a shared connection), and a fourth
    /// read then waits for a free one instead of opening a fourth.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_open_on_demand_up_to_the_limit() {
        let (_dir, store) = store_with_readers(3);
        assert_eq!(lock_pool(&store.inner.readers).len(), 1);
        concurrent_reads(&store, 3).await;
        assert_eq!(lock_pool(&store.inner.readers).len(), 3);
        for _ in 0..5 {
            store.ping().await.expect("ping");
        }
        assert_eq!(lock_pool(&store.inner.readers).len(), 3, "never a fourth");
    }

    /// After a burst of concurrent reads, the idle sweep closes the extra
    /// readers (never the last one, never one not yet idle long enough),
    /// and the store reads and writes as before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_readers_past_the_first_are_closed() {
        let (_dir, store) = store_with_readers(3);
        concurrent_reads(&store, 3).await;
        assert_eq!(lock_pool(&store.inner.readers).len(), 3);
        // Not idle long enough: nothing closed.
        assert_eq!(store.release_idle(Duration::from_secs(3600)), 0);
        assert_eq!(lock_pool(&store.inner.readers).len(), 3);
        store.set_state("k", "v".into()).await.expect("write");
        assert_eq!(store.release_idle(Duration::ZERO), 2);
        assert_eq!(lock_pool(&store.inner.readers).len(), 1, "the last stays");
        assert_eq!(store.release_idle(Duration::ZERO), 0);
        // Released caches are read again.
        assert_eq!(
            store.get_state("k").await.expect("read").as_deref(),
            Some("v")
        );
        store.set_state("k", "w".into()).await.expect("write");
        assert_eq!(
            store.get_state("k").await.expect("read").as_deref(),
            Some("w")
        );
    }

    #[tokio::test]
    async fn a_panicking_closure_returns_its_connection() {
        let (_dir, store) = store_with_readers(2);
        for _ in 0..5 {
            let r: StoreResult<()> = store.read(|_| panic!("boom")).await;
            assert!(matches!(r, Err(StoreError::Join(_))));
        }
        for _ in 0..5 {
            store.ping().await.expect("reader pool intact");
        }
        // A writer that panics inside an open transaction leaves nothing
        // behind: the transaction is rolled back and the next write works.
        let r: StoreResult<()> = store
            .write(|c| {
                c.execute_batch(
                    "BEGIN IMMEDIATE; INSERT INTO daemon_state (key, value, updated_at) VALUES ('k', 'v', 0);",
                )?;
                panic!("boom")
            })
            .await;
        assert!(matches!(r, Err(StoreError::Join(_))));
        store.set_state("other", "1".into()).await.expect("write");
        assert_eq!(store.get_state("k").await.expect("read"), None);
        assert_eq!(
            store.get_state("other").await.expect("read").as_deref(),
            Some("1")
        );
    }
}
