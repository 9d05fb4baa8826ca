//! `TlsSource`: the files a server's TLS configuration is built from, and `LoadedTls`: one
//! complete build of them, validated before anything uses it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;

use crate::sni::{SniEntry, SniResolver};
use crate::x509::CertificateInfo;
use crate::TlsConfigError;

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

/// Every file and setting the TLS configuration is made of. [`TlsSource::load`] reads them all
/// again, so a reload (SIGHUP, `--watch-certs`) is a fresh `load` handed to a
/// [`TlsReloader`](crate::TlsReloader).
#[derive(Clone, Debug, Default)]
pub struct TlsSource {
    /// The server's certificates, chosen by SNI; the first is the default (no SNI, or a name
    /// no certificate serves).
    pub certificates: Vec<CertificateFiles>,
    /// Refuse a client whose SNI names no certificate (alert `unrecognized_name`) instead of
    /// serving it the default.
    pub sni_strict: bool,
}

/// A certificate the server loaded, for the expiry gauge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedCertificate {
    /// The file it came from: the `name` label of the expiry gauge, so an alert says which
    /// file to renew.
    pub name: String,
    /// Serial, expiry and names read from it.
    pub info: CertificateInfo,
}

/// One complete, validated TLS configuration: what a handshake uses.
#[derive(Clone)]
pub struct LoadedTls {
    config: Arc<rustls::ServerConfig>,
    certificates: Vec<LoadedCertificate>,
    /// With `sni_strict`: the resolver that knows which names are served.
    strict_sni: Option<Arc<SniResolver>>,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTls")
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

impl LoadedTls {
    /// A configuration built elsewhere (no certificate list for the expiry gauge).
    pub fn from_config(config: Arc<rustls::ServerConfig>) -> LoadedTls {
        LoadedTls {
            config,
            certificates: Vec::new(),
            strict_sni: None,
        }
    }

    /// Whether a client asking for `server_name` is refused (`--sni-strict` and no certificate
    /// serves the name). A client sending no SNI gets the default certificate.
    pub fn refuses(&self, server_name: Option<&str>) -> bool {
        match (&self.strict_sni, server_name) {
            (Some(resolver), Some(name)) => !resolver.serves(name),
            _ => false,
        }
    }

    /// The rustls configuration handshakes use.
    pub fn config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }

    /// The certificates it serves.
    pub fn certificates(&self) -> &[LoadedCertificate] {
        &self.certificates
    }
}

impl TlsSource {
    /// A source serving one certificate.
    pub fn single(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsSource {
        TlsSource {
            certificates: vec![CertificateFiles {
                cert: cert.into(),
                key: key.into(),
            }],
            ..TlsSource::default()
        }
    }

    /// Every file `load` reads (what `--watch-certs` polls).
    pub fn files(&self) -> Vec<PathBuf> {
        self.certificates
            .iter()
            .flat_map(|pair| [pair.cert.clone(), pair.key.clone()])
            .collect()
    }

    /// Reads and checks every file and builds the configuration. Any error names its file; on
    /// error nothing is half-built, so a running server keeps what it has.
    pub fn load(&self) -> Result<LoadedTls, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut entries = Vec::with_capacity(self.certificates.len());
        let mut certificates = Vec::with_capacity(self.certificates.len());
        for pair in &self.certificates {
            let (key, certificate) = load_pair(pair, &provider)?;
            entries.push(SniEntry {
                names: certificate
                    .info
                    .dns_names
                    .iter()
                    .map(|n| n.to_ascii_lowercase())
                    .collect(),
                key,
                file: certificate.name.clone(),
            });
            certificates.push(certificate);
        }
        let resolver = Arc::new(SniResolver::new(entries)?);
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        Ok(LoadedTls {
            config: Arc::new(config),
            certificates,
            strict_sni: self.sni_strict.then_some(resolver),
        })
    }
}

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

/// Every PEM certificate in `path`, at least one.
pub(crate) fn read_certificates(
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsConfigError::NoCertificate)
        .map_err(in_file(path))?;
    if chain.is_empty() {
        return Err(in_file(path)(TlsConfigError::NoCertificate));
    }
    Ok(chain)
}

/// A chain and its key, checked to belong together, and what the expiry gauge shows of it.
fn load_pair(
    pair: &CertificateFiles,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<(Arc<CertifiedKey>, LoadedCertificate), TlsConfigError> {
    let chain = read_certificates(&pair.cert)?;
    let info = CertificateInfo::from_der(&chain[0])
        .map_err(TlsConfigError::Certificate)
        .map_err(in_file(&pair.cert))?;
    let key_pem = read_file(&pair.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| in_file(&pair.key)(TlsConfigError::NoPrivateKey))?;
    // Checks that the key is usable and matches the leaf's public key.
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(TlsConfigError::Rustls)
        .map_err(in_file(&pair.key))?;
    let loaded = LoadedCertificate {
        name: pair.cert.display().to_string(),
        info,
    };
    Ok((Arc::new(certified), loaded))
}
