//! The SSE body a subscriber reads: `id:`, `event:` and `data:` lines per
//! event, events that are ready at once written as one chunk (fewer writes
//! and reads on both sides when a run streams fast), and a keep-alive
//! comment when nothing was sent for a while.

use std::fmt::Write;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::mpsc;

use super::{EventBatch, LiveEvent};

/// At most this many bytes of events in one chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// The comment sent when the stream was idle for the keep-alive period.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Append one event in the `text/event-stream` format. A multi-line `data`
/// becomes several `data:` lines; a line break in the name (never sent by
/// the gateway) is replaced so it cannot end the field early.
pub fn render(out: &mut BytesMut, ev: &LiveEvent) {
    out.reserve(ev.data.len() + ev.name.len() + 32);
    // Writing into a BytesMut cannot fail (it grows).
    let _ = write!(out, "id: {}\nevent: ", ev.seq);
    if ev.name.contains(['\n', '\r']) {
        out.put_slice(ev.name.replace(['\n', '\r'], " ").as_bytes());
    } else {
        out.put_slice(ev.name.as_bytes());
    }
    out.put_u8(b'\n');
    for line in ev.data.split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// The body stream: ends when the subscription ends (after the terminal
/// event, or when the run's relay is gone). A batch is one chunk, and
/// batches already waiting join it up to [`CHUNK_BYTES`].
pub fn body(
    rx: mpsc::Receiver<EventBatch>,
    keepalive: Duration,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    futures_util::stream::unfold(rx, move |mut rx| async move {
        let first = match tokio::time::timeout(keepalive, rx.recv()).await {
            Err(_) => return Some((Ok(Bytes::from_static(KEEPALIVE)), rx)),
            Ok(None) => return None,
            Ok(Some(batch)) => batch,
        };
        let mut out = BytesMut::new();
        render_batch(&mut out, &first);
        // Whatever else is already waiting goes in the same chunk.
        while out.len() < CHUNK_BYTES {
            match rx.try_recv() {
                Ok(batch) => render_batch(&mut out, &batch),
                Err(_) => break,
            }
        }
        Some((Ok(out.freeze()), rx))
    })
}

fn render_batch(out: &mut BytesMut, batch: &[LiveEvent]) {
    out.reserve(batch.iter().map(|e| e.data.len() + e.name.len() + 32).sum());
    for ev in batch {
        render(out, ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ev(seq: i64, name: &str, data: &str) -> LiveEvent {
        LiveEvent {
            seq,
            name: name.to_owned().into(),
            data: Arc::from(data),
        }
    }

    #[test]
    fn events_render_as_sse_fields() {
        let mut out = BytesMut::new();
        render(&mut out, &ev(7, "message.delta", r#"{"delta":"hi"}"#));
        render(&mut out, &ev(8, "bad\nname", "line one\r\nline two"));
        assert_eq!(
            &out[..],
            b"id: 7\nevent: message.delta\ndata: {\"delta\":\"hi\"}\n\n\
              id: 8\nevent: bad name\ndata: line one\ndata: line two\n\n"
        );
    }

    #[tokio::test]
    async fn ready_events_share_a_chunk_and_idle_streams_get_a_comment() {
        use futures_util::StreamExt;
        let (tx, rx) = mpsc::channel::<EventBatch>(16);
        let mut body = Box::pin(body(rx, Duration::from_millis(50)));
        let batch = |from: i64, to: i64| -> EventBatch {
            (from..=to).map(|i| ev(i, "message.delta", "{}")).collect()
        };
        tx.send(batch(1, 2)).await.expect("send");
        tx.send(batch(3, 3)).await.expect("send");
        let chunk = body.next().await.expect("chunk").expect("ok");
        let ids: Vec<&[u8]> = chunk
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"id: "))
            .collect();
        assert_eq!(
            ids,
            [&b"id: 1"[..], b"id: 2", b"id: 3"],
            "in order, one chunk"
        );
        // Nothing for longer than the keep-alive period: a comment.
        let chunk = body.next().await.expect("chunk").expect("ok");
        assert_eq!(&chunk[..], KEEPALIVE);
        drop(tx);
        assert!(body.next().await.is_none(), "ends with the subscription");
    }
}
