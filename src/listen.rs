//! The HTTP listeners' sockets (metrics, admin): bound for this process alone.
//!
//! No `SO_REUSEPORT`: with it, any process of the same user could bind the same address too
//! and receive a share of the requests, bearer tokens included, and two of our own listeners
//! given one address would split requests between them. A binary upgrade does not bind them
//! again: the sockets themselves go over to the new process (`upgrade.rs`, `activation.rs`).

use std::io;
use std::net::{SocketAddr, TcpListener};

/// Binds `addr` for this process alone (`SO_REUSEADDR` only, which lets a restart bind while
/// connections of the previous run sit in `TIME_WAIT`, and on Linux never lets a second socket
/// listen on the port). Non-blocking, as actix-server takes it. Must run inside the actix
/// system (tokio's socket needs its reactor to listen).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(128)?.into_std()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Whether an inherited socket bound to `bound` serves the setting `wanted`: the same address,
/// or, for a setting with port 0, the same IP with any port (the port an upgraded process had
/// picked).
pub(crate) fn serves(wanted: SocketAddr, bound: SocketAddr) -> bool {
    wanted == bound || (wanted.port() == 0 && wanted.ip() == bound.ip())
}
