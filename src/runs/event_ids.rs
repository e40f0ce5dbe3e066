//! The run ids in events. The gateway's events carry its own run id; the
//! hub knows the daemon's. Every event the daemon relays or writes carries
//! the daemon's id in `run_id` and the gateway's in `gateway_run_id`.
//!
//! The relay's hot path reads only a frame's head, so the rewrite works on
//! the frame's text: no JSON tree, the gateway's other fields and their
//! order kept byte for byte.

use memchr::memmem::Finder;

/// Both ids of one run, prepared for [`RunIds::translate`]: the searchers
/// are built once per run, not once per event.
pub(super) struct RunIds {
    /// `"<daemon id>"`, quotes included.
    daemon_quoted: String,
    /// Finds `"<gateway id>"`, quotes included.
    gateway_quoted: Finder<'static>,
    /// Finds a `"gateway_run_id"` key.
    has_gateway_key: Finder<'static>,
    /// `{"gateway_run_id":"<gateway id>"`: what a translated frame opens with.
    head: String,
}

impl RunIds {
    pub(super) fn new(run_id: &str, gateway_run_id: &str) -> RunIds {
        RunIds {
            daemon_quoted: format!("\"{run_id}\""),
            gateway_quoted: Finder::new(format!("\"{gateway_run_id}\"").as_bytes()).into_owned(),
            has_gateway_key: Finder::new(b"\"gateway_run_id\"").into_owned(),
            head: format!("{{\"gateway_run_id\":\"{gateway_run_id}\""),
        }
    }

    /// One gateway frame (a JSON object as text) as clients get it, written
    /// into `out` (cleared first): every JSON string equal to the gateway's
    /// run id (its `run_id` field) reads the daemon's id, and
    /// `gateway_run_id` is added first. Anything that is not an object is
    /// copied unchanged.
    pub(super) fn translate(&self, data: &str, out: &mut String) {
        out.clear();
        let Some(rest) = data.trim_start().strip_prefix('{') else {
            out.push_str(data);
            return;
        };
        out.reserve(self.head.len() + 1 + data.len());
        if self.has_gateway_key.find(data.as_bytes()).is_some() {
            // Never two keys of one name: a frame that has one keeps it.
            out.push('{');
        } else {
            out.push_str(&self.head);
            if !rest.trim_start().starts_with('}') {
                out.push(',');
            }
        }
        // An unescaped `"` opens or closes a string, and a closing one is
        // never followed by a letter in valid JSON: so an unescaped match
        // of `"run_…"` is a whole string token equal to the gateway's id.
        let bytes = rest.as_bytes();
        let needle = self.gateway_quoted.needle().len();
        let (mut copied, mut from) = (0, 0);
        while let Some(pos) = self.gateway_quoted.find(&bytes[from..]) {
            let at = from + pos;
            if escaped(bytes, at) {
                from = at + 1;
                continue;
            }
            out.push_str(&rest[copied..at]);
            out.push_str(&self.daemon_quoted);
            copied = at + needle;
            from = copied;
        }
        out.push_str(&rest[copied..]);
    }
}

/// Whether the byte at `at` follows an odd number of backslashes.
fn escaped(bytes: &[u8], at: usize) -> bool {
    bytes[..at]
        .iter()
        .rev()
        .take_while(|b| **b == b'\\')
        .count()
        % 2
        == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const GW: &str = "run_0123456789abcdef0123456789abcdef";
    const OURS: &str = "run_fedcba9876543210fedcba9876543210";

    fn translate(ids: &RunIds, data: &str) -> String {
        let mut out = String::from("left over from the last frame");
        ids.translate(data, &mut out);
        out
    }

    fn tr(data: &str) -> Value {
        serde_json::from_str(&translate(&RunIds::new(OURS, GW), data)).expect("still JSON")
    }

    #[test]
    fn the_gateway_frame_reads_the_daemon_id_and_keeps_everything_else() {
        let v = tr(&format!(
            r#"{{"event": "message.delta", "run_id": "{GW}", "timestamp": 1.5, "delta": "hi", "sent_at": 2}}"#
        ));
        assert_eq!(
            v,
            json!({"event": "message.delta", "run_id": OURS, "gateway_run_id": GW,
                   "timestamp": 1.5, "delta": "hi", "sent_at": 2})
        );
    }

    #[test]
    fn the_id_quoted_inside_text_is_left_alone() {
        let delta = format!("the id is \"{GW}\" and \\\\");
        let data = json!({"event": "message.delta", "run_id": GW, "delta": delta}).to_string();
        let v = tr(&data);
        assert_eq!(v["run_id"], OURS);
        assert_eq!(v["delta"], delta.as_str());
    }

    #[test]
    fn odd_shapes_stay_valid() {
        assert_eq!(tr("{}"), json!({"gateway_run_id": GW}));
        assert_eq!(tr(" { } "), json!({"gateway_run_id": GW}));
        let own = tr(&format!(r#"{{"run_id":"{GW}","gateway_run_id":"x"}}"#));
        assert_eq!(own, json!({"run_id": OURS, "gateway_run_id": "x"}));
        let ids = RunIds::new(OURS, GW);
        assert_eq!(translate(&ids, "[1]"), "[1]");
        assert_eq!(translate(&ids, "not json"), "not json");
    }

    #[test]
    fn ids_of_different_lengths_are_replaced_whole() {
        let out = translate(
            &RunIds::new("run_short", GW),
            &format!(r#"{{"run_id":"{GW}","other":"{GW}"}}"#),
        );
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(
            v,
            json!({"run_id": "run_short", "other": "run_short", "gateway_run_id": GW})
        );
    }
}
