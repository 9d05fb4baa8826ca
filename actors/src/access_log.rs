//! The optional fields of a connection's one `disposed` log line (its access log).

use crate::TlsInfo;

/// Fields that exist only for some connections: each is written only when known, so a value
/// is never `None` or Rust debug output. With JSON logs every key is documented in README.
pub(crate) struct DisposalFields<'a> {
    /// Whether the client's end came with `close_notify` (known only when the client ended).
    pub(crate) close_notify: Option<bool>,
    /// Time the handshake took (known only when it finished).
    pub(crate) handshake_ms: Option<u64>,
    /// What the handshake negotiated.
    pub(crate) tls: Option<&'a TlsInfo>,
}

impl slog::KV for DisposalFields<'_> {
    fn serialize(&self, record: &slog::Record<'_>, out: &mut dyn slog::Serializer) -> slog::Result {
        if let Some(clean) = self.close_notify {
            out.emit_bool("close_notify", clean)?;
        }
        if let Some(ms) = self.handshake_ms {
            out.emit_u64("handshake_ms", ms)?;
        }
        match self.tls {
            Some(tls) => tls.serialize(record, out),
            None => Ok(()),
        }
    }
}
