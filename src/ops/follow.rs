//! `GET /logs?follow=true`: the log lines after a cursor, then every new
//! one as it is written, as server-sent events (`id:` the line's cursor,
//! so a client resumes with `Last-Event-ID` and gets no line twice). One
//! task per follower (their number is capped by the caller), reading only
//! what was appended since its last look; a bounded channel to the body.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::logs::{Caps, Cursor, Filter, LogFiles, LogLine, Position};

/// How often a follower looks for new lines.
const POLL: Duration = Duration::from_millis(500);
/// A comment this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Chunks buffered per follower.
const BUFFER: usize = 16;
/// Lines per look (the rest on the next one).
const PER_LOOK: Caps = Caps {
    lines: 500,
    bytes: 256 * 1024,
};

/// Start following; the stream ends when the client goes, or at `stop`.
pub fn start(
    files: Arc<LogFiles>,
    filter: Filter,
    after: Option<Cursor>,
    backlog: usize,
    permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let _permit = permit;
        let mut last = after;
        let mut pos: Option<Position> = None;
        let mut first = true;
        let mut idle = tokio::time::Instant::now();
        loop {
            let (f, flt, p) = (files.clone(), filter.clone(), pos.clone());
            let from = last;
            let tail = first && from.is_none();
            let read = tokio::task::spawn_blocking(move || {
                if tail {
                    let (page, at) = f.tail_at(
                        &flt,
                        Caps {
                            lines: backlog,
                            bytes: PER_LOOK.bytes,
                        },
                    );
                    // New lines are read from where the tail's read ended.
                    return (page.items, at);
                }
                if let Some(p) = p {
                    if let Some((lines, next)) = f.appended(&p, PER_LOOK) {
                        let lines = lines.into_iter().filter(|l| flt.keeps(l)).collect();
                        return (lines, Some(next));
                    }
                }
                let (page, next) = f.after(from, &flt, PER_LOOK);
                (page.items, next)
            })
            .await;
            first = false;
            let Ok((lines, next)) = read else { return };
            pos = next;
            for l in lines {
                // The cursor never goes back: a line seen is never sent again.
                if last.is_some_and(|c| l.key() <= c) {
                    continue;
                }
                last = Some(l.key());
                if tx.send(frame(&l)).await.is_err() {
                    return;
                }
                idle = tokio::time::Instant::now();
            }
            if idle.elapsed() >= KEEPALIVE {
                if tx
                    .send(Bytes::from_static(b": keep-alive\n\n"))
                    .await
                    .is_err()
                {
                    return;
                }
                idle = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    rx
}

fn frame(l: &LogLine) -> Bytes {
    let data = serde_json::to_string(l).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("id: {}\nevent: log\ndata: {data}\n\n", l.cursor))
}
