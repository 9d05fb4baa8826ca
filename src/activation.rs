//! Sockets inherited through the `LISTEN_FDS` convention (`sd_listen_fds(3)`): from systemd's
//! socket activation, or from the process a binary upgrade replaces (see `upgrade.rs`).
//!
//! An inherited socket serves one `--listen` entry, as it is: it is never bound again, and it
//! keeps listening, with its accept queue, across restarts and upgrades. Which entry it serves:
//!
//! 1. **By address** (nginx's rule for inherited sockets): the entry the socket is bound to
//!    (`getsockname`); an entry with port 0 takes a socket on its IP with any port (an upgraded
//!    process that asked for any port gets back the port it had).
//! 2. **By order**, for the sockets left: the first left goes to the first entry left, and so
//!    on (`sd_listen_fds`'s rule: a unit's `ListenStream=` lines and `--listen` in the same
//!    order). This covers a unit whose `ListenStream=8443` systemd binds as `[::]:8443` for
//!    `--listen 0.0.0.0:8443`; it is logged, with both addresses.
//!
//! `FileDescriptorName=` (`LISTEN_FDNAMES`) cannot carry an address — `:` separates the names —
//! so names only label sockets in the logs, and pick out three sockets that are not `--listen`
//! entries: the upgrade's readiness socket, and the metrics and admin listeners a binary
//! upgrade hands over ([`METRICS_NAME`], [`ADMIN_NAME`]; each serves its flag if bound to its
//! address, port 0 taking any port, and is closed otherwise). An
//! entry no socket maps to is bound as usual. A socket no entry is left for is an error: a
//! socket unit and `--listen` that disagree would otherwise serve nothing where systemd listens.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;

use listenfd::ListenFd;

use crate::error::BoxError;
use crate::plain_addr::PlainAddr;

/// `FileDescriptorName` of the socket a binary upgrade passes for the new process to say it is
/// ready on (a datagram socket, the `sd_notify` message format).
pub(crate) const READY_NAME: &str = "tlsvisor-upgrade-ready";

/// `FileDescriptorName` of the `--metrics-listen` socket a binary upgrade hands over.
pub(crate) const METRICS_NAME: &str = "tlsvisor-metrics";

/// `FileDescriptorName` of the `--admin-listen` socket a binary upgrade hands over.
pub(crate) const ADMIN_NAME: &str = "tlsvisor-admin";

/// `FileDescriptorName` of each plaintext listener's socket (client mode: `--listen-plain` and
/// the services' own, TCP or unix) a binary upgrade hands over; each serves the entry whose
/// address (or path) it is bound to (port 0 taking any port), and is closed if none is left.
pub(crate) const PLAIN_NAME: &str = "tlsvisor-plain";

/// What the process inherited.
#[derive(Default)]
pub(crate) struct Inherited {
    /// Listening TCP sockets, in `LISTEN_FDS` order.
    listeners: Vec<InheritedSocket>,
    /// The upgrade's readiness socket, when a binary upgrade started this process.
    pub upgrade_ready: Option<UnixDatagram>,
    /// The metrics listener's socket, handed over by the process this one upgrades.
    pub metrics: Option<TcpListener>,
    /// The admin listener's socket, handed over by the process this one upgrades.
    pub admin: Option<TcpListener>,
    /// The plaintext listeners' sockets, handed over by the process this one upgrades.
    pub plain: Vec<InheritedPlain>,
}

/// A plaintext listener's socket handed over by a binary upgrade, with what it is bound to.
pub(crate) enum InheritedPlain {
    Tcp(TcpListener, SocketAddr),
    Unix(UnixListener, PathBuf),
}

impl InheritedPlain {
    /// Whether it serves the entry `wanted` (the same address, port 0 any port; the same path).
    fn serves(&self, wanted: &PlainAddr) -> bool {
        match (self, wanted) {
            (InheritedPlain::Tcp(_, bound), PlainAddr::Tcp(wanted)) => {
                crate::listen::serves(*wanted, *bound)
            }
            (InheritedPlain::Unix(_, bound), PlainAddr::Unix(wanted)) => bound == wanted,
            _ => false,
        }
    }

    /// What it is bound to, as `--listen-plain` writes it.
    pub(crate) fn addr(&self) -> String {
        match self {
            InheritedPlain::Tcp(_, addr) => addr.to_string(),
            InheritedPlain::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// Takes the inherited socket that serves `wanted`, if one does.
    pub(crate) fn take_for(
        sockets: &mut Vec<InheritedPlain>,
        wanted: &PlainAddr,
    ) -> Option<InheritedPlain> {
        let index = sockets.iter().position(|s| s.serves(wanted))?;
        Some(sockets.remove(index))
    }
}

/// One inherited listening socket.
pub(crate) struct InheritedSocket {
    pub listener: TcpListener,
    /// Its `FileDescriptorName` (`unknown` without names).
    pub name: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// How it was mapped to its `--listen` entry.
    pub matched: Matched,
}

/// How an inherited socket was mapped to a `--listen` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Matched {
    /// It is bound to the entry's address (any port for an entry with port 0).
    Address,
    /// It was left after the address matches, and taken in order.
    Order,
}

impl Matched {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Matched::Address => "address",
            Matched::Order => "order",
        }
    }
}

impl Inherited {
    /// Takes the inherited descriptors out of the environment (the variables are removed, so
    /// no process started from here inherits them by mistake).
    ///
    /// `LISTEN_PID` must name this process when set; a binary upgrade leaves it unset, since the
    /// old process cannot know the new one's pid before it runs (the `listenfd` crate's
    /// convention, as systemfd uses it).
    pub(crate) fn from_env() -> Result<Inherited, BoxError> {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|names| names.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        std::env::remove_var("LISTEN_FDNAMES");
        let mut fds = ListenFd::from_env();
        let mut inherited = Inherited::default();
        for index in 0..fds.len() {
            let name = names
                .get(index)
                .cloned()
                .unwrap_or_else(|| "unknown".to_string());
            if name == PLAIN_NAME {
                inherited.plain.push(take_plain(&mut fds, index)?);
                continue;
            }
            if name == READY_NAME {
                inherited.upgrade_ready = fds
                    .take_unix_datagram(index)
                    .map_err(|e| format!("LISTEN_FDS: {READY_NAME}: {e}"))?;
                continue;
            }
            let listener = fds
                .take_tcp_listener(index)
                .map_err(|e| {
                    format!(
                        "LISTEN_FDS: socket {index} ({name}) is not a listening TCP socket: {e}"
                    )
                })?
                .ok_or_else(|| format!("LISTEN_FDS: socket {index} ({name}) is missing"))?;
            match name.as_str() {
                METRICS_NAME => {
                    inherited.metrics = Some(listener);
                    continue;
                }
                ADMIN_NAME => {
                    inherited.admin = Some(listener);
                    continue;
                }
                _ => {}
            }
            let addr = listener.local_addr()?;
            inherited.listeners.push(InheritedSocket {
                listener,
                name,
                addr,
                matched: Matched::Address,
            });
        }
        Ok(inherited)
    }

    /// The inherited socket for each `--listen` entry, in the entries' order (`None`: bind
    /// it), by the rule in the module docs. Every inherited socket is used, or it is an error.
    pub(crate) fn assign(
        &mut self,
        entries: &[SocketAddr],
    ) -> Result<Vec<Option<InheritedSocket>>, BoxError> {
        let sockets: Vec<SocketAddr> = self.listeners.iter().map(|s| s.addr).collect();
        let mapping = map_sockets(entries, &sockets)?;
        let mut taken: Vec<Option<InheritedSocket>> = std::mem::take(&mut self.listeners)
            .into_iter()
            .map(Some)
            .collect();
        Ok(mapping
            .into_iter()
            .map(|found| {
                found.and_then(|(index, matched)| {
                    taken[index].take().map(|mut socket| {
                        socket.matched = matched;
                        socket
                    })
                })
            })
            .collect())
    }
}

/// The plaintext listener's socket at `index`: TCP, or else a unix stream socket.
fn take_plain(fds: &mut ListenFd, index: usize) -> Result<InheritedPlain, BoxError> {
    let missing = || format!("LISTEN_FDS: socket {index} ({PLAIN_NAME}) is missing");
    if let Ok(tcp) = fds.take_tcp_listener(index) {
        let tcp = tcp.ok_or_else(missing)?;
        let addr = tcp.local_addr()?;
        return Ok(InheritedPlain::Tcp(tcp, addr));
    }
    let unix = fds
        .take_unix_listener(index)
        .map_err(|e| format!("LISTEN_FDS: socket {index} ({PLAIN_NAME}) is not a listening TCP or unix socket: {e}"))?
        .ok_or_else(missing)?;
    let path = unix
        .local_addr()?
        .as_pathname()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| {
            format!("LISTEN_FDS: socket {index} ({PLAIN_NAME}) is an unnamed unix socket")
        })?;
    Ok(InheritedPlain::Unix(unix, path))
}

/// For each entry, the index of the socket (bound to `sockets[index]`) that serves it, and how
/// it was matched; an error if a socket is left over. See the module docs for the rule.
fn map_sockets(
    entries: &[SocketAddr],
    sockets: &[SocketAddr],
) -> Result<Vec<Option<(usize, Matched)>>, BoxError> {
    let mut mapping: Vec<Option<(usize, Matched)>> = vec![None; entries.len()];
    let mut used = vec![false; sockets.len()];
    // Exact addresses first, so that a port-0 entry cannot take a socket another entry names.
    let exact = |entry: &SocketAddr, socket: &SocketAddr| {
        entry.port() != 0 && entry.ip() == socket.ip() && entry.port() == socket.port()
    };
    let any_port =
        |entry: &SocketAddr, socket: &SocketAddr| entry.port() == 0 && entry.ip() == socket.ip();
    for port_0_pass in [false, true] {
        let matches = |entry: &SocketAddr, socket: &SocketAddr| match port_0_pass {
            false => exact(entry, socket),
            true => any_port(entry, socket),
        };
        for (entry, slot) in entries.iter().zip(mapping.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let found = (0..sockets.len()).find(|&i| !used[i] && matches(entry, &sockets[i]));
            if let Some(index) = found {
                used[index] = true;
                *slot = Some((index, Matched::Address));
            }
        }
    }
    // By order: the sockets left, to the entries left.
    let mut left = (0..sockets.len()).filter(|&i| !used[i]);
    for slot in mapping.iter_mut().filter(|slot| slot.is_none()) {
        match left.next() {
            Some(index) => *slot = Some((index, Matched::Order)),
            None => break,
        }
    }
    if let Some(index) = left.next() {
        let listen: Vec<String> = entries.iter().map(|a| a.to_string()).collect();
        return Err(format!(
            "inherited socket {} is left over: {} sockets for {} --listen addresses ({}); \
             give the socket unit one ListenStream= per --listen",
            sockets[index],
            sockets.len(),
            entries.len(),
            listen.join(" ")
        )
        .into());
    }
    Ok(mapping)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn sockets_map_by_address_whatever_their_order() {
        let entries = addrs(&["127.0.0.1:8443", "[::1]:8443"]);
        let sockets = addrs(&["[::1]:8443", "127.0.0.1:8443"]);
        let mapping = map_sockets(&entries, &sockets).unwrap();
        assert_eq!(
            mapping,
            [Some((1, Matched::Address)), Some((0, Matched::Address))]
        );
    }

    #[test]
    fn a_port_0_entry_takes_a_socket_on_its_ip_after_the_exact_matches() {
        // An upgraded process with `--listen 127.0.0.1:0` twice and one fixed port.
        let entries = addrs(&["127.0.0.1:0", "127.0.0.1:9000", "127.0.0.1:0"]);
        let sockets = addrs(&["127.0.0.1:9000", "127.0.0.1:40001", "127.0.0.1:40002"]);
        let mapping = map_sockets(&entries, &sockets).unwrap();
        assert_eq!(
            mapping,
            [
                Some((1, Matched::Address)),
                Some((0, Matched::Address)),
                Some((2, Matched::Address))
            ]
        );
    }

    #[test]
    fn sockets_left_map_in_order_and_entries_left_are_bound() {
        // systemd binds `ListenStream=8443` as [::]:8443; --listen says 0.0.0.0:8443.
        let entries = addrs(&["0.0.0.0:8443", "127.0.0.1:9000", "127.0.0.1:9001"]);
        let sockets = addrs(&["[::]:8443", "127.0.0.1:9001"]);
        let mapping = map_sockets(&entries, &sockets).unwrap();
        assert_eq!(
            mapping,
            [Some((0, Matched::Order)), None, Some((1, Matched::Address))]
        );
    }

    #[test]
    fn a_socket_left_over_is_an_error_naming_it() {
        let entries = addrs(&["127.0.0.1:8443"]);
        let sockets = addrs(&["127.0.0.1:8443", "[::1]:8443"]);
        let error = map_sockets(&entries, &sockets).unwrap_err().to_string();
        assert!(error.contains("[::1]:8443"), "{error}");
        assert!(map_sockets(&entries, &[]).unwrap() == [None]);
    }
}
