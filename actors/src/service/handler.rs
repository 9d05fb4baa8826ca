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
}

impl Handler {
    /// Whether each upstream connection starts with a PROXY protocol header.
    pub(crate) fn sends_proxy_header(&self) -> bool {
        matches!(self, Handler::Proxy(pool) if pool.config().proxy_header.is_some())
    }

    /// The protocol's name for logs (`proxy` for a proxy).
    pub(crate) fn protocol_name(&self) -> &'static str {
        match self {
            Handler::Sessions(protocol) => protocol.name(),
            Handler::Proxy(_) => "proxy",
        }
    }
}
