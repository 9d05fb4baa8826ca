//! The client certificate a failed handshake refused: its subject and issuer, for the
//! failure's log line and `GET /handshake-failures` ("who was refused, and whose CA signed
//! it" is the first question about a refused client).
//!
//! rustls keeps a client's certificates only once they verify, so a refused one is seen by
//! the verifier alone. The verifier is shared by every connection and is not told which one
//! it verifies; but it runs synchronously inside the poll of the handshake that received the
//! certificate, on that poll's thread, and tokio-rustls returns the error from that same poll.
//! So [`RecordRefused`] leaves the certificate it was shown in a thread-local slot, and
//! [`WithRefused`] empties the slot before each poll of its handshake and takes it after each:
//! nothing else runs on the thread in between. Only a failed handshake reads it.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// The longest subject or issuer kept: a client chooses them, and a log line is not the place
/// for a kilobyte of its choosing.
const NAME_KEPT: usize = 256;

thread_local! {
    /// The client certificate the verifier saw during the current poll on this thread (kept
    /// as DER: it is read only if the handshake then fails, on its certificate or on what
    /// follows it, such as a CertificateVerify that does not verify).
    static PRESENTED: RefCell<Option<CertificateDer<'static>>> = const { RefCell::new(None) };
}

/// A client certificate the server refused: its subject and issuer as RFC 4514 strings
/// (`CN=alice,O=Example`), each cut at 256 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RefusedCertificate {
    pub(crate) subject: String,
    pub(crate) issuer: String,
}

impl RefusedCertificate {
    /// The names in `der`, or `None` if it is not a certificate at all.
    fn of(der: &[u8]) -> Option<RefusedCertificate> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let cut = |name: String| match name.char_indices().nth(NAME_KEPT) {
            Some((at, _)) => name[..at].to_string(),
            None => name,
        };
        Some(RefusedCertificate {
            subject: cut(cert.subject().to_string()),
            issuer: cut(cert.issuer().to_string()),
        })
    }
}

/// Verifies as `inner` does, and notes the end-entity certificate the client presented.
#[derive(Debug)]
pub(crate) struct RecordRefused {
    inner: Arc<dyn ClientCertVerifier>,
}

impl RecordRefused {
    pub(crate) fn wrap(inner: Arc<dyn ClientCertVerifier>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(RecordRefused { inner })
    }
}

impl ClientCertVerifier for RecordRefused {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        PRESENTED.with(|slot| *slot.borrow_mut() = Some(end_entity.clone().into_owned()));
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// A handshake future that also yields, when it fails, the client certificate presented in
/// the poll that failed (the names of a certificate that verified but whose handshake then
/// failed too: a CertificateVerify that does not match it is a refusal of that client).
pub(crate) struct WithRefused<F> {
    handshake: F,
    /// What the verifier was shown in an earlier poll of this handshake (the Certificate
    /// and a CertificateVerify may arrive in different reads).
    presented: Option<CertificateDer<'static>>,
}

impl<F> WithRefused<F> {
    pub(crate) fn new(handshake: F) -> WithRefused<F> {
        WithRefused {
            handshake,
            presented: None,
        }
    }
}

impl<T, E, F: Future<Output = Result<T, E>> + Unpin> Future for WithRefused<F> {
    type Output = (F::Output, Option<RefusedCertificate>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Whatever an earlier poll of another handshake on this thread left is not ours.
        PRESENTED.with(|slot| slot.borrow_mut().take());
        let polled = Pin::new(&mut self.handshake).poll(cx);
        if let Some(der) = PRESENTED.with(|slot| slot.borrow_mut().take()) {
            self.presented = Some(der);
        }
        let output = std::task::ready!(polled);
        let refused = match output.is_err() {
            true => (self.presented.take()).and_then(|der| RefusedCertificate::of(&der)),
            false => None,
        };
        Poll::Ready((output, refused))
    }
}

// rcgen comes with the development certificates.
#[cfg(all(test, feature = "dev-certs"))]
mod tests {
    use super::*;

    fn named(cn: &str) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
    }

    #[test]
    fn names_are_read_in_rfc_4514_form_and_cut() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = named("Example CA");
        ca.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let client = named("alice").signed_by(&key, &ca, &ca_key).unwrap();
        let refused = RefusedCertificate::of(client.der()).unwrap();
        assert_eq!(refused.subject, "CN=alice");
        assert_eq!(refused.issuer, "CN=Example CA, O=Example");
        assert_eq!(RefusedCertificate::of(b"not a certificate"), None);

        let long = named(&"x".repeat(1000)).self_signed(&key).unwrap();
        let refused = RefusedCertificate::of(long.der()).unwrap();
        assert_eq!(refused.subject.chars().count(), NAME_KEPT);
    }
}
