//! The host's listening TCP sockets from the kernel's socket diagnostics
//! (`NETLINK_SOCK_DIAG`, `sock_diag(7)`), for the gateway port check.
//!
//! Why not only `/proc/self/net/tcp{,6}`: that file lists every TCP
//! socket (each `TIME_WAIT` too), and reading it is slow once there are
//! many: 8 ms for 600 sockets here, on every request to the gateway
//! (BENCHMARKS.md, "Gateway key gate"). A dump asked for `LISTEN` alone
//! walks only the listening hash. It also says what the file cannot:
//! whether a `::` listener is `IPV6_V6ONLY` (`INET_DIAG_SKV6ONLY`), and the
//! socket's cookie, a 64-bit number never reused while the system runs
//! (inode numbers are 32-bit and recur). Blocking; no privilege needed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const TCP_LISTEN: u32 = 10;
const INET_DIAG_SKV6ONLY: u16 = 11;
/// `struct nlmsghdr`, `struct inet_diag_req_v2`, `struct inet_diag_msg`.
const NLMSG_HDR: usize = 16;
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;
/// Most listeners read: past it the answer would be partial, so it fails.
const MAX_LISTENERS: usize = 65_536;

/// One listening TCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub v6: bool,
    /// The local address: four bytes for IPv4, sixteen for IPv6.
    pub addr: Vec<u8>,
    pub port: u16,
    pub inode: u64,
    pub cookie: u64,
    /// `IPV6_V6ONLY`, for IPv6 sockets.
    pub v6only: Option<bool>,
}

/// Every listening TCP socket of this network namespace, IPv4 and IPv6.
pub fn tcp_listeners() -> io::Result<Vec<Listening>> {
    // SAFETY: plain syscall; the descriptor is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // A kernel that never answers must not hold the check forever.
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: `timeout` is a valid timeval of the size passed.
    let set = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        dump(&fd, family as u8, &mut out)?;
    }
    Ok(out)
}

fn dump(fd: &OwnedFd, family: u8, out: &mut Vec<Listening>) -> io::Result<()> {
    let mut req = [0u8; NLMSG_HDR + REQ_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // SAFETY: sockaddr_nl is plain data; zero is its "the kernel" value.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `req` and `kernel` are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is valid for its length. MSG_TRUNC: the length
        // returned is the datagram's, so a cut one is seen.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(invalid("datagram larger than the buffer"));
        }
        if parse(&buf[..n], out)? {
            return Ok(());
        }
        if out.len() > MAX_LISTENERS {
            return Err(io::Error::other("too many listening sockets"));
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Add the listeners of one datagram; `true` once the dump is done.
pub fn parse(data: &[u8], out: &mut Vec<Listening>) -> io::Result<bool> {
    let mut off = 0;
    while off + NLMSG_HDR <= data.len() {
        let len = u32_at(data, off) as usize;
        let kind = u16_at(data, off + 4);
        if len < NLMSG_HDR || off + len > data.len() {
            return Err(invalid("truncated message"));
        }
        let body = &data[off + NLMSG_HDR..off + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                if body.len() < 4 {
                    return Err(invalid("short error"));
                }
                // 0 is an acknowledgement, not an error.
                let errno = -(u32_at(body, 0) as i32);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
            SOCK_DIAG_BY_FAMILY => out.push(listening(body)?),
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

fn listening(m: &[u8]) -> io::Result<Listening> {
    if m.len() < MSG_LEN {
        return Err(invalid("short socket message"));
    }
    let v6 = m[0] == libc::AF_INET6 as u8;
    let addr = m[8..if v6 { 24 } else { 12 }].to_vec();
    let cookie = u64::from(u32_at(m, 44)) | (u64::from(u32_at(m, 48)) << 32);
    let mut v6only = None;
    let mut at = MSG_LEN;
    while at + 4 <= m.len() {
        let len = usize::from(u16_at(m, at));
        let kind = u16_at(m, at + 2);
        if len < 4 || at + len > m.len() {
            break;
        }
        if kind == INET_DIAG_SKV6ONLY && len >= 5 {
            v6only = Some(m[at + 4] != 0);
        }
        at += (len + 3) & !3;
    }
    Ok(Listening {
        v6,
        addr,
        port: u16::from_be_bytes([m[4], m[5]]),
        inode: u64::from(u32_at(m, 68)),
        cookie,
        v6only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_of_this_process_is_in_the_dump_with_its_cookie() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let all = tcp_listeners().expect("sock_diag");
        let mine: Vec<_> = all.iter().filter(|s| s.port == port).collect();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0].addr, vec![127, 0, 0, 1]);
        assert!(!mine[0].v6 && mine[0].v6only.is_none());
        assert_ne!(mine[0].inode, 0);
        assert_ne!(mine[0].cookie, 0);
        drop(l);
        let after = tcp_listeners().expect("sock_diag");
        assert!(after.iter().all(|s| s.port != port));
    }

    #[test]
    fn a_cut_or_failed_answer_is_an_error_never_a_partial_list() {
        let mut out = Vec::new();
        // A header that claims more than the datagram holds.
        let mut cut = vec![0u8; 20];
        cut[0..4].copy_from_slice(&100u32.to_ne_bytes());
        cut[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(parse(&cut, &mut out).is_err());
        // A socket message shorter than `inet_diag_msg`.
        let mut short = vec![0u8; NLMSG_HDR + 8];
        short[0..4].copy_from_slice(&((NLMSG_HDR + 8) as u32).to_ne_bytes());
        short[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(parse(&short, &mut out).is_err());
        // The kernel's error: EACCES.
        let mut err = vec![0u8; NLMSG_HDR + 4];
        err[0..4].copy_from_slice(&((NLMSG_HDR + 4) as u32).to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EACCES).to_ne_bytes());
        let e = parse(&err, &mut out).expect_err("an error");
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        assert!(out.is_empty());
    }
}
