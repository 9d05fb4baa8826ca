//! Development certificates: a throwaway CA and a server certificate signed by it.
//!
//! For tests, examples and the binary's built-in development certificate only. Anyone holding
//! these files can impersonate the server; never use them in production.

use crate::tls::source::LoadedTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The names the development server certificate is valid for.
pub const DEV_CERT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A CA certificate and a server certificate and key signed by it, all PEM, ECDSA P-256.
#[derive(Clone, Debug)]
pub struct DevCerts {
    /// The CA certificate clients trust.
    pub ca_cert_pem: String,
    /// The CA's private key (to sign more certificates; not needed to serve).
    pub ca_key_pem: String,
    /// The server certificate.
    pub server_cert_pem: String,
    /// The server's private key (PKCS#8).
    pub server_key_pem: String,
}

impl DevCerts {
    /// Generates a fresh CA and server certificate for [`DEV_CERT_NAMES`].
    pub fn generate() -> Result<DevCerts, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let ca = ca_params()?.self_signed(&ca_key)?;
        let (server_cert_pem, server_key_pem) = issue_server(&DEV_CERT_NAMES, &ca, &ca_key)?;
        Ok(DevCerts {
            ca_cert_pem: ca.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            server_cert_pem,
            server_key_pem,
        })
    }

    /// A new server certificate for `names` signed by this CA, with a fresh key and a random
    /// serial: (certificate PEM, key PEM). Tests use it to rotate certificates and to serve
    /// several names.
    pub fn issue_server(&self, names: &[&str]) -> Result<(String, String), rcgen::Error> {
        let (ca, ca_key) = self.ca()?;
        issue_server(names, &ca, &ca_key)
    }

    /// A client certificate (for mTLS) signed by this CA: subject CN `cn`, SAN DNS names
    /// `dns` and SAN URIs `uris`, a fresh key and a random serial: (certificate PEM, key PEM).
    pub fn issue_client(
        &self,
        cn: &str,
        dns: &[&str],
        uris: &[&str],
    ) -> Result<(String, String), rcgen::Error> {
        self.issue_client_with(cn, dns, uris, None)
    }

    /// [`DevCerts::issue_client`] for subject CN `cn` alone, valid until `not_after_unix`
    /// (seconds since the Unix epoch; certificates carry whole seconds): a test of what
    /// happens when a client certificate expires while connected issues one expiring in a
    /// few seconds.
    pub fn issue_client_until(
        &self,
        cn: &str,
        not_after_unix: u64,
    ) -> Result<(String, String), rcgen::Error> {
        self.issue_client_with(cn, &[], &[], Some(not_after_unix))
    }

    fn issue_client_with(
        &self,
        cn: &str,
        dns: &[&str],
        uris: &[&str],
        not_after_unix: Option<u64>,
    ) -> Result<(String, String), rcgen::Error> {
        let (ca, ca_key) = self.ca()?;
        let mut params =
            CertificateParams::new(dns.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into()?));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        if let Some(unix) = not_after_unix {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after =
                rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(unix);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A CRL of this CA revoking the certificates with these serials (lowercase hex, as
    /// [`LoadedCertificate::serial_hex`](crate::LoadedCertificate::serial_hex) reads them), PEM.
    pub fn crl(&self, revoked_serials_hex: &[&str]) -> Result<String, rcgen::Error> {
        let (ca, ca_key) = self.ca()?;
        let hex = |text: &str| -> Vec<u8> {
            (0..text.len() / 2)
                .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
                .collect()
        };
        let revoked_certs = revoked_serials_hex
            .iter()
            .map(|serial| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(hex(serial)),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&ca, &ca_key)?.pem()
    }

    /// The CA as rcgen can sign with: the same key and name as the CA certificate clients
    /// trust, so what it signs chains to that certificate.
    fn ca(&self) -> Result<(rcgen::Certificate, KeyPair), rcgen::Error> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let ca = ca_params()?.self_signed(&ca_key)?;
        Ok((ca, ca_key))
    }

    /// A TLS configuration serving the server certificate.
    pub fn server_tls(&self) -> Result<LoadedTls, crate::error::TlsConfigError> {
        LoadedTls::from_pem(
            self.server_cert_pem.as_bytes(),
            self.server_key_pem.as_bytes(),
        )
    }
}

/// The development CA's parameters (its name and usages).
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        DnType::CommonName,
        "tlsvisor development CA - DO NOT TRUST IN PRODUCTION",
    );
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A server certificate for `names`, signed by `ca`, with a fresh key and a random serial.
fn issue_server(
    names: &[&str],
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Result<(String, String), rcgen::Error> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "tlsvisor development server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial()?);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A positive 16-byte random serial, so that every issued certificate can be told apart.
fn random_serial() -> Result<rcgen::SerialNumber, rcgen::Error> {
    let mut bytes = [0u8; 16];
    crate::tls::crypto::crypto_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(rcgen::SerialNumber::from(bytes.to_vec()))
}

#[cfg(all(test, feature = "dev-certs"))]
mod tests {
    //! A CRL and client certificates made here, as ClientAuth's policy sees them (the live
    //! revalidation's verdicts).
    use super::*;
    use crate::tls::certificate::CertificateInfo;
    use crate::tls::client_auth::ClientAuth;
    use crate::tls::client_policy::{ClientPolicy, PeerChain};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use std::sync::Arc;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn policy(dir: &std::path::Path, certs: &DevCerts, crl: Option<&str>) -> ClientPolicy {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &certs.ca_cert_pem).unwrap();
        let mut auth = ClientAuth::new(&ca);
        if let Some(crl) = crl {
            let path = dir.join("crl.pem");
            std::fs::write(&path, crl).unwrap();
            auth.crls.push(path);
        }
        let provider = Arc::new(crate::tls::crypto::crypto_provider());
        auth.verifier(provider).unwrap().0
    }

    #[test]
    fn a_chain_fails_a_policy_that_revokes_it_and_no_other() {
        let dir =
            std::env::temp_dir().join(format!("tlsvisor-client-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = DevCerts::generate().unwrap();
        let (alice, _) = certs.issue_client("alice", &[], &[]).unwrap();
        let (bob, _) = certs.issue_client("bob", &[], &[]).unwrap();
        let alice_serial = CertificateInfo::from_der(&der(&alice)).unwrap().serial_hex;
        let before = policy(&dir, &certs, None);
        let revoking = policy(&dir, &certs, Some(&certs.crl(&[&alice_serial]).unwrap()));
        assert!(ClientPolicy::differ(Some(&before), Some(&revoking)));
        assert!(!ClientPolicy::differ(
            Some(&before),
            Some(&policy(&dir, &certs, None))
        ));
        let alice = PeerChain::of(Some(&[der(&alice)])).unwrap();
        let bob = PeerChain::of(Some(&[der(&bob)])).unwrap();
        let now = UnixTime::now();
        assert!(before.admits(Some(&alice), now).is_ok());
        assert!(revoking.admits(Some(&alice), now).is_err());
        assert!(revoking.admits(Some(&bob), now).is_ok());
        // Required by default: no certificate fails.
        assert!(revoking.admits(None, now).is_err());
        eprintln!(
            "a kept one-certificate chain: {} bytes on the heap",
            alice.heap_bytes()
        );
        assert!(alice.heap_bytes() > 300 && alice.heap_bytes() < 2048);
        assert!(alice.not_after_unix().is_some());
    }

    #[test]
    fn a_chain_expires_with_its_leaf_not_with_extra_certificates_the_client_sent() {
        let dir = std::env::temp_dir().join(format!("tlsvisor-extra-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = DevCerts::generate().unwrap();
        let (alice, _) = certs.issue_client("alice", &[], &[]).unwrap();
        // An old certificate sent along (an expired intermediate or cross-sign): webpki does
        // not need it, and its date must not close a valid client.
        let (old, _) = certs.issue_client_until("old", 1_000_000_000).unwrap();
        let chain = PeerChain::of(Some(&[der(&alice), der(&old)])).unwrap();
        let leaf = CertificateInfo::from_der(&der(&alice)).unwrap();
        assert_eq!(chain.not_after_unix(), Some(leaf.not_after_unix));
        assert!(policy(&dir, &certs, None)
            .admits(Some(&chain), UnixTime::now())
            .is_ok());
    }
}
