//! Only the gateway the daemon started gets the gateway key.
//!
//! Before any request to the gateway's port the daemon checks who holds
//! the port: every TCP socket in `LISTEN` that a connection to
//! `127.0.0.1:PORT` could reach (local address `127.0.0.1`, `0.0.0.0`,
//! `::` unless `IPV6_V6ONLY`, or `::ffff:127.0.0.1`; read from the
//! kernel's socket diagnostics, [`super::sock_diag`], else from
//! `/proc/self/net/tcp{,6}`) must be open in the gateway process itself
//! (`socket:[INODE]` in `/proc/CHILD/fd`). A
//! process that bound the port first (before the gateway started, or after
//! it died), or one that shares it (`SO_REUSEPORT`), fails the check, and
//! no key, prompt or health probe is sent to it.
//!
//! Who is credited: the supervised child alone, the pid the supervisor
//! spawned and has not reaped, and only while that pid is still the
//! process it spawned (its start time, field 22 of `/proc/PID/stat`, read
//! again after the descriptor walk: a pid cannot be reused while its
//! process lives, so a match after the walk means the walk read the
//! gateway's own table). Not its process group, not the agent's cgroup:
//! those hold the agent's own tools, which run what strangers' text asks
//! for as the gateway's user. hermes-agent 0.19.0 closes its API listener
//! first on SIGTERM and exits later, so a tool could `kill -TERM` the
//! gateway and bind the port in between; crediting the group or the cgroup
//! let that listener pass.
//!
//! Why the child itself is the listener's process, for every supported
//! start path (checked against hermes-agent 0.19.0): the daemon executes
//! the command directly (no shell, `env` or `setpriv`: the identity switch
//! is done between fork and exec, [`super::process::spawn`]); a release's
//! or a venv's `bin/hermes` is a pip console script whose shebang (or, for
//! a long interpreter path, `/bin/sh` `exec` trampoline) runs Python in
//! place; `hermes gateway run` serves the API in-process
//! (`asyncio.run(start_gateway())` in `hermes_cli/gateway.py`,
//! `web.TCPSite` in `gateway/platforms/api_server.py`, no `reuse_port`).
//! A command that forks and leaves the gateway in a grandchild (`uv run`,
//! a shell script without `exec`) is not supported: its port is refused as
//! foreign, the gateway never gets a request (docs/agent.md "Limits"). Python
//! sockets are not inheritable (PEP 446), so the gateway's tool
//! subprocesses do not share its listener; one that did would be using
//! the gateway's own socket, not an impostor's.
//!
//! Why this and not the socket's uid: in production the gateway runs as
//! the agent's user, and so does the agent's own shell, which is exactly
//! the impostor to keep out. Why not hand the gateway a socket the daemon
//! bound: hermes-agent 0.19.0 binds its API port itself
//! (`web.TCPSite(host, port)` in `gateway/platforms/api_server.py`) and
//! cannot take an inherited socket.
//!
//! Reading another user's `/proc/PID/fd` is a ptrace-read check with the
//! caller's *filesystem* ids (`proc(5)`, `PTRACE_MODE_READ_FSCREDS`): the
//! walk runs as the agent ([`crate::identity::as_agent`]: `setfsuid`/
//! `setfsgid`, allowed by `CAP_SETUID`/`CAP_SETGID`), so no
//! `CAP_SYS_PTRACE` or `CAP_DAC_READ_SEARCH` is needed. A gateway that
//! made itself non-dumpable cannot be inspected and fails the check
//! (closed).
//!
//! A set of listeners must include one that surely takes 127.0.0.1
//! ([`Listeners::takes_v4`]); a lone `::` whose `IPV6_V6ONLY` is unknown
//! (read from `/proc`) is not listening as far as the daemon is concerned.
//!
//! Cheap: the listeners are read on every call (one netlink dump of the
//! listening sockets alone; `/proc/self/net/tcp` lists every TCP socket
//! and costs milliseconds once there are hundreds, BENCHMARKS.md); the
//! descriptor walk runs only when they differ from the last verified ones
//! (inode and cookie), the gateway changed, or a connection failed.
//!
//! The moment between a check and the connection it allows (the gateway
//! dying and an impostor binding within it) is closed by
//! [`super::gateway_connect`]: each new connection is confirmed against
//! the verified listeners ([`KeyGate::confirm`]) once it is established,
//! before any byte is written. What is left is what no socket check can
//! see: whatever runs inside the gateway process is the gateway (a process
//! allowed to ptrace it, its own user where Yama does not forbid it; code
//! the gateway loads from the agent-writable Hermes home, such as a user
//! plugin enabled in `config.yaml`). Socket inode
//! numbers are 32-bit and recur after 2^32 allocations (`get_next_ino`);
//! the cookie beside each (64-bit, never reused) tells a recurring number
//! from the verified socket, but the walk of `/proc/PID/fd` sees inodes
//! only, so a gateway process holding any socket under the same number
//! would pass it (and without netlink there are no cookies at all).

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use reqwest::header::HeaderValue;
use tokio::sync::watch;

use crate::agent::AgentStatus;

pub use super::port_listeners::{Listeners, listeners, port_held, proc_listeners};
use super::process;

/// Most descriptors looked at per process.
const MAX_FDS: usize = 65_536;

/// Why the key was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no gateway process is running")]
    NoGateway,
    #[error("the gateway is not listening on port {0} yet")]
    NotListening(u16),
    #[error("port {0} on 127.0.0.1 is held by a process the daemon did not start")]
    Foreign(u16),
    #[error("cannot check who holds the gateway port: {0}")]
    Unreadable(String),
    /// A new connection was dropped before any byte was sent: the port's
    /// listeners were not the verified ones once it was established.
    #[error("the gateway port {0} changed hands while the daemon connected to it")]
    Changed(u16),
}

impl Refusal {
    /// `true` when something else holds the port (as opposed to the
    /// gateway not being there yet).
    pub fn is_foreign(&self) -> bool {
        matches!(self, Refusal::Foreign(_) | Refusal::Unreadable(_))
    }
}

/// `Ok` when every inode in `inodes` is open in one of `pids`. Blocking;
/// reads the agent's `/proc/PID/fd`, so call it as the agent
/// ([`crate::identity::as_agent`]).
pub fn held_by(port: u16, inodes: &[u64], pids: &[u32]) -> Result<(), Refusal> {
    let mut unseen: BTreeSet<u64> = inodes.iter().copied().collect();
    let mut denied = None;
    for &pid in pids {
        if unseen.is_empty() {
            break;
        }
        match remove_open_sockets(pid, &mut unseen) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => denied = Some(format!("process {pid}: {e}")),
        }
    }
    match (unseen.is_empty(), denied) {
        (true, _) => Ok(()),
        (false, Some(why)) => Err(Refusal::Unreadable(why)),
        (false, None) => Err(Refusal::Foreign(port)),
    }
}

fn remove_open_sockets(pid: u32, unseen: &mut BTreeSet<u64>) -> io::Result<()> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))?;
    for entry in dir.take(MAX_FDS) {
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        if let Some(i) = inode {
            unseen.remove(&i);
            if unseen.is_empty() {
                break;
            }
        }
    }
    Ok(())
}

/// The supervised child: its pid and, when the supervisor published it,
/// its start time (so a recycled pid is not taken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    pub pid: u32,
    pub start_time: Option<u64>,
}

impl Child {
    /// Alive and still the process the supervisor spawned. Blocking;
    /// reads the agent's `/proc/PID/stat`.
    fn is_alive(self) -> bool {
        process::is_alive(self.pid, self.start_time)
    }
}

/// The gateway's child now, from the supervisor's status.
fn current_child(status: &watch::Receiver<AgentStatus>) -> Option<Child> {
    let st = status.borrow();
    st.pid.map(|pid| Child {
        pid,
        start_time: st.pid_start_time,
    })
}

/// What was last verified: these listening sockets are open in the
/// gateway's child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    port: u16,
    child: Child,
    listeners: Listeners,
}

/// `Ok` when every listener in `inodes` is open in the child itself and
/// the child is still the process the supervisor spawned after the walk
/// (see the module doc). Blocking; call it as the agent.
fn held_by_child(port: u16, inodes: &[u64], child: Child) -> Result<(), Refusal> {
    // A dead (or reaped and reused) child holds nothing of ours.
    if !child.is_alive() {
        return Err(Refusal::NoGateway);
    }
    let held = held_by(port, inodes, &[child.pid]);
    // Alive after the walk: it was the child throughout, so the walk read
    // the child's own descriptors.
    if !child.is_alive() {
        return Err(Refusal::NoGateway);
    }
    held
}

/// The gate in front of the gateway key: [`KeyGate::bearer`] is the only
/// way to the `Authorization` header, and it answers only after the check.
pub struct KeyGate {
    port: Option<u16>,
    bearer: Option<HeaderValue>,
    status: watch::Receiver<AgentStatus>,
    verified: tokio::sync::Mutex<Option<Verified>>,
    /// Set while refusing, so a refusal episode logs one line.
    refusing: AtomicBool,
    /// Reads of the port's listeners so far ([`KeyGate::listener_reads`]).
    reads: AtomicU64,
}

impl std::fmt::Debug for KeyGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyGate")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl KeyGate {
    /// `status` gives the child's pid (the supervisor publishes it).
    pub fn new(port: Option<u16>, key: &str, status: watch::Receiver<AgentStatus>) -> KeyGate {
        let bearer = HeaderValue::from_str(&format!("Bearer {key}"))
            .ok()
            .map(|mut h| {
                h.set_sensitive(true);
                h
            });
        KeyGate {
            port,
            bearer,
            status,
            verified: tokio::sync::Mutex::new(None),
            refusing: AtomicBool::new(false),
            reads: AtomicU64::new(0),
        }
    }

    /// `Ok` when the port is held by the gateway the daemon started.
    pub async fn check(&self) -> Result<(), Refusal> {
        self.verify().await.map(drop)
    }

    /// [`KeyGate::check`], returning what it verified.
    pub async fn verify(&self) -> Result<Verified, Refusal> {
        let port = self
            .port
            .ok_or_else(|| Refusal::Unreadable("the gateway address has no port".into()))?;
        let child = current_child(&self.status).ok_or(Refusal::NoGateway)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let found = tokio::task::spawn_blocking(move || listeners(port))
            .await
            .map_err(|e| Refusal::Unreadable(e.to_string()))?
            .map_err(|e| Refusal::Unreadable(e.to_string()))?;
        // A lone `::` listener of unknown IPV6_V6ONLY (from /proc) may
        // leave 127.0.0.1 free for anyone to take, and the gateway is not
        // where the daemon connects anyway (asyncio makes every IPv6
        // listener V6ONLY; the gateway is told API_SERVER_HOST=127.0.0.1).
        if !found.takes_v4 {
            return Err(Refusal::NotListening(port));
        }
        let seen = Verified {
            port,
            child,
            listeners: found,
        };
        let mut verified = self.verified.lock().await;
        if verified.as_ref() == Some(&seen) {
            return Ok(seen);
        }
        *verified = None;
        let inodes = seen.listeners.inodes();
        let result = crate::identity::spawn_as_agent(move || held_by_child(port, &inodes, child))
            .await
            .map_err(|e| Refusal::Unreadable(e.to_string()))
            .and_then(|r| r);
        match &result {
            Ok(()) => {
                *verified = Some(seen.clone());
                if self.refusing.swap(false, Ordering::Relaxed) {
                    tracing::info!(port, "the gateway port is held by the gateway again");
                }
            }
            Err(Refusal::NoGateway | Refusal::NotListening(_)) => {}
            Err(e) => {
                if !self.refusing.swap(true, Ordering::Relaxed) {
                    tracing::error!(port, pid = child.pid, reason = %e, "not talking to the gateway port: it is not held by the gateway the daemon started");
                }
            }
        }
        result.map(|()| seen)
    }

    /// What [`KeyGate::confirm`] compares a new connection against, taken
    /// before it is started: the last verification when it is for the
    /// current child (the request's own pre-check, [`KeyGate::bearer`] or
    /// [`KeyGate::check`], has just made or matched it), else a fresh
    /// [`KeyGate::verify`]. Reusing it spares a read of the listeners per
    /// new connection (two instead of three) and opens no window: the
    /// confirm reads them after the connect, and a listener found in the
    /// verification and again after the connect (same inode and cookie)
    /// lived throughout, whenever the verification was.
    pub async fn before_connect(&self) -> Result<Verified, Refusal> {
        let child = current_child(&self.status);
        if let Some(v) = self.verified.lock().await.as_ref() {
            if Some(v.child) == child {
                return Ok(v.clone());
            }
        }
        self.verify().await
    }

    /// After a new connection to the port is established and before any
    /// byte goes on it: `Ok` when the port's listeners are still exactly
    /// `before` (verified before the connection was started) and its
    /// gateway is still alive. A socket lives once: a listener found
    /// before and after lived throughout, and while it did nothing else
    /// could listen where the connection landed ([`Listeners::takes_v4`]),
    /// so the connection is queued on it, whoever accepts it later.
    /// Otherwise the connection is dropped and whoever holds the port now
    /// is checked again: a foreign holder is that refusal; the gateway
    /// itself (it restarted meanwhile) is [`Refusal::Changed`], worth a
    /// retry.
    pub async fn confirm(&self, before: &Verified) -> Result<(), Refusal> {
        let (port, child) = (before.port, before.child);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let (now, alive) = tokio::task::spawn_blocking(move || {
            let now = listeners(port);
            // The agent's /proc entries are visible to the agent only.
            let alive = crate::identity::as_agent(|| child.is_alive());
            (now, alive)
        })
        .await
        .map_err(|e| Refusal::Unreadable(e.to_string()))?;
        let now = now.map_err(|e| Refusal::Unreadable(e.to_string()))?;
        if alive && now == before.listeners {
            return Ok(());
        }
        *self.verified.lock().await = None;
        tracing::warn!(
            port,
            pid = child.pid,
            "dropped a new connection to the gateway port before sending anything: its listener changed between the check and the connection"
        );
        self.check().await?;
        Err(Refusal::Changed(port))
    }

    /// `Bearer <key>` (sensitive), after [`KeyGate::check`].
    pub async fn bearer(&self) -> Result<HeaderValue, Refusal> {
        self.check().await?;
        self.bearer
            .clone()
            .ok_or_else(|| Refusal::Unreadable("the gateway key is not a valid header".into()))
    }

    /// How many times the gate has read the port's listeners (the cost
    /// the bench and the tests count: one per kept-alive request, two per
    /// new connection).
    pub fn listener_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Forget the last verification (a connection failed: whoever holds
    /// the port now is checked again before the next request).
    pub fn invalidate(&self) {
        if let Ok(mut v) = self.verified.try_lock() {
            *v = None;
        }
    }
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;

    /// A listener on `port` in another process (own process group, so
    /// not one of this test's "gateway" processes): `python3`, which
    /// accepts one connection, reports how many bytes it got, and keeps
    /// listening until stopped.
    pub(crate) struct Impostor {
        child: std::process::Child,
        out: std::io::BufReader<std::process::ChildStdout>,
    }

    pub(crate) fn spawn_impostor(port: u16) -> Impostor {
        let script = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1',{port}))\ns.listen()\nprint('ready',flush=True)\nc,_=s.accept()\nn=0\nwhile True:\n  try:\n    b=c.recv(65536)\n  except OSError:\n    break\n  if not b:\n    break\n  n+=len(b)\nprint(n,flush=True)\nimport time\ntime.sleep(120)\n"
        );
        let (child, out, line) = python_leading_its_group(&script);
        assert_eq!(line.trim(), "ready");
        Impostor { child, out }
    }

    /// `python3 -c script` leading its own process group (as the
    /// supervisor spawns the gateway), and the first line it printed.
    fn python_leading_its_group(
        script: &str,
    ) -> (
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
        String,
    ) {
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("python3");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("first line");
        (child, out, line)
    }

    impl Impostor {
        /// Bytes read from the first connection, once it closed.
        pub(crate) fn received(&mut self) -> Option<usize> {
            let mut line = String::new();
            self.out.read_line(&mut line).ok()?;
            line.trim().parse().ok()
        }

        pub(crate) fn stop(mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn a_listener_in_this_process_is_found_and_attributed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let found = listeners(port).expect("read /proc");
        assert!(found.takes_v4);
        let inodes = found.inodes();
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        // The same socket as /proc names it, with a cookie /proc lacks.
        let from_proc = proc_listeners(port).expect("read /proc");
        assert_eq!(from_proc.inodes(), inodes);
        assert_ne!(found.sockets[0].1, 0, "a cookie from sock_diag");
        let me = std::process::id();
        assert_eq!(held_by(port, &inodes, &[me]), Ok(()));
        // Not held by a process that is not this one.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let r = held_by(port, &inodes, &[other.id()]);
        let _ = other.kill();
        let _ = other.wait();
        assert_eq!(r, Err(Refusal::Foreign(port)));
        drop(l);
        assert!(listeners(port).expect("read /proc").is_empty());
    }

    pub(crate) fn status_with_pid(pid: Option<u32>) -> watch::Sender<AgentStatus> {
        let mut st = AgentStatus::initial(crate::agent::Desired::Running);
        st.pid = pid;
        watch::channel(st).0
    }

    #[tokio::test]
    async fn the_gate_checks_again_when_the_listener_changes_hands() {
        // This test process plays the gateway.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let status = status_with_pid(Some(std::process::id()));
        let gate = KeyGate::new(Some(port), "gate-test-key-0123456789", status.subscribe());
        let bearer = gate.bearer().await.expect("our own listener");
        assert!(bearer.is_sensitive());
        assert_eq!(
            bearer.to_str().ok(),
            Some("Bearer gate-test-key-0123456789")
        );
        assert_eq!(gate.check().await, Ok(()), "cached");

        // The listener goes; another process (own group, so not one of
        // "ours") takes the port.
        drop(l);
        assert_eq!(gate.check().await, Err(Refusal::NotListening(port)));
        let impostor = spawn_impostor(port);
        let refused = gate.bearer().await;
        impostor.stop();
        assert_eq!(refused, Err(Refusal::Foreign(port)));

        // No gateway process: nothing to check against.
        status.send_modify(|s| s.pid = None);
        assert_eq!(gate.check().await, Err(Refusal::NoGateway));
    }

    /// A "gateway" leading its own process group (as the supervisor spawns
    /// it) that holds no listener, and its subprocess in the same group
    /// (the agent's shell tool) listening on a port: the gateway's port,
    /// taken by the tool after the gateway closed its listener. Returns
    /// the gateway and the port.
    fn spawn_gateway_whose_tool_holds_the_port() -> (std::process::Child, u16) {
        let tool = "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ntime.sleep(120)";
        let gateway = format!(
            "import subprocess,sys,time\nsubprocess.Popen([sys.executable,'-c',{tool:?}])\ntime.sleep(120)"
        );
        // The tool inherits the gateway's stdout and prints its port there.
        let (gw, _out, line) = python_leading_its_group(&gateway);
        (gw, line.trim().parse().expect("port"))
    }

    #[tokio::test]
    async fn a_listener_of_another_process_in_the_gateways_group_is_foreign() {
        let (mut gw, port) = spawn_gateway_whose_tool_holds_the_port();
        let status = status_with_pid(Some(gw.id()));
        let gate = KeyGate::new(Some(port), "gate-test-key-0123456789", status.subscribe());
        let refused = gate.bearer().await;
        let alive = process::is_alive(gw.id(), None);
        // SAFETY: plain syscall on the group this test created.
        unsafe { libc::kill(-(gw.id() as libc::pid_t), libc::SIGKILL) };
        let _ = gw.wait();
        assert!(alive, "the gateway was alive throughout");
        assert_eq!(refused.err(), Some(Refusal::Foreign(port)));
    }

    #[tokio::test]
    async fn a_pid_that_is_no_longer_the_spawned_process_holds_nothing() {
        // This test process plays the gateway; the status names its pid
        // with another start time (the gateway died, its pid was reused).
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let me = process::stat(std::process::id()).expect("own stat");
        let status = status_with_pid(Some(std::process::id()));
        status.send_modify(|s| s.pid_start_time = Some(me.start_time + 1));
        let gate = KeyGate::new(Some(port), "gate-test-key-0123456789", status.subscribe());
        assert_eq!(gate.check().await, Err(Refusal::NoGateway));
        status.send_modify(|s| s.pid_start_time = Some(me.start_time));
        assert_eq!(gate.check().await, Ok(()));
    }
}

/// The production shape, checked by hand (it needs two users): the
/// gateway's listener owned by another uid, the checker a non-root user
/// holding only `CAP_SETUID`/`CAP_SETGID`. See docs/agent.md "Gateway link".
#[cfg(test)]
mod cross_user {
    use super::*;

    #[test]
    #[ignore = "run by hand as a non-root user with ambient CAP_SETUID/CAP_SETGID"]
    fn another_users_listener_is_attributed_with_setfsuid_only() {
        let var = |k: &str| -> u32 {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} not set"))
        };
        let (port, pid) = (var("GW_SOCKET_PORT") as u16, var("GW_SOCKET_PID"));
        let uid = var("GW_SOCKET_UID").to_string();
        let agent = crate::identity::resolve(Some(&uid), Some(&uid)).expect("identity");
        crate::identity::set_agent(agent);
        let inodes = listeners(port).expect("read /proc").inodes();
        assert!(!inodes.is_empty(), "nothing listens on {port}");
        let other = var("GW_SOCKET_OTHER_PID");
        let (mine, not_mine) = crate::identity::as_agent(|| {
            (
                held_by(port, &inodes, &[pid]),
                held_by(port, &inodes, &[other]),
            )
        });
        assert_eq!(mine, Ok(()));
        // A process of the same user that does not hold it: refused.
        assert_eq!(not_mine, Err(Refusal::Foreign(port)));
    }
}
