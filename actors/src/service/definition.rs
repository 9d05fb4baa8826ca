//! `Service`: a set of names with its own TLS (certificates, client-certificate policy, ALPN,
//! minimum version), its protocol and its upstream group.

use std::sync::Arc;

use crate::protocol::Protocol;
use crate::service::counts::{ServiceCount, ServiceSeat};
use crate::service::error::ServiceError;
use crate::service::handler::Handler;
use crate::service::limits::ServiceLimits;
use crate::service::names::ServiceName;
use crate::tls::source::LoadedTls;
use crate::upstream::config::ProxyConfig;
use crate::upstream::pool::UpstreamPool;

/// The label of the service without names: the one a ClientHello without SNI, or with a name
/// no service has, goes to.
pub const DEFAULT_SERVICE: &str = "default";

/// One service: the names it answers to, its own loaded TLS configuration (a
/// `rustls::ServerConfig` of its own), and what it does with the bytes (a protocol's
/// sessions, or a proxy to its upstream group). Built by [`Service::sessions`] or
/// [`Service::proxy`], served in a [`ServiceTable`](crate::ServiceTable).
pub struct Service {
    /// Its first name as written, or `default`: what logs and metrics call it.
    label: String,
    names: Vec<ServiceName>,
    tls: Arc<LoadedTls>,
    pub(crate) handler: Handler,
    /// Its own limits over the server's (see [`ServiceLimits`]).
    limits: ServiceLimits,
    /// Its connection figures; set to the server's figures of its label when a table is
    /// installed (a placeholder until then).
    pub(crate) count: Arc<ServiceCount>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("label", &self.label)
            .field("protocol", &self.handler.protocol_name())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service answering to `names` (empty: the default service) over `tls` with sessions
    /// of `protocol`. A name is exact or a `*.` wildcard (RFC 6125); an invalid one is refused.
    pub fn sessions(
        names: &[String],
        tls: LoadedTls,
        protocol: impl Protocol,
    ) -> Result<Service, ServiceError> {
        Service::new(names, tls, Handler::Sessions(Arc::new(protocol)))
    }

    /// A service answering to `names` over `tls` that proxies to `proxy`'s upstream group
    /// (its own pool: health, retry, PROXY header and TLS to the upstreams). Refused without
    /// an upstream, or with a TLS upstream that has no name to verify.
    pub fn proxy(
        names: &[String],
        tls: LoadedTls,
        proxy: ProxyConfig,
    ) -> Result<Service, ServiceError> {
        Service::forwarding(
            names,
            tls,
            Handler::Proxy(Arc::new(UpstreamPool::new(proxy))),
        )
    }

    /// A service answering to `names` that does not terminate TLS (nginx's `ssl_preread`,
    /// haproxy's `req.ssl_sni`): its clients' bytes, the ClientHello first, go untouched to an
    /// upstream of `proxy`, itself the TLS server. `tls` is never served to its clients.
    /// Refused without an upstream, or with TLS to the upstreams (a record layer inside a
    /// record layer).
    pub fn passthrough(
        names: &[String],
        tls: LoadedTls,
        proxy: ProxyConfig,
    ) -> Result<Service, ServiceError> {
        let handler = Handler::Passthrough(Arc::new(UpstreamPool::new(proxy)));
        Service::forwarding(names, tls, handler)
    }

    /// A service forwarding through `handler`, once the handler's own check passes.
    fn forwarding(
        names: &[String],
        tls: LoadedTls,
        handler: Handler,
    ) -> Result<Service, ServiceError> {
        handler
            .check()
            .map_err(|e| ServiceError(format!("service {}: {e}", label_of(names))))?;
        Service::new(names, tls, handler)
    }

    pub(crate) fn new(
        names: &[String],
        tls: LoadedTls,
        handler: Handler,
    ) -> Result<Service, ServiceError> {
        let label = label_of(names);
        let names = names
            .iter()
            .map(|name| ServiceName::parse(name, &label))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Service {
            label,
            names,
            tls: Arc::new(tls),
            handler,
            limits: ServiceLimits::default(),
            count: Arc::default(),
        })
    }

    /// The same service with limits of its own (see [`ServiceLimits`]); refused out of
    /// their bounds ([`ServiceLimits::check`]), the service named.
    pub fn with_limits(self, limits: ServiceLimits) -> Result<Service, ServiceError> {
        limits
            .check()
            .map_err(|e| ServiceError(format!("service {}: {e}", self.label)))?;
        Ok(Service { limits, ..self })
    }

    /// Its own limits (each left at its default is the server's).
    pub fn limits(&self) -> &ServiceLimits {
        &self.limits
    }

    /// A seat among its live connections for one more client, or `None` when it has
    /// `max_connections` live already (the refusal counted).
    pub(crate) fn admit(&self) -> Option<ServiceSeat> {
        self.count.seat_within(self.limits.max_connections)
    }

    /// Its first name as written, or `default` for the default service.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its names, as a configuration writes them (lowercase, `*.` for a wildcard).
    pub fn names(&self) -> Vec<String> {
        self.names.iter().map(ServiceName::shown).collect()
    }

    /// Its TLS configuration.
    pub fn tls(&self) -> &Arc<LoadedTls> {
        &self.tls
    }

    /// `echo`, `proxy`, or the name of the protocol its sessions speak.
    pub fn protocol(&self) -> &'static str {
        self.handler.protocol_name()
    }

    /// Its names that no certificate it serves covers (a client asking for one would refuse
    /// the certificate): worth a warning, not a refusal (a certificate may be on its way).
    pub fn uncovered_names(&self) -> Vec<String> {
        self.names
            .iter()
            .map(ServiceName::shown)
            .filter(|name| !self.tls.covers(name))
            .collect()
    }

    pub(crate) fn parsed_names(&self) -> &[ServiceName] {
        &self.names
    }

    /// The same service over another TLS configuration (what a reload of the default's TLS
    /// alone makes).
    pub(crate) fn with_tls(&self, tls: LoadedTls) -> Service {
        Service {
            label: self.label.clone(),
            names: self.names.clone(),
            tls: Arc::new(tls),
            handler: match &self.handler {
                Handler::Sessions(protocol) => Handler::Sessions(Arc::clone(protocol)),
                Handler::Proxy(pool) => Handler::Proxy(Arc::clone(pool)),
                Handler::Passthrough(pool) => Handler::Passthrough(Arc::clone(pool)),
            },
            limits: self.limits,
            count: Arc::clone(&self.count),
        }
    }
}

/// The label of a service with these names.
fn label_of(names: &[String]) -> String {
    match names.first() {
        Some(first) => first.trim_end_matches('.').to_ascii_lowercase(),
        None => DEFAULT_SERVICE.to_string(),
    }
}
