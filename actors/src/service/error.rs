//! `ServiceError`: a service or a table of them that cannot be served.

use std::fmt;

/// Why a service, or a table of services, was refused: the message names the service (its
/// first name) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceError(pub(crate) String);

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServiceError {}
