//! Named fault-injection points, switched on per server instance.
//!
//! With the cargo feature `fault-injection`, every server carries a [`Faults`] set that a test
//! switches points on in; without it [`Faults`] is an empty type whose checks are constant
//! `false`, so a production build carries no injection code (Garnet compiles its own injection
//! points into debug builds only, for the same reason).

/// A place in a connection's life where a test can make something go wrong.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// After `Register`, before the connection starts: it fails to start and must still leave
    /// the registry (the Garnet PR 1694 scenario). Reason `start_failed`.
    AfterRegisterBeforeStart,
    /// The TLS handshake fails on the server side. Reason `handshake_failed`.
    DuringHandshake,
    /// The reader fails on its first read after the handshake. Reason `reader_error`.
    ReaderError,
    /// The session panics on the first bytes it gets. Reason `session_panic`.
    SessionPanic,
    /// `accept(2)` reports an error for the next accepted socket, which is dropped.
    AcceptError,
    /// The `Connection` actor itself panics (outside the session's panic guard), so its drop
    /// guard is what disposes it. Exercises the fallback path.
    ConnectionPanic,
}

#[cfg(feature = "fault-injection")]
mod enabled {
    use super::FaultPoint;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    /// The fault points switched on for one server instance. Clones share the same set.
    #[derive(Clone, Debug, Default)]
    pub struct Faults {
        on: Arc<Mutex<HashSet<FaultPoint>>>,
    }

    impl Faults {
        /// Switches a point on for every connection from now on.
        pub fn enable(&self, point: FaultPoint) {
            self.lock().insert(point);
        }

        /// Switches a point off.
        pub fn disable(&self, point: FaultPoint) {
            self.lock().remove(&point);
        }

        /// Whether a point is on.
        pub fn is_on(&self, point: FaultPoint) -> bool {
            self.lock().contains(&point)
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<FaultPoint>> {
            // The set is only inserted into and read; a poisoned lock still holds a valid set.
            self.on.lock().unwrap_or_else(|p| p.into_inner())
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod enabled {
    use super::FaultPoint;

    /// Without the `fault-injection` feature no point can be switched on.
    #[derive(Clone, Debug, Default)]
    pub struct Faults;

    impl Faults {
        /// Always `false`: injection is compiled out.
        #[inline(always)]
        pub fn is_on(&self, _point: FaultPoint) -> bool {
            false
        }
    }
}

pub use enabled::Faults;
