//! What a connection hit by a runtime rule does: at its ClientHello ([`HelloFault`]), and on
//! every write once it is open ([`DataFault`]). The connection's state machine asks these at
//! the points they name; every ending they cause goes through its stop hook like any other,
//! with the reason `fault_injected`.

use std::time::Duration;

use crate::fault::rule::FaultAction;
use crate::fault::set::{FaultRuleId, Picked};

/// What the handshake does once the ClientHello is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HelloFault {
    /// Go on as usual.
    Proceed,
    /// Wait this long first (within the handshake's deadline).
    Delay(Duration),
    /// Never answer: the handshake runs out its deadline.
    Stall,
    /// The socket was set to reset on close: end the handshake now.
    Reset,
}

/// How a rule ends an open connection once its byte count is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A FIN without `close_notify`.
    Truncate,
    /// An RST.
    Reset,
    /// A graceful close: `close_notify`, then a FIN.
    CloseNotify,
}

impl Picked {
    /// What this rule does at the ClientHello (a data rule does nothing there).
    pub(crate) fn at_hello(&self) -> HelloFault {
        match self.action {
            FaultAction::DelayHandshake(delay) => HelloFault::Delay(delay),
            FaultAction::StallHandshake => HelloFault::Stall,
            FaultAction::ResetHandshake => HelloFault::Reset,
            _ => HelloFault::Proceed,
        }
    }

    /// What this rule does to the open connection, if anything.
    pub(crate) fn once_open(self) -> Option<DataFault> {
        match self.action {
            FaultAction::DelayHandshake(_)
            | FaultAction::StallHandshake
            | FaultAction::ResetHandshake => None,
            action => Some(DataFault {
                id: self.id,
                action,
                to_client: 0,
            }),
        }
    }
}

/// A rule acting on an open connection's writes, with the bytes written to the client so far.
#[derive(Debug)]
pub(crate) struct DataFault {
    pub(crate) id: FaultRuleId,
    pub(crate) action: FaultAction,
    to_client: u64,
}

impl DataFault {
    /// The wait before writing a chunk of `len` bytes (to the client, or to the upstream).
    pub(crate) fn pause(&self, len: usize, to_client: bool) -> Option<Duration> {
        match self.action {
            FaultAction::Latency { delay, direction } if direction.includes(to_client) => {
                Some(delay)
            }
            FaultAction::Bandwidth {
                bytes_per_second,
                direction,
            } if direction.includes(to_client) => {
                // At most MAX_FAULT_DELAY's worth per chunk (a chunk is at most the read
                // buffer, so this only bounds absurd rates): no overflow, no endless wait.
                let nanos = (len as u128 * 1_000_000_000) / u128::from(bytes_per_second.max(1));
                let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
                Some(Duration::from_nanos(nanos).min(crate::fault::rule::MAX_FAULT_DELAY))
            }
            _ => None,
        }
    }

    /// The byte count and ending of an `after_bytes` action.
    fn ending(&self) -> Option<(u64, Ending)> {
        match self.action {
            FaultAction::Truncate { after_bytes } => Some((after_bytes, Ending::Truncate)),
            FaultAction::ResetAfter { after_bytes } => Some((after_bytes, Ending::Reset)),
            FaultAction::CloseNotifyEarly { after_bytes } => {
                Some((after_bytes, Ending::CloseNotify))
            }
            _ => None,
        }
    }

    /// The ending to take before anything is written (an `after_bytes` of 0).
    pub(crate) fn at_once(&self) -> Option<Ending> {
        self.ending()
            .and_then(|(after, ending)| (after == 0).then_some(ending))
    }

    /// A chunk of `len` bytes is about to be written to the client: how many of them may go,
    /// and the ending to take once they are written (when they reach the rule's count).
    pub(crate) fn sending_to_client(&mut self, len: usize) -> (usize, Option<Ending>) {
        let Some((after, ending)) = self.ending() else {
            return (len, None);
        };
        let left = after.saturating_sub(self.to_client);
        let allowed = usize::try_from(left).unwrap_or(usize::MAX).min(len);
        self.to_client += allowed as u64;
        let ends = self.to_client >= after;
        (allowed, ends.then_some(ending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::rule::FaultDirection;

    fn data(action: FaultAction) -> DataFault {
        Picked {
            id: FaultRuleId(1),
            action,
        }
        .once_open()
        .unwrap()
    }

    #[test]
    fn after_bytes_cuts_the_chunk_that_reaches_the_count() {
        let mut fault = data(FaultAction::Truncate { after_bytes: 10 });
        assert_eq!(fault.at_once(), None);
        assert_eq!(fault.sending_to_client(4), (4, None));
        assert_eq!(fault.sending_to_client(8), (6, Some(Ending::Truncate)));
        let fault = data(FaultAction::ResetAfter { after_bytes: 0 });
        assert_eq!(fault.at_once(), Some(Ending::Reset));
    }

    #[test]
    fn pauses_follow_the_direction_and_the_rate() {
        let fault = data(FaultAction::Bandwidth {
            bytes_per_second: 1000,
            direction: FaultDirection::ToUpstream,
        });
        assert_eq!(fault.pause(500, false), Some(Duration::from_millis(500)));
        assert_eq!(fault.pause(500, true), None);
        let fault = data(FaultAction::Latency {
            delay: Duration::from_millis(50),
            direction: FaultDirection::Both,
        });
        assert_eq!(fault.pause(1, true), Some(Duration::from_millis(50)));
    }
}
