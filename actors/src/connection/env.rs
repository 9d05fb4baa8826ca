//! What every connection of one server shares.

use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use slog::Logger;

use crate::edge::admission::Limits;
use crate::fault::set::Faults;
use crate::supervision::config::ServerConfig;
use crate::supervision::log_throttle::Throttles;
use crate::supervision::stats::Stats;
use crate::tls::reload::TlsReloader;

/// What every connection of one server shares.
pub(crate) struct ConnectionEnv {
    /// The services and their TLS configurations; each handshake chooses from the table
    /// current when it starts, and the connection keeps the service it chose.
    pub(crate) tls: TlsReloader,
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
