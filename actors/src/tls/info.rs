//! `TlsInfo`: what a connection's handshake negotiated, for sessions and the disposal log line.

use rustls::ServerConnection;

use crate::tls::client_auth::ClientIdentity;

/// What the handshake of one connection negotiated.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: Option<&'static str>,
    /// The cipher suite, by rustls's name (`TLS13_AES_128_GCM_SHA256`).
    pub cipher_suite: Option<&'static str>,
    /// The name the client asked for (SNI), lowercase.
    pub server_name: Option<String>,
    /// The application protocol agreed by ALPN (`h2`), if any.
    pub alpn: Option<String>,
    /// The client's verified certificate identity (mTLS), if it presented one.
    pub client: Option<ClientIdentity>,
    /// The handshake resumed an earlier session (a ticket) instead of a full handshake.
    pub resumed: bool,
}

impl TlsInfo {
    /// Reads what `conn` negotiated (after its handshake).
    pub(crate) fn of(conn: &ServerConnection) -> TlsInfo {
        TlsInfo {
            version: conn.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                other => other.as_str().unwrap_or("unknown"),
            }),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map(|s| s.suite().as_str().unwrap_or("unknown")),
            server_name: conn.server_name().map(str::to_ascii_lowercase),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            // rustls hands over peer certificates only after verifying them.
            client: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(ClientIdentity::of),
        }
    }
}

/// The fields of the disposal log line: each only when known, as plain strings (no `None`,
/// no Rust debug output).
impl slog::KV for TlsInfo {
    fn serialize(
        &self,
        _record: &slog::Record<'_>,
        out: &mut dyn slog::Serializer,
    ) -> slog::Result {
        if let Some(version) = self.version {
            out.emit_str("tls_version", version)?;
        }
        if let Some(suite) = self.cipher_suite {
            out.emit_str("cipher", suite)?;
        }
        if let Some(name) = &self.server_name {
            out.emit_str("sni", name)?;
        }
        if let Some(alpn) = &self.alpn {
            out.emit_str("alpn", alpn)?;
        }
        if self.version.is_some() {
            out.emit_bool("resumed", self.resumed)?;
        }
        if let Some(client) = &self.client {
            if let Some(cn) = &client.cn {
                out.emit_str("client_cn", cn)?;
            }
            out.emit_str("client_serial", &client.serial)?;
            if !client.dns_sans.is_empty() {
                out.emit_str("client_dns_san", &client.dns_sans.join(","))?;
            }
            if !client.uri_sans.is_empty() {
                out.emit_str("client_uri_san", &client.uri_sans.join(","))?;
            }
        }
        Ok(())
    }
}
