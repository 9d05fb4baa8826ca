//! The TLS-terminating proxy over real sockets: integrity both ways, half-close in both orders,
//! each failure with its reason, PROXY headers byte for byte, backpressure.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tlsvisor_actors::testing::leak::{self, TcpState};
use tlsvisor_actors::testing::upstream::{self, pattern};
use tlsvisor_actors::testing::{CloseSeen, TestServer, TestUpstream, TlsClient};
use tlsvisor_actors::{DisposeReason, ProxyConfig, ProxyHeader};

/// A ceiling only a hang reaches.
const HANG: Duration = Duration::from_secs(30);
const BULK: usize = 64 * 1024 * 1024;

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

fn proxy_to(addr: SocketAddr) -> TestServer {
    TestServer::builder().start_proxy(ProxyConfig::new(addr.to_string()))
}

fn only_reason(server: &TestServer) -> DisposeReason {
    let by_id = server.assert_each_disposed_once();
    assert_eq!(by_id.len(), 1, "{by_id:?}");
    by_id.values().next().unwrap().reason
}

/// No socket of ours to the upstream is left open or half-closed.
fn assert_upstream_sockets_closed(upstream: SocketAddr) {
    let port = upstream.port();
    let open = || {
        leak::sockets_to_remote_port(port, TcpState::Established).unwrap()
            + leak::sockets_to_remote_port(port, TcpState::CloseWait).unwrap()
    };
    assert!(
        tlsvisor_actors::testing::eventually(HANG, || open() == 0),
        "{} sockets to the upstream still open",
        open()
    );
}

#[test]
fn bulk_both_ways_with_the_client_half_closing_first() {
    // The upstream answers only after the client's EOF reached it: the FIN went through while
    // the other direction stayed open.
    let up = TestUpstream::start(|mut s: TcpStream| {
        let got = upstream::read_to_eof(&mut s).unwrap();
        s.write_all(&pattern(2, BULK)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        (got.len(), hash(&got))
    });
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    let sent = pattern(1, BULK);
    client.send(&sent).unwrap();
    client.finish_sending().unwrap();
    let (received, close) = client.receive_until_close();
    assert!(matches!(close, CloseSeen::CloseNotifyThenEof), "{close:?}");
    assert_eq!(received.len(), BULK);
    assert_eq!(hash(&received), hash(&pattern(2, BULK)));
    assert_eq!(up.next_report(HANG), Some((BULK, hash(&sent))));
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::PeerEof);
    let proxy = server.snapshot().proxy;
    assert_eq!(proxy.bytes_client_to_upstream, BULK as u64);
    assert_eq!(proxy.bytes_upstream_to_client, BULK as u64);
    assert_eq!(proxy.upstreams_open, 0);
    assert_upstream_sockets_closed(up.addr());
}

#[test]
fn bulk_both_ways_with_the_upstream_closing_first() {
    // The upstream sends everything and finishes before it reads a byte.
    let up = TestUpstream::start(|mut s: TcpStream| {
        s.write_all(&pattern(4, BULK)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = upstream::read_to_eof(&mut s).unwrap();
        (got.len(), hash(&got))
    });
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    let (received, close) = client.receive_until_close();
    assert!(matches!(close, CloseSeen::CloseNotifyThenEof), "{close:?}");
    assert_eq!(received.len(), BULK);
    assert_eq!(hash(&received), hash(&pattern(4, BULK)));
    // close_notify received, the client's direction is still open.
    let sent = pattern(3, BULK);
    client.send(&sent).unwrap();
    client.finish_sending().unwrap();
    assert_eq!(up.next_report(HANG), Some((BULK, hash(&sent))));
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::UpstreamEof);
    assert_upstream_sockets_closed(up.addr());
}

#[test]
fn refused_upstream_is_upstream_connect_failed_and_the_client_gets_close_notify() {
    let nobody = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = proxy_to(nobody);
    let mut client = server.connect().unwrap();
    match client.read_until_close() {
        CloseSeen::CloseNotifyThenEof => {}
        other => panic!("expected close_notify then EOF, got {other:?}"),
    }
    drop(client);
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::UpstreamConnectFailed);
    assert_eq!(server.snapshot().proxy.upstreams_open, 0);
}

#[test]
fn slow_upstream_is_upstream_connect_failed_after_the_timeout() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so connecting hangs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (full, addr) = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    });
    let fillers: Vec<_> = (0..4)
        .filter_map(|_| {
            let s = socket_with_timeout(addr);
            s.ok()
        })
        .collect();
    let mut config = ProxyConfig::new(addr.to_string());
    config.connect_timeout = Duration::from_millis(300);
    let server = TestServer::builder().start_proxy(config);
    let mut client = server.connect().unwrap();
    let connected = std::time::Instant::now();
    match client.read_until_close() {
        CloseSeen::CloseNotifyThenEof => {}
        other => panic!("expected close_notify then EOF, got {other:?}"),
    }
    // It waited for the timeout: the upstream neither refused nor answered.
    assert!(connected.elapsed() >= Duration::from_millis(250));
    drop(client);
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::UpstreamConnectFailed);
    drop((fillers, full));
}

fn socket_with_timeout(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200))
}

#[test]
fn upstream_reset_mid_stream_is_upstream_error() {
    let up = TestUpstream::start(|mut s: TcpStream| {
        let mut first = [0u8; 5];
        s.read_exact(&mut first).unwrap();
        upstream::reset(s);
    });
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    client.send(b"hello").unwrap();
    up.next_report(HANG).unwrap();
    match client.read_until_close() {
        CloseSeen::CloseNotifyThenEof => {}
        other => panic!("expected close_notify then EOF, got {other:?}"),
    }
    drop(client);
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::UpstreamError);
    assert_upstream_sockets_closed(up.addr());
}

/// A proxy to an upstream that finishes at once (and reads until the client does), and a
/// client that has already seen the upstream's end as `close_notify`, with nothing before it.
fn upstream_finished_first() -> (TestUpstream<usize>, TestServer, TlsClient) {
    let up = TestUpstream::start(|s: TcpStream| {
        s.shutdown(Shutdown::Write).unwrap();
        let mut s = s;
        upstream::read_to_eof(&mut s).unwrap().len()
    });
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    let (nothing, close) = client.receive_until_close();
    assert!(nothing.is_empty());
    assert!(matches!(close, CloseSeen::CloseNotifyThenEof), "{close:?}");
    (up, server, client)
}

#[test]
fn upstream_finishing_at_once_is_upstream_eof_once_the_client_finishes() {
    let (up, server, mut client) = upstream_finished_first();
    client.send(b"late but delivered").unwrap();
    client.finish_sending().unwrap();
    assert_eq!(up.next_report(HANG), Some(b"late but delivered".len()));
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::UpstreamEof);
    assert_upstream_sockets_closed(up.addr());
}

#[test]
fn client_gone_closes_the_upstream_side() {
    let up = TestUpstream::start(upstream::echo);
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"ping").unwrap(), b"ping");
    client.drop_abruptly();
    // The upstream sees the FIN the client's end turned into, and finishes.
    assert_eq!(up.next_report(HANG).unwrap().unwrap(), 4);
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::PeerEof);
    assert_upstream_sockets_closed(up.addr());
}

#[test]
fn a_fin_without_close_notify_closes_both_sides_without_waiting_for_the_upstream() {
    // The upstream reads to its EOF, then keeps its side open until released: a half-close
    // would leave the client waiting on it.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let up = TestUpstream::start(move |mut s: TcpStream| {
        let got = upstream::read_to_eof(&mut s).unwrap().len();
        let _ = release_rx.lock().unwrap().recv_timeout(HANG);
        got
    });
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    client.send(b"ping").unwrap();
    // The TCP FIN a killed client's kernel sends: no close_notify before it.
    client.tcp().shutdown(Shutdown::Write).unwrap();
    assert!(matches!(
        client.read_until_close(),
        CloseSeen::CloseNotifyThenEof
    ));
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::PeerEof);
    release_tx.send(()).unwrap();
    // What the client sent before its FIN reached the upstream.
    assert_eq!(up.next_report(HANG), Some(4));
    assert_upstream_sockets_closed(up.addr());
}

#[test]
fn a_client_still_sending_when_its_upstream_has_gone_is_drained_not_reset() {
    // The upstream answers and closes for good (both directions) without reading.
    let up = TestUpstream::start(|mut s: TcpStream| {
        s.write_all(b"reply").unwrap();
    });
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    let (reply, close) = client.receive_until_close();
    assert_eq!(reply, b"reply");
    assert!(matches!(close, CloseSeen::CloseNotifyThenEof), "{close:?}");
    // The client's direction is still open: what it sends now cannot reach the upstream (its
    // writes fail: upstream_error). The close that follows must keep reading the client until
    // it finishes (a lingering close), not close on its unread bytes, which is a reset.
    for i in 0..20 {
        if let Err(e) = client.send(&[7u8; 16 * 1024]) {
            panic!("write {i} after the upstream went away failed: {e}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    client.finish_sending().unwrap();
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::UpstreamError);
}

#[test]
fn shutdown_closes_both_sides_of_proxied_connections() {
    let up = TestUpstream::start(upstream::echo);
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"ping").unwrap(), b"ping");
    let reader = std::thread::spawn(move || client.read_until_close());
    let report = server.shutdown(Duration::from_secs(5));
    assert!(matches!(
        reader.join().unwrap(),
        CloseSeen::CloseNotifyThenEof
    ));
    assert_eq!(report.left_registered, 0);
    assert_upstream_sockets_closed(up.addr());
}

#[test]
fn a_client_the_upstream_does_not_read_is_not_read_either() {
    // The upstream never reads: the proxy must stop reading the client rather than buffer.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let up = TestUpstream::start(move |s: TcpStream| {
        let _ = release_rx.lock().unwrap().recv_timeout(HANG);
        drop(s);
    });
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    let accepted = client
        .send_until_blocked(Duration::from_millis(500), BULK)
        .unwrap();
    assert!(
        accepted < BULK / 2,
        "the proxy took {accepted} bytes the upstream never read"
    );
    eprintln!("backpressure: the client could write {accepted} bytes the upstream never read");
    release_tx.send(()).unwrap();
    drop(client);
    server.wait_disposed(1, HANG);
}

/// Closes the client's socket with a reset (SO_LINGER 0), as a client killed with unread
/// bytes, or one that gave up, does.
fn reset(client: TlsClient) {
    socket2::SockRef::from(client.tcp())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
}

/// Issue 17, finding 7. The upstream never reads, so the proxy's write to it stalls and the
/// client's reader waits for it (one chunk in flight): nothing reads the client's socket. Its
/// reset must still end the connection at once, as the client's failure (`reader_error`, as
/// a reset seen by a read is), with every socket closed — not at the idle timeout (5 min
/// here) as the upstream's error.
#[test]
fn a_client_reset_while_its_upload_stalls_on_an_upstream_that_does_not_read_is_reader_error_at_once(
) {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let up = TestUpstream::start(move |s: TcpStream| {
        let _ = release_rx.lock().unwrap().recv_timeout(HANG);
        drop(s);
    });
    let server = proxy_to(up.addr());
    let mut client = server.connect().unwrap();
    // Blocked: the upstream's buffers, ours and the client's are full.
    client
        .send_until_blocked(Duration::from_millis(500), BULK)
        .unwrap();
    let started = std::time::Instant::now();
    reset(client);
    server.wait_disposed(1, HANG);
    eprintln!("disposed {:?} after the client's reset", started.elapsed());
    assert_eq!(only_reason(&server), DisposeReason::ReaderError);
    assert!(server.server_sockets().unwrap().is_clean());
    assert_upstream_sockets_closed(up.addr());
    release_tx.send(()).unwrap();
}

/// The other direction of finding 7: the client does not read, so the proxy's write to it
/// stalls and nothing reads the upstream; the upstream's reset ends the connection as
/// `upstream_error` within the close's bound, not at the idle timeout as a `writer_error`.
#[test]
fn an_upstream_reset_while_its_bytes_wait_for_a_client_that_does_not_read_is_upstream_error_at_once(
) {
    let (blocked_tx, blocked_rx) = std::sync::mpsc::channel::<()>();
    let (reset_tx, reset_rx) = std::sync::mpsc::channel::<()>();
    let blocked_tx = std::sync::Arc::new(std::sync::Mutex::new(blocked_tx));
    let reset_rx = std::sync::Arc::new(std::sync::Mutex::new(reset_rx));
    let up = TestUpstream::start(move |mut s: TcpStream| {
        s.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let chunk = vec![0x33u8; 64 * 1024];
        let mut sent = 0;
        while sent < BULK && s.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        let _ = blocked_tx.lock().unwrap().send(());
        let _ = reset_rx.lock().unwrap().recv_timeout(HANG);
        upstream::reset(s);
        sent
    });
    let server = proxy_to(up.addr());
    // Connected, reading nothing from now on.
    let client = server.connect().unwrap();
    blocked_rx
        .recv_timeout(HANG)
        .expect("the upstream's writes block");
    let started = std::time::Instant::now();
    reset_tx.send(()).unwrap();
    let sent = up.next_report(HANG).unwrap();
    assert!(
        sent < BULK,
        "the proxy took all {sent} bytes from the upstream"
    );
    server.wait_disposed(1, HANG);
    eprintln!(
        "disposed {:?} after the upstream's reset",
        started.elapsed()
    );
    assert_eq!(only_reason(&server), DisposeReason::UpstreamError);
    assert_upstream_sockets_closed(up.addr());
    drop(client);
    assert!(tlsvisor_actors::testing::eventually(HANG, || server
        .server_sockets()
        .unwrap()
        .is_clean()));
}

/// What a recording upstream reads before the client's first byte: the PROXY header, read
/// until its CRLF (v1) or as long as its length field says (v2).
fn header_seen_by_upstream(version: ProxyHeader) -> (Vec<u8>, SocketAddr, SocketAddr) {
    let up = TestUpstream::start(move |mut s: TcpStream| {
        let mut header = Vec::new();
        let mut byte = [0u8; 1];
        while match version {
            ProxyHeader::V1 => !header.ends_with(b"\r\n"),
            ProxyHeader::V2 => {
                header.len() < 16
                    || header.len() < 16 + usize::from(u16::from_be_bytes([header[14], header[15]]))
            }
        } {
            s.read_exact(&mut byte).unwrap();
            header.push(byte[0]);
        }
        header
    });
    let mut config = ProxyConfig::new(up.addr().to_string());
    config.proxy_header = Some(version);
    let server = TestServer::builder().start_proxy(config);
    let client = server.connect().unwrap();
    let client_addr = client.tcp().local_addr().unwrap();
    let header = up.next_report(HANG).unwrap();
    (header, client_addr, server.addr())
}

// The expected bytes are spelled out from the specification (HAProxy's proxy-protocol.txt),
// not produced by the code under test.

#[test]
fn proxy_protocol_v1_header_byte_for_byte() {
    let (header, client, server) = header_seen_by_upstream(ProxyHeader::V1);
    let expected = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        client.port(),
        server.port()
    );
    assert_eq!(String::from_utf8(header).unwrap(), expected);
}

#[test]
fn proxy_protocol_v2_header_byte_for_byte() {
    let (header, client, server) = header_seen_by_upstream(ProxyHeader::V2);
    // TLVs (section 2.2.x): PP2_TYPE_AUTHORITY (0x02) with the SNI; PP2_TYPE_SSL (0x20) with
    // client = PP2_CLIENT_SSL, verify = 1 (no client certificate), then the sub-TLVs
    // PP2_SUBTYPE_SSL_VERSION (0x21) and PP2_SUBTYPE_SSL_CIPHER (0x23).
    let mut tlvs = vec![0x02, 0x00, 9];
    tlvs.extend_from_slice(b"localhost");
    let mut ssl = vec![0x01, 0, 0, 0, 1, 0x21, 0x00, 7];
    ssl.extend_from_slice(b"TLSv1.3");
    ssl.extend_from_slice(&[0x23, 0x00, 22]);
    ssl.extend_from_slice(b"TLS_AES_256_GCM_SHA384");
    tlvs.extend_from_slice(&[0x20, 0x00, ssl.len() as u8]);
    tlvs.extend_from_slice(&ssl);
    let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    // version 2 + PROXY, TCP over IPv4, the length of addresses and TLVs, then addresses and
    // ports.
    expected.extend_from_slice(&[0x21, 0x11, 0x00, 12 + tlvs.len() as u8]);
    expected.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    expected.extend_from_slice(&client.port().to_be_bytes());
    expected.extend_from_slice(&server.port().to_be_bytes());
    expected.extend_from_slice(&tlvs);
    assert_eq!(header, expected);
}

#[test]
fn shutdown_during_a_half_close_closes_both_sides() {
    // The upstream finishes at once; the client got close_notify but keeps its direction open.
    let (up, server, mut client) = upstream_finished_first();
    client.send(b"still sending").unwrap();
    server.wait_for("the bytes forwarded", HANG, |s| {
        s.ledger.active == 1 && s.proxy.bytes_client_to_upstream == 13
    });
    let report = server.shutdown(Duration::from_secs(5));
    assert_eq!(report.forced, 0, "{report:?}");
    assert_eq!(report.left_registered, 0, "{report:?}");
    // The upstream got what the client sent, then our FIN when the connection stopped.
    assert_eq!(up.next_report(HANG), Some(b"still sending".len()));
    assert_upstream_sockets_closed(up.addr());
}

#[test]
fn closing_a_proxied_connection_sends_the_upstream_its_fin_at_once() {
    let up = TestUpstream::start(upstream::echo);
    let mut config = ProxyConfig::new(up.addr().to_string());
    config.connect_timeout = Duration::from_secs(5);
    // A long linger: the client never finishes, so the connection itself stops only then.
    let server = TestServer::builder()
        .config(|c| c.close_timeout = Duration::from_secs(10))
        .start_proxy(config);
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"ping").unwrap(), b"ping");
    server.kill(
        tlsvisor_actors::ConnId(0),
        tlsvisor_actors::CloseMode::Graceful,
    );
    // The upstream reads EOF long before the connection's 10 s linger is over.
    assert_eq!(
        up.next_report(Duration::from_secs(5)).map(|r| r.unwrap()),
        Some(4)
    );
    drop(client);
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), DisposeReason::Killed);
}
