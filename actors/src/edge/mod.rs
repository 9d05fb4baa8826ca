//! The edge: everything between a listening socket and a started `Connection`. Binding or
//! taking over the listeners, the accept loop of each worker, admission under the server-wide
//! and per-client limits (counts, and rates of new handshakes), the spare descriptor that
//! sheds clients when descriptors run out, the PROXY header a balancer in front sends, and the
//! read-ahead under the TLS handshake.

pub(crate) mod accept_proxy;
pub(crate) mod accepted_socket;
pub(crate) mod acceptor;
pub(crate) mod admission;
pub(crate) mod listeners;
pub(crate) mod per_ip;
pub(crate) mod plain_listener;
pub(crate) mod rate;
pub(crate) mod read_ahead;
pub(crate) mod spare_fd;
