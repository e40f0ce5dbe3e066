//! The gateway at the operating-system level: spawn it in its own process
//! group with a parent-death signal, signal its group, read its identity
//! from `/proc`, and find gateways a previous daemon left behind.
//!
//! Every signal the daemon sends goes through this file.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// How to start the gateway.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Variables removed from the inherited environment (by prefix).
    pub remove_prefixes: Vec<String>,
    pub workdir: PathBuf,
    /// Run as this uid/gid (the agent's own user), dropping every
    /// capability; `None`: the daemon's own user.
    pub run_as: Option<(u32, u32)>,
}

/// A spawned gateway.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot).
    pub start_time: u64,
}

/// Resolve the program: a bare name is looked up in the virtualenv's `bin/`
/// first, then in `PATH`.
pub fn resolve_program(name: &str, venv: Option<&Path>) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let mut dirs: Vec<PathBuf> = venv.map(|v| v.join("bin")).into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The gateway's `oom_score_adj`: above system services (0) and far above
/// the daemon (-500 from the systemd unit).
const GATEWAY_OOM_SCORE_ADJ: &[u8] = b"300";

/// What systemd hands the daemon itself: its notification socket, watchdog
/// and socket-activation variables. Not passed on, so that nothing the
/// gateway (or a tool it runs) does can speak for the daemon's unit.
const SERVICE_MANAGER_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// Spawn the gateway in a new process group (its pid is the group id),
/// with `SIGKILL` as its parent-death signal, stdin closed and stdout and
/// stderr piped. With `cgroup_procs` (the agent cgroup's `cgroup.procs`)
/// the child enters that cgroup before anything else, while it still has
/// the daemon's credentials; with `spec.run_as` it then becomes the agent's
/// user and group and drops every capability before it executes the
/// gateway.
///
/// Must be called from a thread that lives as long as the daemon (an async
/// worker, not the blocking pool): Linux delivers the parent-death signal
/// when the spawning *thread* exits.
pub fn spawn(spec: &SpawnSpec, cgroup_procs: Option<&OwnedFd>) -> io::Result<Spawned> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    // As another user, the working directory (the agent's home) may be
    // closed to the daemon: change into it after the switch.
    let chdir_after = match spec.run_as {
        Some(_) => Some(
            std::ffi::CString::new(spec.workdir.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::other("the working directory contains a NUL byte"))?,
        ),
        None => {
            cmd.current_dir(&spec.workdir);
            None
        }
    };
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if SERVICE_MANAGER_ENV.contains(&name.as_ref())
            || spec
                .remove_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
        {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let parent = std::process::id() as libc::pid_t;
    let cgroup_fd = cgroup_procs.map(|fd| fd.as_raw_fd());
    let run_as = spec.run_as;
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (write, setgroups, setresgid, setresuid,
    // prctl, chdir, getppid, open, close), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = cgroup_fd {
                // "0" moves the writing process. Refused = not contained:
                // do not run at all.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // The unit lowers the daemon's OOM score (OOMScoreAdjust=-500) and
            // children inherit it: raise the gateway's (no privilege needed to
            // raise) so the OOM killer takes the agent and its tools first.
            // Before the switch to the agent's user: afterwards the process
            // is not dumpable until it executes, and /proc/self is root's.
            // A daemon started with ambient capabilities is not dumpable
            // either (its /proc/self is root's too): this child makes itself
            // dumpable for the write; the switch below clears it again and
            // the exec sets it as for any program.
            // Best effort: a failure leaves the inherited value.
            if run_as.is_some() {
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
            }
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                let _ = libc::write(
                    fd,
                    GATEWAY_OOM_SCORE_ADJ.as_ptr().cast(),
                    GATEWAY_OOM_SCORE_ADJ.len(),
                );
                libc::close(fd);
            }
            if let Some((uid, gid)) = run_as {
                let groups = [gid as libc::gid_t];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // Ambient capabilities would survive the exec: drop them,
                // and never let the agent gain privileges again (setuid
                // binaries, file capabilities).
                if libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL,
                    0,
                    0,
                    0,
                ) != 0
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // And every other set: the exec would drop the permitted
                // and effective ones, but the inheritable set would reach
                // the agent (harmless under no_new_privs, and no business
                // of the agent's).
                if drop_all_capabilities() != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(dir) = &chdir_after {
                    if libc::chdir(dir.as_ptr()) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            // After the credential change: changing ids clears it.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The daemon died between fork and prctl: do not outlive it.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the gateway exited before its pid was read"))?;
    let start_time = stat(pid).map(|s| s.start_time).unwrap_or(0);
    Ok(Spawned {
        child,
        pid,
        start_time,
    })
}

/// What the daemon needs from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub start_time: u64,
}

/// Parse `/proc/PID/stat`; `None` when the process is gone.
pub fn stat(pid: u32) -> Option<ProcStat> {
    // As the agent: with `ProtectProc=invisible` the agent's processes are
    // visible only to its own (file-system) uid.
    let text =
        crate::identity::as_agent(|| std::fs::read_to_string(format!("/proc/{pid}/stat"))).ok()?;
    parse_stat(&text)
}

/// Fields after the command name (which may hold spaces and parentheses):
/// 3 state, 4 ppid, 5 pgrp, ..., 22 starttime.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// `true` when `pid` exists, is not a zombie, and (if given) started at
/// `start_time` — so a recycled pid is not mistaken for the gateway.
pub fn is_alive(pid: u32, start_time: Option<u64>) -> bool {
    match stat(pid) {
        Some(s) => s.state != 'Z' && start_time.is_none_or(|t| t == s.start_time),
        None => false,
    }
}

fn own_pgrp() -> u32 {
    // SAFETY: getpgrp has no preconditions.
    unsafe { libc::getpgrp() as u32 }
}

/// Send `sig` to process group `pgid`. Refuses group ids that would hit
/// everything (`<= 1`) or the daemon's own group. `false` when no process
/// was signalled.
pub fn signal_group(pgid: u32, sig: libc::c_int) -> bool {
    if pgid <= 1 || pgid == own_pgrp() || pgid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: plain syscall; the guard above keeps the target a real group.
    unsafe { libc::kill(-(pgid as libc::pid_t), sig) == 0 }
}

/// Send `sig` to one process.
pub fn signal_pid(pid: u32, sig: libc::c_int) -> bool {
    if pid <= 1 || pid == std::process::id() || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: plain syscall on a checked pid.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Live (non-zombie) processes of this daemon's gateway: those in process
/// group `pgid` (if given) and those whose environment carries `marker`
/// (`HERMES_MANAGED_DIR=...`, unique to this daemon's data directory and
/// inherited by every descendant). Blocking: reads `/proc`.
pub fn find_gateway_processes(pgid: Option<u32>, marker: &str) -> Vec<(u32, ProcStat)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some(st) = stat(pid) else { continue };
        if st.state == 'Z' {
            continue;
        }
        let in_group = pgid.is_some_and(|g| g > 1 && st.pgrp == g);
        if in_group || environ_has(pid, marker) {
            found.push((pid, st));
        }
    }
    found
}

fn environ_has(pid: u32, marker: &str) -> bool {
    match crate::identity::as_agent(|| std::fs::read(format!("/proc/{pid}/environ"))) {
        Ok(bytes) => bytes.split(|b| *b == 0).any(|e| e == marker.as_bytes()),
        Err(_) => false,
    }
}

/// Signal the process groups in `procs`; a process that shares the
/// daemon's own group (or has none) is signalled alone.
pub fn signal_all(procs: &[(u32, ProcStat)], sig: libc::c_int) {
    let mine = own_pgrp();
    let groups: BTreeSet<u32> = procs
        .iter()
        .map(|(_, s)| s.pgrp)
        .filter(|g| *g > 1 && *g != mine)
        .collect();
    for g in &groups {
        signal_group(*g, sig);
    }
    for (pid, s) in procs {
        if s.pgrp <= 1 || s.pgrp == mine {
            signal_pid(*pid, sig);
        }
    }
}

/// The planned-stop marker the gateway reads on SIGTERM
/// (`HERMES_HOME/.gateway-planned-stop.json`), written atomically.
pub fn write_planned_stop(hermes_home: &Path, pid: u32, start_time: u64) -> io::Result<()> {
    let body = serde_json::json!({
        "target_pid": pid,
        "target_start_time": start_time,
        "stopper_pid": std::process::id(),
        "written_at": chrono::Utc::now().to_rfc3339(),
    });
    // The home is the agent's: a symlink or anything else planted at the
    // marker's name is removed (never followed), then the marker written.
    let home = crate::dir_handle::DirHandle::open_home(hermes_home)?;
    home.remove(Path::new(PLANNED_STOP_FILE))?;
    home.write_atomic(
        Path::new(PLANNED_STOP_FILE),
        body.to_string().as_bytes(),
        0o600,
    )
}

/// Remove the planned-stop marker (never following what is there).
pub fn remove_planned_stop(hermes_home: &Path) -> io::Result<()> {
    crate::dir_handle::DirHandle::open_home(hermes_home)?.remove(Path::new(PLANNED_STOP_FILE))
}

/// Name of the gateway's planned-stop marker in its home.
pub const PLANNED_STOP_FILE: &str = ".gateway-planned-stop.json";

/// `capset(2)` with every set empty, for the calling thread (the child
/// between fork and exec: one raw syscall, async-signal-safe). Returns the
/// syscall's result.
fn drop_all_capabilities() -> libc::c_long {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: a valid header and two data structs, as capset(2) v3 takes.
    unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_handles_spaces_and_parens_in_the_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).expect("parse");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn own_process_reads_as_alive_and_group_guards_hold() {
        let me = std::process::id();
        let s = stat(me).expect("own stat");
        assert!(is_alive(me, Some(s.start_time)));
        assert!(!is_alive(me, Some(s.start_time + 1)));
        assert!(!signal_group(0, 0));
        assert!(!signal_group(1, 0));
        assert!(!signal_group(own_pgrp(), 0));
    }
}
