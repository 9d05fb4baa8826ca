//! Supervision: the spine of the tree. A [`server::Server`] starts a
//! [`supervisor::ConnectionSupervisor`] over one [`registry::HandlerRegistry`] per worker; each
//! connection holds its place on the books as a [`registration::Registration`], whose one
//! `Dispose` the registry applies exactly once. This module owns the books ([`stats`]), the
//! reasons ([`dispose_reason`]), the messages between these actors and the shutdown protocol.

pub(crate) mod config;
pub(crate) mod conn_description;
pub(crate) mod conn_id;
pub(crate) mod control;
pub(crate) mod dispose_reason;
pub(crate) mod handshake_failures;
pub(crate) mod labels;
pub(crate) mod log_throttle;
pub(crate) mod messages;
pub(crate) mod registration;
pub(crate) mod registry;
pub(crate) mod revalidation;
pub(crate) mod revalidator;
pub(crate) mod server;
pub(crate) mod stats;
pub(crate) mod supervisor;
