//! `--protocol passthrough` with real programs on both sides: the binary in front, a second
//! `tlsvisor` (echo, with a certificate of its own CA) or a plain TCP listener of the test
//! behind it, rustls clients over real sockets. The front never terminates TLS: the client sees
//! the backend's certificate, and the bytes the backend gets are the client's, byte for byte.
//! A full passthrough service refuses with the same `internal_error` alert a terminating one sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tlsvisor_actors::testing::TlsClient;
use tlsvisor_actors::testing::{client_config, eventually, leak, CertificateFacts, ScratchDir};
use tlsvisor_actors::DevCerts;

use crate::common::certs::{issue_into, path_in};
use crate::common::crowd::Crowd;
use crate::common::{http_get, Tlsvisor, HANG};

/// A passthrough front to `upstream`, with its admin API, and `extra` flags.
fn front(upstream: SocketAddr, extra: &[&str]) -> Tlsvisor {
    let upstream = upstream.to_string();
    let mut args = vec![
        "--protocol",
        "passthrough",
        "--upstream",
        upstream.as_str(),
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Tlsvisor::serve(&args)
}

/// A backend `tlsvisor` serving echo with a certificate for `backend.test` and `localhost`
/// from a CA of its own (the scratch folder holds `ca.crt`).
fn own_backend(scratch: &ScratchDir) -> (Tlsvisor, CertificateFacts) {
    let certs = DevCerts::generate().unwrap();
    ScratchDir::replace(&scratch.path("ca.crt"), &certs.ca_cert_pem).unwrap();
    let (cert, key, facts) = issue_into(scratch, &certs, "backend", &["backend.test", "localhost"]);
    let backend = Tlsvisor::serve(&["--cert", &cert, "--key", &key]);
    (backend, facts)
}

/// The books of a server: every accepted connection disposed, none twice, none by the
/// fallback, none lost, and nothing left in `/connections`.
fn assert_books_exact(server: &Tlsvisor) {
    let admin = server.admin_listen();
    assert!(
        eventually(HANG, || {
            let m = server.scrape();
            m.get("tlsvisor_connections_active") == 0.0
                && http_get(admin, "/connections").contains("\"connections\":[]")
        }),
        "connections left: {}",
        http_get(admin, "/connections")
    );
    server.scrape().assert_books_exact();
}

#[test]
fn a_client_sees_the_backends_own_certificate_and_its_bytes_round_trip() {
    let scratch = ScratchDir::new("passthrough-backend").unwrap();
    let (backend, facts) = own_backend(&scratch);
    let server = front(backend.listen, &[]);
    let ca = std::fs::read(path_in(&scratch, "ca.crt")).unwrap();
    // Trusting only the backend's CA: had the front terminated TLS (with its built-in
    // certificate), this handshake would fail.
    let mut client =
        TlsClient::connect_as(server.listen, client_config(&ca).unwrap(), "backend.test").unwrap();
    let seen = client.server_certificate().unwrap();
    assert_eq!(
        CertificateFacts::from_der(&seen).unwrap().serial_hex,
        facts.serial_hex,
        "the backend's certificate, not the front's"
    );
    assert_eq!(
        client.echo(b"through the front").unwrap(),
        b"through the front"
    );
    let big: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(client.echo(&big).unwrap(), big);

    // While open, /connections names it: passthrough, the SNI, and no TLS parameters (the
    // front never sees them).
    let listed = http_get(server.admin_listen(), "/connections");
    let body: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let only = &body["connections"][0];
    assert_eq!(only["protocol"], "passthrough", "{listed}");
    assert_eq!(only["sni"], "backend.test", "{listed}");
    assert!(only.get("tls_version").is_none(), "{listed}");
    assert!(only.get("cipher").is_none(), "{listed}");

    let _ = client.close();
    let disposed = server.logged("disposed", 1);
    let line = &disposed[0];
    assert_eq!(line["protocol"], "passthrough");
    assert_eq!(line["sni"], "backend.test");
    // Either side's end may arrive first (see the SIGTERM test): both are sides ending it.
    assert!(
        line["reason"] == "peer_eof" || line["reason"] == "upstream_eof",
        "{line}"
    );
    assert!(line.get("tls_version").is_none(), "{line}");
    assert!(
        line.get("close_notify").is_none(),
        "we never see it: {line}"
    );
    // The TLS bytes both ways, records and all: more than the plaintext.
    assert!(
        line["bytes_in"].as_u64().unwrap() > big.len() as u64,
        "{line}"
    );
    assert!(
        line["bytes_out"].as_u64().unwrap() > big.len() as u64,
        "{line}"
    );
    assert_books_exact(&server);
    // The backend did the handshake, with the name the client asked for.
    let behind = backend.logged("disposed", 1);
    assert_eq!(behind[0]["sni"], "backend.test");
    assert_eq!(
        behind[0]["close_notify"], true,
        "the client's own close_notify went through"
    );
}

/// The bytes a rustls client sends first (its ClientHello, one record) for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let config = client_config(&crate::common::dev_ca()).unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

/// `record` (one TLS record) re-framed as two records of the same type, its body cut at
/// `at`: one handshake message across two records, as a client with a large hello sends it.
fn split_record(record: &[u8], at: usize) -> Vec<u8> {
    let (header, body) = record.split_at(5);
    let mut out = Vec::new();
    for part in [&body[..at], &body[at..]] {
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Accepts one connection on `listener` and reads exactly `len` bytes from it.
fn upstream_reads(listener: &TcpListener, len: usize) -> (TcpStream, Vec<u8>) {
    let (mut socket, _) = listener.accept().unwrap();
    socket.set_read_timeout(Some(HANG)).unwrap();
    let mut got = vec![0u8; len];
    socket.read_exact(&mut got).unwrap();
    (socket, got)
}

#[test]
fn the_upstream_gets_the_proxy_v2_header_then_the_client_hello_byte_for_byte() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = front(listener.local_addr().unwrap(), &["--proxy-protocol", "v2"]);
    let hello = client_hello("split.test");
    // Split across two records: the front must parse it whole and forward both as they are.
    let sent = split_record(&hello, 40);
    let mut client = TcpStream::connect(server.listen).unwrap();
    client.write_all(&sent).unwrap();
    client.write_all(b"and after").unwrap();

    // The v2 signature, version/command, family, then the length of the addresses.
    let (mut upstream, header) = upstream_reads(&listener, 16);
    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(header[12], 0x21, "v2, PROXY");
    assert_eq!(header[13], 0x11, "TCP over IPv4");
    let rest = u16::from_be_bytes([header[14], header[15]]) as usize;
    let mut addresses = vec![0u8; rest];
    upstream.read_exact(&mut addresses).unwrap();
    assert_eq!(
        rest, 12,
        "the addresses only: no TLV of a TLS session we never had"
    );
    let client_port = client.local_addr().unwrap().port();
    assert_eq!(
        u16::from_be_bytes([addresses[8], addresses[9]]),
        client_port
    );

    let mut forwarded = vec![0u8; sent.len() + b"and after".len()];
    upstream.read_exact(&mut forwarded).unwrap();
    assert_eq!(
        &forwarded[..sent.len()],
        &sent[..],
        "the ClientHello as sent"
    );
    assert_eq!(&forwarded[sent.len()..], b"and after");

    // And back: the upstream's bytes reach the client untouched.
    upstream.write_all(b"\x16\x03\x03 from upstream").unwrap();
    let mut back = [0u8; 17];
    client.set_read_timeout(Some(HANG)).unwrap();
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"\x16\x03\x03 from upstream");

    // The upstream finishes first: its FIN reaches the client as a FIN (no close_notify of
    // ours), and the client's FIN ends the connection as upstream_eof.
    upstream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut end = Vec::new();
    client.read_to_end(&mut end).unwrap();
    assert!(end.is_empty(), "nothing but the FIN: {end:?}");
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut upstream_end = Vec::new();
    upstream.read_to_end(&mut upstream_end).unwrap();
    assert!(upstream_end.is_empty());
    let disposed = server.logged("disposed", 1);
    assert_eq!(disposed[0]["reason"], "upstream_eof", "{:?}", disposed[0]);
    assert_eq!(disposed[0]["sni"], "split.test");
    assert_books_exact(&server);
}

#[test]
fn a_client_that_is_not_tls_is_refused_as_not_tls_and_nothing_reaches_the_upstream() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = front(listener.local_addr().unwrap(), &[]);
    let mut client = TcpStream::connect(server.listen).unwrap();
    client.set_read_timeout(Some(HANG)).unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    // An alert at most (rustls's, as a terminating server sends): never an HTTP answer.
    assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");
    // The client sees the close before the connection's stop hook has counted it: wait for
    // the books, which are written once the registry has applied the `Dispose`.
    let counted = || {
        let m = server.scrape();
        m.get("tlsvisor_handshake_failures_total{class=\"not_tls\"}") == 1.0
            && m.disposed("handshake_failed") == 1.0
    };
    assert!(
        eventually(HANG, counted),
        "one not_tls failure, disposed handshake_failed"
    );
    assert!(
        listener.accept().is_err(),
        "the upstream was never connected for it"
    );
    assert_books_exact(&server);
}

#[test]
fn sigkilled_clients_mid_stream_leave_nothing_registered_and_no_close_wait() {
    const CROWD: usize = 200;
    // The backend serves the built-in certificate, which the crowd's clients trust.
    let backend = Tlsvisor::serve(&[]);
    let server = front(backend.listen, &["--workers", "2"]);
    let crowd = Crowd::gather(server.listen, CROWD);
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == CROWD as f64));
    crowd.kill();
    assert_books_exact(&server);
    let m = server.scrape();
    assert_eq!(m.get("tlsvisor_connections_accepted_total"), CROWD as f64);
    assert_eq!(
        m.disposed("peer_eof") + m.disposed("reader_error"),
        CROWD as f64
    );
    let (port, upstream) = (server.listen.port(), backend.listen.port());
    assert!(
        eventually(HANG, || {
            leak::close_wait_on_port(port).unwrap() == 0
                && leak::sockets_to_remote_port(upstream, leak::TcpState::CloseWait).unwrap() == 0
        }),
        "CLOSE-WAIT left on the front's sockets"
    );
    assert!(eventually(HANG, || backend
        .scrape()
        .get("tlsvisor_connections_active")
        == 0.0));
}

#[test]
fn check_refuses_what_a_passthrough_server_cannot_apply_and_needs_no_certificate() {
    let scratch = ScratchDir::new("passthrough-check").unwrap();
    let certs = DevCerts::generate().unwrap();
    let ca = path_in(&scratch, "ca.crt");
    ScratchDir::replace(ca.as_ref(), &certs.ca_cert_pem).unwrap();
    let check = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
            .arg("check")
            .args(args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status.success(), said)
    };
    let base = ["--protocol", "passthrough", "--upstream", "127.0.0.1:1"];
    let with = |extra: &[&'static str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        check(&args)
    };
    // No certificate, on any address: none is ever served.
    let (ok, said) = with(&["--listen", "0.0.0.0:0"]);
    assert!(ok, "{said}");
    let ca_flags: Vec<&str> = vec!["--client-ca", ca.as_str()];
    let (ok, said) = check(&[&base[..], &ca_flags[..]].concat());
    assert!(!ok && said.contains("--client-ca cannot apply"), "{said}");
    let (ok, said) = with(&["--alpn", "h2"]);
    assert!(!ok && said.contains("--alpn cannot apply"), "{said}");
    let (ok, said) = check(&[
        "--protocol",
        "passthrough",
        "--upstream",
        "tls://127.0.0.1:1",
    ]);
    assert!(!ok && said.contains("--upstream tls://"), "{said}");
    let (ok, said) = check(&["--protocol", "passthrough"]);
    assert!(
        !ok && said.contains("--protocol passthrough needs --upstream"),
        "{said}"
    );
}

#[test]
fn on_sigterm_a_passed_through_session_goes_on_until_it_ends_or_the_grace_does() {
    let backend = Tlsvisor::serve(&[]);
    let config = client_config(&crate::common::dev_ca()).unwrap();

    // Ended by its own sides during the grace period: served to the end, then the process
    // exits without waiting for the rest of the grace.
    let mut server = front(backend.listen, &["--shutdown-grace", "60s"]);
    let mut client = TlsClient::connect(server.listen, Arc::clone(&config)).unwrap();
    assert_eq!(client.echo(b"before").unwrap(), b"before");
    let asked = std::time::Instant::now();
    server.signal(libc::SIGTERM);
    server.logged("shutdown: stopped accepting, closing connections", 1);
    assert_eq!(
        client.echo(b"during the grace").unwrap(),
        b"during the grace",
        "no FIN in the middle of the client's TLS session"
    );
    let _ = client.close();
    let status = server
        .wait_exit(HANG)
        .expect("exits once its connection ended");
    assert!(status.success());
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(30),
        "long before the grace's end"
    );
    // The client's close_notify and FIN leave together; the backend answers the close_notify
    // with its own and a FIN, which may reach the front before the client's FIN does.
    let reason = server.logged("disposed", 1)[0]["reason"].clone();
    assert!(reason == "peer_eof" || reason == "upstream_eof", "{reason}");

    // Not ended: closed when the grace period is over, as shutdown.
    let mut server = front(backend.listen, &["--shutdown-grace", "1s"]);
    let mut client = TlsClient::connect(server.listen, config).unwrap();
    assert_eq!(client.echo(b"before").unwrap(), b"before");
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(HANG)
        .expect("exits after the grace period");
    assert!(status.success());
    assert_eq!(server.logged("disposed", 1)[0]["reason"], "shutdown");
    drop(client);
}

#[test]
fn an_unreachable_upstream_and_an_idle_client_end_with_their_reasons_and_exact_books() {
    // Nothing listens on the upstream's port: the client's hello has nowhere to go.
    let gone = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = front(gone, &[]);
    let config = client_config(&crate::common::dev_ca()).unwrap();
    assert!(
        TlsClient::connect(server.listen, Arc::clone(&config)).is_err(),
        "no backend, no handshake"
    );
    let disposed = server.logged("disposed", 1);
    assert_eq!(disposed[0]["reason"], "upstream_connect_failed");
    assert_books_exact(&server);

    // Idle means no byte either way: a client that goes quiet is closed with a FIN.
    let backend = Tlsvisor::serve(&[]);
    let server = front(backend.listen, &["--idle-timeout", "1s"]);
    let mut client = TlsClient::connect(server.listen, config).unwrap();
    assert_eq!(client.echo(b"once").unwrap(), b"once");
    let disposed = server.logged("disposed", 1);
    assert_eq!(disposed[0]["reason"], "idle_timeout");
    assert_books_exact(&server);
}

/// A passthrough service at its own `max-connections` refuses the next client with the same
/// fatal `internal_error` alert as a terminating one: the front writes it itself, in the clear,
/// before any byte of the backend's has reached the client.
#[test]
fn a_full_passthrough_service_refuses_with_an_internal_error_alert() {
    let scratch = ScratchDir::new("passthrough-service-limit").unwrap();
    let (backend, _) = own_backend(&scratch);
    let config = path_in(&scratch, "tlsvisor.toml");
    let service = format!(
        "[[service]]\nnames = [\"backend.test\"]\nprotocol = \"passthrough\"\n\
         upstream = \"{}\"\nmax-connections = 1\n",
        backend.listen
    );
    ScratchDir::replace(config.as_ref(), &service).unwrap();
    let server = Tlsvisor::serve(&["--config", &config, "--admin-listen", "127.0.0.1:0"]);
    let ca = std::fs::read(path_in(&scratch, "ca.crt")).unwrap();
    let trusting_the_backend = client_config(&ca).unwrap();
    let mut seated = TlsClient::connect_as(
        server.listen,
        Arc::clone(&trusting_the_backend),
        "backend.test",
    )
    .unwrap();
    assert_eq!(seated.echo(b"seated").unwrap(), b"seated");

    let refusal = match TlsClient::connect_as(server.listen, trusting_the_backend, "backend.test") {
        Ok(mut client) => client.echo(b"x").expect_err("a second client was served"),
        Err(e) => e,
    };
    assert!(
        refusal.to_string().contains("InternalError"),
        "the alert: {refusal}"
    );
    let refused = "tlsvisor_service_connections_refused_total{service=\"backend.test\"}";
    assert!(
        eventually(HANG, || server.scrape().get(refused) == 1.0),
        "one refusal counted"
    );
    // The seat is the first client's still: it is served on.
    assert_eq!(seated.echo(b"still").unwrap(), b"still");
    let _ = seated.close();
    assert!(
        eventually(HANG, || server.scrape().disposed("service_limit") == 1.0),
        "the refused client is disposed as service_limit"
    );
    assert_books_exact(&server);
}
