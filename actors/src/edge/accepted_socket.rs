//! `AcceptedSocket`: a client's socket as accepted, TCP or unix (plaintext clients of a unix
//! listener), until its connection starts.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpStream, UnixStream};

/// A client's socket as an acceptor accepted it.
#[derive(Debug)]
pub(crate) enum AcceptedSocket {
    Tcp(TcpStream),
    /// A plaintext client of a unix listener: it has no IP address (see [`UNIX_PEER`]).
    Unix(UnixStream),
}

/// What stands for a unix client's address where an IP address is kept (the books, the
/// PROXY header): the unspecified IPv4 address, port 0. Everything that names a peer says
/// `unix` instead for such a client; per-IP limits never see it (the acceptor admits a unix
/// client without a per-IP claim).
pub(crate) const UNIX_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// What stands for our own address on a unix client's PROXY header: the unspecified IPv6
/// address. Its family differs from [`UNIX_PEER`]'s on purpose: a header whose two addresses
/// differ in family is written `PROXY UNKNOWN` (v1) or with no address (v2), which is what
/// the PROXY specification asks for a client that is not on IP.
pub(crate) const UNIX_LOCAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0);
