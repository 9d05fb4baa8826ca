//! Services: one process serving several names, each with its own TLS, protocol and upstream
//! group. A [`definition::Service`] is one of them (its names, its loaded TLS, what it does with
//! the bytes); a [`table::ServiceTable`] is all of them, the default first, looked up by the
//! SNI of each ClientHello and swapped whole by a reload. A connection keeps the `Arc` of the
//! service it started with.

pub(crate) mod counts;
pub(crate) mod definition;
pub(crate) mod error;
pub(crate) mod handler;
pub(crate) mod limits;
pub(crate) mod names;
pub(crate) mod table;
