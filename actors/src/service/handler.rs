//! `Handler`: what a service does with each connection's decrypted bytes.

use std::sync::Arc;

use crate::protocol::Protocol;
use crate::upstream::config::server_name_for;
use crate::upstream::pool::UpstreamPool;

/// What a service does with each connection's bytes.
pub(crate) enum Handler {
    /// Hand them to a session of this protocol, write back its replies.
    Sessions(Arc<dyn Protocol>),
    /// Forward them to an upstream of the pool (its group), and the upstream's bytes back.
    Proxy(Arc<UpstreamPool>),
    /// Do not terminate TLS: the ClientHello is read (for its SNI), then the client's bytes,
    /// that hello first, go untouched to a plaintext-TCP upstream of the pool (a TLS server
    /// itself), and the upstream's bytes back.
    Passthrough(Arc<UpstreamPool>),
}

impl Handler {
    /// Whether each upstream connection starts with a PROXY protocol header.
    pub(crate) fn sends_proxy_header(&self) -> bool {
        self.upstreams()
            .is_some_and(|pool| pool.config().proxy_header.is_some())
    }

    /// The upstream group its connections are forwarded to, if they are.
    pub(crate) fn upstreams(&self) -> Option<&Arc<UpstreamPool>> {
        match self {
            Handler::Sessions(_) => None,
            Handler::Proxy(pool) | Handler::Passthrough(pool) => Some(pool),
        }
    }

    /// The upstream group, to give it counters before it serves.
    pub(crate) fn upstreams_mut(&mut self) -> Option<&mut Arc<UpstreamPool>> {
        match self {
            Handler::Sessions(_) => None,
            Handler::Proxy(pool) | Handler::Passthrough(pool) => Some(pool),
        }
    }

    /// Whether it proxies to TLS upstreams: what a plaintext listener's service must do
    /// (client mode: the hop to the upstream is the one to encrypt).
    pub(crate) fn connects_over_tls(&self) -> bool {
        matches!(self, Handler::Proxy(pool) if pool.config().tls.is_some())
    }

    /// Whether its clients' TLS goes through untouched rather than ending here.
    pub(crate) fn passes_through(&self) -> bool {
        matches!(self, Handler::Passthrough(_))
    }

    /// Whether it can serve: a forwarding handler needs an upstream; a proxy's TLS upstreams
    /// each need a name to verify their certificates under; a passthrough forwards the client's
    /// own TLS, so its upstreams are plaintext (our TLS around it would hand the upstream a
    /// record layer inside a record layer). The one check of a handler, for the default
    /// service's (`ServerBuilder`) and a named service's (`Service::proxy`, `::passthrough`).
    pub(crate) fn check(&self) -> Result<(), String> {
        let Some(pool) = self.upstreams() else {
            return Ok(());
        };
        let config = pool.config();
        if config.upstreams.is_empty() {
            return Err(format!("{} needs an upstream", self.protocol_name()));
        }
        match (self, &config.tls) {
            (Handler::Passthrough(_), Some(_)) => Err(
                "passthrough forwards the client's own TLS: its upstreams are plaintext TCP \
                 (no tls://, no ProxyConfig::tls)"
                    .into(),
            ),
            (Handler::Proxy(_), Some(tls)) => config
                .upstreams
                .iter()
                .try_for_each(|upstream| server_name_for(tls, upstream).map(|_| ())),
            _ => Ok(()),
        }
    }

    /// The protocol's name for logs (`proxy` for a proxy).
    pub(crate) fn protocol_name(&self) -> &'static str {
        match self {
            Handler::Sessions(protocol) => protocol.name(),
            Handler::Proxy(_) => "proxy",
            Handler::Passthrough(_) => "passthrough",
        }
    }
}
