//! The book of failed handshakes: a count per class, the last [`RECENT_FAILURES`] in full, and
//! the throttle of their log lines.
//!
//! Written only when a handshake fails, so its lock is off the path of every connection that
//! works; a flood of failures (a scanner, a broken client fleet) costs one short critical
//! section each and at most one log line per class per second. The classes are decided where
//! the handshake runs (`connection/handshake_failure.rs`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::supervision::conn_id::ConnId;
use crate::supervision::labels::labels;
use crate::supervision::log_throttle::LogThrottle;

labels! {
    /// Why a TLS handshake failed: one word per cause an operator acts on differently.
    pub enum HandshakeFailureClass {
        /// The first bytes were not a TLS record: plain HTTP, a port scanner, another
        /// protocol on the TLS port.
        NotTls => "not_tls",
        /// The client closed (or reset) the connection before its ClientHello was complete.
        EofBeforeHello => "eof_before_hello",
        /// The handshake did not finish within the handshake timeout.
        Timeout => "timeout",
        /// No TLS version both sides accept (`--tls-min-version` above the client's).
        ProtocolVersion => "protocol_version",
        /// No cipher suite both sides accept.
        NoSharedCipher => "no_shared_cipher",
        /// No key-exchange group both sides accept (`--kx-groups`).
        NoSharedGroup => "no_shared_group",
        /// The name the client asked for has no certificate, under `--sni-strict`.
        UnrecognizedName => "unrecognized_name",
        /// None of the client's ALPN protocols is one the server speaks (`--alpn`).
        NoApplicationProtocol => "no_application_protocol",
        /// A client certificate is required and the client sent none.
        ClientCertificateRequired => "client_certificate_required",
        /// The client certificate does not chain to the client CA.
        ClientCertificateUnknownCa => "client_certificate_unknown_ca",
        /// The client certificate is outside its validity period.
        ClientCertificateExpired => "client_certificate_expired",
        /// The client certificate is on a CRL.
        ClientCertificateRevoked => "client_certificate_revoked",
        /// The client certificate verified but the allow-list does not admit it, or it is
        /// otherwise unacceptable (wrong key usage, bad encoding, bad signature).
        ClientCertificateNotAllowed => "client_certificate_not_allowed",
        /// A malformed or undecryptable record after the ClientHello.
        BadRecord => "bad_record",
        /// Anything else: a reset mid-handshake, a peer that misbehaved, an I/O error.
        Other => "other",
    }
}

/// How many failed handshakes the book keeps in full, newest first.
pub const RECENT_FAILURES: usize = 1000;

/// One failed handshake: who, what they offered, what went wrong and what they were told.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeFailure {
    /// When it failed, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The connection's id (its `disposed` line carries the same one).
    pub conn_id: ConnId,
    /// The client's address (the one a PROXY header named, if any).
    pub peer: SocketAddr,
    /// Why it failed.
    pub class: HandshakeFailureClass,
    /// The server name the client asked for, if its ClientHello was read and had one.
    pub sni: Option<String>,
    /// The cipher suites the client offered, in its order (at most the first 64).
    pub cipher_suites: Vec<String>,
    /// The key-exchange groups the client offered, in its order (at most the first 64).
    pub groups: Vec<String>,
    /// The ALPN protocols the client offered, in its order (at most the first 64).
    pub alpn: Vec<String>,
    /// The alert sent to the client (`handshake_failure`, `unknown_ca`…), if one was.
    pub alert: Option<String>,
    /// The subject of the client certificate refused (RFC 4514, at most 256 bytes), when the
    /// handshake failed on one.
    pub client_subject: Option<String>,
    /// The issuer named by that certificate (which CA the client thought it had).
    pub client_issuer: Option<String>,
    /// The error, as rustls or the socket reported it.
    pub error: String,
}

/// Failed handshakes: counts per class, the most recent ones, and the log throttle.
#[derive(Debug, Default)]
pub(crate) struct HandshakeFailures {
    counts: [AtomicU64; HandshakeFailureClass::COUNT],
    /// One log line per class per second.
    throttles: [LogThrottle; HandshakeFailureClass::COUNT],
    recent: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    /// Newest at the front.
    failures: VecDeque<HandshakeFailure>,
}

impl HandshakeFailures {
    /// Counts and keeps `failure`. Returns `Some(suppressed)` when it should be logged: the
    /// first of its class in this second, `suppressed` being how many of its class went
    /// unlogged since the last line.
    pub(crate) fn record(&self, failure: HandshakeFailure) -> Option<u64> {
        let class = failure.class.index();
        self.counts[class].fetch_add(1, Ordering::Relaxed);
        let second = failure.at_unix_ms / 1000;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.failures.len() == RECENT_FAILURES {
            recent.failures.pop_back();
        }
        recent.failures.push_front(failure);
        drop(recent);
        self.throttles[class].admit_at(second)
    }

    /// Failed handshakes of one class since the server started.
    pub(crate) fn count(&self, class: HandshakeFailureClass) -> u64 {
        self.counts[class.index()].load(Ordering::Relaxed)
    }

    /// The most recent failures, newest first.
    pub(crate) fn recent(&self) -> Vec<HandshakeFailure> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.failures.iter().cloned().collect()
    }
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before it).
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(class: HandshakeFailureClass, at_unix_ms: u64, id: u64) -> HandshakeFailure {
        HandshakeFailure {
            at_unix_ms,
            conn_id: ConnId(id),
            peer: "127.0.0.1:1".parse().unwrap(),
            class,
            sni: None,
            cipher_suites: Vec::new(),
            groups: Vec::new(),
            alpn: Vec::new(),
            alert: None,
            client_subject: None,
            client_issuer: None,
            error: String::new(),
        }
    }

    #[test]
    fn one_line_per_class_per_second_with_the_count_of_the_rest() {
        let book = HandshakeFailures::default();
        let not_tls = HandshakeFailureClass::NotTls;
        let timeout = HandshakeFailureClass::Timeout;
        assert_eq!(book.record(failure(not_tls, 5_000, 1)), Some(0));
        assert_eq!(book.record(failure(not_tls, 5_100, 2)), None);
        assert_eq!(book.record(failure(not_tls, 5_999, 3)), None);
        // Another class has a throttle of its own.
        assert_eq!(book.record(failure(timeout, 5_500, 4)), Some(0));
        assert_eq!(book.record(failure(not_tls, 6_000, 5)), Some(2));
        assert_eq!(book.count(not_tls), 4);
        assert_eq!(book.count(timeout), 1);
    }

    #[test]
    fn the_most_recent_are_kept_newest_first_and_no_more() {
        let book = HandshakeFailures::default();
        for id in 0..(RECENT_FAILURES as u64 + 10) {
            book.record(failure(HandshakeFailureClass::Other, 1_000 + id, id));
        }
        let recent = book.recent();
        assert_eq!(recent.len(), RECENT_FAILURES);
        assert_eq!(recent[0].conn_id, ConnId(RECENT_FAILURES as u64 + 9));
        assert_eq!(recent[RECENT_FAILURES - 1].conn_id, ConnId(10));
        assert_eq!(
            book.count(HandshakeFailureClass::Other),
            RECENT_FAILURES as u64 + 10
        );
    }
}
