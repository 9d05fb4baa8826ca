//! Reading the PROXY protocol header of a load balancer in front, before the TLS handshake
//! (`ServerConfig::accept_proxy`): the client's original address then stands for the peer in
//! everything that follows (logs, `ConnInfo`, descriptions, the header sent upstream).

use actix::prelude::*;
use tokio::net::TcpStream;

use super::phase::Phase;
use super::Connection;
use crate::accept_proxy::{read_header, Original};
use crate::DisposeReason;

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
                    return act.start_handshake(tcp, ctx);
                }
                Ok(Ok(Original::Local)) => return act.start_handshake(tcp, ctx),
                Ok(Err(e)) => e.to_string(),
                Err(_elapsed) => "timed out".to_string(),
            };
            log_conn!(info, act, "PROXY header invalid"; "error" => error);
            act.begin_close(DisposeReason::ProxyHeaderInvalid, ctx);
        }));
    }
}
