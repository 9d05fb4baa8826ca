//! `LocalTestServer`: a test server inside the caller's own actix system.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::async_client::AsyncTlsClient;
use super::audit::each_disposed_once;
use super::client::client_config;
use super::harness::TestServerBuilder;
use super::leak::ServerSockets;
use crate::error::ServerError;
use crate::fault::set::Faults;
use crate::protocol::Protocol;
use crate::supervision::conn_id::ConnId;
use crate::supervision::messages::ShutdownReport;
use crate::supervision::registry::DisposalAudit;
use crate::supervision::registry::DisposalRecord;
use crate::supervision::server::Server;
use crate::supervision::server::ServerHandle;
use crate::supervision::stats::Snapshot;
use crate::tls::dev_certs::DevCerts;

/// A server started with [`TestServerBuilder::start_local`](super::TestServerBuilder::start_local)
/// in the caller's own actix system, next to the caller's own actors: the same counters, audit,
/// certificates and fault set as [`TestServer`](super::TestServer), with async waits. Call
/// [`LocalTestServer::shutdown`] before the system stops: its actors stop with the system
/// otherwise, without the shutdown protocol.
pub struct LocalTestServer {
    server: Server,
    certs: DevCerts,
    faults: Faults,
    audit: DisposalAudit,
}

impl TestServerBuilder {
    /// Starts `protocol` in the caller's own actix system (an `#[actix_rt::test]`, an
    /// application under test), with the same certificates, audit and fault set as
    /// [`TestServerBuilder::start`]; its waits are async. Must be called inside a system.
    pub fn start_local(self, protocol: impl Protocol) -> Result<LocalTestServer, ServerError> {
        let setup = self.prepare();
        let (certs, faults, audit) = (
            setup.certs.clone(),
            setup.faults.clone(),
            Arc::clone(&setup.audit),
        );
        let (config, tls) = (setup.config.clone(), setup.tls.clone());
        let server = setup
            .builder(Server::builder(config, tls, protocol))
            .start()?;
        Ok(LocalTestServer::new(server, certs, faults, audit))
    }
}

impl LocalTestServer {
    pub(super) fn new(
        server: Server,
        certs: DevCerts,
        faults: Faults,
        audit: DisposalAudit,
    ) -> Self {
        LocalTestServer {
            server,
            certs,
            faults,
            audit,
        }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The server's counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.server.stats().snapshot()
    }

    /// A handle to the running server (live connections, kill, close all).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// This server's fault set.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The certificates the server uses (clients trust `ca_cert_pem`).
    pub fn certs(&self) -> &DevCerts {
        &self.certs
    }

    /// An async TLS client connected to this server, handshake done.
    pub async fn connect(&self) -> io::Result<AsyncTlsClient> {
        let config = client_config(self.certs.ca_cert_pem.as_bytes())?;
        AsyncTlsClient::connect(self.addr(), config).await
    }

    /// Waits up to `within` for the counters to satisfy `check`, without blocking the system
    /// it runs in; panics with `what` and the last snapshot if they never do.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&Snapshot) -> bool,
    ) -> Snapshot {
        let deadline = Instant::now() + within;
        loop {
            let last = self.snapshot();
            assert!(
                last.ledger.is_balanced(),
                "accepted != active + disposed: {:?}",
                last.ledger
            );
            if check(&last) {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last snapshot: {last:?}"
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every `Dispose` the registry received so far, in order, duplicates included.
    pub fn disposals(&self) -> Vec<DisposalRecord> {
        self.audit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asserts that every accepted id was disposed exactly once, and that the duplicate and
    /// fallback counters are 0. Returns the record of each id.
    pub fn assert_each_disposed_once(&self) -> BTreeMap<ConnId, DisposalRecord> {
        each_disposed_once(&self.snapshot().ledger, self.disposals())
    }

    /// Sockets on this server's port, by state (see [`ServerSockets`]).
    pub fn server_sockets(&self) -> io::Result<ServerSockets> {
        ServerSockets::on_port(self.addr().port())
    }

    /// Runs the shutdown protocol with `grace`.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        self.server.shutdown(grace).await
    }
}
