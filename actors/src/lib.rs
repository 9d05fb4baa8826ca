//! Supervised TLS connections as actix actors.
//!
//! Each accepted TLS connection is a `Connection` actor with a `Reader` child, started on the
//! worker arbiter whose `Acceptor` accepted it, and recorded in that worker's `HandlerRegistry`
//! before its handshake begins. These actors are the crate's own; what an embedding program
//! uses is [`Server`] (start, [`ServerHandle`], shutdown), [`Protocol`] and [`Session`] (what
//! is spoken), [`Stats`] (the books) and, with the `testing` feature, the test harness:
//!
//! ```text
//! ConnectionSupervisor        owns the acceptors and the shutdown protocol
//! ├── HandlerRegistry (×workers) a worker's live connections; applies Dispose exactly once
//! ├── Acceptor    (×workers)  accepts and admits on one worker arbiter
//! └── Connection  (×N, on the worker that accepted it)
//!     ├── Reader              reads decrypted bytes, reports EOF/failure to its parent
//!     └── UpstreamReader      proxy only: reads the upstream
//! ```
//!
//! # Serving a protocol
//!
//! ```no_run
//! use tlsvisor_actors::{Echo, Server, ServerConfig, TlsSource};
//!
//! actix_rt::System::new().block_on(async {
//!     let tls = TlsSource::single("server.crt", "server.key").load()?;
//!     let server = Server::builder(ServerConfig::default(), tls, Echo)
//!         .listen("127.0.0.1:8443".parse()?)
//!         .start()?;
//!     // ... until you decide to stop:
//!     let report = server.shutdown(std::time::Duration::from_secs(10)).await;
//!     assert_eq!(report.left_registered, 0);
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! });
//! ```
//!
//! # TLS configuration and reloads
//!
//! [`TlsSource`] names every file and setting of the TLS configuration (certificates chosen by
//! SNI, [`TlsPolicy`], [`ClientAuth`], ticket keys) and [`TlsSource::load`] builds a
//! [`LoadedTls`] only once all of it checks out. A running server's [`TlsReloader`] swaps it
//! whole: each connection keeps the configuration current when its handshake started, so a
//! reload changes no live connection's certificate or policy, and a failed load changes
//! nothing. The exception is the client's credentials: a reload that changes the
//! client-certificate policy checks every open connection's client certificate against it, and
//! closes those it refuses (`credentials_revoked`; [`ServerConfig::revalidate_live`],
//! [`ServerHandle::revalidate`]).
//!
//! # The lifecycle guarantee
//!
//! A connection moves `Registered → Handshaking → Open → Closing → Disposed`. Every way it ends
//! (peer EOF, a read or write failure, a handshake failure or timeout, an idle timeout, a
//! failure before start, a session panic, a kill, a shutdown) stops the `Connection` actor, and
//! its `stopped()` hook is the only place that sends `Dispose`, to the registry on its own
//! worker (an id lives on one worker only). That is enforced by the types, not by care: a
//! connection's registration is a value created as it is admitted (creating it sends
//! `Register`), and only that value can send its one `Dispose`, from the stop hook or, if the
//! hook never ran, from its `Drop`. The messages and the registry are private to the crate, so
//! no code outside it can take a live connection off the books. The registry removes an id once
//! and counts any second `Dispose` as a duplicate; `accepted == active + disposed` holds in
//! every [`Snapshot`].
//!
//! # Where it does not hold
//!
//! - With `panic = "abort"` no hook runs on a panic: the process is gone, and so is the registry.
//! - If actix drops a connection without running `stopped()`, its registration sends the
//!   `Dispose` instead, counted as a fallback ([`Ledger::fallbacks`]); its readers, which wait
//!   on a token the connection owns, stop with it, so its socket still closes.
//! - Dropping the actix system without [`Server::shutdown`] drops connections without a
//!   graceful close; their `Dispose` may reach a registry that is already gone. The same holds
//!   for a connection that ignores a forced close until its worker stops: it is reported in
//!   `ShutdownReport::left_registered`.
//! - A worker stuck in a protocol callback answers nothing: [`Server::shutdown`] still returns
//!   within `grace` + [`SHUTDOWN_OVERHEAD`], abandoning that worker's thread, and reports its
//!   connections in `left_registered` and the worker in `abandoned_workers`.
//!
//! # At the edge
//!
//! `max_connections` and `max_handshakes` pause accepting (clients wait in the kernel's
//! backlog); the per-IP limits close a client over them at accept; running out of descriptors
//! sheds the waiting clients on a spare descriptor and backs off, and accepting always resumes
//! by itself. ARCHITECTURE.md has the details.
//!
//! ARCHITECTURE.md in the repository walks through each disposal path.

#![forbid(unsafe_code)]

mod connection;
mod edge;
mod error;
mod fault;
mod protocol;
mod service;
mod supervision;
mod tls;
mod upstream;

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "bench-hooks")]
#[doc(hidden)]
pub mod bench_hooks;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_hooks;

// Serving: the server, its settings, what it speaks.
pub use protocol::{AsyncReply, ConnInfo, Echo, Flow, Protocol, Session};
pub use supervision::config::ServerConfig;
pub use supervision::server::{Server, ServerBuilder, ServerHandle, SHUTDOWN_OVERHEAD};
// At the edge: a balancer's PROXY header.
pub use edge::accept_proxy::{AcceptProxy, Cidr, ProxyVersions};
pub use edge::plain_listener::PlainListener;
// The proxy's upstreams.
pub use upstream::config::{ProxyConfig, ProxyHeader, UpstreamAddr, UpstreamHealth};
pub use upstream::pool::UpstreamSnapshot;
pub use upstream::tls::UpstreamTls;
// TLS: its files and settings, one validated build of them, and swapping it while running.
pub use tls::certificate::{LoadedCertificate, X509Error};
pub use tls::client_auth::{AllowList, ClientAuth, ClientAuthMode, ClientIdentity};
pub use tls::crypto::{crypto_provider, CRYPTO_PROVIDER_NAME};
#[cfg(feature = "dev-certs")]
pub use tls::dev_certs::{DevCerts, DEV_CERT_NAMES};
pub use tls::info::TlsInfo;
pub use tls::policy::{TlsPolicy, TlsVersion};
pub use tls::reload::{TlsReloader, TlsSnapshot};
// Services: names with their own TLS, protocol and upstream group, chosen by SNI.
pub use service::counts::ServiceConnections;
pub use service::definition::{Service, DEFAULT_SERVICE};
pub use service::error::ServiceError;
pub use service::limits::{ServiceLimits, ServiceTimeout};
pub use service::table::ServiceTable;
pub use tls::source::{CertificateFiles, LoadedTls, PemCertificate, TlsSource};
pub use tls::tickets::{TicketKeys, TICKET_LIFETIME_SECS};
pub use tls::warning::TlsWarning;
// The books, and what an operator reads and does while it runs.
pub use connection::messages::CloseMode;
pub use supervision::conn_description::ConnDescription;
pub use supervision::conn_id::ConnId;
pub use supervision::control::Readiness;
pub use supervision::dispose_reason::DisposeReason;
pub use supervision::handshake_failures::{
    HandshakeFailure, HandshakeFailureClass, RECENT_FAILURES,
};
pub use supervision::log_throttle::LogThrottle;
pub use supervision::messages::ShutdownReport;
pub use supervision::revalidation::RevalidationReport;
pub use supervision::stats::{
    LatencySnapshot, Ledger, ProxySnapshot, RejectReason, Snapshot, Stats, CONNECT_LATENCY_BUCKETS,
};
// Errors.
pub use error::{ServerError, SessionError, TlsConfigError};
// Faults on purpose: the runtime rules (always), and the named points (switched on only with
// the `fault-injection` feature).
pub use fault::{
    FaultAction, FaultDirection, FaultMatch, FaultPoint, FaultRule, FaultRuleError, FaultRuleId,
    Faults, InstalledFault, MAX_FAULT_DELAY, MAX_FAULT_LIFETIME, MAX_FAULT_RULES,
};
