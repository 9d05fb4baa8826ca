//! TLS configuration as data: the files and settings of a server ([`source::TlsSource`]), one
//! validated build of them, swapped whole on reload ([`reload::TlsReloader`]), the policy
//! (versions, suites, groups, ALPN), the certificate chosen by SNI, session tickets, client
//! certificates, the facts read from a certificate, and the warnings a load gives. No actor lives here: a connection
//! takes the configuration current when its handshake starts and keeps it.

pub(crate) mod certificate;
pub(crate) mod client_auth;
pub(crate) mod client_policy;
pub(crate) mod crypto;
#[cfg(feature = "dev-certs")]
pub(crate) mod dev_certs;
pub(crate) mod files;
pub(crate) mod info;
pub(crate) mod policy;
pub(crate) mod refused_certificate;
pub(crate) mod reload;
pub(crate) mod sni;
pub(crate) mod source;
pub(crate) mod tickets;
pub(crate) mod warning;
