//! The TLS settings one service is made of, from its `Values` (the default service's, or a
//! `[[service]]`'s): its certificate pairs and its client-certificate policy.

use std::path::PathBuf;

use tlsvisor_actors::{AllowList, CertificateFiles, ClientAuth, ClientAuthMode};

use crate::cli::{CertificateEntry, ClientAuthKind, Values};
use crate::error::BoxError;

/// `--client-ca` and the flags that refine it.
pub(crate) fn client_auth(given: &Values) -> Result<Option<ClientAuth>, BoxError> {
    let crls = given.client_crl.clone();
    let allow = AllowList {
        cns: given.allow_cn.clone(),
        dns_sans: given.allow_dns_san.clone(),
        uri_sans: given.allow_uri_san.clone(),
    };
    let mode = given.client_auth;
    let Some(ca) = given.client_ca.clone() else {
        if mode.is_some() || !crls.is_empty() || allow != AllowList::default() {
            return Err("--client-auth, --client-crl and --allow-* need --client-ca".into());
        }
        return Ok(None);
    };
    Ok(Some(ClientAuth {
        ca,
        mode: match mode {
            Some(ClientAuthKind::Optional) => ClientAuthMode::Optional,
            Some(ClientAuthKind::Require) | None => ClientAuthMode::Require,
        },
        crls,
        allow,
    }))
}

/// The certificate pairs one source of settings gives (`--cert`/`--key` in order, with the
/// `--ocsp-response`s, then the file's `[[certificate]]` tables), or `None` if it gives none.
pub(crate) fn certificate_pairs(
    cert: &[PathBuf],
    key: &[PathBuf],
    ocsp_response: &[PathBuf],
    tables: &[CertificateEntry],
) -> Result<Option<Vec<CertificateFiles>>, BoxError> {
    if cert.len() != key.len() {
        return Err(format!(
            "--cert and --key go together, paired in order ({} --cert, {} --key)",
            cert.len(),
            key.len()
        )
        .into());
    }
    if ocsp_response.len() > cert.len() {
        return Err(
            "--ocsp-response pairs in order with --cert: more responses than certificates".into(),
        );
    }
    let mut ocsp = ocsp_response.iter().cloned();
    let pairs: Vec<CertificateFiles> = cert
        .iter()
        .zip(key)
        .map(|(cert, key)| CertificateFiles {
            ocsp: ocsp.next(),
            ..CertificateFiles::new(cert, key)
        })
        .chain(tables.iter().map(|entry| CertificateFiles {
            ocsp: entry.ocsp_response.clone(),
            ..CertificateFiles::new(&entry.cert, &entry.key)
        }))
        .collect();
    Ok((!pairs.is_empty()).then_some(pairs))
}
