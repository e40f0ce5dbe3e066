//! Planning a rewrite of `.env`: which byte spans to replace or remove,
//! and a check that python-dotenv reads the result as intended. Pure (no
//! I/O), so the caller runs it with the read and the write in one
//! blocking call.

use super::EnvError;
use super::dotenv::{self, Binding, Encoding};
use super::reserved::Reserved;

/// The file after a change.
pub struct Plan {
    pub bytes: Vec<u8>,
    /// A binding for the name was there before.
    pub found: bool,
    /// Reserved names removed on the way.
    pub stripped: Vec<String>,
}

/// `bytes` without its reserved bindings, and their names.
pub fn strip_reserved(bytes: &[u8], reserved: &Reserved) -> (Vec<u8>, Vec<String>) {
    let parsed = dotenv::parse(bytes);
    let mut stripped = Vec::new();
    let edits: Vec<Edit> = parsed
        .bindings
        .iter()
        .filter_map(|b| {
            stripped.push(reserved.reserved_in(b, bytes)?);
            Some(Edit::remove(b))
        })
        .collect();
    (apply_edits(bytes, &edits, None), stripped)
}

/// Set `name` (`new`: the statement and the value it must read back as)
/// or remove it: the last binding replaced in place, earlier ones and
/// reserved ones removed, appended when absent. Refused when the result
/// would not read back (an open quote swallowing the change).
pub fn set_or_remove(
    bytes: &[u8],
    reserved: &Reserved,
    name: &str,
    new: Option<&(String, String)>,
) -> Result<Plan, EnvError> {
    let parsed = dotenv::parse(bytes);
    if parsed.encoding != Encoding::Utf8 {
        return Err(EnvError::NotUtf8);
    }
    let last = parsed
        .bindings
        .iter()
        .rposition(|b| b.key.as_deref() == Some(name));
    let mut edits = Vec::new();
    let mut stripped = Vec::new();
    for (i, b) in parsed.bindings.iter().enumerate() {
        if let Some(n) = reserved.reserved_in(b, bytes) {
            stripped.push(n);
            edits.push(Edit::remove(b));
        } else if b.key.as_deref() == Some(name) {
            match (new, Some(i) == last) {
                (Some((line, _)), true) => edits.push(Edit::replace(b, line, bytes)),
                _ => edits.push(Edit::remove(b)),
            }
        }
    }
    let append = match (new, last) {
        (Some((line, _)), None) => Some(line.as_str()),
        _ => None,
    };
    let out = apply_edits(bytes, &edits, append);
    // What the gateway will read: the change and nothing reserved.
    let check = dotenv::parse(&out);
    let reads_back = match new {
        Some((_, value)) => check.get(name) == Some(value.as_str()),
        None => !check
            .bindings
            .iter()
            .any(|b| b.key.as_deref() == Some(name)),
    };
    if !reads_back
        || check
            .bindings
            .iter()
            .any(|b| reserved.reserved_in(b, &out).is_some())
    {
        return Err(EnvError::WouldNotReadBack);
    }
    Ok(Plan {
        bytes: out,
        found: last.is_some(),
        stripped,
    })
}

/// One change to the file: the byte range of a binding's own text and
/// what replaces it.
struct Edit {
    range: std::ops::Range<usize>,
    with: Option<String>,
}

impl Edit {
    fn remove(b: &Binding) -> Edit {
        Edit {
            range: b.own.clone(),
            with: None,
        }
    }

    /// `line` plus the line end the binding had (`\r\n`, `\n`, `\r` or
    /// none at the end of the file).
    fn replace(b: &Binding, line: &str, bytes: &[u8]) -> Edit {
        let own = &bytes[b.own.clone()];
        let eol = if own.ends_with(b"\r\n") {
            "\r\n"
        } else if own.ends_with(b"\n") {
            "\n"
        } else if own.ends_with(b"\r") {
            "\r"
        } else {
            ""
        };
        Edit {
            range: b.own.clone(),
            with: Some(format!("{line}{eol}")),
        }
    }
}

/// `bytes` with `edits` (in file order, not overlapping) applied and
/// `append` added as a last line. Only called on UTF-8 text, or with
/// removals only (which keep the other bytes whatever they are).
fn apply_edits(bytes: &[u8], edits: &[Edit], append: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + append.map_or(0, str::len) + 2);
    let mut at = 0;
    for e in edits {
        out.extend_from_slice(&bytes[at..e.range.start]);
        if let Some(w) = &e.with {
            out.extend_from_slice(w.as_bytes());
        }
        at = e.range.end;
    }
    out.extend_from_slice(&bytes[at..]);
    if let Some(line) = append {
        if !out.is_empty() && !out.ends_with(b"\n") && !out.ends_with(b"\r") {
            out.push(b'\n');
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}
