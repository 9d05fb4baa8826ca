//! `--accept-proxy`: the binary behind a load balancer that sends a PROXY protocol header.
//! A recording client writes the header, then speaks TLS over the same socket; the original
//! address must be the peer in `/connections`, in the disposal log line, and in the PROXY
//! header sent upstream. Invalid, cut short or late headers are `proxy_header_invalid`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;

use common::{Tlsvisor, HANG};
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
