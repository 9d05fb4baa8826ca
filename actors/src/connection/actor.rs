//! `Connection`: one client's TLS connection, from registration to disposal. This file holds
//! what the connection is (its identity, its books, its phase) and the actor's entry points:
//! its hooks and the messages it handles. What each entry point does to the phase is in
//! `machine.rs`.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::connection::access_log::DisposalFields;
use crate::connection::env::ConnectionEnv;
use crate::connection::hit::Hit;
use crate::connection::messages::{Close, CloseMode, Describe, Inbound, ReaderFinished, Side};
use crate::connection::phase::{Accepted, Phase};
use crate::edge::accepted_socket::AcceptedSocket;
use crate::edge::admission::HandshakeSlot;
use crate::edge::listeners::Clients;
use crate::fault::point::FaultPoint;
use crate::service::counts::ServiceSeat;
use crate::service::definition::Service;
use crate::service::limits::{ServiceLimits, ServiceTimeout};
use crate::supervision::conn_description::ConnDescription;
use crate::supervision::conn_id::ConnId;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::registration::Registration;
use crate::supervision::revalidation::Revalidate;
use crate::upstream::pool::UpstreamPool;

/// Logs at `$level` on the server's logger with the connection's `conn_id` and `peer` inline.
/// Nothing is built for a filtered-out record, and an idle connection keeps no logger of its
/// own (a child `Logger` cost two allocations per connection).
macro_rules! log_conn {
    ($level:ident, $conn:expr, $msg:expr $(; $($kv:tt)*)?) => {
        slog::$level!($conn.env.log, $msg;
            "conn_id" => $conn.id.0, "peer" => %$crate::connection::actor::ShownPeer::of($conn.peer, $conn.unix) $(, $($kv)*)?)
    };
}
pub(super) use log_conn;

/// One client's connection: runs the TLS handshake, owns the TLS write half and the session
/// (or the upstream link), and supervises its reader children. What it owns at each point of
/// its life is in its [`Phase`]; everything else here is its identity and its books, which
/// outlive every phase and go into its one `disposed` line.
///
/// Every way the connection ends goes through [`Connection::close`] or [`Connection::stop`],
/// and so through `stopped()`, the only place that sends `Dispose`. The first reason
/// recorded is the one reported.
pub(crate) struct Connection {
    pub(super) id: ConnId,
    /// The client (the original client a balancer's PROXY header named, once read).
    pub(super) peer: SocketAddr,
    pub(super) env: Arc<ConnectionEnv>,
    pub(super) phase: Phase,
    /// Why it ends: the first reason recorded wins.
    pub(super) reason: Option<DisposeReason>,
    /// Whether the client's end came with `close_notify`, once the client has ended.
    pub(super) clean_eof: Option<bool>,
    /// Set while a message handler runs; still set in `stopped()` only if a handler unwound.
    pub(super) in_handler: bool,
    pub(super) registered_at: Instant,
    /// Decrypted bytes read from the client and written to it (the access log's sizes).
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    /// The runtime fault rule acting on this connection, if one hit it (boxed: rare).
    pub(super) hit: Option<Box<Hit>>,
    pub(super) registration: Registration<Connection>,
    /// Whose client it is: TLS (its ClientHello chooses the service), or plaintext of the
    /// service its listener names (client mode).
    pub(super) clients: Clients,
    /// Its client came over a unix socket: `peer` is a stand-in then, shown as `unix`.
    pub(super) unix: bool,
    /// The service its ClientHello chose (its listener's, for a plaintext client), kept for its
    /// whole life whatever a reload does: its protocol, upstream group and client policy.
    pub(super) service: Option<Arc<Service>>,
    /// Its place in its service's connection figures, given up as it goes.
    pub(super) seat: Option<ServiceSeat>,
    /// The `max_lifetime` timer, once armed: re-armed when the service turns out to have a
    /// lifetime of its own.
    pub(super) lifetime_timer: Option<SpawnHandle>,
}

impl Connection {
    /// A connection on the books through `registration`, holding its handshake slot until the
    /// handshake ends.
    pub(crate) fn new(
        id: ConnId,
        peer: SocketAddr,
        socket: AcceptedSocket,
        env: Arc<ConnectionEnv>,
        registration: Registration<Connection>,
        slot: HandshakeSlot,
        clients: Clients,
    ) -> Self {
        Connection {
            id,
            peer,
            env,
            unix: matches!(socket, AcceptedSocket::Unix(_)),
            phase: Phase::Accepted(Accepted { socket, slot }),
            clients,
            reason: None,
            clean_eof: None,
            in_handler: false,
            registered_at: Instant::now(),
            bytes_in: 0,
            bytes_out: 0,
            hit: None,
            registration,
            service: None,
            seat: None,
            lifetime_timer: None,
        }
    }

    /// The connection is now `service`'s, kept for its life, with its `seat` among the
    /// service's live connections (none: the service was full, and this connection is being
    /// refused). From here on the service's own timeouts are the ones in force.
    pub(super) fn served_by(
        &mut self,
        service: Arc<Service>,
        seat: Option<ServiceSeat>,
        ctx: &mut Context<Self>,
    ) {
        self.seat = seat;
        let own_lifetime = service.limits().max_lifetime != ServiceTimeout::Server;
        self.service = Some(service);
        if own_lifetime {
            self.arm_max_lifetime(ctx);
        }
    }

    /// The idle timeout in force: its service's own, else the server's.
    pub(super) fn idle_timeout(&self) -> Option<Duration> {
        self.own_or_server(|l| l.idle_timeout, self.env.config.idle_timeout)
    }

    /// The lifetime limit in force: its service's own, else the server's.
    pub(super) fn max_lifetime(&self) -> Option<Duration> {
        self.own_or_server(|l| l.max_lifetime, self.env.config.max_lifetime)
    }

    /// The half-close timeout in force: its service's own, else the server's.
    pub(super) fn half_close_timeout(&self) -> Option<Duration> {
        self.own_or_server(|l| l.half_close_timeout, self.env.config.half_close_timeout)
    }

    /// The timeout `of` its service's limits says, over `server` (the server's until a
    /// ClientHello has chosen a service).
    fn own_or_server(
        &self,
        of: impl Fn(&ServiceLimits) -> ServiceTimeout,
        server: Option<Duration>,
    ) -> Option<Duration> {
        match self.service.as_deref() {
            Some(service) => of(service.limits()).over(server),
            None => server,
        }
    }

    /// The upstream group its service forwards to, if it forwards (proxy or passthrough).
    pub(super) fn upstreams(&self) -> Option<&Arc<UpstreamPool>> {
        self.service.as_deref().and_then(|s| s.handler.upstreams())
    }

    /// Whether its service passes the client's TLS through rather than ending it here.
    pub(super) fn passes_through(&self) -> bool {
        self.service
            .as_deref()
            .is_some_and(|s| s.handler.passes_through())
    }

    /// Its service's protocol (`echo`, `proxy`, `passthrough`), or `unknown` while no
    /// ClientHello has chosen a service yet.
    pub(super) fn protocol_name(&self) -> &'static str {
        self.service.as_deref().map_or("unknown", Service::protocol)
    }

    /// Whether fault point `point` fires here (never without `fault-injection`).
    pub(super) fn fault(&self, point: FaultPoint) -> bool {
        self.env.faults.is_on(point)
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if self.fault(FaultPoint::SkipStopHook) {
            // As if actix had skipped the hook: the registration's Drop and the readers'
            // handles are all that is left to dispose of this connection.
            return;
        }
        // The last transition. The phase would go with this actor anyway; dropping it now
        // closes the sockets at once, stops the readers (each lives while its handle, owned by
        // the phase, does), gives back the handshake slot and the upstream.
        let last = std::mem::replace(&mut self.phase, Phase::Disposed);
        // Its watch is one more owner of the client's socket: it goes with the phase.
        self.hit = None;
        let reason = match self.reason {
            Some(reason) => reason,
            // A handler unwound: actix ran this hook while dropping the panicked actor.
            None if self.in_handler || std::thread::panicking() => DisposeReason::SessionPanic,
            // Stopped with no reason recorded: its arbiter is being torn down.
            None => DisposeReason::Shutdown,
        };
        let established = last.established();
        let fields = DisposalFields {
            service: self.service.as_deref().map(Service::label),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            close_notify: self.clean_eof,
            handshake_ms: established.map(|e| e.handshake_ms),
            tls: established.map(|e| &*e.tls),
            upstream_tls: last.upstream_tls(),
        };
        log_conn!(info, self, "disposed";
            "reason" => reason.as_str(),
            "protocol" => self.protocol_name(),
            "lifetime_ms" => self.registered_at.elapsed().as_millis() as u64,
            fields);
        // A session dropped here may panic in its Drop: that must not cost the Dispose.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(last)));
        // Its seat in its service goes with its Dispose, not later with the actor: a client
        // that saw this one end finds the seat free. (Taken once: the hook runs once.) A seat
        // taken by a handshake cut short (a forced close, a shutdown) is still in that
        // handshake's future, which actix drops just after this hook: freed a moment later.
        self.seat = None;
        self.registration.dispose(reason);
    }
}

impl Handler<ReaderFinished> for Connection {
    type Result = ();

    fn handle(&mut self, msg: ReaderFinished, ctx: &mut Self::Context) {
        match msg.side {
            Side::Client => self.client_finished(msg.outcome, ctx),
            Side::Upstream => self.upstream_finished(msg.outcome, ctx),
        }
    }
}

impl Handler<Inbound> for Connection {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) -> Self::Result {
        self.in_handler = true;
        if self.fault(FaultPoint::ConnectionPanic) {
            panic!("injected connection panic");
        }
        let done = self.received(msg, ctx);
        self.in_handler = false;
        done
    }
}

impl Handler<Close> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        match msg.mode {
            CloseMode::Graceful if self.outlasts_graceful_shutdown(msg.reason) => {
                log_conn!(
                    debug,
                    self,
                    "shutdown: passed-through TLS left to end on its own"
                );
            }
            CloseMode::Graceful => self.close(msg.reason, ctx),
            CloseMode::Force => self.stop(msg.reason, ctx),
        }
    }
}

impl Connection {
    /// Whether a graceful close for `reason` leaves this connection running: a passed-through
    /// connection, open, during the server's shutdown. We cannot send the `close_notify` that
    /// would end its TLS session (the session is the client's and the upstream's), and a FIN in
    /// the middle of it is a truncation to the client; so it goes on until both sides end it,
    /// and the forced close at the end of the grace period stops what is left. (An operator's
    /// `/drain` is not the shutdown: it closes with a FIN both ways, as asked.)
    fn outlasts_graceful_shutdown(&self, reason: DisposeReason) -> bool {
        reason == DisposeReason::Shutdown
            && self.passes_through()
            && self.env.draining.load(Ordering::SeqCst)
            && matches!(self.phase, Phase::Open(_))
    }
}

impl Handler<Revalidate> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Revalidate, ctx: &mut Self::Context) {
        self.revalidate(&msg.0, ctx);
    }
}

impl Handler<Describe> for Connection {
    type Result = MessageResult<Describe>;

    fn handle(&mut self, _msg: Describe, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(ConnDescription {
            id: self.id,
            peer: self.peer,
            unix: self.unix,
            // Only the registries know which worker they are on; they fill this in.
            worker: 0,
            service: self.service.as_ref().map(|s| s.label().to_string()),
            state: self.phase.name(),
            protocol: self.protocol_name(),
            age: self.registered_at.elapsed(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            tls: self.phase.established().map(|e| (*e.tls).clone()),
            upstream_tls: self.phase.upstream_tls().cloned(),
        })
    }
}

/// A client's address as logs write it: `IP:PORT`, or `unix` (a client of a unix listener has
/// no address of its own worth naming: its socket is unnamed).
pub(crate) struct ShownPeer(Option<SocketAddr>);

impl ShownPeer {
    /// `peer`, or `unix` when `unix` (its address is a stand-in then).
    pub(crate) fn of(peer: SocketAddr, unix: bool) -> ShownPeer {
        ShownPeer((!unix).then_some(peer))
    }
}

impl std::fmt::Display for ShownPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("unix"),
        }
    }
}
