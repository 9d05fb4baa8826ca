//! What every connection of one server shares.

use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use slog::Logger;

use crate::connection::handshake::Termination;
use crate::edge::admission::Limits;
use crate::fault::set::Faults;
use crate::protocol::Protocol;
use crate::supervision::config::ServerConfig;
use crate::supervision::log_throttle::Throttles;
use crate::supervision::stats::Stats;
use crate::tls::reload::TlsReloader;
use crate::upstream::pool::UpstreamPool;

/// What a server does with each connection's bytes.
pub(crate) enum Service {
    /// Hand them to a session of this protocol, write back its replies.
    Sessions(Arc<dyn Protocol>),
    /// Forward them to a plaintext upstream of the pool, and the upstream's bytes back.
    Proxy(Arc<UpstreamPool>),
    /// Do not terminate TLS: read the ClientHello (for its SNI), then forward the client's
    /// bytes, that hello first, untouched to a plaintext-TCP upstream of the pool (a TLS
    /// server itself), and the upstream's bytes back.
    Passthrough(Arc<UpstreamPool>),
}

/// What every connection of one server shares.
pub(crate) struct ConnectionEnv {
    /// The TLS configuration; each handshake takes the one current when it starts.
    pub(crate) tls: TlsReloader,
    pub(crate) service: Service,
    pub(crate) config: ServerConfig,
    pub(crate) stats: Arc<Stats>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) faults: Faults,
    pub(crate) log: Logger,
    /// The warnings a client can cause, at most once a second each.
    pub(crate) throttles: Throttles,
    /// The next connection id (shared by the acceptors of every worker).
    pub(crate) next_id: AtomicU64,
    /// Set by the shutdown protocol once accepting has stopped, before it asks the registries
    /// to close everything. A connection that starts after that closes at once rather than
    /// starting a handshake that the `Close` queued behind its start would abandon.
    pub(crate) draining: AtomicBool,
    /// The random key that spreads each connection's `max_lifetime` by ±10 %
    /// (`connection/deadlines.rs`).
    pub(crate) lifetime_spread: RandomState,
}

impl Service {
    /// Whether each upstream connection starts with a PROXY protocol header.
    pub(crate) fn sends_proxy_header(&self) -> bool {
        self.upstreams()
            .is_some_and(|pool| pool.config().proxy_header.is_some())
    }

    /// The upstream group its connections are forwarded to, if they are.
    pub(crate) fn upstreams(&self) -> Option<&Arc<UpstreamPool>> {
        match self {
            Service::Sessions(_) => None,
            Service::Proxy(pool) | Service::Passthrough(pool) => Some(pool),
        }
    }

    /// How its connections treat the client's TLS.
    pub(crate) fn termination(&self) -> Termination {
        match self {
            Service::Passthrough(_) => Termination::PassThrough,
            Service::Sessions(_) | Service::Proxy(_) => Termination::Here,
        }
    }

    /// Its protocol's name, for logs and `/connections`: the session protocol's own, `proxy`
    /// or `passthrough`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Service::Sessions(protocol) => protocol.name(),
            Service::Proxy(_) => "proxy",
            Service::Passthrough(_) => "passthrough",
        }
    }
}
