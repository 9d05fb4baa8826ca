//! The state machine of a connection: every transition between its phases, and every event
//! that can cause one. One connection's life reads top to bottom here:
//!
//! 1. [`Connection::start`]: `Accepted → Handshaking`, then the balancer's PROXY header (if
//!    one is expected) and the TLS handshake;
//! 2. [`Connection::handshake_done`]: `Handshaking → Open` with a session, or connecting to
//!    the upstream ([`Connection::upstream_connected`] starts forwarding);
//! 3. the events of an open connection: bytes in (`session.rs`, `proxy.rs`), a side finishing
//!    ([`Connection::client_finished`], [`Connection::upstream_finished`]), a write done, the
//!    idle timer (and the lifetime and half-close deadlines of `deadlines.rs`);
//! 4. the two ways to end: [`Connection::close`] (graceful: flush, `close_notify`, FIN, a
//!    bounded linger for the client's own end) and [`Connection::stop`] (at once); both end in
//!    the stop hook (`actor.rs`), the only sender of `Dispose`.
//!
//! Only this file assigns `Connection::phase` (the stop hook excepted, which ends it), and
//! always by value ([`Connection::step`]): what the old phase held and the new one does not
//! take is dropped right there.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::edge::accepted_socket::{AcceptedSocket, UNIX_LOCAL};
use crate::edge::listeners::Clients;

use crate::connection::actor::{log_conn, Connection};
use crate::connection::client_stream::ClientStream;
use crate::connection::env::ConnectionEnv;
use crate::connection::handshake::{handshake, Accepted, Chosen, ClientWatch, HandshakeError};
use crate::connection::handshake_failure::{alert_name, classify, HelloSummary};
use crate::connection::messages::{ReadOutcome, Side};
use crate::connection::phase::{
    ClientWriter, Closing, Drained, Established, Handshaking, Open, OpenService, Phase, ProxyFlow,
    Proxying, ReaderState, SessionState,
};
use crate::connection::reader::{Reader, ReaderHandle};
use crate::connection::shared_socket::SharedSocket;
use crate::connection::upstream_link::UpstreamLink;
use crate::connection::writer::{OtherSideFailed, Writer};
use crate::edge::accept_proxy::{read_header, Original};
use crate::fault::injected::HelloFault;
use crate::fault::point::FaultPoint;
use crate::fault::rule::Candidate;
use crate::fault::set::Picked;
use crate::protocol::{ConnInfo, Flow};
use crate::service::definition::Service;
use crate::service::handler::Handler;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::handshake_failures::{
    now_unix_ms, HandshakeFailure, HandshakeFailureClass,
};
use crate::tls::client_auth::is_client_auth_failure;
use crate::tls::client_policy::PeerChain;
use crate::tls::info::TlsInfo;
use crate::tls::refused_certificate::RefusedCertificate;
use crate::upstream::pool::Connected;
use crate::upstream::stream::UpstreamWriteHalf;
use crate::upstream::tls::is_tls_failure;

impl Connection {
    /// Moves to the phase `next` makes of the current one. `next` owns the old phase: what it
    /// does not move into the new one is dropped right there. Should `next` panic, the phase
    /// is `Disposed` (everything the old one held is dropped by the unwinding), which is what
    /// the stop hook that follows expects.
    fn step(&mut self, next: impl FnOnce(Phase) -> Phase) {
        replace_with::replace_with(&mut self.phase, || Phase::Disposed, next);
    }

    // --- 1. start -------------------------------------------------------------------------

    /// `Accepted → Handshaking`: reads the balancer's PROXY header first if this client's
    /// source must send one, then runs the handshake.
    pub(super) fn start(&mut self, ctx: &mut Context<Self>) {
        if self.fault(FaultPoint::AfterRegisterBeforeStart) {
            log_conn!(
                warn,
                self,
                "fault injected: failing after register, before start"
            );
            return self.stop(DisposeReason::StartFailed, ctx);
        }
        if self.env.draining.load(Ordering::SeqCst) {
            return self.stop(DisposeReason::Shutdown, ctx);
        }
        self.arm_max_lifetime(ctx);
        let mut socket = None;
        self.step(|phase| match phase {
            Phase::Accepted(accepted) => {
                socket = Some(accepted.socket);
                Phase::Handshaking(Handshaking {
                    slot: accepted.slot,
                })
            }
            other => other,
        });
        // Nothing but `Accepted` can be there before the start.
        let tcp = match socket {
            Some(AcceptedSocket::Tcp(tcp)) => tcp,
            // A plaintext client of a unix listener: no PROXY header, no handshake.
            Some(AcceptedSocket::Unix(unix)) => {
                return self.begin_plain(PlainSocket::Unix(unix), ctx)
            }
            None => return self.stop(DisposeReason::StartFailed, ctx),
        };
        let expected = match &self.env.config.accept_proxy {
            Some(accept) if accept.expects_header_from(self.peer.ip()) => {
                Some((accept.versions, accept.timeout))
            }
            _ => None,
        };
        let Some((versions, limit)) = expected else {
            return self.begin_handshake(tcp, ctx);
        };
        let reading = async move {
            let mut tcp = tcp;
            let header = tokio::time::timeout(limit, read_header(&mut tcp, versions)).await;
            (tcp, header)
        };
        ctx.spawn(
            reading
                .into_actor(self)
                .map(|(tcp, header), act, ctx| act.header_read(tcp, header, ctx)),
        );
    }

    /// The balancer's PROXY header is read (or failed, or timed out): the client it names
    /// becomes the peer and claims its per-IP slots, which the acceptor left to this point;
    /// a bad header is `proxy_header_invalid`, a client at its limits `per_ip_limit`.
    fn header_read(
        &mut self,
        tcp: TcpStream,
        header: Result<io::Result<Original>, tokio::time::error::Elapsed>,
        ctx: &mut Context<Self>,
    ) {
        // Closed meanwhile (a shutdown, a kill): nothing more to start.
        let Phase::Handshaking(handshaking) = &mut self.phase else {
            return;
        };
        let error = match header {
            Ok(Ok(Original::Client(original))) => {
                log_conn!(debug, self, "PROXY header read";
                    "original" => %original, "balancer" => %self.peer);
                self.peer = original;
                None
            }
            // The balancer's own connection (a health check): it counts as the balancer.
            Ok(Ok(Original::Local)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_elapsed) => Some("timed out".to_string()),
        };
        if let Some(error) = error {
            log_conn!(info, self, "PROXY header invalid"; "error" => error);
            return self.close(DisposeReason::ProxyHeaderInvalid, ctx);
        }
        let admitted = self.env.limits.claim_for_original(
            self.peer.ip(),
            self.registration.slot_mut(),
            Some(&mut handshaking.slot),
        );
        if !admitted {
            log_conn!(debug, self, "rejected: per-IP limit");
            return self.close(DisposeReason::PerIpLimit, ctx);
        }
        self.begin_handshake(tcp, ctx);
    }

    /// Starts the TLS handshake on the socket, bounded by `handshake_timeout`; a client of a
    /// plaintext listener (client mode) has none, and is open at once.
    fn begin_handshake(&mut self, tcp: TcpStream, ctx: &mut Context<Self>) {
        // Small TLS records (handshake flights, echoes) must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        // Our address as the client sees it only goes into a PROXY header: without one, no
        // getsockname(2) per connection.
        // Taken now and kept: a reload during this handshake does not change it (but the
        // policy it verified the client with is compared with the current one as it ends).
        let services = self.env.tls.services();
        let local = match services.sends_proxy_header() {
            true => tcp.local_addr().ok(),
            false => None,
        };
        if self.clients.is_plain() {
            return self.begin_plain(PlainSocket::Tcp(tcp, local), ctx);
        }
        let limit = self.env.config.handshake_timeout;
        let inject_failure = self.fault(FaultPoint::DuringHandshake);
        // The runtime fault rules, asked once the ClientHello is read; with none installed
        // this is one relaxed load, and the handshake asks nothing.
        let rules = self.env.faults.has_rules().then(|| self.env.faults.clone());
        let peer = self.peer.ip();
        let running = async move {
            let mut picked = None;
            let (chosen, result) = handshake(services, tcp, limit, inject_failure, |watch, sni| {
                let Some(rules) = rules else {
                    return HelloFault::Proceed;
                };
                let listener = || watch.local_addr();
                picked = rules.pick(&Candidate {
                    peer,
                    listener: &listener,
                    sni,
                });
                let at_hello = picked.map_or(HelloFault::Proceed, |p| p.at_hello());
                if at_hello == HelloFault::Reset {
                    // The handshake's handles on the socket go as it returns: an RST then.
                    let _ = watch.reset_on_close();
                }
                at_hello
            })
            .await;
            (chosen, result, picked)
        };
        ctx.spawn(
            running
                .into_actor(self)
                .map(move |(chosen, result, picked), act, ctx| {
                    if let Some(Chosen { service, seat }) = chosen {
                        act.served_by(service, seat, ctx);
                    }
                    let result = result.map(|accepted| match accepted {
                        Accepted::Terminated(stream) => ClientStream::Tls(stream),
                        Accepted::PassedThrough { client, hello } => ClientStream::PassedThrough {
                            client,
                            server_name: hello.sni.map(|name| name.to_ascii_lowercase()),
                        },
                    });
                    act.handshake_done(result, picked, local, ctx)
                }),
        );
    }

    /// A plaintext client (client mode) is open at once: it sends no ClientHello, and its
    /// listener says which service it is. Should that service be gone from the table (a reload
    /// removed it: the listener stays bound until SIGUSR2), or no longer proxy to TLS
    /// upstreams, the client is refused (`start_failed`), never served by another service.
    fn begin_plain(&mut self, socket: PlainSocket, ctx: &mut Context<Self>) {
        let services = self.env.tls.services();
        let Clients::Plain(label) = &self.clients else {
            return self.stop(DisposeReason::StartFailed, ctx);
        };
        let service = match label {
            None => Some(services.default_service()),
            Some(label) => services.by_label(label),
        };
        let Some(service) = service.filter(|s| s.handler.connects_over_tls()) else {
            log_conn!(warn, self,
                "a plaintext listener's service is gone or no longer proxies to TLS upstreams \
                 (a reload changed it; the listener needs SIGUSR2): refusing its client";
                "service" => label.as_deref().unwrap_or(crate::service::definition::DEFAULT_SERVICE));
            return self.stop(DisposeReason::StartFailed, ctx);
        };
        // A plaintext client sends no ClientHello: its listener's service takes it, under
        // that service's own cap as a TLS client of it would be.
        let seat = service.admit();
        let full = seat.is_none();
        self.served_by(Arc::clone(service), seat, ctx);
        if full {
            return self.refused_by_service(None, ctx);
        }
        let (stream, local) = match socket {
            PlainSocket::Tcp(tcp, local) => (ClientStream::Plain(SharedSocket::new(tcp)), local),
            PlainSocket::Unix(unix) => (
                ClientStream::PlainUnix(SharedSocket::new(unix)),
                Some(UNIX_LOCAL),
            ),
        };
        self.handshake_done(Ok(stream), None, local, ctx)
    }

    // --- 2. open --------------------------------------------------------------------------

    /// `Handshaking → Open`: the stream is split, the session opened (or the upstream
    /// connected), the client's reader started, the idle timer armed. A failed handshake
    /// stops the connection: there is no TLS session to close.
    fn handshake_done(
        &mut self,
        result: Result<ClientStream, HandshakeError>,
        picked: Option<Picked>,
        local: Option<SocketAddr>,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.phase, Phase::Handshaking(_)) {
            return;
        }
        // The policy its service's handshake verified the client with.
        let verified_by = (self.service.as_ref()).and_then(|s| s.tls().client_policy().cloned());
        // A watch (one more owner of the socket) only for a connection a rule hit.
        let client = picked.and(result.as_ref().ok()).map(ClientStream::watch);
        self.fault_picked(picked, client.as_ref());
        let stream = match result {
            Ok(stream) => stream,
            Err(HandshakeError::Injected) => return self.stop(DisposeReason::FaultInjected, ctx),
            // Not a failure of the client's: its own reason, not a handshake-failure class.
            Err(HandshakeError::ServiceFull { hello }) => {
                return self.refused_by_service(hello.sni.as_deref(), ctx)
            }
            Err(HandshakeError::TimedOut { hello }) => {
                let class = HandshakeFailureClass::Timeout;
                self.handshake_failed(class, None, hello, None, "timed out");
                return self.stop(DisposeReason::HandshakeTimeout, ctx);
            }
            Err(HandshakeError::Failed {
                error,
                hello,
                refused,
            }) => {
                let (class, alert) = classify(&error, hello.is_some());
                let reason = match is_client_auth_failure(&error) {
                    true => DisposeReason::ClientAuthFailed,
                    false => DisposeReason::HandshakeFailed,
                };
                self.handshake_failed(class, alert, hello, refused, &error.to_string());
                return self.stop(reason, ctx);
            }
        };
        let tls = stream.tls_info();
        let peer_chain = match self.env.config.revalidate_live {
            true => PeerChain::of(stream.peer_certificates()),
            false => None,
        };
        let resumed = tls.resumed;
        let refused =
            self.refused_after_handshake(peer_chain.as_deref(), verified_by.as_deref(), resumed);
        let established = Established {
            // Handshaking starts right after registration, so the time since then is the
            // handshake's.
            handshake_ms: self.registered_at.elapsed().as_millis() as u64,
            tls: Box::new(tls.clone()),
            peer_chain,
        };
        let watch = stream.watch();
        let (read_half, write_half) = tokio::io::split(stream);
        let writer = ClientWriter::Ready(write_half);
        if refused {
            // No session, no upstream: the client is only read on (and dropped) for the
            // lingering close.
            let reader =
                ReaderState::Running(spawn_reader(&self.env, read_half, Side::Client, ctx));
            let reason = DisposeReason::CredentialsRevoked;
            return self.close_before_open(reason, established, writer, reader, ctx);
        }
        let service = match self.service_for(read_half, watch, tls, local, ctx) {
            Ok(service) => service,
            // Straight to closing: the client is read on (and dropped) meanwhile, for the
            // lingering close.
            Err((reason, reader)) => {
                return self.close_before_open(reason, established, writer, reader, ctx);
            }
        };
        // Leaving `Handshaking` gives its slot to the next client.
        self.step(|_handshaking| {
            Phase::Open(Open {
                established,
                writer,
                service,
                last_read: Instant::now(),
                idle_timer: None,
            })
        });
        if let Some(limit) = self.idle_timeout() {
            self.arm_idle_timer(limit, ctx);
        }
        if let Some(ending) = self.fault_at_once() {
            return self.fault_ends(ending, ctx);
        }
        self.watch_credentials_expiry(ctx);
        if self.upstreams().is_some() {
            self.connect_upstream(ctx);
        }
    }

    /// `Handshaking → Closing` without opening: the protocol refused the connection, or the
    /// current client-certificate policy did. `reader` reads the client on for the lingering
    /// close.
    fn close_before_open(
        &mut self,
        reason: DisposeReason,
        established: Established,
        writer: ClientWriter,
        reader: ReaderState,
        ctx: &mut Context<Self>,
    ) {
        self.reason.get_or_insert(reason);
        self.step(|_handshaking| {
            Phase::Closing(Closing {
                established,
                writer,
                linger: reader,
                pending: Vec::new(),
                upstream: None,
            })
        });
        self.closing_started(ctx)
    }

    /// The service the client chose was at its `max_connections`: the client was told so (a
    /// TLS client with a fatal `internal_error` alert) and the connection ends as
    /// `service_limit` (counted in the service's `refused` figure when the seat was refused).
    /// Logged at most once a second, saying which service is full and the name asked for.
    fn refused_by_service(&mut self, sni: Option<&str>, ctx: &mut Context<Self>) {
        if let Some(suppressed) = self.env.throttles.service_limit.admit() {
            let service = self.service.as_deref();
            log_conn!(info, self, "refused: service at its max-connections";
                "service" => service.map_or("", Service::label),
                "sni" => sni.unwrap_or(""),
                "max_connections" => service
                    .and_then(|s| s.limits().max_connections)
                    .unwrap_or(0),
                "suppressed" => suppressed);
        }
        self.stop(DisposeReason::ServiceLimit, ctx)
    }

    /// Books a failed handshake (its class counted, the failure kept for
    /// `GET /handshake-failures`) and logs it: one line per class per second, carrying how
    /// many of its class went unlogged since.
    fn handshake_failed(
        &self,
        class: HandshakeFailureClass,
        alert: Option<AlertDescription>,
        hello: Option<HelloSummary>,
        refused: Option<RefusedCertificate>,
        error: &str,
    ) {
        let hello = hello.unwrap_or_default();
        let refused = refused.unwrap_or_default();
        let offered = hello.offered();
        let failure = HandshakeFailure {
            at_unix_ms: now_unix_ms(),
            conn_id: self.id,
            peer: self.peer,
            class,
            sni: hello.sni,
            cipher_suites: offered.cipher_suites,
            groups: offered.groups,
            alpn: offered.alpn,
            alert: alert.map(alert_name),
            client_subject: Some(refused.subject).filter(|s| !s.is_empty()),
            client_issuer: Some(refused.issuer).filter(|s| !s.is_empty()),
            error: error.to_string(),
        };
        let line = failure.clone();
        if let Some(suppressed) = self.env.stats.handshake_failed(failure) {
            log_conn!(info, self, "handshake failed";
                "class" => line.class.as_str(),
                "sni" => line.sni.as_deref().unwrap_or(""),
                "alert" => line.alert.as_deref().unwrap_or(""),
                "cipher_suites" => line.cipher_suites.join(","),
                "groups" => line.groups.join(","),
                "alpn" => line.alpn.join(","),
                "client_subject" => line.client_subject.as_deref().unwrap_or(""),
                "client_issuer" => line.client_issuer.as_deref().unwrap_or(""),
                "error" => &line.error,
                "suppressed" => suppressed);
        }
    }

    /// What the open connection does with the client's bytes: a session of the server's
    /// protocol (its reader started), or, for a proxy, the client's read half kept until the
    /// upstream is connected, with a watch on its socket. A protocol that refuses the
    /// connection (or panics) gives the reason to close, and the reader already started, for
    /// the lingering close.
    fn service_for(
        &mut self,
        read_half: tokio::io::ReadHalf<ClientStream>,
        watch: ClientWatch,
        tls: TlsInfo,
        local: Option<SocketAddr>,
        ctx: &mut Context<Self>,
    ) -> Result<OpenService, (DisposeReason, ReaderState)> {
        let Some(service) = self.service.as_ref() else {
            // A handshake that finished chose a service as it read the ClientHello.
            return Err((DisposeReason::HandshakeFailed, ReaderState::Finished));
        };
        let protocol = match &service.handler {
            Handler::Sessions(protocol) => Arc::clone(protocol),
            // The client is read once the upstream is there to take its bytes (passed through:
            // its ClientHello first).
            Handler::Proxy(_) | Handler::Passthrough(_) => {
                return Ok(OpenService::Connecting {
                    client: read_half,
                    local: local.unwrap_or(self.peer),
                    watch,
                })
            }
        };
        let info = ConnInfo {
            id: self.id,
            peer: self.peer,
            tls,
        };
        let reader = ReaderState::Running(spawn_reader(&self.env, read_half, Side::Client, ctx));
        match self.open_session(&*protocol, &info) {
            Ok(session) => Ok(OpenService::Session {
                session: SessionState {
                    session,
                    reply: Vec::new(),
                },
                reader,
            }),
            Err(reason) => Err((reason, reader)),
        }
    }

    /// Asks the pool for an upstream and connects to it (timeout, retry on another upstream
    /// and the PROXY header are the pool's), unless the client's socket fails first (nothing
    /// reads it meanwhile, and a black-holed connect takes the whole connect timeout).
    fn connect_upstream(&mut self, ctx: &mut Context<Self>) {
        let (Some(pool), Phase::Open(open)) = (self.upstreams(), &self.phase) else {
            return;
        };
        let OpenService::Connecting { local, watch, .. } = &open.service else {
            return;
        };
        // What the client negotiated goes into a PROXY v2 header's TLVs; passed through, we
        // negotiated nothing, and the header carries the addresses only.
        let tls = match self.passes_through() {
            true => None,
            false => Some((*open.established.tls).clone()),
        };
        let connecting = Arc::clone(pool).connect(self.env.log.clone(), self.peer, *local, tls);
        let client = watch.clone();
        let raced = async move {
            tokio::select! {
                biased;
                connected = connecting => Ok(connected),
                failure = client.failed() => Err(OtherSideFailed(failure)),
            }
        };
        ctx.spawn(
            raced
                .into_actor(self)
                .map(|result, act, ctx| act.upstream_connected(result, ctx)),
        );
    }

    /// `Open(Connecting) → Open(Proxy)`: both sides are read from now on. A failed connect
    /// closes the client gracefully (`upstream_connect_failed`).
    fn upstream_connected(
        &mut self,
        result: Result<io::Result<Connected>, OtherSideFailed>,
        ctx: &mut Context<Self>,
    ) {
        // Closed meanwhile: the client's read half went into the close; the upstream socket,
        // if any, is dropped here.
        let Phase::Open(Open {
            service: OpenService::Connecting { .. },
            ..
        }) = &self.phase
        else {
            return;
        };
        let Connected {
            stream,
            lease,
            latency,
            tls,
        } = match result {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => {
                let tls_failed = is_tls_failure(&e);
                if let Some(suppressed) = self.env.throttles.upstream_connect_failed.admit() {
                    match tls_failed {
                        true => log_conn!(warn, self, "upstream TLS handshake failed";
                            "error" => %e, "suppressed" => suppressed),
                        false => log_conn!(warn, self, "upstream connect failed";
                            "error" => %e, "suppressed" => suppressed),
                    }
                }
                return self.close(
                    match tls_failed {
                        true => DisposeReason::UpstreamTlsFailed,
                        false => DisposeReason::UpstreamConnectFailed,
                    },
                    ctx,
                );
            }
            Err(OtherSideFailed(e)) => return self.client_failed(e, ctx),
        };
        self.env.stats.upstream_opened(latency);
        let (read_half, write_half, watch) = stream.into_split();
        let link = UpstreamLink::new(write_half, watch, lease, Arc::clone(&self.env.stats), tls);
        let upstream = spawn_reader(&self.env, read_half, Side::Upstream, ctx);
        let env = Arc::clone(&self.env);
        self.step(|phase| match phase {
            Phase::Open(mut open) => {
                if let OpenService::Connecting { client, watch, .. } = open.service {
                    let reader = spawn_reader(&env, client, Side::Client, ctx);
                    open.service = OpenService::Proxy(Proxying {
                        upstream: link,
                        flow: ProxyFlow::Both {
                            client: reader,
                            upstream,
                        },
                        client: watch,
                    });
                }
                Phase::Open(open)
            }
            other => other,
        });
    }

    /// A session of `protocol` for this connection; a refusal or a panic is the reason to
    /// close.
    fn open_session(
        &self,
        protocol: &dyn crate::protocol::Protocol,
        info: &ConnInfo,
    ) -> Result<Box<dyn crate::protocol::Session>, DisposeReason> {
        match catch_unwind(AssertUnwindSafe(|| protocol.open(info))) {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => {
                log_conn!(info, self, "protocol refused the connection"; "error" => %e);
                Err(DisposeReason::ProtocolError)
            }
            Err(_) => {
                log_conn!(error, self, "protocol panicked opening a session");
                Err(DisposeReason::SessionPanic)
            }
        }
    }

    // --- 3. events of an open connection ---------------------------------------------------

    /// One timer per idle period, not per read: on expiry it re-arms for what is left. Idle
    /// means no byte in either direction: every chunk read, from the client or (proxy) from
    /// the upstream, sets `last_read` (`session.rs`), so a client that only listens to what
    /// the upstream sends (a pub/sub subscriber) is not idle.
    pub(super) fn arm_idle_timer(&mut self, after: Duration, ctx: &mut Context<Self>) {
        let timer = ctx.run_later(after, |act, ctx| {
            let (Some(limit), Phase::Open(open)) = (act.idle_timeout(), &act.phase) else {
                return;
            };
            // A write in flight is the client not reading, not the client idle: the write's own
            // stall limit ends that one, as a writer_error. Likewise a write to the upstream
            // in flight is the upstream not reading (its stall limit ends it as upstream_error),
            // not the client idle: its reader waits for that write.
            let upstream_busy = matches!(&open.service,
                OpenService::Proxy(proxying) if proxying.upstream.writer.is_busy());
            if open.writer.is_busy() || upstream_busy {
                return act.arm_idle_timer(limit, ctx);
            }
            let idle = open.last_read.elapsed();
            if idle >= limit {
                act.close(DisposeReason::IdleTimeout, ctx);
            } else {
                act.arm_idle_timer(limit - idle, ctx);
            }
        });
        if let Phase::Open(open) = &mut self.phase {
            open.idle_timer = Some(timer);
        }
    }

    /// The client finished sending, or failed.
    pub(super) fn client_finished(&mut self, outcome: ReadOutcome, ctx: &mut Context<Self>) {
        match &mut self.phase {
            Phase::Open(open) => match &mut open.service {
                OpenService::Session { reader, .. } => *reader = ReaderState::Finished,
                OpenService::Proxy(_) => {
                    return self.proxied_client_finished(outcome, ctx);
                }
                // Not read while connecting: nothing can have finished.
                OpenService::Connecting { .. } => return,
            },
            Phase::Closing(closing) => {
                closing.linger = ReaderState::Finished;
                // Lingering close: the client has finished too. Stop, unless our
                // close_notify is still being flushed; that future stops the actor once done.
                if closing.writer.is_shut() {
                    ctx.stop();
                }
                return;
            }
            _ => return,
        }
        // A session connection: its client is done either way.
        match outcome {
            ReadOutcome::PeerEof { clean } => {
                self.clean_eof = Some(clean);
                let reason = self
                    .run_session(|session, reply| {
                        session.on_peer_finished(reply);
                        // The client is done either way; the connection closes after this.
                        Ok(Flow::Close)
                    })
                    .err()
                    .unwrap_or(DisposeReason::PeerEof);
                self.close(reason, ctx);
            }
            ReadOutcome::Failed(e) => self.client_failed(e, ctx),
        }
    }

    /// A proxied client finished sending, or failed. A clean end (`close_notify`) is passed on
    /// as a half-close; a TCP FIN without `close_notify` is a client that died (killed,
    /// crashed: its kernel sent the FIN) or a truncated stream, and closes both sides at once
    /// (what the client sent is upstream already; the upstream gets its FIN).
    fn proxied_client_finished(&mut self, outcome: ReadOutcome, ctx: &mut Context<Self>) {
        let clean = match outcome {
            ReadOutcome::PeerEof { clean } => clean,
            ReadOutcome::Failed(e) => {
                self.mark_finished(Side::Client);
                return self.client_failed(e, ctx);
            }
        };
        self.clean_eof = Some(clean);
        let Phase::Open(Open {
            writer,
            service: OpenService::Proxy(proxying),
            ..
        }) = &mut self.phase
        else {
            return;
        };
        let upstream_done_first = matches!(proxying.flow, ProxyFlow::UpstreamFinished { .. });
        if !clean {
            self.mark_finished(Side::Client);
            return self.close(DisposeReason::PeerEof, ctx);
        }
        if upstream_done_first {
            // The second side to finish: done once our close_notify is out.
            if writer.is_shut() {
                return self.stop(DisposeReason::UpstreamEof, ctx);
            }
            proxying.flow = ProxyFlow::Finished {
                first: Side::Upstream,
            };
            return;
        }
        // The first: the upstream reads EOF (after close_notify, for TLS), upstream → client
        // flows on, for at most the half-close timeout.
        let tls_half = proxying.upstream.shut_write();
        proxying.finished(Side::Client);
        upstream_goodbye(tls_half, self.env.config.close_timeout, ctx);
        self.arm_half_close_deadline(ctx);
    }

    /// The client's read failed.
    fn client_failed(&mut self, e: io::Error, ctx: &mut Context<Self>) {
        if is_reset(&e) {
            // The client's socket is gone (a reset: it was killed, or crashed): nothing can
            // reach it, so no close_notify is attempted; a burst of killed clients costs one
            // stop each.
            log_conn!(debug, self, "connection reset by the client"; "error" => %e);
            return self.stop(DisposeReason::ReaderError, ctx);
        }
        log_conn!(debug, self, "read failed"; "error" => %e);
        self.close(DisposeReason::ReaderError, ctx);
    }

    /// The upstream finished sending, or failed.
    pub(super) fn upstream_finished(&mut self, outcome: ReadOutcome, ctx: &mut Context<Self>) {
        match &mut self.phase {
            Phase::Closing(Closing {
                upstream: Some(drained),
                ..
            }) => {
                drained.reader = ReaderState::Finished;
                return;
            }
            Phase::Open(Open {
                service: OpenService::Proxy(_),
                ..
            }) => {}
            _ => return,
        }
        if let ReadOutcome::Failed(e) = outcome {
            self.mark_finished(Side::Upstream);
            return self.upstream_failed(e, ctx);
        }
        if let ReadOutcome::PeerEof { clean: false } = outcome {
            // A TLS upstream's TCP end without close_notify: it died (killed, crashed) or the
            // stream was cut, so this is no half-close to pass on; both sides close, as for a
            // client that ends the same way. (A plaintext upstream's end is always clean.)
            self.mark_finished(Side::Upstream);
            log_conn!(debug, self, "the upstream ended without close_notify");
            return self.close(DisposeReason::UpstreamError, ctx);
        }
        let Phase::Open(Open {
            service: OpenService::Proxy(proxying),
            ..
        }) = &mut self.phase
        else {
            return;
        };
        // All the upstream sent is written to the client already: close_notify and a FIN go
        // to the client now. If the client had not finished, it gets the half-close timeout.
        let half_closed = matches!(proxying.flow, ProxyFlow::Both { .. });
        proxying.finished(Side::Upstream);
        if half_closed {
            self.arm_half_close_deadline(ctx);
        }
        self.shut_client_write(ctx);
    }

    /// The upstream's socket failed (a read, a write, or its watch while a write to the
    /// client was stalled): both sides close; what the upstream may still send is drained.
    fn upstream_failed(&mut self, e: io::Error, ctx: &mut Context<Self>) {
        log_conn!(debug, self, "upstream failed"; "error" => %e);
        self.close(DisposeReason::UpstreamError, ctx);
    }

    /// Marks one side of a proxied connection finished (its reader has stopped), before a
    /// close that must not linger for it.
    fn mark_finished(&mut self, side: Side) {
        if let Phase::Open(Open {
            service: OpenService::Proxy(proxying),
            ..
        }) = &mut self.phase
        {
            proxying.finished(side);
        }
    }

    /// The upstream finished and all it sent is written to the client: send `close_notify` and
    /// a FIN, and keep reading the client until it finishes too.
    fn shut_client_write(&mut self, ctx: &mut Context<Self>) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        // Never busy here: the upstream reader reads (and so finishes) only once its previous
        // chunk is written to the client.
        let Some(mut half) = open.writer.take() else {
            return self.close_notify_sent(ctx);
        };
        let limit = self.env.config.close_timeout;
        let shutdown = async move {
            let _ = tokio::time::timeout(limit, half.shutdown()).await;
        };
        ctx.spawn(
            shutdown
                .into_actor(self)
                .map(|(), act, ctx| act.close_notify_sent(ctx)),
        );
    }

    /// A write to the client is over: its half is free again (or the close goes on). A write
    /// of the upstream's bytes may have been cut short by the upstream's socket failing.
    pub(super) fn client_written(
        &mut self,
        half: tokio::io::WriteHalf<ClientStream>,
        outcome: Result<io::Result<()>, OtherSideFailed>,
        ctx: &mut Context<Self>,
    ) {
        let (result, upstream_failure) = match outcome {
            Ok(result) => (result, None),
            Err(OtherSideFailed(e)) => (Ok(()), Some(e)),
        };
        if let Err(e) = &result {
            log_conn!(debug, self, "write failed"; "error" => %e);
            self.reason.get_or_insert(DisposeReason::WriterError);
        }
        match &mut self.phase {
            Phase::Open(open) => {
                // Only a close shuts the client's direction, and never while a write holds it.
                drop(open.writer.put_back(half));
                if let Some(e) = upstream_failure {
                    return self.upstream_failed(e, ctx);
                }
                if result.is_err() {
                    self.close(DisposeReason::WriterError, ctx);
                }
            }
            // A close was asked for while this write held the write half.
            Phase::Closing(closing) => {
                drop(closing.writer.put_back(half));
                self.say_goodbye(ctx);
            }
            _ => {}
        }
    }

    /// A write to the upstream is over: its half is free again, or dropped (the FIN) if the
    /// client finished meanwhile or the connection is closing. A write cut short by the
    /// client's socket failing (a reset while the upstream did not read) ends the connection
    /// as the client's failure, which it is.
    pub(super) fn upstream_written(
        &mut self,
        half: UpstreamWriteHalf,
        outcome: Result<io::Result<usize>, OtherSideFailed>,
        ctx: &mut Context<Self>,
    ) {
        let link = match &mut self.phase {
            Phase::Open(Open {
                service: OpenService::Proxy(proxying),
                ..
            }) => Some(&mut proxying.upstream),
            Phase::Closing(Closing {
                upstream: Some(drained),
                ..
            }) => Some(&mut drained.link),
            _ => None,
        };
        let Some(link) = link else {
            return;
        };
        // Shut while this write held the half: it goes now (for TLS, after close_notify).
        let shut_meanwhile = link.writer.put_back(half);
        upstream_goodbye(shut_meanwhile, self.env.config.close_timeout, ctx);
        match outcome {
            Ok(Ok(len)) => link.count_proxied(Side::Client, len),
            Ok(Err(e)) => self.upstream_failed(e, ctx),
            Err(OtherSideFailed(e)) => {
                log_conn!(debug, self, "the client failed while its bytes waited for the upstream";
                    "error" => %e);
                self.mark_finished(Side::Client);
                self.client_failed(e, ctx);
            }
        }
    }

    // --- 4. the end -------------------------------------------------------------------------

    /// Stops the connection now with `reason` (kept only if no reason was recorded before):
    /// the stop hook drops whatever the phase holds and sends the `Dispose`.
    pub(crate) fn stop(&mut self, reason: DisposeReason, ctx: &mut Context<Self>) {
        self.reason.get_or_insert(reason);
        ctx.stop();
    }

    /// Closes gracefully with `reason` (kept only if no reason was recorded before): `Open →
    /// Closing`, flushing what is pending, then `close_notify` and a FIN to the client and a
    /// FIN to the upstream, then a bounded wait for the client to finish. A connection with no
    /// TLS session yet has nothing to say goodbye on and stops at once; one closing already
    /// goes on as it was.
    pub(crate) fn close(&mut self, reason: DisposeReason, ctx: &mut Context<Self>) {
        self.reason.get_or_insert(reason);
        match &mut self.phase {
            Phase::Accepted(_) | Phase::Handshaking(_) => return ctx.stop(),
            Phase::Closing(_) | Phase::Disposed => return,
            Phase::Open(open) => {
                if let Some(timer) = open.idle_timer.take() {
                    ctx.cancel_future(timer);
                }
            }
        }
        // A proxy still connecting never started its client reader: it starts now, to drain
        // the client while it gets close_notify.
        let env = Arc::clone(&self.env);
        // A bare FIN: the client was killed or cut (or half-closed without TLS's end, and
        // then it still gets everything pending and close_notify).
        let client_gone = self.clean_eof == Some(false);
        self.step(|phase| match phase {
            Phase::Open(open) => Phase::Closing(closing_of(open, &env, client_gone, ctx)),
            other => other,
        });
        self.closing_started(ctx);
    }

    /// The close is under way: one deadline bounds all of it (a write in flight to a client
    /// that does not read must not hold a kill or a shutdown open), and the goodbye starts
    /// unless a write holds the client's half (its completion starts it).
    fn closing_started(&mut self, ctx: &mut Context<Self>) {
        let deadline = self.env.config.close_timeout.saturating_mul(2);
        ctx.run_later(deadline, |_, ctx| ctx.stop());
        if let Phase::Closing(closing) = &self.phase {
            if !closing.writer.is_busy() {
                self.say_goodbye(ctx);
            }
        }
    }

    /// Writes what is left of the reply, sends `close_notify` and shuts the TCP write side
    /// (FIN), each bounded by the close timeout. Lingering until the client's FIN keeps an
    /// unread byte from turning our close into a reset, which could destroy the
    /// `close_notify` before the client reads it.
    fn say_goodbye(&mut self, ctx: &mut Context<Self>) {
        let Phase::Closing(closing) = &mut self.phase else {
            return;
        };
        let Some(mut half) = closing.writer.take() else {
            // Shut already (a proxy half-close sent it): nothing more to say, but the client
            // may still be sending, so linger as after any close_notify. Busy: a proxy
            // half-close is shutting it right now, and that future's completion goes on.
            if closing.writer.is_shut() {
                self.close_notify_sent(ctx);
            }
            return;
        };
        let pending = std::mem::take(&mut closing.pending);
        let limit = self.env.config.close_timeout;
        let goodbye = async move {
            let _ = tokio::time::timeout(limit, async {
                if !pending.is_empty() {
                    half.write_all(&pending).await?;
                }
                // tokio-rustls: queue close_notify, flush it, then shutdown(SHUT_WR) the socket.
                half.shutdown().await
            })
            .await;
        };
        ctx.spawn(
            goodbye
                .into_actor(self)
                .map(|(), act, ctx| act.close_notify_sent(ctx)),
        );
    }

    /// Our `close_notify` and FIN are out (or the close timeout gave up on them). Closing:
    /// stop once the client has finished, or after the close timeout. Still open: a proxy
    /// half-close, which stops once the client has finished too.
    fn close_notify_sent(&mut self, ctx: &mut Context<Self>) {
        match &mut self.phase {
            Phase::Open(open) => {
                open.writer = Writer::Shut;
                if let OpenService::Proxy(Proxying {
                    flow: ProxyFlow::Finished { first },
                    ..
                }) = open.service
                {
                    self.stop(finished_first(first), ctx);
                }
            }
            Phase::Closing(closing) => {
                closing.writer = Writer::Shut;
                match closing.linger {
                    ReaderState::Finished => ctx.stop(),
                    ReaderState::Running(_) => {
                        ctx.run_later(self.env.config.close_timeout, |_, ctx| ctx.stop());
                    }
                }
            }
            _ => {}
        }
    }
}

/// `Open → Closing`: the session is dropped (what it had not written yet is kept), a proxy's
/// upstream gets its FIN and is drained, a client not read yet starts being drained. When the
/// client is gone (`client_gone`: it ended with a bare FIN, so its reader has finished and the
/// connection stops as soon as its close_notify is out), a plaintext upstream gets its FIN from
/// the socket's close at that stop rather than from a `shutdown(2)` now (see
/// `UpstreamWriteHalf::close_quietly`).
fn closing_of(
    open: Open,
    env: &ConnectionEnv,
    client_gone: bool,
    ctx: &mut Context<Connection>,
) -> Closing {
    let (linger, pending, upstream) = match open.service {
        OpenService::Session {
            session: SessionState { session, reply },
            reader,
        } => {
            // A session may be in any state after a panic, and a panic in its Drop must not
            // take the connection's close with it.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(session)));
            (reader, reply, None)
        }
        OpenService::Connecting { client, .. } => (
            ReaderState::Running(spawn_reader(env, client, Side::Client, ctx)),
            Vec::new(),
            None,
        ),
        OpenService::Proxy(Proxying {
            upstream: mut link,
            flow,
            // The watch goes; the client's reader, if any, still holds its socket.
            client: _,
        }) => {
            // The upstream gets its FIN now rather than when the actor stops; what it still
            // sends is drained. Unless the client is gone: the stop comes at once, and its
            // close is the FIN (a write in flight keeps its half, which goes as usual).
            let half = if client_gone {
                link.shut_write_closing_anyway()
            } else {
                link.shut_write()
            };
            upstream_goodbye(half, env.config.close_timeout, ctx);
            let (client, upstream) = match flow {
                ProxyFlow::Both { client, upstream } => {
                    (ReaderState::Running(client), ReaderState::Running(upstream))
                }
                ProxyFlow::ClientFinished { upstream } => {
                    (ReaderState::Finished, ReaderState::Running(upstream))
                }
                ProxyFlow::UpstreamFinished { client } => {
                    (ReaderState::Running(client), ReaderState::Finished)
                }
                ProxyFlow::Finished { .. } => (ReaderState::Finished, ReaderState::Finished),
            };
            let drained = Drained {
                link,
                reader: upstream,
            };
            (client, Vec::new(), Some(drained))
        }
    };
    Closing {
        established: open.established,
        writer: open.writer,
        linger,
        pending,
        upstream,
    }
}

/// Ends the upstream's write direction with `half`, if there is one: a TLS half gets its
/// `close_notify` and FIN from a shutdown bounded by `limit`, run on the connection (should it
/// stop first, the half's drop sends what it can at once); a plaintext half's drop is its FIN.
fn upstream_goodbye(
    half: Option<UpstreamWriteHalf>,
    limit: Duration,
    ctx: &mut Context<Connection>,
) {
    let Some(mut half) = half else {
        return;
    };
    if !half.is_tls() {
        return drop(half);
    }
    ctx.spawn(fut::wrap_future(async move {
        let _ = tokio::time::timeout(limit, half.shutdown()).await;
    }));
}

/// The reason of a proxied connection whose two sides both finished: who ended it.
fn finished_first(first: Side) -> DisposeReason {
    match first {
        Side::Client => DisposeReason::PeerEof,
        Side::Upstream => DisposeReason::UpstreamEof,
    }
}

/// Starts a reader child for one side, on the connection's arbiter, reporting to it; it lives
/// as long as the returned handle, which the connection's phase keeps.
pub(super) fn spawn_reader<R: AsyncRead + Unpin + 'static>(
    env: &ConnectionEnv,
    half: R,
    side: Side,
    ctx: &mut Context<Connection>,
) -> ReaderHandle {
    Reader::start_child(
        half,
        side,
        ctx.address(),
        env.config.read_buffer,
        env.faults.clone(),
    )
}

/// Whether a read failed because the peer's socket is gone (nothing more can be sent to it).
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A plaintext client's socket, as `begin_plain` takes it: TCP with our own address (for a
/// PROXY header to the upstream, when one is sent), or unix.
enum PlainSocket {
    Tcp(TcpStream, Option<SocketAddr>),
    Unix(tokio::net::UnixStream),
}
