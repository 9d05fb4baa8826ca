//! The upstream pool through a running server, without programs from outside: a failed connect
//! retried on the other upstream, the leases given back however connections end, a unix-socket
//! upstream with the PROXY header. (`tests/it/interop_upstreams.rs` of the binary does the same
//! with real redis servers.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use tlsvisor_actors::testing::upstream;
use tlsvisor_actors::testing::{eventually, TestServer, TestUpstream, TlsClient};
use tlsvisor_actors::{CloseMode, DisposeReason, ProxyConfig, ProxyHeader, UpstreamSnapshot};

/// A ceiling only a hang reaches.
const HANG: Duration = Duration::from_secs(30);

/// A loopback address where nothing listens: connects to it are refused.
fn refusing() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn upstreams(server: &TestServer) -> Vec<UpstreamSnapshot> {
    server.snapshot().proxy.upstreams
}

fn echoed(client: &mut TlsClient) {
    assert_eq!(client.echo(b"ping").unwrap(), b"ping");
}

/// `count` clients, each connected upstream (its echo answered) before the next connects.
fn echoing_clients(server: &TestServer, count: usize) -> Vec<TlsClient> {
    (0..count)
        .map(|_| {
            let mut client = server.connect().unwrap();
            echoed(&mut client);
            client
        })
        .collect()
}

#[test]
fn a_refused_connect_is_retried_on_the_other_upstream_and_the_refuser_is_skipped_after() {
    let up = TestUpstream::start(upstream::echo);
    let dead = refusing();
    let config = ProxyConfig::with_upstreams([dead.to_string(), up.addr().to_string()]);
    let server = TestServer::builder().start_proxy(config);

    // The first client is sent to the dead one (the round-robin starts there) and retried.
    let clients = echoing_clients(&server, 10);
    let [dead_one, live_one] = &upstreams(&server)[..] else {
        panic!("two upstreams")
    };
    assert!(!dead_one.up);
    assert_eq!(dead_one.connect_failures, 1);
    assert_eq!(dead_one.connections_active, 0);
    assert!(live_one.up);
    assert_eq!(live_one.connections_opened, 10);
    assert_eq!(live_one.connections_active, 10);
    assert_eq!(live_one.bytes_client_to_upstream, 40);
    // Counted once the write to the client completed, which the client may see first.
    assert!(eventually(HANG, || upstreams(&server)[1]
        .bytes_upstream_to_client
        == 40));

    drop(clients);
    server.wait_disposed(10, HANG);
    assert!(server
        .disposal_reasons()
        .iter()
        .all(|r| *r != DisposeReason::UpstreamConnectFailed));
}

#[test]
fn leases_are_given_back_however_the_connections_end() {
    let up = TestUpstream::start(upstream::echo);
    let second = TestUpstream::start(upstream::echo);
    let config = ProxyConfig::with_upstreams([up.addr().to_string(), second.addr().to_string()]);
    let server = TestServer::builder().start_proxy(config);
    let clients = echoing_clients(&server, 12);
    let active = |server: &TestServer| -> Vec<u64> {
        upstreams(server)
            .iter()
            .map(|u| u.connections_active)
            .collect()
    };
    assert_eq!(active(&server), [6, 6]);

    // Killed gracefully, killed by force, dropped by the client, closed cleanly.
    let ids = server.live_connections();
    assert!(server.kill(ids[0], CloseMode::Graceful));
    assert!(server.kill(ids[1], CloseMode::Force));
    let mut clients = clients.into_iter().skip(2);
    clients.next().unwrap().drop_abruptly();
    clients.next().unwrap().close();
    assert!(eventually(HANG, || server
        .snapshot()
        .ledger
        .disposed_total()
        == 4));
    assert_eq!(active(&server).iter().sum::<u64>(), 8);
    drop(clients);
    server.wait_disposed(12, HANG);
    assert!(eventually(HANG, || active(&server) == [0, 0]));
    assert_eq!(server.snapshot().proxy.upstreams_open, 0);
}

#[test]
fn a_unix_upstream_gets_the_proxy_header_with_the_client_tcp_addresses() {
    let dir = std::env::temp_dir().join(format!("tlsvisor-unix-pp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("upstream.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Reads the v1 header up to its CRLF, then echoes.
    let recorder = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(HANG)).unwrap();
        let mut header = Vec::new();
        let mut byte = [0u8; 1];
        while !header.ends_with(b"\r\n") {
            s.read_exact(&mut byte).unwrap();
            header.push(byte[0]);
        }
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        header
    });
    let mut config = ProxyConfig::new(format!("unix:{}", path.display()));
    config.proxy_header = Some(ProxyHeader::V1);
    let server = TestServer::builder().start_proxy(config);
    let mut client = server.connect().unwrap();
    echoed(&mut client);
    let header = recorder.join().unwrap();
    let expected = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        client.tcp().local_addr().unwrap().port(),
        server.addr().port()
    );
    assert_eq!(String::from_utf8(header).unwrap(), expected);
    assert_eq!(
        upstreams(&server)[0].upstream,
        format!("unix:{}", path.display())
    );
    drop(client);
    server.wait_disposed(1, HANG);
    std::fs::remove_dir_all(dir).unwrap();
}
