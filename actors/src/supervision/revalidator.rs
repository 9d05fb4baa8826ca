//! `Revalidator`: starts revalidation passes over a server's registries, when a reload changes
//! the client-certificate policy and when asked (`ServerHandle::revalidate`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use slog::Logger;
use tokio::sync::oneshot;

use crate::service::table::ServiceTable;
use crate::supervision::registry::{Registered, Registries};
use crate::supervision::revalidation::{
    report_within, Revalidate, RevalidationPass, RevalidationReport, Tally, Trigger,
};
use crate::supervision::stats::Stats;

/// How long [`Revalidator::run`] waits for the last verdict: a pass over 10,000 connections
/// takes a fraction of a second; only a worker stuck in a protocol callback reaches this.
pub(crate) const REVALIDATE_WAIT: Duration = Duration::from_secs(30);

/// What a pass needs of its server. It holds no `TlsReloader`: the reloader holds it (its
/// policy-change hook), and the configuration to check against is given to each pass.
pub(crate) struct Revalidator<C: Registered> {
    registries: Registries<C>,
    stats: Arc<Stats>,
    log: Logger,
    /// `ServerConfig::revalidate_live`: off, no pass runs (and connections keep no chain).
    enabled: bool,
}

impl<C: Registered> Revalidator<C> {
    pub(crate) fn new(
        registries: Registries<C>,
        stats: Arc<Stats>,
        log: Logger,
        enabled: bool,
    ) -> Self {
        Revalidator {
            registries,
            stats,
            log,
            enabled,
        }
    }

    /// Starts a pass against the client-certificate policies of `table`'s services (of those
    /// labelled in `only`, if given: the ones a reload changed) and returns at once (what a
    /// reload does: it may run on a thread of its own, with no runtime). Nothing when off.
    pub(crate) fn start(&self, table: &ServiceTable, only: Option<Vec<String>>, trigger: Trigger) {
        if self.enabled {
            self.pass(table, only, trigger, None);
        }
    }

    /// Runs a pass against every service's policy in `table` and waits for its report, at most
    /// [`REVALIDATE_WAIT`]. `None` when live revalidation is off.
    pub(crate) async fn run(&self, table: &ServiceTable) -> Option<RevalidationReport> {
        if !self.enabled {
            return None;
        }
        let (done, report) = oneshot::channel();
        let started = Instant::now();
        let tally = self.pass(table, None, Trigger::Demand, Some(done));
        Some(report_within(report, tally, started, REVALIDATE_WAIT).await)
    }

    fn pass(
        &self,
        table: &ServiceTable,
        only: Option<Vec<String>>,
        trigger: Trigger,
        done: Option<oneshot::Sender<RevalidationReport>>,
    ) -> Arc<Tally> {
        let mut policies = table.policies();
        if let Some(only) = only {
            policies.retain(|(label, _)| only.contains(label));
        }
        let pass = RevalidationPass::new(
            policies,
            trigger,
            Arc::clone(&self.stats),
            self.log.clone(),
            done,
        );
        let tally = pass.tally();
        // Our share of the pass goes as this returns: the connections hold the rest.
        self.registries.revalidate_all(Revalidate(Arc::new(pass)));
        tally
    }
}
