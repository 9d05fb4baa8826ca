//! The proxy's upstreams: where they are, how to reach one, what to tell it about the client.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::connection::shared_socket::SharedSocket;
use crate::tls::info::TlsInfo;
use crate::upstream::stream::{Transport, UpstreamStream};
use rustls::pki_types::ServerName;

use crate::upstream::tls::{UpstreamTls, UpstreamTlsFailed};

/// Which PROXY protocol header (HAProxy's specification) to send before the client's bytes, so
/// the upstream sees the client's address rather than ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The text header: `PROXY TCP4 <client> <server> <client port> <server port>\r\n`.
    V1,
    /// The binary header.
    V2,
}

/// One upstream: a TCP `HOST:PORT` or a unix socket path, written `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamAddr {
    /// `HOST:PORT`. An IP literal is used as is; a host name is resolved at every connect (on
    /// tokio's blocking pool).
    Tcp(String),
    /// A unix stream socket's path (`unix:/path`).
    Unix(PathBuf),
}

impl UpstreamAddr {
    /// Reads `unix:/path` as a unix socket and anything else as `HOST:PORT` (checked when it
    /// is connected to: a host name may resolve later).
    pub fn parse(text: &str) -> UpstreamAddr {
        match text.strip_prefix("unix:") {
            Some(path) => UpstreamAddr::Unix(PathBuf::from(path)),
            None => UpstreamAddr::Tcp(text.to_string()),
        }
    }
}

impl fmt::Display for UpstreamAddr {
    /// As it is written on the command line (the metrics' `upstream` label).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp(addr) => f.write_str(addr),
            UpstreamAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// When passive health checks take an upstream out of the choice, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamHealth {
    /// Consecutive failed connects that mark an upstream down.
    pub max_fails: u32,
    /// How long a down upstream first gets no clients; doubled each time the first connect
    /// after it fails again.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
}

impl Default for UpstreamHealth {
    /// One failure, 1 s doubling up to 30 s (see [`UpstreamHealth::MAX_FAILS`] for why one).
    fn default() -> Self {
        UpstreamHealth {
            max_fails: UpstreamHealth::MAX_FAILS,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl UpstreamHealth {
    /// The default failures to mark an upstream down: one, as nginx's `max_fails=1`.
    ///
    /// A passive check only sees real clients, so each failure it waits for is a client that
    /// paid for it: a refused connect is cheap, but a silent upstream costs the whole connect
    /// timeout. The price of a false alarm is small in comparison: the failed client is
    /// retried on another upstream anyway, and the upstream sits out one short backoff (1 s)
    /// before a single client probes it again.
    pub const MAX_FAILS: u32 = 1;
}

/// Where a proxying server forwards its clients.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The plaintext upstreams. Each client goes to the healthy one with the fewest
    /// connections; a failed connect is retried once on another.
    pub upstreams: Vec<UpstreamAddr>,
    /// Time to establish an upstream connection (and send the PROXY header).
    pub connect_timeout: Duration,
    /// The PROXY protocol header to send, if any (to a unix upstream too: it carries the
    /// client's TCP addresses).
    pub proxy_header: Option<ProxyHeader>,
    /// Passive health checks.
    pub health: UpstreamHealth,
    /// TLS to every upstream of the group (`None`: plaintext). A failed handshake counts
    /// against the upstream's health like a failed connect, and disposes the connection as
    /// `upstream_tls_failed`.
    pub tls: Option<UpstreamTls>,
}

impl ProxyConfig {
    /// Forwards to `upstream` (`HOST:PORT` or `unix:/path`) with a 5 s connect timeout and no
    /// PROXY header.
    pub fn new(upstream: impl Into<String>) -> Self {
        ProxyConfig::with_upstreams([upstream])
    }

    /// Spreads clients over `upstreams` (each `HOST:PORT` or `unix:/path`), with a 5 s
    /// connect timeout and no PROXY header. An empty list fails `ServerBuilder::start`.
    pub fn with_upstreams(upstreams: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ProxyConfig {
            upstreams: upstreams
                .into_iter()
                .map(|u| UpstreamAddr::parse(&u.into()))
                .collect(),
            connect_timeout: Duration::from_secs(5),
            proxy_header: None,
            health: UpstreamHealth::default(),
            tls: None,
        }
    }

    /// Speaks TLS to every upstream (see [`UpstreamTls`]).
    pub fn with_tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// The name to verify `upstream` under: the group's, or the upstream's host.
pub(crate) fn server_name_for(
    tls: &UpstreamTls,
    upstream: &UpstreamAddr,
) -> Result<ServerName<'static>, String> {
    if let Some(name) = &tls.server_name {
        return Ok(name.clone());
    }
    match upstream {
        UpstreamAddr::Tcp(addr) => {
            let host = host_of(addr);
            ServerName::try_from(host.to_string())
                .map_err(|e| format!("{addr}: {host:?} is no server name ({e})"))
        }
        UpstreamAddr::Unix(path) => Err(format!(
            "unix:{}: a TLS upstream on a unix socket needs a server name to verify",
            path.display()
        )),
    }
}

/// `HOST` of `HOST:PORT` (`[::1]:6379` → `::1`).
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// PROXY v2 TLV types and SSL sub-types (HAProxy's proxy-protocol.txt, section 2.2).
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// `client` bits of `PP2_TYPE_SSL`: over TLS, and a client certificate on this connection.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;

/// The value of a `PP2_TYPE_SSL` TLV: client bits, `verify` (0 only when the client presented
/// a certificate and it verified, as the specification says), then the version, the cipher
/// (the IANA name, which is OpenSSL's for TLS 1.3) and, with a client certificate, its CN.
fn ssl_tlv(tls: &TlsInfo) -> Vec<u8> {
    let verified = tls.client.is_some();
    let mut value = vec![PP2_CLIENT_SSL | if verified { PP2_CLIENT_CERT_CONN } else { 0 }];
    value.extend_from_slice(&u32::from(!verified).to_be_bytes());
    let mut sub = |kind: u8, text: &str| {
        let bytes = text.as_bytes();
        // Sub-TLV lengths are u16; these are names and a CN, far below that.
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        value.push(kind);
        value.extend_from_slice(&len.to_be_bytes());
        value.extend_from_slice(&bytes[..usize::from(len)]);
    };
    if let Some(version) = tls.version {
        sub(PP2_SUBTYPE_SSL_VERSION, version);
    }
    if let Some(cipher) = tls.cipher_suite {
        sub(
            PP2_SUBTYPE_SSL_CIPHER,
            &cipher.replacen("TLS13_", "TLS_", 1),
        );
    }
    if let Some(cn) = tls.client.as_ref().and_then(|c| c.cn.as_deref()) {
        sub(PP2_SUBTYPE_SSL_CN, cn);
    }
    value
}

/// The PROXY protocol header telling the upstream that `client` connected to `server`, and for
/// v2 what the TLS handshake negotiated, as haproxy's `send-proxy-v2-ssl-cn` sends it: `PP2_TYPE_ALPN`, `PP2_TYPE_AUTHORITY` (the SNI) and
/// `PP2_TYPE_SSL` with version, cipher and the client certificate's CN (mTLS). v1 has no
/// room for them.
///
/// Mixed address families (an IPv4 client on an IPv6 listener) cannot be expressed as TCP4 or
/// TCP6: v1 sends `PROXY UNKNOWN`, v2 sends the `LOCAL`-less unspecified family, and the
/// upstream uses the real connection's addresses.
pub(crate) fn proxy_header_with_tls(
    version: ProxyHeader,
    client: SocketAddr,
    server: SocketAddr,
    tls: Option<&TlsInfo>,
) -> Vec<u8> {
    match version {
        ProxyHeader::V1 => {
            let addresses = match (client, server) {
                (SocketAddr::V4(c), SocketAddr::V4(s)) => {
                    ppp::v1::Addresses::new_tcp4(*c.ip(), *s.ip(), c.port(), s.port())
                }
                (SocketAddr::V6(c), SocketAddr::V6(s)) => {
                    ppp::v1::Addresses::new_tcp6(*c.ip(), *s.ip(), c.port(), s.port())
                }
                _ => ppp::v1::Addresses::Unknown,
            };
            addresses.to_string().into_bytes()
        }
        ProxyHeader::V2 => {
            let version_command = ppp::v2::Version::Two | ppp::v2::Command::Proxy;
            let builder = match (client, server) {
                (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
                    ppp::v2::Builder::with_addresses(
                        version_command,
                        ppp::v2::Protocol::Stream,
                        (client, server),
                    )
                }
                _ => ppp::v2::Builder::with_addresses(
                    version_command,
                    ppp::v2::Protocol::Unspecified,
                    ppp::v2::Addresses::Unspecified,
                ),
            };
            let mut with_tlvs = Ok(builder);
            if let Some(tls) = tls {
                let mut builder = with_tlvs;
                if let Some(alpn) = &tls.alpn {
                    builder = builder.and_then(|b| b.write_tlv(PP2_TYPE_ALPN, alpn.as_bytes()));
                }
                if let Some(name) = &tls.server_name {
                    builder =
                        builder.and_then(|b| b.write_tlv(PP2_TYPE_AUTHORITY, name.as_bytes()));
                }
                with_tlvs = builder.and_then(|b| b.write_tlv(PP2_TYPE_SSL, &ssl_tlv(tls)));
            }
            // Building writes into a Vec and fails only for a TLV over 64 KiB, which names and a
            // CN are not; an empty header would be rejected by the upstream, which is the safe
            // way for this to go wrong.
            with_tlvs.and_then(|b| b.build()).unwrap_or_default()
        }
    }
}

/// Opens a connection to `upstream` for `client`, sends the PROXY header if configured, then
/// runs the TLS handshake of a TLS group (all of it within the connect timeout); the TLS of
/// `tls` is the client's, whose ALPN is passed on. A failed or late handshake is an
/// [`UpstreamTlsFailed`] error.
pub(crate) async fn connect(
    upstream: &UpstreamAddr,
    config: &ProxyConfig,
    client: SocketAddr,
    server: SocketAddr,
    tls: Option<&TlsInfo>,
) -> io::Result<UpstreamStream> {
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let stream = connect_plain(upstream, config, client, server, tls).await?;
    let Some(upstream_tls) = &config.tls else {
        return Ok(stream);
    };
    let transport = match stream {
        UpstreamStream::Tcp(s) => Transport::Tcp(SharedSocket::new(s)),
        UpstreamStream::Unix(s) => Transport::Unix(SharedSocket::new(s)),
        tls @ UpstreamStream::Tls(_) => return Ok(tls),
    };
    let name = server_name_for(upstream_tls, upstream)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, UpstreamTlsFailed(e)))?;
    let alpn = tls.and_then(|t| t.alpn.as_deref());
    match tokio::time::timeout_at(deadline, upstream_tls.handshake(transport, name, alpn)).await {
        Ok(Ok(stream)) => Ok(UpstreamStream::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            UpstreamTlsFailed(format!(
                "no handshake within the connect timeout ({:?})",
                config.connect_timeout
            )),
        )),
    }
}

/// The TCP or unix connect and the PROXY header, within the connect timeout.
async fn connect_plain(
    upstream: &UpstreamAddr,
    config: &ProxyConfig,
    client: SocketAddr,
    server: SocketAddr,
    tls: Option<&TlsInfo>,
) -> io::Result<UpstreamStream> {
    // The spare descriptor first: otherwise, at the open-files limit, the descriptor a
    // shedding acceptor freed can end up here, leaving no reserve for the next EMFILE.
    crate::edge::spare_fd::retake_if_lost();
    let header = config
        .proxy_header
        .map(|version| proxy_header_with_tls(version, client, server, tls));
    let attempt = async {
        Ok(match upstream {
            UpstreamAddr::Tcp(addr) => {
                let mut stream = TcpStream::connect(addr.as_str()).await?;
                // Small requests (redis commands) must not wait for Nagle on either side.
                stream.set_nodelay(true)?;
                send_header(&mut stream, header.as_deref()).await?;
                UpstreamStream::Tcp(stream)
            }
            UpstreamAddr::Unix(path) => {
                let mut stream = UnixStream::connect(path).await?;
                send_header(&mut stream, header.as_deref()).await?;
                UpstreamStream::Unix(stream)
            }
        })
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {:?}", config.connect_timeout),
        )),
    }
}

/// Sends the PROXY header, if there is one, before any of the client's bytes.
async fn send_header<S: AsyncWrite + Unpin>(
    stream: &mut S,
    header: Option<&[u8]>,
) -> io::Result<()> {
    match header {
        Some(header) => stream.write_all(header).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v1 example of the specification (section 2.1).
    #[test]
    fn v1_matches_the_specification_example() {
        let header = proxy_header_with_tls(
            ProxyHeader::V1,
            "192.168.0.1:56324".parse().unwrap(),
            "192.168.0.11:443".parse().unwrap(),
            None,
        );
        assert_eq!(header, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        let parsed = ppp::v1::Header::try_from(std::str::from_utf8(&header).unwrap()).unwrap();
        assert_eq!(parsed.addresses.to_string().as_bytes(), &header[..]);
    }

    #[test]
    fn v1_ipv6_and_mixed_families() {
        let header = proxy_header_with_tls(
            ProxyHeader::V1,
            "[::1]:1000".parse().unwrap(),
            "[::2]:443".parse().unwrap(),
            None,
        );
        assert_eq!(header, b"PROXY TCP6 ::1 ::2 1000 443\r\n");
        let mixed = proxy_header_with_tls(
            ProxyHeader::V1,
            "127.0.0.1:1000".parse().unwrap(),
            "[::1]:443".parse().unwrap(),
            None,
        );
        assert_eq!(mixed, b"PROXY UNKNOWN\r\n");
    }

    /// The v2 layout of the specification (section 2.2): the 12-byte signature, version 2 and
    /// PROXY command (0x21), TCP over IPv4 (0x11), a 12-byte address block, then source address,
    /// destination address, source port, destination port, in network order.
    #[test]
    fn v2_matches_the_specification_layout() {
        let header = proxy_header_with_tls(
            ProxyHeader::V2,
            "192.168.0.1:56324".parse().unwrap(),
            "192.168.0.11:443".parse().unwrap(),
            None,
        );
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        expected.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
        expected.extend_from_slice(&56324u16.to_be_bytes());
        expected.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(header, expected);
        let parsed = ppp::v2::Header::try_from(&header[..]).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((
                "192.168.0.1:56324".parse::<SocketAddr>().unwrap(),
                "192.168.0.11:443".parse::<SocketAddr>().unwrap()
            ))
        );
    }

    #[test]
    fn v2_ipv6_is_tcp_over_ipv6_with_36_address_bytes() {
        let header = proxy_header_with_tls(
            ProxyHeader::V2,
            "[2001:db8::1]:1000".parse().unwrap(),
            "[2001:db8::2]:443".parse().unwrap(),
            None,
        );
        assert_eq!(&header[12..16], &[0x21, 0x21, 0x00, 36]);
        assert_eq!(header.len(), 16 + 36);
    }
}

#[cfg(test)]
mod addr_tests {
    use super::*;

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("redis.internal:6380"), "redis.internal");
        assert_eq!(host_of("127.0.0.1:6380"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6380"), "::1");
    }

    #[test]
    fn unix_prefix_is_a_path_and_the_rest_is_host_port() {
        assert_eq!(
            UpstreamAddr::parse("unix:/run/redis.sock"),
            UpstreamAddr::Unix("/run/redis.sock".into())
        );
        assert_eq!(
            UpstreamAddr::parse("localhost:6379"),
            UpstreamAddr::Tcp("localhost:6379".into())
        );
        for text in ["unix:/run/redis.sock", "127.0.0.1:6379", "[::1]:6379"] {
            assert_eq!(UpstreamAddr::parse(text).to_string(), text);
        }
    }
}
