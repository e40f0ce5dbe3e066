//! Memory goes back to the system after a burst. With glibc's malloc, each
//! thread that allocates may get its own arena (up to 8 per core), and
//! freed memory in an arena stays in the process: after a 2,000-connection
//! overload the daemon kept ~200 MiB it no longer used. Two arenas are
//! plenty for a daemon whose heavy work is SQLite on a few threads, and a
//! periodic `malloc_trim` hands freed pages back. No-ops on other libcs.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often freed memory is handed back.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Arenas glibc may create (its default is 8 × cores).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Cap glibc's malloc arenas. Call as early as possible: threads that
/// already have an arena keep it.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Hand freed heap pages back to the system every few seconds, on the
/// blocking pool (a trim walks every arena). `release` runs first, on the
/// same thread: what idle components free (the store's idle connections)
/// is then handed back in the same trim.
pub fn spawn_trim<F>(release: F, cancel: CancellationToken) -> JoinHandle<()>
where
    F: Fn() + Clone + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let release = release.clone();
            let _ = tokio::task::spawn_blocking(move || {
                release();
                trim();
            })
            .await;
        }
    })
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
