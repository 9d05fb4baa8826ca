//! `TlsSource`: the files a server's TLS configuration is built from, and `LoadedTls`: one
//! complete build of them, validated before anything uses it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;

use crate::error::TlsConfigError;
use crate::tls::certificate::{CertificateInfo, LoadedCertificate};
use crate::tls::client_auth::ClientAuth;
use crate::tls::client_policy::ClientPolicy;
use crate::tls::files::{in_file, parse_certificates, read_file};
use crate::tls::policy::TlsPolicy;
use crate::tls::refused_certificate::RecordRefused;
use crate::tls::sni::{SniEntry, SniResolver};
use crate::tls::tickets::{default_ticketer, TicketKeys};
use crate::tls::warning::TlsWarning;

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// A DER OCSP response to staple (as `openssl ocsp -respout` writes it), refreshed by a
    /// reload; rustls staples it to clients that ask (`status_request`).
    pub ocsp: Option<PathBuf>,
}

impl CertificateFiles {
    /// A chain and key without an OCSP response.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> CertificateFiles {
        CertificateFiles {
            cert: cert.into(),
            key: key.into(),
            ocsp: None,
        }
    }
}

/// Every file and setting the TLS configuration is made of. [`TlsSource::load`] reads them all
/// again, so a reload (SIGHUP, `--watch-certs`) is a fresh `load` handed to a
/// [`TlsReloader`](crate::tls::reload::TlsReloader).
#[derive(Clone, Debug, Default)]
pub struct TlsSource {
    /// The server's certificates, chosen by SNI; the first is the default (no SNI, or a name
    /// no certificate serves).
    pub certificates: Vec<CertificateFiles>,
    /// Refuse a client whose SNI names no certificate (alert `unrecognized_name`) instead of
    /// serving it the default.
    pub sni_strict: bool,
    /// Versions, suites, groups, ALPN.
    pub policy: TlsPolicy,
    /// Served when `certificates` is empty (the binary's built-in development certificate).
    pub built_in: Option<PemCertificate>,
    /// Verify client certificates (mTLS).
    pub client_auth: Option<ClientAuth>,
    /// Session ticket keys shared with other processes ([`TicketKeys::from_file`]); without
    /// it, tickets use per-process random keys rotated by rustls.
    pub ticket_key_file: Option<PathBuf>,
}

/// A certificate chain and key given as PEM text rather than files.
#[derive(Clone, PartialEq, Eq)]
pub struct PemCertificate {
    /// What to call it in errors and in the expiry gauge.
    pub name: String,
    /// PEM certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
}

/// One complete, validated TLS configuration: what a handshake uses.
#[derive(Clone)]
pub struct LoadedTls {
    config: Arc<rustls::ServerConfig>,
    certificates: Vec<LoadedCertificate>,
    /// With `sni_strict`: the resolver that knows which names are served.
    strict_sni: Option<Arc<SniResolver>>,
    /// What the load found worth an operator's attention (see `TlsWarning`).
    warnings: Vec<TlsWarning>,
    /// The client-certificate policy its handshakes apply (`None`: no client verification,
    /// or a configuration built elsewhere whose verifier is unknown here).
    client_policy: Option<Arc<ClientPolicy>>,
    /// The lowercase SAN DNS names (wildcards included) of the certificates it serves.
    served_names: Vec<String>,
}

/// Leaves the key out of debug output.
impl std::fmt::Debug for PemCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemCertificate")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
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
            warnings: Vec::new(),
            client_policy: None,
            served_names: Vec::new(),
        }
    }

    /// Whether a certificate it serves covers `name` (lowercase): a host name exactly or by
    /// a wildcard, a `*.` wildcard only by the same wildcard.
    pub(crate) fn covers(&self, name: &str) -> bool {
        self.served_names
            .iter()
            .any(|served| match name.starts_with("*.") {
                true => served == name,
                false => crate::tls::sni::name_matches(served, name),
            })
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

    /// One certificate chain (leaf first) and its key, as PEM text: the shortcut for a
    /// server with one certificate and the default policy. Validated as [`TlsSource::load`]
    /// validates files.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<LoadedTls, TlsConfigError> {
        TlsSource {
            built_in: Some(PemCertificate {
                name: "PEM".into(),
                cert_pem: cert_chain_pem.to_vec(),
                key_pem: key_pem.to_vec(),
            }),
            ..TlsSource::default()
        }
        .load()
    }

    /// The certificates it serves, then the client CAs it trusts (mTLS): every certificate
    /// whose expiry matters to the operator.
    pub fn certificates(&self) -> &[LoadedCertificate] {
        &self.certificates
    }

    /// The client-certificate policy its handshakes apply, if it verifies clients.
    pub(crate) fn client_policy(&self) -> Option<&Arc<ClientPolicy>> {
        self.client_policy.as_ref()
    }

    /// What the load found that works but deserves a warning: a served certificate outside
    /// its validity period (expired, or not yet valid), which is served all the same (see
    /// [`TlsWarning`] for why). Empty when there is nothing to say.
    pub fn warnings(&self) -> &[TlsWarning] {
        &self.warnings
    }
}

impl TlsSource {
    /// A source serving one certificate.
    pub fn single(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsSource {
        TlsSource {
            certificates: vec![CertificateFiles::new(cert, key)],
            ..TlsSource::default()
        }
    }

    /// Every file `load` reads (what `--watch-certs` polls).
    pub fn files(&self) -> Vec<PathBuf> {
        self.certificates
            .iter()
            .flat_map(|pair| [Some(&pair.cert), Some(&pair.key), pair.ocsp.as_ref()])
            .flatten()
            .cloned()
            .chain(self.client_auth.iter().flat_map(|c| c.files().cloned()))
            .chain(self.ticket_key_file.iter().cloned())
            .collect()
    }

    /// Reads and checks every file and builds the configuration. Any error names its file; on
    /// error nothing is half-built, so a running server keeps what it has.
    ///
    /// Every file must be a regular file of at most 1 MiB (a FIFO, a device or a larger file
    /// is refused before it is read whole). Each certificate to serve must be able to serve:
    /// a CA certificate, or one whose extended key usage leaves out serverAuth, is refused
    /// (every client would refuse it). One outside its validity period is served, with a
    /// [`LoadedTls::warnings`] entry.
    pub fn load(&self) -> Result<LoadedTls, TlsConfigError> {
        let (provider, versions) = self.policy.provider()?;
        let provider = Arc::new(provider);
        let mut entries: Vec<SniEntry> = Vec::with_capacity(self.certificates.len());
        let mut certificates = Vec::with_capacity(self.certificates.len());
        let mut pems = Vec::with_capacity(self.certificates.len().max(1));
        for pair in &self.certificates {
            let pem = (read_file(&pair.cert)?, read_file(&pair.key)?);
            let ocsp = pair.ocsp.as_deref().map(read_ocsp).transpose()?;
            pems.push((pair.cert.clone(), pair.key.clone(), pem, ocsp));
        }
        if let (true, Some(built_in)) = (pems.is_empty(), &self.built_in) {
            let name = PathBuf::from(&built_in.name);
            let pem = (built_in.cert_pem.clone(), built_in.key_pem.clone());
            pems.push((name.clone(), name, pem, None));
        }
        for (cert, key, (cert_pem, key_pem), ocsp) in pems {
            let (mut key, certificate) =
                certified((&cert, &cert_pem), (&key, &key_pem), &provider)?;
            if let Some(ocsp) = ocsp {
                // Just built here, so this is the only reference: no copy is made.
                Arc::make_mut(&mut key).ocsp = Some(ocsp);
            }
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        // Only the served certificates so far: the client CAs are added below.
        let warnings: Vec<TlsWarning> = certificates
            .iter()
            .filter_map(|served| {
                TlsWarning::for_validity(
                    PathBuf::from(&served.name),
                    served.info.not_before_unix,
                    served.info.not_after_unix,
                    now,
                )
            })
            .collect();
        let served_names = entries.iter().flat_map(|e| e.names.clone()).collect();
        let resolver = Arc::new(SniResolver::new(entries)?);
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(TlsConfigError::Rustls)?;
        let (builder, client_policy) = match &self.client_auth {
            Some(client_auth) => {
                let (policy, cas) = client_auth.verifier(provider)?;
                certificates.extend(cas);
                let builder =
                    builder.with_client_cert_verifier(RecordRefused::wrap(policy.verifier()));
                (builder, Some(Arc::new(policy)))
            }
            None => (builder.with_no_client_auth(), None),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.ignore_client_order = self.policy.prefer_server_cipher_order;
        config.ticketer = match &self.ticket_key_file {
            Some(path) => Arc::new(TicketKeys::from_file(path)?),
            None => default_ticketer()?,
        };
        config.alpn_protocols = self.policy.alpn_protocols();
        Ok(LoadedTls {
            config: Arc::new(config),
            certificates,
            strict_sni: self.sni_strict.then_some(resolver),
            warnings,
            client_policy,
            served_names,
        })
    }
}

/// Reads a DER OCSP response: not parsed (the client checks it), but it must at least be a
/// DER SEQUENCE, so that a PEM or empty file is caught at load, not by every client.
fn read_ocsp(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    let der = read_file(path)?;
    if der.first() != Some(&0x30) {
        return Err(in_file(path)(TlsConfigError::Policy(
            "not a DER OCSP response (openssl ocsp -respout writes one)".into(),
        )));
    }
    Ok(der)
}

/// A chain and its key, checked to belong together, and what the expiry gauge shows of it.
/// `cert` and `key` name where the PEM came from, for errors.
fn certified(
    (cert, chain_pem): (&Path, &[u8]),
    (key, key_pem): (&Path, &[u8]),
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<(Arc<CertifiedKey>, LoadedCertificate), TlsConfigError> {
    let chain = parse_certificates(cert, chain_pem)?;
    // `parse_certificates` returns at least one certificate: the leaf comes first.
    let info = CertificateInfo::from_der(&chain[0])
        .map_err(TlsConfigError::Certificate)
        .map_err(in_file(cert))?;
    // A certificate no client accepts for a server is refused here rather than by every
    // handshake (a CA certificate put in place by mistake broke 1,313 handshakes in 1.5 s).
    let unusable = match &info.usage {
        Ok(usage) => usage.server_problem(),
        Err(why) => Some(format!("its usage cannot be read ({why})")),
    };
    if let Some(why) = unusable {
        return Err(in_file(cert)(TlsConfigError::NotServerCertificate(why)));
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| in_file(key)(TlsConfigError::NoPrivateKey))?;
    // Checks that the key is usable and matches the leaf's public key.
    let certified = CertifiedKey::from_der(chain, key_der, provider)
        .map_err(TlsConfigError::Rustls)
        .map_err(in_file(key))?;
    let loaded = LoadedCertificate {
        name: cert.display().to_string(),
        info,
    };
    Ok((Arc::new(certified), loaded))
}
