//! The run ids in events. The gateway's events carry its own run id; the
//! hub knows the daemon's. Every event the daemon relays or writes carries
//! the daemon's id in `run_id` and the gateway's in `gateway_run_id`.
//!
//! The relay's hot path reads only a frame's head, so the rewrite works on
//! the frame's text: no JSON tree, the gateway's other fields and their
//! order kept byte for byte.

/// Both ids of one run, prepared for [`RunIds::translate`].
pub(super) struct RunIds {
    /// `"<daemon id>"`, quotes included.
    daemon_quoted: String,
    /// `"<gateway id>"`, quotes included.
    gateway_quoted: String,
    /// `{"gateway_run_id":"<gateway id>"`: what a translated frame opens with.
    head: String,
}

impl RunIds {
    pub(super) fn new(run_id: &str, gateway_run_id: &str) -> RunIds {
        RunIds {
            daemon_quoted: format!("\"{run_id}\""),
            gateway_quoted: format!("\"{gateway_run_id}\""),
            head: format!("{{\"gateway_run_id\":\"{gateway_run_id}\""),
        }
    }

    /// One gateway frame (a JSON object as text) as clients get it: every
    /// JSON string equal to the gateway's run id (its `run_id` field) reads
    /// the daemon's id, and `gateway_run_id` is added first. Anything that
    /// is not an object is returned unchanged.
    pub(super) fn translate(&self, data: String) -> String {
        let Some(rest) = data.trim_start().strip_prefix('{') else {
            return data;
        };
        let mut out = String::with_capacity(self.head.len() + 1 + data.len());
        if data.contains("\"gateway_run_id\"") {
            // Never two keys of one name: a frame that has one keeps it.
            out.push('{');
        } else {
            out.push_str(&self.head);
            if !rest.trim_start().starts_with('}') {
                out.push(',');
            }
        }
        let start = out.len();
        out.push_str(rest);
        // An unescaped `"` opens or closes a string, and a closing one is
        // never followed by a letter in valid JSON: so an unescaped match
        // of `"run_…"` is a whole string token equal to the gateway's id.
        let mut from = start;
        while let Some(pos) = out[from..].find(&self.gateway_quoted) {
            let at = from + pos;
            if escaped(out.as_bytes(), at) {
                from = at + 1;
                continue;
            }
            out.replace_range(at..at + self.gateway_quoted.len(), &self.daemon_quoted);
            from = at + self.daemon_quoted.len();
        }
        out
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

    fn tr(data: &str) -> Value {
        let out = RunIds::new(OURS, GW).translate(data.to_owned());
        serde_json::from_str(&out).expect("still JSON")
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
        assert_eq!(ids.translate("[1]".into()), "[1]");
        assert_eq!(ids.translate("not json".into()), "not json");
    }

    #[test]
    fn ids_of_different_lengths_are_replaced_whole() {
        let out = RunIds::new("run_short", GW)
            .translate(format!(r#"{{"run_id":"{GW}","other":"{GW}"}}"#));
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(
            v,
            json!({"run_id": "run_short", "other": "run_short", "gateway_run_id": GW})
        );
    }
}
