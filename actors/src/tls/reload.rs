//! `TlsReloader`: the services (and so the TLS configurations) a server's handshakes use now,
//! replaceable while it runs.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::error::TlsConfigError;
use crate::service::counts::{ServiceConnections, ServiceCounts};
use crate::service::definition::Service;
use crate::service::error::ServiceError;
use crate::service::handler::Handler;
use crate::service::table::ServiceTable;
use crate::tls::source::{LoadedTls, TlsSource};
use crate::upstream::books::UpstreamBooks;

/// What a server does when a reload changes the client-certificate policy of some services
/// (their labels): check their live connections against the table just swapped in (set once,
/// by `Server::start`).
pub(crate) type PolicyChanged = Box<dyn Fn(&Arc<ServiceTable>, Vec<String>) + Send + Sync>;

/// A handle on the services of a running server and their TLS configurations (from
/// [`Server::tls_reloader`](crate::Server::tls_reloader)); clones share it.
///
/// Each connection takes the service its ClientHello chose from the table current when its
/// handshake starts, and keeps it: a reload changes no live connection's service, certificate,
/// TLS policy, protocol or upstream group, and every handshake after it uses the new table.
/// Only the client's credentials are checked again, when its service's client-certificate
/// policy changed (see [`TlsReloader::reload`]). A reload is all or nothing: only a table
/// whose every service loaded completely is ever swapped in.
#[derive(Clone)]
pub struct TlsReloader(Arc<Shared>);

struct Shared {
    /// A lock held only to clone or replace an `Arc`: a read costs tens of nanoseconds against
    /// a handshake's hundreds of microseconds, so no lock-free swap crate is needed.
    current: RwLock<Arc<ServiceTable>>,
    /// Connections per service label, carried over reloads.
    counts: ServiceCounts,
    /// Every upstream group's figures, carried over reloads (shared with the server's `Stats`).
    books: Arc<UpstreamBooks>,
    /// The server has plaintext listeners (client mode): the default service must stay a
    /// proxy to TLS upstreams.
    plain_listeners: std::sync::atomic::AtomicBool,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Called after a reload whose client-certificate policy differs from the one before.
    /// Asserted unwind-safe: the hook only sends messages, after the swap is complete, so a
    /// panic in it leaves nothing here half-changed.
    on_policy_change: OnceLock<AssertUnwindSafe<PolicyChanged>>,
}

/// Reload counts and the certificates served, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSnapshot {
    /// Reloads that replaced the configuration.
    pub reloads_ok: u64,
    /// Reloads that failed and left the configuration as it was.
    pub reloads_failed: u64,
    /// (name, `notAfter` in Unix seconds) of every certificate served now, by every service
    /// (a file two services serve is listed once).
    pub certificate_expiry: Vec<(String, i64)>,
}

impl TlsReloader {
    /// A handle serving `initial` as the default service's TLS, whose bytes go to `handler`,
    /// and the `named` services; refused as [`ServiceTable::new`] refuses.
    pub(crate) fn new(
        initial: LoadedTls,
        handler: Handler,
        named: Vec<Service>,
    ) -> Result<TlsReloader, ServiceError> {
        let counts = ServiceCounts::default();
        let table = Service::new(&[], initial, handler)
            .and_then(|default| ServiceTable::new(default, named))?
            .counted_by(&counts);
        let books = Arc::new(UpstreamBooks::default());
        books.serve(&table);
        Ok(TlsReloader(Arc::new(Shared {
            current: RwLock::new(Arc::new(table)),
            counts,
            books,
            plain_listeners: std::sync::atomic::AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            on_policy_change: OnceLock::new(),
        })))
    }

    /// The default service's TLS configuration now (what a server without named services
    /// serves every client).
    pub fn current(&self) -> Arc<LoadedTls> {
        Arc::clone(self.services().default_service().tls())
    }

    /// The services a handshake starting now chooses from.
    pub fn services(&self) -> Arc<ServiceTable> {
        // A poisoned lock still holds a complete Arc: a panic cannot interrupt a plain store.
        Arc::clone(&self.0.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the default service's TLS configuration with `new`, keeping every named
    /// service, and counts a successful reload. If its client-certificate policy (CA bundle,
    /// CRLs, allow-list, whether a certificate is required) differs from the one replaced, the
    /// default service's live connections are checked against it (unless
    /// `ServerConfig::revalidate_live` is off): those it would refuse in a handshake now are
    /// closed gracefully, reason `credentials_revoked`.
    pub fn reload(&self, new: LoadedTls) {
        let table = self.services().with_default_tls(new);
        self.install(table);
    }

    /// Replaces the whole table: the default service's TLS with `default_tls` (its protocol
    /// and upstream group are kept) and every named service with `named`. Checked whole first
    /// (see [`ServiceTable::new`]); refused, nothing changes and the failure is counted. Live
    /// connections keep the services they started with (an upstream group no service has any
    /// more serves them to their end); those of a service whose client-certificate policy
    /// changed are checked against it, as [`TlsReloader::reload`] says.
    pub fn reload_services(
        &self,
        default_tls: LoadedTls,
        named: Vec<Service>,
    ) -> Result<(), ServiceError> {
        let default = self.services().default_service().with_tls(default_tls);
        self.replace(default, named)
    }

    /// Replaces the whole table, the default service too: `default` (built without names:
    /// its TLS, protocol and upstream group, with its health, retry, PROXY and TLS settings)
    /// and every named service with `named`. Checked whole first (see [`ServiceTable::new`]; a
    /// server with plaintext listeners also needs `default` to proxy to TLS upstreams);
    /// refused, nothing changes and the failure is counted. Live connections keep the service
    /// they started with, its upstream group included, and drain normally; an upstream kept
    /// by a group keeps its figures ([`Stats::upstreams`](crate::Stats::upstreams)).
    pub fn reload_table(&self, default: Service, named: Vec<Service>) -> Result<(), ServiceError> {
        if !default.parsed_names().is_empty() {
            self.reload_failed();
            return Err(ServiceError(
                "the default service is built without names (it takes every other name)".into(),
            ));
        }
        let plain = self.0.plain_listeners.load(Ordering::Relaxed);
        if plain && !default.handler.connects_over_tls() {
            self.reload_failed();
            return Err(ServiceError(format!(
                "the plaintext listeners (client mode) need the default service to proxy to TLS \
                 upstreams, and the new one is {} without TLS to its upstreams; change the \
                 listeners with a restart or a binary upgrade",
                default.protocol()
            )));
        }
        self.replace(default, named)
    }

    fn replace(&self, default: Service, named: Vec<Service>) -> Result<(), ServiceError> {
        match ServiceTable::new(default, named) {
            Ok(table) => {
                self.install(table.counted_by(&self.0.counts));
                Ok(())
            }
            Err(e) => {
                self.reload_failed();
                Err(e)
            }
        }
    }

    /// Notes that the server has plaintext listeners (see [`TlsReloader::reload_table`]).
    pub(crate) fn has_plain_listeners(&self) {
        self.0.plain_listeners.store(true, Ordering::Relaxed);
    }

    /// Every upstream group's figures, across reloads.
    pub(crate) fn upstream_books(&self) -> Arc<UpstreamBooks> {
        Arc::clone(&self.0.books)
    }

    fn install(&self, mut new: ServiceTable) {
        // Under the table's lock, so that two installs cannot interleave their carry-overs.
        let mut current = self.0.current.write().unwrap_or_else(|p| p.into_inner());
        self.0.books.carry_over(&mut new);
        let new = Arc::new(new);
        let old = std::mem::replace(&mut *current, Arc::clone(&new));
        self.0.books.serve(&new);
        drop(current);
        self.0.reloads_ok.fetch_add(1, Ordering::Relaxed);
        let changed = new.policies_changed_since(&old);
        if let (false, Some(hook)) = (changed.is_empty(), self.0.on_policy_change.get()) {
            hook(&new, changed);
        }
    }

    /// Sets what a reload that changes the client-certificate policy triggers (once: a
    /// reloader belongs to one server).
    pub(crate) fn on_policy_change(&self, hook: PolicyChanged) {
        let _ = self.0.on_policy_change.set(AssertUnwindSafe(hook));
    }

    /// Counts a reload that failed where [`TlsReloader::reload_from`] was not the one to load
    /// (an embedder that loads elsewhere, with a deadline of its own), and keeps the
    /// configuration in use.
    pub fn reload_failed(&self) {
        self.0.reloads_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Loads `source` and swaps it in as the default service's TLS if it loaded completely;
    /// otherwise counts a failed reload and keeps the configuration in use. Reads files: call
    /// it where blocking for the time of a read is fine.
    pub fn reload_from(&self, source: &TlsSource) -> Result<(), TlsConfigError> {
        match source.load() {
            Ok(loaded) => {
                self.reload(loaded);
                Ok(())
            }
            Err(e) => {
                self.0.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Reload counts and the certificates served now.
    pub fn snapshot(&self) -> TlsSnapshot {
        let table = self.services();
        let mut certificate_expiry: Vec<(String, i64)> = Vec::new();
        for service in table.services() {
            for certificate in service.tls().certificates() {
                if !certificate_expiry
                    .iter()
                    .any(|(n, _)| n == certificate.name())
                {
                    certificate_expiry
                        .push((certificate.name().to_string(), certificate.not_after_unix()));
                }
            }
        }
        TlsSnapshot {
            reloads_ok: self.0.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.0.reloads_failed.load(Ordering::Relaxed),
            certificate_expiry,
        }
    }

    /// Connections per service (by label: its first name, or `default`), every service seen
    /// since the server started.
    pub fn service_connections(&self) -> Vec<ServiceConnections> {
        self.0.counts.snapshot()
    }
}
