//! The gateway's event stream of one run, chunk by chunk: frames are
//! named, their run ids rewritten, what they say about the run noted in
//! its [`Outcome`] and row, and the whole chunk's events numbered into one
//! batch.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::{FutureExt, Stream, StreamExt};
use serde_json::{Value, json};

use super::event_ids::RunIds;
use super::gateway::{LineTooLong, SseFrame, SseParser};
use super::record::{MAX_OUTPUT_BYTES, Outcome, now_secs};
use super::sequencer::Sequencer;
use super::{ActiveRun, is_terminal_event};
use crate::store::Store;
use crate::store::runs::{self as run_store, RunUpdate, push_capped};

/// The two fields the relay reads from every gateway frame.
#[derive(Default, serde::Deserialize)]
struct FrameHead<'a> {
    #[serde(borrow, default)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<std::borrow::Cow<'a, str>>,
}

/// Most chunks already read that join one batch ([`FrameRelay::burst`]).
const COALESCE_CHUNKS: usize = 64;

/// What [`FrameRelay::burst`] took.
pub(super) struct Burst {
    /// `Ok(true)` once the terminal event was taken.
    pub(super) taken: Result<bool, LineTooLong>,
    /// The stream ended (or failed) after the chunks taken.
    pub(super) ended: bool,
}

/// The reading side of one run's stream at the gateway.
pub(super) struct FrameRelay<'a> {
    store: &'a Store,
    run_id: &'a str,
    gateway_run_id: &'a str,
    active: &'a ActiveRun,
    ids: RunIds,
    parser: SseParser,
    frames: Vec<SseFrame>,
    /// The translated text of one frame; its capacity is kept.
    text: String,
}

impl<'a> FrameRelay<'a> {
    pub(super) fn new(
        store: &'a Store,
        run_id: &'a str,
        gateway_run_id: &'a str,
        active: &'a ActiveRun,
    ) -> FrameRelay<'a> {
        FrameRelay {
            store,
            run_id,
            gateway_run_id,
            active,
            ids: RunIds::new(run_id, gateway_run_id),
            parser: SseParser::default(),
            frames: Vec::new(),
            text: String::new(),
        }
    }

    /// `first` and the chunks of `stream` that are already read (at most
    /// [`COALESCE_CHUNKS`] more), as one batch, then sent. The gateway
    /// writes a chunk per event or few: a burst then goes out as one batch,
    /// so one broadcast, one log write and one chunk per subscriber, while
    /// a lone event is still sent at once. Bounded, so a gateway that never
    /// pauses cannot keep the relay from yielding.
    pub(super) async fn burst<S, B, E>(
        &mut self,
        first: &[u8],
        stream: &mut S,
        seq: &mut Sequencer,
        outcome: &mut Outcome,
    ) -> Burst
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
    {
        let mut taken = self.take(first, seq, outcome).await;
        let mut ended = false;
        for _ in 0..COALESCE_CHUNKS {
            if !matches!(taken, Ok(false)) {
                break;
            }
            let mut ready = stream.next().now_or_never();
            if ready.is_none() {
                // The HTTP connection's task decodes the next chunk only
                // when asked: let it run once.
                tokio::task::yield_now().await;
                ready = stream.next().now_or_never();
            }
            match ready {
                Some(Some(Ok(more))) => taken = self.take(more.as_ref(), seq, outcome).await,
                Some(_) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        seq.flush().await;
        Burst { taken, ended }
    }

    /// One body chunk: every frame it completes is numbered into the
    /// sequencer's batch (a full batch is sent on the way); the caller adds
    /// the chunks that are already read, then flushes. `Ok(true)` once the
    /// terminal event is taken: frames after it are not relayed.
    pub(super) async fn take(
        &mut self,
        chunk: &[u8],
        seq: &mut Sequencer,
        outcome: &mut Outcome,
    ) -> Result<bool, LineTooLong> {
        self.parser.feed(chunk, &mut self.frames)?;
        let mut frames = std::mem::take(&mut self.frames);
        let mut terminal = false;
        for frame in frames.drain(..) {
            if self.frame(&frame, seq, outcome).await {
                terminal = true;
                break;
            }
        }
        // The vector's capacity is kept for the next chunk.
        frames.clear();
        self.frames = frames;
        Ok(terminal)
    }

    /// One frame into the batch; whether it was the terminal event.
    async fn frame(
        &mut self,
        frame: &SseFrame,
        seq: &mut Sequencer,
        outcome: &mut Outcome,
    ) -> bool {
        // Most frames are `message.delta`: read only the name and the
        // delta (borrowed, no tree); build a full value for the rest.
        let head: FrameHead<'_> = serde_json::from_str(&frame.data).unwrap_or_default();
        let name = match (head.event.as_deref(), frame.event.as_deref()) {
            (Some(n), _) | (None, Some(n)) => run_store::event_name(n),
            (None, None) => Cow::Borrowed("message"),
        };
        let is_delta = name == "message.delta";
        if is_delta {
            if let Some(d) = head.delta.as_deref() {
                push_capped(&mut outcome.output, d, MAX_OUTPUT_BYTES);
            }
        }
        if outcome.pending_approval.is_some() && ends_the_wait(&name) {
            if self.active.stop_requested.load(Ordering::Relaxed) {
                // Denied because the run is being stopped.
                outcome.pending_approval = None;
            } else {
                // The gateway went on without an answer: it denied the
                // action itself when its approval timeout passed.
                expire_approval(self.store, self.run_id, self.gateway_run_id, seq, outcome).await;
            }
        }
        self.ids.translate(&frame.data, &mut self.text);
        if !is_delta {
            let v: Value = serde_json::from_str(&self.text).unwrap_or(Value::Null);
            observe(self.store, self.run_id, &name, &v, outcome).await;
        }
        let terminal = is_terminal_event(&name);
        seq.push(name, Arc::from(self.text.as_str())).await;
        terminal
    }
}

/// Whether an event while an approval is pending means the gateway stopped
/// waiting for the answer (not an answer, not the run's end by stop or
/// failure).
fn ends_the_wait(name: &str) -> bool {
    !matches!(name, "approval.responded" | "run.cancelled" | "run.failed")
}

/// Record that the pending approval expired and tell subscribers.
async fn expire_approval(
    store: &Store,
    run_id: &str,
    gateway_run_id: &str,
    seq: &mut Sequencer,
    o: &mut Outcome,
) {
    let Some(entry) = o.refuse_pending("expired") else {
        return;
    };
    let data = json!({
        "event": "approval.expired",
        "run_id": run_id,
        "gateway_run_id": gateway_run_id,
        "command": entry["command"],
        "description": entry["description"],
        "pattern_key": entry["pattern_key"],
        "timestamp": now_secs(),
    });
    seq.emit("approval.expired", data.to_string()).await;
    approval_settled(store, run_id, o).await;
}

/// The pending approval was answered or expired: the run goes on.
async fn approval_settled(store: &Store, run_id: &str, o: &Outcome) {
    update(
        store,
        run_id,
        RunUpdate {
            status: Some("running"),
            pending_approval: Some(None),
            refused_approvals: o.refused_value(),
            ..Default::default()
        },
    )
    .await;
}

/// Update the run row from what an event says.
pub(super) async fn observe(store: &Store, run_id: &str, name: &str, v: &Value, o: &mut Outcome) {
    match name {
        "tool.started" => {
            o.tools
                .push(json!({"tool": v["tool"], "preview": v["preview"]}));
            update(
                store,
                run_id,
                RunUpdate {
                    tool_calls: Some(o.tools.len() as i64),
                    ..Default::default()
                },
            )
            .await;
        }
        "tool.completed" => {
            if let Some(t) = o
                .tools
                .iter_mut()
                .rev()
                .find(|t| t["tool"] == v["tool"] && t.get("duration").is_none())
            {
                t["duration"] = v["duration"].clone();
                t["error"] = v["error"].clone();
            }
        }
        "approval.request" => {
            o.pending_approval = Some(v.clone());
            update(
                store,
                run_id,
                RunUpdate {
                    status: Some("waiting_for_approval"),
                    pending_approval: Some(Some(v.clone())),
                    ..Default::default()
                },
            )
            .await;
        }
        "approval.responded" => {
            if v["choice"] == "deny" {
                o.refuse_pending("denied");
            } else {
                o.pending_approval = None;
            }
            approval_settled(store, run_id, o).await;
        }
        "run.completed" => {
            o.status = Some("completed");
            o.final_output = v["output"].as_str().map(str::to_owned);
            o.usage = v.get("usage").filter(|u| u.is_object()).cloned();
        }
        "run.failed" => {
            o.status = Some("failed");
            let message = match &v["error"] {
                Value::String(s) => s.clone(),
                Value::Null => "the agent reported a failure".into(),
                other => other["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| other.to_string()),
            };
            o.error = Some(("agent_error".into(), message));
        }
        "run.cancelled" => o.status = Some("cancelled"),
        _ => {}
    }
}

pub(super) async fn update(store: &Store, run_id: &str, u: RunUpdate) {
    let id = run_id.to_owned();
    if let Err(e) = store.write(move |c| run_store::update(c, &id, &u)).await {
        tracing::error!(run_id, error = %e, "cannot update run");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::EventBatch;
    use crate::runs::sequencer::spawn_writer;
    use crate::store::StoreOptions;
    use tokio::sync::{Semaphore, broadcast, watch};

    const RUN: &str = "run_fedcba9876543210fedcba9876543210";
    const GW: &str = "run_0123456789abcdef0123456789abcdef";

    /// A store with the run's row, and the run as the relay holds it.
    async fn world() -> (tempfile::TempDir, Store, Arc<ActiveRun>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open_blocking(&dir.path().join("t.db"), &StoreOptions::default()).expect("open");
        store
            .write(|c| run_store::tests::session_and_run(c, RUN))
            .await
            .expect("run row");
        let active = Arc::new(ActiveRun {
            events: broadcast::channel(super::super::LIVE_BATCHES).0,
            committed: watch::channel(0).0,
            finished: watch::channel(false).0,
            at_gateway: false.into(),
            subscribers: Arc::new(Semaphore::new(4)),
            cancel_queued: tokio_util::sync::CancellationToken::new(),
            gateway_run_id: watch::channel(None).0,
            chat_fallback: false.into(),
            stop_requested: false.into(),
        });
        (dir, store, active)
    }

    /// A run being relayed: its live tail, its sequencer and log writer.
    struct Rig {
        _dir: tempfile::TempDir,
        store: Store,
        active: Arc<ActiveRun>,
        live: broadcast::Receiver<EventBatch>,
        seq: Sequencer,
        writer_task: tokio::task::JoinHandle<()>,
        outcome: Outcome,
    }

    async fn rig() -> Rig {
        let (_dir, store, active) = world().await;
        let live = active.events.subscribe();
        let (writer, writer_task) = spawn_writer(store.clone(), RUN.into(), active.clone());
        Rig {
            _dir,
            seq: Sequencer::new(active.clone(), writer),
            store,
            active,
            live,
            writer_task,
            outcome: Outcome::default(),
        }
    }

    fn delta(i: usize) -> String {
        format!(
            "data: {{\"event\": \"message.delta\", \"run_id\": \"{GW}\", \"delta\": \"d{i} \"}}\n\n"
        )
    }

    fn seqs(b: &EventBatch) -> Vec<i64> {
        b.iter().map(|e| e.seq).collect()
    }

    /// Relay `chunks`; the batches broadcast, what each chunk returned, the
    /// log afterwards, the committed watermark and the outcome.
    async fn relay(
        chunks: &[&[u8]],
    ) -> (
        Vec<EventBatch>,
        Vec<bool>,
        Vec<run_store::StoredEvent>,
        i64,
        Outcome,
    ) {
        let mut r = rig().await;
        let mut ended = Vec::new();
        {
            let mut frames = FrameRelay::new(&r.store, RUN, GW, &r.active);
            for c in chunks {
                ended.push(
                    frames
                        .take(c, &mut r.seq, &mut r.outcome)
                        .await
                        .expect("chunk"),
                );
                r.seq.flush().await;
            }
        }
        drop(r.seq);
        r.writer_task.await.expect("writer");
        let mut batches = Vec::new();
        while let Ok(b) = r.live.try_recv() {
            batches.push(b);
        }
        let log = r
            .store
            .read(|c| run_store::events_after(c, RUN, 0, 10_000))
            .await
            .expect("log");
        let committed = *r.active.committed.borrow();
        (batches, ended, log, committed, r.outcome)
    }

    /// A burst of chunks that are all already read is one batch; the
    /// bound holds, and the end of the stream is seen.
    #[tokio::test]
    async fn chunks_already_read_join_one_batch_up_to_the_bound() {
        let mut r = rig().await;
        let n = COALESCE_CHUNKS + 5;
        let chunks: Vec<Result<Vec<u8>, std::convert::Infallible>> =
            (1..n).map(|i| Ok(delta(i).into_bytes())).collect();
        let mut stream = futures_util::stream::iter(chunks);
        let mut frames = FrameRelay::new(&r.store, RUN, GW, &r.active);
        let first = delta(0);
        let b = frames
            .burst(first.as_bytes(), &mut stream, &mut r.seq, &mut r.outcome)
            .await;
        assert!(matches!(b.taken, Ok(false)) && !b.ended);
        let batch = r.live.try_recv().expect("one batch");
        assert_eq!(
            seqs(&batch),
            (1..=COALESCE_CHUNKS as i64 + 1).collect::<Vec<_>>(),
            "the first chunk and {COALESCE_CHUNKS} ready ones, in order"
        );
        assert!(r.live.try_recv().is_err(), "nothing else sent yet");
        // The rest, then the end of the stream.
        let next = delta(COALESCE_CHUNKS + 1);
        let b = frames
            .burst(next.as_bytes(), &mut stream, &mut r.seq, &mut r.outcome)
            .await;
        assert!(matches!(b.taken, Ok(false)) && b.ended, "the end is seen");
        let batch = r.live.try_recv().expect("second batch");
        assert_eq!(
            batch.first().map(|e| e.seq),
            Some(COALESCE_CHUNKS as i64 + 2)
        );
        assert_eq!(batch.last().map(|e| e.seq), Some(n as i64 + 1));
        drop(frames);
        drop(r.seq);
        r.writer_task.await.expect("writer");
        assert_eq!(*r.active.committed.borrow(), n as i64 + 1);
    }

    /// A chunk that is not read yet is not waited for: the batch goes.
    #[tokio::test]
    async fn a_lone_chunk_is_sent_without_waiting_for_more() {
        let mut r = rig().await;
        let mut stream =
            futures_util::stream::pending::<Result<Vec<u8>, std::convert::Infallible>>();
        let mut frames = FrameRelay::new(&r.store, RUN, GW, &r.active);
        let first = delta(0);
        let b = frames
            .burst(first.as_bytes(), &mut stream, &mut r.seq, &mut r.outcome)
            .await;
        assert!(matches!(b.taken, Ok(false)) && !b.ended);
        assert_eq!(seqs(&r.live.try_recv().expect("sent at once")), [1]);
    }

    #[tokio::test]
    async fn a_chunk_is_one_batch_and_seqs_run_on_across_chunks_and_split_frames() {
        let mut first: String = (0..3).map(delta).collect();
        let split = delta(3);
        let (head, tail) = split.split_at(25);
        first.push_str(head);
        let second = format!("{tail}{}", delta(4));
        let (batches, ended, log, committed, outcome) =
            relay(&[first.as_bytes(), second.as_bytes()]).await;
        assert_eq!(ended, [false, false]);
        assert_eq!(batches.len(), 2, "one batch per chunk");
        assert_eq!(seqs(&batches[0]), [1, 2, 3]);
        assert_eq!(
            seqs(&batches[1]),
            [4, 5],
            "the split frame is whole, next seq"
        );
        let v: Value = serde_json::from_str(&batches[1][0].data).expect("json");
        assert_eq!(v["delta"], "d3 ");
        assert_eq!(v["run_id"], RUN);
        assert_eq!(v["gateway_run_id"], GW);
        // The log holds the very events subscribers got.
        let live: Vec<_> = batches.iter().flat_map(|b| b.iter()).collect();
        assert_eq!(log.len(), 5);
        for (l, e) in log.iter().zip(live) {
            assert_eq!((l.seq, &l.name, &l.data), (e.seq, &e.name, &e.data));
        }
        assert_eq!(committed, 5);
        assert_eq!(outcome.output, "d0 d1 d2 d3 d4 ");
    }

    #[tokio::test]
    async fn a_terminal_event_mid_chunk_ends_the_batch_and_the_run() {
        let chunk = format!(
            "{}{}data: {{\"event\": \"run.completed\", \"run_id\": \"{GW}\", \"output\": \"done\"}}\n\n{}",
            delta(0),
            delta(1),
            delta(2)
        );
        let (batches, ended, log, committed, outcome) = relay(&[chunk.as_bytes()]).await;
        assert_eq!(ended, [true]);
        assert_eq!(batches.len(), 1);
        assert_eq!(seqs(&batches[0]), [1, 2, 3], "nothing after the end");
        assert_eq!(batches[0][2].name, "run.completed");
        assert_eq!(log.len(), 3);
        assert_eq!(committed, 3);
        assert_eq!(outcome.status, Some("completed"));
        assert_eq!(outcome.output, "d0 d1 ");
        assert_eq!(outcome.final_output.as_deref(), Some("done"));
    }

    #[tokio::test]
    async fn a_chunk_larger_than_a_batch_goes_out_in_order_in_several() {
        let n = 2 * crate::runs::sequencer::BATCH_EVENTS + 10;
        let chunk: String = (0..n).map(delta).collect();
        let (batches, _, log, committed, _) = relay(&[chunk.as_bytes()]).await;
        assert!(batches.len() >= 3, "{} batches", batches.len());
        assert!(
            batches
                .iter()
                .all(|b| b.len() <= crate::runs::sequencer::BATCH_EVENTS)
        );
        let all: Vec<i64> = batches.iter().flat_map(seqs).collect();
        assert_eq!(all, (1..=n as i64).collect::<Vec<_>>());
        assert_eq!(log.len(), n);
        assert_eq!(committed, n as i64);
    }
}
