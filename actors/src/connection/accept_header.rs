//! Reading the PROXY protocol header of a load balancer in front, before the TLS handshake
//! (`ServerConfig::accept_proxy`): the client's original address then stands for the peer in
//! everything that follows (logs, `ConnInfo`, descriptions, the header sent upstream, and the
//! per-IP limits, claimed here for a balancer's socket).

use actix::prelude::*;
use tokio::net::TcpStream;

use super::phase::Phase;
use super::Connection;
use crate::edge::accept_proxy::{read_header, Original};
use crate::supervision::dispose_reason::DisposeReason;

impl Connection {
    /// Reads the header first if this client's source must send one, then starts the
    /// handshake; a header that is invalid, cut short or late disposes the connection as
    /// `proxy_header_invalid`. The handshake slot is held meanwhile, so silent sockets count
    /// against the handshake limits exactly as silent TLS clients do.
    pub(super) fn start_after_proxy_header(&mut self, tcp: TcpStream, ctx: &mut Context<Self>) {
        let expected = match &self.env.config.accept_proxy {
            Some(accept) if accept.expects_header_from(self.peer.ip()) => {
                Some((accept.versions, accept.timeout))
            }
            _ => None,
        };
        let Some((versions, limit)) = expected else {
            return self.start_handshake(tcp, ctx);
        };
        let reading = async move {
            let mut tcp = tcp;
            let header = tokio::time::timeout(limit, read_header(&mut tcp, versions)).await;
            (tcp, header)
        };
        ctx.spawn(reading.into_actor(self).map(|(tcp, header), act, ctx| {
            // Closed meanwhile (a shutdown, a kill): nothing more to start.
            if !matches!(act.phase, Phase::Handshaking { .. }) {
                return;
            }
            let error = match header {
                Ok(Ok(Original::Client(original))) => {
                    log_conn!(debug, act, "PROXY header read";
                        "original" => %original, "balancer" => %act.peer);
                    act.peer = original;
                    return act.start_as_client(tcp, ctx);
                }
                // The balancer's own connection (a health check): it counts as the balancer.
                Ok(Ok(Original::Local)) => return act.start_as_client(tcp, ctx),
                Ok(Err(e)) => e.to_string(),
                Err(_elapsed) => "timed out".to_string(),
            };
            log_conn!(info, act, "PROXY header invalid"; "error" => error);
            act.begin_close(DisposeReason::ProxyHeaderInvalid, ctx);
        }));
    }

    /// Claims the per-IP slots of the peer (the original client, or the balancer for its own
    /// connections), which the acceptor left to this point, then starts the handshake; a
    /// client at one of its limits is disposed as `per_ip_limit` instead.
    fn start_as_client(&mut self, tcp: TcpStream, ctx: &mut Context<Self>) {
        let handshake = match &mut self.phase {
            Phase::Handshaking { slot } => Some(slot),
            _ => None,
        };
        let admitted = self.env.limits.claim_for_original(
            self.peer.ip(),
            self.registration.slot_mut(),
            handshake,
        );
        if !admitted {
            log_conn!(debug, self, "rejected: per-IP limit");
            return self.begin_close(DisposeReason::PerIpLimit, ctx);
        }
        self.start_handshake(tcp, ctx)
    }
}
