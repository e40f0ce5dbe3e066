//! Who the agent is at the operating-system level, and acting as it.
//!
//! The gateway runs as its own user and group (`gateway.user`,
//! `gateway.group`; unset = the daemon's own). The daemon touches the
//! agent's files (the Hermes home, the tenant roots) and reads the agent's
//! `/proc` entries **with the agent's file-system identity** (`setfsuid`,
//! `setfsgid` on the calling thread only), so the kernel checks every such
//! access as if the agent made it: a link or permission the agent planted
//! can never give the agent, through the daemon, more than it already has.
//! Needs `CAP_SETUID`/`CAP_SETGID` when the agent is another user (the unit
//! grants them as ambient capabilities); a no-op when it is the same user.

use std::ffi::CString;
use std::sync::OnceLock;

/// The agent's numeric identity and what its processes should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub uid: u32,
    pub gid: u32,
    /// Login name (for `USER`/`LOGNAME`), when the user database has one.
    pub name: Option<String>,
    /// Home directory (for `HOME`), when the user database has one.
    pub home: Option<std::path::PathBuf>,
}

impl AgentIdentity {
    /// `true` when the agent is a different user or group than the daemon:
    /// the gateway's spawn changes credentials and file access switches
    /// identity.
    pub fn is_separate(&self) -> bool {
        let (uid, gid) = own_ids();
        self.uid != uid || self.gid != gid
    }
}

/// Why `gateway.user`/`gateway.group` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no user named `{0}`")]
    NoUser(String),
    #[error("no group named `{0}`")]
    NoGroup(String),
    #[error("`{0}` is not a user or group name")]
    BadName(String),
    #[error("the agent must not run as root (uid/gid 0)")]
    Root,
}

/// The daemon's own real uid and gid.
pub fn own_ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Resolve the configured user and group (names or numeric ids). `None`
/// for both: the daemon's own identity. A user without a group takes the
/// user's primary group.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<AgentIdentity, IdentityError> {
    let (own_uid, own_gid) = own_ids();
    let (uid, primary_gid, name, home) = match user {
        None => {
            let entry = passwd_by_uid(own_uid);
            (
                own_uid,
                own_gid,
                entry.as_ref().map(|e| e.name.clone()),
                entry.map(|e| e.home),
            )
        }
        Some(u) => match u.parse::<u32>() {
            Ok(uid) => {
                let entry = passwd_by_uid(uid);
                let gid = entry.as_ref().map(|e| e.gid).unwrap_or(uid);
                (
                    uid,
                    gid,
                    entry.as_ref().map(|e| e.name.clone()),
                    entry.map(|e| e.home),
                )
            }
            Err(_) => {
                let e = passwd_by_name(u)?.ok_or_else(|| IdentityError::NoUser(u.to_owned()))?;
                (e.uid, e.gid, Some(e.name), Some(e.home))
            }
        },
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_by_name(g)?.ok_or_else(|| IdentityError::NoGroup(g.to_owned()))?,
        },
    };
    if (uid == 0 || gid == 0) && (uid, gid) != (own_uid, own_gid) {
        return Err(IdentityError::Root);
    }
    Ok(AgentIdentity {
        uid,
        gid,
        name,
        home,
    })
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: std::path::PathBuf,
}

fn c_name(name: &str) -> Result<CString, IdentityError> {
    if name.is_empty() || name.len() > 256 {
        return Err(IdentityError::BadName(name.to_owned()));
    }
    CString::new(name).map_err(|_| IdentityError::BadName(name.to_owned()))
}

fn passwd_by_name(name: &str) -> Result<Option<PasswdEntry>, IdentityError> {
    let c = c_name(name)?;
    Ok(passwd_lookup(|pw, buf, len, out| {
        // SAFETY: all pointers are valid for the call; buf has len bytes.
        unsafe { libc::getpwnam_r(c.as_ptr(), pw, buf, len, out) }
    }))
}

fn passwd_by_uid(uid: u32) -> Option<PasswdEntry> {
    passwd_lookup(|pw, buf, len, out| {
        // SAFETY: as above.
        unsafe { libc::getpwuid_r(uid, pw, buf, len, out) }
    })
}

fn passwd_lookup(
    call: impl Fn(
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
) -> Option<PasswdEntry> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain old data; zeroed is a valid starting value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = call(&mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success pw_name/pw_dir point into buf, NUL-terminated.
    let (name, home) = unsafe {
        (
            std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned(),
            std::ffi::CStr::from_ptr(pw.pw_dir)
                .to_string_lossy()
                .into_owned(),
        )
    };
    Some(PasswdEntry {
        name,
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: home.into(),
    })
}

fn group_by_name(name: &str) -> Result<Option<u32>, IdentityError> {
    let c = c_name(name)?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: group is plain old data.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: valid pointers, buf has its length.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Ok(None);
    }
    Ok(Some(gr.gr_gid))
}

// ---- acting as the agent -----------------------------------------------------

static AGENT: OnceLock<AgentIdentity> = OnceLock::new();

/// Record the agent's identity for [`as_agent`] (once, at start-up; later
/// calls are ignored).
pub fn set_agent(identity: AgentIdentity) {
    let _ = AGENT.set(identity);
}

/// The agent's identity, when one was set.
pub fn agent() -> Option<&'static AgentIdentity> {
    AGENT.get()
}

/// Run `f` on this thread with the agent's file-system uid and gid, then
/// restore the daemon's. A no-op wrapper when the agent is the daemon's own
/// user. Blocking callers only (it changes the calling thread's
/// credentials): use it inside `spawn_blocking`, never across an `.await`.
pub fn as_agent<T>(f: impl FnOnce() -> T) -> T {
    let Some(agent) = AGENT.get().filter(|a| a.is_separate()) else {
        return f();
    };
    let _restore = FsIdentity::switch(agent.uid, agent.gid);
    f()
}

/// `spawn_blocking` of `f` run [`as_agent`]: for every blocking task that
/// touches the agent's files (the Hermes home, the tenant roots, `state.db`).
pub fn spawn_as_agent<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(move || as_agent(f))
}

/// Restores the daemon's file-system ids when dropped (also on panic).
struct FsIdentity {
    uid: u32,
    gid: u32,
}

impl FsIdentity {
    fn switch(uid: u32, gid: u32) -> FsIdentity {
        // Restore what this thread had, not the daemon's real ids: an
        // `as_agent` nested in another (a /proc read inside the gateway
        // port check) must leave the outer one's identity in place when it
        // ends. Restoring the real ids there made every later read of the
        // outer scope run as the daemon, which the agent's /proc refuses.
        let previous = FsIdentity {
            uid: current_fsuid(),
            gid: current_fsgid(),
        };
        // SAFETY: setfsgid/setfsuid change only this thread's fs ids; group
        // first, while the uid still has the privilege to change it.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        previous
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        // SAFETY: as above; back to the daemon's own ids.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

/// The calling thread's current file-system uid (read without changing it).
pub fn current_fsuid() -> u32 {
    // setfsuid with an invalid id (-1) changes nothing and returns the
    // current value.
    // SAFETY: plain syscall.
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

/// The calling thread's current file-system gid (read without changing it).
pub fn current_fsgid() -> u32 {
    // SAFETY: as `current_fsuid`.
    unsafe { libc::setfsgid(u32::MAX) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_user_and_group_mean_the_daemons_own() {
        let a = resolve(None, None).expect("own identity");
        assert_eq!((a.uid, a.gid), own_ids());
        assert!(!a.is_separate());
    }

    #[test]
    fn numeric_ids_and_names_resolve_and_unknown_names_are_refused() {
        let (uid, gid) = own_ids();
        let a = resolve(Some(&uid.to_string()), Some(&gid.to_string())).expect("numeric");
        assert_eq!((a.uid, a.gid), (uid, gid));
        assert_eq!(
            resolve(Some("no-such-user-xyzzy"), None),
            Err(IdentityError::NoUser("no-such-user-xyzzy".into()))
        );
        assert_eq!(
            resolve(None, Some("no-such-group-xyzzy")),
            Err(IdentityError::NoGroup("no-such-group-xyzzy".into()))
        );
        assert!(matches!(
            resolve(Some("a\0b"), None),
            Err(IdentityError::BadName(_))
        ));
    }

    #[test]
    fn root_is_refused_as_a_separate_agent() {
        if own_ids().0 == 0 {
            // Running as root: a *separate* root agent is impossible to
            // express; an unprivileged daemon asking for root is refused.
            assert!(resolve(Some("0"), Some("0")).is_ok());
        } else {
            assert_eq!(resolve(Some("0"), None), Err(IdentityError::Root));
        }
    }

    #[test]
    fn as_agent_restores_the_fsuid() {
        let before = current_fsuid();
        let inside = as_agent(current_fsuid);
        assert_eq!(current_fsuid(), before);
        // No agent set in unit tests: same user.
        assert_eq!(inside, before);
    }

    /// A nested `as_agent` (a /proc read inside the gateway port check)
    /// must leave the outer scope acting as the agent. It restored the
    /// daemon's ids instead, so the port check of an unprivileged daemon
    /// never saw its own gateway. Needs CAP_SETUID (root here; nextest
    /// runs each test in its own process, so setting the agent is local).
    #[test]
    fn nested_as_agent_keeps_the_outer_identity() {
        if own_ids().0 != 0 {
            eprintln!("skipped: needs root to switch file-system ids");
            return;
        }
        set_agent(AgentIdentity {
            uid: 64_123,
            gid: 64_124,
            name: None,
            home: None,
        });
        let seen = as_agent(|| {
            let inner = as_agent(|| (current_fsuid(), current_fsgid()));
            (inner, (current_fsuid(), current_fsgid()))
        });
        assert_eq!(seen, ((64_123, 64_124), (64_123, 64_124)));
        assert_eq!((current_fsuid(), current_fsgid()), own_ids());
    }
}
