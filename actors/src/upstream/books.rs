//! `UpstreamBooks`: every upstream group a server has, by service, across reloads: what the
//! per-upstream figures (`Stats::upstreams`, the `tlsvisor_upstream_*` families) are read from.
//!
//! A reload builds new pools (new health, a new TLS client to the upstreams), but an upstream
//! the reload did not change keeps its figures: a new pool takes the counters of the pool that
//! served the same upstream (as configured) of the same service before it, so a counter never
//! resets under a Prometheus `rate()` because a reload happened. The "active" count is then
//! shared too, which is right: it is one upstream, and its least-connections choice should see
//! the connections the old pool still carries. Health is not carried: each reload gives every
//! upstream a fresh start (as an nginx or haproxy reload does); the first failures put a down
//! upstream down again.
//!
//! A group a reload removed (its service gone, or an upstream gone from a group) is still
//! shown while a connection holds its pool, so the bytes and the live connections it still
//! carries stay visible; once the last of those connections ended the pool is dropped, and
//! its series with it. Two groups naming one address are two pools with their own health and
//! their own series (told apart by `service`).

use std::sync::{Arc, Mutex, Weak};

use crate::service::table::ServiceTable;
use crate::upstream::pool::{UpstreamCounters, UpstreamPool, UpstreamSnapshot};

/// Which service a group belongs to: `None` for the default service, else a named one's label.
type GroupOf = Option<String>;

/// The groups of the table served now and those that still serve connections of older tables.
#[derive(Debug, Default)]
pub(crate) struct UpstreamBooks(Mutex<Groups>);

#[derive(Debug, Default)]
struct Groups {
    /// The current table's groups, in its order (the default first).
    current: Vec<(GroupOf, Arc<UpstreamPool>)>,
    /// Groups of tables replaced since, alive while some connection holds them.
    retired: Vec<(GroupOf, Weak<UpstreamPool>)>,
}

impl Groups {
    /// Every group alive, the current ones first, newest retired first.
    fn alive(&self) -> impl Iterator<Item = (GroupOf, Arc<UpstreamPool>)> + '_ {
        let current = (self.current.iter()).map(|(of, pool)| (of.clone(), Arc::clone(pool)));
        let retired = (self.retired.iter().rev())
            .filter_map(|(of, pool)| Some((of.clone(), pool.upgrade()?)));
        current.chain(retired)
    }

    /// The counters of the `nth` `upstream` (as shown) in a group of `of` still alive, if any.
    fn counters(&self, of: &GroupOf, upstream: &str, nth: usize) -> Option<Arc<UpstreamCounters>> {
        self.alive()
            .filter(|(group, _)| group == of)
            .find_map(|(_, pool)| {
                (0..pool.len())
                    .filter(|&index| pool.shown(index) == upstream)
                    .nth(nth)
                    .map(|index| Arc::clone(pool.counters_of(index)))
            })
    }
}

/// The group `service` (at `index` in its table) belongs to.
fn group_of(index: usize, label: &str) -> GroupOf {
    (index > 0).then(|| label.to_string())
}

impl UpstreamBooks {
    fn groups(&self) -> std::sync::MutexGuard<'_, Groups> {
        // Only pushes, swaps and retains happen under the lock: a poisoned one is still whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives each new pool of `table` (not served yet) the counters of the same upstream of
    /// the same service in a group still alive, so its figures carry over.
    pub(crate) fn carry_over(&self, table: &mut ServiceTable) {
        let groups = self.groups();
        for (index, service) in table.services_mut().iter_mut().enumerate() {
            // A service (or pool) shared with the table in use already has its counters.
            let Some(service) = Arc::get_mut(service) else {
                continue;
            };
            let of = group_of(index, service.label());
            let Some(pool) = service.handler.upstreams_mut().and_then(Arc::get_mut) else {
                continue;
            };
            for at in 0..pool.len() {
                let shown = pool.shown(at);
                // An upstream written twice in a group is two entries with their own counters.
                let nth = (0..at).filter(|&i| pool.shown(i) == shown).count();
                if let Some(counters) = groups.counters(&of, &shown, nth) {
                    pool.share_counters(at, counters);
                }
            }
        }
    }

    /// Records `table` as the one served now; the groups of the one before stay shown while
    /// connections hold them.
    pub(crate) fn serve(&self, table: &ServiceTable) {
        let mut groups = self.groups();
        let current = (table.services().iter().enumerate())
            .filter_map(|(index, service)| {
                let pool = service.handler.upstreams()?;
                Some((group_of(index, service.label()), Arc::clone(pool)))
            })
            .collect();
        let before = std::mem::replace(&mut groups.current, current);
        let retired = before
            .into_iter()
            .map(|(of, pool)| (of, Arc::downgrade(&pool)));
        groups.retired.extend(retired);
        let current: Vec<*const UpstreamPool> = (groups.current.iter())
            .map(|(_, p)| Arc::as_ptr(p))
            .collect();
        // A pool the new table kept is current, not retired; a dropped one is gone.
        groups
            .retired
            .retain(|(_, pool)| pool.strong_count() > 0 && !current.contains(&pool.as_ptr()));
    }

    /// Every upstream of every group alive: the current table's, in its order (the default
    /// first, each group in configuration order), then those only older tables have, while a
    /// connection holds them. An upstream in both (carried over) is shown once, as the current
    /// group has it.
    pub(crate) fn snapshot(&self) -> Vec<UpstreamSnapshot> {
        let mut groups = self.groups();
        groups.retired.retain(|(_, pool)| pool.strong_count() > 0);
        let mut shown_counters: Vec<*const UpstreamCounters> = Vec::new();
        let mut shown: Vec<UpstreamSnapshot> = Vec::new();
        for (of, pool) in groups.alive() {
            // Counters shared with a group shown already (carried over) are shown once.
            for (at, upstream) in pool.snapshot(of.as_deref()).into_iter().enumerate() {
                let counters = Arc::as_ptr(pool.counters_of(at));
                if !shown_counters.contains(&counters) {
                    shown_counters.push(counters);
                    shown.push(upstream);
                }
            }
        }
        shown
    }
}

#[cfg(all(test, feature = "dev-certs"))]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::protocol::Echo;
    use crate::service::definition::Service;
    use crate::upstream::config::ProxyConfig;

    fn tls() -> crate::tls::source::LoadedTls {
        let certs = crate::tls::dev_certs::DevCerts::generate().unwrap();
        certs.server_tls().unwrap()
    }

    fn proxy(names: &[&str], upstreams: &[&str]) -> Service {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let proxy = ProxyConfig::with_upstreams(upstreams.to_vec());
        Service::proxy(&names, tls(), proxy).unwrap()
    }

    /// Installs the table of `default` and `named` as a reload does (the one before it is
    /// dropped unless something holds it), and returns it.
    fn serve(books: &UpstreamBooks, default: Service, named: Vec<Service>) -> Arc<ServiceTable> {
        let mut table = ServiceTable::new(default, named).unwrap();
        books.carry_over(&mut table);
        books.serve(&table);
        Arc::new(table)
    }

    /// Counts one opened connection on every upstream of every group of `table`.
    fn open_one_everywhere(table: &ServiceTable) {
        for service in table.services() {
            if let Some(pool) = service.handler.upstreams() {
                for at in 0..pool.len() {
                    pool.counters_of(at).opened.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn opened(books: &UpstreamBooks) -> Vec<(Option<String>, String, u64)> {
        (books.snapshot().into_iter())
            .map(|u| (u.service, u.upstream, u.connections_opened))
            .collect()
    }

    fn one(service: Option<&str>, upstream: &str, n: u64) -> (Option<String>, String, u64) {
        (service.map(str::to_string), upstream.to_string(), n)
    }

    #[test]
    fn kept_upstreams_keep_their_counters_and_removed_groups_go_with_their_last_holder() {
        let books = UpstreamBooks::default();
        let first = serve(
            &books,
            proxy(&[], &["127.0.0.1:1", "127.0.0.1:2"]),
            vec![
                proxy(&["a.test"], &["127.0.0.1:1"]),
                proxy(&["b.test"], &["127.0.0.1:3"]),
            ],
        );
        open_one_everywhere(&first);
        // A connection of b.test, holding its service (and so its pool) past the reload.
        let held = Arc::clone(first.choose(Some("b.test")));

        // The default drops :2 and gains :4; a.test is unchanged; b.test is removed.
        let default = proxy(&[], &["127.0.0.1:1", "127.0.0.1:4"]);
        let a = proxy(&["a.test"], &["127.0.0.1:1"]);
        let table = serve(&books, default, vec![a]);
        drop(first);
        open_one_everywhere(&table);
        assert_eq!(
            opened(&books),
            vec![
                one(None, "127.0.0.1:1", 2),
                one(None, "127.0.0.1:4", 1),
                one(Some("a.test"), "127.0.0.1:1", 2),
                // Only a retired group has it, shown while a connection holds it (the old
                // default's :2 has no holder left: gone with its table).
                one(Some("b.test"), "127.0.0.1:3", 1),
            ]
        );
        drop(held);
        let shown = opened(&books);
        assert!(
            !shown.iter().any(|(s, _, _)| s.as_deref() == Some("b.test")),
            "the last holder of b.test's group is gone: {shown:?}"
        );
        // A reload with nothing changed carries every counter over again.
        let default = proxy(&[], &["127.0.0.1:1", "127.0.0.1:4"]);
        let a = proxy(&["a.test"], &["127.0.0.1:1"]);
        let kept = serve(&books, default, vec![a]);
        drop(table);
        assert_eq!(
            opened(&books),
            vec![
                one(None, "127.0.0.1:1", 2),
                one(None, "127.0.0.1:4", 1),
                one(Some("a.test"), "127.0.0.1:1", 2),
            ]
        );
        // An echo default has no group, and its series go.
        let echo = Service::sessions(&[], tls(), Echo).unwrap();
        let echoing = serve(&books, echo, Vec::new());
        drop(kept);
        assert_eq!(opened(&books), Vec::new());
        assert_eq!(echoing.services().len(), 1);
    }

    #[test]
    fn an_upstream_written_twice_in_a_group_keeps_two_sets_of_counters() {
        let books = UpstreamBooks::default();
        let twice = || proxy(&[], &["127.0.0.1:1", "127.0.0.1:1"]);
        let first = serve(&books, twice(), Vec::new());
        let pool = first.default_service().handler.upstreams().unwrap();
        pool.counters_of(1).opened.fetch_add(5, Ordering::Relaxed);
        let second = serve(&books, twice(), Vec::new());
        drop(first);
        assert_eq!(
            opened(&books),
            vec![one(None, "127.0.0.1:1", 0), one(None, "127.0.0.1:1", 5)]
        );
        assert_eq!(second.services().len(), 1);
    }
}
