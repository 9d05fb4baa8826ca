//! `Acceptor`: accepts connections on one worker arbiter and starts them there.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use slog::{debug, warn};
use tokio::net::{TcpListener, TcpStream};

use crate::connection::ConnectionEnv;
use crate::fault::FaultPoint;
use crate::messages::{Register, StopAccepting};
use crate::{ConnId, Connection, HandlerRegistry, RejectReason};

/// How long accepting pauses after the process ran out of file descriptors (or memory) for a
/// new socket: retrying at once would spin on the same error while the backlog waits.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Accepts on its own copy (a `dup`) of the server's one listening socket, admits each socket
/// under `max_connections`, and starts its `Connection` on this same arbiter, registered with
/// this arbiter's [`HandlerRegistry`].
///
/// One acceptor runs on each worker arbiter. The kernel wakes them all for a new connection and
/// one wins the `accept`; the connection then lives on the thread that accepted it, so a socket
/// never moves between reactors, and its `Register` and `Dispose` go to a registry on the same
/// thread: no other thread is woken to start or to end it. An acceptor whose
/// worker is busy simply wins fewer accepts.
pub struct Acceptor {
    listener: Option<std::net::TcpListener>,
    /// The reactor-registered copy the accept stream polls. Shared with the stream so that
    /// `StopAccepting` can close it on the spot rather than when actix drops the stream.
    polled: Rc<RefCell<Option<TcpListener>>>,
    accepting: Option<SpawnHandle>,
    env: Arc<ConnectionEnv>,
    /// The registry on this acceptor's arbiter.
    registry: Addr<HandlerRegistry>,
}

impl Acceptor {
    pub(crate) fn new(
        listener: std::net::TcpListener,
        env: Arc<ConnectionEnv>,
        registry: Addr<HandlerRegistry>,
    ) -> Self {
        Acceptor {
            listener: Some(listener),
            polled: Rc::new(RefCell::new(None)),
            accepting: None,
            env,
            registry,
        }
    }

    fn start_accepting(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.listener.as_ref().map(|l| l.try_clone()) else {
            return;
        };
        // The listener is registered with this arbiter's reactor only while accepting.
        let listener = match listener.and_then(TcpListener::from_std) {
            Ok(listener) => listener,
            Err(e) => {
                warn!(self.env.log, "cannot accept on this worker"; "error" => %e);
                return;
            }
        };
        *self.polled.borrow_mut() = Some(listener);
        let polled = Rc::clone(&self.polled);
        let accepts = futures::stream::poll_fn(move |cx| match polled.borrow().as_ref() {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => std::task::Poll::Ready(None),
        });
        self.accepting = Some(ctx.add_stream(accepts));
    }

    fn stop_polling(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.accepting.take() {
            ctx.cancel_future(handle);
        }
        self.polled.borrow_mut().take();
    }

    fn admit(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let stats = &self.env.stats;
        if !stats.try_admit(self.env.config.max_connections) {
            stats.rejected(RejectReason::MaxConnections);
            debug!(self.env.log, "rejected: max connections"; "peer" => %peer);
            return;
        }
        let socket = match tcp.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                stats.release_admission();
                stats.accept_error();
                warn!(self.env.log, "cannot take over an accepted socket"; "error" => %e);
                return;
            }
        };
        let id = ConnId(self.env.next_id.fetch_add(1, Ordering::Relaxed));
        let env = Arc::clone(&self.env);
        let registry = self.registry.clone();
        Connection::create(move |ctx| {
            // Registered before the actor starts, from the thread its stop hook will run on, so
            // the registry always gets this Register before the connection's Dispose.
            registry.do_send(Register {
                id,
                peer,
                connection: ctx.address().downgrade(),
            });
            Connection::new(id, peer, socket, env, registry)
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

impl Actor for Acceptor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_accepting(ctx);
    }
}

impl StreamHandler<io::Result<(TcpStream, SocketAddr)>> for Acceptor {
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
                    self.stop_polling(ctx);
                    ctx.run_later(ACCEPT_PAUSE, |act, ctx| act.start_accepting(ctx));
                }
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // The accept stream never ends by itself; it is only cancelled. Do not stop.
    }
}

impl Handler<StopAccepting> for Acceptor {
    type Result = ();

    fn handle(&mut self, _msg: StopAccepting, ctx: &mut Self::Context) {
        self.stop_polling(ctx);
        // Both copies of the listening socket are closed before the reply goes out: the port
        // is free once every acceptor has answered.
        self.listener = None;
        ctx.stop();
    }
}
