//! `AcceptProxy`: reading the PROXY protocol header a load balancer in front sends before the
//! TLS handshake, so that the client's original address stands for the peer.
//!
//! The header is read with exact-sized reads (byte by byte for v1's text line, the fixed 16
//! bytes then the announced length for v2), so not one byte of the TLS handshake behind it is
//! consumed, and memory is bounded (107 bytes for v1, [`MAX_V2_LENGTH`] for v2). Parsing is
//! the `ppp` crate's.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header (the specification's 107 bytes, `\r\n` included).
const MAX_V1_LENGTH: usize = 107;
/// The longest v2 header read: the 16 fixed bytes and addresses, with room for TLVs. A
/// balancer sending more (a client certificate in TLVs) is refused rather than buffered.
pub(crate) const MAX_V2_LENGTH: usize = 4096;
/// The fixed part of a v2 header: signature, version and command, family, length.
const V2_FIXED: usize = 16;

/// Which PROXY protocol versions are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersions {
    /// Text headers only.
    V1,
    /// Binary headers only.
    V2,
    /// Either.
    Any,
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// The first `prefix` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, rest) = ((prefix / 8) as usize, prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xff_u8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text}: not an IP address or network"))?;
        let longest = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => longest,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= longest)
                .ok_or_else(|| format!("{text}: the prefix length must be 0 to {longest}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Read a PROXY protocol header from every client (or from the trusted sources only) before
/// its TLS handshake.
#[derive(Clone, Debug)]
pub struct AcceptProxy {
    /// The versions accepted.
    pub versions: ProxyVersions,
    /// The sources that must send a header; empty: every source must. A client from any
    /// other source is served as a direct client: no header is read, and one it sends fails
    /// its TLS handshake.
    pub from: Vec<Cidr>,
    /// Time the header gets to arrive, whole.
    pub timeout: Duration,
}

impl AcceptProxy {
    /// Whether a client connecting from `ip` must send a header.
    pub fn expects_header_from(&self, ip: IpAddr) -> bool {
        self.from.is_empty() || self.from.iter().any(|net| net.contains(ip))
    }
}

/// What a valid header said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Original {
    /// The client's original address.
    Client(SocketAddr),
    /// A `LOCAL` (v2) or `UNKNOWN` (v1) header: the balancer's own connection (a health
    /// check); the TCP peer stays the peer.
    Local,
}

/// Reads and checks one header from `tcp` (a client socket), consuming exactly its bytes.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    tcp: &mut R,
    versions: ProxyVersions,
) -> io::Result<Original> {
    let first = tcp.read_u8().await?;
    match first {
        b'P' if versions != ProxyVersions::V2 => {
            let mut line = vec![first];
            while !line.ends_with(b"\r\n") {
                if line.len() >= MAX_V1_LENGTH {
                    return Err(invalid("v1 header longer than 107 bytes"));
                }
                line.push(tcp.read_u8().await?);
            }
            parse_v1(&line)
        }
        b'\r' if versions != ProxyVersions::V1 => {
            let mut header = vec![0; V2_FIXED];
            header[0] = first;
            tcp.read_exact(&mut header[1..]).await?;
            let length = u16::from_be_bytes([header[14], header[15]]) as usize;
            if V2_FIXED + length > MAX_V2_LENGTH {
                return Err(invalid("v2 header longer than the limit"));
            }
            // The signature is checked before anything more is read.
            if let Err(ppp::v2::ParseError::Prefix) = ppp::v2::Header::try_from(&header[..]) {
                return Err(invalid("not a PROXY v2 signature"));
            }
            header.resize(V2_FIXED + length, 0);
            tcp.read_exact(&mut header[V2_FIXED..]).await?;
            parse_v2(&header)
        }
        _ => Err(invalid("no PROXY header of an accepted version")),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn parse_v1(line: &[u8]) -> io::Result<Original> {
    let header = ppp::v1::Header::try_from(line).map_err(|e| invalid(&format!("v1: {e}")))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Original::Client(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Original::Client(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v1::Addresses::Unknown => Original::Local,
    })
}

fn parse_v2(bytes: &[u8]) -> io::Result<Original> {
    let header = ppp::v2::Header::try_from(bytes).map_err(|e| invalid(&format!("v2: {e}")))?;
    if header.command == ppp::v2::Command::Local {
        return Ok(Original::Local);
    }
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Ok(Original::Client(SocketAddr::new(
            a.source_address.into(),
            a.source_port,
        ))),
        ppp::v2::Addresses::IPv6(a) => Ok(Original::Client(SocketAddr::new(
            a.source_address.into(),
            a.source_port,
        ))),
        ppp::v2::Addresses::Unspecified => Ok(Original::Local),
        ppp::v2::Addresses::Unix(_) => Err(invalid("v2: a unix-socket source has no address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_only() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "2001:db8::/33".parse().unwrap();
        assert!(v6.contains("2001:db8:7fff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db8:8000::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn v1_and_v2_headers_give_the_original_address() {
        let v1 = parse_v1(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n").unwrap();
        assert_eq!(v1, Original::Client("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), Original::Local);
        assert!(parse_v1(b"PROXY TCP4 nonsense\r\n").is_err());
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 203, 0, 113, 7, 192, 0, 2, 1, 0xc7, 0x38, 1, 0xbb,
        ]);
        assert_eq!(
            parse_v2(&v2).unwrap(),
            Original::Client("203.0.113.7:51000".parse().unwrap())
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use std::net::{Ipv4Addr, Ipv6Addr};
        use std::pin::Pin;
        use std::task::{Context, Poll};
        use tokio::io::ReadBuf;

        /// Hands out its bytes one per read, as a slow balancer's socket might.
        struct Trickle<'a>(&'a [u8]);

        impl AsyncRead for Trickle<'_> {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                if let Some((first, rest)) = self.0.split_first() {
                    buf.put_slice(&[*first]);
                    self.0 = rest;
                }
                Poll::Ready(Ok(()))
            }
        }

        /// The verdict on `bytes` read byte by byte, and how many bytes were left unread.
        fn verdict(bytes: &[u8], versions: ProxyVersions) -> (io::Result<Original>, usize) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut reader = Trickle(bytes);
            let verdict = runtime.block_on(read_header(&mut reader, versions));
            (verdict, reader.0.len())
        }

        fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }

        fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
            let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            let addresses: Vec<u8> = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets(), d.octets()].concat(),
                (IpAddr::V6(s), IpAddr::V6(d)) => [s.octets(), d.octets()].concat(),
                _ => unreachable!("the strategy pairs families"),
            };
            let family = if src.is_ipv4() { 0x11 } else { 0x21 };
            let length = (addresses.len() + 4) as u16;
            header.extend([0x21, family]);
            header.extend(length.to_be_bytes());
            header.extend(addresses);
            header.extend(src.port().to_be_bytes());
            header.extend(dst.port().to_be_bytes());
            header
        }

        fn pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
            let v4 = (
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<[u8; 4]>(),
                any::<u16>(),
            )
                .prop_map(|(s, sp, d, dp)| {
                    (
                        SocketAddr::new(Ipv4Addr::from(s).into(), sp),
                        SocketAddr::new(Ipv4Addr::from(d).into(), dp),
                    )
                });
            let v6 = (
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<u16>(),
            )
                .prop_map(|(s, sp, d, dp)| {
                    (
                        SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                        SocketAddr::new(Ipv6Addr::from(d).into(), dp),
                    )
                });
            prop_oneof![v4, v6]
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_and_are_read_within_the_bound(
                bytes in proptest::collection::vec(any::<u8>(), 0..6000),
            ) {
                let (_verdict, left) = verdict(&bytes, ProxyVersions::Any);
                prop_assert!(bytes.len() - left <= MAX_V2_LENGTH);
            }

            #[test]
            fn a_valid_header_gives_its_source_and_consumes_only_itself(
                (src, dst) in pair(),
                binary in any::<bool>(),
                after in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let header = if binary { v2(src, dst) } else { v1(src, dst) };
                let bytes = [header.clone(), after.clone()].concat();
                let (found, left) = verdict(&bytes, ProxyVersions::Any);
                prop_assert_eq!(found.unwrap(), Original::Client(src));
                prop_assert_eq!(left, after.len());
                // The other version alone refuses it.
                let only = if binary { ProxyVersions::V1 } else { ProxyVersions::V2 };
                prop_assert!(verdict(&bytes, only).0.is_err());
            }

            #[test]
            fn every_cut_header_is_refused(
                (src, dst) in pair(),
                binary in any::<bool>(),
                cut in any::<proptest::sample::Index>(),
            ) {
                let header = if binary { v2(src, dst) } else { v1(src, dst) };
                let cut = cut.index(header.len());
                prop_assert!(verdict(&header[..cut], ProxyVersions::Any).0.is_err());
            }
        }
    }
}
