//! `Listeners`: the listening sockets one server serves, bound or handed over, in order.
//!
//! A server may listen on several addresses (an IPv4 and an IPv6 one, say) with one protocol:
//! the sockets share the server's workers, registries, limits and books. Each socket is either
//! bound here or handed over already listening (inherited from systemd's socket activation,
//! or from the process a binary upgrade replaces). A handed-over socket is *shared*: another
//! process holds it too, so this server never shuts it down.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};

use slog::{info, warn, Logger};
use tokio::net::TcpSocket;

use crate::supervision::config::ServerConfig;

use crate::error::ServerError;

/// Where one listening socket comes from.
pub(crate) enum ListenOn {
    /// Bind this address (with the server's `reuse_port` and `backlog`).
    Bind(SocketAddr),
    /// Serve this socket, already bound and listening; it is shared with whoever gave it.
    Socket(TcpListener),
    /// Bind this address for plaintext clients (client mode: TLS to the upstream only).
    BindPlain(SocketAddr),
}

impl ListenOn {
    fn is_ipv4(&self) -> bool {
        match self {
            ListenOn::Bind(addr) | ListenOn::BindPlain(addr) => addr.is_ipv4(),
            ListenOn::Socket(socket) => socket.local_addr().is_ok_and(|a| a.is_ipv4()),
        }
    }
}

/// One listening socket, with this server's own descriptor of it.
struct Listening {
    socket: TcpListener,
    addr: SocketAddr,
    /// Set while another process serves from this socket too: shutdown then leaves it
    /// listening.
    shared: AtomicBool,
    /// Its clients speak plaintext (client mode).
    plain: bool,
}

/// One worker's descriptor of a listening socket, for its acceptor.
pub(crate) struct AcceptOn {
    pub(crate) socket: TcpListener,
    pub(crate) addr: SocketAddr,
    /// Its clients speak plaintext (client mode).
    pub(crate) plain: bool,
}

/// The listening sockets of one server, the first first (`Server::local_addr`).
pub(crate) struct Listeners(Vec<Listening>);

impl Listeners {
    /// Binds or takes each socket, in order. A failure names the address that failed, and
    /// closes the sockets opened before it (nothing is left listening).
    pub(crate) fn open(
        config: &ServerConfig,
        sources: Vec<ListenOn>,
    ) -> Result<Listeners, ServerError> {
        // Beside an IPv4 address, an IPv6 one serves IPv6 only: a dual-stack `[::]` would
        // take IPv4 clients too, and collide with `0.0.0.0` on the same port.
        let v6_only = sources.iter().any(ListenOn::is_ipv4);
        let mut listening = Vec::with_capacity(sources.len());
        for source in sources {
            let (socket, shared, asked, plain) = match source {
                ListenOn::Bind(addr) => {
                    let socket = bind(addr, config, v6_only).map_err(|e| bind_error(addr, e))?;
                    (socket, false, addr, false)
                }
                ListenOn::BindPlain(addr) => {
                    let socket = bind(addr, config, v6_only).map_err(|e| bind_error(addr, e))?;
                    (socket, false, addr, true)
                }
                ListenOn::Socket(socket) => {
                    let addr = socket
                        .local_addr()
                        .map_err(|source| ServerError::Listener {
                            position: listening.len(),
                            source,
                        })?;
                    // Tokio's reactor needs it non-blocking; the giver may have left it blocking.
                    socket
                        .set_nonblocking(true)
                        .map_err(|e| bind_error(addr, e))?;
                    (socket, true, addr, false)
                }
            };
            let addr = socket.local_addr().map_err(|e| bind_error(asked, e))?;
            listening.push(Listening {
                socket,
                addr,
                shared: AtomicBool::new(shared),
                plain,
            });
        }
        Ok(Listeners(listening))
    }

    /// The addresses actually bound for TLS clients, in order.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.0.iter().filter(|l| !l.plain).map(|l| l.addr).collect()
    }

    /// The addresses actually bound for plaintext clients (client mode), in order.
    pub(crate) fn plain_addrs(&self) -> Vec<SocketAddr> {
        self.0.iter().filter(|l| l.plain).map(|l| l.addr).collect()
    }

    /// A new descriptor (a `dup`) of every TLS socket, in order: to hand to another process
    /// (the plaintext ones are not handed over: see ARCHITECTURE.md).
    pub(crate) fn copies(&self) -> std::io::Result<Vec<TcpListener>> {
        self.0
            .iter()
            .filter(|l| !l.plain)
            .map(|l| l.socket.try_clone())
            .collect()
    }

    /// A new descriptor of every socket, in order, with its address and whether its clients
    /// speak plaintext: one set per worker's acceptor.
    pub(crate) fn accepting_copies(&self) -> std::io::Result<Vec<AcceptOn>> {
        self.0
            .iter()
            .map(|l| {
                Ok(AcceptOn {
                    socket: l.socket.try_clone()?,
                    addr: l.addr,
                    plain: l.plain,
                })
            })
            .collect()
    }

    /// Marks every socket as shared with another process (or not).
    pub(crate) fn set_shared(&self, shared: bool) {
        for listening in &self.0 {
            listening.shared.store(shared, Ordering::SeqCst);
        }
    }

    /// The first step of the shutdown protocol: `shutdown(SHUT_RD)` of every socket this
    /// server alone serves takes it out of `LISTEN` for every descriptor of it, so no worker
    /// accepts from it again (even one too stuck to hear `StopAccepting`) and the clients in
    /// its backlog are reset. A shared socket must stay listening for the other process: it
    /// is only closed, as the descriptors go.
    pub(crate) fn shut_down(&self, log: &Logger) {
        for listening in &self.0 {
            let listen = listening.addr.to_string();
            if listening.shared.load(Ordering::SeqCst) {
                info!(log, "shutdown: the listening socket is shared; leaving it listening";
                    "listen" => listen);
            } else if let Err(e) =
                socket2::SockRef::from(&listening.socket).shutdown(std::net::Shutdown::Read)
            {
                warn!(log, "shutdown: cannot shut the listening socket";
                    "listen" => listen, "error" => %e);
            }
        }
    }
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
