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
    let (entry, _) = counted(&server, admin, "client_certificate_required", 1.0);
    assert_eq!(entry["client_subject"], Value::Null, "none was presented");

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
    let (entry, line) = counted(&server, admin, "client_certificate_unknown_ca", 1.0);
    assert_eq!(entry["alert"], "unknown_ca");
    // Self-signed: it names itself as its issuer, which is what the operator needs to see.
    assert_eq!(entry["client_subject"], "CN=alice");
    assert_eq!(entry["client_issuer"], "CN=alice");
    assert_eq!(line["client_subject"], "CN=alice");

    let (cert_pem, key_pem) = certs.issue_client("mallory", &[], &[]).unwrap();
    try_with(
        client_config_with_cert(
            certs.ca_cert_pem.as_bytes(),
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
        )
        .unwrap(),
    );
    let (entry, line) = counted(&server, admin, "client_certificate_not_allowed", 1.0);
    assert_eq!(entry["alert"], "access_denied");
    assert_eq!(entry["client_subject"], "CN=mallory");
    // The development CA's name, as DevCerts writes it.
    let ca_subject = "CN=tlsvisor development CA - DO NOT TRUST IN PRODUCTION";
    assert_eq!(entry["client_issuer"], ca_subject);
    assert_eq!(line["client_issuer"], ca_subject);
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

/// The same classes produced by programs this project did not write: `openssl s_client` with
/// the flags an operator would try (`-tls1_2`, `-ciphersuites`, `-groups`, `-servername`,
/// `-alpn`, wrong and expired client certificates), curl speaking `http://` to the TLS port,
/// and an `openssl s_client` whose encrypted Finished is damaged on the way (`bad_record`).
#[cfg(feature = "interop")]
mod interop {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::process::{Command, Stdio};

    use super::counted;
    use crate::common::certs::{issue_into, path_in};
    use crate::common::{Tlsvisor, HANG};
    use tlsvisor_actors::testing::ScratchDir;
    use tlsvisor_actors::DevCerts;

    /// One `openssl s_client` handshake to `addr` with `args`, stdin closed at once; its
    /// outcome is read on the server's side.
    fn s_client(addr: SocketAddr, args: &[&str]) {
        let status = Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed (apt-get install openssl)");
        // Refused handshakes make s_client exit non-zero; either way it must have ended.
        let _ = status;
    }

    /// A client certificate for `cn` signed by the CA of `certs`, valid only in the past:
    /// (certificate PEM, key PEM).
    fn expired_client(certs: &DevCerts, cn: &str) -> (String, String) {
        let ca_key = rcgen::KeyPair::from_pem(&certs.ca_key_pem).unwrap();
        // The CA as DevCerts makes it: its name and key are what the signature needs.
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(
            rcgen::DnType::CommonName,
            "tlsvisor development CA - DO NOT TRUST IN PRODUCTION",
        );
        let ca = ca.self_signed(&ca_key).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A relay from a port of its own to `server` for one connection, passing TLS records
    /// through whole and flipping one bit in the last byte of the client's first encrypted
    /// record (content type 23): in TLS 1.3 that is the client's Finished, whose tag then
    /// fails to verify on the server.
    fn damaging_relay(server: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut client, _) = listener.accept().unwrap();
            let mut upstream = TcpStream::connect(server).unwrap();
            client.set_read_timeout(Some(HANG)).unwrap();
            upstream.set_read_timeout(Some(HANG)).unwrap();
            let (mut from_server, mut to_client) =
                (upstream.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_server, &mut to_client);
                let _ = to_client.shutdown(std::net::Shutdown::Write);
            });
            let mut damaged = false;
            loop {
                let mut header = [0u8; 5];
                if client.read_exact(&mut header).is_err() {
                    break;
                }
                let mut body = vec![0u8; u16::from_be_bytes([header[3], header[4]]) as usize];
                if client.read_exact(&mut body).is_err() {
                    break;
                }
                if header[0] == 23 && !damaged {
                    if let Some(last) = body.last_mut() {
                        *last ^= 1;
                    }
                    damaged = true;
                }
                if upstream.write_all(&header).is_err() || upstream.write_all(&body).is_err() {
                    break;
                }
            }
            let _ = upstream.shutdown(std::net::Shutdown::Write);
        });
        addr
    }

    #[test]
    fn openssl_and_curl_failures_are_classed_like_the_real_event() {
        let scratch = ScratchDir::new("bin-hs-failures-openssl").unwrap();
        let certs = DevCerts::generate().unwrap();
        let (cert, key, _) = issue_into(&scratch, &certs, "server", &["localhost"]);
        let ca = path_in(&scratch, "ca.crt");
        ScratchDir::replace(ca.as_ref(), &certs.ca_cert_pem).unwrap();
        let server = Tlsvisor::serve(&[
            "--cert",
            &cert,
            "--key",
            &key,
            "--admin-listen",
            "127.0.0.1:0",
            "--tls-min-version",
            "1.3",
            "--alpn",
            "h2",
            "--kx-groups",
            "X25519",
            "--sni-strict",
            "--client-ca",
            &ca,
            "--client-auth",
            "optional",
        ]);
        let admin = server.admin_listen();
        let at = server.listen;
        let named = ["-servername", "localhost", "-CAfile", ca.as_str()];

        // curl speaking plain HTTP to the TLS port.
        let _ = Command::new("curl")
            .args(["-s", "-m", "10", &format!("http://{at}/")])
            .stdout(Stdio::null())
            .status()
            .expect("curl is installed (apt-get install curl)");
        counted(&server, admin, "not_tls", 1.0);

        s_client(at, &[&named[..], &["-tls1_2"]].concat());
        let (entry, _) = counted(&server, admin, "protocol_version", 1.0);
        assert_eq!(entry["alert"], "protocol_version");

        // CCM is a TLS 1.3 suite rustls does not implement.
        s_client(
            at,
            &[&named[..], &["-ciphersuites", "TLS_AES_128_CCM_SHA256"]].concat(),
        );
        let (entry, line) = counted(&server, admin, "no_shared_cipher", 1.0);
        // openssl offers its TLS 1.2 suites too (the server is at 1.3 and above): the only
        // TLS 1.3 suite offered is the one asked for.
        let tls13: Vec<&str> = (entry["cipher_suites"].as_array().unwrap().iter())
            .filter_map(|s| s.as_str().filter(|s| s.starts_with("TLS13_")))
            .collect();
        assert_eq!(tls13, ["TLS13_AES_128_CCM_SHA256"], "{entry}");
        assert_eq!(line["alert"], "handshake_failure");

        s_client(at, &[&named[..], &["-groups", "P-256"]].concat());
        let (entry, _) = counted(&server, admin, "no_shared_group", 1.0);
        assert_eq!(entry["groups"], serde_json::json!(["secp256r1"]));

        s_client(at, &["-servername", "unknown.test", "-CAfile", &ca]);
        let (entry, _) = counted(&server, admin, "unrecognized_name", 1.0);
        assert_eq!(entry["sni"], "unknown.test");

        s_client(at, &[&named[..], &["-alpn", "spdy/3"]].concat());
        let (entry, _) = counted(&server, admin, "no_application_protocol", 1.0);
        assert_eq!(entry["alpn"], serde_json::json!(["spdy/3"]));

        // A certificate of another CA, and one of the right CA that has expired.
        let stranger = DevCerts::generate().unwrap();
        let (other_cert, other_key) = stranger.issue_client("alice", &[], &[]).unwrap();
        let (old_cert, old_key) = expired_client(&certs, "alice");
        for (stem, cert_pem, key_pem) in [
            ("stranger", &other_cert, &other_key),
            ("expired", &old_cert, &old_key),
        ] {
            let (c, k) = (
                path_in(&scratch, &format!("{stem}.crt")),
                path_in(&scratch, &format!("{stem}.key")),
            );
            ScratchDir::replace(c.as_ref(), cert_pem).unwrap();
            ScratchDir::replace(k.as_ref(), key_pem).unwrap();
            s_client(at, &[&named[..], &["-cert", &c, "-key", &k]].concat());
        }
        // Every development CA has the same name: webpki finds the issuer by name, the
        // signature fails, and rustls answers `decrypt_error`; to an operator it is a
        // certificate of a CA the server does not know, which the class says.
        let (entry, _) = counted(&server, admin, "client_certificate_unknown_ca", 1.0);
        assert_eq!(entry["alert"], "decrypt_error");
        assert_eq!(entry["client_subject"], "CN=alice");
        let (entry, line) = counted(&server, admin, "client_certificate_expired", 1.0);
        assert_eq!(entry["alert"], "certificate_expired");
        assert_eq!(line["client_subject"], "CN=alice", "{line}");

        // openssl's Finished, one bit flipped in transit.
        s_client(damaging_relay(at), &named);
        let (entry, _) = counted(&server, admin, "bad_record", 1.0);
        assert_eq!(entry["alert"], "bad_record_mac");

        let scrape = server.scrape();
        assert_eq!(
            scrape.sum("tlsvisor_handshake_failures_total"),
            scrape.disposed("handshake_failed") + scrape.disposed("client_auth_failed"),
            "every failure is a disposal, and nothing else failed"
        );
        assert_eq!(scrape.sum("tlsvisor_handshake_failures_total"), 9.0);
    }
}
