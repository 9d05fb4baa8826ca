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
use crate::tls::client_policy::{ClientPolicy, Fingerprint};
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
/// (one of its subject CNs, one of its SAN DNS names, one of its SAN URIs); with no entries,
/// any verified client is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Subject common names (compared exactly). A certificate with several CNs is admitted if
    /// any of them is listed.
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

    pub(crate) fn admits(&self, client: &CertificateInfo) -> bool {
        client.subject_cns.iter().any(|cn| self.cns.contains(cn))
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

    /// Reads the CA bundle and the CRLs and builds the verifier, as the policy handshakes and
    /// live revalidation apply (with a digest of what it was built from); also returns the
    /// CAs, for the expiry gauge (`name` is `FILE#N`, the N-th certificate of the bundle
    /// from 0).
    pub(crate) fn verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<(ClientPolicy, Vec<LoadedCertificate>), TlsConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut cas = Vec::new();
        let mut fingerprint = Fingerprint::new();
        fingerprint.part(&[u8::from(self.mode == ClientAuthMode::Optional)]);
        let ca_bytes = read_file(&self.ca)?;
        fingerprint.part(&ca_bytes);
        let bundle = parse_certificates(&self.ca, &ca_bytes)?;
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
            fingerprint.part(&bytes);
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
        for list in [&self.allow.cns, &self.allow.dns_sans, &self.allow.uri_sans] {
            fingerprint.part(&(list.len() as u64).to_be_bytes());
            for name in list {
                fingerprint.part(name.as_bytes());
            }
        }
        let fingerprint = fingerprint.finish();
        if self.allow.is_empty() {
            return Ok((ClientPolicy::new(inner, fingerprint), cas));
        }
        let verifier = Arc::new(AllowListVerifier {
            inner,
            allow: self.allow.clone(),
        });
        Ok((ClientPolicy::new(verifier, fingerprint), cas))
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
    /// The first subject common name (the one the PROXY v2 header's `SSL_CN` carries, as
    /// haproxy sends it); all of them are in `cns`.
    pub cn: Option<String>,
    /// Every subject common name, in the certificate's order.
    pub cns: Vec<String>,
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
            cn: info.subject_cns.first().cloned(),
            cns: info.subject_cns,
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

#[cfg(all(test, feature = "dev-certs"))]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, BmpString, CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// A CA, and a client certificate it signed whose subject has two CNs: `first` as a
    /// UTF8String and `second` as a BMPString (rcgen keeps one value per attribute type; a
    /// custom type with CN's OID is a second CN).
    fn two_cn_client() -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test ca");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "first");
        params.distinguished_name.push(
            DnType::CustomDnType(vec![2, 5, 4, 3]),
            DnValue::BmpString(BmpString::try_from("second").unwrap()),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (ca.der().clone(), cert.der().clone())
    }

    /// The verifier `ClientAuth::verifier` builds for an allow-list of `cns`, trusting `ca`.
    fn verifier(ca: &CertificateDer<'static>, cns: &[&str]) -> AllowListVerifier {
        let provider = Arc::new(crate::tls::crypto::crypto_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let allow = AllowList {
            cns: strings(cns),
            ..AllowList::default()
        };
        AllowListVerifier { inner, allow }
    }

    #[test]
    fn a_client_with_two_cns_is_admitted_if_any_of_them_is_allowed() {
        let (ca, client) = two_cn_client();
        let now = UnixTime::now();
        for allowed in [&["first"][..], &["second"], &["other", "second"]] {
            let result = verifier(&ca, allowed).verify_client_cert(&client, &[], now);
            assert!(result.is_ok(), "{allowed:?}: {result:?}");
        }
        // CNs compare exactly: not joined, not case-folded.
        for refused in [
            &["other"][..],
            &["first,second"],
            &["firstsecond"],
            &["SECOND"],
        ] {
            let result = verifier(&ca, refused).verify_client_cert(&client, &[], now);
            assert!(
                matches!(
                    result,
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::ApplicationVerificationFailure
                    ))
                ),
                "{refused:?}: {result:?}"
            );
        }
    }

    #[test]
    fn the_identity_of_a_client_with_two_cns_has_both() {
        let (_, client) = two_cn_client();
        let identity = ClientIdentity::of(&client).unwrap();
        assert_eq!(identity.cn.as_deref(), Some("first"));
        assert_eq!(identity.cns, ["first", "second"]);
    }

    #[test]
    fn any_entry_of_any_kind_admits() {
        let client = CertificateInfo {
            serial_hex: "01".into(),
            not_before_unix: 0,
            not_after_unix: 0,
            subject_cns: strings(&["a", "b"]),
            dns_names: strings(&["Host.Test"]),
            uris: strings(&["spiffe://test/svc"]),
            usage: Err("not read".into()),
        };
        let allow = |cns: &[&str], dns: &[&str], uris: &[&str]| AllowList {
            cns: strings(cns),
            dns_sans: strings(dns),
            uri_sans: strings(uris),
        };
        assert!(allow(&["b"], &[], &[]).admits(&client));
        assert!(
            allow(&[], &["host.test"], &[]).admits(&client),
            "DNS: any case"
        );
        assert!(allow(&[], &[], &["spiffe://test/svc"]).admits(&client));
        assert!(!allow(&["c"], &["other.test"], &["spiffe://test/SVC"]).admits(&client));
        let no_names = CertificateInfo {
            subject_cns: Vec::new(),
            dns_names: Vec::new(),
            uris: Vec::new(),
            ..client
        };
        assert!(!allow(&[""], &[""], &[""]).admits(&no_names));
    }
}
