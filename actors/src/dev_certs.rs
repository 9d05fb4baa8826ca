//! Development certificates: a throwaway CA and a server certificate signed by it.
//!
//! For tests, examples and the binary's built-in development certificate only. Anyone holding
//! these files can impersonate the server; never use them in production.

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
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            DnType::CommonName,
            "tlsvisor development CA - DO NOT TRUST IN PRODUCTION",
        );
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;

        let names: Vec<String> = DEV_CERT_NAMES.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tlsvisor development server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;

        Ok(DevCerts {
            ca_cert_pem: ca.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        })
    }

    /// A rustls server configuration serving the server certificate.
    pub fn server_config(
        &self,
    ) -> Result<std::sync::Arc<rustls::ServerConfig>, crate::TlsConfigError> {
        crate::server_config_from_pem(
            self.server_cert_pem.as_bytes(),
            self.server_key_pem.as_bytes(),
        )
    }
}
