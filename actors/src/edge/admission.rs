//! Admission: the slots a socket must hold to become a `Connection`, and when they come back.
//!
//! The server-wide limits (`max_connections`, `max_handshakes`) are applied *before* `accept`:
//! an acceptor first reserves room for one more connection and one more handshake, and while
//! it cannot, it stops polling its listener, so new clients wait in the kernel's backlog
//! instead of being accepted and closed. The server-wide rate of new handshakes
//! (`max_handshake_rate`) works the same way: an acceptor waits its turn before it accepts, so
//! over the rate clients wait in the backlog a little longer, and none is refused for it (as
//! haproxy's `maxsslrate`). The per-client limits can only be applied after `accept` (the
//! address is not known before): a client over its limit, or over its own rate
//! (`max_handshake_rate_per_ip`), is closed at once.
//! Behind a balancer that sends PROXY headers (`accept_proxy`), the client is known later
//! still: a socket from a balancer is admitted without per-client slots, and claims them for
//! the original address once its header is read ([`Limits::claim_for_original`]), so that the
//! clients behind one balancer do not share one budget.
//!
//! Every slot is a value that gives its count back when dropped. A connection holds its
//! [`ConnectionSlot`] in its `Registration` (released as its `Dispose` is sent) and its
//! [`HandshakeSlot`] until the handshake ends, so no count can outlive what it counts.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::edge::per_ip::{PerIpClaim, PerIpLimits, PerIpSlot};
use crate::edge::rate::{HandshakeRate, Rate};
use crate::supervision::config::ServerConfig;
use crate::supervision::control::Control;
use crate::supervision::stats::RejectReason;
use crate::supervision::stats::Stats;

/// The admission limits of one server, shared by its acceptors and connections.
pub(crate) struct Limits {
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    /// New handshakes a second, server-wide (`None`: off).
    handshake_rate: Option<HandshakeRate>,
    per_ip: PerIpLimits,
    stats: Arc<Stats>,
    /// Woken when a connection is disposed: an acceptor paused by a shortage of descriptors
    /// tries again at once instead of sleeping out its backoff.
    disposed: Notify,
    /// Pause and drain: while paused, `reserve` waits.
    pub(crate) control: Control,
}

/// Room for one more connection and one more handshake, held by an acceptor while it waits
/// for a socket to give it to.
pub(crate) struct Reserved {
    connection: OwnedSemaphorePermit,
    handshake: OwnedSemaphorePermit,
}

impl Limits {
    pub(crate) fn new(config: &ServerConfig, stats: Arc<Stats>) -> Arc<Limits> {
        Arc::new(Limits {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            handshakes: Arc::new(Semaphore::new(config.effective_max_handshakes())),
            handshake_rate: Rate::server_wide(config.max_handshake_rate).map(HandshakeRate::new),
            per_ip: PerIpLimits {
                connections: config.max_connections_per_ip,
                handshakes: config.effective_max_handshakes_per_ip(),
                rate: Rate::per_client(config.max_handshake_rate_per_ip),
            },
            stats,
            disposed: Notify::new(),
            control: Control::new(),
        })
    }

    /// Waits until one more connection and one more handshake fit; the acceptor counts as
    /// paused while it waits. `None` only if the limits were closed (they never are).
    ///
    /// While accepting is paused by an operator it waits first: the acceptor does not poll
    /// its listener, and clients wait in the kernel's backlog.
    pub(crate) async fn reserve(&self) -> Option<Reserved> {
        if self.control.is_paused() {
            let _paused = self.stats.acceptor_paused();
            self.control.until_resumed().await;
        }
        let connection = acquire(&self.connections, &self.stats).await?;
        let handshake = acquire(&self.handshakes, &self.stats).await?;
        Some(Reserved {
            connection,
            handshake,
        })
    }

    /// Waits until one more handshake fits the server-wide rate (at once when it is off):
    /// the acceptor does not poll its listener meanwhile, and clients wait in the backlog.
    /// It counts as paused while it waits.
    pub(crate) async fn handshake_turn(&self) {
        let Some(rate) = &self.handshake_rate else {
            return;
        };
        let now = std::time::Instant::now();
        let turn = rate.next_turn(now);
        if turn > now {
            let _paused = self.stats.acceptor_paused();
            tokio::time::sleep_until(turn.into()).await;
        }
    }

    /// Turns a reservation into the slots of a connection from `client`, or gives it back if
    /// that client is at one of its own limits. `None`: the client is not known yet (a
    /// balancer's socket, whose PROXY header names it); no per-client slot is taken now.
    pub(crate) fn admit(
        self: &Arc<Self>,
        reserved: Reserved,
        client: Option<IpAddr>,
    ) -> Option<(ConnectionSlot, HandshakeSlot)> {
        let claim = match client {
            Some(ip) => self.stats.per_ip.claim(ip, self.per_ip)?,
            None => PerIpClaim::NONE,
        };
        self.stats.handshake_started();
        Some((
            ConnectionSlot {
                _permit: reserved.connection,
                _per_ip: claim.connection,
                limits: Arc::clone(self),
            },
            HandshakeSlot {
                _permit: reserved.handshake,
                _per_ip: claim.handshake,
                stats: Arc::clone(&self.stats),
            },
        ))
    }

    /// Claims the per-client slots of a connection admitted without them, for the original
    /// address its PROXY header gave, into the slots it already holds (so they go back with
    /// them). `false`: that client is at one of its limits, and the connection must close.
    pub(crate) fn claim_for_original(
        &self,
        ip: IpAddr,
        connection: Option<&mut ConnectionSlot>,
        handshake: Option<&mut HandshakeSlot>,
    ) -> bool {
        let Some(claim) = self.stats.per_ip.claim(ip, self.per_ip) else {
            self.stats.rejected(RejectReason::PerIpLimit, 1);
            return false;
        };
        if let Some(slot) = connection {
            slot._per_ip = claim.connection;
        }
        if let Some(slot) = handshake {
            slot._per_ip = claim.handshake;
        }
        true
    }

    /// Resolves at the next disposal (a descriptor freed).
    pub(crate) async fn next_disposal(&self) {
        self.disposed.notified().await
    }
}

/// Takes a permit, marking the acceptor paused only if it has to wait for one.
async fn acquire(semaphore: &Arc<Semaphore>, stats: &Stats) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = Arc::clone(semaphore).try_acquire_owned() {
        return Some(permit);
    }
    let _paused = stats.acceptor_paused();
    Arc::clone(semaphore).acquire_owned().await.ok()
}

/// A live connection's place under `max_connections` and its client's connection limit.
/// Dropped when the connection's `Dispose` is sent.
pub(crate) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    _per_ip: Option<PerIpSlot>,
    limits: Arc<Limits>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        // Only an acceptor paused for descriptors waits on this; skip the lock otherwise.
        if self.limits.stats.paused_acceptors() > 0 {
            self.limits.disposed.notify_waiters();
        }
    }
}

/// A handshake's place under `max_handshakes` and its client's handshake limit; counted in
/// `handshakes_in_progress` from accept until it is dropped (when the handshake ends).
pub(crate) struct HandshakeSlot {
    _permit: OwnedSemaphorePermit,
    _per_ip: Option<PerIpSlot>,
    stats: Arc<Stats>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.stats.handshake_ended();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::supervision::stats::RejectReason;

    /// Limits of 8 connections, and 2 connections and 2 handshakes per client.
    fn limits() -> Arc<Limits> {
        let stats = Arc::new(Stats::for_workers(1, Default::default()));
        Arc::new(Limits {
            connections: Arc::new(Semaphore::new(8)),
            handshakes: Arc::new(Semaphore::new(8)),
            handshake_rate: None,
            per_ip: PerIpLimits {
                connections: 2,
                handshakes: 2,
                rate: None,
            },
            stats,
            disposed: Notify::new(),
            control: Control::new(),
        })
    }

    /// A connection from a balancer: admitted without per-client slots.
    fn from_balancer(limits: &Arc<Limits>) -> (ConnectionSlot, HandshakeSlot) {
        let reserved = futures::executor::block_on(limits.reserve()).unwrap();
        limits.admit(reserved, None).unwrap()
    }

    #[test]
    fn the_original_client_is_limited_and_its_slots_go_back_with_the_connection() {
        let limits = limits();
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let claim = |(connection, handshake): &mut (ConnectionSlot, HandshakeSlot), ip| {
            limits.claim_for_original(ip, Some(connection), Some(handshake))
        };
        // The balancer's own address claims nothing at accept.
        let mut first = from_balancer(&limits);
        let mut second = from_balancer(&limits);
        let mut third = from_balancer(&limits);
        assert_eq!(limits.stats.per_ip.len(), 0);
        assert!(claim(&mut first, a));
        assert!(claim(&mut second, a));
        assert!(
            !claim(&mut third, a),
            "a third connection of A is over its limit"
        );
        assert!(claim(&mut third, b), "B has a budget of its own");
        let rejected = limits.stats.snapshot().rejected(RejectReason::PerIpLimit);
        assert_eq!(rejected, 1);
        // A's slots go back with its connection: A fits again.
        drop(first);
        let mut fourth = from_balancer(&limits);
        assert!(claim(&mut fourth, a));
        drop((second, third, fourth));
        assert_eq!(limits.stats.per_ip.len(), 0, "nothing is left in the table");
    }

    #[test]
    fn a_clients_connection_claims_outlive_its_handshakes() {
        let limits = limits();
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let mut held = Vec::new();
        for _ in 0..2 {
            let (mut connection, mut handshake) = from_balancer(&limits);
            assert!(limits.claim_for_original(a, Some(&mut connection), Some(&mut handshake)));
            held.push((connection, handshake));
        }
        // Both handshakes end; the connections stay: A is still at its connection limit.
        let connections: Vec<ConnectionSlot> = held.into_iter().map(|(c, _)| c).collect();
        let (mut connection, mut handshake) = from_balancer(&limits);
        assert!(!limits.claim_for_original(a, Some(&mut connection), Some(&mut handshake)));
        drop(connections);
        assert!(limits.claim_for_original(a, Some(&mut connection), Some(&mut handshake)));
    }
}
