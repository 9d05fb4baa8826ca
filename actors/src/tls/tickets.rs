//! Session tickets: stateless resumption keys shared by every worker, and, from a key file, by
//! every tlsvisor process that shares the file.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::tls::crypto::primitives::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN,
};
use crate::tls::crypto::primitives::rand::{SecureRandom, SystemRandom};
use rustls::crypto::GetRandomFailed;
use rustls::server::ProducesTickets;
use rustls::ticketer::TicketRotator;

use crate::error::TlsConfigError;
use crate::tls::files::{in_file, read_file};

/// Length of a key name: the first bytes of every ticket, saying which key sealed it.
const NAME_LEN: usize = 16;
/// Length of an AES-256-GCM key.
const KEY_LEN: usize = 32;
/// How long a ticket is accepted after it was issued (rustls's own ticketer uses 12 h).
pub const TICKET_LIFETIME_SECS: u32 = 12 * 60 * 60;

/// One ticket key: a public name and a secret AEAD key.
struct TicketKey {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// Ticket keys from a file, newest first: the first seals new tickets, every key opens them,
/// as nginx's `ssl_session_ticket_key` does. A ticket is `name ‖ nonce ‖ AES-256-GCM(issued-at
/// ‖ session)`, the name authenticated as associated data, the nonce random (96 bits: a
/// collision needs about 2^48 tickets under one key).
pub struct TicketKeys {
    keys: Vec<TicketKey>,
    lifetime: u32,
    rng: SystemRandom,
    /// Seconds since the epoch (a parameter so that tests can move time).
    now: fn() -> u64,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names are public (they travel in every ticket); keys never appear.
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TicketKeys {
    /// Reads a key file: one key per line as 96 hex digits (16 bytes of name, then 32 bytes of
    /// key; `openssl rand -hex 48` makes one), newest first; blank lines and `#` comments are
    /// skipped. An error names the file and the line, never the key.
    pub fn from_file(path: &Path) -> Result<TicketKeys, TlsConfigError> {
        TicketKeys::parse(path, &read_file(path)?)
    }

    /// Reads the content of a key file (`path` names it in errors), as [`TicketKeys::from_file`]
    /// says.
    pub(crate) fn parse(path: &Path, text: &[u8]) -> Result<TicketKeys, TlsConfigError> {
        let text = String::from_utf8_lossy(text);
        let mut secrets = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = decode_hex(line).filter(|b| b.len() == NAME_LEN + KEY_LEN);
            let bytes = bytes.ok_or_else(|| {
                in_file(path)(TlsConfigError::Policy(format!(
                    "line {}: a ticket key is 96 hex digits (openssl rand -hex 48)",
                    number + 1
                )))
            })?;
            secrets.push(bytes);
        }
        if secrets.is_empty() {
            return Err(in_file(path)(TlsConfigError::Policy(
                "no ticket key in the file".into(),
            )));
        }
        TicketKeys::from_secrets(&secrets, TICKET_LIFETIME_SECS).map_err(|e| in_file(path)(e))
    }

    /// Keys from 48-byte secrets (name ‖ key), newest first.
    pub fn from_secrets(secrets: &[Vec<u8>], lifetime: u32) -> Result<TicketKeys, TlsConfigError> {
        let keys = secrets
            .iter()
            .map(|secret| {
                let (name, key) = secret.split_at(NAME_LEN.min(secret.len()));
                let name: [u8; NAME_LEN] = name
                    .try_into()
                    .map_err(|_| TlsConfigError::Policy("ticket key too short".into()))?;
                let key = UnboundKey::new(&AES_256_GCM, key)
                    .map_err(|_| TlsConfigError::Policy("ticket key of the wrong length".into()))?;
                Ok(TicketKey {
                    name,
                    key: LessSafeKey::new(key),
                })
            })
            .collect::<Result<Vec<_>, TlsConfigError>>()?;
        if keys.is_empty() {
            return Err(TlsConfigError::Policy("no ticket key".into()));
        }
        Ok(TicketKeys {
            keys,
            lifetime,
            rng: SystemRandom::new(),
            now: unix_now,
        })
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let newest = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = Vec::with_capacity(8 + plain.len() + 16);
        sealed.extend_from_slice(&(self.now)().to_be_bytes());
        sealed.extend_from_slice(plain);
        newest
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&newest.name),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&newest.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = self.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let opened = key
            .key
            .open_in_place(nonce, Aad::from(&key.name), &mut sealed)
            .ok()?;
        let (issued, plain) = opened.split_at_checked(8)?;
        let issued = u64::from_be_bytes(issued.try_into().ok()?);
        let age = (self.now)().checked_sub(issued)?;
        (age <= u64::from(self.lifetime)).then(|| plain.to_vec())
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// How long the process's own key seals new tickets before a fresh one replaces it (it still
/// opens them for as long again: [`TICKET_LIFETIME_SECS`]), as rustls's ticketer rotates.
const ROTATION_SECS: u32 = TICKET_LIFETIME_SECS / 2;

/// Tickets without a key file: one random [`TicketKeys`] key, replaced every 6 hours by rustls's
/// `TicketRotator` (tickets valid 12), one per process, so every worker and every reload shares
/// it and a reload does not cost every client a full handshake. Not rustls's own ticketer: with
/// aws-lc-rs that one is RFC 5077's AES-256-CBC and HMAC-SHA256, setting up the AES key at every
/// ticket, which cost about 14,000 instructions per ticket sealed (two per handshake) and 11,000
/// per ticket opened, against about 4,100 and 1,900 here (callgrind, release build).
pub(crate) fn default_ticketer() -> Result<Arc<dyn ProducesTickets>, TlsConfigError> {
    static TICKETER: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    if let Some(ticketer) = TICKETER.get() {
        return Ok(Arc::clone(ticketer));
    }
    let made: Arc<dyn ProducesTickets> = Arc::new(
        TicketRotator::new(ROTATION_SECS, random_ticket_keys).map_err(TlsConfigError::Rustls)?,
    );
    Ok(Arc::clone(TICKETER.get_or_init(|| made)))
}

/// One fresh random key (name and AES-256-GCM key), its tickets valid 12 hours: the rotator's
/// generator.
fn random_ticket_keys() -> Result<Box<dyn ProducesTickets>, GetRandomFailed> {
    let mut secret = vec![0u8; NAME_LEN + KEY_LEN];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| GetRandomFailed)?;
    let keys = TicketKeys::from_secrets(&[secret], TICKET_LIFETIME_SECS);
    Ok(Box::new(keys.map_err(|_| GetRandomFailed)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: u8, key: u8) -> Vec<u8> {
        let mut secret = vec![name; NAME_LEN];
        secret.extend_from_slice(&[key; KEY_LEN]);
        secret
    }

    fn keys(secrets: &[Vec<u8>]) -> TicketKeys {
        TicketKeys::from_secrets(secrets, 3600).unwrap()
    }

    #[test]
    fn a_ticket_opens_with_the_same_keys_and_carries_its_key_name() {
        let keys = keys(&[secret(1, 1)]);
        let ticket = keys.encrypt(b"session state").unwrap();
        assert_eq!(&ticket[..NAME_LEN], &[1; NAME_LEN]);
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state");
        // Random nonces: the same state never makes the same ticket.
        assert_ne!(keys.encrypt(b"session state").unwrap(), ticket);
    }

    #[test]
    fn rotation_old_tickets_open_after_a_new_key_is_put_first() {
        let old = keys(&[secret(1, 1)]);
        let ticket = old.encrypt(b"before rotation").unwrap();
        let rotated = keys(&[secret(2, 2), secret(1, 1)]);
        assert_eq!(rotated.decrypt(&ticket).unwrap(), b"before rotation");
        let new_ticket = rotated.encrypt(b"after").unwrap();
        assert_eq!(&new_ticket[..NAME_LEN], &[2; NAME_LEN]);
        // Once the old key is dropped from the file, its tickets stop opening.
        let retired = keys(&[secret(2, 2)]);
        assert_eq!(retired.decrypt(&ticket), None);
        assert_eq!(retired.decrypt(&new_ticket).unwrap(), b"after");
    }

    #[test]
    fn a_wrong_key_name_or_a_wrong_key_under_the_name_is_refused() {
        let ticket = keys(&[secret(1, 1)]).encrypt(b"x").unwrap();
        assert_eq!(keys(&[secret(9, 1)]).decrypt(&ticket), None);
        assert_eq!(keys(&[secret(1, 9)]).decrypt(&ticket), None);
    }

    #[test]
    fn tampering_anywhere_is_refused() {
        let keys = keys(&[secret(1, 1)]);
        let ticket = keys.encrypt(b"session state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            assert_eq!(keys.decrypt(&bad), None, "byte {i}");
        }
        assert_eq!(keys.decrypt(&ticket[..ticket.len() - 1]), None);
        assert_eq!(keys.decrypt(&[]), None);
    }

    #[test]
    fn the_default_ticketer_opens_its_own_tickets_and_refuses_others() {
        let ticketer = default_ticketer().unwrap();
        // One per process: every worker and every reload gets the same keys.
        assert!(Arc::ptr_eq(&ticketer, &default_ticketer().unwrap()));
        assert!(ticketer.enabled());
        assert_eq!(ticketer.lifetime(), TICKET_LIFETIME_SECS);
        let ticket = ticketer.encrypt(b"session state").unwrap();
        assert_eq!(ticketer.decrypt(&ticket).unwrap(), b"session state");
        let other = random_ticket_keys().unwrap();
        assert_eq!(other.decrypt(&ticket), None);
        assert_eq!(ticketer.decrypt(&other.encrypt(b"x").unwrap()), None);
    }

    #[test]
    fn an_expired_ticket_is_refused() {
        let mut keys = keys(&[secret(1, 1)]);
        keys.now = || 1_000_000;
        let ticket = keys.encrypt(b"x").unwrap();
        keys.now = || 1_000_000 + 3600;
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"x");
        keys.now = || 1_000_000 + 3601;
        assert_eq!(keys.decrypt(&ticket), None);
        // Issued "in the future" (a clock stepped back across processes): refused, not trusted.
        keys.now = || 999_999;
        assert_eq!(keys.decrypt(&ticket), None);
    }

    #[test]
    fn the_key_file_is_hex_lines_newest_first() {
        let dir = std::env::temp_dir().join(format!("tlsvisor-tickets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tickets.key");
        let line = |b: u8| format!("{:02x}", b).repeat(48);
        std::fs::write(
            &path,
            format!("# rotated daily\n{}\n\n{}\n", line(2), line(1)),
        )
        .unwrap();
        let keys = TicketKeys::from_file(&path).unwrap();
        assert_eq!(keys.keys.len(), 2);
        assert_eq!(keys.keys[0].name, [2; NAME_LEN]);
        std::fs::write(&path, "abcd\n").unwrap();
        let error = TicketKeys::from_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("tickets.key") && error.contains("line 1"),
            "{error}"
        );
        assert!(
            !format!("{keys:?}").contains("0202"),
            "no key material in Debug"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
