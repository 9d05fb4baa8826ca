//! A connection hit by a runtime fault rule: what the rule picked at the ClientHello leaves
//! for the open connection (a `Hit`, `hit.rs`), and the three places the state machine asks it — before
//! a write (a pause), as bytes go to the client (a cut), and when the cut is reached (the
//! ending, through `close` or `stop` like every other ending, reason `fault_injected`).

use std::time::Duration;

use actix::prelude::*;

use crate::connection::actor::{log_conn, Connection};
use crate::connection::handshake::ClientWatch;
use crate::connection::hit::Hit;
use crate::fault::injected::Ending;
use crate::fault::set::Picked;
use crate::supervision::dispose_reason::DisposeReason;

impl Connection {
    /// The rule the ClientHello picked, if any: logged, and kept if it acts on the open
    /// connection (`client`: its socket, once the handshake is done).
    pub(super) fn fault_picked(&mut self, picked: Option<Picked>, client: Option<&ClientWatch>) {
        let Some(picked) = picked else {
            return;
        };
        log_conn!(info, self, "fault injected";
            "fault_id" => picked.id.0, "action" => picked.action.name());
        if let (Some(fault), Some(client)) = (picked.once_open(), client) {
            self.hit = Some(Box::new(Hit {
                fault,
                client: client.clone(),
            }));
        }
    }

    /// The wait before writing `len` bytes (to the client, or to the upstream).
    pub(super) fn fault_pause(&self, len: usize, to_client: bool) -> Option<Duration> {
        self.hit.as_ref()?.fault.pause(len, to_client)
    }

    /// `len` bytes are about to go to the client: how many may, and the ending once they did.
    pub(super) fn fault_cut(&mut self, len: usize) -> (usize, Option<Ending>) {
        match &mut self.hit {
            None => (len, None),
            Some(hit) => hit.fault.sending_to_client(len),
        }
    }

    /// The ending to take as soon as the connection is open (an `after_bytes` of 0).
    pub(super) fn fault_at_once(&self) -> Option<Ending> {
        self.hit.as_ref()?.fault.at_once()
    }

    /// Ends the connection as its rule says: a FIN without `close_notify`, an RST, or a
    /// graceful close; reason `fault_injected` in each case.
    pub(super) fn fault_ends(&mut self, ending: Ending, ctx: &mut Context<Self>) {
        let Some(hit) = &self.hit else {
            return;
        };
        log_conn!(info, self, "fault ends the connection";
            "fault_id" => hit.fault.id.0, "action" => hit.fault.action.name());
        match ending {
            Ending::Truncate => {
                // Best effort: a socket already gone has nothing left to truncate.
                let _ = hit.client.shutdown_write();
                self.stop(DisposeReason::FaultInjected, ctx);
            }
            Ending::Reset => {
                let _ = hit.client.reset_on_close();
                self.stop(DisposeReason::FaultInjected, ctx);
            }
            Ending::CloseNotify => self.close(DisposeReason::FaultInjected, ctx),
        }
    }
}
