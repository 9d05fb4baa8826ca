//! Client certificates (mTLS): the CA bundle, CRLs and allow-list a server verifies clients
//! with, and the identity of a client it admitted.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::error::TlsConfigError;
use crate::tls::certificate::CertificateInfo;
use crate::tls::certificate::LoadedCertificate;
use crate::tls::files::{in_file, parse_certificates, read_file};

/// Whether a client must present a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// No certificate, no connection.
    #[default]
    Require,
    /// A client without a certificate is admitted (and has no identity); one with a
    /// certificate must pass verification and the allow-list.
    Optional,
}

/// Who may connect, as ghostunnel has it: a verified client is admitted if any entry matches
/// (its subject CN, one of its SAN DNS names, one of its SAN URIs); with no entries, any
/// verified client is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Subject common names.
    pub cns: Vec<String>,
    /// SAN DNS names (compared ASCII case-insensitively).
    pub dns_sans: Vec<String>,
    /// SAN URIs (compared exactly, e.g. SPIFFE IDs).
    pub uri_sans: Vec<String>,
}

impl AllowList {
    fn is_empty(&self) -> bool {
        self.cns.is_empty() && self.dns_sans.is_empty() && self.uri_sans.is_empty()
    }

    fn admits(&self, client: &CertificateInfo) -> bool {
        let cn = client.subject_cn.as_ref();
        cn.is_some_and(|cn| self.cns.contains(cn))
            || client
                .dns_names
                .iter()
                .any(|d| self.dns_sans.iter().any(|a| a.eq_ignore_ascii_case(d)))
            || client.uris.iter().any(|u| self.uri_sans.contains(u))
    }
}

/// Client-certificate verification settings: files and policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: PathBuf,
    /// Required or optional.
    pub mode: ClientAuthMode,
    /// CRLs (PEM or DER); a certificate they revoke is refused. With CRLs, a client whose
    /// issuer has no CRL among them is refused too (fail closed).
    pub crls: Vec<PathBuf>,
    /// Who is admitted among verified clients.
    pub allow: AllowList,
}

impl ClientAuth {
    /// Verification with `ca` required, no CRL, any verified client admitted.
    pub fn new(ca: impl Into<PathBuf>) -> ClientAuth {
        ClientAuth {
            ca: ca.into(),
            mode: ClientAuthMode::Require,
            crls: Vec::new(),
            allow: AllowList::default(),
        }
    }

    /// The files it reads.
    pub(crate) fn files(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.ca).chain(&self.crls)
    }

    /// Reads the CA bundle and the CRLs and builds the verifier; also returns the CAs, for the
    /// expiry gauge (`name` is `FILE#N`, the N-th certificate of the bundle from 0).
    pub(crate) fn verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<(Arc<dyn ClientCertVerifier>, Vec<LoadedCertificate>), TlsConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut cas = Vec::new();
        let bundle = parse_certificates(&self.ca, &read_file(&self.ca)?)?;
        for (index, cert) in bundle.into_iter().enumerate() {
            let info = CertificateInfo::from_der(&cert)
                .map_err(TlsConfigError::Certificate)
                .map_err(in_file(&self.ca))?;
            cas.push(LoadedCertificate {
                name: format!("{}#{index}", self.ca.display()),
                info,
            });
            roots
                .add(cert)
                .map_err(TlsConfigError::Rustls)
                .map_err(in_file(&self.ca))?;
        }
        let mut crls = Vec::new();
        for path in &self.crls {
            let bytes = read_file(path)?;
            let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|_| in_file(path)(TlsConfigError::Policy("unreadable CRL".into())))?;
            if pem.is_empty() {
                crls.push(CertificateRevocationListDer::from(bytes));
            } else {
                crls.extend(pem);
            }
        }
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls)
            .only_check_end_entity_revocation();
        if self.mode == ClientAuthMode::Optional {
            builder = builder.allow_unauthenticated();
        }
        // The builder parses the CRLs; its error does not say which file, so name them all.
        let inner = builder.build().map_err(|e| {
            let files: Vec<String> = self.files().map(|p| p.display().to_string()).collect();
            TlsConfigError::Policy(format!("client CA or CRL ({}): {e}", files.join(", ")))
        })?;
        if self.allow.is_empty() {
            return Ok((inner, cas));
        }
        let verifier = Arc::new(AllowListVerifier {
            inner,
            allow: self.allow.clone(),
        });
        Ok((verifier, cas))
    }
}

/// Verifies as `inner` does, then refuses a verified client the allow-list does not admit,
/// inside the handshake (the client gets an alert, not a connection that closes later).
#[derive(Debug)]
struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: AllowList,
}

impl ClientCertVerifier for AllowListVerifier {
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
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = CertificateInfo::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.allow.admits(&info) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
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
}

/// Who an admitted client proved to be (from its verified certificate).
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Subject common name.
    pub cn: Option<String>,
    /// SAN DNS names.
    pub dns_sans: Vec<String>,
    /// SAN URIs.
    pub uri_sans: Vec<String>,
    /// Serial number, lowercase hex.
    pub serial: String,
}

impl ClientIdentity {
    /// The identity in a verified client certificate (`None` if it cannot be read, which
    /// webpki's verification makes impossible in practice).
    pub(crate) fn of(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
        let info = CertificateInfo::from_der(cert).ok()?;
        Some(ClientIdentity {
            cn: info.subject_cn,
            dns_sans: info.dns_names,
            uri_sans: info.uris,
            serial: info.serial_hex,
        })
    }
}

/// Whether a failed handshake failed on the client's certificate: none presented when
/// required, or one that did not verify (unknown CA, expired, revoked, not allowed).
pub(crate) fn is_client_auth_failure(error: &io::Error) -> bool {
    let rustls_error = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    matches!(
        rustls_error,
        Some(
            rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertificate(_)
                | rustls::Error::InvalidCertRevocationList(_)
        )
    )
}
