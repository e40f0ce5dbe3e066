//! The listening sockets a connection to `127.0.0.1:PORT` could reach:
//! what the key gate ([`super::gateway_socket`]) checks against the
//! gateway's descriptors, and what the supervisor reads before a spawn to
//! see whether the port is taken. From the kernel's socket diagnostics
//! ([`super::sock_diag`]: listeners only, with cookies and
//! `IPV6_V6ONLY`), else from `/proc/self/net/tcp{,6}` (every TCP socket:
//! milliseconds once there are hundreds; no cookies; a `::` listener only
//! maybe reachable). Blocking unless async.

use std::io::{self, Read};

/// Largest `/proc/net/tcp{,6}` read (about 50,000 sockets): past it the
/// answer would be partial, so the check fails instead.
const MAX_TABLE_BYTES: u64 = 8 * 1024 * 1024;
/// `/proc/net/tcp` state of a listening socket.
const TCP_LISTEN: &str = "0A";

/// The listening sockets a connection to `127.0.0.1:port` could reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners {
    /// (inode, cookie) of each, sorted; a pair read twice is kept twice
    /// (two live sockets share an inode number only after the 32-bit
    /// counter wrapped: the sets then differ instead of looking alike).
    /// The cookie is 0 when read from `/proc`, which does not show it.
    pub sockets: Vec<(u64, u64)>,
    /// One of them surely takes IPv4 loopback (`127.0.0.1`, `0.0.0.0`,
    /// `::ffff:127.0.0.1`, `::` known not `IPV6_V6ONLY`). While such a
    /// socket listens, no other socket can listen where a connection to
    /// `127.0.0.1:port` lands (Linux refuses the bind or the `listen`,
    /// `SO_REUSEADDR` or not, unless both set `SO_REUSEPORT`). A `::`
    /// socket read from `/proc` proves nothing: it may be `IPV6_V6ONLY`
    /// (which the table does not show; Python's asyncio sets it on every
    /// IPv6 listener), leaving 127.0.0.1 free for anyone.
    pub takes_v4: bool,
}

impl Listeners {
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn inodes(&self) -> Vec<u64> {
        self.sockets.iter().map(|&(inode, _)| inode).collect()
    }

    fn add(&mut self, inode: u64, cookie: u64, reach: Reach) {
        if reach != Reach::No {
            self.sockets.push((inode, cookie));
            self.takes_v4 |= reach == Reach::Surely;
        }
    }
}

/// The listening sockets a connection to `127.0.0.1:port` could reach:
/// from the kernel's socket diagnostics ([`super::sock_diag`]: listeners
/// only, with cookies and `IPV6_V6ONLY`), else from `/proc`. Blocking.
pub fn listeners(port: u16) -> io::Result<Listeners> {
    match super::sock_diag::tcp_listeners() {
        Ok(all) => {
            let mut out = Listeners::default();
            for l in all.iter().filter(|l| l.port == port) {
                out.add(l.inode, l.cookie, diag_reach(l));
            }
            out.sockets.sort_unstable();
            Ok(out)
        }
        // A kernel without inet_diag, or a sandbox without netlink.
        Err(_) => proc_listeners(port),
    }
}

fn diag_reach(l: &super::sock_diag::Listening) -> Reach {
    match (l.v6, l.addr.as_slice()) {
        (false, [127, 0, 0, 1] | [0, 0, 0, 0]) => Reach::Surely,
        (false, _) => Reach::No,
        (true, a) => {
            let Ok(bytes) = <[u8; 16]>::try_from(a) else {
                return Reach::No;
            };
            let ip = std::net::Ipv6Addr::from(bytes);
            if ip.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST) {
                Reach::Surely
            } else if ip.is_unspecified() {
                match l.v6only {
                    Some(false) => Reach::Surely,
                    Some(true) => Reach::No,
                    None => Reach::Maybe,
                }
            } else {
                Reach::No
            }
        }
    }
}

/// [`listeners`] from `/proc/self/net/tcp{,6}` (every TCP socket: slow
/// when there are many; no cookies; `::` only maybe reachable).
pub fn proc_listeners(port: u16) -> io::Result<Listeners> {
    let mut out = Listeners::default();
    for (path, v6) in [("/proc/self/net/tcp", false), ("/proc/self/net/tcp6", true)] {
        match read_capped(path) {
            Ok(text) => parse_listeners(&text, port, v6, &mut out),
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if v6 && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.sockets.sort_unstable();
    Ok(out)
}

fn read_capped(path: &str) -> io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TABLE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TABLE_BYTES {
        return Err(io::Error::other(format!("{path} is larger than the cap")));
    }
    Ok(text)
}

/// Add the `LISTEN` rows on `port` whose local address accepts
/// connections to 127.0.0.1 (unsorted). Columns: `sl local rem st tx:rx
/// tr:tm retrnsmt uid timeout inode`; addresses are hex words in host
/// order.
pub fn parse_listeners(text: &str, port: u16, v6: bool, out: &mut Listeners) {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().take(10).collect();
        let [_, local, _, state, _, _, _, _, _, inode] = f[..] else {
            continue;
        };
        if state != TCP_LISTEN {
            continue;
        }
        let Some((addr, p)) = local.split_once(':') else {
            continue;
        };
        if u16::from_str_radix(p, 16).ok() != Some(port) {
            continue;
        }
        let reach = if v6 {
            v6_reach(addr)
        } else if v4_word(addr).is_some_and(|a| a == [127, 0, 0, 1] || a == [0, 0, 0, 0]) {
            Reach::Surely
        } else {
            Reach::No
        };
        if let Ok(n) = inode.parse::<u64>() {
            out.add(n, 0, reach);
        }
    }
}

fn v4_word(hex: &str) -> Option<[u8; 4]> {
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
        .map(u32::to_ne_bytes)
}

/// Whether a listener takes connections to 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    No,
    /// `::`: dual-stack unless `IPV6_V6ONLY`, which the table does not
    /// show; counted, so a doubt fails closed.
    Maybe,
    Surely,
}

/// `::` maybe, `::ffff:127.0.0.1` surely (a mapped address cannot be
/// bound `IPV6_V6ONLY`: `EINVAL`).
fn v6_reach(hex: &str) -> Reach {
    if hex.len() != 32 {
        return Reach::No;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        match v4_word(&hex[i * 8..i * 8 + 8]) {
            Some(w) => chunk.copy_from_slice(&w),
            None => return Reach::No,
        }
    }
    let ip = std::net::Ipv6Addr::from(bytes);
    if ip.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST) {
        Reach::Surely
    } else if ip.is_unspecified() {
        Reach::Maybe
    } else {
        Reach::No
    }
}

/// `true` when something listens where the gateway must listen. Reads
/// `/proc` (sends nothing to the port); if that fails, a bare connect.
pub async fn port_held(port: u16) -> bool {
    match tokio::task::spawn_blocking(move || listeners(port)).await {
        Ok(Ok(inodes)) => !inodes.is_empty(),
        _ => {
            let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
            matches!(
                tokio::time::timeout(std::time::Duration::from_millis(250), connect).await,
                Ok(Ok(_))
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:21C2 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 00000000:21C2 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 100 0 0 10 0
   2: 0200007F:21C2 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 100 0 0 10 0
   3: 0100007F:21C2 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 444 1 0000000000000000 100 0 0 10 0
   4: 0100007F:21C3 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 555 1 0000000000000000 100 0 0 10 0
";

    const TABLE6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:21C2 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 666 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:21C2 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:21C2 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 888 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listeners_reachable_at_loopback_on_the_port_count() {
        // 8642 = 0x21C2; the table's words are little-endian on x86/arm.
        if cfg!(target_endian = "little") {
            let mut out = Listeners::default();
            parse_listeners(TABLE, 8642, false, &mut out);
            parse_listeners(TABLE6, 8642, true, &mut out);
            // 127.0.0.1 and 0.0.0.0 yes; 127.0.0.2, an established
            // connection and another port no; [::] and ::ffff:127.0.0.1
            // yes, [::1] no.
            assert_eq!(out.inodes(), vec![111, 222, 666, 777]);
            assert!(out.takes_v4);

            // `::` alone may be V6ONLY: reachable maybe, never proof that
            // 127.0.0.1 is taken.
            let mut only_any6 = Listeners::default();
            let any6 = TABLE6.lines().take(2).collect::<Vec<_>>().join("\n");
            parse_listeners(&any6, 8642, true, &mut only_any6);
            assert_eq!(only_any6.inodes(), vec![666]);
            assert!(!only_any6.takes_v4);
            // ::ffff:127.0.0.1 alone surely takes it.
            let mut mapped = Listeners::default();
            let lines: Vec<&str> = TABLE6.lines().collect();
            parse_listeners(&[lines[0], lines[2]].join("\n"), 8642, true, &mut mapped);
            assert_eq!(mapped.inodes(), vec![777]);
            assert!(mapped.takes_v4);
        }
        let mut none = Listeners::default();
        parse_listeners("header\ngarbage line\n 0: zz:zz", 8642, false, &mut none);
        assert!(none.is_empty());
        assert!(!none.takes_v4);
    }

    #[test]
    fn an_ipv6_only_listener_does_not_count_and_a_dual_stack_one_does() {
        // Python's asyncio makes every IPv6 listener V6ONLY; so does this.
        let mut v6only = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\ns.bind(('::',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ninput()",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(v6only.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("port line");
        let port: u16 = line.trim().parse().expect("port");
        let found = listeners(port);
        let _ = v6only.kill();
        let _ = v6only.wait();
        let found = found.expect("listeners");
        assert!(found.is_empty(), "{found:?}");

        // std leaves IPV6_V6ONLY at the system's default
        // (net.ipv6.bindv6only, 0 unless set: dual-stack).
        let dual = std::net::TcpListener::bind("[::]:0").expect("bind [::]");
        let port = dual.local_addr().expect("addr").port();
        let found = listeners(port).expect("listeners");
        let v6only_default =
            std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "1");
        if !v6only_default {
            assert_eq!(found.sockets.len(), 1, "{found:?}");
            assert!(found.takes_v4, "a dual-stack [::] takes 127.0.0.1");
        }
    }
}
