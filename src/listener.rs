//! Connection hygiene for the API listeners (plain and TLS): a cap on open
//! connections that leaves file descriptors for the store and the gateway,
//! a TLS handshake timeout, a deadline for a request head, an idle timeout,
//! and HTTP/2 stream limits. axum::serve and axum-server set no timer on
//! hyper, so a client sending a byte a second kept a connection forever;
//! this accept loop drives hyper-util's connection builder directly.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::LimitsConfig;

/// File descriptors kept back from the connection cap: the store (writer,
/// readers, WAL, shm), the gateway's pipes and log files, the skills
/// watcher, the hub client, the listeners themselves.
const RESERVED_FDS: u64 = 128;
/// The smallest cap, whatever the descriptor limit says.
const MIN_CONNECTIONS: usize = 8;
/// Largest request head (HTTP/1 buffer, HTTP/2 header list).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A connection told to close (idle, or shutdown) that has no request in
/// flight gets this long before it is dropped outright.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What every connection of every listener shares.
#[derive(Clone)]
pub struct Hygiene {
    slots: Arc<Semaphore>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    tls_handshake_timeout: Duration,
}

impl Hygiene {
    /// One connection budget for all listeners: `limits.max_connections`,
    /// clamped to what `RLIMIT_NOFILE` leaves after [`RESERVED_FDS`].
    pub fn new(limits: &LimitsConfig) -> Hygiene {
        let max = connection_cap(limits.max_connections, nofile_soft_limit());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Starts when hyper waits for a request head, so it also bounds
            // an idle HTTP/1 keep-alive connection.
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES.max(8192))
            .max_headers(100);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_streams)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(64)
            .keep_alive_interval(None);
        Hygiene {
            slots: Arc::new(Semaphore::new(max)),
            builder: Arc::new(builder),
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            tls_handshake_timeout: limits.tls_handshake_timeout,
        }
    }

    /// The connection cap in force.
    pub fn max_connections(&self) -> usize {
        self.slots.available_permits()
    }
}

fn nofile_soft_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// The configured cap, lowered so that connections can never take the
/// descriptors the store and the gateway need.
pub fn connection_cap(configured: usize, nofile: Option<u64>) -> usize {
    let by_fds = nofile
        .map(|n| usize::try_from(n.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX);
    configured.min(by_fds).max(MIN_CONNECTIONS)
}

/// Serve `app` on `listener` until `cancel`, then let open connections
/// finish their requests (the caller bounds how long it waits).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    hygiene: Hygiene,
    cancel: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let mut last_shed_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE/ENFILE and friends: the connection stays in the
                // backlog; pausing keeps this loop from spinning on it.
                tracing::warn!(error = %e, "accept failed; pausing the listener briefly");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(slot) = hygiene.slots.clone().try_acquire_owned() else {
            // Closed at once: a slot is freed at the latest after
            // `limits.header_read_timeout` (no request) or `idle_timeout`.
            if last_shed_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!("connection cap reached; closing new connections");
                last_shed_log = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, hygiene, tls, cancel) =
            (app.clone(), hygiene.clone(), tls.clone(), cancel.clone());
        tasks.spawn(async move {
            match tls {
                None => connection(stream, app, &hygiene, slot, cancel).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        hygiene.tls_handshake_timeout,
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(s)) => connection(s, app, &hygiene, slot, cancel).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Requests in flight on one connection (until their body is sent) and
/// when the last one ended.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    requests: AtomicUsize,
    last_end: Mutex<Option<Instant>>,
}

/// Held by a request until its response body is done (or dropped).
struct InFlight(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_end.lock() {
            *t = Some(Instant::now());
        }
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Drive one connection: close it when no request head arrived within
/// the header timeout, when it has been idle for the idle timeout, or
/// (gracefully) at shutdown.
async fn connection<I>(
    io: I,
    app: axum::Router,
    hygiene: &Hygiene,
    _slot: OwnedSemaphorePermit,
    cancel: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let in_flight = activity.begin();
            let app = app.clone();
            async move {
                let resp = match app.oneshot(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|inner| {
                    Body::new(TrackedBody {
                        inner,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let conn = hygiene.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let opened = Instant::now();
    let mut closing: Option<Instant> = None;
    loop {
        let wake = next_check(&activity, opened, closing, hygiene);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = cancel.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                let busy = activity.in_flight.load(Ordering::Acquire) > 0;
                if busy {
                    continue;
                }
                if let Some(since) = closing {
                    if now >= since + CLOSE_GRACE {
                        return;
                    }
                    continue;
                }
                if activity.requests.load(Ordering::Acquire) == 0 {
                    if now >= opened + hygiene.header_read_timeout {
                        // Never sent a request head in time (slow or
                        // silent client, stuck protocol detection).
                        return;
                    }
                } else if idle_since(&activity).is_some_and(|t| now >= t + hygiene.idle_timeout) {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(now);
                }
            }
        }
    }
}

fn idle_since(activity: &Activity) -> Option<Instant> {
    activity.last_end.lock().ok().and_then(|t| *t)
}

/// When the connection's state next needs a look.
fn next_check(
    activity: &Activity,
    opened: Instant,
    closing: Option<Instant>,
    hygiene: &Hygiene,
) -> Instant {
    let now = Instant::now();
    if let Some(since) = closing {
        return (since + CLOSE_GRACE).max(now + Duration::from_millis(100));
    }
    if activity.requests.load(Ordering::Acquire) == 0 {
        return opened + hygiene.header_read_timeout;
    }
    match idle_since(activity) {
        Some(t) if activity.in_flight.load(Ordering::Acquire) == 0 => {
            (t + hygiene.idle_timeout).max(now + Duration::from_millis(100))
        }
        // Busy: look again later; a request ending moves the deadline.
        _ => now + hygiene.idle_timeout,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cap_leaves_descriptors_for_the_store_and_the_gateway() {
        assert_eq!(super::connection_cap(1024, Some(1024)), 896);
        assert_eq!(super::connection_cap(100, Some(1024)), 100);
        assert_eq!(super::connection_cap(1024, None), 1024);
        assert_eq!(
            super::connection_cap(1024, Some(64)),
            super::MIN_CONNECTIONS
        );
    }
}
