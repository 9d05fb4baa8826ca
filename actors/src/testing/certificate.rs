//! `CertificateFacts`: what a test reads of a certificate (the one a client was served, one it
//! issued), read as the server reads its own.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::tls::certificate::{CertificateInfo, X509Error};

/// Serial, expiry and names of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateFacts {
    /// The serial number in lowercase hex, leading zero bytes dropped (as `openssl x509
    /// -serial` prints it, in lowercase).
    pub serial_hex: String,
    /// `notAfter`, in seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// The subject's common names, in order.
    pub subject_cns: Vec<String>,
    /// The DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// The URI subject alternative names.
    pub uris: Vec<String>,
}

impl CertificateFacts {
    /// The facts of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertificateFacts, X509Error> {
        let info = CertificateInfo::from_der(der)?;
        Ok(CertificateFacts {
            serial_hex: info.serial_hex,
            not_after_unix: info.not_after_unix,
            subject_cns: info.subject_cns,
            dns_names: info.dns_names,
            uris: info.uris,
        })
    }

    /// The facts of the first certificate of `pem`; `None` if it holds none or it is
    /// malformed.
    pub fn from_pem(pem: &str) -> Option<CertificateFacts> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
        CertificateFacts::from_der(&der).ok()
    }
}
