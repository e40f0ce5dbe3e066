//! Client paths checked as text, before anything is opened.

use super::{MAX_DEPTH, MAX_NAME_BYTES, MAX_PATH_BYTES, PathError};

/// Check a client path as text and split it into components. `""` and
/// `"."` are the root itself.
pub fn parse_relative(raw: &str) -> Result<Vec<&str>, PathError> {
    let bad = |m: &str| Err(PathError::Invalid(m.to_owned()));
    if raw.len() > MAX_PATH_BYTES {
        return bad("path is longer than 4096 bytes");
    }
    if raw.contains('\0') {
        return bad("path contains a NUL byte");
    }
    if raw.chars().any(|c| c.is_control()) {
        return bad("path contains a control character");
    }
    if raw.contains('\\') {
        return bad("path contains a backslash; use `/` between names");
    }
    if raw.starts_with('/') {
        return bad("absolute paths are not allowed; give a path relative to the root");
    }
    if has_percent_escape(raw) {
        return bad("path contains a percent-encoded sequence after decoding (encoded twice?)");
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => continue,
            ".." => return bad("`..` is not allowed in paths"),
            p if p.len() > MAX_NAME_BYTES => {
                return bad("a path component is longer than 255 bytes");
            }
            p => parts.push(p),
        }
    }
    if parts.len() > MAX_DEPTH {
        return bad("path is nested too deeply");
    }
    Ok(parts)
}

fn has_percent_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}
