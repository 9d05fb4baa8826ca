//! `ConnectionSupervisor`: accepts, admits, spreads connections over workers, shuts down.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use slog::{debug, info, warn};
use tokio::net::{TcpListener, TcpStream};

use crate::connection::ConnectionEnv;
use crate::fault::FaultPoint;
use crate::messages::{
    Close, CloseAll, CloseMode, LiveConnections, Register, Shutdown, ShutdownReport, WaitEmpty,
};
use crate::{ConnId, Connection, DisposeReason, RejectReason};

/// How long accepting pauses after the process ran out of file descriptors (or memory) for a
/// new socket: retrying at once would spin on the same error while the backlog waits.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How long forced closes get to reach the registry. A forced close is a `ctx.stop()`, so this
/// only waits for worker threads to run it.
const FORCE_WAIT: Duration = Duration::from_secs(2);

/// Accepts sockets, admits them under `max_connections`, registers and starts a `Connection`
/// for each on a worker arbiter (round robin), and runs the shutdown protocol.
///
/// It never does TLS work itself: a slow or hostile client can only hold its own connection.
pub struct ConnectionSupervisor {
    listener: Option<Rc<TcpListener>>,
    accepting: Option<SpawnHandle>,
    workers: Vec<ArbiterHandle>,
    next_worker: usize,
    next_id: u64,
    env: Arc<ConnectionEnv>,
}

impl ConnectionSupervisor {
    pub(crate) fn new(
        listener: TcpListener,
        workers: Vec<ArbiterHandle>,
        env: Arc<ConnectionEnv>,
    ) -> Self {
        ConnectionSupervisor {
            listener: Some(Rc::new(listener)),
            accepting: None,
            workers,
            next_worker: 0,
            next_id: 0,
            env,
        }
    }

    fn start_accepting(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.listener.clone() else {
            return;
        };
        let accepts = futures::stream::poll_fn(move |cx| listener.poll_accept(cx).map(Some));
        self.accepting = Some(ctx.add_stream(accepts));
    }

    /// Stops accepting and closes the listening socket, freeing the port.
    fn stop_accepting(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.accepting.take() {
            ctx.cancel_future(handle);
        }
        self.listener = None;
    }

    fn admit(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let stats = &self.env.stats;
        if !stats.try_admit(self.env.config.max_connections) {
            stats.rejected(RejectReason::MaxConnections);
            debug!(self.env.log, "rejected: max connections"; "peer" => %peer);
            return;
        }
        // Each worker arbiter runs its own reactor: the socket moves there as a std socket.
        let socket = match tcp.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                stats.release_admission();
                stats.accept_error();
                warn!(self.env.log, "cannot hand over an accepted socket"; "error" => %e);
                return;
            }
        };
        let id = ConnId(self.next_id);
        self.next_id += 1;
        let worker = &self.workers[self.next_worker % self.workers.len()];
        self.next_worker = self.next_worker.wrapping_add(1);
        let env = Arc::clone(&self.env);
        Connection::start_in_arbiter(worker, move |ctx| {
            // Registered before the actor starts, from the thread its stop hook will run on, so
            // the registry always gets this Register before the connection's Dispose.
            env.registry.do_send(Register {
                id,
                peer,
                connection: ctx.address().downgrade(),
            });
            Connection::new(id, peer, socket, env)
        });
    }
}

/// Errors after which accepting again at once would fail the same way.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl Actor for ConnectionSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_accepting(ctx);
    }
}

impl StreamHandler<io::Result<(TcpStream, SocketAddr)>> for ConnectionSupervisor {
    fn handle(&mut self, item: io::Result<(TcpStream, SocketAddr)>, ctx: &mut Self::Context) {
        let item = match item {
            Ok(_) if self.env.faults.is_on(FaultPoint::AcceptError) => {
                Err(io::Error::other("injected accept error"))
            }
            item => item,
        };
        match item {
            Ok((tcp, peer)) => self.admit(tcp, peer),
            Err(e) => {
                self.env.stats.accept_error();
                warn!(self.env.log, "accept failed"; "error" => %e);
                if is_resource_exhaustion(&e) {
                    if let Some(handle) = self.accepting.take() {
                        ctx.cancel_future(handle);
                    }
                    ctx.run_later(ACCEPT_PAUSE, |act, ctx| act.start_accepting(ctx));
                }
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // The accept stream never ends by itself; it is only cancelled. Do not stop.
    }
}

impl Handler<Shutdown> for ConnectionSupervisor {
    type Result = ResponseActFuture<Self, ShutdownReport>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let started = Instant::now();
        self.stop_accepting(ctx);
        self.env.draining.store(true, Ordering::SeqCst);
        let registry = self.env.registry.clone();
        let log = self.env.log.clone();
        info!(log, "shutdown: stopped accepting, closing connections";
            "grace_ms" => msg.grace.as_millis() as u64);
        let protocol = async move {
            let close = |mode| {
                CloseAll(Close {
                    mode,
                    reason: DisposeReason::Shutdown,
                })
            };
            let mut report = ShutdownReport {
                asked_to_close: registry.send(close(CloseMode::Graceful)).await.unwrap_or(0),
                ..ShutdownReport::default()
            };
            let drained = tokio::time::timeout(msg.grace, registry.send(WaitEmpty))
                .await
                .is_ok();
            if !drained {
                report.forced = registry.send(close(CloseMode::Force)).await.unwrap_or(0);
                warn!(log, "shutdown: grace period over, forcing the rest";
                    "forced" => report.forced);
                let _ = tokio::time::timeout(FORCE_WAIT, registry.send(WaitEmpty)).await;
            }
            report.left_registered = registry
                .send(LiveConnections)
                .await
                .map(|ids| ids.len())
                .unwrap_or(0);
            report.elapsed = started.elapsed();
            report
        };
        Box::pin(protocol.into_actor(self))
    }
}
