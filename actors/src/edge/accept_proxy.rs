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
    // ppp reads the TLVs lazily, so a header whose TLV area is garbage parses: checked here,
    // for LOCAL headers too (a balancer's own checks send well-formed ones).
    check_tlvs(header.as_bytes(), header.tlv_bytes())?;
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

/// PROXY v2 TLV types that [`check_tlvs`] bounds (HAProxy's proxy-protocol.txt, 2.2).
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_CRC32C: u8 = 0x03;
const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
/// A TLV's type and length.
const TLV_HEADER: usize = 3;
/// The longest TLV value accepted: haproxy's `HA_PP2_MAX_ALLOC`, which it calls a bound
/// against denial of service. (A client certificate sent in TLVs does not fit either.)
const MAX_TLV_VALUE: usize = 1024;
/// The longest `PP2_TYPE_AUTHORITY` (a host name) and `PP2_TYPE_UNIQUE_ID` (the
/// specification's bound), as haproxy enforces them.
const MAX_AUTHORITY: usize = 255;
const MAX_UNIQUE_ID: usize = 128;

/// Refuses a TLV area haproxy refuses (`conn_recv_proxy` in its `src/connection.c`): every TLV
/// must fit in the header, together they must fill it exactly (no byte left over, no TLV
/// running past the end), no value may be longer than [`MAX_TLV_VALUE`], an authority longer
/// than 255 bytes or a unique id longer than 128, and a `PP2_TYPE_CRC32C` must be four bytes
/// and match the header. TLVs of other types are accepted and ignored, as haproxy does (cloud
/// balancers send their own, in the range 0xE0–0xEF the specification leaves to applications).
fn check_tlvs(header: &[u8], mut tlvs: &[u8]) -> io::Result<()> {
    while !tlvs.is_empty() {
        let [kind, high, low, ..] = *tlvs else {
            return Err(invalid("v2: bytes left after the last TLV"));
        };
        let length = usize::from(u16::from_be_bytes([high, low]));
        let Some(value) = tlvs.get(TLV_HEADER..TLV_HEADER + length) else {
            return Err(invalid("v2: a TLV runs past the end of the header"));
        };
        let limit = match kind {
            PP2_TYPE_AUTHORITY => MAX_AUTHORITY,
            PP2_TYPE_UNIQUE_ID => MAX_UNIQUE_ID,
            _ => MAX_TLV_VALUE,
        };
        if length > limit {
            return Err(invalid(&format!(
                "v2: TLV {kind:#04x} of {length} bytes, longer than {limit}"
            )));
        }
        if kind == PP2_TYPE_CRC32C {
            check_crc32c(header, header.len() - tlvs.len() + TLV_HEADER, value)?;
        }
        tlvs = &tlvs[TLV_HEADER + length..];
    }
    Ok(())
}

/// A `PP2_TYPE_CRC32C` TLV whose value, at `at` in `header`, is four bytes: the CRC-32C of the
/// whole header with those four bytes zeroed.
fn check_crc32c(header: &[u8], at: usize, value: &[u8]) -> io::Result<()> {
    let Ok(sent) = <[u8; 4]>::try_from(value) else {
        return Err(invalid("v2: a CRC32C TLV is not four bytes"));
    };
    let mut zeroed = header.to_vec();
    zeroed[at..at + 4].fill(0);
    if crc32c(&zeroed) != u32::from_be_bytes(sent) {
        return Err(invalid("v2: the CRC32C TLV does not match the header"));
    }
    Ok(())
}

/// CRC-32C (Castagnoli), bit by bit: a header is at most 4 KiB and the TLV is rare.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
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

    /// A v2 PROXY header for 203.0.113.7:51000 → 192.0.2.1:443 followed by `tlvs`, its
    /// length field covering them.
    fn v2_with_tlvs(tlvs: &[u8]) -> Vec<u8> {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.extend([0x21, 0x11]);
        header.extend(((12 + tlvs.len()) as u16).to_be_bytes());
        header.extend([203, 0, 113, 7, 192, 0, 2, 1, 0xc7, 0x38, 1, 0xbb]);
        header.extend(tlvs);
        header
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut tlv = vec![kind];
        tlv.extend((value.len() as u16).to_be_bytes());
        tlv.extend(value);
        tlv
    }

    fn refusal(header: &[u8]) -> String {
        match parse_v2(header) {
            Ok(found) => panic!("accepted as {found:?}"),
            Err(e) => e.to_string(),
        }
    }

    const ORIGINAL: &str = "203.0.113.7:51000";

    #[test]
    fn well_formed_tlvs_are_accepted_whatever_their_type() {
        let tlvs = [
            tlv(0x01, b"h2"),
            tlv(PP2_TYPE_AUTHORITY, &[b'a'; MAX_AUTHORITY]),
            tlv(0x04, &[0; 17]),
            tlv(PP2_TYPE_UNIQUE_ID, &[1; MAX_UNIQUE_ID]),
            tlv(0x20, &[1, 0, 0, 0, 0]),
            tlv(0xea, &[9; MAX_TLV_VALUE]),
            tlv(0x00, b""),
        ]
        .concat();
        let header = v2_with_tlvs(&tlvs);
        assert_eq!(
            parse_v2(&header).unwrap(),
            Original::Client(ORIGINAL.parse().unwrap())
        );
    }

    #[test]
    fn a_tlv_running_past_the_header_or_bytes_left_over_are_refused() {
        // The length field of the last TLV says 10; 4 bytes follow.
        let mut past = tlv(0x01, b"h2");
        past.extend([0xe0, 0, 10, 1, 2, 3, 4]);
        assert!(refusal(&v2_with_tlvs(&past)).contains("runs past"));
        // One or two bytes where a TLV's type and length should be.
        for left in [&[0xe0][..], &[0xe0, 0]] {
            let tlvs = [tlv(0x01, b"h2"), left.to_vec()].concat();
            assert!(refusal(&v2_with_tlvs(&tlvs)).contains("left after"));
        }
    }

    /// The header: 4,080 bytes of payload, all but the addresses one TLV of garbage.
    #[test]
    fn a_4080_byte_garbage_tlv_is_refused() {
        let garbage: Vec<u8> = (0..4065u32).map(|i| (i * 7 + 3) as u8).collect();
        let header = v2_with_tlvs(&tlv(0xe3, &garbage));
        assert_eq!(header.len(), MAX_V2_LENGTH);
        assert!(refusal(&header).contains("longer than 1024"));
        // Garbage that is no TLV at all.
        let header = v2_with_tlvs(&garbage[..4068 - 12 + 9]);
        assert!(parse_v2(&header).is_err());
    }

    #[test]
    fn an_authority_or_unique_id_longer_than_haproxy_takes_is_refused() {
        let long_name = tlv(PP2_TYPE_AUTHORITY, &[b'a'; MAX_AUTHORITY + 1]);
        assert!(refusal(&v2_with_tlvs(&long_name)).contains("longer than 255"));
        let long_id = tlv(PP2_TYPE_UNIQUE_ID, &[1; MAX_UNIQUE_ID + 1]);
        assert!(refusal(&v2_with_tlvs(&long_id)).contains("longer than 128"));
    }

    #[test]
    fn a_crc32c_tlv_must_be_four_bytes_and_match_the_header() {
        // The check value of CRC-32C (RFC 3720, B.4): "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let with_crc = |crc: u32| {
            v2_with_tlvs(&[tlv(0x01, b"h2"), tlv(PP2_TYPE_CRC32C, &crc.to_be_bytes())].concat())
        };
        let right = crc32c(&with_crc(0));
        assert!(parse_v2(&with_crc(right)).is_ok());
        assert!(refusal(&with_crc(right ^ 1)).contains("does not match"));
        assert!(refusal(&v2_with_tlvs(&tlv(PP2_TYPE_CRC32C, &[0; 3]))).contains("four bytes"));
    }

    /// What tlsvisor itself sends upstream with `--proxy-protocol v2` (ALPN, authority, SSL
    /// with its sub-TLVs) is accepted by its own reader.
    #[test]
    fn the_headers_tlsvisor_sends_are_accepted() {
        let tls = crate::tls::info::TlsInfo {
            version: Some("TLSv1.3"),
            cipher_suite: Some("TLS13_AES_128_GCM_SHA256"),
            kx_group: Some("X25519MLKEM768"),
            server_name: Some("example.com".into()),
            alpn: Some("h2".into()),
            client: None,
            resumed: false,
        };
        let header = crate::upstream::config::proxy_header_with_tls(
            crate::upstream::config::ProxyHeader::V2,
            ORIGINAL.parse().unwrap(),
            "192.0.2.1:443".parse().unwrap(),
            Some(&tls),
        );
        assert!(header.len() > 16 + 12 + 3 * 3, "TLVs written");
        assert_eq!(
            parse_v2(&header).unwrap(),
            Original::Client(ORIGINAL.parse().unwrap())
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
            fn tlvs_that_tile_the_header_within_the_bounds_are_accepted_and_any_cut_refused(
                (src, dst) in pair(),
                tlvs in proptest::collection::vec(
                    (any::<u8>().prop_filter("bounded or checked types", |k| {
                        ![PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID].contains(k)
                    }), proptest::collection::vec(any::<u8>(), 0..300)),
                    0..8,
                ),
                cut in 1..3usize,
            ) {
                let mut area = Vec::new();
                for (kind, value) in &tlvs {
                    area.push(*kind);
                    area.extend((value.len() as u16).to_be_bytes());
                    area.extend(value);
                }
                let base = v2(src, dst);
                let with = |area: &[u8]| {
                    let mut header = base.clone();
                    let length = (base.len() - V2_FIXED + area.len()) as u16;
                    header[14..16].copy_from_slice(&length.to_be_bytes());
                    header.extend(area);
                    header
                };
                prop_assert_eq!(parse_v2(&with(&area)).unwrap(), Original::Client(src));
                // The length field shortened: the last TLV runs past the end, or leaves bytes.
                if area.len() >= cut {
                    prop_assert!(parse_v2(&with(&area[..area.len() - cut])).is_err());
                }
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
