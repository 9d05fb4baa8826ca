//! `TestServer`: a real server on its own thread and actix system, for tests.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use slog::{o, Logger};
use tokio::sync::oneshot;

use super::audit::each_disposed_once;
use super::client::{client_config, TlsClient};
use super::leak::ServerSockets;
use super::wait::eventually;
use crate::connection::actor::Connection;
use crate::connection::messages::CloseMode;
use crate::fault::set::Faults;
use crate::protocol::Protocol;
use crate::supervision::config::ServerConfig;
use crate::supervision::conn_id::ConnId;
use crate::supervision::messages::LiveConnections;
use crate::supervision::messages::ShutdownReport;
use crate::supervision::registry::DisposalAudit;
use crate::supervision::registry::DisposalRecord;
use crate::supervision::registry::HandlerRegistry;
use crate::supervision::server::Server;
use crate::supervision::server::ServerHandle;
use crate::supervision::server::SHUTDOWN_OVERHEAD;
use crate::supervision::stats::Snapshot;
use crate::supervision::stats::Stats;
use crate::tls::dev_certs::DevCerts;
use crate::tls::reload::TlsReloader;
use crate::tls::source::LoadedTls;
use crate::upstream::config::ProxyConfig;

/// Grace a dropped `TestServer` gives its connections.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// How long past its own bound (grace + `SHUTDOWN_OVERHEAD`) the server's thread is waited for
/// before it is given up on.
const JOIN_MARGIN: Duration = Duration::from_secs(5);

/// How long a question to one registry may take before the harness gives up on it.
const ASK_WAIT: Duration = Duration::from_secs(5);

/// Runs `future` to completion on a small runtime of the calling thread (the server's questions
/// use tokio's timer for their deadlines).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime") // harness plumbing: failing here fails the test
        .block_on(future)
}

/// A change to a test server's configuration, applied on its thread.
type ConfigChange = Box<dyn FnOnce(&mut ServerConfig) + Send>;

/// Sets up a [`TestServer`].
pub struct TestServerBuilder {
    configure: Vec<ConfigChange>,
    log: Logger,
    certs: Option<DevCerts>,
    tls: Option<LoadedTls>,
    also_listen: Vec<SocketAddr>,
}

impl TestServerBuilder {
    /// Uses these development certificates (the CA `connect` trusts, and the served
    /// certificate unless [`TestServerBuilder::tls`] gives another).
    pub fn certs(mut self, certs: DevCerts) -> Self {
        self.certs = Some(certs);
        self
    }

    /// Serves this TLS configuration (e.g. [`TlsSource::load`](crate::TlsSource::load) of files
    /// signed by the CA given to [`TestServerBuilder::certs`]).
    pub fn tls(mut self, tls: LoadedTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Changes the server's configuration (listen address and TLS are the harness's own).
    pub fn config(mut self, change: impl FnOnce(&mut ServerConfig) + Send + 'static) -> Self {
        self.configure.push(Box::new(change));
        self
    }

    /// Also listens on `addr` (e.g. `[::1]:0`), with the same workers, registries, limits
    /// and books as the first address; [`TestServer::addrs`] lists them all.
    pub fn also_listen(mut self, addr: SocketAddr) -> Self {
        self.also_listen.push(addr);
        self
    }

    /// Logs through `log` instead of discarding.
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Starts `protocol` on 127.0.0.1, port 0, with freshly generated certificates.
    pub fn start(self, protocol: impl Protocol) -> TestServer {
        self.start_with(move |config, tls| Server::builder(config, tls, protocol))
    }

    /// Starts a TLS-terminating proxy to `proxy.upstream`.
    pub fn start_proxy(self, proxy: ProxyConfig) -> TestServer {
        self.start_with(move |config, tls| Server::proxy(config, tls, proxy))
    }

    /// Resolves what every way of starting shares: certificates, configuration, the audit.
    pub(super) fn prepare(self) -> Setup {
        let certs = match self.certs {
            Some(certs) => certs,
            None => DevCerts::generate().expect("generate test certificates"), // harness setup: failing here fails the test
        };
        let tls = match self.tls {
            Some(tls) => tls,
            None => certs.server_tls().expect("test certificates load"), // harness setup: failing here fails the test
        };
        let mut config = ServerConfig::default();
        for change in self.configure {
            change(&mut config);
        }
        let listen = std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0)))
            .chain(self.also_listen)
            .collect();
        Setup {
            certs,
            config,
            tls,
            faults: Faults::default(),
            audit: Arc::new(Mutex::new(Vec::new())),
            log: self.log,
            listen,
        }
    }

    fn start_with(
        self,
        make: impl FnOnce(ServerConfig, LoadedTls) -> crate::supervision::server::ServerBuilder
            + Send
            + 'static,
    ) -> TestServer {
        let setup = self.prepare();
        let (certs, faults, audit) = (
            setup.certs.clone(),
            setup.faults.clone(),
            Arc::clone(&setup.audit),
        );
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<Duration>();
        let (done_tx, done_rx) = mpsc::channel::<ShutdownReport>();
        let thread = std::thread::Builder::new()
            .name("tlsvisor-test-server".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let (config, tls) = (setup.config.clone(), setup.tls.clone());
                    let builder = setup.builder(make(config, tls));
                    let server = match builder.start() {
                        Ok(server) => server,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((
                        server.local_addrs().to_vec(),
                        server.stats(),
                        server.handle(),
                        server.registries().to_vec(),
                        server.tls_reloader(),
                    )));
                    let grace = stop_rx.await.unwrap_or(DROP_GRACE);
                    let _ = done_tx.send(server.shutdown(grace).await);
                })
            })
            .expect("spawn the test server thread"); // harness setup: failing here fails the test
        let (addrs, stats, handle, registries, tls) = ready_rx
            .recv()
            .expect("test server thread reports") // harness setup: failing here fails the test
            .unwrap_or_else(|e| panic!("test server failed to start: {e}"));
        TestServer {
            addrs,
            stats,
            handle,
            registries,
            faults,
            audit,
            certs,
            tls,
            stop: Some(stop_tx),
            done: Mutex::new(done_rx),
            thread: Some(thread),
        }
    }
}

/// What every way of starting a test server shares.
pub(super) struct Setup {
    pub(super) certs: DevCerts,
    pub(super) config: ServerConfig,
    pub(super) tls: LoadedTls,
    pub(super) faults: Faults,
    pub(super) audit: DisposalAudit,
    log: Logger,
    /// 127.0.0.1, port 0, then any other address asked for.
    listen: Vec<SocketAddr>,
}

impl Setup {
    /// `builder` with the harness's logger, audit, TLS and fault set.
    pub(super) fn builder(
        self,
        builder: crate::supervision::server::ServerBuilder,
    ) -> crate::supervision::server::ServerBuilder {
        let mut builder = builder.logger(self.log).audit(self.audit);
        for addr in self.listen {
            builder = builder.listen(addr);
        }
        builder.faults(self.faults)
    }
}

/// A server on its own thread and actix system, listening on a free loopback port. Dropping it
/// runs the shutdown protocol and joins the thread.
pub struct TestServer {
    /// The first is where `connect` goes.
    addrs: Vec<SocketAddr>,
    stats: Arc<Stats>,
    handle: ServerHandle,
    registries: Vec<actix::Addr<HandlerRegistry<Connection>>>,
    faults: Faults,
    audit: DisposalAudit,
    certs: DevCerts,
    tls: TlsReloader,
    stop: Option<oneshot::Sender<Duration>>,
    /// Behind a lock only so that a `TestServer` can be shared with scoped threads.
    done: Mutex<mpsc::Receiver<ShutdownReport>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A builder with the default configuration and no logging.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            configure: Vec::new(),
            log: Logger::root(slog::Discard, o!()),
            certs: None,
            tls: None,
            also_listen: Vec::new(),
        }
    }

    /// Starts `protocol` with the defaults.
    pub fn start(protocol: impl Protocol) -> TestServer {
        TestServer::builder().start(protocol)
    }

    /// Where the server listens (its first address).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every address the server listens on, the first one first.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The server's counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.stats.snapshot()
    }

    /// Closes connection `id` with reason `killed`, as [`Server::kill`](crate::Server::kill)
    /// does (only the registry of its worker knows it). Returns whether it was live.
    pub fn kill(&self, id: ConnId, mode: CloseMode) -> bool {
        block_on(self.handle.kill(id, mode))
    }

    /// Runs a revalidation pass now and waits for its report, as
    /// [`ServerHandle::revalidate`] does (`None` with `revalidate_live` off).
    pub fn revalidate(&self) -> Option<crate::RevalidationReport> {
        block_on(self.handle.revalidate())
    }

    /// Every id registered now, on any worker, in id order, as
    /// [`Server::live_connections`](crate::Server::live_connections) answers.
    pub fn live_connections(&self) -> Vec<ConnId> {
        block_on(self.handle.live_connections())
    }

    /// The ids registered now, per worker (one list per registry).
    pub fn live_by_worker(&self) -> Vec<Vec<ConnId>> {
        self.registries
            .iter()
            .map(|registry| {
                block_on(async {
                    tokio::time::timeout(ASK_WAIT, registry.send(LiveConnections)).await
                })
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
            })
            .collect()
    }

    /// This server's fault set.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The certificates the server uses (clients trust `ca_cert_pem`).
    pub fn certs(&self) -> &DevCerts {
        &self.certs
    }

    /// The handle that replaces the server's TLS configuration, as
    /// [`Server::tls_reloader`](crate::Server::tls_reloader) gives it.
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }

    /// A TLS client connected to this server, handshake done.
    pub fn connect(&self) -> io::Result<TlsClient> {
        TlsClient::connect(
            self.addr(),
            client_config(self.certs.ca_cert_pem.as_bytes())?,
        )
    }

    /// A TLS client connected to `addr`, one of [`TestServer::addrs`], handshake done.
    pub fn connect_to(&self, addr: SocketAddr) -> io::Result<TlsClient> {
        TlsClient::connect(addr, client_config(self.certs.ca_cert_pem.as_bytes())?)
    }

    /// A TLS client connected from the local address `source` (127.0.0.2 stands for another
    /// client host), handshake done.
    pub fn connect_from(&self, source: std::net::IpAddr) -> io::Result<TlsClient> {
        let config = client_config(self.certs.ca_cert_pem.as_bytes())?;
        TlsClient::connect_from(source, self.addr(), config)
    }

    /// Waits up to `within` for the counters to satisfy `check`; panics with `what` and the last
    /// snapshot if they never do.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&Snapshot) -> bool,
    ) -> Snapshot {
        let mut last = self.snapshot();
        let held = eventually(within, || {
            last = self.snapshot();
            assert!(
                last.ledger.is_balanced(),
                "accepted != active + disposed: {:?}",
                last.ledger
            );
            check(&last)
        });
        assert!(
            held,
            "timed out waiting for {what}; last snapshot: {last:?}"
        );
        last
    }

    /// Waits until no connection is live. Only meaningful once the connections of interest are
    /// known to be registered (a `Register` may still be in flight right after a connect): use
    /// [`TestServer::wait_disposed`] otherwise.
    pub fn wait_idle(&self, within: Duration) -> Snapshot {
        self.wait_for("active == 0", within, |s| s.ledger.active == 0)
    }

    /// Waits until at least `count` connections were disposed and none is live.
    pub fn wait_disposed(&self, count: u64, within: Duration) -> Snapshot {
        self.wait_for(&format!("{count} disposed, 0 active"), within, |s| {
            s.ledger.disposed_total() >= count && s.ledger.active == 0
        })
    }

    /// Every `Dispose` the registry received so far, in order, duplicates included.
    pub fn disposals(&self) -> Vec<DisposalRecord> {
        self.audit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asserts that every accepted id was disposed exactly once, and that the duplicate and
    /// fallback counters are 0. Returns the reason of each id.
    pub fn assert_each_disposed_once(&self) -> BTreeMap<ConnId, DisposalRecord> {
        each_disposed_once(&self.snapshot().ledger, self.disposals())
    }

    /// Sockets on the server's (first) port that are not listening: its connections, counted by state
    /// (other servers of the same process are on other ports and do not count).
    pub fn server_sockets(&self) -> io::Result<ServerSockets> {
        ServerSockets::on_port(self.addr().port())
    }

    /// Per-IP limit counts held now: the number of client addresses in the table (0 once no
    /// connection is live, or the counts drifted).
    pub fn per_ip_clients(&self) -> usize {
        self.snapshot().per_ip_clients
    }

    /// The reason of each disposal in id order, after
    /// [`TestServer::assert_each_disposed_once`].
    pub fn disposal_reasons(&self) -> Vec<crate::supervision::dispose_reason::DisposeReason> {
        self.assert_each_disposed_once()
            .values()
            .map(|record| record.reason)
            .collect()
    }

    /// Runs the shutdown protocol with `grace` and joins the server's thread. Panics if the
    /// server does not finish within its own bound (grace + `SHUTDOWN_OVERHEAD`) plus a margin.
    pub fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        self.stop_and_join(grace)
            .unwrap_or_else(|| panic!("the test server did not shut down within its bound"))
    }

    /// `None` if the server's thread did not finish in time; it is then left running.
    fn stop_and_join(&mut self, grace: Duration) -> Option<ShutdownReport> {
        let thread = self.thread.take()?;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        let report = self
            .done
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(grace + SHUTDOWN_OVERHEAD + JOIN_MARGIN)
            .ok()?;
        // The report is the thread's last act: this join returns at once.
        let _ = thread.join();
        Some(report)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() && self.stop_and_join(DROP_GRACE).is_none() {
            eprintln!("tlsvisor TestServer: the server did not shut down in time; left running");
        }
    }
}
