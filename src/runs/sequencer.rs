//! The per-run sequencer and the event log's writer: events are numbered
//! into batches; one batch is one broadcast to live subscribers and one
//! send to the writer, which logs batches in transactions and moves the
//! run's `committed` watermark.

use std::borrow::Cow;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{ActiveRun, EventBatch, LiveEvent};
use crate::store::Store;
use crate::store::runs as run_store;

/// Batches waiting for the writer; the reader waits when it is full. At
/// most 4096 events, as before batches: what a crash can lose unlogged.
const WRITE_QUEUE: usize = 16;
/// Most batches per transaction (each at most [`BATCH_EVENTS`] events).
const WRITE_BATCHES: usize = 8;
/// Most events in one batch: a chunk holding more is sent in several.
pub(super) const BATCH_EVENTS: usize = 256;
/// Most bytes of event text in one batch (a batch is one subscriber
/// chunk, and the broadcast keeps `LIVE_BATCHES` of them).
const BATCH_BYTES: usize = 256 * 1024;

/// The per-run sequencer: numbers events into a batch, then sends the
/// batch to subscribers and the writer at once.
pub(super) struct Sequencer {
    seq: i64,
    active: Arc<ActiveRun>,
    writer: mpsc::Sender<EventBatch>,
    pending: Vec<LiveEvent>,
    pending_bytes: usize,
}

impl Sequencer {
    pub(super) fn new(active: Arc<ActiveRun>, writer: mpsc::Sender<EventBatch>) -> Sequencer {
        Sequencer {
            seq: 0,
            active,
            writer,
            pending: Vec::with_capacity(BATCH_EVENTS),
            pending_bytes: 0,
        }
    }

    /// Number the next event into the batch; a full batch is sent.
    pub(super) async fn push(&mut self, name: Cow<'static, str>, data: Arc<str>) {
        self.seq += 1;
        self.pending_bytes += data.len();
        self.pending.push(LiveEvent {
            seq: self.seq,
            name,
            data,
        });
        if self.pending.len() >= BATCH_EVENTS || self.pending_bytes >= BATCH_BYTES {
            self.flush().await;
        }
    }

    /// Send the batch: live subscribers first (no receivers is fine), then
    /// the log. The writer's queue is bounded: a slow disk slows the reader.
    pub(super) async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch: EventBatch = self.pending.drain(..).collect();
        self.pending_bytes = 0;
        let _ = self.active.events.send(batch.clone());
        if self.writer.send(batch).await.is_err() {
            tracing::error!("run event writer stopped; events are no longer logged");
        }
    }

    /// One event on its own (the daemon's own events: fallback, failure).
    pub(super) async fn emit(&mut self, name: &'static str, data: String) {
        self.push(Cow::Borrowed(name), Arc::from(data)).await;
        self.flush().await;
    }
}

pub(super) fn spawn_writer(
    store: Store,
    run_id: String,
    active: Arc<ActiveRun>,
) -> (mpsc::Sender<EventBatch>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<EventBatch>(WRITE_QUEUE);
    let handle = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(WRITE_BATCHES);
        while rx.recv_many(&mut buf, WRITE_BATCHES).await > 0 {
            let batches = std::mem::take(&mut buf);
            let last = batches
                .last()
                .and_then(|b| b.last())
                .map(|e| e.seq)
                .unwrap_or(0);
            let id = run_id.clone();
            let written = store
                .write(move |c| {
                    run_store::append_events(c, &id, batches.iter().flat_map(|b| b.iter()))
                })
                .await;
            match written {
                Ok(()) => {
                    active.committed.send_replace(last);
                }
                Err(e) => tracing::error!(run_id, error = %e, "cannot log run events"),
            }
            buf = Vec::with_capacity(WRITE_BATCHES);
        }
    });
    (tx, handle)
}
