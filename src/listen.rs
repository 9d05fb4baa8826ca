//! The HTTP listeners' sockets (metrics, admin), bound so that a binary upgrade can bind them
//! again while the old process still holds them.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// Binds `addr` with `SO_REUSEPORT`: during a binary upgrade (SIGUSR2) the new process binds the
/// same address while the old one drains, each with a socket of its own, and a request goes to
/// either. Non-blocking, as actix-server takes it. Must run inside the actix system (tokio's socket needs its reactor to listen).
pub(crate) fn reusable(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(128)?.into_std()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
