//! `Server`: starts one supervisor tree and owns its shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::Arbiter;
use slog::{info, o, Logger};
use tokio::net::TcpSocket;

use crate::connection::{ConnectionEnv, Service};
use crate::messages::{Shutdown, ShutdownReport};
use crate::registry::{DisposalAudit, Registries};
use crate::{
    Acceptor, CloseMode, ConnId, ConnectionSupervisor, Faults, HandlerRegistry, LoadedTls,
    Protocol, ProxyConfig, ServerConfig, ServerError, Stats, TlsReloader,
};

/// Builds a [`Server`].
pub struct ServerBuilder {
    config: ServerConfig,
    service: Service,
    log: Logger,
    faults: Faults,
    audit: Option<DisposalAudit>,
    tls: Option<LoadedTls>,
}

impl ServerBuilder {
    /// Serves `tls` instead of `ServerConfig::tls` (it carries the certificate list the
    /// expiry gauge shows); [`Server::tls_reloader`] replaces it later.
    pub fn tls(mut self, tls: LoadedTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Logs through `log` (a child per connection carries `conn_id` and `peer`).
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Uses this fault set; switching points on in it affects this server only.
    #[cfg(feature = "fault-injection")]
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Records every `Dispose` the registry receives (unbounded: for tests).
    pub fn audit(mut self, audit: DisposalAudit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Binds, starts the worker arbiters (each with its acceptor and its registry) and the
    /// supervisor. Must run inside an actix system; the supervisor lives on the calling arbiter.
    pub fn start(self) -> Result<Server, ServerError> {
        self.config.validate()?;
        if actix_rt::System::try_current().is_none() {
            return Err(ServerError::NoSystem);
        }
        let addr = self.config.listen;
        let bind_error = |source| ServerError::Bind { addr, source };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(bind_error)?;
        // Lets a restarted server bind while old connections sit in TIME-WAIT.
        socket.set_reuseaddr(true).map_err(bind_error)?;
        socket.bind(addr).map_err(bind_error)?;
        let listener = socket.listen(self.config.backlog).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;

        let log = self.log.new(o!("listen" => local_addr.to_string()));
        let stats = Arc::new(Stats::default());
        let workers: Vec<Arbiter> = (0..self.config.workers).map(|_| Arbiter::new()).collect();
        // A registry on each worker: a connection's Register and Dispose never leave its
        // thread. The books they keep (`Stats`) are one, behind one lock.
        let registries: Vec<Addr<HandlerRegistry>> = workers
            .iter()
            .map(|worker| {
                let mut registry = HandlerRegistry::new(Arc::clone(&stats), log.clone());
                if let Some(audit) = &self.audit {
                    registry = registry.with_audit(Arc::clone(audit));
                }
                HandlerRegistry::start_in_arbiter(&worker.handle(), move |_| registry)
            })
            .collect();
        let tls = TlsReloader::new(
            self.tls
                .unwrap_or_else(|| LoadedTls::from_config(Arc::clone(&self.config.tls))),
        );
        let env = Arc::new(ConnectionEnv {
            tls: tls.clone(),
            service: self.service,
            config: self.config,
            stats: Arc::clone(&stats),
            faults: self.faults.clone(),
            log: log.clone(),
            next_id: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        });
        let protocol = match &env.service {
            Service::Sessions(protocol) => protocol.name(),
            Service::Proxy(_) => "proxy",
        };
        // One listening socket; each worker accepts on its own descriptor of it (a dup).
        let listener = listener.into_std().map_err(bind_error)?;
        let mut acceptors = Vec::with_capacity(workers.len());
        for (worker, registry) in workers.iter().zip(&registries) {
            let copy = listener.try_clone().map_err(bind_error)?;
            let env = Arc::clone(&env);
            let registry = registry.clone();
            acceptors.push(Acceptor::start_in_arbiter(&worker.handle(), move |_| {
                Acceptor::new(copy, env, registry)
            }));
        }
        drop(listener);
        info!(log, "listening"; "protocol" => protocol, "workers" => workers.len());
        let registries = Registries(registries);
        let supervisor = ConnectionSupervisor::new(acceptors, registries.clone(), env).start();
        Ok(Server {
            supervisor,
            registries,
            workers,
            local_addr,
            stats,
            faults: self.faults,
            log,
            tls,
        })
    }
}

/// A running supervisor tree: the supervisor, the worker arbiters and their registries.
///
/// Dropping a `Server` without [`Server::shutdown`] leaves its actors running until the actix
/// system stops, and the system's stop drops connections without the shutdown protocol: call
/// `shutdown`.
pub struct Server {
    supervisor: Addr<ConnectionSupervisor>,
    registries: Registries,
    workers: Vec<Arbiter>,
    local_addr: SocketAddr,
    stats: Arc<Stats>,
    faults: Faults,
    log: Logger,
    tls: TlsReloader,
}

impl Server {
    /// A builder serving `protocol` with `config`.
    pub fn builder(config: ServerConfig, protocol: impl Protocol) -> ServerBuilder {
        Server::builder_for(config, Service::Sessions(Arc::new(protocol)))
    }

    /// A builder for a TLS-terminating proxy to a plaintext upstream.
    pub fn proxy(config: ServerConfig, proxy: ProxyConfig) -> ServerBuilder {
        Server::builder_for(config, Service::Proxy(proxy))
    }

    fn builder_for(config: ServerConfig, service: Service) -> ServerBuilder {
        ServerBuilder {
            config,
            service,
            log: Logger::root(slog::Discard, o!()),
            faults: Faults::default(),
            audit: None,
            tls: None,
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The handle that replaces the TLS configuration while the server runs (SIGHUP,
    /// `--watch-certs`); live connections keep the configuration they started with.
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }

    /// The registries, one per worker, each holding the connections that run on its worker.
    /// Embedding programs can send them [`Kill`](crate::messages::Kill) or
    /// [`LiveConnections`](crate::messages::LiveConnections); [`Server::kill`] and
    /// [`Server::live_connections`] ask all of them.
    pub fn registries(&self) -> &[Addr<HandlerRegistry>] {
        &self.registries.0
    }

    /// Every connection registered now, on any worker, in id order.
    pub async fn live_connections(&self) -> Vec<ConnId> {
        self.registries.live().await
    }

    /// The fault set of this server (points can be switched on only with `fault-injection`).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Closes one connection with reason `killed`. Returns whether it was live.
    pub async fn kill(&self, id: ConnId, mode: CloseMode) -> bool {
        self.registries.kill(id, mode).await
    }

    /// Runs the shutdown protocol: stop accepting (the port is free once this starts), ask
    /// every connection to close gracefully, wait for the registries to empty or `grace` to pass,
    /// force the rest, then stop and join the worker arbiters.
    ///
    /// Joining blocks the calling thread for as long as the workers take to drop what is left
    /// on them (milliseconds: every connection is already closed or forced by then).
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let mut report = self
            .supervisor
            .send(Shutdown { grace })
            .await
            .unwrap_or_default();
        for worker in &self.workers {
            worker.stop();
        }
        for worker in self.workers {
            let _ = worker.join();
        }
        // The registries stopped with their workers; the books outlive them. A connection
        // still counted here either outlived the forced close and was dropped by its stopping
        // worker, or its Dispose was still queued in a registry when the worker stopped.
        report.left_registered = self.stats.ledger().active as usize;
        info!(self.log, "shutdown complete";
            "forced" => report.forced,
            "left_registered" => report.left_registered,
            "elapsed_ms" => report.elapsed.as_millis() as u64);
        report
    }
}
