//! Reading the files of a TLS configuration: each error names its file.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::TlsConfigError;

/// Reads a file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Wraps an error about the content of `path` so that it names the file.
pub(crate) fn in_file(path: &Path) -> impl FnOnce(TlsConfigError) -> TlsConfigError + '_ {
    move |e| TlsConfigError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

/// Every PEM certificate in `pem` (the content of `path`), at least one.
pub(crate) fn parse_certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsConfigError::NoCertificate)
        .map_err(in_file(path))?;
    if chain.is_empty() {
        return Err(in_file(path)(TlsConfigError::NoCertificate));
    }
    Ok(chain)
}
