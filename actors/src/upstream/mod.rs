//! The proxy's upstream side: where to connect ([`config::ProxyConfig`], an address per
//! upstream, health settings, the PROXY header sent), the pool shared by every worker that
//! picks an upstream and keeps its passive health, the TCP or unix stream itself, and TLS on
//! the hop to the upstream ([`tls::UpstreamTls`]).

pub(crate) mod books;
pub(crate) mod config;
pub(crate) mod pool;
pub(crate) mod stream;
pub(crate) mod tls;
