//! A revalidation pass: every live connection's client certificate checked against one
//! client-certificate policy (the one a reload just installed, or the current one on demand),
//! those that fail closed as `credentials_revoked`.
//!
//! The pass is a value shared (`Arc`) by the message each connection receives: each connection
//! checks its own chain on its own worker, in its own actor (the registries only fan the
//! message out, so they keep answering whatever the pass costs), and counts its verdict here.
//! When the last connection has dropped its share, the pass is over: its `Drop` writes the one
//! log line and hands the report to whoever waits for it. A connection that is gone before it
//! reads its message drops its share unread, which counts as nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Message;
use rustls::pki_types::UnixTime;
use slog::Logger;
use tokio::sync::oneshot;

use crate::supervision::stats::Stats;
use crate::tls::client_policy::{ClientPolicy, PeerChain};

/// What one revalidation pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevalidationReport {
    /// Open connections that pass the policy (with their certificate, or without one where the
    /// policy does not require one): untouched.
    pub kept: u64,
    /// Open connections the policy now refuses: asked to close gracefully, reason
    /// `credentials_revoked`.
    pub closed: u64,
    /// From the start of the pass to the last connection's verdict (the closes themselves,
    /// `close_notify` and linger, go on after it).
    pub elapsed: Duration,
    /// False if some connection had not given its verdict when the caller stopped waiting (a
    /// worker stuck in a protocol callback): the counts are those given by then.
    pub complete: bool,
}

/// What started a pass, in its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A reload changed the client-certificate policy.
    Reload,
    /// Asked for (`ServerHandle::revalidate`, `POST /revalidate`).
    Demand,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Reload => "reload",
            Trigger::Demand => "demand",
        }
    }
}

/// The verdicts given so far; shared with the caller waiting for the report, which reads
/// them if it stops waiting first.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    kept: AtomicU64,
    closed: AtomicU64,
}

impl Tally {
    fn report(&self, elapsed: Duration, complete: bool) -> RevalidationReport {
        RevalidationReport {
            kept: self.kept.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            elapsed,
            complete,
        }
    }
}

/// Registry (a revalidation pass) → `Connection`: check your client's certificate chain
/// against the pass's policy, as a new handshake would. An open connection counts its verdict
/// in the pass and, if it fails, closes gracefully as `credentials_revoked`; one not open (a
/// handshake under way checks the current policy as it ends; one closing is going anyway) gives
/// none. Dropping the message is the connection's part of ending the pass.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub(crate) struct Revalidate(pub Arc<RevalidationPass>);

/// The verdicts of one pass: by the service's place in the pass and the chain's digest.
type Verdicts = HashMap<(usize, [u8; 32]), Result<(), String>>;

/// One pass, shared by every connection asked (see the module docs).
pub(crate) struct RevalidationPass {
    /// The services it checks, by label, each with its policy (`None`: that service verifies
    /// no client, so each of its connections passes). A connection of a service not listed
    /// has nothing to answer.
    policies: Vec<(String, Option<Arc<ClientPolicy>>)>,
    /// One verification time for the whole pass, so that a verdict can be reused.
    now: UnixTime,
    started: Instant,
    trigger: Trigger,
    tally: Arc<Tally>,
    /// Each distinct chain is verified once per pass and service: connections of one client
    /// (a pool) present the same chain, and a verdict depends only on the chain, the policy
    /// (the service's, by its place in `policies`) and `now`.
    verdicts: Mutex<Verdicts>,
    stats: Arc<Stats>,
    log: Logger,
    done: Option<oneshot::Sender<RevalidationReport>>,
}

impl RevalidationPass {
    /// A pass against `policies` (by service label), timed from now; its report goes to
    /// `done` as it ends.
    pub(crate) fn new(
        policies: Vec<(String, Option<Arc<ClientPolicy>>)>,
        trigger: Trigger,
        stats: Arc<Stats>,
        log: Logger,
        done: Option<oneshot::Sender<RevalidationReport>>,
    ) -> RevalidationPass {
        RevalidationPass {
            policies,
            now: UnixTime::now(),
            started: Instant::now(),
            trigger,
            tally: Arc::default(),
            verdicts: Mutex::default(),
            stats,
            log,
            done,
        }
    }

    /// The running counts, for a caller that may stop waiting before the pass ends.
    pub(crate) fn tally(&self) -> Arc<Tally> {
        Arc::clone(&self.tally)
    }

    /// Where the pass keeps service `label`'s policy, if it checks that service.
    pub(crate) fn service(&self, label: &str) -> Option<usize> {
        self.policies.iter().position(|(l, _)| l == label)
    }

    /// Whether this pass checks the service at `service` (from [`RevalidationPass::service`])
    /// against the policy that service has now, `current`: a pass overtaken by a later reload
    /// is not (that reload runs a pass of its own), and a connection skips it rather than close
    /// on a policy already replaced (a CRL put in and rolled back at once).
    pub(crate) fn is_for(&self, service: usize, current: Option<&ClientPolicy>) -> bool {
        !ClientPolicy::differ(self.policies[service].1.as_deref(), current)
    }

    /// Whether a new handshake of the service at `service` would admit the client of `chain`
    /// (`None`: no certificate), and if not, why; counted as kept or closed.
    pub(crate) fn check(&self, service: usize, chain: Option<&PeerChain>) -> Result<(), String> {
        let verdict = match (&self.policies[service].1, chain) {
            (None, _) => Ok(()),
            (Some(policy), None) => policy.admits(None, self.now).map_err(|e| e.to_string()),
            (Some(policy), Some(chain)) => {
                let key = (service, chain.digest());
                let cached = self.verdicts_lock().get(&key).cloned();
                cached.unwrap_or_else(|| {
                    let verdict = policy
                        .admits(Some(chain), self.now)
                        .map_err(|e| e.to_string());
                    self.verdicts_lock().insert(key, verdict.clone());
                    verdict
                })
            }
        };
        let counter = match verdict {
            Ok(()) => &self.tally.kept,
            Err(_) => &self.tally.closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.stats.revalidated(verdict.is_ok());
        verdict
    }

    fn verdicts_lock(&self) -> std::sync::MutexGuard<'_, Verdicts> {
        // Only inserts and lookups happen under it: a poisoned map is still a valid cache.
        self.verdicts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pass is over: every connection asked has given its verdict or is gone.
impl Drop for RevalidationPass {
    fn drop(&mut self) {
        let report = self.tally.report(self.started.elapsed(), true);
        slog::info!(self.log, "live connections revalidated";
            "trigger" => self.trigger.as_str(),
            "kept" => report.kept,
            "closed" => report.closed,
            "duration_ms" => report.elapsed.as_secs_f64() * 1000.0);
        if let Some(done) = self.done.take() {
            let _ = done.send(report);
        }
    }
}

/// Waits for the report of a pass (its `done` receiver and tally), at most `within`; a pass
/// still running then is reported with the verdicts given so far, `complete: false`.
pub(crate) async fn report_within(
    done: oneshot::Receiver<RevalidationReport>,
    tally: Arc<Tally>,
    started: Instant,
    within: Duration,
) -> RevalidationReport {
    match tokio::time::timeout(within, done).await {
        Ok(Ok(report)) => report,
        _ => tally.report(started.elapsed(), false),
    }
}
