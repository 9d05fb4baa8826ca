//! The crypto this build uses, chosen by cargo feature: aws-lc-rs (`aws-lc-rs`, the default),
//! whose rustls provider offers the post-quantum hybrid `X25519MLKEM768` first (what rustls
//! itself defaults to), or ring (`ring` alone: no post-quantum group, no cmake). With both
//! features on (`--all-features`), aws-lc-rs. Everything else in the crate names the provider
//! through this file only, so one build holds one library for rustls and the session tickets.

use rustls::crypto::{CryptoProvider, SupportedKxGroup};

#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as chosen;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use rustls::crypto::ring as chosen;

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!(
    "tlsvisor-actors needs a crypto provider: the feature `aws-lc-rs` (default) or `ring`"
);

/// The AEAD and random number generator of the session tickets (`tls/tickets.rs`): the same
/// library as the provider, with the same API.
#[cfg(feature = "aws-lc-rs")]
pub(crate) use aws_lc_rs as primitives;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
pub(crate) use ring as primitives;

/// The name of the provider this build uses (`aws-lc-rs` or `ring`), for logs and errors.
pub const CRYPTO_PROVIDER_NAME: &str = if cfg!(feature = "aws-lc-rs") {
    "aws-lc-rs"
} else {
    "ring"
};

/// The rustls crypto provider of this build, with its default cipher suites and key-exchange
/// groups (with aws-lc-rs: `X25519MLKEM768`, `X25519`, `secp256r1`, `secp384r1`). Servers
/// and the upstream clients of this crate use it; so can an embedder's own configurations.
pub fn crypto_provider() -> CryptoProvider {
    chosen::default_provider()
}

/// Every key-exchange group the provider has, default or not (aws-lc-rs adds
/// `SECP256R1MLKEM768`, `MLKEM768` and `MLKEM1024`): what `TlsPolicy::kx_groups` may name.
pub(crate) fn all_kx_groups() -> &'static [&'static dyn SupportedKxGroup] {
    chosen::ALL_KX_GROUPS
}
