//! `SniResolver`: picks the certificate for a handshake by the name the client asked for.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::TlsConfigError;

/// One certificate and the DNS names (SAN) it serves.
#[derive(Debug)]
pub(crate) struct SniEntry {
    /// Lowercase SAN dNSNames, wildcards (`*.example.com`) included.
    pub(crate) names: Vec<String>,
    pub(crate) key: Arc<CertifiedKey>,
    /// The file, for errors.
    pub(crate) file: String,
}

/// Serves the certificate whose SAN DNS names match the client's SNI (an exact name before a
/// wildcard), among those the client can verify (ECDSA or RSA, by the signature schemes it
/// offers); the first certificate for no SNI or a name nobody serves.
#[derive(Debug)]
pub(crate) struct SniResolver {
    /// In the operator's order; the first is the default.
    entries: Vec<SniEntry>,
}

impl SniResolver {
    /// Checks that every certificate can be chosen and that no two of the same key type claim
    /// the same name (which one a client got would be an accident of order).
    pub(crate) fn new(entries: Vec<SniEntry>) -> Result<SniResolver, TlsConfigError> {
        if entries.is_empty() {
            return Err(TlsConfigError::NoCertificate);
        }
        for (i, entry) in entries.iter().enumerate().skip(1) {
            if entry.names.is_empty() {
                return Err(TlsConfigError::Unselectable {
                    path: entry.file.clone().into(),
                });
            }
            for earlier in &entries[..i] {
                let same_kind = earlier.key.key.algorithm() == entry.key.key.algorithm();
                if let Some(name) = entry.names.iter().find(|n| earlier.names.contains(n)) {
                    if same_kind {
                        return Err(TlsConfigError::NameOverlap {
                            name: name.clone(),
                            first: earlier.file.clone().into(),
                            second: entry.file.clone().into(),
                        });
                    }
                }
            }
        }
        Ok(SniResolver { entries })
    }

    /// Whether some certificate serves `name` (exactly or by wildcard).
    pub(crate) fn serves(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.entries
            .iter()
            .any(|e| e.names.iter().any(|p| name_matches(p, &name)))
    }

    fn usable(entry: &SniEntry, hello: &ClientHello<'_>) -> bool {
        entry
            .key
            .key
            .choose_scheme(hello.signature_schemes())
            .is_some()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // `new` refuses an empty list, so there is a first entry.
        let default = &self.entries[0];
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let exact = |e: &&SniEntry| name.as_ref().is_some_and(|n| e.names.contains(n));
        let wildcard = |e: &&SniEntry| {
            name.as_ref()
                .is_some_and(|n| e.names.iter().any(|p| name_matches(p, n)))
        };
        // Candidates in order of preference; the first the client can verify wins. Without a
        // match, the default's names stand in, so that the default can have an ECDSA and an
        // RSA twin as well.
        let default_twin = |e: &&SniEntry| {
            std::ptr::eq(*e, default) || e.names.iter().any(|n| default.names.contains(n))
        };
        let matching: Vec<&SniEntry> = match self.entries.iter().filter(exact).collect::<Vec<_>>() {
            found if !found.is_empty() => found,
            _ => match self.entries.iter().filter(wildcard).collect::<Vec<_>>() {
                found if !found.is_empty() => found,
                _ => self.entries.iter().filter(default_twin).collect(),
            },
        };
        let chosen = matching
            .iter()
            .find(|e| SniResolver::usable(e, &hello))
            .or(matching.first())
            .copied()
            .unwrap_or(default);
        Some(Arc::clone(&chosen.key))
    }
}

/// Whether the SAN pattern `pattern` matches the lowercase host `name`, as RFC 6125 section 6.4
/// has it for the forms certificates use today: exact (ASCII case-insensitive), or a wildcard
/// that is the whole leftmost label and stands for exactly one label (`*.example.com` matches
/// `a.example.com`, not `example.com` nor `a.b.example.com`), and never directly under a
/// top-level domain (`*.com`).
pub(crate) fn name_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let name = name.trim_end_matches('.');
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return pattern.eq_ignore_ascii_case(name);
    };
    if !suffix.contains('.') || suffix.contains('*') {
        return false;
    }
    match name.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcards_as_rfc_6125_has_them() {
        assert!(name_matches("a.test", "a.test"));
        assert!(name_matches("A.Test", "a.test"));
        assert!(name_matches("*.b.test", "x.b.test"));
        assert!(name_matches("*.b.test.", "x.b.test"));
        assert!(!name_matches("*.b.test", "b.test"));
        assert!(!name_matches("*.b.test", "y.x.b.test"));
        assert!(!name_matches("*.test", "b.test"));
        assert!(!name_matches("x*.b.test", "xy.b.test"));
        assert!(!name_matches("*.*.test", "a.b.test"));
        assert!(!name_matches("a.test", "b.test"));
    }
}
