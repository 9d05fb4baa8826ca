//! Named fault-injection points, switched on per server instance.
//!
//! With the cargo feature `fault-injection`, every server carries a [`Faults`] set that a test
//! switches points on in; without it [`Faults`] is an empty type whose checks are constant
//! `false`, so a production build carries no injection code (Garnet compiles its own injection
//! points into debug builds only, for the same reason).

// Without the feature nothing outside reaches the points (no `Faults` to switch them on in),
// and their names and list go unused: the enum exists for the constant-false checks.
#![cfg_attr(not(feature = "fault-injection"), allow(dead_code, unreachable_pub))]

use crate::supervision::labels::labels;

labels! {
    /// A place in a connection's life where a test can make something go wrong.
    pub enum FaultPoint {
        /// After `Register`, before the connection starts: it fails to start and must still leave
        /// the registry (the Garnet PR 1694 scenario). Reason `start_failed`.
        AfterRegisterBeforeStart => "after_register_before_start",
        /// The TLS handshake fails on the server side. Reason `handshake_failed`.
        DuringHandshake => "during_handshake",
        /// The reader fails on its first read after the handshake. Reason `reader_error`.
        ReaderError => "reader_error",
        /// The session panics on the first bytes it gets. Reason `session_panic`.
        SessionPanic => "session_panic",
        /// `accept(2)` fails with `EMFILE`, as when the process is out of descriptors: the
        /// client stays in the backlog, the acceptor sheds the waiting clients (reason
        /// `fd_exhausted`) and backs off. With `Faults::enable_times`, the next N accepts fail.
        AcceptError => "accept_error",
        /// The `Connection` actor itself panics (outside the session's panic guard): actix runs
        /// its stop hook while dropping it, or, if it did not, its registration's `Drop` disposes
        /// it (the fallback path).
        ConnectionPanic => "connection_panic",
        /// The session never returns from the first bytes it gets: the worker thread blocks for
        /// good, as under a protocol callback stuck in a blocking call. The shutdown must still
        /// finish within its bound, abandoning that worker.
        SessionHang => "session_hang",
        /// `Connection::stopped()` returns at once, as if actix had skipped the hook: the
        /// registration's `Drop` must dispose the connection (a counted fallback) and its readers,
        /// which stop when the connection's handles drop, must still close the socket.
        SkipStopHook => "skip_stop_hook",
    }
}

#[cfg(feature = "fault-injection")]
mod enabled {
    use super::FaultPoint;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// How long a point stays on.
    #[derive(Clone, Copy, Debug)]
    enum Times {
        Always,
        Next(u32),
    }

    /// The fault points switched on for one server instance. Clones share the same set.
    #[derive(Clone, Debug, Default)]
    pub struct Faults {
        on: Arc<Mutex<HashMap<FaultPoint, Times>>>,
    }

    impl Faults {
        /// Switches a point on for every connection from now on.
        pub fn enable(&self, point: FaultPoint) {
            self.lock().insert(point, Times::Always);
        }

        /// Switches a point on for the next `times` times it is reached, then off.
        pub fn enable_times(&self, point: FaultPoint, times: u32) {
            if times > 0 {
                self.lock().insert(point, Times::Next(times));
            }
        }

        /// Switches a point off.
        pub fn disable(&self, point: FaultPoint) {
            self.lock().remove(&point);
        }

        /// Whether a point fires here (counting down a point enabled for N times).
        pub fn is_on(&self, point: FaultPoint) -> bool {
            let mut on = self.lock();
            match on.get_mut(&point) {
                None => false,
                Some(Times::Always) => true,
                Some(Times::Next(left)) => {
                    *left -= 1;
                    if *left == 0 {
                        on.remove(&point);
                    }
                    true
                }
            }
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FaultPoint, Times>> {
            // The set is only inserted into and read; a poisoned lock still holds a valid set.
            self.on.lock().unwrap_or_else(|p| p.into_inner())
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod enabled {
    use super::FaultPoint;

    /// Without the `fault-injection` feature no point can be switched on. (A field, so that
    /// both builds make one with `Faults::default()`.)
    #[derive(Clone, Debug, Default)]
    pub struct Faults {
        _off: (),
    }

    impl Faults {
        /// Always `false`: injection is compiled out.
        #[inline(always)]
        pub fn is_on(&self, _point: FaultPoint) -> bool {
            false
        }
    }
}

pub use enabled::Faults;
