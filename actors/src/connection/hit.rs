//! `Hit`: what a runtime fault rule that hit a connection leaves with it once it is open (kept
//! apart from `injected.rs`, which acts on the connection, so that `actor.rs` can hold one
//! without importing what imports it).

use crate::connection::handshake::ClientWatch;
use crate::fault::injected::DataFault;

/// A rule acting on an open connection, with a watch on the client's socket to reset or
/// truncate it.
pub(crate) struct Hit {
    pub(super) fault: DataFault,
    pub(super) client: ClientWatch,
}
