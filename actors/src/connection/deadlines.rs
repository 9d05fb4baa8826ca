//! The deadlines of a connection's life beside the idle timer (`machine.rs`): its longest
//! life (`max_lifetime`, spread by ±10 % per connection) and, for a proxy, the time the other
//! direction gets once one side has finished (`half_close_timeout`). Each is one actix timer,
//! armed once; a connection that ends first takes it with it (an actor's timers are dropped
//! when it stops), and one that fires on a connection already past what it guards does
//! nothing: phases and proxy flows only move forward.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::connection::actor::{log_conn, Connection};
use crate::connection::phase::{Open, OpenService, Phase, ProxyFlow, Proxying};
use crate::supervision::conn_id::ConnId;
use crate::supervision::dispose_reason::DisposeReason;

/// How far a connection's lifetime is spread either way, in percent.
const SPREAD_PERCENT: u64 = 10;

impl Connection {
    /// Arms the lifetime limit in force, if any, counted from the accept (registration): the
    /// server's at the start, then again the service's own once its ClientHello chose one
    /// with a lifetime of its own (the timer armed before is cancelled: one timer at a time).
    /// When it fires, the connection closes gracefully as for any other reason:
    /// `close_notify` and a FIN once open, at once during the handshake (there is no TLS
    /// session yet to close).
    pub(super) fn arm_max_lifetime(&mut self, ctx: &mut Context<Self>) {
        if let Some(earlier) = self.lifetime_timer.take() {
            ctx.cancel_future(earlier);
        }
        let Some(lifetime) = self.max_lifetime() else {
            return;
        };
        let lifetime = spread(lifetime, self.id, &self.env.lifetime_spread);
        let left = (self.registered_at + lifetime).saturating_duration_since(Instant::now());
        let timer = ctx.run_later(left, move |act, ctx| {
            if matches!(act.phase, Phase::Closing(_) | Phase::Disposed) {
                return;
            }
            log_conn!(debug, act, "max lifetime reached";
                "lifetime_ms" => lifetime.as_millis() as u64);
            act.close(DisposeReason::MaxLifetime, ctx);
        });
        self.lifetime_timer = Some(timer);
    }

    /// One side of a proxied connection has just finished: the other gets
    /// `half_close_timeout` to finish too, or the connection closes.
    pub(super) fn arm_half_close_deadline(&mut self, ctx: &mut Context<Self>) {
        let Some(limit) = self.half_close_timeout() else {
            return;
        };
        ctx.run_later(limit, |act, ctx| {
            let Phase::Open(Open {
                service: OpenService::Proxy(Proxying { flow, .. }),
                ..
            }) = &act.phase
            else {
                return;
            };
            let waiting_for = match flow {
                ProxyFlow::ClientFinished { .. } => "upstream",
                ProxyFlow::UpstreamFinished { .. } => "client",
                // Both finished (the connection stops once our close_notify is out), or
                // both still sending: nothing is half-closed.
                ProxyFlow::Finished { .. } | ProxyFlow::Both { .. } => return,
            };
            log_conn!(debug, act, "half-close timeout"; "waiting_for" => waiting_for);
            act.close(DisposeReason::HalfCloseTimeout, ctx);
        });
    }
}

/// `lifetime` spread by up to ±[`SPREAD_PERCENT`] for connection `id`: uniform over the range,
/// from a keyed hash of the id (`seed` is random per server), so connections accepted
/// together get lifetimes spread over the whole range without a random-number generator
/// per connection.
pub(super) fn spread(lifetime: Duration, id: ConnId, seed: &RandomState) -> Duration {
    // 53 random bits: a fraction in [0, 1) with a double's full precision.
    let fraction = (seed.hash_one(id.0) >> 11) as f64 / (1u64 << 53) as f64;
    let span = SPREAD_PERCENT as f64 / 100.0;
    lifetime.mul_f64(1.0 - span + 2.0 * span * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_spread_over_the_whole_range_and_never_beyond() {
        let seed = RandomState::new();
        let lifetime = Duration::from_secs(100);
        let spread: Vec<Duration> = (0..10_000)
            .map(|id| spread(lifetime, ConnId(id), &seed))
            .collect();
        let (low, high) = (Duration::from_secs(90), Duration::from_secs(110));
        assert!(spread.iter().all(|d| (low..=high).contains(d)));
        // Each tenth of the range gets about a tenth of the connections.
        for tenth in 0..10 {
            let from = low + Duration::from_secs(2 * tenth);
            let to = from + Duration::from_secs(2);
            let n = spread.iter().filter(|d| (from..to).contains(*d)).count();
            assert!((700..1_300).contains(&n), "{n} in [{from:?}, {to:?})");
        }
        // The same id, the same lifetime (the timer is armed once; this is only its input).
        assert_eq!(
            super::spread(lifetime, ConnId(7), &seed),
            super::spread(lifetime, ConnId(7), &seed)
        );
    }
}
