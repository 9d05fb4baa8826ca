//! Named fault-injection points: places in a connection's life where a test makes something
//! go wrong that no operator ever should (a panic, a hang, a skipped hook). They are switched
//! on in a server's [`Faults`](super::Faults) set, as entries of the same set as the runtime
//! rules, only in a build with the `fault-injection` feature; without it every check of a
//! point is constant `false` and the code behind it is compiled out (Garnet compiles its own
//! injection points into debug builds only, for the same reason).

// Without the feature nothing outside reaches the points (they cannot be switched on), and
// their names and list go unused: the enum exists for the constant-false checks.
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
