//! Which MCP connections the gateway failed to connect, from its own log.
//!
//! hermes-agent 0.19.0 exposes no per-server MCP state over its API; it
//! connects its servers once at start, before it serves, and logs each
//! failure at WARNING to `HERMES_HOME/logs/errors.log`
//! (`tools/mcp_tool.py`: `Failed to connect to MCP server '<name>'[ (command=…)]: <error>`,
//! through its redacting formatter). So the daemon notes the log's size
//! when a gateway process starts and, once that process serves, reads what
//! it appended: the failures of that start. The file is the agent's
//! (hostile input): read as the agent, no symlink, a regular file only,
//! at most `MAX_TAIL` bytes, names and messages checked and cut. A forged
//! line can only make the agent's own connection look failed.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::dir_handle::{DirHandle, Symlinks, fstat};

const LOG: &str = "logs/errors.log";
/// Most of the log read per gateway start.
const MAX_TAIL: u64 = 256 * 1024;
/// Longest error message kept.
const MAX_MESSAGE: usize = 300;
const MARKER: &str = "Failed to connect to MCP server '";

/// The log's size now (`0` when absent or unreadable). Blocking, as the agent.
pub(super) fn size(home: &Path) -> u64 {
    open(home).map(|(_, len)| len).unwrap_or(0)
}

/// Connection name → error, from what the log gained past `from` (all of
/// it, capped, when it was rotated meanwhile). Blocking, as the agent.
pub(super) fn failures(home: &Path, from: u64) -> BTreeMap<String, String> {
    let Some((mut file, len)) = open(home) else {
        return BTreeMap::new();
    };
    let start = if len < from { 0 } else { from };
    let start = start.max(len.saturating_sub(MAX_TAIL));
    let mut text = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(MAX_TAIL).read_to_end(&mut text).is_err()
    {
        return BTreeMap::new();
    }
    parse(&String::from_utf8_lossy(&text))
}

fn open(home: &Path) -> Option<(std::fs::File, u64)> {
    let home = DirHandle::open_home(home).ok()?;
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
    let fd = home
        .open_beneath(&PathBuf::from(LOG), flags, 0, Symlinks::Refuse)
        .ok()?;
    let st = fstat(std::os::fd::AsFd::as_fd(&fd)).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    Some((std::fs::File::from(fd), st.st_size.max(0) as u64))
}

fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(at) = line.find(MARKER) else {
            continue;
        };
        let rest = &line[at + MARKER.len()..];
        let Some(end) = rest.find('\'') else { continue };
        let name = &rest[..end];
        if super::connections::check_name(name).is_err() {
            continue;
        }
        let after = &rest[end + 1..];
        // Skip ` (command=…)`: the message follows the first `: `.
        let message = after.split_once(": ").map_or("", |(_, m)| m);
        let message: String = message
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_MESSAGE)
            .collect();
        out.insert(
            name.to_owned(),
            if message.is_empty() {
                "the gateway could not connect".to_owned()
            } else {
                message
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_read_from_the_lines_the_gateway_writes() {
        let text = "\
2026-12-06 05:47:12,345 WARNING tools.mcp_tool: Failed to connect to MCP server 'flamingo': Connection refused
2026-12-06 05:47:12,346 WARNING tools.mcp_tool: Failed to connect to MCP server 'files-1' (command=npx): not found: x
2026-12-06 05:47:12,347 WARNING tools.mcp_tool: Failed to connect to MCP server '../etc': forged
2026-12-06 05:47:12,348 INFO gateway.run: something else
";
        let f = parse(text);
        assert_eq!(
            f.get("flamingo").map(String::as_str),
            Some("Connection refused")
        );
        assert_eq!(f.get("files-1").map(String::as_str), Some("not found: x"));
        assert_eq!(f.len(), 2, "{f:?}");
    }

    #[test]
    fn only_what_the_log_gained_is_read() {
        let home = tempfile::tempdir().expect("home");
        std::fs::create_dir_all(home.path().join("logs")).expect("logs");
        let log = home.path().join(LOG);
        std::fs::write(&log, "x Failed to connect to MCP server 'old': gone\n").expect("log");
        let mark = size(home.path());
        assert!(failures(home.path(), mark).is_empty());
        let mut text = std::fs::read_to_string(&log).expect("read");
        text.push_str("y Failed to connect to MCP server 'new': refused\n");
        std::fs::write(&log, text).expect("append");
        let f = failures(home.path(), mark);
        assert_eq!(f.keys().collect::<Vec<_>>(), vec!["new"]);
        // Rotated (smaller than the mark): read from its start.
        std::fs::write(&log, "z Failed to connect to MCP server 'rot': x\n").expect("rotate");
        assert!(failures(home.path(), 10_000).contains_key("rot"));
    }
}

impl super::AgentConfig {
    /// Follow the gateway's starts: note the log's size when a process
    /// starts, read its failures once it serves.
    pub(super) async fn follow_mcp(&self, s: &crate::agent::AgentStatus) {
        use crate::agent::AgentState;
        let Some(pid) = s.pid else { return };
        let home = self.hermes_home.clone();
        match s.state {
            AgentState::Starting | AgentState::Unhealthy => {
                let mut mark = super::lock(&self.mcp_log).clone();
                if mark.started != Some(pid) {
                    let offset = crate::identity::spawn_as_agent(move || size(&home))
                        .await
                        .unwrap_or(0);
                    mark = McpLog {
                        started: Some(pid),
                        offset,
                        ..McpLog::default()
                    };
                    *super::lock(&self.mcp_log) = mark;
                }
            }
            AgentState::Running => {
                let mark = super::lock(&self.mcp_log).clone();
                if mark.read_for == Some(pid) {
                    return;
                }
                // A start the watcher did not see begin: nothing known.
                let failures = if mark.started == Some(pid) {
                    let from = mark.offset;
                    crate::identity::spawn_as_agent(move || failures(&home, from))
                        .await
                        .unwrap_or_default()
                } else {
                    BTreeMap::new()
                };
                *super::lock(&self.mcp_log) = McpLog {
                    read_for: Some(pid),
                    failures,
                    ..mark
                };
            }
            _ => {}
        }
    }

    /// The error gateway `pid` logged for connection `name` at its start.
    pub(super) fn mcp_failure(&self, pid: Option<u32>, name: &str) -> Option<String> {
        let log = super::lock(&self.mcp_log);
        if pid.is_none() || log.read_for != pid {
            return None;
        }
        log.failures.get(name).cloned()
    }
}

/// Where the log stood at the last gateway start, and what that start
/// failed to connect.
#[derive(Debug, Clone, Default)]
pub(super) struct McpLog {
    started: Option<u32>,
    offset: u64,
    read_for: Option<u32>,
    failures: BTreeMap<String, String>,
}
