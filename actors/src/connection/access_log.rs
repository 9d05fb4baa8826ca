//! The fields of a connection's one `disposed` log line (its access log) beyond its id, peer,
//! reason and lifetime.

use crate::tls::info::{TlsInfo, UpstreamTlsFields};

/// The sizes, always, and fields that exist only for some connections, each written only when
/// known, so a value is never `None` or Rust debug output. README documents every JSON key.
pub(crate) struct DisposalFields<'a> {
    /// The service its ClientHello chose (its label: first name, or `default`), once chosen.
    pub(crate) service: Option<&'a str>,
    /// Decrypted bytes read from the client.
    pub(crate) bytes_in: u64,
    /// Decrypted bytes written to the client.
    pub(crate) bytes_out: u64,
    /// Whether the client's end came with `close_notify` (known only when the client ended).
    pub(crate) close_notify: Option<bool>,
    /// Time the handshake took (known only when it finished).
    pub(crate) handshake_ms: Option<u64>,
    /// What the handshake negotiated.
    pub(crate) tls: Option<&'a TlsInfo>,
    /// What the handshake with a TLS upstream negotiated (fields prefixed `upstream_`).
    pub(crate) upstream_tls: Option<&'a TlsInfo>,
}

impl slog::KV for DisposalFields<'_> {
    fn serialize(&self, record: &slog::Record<'_>, out: &mut dyn slog::Serializer) -> slog::Result {
        if let Some(service) = self.service {
            out.emit_str("service", service)?;
        }
        out.emit_u64("bytes_in", self.bytes_in)?;
        out.emit_u64("bytes_out", self.bytes_out)?;
        // Whether the client's end came with close_notify means something only for a TLS
        // session we terminated (a plaintext or passed-through client ends with a FIN).
        let terminated = self.tls.is_some_and(|tls| tls.version.is_some());
        if let (Some(clean), true) = (self.close_notify, terminated) {
            out.emit_bool("close_notify", clean)?;
        }
        if let Some(ms) = self.handshake_ms {
            out.emit_u64("handshake_ms", ms)?;
        }
        if let Some(tls) = self.tls {
            tls.serialize(record, out)?;
        }
        match self.upstream_tls {
            Some(tls) => UpstreamTlsFields(tls).serialize(record, out),
            None => Ok(()),
        }
    }
}
