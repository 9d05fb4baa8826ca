//! What a server process (and its children) costs, read from /proc.

use std::time::Duration;

/// Clock ticks per second of utime/stime in /proc/PID/stat.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// `pid` and every process descending from it (nginx's workers, for instance).
pub(crate) fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        i += 1;
    }
    all
}

/// User + system CPU time of `pid` and its descendants, threads that exited included.
pub(crate) fn cpu(pid: u32) -> Duration {
    let ticks: u64 = family(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which is in parentheses and may contain spaces.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat: 11 and 12 after the name.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    Duration::from_secs_f64(ticks as f64 / ticks_per_second())
}

fn status_sum(pid: u32, field: &str) -> u64 {
    family(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// Resident memory of `pid` and its descendants, in bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    status_sum(pid, "VmRSS:") * 1024
}

/// Threads of `pid` and its descendants.
pub(crate) fn threads(pid: u32) -> u64 {
    status_sum(pid, "Threads:")
}

/// Sockets in CLOSE-WAIT whose local port is `port`, asked of the kernel over netlink
/// (`sock_diag`, the interface `ss` uses) with the state filtered in the kernel.
///
/// Reading /proc/net/tcp instead formats every socket of the machine: with a few thousand
/// connections a read took 35–45 ms, longer than what it measured, and it contends with the
/// server under test for the socket tables.
pub(crate) fn close_wait(port: u16) -> usize {
    [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .map(|family| {
            sock_diag::close_wait(family as u8, port).unwrap_or_else(|e| panic!("sock_diag: {e}"))
        })
        .sum()
}

mod sock_diag {
    //! Just enough of NETLINK_SOCK_DIAG (linux/inet_diag.h) to count sockets in one TCP state.

    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const NETLINK_SOCK_DIAG: i32 = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const TCP_CLOSE_WAIT: u32 = 8;
    const NLMSG_HEADER: usize = 16;
    /// inet_diag_req_v2: family, protocol, ext, pad (4 bytes), states (4), inet_diag_sockid (48).
    const REQUEST_BODY: usize = 56;
    /// Offset of idiag_sport (network order) in inet_diag_msg: after family, state, timer, retrans.
    const SPORT_OFFSET: usize = 4;

    pub(super) fn close_wait(family: u8, port: u16) -> io::Result<usize> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };

        let mut request = [0u8; NLMSG_HEADER + REQUEST_BODY];
        let length = request.len() as u32;
        request[0..4].copy_from_slice(&length.to_ne_bytes());
        request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request[NLMSG_HEADER] = family;
        request[NLMSG_HEADER + 1] = libc::IPPROTO_TCP as u8;
        request[NLMSG_HEADER + 4..NLMSG_HEADER + 8]
            .copy_from_slice(&(1u32 << TCP_CLOSE_WAIT).to_ne_bytes());
        // SAFETY: sends `request.len()` bytes from a live buffer; netlink needs no address.
        let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }

        let mut count = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receives into a live buffer of `buf.len()` bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut at = 0;
            let n = n as usize;
            while at + NLMSG_HEADER <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
                match kind {
                    NLMSG_DONE => return Ok(count),
                    NLMSG_ERROR => return Err(io::Error::other("netlink error reply")),
                    SOCK_DIAG_BY_FAMILY => {
                        let body = at + NLMSG_HEADER;
                        let sport = u16::from_be_bytes(
                            buf[body + SPORT_OFFSET..body + SPORT_OFFSET + 2]
                                .try_into()
                                .unwrap(),
                        );
                        if sport == port {
                            count += 1;
                        }
                    }
                    _ => {}
                }
                if len < NLMSG_HEADER {
                    return Err(io::Error::other("malformed netlink message"));
                }
                // Messages are 4-byte aligned.
                at += (len + 3) & !3;
            }
        }
    }
}
