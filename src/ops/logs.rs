//! Reading the daemon's log files for `GET /logs` and diagnostics: the
//! gateway's output (`logs/gateway.log`, `TIME STREAM PID TEXT`) and the
//! daemon's own events (`logs/daemon.log`, JSON lines), each with its
//! rotated files (`NAME.1` is the newest of those). Lines were redacted
//! when written; they are redacted again when served (a secret learned
//! later is masked too).
//!
//! Every line has a cursor `MICROS.N` (lowercase hex: its time in µs and
//! its ordinal among the lines of that time in its file), stable across
//! rotation (a rotation renames files, never rewrites them). Blocking.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::redact::redact;

/// Most bytes read from one file (its newest part).
const MAX_FILE_READ: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Gateway,
    Daemon,
}

impl Source {
    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "gateway" => Some(Source::Gateway),
            "daemon" => Some(Source::Daemon),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Gateway => "gateway",
            Source::Daemon => "daemon",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Source::Gateway => "gateway.log",
            Source::Daemon => crate::logging::DAEMON_LOG,
        }
    }
}

/// Severity, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Some(Level::Trace),
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" | "critical" | "fatal" => Some(Level::Error),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// A line's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub micros: i64,
    pub n: u32,
}

impl Cursor {
    pub fn encode(self) -> String {
        format!("{:x}.{:x}", self.micros, self.n)
    }

    /// Strict: exactly what `encode` writes.
    pub fn parse(s: &str) -> Option<Cursor> {
        let (a, b) = s.split_once('.')?;
        // 15 hex digits of µs reach past the year 30000; 8 are a u32.
        let hex = |t: &str, max: usize| {
            !t.is_empty()
                && t.len() <= max
                && t.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
                && (t == "0" || !t.starts_with('0'))
        };
        if !hex(a, 15) || !hex(b, 8) {
            return None;
        }
        let c = Cursor {
            micros: i64::from_str_radix(a, 16).ok()?,
            n: u32::from_str_radix(b, 16).ok()?,
        };
        (c.encode() == s).then_some(c)
    }
}

/// One served line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub cursor: String,
    pub time: String,
    pub source: &'static str,
    pub level: &'static str,
    /// `stdout`/`stderr` for the gateway's output.
    pub stream: Option<String>,
    /// The gateway's text, or the daemon's JSON event.
    pub text: String,
    #[serde(skip)]
    key: Cursor,
}

impl LogLine {
    pub fn key(&self) -> Cursor {
        self.key
    }
}

/// What to serve.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub min_level: Option<Level>,
    pub q: Option<String>,
}

impl Filter {
    pub fn keeps(&self, l: &LogLine) -> bool {
        self.since_us.is_none_or(|s| l.key.micros >= s)
            && self.until_us.is_none_or(|u| l.key.micros <= u)
            && self
                .min_level
                .is_none_or(|m| Level::parse(l.level).is_some_and(|v| v >= m))
            && self.q.as_deref().is_none_or(|q| l.text.contains(q))
    }
}

/// A page of lines, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub items: Vec<LogLine>,
    /// Resume after the last item (or where the read ended).
    pub next_cursor: Option<String>,
    /// The page stopped at `limit` or the byte cap: more lines may follow.
    pub truncated: bool,
}

/// Caps of one read.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub lines: usize,
    pub bytes: usize,
}

/// The log files of one source, oldest first.
pub struct LogFiles {
    dir: PathBuf,
    source: Source,
    keep: u32,
}

impl LogFiles {
    pub fn new(dir: &Path, source: Source, keep: u32) -> LogFiles {
        LogFiles {
            dir: dir.to_path_buf(),
            source,
            keep,
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join(self.source.file())
    }

    /// Existing files, oldest first.
    fn paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = (1..=self.keep)
            .rev()
            .map(|n| self.dir.join(format!("{}.{n}", self.source.file())))
            .filter(|p| p.exists())
            .collect();
        let cur = self.current();
        if cur.exists() {
            v.push(cur);
        }
        v
    }

    /// The last lines that pass `filter` (newest last).
    pub fn tail(&self, filter: &Filter, caps: Caps) -> Page {
        self.tail_at(filter, caps).0
    }

    /// `tail`, and where the current file was read to (a follower goes on
    /// from there).
    pub fn tail_at(&self, filter: &Filter, caps: Caps) -> (Page, Option<Position>) {
        let mut picked: Vec<LogLine> = Vec::new();
        let mut bytes = 0;
        let mut truncated = false;
        let mut position = None;
        'files: for path in self.paths().iter().rev() {
            let (lines, pos) = parse_file(path, self.source, 0);
            if *path == self.current() {
                position = pos;
            }
            for l in lines.into_iter().rev() {
                if !filter.keeps(&l) {
                    continue;
                }
                if picked.len() >= caps.lines || bytes + l.text.len() > caps.bytes {
                    truncated = true;
                    break 'files;
                }
                bytes += l.text.len();
                picked.push(l);
            }
        }
        picked.reverse();
        let next_cursor = picked.last().map(|l| l.cursor.clone());
        let page = Page {
            items: picked,
            next_cursor,
            truncated,
        };
        (page, position)
    }

    /// Lines after `after` (and within `filter`), oldest first; also where
    /// the current file was read to, so a follower can read only what is
    /// appended next.
    pub fn after(
        &self,
        after: Option<Cursor>,
        filter: &Filter,
        caps: Caps,
    ) -> (Page, Option<Position>) {
        let start = after.map_or(filter.since_us.unwrap_or(i64::MIN), |c| c.micros);
        let paths = self.paths();
        // Skip files whose successor starts at or before the start: they
        // hold nothing newer.
        let mut first = 0;
        for i in 0..paths.len().saturating_sub(1) {
            match first_time(&paths[i + 1], self.source) {
                Some(t) if t <= start => first = i + 1,
                _ => break,
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut truncated = false;
        let mut position = None;
        'files: for path in &paths[first..] {
            let (lines, pos) = parse_file(path, self.source, 0);
            for l in lines {
                if after.is_some_and(|a| l.key <= a) || !filter.keeps(&l) {
                    continue;
                }
                if out.len() >= caps.lines || bytes + l.text.len() > caps.bytes {
                    truncated = true;
                    break 'files;
                }
                bytes += l.text.len();
                out.push(l);
            }
            if *path == self.current() {
                position = pos;
            }
        }
        let next_cursor = out
            .last()
            .map(|l| l.cursor.clone())
            .or_else(|| after.map(Cursor::encode));
        (
            Page {
                items: out,
                next_cursor,
                truncated,
            },
            if truncated { None } else { position },
        )
    }

    /// Lines appended to the current file since `pos` (`None` when the
    /// file was rotated or replaced: read by cursor again).
    pub fn appended(&self, pos: &Position, caps: Caps) -> Option<(Vec<LogLine>, Position)> {
        let path = self.current();
        let meta = std::fs::metadata(&path).ok()?;
        if meta.ino() != pos.ino || meta.len() < pos.offset {
            return None;
        }
        if meta.len() == pos.offset {
            return Some((Vec::new(), pos.clone()));
        }
        let mut f = File::open(&path).ok()?;
        f.seek(SeekFrom::Start(pos.offset)).ok()?;
        let want = (meta.len() - pos.offset).min(caps.bytes as u64 * 2 + 64 * 1024);
        let mut buf = Vec::new();
        f.take(want).read_to_end(&mut buf).ok()?;
        // Only whole lines; the rest is read next time.
        let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut state = pos.state;
        let mut lines = Vec::new();
        let mut used = 0;
        for raw in buf[..end].split_inclusive(|b| *b == b'\n') {
            if lines.len() >= caps.lines {
                break;
            }
            used += raw.len();
            if let Some(l) = parse_line(raw, self.source, &mut state) {
                lines.push(l);
            }
        }
        Some((
            lines,
            Position {
                ino: pos.ino,
                offset: pos.offset + used as u64,
                state,
            },
        ))
    }
}

/// How far a follower has read the current file.
#[derive(Debug, Clone)]
pub struct Position {
    ino: u64,
    offset: u64,
    state: Ordinal,
}

/// The last time seen in a file and how many lines had it.
#[derive(Debug, Clone, Copy, Default)]
struct Ordinal {
    micros: i64,
    n: u32,
}

fn first_time(path: &Path, source: Source) -> Option<i64> {
    let mut buf = vec![0u8; 16 * 1024];
    let n = File::open(path).ok()?.read(&mut buf).ok()?;
    let mut state = Ordinal::default();
    buf[..n]
        .split(|b| *b == b'\n')
        .find_map(|raw| parse_line(raw, source, &mut state))
        .map(|l| l.key.micros)
}

/// Every line of `path` (its last `MAX_FILE_READ` bytes) from `offset`,
/// and where it ended.
fn parse_file(path: &Path, source: Source, offset: u64) -> (Vec<LogLine>, Option<Position>) {
    let Ok(mut f) = File::open(path) else {
        return (Vec::new(), None);
    };
    let Ok(meta) = f.metadata() else {
        return (Vec::new(), None);
    };
    let start = offset.max(meta.len().saturating_sub(MAX_FILE_READ));
    if f.seek(SeekFrom::Start(start)).is_err() {
        return (Vec::new(), None);
    }
    let mut buf = Vec::new();
    if f.take(MAX_FILE_READ).read_to_end(&mut buf).is_err() {
        return (Vec::new(), None);
    }
    let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut state = Ordinal::default();
    let lines = buf[..end]
        .split_inclusive(|b| *b == b'\n')
        .filter_map(|raw| parse_line(raw, source, &mut state))
        .collect();
    let pos = Position {
        ino: meta.ino(),
        offset: start + end as u64,
        state,
    };
    (lines, Some(pos))
}

fn parse_line(raw: &[u8], source: Source, state: &mut Ordinal) -> Option<LogLine> {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return None;
    }
    let (time, level, stream, body) = match source {
        Source::Gateway => {
            let mut parts = text.splitn(4, ' ');
            let time = parts.next()?;
            let stream = parts.next()?;
            let _pid = parts.next()?;
            let body = parts.next().unwrap_or("");
            (time, python_level(body), Some(stream.to_owned()), body)
        }
        Source::Daemon => {
            let v: serde_json::Value = serde_json::from_str(text).ok()?;
            let time = v.get("timestamp")?.as_str()?;
            let level = v
                .get("level")
                .and_then(|l| l.as_str())
                .and_then(Level::parse)
                .unwrap_or(Level::Info);
            // Borrow from `text`: the timestamp occurs in it verbatim.
            let at = text.find(time)?;
            (&text[at..at + time.len()], level, None, text)
        }
    };
    let micros = chrono::DateTime::parse_from_rfc3339(time)
        .ok()?
        .timestamp_micros();
    let n = if micros == state.micros {
        state.n + 1
    } else {
        0
    };
    *state = Ordinal { micros, n };
    let key = Cursor { micros, n };
    Some(LogLine {
        cursor: key.encode(),
        time: crate::timestamp::format(micros.div_euclid(1000)),
        source: source.as_str(),
        level: level.as_str(),
        stream,
        text: redact(body).into_owned(),
        key,
    })
}

/// Python's logging level names as a word in the gateway's output; `info`
/// when none.
fn python_level(text: &str) -> Level {
    for (word, level) in [
        ("CRITICAL", Level::Error),
        ("ERROR", Level::Error),
        ("WARNING", Level::Warn),
        ("DEBUG", Level::Debug),
    ] {
        if text
            .match_indices(word)
            .any(|(i, _)| is_word(text.as_bytes(), i, word.len()))
        {
            return level;
        }
    }
    Level::Info
}

/// Whether `b[at..at + len]` stands alone (no letter or digit around it).
fn is_word(b: &[u8], at: usize, len: usize) -> bool {
    let before = at == 0 || !b[at - 1].is_ascii_alphanumeric();
    let end = at + len;
    let after = end >= b.len() || !b[end].is_ascii_alphanumeric();
    before && after
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_strict() {
        let c = Cursor {
            micros: 1_700_000_000_000_000,
            n: 3,
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        for bad in ["", ".", "1.", ".1", "01.1", "A.1", "1.1.1", "-1.0", "x"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn gateway_lines_resume_after_a_cursor_across_rotation() {
        let dir = tempfile::tempdir().expect("tmp");
        let old = "2026-01-01T00:00:00.000Z stdout 1 one\n2026-01-01T00:00:00.000Z stderr 1 two ERROR x\n";
        let new =
            "2026-01-01T00:00:01.000Z stdout 1 three\n2026-01-01T00:00:02.000Z stdout 1 four\n";
        std::fs::write(dir.path().join("gateway.log.1"), old).expect("write");
        std::fs::write(dir.path().join("gateway.log"), new).expect("write");
        let files = LogFiles::new(dir.path(), Source::Gateway, 3);
        let caps = Caps {
            lines: 100,
            bytes: 1 << 20,
        };
        let all = files.after(None, &Filter::default(), caps).0;
        let texts: Vec<&str> = all.items.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two ERROR x", "three", "four"]);
        assert_eq!(all.items[1].level, "error");
        assert_ne!(
            all.items[0].cursor, all.items[1].cursor,
            "same ms, two ordinals"
        );
        let after = Cursor::parse(&all.items[1].cursor);
        let rest = files.after(after, &Filter::default(), caps).0;
        let texts: Vec<&str> = rest.items.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["three", "four"]);
        let tail = files.tail(
            &Filter::default(),
            Caps {
                lines: 2,
                bytes: 1 << 20,
            },
        );
        assert!(tail.truncated);
        let texts: Vec<&str> = tail.items.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["three", "four"]);
        let errors = Filter {
            min_level: Some(Level::Warn),
            ..Default::default()
        };
        assert_eq!(files.tail(&errors, caps).items.len(), 1);
    }
}
