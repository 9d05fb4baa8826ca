//! `TlsReloader`: the TLS configuration a server's handshakes use now, replaceable while it
//! runs.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::error::TlsConfigError;
use crate::tls::client_policy::ClientPolicy;
use crate::tls::source::{LoadedTls, TlsSource};

/// What a server does when a reload changes the client-certificate policy: check its live
/// connections against the configuration just swapped in (set once, by `Server::start`).
pub(crate) type PolicyChanged = Box<dyn Fn(&Arc<LoadedTls>) + Send + Sync>;

/// A handle on the TLS configuration of a running server (from
/// [`Server::tls_reloader`](crate::Server::tls_reloader)); clones share it.
///
/// Each connection takes the configuration current when its handshake starts and keeps it:
/// a reload changes no live connection's certificate or TLS policy, and every handshake after
/// it uses the new configuration. Only the client's credentials are checked again, when the
/// client-certificate policy changed (see [`TlsReloader::reload`]). A reload is all or nothing: only a configuration that loaded
/// completely ([`TlsSource::load`](crate::TlsSource::load) returned it) is ever swapped in.
#[derive(Clone)]
pub struct TlsReloader(Arc<Shared>);

struct Shared {
    /// A lock held only to clone or replace an `Arc`: a read costs tens of nanoseconds against
    /// a handshake's hundreds of microseconds, so no lock-free swap crate is needed.
    current: RwLock<Arc<LoadedTls>>,
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
    /// (name, `notAfter` in Unix seconds) of every certificate served now.
    pub certificate_expiry: Vec<(String, i64)>,
}

impl TlsReloader {
    /// A handle serving `initial`.
    pub fn new(initial: LoadedTls) -> TlsReloader {
        TlsReloader(Arc::new(Shared {
            current: RwLock::new(Arc::new(initial)),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            on_policy_change: OnceLock::new(),
        }))
    }

    /// The configuration a handshake starting now uses.
    pub fn current(&self) -> Arc<LoadedTls> {
        // A poisoned lock still holds a complete Arc: a panic cannot interrupt a plain store.
        Arc::clone(&self.0.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the configuration with `new` and counts a successful reload. If its
    /// client-certificate policy (CA bundle, CRLs, allow-list, whether a certificate is
    /// required) differs from the one replaced, the server's live connections are checked
    /// against it (unless `ServerConfig::revalidate_live` is off): those it would refuse in a
    /// handshake now are closed gracefully, reason `credentials_revoked`.
    pub fn reload(&self, new: LoadedTls) {
        let new = Arc::new(new);
        let old = std::mem::replace(
            &mut *self.0.current.write().unwrap_or_else(|p| p.into_inner()),
            Arc::clone(&new),
        );
        self.0.reloads_ok.fetch_add(1, Ordering::Relaxed);
        let changed = ClientPolicy::differ(
            old.client_policy().map(|p| &**p),
            new.client_policy().map(|p| &**p),
        );
        if let (true, Some(hook)) = (changed, self.0.on_policy_change.get()) {
            hook(&new);
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

    /// Loads `source` and swaps it in if it loaded completely; otherwise counts a failed
    /// reload and keeps the configuration in use. Reads files: call it where blocking for the
    /// time of a read is fine.
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
        let current = self.current();
        TlsSnapshot {
            reloads_ok: self.0.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.0.reloads_failed.load(Ordering::Relaxed),
            certificate_expiry: current
                .certificates()
                .iter()
                .map(|c| (c.name().to_string(), c.not_after_unix()))
                .collect(),
        }
    }
}
