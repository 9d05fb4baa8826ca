//! Sockets inherited through the `LISTEN_FDS` convention (`sd_listen_fds(3)`): from systemd's
//! socket activation, or from the process a binary upgrade replaces (see `upgrade.rs`).
//!
//! An inherited socket whose address is the `--listen` address is used as it is, never bound
//! again: it keeps listening, with its accept queue, across restarts and upgrades.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;

use listenfd::ListenFd;

use crate::BoxError;

/// `FileDescriptorName` of the socket a binary upgrade passes for the new process to say it is
/// ready on (a datagram socket, the `sd_notify` message format).
pub const READY_NAME: &str = "tlsvisor-upgrade-ready";

/// What the process inherited.
#[derive(Default)]
pub struct Inherited {
    /// Listening TCP sockets, with their `FileDescriptorName` (`unknown` without names).
    listeners: Vec<(TcpListener, String)>,
    /// The upgrade's readiness socket, when a binary upgrade started this process.
    pub upgrade_ready: Option<UnixDatagram>,
}

impl Inherited {
    /// Takes the inherited descriptors out of the environment (the variables are removed, so
    /// no process started from here inherits them by mistake).
    ///
    /// `LISTEN_PID` must name this process when set; a binary upgrade leaves it unset, since the
    /// old process cannot know the new one's pid before it runs (the `listenfd` crate's
    /// convention, as systemfd uses it).
    pub fn from_env() -> Result<Inherited, BoxError> {
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
            inherited.listeners.push((listener, name));
        }
        Ok(inherited)
    }

    /// The inherited socket bound to `addr` (any port if its port is 0), if any. Sockets left over are an error: a socket
    /// unit and `--listen` that disagree would otherwise serve nothing where systemd listens.
    pub fn take_for(
        &mut self,
        addr: SocketAddr,
    ) -> Result<Option<(TcpListener, String)>, BoxError> {
        let mut found = None;
        for (listener, name) in std::mem::take(&mut self.listeners) {
            let local = listener.local_addr()?;
            // `--listen` with port 0 asked for any port: a socket handed over by an upgrade of
            // such a process has the port it got, and is the one meant.
            let matches = local == addr || (addr.port() == 0 && local.ip() == addr.ip());
            if matches && found.is_none() {
                found = Some((listener, name));
            } else {
                return Err(format!(
                    "inherited socket {local} (name {name}) matches no --listen address \
                     (--listen {addr}): make the socket unit's ListenStream= and --listen agree"
                )
                .into());
            }
        }
        Ok(found)
    }
}
