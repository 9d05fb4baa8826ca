//! `Connection`: one client's TLS connection, from registration to disposal.

/// Logs at `$level` on the server's logger with the connection's `conn_id` and `peer` inline.
/// Nothing is built for a filtered-out record, and an idle connection keeps no logger of its
/// own (a child `Logger` cost two allocations per connection).
macro_rules! log_conn {
    ($level:ident, $conn:expr, $msg:expr $(; $($kv:tt)*)?) => {
        slog::$level!($conn.env.log, $msg;
            "conn_id" => $conn.id.0, "peer" => %$conn.peer $(, $($kv)*)?)
    };
}

mod proxy;

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::Logger;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::access_log::DisposalFields;
use crate::admission::{ConnectionSlot, HandshakeSlot, Limits};
use crate::dispose_guard::DisposeGuard;
use crate::fault::{FaultPoint, Faults};
use crate::messages::{Close, CloseMode, Inbound, ReadOutcome, ReaderFinished, Side, StopReader};
use crate::read_ahead::ReadAhead;
use crate::reader::{ClientReader, Reader};
use crate::{
    ConnId, ConnInfo, DisposeReason, HandlerRegistry, Protocol, ProxyConfig, ServerConfig, Session,
    SessionError, Stats, TlsInfo, TlsReloader,
};

use self::proxy::UpstreamLink;

/// The server side of a TLS stream over TCP (read ahead while the client streams).
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>;

/// The states of a connection. They only move forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// In the registry; the actor has not started.
    Registered,
    /// The TLS handshake is running.
    Handshaking,
    /// TLS is up; the readers and the session (or the upstream) are running.
    Open,
    /// Closing: flushing, sending `close_notify`, waiting (bounded) for the client to finish.
    Closing,
    /// Stopped; its `Dispose` is sent.
    Disposed,
}

/// What a server does with each connection's bytes.
pub(crate) enum Service {
    /// Hand them to a session of this protocol, write back its replies.
    Sessions(Arc<dyn Protocol>),
    /// Forward them to a plaintext upstream, and the upstream's bytes back.
    Proxy(ProxyConfig),
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
    /// The next connection id (shared by the acceptors of every worker).
    pub(crate) next_id: AtomicU64,
    /// Set by the shutdown protocol once accepting has stopped, before it asks the registries
    /// to close everything. A connection that starts after that closes at once rather than
    /// starting a handshake that the `Close` queued behind its start would abandon.
    pub(crate) draining: AtomicBool,
}

/// One client's connection: runs the TLS handshake, owns the TLS write half and the session
/// (or the upstream link), and supervises its reader children.
///
/// Every way the connection ends goes through `Connection::begin_close` or a direct
/// `ctx.stop()`, and so through `stopped()`, the only place that sends `Dispose`. The first
/// reason recorded is the one reported.
pub struct Connection {
    id: ConnId,
    peer: SocketAddr,
    /// Our address as the client sees it (the PROXY header's destination).
    local: Option<SocketAddr>,
    env: Arc<ConnectionEnv>,
    state: ConnState,
    socket: Option<TcpStream>,
    /// Held from accept until the handshake ends (the handshake limits and gauge).
    handshake: Option<HandshakeSlot>,
    writer: Option<WriteHalf<TlsStream>>,
    write_in_flight: bool,
    reader: Option<Addr<ClientReader>>,
    reader_done: bool,
    /// The graceful close has flushed (or given up on) `close_notify` and the FIN.
    close_sent: bool,
    session: Option<Box<dyn Session>>,
    upstream: Option<UpstreamLink>,
    reply: Vec<u8>,
    reason: Option<DisposeReason>,
    clean_eof: Option<bool>,
    /// Set while a message handler runs; still set in `stopped()` only if a handler unwound.
    in_handler: bool,
    last_read: Instant,
    registered_at: Instant,
    /// When the handshake finished, how long it took.
    handshake_ms: Option<u64>,
    /// Decrypted bytes read from the client and written to it (the access log's sizes).
    bytes_in: u64,
    bytes_out: u64,
    /// What the handshake negotiated (boxed: an idle connection pays one pointer).
    tls: Option<Box<TlsInfo>>,
    guard: DisposeGuard,
}

/// Why a handshake did not produce a stream.
enum HandshakeError {
    TimedOut,
    Failed(io::Error),
}

impl Connection {
    /// A connection registered with `registry`, the registry of the worker it runs on.
    /// Its connection slot is released with its `Dispose`.
    pub(crate) fn new(
        id: ConnId,
        peer: SocketAddr,
        socket: TcpStream,
        env: Arc<ConnectionEnv>,
        registry: Addr<HandlerRegistry>,
        (connection, handshake): (ConnectionSlot, HandshakeSlot),
    ) -> Self {
        let guard = DisposeGuard::new(id, registry, env.log.clone()).holding(connection);
        let now = Instant::now();
        Connection {
            id,
            peer,
            local: None,
            env,
            state: ConnState::Registered,
            socket: Some(socket),
            handshake: Some(handshake),
            writer: None,
            write_in_flight: false,
            reader: None,
            reader_done: false,
            close_sent: false,
            session: None,
            upstream: None,
            reply: Vec::new(),
            reason: None,
            clean_eof: None,
            in_handler: false,
            last_read: now,
            registered_at: now,
            handshake_ms: None,
            bytes_in: 0,
            bytes_out: 0,
            tls: None,
            guard,
        }
    }

    fn faults(&self) -> &Faults {
        &self.env.faults
    }

    /// Starts closing with `reason` (kept only if no reason was recorded before). An open
    /// connection closes gracefully, bounded by the close timeout; one without a TLS session yet
    /// stops at once.
    fn begin_close(&mut self, reason: DisposeReason, ctx: &mut Context<Self>) {
        self.reason.get_or_insert(reason);
        match self.state {
            ConnState::Closing | ConnState::Disposed => {}
            ConnState::Registered | ConnState::Handshaking => ctx.stop(),
            ConnState::Open => {
                self.state = ConnState::Closing;
                // The upstream, if any, gets its FIN now rather than when the actor stops.
                self.shut_upstream_write();
                // One deadline for the whole close: a write in flight to a client that does not
                // read must not hold a graceful close (a kill, a shutdown) open. The flush and
                // the linger each get close_timeout; this bounds both together.
                let deadline = self.env.config.close_timeout * 2;
                ctx.run_later(deadline, |_, ctx| ctx.stop());
                // A write in flight holds the write half; its completion finishes the close.
                if !self.write_in_flight {
                    self.finish_close(ctx);
                }
            }
        }
    }

    /// Writes what is left of the reply, sends `close_notify` and shuts the TCP write side
    /// (FIN), then stops once the client has finished too, or after the close timeout. Lingering
    /// until the client's FIN keeps an unread byte from turning our close into a reset, which
    /// could destroy the `close_notify` before the client reads it.
    fn finish_close(&mut self, ctx: &mut Context<Self>) {
        let Some(mut writer) = self.writer.take() else {
            // No write half: either it is shut already, or a proxy half-close is shutting it
            // right now, and that future's completion ends the close.
            if self.close_sent {
                ctx.stop();
            }
            return;
        };
        let pending = std::mem::take(&mut self.reply);
        let limit = self.env.config.close_timeout;
        let shutdown = async move {
            let _ = tokio::time::timeout(limit, async {
                if !pending.is_empty() {
                    writer.write_all(&pending).await?;
                }
                // tokio-rustls: queue close_notify, flush it, then shutdown(SHUT_WR) the socket.
                writer.shutdown().await
            })
            .await;
        };
        ctx.spawn(
            shutdown
                .into_actor(self)
                .map(|(), act, ctx| act.close_notify_sent(ctx)),
        );
    }

    /// Our `close_notify` and FIN are out (or the close timeout gave up on them). Closing: stop
    /// once the client has finished, or after the close timeout. Still open: a proxy
    /// half-close, which goes on until both sides are done.
    fn close_notify_sent(&mut self, ctx: &mut Context<Self>) {
        self.close_sent = true;
        if self.state == ConnState::Open {
            return self.finish_if_both_done(ctx);
        }
        if self.reader_done {
            ctx.stop();
        } else {
            ctx.run_later(self.env.config.close_timeout, |_, ctx| ctx.stop());
        }
    }

    /// Runs a session callback, turning a panic or a protocol error into a disposal reason.
    fn run_session(
        &mut self,
        call: impl FnOnce(&mut dyn Session, &mut Vec<u8>) -> Result<(), SessionError>,
    ) -> Result<(), DisposeReason> {
        let inject_panic = self.faults().is_on(FaultPoint::SessionPanic);
        if self.faults().is_on(FaultPoint::SessionHang) {
            log_conn!(warn, self, "fault injected: the session never returns");
            loop {
                std::thread::park();
            }
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let reply = &mut self.reply;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if inject_panic {
                panic!("injected session panic");
            }
            call(session.as_mut(), reply)
        }));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                log_conn!(warn, self, "session refused input"; "error" => %e);
                self.reply.clear();
                Err(DisposeReason::ProtocolError)
            }
            Err(_) => {
                log_conn!(
                    error,
                    self,
                    "session panicked; closing this connection only"
                );
                self.reply.clear();
                // A panicked session may be in any state: drop it, and a panic in its Drop too.
                let broken = self.session.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(broken)));
                Err(DisposeReason::SessionPanic)
            }
        }
    }

    /// Writes the session's pending reply to the client.
    fn write_reply(&mut self) -> ResponseActFuture<Self, ()> {
        if self.reply.is_empty() {
            return Box::pin(fut::ready(()));
        }
        let data = std::mem::take(&mut self.reply);
        self.write_to_client(data, |act, mut data, _written| {
            // Keep the buffer for the next reply unless one chunk made it large.
            data.clear();
            if act.reply.is_empty() && data.capacity() <= 4 * act.env.config.read_buffer {
                act.reply = data;
            }
        })
    }

    /// Writes `data` to the client and flushes it, then hands the buffer back to `recycle`
    /// with whether the write succeeded.
    /// The reader that produced the data waits for this to resolve before reading again.
    fn write_to_client<B: AsRef<[u8]> + 'static>(
        &mut self,
        data: B,
        recycle: impl FnOnce(&mut Self, B, bool) + 'static,
    ) -> ResponseActFuture<Self, ()> {
        let Some(mut writer) = self.writer.take() else {
            return Box::pin(fut::ready(()));
        };
        let stall_limit = self.env.config.idle_timeout;
        self.write_in_flight = true;
        let write = async move {
            let result = with_limit(stall_limit, async {
                writer.write_all(data.as_ref()).await?;
                writer.flush().await
            })
            .await;
            (writer, data, result)
        };
        Box::pin(
            write
                .into_actor(self)
                .map(|(writer, data, result), act, ctx| {
                    act.write_in_flight = false;
                    act.writer = Some(writer);
                    if result.is_ok() {
                        act.bytes_out += data.as_ref().len() as u64;
                    }
                    recycle(act, data, result.is_ok());
                    if let Err(e) = &result {
                        log_conn!(debug, act, "write failed"; "error" => %e);
                        act.reason.get_or_insert(DisposeReason::WriterError);
                    }
                    match act.state {
                        ConnState::Open if result.is_err() => {
                            act.begin_close(DisposeReason::WriterError, ctx)
                        }
                        // A close was asked for while this write held the write half.
                        ConnState::Closing => act.finish_close(ctx),
                        _ => {}
                    }
                }),
        )
    }

    fn handshake_done(
        &mut self,
        result: Result<TlsStream, HandshakeError>,
        ctx: &mut Context<Self>,
    ) {
        if self.state != ConnState::Handshaking {
            return;
        }
        // The handshake is over either way: its slot goes to the next client.
        self.handshake = None;
        let stream = match result {
            Ok(stream) => stream,
            Err(HandshakeError::TimedOut) => {
                log_conn!(debug, self, "handshake timed out");
                return self.begin_close(DisposeReason::HandshakeTimeout, ctx);
            }
            Err(HandshakeError::Failed(e)) => {
                log_conn!(debug, self, "handshake failed"; "error" => %e);
                let reason = match crate::client_auth::is_client_auth_failure(&e) {
                    true => DisposeReason::ClientAuthFailed,
                    false => DisposeReason::HandshakeFailed,
                };
                return self.begin_close(reason, ctx);
            }
        };
        // Handshaking starts right after registration, so the time since then is the
        // handshake's.
        self.handshake_ms = Some(self.registered_at.elapsed().as_millis() as u64);
        let tls = TlsInfo::of(stream.get_ref().1);
        self.tls = Some(Box::new(tls.clone()));
        self.state = ConnState::Open;
        self.last_read = Instant::now();
        let (read_half, write_half) = tokio::io::split(stream);
        self.writer = Some(write_half);
        if let Some(limit) = self.env.config.idle_timeout {
            self.arm_idle_timer(limit, ctx);
        }
        match &self.env.service {
            Service::Sessions(protocol) => {
                let info = ConnInfo {
                    id: self.id,
                    peer: self.peer,
                    tls: tls.clone(),
                };
                let protocol = Arc::clone(protocol);
                match catch_unwind(AssertUnwindSafe(|| protocol.open(&info))) {
                    Ok(session) => self.session = Some(session),
                    Err(_) => {
                        log_conn!(error, self, "protocol panicked opening a session");
                        self.start_client_reader(read_half, ctx);
                        return self.begin_close(DisposeReason::SessionPanic, ctx);
                    }
                }
                self.start_client_reader(read_half, ctx);
            }
            // The client is read once the upstream is there to take its bytes.
            Service::Proxy(_) => self.connect_upstream(read_half, ctx),
        }
    }

    fn start_client_reader(&mut self, half: ReadHalf<TlsStream>, ctx: &mut Context<Self>) {
        self.reader = Some(self.spawn_reader(half, Side::Client, ctx));
    }

    /// Starts a reader child for one side, on this arbiter, reporting to this connection.
    fn spawn_reader<R: AsyncRead + Unpin + 'static>(
        &self,
        half: R,
        side: Side,
        ctx: &mut Context<Self>,
    ) -> Addr<Reader<R>> {
        let me = ctx.address();
        Reader::new(
            half,
            side,
            (me.clone().recipient(), me.recipient()),
            self.env.config.read_buffer,
            self.env.faults.clone(),
        )
        .start()
    }

    /// One timer per idle period, not per read: on expiry it re-arms for what is left.
    fn arm_idle_timer(&self, after: Duration, ctx: &mut Context<Self>) {
        ctx.run_later(after, |act, ctx| {
            let (Some(limit), ConnState::Open) = (act.env.config.idle_timeout, act.state) else {
                return;
            };
            // A write in flight is the client not reading, not the client idle: the write's own
            // stall limit ends that one, as a writer_error.
            if act.write_in_flight {
                return act.arm_idle_timer(limit, ctx);
            }
            let idle = act.last_read.elapsed();
            if idle >= limit {
                act.begin_close(DisposeReason::IdleTimeout, ctx);
            } else {
                act.arm_idle_timer(limit - idle, ctx);
            }
        });
    }

    /// The client finished sending or failed.
    fn client_finished(&mut self, outcome: ReadOutcome, ctx: &mut Context<Self>) {
        self.reader_done = true;
        self.reader = None;
        match self.state {
            ConnState::Open => {}
            // Lingering close: the client has finished too. Stop, unless our close_notify is
            // still being flushed; that future stops the actor once it is done.
            ConnState::Closing if self.close_sent => return ctx.stop(),
            _ => return,
        }
        match outcome {
            ReadOutcome::PeerEof { clean } => {
                self.clean_eof = Some(clean);
                if self.upstream.is_some() {
                    return self.client_eof_to_upstream(ctx);
                }
                let reason = self
                    .run_session(|session, reply| {
                        session.on_peer_finished(reply);
                        Ok(())
                    })
                    .err()
                    .unwrap_or(DisposeReason::PeerEof);
                self.begin_close(reason, ctx);
            }
            ReadOutcome::Failed(e) => {
                log_conn!(debug, self, "read failed"; "error" => %e);
                self.begin_close(DisposeReason::ReaderError, ctx);
            }
        }
    }
}

/// Runs `work` under an optional time limit; running out is a `TimedOut` I/O error.
async fn with_limit(
    limit: Option<Duration>,
    work: impl std::future::Future<Output = io::Result<()>>,
) -> io::Result<()> {
    match limit {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled"))),
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.faults().is_on(FaultPoint::AfterRegisterBeforeStart) {
            log_conn!(
                warn,
                self,
                "fault injected: failing after register, before start"
            );
            return self.begin_close(DisposeReason::StartFailed, ctx);
        }
        if self.env.draining.load(Ordering::SeqCst) {
            return self.begin_close(DisposeReason::Shutdown, ctx);
        }
        let Some(tcp) = self.socket.take() else {
            return self.begin_close(DisposeReason::StartFailed, ctx);
        };
        // Small TLS records (handshake flights, echoes) must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        self.local = tcp.local_addr().ok();
        self.state = ConnState::Handshaking;
        // Taken now and kept: a reload during this handshake does not change it.
        let tls = self.env.tls.current();
        let limit = self.env.config.handshake_timeout;
        let inject_failure = self.faults().is_on(FaultPoint::DuringHandshake);
        let handshake = async move {
            if inject_failure {
                return Err(HandshakeError::Failed(io::Error::other(
                    "injected handshake failure",
                )));
            }
            match tokio::time::timeout(limit, crate::handshake::accept(tls, tcp)).await {
                Err(_) => Err(HandshakeError::TimedOut),
                Ok(Err(e)) => Err(HandshakeError::Failed(e)),
                Ok(Ok(stream)) => Ok(stream),
            }
        };
        ctx.spawn(
            handshake
                .into_actor(self)
                .map(|result, act, ctx| act.handshake_done(result, ctx)),
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.handshake = None;
        self.state = ConnState::Disposed;
        // A reader parked in a read would otherwise keep its socket open: stop it explicitly.
        if let Some(reader) = self.reader.take() {
            reader.do_send(StopReader);
        }
        self.release_upstream();
        let reason = match self.reason {
            Some(reason) => reason,
            // A handler unwound: actix ran this hook while dropping the panicked actor.
            None if self.in_handler || std::thread::panicking() => DisposeReason::SessionPanic,
            // Stopped with no reason recorded: its arbiter is being torn down.
            None => DisposeReason::Shutdown,
        };
        let fields = DisposalFields {
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            close_notify: self.clean_eof,
            handshake_ms: self.handshake_ms,
            tls: self.tls.as_deref(),
        };
        log_conn!(info, self, "disposed";
            "reason" => reason.as_str(),
            "lifetime_ms" => self.registered_at.elapsed().as_millis() as u64,
            fields);
        self.guard.dispose(reason);
    }
}

impl Handler<Inbound> for Connection {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) -> Self::Result {
        self.in_handler = true;
        self.last_read = Instant::now();
        if msg.side == Side::Client {
            self.bytes_in += msg.bytes.len() as u64;
        }
        if self.faults().is_on(FaultPoint::ConnectionPanic) {
            panic!("injected connection panic");
        }
        let done = if self.state != ConnState::Open {
            // While closing, the client's bytes are drained and dropped (lingering close).
            Box::pin(fut::ready(())) as ResponseActFuture<Self, ()>
        } else if self.upstream.is_some() {
            self.forward(msg)
        } else {
            match self.run_session(|session, reply| session.on_data(&msg.bytes, reply)) {
                Ok(()) => self.write_reply(),
                Err(reason) => {
                    self.begin_close(reason, ctx);
                    Box::pin(fut::ready(()))
                }
            }
        };
        self.in_handler = false;
        done
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

impl Handler<Close> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        match msg.mode {
            CloseMode::Graceful => self.begin_close(msg.reason, ctx),
            CloseMode::Force => {
                self.reason.get_or_insert(msg.reason);
                ctx.stop();
            }
        }
    }
}
