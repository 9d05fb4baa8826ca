//! `ClientPolicy`: the client-certificate policy of one loaded TLS configuration (its CA
//! bundle, CRLs and allow-list, as the verifier the handshake uses), and `PeerChain`: what a
//! live connection keeps of its client's certificate chain to be checked again against a
//! newer policy.
//!
//! "Fails the new policy" means exactly "a new handshake would refuse it": the check calls the
//! very verifier rustls calls during a handshake (`ClientAuth::verifier`: webpki's, wrapped by
//! the allow-list), on the chain the client presented, at a time the caller picks (now).

use std::sync::Arc;

use crate::tls::crypto::primitives::digest::{Context, SHA256};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use crate::tls::certificate::CertificateInfo;

/// The client-certificate policy a configuration's handshakes apply, and a digest of what it
/// was built from (CA bundle, CRLs, mode, allow-list), so that a reload can tell whether it
/// changed.
pub(crate) struct ClientPolicy {
    verifier: Arc<dyn ClientCertVerifier>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for ClientPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPolicy").finish_non_exhaustive()
    }
}

/// A SHA-256 over length-prefixed parts: what a policy is built from, in a fixed order.
#[derive(Clone)]
pub(crate) struct Fingerprint(Context);

impl Fingerprint {
    pub(crate) fn new() -> Fingerprint {
        Fingerprint(Context::new(&SHA256))
    }

    /// Adds one part (its length first, so that parts cannot run into each other).
    pub(crate) fn part(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

impl ClientPolicy {
    pub(crate) fn new(verifier: Arc<dyn ClientCertVerifier>, fingerprint: [u8; 32]) -> Self {
        ClientPolicy {
            verifier,
            fingerprint,
        }
    }

    /// The verifier, as the handshake's configuration takes it.
    pub(crate) fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.verifier)
    }

    /// Whether two configurations' policies differ (`None`: no client verification). Two
    /// loads of the same files with the same settings are the same policy.
    pub(crate) fn differ(a: Option<&ClientPolicy>, b: Option<&ClientPolicy>) -> bool {
        a.map(|p| p.fingerprint) != b.map(|p| p.fingerprint)
    }

    /// Whether a handshake now would admit the client of `chain` (`None`: it presented no
    /// certificate). A client without one fails only a policy that requires one; one with a
    /// certificate must verify (CA, dates at `now`, CRLs, allow-list) as in a handshake.
    pub(crate) fn admits(
        &self,
        chain: Option<&PeerChain>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        match chain {
            None if self.verifier.client_auth_mandatory() => {
                Err(rustls::Error::NoCertificatesPresented)
            }
            None => Ok(()),
            Some(chain) => {
                let (leaf, intermediates) = chain.certs.split_first().ok_or(
                    // `PeerChain::of` keeps only non-empty chains.
                    rustls::Error::NoCertificatesPresented,
                )?;
                self.verifier
                    .verify_client_cert(leaf, intermediates, now)
                    .map(|_| ())
            }
        }
    }
}

/// A live connection's client certificate chain as presented (leaf first), kept for as long
/// as the connection is open so that a pass can verify it again. Shared (`Arc`): a pass hands
/// it to the verifier without copying.
pub(crate) struct PeerChain {
    certs: Vec<CertificateDer<'static>>,
    /// SHA-256 of the chain: a pass verifies each distinct chain once.
    digest: [u8; 32],
    /// The client certificate's own `notAfter` (Unix seconds): when the connection's
    /// credentials expire. Only the leaf's: the other certificates a client sends may be no
    /// part of the path the verifier built (an old intermediate kept after a CA renewal, an
    /// expired cross-sign), and their dates would close a valid client at once. An
    /// intermediate on the path that expires first is caught by the next pass.
    not_after_unix: Option<i64>,
}

impl PeerChain {
    /// The chain a client presented (`None` for none).
    pub(crate) fn of(certs: Option<&[CertificateDer<'static>]>) -> Option<Arc<PeerChain>> {
        let certs = certs.filter(|c| !c.is_empty())?;
        let mut digest = Fingerprint::new();
        for cert in certs {
            digest.part(cert);
        }
        let not_after_unix = CertificateInfo::from_der(&certs[0])
            .ok()
            .map(|info| info.not_after_unix);
        Some(Arc::new(PeerChain {
            certs: certs.to_vec(),
            digest: digest.finish(),
            not_after_unix,
        }))
    }

    pub(crate) fn digest(&self) -> [u8; 32] {
        self.digest
    }

    pub(crate) fn not_after_unix(&self) -> Option<i64> {
        self.not_after_unix
    }

    /// Bytes it keeps on the heap: the DER of each certificate, the vector of them and the
    /// `Arc`'s block (counts and the fields above). What ARCHITECTURE.md quotes per connection.
    #[cfg(all(test, feature = "dev-certs"))]
    pub(crate) fn heap_bytes(&self) -> usize {
        let ders: usize = self.certs.iter().map(|c| c.len()).sum();
        ders + self.certs.capacity() * std::mem::size_of::<CertificateDer<'static>>()
            + std::mem::size_of::<PeerChain>()
            + 2 * std::mem::size_of::<usize>()
    }
}
