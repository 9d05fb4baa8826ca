//! A connection describing itself to an operator (`Describe`, asked through the registry).

use actix::prelude::*;

use super::Connection;
use crate::supervision::conn_description::ConnDescription;
use crate::supervision::messages::Describe;

impl Handler<Describe> for Connection {
    type Result = MessageResult<Describe>;

    fn handle(&mut self, _msg: Describe, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(ConnDescription {
            id: self.id,
            peer: self.peer,
            // Only the registries know which worker they are on; they fill this in.
            worker: 0,
            state: self.phase.name(),
            age: self.registered_at.elapsed(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            tls: self.tls.as_deref().cloned(),
        })
    }
}
