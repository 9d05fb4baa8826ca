//! `Acceptor`: accepts connections on one worker arbiter and starts them there.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use slog::{debug, info, warn};
use tokio::net::{TcpListener, UnixListener};

use crate::connection::actor::Connection;
use crate::connection::env::ConnectionEnv;
use crate::edge::accepted_socket::{AcceptedSocket, UNIX_PEER};
use crate::edge::admission::Reserved;
use crate::edge::listeners::{AcceptOn, Clients, ListenAddr, ListenSocket};
use crate::edge::spare_fd;
use crate::fault::point::FaultPoint;
use crate::supervision::conn_id::ConnId;
use crate::supervision::log_throttle::LogThrottle;
use crate::supervision::messages::StopAccepting;
use crate::supervision::registration::Registration;
use crate::supervision::registry::HandlerRegistry;
use crate::supervision::stats::RejectReason;

/// The first pause after the process ran out of descriptors (or memory) for a new socket;
/// each failure in a row doubles it, up to [`LONGEST_PAUSE`]. A disposal ends a pause early.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// Accepts on its own copies (`dup`s) of the server's listening sockets, admits each socket
/// (see `admission.rs`), and starts its `Connection` on this same arbiter, registered with
/// this arbiter's [`HandlerRegistry`].
///
/// One acceptor runs on each worker arbiter. The kernel wakes them all for a new connection and
/// one wins the `accept`; the connection then lives on the thread that accepted it, so a socket
/// never moves between reactors, and its `Register` and `Dispose` go to a registry on the same
/// thread: no other thread is woken to start or to end it. An acceptor whose
/// worker is busy simply wins fewer accepts.
///
/// With several listeners, the acceptor waits on all of them at once (one `accept` per
/// listener, whichever is ready first; the first polled turns round, so a flooded listener
/// cannot starve the others) under the worker's one reservation. One reservation per listener
/// would not do: at the limit, the last free slots could all be held by waits on a quiet
/// listener while clients queue on a busy one.
///
/// Accepting never stops for good: at a limit the acceptor waits for a slot, and when the
/// process is out of descriptors it sheds the waiting clients and backs off, keeping its
/// listener registered, so there is nothing to re-create (and fail to) when it resumes.
pub(crate) struct Acceptor {
    /// Move into the accept loop when the actor starts; each with its address, for the logs.
    listeners: Vec<AcceptOn>,
    worker: usize,
    env: Arc<ConnectionEnv>,
    /// The registry on this acceptor's arbiter.
    registry: Addr<HandlerRegistry<Connection>>,
}

impl Acceptor {
    pub(crate) fn new(
        listeners: Vec<AcceptOn>,
        worker: usize,
        env: Arc<ConnectionEnv>,
        registry: Addr<HandlerRegistry<Connection>>,
    ) -> Self {
        Acceptor {
            listeners,
            worker,
            env,
            registry,
        }
    }
}

impl Actor for Acceptor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let listeners = std::mem::take(&mut self.listeners);
        let accepting = AcceptLoop {
            worker: self.worker,
            env: Arc::clone(&self.env),
            registry: self.registry.clone(),
            pause: Pause::default(),
            warnings: LogThrottle::default(),
            client_failures: 0,
            turn: 0,
        };
        // A spawned future stops being polled once the actor stops (StopAccepting), and is
        // dropped with it, closing this worker's descriptors of the listeners.
        ctx.spawn(fut::wrap_future(accepting.run(listeners)));
    }
}

impl Handler<StopAccepting> for Acceptor {
    type Result = ();

    fn handle(&mut self, _msg: StopAccepting, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The accept loop of one worker.
struct AcceptLoop {
    worker: usize,
    env: Arc<ConnectionEnv>,
    registry: Addr<HandlerRegistry<Connection>>,
    pause: Pause,
    /// At most one warning line a second per worker; the others are counted in the next.
    warnings: LogThrottle,
    /// Failures "of the client" in a row: many of them mean the error is not the client's
    /// (a seccomp filter or an LSM refusing accept(2) with EPERM, say), and retrying at once
    /// would spin.
    client_failures: u32,
    /// Which listener is polled first for the next accept (turns round).
    turn: usize,
}

/// A listener registered with this worker's reactor.
struct Registered {
    socket: RegisteredSocket,
    addr: ListenAddr,
    clients: Clients,
}

/// A listening socket registered with this worker's reactor.
enum RegisteredSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A client just accepted, with its address (or [`UNIX_PEER`]) and whose client it is.
type Arrival = (AcceptedSocket, std::net::SocketAddr, Clients);

/// Client failures in a row after which the acceptor pauses as for any other failure.
const CLIENT_FAILURES_BEFORE_PAUSE: u32 = 64;

/// After a disposal ends a pause, the connection's socket halves are still being dropped (the
/// actor and its reader go right after the hook that released the slot): give them this long
/// before accepting, rather than meet `EMFILE` again and shed a client that could be served.
const AFTER_DISPOSAL: Duration = Duration::from_millis(1);

impl AcceptLoop {
    async fn run(mut self, listeners: Vec<AcceptOn>) {
        let mut registered = Vec::with_capacity(listeners.len());
        for AcceptOn {
            socket,
            addr,
            clients,
        } in listeners
        {
            let socket = self.register(socket, &addr).await;
            registered.push(Registered {
                socket,
                addr,
                clients,
            });
        }
        loop {
            // Room for one more connection and handshake first: at a limit the listener is not
            // polled, and clients wait in the backlog rather than being accepted and closed.
            let Some(reserved) = self.env.limits.reserve().await else {
                return;
            };
            // A pause while waiting for a client gives the reservation back and waits in
            // `reserve`, so a paused acceptor stops polling its listener. `next_socket` is
            // cancel-safe (an accepted socket is returned without another await). Over the
            // server-wide handshake rate the acceptor first waits its turn, not polling its
            // listener either: clients wait in the backlog, none is refused for the rate.
            let limits = Arc::clone(&self.env.limits);
            let next = tokio::select! {
                biased;
                () = limits.control.until_paused() => continue,
                next = async {
                    limits.handshake_turn().await;
                    self.next_socket(&mut registered).await
                } => next,
            };
            let Some((socket, peer, clients)) = next else {
                return;
            };
            self.admit(socket, peer, clients, reserved);
        }
    }

    /// Registers the listener with this worker's reactor, retrying (never giving up) if the
    /// kernel is short of memory or descriptors for it. Each attempt registers a `dup` of it:
    /// tokio closes what it failed to register, and the original must survive to try again.
    async fn register(&mut self, listener: ListenSocket, addr: &ListenAddr) -> RegisteredSocket {
        loop {
            let registered = match &listener {
                ListenSocket::Tcp(s) => s
                    .try_clone()
                    .and_then(TcpListener::from_std)
                    .map(RegisteredSocket::Tcp),
                ListenSocket::Unix(s) => s
                    .try_clone()
                    .and_then(UnixListener::from_std)
                    .map(RegisteredSocket::Unix),
            };
            match registered {
                Ok(registered) => return registered,
                Err(e) => self.back_off(e, 0, addr).await,
            }
        }
    }

    /// The next socket accepted on any of `listeners`. On a failure it backs off and tries
    /// again; a listener that was shut down (the shutdown protocol's first step) is dropped
    /// from `listeners`, and `None` comes once none is left.
    async fn next_socket(&mut self, listeners: &mut Vec<Registered>) -> Option<Arrival> {
        loop {
            if listeners.is_empty() {
                return None;
            }
            let (result, index) = accept_any(listeners, &self.env, self.turn).await;
            // Next time the listener after the one just polled goes first, whatever came of
            // it: one whose accepts keep failing (EPERM from a security policy leaves the
            // client queued and the listener readable) must not be first every time, or the
            // others are never polled.
            self.turn = index.wrapping_add(1);
            match result {
                Ok((socket, peer)) => {
                    self.resumed();
                    return Some((socket, peer, listeners[index].clients.clone()));
                }
                // accept(2) on a socket that is no longer listening.
                Err(Failure { error, .. }) if error.raw_os_error() == Some(libc::EINVAL) => {
                    debug!(self.env.log, "listener shut down";
                        "worker" => self.worker, "listen" => %listeners[index].addr);
                    listeners.remove(index);
                }
                Err(Failure { error, .. })
                    if is_client_gone(&error)
                        && self.client_failures < CLIENT_FAILURES_BEFORE_PAUSE =>
                {
                    self.client_failures += 1;
                    self.env.stats.accept_error();
                    self.warn(
                        "accept failed; accepting the next",
                        &error,
                        &listeners[index].addr,
                    );
                }
                Err(Failure { error, shed }) => {
                    self.env.stats.accept_error();
                    self.env.stats.rejected(RejectReason::FdExhausted, shed);
                    self.back_off(error, shed, &listeners[index].addr).await;
                }
            }
        }
    }

    /// Pauses after a failure (on the listener at `listen`) that retrying at once would
    /// repeat; a disposal (a descriptor freed) ends the pause early.
    async fn back_off(&mut self, e: io::Error, shed: u64, listen: &ListenAddr) {
        let delay = self.pause.next(shed);
        if let Some(suppressed) = self.warnings.admit() {
            warn!(self.env.log, "cannot accept: pausing this worker's acceptor";
                "error" => %e, "worker" => self.worker, "listen" => %listen, "shed" => shed,
                "pause_ms" => delay.as_millis() as u64, "suppressed" => suppressed);
        }
        let _paused = self.env.stats.acceptor_paused();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.env.limits.next_disposal() => tokio::time::sleep(AFTER_DISPOSAL).await,
        }
    }

    /// An accept succeeded: end the episode of failures, if any, and say so.
    fn resumed(&mut self) {
        self.client_failures = 0;
        let Some(episode) = self.pause.reset() else {
            return;
        };
        // Under sustained pressure episodes end and begin many times a second: the line
        // shares the warnings' rate limit.
        if self.warnings.admit().is_some() {
            info!(self.env.log, "accepting again";
                "worker" => self.worker,
                "paused_ms" => episode.since.elapsed().as_millis() as u64,
                "failures" => episode.failures, "shed" => episode.shed);
        }
    }

    fn warn(&mut self, what: &str, e: &io::Error, listen: &ListenAddr) {
        if let Some(suppressed) = self.warnings.admit() {
            warn!(self.env.log, "{}", what;
                "error" => %e, "worker" => self.worker, "listen" => %listen,
                "suppressed" => suppressed);
        }
    }

    fn admit(
        &self,
        socket: AcceptedSocket,
        peer: std::net::SocketAddr,
        clients: Clients,
        reserved: Reserved,
    ) {
        let env = &self.env;
        // A balancer's socket: the client it carries is known once its PROXY header is read,
        // and claims its per-IP slots then (connection/accept_header.rs). A unix client has
        // no IP address: per-IP limits do not apply to it (and no PROXY header is read from
        // it).
        let client = match (&socket, &env.config.accept_proxy) {
            (AcceptedSocket::Unix(_), _) => None,
            (_, Some(accept)) if accept.expects_header_from(peer.ip()) => None,
            _ => Some(peer.ip()),
        };
        let Some(slots) = env.limits.admit(reserved, client) else {
            env.stats.rejected(RejectReason::PerIpLimit, 1);
            debug!(env.log, "rejected: per-IP limit"; "peer" => %peer);
            return;
        };
        env.stats.worker_accepted(self.worker);
        let id = ConnId(env.next_id.fetch_add(1, Ordering::Relaxed));
        let env = Arc::clone(env);
        let registry = self.registry.clone();
        let (connection_slot, handshake_slot) = slots;
        Connection::create(move |ctx| {
            // Registered before the actor starts, from the thread its stop hook will run on, so
            // the registry always gets this Register before the connection's Dispose.
            let registration = Registration::new(
                id,
                peer,
                ctx.address().downgrade(),
                registry,
                Arc::clone(&env.stats),
                env.log.clone(),
            )
            .holding(connection_slot);
            Connection::new(id, peer, socket, env, registration, handshake_slot, clients)
        });
    }
}

/// A failed accept, and the clients shed because of it.
struct Failure {
    error: io::Error,
    shed: u64,
}

/// One `accept4(2)` on whichever of `listeners` is ready first, polled from the one at
/// `turn` round; with the index of the listener it came from. Cancel-safe, as [`accept`] is.
async fn accept_any(
    listeners: &[Registered],
    env: &ConnectionEnv,
    turn: usize,
) -> (
    Result<(AcceptedSocket, std::net::SocketAddr), Failure>,
    usize,
) {
    if let [only] = listeners {
        return (accept(&only.socket, env).await, 0);
    }
    let count = listeners.len();
    let accepts = (0..count).map(|k| {
        let index = (turn + k) % count;
        // `select_all` polls in order: the rotation gives each listener its turn first.
        Box::pin(async move { (accept(&listeners[index].socket, env).await, index) })
    });
    futures::future::select_all(accepts).await.0
}

/// One `accept4(2)` once the listener is readable (tokio's, which registers the socket with
/// this worker's reactor). Out of descriptors, it sheds the waiting clients before it returns
/// the error. Cancel-safe: a socket accepted is returned in the same poll. A unix client's
/// address is [`UNIX_PEER`].
///
/// The `accept_error` fault point fires when a client is at the door, as a real `EMFILE`
/// does: that client is shed with the others waiting (closed at once, counted
/// `fd_exhausted`) and the error is `EMFILE`, so everything after it runs as for the real one.
async fn accept(
    listener: &RegisteredSocket,
    env: &ConnectionEnv,
) -> Result<(AcceptedSocket, std::net::SocketAddr), Failure> {
    let result = std::future::poll_fn(|cx| {
        // Before any descriptor is taken, the spare is taken back if a shedding lost it.
        spare_fd::retake_if_lost();
        match listener {
            RegisteredSocket::Tcp(l) => l
                .poll_accept(cx)
                .map_ok(|(s, peer)| (AcceptedSocket::Tcp(s), peer)),
            RegisteredSocket::Unix(l) => l
                .poll_accept(cx)
                .map_ok(|(s, _)| (AcceptedSocket::Unix(s), UNIX_PEER)),
        }
    })
    .await;
    let injected = result.is_ok() && env.faults.is_on(FaultPoint::AcceptError);
    let shed_all = || {
        spare_fd::shed_waiting_clients(|| match listener {
            RegisteredSocket::Tcp(l) => l.accept().now_or_never().map(|r| r.map(drop)),
            RegisteredSocket::Unix(l) => l.accept().now_or_never().map(|r| r.map(drop)),
        })
    };
    match result {
        Ok(accepted) if injected => {
            drop(accepted);
            let shed = shed_all();
            Err(Failure {
                error: io::Error::from_raw_os_error(libc::EMFILE),
                shed: shed + 1,
            })
        }
        Err(error) if is_out_of_descriptors(&error) => {
            let shed = shed_all();
            Err(Failure { error, shed })
        }
        result => result.map_err(|error| Failure { error, shed: 0 }),
    }
}

/// The process (`EMFILE`) or the system (`ENFILE`) is out of descriptors.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Errors that concern only the client being accepted (Linux passes pending network errors
/// through accept): the next accept may well succeed.
fn is_client_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// The backoff of one acceptor: 5 ms doubling to 1 s while failures go on, reset by the next
/// successful accept.
#[derive(Default)]
struct Pause {
    episode: Option<Episode>,
}

/// A run of failed accepts.
struct Episode {
    since: Instant,
    failures: u32,
    shed: u64,
    next: Duration,
}

impl Pause {
    /// The pause after one more failure (which shed `shed` clients).
    fn next(&mut self, shed: u64) -> Duration {
        let episode = self.episode.get_or_insert_with(|| Episode {
            since: Instant::now(),
            failures: 0,
            shed: 0,
            next: FIRST_PAUSE,
        });
        episode.failures += 1;
        episode.shed += shed;
        let delay = episode.next;
        episode.next = (delay * 2).min(LONGEST_PAUSE);
        delay
    }

    /// Ends the episode; returns it if there was one.
    fn reset(&mut self) -> Option<Episode> {
        self.episode.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_to_a_second_and_resets_on_success() {
        let mut pause = Pause::default();
        let delays: Vec<u64> = (0..10).map(|_| pause.next(1).as_millis() as u64).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        let episode = pause.reset().expect("an episode");
        assert_eq!((episode.failures, episode.shed), (10, 10));
        assert!(pause.reset().is_none());
        assert_eq!(pause.next(0), FIRST_PAUSE);
    }
}
