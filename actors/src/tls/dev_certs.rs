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
