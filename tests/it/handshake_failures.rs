//! Failed handshakes explained (issue 20): each class produced by a real client over a real
//! socket — plain HTTP, a half ClientHello, a silent socket, rustls clients whose versions,
//! groups, ALPN or name do not fit, clients without or with a wrong certificate — is counted in
//! `tlsvisor_handshake_failures_total{class}`, logged as one line with what the client
//! offered, and listed by `GET /handshake-failures`; a burst of failures logs a bounded number
//! of lines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use serde_json::Value;

use crate::common;
use crate::common::certs::{issue_into, path_in};
use crate::common::{Tlsvisor, HANG};
use tlsvisor_actors::testing::{
    client_config, client_config_with_cert, eventually, ScratchDir, TlsClient,
};
use tlsvisor_actors::DevCerts;

/// A rustls client trusting `ca`, changed by `adjust`.
fn client(ca: &[u8], adjust: impl FnOnce(&mut ClientConfig)) -> Arc<ClientConfig> {
    let mut config = (*client_config(ca).unwrap()).clone();
    adjust(&mut config);
    Arc::new(config)
}

/// A rustls client trusting `ca`, offering only what `provider` has and only the versions
/// given.
fn client_with(
    ca: &[u8],
    provider: CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// `bytes` written to a plain TCP connection and the write side closed, then read until the
/// server closes it.
fn send_plain(server: &Tlsvisor, bytes: &[u8]) {
    let mut socket = TcpStream::connect(server.listen).unwrap();
    socket.set_read_timeout(Some(HANG)).unwrap();
    socket.write_all(bytes).unwrap();
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let _ = socket.read_to_end(&mut Vec::new());
}

fn failures(admin: SocketAddr, query: &str) -> Vec<Value> {
    let body = common::try_http_get(admin, &format!("/handshake-failures{query}")).unwrap();
    let parsed: Value = serde_json::from_str(&body).unwrap();
    parsed["handshake_failures"].as_array().unwrap().clone()
}

/// Waits until `class` has been counted `n` times; returns its newest entry and log line.
fn counted(server: &Tlsvisor, admin: SocketAddr, class: &str, n: f64) -> (Value, Value) {
    let metric = format!("tlsvisor_handshake_failures_total{{class=\"{class}\"}}");
    assert!(
        eventually(HANG, || server.scrape().get(&metric) == n),
        "{class}: {} counted, {n} expected; listed: {:?}",
        server.scrape().get(&metric),
        failures(admin, "")
    );
    let listed = failures(admin, &format!("?class={class}"));
    assert_eq!(listed.len() as f64, n, "{class}: {listed:?}");
    let line_of_class =
        || (server.logs_with("handshake failed").into_iter()).find(|l| l["class"] == class);
    assert!(
        eventually(HANG, || line_of_class().is_some()),
        "no log line of class {class}"
    );
    let line = line_of_class().unwrap();
    (listed[0].clone(), line)
}

#[test]
fn each_failed_handshake_is_classed_counted_logged_and_listed() {
    // --sni-strict wants certificates of its own.
    let scratch = ScratchDir::new("bin-hs-failures").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key, _) = issue_into(&scratch, &certs, "server", &["localhost"]);
    let ca = certs.ca_cert_pem.as_bytes();
    let server = Tlsvisor::serve(&[
        "--cert",
        &cert,
        "--key",
        &key,
        "--admin-listen",
        "127.0.0.1:0",
        "--handshake-timeout",
        "1s",
        "--tls-min-version",
        "1.3",
        "--alpn",
        "h2",
        "--kx-groups",
        "X25519",
        "--sni-strict",
    ]);
    let admin = server.admin_listen();

    // Plain HTTP on the TLS port.
    send_plain(&server, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (entry, line) = counted(&server, admin, "not_tls", 1.0);
    assert_eq!(entry["alert"], "decode_error");
    assert_eq!(line["alert"], "decode_error");

    // Half a ClientHello, then a close: the record header promises 512 bytes, 4 come.
    send_plain(
        &server,
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
    );
    counted(&server, admin, "eof_before_hello", 1.0);

    // A socket that never speaks, past the handshake timeout.
    let silent = TcpStream::connect(server.listen).unwrap();
    counted(&server, admin, "timeout", 1.0);
    drop(silent);

    // TLS 1.2 only, against a server at 1.3 and above.
    let tls12 = client_with(
        ca,
        tlsvisor_actors::crypto_provider(),
        &[&rustls::version::TLS12],
    );
    assert!(TlsClient::connect(server.listen, tls12).is_err());
    let (entry, _) = counted(&server, admin, "protocol_version", 1.0);
    assert_eq!(entry["alert"], "protocol_version");

    // Only P-384, against a server that offers X25519 alone.
    let mut p384 = tlsvisor_actors::crypto_provider();
    p384.kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::secp384r1);
    assert!(TlsClient::connect(
        server.listen,
        client_with(ca, p384, &[&rustls::version::TLS13])
    )
    .is_err());
    let (entry, line) = counted(&server, admin, "no_shared_group", 1.0);
    assert_eq!(entry["groups"], serde_json::json!(["secp384r1"]));
    assert_eq!(line["groups"], "secp384r1");
    assert_eq!(entry["sni"], "localhost");

    // An ALPN protocol the server does not speak.
    let spdy = client(ca, |c| c.alpn_protocols = vec![b"spdy/3".to_vec()]);
    assert!(TlsClient::connect(server.listen, spdy).is_err());
    let (entry, line) = counted(&server, admin, "no_application_protocol", 1.0);
    assert_eq!(entry["alpn"], serde_json::json!(["spdy/3"]));
    assert_eq!(line["alpn"], "spdy/3");
    assert_eq!(entry["alert"], "no_application_protocol");

    // A name with no certificate, under --sni-strict.
    let stock = client_config(ca).unwrap();
    assert!(TlsClient::connect_as(server.listen, stock, "unknown.test").is_err());
    let (entry, line) = counted(&server, admin, "unrecognized_name", 1.0);
    assert_eq!(entry["sni"], "unknown.test");
    assert_eq!(line["sni"], "unknown.test");
    assert!(entry["cipher_suites"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s.as_str().unwrap().starts_with("TLS13_")));

    // Filters: by SNI (any case) and by peer.
    assert_eq!(failures(admin, "?sni=UNKNOWN.test").len(), 1);
    assert_eq!(failures(admin, "?peer=127.0.0.1").len(), 7);
    assert_eq!(failures(admin, "?peer=127.0.0.9").len(), 0);
    assert_eq!(failures(admin, "?limit=2").len(), 2);
    let newest = &failures(admin, "")[0];
    assert_eq!(newest["class"], "unrecognized_name", "newest first");
    // An unknown class is refused, naming the known ones.
    let refused = common::try_http_get(admin, "/handshake-failures?class=nope").unwrap_err();
    assert!(refused.to_string().contains("not_tls"), "{refused}");

    // Each failure is a disposal too, as before: the books balance.
    let scrape = server.scrape();
    assert_eq!(
        scrape.sum("tlsvisor_handshake_failures_total"),
        scrape.disposed("handshake_failed") + scrape.disposed("handshake_timeout")
    );
}

#[test]
fn client_certificate_failures_have_their_own_classes() {
    let scratch = ScratchDir::new("bin-hs-failures-mtls").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key, _) = issue_into(&scratch, &certs, "server", &["localhost"]);
    let ca = path_in(&scratch, "client-ca.crt");
    ScratchDir::replace(ca.as_ref(), &certs.ca_cert_pem).unwrap();
    let server = Tlsvisor::serve(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--cert",
        &cert,
        "--key",
        &key,
        "--client-ca",
        &ca,
        "--allow-cn",
        "alice",
    ]);
    let admin = server.admin_listen();
    let try_with = |config: Arc<ClientConfig>| {
        // TLS 1.3: the client may finish before the server refuses; the echo then fails.
        if let Ok(mut client) = TlsClient::connect(server.listen, config) {
            assert!(client.echo(b"x").is_err());
        }
    };
    let no_certificate = client_config(certs.ca_cert_pem.as_bytes()).unwrap();
    try_with(no_certificate);
    counted(&server, admin, "client_certificate_required", 1.0);

    // A client certificate of its own making: its issuer is no CA the server knows.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let own_key = rcgen::KeyPair::generate().unwrap();
    let cert_pem = params.self_signed(&own_key).unwrap().pem();
    let key_pem = own_key.serialize_pem();
    try_with(
        client_config_with_cert(
            certs.ca_cert_pem.as_bytes(),
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
        )
        .unwrap(),
    );
    let (entry, _) = counted(&server, admin, "client_certificate_unknown_ca", 1.0);
    assert_eq!(entry["alert"], "unknown_ca");

    let (cert_pem, key_pem) = certs.issue_client("mallory", &[], &[]).unwrap();
    try_with(
        client_config_with_cert(
            certs.ca_cert_pem.as_bytes(),
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
        )
        .unwrap(),
    );
    let (entry, _) = counted(&server, admin, "client_certificate_not_allowed", 1.0);
    assert_eq!(entry["alert"], "access_denied");
    let scrape = server.scrape();
    assert_eq!(scrape.disposed("client_auth_failed"), 3.0);
}

#[test]
fn a_burst_of_failures_logs_one_line_per_class_per_second() {
    let server = Tlsvisor::serve(&["--admin-listen", "127.0.0.1:0"]);
    let burst = 300;
    let started = Instant::now();
    for _ in 0..burst {
        send_plain(&server, b"GET / HTTP/1.0\r\n\r\n");
    }
    let metric = "tlsvisor_handshake_failures_total{class=\"not_tls\"}";
    assert!(eventually(HANG, || server.scrape().get(metric) == burst as f64));
    let seconds = started.elapsed().as_secs() + 1;
    let lines = server.logs_with("handshake failed");
    // One line in each second the burst touched, at most: never one per failure.
    assert!(
        !lines.is_empty() && lines.len() as u64 <= seconds + 1,
        "{} lines in {seconds} s",
        lines.len()
    );
    // The lines account for every failure: each logged one plus those it says it suppressed,
    // except the suppressed ones a later line has not reported yet.
    let reported: u64 = lines
        .iter()
        .map(|l| 1 + l["suppressed"].as_u64().unwrap())
        .sum();
    assert!(reported <= burst, "{reported} reported for {burst}");
    assert_eq!(
        failures(server.admin_listen(), "?limit=1000").len(),
        burst as usize
    );
}
