//! Every message of the actor tree, one struct each.
//!
//! Ordering that the design relies on: `Register` for an id is sent from the worker arbiter
//! before its `Connection` is started, and `Dispose` only from that `Connection`'s stop hook (or
//! its `Registration`'s `Drop`) on the same thread, afterwards. Both go through the registry's one mailbox,
//! so the registry always sees `Register` before `Dispose` for the same id.

use std::net::SocketAddr;
use std::time::Duration;

use actix::{Actor, Message, WeakAddr};

use crate::connection::messages::{Close, CloseMode};
use crate::supervision::conn_description::ConnDescription;
use crate::supervision::conn_id::ConnId;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::revalidation::Revalidate;

/// Worker arbiter → registry, before the connection actor `C` starts: records a live
/// connection. The registry keeps only a weak address, so the entry never keeps a dead
/// connection alive.
pub(crate) struct Register<C: Actor> {
    /// The connection's id.
    pub id: ConnId,
    /// The client's address.
    pub peer: SocketAddr,
    /// Used to ask the connection to close (shutdown, kill) and to describe itself.
    pub connection: WeakAddr<C>,
}

impl<C: Actor> Message for Register<C> {
    type Result = ();
}

/// How a disposal reached the registry (public in the test harness's audit records only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub enum DisposedVia {
    /// `Connection::stopped()`: the one intended path.
    StopHook,
    /// The registration's `Drop`, because the connection was dropped without `stopped()`
    /// running.
    Fallback,
}

/// `Connection::stopped()` (or its drop guard) → registry: the connection is gone. The registry
/// removes the id exactly once; a second `Dispose` for the same id changes nothing but the
/// duplicate counter.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub(crate) struct Dispose {
    /// The connection's id.
    pub id: ConnId,
    /// Why it ended.
    pub reason: DisposeReason,
    /// Which path sent it.
    pub via: DisposedVia,
}

/// Supervisor → registry: send `Close` to every live connection. Replies with how many were
/// asked.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "usize")]
pub(crate) struct CloseAll(pub Close);

/// Anyone → registry: close one connection with reason `killed`. Replies whether the id was
/// live.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "bool")]
pub(crate) struct Kill {
    /// The connection to close.
    pub id: ConnId,
    /// Graceful (close_notify first) or forced.
    pub mode: CloseMode,
}

/// A revalidation pass → registry: send this `Revalidate` to every live connection (each
/// checks itself, on its own actor). Replies with how many were asked.
#[derive(Message, Clone)]
#[rtype(result = "usize")]
pub(crate) struct RevalidateAll(pub Revalidate);

/// Anyone → registry: resolves once no connection is registered (at once if none is).
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub(crate) struct WaitEmpty;

/// Anyone → registry: the ids of the live connections, in id order.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Vec<ConnId>")]
pub(crate) struct LiveConnections;

/// Anyone → registry: describe the live connections whose id is above `after`, the `limit`
/// lowest ids of them, in id order. Each connection is asked by message; one that does not
/// answer by `deadline` (its worker is busy, it is going away) is left out.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Vec<ConnDescription>")]
pub(crate) struct DescribeConnections {
    /// Only ids above this one (the page before ended there).
    pub after: Option<ConnId>,
    /// At most this many.
    pub limit: usize,
    /// When to stop waiting for answers.
    pub deadline: std::time::Instant,
}

/// Anyone → registry: send this `Close` to one connection (a drain closes them one by one).
/// Replies whether the id was live.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "bool")]
pub(crate) struct CloseOne {
    /// The connection to close.
    pub id: ConnId,
    /// How, and with which reason.
    pub close: Close,
}

/// Supervisor → each `Acceptor`, after it shut the listening socket down: stop. The acceptor's
/// copy of the listening socket is closed as its accept loop is dropped, right after the
/// reply.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub(crate) struct StopAccepting;

/// Owner → supervisor: run the shutdown protocol (stop accepting, close every connection
/// gracefully, wait up to `grace`, force the rest). Replies once every registry is empty or
/// the forced closes have been given their bounded time.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "ShutdownReport")]
pub(crate) struct Shutdown {
    /// How long connections get to close gracefully.
    pub grace: Duration,
    /// How long connections get to end on their own, after accepting stopped and before they
    /// are asked to close (`Server::drain`); zero for a plain shutdown.
    pub linger: Duration,
}

/// What a shutdown did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections asked to close gracefully.
    pub asked_to_close: usize,
    /// Connections still live at the grace deadline and closed by force.
    pub forced: usize,
    /// Connections still registered when the shutdown gave up waiting (0 unless a guarantee
    /// broke or a worker is stuck; see ARCHITECTURE.md).
    pub left_registered: usize,
    /// Worker threads that did not finish within their bound (stuck in a protocol callback,
    /// say) and were abandoned.
    pub abandoned_workers: usize,
    /// How long the protocol took.
    pub elapsed: Duration,
}
