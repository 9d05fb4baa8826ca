//! `ConnectionSupervisor`: owns the acceptors and the shutdown protocol.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::{info, warn};

use crate::connection::ConnectionEnv;
use crate::messages::{Close, CloseMode, Shutdown, ShutdownReport, StopAccepting};
use crate::registry::Registries;
use crate::{Acceptor, DisposeReason};

/// How long forced closes get to reach the registry. A forced close is a `ctx.stop()`, so this
/// only waits for worker threads to run it.
const FORCE_WAIT: Duration = Duration::from_secs(2);

/// The root of the tree: it starts nothing per connection (the [`Acceptor`] on each worker
/// does), and runs the shutdown protocol over the acceptors and the registries (one per worker).
///
/// It never does TLS work itself: a slow or hostile client can only hold its own connection.
pub struct ConnectionSupervisor {
    acceptors: Vec<Addr<Acceptor>>,
    registries: Registries,
    env: Arc<ConnectionEnv>,
}

impl ConnectionSupervisor {
    pub(crate) fn new(
        acceptors: Vec<Addr<Acceptor>>,
        registries: Registries,
        env: Arc<ConnectionEnv>,
    ) -> Self {
        ConnectionSupervisor {
            acceptors,
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
        let acceptors = std::mem::take(&mut self.acceptors);
        let env = Arc::clone(&self.env);
        let registries = self.registries.clone();
        let protocol = async move {
            let log = env.log.clone();
            // Every acceptor closes its copies of the listening socket before it answers.
            futures::future::join_all(acceptors.iter().map(|a| a.send(StopAccepting))).await;
            env.draining.store(true, Ordering::SeqCst);
            info!(log, "shutdown: stopped accepting, closing connections";
                "grace_ms" => msg.grace.as_millis() as u64);
            let close = |mode| Close {
                mode,
                reason: DisposeReason::Shutdown,
            };
            let mut report = ShutdownReport {
                asked_to_close: registries.close_all(close(CloseMode::Graceful)).await,
                ..ShutdownReport::default()
            };
            let drained = tokio::time::timeout(msg.grace, registries.wait_empty())
                .await
                .is_ok();
            if !drained {
                report.forced = registries.close_all(close(CloseMode::Force)).await;
                warn!(log, "shutdown: grace period over, forcing the rest";
                    "forced" => report.forced);
                let _ = tokio::time::timeout(FORCE_WAIT, registries.wait_empty()).await;
            }
            report.left_registered = registries.live().await.len();
            report.elapsed = started.elapsed();
            report
        };
        Box::pin(protocol.into_actor(self))
    }
}
