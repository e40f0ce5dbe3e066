//! The hub's answer to a heartbeat. Unknown fields are ignored (the hub
//! may grow); a known field of the wrong shape makes the whole reply
//! malformed, and nothing of it is applied.

use serde::Deserialize;

use super::Access;
use crate::agent::Desired;

/// Largest reply body read; a longer one is malformed.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct Reply {
    /// Usage entries up to and including this `seq` are recorded by the hub.
    #[serde(default)]
    pub ack_seq: Option<i64>,
    #[serde(default)]
    pub desired: Option<DesiredState>,
    /// Heartbeat interval the hub wants from now on, in seconds.
    #[serde(default)]
    pub heartbeat_interval_s: Option<f64>,
    /// The hub's clock when it answered.
    #[serde(default)]
    pub now: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct DesiredState {
    #[serde(default)]
    pub agent: Option<Desired>,
    /// The hub's version of its agent decision (for example a counter it
    /// bumps on each decision). Lets the hub repeat a value as a new
    /// decision: see `hub::decision`.
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub access: Option<Access>,
    /// The agent release this VM should run: installed (if needed) and
    /// activated behind the health gate by `releases`.
    #[serde(default)]
    pub agent_release: Option<String>,
    /// The sha256 of that release's hermes-agent distribution, pinned.
    #[serde(default)]
    pub agent_release_sha256: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("reply is larger than {MAX_REPLY_BYTES} bytes")]
    TooLarge,
    #[error("reply is not the expected JSON: {0}")]
    Malformed(String),
}

/// Parse a reply body. An empty body (a `204`) is an empty reply.
pub fn parse(body: &[u8]) -> Result<Reply, ReplyError> {
    if body.len() > MAX_REPLY_BYTES {
        return Err(ReplyError::TooLarge);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Reply::default());
    }
    serde_json::from_slice(body).map_err(|e| ReplyError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_reply_parses_and_unknown_fields_are_ignored() {
        let r = parse(
            br#"{"ack_seq": 41, "desired": {"agent": "stopped", "access": "suspended", "version": 7, "future": 1},
                 "heartbeat_interval_s": 15.5, "now": "2026-11-22T10:00:00Z", "news": [1,2]}"#,
        )
        .expect("valid");
        assert_eq!(r.ack_seq, Some(41));
        let d = r.desired.expect("desired");
        assert_eq!(d.agent, Some(Desired::Stopped));
        assert_eq!(d.access, Some(Access::Suspended));
        assert_eq!(d.version, Some(7));
        assert_eq!(r.heartbeat_interval_s, Some(15.5));
        assert!(r.now.is_some());
        assert_eq!(parse(b"").expect("empty"), Reply::default());
        assert_eq!(parse(b"{}").expect("empty object"), Reply::default());
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        for body in [
            &b"<html>oops</html>"[..],
            b"[1,2]",
            b"{\"ack_seq\": \"ten\"}",
            b"{\"desired\": {\"agent\": \"dancing\"}}",
            b"{\"desired\": {\"access\": \"maybe\"}}",
            b"{\"desired\": {\"agent\": \"stopped\", \"version\": -1}}",
            b"{\"desired\": {\"agent\": \"stopped\", \"version\": \"2\"}}",
            b"{\"now\": \"yesterday\"}",
            b"{\"ack_seq\": 1",
        ] {
            assert!(
                matches!(parse(body), Err(ReplyError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let big = vec![b' '; MAX_REPLY_BYTES + 1];
        assert!(matches!(parse(&big), Err(ReplyError::TooLarge)));
    }
}
