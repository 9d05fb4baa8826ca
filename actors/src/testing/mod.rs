//! The public test harness (feature `testing`): what this crate's own tests use, offered to
//! anyone testing a protocol on top of it.
//!
//! - [`TestServer`]: a server on its own thread and actix system, on a free port, shut down and
//!   joined on drop, with its counters, its disposal audit and (with `fault-injection`) its own
//!   fault set.
//! - [`LocalTestServer`]: the same inside the caller's own actix system (an
//!   `#[actix_rt::test]`, next to the application's own actors), with async waits.
//! - [`TlsClient`]: a blocking rustls client over a real socket, with the rude moves tests need
//!   (drop without `close_notify`, raw bytes on the socket, another source address);
//!   [`AsyncTlsClient`], its async counterpart.
//! - [`leak`]: open fds, threads and RSS of a process, sockets in CLOSE-WAIT on a port, and
//!   [`leak::ServerSockets`], the sockets of one server by its port (what parallel tests can
//!   check without counting each other's).
//! - [`ScratchDir`]: a folder of certificate files for one test, removed on drop;
//!   [`CertificateFacts`]: what a certificate says (serial, expiry, names).
//! - [`upstream`]: a plaintext TCP upstream for proxy tests, and handlers (echo, reset, …).

mod async_client;
mod audit;
mod certificate;
mod client;
mod harness;
pub mod leak;
mod local;
mod scratch;
pub mod upstream;
mod wait;

pub use async_client::AsyncTlsClient;
pub use certificate::CertificateFacts;
pub use client::{
    client_config, client_config_accepting_any, client_config_with_cert, tcp_connect_from,
    CloseSeen, TlsClient,
};
pub use harness::{TestServer, TestServerBuilder};
pub use local::LocalTestServer;
pub use scratch::ScratchDir;
pub use upstream::TestUpstream;
pub use wait::eventually;

/// What the harness records of each disposal (its audit).
pub use crate::supervision::messages::DisposedVia;
pub use crate::supervision::registry::DisposalRecord;
