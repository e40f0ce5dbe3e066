//! The gateway's runs API as the daemon uses it: submit, event stream,
//! stop, approval, and the chat-completions fallback. Every request goes
//! straight to loopback (never a proxy) and carries the key only after
//! the [`KeyGate`] has checked who holds the port, on a connection the
//! gate confirmed once it was made (`supervisor::gateway_connect`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::agent::{GatewayEndpoint, KeyGate};
use crate::supervisor::gateway_connect;
use crate::supervisor::gateway_socket::Refusal;

/// Failures talking to the gateway, classified by what the relay does next.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 429: too many runs at once; retry after the hinted delay.
    #[error("gateway is at its run limit")]
    RateLimited { retry_after: Duration },
    /// 503 draining or connection refused: wait for the agent to be back.
    #[error("gateway is unavailable: {0}")]
    Unavailable(String),
    /// A 4xx the client should see (bad approval choice, no pending approval, ...).
    #[error("{message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("gateway error: {0}")]
    Other(String),
    /// The port is held by a process the daemon did not start: nothing
    /// was sent.
    #[error("{0}")]
    NotOurs(String),
}

impl From<Refusal> for GatewayError {
    fn from(r: Refusal) -> Self {
        if r.is_foreign() {
            GatewayError::NotOurs(r.to_string())
        } else {
            // Not started or not listening yet: like a refused connection.
            GatewayError::Unavailable(r.to_string())
        }
    }
}

#[derive(Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    endpoint: GatewayEndpoint,
    gate: Arc<KeyGate>,
}

/// Largest single SSE line accepted from the gateway.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

impl GatewayClient {
    /// No fallback to a default client when this fails: that one would
    /// honour the environment's proxies.
    pub fn new(
        endpoint: GatewayEndpoint,
        gate: Arc<KeyGate>,
    ) -> Result<GatewayClient, reqwest::Error> {
        let http = gateway_connect::client(&gate, Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(GatewayClient {
            http,
            endpoint,
            gate,
        })
    }

    /// A request to `path` with the key, once the gate allows it.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, GatewayError> {
        let bearer = self.gate.bearer().await?;
        Ok(self
            .http
            .request(method, format!("{}{path}", self.endpoint.base_url))
            .header(reqwest::header::AUTHORIZATION, bearer))
    }

    /// Send; a connection the gate dropped is its refusal, any other
    /// failed connection makes the gate check the port again.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, GatewayError> {
        req.send().await.map_err(|e| {
            if let Some(r) = gateway_connect::refusal_of(&e) {
                return r.into();
            }
            if e.is_connect() {
                self.gate.invalidate();
            }
            Self::transport(e)
        })
    }

    async fn classify(resp: reqwest::Response) -> GatewayError {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1));
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"]
            .as_str()
            .or_else(|| body["code"].as_str())
            .unwrap_or("")
            .to_owned();
        let message = body["error"]["message"]
            .as_str()
            .or_else(|| body["message"].as_str())
            .unwrap_or("the gateway refused the request")
            .to_owned();
        match status {
            429 => GatewayError::RateLimited { retry_after },
            503 => GatewayError::Unavailable(code),
            400..=499 => GatewayError::Rejected {
                status,
                code,
                message,
            },
            _ => GatewayError::Other(format!("status {status} {code}")),
        }
    }

    fn transport(e: reqwest::Error) -> GatewayError {
        if e.is_connect() {
            GatewayError::Unavailable("connection refused".into())
        } else {
            GatewayError::Other(e.without_url().to_string())
        }
    }

    /// `GET /v1/capabilities`: `true` when the runs API is there.
    pub async fn has_runs_api(&self) -> bool {
        let Ok(req) = self.request(reqwest::Method::GET, "/v1/capabilities").await else {
            return true;
        };
        let Ok(resp) = self.send(req.timeout(Duration::from_secs(5))).await else {
            return true;
        };
        if !resp.status().is_success() {
            return resp.status().as_u16() != 404;
        }
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        capabilities_have_runs(&v)
    }

    /// `POST /v1/runs` → the gateway's run id.
    pub async fn submit(&self, body: &Value) -> Result<String, GatewayError> {
        let req = self.request(reqwest::Method::POST, "/v1/runs").await?;
        let resp = self
            .send(req.timeout(Duration::from_secs(30)).json(body))
            .await?;
        if !resp.status().is_success() {
            return Err(Self::classify(resp).await);
        }
        let v: Value = resp
            .json()
            .await
            .map_err(|e| GatewayError::Other(e.without_url().to_string()))?;
        v["run_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| GatewayError::Other("the gateway's answer has no run_id".into()))
    }

    /// `GET /v1/runs/{id}/events` as a stream of body chunks.
    pub async fn events(
        &self,
        gateway_run_id: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + use<>, GatewayError> {
        let req = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/runs/{gateway_run_id}/events"),
            )
            .await?;
        let resp = self
            .send(req.header(reqwest::header::ACCEPT, "text/event-stream"))
            .await?;
        if !resp.status().is_success() {
            return Err(Self::classify(resp).await);
        }
        Ok(resp.bytes_stream())
    }

    /// `POST /v1/runs/{id}/stop`.
    pub async fn stop(&self, gateway_run_id: &str) -> Result<(), GatewayError> {
        self.post_empty(&format!("/v1/runs/{gateway_run_id}/stop"), &json!({}))
            .await
    }

    /// `POST /v1/runs/{id}/approval` `{choice}`.
    pub async fn approval(&self, gateway_run_id: &str, choice: &str) -> Result<(), GatewayError> {
        self.post_empty(
            &format!("/v1/runs/{gateway_run_id}/approval"),
            &json!({ "choice": choice }),
        )
        .await
    }

    async fn post_empty(&self, path: &str, body: &Value) -> Result<(), GatewayError> {
        let req = self.request(reqwest::Method::POST, path).await?;
        let resp = self
            .send(req.timeout(Duration::from_secs(15)).json(body))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::classify(resp).await)
        }
    }

    /// Streaming `POST /v1/chat/completions` (for gateways without runs).
    pub async fn chat_stream(
        &self,
        session_id: &str,
        body: &Value,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + use<>, GatewayError> {
        let req = self
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .await?;
        let resp = self
            .send(req.header("X-Hermes-Session-Id", session_id).json(body))
            .await?;
        if !resp.status().is_success() {
            return Err(Self::classify(resp).await);
        }
        Ok(resp.bytes_stream())
    }
}

/// Whether a `/v1/capabilities` document offers the runs API with its
/// event stream (hermes-agent 0.19: `features.run_submission` and
/// `features.run_events_sse`, and `endpoints.runs`).
pub fn capabilities_have_runs(v: &Value) -> bool {
    if let Some(submit) = v["features"]["run_submission"].as_bool() {
        return submit && v["features"]["run_events_sse"].as_bool().unwrap_or(true);
    }
    v["endpoints"]["runs"].is_object()
}

/// One server-sent event as framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser with a bounded line buffer and a bounded frame.
#[derive(Default)]
pub struct SseParser {
    /// The start of a line split across chunks.
    carry: Vec<u8>,
    /// The frame's `data` lines so far, joined by `\n`.
    data: String,
    /// `data` lines in the frame so far (an empty one still makes a frame).
    data_lines: usize,
    event: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("an event stream line or event is longer than {MAX_LINE_BYTES} bytes")]
pub struct LineTooLong;

impl SseParser {
    /// Feed bytes; complete frames are pushed to `out`. Lines complete in
    /// `chunk` are read in place; only a line split across chunks is
    /// copied.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseFrame>) -> Result<(), LineTooLong> {
        let mut rest = chunk;
        if !self.carry.is_empty() {
            let Some(end) = memchr::memchr(b'\n', rest) else {
                if self.carry.len() + rest.len() > MAX_LINE_BYTES {
                    return Err(LineTooLong);
                }
                self.carry.extend_from_slice(rest);
                return Ok(());
            };
            if self.carry.len() + end > MAX_LINE_BYTES {
                return Err(LineTooLong);
            }
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&rest[..end]);
            let done = self.line_done(&line, out);
            line.clear();
            self.carry = line;
            done?;
            rest = &rest[end + 1..];
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', rest) {
            let line = &rest[start..end];
            if line.len() > MAX_LINE_BYTES {
                return Err(LineTooLong);
            }
            self.line_done(line, out)?;
            start = end + 1;
        }
        let tail = &rest[start..];
        if tail.len() > MAX_LINE_BYTES {
            return Err(LineTooLong);
        }
        self.carry.extend_from_slice(tail);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseFrame>) -> Result<(), LineTooLong> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.data_lines > 0 {
                out.push(SseFrame {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
                self.data_lines = 0;
            }
            self.event = None;
            return Ok(());
        }
        if line.starts_with(b":") {
            return Ok(());
        }
        // Valid UTF-8 (the gateway's JSON) takes the fast check; only a
        // line that is not gets its bad bytes replaced.
        let line = match std::str::from_utf8(line) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(line),
        };
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "data" => {
                // Many short `data` lines add up to one frame: bounded too.
                if self.data.len() + 1 + value.len() > MAX_LINE_BYTES {
                    return Err(LineTooLong);
                }
                if self.data_lines > 0 {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.data_lines += 1;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }
}

/// Read a body stream to SSE frames, calling `on_frame` for each; stops at
/// the end of the stream or when `on_frame` returns `false`.
pub async fn for_each_frame<S, F>(mut body: S, mut on_frame: F) -> Result<(), GatewayError>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
    F: FnMut(SseFrame) -> bool,
{
    let mut parser = SseParser::default();
    let mut frames = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| GatewayError::Unavailable(e.without_url().to_string()))?;
        parser
            .feed(&chunk, &mut frames)
            .map_err(|e| GatewayError::Other(e.to_string()))?;
        for f in frames.drain(..) {
            if !on_frame(f) {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_real_capabilities_shape() {
        let real = json!({"object": "hermes.api_server.capabilities",
            "features": {"run_submission": true, "run_events_sse": true},
            "endpoints": {"runs": {"method": "POST", "path": "/v1/runs"}}});
        assert!(capabilities_have_runs(&real));
        let without = json!({"features": {"run_submission": false, "chat_completions": true}});
        assert!(!capabilities_have_runs(&without));
        assert!(!capabilities_have_runs(&json!({"object": "x"})));
    }

    #[test]
    fn parses_frames_split_across_chunks_and_ignores_comments() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.feed(b": keep-alive\n\ndata: {\"event\":\"message.del", &mut out)
            .expect("feed");
        assert!(out.is_empty());
        p.feed(
            b"ta\"}\r\n\r\nevent: hermes.tool.progress\ndata: a\ndata: b\n\n",
            &mut out,
        )
        .expect("feed");
        assert_eq!(
            out,
            vec![
                SseFrame {
                    event: None,
                    data: "{\"event\":\"message.delta\"}".into()
                },
                SseFrame {
                    event: Some("hermes.tool.progress".into()),
                    data: "a\nb".into()
                },
            ]
        );
    }

    #[test]
    fn a_frame_of_many_short_data_lines_is_bounded_like_a_line() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let lines =
            "data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n".repeat(1024);
        let mut refused = false;
        for _ in 0..(2 * MAX_LINE_BYTES / lines.len() + 1) {
            if p.feed(lines.as_bytes(), &mut out).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "an endless frame is refused");
        assert!(out.is_empty());
    }
}
