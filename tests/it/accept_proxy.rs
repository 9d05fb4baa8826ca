//! `--accept-proxy`: the binary behind a load balancer that sends a PROXY protocol header.
//! A recording client writes the header, then speaks TLS over the same socket; the original
//! address must be the peer in `/connections`, in the disposal log line, and in the PROXY
//! header sent upstream. Invalid, cut short or late headers are `proxy_header_invalid`.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;

use crate::common;
use crate::common::{Tlsvisor, HANG};
use serde_json::Value;
use tlsvisor_actors::testing::{client_config, eventually, TlsClient};

const ORIGINAL: &str = "203.0.113.7:51000";

fn v1_header() -> Vec<u8> {
    b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n".to_vec()
}

fn v2_header() -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    // PROXY command, TCP over IPv4, 12 bytes of addresses: 203.0.113.7:51000 → 192.0.2.1:443.
    header.extend([
        0x21, 0x11, 0, 12, 203, 0, 113, 7, 192, 0, 2, 1, 0xc7, 0x38, 1, 0xbb,
    ]);
    header
}

/// A TLS client that first writes `header` on its socket, as a balancer would.
fn connect_with_header(server: &Tlsvisor, header: &[u8]) -> std::io::Result<TlsClient> {
    let mut tcp = TcpStream::connect(server.listen)?;
    tcp.write_all(header)?;
    TlsClient::over(tcp, client_config(&common::dev_ca())?, "localhost")
}

fn connections(admin: SocketAddr) -> Vec<Value> {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "30"])
        .arg(format!("http://{admin}/connections"))
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    listed["connections"].as_array().unwrap().clone()
}

fn disposed_as(server: &Tlsvisor, reason: &str, count: f64) -> bool {
    eventually(HANG, || {
        server
            .scrape()
            .0
            .get(&format!(
                "tlsvisor_connections_disposed_total{{reason=\"{reason}\"}}"
            ))
            .copied()
            == Some(count)
    })
}

#[test]
fn v1_and_v2_headers_make_the_original_address_the_peer() {
    let server = Tlsvisor::serve(&["--accept-proxy", "any", "--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_listen();
    for header in [v1_header(), v2_header()] {
        let mut client = connect_with_header(&server, &header).unwrap();
        assert_eq!(client.echo(b"through").unwrap(), b"through");
        let listed = connections(admin);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["peer"], ORIGINAL);
        let id = listed[0]["id"].as_u64().unwrap();
        drop(client.close());
        assert!(eventually(HANG, || server
            .logs_with("disposed")
            .iter()
            .any(|l| l["conn_id"] == id && l["peer"] == ORIGINAL)));
    }
    assert!(disposed_as(&server, "peer_eof", 2.0));
}

#[test]
fn garbage_a_cut_header_and_a_late_one_are_proxy_header_invalid() {
    let server = Tlsvisor::serve(&["--accept-proxy", "any", "--accept-proxy-timeout", "300ms"]);
    // Garbage where the header should be.
    let mut tcp = TcpStream::connect(server.listen).unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(disposed_as(&server, "proxy_header_invalid", 1.0));
    // A header cut short by the client's end.
    let mut tcp = TcpStream::connect(server.listen).unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 19").unwrap();
    tcp.shutdown(Shutdown::Write).unwrap();
    assert!(disposed_as(&server, "proxy_header_invalid", 2.0));
    // A v2 header cut short.
    let mut tcp = TcpStream::connect(server.listen).unwrap();
    tcp.write_all(&v2_header()[..20]).unwrap();
    tcp.shutdown(Shutdown::Write).unwrap();
    assert!(disposed_as(&server, "proxy_header_invalid", 3.0));
    // No header at all: TLS straight away is not a header.
    assert!(TlsClient::connect(server.listen, client_config(&common::dev_ca()).unwrap()).is_err());
    assert!(disposed_as(&server, "proxy_header_invalid", 4.0));
    // A header that never arrives.
    let silent = TcpStream::connect(server.listen).unwrap();
    assert!(disposed_as(&server, "proxy_header_invalid", 5.0));
    drop((tcp, silent));
    // The version asked for only.
    let only_v1 = Tlsvisor::serve(&["--accept-proxy", "v1"]);
    assert!(connect_with_header(&only_v1, &v2_header()).is_err());
    assert!(disposed_as(&only_v1, "proxy_header_invalid", 1.0));
    let mut client = connect_with_header(&only_v1, &v1_header()).unwrap();
    assert_eq!(client.echo(b"v1").unwrap(), b"v1");
}

/// [`v2_header`] with `tlvs` after its addresses, its length field covering them.
fn v2_header_with_tlvs(tlvs: &[u8]) -> Vec<u8> {
    let mut header = v2_header();
    header[14..16].copy_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    header.extend(tlvs);
    header
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut tlv = vec![kind];
    tlv.extend((value.len() as u16).to_be_bytes());
    tlv.extend(value);
    tlv
}

/// Issue 17, finding 10: haproxy refuses these, and so must we (a balancer's header with
/// garbage in it is not one to trust the client's address from).
#[test]
fn v2_headers_with_malformed_tlvs_are_proxy_header_invalid() {
    let server = Tlsvisor::serve(&["--accept-proxy", "v2"]);
    // Well-formed TLVs (ALPN, authority, a custom one) are read past.
    let fine = [
        tlv(0x01, b"h2"),
        tlv(0x02, b"example.com"),
        tlv(0xea, b"vpce-0123"),
    ]
    .concat();
    let mut client = connect_with_header(&server, &v2_header_with_tlvs(&fine)).unwrap();
    assert_eq!(client.echo(b"through").unwrap(), b"through");
    // A TLV whose length runs past the end of the header.
    let mut past = tlv(0x01, b"h2");
    past.extend([0xe0, 0, 40, 1, 2, 3]);
    // A 4,080-byte payload: the addresses and one TLV of 4,065 bytes of garbage.
    let garbage: Vec<u8> = (0..4065u32).map(|i| (i * 7 + 3) as u8).collect();
    let huge = tlv(0xe3, &garbage);
    // Two bytes left over after the last TLV.
    let leftover = [tlv(0x01, b"h2"), vec![0xe0, 0]].concat();
    for (n, tlvs) in [past, huge, leftover].iter().enumerate() {
        let header = v2_header_with_tlvs(tlvs);
        assert!(header.len() <= 4096);
        assert!(
            connect_with_header(&server, &header).is_err(),
            "header {n} was accepted"
        );
        assert!(disposed_as(&server, "proxy_header_invalid", n as f64 + 1.0));
    }
    // The log line can trail the metric (the log has a thread of its own): wait for it.
    let reasons: Vec<String> = server
        .logged("PROXY header invalid", 3)
        .iter()
        .map(|l| l["error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(reasons[0].contains("runs past"), "{reasons:?}");
    assert!(reasons[1].contains("longer than 1024"), "{reasons:?}");
    assert!(reasons[2].contains("left after"), "{reasons:?}");
    assert!(matches!(
        client.close(),
        tlsvisor_actors::testing::CloseSeen::CloseNotifyThenEof
    ));
    assert!(disposed_as(&server, "peer_eof", 1.0));
}

#[test]
fn a_source_outside_accept_proxy_from_is_a_direct_client_and_its_header_is_refused() {
    let server = Tlsvisor::serve(&[
        "--accept-proxy",
        "any",
        "--accept-proxy-from",
        "10.0.0.0/8",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = server.admin_listen();
    // 127.0.0.1 is not a trusted balancer: its header is not read, and fails the handshake.
    assert!(connect_with_header(&server, &v1_header()).is_err());
    assert!(disposed_as(&server, "handshake_failed", 1.0));
    let mut direct = server.connect().unwrap();
    assert_eq!(direct.echo(b"direct").unwrap(), b"direct");
    let listed = connections(admin);
    let peer: SocketAddr = listed[0]["peer"].as_str().unwrap().parse().unwrap();
    assert_eq!(peer, direct.tcp().local_addr().unwrap());
}

#[test]
fn the_original_address_goes_in_the_header_sent_upstream() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap().to_string();
    let recorder = std::thread::spawn(move || {
        let (conn, _) = upstream.accept().unwrap();
        conn.set_read_timeout(Some(HANG)).unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        line
    });
    let server = Tlsvisor::serve(&[
        "--accept-proxy",
        "v2",
        "--protocol",
        "proxy",
        "--upstream",
        &upstream_addr,
        "--proxy-protocol",
        "v1",
    ]);
    let _client = connect_with_header(&server, &v2_header()).unwrap();
    let line = recorder.join().unwrap();
    assert!(
        line.starts_with("PROXY TCP4 203.0.113.7 ") && line.contains(" 51000 "),
        "{line:?}"
    );
}

/// A v2 header naming `client` (an IPv4 address and port) as the original source.
fn v2_header_from(client: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(client) = client else {
        panic!("an IPv4 client, please")
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(client.ip().octets());
    header.extend([192, 0, 2, 1]);
    header.extend(client.port().to_be_bytes());
    header.extend(443_u16.to_be_bytes());
    header
}

/// The binary behind a balancer at 127.0.0.1, with `--max-connections-per-ip limit`.
fn behind_balancer(limit: &str, extra: &[&str]) -> Tlsvisor {
    let mut args = vec![
        "--accept-proxy",
        "v2",
        "--accept-proxy-from",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        limit,
    ];
    args.extend_from_slice(extra);
    Tlsvisor::serve(&args)
}

#[test]
fn per_ip_limits_count_the_original_client_not_the_balancer() {
    let server = behind_balancer("2", &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_listen();
    let client_a = |port| SocketAddr::from(([203, 0, 113, 7], port));
    let client_b = |port| SocketAddr::from(([198, 51, 100, 9], port));
    // Four from A through the balancer (every socket from 127.0.0.1): two fit A's limit.
    let mut admitted_a = Vec::new();
    let mut refused_a = 0;
    for port in 40001..=40004 {
        match connect_with_header(&server, &v2_header_from(client_a(port)))
            .and_then(|mut c| c.echo(b"a").map(|_| c))
        {
            Ok(client) => admitted_a.push(client),
            Err(_) => refused_a += 1,
        }
    }
    assert_eq!((admitted_a.len(), refused_a), (2, 2));
    assert!(disposed_as(&server, "per_ip_limit", 2.0));
    // B has a budget of its own, although it comes through the same balancer address.
    let mut admitted_b: Vec<TlsClient> = (50001..=50002)
        .map(|port| connect_with_header(&server, &v2_header_from(client_b(port))).unwrap())
        .collect();
    for client in &mut admitted_b {
        assert_eq!(client.echo(b"b").unwrap(), b"b");
    }
    // Four connections live from 127.0.0.1, twice its limit: the balancer is not limited.
    let listed = connections(admin);
    let mut peers: Vec<&str> = listed.iter().map(|c| c["peer"].as_str().unwrap()).collect();
    peers.sort();
    assert_eq!(
        peers,
        [
            "198.51.100.9:50001",
            "198.51.100.9:50002",
            "203.0.113.7:40001",
            "203.0.113.7:40002"
        ]
    );
    let metrics = server.scrape();
    assert_eq!(
        metrics.get("tlsvisor_connections_rejected_total{reason=\"per_ip_limit\"}"),
        2.0
    );
    assert_eq!(metrics.get("tlsvisor_connections_accepted_total"), 6.0);
    // A's slots are the connections' own: once one closes, A fits again.
    drop(admitted_a.pop().unwrap().close());
    assert!(disposed_as(&server, "peer_eof", 1.0));
    let mut again = connect_with_header(&server, &v2_header_from(client_a(40005))).unwrap();
    assert_eq!(again.echo(b"again").unwrap(), b"again");
    assert!(
        connect_with_header(&server, &v2_header_from(client_a(40006)))
            .and_then(|mut c| c.echo(b"over"))
            .is_err(),
        "A is at its limit again"
    );
    assert!(disposed_as(&server, "per_ip_limit", 3.0));
}

#[test]
fn a_direct_client_beside_the_balancer_is_limited_at_accept_on_its_own_address() {
    let server = behind_balancer("1", &[]);
    // 127.0.0.2 is no balancer: it sends no header and is limited at accept, as without
    // --accept-proxy (a rejection, not an accepted connection).
    let direct = || -> std::io::Result<TlsClient> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())?;
        socket.connect_timeout(&server.listen.into(), HANG)?;
        let mut client = TlsClient::over(
            socket.into(),
            client_config(&common::dev_ca())?,
            "localhost",
        )?;
        client.echo(b"direct")?;
        Ok(client)
    };
    let _first = direct().unwrap();
    assert!(
        direct().is_err(),
        "a second one from 127.0.0.2 is over the limit"
    );
    assert!(eventually(HANG, || server.scrape().get(
        "tlsvisor_connections_rejected_total{reason=\"per_ip_limit\"}"
    ) == 1.0));
    assert_eq!(
        server.scrape().get("tlsvisor_connections_accepted_total"),
        1.0
    );
    // The balancer's clients are not counted against 127.0.0.2, nor against each other.
    let mut through = Vec::new();
    for port in 40001..=40002 {
        let header = v2_header_from(SocketAddr::from(([203, 0, 113, port as u8], port)));
        let mut client = connect_with_header(&server, &header).unwrap();
        assert_eq!(client.echo(b"p").unwrap(), b"p");
        through.push(client);
    }
}
