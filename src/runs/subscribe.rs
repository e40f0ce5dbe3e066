//! One subscriber of a run's events: replay from SQLite after the client's
//! last id, then the live tail; a subscriber that lags is caught up from
//! SQLite again, so it costs the relay nothing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, watch};

use super::{LiveEvent, RunError, Runs, is_terminal_event};
use crate::store::runs as run_store;

/// Events for one client, ending after the terminal event.
pub type EventStream = mpsc::Receiver<LiveEvent>;

/// Events per SQLite read while catching up.
const PAGE: u32 = 500;
/// Events buffered per client before the feeding task waits.
const CLIENT_BUFFER: usize = 64;

pub(super) async fn open(runs: Arc<Runs>, id: &str, after: i64) -> Result<EventStream, RunError> {
    // Existence first (404 for an unknown run).
    runs.get(id).await?;
    let total = runs
        .subscribers_total
        .clone()
        .try_acquire_owned()
        .map_err(|_| RunError::Busy {
            message: "too many event streams are open on this host".into(),
            retry_after_s: 5,
        })?;
    let active = runs.active(id);
    let per_run = match &active {
        Some(a) => Some(
            a.subscribers
                .clone()
                .try_acquire_owned()
                .map_err(|_| RunError::Busy {
                    message: "too many event streams are open on this run".into(),
                    retry_after_s: 5,
                })?,
        ),
        None => None,
    };
    // Subscribe before reading the log, so nothing falls between the two.
    // Only receivers are kept: when the relay ends, its senders drop and
    // this subscriber sees the end.
    let live = active.as_ref().map(|a| {
        (
            a.events.subscribe(),
            a.committed.subscribe(),
            a.finished.subscribe(),
        )
    });
    drop(active);
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    let id = id.to_owned();
    tokio::spawn(async move {
        feed(runs, id, after, live, tx, (total, per_run)).await;
    });
    Ok(rx)
}

/// Send the logged events after `*last`; `Ok(true)` when the terminal one
/// was sent, `Err` when the client is gone.
async fn from_log(
    runs: &Runs,
    id: &str,
    last: &mut i64,
    tx: &mpsc::Sender<LiveEvent>,
) -> Result<bool, ()> {
    loop {
        let (rid, after) = (id.to_owned(), *last);
        let page = runs
            .store
            .read(move |c| run_store::events_after(c, &rid, after, PAGE))
            .await
            .map_err(|_| ())?;
        let n = page.len();
        for e in page {
            *last = e.seq;
            let terminal = is_terminal_event(&e.name);
            tx.send(LiveEvent {
                seq: e.seq,
                name: e.name,
                data: Arc::from(e.data),
            })
            .await
            .map_err(|_| ())?;
            if terminal {
                return Ok(true);
            }
        }
        if n < PAGE as usize {
            return Ok(false);
        }
    }
}

/// Longest an ended stream waits for its run's record (a store that cannot
/// write must not hold the client forever).
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

type Live = (
    broadcast::Receiver<LiveEvent>,
    watch::Receiver<i64>,
    watch::Receiver<bool>,
);

async fn feed(
    runs: Arc<Runs>,
    id: String,
    last: i64,
    live: Option<Live>,
    tx: mpsc::Sender<LiveEvent>,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) {
    let mut finished = live.as_ref().map(|l| l.2.clone());
    send_events(&runs, &id, last, live, &tx).await;
    // The stream ends (tx drops) once the run's end is recorded.
    if let Some(f) = finished.as_mut() {
        let _ = tokio::time::timeout(RECORD_WAIT, f.wait_for(|done| *done)).await;
    }
}

async fn send_events(
    runs: &Arc<Runs>,
    id: &str,
    mut last: i64,
    live: Option<Live>,
    tx: &mpsc::Sender<LiveEvent>,
) {
    let (runs, id) = (runs.clone(), id.to_owned());
    match from_log(&runs, &id, &mut last, tx).await {
        Ok(true) | Err(()) => return,
        Ok(false) => {}
    }
    let Some((mut live, mut committed, mut finished)) = live else {
        return;
    };
    loop {
        match live.recv().await {
            Ok(ev) => {
                if ev.seq <= last {
                    continue;
                }
                if ev.seq > last + 1 {
                    // A gap: those events are in the log once committed.
                    let need = ev.seq - 1;
                    if committed.wait_for(|c| *c >= need).await.is_err() {
                        return;
                    }
                    match from_log(&runs, &id, &mut last, tx).await {
                        Ok(true) | Err(()) => return,
                        Ok(false) => {}
                    }
                    if ev.seq <= last {
                        continue;
                    }
                }
                last = ev.seq;
                let terminal = is_terminal_event(&ev.name);
                if terminal {
                    // `run.completed` means the run reads as completed.
                    let _ = tokio::time::timeout(RECORD_WAIT, finished.wait_for(|d| *d)).await;
                }
                if tx.send(ev).await.is_err() || terminal {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Too slow for the live tail: catch up from the log.
                match from_log(&runs, &id, &mut last, tx).await {
                    Ok(true) | Err(()) => return,
                    Ok(false) => {}
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                // The relay finished and committed everything.
                let _ = from_log(&runs, &id, &mut last, tx).await;
                return;
            }
        }
    }
}
