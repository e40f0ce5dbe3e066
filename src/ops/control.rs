//! The local control socket (`DATA_DIR/control.sock`): what
//! `hermes-tenantd drain` talks to. Local-only by construction — a Unix
//! socket in the daemon's private data directory (0700), the socket itself
//! 0600, and every peer checked with `SO_PEERCRED` (root or the daemon's
//! own uid) — so it needs no credential on a command line.
//!
//! Protocol: one JSON request line
//! (`{"op":"drain","deadline_s":600,"wait":true}`, `{"op":"cancel"}`,
//! `{"op":"status"}`), answered by JSON lines (`Reply`); the last one has
//! `"final": true`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::drain::{Drain, DrainView, Phase};

/// The socket's name in the data directory.
pub const SOCKET: &str = "control.sock";
/// Longest request line.
const MAX_REQUEST: usize = 4096;
/// A client must send its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (more wait in the kernel's backlog).
const MAX_CONNECTIONS: usize = 4;
/// A waiting `drain --wait` hears how it goes this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Drain {
        deadline_s: u64,
        #[serde(default)]
        wait: bool,
    },
    Cancel,
    Status,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub drain: Option<DrainView>,
    #[serde(rename = "final")]
    pub last: bool,
}

/// Bind the socket (replacing a stale one a previous daemon left) and
/// serve it until `cancel`.
pub async fn spawn(
    data_dir: &Path,
    drain: Drain,
    cancel: CancellationToken,
) -> io::Result<JoinHandle<()>> {
    let path = data_dir.join(SOCKET);
    let p = path.clone();
    tokio::task::spawn_blocking(move || remove_stale(&p))
        .await
        .map_err(io::Error::other)??;
    let listener = UnixListener::bind(&path)?;
    let p = path.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
    })
    .await
    .map_err(io::Error::other)??;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let drain = drain.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = serve(stream, drain, cancel).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await;
    }))
}

/// Only a socket is ever removed: the data directory is the daemon's own,
/// so nothing else should be there under that name.
fn remove_stale(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the control socket's name is taken by something that is not a socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn peer_allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .map(|c| c.uid() == 0 || c.uid() == me)
        .unwrap_or(false)
}

async fn serve(stream: UnixStream, drain: Drain, cancel: CancellationToken) -> io::Result<()> {
    if !peer_allowed(&stream) {
        tracing::warn!("control socket: refused a peer that is neither root nor the daemon's user");
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let request = match read {
        Ok(Ok(_)) if line.len() <= MAX_REQUEST => serde_json::from_slice::<Request>(&line).map_err(
            |_| "a request is one JSON line: {\"op\":\"drain\"|\"cancel\"|\"status\", ...}",
        ),
        Ok(Ok(_)) => Err("request too long"),
        Ok(Err(e)) => return Err(e),
        Err(_) => Err("no request within 10 s"),
    };
    let request = match request {
        Ok(r) => r,
        Err(msg) => {
            return send(
                &mut write,
                &Reply {
                    ok: false,
                    error: Some(msg.into()),
                    drain: None,
                    last: true,
                },
            )
            .await;
        }
    };
    match request {
        Request::Status => reply(&mut write, &drain, true).await,
        Request::Cancel => {
            drain.cancel();
            reply(&mut write, &drain, true).await
        }
        Request::Drain { deadline_s, wait } => {
            if deadline_s == 0 || deadline_s > super::drain::MAX_DEADLINE.as_secs() {
                return send(
                    &mut write,
                    &Reply {
                        ok: false,
                        error: Some("deadline_s must be 1 to 86400".into()),
                        drain: None,
                        last: true,
                    },
                )
                .await;
            }
            drain.begin(Duration::from_secs(deadline_s));
            if !wait {
                return reply(&mut write, &drain, true).await;
            }
            reply(&mut write, &drain, false).await?;
            let settled = drain.settled();
            tokio::pin!(settled);
            loop {
                tokio::select! {
                    _ = &mut settled => break,
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(PROGRESS_EVERY) => reply(&mut write, &drain, false).await?,
                }
            }
            reply(&mut write, &drain, true).await
        }
    }
}

async fn reply(w: &mut (impl AsyncWriteExt + Unpin), drain: &Drain, last: bool) -> io::Result<()> {
    send(
        w,
        &Reply {
            ok: true,
            error: None,
            drain: Some(drain.view()),
            last,
        },
    )
    .await
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), r: &Reply) -> io::Result<()> {
    let mut text = serde_json::to_vec(r).map_err(io::Error::other)?;
    text.push(b'\n');
    w.write_all(&text).await?;
    w.flush().await
}

/// How the command line's `drain` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request was done (and, with `--wait`, the drain is drained).
    Done,
    /// `--wait` saw the deadline pass with runs still in flight.
    DeadlinePassed,
    /// No daemon answers on the socket.
    NotRunning,
}

/// The command line's side: send `request`, print each reply with
/// `print`, return how it ended. Blocking (the CLI has no runtime).
pub fn client(
    data_dir: &Path,
    request: &Request,
    mut print: impl FnMut(&Reply),
) -> Result<Outcome, String> {
    use std::io::{BufRead, Read, Write};
    let path: PathBuf = data_dir.join(SOCKET);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Outcome::NotRunning);
        }
        Err(e) => return Err(format!("cannot reach the daemon's control socket: {e}")),
    };
    let mut text = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    text.push(b'\n');
    stream
        .write_all(&text)
        .map_err(|e| format!("cannot send the request: {e}"))?;
    // A reply line is small; cap it so a wrong peer cannot fill memory.
    let mut reader = io::BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the reply: {e}"))?;
        if n == 0 {
            return Err("the daemon closed the connection without a final reply".into());
        }
        let r: Reply =
            serde_json::from_slice(&line).map_err(|e| format!("unreadable reply: {e}"))?;
        print(&r);
        if !r.ok {
            return Err(r.error.unwrap_or_else(|| "refused".into()));
        }
        if r.last {
            if !matches!(request, Request::Drain { wait: true, .. }) {
                return Ok(Outcome::Done);
            }
            return match r.drain.map(|d| d.state) {
                Some(Phase::Drained) => Ok(Outcome::Done),
                Some(Phase::Off) => Err("the drain was cancelled while waiting".into()),
                _ => Ok(Outcome::DeadlinePassed),
            };
        }
    }
}
