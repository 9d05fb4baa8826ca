//! TLS to the upstreams (`--upstream tls://HOST:PORT`, `--upstream-ca`, `--upstream-cert`,
//! `--upstream-key`, `--upstream-sni`, `--upstream-kx-groups`): which upstreams are TLS, and the one rustls client
//! configuration of the group, built from files read as the binary reads its own
//! (`bounded_file.rs`: regular files of at most 1 MiB).
//!
//! The configuration is built once per group and shared by all its connections, so rustls's
//! session cache (256 sessions, in memory) resumes the sessions of earlier connections: a
//! full handshake per upstream and per ticket lifetime rather than per client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tlsvisor_actors::{ProxyConfig, ProxyHeader, TlsPolicy, UpstreamTls};

use crate::cli::{ProtocolKind, ProxyProtocolVersion, Values};
use crate::error::BoxError;

/// How a TLS upstream is written.
const TLS_SCHEME: &str = "tls://";

/// Where the system's CA bundle is, by distribution (Debian and Ubuntu, Fedora and RHEL,
/// openSUSE, Alpine), after `SSL_CERT_FILE` (OpenSSL's own variable, for anywhere else).
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The upstreams as the library takes them (`tls://` taken off), and whether they are TLS.
/// Every upstream of the group is `tls://` or none is: one group has one TLS setting.
pub(crate) fn upstreams(given: &[String]) -> Result<(Vec<String>, bool), BoxError> {
    let tls = given.iter().filter(|u| u.starts_with(TLS_SCHEME)).count();
    if tls != 0 && tls != given.len() {
        return Err(
            "--upstream: either every upstream is tls://HOST:PORT or none is (one group has \
             one TLS setting)"
                .into(),
        );
    }
    let bare = given
        .iter()
        .map(|u| u.strip_prefix(TLS_SCHEME).unwrap_or(u).to_string())
        .collect();
    Ok((bare, tls != 0))
}

/// Whether any `--upstream-*` TLS option is given.
pub(crate) fn options_given(values: &Values) -> bool {
    values.upstream_ca.is_some()
        || values.upstream_cert.is_some()
        || values.upstream_key.is_some()
        || values.upstream_sni.is_some()
        || !values.upstream_kx_groups.is_empty()
}

/// The checks that need no file: the options only with TLS upstreams (given without them, an
/// operator would believe the hop encrypted), the certificate with its key.
pub(crate) fn check(values: &Values, tls_upstreams: bool) -> Result<(), BoxError> {
    if options_given(values) && !tls_upstreams {
        return Err(
            "--upstream-ca, --upstream-cert, --upstream-key, --upstream-sni and \
             --upstream-kx-groups need a TLS upstream (--upstream tls://HOST:PORT)"
                .into(),
        );
    }
    let unix = values
        .upstream
        .iter()
        .find(|u| u.starts_with("tls://unix:"));
    if let (Some(unix), None) = (unix, &values.upstream_sni) {
        return Err(format!(
            "--upstream {unix}: a TLS upstream on a unix socket has no host name to verify: \
             give --upstream-sni"
        )
        .into());
    }
    match (&values.upstream_cert, &values.upstream_key) {
        (Some(_), None) => Err("--upstream-cert needs --upstream-key".into()),
        (None, Some(_)) => Err("--upstream-key needs --upstream-cert".into()),
        _ => Ok(()),
    }
}

/// The build's provider with the groups of `--upstream-kx-groups`, if given. Separate from
/// `--kx-groups` (haproxy too has `curves` on `bind` and on `server` lines): the two hops meet
/// different peers, and the knob exists for an upstream (or a middlebox before it) that cannot
/// take the large post-quantum key share of a default ClientHello, without taking
/// post-quantum away from the clients.
fn provider(values: &Values) -> Result<rustls::crypto::CryptoProvider, BoxError> {
    let policy = TlsPolicy {
        kx_groups: values.upstream_kx_groups.clone(),
        ..TlsPolicy::default()
    };
    let (provider, _versions) = policy
        .provider()
        .map_err(|e| format!("--upstream-kx-groups: {e}"))?;
    Ok(provider)
}

/// The group's TLS, every file read and checked (the error names the flag and the file).
pub(crate) fn build(values: &Values) -> Result<UpstreamTls, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    let (flag, ca) = match &values.upstream_ca {
        Some(ca) => ("--upstream-ca", ca.clone()),
        None => ("the system CA bundle", system_bundle()?),
    };
    let certs = certificates(flag, &ca)?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{flag} {}: no usable CA certificate", ca.display()).into());
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider(values)?))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstream TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match (&values.upstream_cert, &values.upstream_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates("--upstream-cert", cert)?;
            let text = crate::bounded_file::read_text("--upstream-key", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
                format!("--upstream-key {}: no PEM private key ({e})", key.display())
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("--upstream-cert/--upstream-key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let tls = UpstreamTls::new(Arc::new(config));
    match &values.upstream_sni {
        Some(name) => Ok(tls
            .with_server_name(name)
            .map_err(|e| format!("--upstream-sni: {e}"))?),
        None => Ok(tls),
    }
}

/// The certificates of a PEM file; none is an error.
fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let text = crate::bounded_file::read_text(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: bad PEM ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{flag} {}: no PEM certificate", path.display()).into());
    }
    Ok(certs)
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the first of [`SYSTEM_BUNDLES`] present.
fn system_bundle() -> Result<PathBuf, BoxError> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        return Ok(PathBuf::from(file));
    }
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "no system CA bundle (looked for SSL_CERT_FILE and {}): give --upstream-ca",
                SYSTEM_BUNDLES.join(", ")
            )
            .into()
        })
}

/// With protocol proxy, one service's upstream group (the default's, or a `[[service]]`'s):
/// the upstreams and how to reach them, and TLS to them (its files read and checked).
pub(crate) fn proxy_config(
    values: &crate::cli::Values,
) -> Result<Option<ProxyConfig>, crate::error::BoxError> {
    if values.protocol == ProtocolKind::Echo {
        return Ok(None);
    }
    let (upstreams, tls) = crate::upstream_tls::upstreams(&values.upstream)?;
    let mut proxy = ProxyConfig::with_upstreams(&upstreams);
    if tls {
        proxy = proxy.with_tls(crate::upstream_tls::build(values)?);
    }
    proxy.connect_timeout = values.upstream_connect_timeout;
    proxy.proxy_header = values.proxy_protocol.map(|v| match v {
        ProxyProtocolVersion::V1 => ProxyHeader::V1,
        ProxyProtocolVersion::V2 => ProxyHeader::V2,
    });
    Ok(Some(proxy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_all_tls_or_all_plaintext() {
        let given =
            |list: &[&str]| upstreams(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (bare, tls) = given(&["tls://a:6380", "tls://[::1]:6380"]).unwrap();
        assert_eq!(
            (bare, tls),
            (vec!["a:6380".into(), "[::1]:6380".into()], true)
        );
        let (bare, tls) = given(&["a:6379", "unix:/run/r.sock"]).unwrap();
        assert_eq!(bare, ["a:6379", "unix:/run/r.sock"]);
        assert!(!tls);
        let mixed = given(&["tls://a:6380", "b:6379"]).unwrap_err().to_string();
        assert!(mixed.contains("every upstream"), "{mixed}");
    }
}
