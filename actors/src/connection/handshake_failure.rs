//! Why a TLS handshake failed, in one word an operator can count and grep for, and what the
//! client had offered: the difference between "a client failed" and "clients built on an old
//! OpenSSL offer no suite we accept", without a packet capture.
//!
//! The class comes from the error rustls (or the handshake's own code) returned and from how
//! far the handshake got: the same `InvalidMessage` is `not_tls` before a ClientHello was read
//! (plain HTTP on the TLS port) and `bad_record` after. The alert is the one rustls sends for
//! that error (its own mapping, `From<CertificateError> for AlertDescription` and
//! `From<InvalidMessage>`), or none where the connection ends without one (the client left,
//! or the handshake timed out).

use std::io;

use rustls::server::ClientHello;
use rustls::{
    AlertDescription, CertificateError, CipherSuite, Error as TlsError, NamedGroup,
    PeerIncompatible,
};

use crate::supervision::handshake_failures::HandshakeFailureClass;

/// How many of each offered list (suites, groups, ALPN protocols) a failure report keeps.
const OFFERED_KEPT: usize = 64;

/// What a client offered in its ClientHello, kept raw (it is taken on every handshake, and
/// named only for one that fails).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HelloSummary {
    pub(crate) sni: Option<String>,
    cipher_suites: Vec<u16>,
    groups: Vec<u16>,
    alpn: Vec<Vec<u8>>,
}

/// What a client offered, named: rustls's names (`TLS13_AES_128_GCM_SHA256`, `X25519`), or
/// `Unknown(0x…)` for a value rustls does not know.
pub(crate) struct Offered {
    pub(crate) cipher_suites: Vec<String>,
    pub(crate) groups: Vec<String>,
    pub(crate) alpn: Vec<String>,
}

impl HelloSummary {
    /// The summary of `hello`. Each list keeps its first [`OFFERED_KEPT`] entries: a
    /// ClientHello may carry thousands, and the book keeps a thousand failures.
    pub(crate) fn of(hello: &ClientHello<'_>) -> HelloSummary {
        HelloSummary {
            sni: hello.server_name().map(str::to_string),
            cipher_suites: (hello.cipher_suites().iter())
                .take(OFFERED_KEPT)
                .map(|s| u16::from(*s))
                .collect(),
            groups: (hello.named_groups().unwrap_or_default().iter())
                .take(OFFERED_KEPT)
                .map(|g| u16::from(*g))
                .collect(),
            alpn: hello
                .alpn()
                .map(|protocols| protocols.take(OFFERED_KEPT).map(<[u8]>::to_vec).collect())
                .unwrap_or_default(),
        }
    }

    /// The offered lists, named.
    pub(crate) fn offered(&self) -> Offered {
        Offered {
            cipher_suites: (self.cipher_suites.iter())
                .map(|s| format!("{:?}", CipherSuite::from(*s)))
                .collect(),
            groups: (self.groups.iter())
                .map(|g| format!("{:?}", NamedGroup::from(*g)))
                .collect(),
            alpn: (self.alpn.iter())
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
        }
    }
}

/// The error the handshake returns when `--sni-strict` refuses a name: a type of its own so
/// that the class does not depend on the message's wording.
#[derive(Debug)]
pub(crate) struct UnrecognizedName(pub(crate) String);

impl std::fmt::Display for UnrecognizedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unrecognized_name: no certificate for {:?}", self.0)
    }
}

impl std::error::Error for UnrecognizedName {}

/// The class of a failed handshake and the alert sent for it (its TLS name, snake_case), from
/// the error and whether the ClientHello had been read.
pub(crate) fn classify(
    error: &io::Error,
    hello_read: bool,
) -> (HandshakeFailureClass, Option<AlertDescription>) {
    use HandshakeFailureClass as C;
    let inner = error.get_ref();
    if inner.is_some_and(|e| e.is::<UnrecognizedName>()) {
        return (
            C::UnrecognizedName,
            Some(AlertDescription::UnrecognisedName),
        );
    }
    let Some(tls) = inner.and_then(|e| e.downcast_ref::<TlsError>()) else {
        // An I/O error of the socket itself.
        return match (hello_read, error.kind()) {
            (
                false,
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe,
            ) => (C::EofBeforeHello, None),
            _ => (C::Other, None),
        };
    };
    match tls {
        TlsError::InvalidMessage(m) if !hello_read => {
            let class = match m {
                rustls::InvalidMessage::InvalidContentType => C::NotTls,
                _ => C::BadRecord,
            };
            (class, Some((*m).into()))
        }
        TlsError::InvalidMessage(m) => (C::BadRecord, Some((*m).into())),
        TlsError::DecryptError => (C::BadRecord, Some(AlertDescription::BadRecordMac)),
        TlsError::InappropriateMessage { .. } | TlsError::InappropriateHandshakeMessage { .. } => {
            (C::BadRecord, Some(AlertDescription::UnexpectedMessage))
        }
        TlsError::PeerIncompatible(p) => incompatible(p),
        TlsError::NoApplicationProtocol => (
            C::NoApplicationProtocol,
            Some(AlertDescription::NoApplicationProtocol),
        ),
        TlsError::NoCertificatesPresented => (
            C::ClientCertificateRequired,
            Some(AlertDescription::CertificateRequired),
        ),
        TlsError::InvalidCertificate(e) => (certificate_class(e), Some(e.clone().into())),
        TlsError::InvalidCertRevocationList(_) => (C::ClientCertificateRevoked, None),
        _ => (C::Other, None),
    }
}

fn incompatible(p: &PeerIncompatible) -> (HandshakeFailureClass, Option<AlertDescription>) {
    use HandshakeFailureClass as C;
    use PeerIncompatible as P;
    match p {
        P::NoCipherSuitesInCommon => (C::NoSharedCipher, Some(AlertDescription::HandshakeFailure)),
        P::NoKxGroupsInCommon | P::KeyShareExtensionRequired | P::NamedGroupsExtensionRequired => {
            (C::NoSharedGroup, Some(AlertDescription::HandshakeFailure))
        }
        P::SupportedVersionsExtensionRequired
        | P::Tls12NotOffered
        | P::Tls12NotOfferedOrEnabled
        | P::ServerDoesNotSupportTls12Or13 => {
            (C::ProtocolVersion, Some(AlertDescription::ProtocolVersion))
        }
        _ => (C::Other, Some(AlertDescription::HandshakeFailure)),
    }
}

fn certificate_class(e: &CertificateError) -> HandshakeFailureClass {
    use CertificateError as E;
    use HandshakeFailureClass as C;
    match e {
        // A bad signature from an issuer of the right name is a certificate of another CA
        // that happens to share the name: to an operator, an unknown CA.
        #[allow(deprecated)] // rustls 0.23 still reports BadSignature
        E::UnknownIssuer | E::BadSignature => C::ClientCertificateUnknownCa,
        E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. } => {
            C::ClientCertificateExpired
        }
        E::Revoked => C::ClientCertificateRevoked,
        _ => C::ClientCertificateNotAllowed,
    }
}

/// An alert's name as the TLS specifications write it (`decode_error`), from rustls's variant
/// name (`DecodeError`); an alert rustls does not name is `Unknown(…)` as rustls prints it.
pub(crate) fn alert_name(alert: AlertDescription) -> String {
    let mut snake = String::new();
    let mut after_lower = false;
    for ch in format!("{alert:?}").chars() {
        // A word starts at an upper-case letter after a lower-case one: `UnknownCA` is
        // `unknown_ca`, not `unknown_c_a`.
        if ch.is_ascii_uppercase() && after_lower {
            snake.push('_');
        }
        after_lower = ch.is_ascii_lowercase() || ch.is_ascii_digit();
        snake.push(ch.to_ascii_lowercase());
    }
    // rustls spells this one the British way; RFC 6066 and every TLS tool, the American.
    match snake.as_str() {
        "unrecognised_name" => "unrecognized_name".to_string(),
        _ => snake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(e: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn plain_bytes_before_a_hello_are_not_tls_and_after_it_a_bad_record() {
        let e = || {
            tls(TlsError::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType,
            ))
        };
        let (class, alert) = classify(&e(), false);
        assert_eq!(class, HandshakeFailureClass::NotTls);
        assert_eq!(alert.map(alert_name).as_deref(), Some("decode_error"));
        assert_eq!(classify(&e(), true).0, HandshakeFailureClass::BadRecord);
    }

    #[test]
    fn a_close_before_the_hello_is_eof_before_hello_and_after_it_other() {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(
            classify(&eof(), false).0,
            HandshakeFailureClass::EofBeforeHello
        );
        assert_eq!(classify(&eof(), true).0, HandshakeFailureClass::Other);
    }

    #[test]
    fn client_certificate_errors_have_their_own_classes_and_alerts() {
        let cases = [
            (
                CertificateError::UnknownIssuer,
                HandshakeFailureClass::ClientCertificateUnknownCa,
                "unknown_ca",
            ),
            (
                CertificateError::Expired,
                HandshakeFailureClass::ClientCertificateExpired,
                "certificate_expired",
            ),
            (
                CertificateError::Revoked,
                HandshakeFailureClass::ClientCertificateRevoked,
                "certificate_revoked",
            ),
            (
                CertificateError::ApplicationVerificationFailure,
                HandshakeFailureClass::ClientCertificateNotAllowed,
                "access_denied",
            ),
        ];
        for (error, class, alert) in cases {
            let got = classify(&tls(TlsError::InvalidCertificate(error.clone())), true);
            assert_eq!(got.0, class, "{error:?}");
            assert_eq!(got.1.map(alert_name).as_deref(), Some(alert), "{error:?}");
        }
    }

    #[test]
    fn the_strict_sni_refusal_is_unrecognized_name() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            UnrecognizedName("x.test".into()),
        );
        let (class, alert) = classify(&e, true);
        assert_eq!(class, HandshakeFailureClass::UnrecognizedName);
        assert_eq!(alert.map(alert_name).as_deref(), Some("unrecognized_name"));
    }

    #[test]
    fn every_class_has_a_distinct_name() {
        let mut names: Vec<_> = HandshakeFailureClass::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), HandshakeFailureClass::COUNT);
    }
}
