//! The library's integration tests, in one test crate (one link of actix, rustls and the
//! harness instead of one per file). Each module is one subject; run one with a filter:
//! `cargo test -p tlsvisor-actors --features testing --test it -- proxy::`.
//!
//! Needs the `testing` feature (the harness); `faults` also needs `fault-injection`.

mod support;

mod certificates;
mod edge;
#[cfg(feature = "fault-injection")]
mod faults;
mod lifecycle;
mod listeners;
mod local;
mod mtls;
mod proxy;
mod upstreams;
