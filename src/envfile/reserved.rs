//! Which names are reserved, and which statements of a `.env` set one as
//! the gateway may end up reading them.

use super::dotenv::{self, Binding};
use super::{BUILTIN_RESERVED, BUILTIN_RESERVED_PREFIXES};

/// The built-in reserved names plus the operator's (`NAME` or `PREFIX_*`).
#[derive(Debug, Clone)]
pub struct Reserved {
    operator: Vec<String>,
}

impl Reserved {
    pub fn new(operator: Vec<String>) -> Reserved {
        Reserved { operator }
    }

    pub fn is_reserved(&self, name: &str) -> bool {
        BUILTIN_RESERVED.contains(&name)
            || BUILTIN_RESERVED_PREFIXES
                .iter()
                .any(|p| name.starts_with(p))
            || self.operator.iter().any(|r| match r.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => r == name,
            })
    }

    /// The reserved name a binding sets, or may set once the gateway's own
    /// pre-load pass has rewritten the file: that pass removes NUL bytes
    /// and the BOM and splits a line at any known `NAME=` in it (for
    /// `A=xAPI_SERVER_KEY=y`), so any reserved `NAME=` in a statement's
    /// text counts. Blank and comment statements never set anything.
    pub fn reserved_in(&self, b: &Binding, file: &[u8]) -> Option<String> {
        if let Some(k) = &b.key {
            let k = dotenv::effective_key(k);
            if self.is_reserved(&k) {
                return Some(k);
            }
        } else if !b.error {
            return None;
        }
        file.get(b.span.clone())
            .and_then(|t| self.reserved_assignment(t))
    }

    /// A reserved `NAME=` anywhere in `text` (NULs ignored). Reserved
    /// names are ASCII, so this works on the bytes whatever the encoding.
    fn reserved_assignment(&self, text: &[u8]) -> Option<String> {
        let text: Vec<u8> = text.iter().copied().filter(|c| *c != 0).collect();
        let is_name_byte = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_';
        for (eq, _) in text.iter().enumerate().filter(|(_, c)| **c == b'=') {
            let run_start = text[..eq]
                .iter()
                .rposition(|c| !is_name_byte(c))
                .map_or(0, |i| i + 1);
            // Names are at most 128 bytes: only the run's tail matters.
            let from = run_start.max(eq.saturating_sub(128));
            for i in from..eq {
                let Ok(candidate) = std::str::from_utf8(&text[i..eq]) else {
                    continue;
                };
                if self.is_reserved(candidate) {
                    return Some(candidate.to_owned());
                }
            }
        }
        None
    }
}
