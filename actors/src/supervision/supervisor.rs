//! `ConnectionSupervisor`: owns the acceptors and the shutdown protocol.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::{error, info, warn};

use crate::connection::actor::Connection;
use crate::connection::env::ConnectionEnv;
use crate::connection::messages::{Close, CloseMode};
use crate::edge::acceptor::Acceptor;
use crate::edge::listeners::Listeners;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::messages::{Shutdown, ShutdownReport, StopAccepting};
use crate::supervision::registry::Registries;

/// How long the acceptors get to answer `StopAccepting`. The listening sockets are shut down
/// before they are asked, so one that does not answer (its worker is stuck) accepts nothing.
pub(crate) const STOP_ACCEPTING_WAIT: Duration = Duration::from_secs(1);

/// How long forced closes get to reach the registries. A forced close is a `ctx.stop()`, so
/// this only waits for worker threads to run it.
pub(crate) const FORCE_WAIT: Duration = Duration::from_secs(2);

/// The root of the tree: it starts nothing per connection (the [`Acceptor`] on each worker
/// does), and runs the shutdown protocol over the acceptors and the registries (one per worker).
///
/// It never does TLS work itself: a slow or hostile client can only hold its own connection.
/// Every step of its shutdown protocol has a deadline, so a worker stuck in a protocol callback
/// delays it by those deadlines, never more.
pub(crate) struct ConnectionSupervisor {
    acceptors: Vec<Addr<Acceptor>>,
    /// The server's listening sockets, kept to shut each down for every acceptor at once
    /// (unless another process serves from it: inherited, or handed over in an upgrade).
    listeners: Option<Arc<Listeners>>,
    registries: Registries<Connection>,
    env: Arc<ConnectionEnv>,
}

impl ConnectionSupervisor {
    pub(crate) fn new(
        acceptors: Vec<Addr<Acceptor>>,
        listeners: Arc<Listeners>,
        registries: Registries<Connection>,
        env: Arc<ConnectionEnv>,
    ) -> Self {
        ConnectionSupervisor {
            acceptors,
            listeners: Some(listeners),
            registries,
            env,
        }
    }
}

impl Actor for ConnectionSupervisor {
    type Context = Context<Self>;
}

impl Handler<Shutdown> for ConnectionSupervisor {
    type Result = ResponseActFuture<Self, ShutdownReport>;

    fn handle(&mut self, msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        let started = Instant::now();
        let log = self.env.log.clone();
        // shutdown(SHUT_RD) of each listening socket takes it out of LISTEN for every
        // descriptor of it: no worker accepts again, even one too stuck to hear StopAccepting.
        // A socket shared with another process stays listening for it: this process only
        // closes its own descriptors (the acceptors' as they stop, the server's as it goes).
        if let Some(listeners) = self.listeners.take() {
            listeners.shut_down(&log);
        }
        let acceptors = std::mem::take(&mut self.acceptors);
        let env = Arc::clone(&self.env);
        let registries = self.registries.clone();
        let protocol = async move {
            // Every acceptor closes its descriptors of the listening sockets as it stops.
            let stopping =
                futures::future::join_all(acceptors.iter().map(|a| a.send(StopAccepting)));
            if tokio::time::timeout(STOP_ACCEPTING_WAIT, stopping)
                .await
                .is_err()
            {
                error!(log, "shutdown: an acceptor did not stop in time; its worker is stuck";
                    "waited_ms" => STOP_ACCEPTING_WAIT.as_millis() as u64);
            }
            // A drain lets what was accepted finish first (a request in flight, a handshake
            // still to start): nothing is asked to close yet, so nothing is marked draining.
            if !msg.linger.is_zero() {
                info!(log, "shutdown: stopped accepting, letting connections end on their own";
                    "linger_ms" => msg.linger.as_millis() as u64);
                let linger_end = Instant::now()
                    .checked_add(msg.linger)
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
                registries.wait_empty(linger_end).await;
            }
            env.draining.store(true, Ordering::SeqCst);
            info!(log, "shutdown: stopped accepting, closing connections";
                "grace_ms" => msg.grace.as_millis() as u64);
            // A grace too long to add to now is, in effect, no deadline.
            let grace_end = Instant::now()
                .checked_add(msg.grace)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
            let close = |mode| Close {
                mode,
                reason: DisposeReason::Shutdown,
            };
            let mut report = ShutdownReport {
                asked_to_close: registries
                    .close_all(close(CloseMode::Graceful), grace_end)
                    .await,
                ..ShutdownReport::default()
            };
            if !registries.wait_empty(grace_end).await {
                let force_end = Instant::now() + FORCE_WAIT;
                report.forced = registries
                    .close_all(close(CloseMode::Force), force_end)
                    .await;
                warn!(log, "shutdown: grace period over, forcing the rest";
                    "forced" => report.forced);
                if !registries.wait_empty(force_end).await {
                    error!(
                        log,
                        "shutdown: a registry did not empty after the forced close"
                    );
                }
            }
            report.elapsed = started.elapsed();
            report
        };
        Box::pin(protocol.into_actor(self))
    }
}
