//! Leak checks from `/proc` (Linux): what a process holds, and sockets left half-closed.

use std::io;

/// The calling process's id.
pub fn own_pid() -> u32 {
    std::process::id()
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Threads of process `pid`.
pub fn threads(pid: u32) -> io::Result<usize> {
    status_field(pid, "Threads:").map(|n| n as usize)
}

/// Resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    status_field(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident memory of process `pid` (high-water mark), in bytes.
pub fn peak_rss_bytes(pid: u32) -> io::Result<u64> {
    status_field(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_field(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// TCP states as `/proc/net/tcp` numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// 01
    Established,
    /// 06
    TimeWait,
    /// 08: the peer closed, this side has not. Garnet's leak.
    CloseWait,
    /// 0A
    Listen,
}

impl TcpState {
    fn code(self) -> &'static str {
        match self {
            TcpState::Established => "01",
            TcpState::TimeWait => "06",
            TcpState::CloseWait => "08",
            TcpState::Listen => "0A",
        }
    }
}

/// Sockets in this network namespace whose local port is `port` and whose state is `state`
/// (IPv4 and IPv6).
pub fn sockets_on_local_port(port: u16, state: TcpState) -> io::Result<usize> {
    count_sockets(state, |local, _remote| local == port)
}

/// Sockets whose remote port is `port` and whose state is `state` (for outgoing connections,
/// such as a proxy's upstream sockets).
pub fn sockets_to_remote_port(port: u16, state: TcpState) -> io::Result<usize> {
    count_sockets(state, |_local, remote| remote == port)
}

/// The sockets of one server, found by its port: what a leak check of that server alone looks
/// at, so that other servers of the same test process (running in parallel) do not count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerSockets {
    /// Connections open on the server's side.
    pub established: usize,
    /// Connections the peer closed and the server did not: Garnet's leak.
    pub close_wait: usize,
}

impl ServerSockets {
    /// The sockets whose local port is `port`, listening ones aside.
    pub fn on_port(port: u16) -> io::Result<ServerSockets> {
        Ok(ServerSockets {
            established: sockets_on_local_port(port, TcpState::Established)?,
            close_wait: sockets_on_local_port(port, TcpState::CloseWait)?,
        })
    }

    /// Whether nothing of the server's connections is left open.
    pub fn is_clean(&self) -> bool {
        *self == ServerSockets::default()
    }
}

/// CLOSE-WAIT sockets on the server's port: each one is a connection the peer finished and the
/// server never closed.
pub fn close_wait_on_port(port: u16) -> io::Result<usize> {
    sockets_on_local_port(port, TcpState::CloseWait)
}

fn count_sockets(state: TcpState, keep: impl Fn(u16, u16) -> bool) -> io::Result<usize> {
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(st)) =
                (fields.get(1), fields.get(2), fields.get(3))
            else {
                continue;
            };
            if *st == state.code() && keep(port_of(local), port_of(remote)) {
                count += 1;
            }
        }
    }
    Ok(count)
}

/// The port of an `ADDR:PORT` field of `/proc/net/tcp` (hex).
fn port_of(field: &str) -> u16 {
    field
        .rsplit(':')
        .next()
        .and_then(|hex| u16::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(open_fds(own_pid()).unwrap() >= 3);
        assert!(threads(own_pid()).unwrap() >= 1);
        assert!(rss_bytes(own_pid()).unwrap() > 0);
    }

    #[test]
    fn sees_a_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(sockets_on_local_port(port, TcpState::Listen).unwrap(), 1);
        drop(listener);
        assert_eq!(sockets_on_local_port(port, TcpState::Listen).unwrap(), 0);
    }

    #[test]
    fn port_of_parses_hex() {
        assert_eq!(port_of("0100007F:20FB"), 8443);
        assert_eq!(port_of("00000000000000000000000001000000:0050"), 80);
    }
}
