//! The `tlsvisor` binary's integration tests, in one test crate: each module was a test binary
//! of its own, and each of those linked actix, actix-web, rustls and the harness again. One
//! crate compiles the shared helpers (`common`) once and links once.
//!
//! Run one module with a filter: `cargo test --test it -- admin::`.
//!
//! Tests gated on the `interop` feature drive programs from Debian's packages (openssl, redis,
//! haproxy, testssl.sh, systemd); `.ci/run` installs them and runs just those with the filter
//! `interop`, so each of them has `interop` in its path (a module `interop*`, or a submodule
//! `interop` of its subject, as in `process`).

// The tests signal and reap processes, and set limits in a child between fork and exec,
// through libc; each unsafe block says why it is sound.
#![allow(unsafe_code)]

mod common;

mod accept_proxy;
mod admin;
mod binary;
mod certificates;
mod check;
mod client_mode;
mod default_reload;
mod descriptors;
mod edge;
mod handshake_failures;
mod hostile_upstreams;
#[cfg(feature = "interop")]
mod interop;
#[cfg(feature = "interop")]
mod interop_passthrough;
#[cfg(feature = "interop")]
mod interop_tls;
#[cfg(feature = "interop")]
mod interop_upstreams;
mod limits;
mod memory;
mod passthrough;
mod privileges;
mod process;
mod revalidate;
mod runtime_faults;
mod service_limits;
mod services;
mod upstream_tls;
