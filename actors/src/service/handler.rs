//! `Handler`: what a service does with each connection's decrypted bytes.

use std::sync::Arc;

use crate::protocol::Protocol;
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

    /// Whether its clients' TLS goes through untouched rather than ending here.
    pub(crate) fn passes_through(&self) -> bool {
        matches!(self, Handler::Passthrough(_))
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
