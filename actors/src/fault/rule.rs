//! A runtime fault rule: which connections it hits (a match), what it does to them (an
//! action), and how long it stays installed (its lifetime). Rules are data: the binary builds
//! them from the JSON of `POST /faults`, an embedder builds them in code, and
//! [`Faults::install`](super::Faults::install) checks every bound before one is installed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::edge::accept_proxy::Cidr;

/// The longest a rule may stay installed: a fault is a test, and a forgotten rule must go.
pub const MAX_FAULT_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest delay or latency a rule may add (longer is a unit read wrongly).
pub const MAX_FAULT_DELAY: Duration = Duration::from_secs(10 * 60);
/// The most rules installed at once (each connection's pick scans them).
pub const MAX_FAULT_RULES: usize = 64;
/// The longest SNI a rule may match (a DNS name is at most 253 bytes).
const MAX_SNI: usize = 253;

/// Which connections a rule hits. Every field given must match; an empty match hits every
/// connection. The match is made once per connection, once its ClientHello is read (so the
/// SNI is known); a connection that sends no ClientHello is never hit. Non-exhaustive (a
/// `service` field comes with services): start from `FaultMatch::default()` and set fields.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub struct FaultMatch {
    /// The SNI the client sent, exactly (without regard to ASCII case). (A `service` field
    /// comes with services.)
    pub sni: Option<String>,
    /// The client's network (the original client's, behind a PROXY header).
    pub peer: Option<Cidr>,
    /// The listener the client connected to: the address the connection was accepted on (a
    /// rule for an unspecified IP, `0.0.0.0:8443`, matches that port on any address).
    pub listener: Option<SocketAddr>,
    /// The chance, 0 to 1, that a matching connection is hit.
    pub probability: f64,
    /// Hit at most this many connections; then the rule stays listed but hits no more.
    pub at_most: Option<u64>,
}

impl Default for FaultMatch {
    /// Every connection, always.
    fn default() -> Self {
        FaultMatch {
            sni: None,
            peer: None,
            listener: None,
            probability: 1.0,
            at_most: None,
        }
    }
}

/// Which write direction a chunk-level action slows.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultDirection {
    /// The bytes written to the client.
    ToClient,
    /// The bytes written to the upstream (proxy only; a session server has no upstream).
    ToUpstream,
    /// Both.
    Both,
}

impl FaultDirection {
    /// Whether this includes the direction to the client (`true`) or to the upstream.
    pub(crate) fn includes(self, to_client: bool) -> bool {
        match self {
            FaultDirection::Both => true,
            FaultDirection::ToClient => to_client,
            FaultDirection::ToUpstream => !to_client,
        }
    }

    /// The name used in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultDirection::ToClient => "to_client",
            FaultDirection::ToUpstream => "to_upstream",
            FaultDirection::Both => "both",
        }
    }
}

/// What a rule does to a connection it hits. The `after_bytes` actions count the decrypted
/// bytes written to the client: exactly that many are written, then the action is taken. A
/// connection a rule ends is disposed with the reason `fault_injected`, through its stop hook
/// like any other.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultAction {
    /// Wait this long once the ClientHello is read before answering it (the handshake
    /// timeout still applies: a delay past it ends as `handshake_timeout`).
    DelayHandshake(Duration),
    /// Never answer the ClientHello: the handshake times out (`handshake_timeout`).
    StallHandshake,
    /// Reset the connection once the ClientHello is read (`SO_LINGER` 0, then close: an RST).
    ResetHandshake,
    /// Wait this long before writing each chunk in `direction`.
    Latency {
        /// The wait before each chunk.
        delay: Duration,
        /// The writes it slows.
        direction: FaultDirection,
    },
    /// Pace the writes in `direction` to at most this many bytes a second (each chunk waits
    /// its size divided by the rate before it is written).
    Bandwidth {
        /// The rate, at least 1.
        bytes_per_second: u64,
        /// The writes it paces.
        direction: FaultDirection,
    },
    /// After this many bytes to the client, shut the TCP write side without `close_notify`
    /// (a FIN: the client sees the stream truncated), and stop.
    Truncate {
        /// The bytes written to the client first.
        after_bytes: u64,
    },
    /// After this many bytes to the client, reset the connection (an RST).
    ResetAfter {
        /// The bytes written to the client first.
        after_bytes: u64,
    },
    /// After this many bytes to the client, close gracefully (`close_notify`, a FIN), early.
    CloseNotifyEarly {
        /// The bytes written to the client first.
        after_bytes: u64,
    },
}

impl FaultAction {
    /// The name used in the admin API and the logs.
    pub fn name(&self) -> &'static str {
        match self {
            FaultAction::DelayHandshake(_) => "delay_handshake",
            FaultAction::StallHandshake => "stall_handshake",
            FaultAction::ResetHandshake => "reset_handshake",
            FaultAction::Latency { .. } => "latency",
            FaultAction::Bandwidth { .. } => "bandwidth",
            FaultAction::Truncate { .. } => "truncate",
            FaultAction::ResetAfter { .. } => "reset_after",
            FaultAction::CloseNotifyEarly { .. } => "close_notify",
        }
    }
}

/// One runtime fault rule: hit the connections `matching` selects with `action`, for
/// `lifetime` from its installation.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// The connections it hits.
    pub matching: FaultMatch,
    /// What it does to them.
    pub action: FaultAction,
    /// How long the rule stays installed (required, at most [`MAX_FAULT_LIFETIME`]).
    pub lifetime: Duration,
}

/// Why a rule was not installed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultRuleError {
    /// A field is out of its bounds; the text names it.
    Invalid(String),
    /// [`MAX_FAULT_RULES`] rules are installed already.
    TooMany,
}

impl fmt::Display for FaultRuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultRuleError::Invalid(why) => f.write_str(why),
            FaultRuleError::TooMany => {
                write!(f, "{MAX_FAULT_RULES} fault rules are installed already")
            }
        }
    }
}

impl std::error::Error for FaultRuleError {}

impl FaultRule {
    /// Checks every bound: a lifetime above zero and at most a day, a probability from 0 to 1,
    /// delays at most [`MAX_FAULT_DELAY`], a rate and an `at_most` above zero.
    pub fn validate(&self) -> Result<(), FaultRuleError> {
        let invalid = |why: String| Err(FaultRuleError::Invalid(why));
        if self.lifetime.is_zero() || self.lifetime > MAX_FAULT_LIFETIME {
            return invalid("the lifetime must be above zero and at most 24h".into());
        }
        let m = &self.matching;
        if !(0.0..=1.0).contains(&m.probability) {
            return invalid("probability must be from 0 to 1".into());
        }
        if m.at_most == Some(0) {
            return invalid("at_most must be at least 1".into());
        }
        if m.sni
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > MAX_SNI)
        {
            return invalid(format!("sni must be 1 to {MAX_SNI} bytes"));
        }
        match self.action {
            FaultAction::DelayHandshake(delay) | FaultAction::Latency { delay, .. }
                if delay > MAX_FAULT_DELAY =>
            {
                invalid("a delay must be at most 10m".into())
            }
            FaultAction::Bandwidth {
                bytes_per_second: 0,
                ..
            } => invalid("bytes_per_second must be at least 1".into()),
            _ => Ok(()),
        }
    }
}

/// What one connection looks like to the rules, once its ClientHello is read.
pub(crate) struct Candidate<'a> {
    pub(crate) peer: IpAddr,
    /// The address the connection was accepted on, asked for only when a rule names one.
    pub(crate) listener: &'a dyn Fn() -> Option<SocketAddr>,
    pub(crate) sni: Option<&'a str>,
}

impl FaultMatch {
    /// Whether `candidate` is one of this match's connections (before the probability and the
    /// `at_most` count, which the set applies).
    pub(crate) fn selects(&self, candidate: &Candidate<'_>) -> bool {
        let sni = match (&self.sni, candidate.sni) {
            (None, _) => true,
            (Some(wanted), Some(sent)) => wanted.eq_ignore_ascii_case(sent),
            (Some(_), None) => false,
        };
        let peer = self.peer.map_or(true, |net| net.contains(candidate.peer));
        sni && peer
            && self.listener.map_or(true, |wanted| {
                (candidate.listener)().is_some_and(|at| {
                    at.port() == wanted.port()
                        && (wanted.ip().is_unspecified() || at.ip() == wanted.ip())
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: FaultAction) -> FaultRule {
        FaultRule {
            matching: FaultMatch::default(),
            action,
            lifetime: Duration::from_secs(60),
        }
    }

    #[test]
    fn bounds_are_checked() {
        assert!(rule(FaultAction::StallHandshake).validate().is_ok());
        let mut r = rule(FaultAction::StallHandshake);
        r.lifetime = Duration::ZERO;
        assert!(r.validate().is_err());
        r.lifetime = MAX_FAULT_LIFETIME + Duration::from_secs(1);
        assert!(r.validate().is_err());
        let mut r = rule(FaultAction::StallHandshake);
        r.matching.probability = 1.5;
        assert!(r.validate().is_err());
        r.matching.probability = f64::NAN;
        assert!(r.validate().is_err());
        let r = rule(FaultAction::Latency {
            delay: Duration::from_secs(3600),
            direction: FaultDirection::Both,
        });
        assert!(r.validate().is_err());
        let r = rule(FaultAction::Bandwidth {
            bytes_per_second: 0,
            direction: FaultDirection::Both,
        });
        assert!(r.validate().is_err());
    }

    #[test]
    fn every_given_field_must_match() {
        let listener = || Some("127.0.0.1:8443".parse().unwrap());
        let candidate = Candidate {
            peer: "127.0.0.2".parse().unwrap(),
            listener: &listener,
            sni: Some("A.example"),
        };
        let mut m = FaultMatch::default();
        assert!(m.selects(&candidate));
        m.sni = Some("a.example".into());
        assert!(m.selects(&candidate));
        m.peer = Some("127.0.0.2/32".parse().unwrap());
        assert!(m.selects(&candidate));
        m.listener = Some("0.0.0.0:8443".parse().unwrap());
        assert!(m.selects(&candidate));
        m.listener = Some("127.0.0.1:9443".parse().unwrap());
        assert!(!m.selects(&candidate));
        m.listener = None;
        m.peer = Some("127.0.0.1/32".parse().unwrap());
        assert!(!m.selects(&candidate));
        m.peer = None;
        m.sni = Some("b.example".into());
        assert!(!m.selects(&candidate));
    }
}
