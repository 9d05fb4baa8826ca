//! A connection's client credentials while it is open (with `revalidate_live`, the default):
//! checked again when the client-certificate policy changes (a revalidation pass, or a reload
//! that landed during this connection's own handshake), and watched for expiry. Either ending
//! is a graceful close through [`Connection::close`], so through the stop hook's one
//! `Dispose`: `credentials_revoked` or `client_certificate_expired`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use rustls::pki_types::UnixTime;

use crate::connection::actor::{log_conn, Connection};
use crate::connection::phase::Phase;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::revalidation::RevalidationPass;
use crate::tls::client_policy::{ClientPolicy, PeerChain};

/// The longest single wait of the expiry timer; a later `notAfter` is reached by waiting again
/// (tokio's timers hold about two years, a certificate may be valid for ten).
const LONGEST_WAIT: Duration = Duration::from_secs(24 * 3600);

impl Connection {
    /// The handshake just ended: whether the current policy refuses this client although
    /// the handshake admitted it. That happens when the handshake did not verify the chain
    /// with the current policy: a reload landed during the handshake (its pass missed this
    /// connection, which was not open yet), or the session was resumed (rustls does not
    /// verify a resumed client's certificate again, and tickets outlive reloads). Asked
    /// before the connection opens its session or upstream: a refused client gets neither.
    pub(super) fn refused_after_handshake(
        &self,
        chain: Option<&PeerChain>,
        verified_by: Option<&ClientPolicy>,
        resumed: bool,
    ) -> bool {
        if !self.env.config.revalidate_live {
            return false;
        }
        // Its service as the current table has it (one gone since keeps the policy it had).
        let Some(own) = self.service.as_ref() else {
            return false;
        };
        let table = self.env.tls.services();
        let current = table.by_label(own.label()).unwrap_or(own);
        let policy = current.tls().client_policy();
        if !resumed && !ClientPolicy::differ(verified_by, policy.map(|p| &**p)) {
            return false;
        }
        let Some(policy) = policy else {
            return false;
        };
        match policy.admits(chain, UnixTime::now()) {
            Ok(()) => false,
            Err(e) => {
                log_conn!(info, self, "client refused by the current policy after its handshake";
                    "resumed" => resumed, "error" => %e);
                true
            }
        }
    }

    /// The connection is open: arms the expiry timer of its client certificate, if it
    /// presented one (and `revalidate_live` kept it).
    pub(super) fn watch_credentials_expiry(&mut self, ctx: &mut Context<Self>) {
        let not_after = (self.phase.established())
            .and_then(|e| e.peer_chain.as_ref())
            .and_then(|c| c.not_after_unix());
        if let Some(not_after) = not_after {
            self.arm_expiry(not_after, ctx);
        }
    }

    /// A revalidation pass asks: would a new handshake of its service admit this client now?
    /// An open connection answers (its verdict counted in the pass) and closes if not; one
    /// still in its handshake or already closing has nothing to answer.
    pub(super) fn revalidate(&mut self, pass: &Arc<RevalidationPass>, ctx: &mut Context<Self>) {
        let Phase::Open(open) = &self.phase else {
            return;
        };
        // Checked against its own service's policy: a pass that does not check its service
        // (another service's policy changed), or one its service has left since (the name
        // moved away), has nothing to say to it.
        let Some(label) = self.service.as_ref().map(|s| s.label()) else {
            return;
        };
        let Some(at) = pass.service(label) else {
            return;
        };
        let table = self.env.tls.services();
        let Some(current) = table.by_label(label) else {
            return;
        };
        if !pass.is_for(at, current.tls().client_policy().map(|p| &**p)) {
            return;
        }
        let chain = open.established.peer_chain.clone();
        if let Err(why) = pass.check(at, chain.as_deref()) {
            log_conn!(info, self, "credentials revoked: closing"; "error" => why);
            self.close(DisposeReason::CredentialsRevoked, ctx);
        }
    }

    /// Closes the connection at `not_after` (Unix seconds), the moment its client certificate
    /// expires: a timer per connection with a client certificate, none for the others.
    fn arm_expiry(&mut self, not_after: i64, ctx: &mut Context<Self>) {
        let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
        let remaining = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let wait = remaining.min(LONGEST_WAIT);
        // The timer goes with the actor: a connection that ends first cancels it by ending.
        ctx.run_later(wait, move |act, ctx| match wait < remaining {
            true => act.arm_expiry(not_after, ctx),
            false => act.certificate_expired(ctx),
        });
    }

    /// The expiry timer fired: an open connection closes; one closing already goes on.
    fn certificate_expired(&mut self, ctx: &mut Context<Self>) {
        if let Phase::Open(_) = self.phase {
            log_conn!(info, self, "client certificate expired: closing");
            self.close(DisposeReason::ClientCertificateExpired, ctx);
        }
    }
}
