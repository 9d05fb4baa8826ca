//! A connection: one client's TLS connection as an actor, from registration to disposal,
//! with its reader children.
//!
//! - `actor.rs`: the `Connection` itself (identity, books, phase) and its entry points (the
//!   hooks, the messages it handles);
//! - `machine.rs`: the state machine, every transition and every event that causes one;
//!   `deadlines.rs`: the lifetime limit and the half-close deadline (timers beside the idle
//!   one);
//! - `phase.rs`: what each phase owns; `writer.rs`: a write direction; `upstream_link.rs`: a
//!   proxied connection's hold on its upstream;
//! - `client_stream.rs`: the client's stream, TLS or plaintext (client mode);
//! - `handshake.rs`: the server side of the TLS handshake; `handshake_failure.rs`: the class
//!   of a failed one and what the client had offered; `reader.rs`: the reader child of
//!   each side; `session.rs` and `proxy.rs`: what happens to the bytes read;
//!   `shared_socket.rs`: a socket with a reading, a writing and a watching owner (a stalled
//!   write notices the other side's reset);
//! - `injected.rs`: what a runtime fault rule that hit the connection does to it (`hit.rs`:
//!   what it keeps of the rule);
//! - `credentials.rs`: its client certificate checked again when the policy changes, and
//!   closed at its expiry;
//! - `messages.rs`: what it receives; `env.rs`: what every connection of a server shares;
//!   `access_log.rs`: the fields of its one `disposed` line.

mod access_log;
pub(crate) mod actor;
mod client_stream;
mod credentials;
mod deadlines;
pub(crate) mod env;
pub(crate) mod handshake;
mod handshake_failure;
mod hit;
mod injected;
mod machine;
pub(crate) mod messages;
mod phase;
mod proxy;
pub(crate) mod reader;
mod session;
pub(crate) mod shared_socket;
mod upstream_link;
mod writer;
