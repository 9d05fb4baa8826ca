//! `Listeners`: the listening sockets one server serves, bound or handed over, in order.
//!
//! A server may listen on several addresses (an IPv4 and an IPv6 one, say) with one protocol:
//! the sockets share the server's workers, registries, limits and books. Each socket is either
//! bound here or handed over already listening (inherited from systemd's socket activation,
//! or from the process a binary upgrade replaces). A handed-over socket is *shared*: another
//! process holds it too, so this server never shuts it down.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use slog::{info, warn, Logger};
use tokio::net::TcpSocket;

use crate::edge::plain_listener::{bind_unix, PlainListener, PlainOn};
use crate::supervision::config::ServerConfig;

use crate::error::ServerError;

/// Where one listening socket comes from.
pub(crate) enum ListenOn {
    /// Bind this address (with the server's `reuse_port` and `backlog`).
    Bind(SocketAddr),
    /// Serve this socket, already bound and listening; it is shared with whoever gave it.
    Socket(TcpListener),
    /// A listener for plaintext clients (client mode: TLS to the upstream only).
    Plain(PlainListener),
}

impl ListenOn {
    fn is_ipv4(&self) -> bool {
        match self {
            ListenOn::Bind(addr)
            | ListenOn::Plain(PlainListener {
                on: PlainOn::Bind(addr),
                ..
            }) => addr.is_ipv4(),
            ListenOn::Socket(socket)
            | ListenOn::Plain(PlainListener {
                on: PlainOn::Socket(socket),
                ..
            }) => socket.local_addr().is_ok_and(|a| a.is_ipv4()),
            ListenOn::Plain(_) => false,
        }
    }

    /// A plaintext listener, and the service it names (`None`: the default one).
    pub(crate) fn plain_service(&self) -> Option<Option<&str>> {
        match self {
            ListenOn::Plain(plain) => Some(plain.service.as_deref()),
            _ => None,
        }
    }
}

/// A listening socket: TCP, or a unix socket (plaintext clients only).
pub(crate) enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl ListenSocket {
    fn try_clone(&self) -> std::io::Result<ListenSocket> {
        Ok(match self {
            ListenSocket::Tcp(s) => ListenSocket::Tcp(s.try_clone()?),
            ListenSocket::Unix(s) => ListenSocket::Unix(s.try_clone()?),
        })
    }
}

impl AsFd for ListenSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ListenSocket::Tcp(s) => s.as_fd(),
            ListenSocket::Unix(s) => s.as_fd(),
        }
    }
}

/// The address of a listening socket, as logs say it: `IP:PORT`, or `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Whose clients a listener takes.
#[derive(Clone, Debug)]
pub(crate) enum Clients {
    /// TLS clients: each ClientHello chooses its service.
    Tls,
    /// Plaintext clients (client mode) of one service: the default one (`None`) or the one
    /// with this label, chosen by the listener.
    Plain(Option<Arc<str>>),
}

impl Clients {
    pub(crate) fn is_plain(&self) -> bool {
        matches!(self, Clients::Plain(_))
    }
}

/// One listening socket, with this server's own descriptor of it.
struct Listening {
    socket: ListenSocket,
    addr: ListenAddr,
    /// Set while another process serves from this socket too: shutdown then leaves it
    /// listening.
    shared: AtomicBool,
    /// Set while this server hands the socket over to another process (a binary upgrade):
    /// a unix socket's file is then left in place at exit, for the process that goes on
    /// serving it. A socket handed over *to* this server is shared at first but its file is
    /// this server's to remove at a clean exit: the process that gave it is gone by then.
    handing_over: AtomicBool,
    clients: Clients,
}

/// One worker's descriptor of a listening socket, for its acceptor.
pub(crate) struct AcceptOn {
    pub(crate) socket: ListenSocket,
    pub(crate) addr: ListenAddr,
    pub(crate) clients: Clients,
}

/// The listening sockets of one server, the first first (`Server::local_addr`).
pub(crate) struct Listeners(Vec<Listening>);

impl Listeners {
    /// Binds or takes each socket, in order. A failure names the address that failed, and
    /// closes the sockets opened before it (nothing is left listening; a unix socket's file
    /// bound here is removed).
    pub(crate) fn open(
        config: &ServerConfig,
        sources: Vec<ListenOn>,
    ) -> Result<Listeners, ServerError> {
        // Beside an IPv4 address, an IPv6 one serves IPv6 only: a dual-stack `[::]` would
        // take IPv4 clients too, and collide with `0.0.0.0` on the same port.
        let v6_only = sources.iter().any(ListenOn::is_ipv4);
        let mut listening = Listeners(Vec::with_capacity(sources.len()));
        for source in sources {
            let position = listening.0.len();
            let opened = open_one(config, source, v6_only, position);
            match opened {
                Ok(one) => listening.0.push(one),
                Err(e) => {
                    listening.remove_files();
                    return Err(e);
                }
            }
        }
        Ok(listening)
    }

    /// The addresses actually bound for TLS clients, in order.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.0
            .iter()
            .filter(|l| !l.clients.is_plain())
            .filter_map(|l| match l.addr {
                ListenAddr::Tcp(addr) => Some(addr),
                ListenAddr::Unix(_) => None,
            })
            .collect()
    }

    /// The TCP addresses actually bound for plaintext clients (client mode), in order.
    pub(crate) fn plain_addrs(&self) -> Vec<SocketAddr> {
        self.plain()
            .filter_map(|(addr, _)| match addr {
                ListenAddr::Tcp(addr) => Some(*addr),
                ListenAddr::Unix(_) => None,
            })
            .collect()
    }

    /// Every plaintext listener's address with the label of its service (`None`: the default).
    pub(crate) fn plain(&self) -> impl Iterator<Item = (&ListenAddr, Option<&str>)> {
        self.0.iter().filter_map(|l| match &l.clients {
            Clients::Plain(service) => Some((&l.addr, service.as_deref())),
            Clients::Tls => None,
        })
    }

    /// A new descriptor (a `dup`) of every TLS socket, in order: to hand to another process.
    pub(crate) fn copies(&self) -> std::io::Result<Vec<TcpListener>> {
        self.0
            .iter()
            .filter(|l| !l.clients.is_plain())
            .filter_map(|l| match &l.socket {
                ListenSocket::Tcp(s) => Some(s.try_clone()),
                ListenSocket::Unix(_) => None,
            })
            .collect()
    }

    /// A new descriptor of every plaintext socket (TCP or unix), in order: to hand to another
    /// process, which tells them apart by their own addresses.
    pub(crate) fn plain_copies(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.0
            .iter()
            .filter(|l| l.clients.is_plain())
            .map(|l| l.socket.as_fd().try_clone_to_owned())
            .collect()
    }

    /// A new descriptor of every socket, in order, with its address and whose clients it
    /// takes: one set per worker's acceptor.
    pub(crate) fn accepting_copies(&self) -> std::io::Result<Vec<AcceptOn>> {
        self.0
            .iter()
            .map(|l| {
                Ok(AcceptOn {
                    socket: l.socket.try_clone()?,
                    addr: l.addr.clone(),
                    clients: l.clients.clone(),
                })
            })
            .collect()
    }

    /// Marks every socket as shared with another process (or not): handed over to it.
    pub(crate) fn set_shared(&self, shared: bool) {
        for listening in &self.0 {
            listening.shared.store(shared, Ordering::SeqCst);
            listening.handing_over.store(shared, Ordering::SeqCst);
        }
    }

    /// The first step of the shutdown protocol: `shutdown(SHUT_RD)` of every TCP socket this
    /// server alone serves takes it out of `LISTEN` for every descriptor of it, so no worker
    /// accepts from it again (even one too stuck to hear `StopAccepting`) and the clients in
    /// its backlog are reset. A unix listening socket has no such step (Linux's accept on it
    /// does not look at a shutdown): its file goes, so no new client finds it, and the workers
    /// stop accepting from it on `StopAccepting`. A shared socket must stay listening for the
    /// other process: it is only closed, as the descriptors go.
    pub(crate) fn shut_down(&self, log: &Logger) {
        for listening in &self.0 {
            let listen = listening.addr.to_string();
            if let (ListenAddr::Unix(path), false) = (
                &listening.addr,
                listening.handing_over.load(Ordering::SeqCst),
            ) {
                if let Err(e) = std::fs::remove_file(path) {
                    warn!(log, "shutdown: cannot remove the unix socket's file";
                        "listen" => &listen, "error" => %e);
                }
            }
            if listening.shared.load(Ordering::SeqCst) {
                info!(log, "shutdown: the listening socket is shared; leaving it listening";
                    "listen" => listen);
            } else if let ListenSocket::Tcp(socket) = &listening.socket {
                if let Err(e) = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Read) {
                    warn!(log, "shutdown: cannot shut the listening socket";
                        "listen" => listen, "error" => %e);
                }
            }
        }
    }

    /// Removes the files of the unix sockets bound here (a start that failed half-way; one
    /// handed over is left to the process that gave it, which still serves it).
    fn remove_files(&self) {
        for listening in &self.0 {
            if let (ListenAddr::Unix(path), false) =
                (&listening.addr, listening.shared.load(Ordering::SeqCst))
            {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Binds or takes one socket (the `position`-th given).
fn open_one(
    config: &ServerConfig,
    source: ListenOn,
    v6_only: bool,
    position: usize,
) -> Result<Listening, ServerError> {
    let (socket, shared, clients) = match source {
        ListenOn::Bind(addr) => {
            let socket = bind(addr, config, v6_only).map_err(|e| bind_error(addr, e))?;
            (ListenSocket::Tcp(socket), false, Clients::Tls)
        }
        ListenOn::Socket(socket) => (ListenSocket::Tcp(socket), true, Clients::Tls),
        ListenOn::Plain(PlainListener { on, service }) => {
            let clients = Clients::Plain(service.map(Arc::from));
            match on {
                PlainOn::Bind(addr) => {
                    let socket = bind(addr, config, v6_only).map_err(|e| bind_error(addr, e))?;
                    (ListenSocket::Tcp(socket), false, clients)
                }
                PlainOn::BindUnix(path) => {
                    let socket = bind_unix(&path, config.backlog)
                        .map_err(|source| ServerError::BindUnix { path, source })?;
                    (ListenSocket::Unix(socket), false, clients)
                }
                PlainOn::Socket(socket) => (ListenSocket::Tcp(socket), true, clients),
                PlainOn::UnixSocket(socket) => (ListenSocket::Unix(socket), true, clients),
            }
        }
    };
    let listener_error = |source| ServerError::Listener { position, source };
    // Tokio's reactor needs it non-blocking; the giver may have left it blocking.
    let addr = match &socket {
        ListenSocket::Tcp(s) => {
            s.set_nonblocking(true).map_err(listener_error)?;
            ListenAddr::Tcp(s.local_addr().map_err(listener_error)?)
        }
        ListenSocket::Unix(s) => {
            s.set_nonblocking(true).map_err(listener_error)?;
            let bound = s.local_addr().map_err(listener_error)?;
            let path = bound
                .as_pathname()
                .ok_or_else(|| listener_error(std::io::Error::other("an unnamed unix socket")))?;
            ListenAddr::Unix(path.to_path_buf())
        }
    };
    Ok(Listening {
        socket,
        addr,
        shared: AtomicBool::new(shared),
        handing_over: AtomicBool::new(false),
        clients,
    })
}

fn bind_error(addr: SocketAddr, source: std::io::Error) -> ServerError {
    ServerError::Bind { addr, source }
}

/// Binds `addr` with `SO_REUSEADDR` (and `SO_REUSEPORT` when asked, `IPV6_V6ONLY` when
/// `v6_only`) and listens.
fn bind(addr: SocketAddr, config: &ServerConfig, v6_only: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    // Lets a restarted server bind while old connections sit in TIME-WAIT.
    socket.set_reuseaddr(true)?;
    if config.reuse_port {
        socket.set_reuseport(true)?;
    }
    if addr.is_ipv6() && v6_only {
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    socket.bind(addr)?;
    socket.listen(config.backlog)?.into_std()
}
