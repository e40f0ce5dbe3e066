//! A `.env` parser that reads exactly what python-dotenv 1.2.2 reads (the
//! version hermes-agent 0.19.0 pins; `dotenv/parser.py`), and remembers
//! where in the file each binding's text is, so a rewrite can replace or
//! remove one binding and keep every other byte.
//!
//! How the gateway reads the file (`hermes_cli/env_loader.py`):
//! `load_dotenv(path, override=True, encoding="utf-8")`, and on a
//! `UnicodeDecodeError` the same with `latin-1`. Python opens it in text
//! mode, so `\r\n` and a lone `\r` become `\n` before the parser sees the
//! text, and a UTF-8 BOM is *not* stripped (it starts the first key).
//! Whitespace is Python's `\s` (`str.isspace`), which includes
//! `\x1c`–`\x1f`, `\x85` and the Unicode spaces.
//!
//! The parser is total: any input yields bindings covering every byte, in
//! time linear in the input (python-dotenv's quoted-value regex backtracks
//! to the last escaped quote; that is computed in one pass here).

use std::ops::Range;

/// One statement of the file, as python-dotenv's `Binding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// `None` for blank, comment and invalid statements.
    pub key: Option<String>,
    /// `None` when the key has no `=` (python-dotenv then sets nothing).
    pub value: Option<String>,
    /// The statement's original bytes (python-dotenv's `original`): the
    /// spans of all bindings tile the file.
    pub span: Range<usize>,
    /// The part of `span` from the start of the line its first
    /// non-blank character is on: what a rewrite replaces or removes
    /// (blank lines before it stay).
    pub own: Range<usize>,
    /// python-dotenv could not parse it (it warns and goes on).
    pub error: bool,
}

/// How the bytes were decoded, as the gateway would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    /// Not valid UTF-8: the gateway falls back to latin-1 (byte = char).
    Latin1,
}

/// A parsed file.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub encoding: Encoding,
    pub bindings: Vec<Binding>,
}

impl Parsed {
    /// The key → value map python-dotenv's `dotenv_values` returns
    /// (without interpolation): last binding wins.
    pub fn values(&self) -> Vec<(&str, Option<&str>)> {
        let mut index: std::collections::HashMap<&str, usize> = Default::default();
        let mut out: Vec<(&str, Option<&str>)> = Vec::new();
        for b in &self.bindings {
            if let Some(k) = b.key.as_deref() {
                let v = b.value.as_deref();
                match index.get(k) {
                    Some(&i) => out[i].1 = v,
                    None => {
                        index.insert(k, out.len());
                        out.push((k, v));
                    }
                }
            }
        }
        out
    }

    /// The value the gateway ends up with for `key` (`None`: absent or
    /// without `=`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.bindings
            .iter()
            .rev()
            .find(|b| b.key.as_deref() == Some(key))
            .and_then(|b| b.value.as_deref())
    }
}

/// Python's `str.isspace()` (and `\s` in a `str` regex).
pub fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\x1c'..='\x1f'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// `[^\S\r\n]`: whitespace but not a line end.
fn is_blank(c: char) -> bool {
    c != '\n' && c != '\r' && is_py_space(c)
}

/// Parse a whole file.
pub fn parse(bytes: &[u8]) -> Parsed {
    let (encoding, text) = match std::str::from_utf8(bytes) {
        Ok(t) => (Encoding::Utf8, std::borrow::Cow::Borrowed(t)),
        Err(_) => (
            Encoding::Latin1,
            std::borrow::Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect::<String>()),
        ),
    };
    let (norm, map) = normalize(&text, encoding);
    let mut bindings = Vec::new();
    let mut pos = 0;
    let mut memo = Memo::default();
    while pos < norm.len() {
        let (b, next) = parse_binding(&norm, pos, &mut memo);
        // Every call consumes at least one character (there is one).
        let next = if next > pos { next } else { norm.len() };
        bindings.push(Binding {
            span: map.orig(b.span.start)..map.orig(next),
            own: map.orig(b.own.start)..map.orig(next),
            ..b
        });
        pos = next;
    }
    Parsed { encoding, bindings }
}

/// Offsets in the normalised text → offsets in the file. Between two
/// breakpoints the two advance together.
struct OffsetMap {
    /// (normalised offset, file offset), increasing.
    points: Vec<(usize, usize)>,
}

impl OffsetMap {
    fn orig(&self, norm: usize) -> usize {
        let i = self.points.partition_point(|(n, _)| *n <= norm);
        match i.checked_sub(1).and_then(|i| self.points.get(i)) {
            Some((n, o)) => o + (norm - n),
            None => norm,
        }
    }
}

/// Universal newlines (`\r\n`, `\r` → `\n`), as Python's text mode.
fn normalize(text: &str, encoding: Encoding) -> (String, OffsetMap) {
    let mut out = String::with_capacity(text.len());
    let mut points = Vec::new();
    let mut orig = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // Bytes this character takes in the file.
        let file_len = match encoding {
            Encoding::Utf8 => c.len_utf8(),
            Encoding::Latin1 => 1,
        };
        if c == '\r' {
            out.push('\n');
            orig += 1;
            if chars.peek() == Some(&'\n') {
                chars.next();
                orig += 1;
                points.push((out.len(), orig));
            }
            continue;
        }
        out.push(c);
        orig += file_len;
        if file_len != c.len_utf8() {
            points.push((out.len(), orig));
        }
    }
    (out, OffsetMap { points })
}

struct Failed;

/// What an unclosed quoted value's scan learned, so the next one does not
/// scan to the end again (a file of `A="x` lines would be quadratic).
/// Per quote character: the first body start known to reach the end of
/// the text without a closing quote, and the last `\q` pair's quote.
/// Any later body start of the same quote is aligned with that scan (an
/// opening quote inside it was the second half of a pair), so it sees the
/// same pairs from there on.
#[derive(Default)]
struct Memo {
    unclosed: [Option<(usize, Option<usize>)>; 2],
}

fn peek(s: &str, pos: usize) -> Option<char> {
    s.get(pos..).and_then(|r| r.chars().next())
}

fn skip_while(s: &str, mut pos: usize, f: impl Fn(char) -> bool) -> usize {
    while let Some(c) = peek(s, pos) {
        if !f(c) {
            break;
        }
        pos += c.len_utf8();
    }
    pos
}

/// `parse_binding` of python-dotenv, on normalised text. Offsets in the
/// returned binding are normalised ones; the second value is where the
/// next binding starts.
fn parse_binding(s: &str, mark: usize, memo: &mut Memo) -> (Binding, usize) {
    let start = skip_while(s, mark, is_py_space);
    let line_start = s[mark..start].rfind('\n').map_or(mark, |i| mark + i + 1);
    let binding = |key, value, end, error| Binding {
        key,
        value,
        span: mark..end,
        own: line_start..end,
        error,
    };
    if start >= s.len() {
        return (binding(None, None, start, false), start);
    }
    let mut pos = start;
    match statement(s, &mut pos, memo) {
        Ok((key, value)) => (binding(key, value, pos, false), pos),
        Err(Failed) => {
            // `_rest_of_line`, from wherever the failed read stopped.
            let end = line_end(s, pos);
            let end = if peek(s, end) == Some('\n') {
                end + 1
            } else {
                end
            };
            (binding(None, None, end, true), end)
        }
    }
}

/// End of the current line (`[^\r\n]*`).
fn line_end(s: &str, pos: usize) -> usize {
    s[pos..].find('\n').map_or(s.len(), |i| pos + i)
}

type Statement = (Option<String>, Option<String>);

/// `_export`, key, `=` value, `_comment`, `_end_of_line`. `pos` is left
/// where the last successful read ended (python-dotenv's position on an
/// error).
fn statement(s: &str, pos: &mut usize, memo: &mut Memo) -> Result<Statement, Failed> {
    if s[*pos..].starts_with("export") {
        let after = skip_while(s, *pos + 6, is_blank);
        if after > *pos + 6 {
            *pos = after;
        }
    }
    let key = match peek(s, *pos) {
        Some('#') => None,
        Some('\'') => {
            let body = *pos + 1;
            let close = s[body..].find('\'').map(|i| body + i);
            match close {
                Some(c) if c > body => {
                    *pos = c + 1;
                    Some(s[body..c].to_owned())
                }
                _ => return Err(Failed),
            }
        }
        _ => {
            let end = skip_while(s, *pos, |c| c != '=' && c != '#' && !is_py_space(c));
            if end == *pos {
                return Err(Failed);
            }
            let k = s[*pos..end].to_owned();
            *pos = end;
            Some(k)
        }
    };
    *pos = skip_while(s, *pos, is_blank);
    let value = if peek(s, *pos) == Some('=') {
        *pos = skip_while(s, *pos + 1, is_blank);
        Some(value(s, pos, memo)?)
    } else {
        None
    };
    let c = skip_while(s, *pos, is_blank);
    if peek(s, c) == Some('#') {
        *pos = line_end(s, c);
    }
    let e = skip_while(s, *pos, is_blank);
    match peek(s, e) {
        None => *pos = e,
        Some('\n') => *pos = e + 1,
        Some(_) => return Err(Failed),
    }
    Ok((key, value))
}

fn value(s: &str, pos: &mut usize, memo: &mut Memo) -> Result<String, Failed> {
    match peek(s, *pos) {
        Some(q @ ('\'' | '"')) => {
            let (body, end) = quoted(s, *pos, q, memo)?;
            *pos = end;
            Ok(unescape(body, q == '"'))
        }
        None | Some('\n') => Ok(String::new()),
        Some(_) => {
            let end = line_end(s, *pos);
            let part = &s[*pos..end];
            *pos = end;
            Ok(strip_inline_comment(part)
                .trim_end_matches(is_py_space)
                .to_owned())
        }
    }
}

/// `q((?:\\q|[^q])*)q` with Python's backtracking: the value ends at the
/// first quote not taken by a `\q` pair; if there is none before the end
/// of the text, at the quote of the last `\q` pair; if there is no pair
/// either, the read fails. Returns (body, end).
fn quoted<'a>(
    s: &'a str,
    open: usize,
    q: char,
    memo: &mut Memo,
) -> Result<(&'a str, usize), Failed> {
    let body = open + 1;
    let slot = usize::from(q == '\'');
    let close_at_pair = |c: Option<usize>| match c {
        Some(c) if c > body => Ok((&s[body..c], c + 1)),
        _ => Err(Failed),
    };
    if let Some((from, last)) = memo.unclosed[slot] {
        if body >= from {
            return close_at_pair(last);
        }
    }
    let mut i = body;
    let mut last_pair_quote = None;
    while let Some(c) = peek(s, i) {
        if c == '\\' && peek(s, i + 1) == Some(q) {
            last_pair_quote = Some(i + 1);
            i += 2;
        } else if c == q {
            return Ok((&s[body..i], i + 1));
        } else {
            i += c.len_utf8();
        }
    }
    memo.unclosed[slot] = Some((body, last_pair_quote));
    close_at_pair(last_pair_quote)
}

/// `\\[\\'"abfnrtv]` (double quotes) or `\\[\\']` (single quotes),
/// decoded left to right without overlaps.
fn unescape(body: &str, double: bool) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.peek() {
            Some('\\') => Some('\\'),
            Some('\'') => Some('\''),
            Some('"') if double => Some('"'),
            Some('a') if double => Some('\x07'),
            Some('b') if double => Some('\x08'),
            Some('f') if double => Some('\x0c'),
            Some('n') if double => Some('\n'),
            Some('r') if double => Some('\r'),
            Some('t') if double => Some('\t'),
            Some('v') if double => Some('\x0b'),
            _ => None,
        };
        match decoded {
            Some(d) => {
                chars.next();
                out.push(d);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// `re.sub(r"\s+#.*", "", part)`: cut from the whitespace run before the
/// first `#` that has whitespace right before it.
fn strip_inline_comment(part: &str) -> &str {
    let mut run_start: Option<usize> = None;
    for (i, c) in part.char_indices() {
        if is_py_space(c) {
            run_start.get_or_insert(i);
        } else if c == '#' {
            if let Some(r) = run_start {
                return &part[..r];
            }
        } else {
            run_start = None;
        }
    }
    part
}

/// The key as the gateway may end up seeing it: its own pre-load pass
/// (`_sanitize_env_file_if_needed`) removes NUL bytes and a UTF-8 BOM
/// when it rewrites the file.
pub fn effective_key(key: &str) -> String {
    key.trim_start_matches('\u{feff}').replace('\0', "")
}

/// Single-quoted for python-dotenv (only `\\` and `\'` are escapes there),
/// or bare when the value ends with a backslash (a quoted value cannot:
/// `\'` would escape the closing quote). `None` when no form reads back
/// as `value`.
pub fn encode_value(value: &str) -> Option<String> {
    if value.contains(['\n', '\r']) {
        return None;
    }
    if !value.ends_with('\\') {
        let mut s = String::with_capacity(value.len() + 2);
        s.push('\'');
        for c in value.chars() {
            if c == '\\' || c == '\'' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('\'');
        return Some(s);
    }
    let bare_ok = !value.starts_with(['\'', '"'])
        && !value.starts_with(is_py_space)
        && !value.ends_with(is_py_space)
        && strip_inline_comment(value).len() == value.len();
    bare_ok.then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(text: &str) -> Vec<(String, Option<String>)> {
        parse(text.as_bytes())
            .values()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
            .collect()
    }

    fn one(k: &str, v: &str) -> (String, Option<String>) {
        (k.to_owned(), Some(v.to_owned()))
    }

    #[test]
    fn lone_carriage_return_ends_a_line() {
        assert_eq!(
            kv("FOO=1\rAPI_SERVER_KEY=evil"),
            vec![one("FOO", "1"), one("API_SERVER_KEY", "evil")]
        );
    }

    #[test]
    fn information_separators_are_whitespace() {
        assert_eq!(kv("\x1cA\x1f=\x1e1\x1d"), vec![one("A", "1")]);
    }

    #[test]
    fn quotes_exports_comments_and_bare_keys() {
        let text =
            "export A='x\\'y' # c\nB=\"l1\nl2\\t\"\nC=v #c\nD=v#c\nE\n#F=1\n'G H'=g\nbad line=\n";
        assert_eq!(
            kv(text),
            vec![
                one("A", "x'y"),
                one("B", "l1\nl2\t"),
                one("C", "v"),
                one("D", "v#c"),
                ("E".into(), None),
                one("G H", "g"),
            ]
        );
    }

    #[test]
    fn escaped_quote_at_the_end_closes_by_backtracking() {
        // No closing quote after `\'`: it closes the value.
        assert_eq!(kv("A='x\\'\nB=1\n"), vec![one("A", "x\\"), one("B", "1")]);
        // A later quote closes it instead, and what follows is invalid.
        assert_eq!(kv("A='x\\'\nB='y'\nC=3"), vec![one("C", "3")]);
    }

    #[test]
    fn spans_tile_the_file_and_map_crlf_and_latin1() {
        let text = b"A=1\r\n\r\n  B=\xe9\r\nC=3";
        let p = parse(text);
        assert_eq!(p.encoding, Encoding::Latin1);
        let b = &p.bindings;
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].span, 0..5);
        assert_eq!(b[1].span, 5..14);
        assert_eq!(&text[b[1].own.clone()], b"  B=\xe9\r\n");
        assert_eq!(b[1].value.as_deref(), Some("\u{e9}"));
        assert_eq!(&text[b[2].span.clone()], b"C=3");
    }

    #[test]
    fn unclosed_quotes_do_not_make_parsing_quadratic() {
        // 1 MiB of unclosed quotes: each would scan to the end of the file
        // (about 10^11 steps in all) without the memo.
        for line in ["A=\"x\n", "A='x\n", "A=\"\\\"x\n", "A='\\'x\n"] {
            let text = line.repeat(1024 * 1024 / line.len());
            let p = parse(text.as_bytes());
            assert!(!p.bindings.is_empty());
        }
    }

    #[test]
    fn encoded_values_read_back() {
        for v in [
            "", "a b", "x'y", "a\\", "a\\'b", "#x", " lead", "tab\t", "${X}",
        ] {
            let Some(enc) = encode_value(v) else { continue };
            let text = format!("K={enc}\nNEXT='n'\n");
            let p = parse(text.as_bytes());
            assert_eq!(p.get("K"), Some(v), "{v:?} as {enc}");
            assert_eq!(p.get("NEXT"), Some("n"), "{v:?} as {enc}");
        }
        assert_eq!(encode_value(" a\\"), None);
        assert_eq!(encode_value("a #b\\"), None);
    }

    /// Characters that steer the parser, so random inputs reach every branch.
    fn dotenv_ish() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(
            "(export |[A-Z_]{1,3}|'|\"|\\\\|=|#| |\t|\r|\n|\x1c|\u{feff}|\u{2028}|\x00|é|x){0,64}",
        )
        .expect("regex")
    }

    /// Invariants of any parse: spans tile the input, `own` lies inside
    /// `span`, and removing any binding's `own` text leaves the others
    /// parsing to the same keys and values.
    fn check_total(bytes: &[u8]) {
        let p = parse(bytes);
        let mut at = 0;
        for b in &p.bindings {
            assert_eq!(b.span.start, at);
            assert!(b.span.start <= b.own.start && b.own.end == b.span.end);
            assert!(b.span.end > b.span.start);
            at = b.span.end;
        }
        assert_eq!(at, bytes.len());
    }

    proptest::proptest! {
        #[test]
        fn total_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            check_total(&bytes);
        }

        #[test]
        fn total_on_dotenv_like_text(text in dotenv_ish()) {
            check_total(text.as_bytes());
            let p = parse(text.as_bytes());
            for (i, b) in p.bindings.iter().enumerate() {
                if b.key.is_none() {
                    continue;
                }
                // Removing one statement leaves the others as they were.
                let mut rest = text.as_bytes()[..b.own.start].to_vec();
                rest.extend_from_slice(&text.as_bytes()[b.own.end..]);
                let q = parse(&rest);
                let others = |bs: &[Binding], skip: Option<usize>| -> Vec<(Option<String>, Option<String>)> {
                    bs.iter()
                        .enumerate()
                        .filter(|(j, x)| Some(*j) != skip && x.key.is_some())
                        .map(|(_, x)| (x.key.clone(), x.value.clone()))
                        .collect()
                };
                proptest::prop_assert_eq!(others(&p.bindings, Some(i)), others(&q.bindings, None));
            }
        }
    }
}
