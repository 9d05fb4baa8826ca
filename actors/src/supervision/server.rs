//! `Server`: starts one supervisor tree and owns its shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::{Arbiter, ArbiterHandle};
use slog::{info, o, Logger};

use crate::connection::actor::Connection;
use crate::connection::env::ConnectionEnv;
use crate::connection::messages::Close;
use crate::connection::messages::CloseMode;
use crate::edge::acceptor::Acceptor;
use crate::edge::admission::Limits;
use crate::edge::listeners::{AcceptOn, ListenAddr, ListenOn, Listeners};
use crate::edge::plain_listener::PlainListener;
use crate::edge::spare_fd;
use crate::error::ServerError;
use crate::fault::set::Faults;
use crate::protocol::Protocol;
use crate::service::definition::Service;
use crate::service::handler::Handler;
use crate::supervision::config::ServerConfig;
use crate::supervision::conn_description::ConnDescription;
use crate::supervision::conn_id::ConnId;
use crate::supervision::control::Readiness;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::log_throttle::Throttles;
use crate::supervision::messages::{Shutdown, ShutdownReport};
use crate::supervision::registry::HandlerRegistry;
use crate::supervision::registry::Registries;
use crate::supervision::revalidation::{RevalidationReport, Trigger};
use crate::supervision::revalidator::Revalidator;
use crate::supervision::stats::Stats;
use crate::supervision::supervisor::ConnectionSupervisor;
use crate::supervision::supervisor::{FORCE_WAIT, STOP_ACCEPTING_WAIT};
use crate::tls::reload::TlsReloader;
use crate::tls::source::LoadedTls;
use crate::upstream::config::ProxyConfig;
use crate::upstream::pool::UpstreamPool;

/// How long `Server::shutdown` waits for each worker thread to finish once it is told to stop.
const JOIN_WAIT: Duration = Duration::from_secs(1);

/// How long the questions of [`ServerHandle`] wait for a registry: a worker stuck in a
/// protocol callback never answers.
const ASK_WAIT: Duration = Duration::from_secs(5);

/// [`Server::shutdown`] returns within its grace period plus this, whatever the clients and the
/// protocol do: stopping the acceptors (1 s at most), forcing what outlived the grace period
/// (2 s), joining the worker threads (1 s).
pub const SHUTDOWN_OVERHEAD: Duration = Duration::from_secs(4);

/// Builds a [`Server`]: what it serves (given to [`Server::builder`] or [`Server::proxy`],
/// with its settings and its TLS), where it listens (each [`ServerBuilder::listen`] or
/// [`ServerBuilder::listener`], in order, at least one), and how it logs.
pub struct ServerBuilder {
    config: ServerConfig,
    service: Handler,
    tls: LoadedTls,
    log: Logger,
    faults: Faults,
    #[cfg(feature = "testing")]
    audit: Option<crate::supervision::registry::DisposalAudit>,
    /// In the order given: the first is [`Server::local_addr`].
    listeners: Vec<ListenOn>,
    /// The named services beside the default one.
    services: Vec<Service>,
}

impl ServerBuilder {
    /// Listens on `addr`, bound with the server's `backlog` and `reuse_port`; port 0 picks a
    /// free port ([`Server::local_addrs`] says which). Call it once per address: every
    /// listener serves the same protocol and shares the server's workers, limits, registries
    /// and books, so `max_connections` and the counters are server-wide. Listeners are kept in
    /// the order given, with those of [`ServerBuilder::listener`].
    ///
    /// When any listener is IPv4, an IPv6 one is bound `IPV6_V6ONLY` (as nginx does), so
    /// `0.0.0.0:443` and `[::]:443` can be served side by side; alone, an IPv6 address keeps
    /// the system's default (dual stack on Linux).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listeners.push(ListenOn::Bind(addr));
        self
    }

    /// Listens on `addr` for plaintext clients: client mode (stunnel's `client = yes`). Each
    /// is proxied to the upstreams over TLS, as the same supervised connection as a TLS
    /// client's (readers, registry, limits, `Dispose`); a client's FIN is its clean end,
    /// passed on as the upstream's `close_notify`. Needs [`Server::proxy`] with
    /// [`ProxyConfig::tls`](crate::ProxyConfig::tls). Its clients are the default
    /// service's; [`ServerBuilder::plain_listener`] gives a listener to a named service, or
    /// listens on a unix socket. These sockets are handed over by
    /// [`Server::plain_listening_sockets`], not [`Server::listening_sockets`].
    pub fn listen_plain(self, addr: SocketAddr) -> Self {
        self.plain_listener(PlainListener::tcp(addr))
    }

    /// A listener for plaintext clients (client mode), on TCP or a unix socket, whose clients
    /// are the service it names (or the default one): each is that service's connection from
    /// its accept (its upstream group, its figures, its `service` label), proxied over TLS to
    /// its upstreams. Starting refuses a listener whose service is unknown or is not a proxy
    /// to TLS upstreams.
    pub fn plain_listener(mut self, listener: PlainListener) -> Self {
        self.listeners.push(ListenOn::Plain(listener));
        self
    }

    /// Serves `listener`, a socket already bound and listening (inherited from systemd's
    /// socket activation, or handed over by the process being upgraded): the address stays
    /// where it is, with its accept queue, and is never bound again.
    ///
    /// The socket is shared with whoever handed it over, so at shutdown this server closes its
    /// own descriptors of it but never shuts it down (that would take it out of `LISTEN` for
    /// every process holding it). The price: a worker stuck in a protocol callback keeps its
    /// descriptor until the process exits, and clients queued for it wait there.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listeners.push(ListenOn::Socket(listener));
        self
    }

    /// Named services beside the default one (the builder's own TLS and protocol), each with
    /// its own names, TLS, protocol and upstream group, chosen by the SNI of each ClientHello
    /// (see [`ServiceTable`](crate::ServiceTable)). Starting refuses a table
    /// [`ServiceTable::new`](crate::ServiceTable::new) refuses.
    pub fn services(mut self, named: Vec<Service>) -> Self {
        self.services = named;
        self
    }

    /// Logs through `log` (a child per connection carries `conn_id` and `peer`).
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Uses this fault set (shared with its clones: rules installed in it, or points switched
    /// on, affect this server only).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Records every `Dispose` the registry receives (unbounded: for tests).
    #[cfg(feature = "testing")]
    pub(crate) fn audit(mut self, audit: crate::supervision::registry::DisposalAudit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Binds, starts the worker arbiters (each with its acceptor and its registry) and the
    /// supervisor. Must run inside an actix system; the supervisor lives on the calling arbiter.
    pub fn start(self) -> Result<Server, ServerError> {
        self.check()?;
        // The services are checked whole before anything starts.
        let tls = TlsReloader::new(self.tls, self.service, self.services)
            .map_err(|e| ServerError::Config(e.to_string()))?;
        // The default service's own plaintext listeners (`--listen-plain`): while they are
        // bound, a reload must keep the default a proxy to TLS upstreams.
        let default_has_plain = (self.listeners.iter())
            .filter_map(ListenOn::plain_service)
            .any(|service| service.is_none());
        if default_has_plain {
            tls.has_plain_listeners();
        }
        let listeners = Arc::new(Listeners::open(&self.config, self.listeners)?);
        // Together never empty: checked above.
        let (local_addrs, plain_addrs) = (listeners.addrs(), listeners.plain_addrs());
        // Only unix listeners: no address to report (the unspecified one stands in).
        let first_addr = match local_addrs.first().or(plain_addrs.first()) {
            Some(addr) => *addr,
            None => crate::edge::accepted_socket::UNIX_PEER,
        };
        let log = self.log;
        // The reserve that lets an acceptor shed clients once descriptors run out; a process
        // that cannot open one now has bigger problems, and accepting works without it.
        if let Err(e) = spare_fd::reserve() {
            slog::warn!(log, "cannot reserve a spare descriptor"; "error" => %e);
        }
        let stats = Arc::new(Stats::for_workers(
            self.config.workers,
            tls.upstream_books(),
        ));
        let limits = Limits::new(&self.config, Arc::clone(&stats));
        // Each worker accepts on its own descriptor (a dup) of every listening socket. The
        // copies are made before any thread starts: a failure leaves nothing running.
        let copies = (0..self.config.workers)
            .map(|_| listeners.accepting_copies())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| ServerError::Bind {
                addr: first_addr,
                source,
            })?;
        let workers = start_workers(self.config.workers)?;
        #[cfg(not(feature = "testing"))]
        let registries = start_registries(&workers, &stats, &log);
        #[cfg(feature = "testing")]
        let registries = start_registries(&workers, &stats, &log, self.audit.as_ref());
        let revalidator = Arc::new(Revalidator::new(
            registries.clone(),
            Arc::clone(&stats),
            log.clone(),
            self.config.revalidate_live,
        ));
        let on_reload = Arc::clone(&revalidator);
        tls.on_policy_change(Box::new(move |table, changed| {
            on_reload.start(table, Some(changed), Trigger::Reload)
        }));
        // Pause, drain and readiness live with the admission limits.
        let control = Arc::clone(&limits);
        let env = Arc::new(ConnectionEnv {
            tls: tls.clone(),
            config: self.config,
            stats: Arc::clone(&stats),
            limits,
            faults: self.faults.clone(),
            log: log.clone(),
            throttles: Throttles::default(),
            next_id: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            lifetime_spread: std::collections::hash_map::RandomState::new(),
        });
        let acceptors = start_acceptors(&workers, &registries, copies, &env);
        log_listening(&listeners, workers.len(), &env);
        let supervisor =
            ConnectionSupervisor::new(acceptors, Arc::clone(&listeners), registries.clone(), env)
                .start();
        Ok(Server {
            listeners,
            supervisor,
            registries,
            workers,
            local_addrs,
            plain_addrs,
            first_addr,
            stats,
            faults: self.faults,
            log,
            tls,
            control,
            revalidator,
        })
    }

    /// What must hold before anything starts: a valid configuration, an actix system to run
    /// in, something to listen on, and an upstream for a proxy.
    fn check(&self) -> Result<(), ServerError> {
        self.config.validate()?;
        if actix_rt::System::try_current().is_none() {
            return Err(ServerError::NoSystem);
        }
        if self.listeners.is_empty() {
            return Err(ServerError::Config(
                "nothing to listen on: give the builder an address (listen) or a socket \
                 (listener)"
                    .into(),
            ));
        }
        for service in self.listeners.iter().filter_map(ListenOn::plain_service) {
            let connects_over_tls = match service {
                None => self.service.connects_over_tls(),
                Some(label) => {
                    let named = self.services.iter().find(|s| s.label() == label);
                    let Some(named) = named else {
                        return Err(ServerError::Config(format!(
                            "a plaintext listener names service {label}, which is not one of \
                             the services"
                        )));
                    };
                    named.handler.connects_over_tls()
                }
            };
            if !connects_over_tls {
                return Err(ServerError::Config(format!(
                    "a plaintext listener (client mode) needs a proxy to TLS upstreams \
                     (ProxyConfig::tls); service {} is not one",
                    service.unwrap_or(crate::service::definition::DEFAULT_SERVICE)
                )));
            }
        }
        self.service.check().map_err(ServerError::Config)
    }
}

/// A registry on each worker: a connection's `Register` and `Dispose` never leave its thread.
/// The books they keep (`Stats`) are one, behind one lock.
fn start_registries(
    workers: &[Arbiter],
    stats: &Arc<Stats>,
    log: &Logger,
    #[cfg(feature = "testing")] audit: Option<&crate::supervision::registry::DisposalAudit>,
) -> Registries<Connection> {
    let registries = workers
        .iter()
        .map(|worker| {
            #[allow(unused_mut)] // only the test harness's audit changes it
            let mut registry = HandlerRegistry::new(Arc::clone(stats), log.clone());
            #[cfg(feature = "testing")]
            if let Some(audit) = audit {
                registry = registry.with_audit(Arc::clone(audit));
            }
            HandlerRegistry::start_in_arbiter(&worker.handle(), move |_| registry)
        })
        .collect();
    Registries(registries)
}

/// An acceptor on each worker, over that worker's copies of the listening sockets, starting
/// connections in that worker's registry.
fn start_acceptors(
    workers: &[Arbiter],
    registries: &Registries<Connection>,
    copies: Vec<Vec<AcceptOn>>,
    env: &Arc<ConnectionEnv>,
) -> Vec<Addr<Acceptor>> {
    let each_worker = workers.iter().zip(&registries.0).zip(copies).enumerate();
    each_worker
        .map(|(index, ((worker, registry), copy))| {
            let env = Arc::clone(env);
            let registry = registry.clone();
            Acceptor::start_in_arbiter(&worker.handle(), move |_| {
                Acceptor::new(copy, index, env, registry)
            })
        })
        .collect()
}

/// One line per listener: what it serves and under which limits (`listening`, and
/// `listening plain` for a plaintext listener of client mode, with its service).
fn log_listening(listeners: &Listeners, workers: usize, env: &ConnectionEnv) {
    let services = env.tls.services();
    let protocol = services.default_service().protocol();
    for (addr, service) in listeners.plain() {
        let unix = matches!(addr, ListenAddr::Unix(_));
        info!(env.log, "listening plain"; "listen_plain" => addr.to_string(),
            "service" => service.unwrap_or(crate::service::definition::DEFAULT_SERVICE),
            "protocol" => "proxy", "workers" => workers,
            "per_ip_limits" => !unix);
    }
    for addr in listeners.addrs() {
        info!(env.log, "listening"; "listen" => addr.to_string(), "protocol" => protocol,
            "workers" => workers,
            "max_connections" => env.config.max_connections,
            "max_handshakes" => env.config.effective_max_handshakes(),
            "max_connections_per_ip" => env.config.max_connections_per_ip,
            "max_handshakes_per_ip" => env.config.effective_max_handshakes_per_ip(),
            "max_handshake_rate" => env.config.max_handshake_rate,
            "max_handshake_rate_per_ip" => env.config.max_handshake_rate_per_ip);
    }
}

/// A running supervisor tree: the supervisor, the worker arbiters and their registries.
///
/// Dropping a `Server` without [`Server::shutdown`] leaves its actors running until the actix
/// system stops, and the system's stop drops connections without the shutdown protocol: call
/// `shutdown`.
pub struct Server {
    /// The listening sockets (this server's own descriptors), for
    /// [`Server::listening_sockets`] and the shutdown.
    listeners: Arc<Listeners>,
    supervisor: Addr<ConnectionSupervisor>,
    registries: Registries<Connection>,
    workers: Vec<Arbiter>,
    /// One per TLS listener, in the order the builder was given them.
    local_addrs: Vec<SocketAddr>,
    /// One per plaintext listener (client mode), in order.
    plain_addrs: Vec<SocketAddr>,
    /// The first TLS listener's address, else the first plaintext one's.
    first_addr: SocketAddr,
    stats: Arc<Stats>,
    faults: Faults,
    log: Logger,
    tls: TlsReloader,
    /// Pause, drain and readiness (they live with the admission limits).
    control: Arc<Limits>,
    /// Revalidation passes over the registries (a reload's, and those asked for).
    revalidator: Arc<Revalidator<Connection>>,
}

impl Server {
    /// A builder serving `protocol` over `tls` with `config`. [`Server::tls_reloader`]
    /// replaces the TLS configuration while it runs.
    pub fn builder(config: ServerConfig, tls: LoadedTls, protocol: impl Protocol) -> ServerBuilder {
        Server::builder_for(config, tls, Handler::Sessions(Arc::new(protocol)))
    }

    /// A builder for a TLS-terminating proxy to upstreams (one or several, TCP or unix,
    /// plaintext or TLS, see [`ProxyConfig`]); starting it fails if `proxy` lists no upstream,
    /// or a TLS upstream has no name to verify.
    pub fn proxy(config: ServerConfig, tls: LoadedTls, proxy: ProxyConfig) -> ServerBuilder {
        Server::builder_for(
            config,
            tls,
            Handler::Proxy(Arc::new(UpstreamPool::new(proxy))),
        )
    }

    /// A builder for a server that does not terminate TLS (nginx's `ssl_preread`, haproxy's
    /// `req.ssl_sni`): each client's ClientHello is read for its SNI, then every byte the
    /// client sends, that hello first, goes untouched to an upstream of `proxy` (plaintext TCP
    /// or unix: the upstream is the TLS server), and back. `tls` is never served to a client
    /// (no handshake completes here); it is what the builder requires, and what a later
    /// service terminating TLS would use. Starting it fails if `proxy` lists no upstream or
    /// asks for TLS to them.
    pub fn passthrough(config: ServerConfig, tls: LoadedTls, proxy: ProxyConfig) -> ServerBuilder {
        Server::builder_for(
            config,
            tls,
            Handler::Passthrough(Arc::new(UpstreamPool::new(proxy))),
        )
    }

    fn builder_for(config: ServerConfig, tls: LoadedTls, service: Handler) -> ServerBuilder {
        ServerBuilder {
            config,
            service,
            tls,
            log: Logger::root(slog::Discard, o!()),
            faults: Faults::default(),
            #[cfg(feature = "testing")]
            audit: None,
            listeners: Vec::new(),
            services: Vec::new(),
        }
    }

    /// The address actually bound for the first TLS listener (useful with port 0), or for the
    /// first plaintext one if there is no TLS listener (`0.0.0.0:0` with unix listeners only).
    pub fn local_addr(&self) -> SocketAddr {
        self.first_addr
    }

    /// The addresses actually bound, one per TLS listener, the first first.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The TCP addresses actually bound, one per plaintext TCP listener
    /// ([`ServerBuilder::listen_plain`]); unix ones have none.
    pub fn plain_addrs(&self) -> &[SocketAddr] {
        &self.plain_addrs
    }

    /// A new descriptor of the first listening socket, to hand to another process (a binary
    /// upgrade). Until [`Server::set_listener_shared`] says it is shared, this server's
    /// shutdown still shuts the socket down, for every process holding it.
    pub fn listening_socket(&self) -> std::io::Result<std::net::TcpListener> {
        self.listeners
            .copies()?
            .into_iter()
            .next()
            .ok_or_else(|| std::io::Error::other("no listening socket"))
    }

    /// A new descriptor of every listening socket, in the order of [`Server::local_addrs`],
    /// to hand to another process (a binary upgrade); see [`Server::listening_socket`].
    pub fn listening_sockets(&self) -> std::io::Result<Vec<std::net::TcpListener>> {
        self.listeners.copies()
    }

    /// A new descriptor of every plaintext listener's socket (TCP or unix), in the order
    /// given, to hand to another process (a binary upgrade), which tells them apart by the
    /// address or path each is bound to. [`Server::set_listener_shared`] covers them too: a
    /// shared unix socket's file is left in place at exit.
    pub fn plain_listening_sockets(&self) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
        self.listeners.plain_copies()
    }

    /// Says whether another process serves from these listening sockets too (all of them).
    /// When it does, shutdown stops this server's acceptors and closes their descriptors but
    /// leaves the sockets listening, so clients in their accept queues are the other
    /// process's to accept.
    pub fn set_listener_shared(&self, shared: bool) {
        self.listeners.set_shared(shared);
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The handle that replaces the TLS configuration while the server runs (SIGHUP,
    /// `--watch-certs`); live connections keep the configuration they started with, but are
    /// checked against a changed client-certificate policy (see [`ServerHandle::revalidate`]).
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }

    /// The registries, one per worker (the test harness asks each on its own).
    #[cfg(feature = "testing")]
    pub(crate) fn registries(&self) -> &[Addr<HandlerRegistry<Connection>>] {
        &self.registries.0
    }

    /// Every connection registered now, on any worker, in id order (a worker that does not
    /// answer within 5 s is left out).
    pub async fn live_connections(&self) -> Vec<ConnId> {
        self.handle().live_connections().await
    }

    /// A handle to the running tree that can be sent to other tasks and threads, for what must
    /// stay possible while [`Server::shutdown`] owns the server (forcing it, say).
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            control: Arc::clone(&self.control),
            registries: self.registries.clone(),
            workers: self.workers.iter().map(Arbiter::handle).collect(),
            tls: self.tls.clone(),
            revalidator: Arc::clone(&self.revalidator),
        }
    }

    /// The fault set of this server: a rule installed in it (or a point switched on) affects
    /// this server only.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Closes one connection with reason `killed`. Returns whether it was live.
    pub async fn kill(&self, id: ConnId, mode: CloseMode) -> bool {
        self.handle().kill(id, mode).await
    }

    /// Runs the shutdown protocol: stop accepting (the port stops accepting at once), ask
    /// every connection to close gracefully, wait for the registries to empty or `grace` to pass,
    /// force the rest, then stop and join the worker arbiters.
    ///
    /// Returns within `grace` + [`SHUTDOWN_OVERHEAD`] whatever happens. A worker stuck in a
    /// protocol callback is abandoned (its thread is left running): its connections are
    /// counted in `left_registered` and the worker in `abandoned_workers`.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        self.shutdown_with(Shutdown {
            grace,
            linger: Duration::ZERO,
        })
        .await
    }

    /// Like [`Server::shutdown`], but once accepting stopped, connections first get `linger`
    /// to end on their own (a request in flight completes, a handshake accepted a moment ago
    /// runs) before they are asked to close. What a process handing its socket to its
    /// successor (a binary upgrade) does: a client served by neither would otherwise see its
    /// fresh connection closed before its answer. Returns within `linger + grace` +
    /// [`SHUTDOWN_OVERHEAD`].
    pub async fn drain(self, linger: Duration, grace: Duration) -> ShutdownReport {
        self.shutdown_with(Shutdown { grace, linger }).await
    }

    async fn shutdown_with(self, shutdown: Shutdown) -> ShutdownReport {
        let started = Instant::now();
        // Not ready from this instant: a load balancer stops sending before anything closes.
        self.control.control.set_stopping();
        // The supervisor bounds every step itself; this bound only guards against a bug there.
        // (with a margin, so that the supervisor's own report, built at its last deadline,
        // still arrives).
        let protocol_bound = STOP_ACCEPTING_WAIT
            .saturating_add(shutdown.linger)
            .saturating_add(shutdown.grace)
            .saturating_add(FORCE_WAIT)
            .saturating_add(Duration::from_millis(500));
        let mut report = tokio::time::timeout(protocol_bound, self.supervisor.send(shutdown))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        for worker in &self.workers {
            worker.stop();
        }
        report.abandoned_workers = join_within(self.workers, JOIN_WAIT).await;
        // The registries stopped with their workers; the books outlive them. A connection
        // still counted here outlived the forced close (its worker is stuck, or was dropped
        // with its Dispose still queued).
        report.left_registered = self.stats.ledger().active as usize;
        report.elapsed = started.elapsed();
        if report.left_registered > 0 || report.abandoned_workers > 0 {
            slog::error!(self.log, "shutdown incomplete: connections left registered";
                "left_registered" => report.left_registered,
                "abandoned_workers" => report.abandoned_workers);
        }
        info!(self.log, "shutdown complete";
            "forced" => report.forced,
            "left_registered" => report.left_registered,
            "elapsed_ms" => report.elapsed.as_millis() as u64);
        report
    }
}

/// Starts `count` worker arbiters. actix panics when the OS refuses a thread; that becomes an
/// error here, and the workers already started are stopped.
fn start_workers(count: usize) -> Result<Vec<Arbiter>, ServerError> {
    let mut workers = Vec::with_capacity(count);
    for _ in 0..count {
        match std::panic::catch_unwind(Arbiter::new) {
            Ok(worker) => workers.push(worker),
            Err(_) => {
                for worker in &workers {
                    worker.stop();
                }
                return Err(ServerError::WorkerSpawn);
            }
        }
    }
    Ok(workers)
}

/// Joins the worker threads, each on a thread of its own so that a stuck one is waited for
/// only until `within` passes. Returns how many did not finish in time (they are abandoned).
async fn join_within(workers: Vec<Arbiter>, within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    let joins = workers.into_iter().map(|worker| {
        let (done, joined) = tokio::sync::oneshot::channel();
        // If the thread cannot be spawned, `done` is dropped and the worker counts as abandoned.
        let _ = std::thread::Builder::new()
            .name("tlsvisor-join".into())
            .spawn(move || {
                let _ = done.send(worker.join().is_ok());
            });
        async move {
            matches!(
                tokio::time::timeout_at(deadline, joined).await,
                Ok(Ok(true))
            )
        }
    });
    futures::future::join_all(joins)
        .await
        .into_iter()
        .filter(|joined| !joined)
        .count()
}

/// A cloneable, `Send` handle to a running server's registries.
#[derive(Clone)]
pub struct ServerHandle {
    control: Arc<Limits>,
    registries: Registries<Connection>,
    workers: Vec<ArbiterHandle>,
    tls: TlsReloader,
    revalidator: Arc<Revalidator<Connection>>,
}

impl ServerHandle {
    /// Runs an empty task on every worker thread and returns how many did not run it within
    /// `within`: a worker stuck in a protocol callback (or stopped) does not. What a watchdog
    /// asks before it tells its supervisor (systemd's `WATCHDOG=1`) that the process is alive.
    pub async fn unresponsive_workers(&self, within: Duration) -> usize {
        let pings = self.workers.iter().map(|worker| {
            let (pong, answered) = tokio::sync::oneshot::channel();
            // A stopped arbiter refuses the task and drops `pong`: it counts as unresponsive.
            worker.spawn(async move {
                let _ = pong.send(());
            });
            async move { matches!(tokio::time::timeout(within, answered).await, Ok(Ok(()))) }
        });
        futures::future::join_all(pings)
            .await
            .into_iter()
            .filter(|answered| !answered)
            .count()
    }

    /// Checks every open connection's client certificate against the client-certificate
    /// policy in use now, as a new handshake would (CA bundle, CRLs, allow-list, dates, at this
    /// moment), and closes those it refuses gracefully, reason `credentials_revoked`; the
    /// others are untouched. What a reload that changes the policy does by itself; this runs
    /// one on demand (`POST /revalidate`). Each connection checks itself on its own worker.
    ///
    /// Returns the counts once every connection gave its verdict (at most 30 s: a worker stuck
    /// in a protocol callback gives none, and the report says `complete: false`), or `None`
    /// if [`ServerConfig::revalidate_live`] is off (connections keep no chain to check).
    pub async fn revalidate(&self) -> Option<RevalidationReport> {
        self.revalidator.run(&self.tls.services()).await
    }

    /// Every connection registered now, on any worker that answers within 5 s, in id order.
    pub async fn live_connections(&self) -> Vec<ConnId> {
        self.registries.live(Instant::now() + ASK_WAIT).await
    }

    /// Closes one connection with reason `killed`. Returns whether it was live.
    pub async fn kill(&self, id: ConnId, mode: CloseMode) -> bool {
        self.registries
            .kill(id, mode, Instant::now() + ASK_WAIT)
            .await
    }

    /// Asks every live connection to close with reason `shutdown` (forced: each stops at once
    /// and its socket closes), waiting at most `within` for the registries to take the
    /// request. Returns how many were asked. What a second SIGTERM does during a slow shutdown.
    pub async fn close_all(&self, mode: CloseMode, within: Duration) -> usize {
        let close = Close {
            mode,
            reason: DisposeReason::Shutdown,
        };
        self.registries
            .close_all(close, Instant::now() + within)
            .await
    }

    /// Stops accepting; live connections are not touched. Acceptors stop polling the
    /// listener, so new clients wait in the kernel's backlog (their TCP connect completes,
    /// their TLS handshake waits) until [`ServerHandle::resume`]. Returns whether it was
    /// accepting.
    pub fn pause(&self) -> bool {
        self.control.control.set_paused(true)
    }

    /// Accepts again after [`ServerHandle::pause`] or a drain (which stops closing
    /// connections). Returns whether it was paused.
    pub fn resume(&self) -> bool {
        self.control.control.set_draining(false);
        self.control.control.set_paused(false)
    }

    /// Whether the server should be sent new clients (a readiness check), and if not why.
    pub fn readiness(&self) -> Readiness {
        self.control.control.readiness()
    }

    /// Pauses accepting and marks the server draining (not ready) at once, when called; the
    /// future it returns then asks the connections live now to close gracefully (reason
    /// `shutdown`), one after another spread evenly over `period`, so their clients reconnect
    /// elsewhere gradually. It resolves once every one was asked (or as soon as
    /// [`ServerHandle::resume`] is called meanwhile), with how many were asked. Accepting
    /// stays paused afterwards.
    ///
    /// Any `period` is safe: one the clock cannot reach (`Duration::MAX`) schedules the closes
    /// as late as it can, and only a `resume` ends such a drain. A caller taking the period
    /// from an operator should bound it (the binary refuses more than a day).
    pub fn drain(&self, period: Duration) -> impl std::future::Future<Output = usize> + 'static {
        self.drain_accepting_for(Duration::ZERO, period)
    }

    /// [`ServerHandle::drain`], but accepting goes on for `accept_for` after readiness turns
    /// off, before the pause and the closes: what a load balancer that learns readiness by
    /// polling it (haproxy's `inter`, a Kubernetes endpoint update) needs, since it keeps
    /// sending new clients until its next check. Paused at once, those clients would wait in
    /// the backlog and be reset when the process exits; accepted, they are served. A
    /// [`ServerHandle::resume`] meanwhile ends the drain before anything is paused or closed.
    pub fn drain_accepting_for(
        &self,
        accept_for: Duration,
        period: Duration,
    ) -> impl std::future::Future<Output = usize> + 'static {
        self.control.control.set_draining(true);
        if accept_for.is_zero() {
            self.control.control.set_paused(true);
        }
        let handle = self.clone();
        async move {
            let control = &handle.control.control;
            if !accept_for.is_zero() {
                // tokio's `sleep` takes any duration (one past the clock's range sleeps as long
                // as it can); a `resume` ends the wait at once.
                tokio::select! {
                    _ = tokio::time::sleep(accept_for) => {}
                    _ = control.until_not_draining() => return 0,
                }
                if !control.readiness().draining {
                    return 0;
                }
                control.set_paused(true);
            }
            handle.close_spread(period).await
        }
    }

    async fn close_spread(&self, period: Duration) -> usize {
        let control = &self.control.control;
        let ids = self.live_connections().await;
        let started = tokio::time::Instant::now();
        // No arithmetic here can overflow or divide by zero, whatever `period` and however
        // many connections: the step is at least `period / u32::MAX`, and a close time past
        // the clock's range waits as long as the clock can.
        let count = u32::try_from(ids.len()).unwrap_or(u32::MAX).max(1);
        let step = period / count;
        let close = Close {
            mode: CloseMode::Graceful,
            reason: DisposeReason::Shutdown,
        };
        let mut asked = 0;
        for (n, id) in ids.into_iter().enumerate() {
            // The first one step in, the last at the end of the period: readiness is off for
            // a step before anything closes.
            let nth = u32::try_from(n).unwrap_or(u32::MAX).saturating_add(1);
            let due = step
                .checked_mul(nth)
                .and_then(|offset| started.checked_add(offset));
            let wait = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => tokio::time::sleep(Duration::MAX).await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = control.until_not_draining() => break,
            }
            if !control.readiness().draining {
                break;
            }
            if self
                .registries
                .close_one(id, close, Instant::now() + ASK_WAIT)
                .await
            {
                asked += 1;
            }
        }
        asked
    }

    /// Describes the `limit` live connections with the lowest ids above `after` (all from
    /// the first when `None`), in id order: the pages of a listing. Each connection answers
    /// for itself, by message; one whose worker does not answer within 5 s is left out.
    pub async fn connections(&self, after: Option<ConnId>, limit: usize) -> Vec<ConnDescription> {
        self.registries
            .describe(after, limit, Instant::now() + ASK_WAIT)
            .await
    }

    /// Describes one live connection (`None` if it is not live, or did not answer in 5 s).
    pub async fn connection(&self, id: ConnId) -> Option<ConnDescription> {
        let after = id.0.checked_sub(1).map(ConnId);
        self.connections(after, 1)
            .await
            .into_iter()
            .find(|d| d.id == id)
    }
}
