//! The agent's own cgroup: containment and limits.
//!
//! Under systemd with `Delegate=yes` the unit's cgroup (cgroup v2) belongs
//! to the daemon. At start the daemon moves itself into a `daemon/` leaf
//! (cgroup v2 allows processes only in leaves once controllers are enabled
//! below) and creates an `agent/` leaf for the gateway and every process it
//! starts. Limits (`memory.max`, `pids.max`, `cpu.weight`) go on `agent/`
//! only, so a fork bomb or a runaway allocation in the agent never starves
//! the daemon. Stopping the agent ends with `cgroup.kill`, so nothing it
//! detached (`setsid`, double fork) survives a restart.
//!
//! ```text
//! /sys/fs/cgroup/system.slice/hermes-tenantd.service/   (delegated, daemon-owned)
//!   ├── daemon/   the daemon            cpu.weight 400
//!   └── agent/    gateway + its tools   memory.max, pids.max, cpu.weight
//! ```
//!
//! Without a delegated cgroup v2 (`--dev`, tests, a host without systemd)
//! the supervisor falls back to process groups and says once that the
//! limits are not enforced. Blocking: call from the blocking pool.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{AgentLimits, MemoryMax};

/// Where the cgroup v2 hierarchy is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// `statfs` magic of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `cpu.weight` of the daemon's own leaf: against the agent's (default
/// 100) the daemon gets 80 % of a contended CPU when it needs it.
pub const DAEMON_CPU_WEIGHT: u32 = 400;
const DAEMON_LEAF: &str = "daemon";
const AGENT_LEAF: &str = "agent";

/// How the agent is contained.
#[derive(Debug)]
pub enum Containment {
    /// Its own cgroup (see the module docs).
    Cgroup(AgentCgroup),
    /// Process groups only; `reason` says why no cgroup is used.
    ProcessGroup { reason: String },
}

impl Containment {
    pub fn cgroup(&self) -> Option<&AgentCgroup> {
        match self {
            Containment::Cgroup(c) => Some(c),
            Containment::ProcessGroup { .. } => None,
        }
    }
}

/// The agent's leaf in the daemon's delegated cgroup.
#[derive(Debug)]
pub struct AgentCgroup {
    pub path: PathBuf,
    /// Limits that could not be applied (controller not delegated), by key.
    pub not_enforced: Vec<&'static str>,
    /// What was applied, for the log line.
    pub applied: Vec<String>,
}

/// Set up the layout and limits, or explain why not.
pub fn setup(limits: &AgentLimits) -> Containment {
    match try_setup(Path::new(CGROUP_ROOT), &own_cgroup_path(), limits) {
        Ok(c) => Containment::Cgroup(c),
        Err(reason) => Containment::ProcessGroup { reason },
    }
}

/// This process's cgroup v2 path (`0::/…` in `/proc/self/cgroup`).
fn own_cgroup_path() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    parse_unified_path(&text)
}

/// The path of the unified (v2) hierarchy in a `/proc/PID/cgroup` text.
pub fn parse_unified_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_owned())
        .filter(|p| p.starts_with('/'))
}

fn is_cgroup2(root: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

fn try_setup(
    root: &Path,
    own: &Option<String>,
    limits: &AgentLimits,
) -> Result<AgentCgroup, String> {
    if !is_cgroup2(root) {
        return Err(format!("{} is not a cgroup v2 hierarchy", root.display()));
    }
    let own = own
        .as_deref()
        .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
    // After a re-exec (or a second setup) the daemon already sits in its leaf.
    let base_rel = own
        .strip_suffix(&format!("/{DAEMON_LEAF}"))
        .unwrap_or(own)
        .trim_start_matches('/');
    if base_rel.is_empty() {
        return Err("the daemon runs in the root cgroup (no delegated cgroup)".into());
    }
    let base = root.join(base_rel);
    let daemon = base.join(DAEMON_LEAF);
    let agent = base.join(AGENT_LEAF);
    for dir in [&daemon, &agent] {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "cannot create {} ({e}); the unit needs Delegate=yes",
                    dir.display()
                ));
            }
        }
    }
    write_file(&daemon.join("cgroup.procs"), "0")
        .map_err(|e| format!("cannot move the daemon into {}: {e}", daemon.display()))?;
    let available = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    let mut not_enforced = Vec::new();
    let mut applied = Vec::new();
    let wanted = [
        ("memory", "gateway.memory_max"),
        ("pids", "gateway.tasks_max"),
        ("cpu", "gateway.cpu_weight"),
    ];
    for (controller, key) in wanted {
        let present = available.split_whitespace().any(|c| c == controller);
        let enabled = present
            && write_file(
                &base.join("cgroup.subtree_control"),
                &format!("+{controller}"),
            )
            .is_ok();
        if !enabled {
            not_enforced.push(key);
            continue;
        }
        let result = match controller {
            "memory" => {
                let value = memory_max_value(limits.memory_max, total_memory());
                write_file(&agent.join("memory.max"), &value)
                    .map(|()| format!("memory.max={value}"))
            }
            "pids" => write_file(&agent.join("pids.max"), &limits.tasks_max.to_string())
                .map(|()| format!("pids.max={}", limits.tasks_max)),
            _ => write_file(&agent.join("cpu.weight"), &limits.cpu_weight.to_string())
                .and_then(|()| {
                    write_file(&daemon.join("cpu.weight"), &DAEMON_CPU_WEIGHT.to_string())
                })
                .map(|()| format!("cpu.weight={}", limits.cpu_weight)),
        };
        match result {
            Ok(a) => applied.push(a),
            Err(_) => not_enforced.push(key),
        }
    }
    Ok(AgentCgroup {
        path: agent,
        not_enforced,
        applied,
    })
}

/// `memory.max` text for a limit on a machine with `total` bytes.
pub fn memory_max_value(limit: MemoryMax, total: Option<u64>) -> String {
    match (limit, total) {
        (MemoryMax::Unlimited, _) | (MemoryMax::Percent(_), None) => "max".into(),
        (MemoryMax::Bytes(b), _) => b.to_string(),
        (MemoryMax::Percent(p), Some(t)) => (t / 100 * u64::from(p)).to_string(),
    }
}

fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

fn write_file(path: &Path, text: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(text.as_bytes())
}

impl AgentCgroup {
    /// `cgroup.procs` of the agent's leaf, opened for the spawn: the child
    /// writes `0` to it between fork and exec (still as the daemon's user),
    /// so the gateway starts inside the cgroup and nothing it does can run
    /// outside.
    pub fn procs_for_spawn(&self) -> io::Result<OwnedFd> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.path.join("cgroup.procs"))?;
        Ok(f.into())
    }

    /// Pids in the agent's cgroup.
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// `true` while any process is in the cgroup.
    pub fn populated(&self) -> bool {
        match std::fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(t) => t.lines().any(|l| l.trim() == "populated 1"),
            Err(_) => !self.procs().is_empty(),
        }
    }

    /// SIGKILL every process in the cgroup (`cgroup.kill`, Linux 5.14+;
    /// before that: freeze, kill each listed pid, thaw).
    pub fn kill_all(&self) -> io::Result<()> {
        match write_file(&self.path.join("cgroup.kill"), "1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let freeze = self.path.join("cgroup.freeze");
                let frozen = write_file(&freeze, "1").is_ok();
                for pid in self.procs() {
                    super::process::signal_pid(pid, libc::SIGKILL);
                }
                if frozen {
                    write_file(&freeze, "0")?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_path_is_found_among_v1_lines() {
        let text =
            "12:pids:/system.slice/x.service\n0::/system.slice/hermes-tenantd.service/daemon\n";
        assert_eq!(
            parse_unified_path(text).as_deref(),
            Some("/system.slice/hermes-tenantd.service/daemon")
        );
        assert_eq!(parse_unified_path("3:cpu:/\n"), None);
    }

    #[test]
    fn memory_max_text() {
        assert_eq!(memory_max_value(MemoryMax::Unlimited, Some(1 << 30)), "max");
        assert_eq!(
            memory_max_value(MemoryMax::Bytes(1 << 29), None),
            "536870912"
        );
        assert_eq!(memory_max_value(MemoryMax::Percent(50), Some(1000)), "500");
        assert_eq!(memory_max_value(MemoryMax::Percent(50), None), "max");
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup_hierarchy() {
        let dir = tempfile::tempdir().expect("tmp");
        let limits = crate::config::AgentLimits {
            memory_max: MemoryMax::Unlimited,
            tasks_max: 100,
            cpu_weight: 100,
        };
        let err = try_setup(dir.path(), &Some("/x.service".into()), &limits).expect_err("no v2");
        assert!(err.contains("not a cgroup v2"), "{err}");
    }
}
