//! The proxy's upstreams as one pool, shared by every worker: which one a client goes to, which
//! are down, and what each carries.
//!
//! - **Choice**: least connections among the healthy upstreams, counting connects in flight;
//!   ties go round-robin, so that idle upstreams share the first clients evenly.
//! - **Passive health**: [`UpstreamHealth::max_fails`] consecutive failed connects mark an
//!   upstream down for a backoff period. Once the period is over, one client (the probe) is
//!   sent to it while the others keep going elsewhere: a success brings it back up, a failure
//!   doubles the backoff (up to [`UpstreamHealth::max_backoff`]). One log line when it goes
//!   down, one when it comes back up.
//! - **Never refuse everyone on stale state**: when every upstream is down, the one whose
//!   backoff ends first is tried anyway, so an upstream that came back early is found by the
//!   next client rather than after its backoff.
//! - **Retry**: a failed connect is retried once on another upstream before the client is
//!   given up (`upstream_connect_failed`).
//!
//! What a connection holds of the pool is an [`UpstreamLease`]: the upstream's place in the
//! "active" count, given back when the lease is dropped, so the count cannot drift whatever
//! way the connection ends (the crate's style, as the admission slots).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use slog::Logger;

use crate::connection::messages::Side;
use crate::tls::info::TlsInfo;
use crate::upstream::config::{self, ProxyConfig, UpstreamHealth};
use crate::upstream::stream::UpstreamStream;
use crate::upstream::tls::{is_tls_failure, UpstreamTlsFailed};

/// The upstreams of one proxying server.
#[derive(Debug)]
pub(crate) struct UpstreamPool {
    config: ProxyConfig,
    /// Indexed like `config.upstreams`. Shared with the pools that served the same upstream
    /// of the same service before a reload (see `books`), so its figures carry over.
    counters: Box<[Arc<UpstreamCounters>]>,
    choice: Mutex<Choice>,
}

/// One upstream's counters (lock-free; the choice reads `active` under its lock).
#[derive(Debug, Default)]
pub(crate) struct UpstreamCounters {
    /// Leases held: connects in flight and open connections.
    active: AtomicU64,
    /// Successful connects.
    pub(super) opened: AtomicU64,
    connect_failures: AtomicU64,
    bytes_client_to_upstream: AtomicU64,
    bytes_upstream_to_client: AtomicU64,
}

/// One upstream's counters and health, at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamSnapshot {
    /// The service whose upstream group it is in: `None` for the default service's, else the
    /// named service's label (its first name). Two groups naming one address are two pools,
    /// with their own health and figures.
    pub service: Option<String>,
    /// The upstream as configured (`HOST:PORT`, `unix:/path`, `tls://HOST:PORT`).
    pub upstream: String,
    /// Not marked down by the passive health checks.
    pub up: bool,
    /// Connections opened to it.
    pub connections_opened: u64,
    /// Connections open to it now, and connects in flight.
    pub connections_active: u64,
    /// Connects that failed (refused, timed out, the PROXY header not written).
    pub connect_failures: u64,
    /// Bytes read from clients and written to it.
    pub bytes_client_to_upstream: u64,
    /// Bytes read from it and written to clients.
    pub bytes_upstream_to_client: u64,
}

/// A successful connect: the socket, the lease that counts it, how long the connect took, and
/// what the TLS handshake with the upstream negotiated (a TLS group).
pub(crate) struct Connected {
    pub(crate) stream: UpstreamStream,
    pub(crate) lease: UpstreamLease,
    pub(crate) latency: Duration,
    pub(crate) tls: Option<TlsInfo>,
}

impl UpstreamPool {
    pub(crate) fn new(config: ProxyConfig) -> UpstreamPool {
        let count = config.upstreams.len();
        UpstreamPool {
            counters: (0..count).map(|_| Arc::default()).collect(),
            choice: Mutex::new(Choice::new(count, config.health)),
            config,
        }
    }

    pub(crate) fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Connects `client` to an upstream: the chosen one, or if that fails, once more to
    /// another. The error of the last attempt names each upstream tried.
    pub(crate) async fn connect(
        self: Arc<Self>,
        log: Logger,
        client: SocketAddr,
        server: SocketAddr,
        tls: Option<TlsInfo>,
    ) -> io::Result<Connected> {
        let Some(first) = self.lease(None) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no upstream configured",
            ));
        };
        let attempt = self.attempt(first, &log, client, server, tls.as_ref());
        let (tried, first_error) = match attempt.await {
            Ok(connected) => return Ok(connected),
            Err(failed) => failed,
        };
        let Some(second) = self.lease(Some(tried)) else {
            return Err(first_error);
        };
        slog::debug!(log, "upstream connect failed, trying another";
            "upstream" => %self.config.upstreams[tried], "error" => %first_error);
        self.attempt(second, &log, client, server, tls.as_ref())
            .await
            .map_err(|(_, e)| {
                let both = format!("{first_error}; then {e}");
                // The last attempt decides the reason: a TLS failure stays one.
                match is_tls_failure(&e) {
                    true => io::Error::new(e.kind(), UpstreamTlsFailed(both)),
                    false => io::Error::new(e.kind(), both),
                }
            })
    }

    /// One connect on `lease`'s upstream; the failure carries the upstream's index, and its
    /// message names it.
    async fn attempt(
        &self,
        mut lease: UpstreamLease,
        log: &Logger,
        client: SocketAddr,
        server: SocketAddr,
        tls: Option<&TlsInfo>,
    ) -> Result<Connected, (usize, io::Error)> {
        let started = Instant::now();
        let upstream = &self.config.upstreams[lease.index];
        match config::connect(upstream, &self.config, client, server, tls).await {
            Ok(stream) => {
                lease.report(log, None);
                let tls = match &stream {
                    UpstreamStream::Tls(tls) => Some(TlsInfo::of_upstream(tls.get_ref().1)),
                    _ => None,
                };
                Ok(Connected {
                    stream,
                    lease,
                    latency: started.elapsed(),
                    tls,
                })
            }
            Err(e) => {
                lease.report(log, Some(&e));
                let text = format!("{upstream}: {e}");
                let named = match is_tls_failure(&e) {
                    true => io::Error::new(e.kind(), UpstreamTlsFailed(text)),
                    false => io::Error::new(e.kind(), text),
                };
                Err((lease.index, named))
            }
        }
    }

    /// Chooses an upstream other than `exclude` and counts a lease on it; `None` if there is
    /// no other.
    fn lease(self: &Arc<Self>, exclude: Option<usize>) -> Option<UpstreamLease> {
        let mut choice = self.choice();
        let active: Vec<u64> = self
            .counters
            .iter()
            .map(|c| c.active.load(Ordering::Relaxed))
            .collect();
        let pick = choice.pick(Instant::now(), &active, exclude)?;
        // Under the choice's lock, so that the next pick sees this one.
        self.counters[pick.index]
            .active
            .fetch_add(1, Ordering::Relaxed);
        Some(UpstreamLease {
            pool: Arc::clone(self),
            index: pick.index,
            probe: pick.probe,
            reported: false,
        })
    }

    fn choice(&self) -> MutexGuard<'_, Choice> {
        // The choice's few lines cannot leave it inconsistent halfway: a poisoned lock is
        // still a usable state.
        self.choice.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upstream at `index` as configured: a TLS group's upstreams are `tls://HOST:PORT`.
    pub(crate) fn shown(&self, index: usize) -> String {
        let upstream = &self.config.upstreams[index];
        match self.config.tls {
            Some(_) => format!("tls://{upstream}"),
            None => upstream.to_string(),
        }
    }

    /// The counters of the upstream at `index` (to share with the pool that replaces this one).
    pub(crate) fn counters_of(&self, index: usize) -> &Arc<UpstreamCounters> {
        &self.counters[index]
    }

    /// Takes `counters` as the counters of the upstream at `index` (a pool not serving yet).
    pub(crate) fn share_counters(&mut self, index: usize, counters: Arc<UpstreamCounters>) {
        self.counters[index] = counters;
    }

    /// How many upstreams the group has.
    pub(crate) fn len(&self) -> usize {
        self.counters.len()
    }

    /// Every upstream's counters and health, in configuration order, as upstreams of the
    /// service `service` (`None`: the default).
    pub(crate) fn snapshot(&self, service: Option<&str>) -> Vec<UpstreamSnapshot> {
        let choice = self.choice();
        self.counters
            .iter()
            .enumerate()
            .map(|(index, c)| UpstreamSnapshot {
                service: service.map(str::to_string),
                upstream: self.shown(index),
                up: choice.is_up(index),
                connections_opened: c.opened.load(Ordering::Relaxed),
                connections_active: c.active.load(Ordering::Relaxed),
                connect_failures: c.connect_failures.load(Ordering::Relaxed),
                bytes_client_to_upstream: c.bytes_client_to_upstream.load(Ordering::Relaxed),
                bytes_upstream_to_client: c.bytes_upstream_to_client.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// A connection's hold on one upstream: counted in its `active` while it lives.
pub(crate) struct UpstreamLease {
    pool: Arc<UpstreamPool>,
    index: usize,
    /// This connect is the one sent to a down upstream to see whether it is back.
    probe: bool,
    /// The connect's outcome went to the health checks.
    reported: bool,
}

impl UpstreamLease {
    /// Counts proxied bytes against this upstream.
    pub(crate) fn proxied(&self, from: Side, bytes: usize) {
        let c = &self.pool.counters[self.index];
        let counter = match from {
            Side::Client => &c.bytes_client_to_upstream,
            Side::Upstream => &c.bytes_upstream_to_client,
        };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Feeds the connect's outcome (`Some(error)` for a failure) to the counters and the
    /// health checks, and logs a change of health.
    fn report(&mut self, log: &Logger, failure: Option<&io::Error>) {
        self.reported = true;
        let pool = &self.pool;
        let c = &pool.counters[self.index];
        let upstream = &pool.config.upstreams[self.index];
        let change = match failure {
            None => {
                c.opened.fetch_add(1, Ordering::Relaxed);
                pool.choice().succeeded(self.index)
            }
            Some(_) => {
                c.connect_failures.fetch_add(1, Ordering::Relaxed);
                pool.choice().failed(self.index, Instant::now(), self.probe)
            }
        };
        match (change, failure) {
            (Change::WentDown { backoff }, Some(e)) => slog::warn!(log, "upstream down";
                "upstream" => %upstream, "error" => %e,
                "backoff_ms" => backoff.as_millis() as u64),
            (Change::CameUp, _) => slog::info!(log, "upstream up"; "upstream" => %upstream),
            _ => {}
        }
    }
}

impl Drop for UpstreamLease {
    fn drop(&mut self) {
        self.pool.counters[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
        if self.probe && !self.reported {
            // The probe's connect was abandoned (its connection stopped meanwhile): let the
            // next client probe instead, or the upstream would stay out for good.
            self.pool.choice().probe_abandoned(self.index);
        }
    }
}

/// The choice among upstreams and their health: plain state, no I/O and no clock of its own,
/// so that its rules are tested directly.
#[derive(Debug)]
struct Choice {
    health: Vec<Health>,
    /// Where the round-robin among equally loaded upstreams starts next.
    cursor: usize,
    policy: UpstreamHealth,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Health {
    /// Failed connects since the last success.
    consecutive_failures: u32,
    down: Option<Down>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Down {
    /// No clients before then (except when every upstream is down).
    until: Instant,
    backoff: Duration,
    /// A probe is in flight: the others keep away until it reports.
    probing: bool,
}

/// A chosen upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pick {
    index: usize,
    probe: bool,
}

/// What an outcome did to an upstream's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    WentDown { backoff: Duration },
    CameUp,
    Unchanged,
}

impl Choice {
    fn new(count: usize, policy: UpstreamHealth) -> Choice {
        Choice {
            health: vec![Health::default(); count],
            cursor: 0,
            policy,
        }
    }

    fn is_up(&self, index: usize) -> bool {
        self.health[index].down.is_none()
    }

    /// The upstream for the next client, given each one's `active` count: the least loaded
    /// of those that take clients now (round-robin among equals), else, when every one is
    /// down, the one whose backoff ends first. `None` only when no upstream but `exclude`
    /// exists.
    fn pick(&mut self, now: Instant, active: &[u64], exclude: Option<usize>) -> Option<Pick> {
        let count = self.health.len();
        let mut best: Option<(usize, u64)> = None;
        let mut earliest: Option<(usize, Instant)> = None;
        for offset in 0..count {
            let index = (self.cursor + offset) % count;
            if Some(index) == exclude {
                continue;
            }
            match self.health[index].down {
                Some(down) if down.probing || now < down.until => {
                    if !matches!(earliest, Some((_, until)) if until <= down.until) {
                        earliest = Some((index, down.until));
                    }
                }
                // Up, or down with its backoff over and no probe out: it takes a client.
                _ => {
                    if !matches!(best, Some((_, load)) if load <= active[index]) {
                        best = Some((index, active[index]));
                    }
                }
            }
        }
        if let Some((index, _)) = best {
            self.cursor = (index + 1) % count;
            let probe = match &mut self.health[index].down {
                Some(down) => {
                    down.probing = true;
                    true
                }
                None => false,
            };
            return Some(Pick { index, probe });
        }
        earliest.map(|(index, _)| Pick {
            index,
            probe: false,
        })
    }

    fn succeeded(&mut self, index: usize) -> Change {
        let health = &mut self.health[index];
        let was_down = health.down.take().is_some();
        health.consecutive_failures = 0;
        if was_down {
            Change::CameUp
        } else {
            Change::Unchanged
        }
    }

    fn failed(&mut self, index: usize, now: Instant, probe: bool) -> Change {
        let policy = self.policy;
        let health = &mut self.health[index];
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        match &mut health.down {
            // Its probe failed: out again, for twice as long.
            Some(down) if probe => {
                down.backoff = (down.backoff * 2).min(policy.max_backoff);
                down.until = now + down.backoff;
                down.probing = false;
                Change::Unchanged
            }
            // A connect that started before it went down, or the try when every upstream is
            // down: it is out already.
            Some(_) => Change::Unchanged,
            None if health.consecutive_failures >= policy.max_fails.max(1) => {
                let backoff = policy.backoff.min(policy.max_backoff);
                health.down = Some(Down {
                    until: now + backoff,
                    backoff,
                    probing: false,
                });
                Change::WentDown { backoff }
            }
            None => Change::Unchanged,
        }
    }

    fn probe_abandoned(&mut self, index: usize) {
        if let Some(down) = &mut self.health[index].down {
            down.probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn choice(count: usize, max_fails: u32) -> Choice {
        Choice::new(
            count,
            UpstreamHealth {
                max_fails,
                backoff: SECOND,
                max_backoff: 4 * SECOND,
            },
        )
    }

    fn index(pick: Option<Pick>) -> usize {
        pick.unwrap().index
    }

    #[test]
    fn least_connections_wins() {
        let mut c = choice(3, 1);
        let now = Instant::now();
        assert_eq!(index(c.pick(now, &[5, 2, 7], None)), 1);
        assert_eq!(index(c.pick(now, &[0, 2, 7], None)), 0);
        assert_eq!(index(c.pick(now, &[3, 3, 1], None)), 2);
    }

    #[test]
    fn ties_go_round_robin() {
        let mut c = choice(3, 1);
        let now = Instant::now();
        let picks: Vec<usize> = (0..6)
            .map(|_| index(c.pick(now, &[0, 0, 0], None)))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    /// Leases counted as they are handed out spread N clients N/2 each over two upstreams.
    #[test]
    fn counting_each_pick_spreads_evenly() {
        let mut c = choice(2, 1);
        let now = Instant::now();
        let mut active = [0u64, 0];
        for _ in 0..100 {
            active[index(c.pick(now, &active, None))] += 1;
        }
        assert_eq!(active, [50, 50]);
    }

    #[test]
    fn exclude_leaves_the_other_or_nothing() {
        let mut c = choice(2, 1);
        let now = Instant::now();
        assert_eq!(index(c.pick(now, &[0, 9], Some(0))), 1);
        let mut single = choice(1, 1);
        assert_eq!(single.pick(now, &[0], Some(0)), None);
        assert_eq!(choice(0, 1).pick(now, &[], None), None);
    }

    #[test]
    fn max_fails_consecutive_failures_mark_it_down_and_a_success_resets_the_count() {
        let mut c = choice(2, 3);
        let now = Instant::now();
        assert_eq!(c.failed(0, now, false), Change::Unchanged);
        assert_eq!(c.failed(0, now, false), Change::Unchanged);
        assert_eq!(c.succeeded(0), Change::Unchanged);
        assert_eq!(c.failed(0, now, false), Change::Unchanged);
        assert_eq!(c.failed(0, now, false), Change::Unchanged);
        assert!(c.is_up(0));
        assert_eq!(
            c.failed(0, now, false),
            Change::WentDown { backoff: SECOND }
        );
        assert!(!c.is_up(0));
    }

    #[test]
    fn a_down_upstream_gets_no_clients_until_its_backoff_ends() {
        let mut c = choice(2, 1);
        let now = Instant::now();
        c.failed(0, now, false);
        // Even far less loaded, it is skipped.
        for _ in 0..5 {
            assert_eq!(
                c.pick(now, &[0, 100], None),
                Some(Pick {
                    index: 1,
                    probe: false
                })
            );
        }
        let later = now + SECOND;
        assert_eq!(
            c.pick(later, &[0, 100], None),
            Some(Pick {
                index: 0,
                probe: true
            })
        );
        // One probe at a time: the others keep away while it is out.
        assert_eq!(index(c.pick(later, &[0, 100], None)), 1);
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff_up_to_the_cap_and_a_success_brings_it_up() {
        let mut c = choice(2, 1);
        let mut now = Instant::now();
        assert_eq!(
            c.failed(0, now, false),
            Change::WentDown { backoff: SECOND }
        );
        for expected in [2, 4, 4] {
            let backoff = c.health[0].down.unwrap().backoff;
            now += backoff;
            assert_eq!(
                c.pick(now, &[0, 1], None),
                Some(Pick {
                    index: 0,
                    probe: true
                })
            );
            assert_eq!(c.failed(0, now, true), Change::Unchanged);
            assert_eq!(c.health[0].down.unwrap().backoff, expected * SECOND);
            // Not before the doubled backoff ends.
            assert_eq!(index(c.pick(now + SECOND, &[0, 1], None)), 1);
        }
        now += 4 * SECOND;
        assert_eq!(
            c.pick(now, &[0, 1], None),
            Some(Pick {
                index: 0,
                probe: true
            })
        );
        assert_eq!(c.succeeded(0), Change::CameUp);
        assert!(c.is_up(0));
        // Down again later: the backoff starts over.
        assert_eq!(
            c.failed(0, now, false),
            Change::WentDown { backoff: SECOND }
        );
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_client_probe() {
        let mut c = choice(2, 1);
        let now = Instant::now();
        c.failed(0, now, false);
        let later = now + SECOND;
        assert!(c.pick(later, &[0, 5], None).unwrap().probe);
        c.probe_abandoned(0);
        assert_eq!(
            c.pick(later, &[0, 5], None),
            Some(Pick {
                index: 0,
                probe: true
            })
        );
    }

    #[test]
    fn every_upstream_down_still_tries_the_one_whose_backoff_ends_first() {
        let mut c = choice(3, 1);
        let now = Instant::now();
        c.failed(1, now, false);
        c.failed(2, now + SECOND / 2, false);
        c.failed(0, now + SECOND / 4, false);
        let pick = c.pick(now + SECOND / 2, &[0, 0, 0], None);
        assert_eq!(
            pick,
            Some(Pick {
                index: 1,
                probe: false
            })
        );
        // The retry goes to the next earliest.
        assert_eq!(index(c.pick(now + SECOND / 2, &[0, 0, 0], Some(1))), 0);
        // A failure of such a try changes nothing; a success brings it up at once.
        assert_eq!(c.failed(1, now + SECOND / 2, false), Change::Unchanged);
        assert_eq!(c.health[1].down.unwrap().backoff, SECOND);
        assert_eq!(c.succeeded(1), Change::CameUp);
    }

    #[test]
    fn connects_that_started_before_it_went_down_do_not_log_it_down_again() {
        let mut c = choice(2, 1);
        let now = Instant::now();
        assert!(matches!(c.failed(0, now, false), Change::WentDown { .. }));
        assert_eq!(c.failed(0, now, false), Change::Unchanged);
        assert_eq!(c.failed(0, now, false), Change::Unchanged);
    }
}
