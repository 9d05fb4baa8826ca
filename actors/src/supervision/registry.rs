//! `HandlerRegistry`: the record of the live connections of one worker.

use std::collections::HashMap;
use std::sync::Arc;
#[cfg(feature = "testing")]
use std::sync::Mutex;
use std::time::Instant;

use actix::prelude::*;
use actix::WeakAddr;
use slog::{warn, Logger};
use tokio::sync::oneshot;

use crate::connection::messages::{Close, CloseMode, Describe};
use crate::supervision::conn_description::ConnDescription;
use crate::supervision::conn_id::ConnId;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::messages::{
    CloseAll, CloseOne, DescribeConnections, Dispose, DisposedVia, Kill, LiveConnections, Register,
    RevalidateAll, WaitEmpty,
};
use crate::supervision::revalidation::Revalidate;
use crate::supervision::stats::Stats;

/// Capacity for `send`s to the registry. `Register` and `Dispose` use `do_send`, which ignores
/// capacity, so a burst of disposals never blocks a connection's stop hook.
const MAILBOX_CAPACITY: usize = 4096;

/// One disposal as the registry received it, duplicates included (the test harness's audit).
#[cfg(feature = "testing")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisposalRecord {
    /// The connection.
    pub id: ConnId,
    /// The reason it carried.
    pub reason: DisposeReason,
    /// Which path sent it.
    pub via: DisposedVia,
    /// Whether the registry applied it (false: a duplicate).
    pub applied: bool,
}

/// Every `Dispose` the registry received, in order. Only a test harness turns this on: it grows
/// with every connection.
#[cfg(feature = "testing")]
pub(crate) type DisposalAudit = Arc<Mutex<Vec<DisposalRecord>>>;

/// What a registry needs of the connections it records: to be told to close, to describe
/// themselves, and to check their client certificate against a new policy. The server's connections are `Connection` actors; the registry is generic so
/// that it depends on these two messages only (and can be tested with a stand-in).
pub(crate) trait Registered:
    Actor<Context = Context<Self>> + Handler<Close> + Handler<Describe> + Handler<Revalidate>
{
}

impl<C> Registered for C where
    C: Actor<Context = Context<C>> + Handler<Close> + Handler<Describe> + Handler<Revalidate>
{
}

struct Entry<C: Actor> {
    connection: WeakAddr<C>,
}

/// The record of the live connections of one worker arbiter (a server starts one per worker,
/// on that worker, so `Register` and `Dispose` never cross threads). It applies `Dispose`
/// exactly once per id and keeps the books (`Stats`, shared by every registry of a server, one
/// lock) so that `accepted == active + disposed` holds whenever they are read.
///
/// It holds weak addresses only: an entry never keeps a stopped connection alive, and a
/// connection that is gone simply misses a `Close`.
pub(crate) struct HandlerRegistry<C: Registered> {
    entries: HashMap<ConnId, Entry<C>>,
    stats: Arc<Stats>,
    empty_waiters: Vec<oneshot::Sender<()>>,
    #[cfg(feature = "testing")]
    audit: Option<DisposalAudit>,
    log: Logger,
}

impl<C: Registered> HandlerRegistry<C> {
    /// A registry keeping its books in `stats`.
    pub(crate) fn new(stats: Arc<Stats>, log: Logger) -> Self {
        HandlerRegistry {
            entries: HashMap::new(),
            stats,
            empty_waiters: Vec::new(),
            #[cfg(feature = "testing")]
            audit: None,
            log,
        }
    }

    /// Records every `Dispose` received into `audit` (tests count disposals per id with it).
    #[cfg(feature = "testing")]
    pub(crate) fn with_audit(mut self, audit: DisposalAudit) -> Self {
        self.audit = Some(audit);
        self
    }

    fn notify_if_empty(&mut self) {
        if self.entries.is_empty() {
            for waiter in self.empty_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn close(&self, id: ConnId, entry: &Entry<C>, close: Close) -> bool {
        match entry.connection.upgrade() {
            Some(addr) => {
                addr.do_send(close);
                true
            }
            None => {
                // The actor is gone but its Dispose is still on its way (queued behind this
                // message): nothing to ask, the entry leaves when the Dispose arrives.
                slog::debug!(self.log, "close skipped: connection already stopped"; "conn_id" => id.0);
                false
            }
        }
    }
}

/// The registries of every worker of one server, asked as one (a connection is only ever in
/// the registry of its own worker).
///
/// Every question has a deadline: a registry lives on its worker's thread, and a worker stuck
/// in a protocol callback answers nothing. Such a registry's answer is missing, never awaited
/// past the deadline.
pub(crate) struct Registries<C: Registered>(pub(crate) Vec<Addr<HandlerRegistry<C>>>);

impl<C: Registered> Clone for Registries<C> {
    fn clone(&self) -> Self {
        Registries(self.0.clone())
    }
}

impl<C: Registered> Registries<C> {
    /// Sends `msg` to every registry; an answer is `None` if that registry did not give it by
    /// `deadline`. Needs a tokio runtime (for the timer).
    async fn ask_all<M>(&self, msg: M, deadline: Instant) -> Vec<Option<M::Result>>
    where
        M: Message + Clone + Send + 'static,
        M::Result: Send,
        HandlerRegistry<C>: Handler<M> + Actor<Context = Context<HandlerRegistry<C>>>,
    {
        let deadline = tokio::time::Instant::from_std(deadline);
        futures::future::join_all(self.0.iter().map(|registry| {
            let answer = registry.send(msg.clone());
            async move { tokio::time::timeout_at(deadline, answer).await.ok()?.ok() }
        }))
        .await
    }

    /// Asks every registry to close its connections; how many were asked.
    pub(crate) async fn close_all(&self, close: Close, deadline: Instant) -> usize {
        self.ask_all(CloseAll(close), deadline)
            .await
            .into_iter()
            .map(|asked| asked.unwrap_or(0))
            .sum()
    }

    /// Resolves once every registry is empty (true), or at `deadline` (false).
    pub(crate) async fn wait_empty(&self, deadline: Instant) -> bool {
        self.ask_all(WaitEmpty, deadline)
            .await
            .iter()
            .all(Option::is_some)
    }

    /// The ids registered in every registry that answered, in id order.
    pub(crate) async fn live(&self, deadline: Instant) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = self
            .ask_all(LiveConnections, deadline)
            .await
            .into_iter()
            .flat_map(Option::unwrap_or_default)
            .collect();
        ids.sort();
        ids
    }

    /// Closes `id` with reason `killed` wherever it is; whether it was live. Only the
    /// registry of the connection's worker knows it; the others answer false.
    pub(crate) async fn kill(&self, id: ConnId, mode: CloseMode, deadline: Instant) -> bool {
        self.ask_all(Kill { id, mode }, deadline)
            .await
            .into_iter()
            .any(|live| live.unwrap_or(false))
    }

    /// Hands `revalidate` to every live connection of every registry (fire and forget: the
    /// pass it carries reports when the last connection is done with it).
    pub(crate) fn revalidate_all(&self, revalidate: Revalidate) {
        for registry in &self.0 {
            // A registry that is gone drops its copy, and with it its share of the pass.
            registry.do_send(RevalidateAll(revalidate.clone()));
        }
    }

    /// Sends `close` to `id` wherever it is; whether it was live.
    pub(crate) async fn close_one(&self, id: ConnId, close: Close, deadline: Instant) -> bool {
        self.ask_all(CloseOne { id, close }, deadline)
            .await
            .into_iter()
            .any(|live| live.unwrap_or(false))
    }

    /// The descriptions of the `limit` live connections with the lowest ids above `after`, in
    /// id order, from every registry that answered (each asks its connections, which answer
    /// by the same deadline, less a margin for the registry's own answer to arrive).
    pub(crate) async fn describe(
        &self,
        after: Option<ConnId>,
        limit: usize,
        deadline: Instant,
    ) -> Vec<ConnDescription> {
        let answers_by = deadline.checked_sub(DESCRIBE_MARGIN).unwrap_or(deadline);
        let ask = DescribeConnections {
            after,
            limit,
            deadline: answers_by,
        };
        let mut all: Vec<ConnDescription> = self
            .ask_all(ask, deadline)
            .await
            .into_iter()
            .enumerate()
            .flat_map(|(worker, answer)| {
                answer.unwrap_or_default().into_iter().map(move |mut d| {
                    d.worker = worker;
                    d
                })
            })
            .collect();
        all.sort_by_key(|d| d.id);
        all.truncate(limit);
        all
    }
}

/// How much earlier than the caller's deadline a registry stops waiting for its connections'
/// descriptions, so that its own answer still arrives in time.
const DESCRIBE_MARGIN: std::time::Duration = std::time::Duration::from_millis(100);

impl<C: Registered> Actor for HandlerRegistry<C> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl<C: Registered> Handler<Register<C>> for HandlerRegistry<C> {
    type Result = ();

    fn handle(&mut self, msg: Register<C>, _ctx: &mut Self::Context) {
        let fresh = self
            .entries
            .insert(
                msg.id,
                Entry {
                    connection: msg.connection,
                },
            )
            .is_none();
        // Ids are never reused, so a second Register is a bug upstream; the books stay honest
        // by counting the connection once.
        if fresh {
            self.stats.update_ledger(|l| {
                l.accepted += 1;
                l.active += 1;
            });
        } else {
            warn!(self.log, "id registered twice"; "conn_id" => msg.id.0, "peer" => %msg.peer);
        }
    }
}

impl<C: Registered> Handler<Dispose> for HandlerRegistry<C> {
    type Result = ();

    fn handle(&mut self, msg: Dispose, _ctx: &mut Self::Context) {
        let applied = self.entries.remove(&msg.id).is_some();
        // The audit first: a test that saw the ledger change then reads the audit, and must
        // find the record there.
        #[cfg(feature = "testing")]
        if let Some(audit) = &self.audit {
            audit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(DisposalRecord {
                    id: msg.id,
                    reason: msg.reason,
                    via: msg.via,
                    applied,
                });
        }
        self.stats.update_ledger(|l| {
            if applied {
                l.active -= 1;
                l.count_disposed(msg.reason);
                if msg.via == DisposedVia::Fallback {
                    l.fallbacks += 1;
                }
            } else {
                l.duplicates += 1;
            }
        });
        if !applied {
            warn!(self.log, "duplicate dispose ignored";
                "conn_id" => msg.id.0, "reason" => msg.reason.as_str());
        }
        self.notify_if_empty();
    }
}

impl<C: Registered> Handler<CloseAll> for HandlerRegistry<C> {
    type Result = usize;

    fn handle(&mut self, msg: CloseAll, _ctx: &mut Self::Context) -> usize {
        self.entries
            .iter()
            .filter(|(id, entry)| self.close(**id, entry, msg.0))
            .count()
    }
}

impl<C: Registered> Handler<RevalidateAll> for HandlerRegistry<C> {
    type Result = usize;

    /// One message per connection and nothing else: each connection verifies itself, so the
    /// registry's mailbox is held for the fan-out only (about a microsecond a connection).
    fn handle(&mut self, msg: RevalidateAll, _ctx: &mut Self::Context) -> usize {
        let mut asked = 0;
        for entry in self.entries.values() {
            if let Some(connection) = entry.connection.upgrade() {
                connection.do_send(msg.0.clone());
                asked += 1;
            }
        }
        asked
    }
}

impl<C: Registered> Handler<Kill> for HandlerRegistry<C> {
    type Result = bool;

    fn handle(&mut self, msg: Kill, _ctx: &mut Self::Context) -> bool {
        let close = Close {
            mode: msg.mode,
            reason: DisposeReason::Killed,
        };
        match self.entries.get(&msg.id) {
            Some(entry) => self.close(msg.id, entry, close),
            None => false,
        }
    }
}

impl<C: Registered> Handler<WaitEmpty> for HandlerRegistry<C> {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: WaitEmpty, _ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.empty_waiters.push(tx);
        self.notify_if_empty();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl<C: Registered> Handler<LiveConnections> for HandlerRegistry<C> {
    type Result = Vec<ConnId>;

    fn handle(&mut self, _msg: LiveConnections, _ctx: &mut Self::Context) -> Vec<ConnId> {
        let mut ids: Vec<_> = self.entries.keys().copied().collect();
        ids.sort();
        ids
    }
}

impl<C: Registered> Handler<CloseOne> for HandlerRegistry<C> {
    type Result = bool;

    fn handle(&mut self, msg: CloseOne, _ctx: &mut Self::Context) -> bool {
        match self.entries.get(&msg.id) {
            Some(entry) => self.close(msg.id, entry, msg.close),
            None => false,
        }
    }
}

impl<C: Registered> Handler<DescribeConnections> for HandlerRegistry<C> {
    type Result = ResponseFuture<Vec<ConnDescription>>;

    fn handle(&mut self, msg: DescribeConnections, _ctx: &mut Self::Context) -> Self::Result {
        let mut ids: Vec<ConnId> = self
            .entries
            .keys()
            .copied()
            .filter(|id| msg.after.map_or(true, |after| *id > after))
            .collect();
        ids.sort_unstable();
        ids.truncate(msg.limit);
        // Weak addresses: a connection already gone is skipped, never kept alive by this.
        let asks: Vec<_> = ids
            .iter()
            .filter_map(|id| self.entries[id].connection.upgrade())
            .map(|connection| connection.send(Describe))
            .collect();
        let deadline = tokio::time::Instant::from_std(msg.deadline);
        Box::pin(async move {
            let answers =
                futures::future::join_all(asks.into_iter().map(|ask| async move {
                    tokio::time::timeout_at(deadline, ask).await.ok()?.ok()
                }))
                .await;
            answers.into_iter().flatten().collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervision::messages::DisposedVia;
    use crate::supervision::registration::Registration;

    /// Stands in for a connection: the registry only asks it to close or describe itself.
    struct Standin;

    impl Actor for Standin {
        type Context = Context<Self>;
    }

    impl Handler<Close> for Standin {
        type Result = ();

        fn handle(&mut self, _msg: Close, ctx: &mut Self::Context) {
            ctx.stop();
        }
    }

    impl Handler<Revalidate> for Standin {
        type Result = ();

        fn handle(&mut self, _msg: Revalidate, _ctx: &mut Self::Context) {}
    }

    impl Handler<Describe> for Standin {
        type Result = MessageResult<Describe>;

        fn handle(&mut self, _msg: Describe, _ctx: &mut Self::Context) -> Self::Result {
            MessageResult(ConnDescription {
                id: ConnId(0),
                peer: ([127, 0, 0, 1], 1).into(),
                unix: false,
                worker: 0,
                service: None,
                state: "open",
                protocol: "echo",
                age: std::time::Duration::ZERO,
                bytes_in: 0,
                bytes_out: 0,
                tls: None,
                upstream_tls: None,
            })
        }
    }

    type Registry = HandlerRegistry<Standin>;

    fn discard() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    /// A registration whose connection never existed: a mailbox with no actor behind it.
    fn register(registry: &Addr<Registry>, id: u64) -> Registration<Standin> {
        register_counting(registry, id, Arc::new(Stats::default()))
    }

    fn register_counting(
        registry: &Addr<Registry>,
        id: u64,
        stats: Arc<Stats>,
    ) -> Registration<Standin> {
        let mailbox = Context::<Standin>::new();
        Registration::new(
            ConnId(id),
            ([127, 0, 0, 1], 1).into(),
            mailbox.address().downgrade(),
            registry.clone(),
            stats,
            discard(),
        )
    }

    async fn settle(registry: &Addr<Registry>) -> Vec<ConnId> {
        registry.send(LiveConnections).await.unwrap()
    }

    #[test]
    fn a_second_dispose_is_counted_and_changes_nothing() {
        actix_rt::System::new().block_on(async {
            let stats = Arc::new(Stats::default());
            let registry = Registry::new(Arc::clone(&stats), discard()).start();
            // Held to the end: dropping one sends its own Dispose.
            let _registered = (register(&registry, 1), register(&registry, 2));
            let dispose = Dispose {
                id: ConnId(1),
                reason: DisposeReason::PeerEof,
                via: DisposedVia::StopHook,
            };
            registry.do_send(dispose.clone());
            registry.do_send(dispose);
            assert_eq!(settle(&registry).await, vec![ConnId(2)]);
            let ledger = stats.ledger();
            assert_eq!(ledger.accepted, 2);
            assert_eq!(ledger.active, 1);
            assert_eq!(ledger.disposed(DisposeReason::PeerEof), 1);
            assert_eq!(ledger.duplicates, 1);
            assert!(ledger.is_balanced());
        });
    }

    #[test]
    fn a_guard_dropped_without_the_stop_hook_disposes_as_a_counted_fallback() {
        actix_rt::System::new().block_on(async {
            let stats = Arc::new(Stats::default());
            let registry = Registry::new(Arc::clone(&stats), discard()).start();
            drop(register(&registry, 7));
            assert!(settle(&registry).await.is_empty());
            let ledger = stats.ledger();
            assert_eq!(ledger.fallbacks, 1);
            assert_eq!(ledger.disposed(DisposeReason::Shutdown), 1);
            assert_eq!(ledger.duplicates, 0);
        });
    }

    #[test]
    fn a_discharged_guard_sends_nothing_more_when_dropped() {
        actix_rt::System::new().block_on(async {
            let stats = Arc::new(Stats::default());
            let registry = Registry::new(Arc::clone(&stats), discard()).start();
            let mut guard = register(&registry, 3);
            guard.dispose(DisposeReason::IdleTimeout);
            guard.dispose(DisposeReason::Killed);
            drop(guard);
            assert!(settle(&registry).await.is_empty());
            let ledger = stats.ledger();
            assert_eq!(ledger.disposed(DisposeReason::IdleTimeout), 1);
            assert_eq!(ledger.disposed_total(), 1);
            assert_eq!((ledger.fallbacks, ledger.duplicates), (0, 0));
        });
    }

    #[test]
    fn wait_empty_resolves_when_the_last_connection_leaves() {
        actix_rt::System::new().block_on(async {
            let stats = Arc::new(Stats::default());
            let registry = Registry::new(stats, discard()).start();
            let mut registration = register(&registry, 1);
            let waiting = registry.send(WaitEmpty);
            registration.dispose(DisposeReason::Shutdown);
            tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
                .await
                .expect("WaitEmpty resolves")
                .unwrap();
        });
    }

    #[test]
    fn a_dispose_the_registry_cannot_receive_is_counted_lost() {
        actix_rt::System::new().block_on(async {
            let stats = Arc::new(Stats::default());
            // A registry on an arbiter of its own, stopped under the registration.
            let worker = actix::Arbiter::new();
            let registry = {
                let stats = Arc::clone(&stats);
                Registry::start_in_arbiter(&worker.handle(), move |_| {
                    Registry::new(stats, discard())
                })
            };
            let mut registration = register_counting(&registry, 1, Arc::clone(&stats));
            assert_eq!(settle(&registry).await, vec![ConnId(1)]);
            worker.stop();
            worker.join().unwrap();
            assert!(!registry.connected());
            registration.dispose(DisposeReason::PeerEof);
            assert_eq!(stats.snapshot().dispose_lost, 1);
            // The books were kept by the registry that is gone: it never saw the Dispose.
            assert_eq!(stats.ledger().active, 1);
        });
    }
}
