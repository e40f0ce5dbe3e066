//! Redaction at the source: every line the daemon writes to its log files
//! (the gateway's output and its own events) and every line the logs API
//! or a diagnostics bundle serves goes through [`redact`]. It removes the
//! secrets the daemon knows — the hub credential (current and previous),
//! the gateway's API key, the values of the Hermes `.env` — and the value
//! of anything that looks like an `Authorization` header or a bearer token.
//!
//! Process-wide, because the log writers are set up before the daemon
//! (tracing) and on the gateway's pipe threads.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

/// What replaces a secret.
pub const MASK: &str = "[REDACTED]";
/// Shorter values are not masked: masking `1` or `true` everywhere would
/// make every log unreadable and protect nothing.
pub const MIN_SECRET: usize = 6;
/// Longest value kept (longer ones are masked by their first part).
const MAX_SECRET: usize = 4096;
/// Values kept per kind (the oldest go first).
const MAX_PER_KIND: usize = 2048;

/// Where a secret comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Credential,
    GatewayKey,
    EnvValue,
}

#[derive(Default)]
struct Secrets {
    by_kind: HashMap<Kind, Vec<String>>,
    /// All of them, longest first (a secret containing another is masked whole).
    flat: Arc<Vec<String>>,
}

static SECRETS: LazyLock<RwLock<Secrets>> = LazyLock::new(Default::default);

fn rebuild(s: &mut Secrets) {
    let mut flat: Vec<String> = s.by_kind.values().flatten().cloned().collect();
    flat.sort_by_key(|v| std::cmp::Reverse(v.len()));
    flat.dedup();
    s.flat = Arc::new(flat);
}

fn usable(v: &str) -> Option<String> {
    let v = v.trim();
    if v.len() < MIN_SECRET {
        return None;
    }
    let mut end = v.len().min(MAX_SECRET);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    Some(v[..end].to_owned())
}

/// Remember `value` as a secret of `kind` (kept with the earlier ones:
/// a rotated credential or a replaced env value still appears in older
/// output).
pub fn remember(kind: Kind, value: &str) {
    let Some(v) = usable(value) else { return };
    let mut s = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    let list = s.by_kind.entry(kind).or_default();
    if list.contains(&v) {
        return;
    }
    if list.len() >= MAX_PER_KIND {
        list.remove(0);
    }
    list.push(v);
    rebuild(&mut s);
}

/// Remember every value of `values` (see [`remember`]).
pub fn remember_all<'a>(kind: Kind, values: impl IntoIterator<Item = &'a str>) {
    for v in values {
        remember(kind, v);
    }
}

fn known() -> Arc<Vec<String>> {
    SECRETS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .flat
        .clone()
}

/// `text` with every known secret and every header-looking credential
/// masked. Borrowed when there was nothing to mask.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for secret in known().iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    match mask_auth(&out) {
        Some(masked) => Cow::Owned(masked),
        None => out,
    }
}

/// Bytes that end a header value inside a log line (quotes, JSON/dict
/// punctuation, whitespace after a token).
fn ends_value(b: u8) -> bool {
    matches!(b, b'"' | b'\'' | b',' | b'}' | b']' | b'\n' | b'\r' | b'\\')
}

fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Mask the value after `authorization` (`: `, `=`, `": "`) up to the end
/// of the value, and the token after `bearer `/`basic `. `None` when there
/// is nothing to mask.
fn mask_auth(text: &str) -> Option<String> {
    // ASCII lowercasing keeps byte offsets.
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (needle, header) in [
        ("authorization", true),
        ("bearer ", false),
        ("basic ", false),
    ] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(needle) {
            let mut j = from + i + needle.len();
            from = j;
            if header {
                // Optional closing quote, then `:` or `=`, then spaces/quotes.
                while j < bytes.len() && matches!(bytes[j], b'"' | b'\'' | b' ') {
                    j += 1;
                }
                if j >= bytes.len() || !matches!(bytes[j], b':' | b'=') {
                    continue;
                }
                j += 1;
                while j < bytes.len() && matches!(bytes[j], b'"' | b'\'' | b' ') {
                    j += 1;
                }
                let start = j;
                while j < bytes.len() && !ends_value(bytes[j]) {
                    j += 1;
                }
                if j > start {
                    spans.push((start, j));
                }
            } else {
                let start = j;
                while j < bytes.len() && token_byte(bytes[j]) {
                    j += 1;
                }
                if j > start {
                    spans.push((start, j));
                }
            }
        }
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e) in spans {
        if e <= at {
            continue;
        }
        let s = s.max(at);
        out.push_str(&text[at..s]);
        out.push_str(MASK);
        at = e;
    }
    out.push_str(&text[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_and_headers_are_masked() {
        remember(Kind::EnvValue, "sk-test-redact-0123456789");
        remember(Kind::EnvValue, "abc");
        let line = "calling with key sk-test-redact-0123456789 and abc";
        assert_eq!(
            redact(line),
            "calling with key [REDACTED] and abc",
            "short values stay"
        );
        for (input, leaked) in [
            ("Authorization: Bearer tok123456", "tok123456"),
            (
                "{\"authorization\": \"Basic dXNlcjpwYXNz\"}",
                "dXNlcjpwYXNz",
            ),
            ("headers={'Authorization': 'xyz-secret-1'}", "xyz-secret-1"),
            ("AUTHORIZATION=opaque-value rest", "opaque-value"),
            ("sent bearer abc.def-ghi", "abc.def-ghi"),
        ] {
            let out = redact(input);
            assert!(!out.contains(leaked), "{input} -> {out}");
            assert!(out.contains(MASK), "{out}");
        }
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
        // Multi-byte text around a match keeps its characters.
        let out = redact("é Authorization: Bearer ü-tok");
        assert!(out.starts_with("é Authorization: "), "{out}");
    }
}
