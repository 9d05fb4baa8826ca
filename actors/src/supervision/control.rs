//! `Control`: what an operator switches on a running server (pause, drain) and what its
//! readiness is made of.
//!
//! Pausing works at the admission step: an acceptor waits in `Limits::reserve` while the
//! server is paused, and one already waiting for a client gives its reservation back and waits
//! too, so no listener is polled and new clients wait in the kernel's backlog (their TCP
//! connect completes, their TLS handshake waits). Live connections are not touched.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// The switches of one server, shared by its acceptors and its [`crate::supervision::server::ServerHandle`]s.
pub(crate) struct Control {
    /// True while accepting is paused (`ServerHandle::pause`, a drain).
    paused: watch::Sender<bool>,
    /// Set when a drain starts, cleared by `resume` (a watch, so that a drain waiting out its
    /// schedule hears a `resume` at once).
    draining: watch::Sender<bool>,
    /// Set as soon as the shutdown protocol is asked for; never cleared.
    stopping: AtomicBool,
}

impl Control {
    pub(crate) fn new() -> Control {
        Control {
            paused: watch::Sender::new(false),
            draining: watch::Sender::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// Stops or restarts accepting; returns whether this changed anything.
    pub(crate) fn set_paused(&self, paused: bool) -> bool {
        self.paused.send_if_modified(|now| {
            let changed = *now != paused;
            *now = paused;
            changed
        })
    }

    pub(crate) fn set_draining(&self, draining: bool) {
        self.draining.send_replace(draining);
    }

    /// Resolves once no drain is under way (at once if none is): what a drain's waits race
    /// against, so that `resume` ends one promptly whatever its schedule.
    pub(crate) async fn until_not_draining(&self) {
        let mut draining = self.draining.subscribe();
        // The sender lives as long as `self`: the wait cannot fail while we are borrowed.
        let _ = draining.wait_for(|draining| !draining).await;
    }

    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Resolves once accepting is not paused (at once if it is not).
    pub(crate) async fn until_resumed(&self) {
        let mut paused = self.paused.subscribe();
        // The sender lives as long as `self`: the wait cannot fail while we are borrowed.
        let _ = paused.wait_for(|paused| !paused).await;
    }

    /// Resolves once accepting is paused (at once if it is).
    pub(crate) async fn until_paused(&self) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|paused| *paused).await;
    }

    pub(crate) fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// What readiness is made of, read now.
    pub(crate) fn readiness(&self) -> Readiness {
        Readiness {
            paused: self.is_paused(),
            draining: *self.draining.borrow(),
            stopping: self.stopping.load(Ordering::SeqCst),
        }
    }
}

/// Whether a server should be sent new clients, and if not why (what a load balancer's
/// readiness check asks). The server listens and its certificates are loaded from the moment
/// `ServerBuilder::start` returns, so these are the only ways to be not ready.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Accepting is paused (`ServerHandle::pause` or a drain).
    pub paused: bool,
    /// A drain started (cleared by `ServerHandle::resume`).
    pub draining: bool,
    /// The shutdown protocol started: readiness never comes back.
    pub stopping: bool,
}

impl Readiness {
    /// Ready for new clients: not paused, not draining, not shutting down.
    pub fn is_ready(&self) -> bool {
        !(self.paused || self.draining || self.stopping)
    }
}
