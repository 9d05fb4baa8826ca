//! `PlainListener`: a listener for plaintext clients (client mode, stunnel's `client = yes`),
//! on TCP or on a unix socket, and whose clients it takes: the default service's, or a named
//! service's from the start (no ClientHello chooses one: the listener does).
//!
//! A unix socket is a file, and a file outlives a killed process. Binding over a leftover file
//! fails (`EADDRINUSE`), so this does what nginx's and haproxy's operators expect of a restart:
//! it asks whether anything still listens there (a `connect`). Refused: the file is a leftover
//! of a process that is gone, and it is removed and bound again. Accepted: another process
//! serves that path, and starting is refused, naming it, rather than stealing its clients. A
//! path that is not a socket (a regular file, a directory) is never removed. Its mode is the
//! umask's, as nginx leaves it: who may connect is best said by the folder's permissions (Linux
//! checks the socket's write bit, some systems do not). On a clean exit the file is removed
//! (`Listeners::shut_down`), except when this process hands the socket over to the process of
//! a binary upgrade, which goes on serving it (and removes the file at its own clean exit).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A listener for plaintext clients (client mode): each client is proxied over TLS to its
/// service's upstreams, as the same supervised connection as a TLS client's. Built by
/// [`PlainListener::tcp`], [`PlainListener::unix`] (or from a socket already listening, handed
/// over by a binary upgrade), then given a service with [`PlainListener::service`]; given to
/// [`ServerBuilder::plain_listener`](crate::ServerBuilder::plain_listener).
#[derive(Debug)]
pub struct PlainListener {
    pub(crate) on: PlainOn,
    /// The label (first name) of the service its clients are, `None` for the default one.
    pub(crate) service: Option<String>,
}

/// Where a plaintext listener listens.
#[derive(Debug)]
pub(crate) enum PlainOn {
    /// Bind this TCP address.
    Bind(SocketAddr),
    /// Bind a unix socket at this path (a leftover file is handled as the module docs say).
    BindUnix(PathBuf),
    /// Serve this TCP socket, already listening, shared with whoever gave it.
    Socket(TcpListener),
    /// Serve this unix socket, already listening, shared with whoever gave it.
    UnixSocket(UnixListener),
}

impl PlainListener {
    /// Plaintext clients on TCP `addr` (port 0 picks a free port).
    pub fn tcp(addr: SocketAddr) -> Self {
        PlainListener {
            on: PlainOn::Bind(addr),
            service: None,
        }
    }

    /// Plaintext clients on a unix socket at `path`. A leftover socket file that nothing
    /// listens on is removed first; one a live process listens on is a start-up error; the file
    /// is removed again on a clean exit (see the module docs). Per-IP limits do not apply to
    /// its clients (they have no IP address); they show as `unix` where a peer is named.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        PlainListener {
            on: PlainOn::BindUnix(path.into()),
            service: None,
        }
    }

    /// A TCP socket already bound and listening (handed over by a binary upgrade): never
    /// bound again, and never shut down by this server (it is shared).
    pub fn tcp_socket(listener: TcpListener) -> Self {
        PlainListener {
            on: PlainOn::Socket(listener),
            service: None,
        }
    }

    /// A unix socket already bound and listening (handed over by a binary upgrade): shared,
    /// as [`PlainListener::tcp_socket`] is, but its file is this server's to remove at a clean
    /// exit (the process that handed it over is gone by then), unless this server hands it
    /// over in turn.
    pub fn unix_socket(listener: UnixListener) -> Self {
        PlainListener {
            on: PlainOn::UnixSocket(listener),
            service: None,
        }
    }

    /// Its clients are the service labelled `label` (its first name, as
    /// [`Service::label`](crate::Service::label) says), not the default service's. Starting
    /// refuses a label no service has, and a service that is not a proxy to TLS upstreams.
    pub fn service(mut self, label: &str) -> Self {
        self.service = Some(label.to_ascii_lowercase());
        self
    }
}

/// Binds a unix stream socket at `path`, replacing a leftover socket file nothing listens on
/// (see the module docs). Blocking, as bound: the listeners are all made non-blocking once
/// they are opened, taken ones included.
pub(crate) fn bind_unix(path: &Path, backlog: u32) -> io::Result<UnixListener> {
    match bind_unix_once(path, backlog) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            remove_if_stale(path)?;
            bind_unix_once(path, backlog)
        }
        other => other,
    }
}

/// `socket`, `bind`, `listen(backlog)` (std's `UnixListener::bind` listens with 128).
fn bind_unix_once(path: &Path, backlog: u32) -> io::Result<UnixListener> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(UnixListener::from(std::os::fd::OwnedFd::from(socket)))
}

/// Removes the socket file at `path` if nothing listens on it; an error that says why not
/// otherwise (a live listener, or not a socket at all).
fn remove_if_stale(path: &Path) -> io::Result<()> {
    let kind = std::fs::symlink_metadata(path)?.file_type();
    if !kind.is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the path exists and is not a socket; not removing it",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process listens on this socket",
        )),
        // Nobody listens: a leftover of a process that is gone.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tlsvisor-plain-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_leftover_socket_is_replaced_a_live_one_and_a_file_are_refused() {
        let dir = scratch("stale");
        let path = dir.join("plain.sock");
        // A leftover: bound, then the listener gone, the file still there.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listener = bind_unix(&path, 16).unwrap();
        // Now live: a second bind is refused, and the first keeps its file.
        let refused = bind_unix(&path, 16).unwrap_err();
        assert!(refused.to_string().contains("another process"), "{refused}");
        drop(listener);
        let file = dir.join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let refused = bind_unix(&file, 16).unwrap_err();
        assert!(refused.to_string().contains("not a socket"), "{refused}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
