//! One subscriber of a run's events: replay from SQLite after the client's
//! last id, then the live tail; a subscriber that lags is caught up from
//! SQLite again, so it costs the relay nothing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, watch};

use super::{EventBatch, RunError, Runs, is_terminal_event};
use crate::store::runs as run_store;

/// Events for one client in batches (seq order, no gap, no repeat), ending
/// after the terminal event.
pub type EventStream = mpsc::Receiver<EventBatch>;

/// Events per SQLite read while catching up (one batch).
const PAGE: u32 = 500;
/// Batches buffered per client before the feeding task waits. A live
/// batch is shared with the relay and every other subscriber; a page from
/// the log is this client's own.
const CLIENT_BUFFER: usize = 4;

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
    tx: &mpsc::Sender<EventBatch>,
) -> Result<bool, ()> {
    loop {
        let (rid, after) = (id.to_owned(), *last);
        let mut page = runs
            .store
            .read(move |c| run_store::events_after(c, &rid, after, PAGE))
            .await
            .map_err(|_| ())?;
        let n = page.len();
        // Nothing after the terminal event is sent.
        let terminal = page.iter().position(|e| is_terminal_event(&e.name));
        if let Some(t) = terminal {
            page.truncate(t + 1);
        }
        if let Some(e) = page.last() {
            *last = e.seq;
            tx.send(EventBatch::from(page)).await.map_err(|_| ())?;
        }
        if terminal.is_some() {
            return Ok(true);
        }
        if n < PAGE as usize {
            return Ok(false);
        }
    }
}

/// The part of a live batch after `last`, up to and including a terminal
/// event; `None` when nothing in it is new. Whether it ends the stream.
fn unsent(batch: EventBatch, last: i64) -> Option<(EventBatch, bool)> {
    let first = batch.first()?.seq;
    // Seqs in a batch are consecutive.
    let skip = usize::try_from(last + 1 - first).unwrap_or(0);
    if skip >= batch.len() {
        return None;
    }
    let terminal = batch[skip..]
        .iter()
        .position(|e| is_terminal_event(&e.name))
        .map(|t| skip + t);
    let end = terminal.map_or(batch.len(), |t| t + 1);
    let part = if skip == 0 && end == batch.len() {
        batch
    } else {
        batch[skip..end].iter().cloned().collect()
    };
    Some((part, terminal.is_some()))
}

/// Longest an ended stream waits for its run's record (a store that cannot
/// write must not hold the client forever).
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

type Live = (
    broadcast::Receiver<EventBatch>,
    watch::Receiver<i64>,
    watch::Receiver<bool>,
);

async fn feed(
    runs: Arc<Runs>,
    id: String,
    last: i64,
    live: Option<Live>,
    tx: mpsc::Sender<EventBatch>,
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
    tx: &mpsc::Sender<EventBatch>,
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
            Ok(batch) => {
                let Some(first) = batch.first().map(|e| e.seq) else {
                    continue;
                };
                if first > last + 1 {
                    // A gap: those events are in the log once committed.
                    let need = first - 1;
                    if committed.wait_for(|c| *c >= need).await.is_err() {
                        return;
                    }
                    match from_log(&runs, &id, &mut last, tx).await {
                        Ok(true) | Err(()) => return,
                        Ok(false) => {}
                    }
                }
                let Some((part, terminal)) = unsent(batch, last) else {
                    continue;
                };
                last = part.last().map_or(last, |e| e.seq);
                if terminal {
                    // `run.completed` means the run reads as completed.
                    let _ = tokio::time::timeout(RECORD_WAIT, finished.wait_for(|d| *d)).await;
                }
                if tx.send(part).await.is_err() || terminal {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::LiveEvent;

    fn batch(from: i64, to: i64, terminal_at: Option<i64>) -> EventBatch {
        (from..=to)
            .map(|seq| LiveEvent {
                seq,
                name: if Some(seq) == terminal_at {
                    "run.completed".into()
                } else {
                    "message.delta".into()
                },
                data: Arc::from("{}"),
            })
            .collect()
    }

    fn seqs(b: &EventBatch) -> Vec<i64> {
        b.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_resume_point_inside_a_batch_sends_only_what_follows_it() {
        let (part, end) = unsent(batch(5, 9, None), 6).expect("new events");
        assert_eq!((seqs(&part), end), (vec![7, 8, 9], false));
        let (part, _) = unsent(batch(5, 9, None), 4).expect("new events");
        assert_eq!(seqs(&part), [5, 6, 7, 8, 9], "the whole batch");
        assert!(unsent(batch(5, 9, None), 9).is_none(), "all sent already");
        assert!(unsent(batch(5, 9, None), 12).is_none());
        assert!(unsent(EventBatch::from(Vec::new()), 0).is_none());
    }

    #[test]
    fn nothing_after_a_terminal_event_is_sent() {
        let (part, end) = unsent(batch(1, 6, Some(4)), 2).expect("new events");
        assert_eq!((seqs(&part), end), (vec![3, 4], true));
    }
}
