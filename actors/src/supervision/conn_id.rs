//! The identity of one accepted connection.

use std::fmt;

/// Names one accepted connection for its whole life, from `Register` to `Dispose`.
///
/// Ids are handed out by the acceptors in accept
/// order and never reused within one server instance, so a second `Dispose` for an id is always
/// a duplicate, never a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
