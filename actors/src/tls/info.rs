//! `TlsInfo`: what a connection's handshake negotiated, for sessions and the disposal log line.

use rustls::{ClientConnection, CommonState, ServerConnection};

use crate::tls::client_auth::ClientIdentity;

/// What the handshake of one connection negotiated.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: Option<&'static str>,
    /// The cipher suite, by rustls's name (`TLS13_AES_128_GCM_SHA256`).
    pub cipher_suite: Option<&'static str>,
    /// The key-exchange group by its IANA name (`X25519MLKEM768`, `X25519`, `secp256r1`); none
    /// for a TLS 1.2 resumption, which exchanges no key.
    pub kx_group: Option<&'static str>,
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
            server_name: conn.server_name().map(str::to_ascii_lowercase),
            // rustls hands over peer certificates only after verifying them.
            client: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(ClientIdentity::of),
            ..TlsInfo::negotiated(conn)
        }
    }

    /// Reads what our handshake with a TLS upstream negotiated (no SNI or client identity:
    /// the upstream is the server there).
    pub(crate) fn of_upstream(conn: &ClientConnection) -> TlsInfo {
        TlsInfo::negotiated(conn)
    }

    /// What either side of a handshake negotiated.
    fn negotiated(conn: &CommonState) -> TlsInfo {
        TlsInfo {
            version: conn.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                other => other.as_str().unwrap_or("unknown"),
            }),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map(|s| s.suite().as_str().unwrap_or("unknown")),
            kx_group: conn
                .negotiated_key_exchange_group()
                .map(|g| g.name().as_str().unwrap_or("unknown")),
            server_name: None,
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            client: None,
        }
    }
}

/// What the handshake with a TLS upstream negotiated, as fields of the disposal log line, each
/// prefixed `upstream_` (`upstream_tls_version`, `upstream_kx_group`, `upstream_resumed`, …).
pub(crate) struct UpstreamTlsFields<'a>(pub(crate) &'a TlsInfo);

impl slog::KV for UpstreamTlsFields<'_> {
    fn serialize(
        &self,
        _record: &slog::Record<'_>,
        out: &mut dyn slog::Serializer,
    ) -> slog::Result {
        let tls = self.0;
        if let Some(version) = tls.version {
            out.emit_str("upstream_tls_version", version)?;
            out.emit_bool("upstream_resumed", tls.resumed)?;
        }
        if let Some(suite) = tls.cipher_suite {
            out.emit_str("upstream_cipher", suite)?;
        }
        if let Some(group) = tls.kx_group {
            out.emit_str("upstream_kx_group", group)?;
        }
        if let Some(alpn) = &tls.alpn {
            out.emit_str("upstream_alpn", alpn)?;
        }
        Ok(())
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
        if let Some(group) = self.kx_group {
            out.emit_str("kx_group", group)?;
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
