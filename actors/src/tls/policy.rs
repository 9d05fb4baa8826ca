//! `TlsPolicy`: which TLS versions, cipher suites, key-exchange groups and application
//! protocols a server offers.

use rustls::crypto::CryptoProvider;
use rustls::SupportedProtocolVersion;

use crate::error::TlsConfigError;
use crate::tls::crypto::{all_kx_groups, crypto_provider, CRYPTO_PROVIDER_NAME};

/// What `--tls-min-version 1.3` enables.
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The lowest TLS version a server accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// The negotiable part of the TLS configuration. Empty lists mean the defaults of the build's
/// provider (`tls/crypto.rs`), in its order of preference: with aws-lc-rs, the groups
/// `X25519MLKEM768`, `X25519`, `secp256r1`, `secp384r1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    /// The lowest version accepted.
    pub min_version: TlsVersion,
    /// Cipher suites offered, by rustls or IANA name (`TLS13_AES_128_GCM_SHA256` or
    /// `TLS_AES_128_GCM_SHA256`, `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`), in preference order.
    pub cipher_suites: Vec<String>,
    /// Key-exchange groups offered (`X25519MLKEM768` with aws-lc-rs, `X25519`, `secp256r1`,
    /// `secp384r1`), in preference order.
    pub kx_groups: Vec<String>,
    /// Choose the cipher suite by the server's order rather than the client's.
    pub prefer_server_cipher_order: bool,
    /// ALPN protocols (`h2`, `http/1.1`), in the server's order of preference. A client that
    /// offers ALPN but none of these is refused with `no_application_protocol`; one that
    /// offers no ALPN is served without.
    pub alpn: Vec<String>,
}

/// rustls's name of a cipher suite, and the IANA name where it differs (TLS 1.3 suites).
fn suite_names(suite: &rustls::SupportedCipherSuite) -> (String, String) {
    let rustls_name = suite
        .suite()
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:?}", suite.suite()));
    let iana = rustls_name.replacen("TLS13_", "TLS_", 1);
    (rustls_name, iana)
}

/// An unknown post-quantum group in a build without one (ring) says which build has it.
fn post_quantum_hint(error: TlsConfigError) -> TlsConfigError {
    match error {
        TlsConfigError::UnknownName {
            what,
            name,
            mut valid,
        } if name.to_ascii_uppercase().contains("MLKEM") => {
            valid.push(format!(
                "(this build uses {CRYPTO_PROVIDER_NAME}; {name} needs the aws-lc-rs build)"
            ));
            TlsConfigError::UnknownName { what, name, valid }
        }
        other => other,
    }
}

/// The IANA name of a key-exchange group (`X25519MLKEM768`, `X25519`, `secp256r1`).
pub(crate) fn group_name(group: &dyn rustls::crypto::SupportedKxGroup) -> String {
    group
        .name()
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:?}", group.name()))
}

/// Keeps the items of `all` that `wanted` names, in `wanted`'s order; an unknown name is an
/// error listing the valid ones.
fn select<T: Clone>(
    what: &'static str,
    wanted: &[String],
    all: &[T],
    names: impl Fn(&T) -> Vec<String>,
) -> Result<Vec<T>, TlsConfigError> {
    wanted
        .iter()
        .map(|want| {
            all.iter()
                .find(|item| names(item).iter().any(|n| n.eq_ignore_ascii_case(want)))
                .cloned()
                .ok_or_else(|| TlsConfigError::UnknownName {
                    what,
                    name: want.clone(),
                    valid: all
                        .iter()
                        .filter_map(|item| names(item).into_iter().next())
                        .collect(),
                })
        })
        .collect()
}

impl TlsPolicy {
    /// The build's provider narrowed to this policy's suites and groups, and the versions to
    /// enable. Checks every name, the ALPN names' lengths, and that some suite is left for the
    /// versions allowed. Public so that an embedder's own rustls configurations (a client to
    /// its upstreams, say) take the same names as the server's.
    pub fn provider(
        &self,
    ) -> Result<(CryptoProvider, &'static [&'static SupportedProtocolVersion]), TlsConfigError>
    {
        self.check_alpn()?;
        let mut provider = crypto_provider();
        if !self.cipher_suites.is_empty() {
            provider.cipher_suites = select(
                "cipher suite",
                &self.cipher_suites,
                &provider.cipher_suites,
                |s| {
                    let (rustls_name, iana) = suite_names(s);
                    vec![rustls_name, iana]
                },
            )?;
        }
        if !self.kx_groups.is_empty() {
            // Any group the provider has, not only its defaults (`MLKEM768` alone, say).
            provider.kx_groups = select(
                "key-exchange group",
                &self.kx_groups,
                all_kx_groups(),
                |g| vec![group_name(*g)],
            )
            .map_err(post_quantum_hint)?;
        }
        let versions: &'static [&'static SupportedProtocolVersion] = match self.min_version {
            TlsVersion::Tls12 => rustls::ALL_VERSIONS,
            TlsVersion::Tls13 => TLS13_ONLY,
        };
        let usable = provider
            .cipher_suites
            .iter()
            .any(|s| versions.iter().any(|v| s.version() == *v));
        if !usable {
            return Err(TlsConfigError::Policy(
                "no cipher suite left for the TLS versions allowed (TLS 1.3 needs a TLS13_ suite)"
                    .into(),
            ));
        }
        Ok((provider, versions))
    }

    /// RFC 7301: a protocol name is 1 to 255 bytes (its length is one byte, and an empty name
    /// is invalid). rustls would send whatever it is given, and a client would refuse the
    /// ServerHello.
    fn check_alpn(&self) -> Result<(), TlsConfigError> {
        match self.alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
            None => Ok(()),
            Some(name) => {
                let shown: String = name.chars().take(32).collect();
                let cut = if shown.len() < name.len() { "..." } else { "" };
                Err(TlsConfigError::Policy(format!(
                    "ALPN protocol names are 1 to 255 bytes (RFC 7301); {shown:?}{cut} is {} \
                     bytes",
                    name.len()
                )))
            }
        }
    }

    /// The ALPN protocols as rustls takes them.
    pub(crate) fn alpn_protocols(&self) -> Vec<Vec<u8>> {
        self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_rustls_or_iana_in_the_given_order() {
        let policy = TlsPolicy {
            cipher_suites: vec![
                "TLS_CHACHA20_POLY1305_SHA256".into(),
                "tls13_aes_128_gcm_sha256".into(),
            ],
            kx_groups: vec!["secp256r1".into(), "X25519".into()],
            ..TlsPolicy::default()
        };
        let (provider, _) = policy.provider().unwrap();
        let suites: Vec<_> = provider
            .cipher_suites
            .iter()
            .map(|s| suite_names(s).0)
            .collect();
        assert_eq!(
            suites,
            ["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_128_GCM_SHA256"]
        );
        let groups: Vec<_> = provider.kx_groups.iter().map(|g| group_name(*g)).collect();
        assert_eq!(groups, ["secp256r1", "X25519"]);
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let policy = TlsPolicy {
            kx_groups: vec!["ffdhe2048".into()],
            ..TlsPolicy::default()
        };
        let error = policy.provider().unwrap_err().to_string();
        assert!(
            error.contains("ffdhe2048") && error.contains("X25519"),
            "{error}"
        );
        let policy = TlsPolicy {
            cipher_suites: vec!["TLS_RSA_WITH_RC4_128_SHA".into()],
            ..TlsPolicy::default()
        };
        let error = policy.provider().unwrap_err().to_string();
        assert!(error.contains("TLS13_AES_256_GCM_SHA384"), "{error}");
    }

    #[test]
    fn alpn_names_are_1_to_255_bytes() {
        let with = |alpn: Vec<String>| {
            TlsPolicy {
                alpn,
                ..TlsPolicy::default()
            }
            .provider()
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert!(with(vec!["h2".into(), "x".repeat(255)]).is_ok());
        let empty = with(vec!["h2".into(), String::new()]).unwrap_err();
        assert!(
            empty.contains("RFC 7301") && empty.contains("is 0 bytes"),
            "{empty}"
        );
        let long = with(vec!["x".repeat(300)]).unwrap_err();
        assert!(long.contains("is 300 bytes") && long.len() < 200, "{long}");
    }

    #[test]
    fn tls13_only_needs_a_tls13_suite() {
        let policy = TlsPolicy {
            min_version: TlsVersion::Tls13,
            cipher_suites: vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()],
            ..TlsPolicy::default()
        };
        assert!(policy.provider().is_err());
    }
}
