//! Building a rustls server configuration from PEM certificates and keys.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsConfigError;

/// A server configuration from a PEM certificate chain (leaf first) and a PEM private key.
///
/// Uses the `ring` provider explicitly, so the result does not depend on a process-wide default
/// provider being installed.
pub fn server_config_from_pem(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsConfigError::NoCertificate)?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsConfigError::NoPrivateKey)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsConfigError::Rustls)?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(TlsConfigError::Rustls)?;
    Ok(Arc::new(config))
}

/// Like [`server_config_from_pem`], reading the two files.
pub fn server_config_from_files(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsConfigError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    server_config_from_pem(&read(cert_path)?, &read(key_path)?)
}
