//! TLS beyond the client's hop: the post-quantum key exchange (`X25519MLKEM768`, reported in
//! `/connections` and the `disposed` line), and TLS to the upstream (`--upstream
//! tls://HOST:PORT`): verified, with a client certificate, resumed, `close_notify` passed on
//! both ways, a failed handshake disposed as `upstream_tls_failed` and held down by the
//! passive health check. The upstream here is a rustls server of the test's own that reports
//! what each handshake was; `interop` drives a real `redis-server --tls-port`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};
use serde_json::Value;
use tlsvisor_actors::testing::{
    client_config, eventually, CloseSeen, ScratchDir, TestUpstream, TlsClient,
};
use tlsvisor_actors::DevCerts;

use crate::common::certs::path_in;
use crate::common::{dev_ca, Tlsvisor, HANG};

/// What the test's TLS upstream saw of one connection.
#[derive(Debug)]
pub(crate) struct Seen {
    /// `None`: the handshake failed.
    pub(crate) handshake: Option<HandshakeKind>,
    /// The client presented a certificate (which the upstream verified, if it asks for one).
    pub(crate) client_certificate: bool,
    /// Its client ended with `close_notify` (rather than a bare FIN).
    pub(crate) close_notify: bool,
    /// The key-exchange group the handshake agreed.
    pub(crate) kx_group: Option<rustls::NamedGroup>,
}

/// A TLS echo server on `config`: echoes until its client's `close_notify` (answered with its
/// own), and reports the handshake.
pub(crate) fn tls_echo(config: Arc<ServerConfig>) -> TestUpstream<Seen> {
    TestUpstream::start(move |tcp: TcpStream| {
        tcp.set_read_timeout(Some(HANG)).unwrap();
        let conn = ServerConnection::new(Arc::clone(&config)).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        let mut seen = Seen {
            handshake: None,
            client_certificate: false,
            close_notify: false,
            kx_group: None,
        };
        while tls.conn.is_handshaking() {
            if tls.conn.complete_io(&mut tls.sock).is_err() {
                return seen;
            }
        }
        seen.handshake = tls.conn.handshake_kind();
        seen.client_certificate = tls.conn.peer_certificates().is_some();
        seen.kx_group = tls
            .conn
            .negotiated_key_exchange_group()
            .map(|group| group.name());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tls.read(&mut buf) {
                Ok(0) => {
                    seen.close_notify = true;
                    break;
                }
                Ok(n) => {
                    if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        tls.conn.send_close_notify();
        let _ = tls.flush();
        let _ = tls.sock.shutdown(std::net::Shutdown::Write);
        seen
    })
}

/// A rustls server configuration for `localhost` from `certs`, requiring a client certificate
/// of `client_ca` if given.
pub(crate) fn upstream_config(certs: &DevCerts, client_ca: Option<&str>) -> Arc<ServerConfig> {
    let provider = Arc::new(tlsvisor_actors::crypto_provider());
    let chain = CertificateDer::pem_slice_iter(certs.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(certs.server_key_pem.as_bytes()).unwrap();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

/// The `disposed` lines so far, once there are `n`.
fn disposed(server: &Tlsvisor, n: usize) -> Vec<Value> {
    server.logged("disposed", n)
}

/// `GET path` on the admin API, as JSON.
fn admin_json(server: &Tlsvisor, path: &str) -> Value {
    let body = crate::common::try_http_get(server.admin_listen(), path).unwrap();
    serde_json::from_str(&body).unwrap()
}

/// A client configuration trusting the development CA and offering only `groups`.
fn offering(groups: &[rustls::NamedGroup]) -> Arc<rustls::ClientConfig> {
    let mut provider = tlsvisor_actors::crypto_provider();
    provider.kx_groups.retain(|g| groups.contains(&g.name()));
    assert_eq!(provider.kx_groups.len(), groups.len(), "{groups:?}");
    let base = client_config(&dev_ca()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&dev_ca()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = base.resumption.clone();
    Arc::new(config)
}

#[cfg(feature = "aws-lc-rs")]
#[test]
fn a_client_offering_only_x25519mlkem768_gets_it_and_it_is_reported() {
    let mut server = Tlsvisor::serve(&["--admin-listen", "127.0.0.1:0"]);
    let config = offering(&[rustls::NamedGroup::X25519MLKEM768]);
    let mut client = TlsClient::connect(server.listen, config).unwrap();
    assert_eq!(client.echo(b"pq").unwrap(), b"pq");
    let group = client
        .connection()
        .negotiated_key_exchange_group()
        .map(|g| g.name());
    assert_eq!(group, Some(rustls::NamedGroup::X25519MLKEM768));
    let listed = admin_json(&server, "/connections");
    let connections = listed["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 1, "{listed}");
    assert_eq!(connections[0]["kx_group"], "X25519MLKEM768", "{listed}");
    assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    let line = &disposed(&server, 1)[0];
    assert_eq!(line["kx_group"], "X25519MLKEM768", "{line}");
    // The default client (post-quantum first, as rustls's) gets it too.
    let mut default = server.connect().unwrap();
    assert_eq!(default.echo(b"x").unwrap(), b"x");
    drop(default.close());
    assert_eq!(disposed(&server, 2)[1]["kx_group"], "X25519MLKEM768");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(HANG).unwrap().success());
}

#[cfg(feature = "aws-lc-rs")]
#[test]
fn with_kx_groups_x25519_the_same_clients_get_x25519() {
    let mut server = Tlsvisor::serve(&["--kx-groups", "X25519"]);
    // The default client offers X25519MLKEM768 first, and X25519 beside it.
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"classic").unwrap(), b"classic");
    let group = client
        .connection()
        .negotiated_key_exchange_group()
        .map(|g| g.name());
    assert_eq!(group, Some(rustls::NamedGroup::X25519));
    drop(client.close());
    assert_eq!(disposed(&server, 1)[0]["kx_group"], "X25519");
    // A client that offers the hybrid alone has no group in common with it.
    let only_pq = offering(&[rustls::NamedGroup::X25519MLKEM768]);
    assert!(TlsClient::connect(server.listen, only_pq).is_err());
    let line = &disposed(&server, 2)[1];
    assert_eq!(line["reason"], "handshake_failed", "{line}");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(HANG).unwrap().success());
}

#[test]
fn kx_groups_names_x25519mlkem768_or_says_which_build_has_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args(["check", "--kx-groups", "X25519MLKEM768,X25519"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if cfg!(feature = "aws-lc-rs") {
        assert!(output.status.success(), "{stderr}");
    } else {
        assert!(stderr.contains("needs the aws-lc-rs build"), "{stderr}");
    }
}

/// Certificates for one TLS upstream test: the upstream's (a CA of its own), and tlsvisor's
/// client certificate (another CA), as files.
pub(crate) struct UpstreamCerts {
    pub(crate) scratch: ScratchDir,
    pub(crate) upstream: DevCerts,
    pub(crate) clients: DevCerts,
}

impl UpstreamCerts {
    pub(crate) fn new(name: &str) -> UpstreamCerts {
        let scratch = ScratchDir::new(name).unwrap();
        let upstream = DevCerts::generate().unwrap();
        let clients = DevCerts::generate().unwrap();
        let (cert, key) = clients.issue_client("tlsvisor", &[], &[]).unwrap();
        for (file, text) in [
            ("upstream-ca.crt", upstream.ca_cert_pem.as_str()),
            ("other-ca.crt", clients.ca_cert_pem.as_str()),
            ("client.crt", cert.as_str()),
            ("client.key", key.as_str()),
        ] {
            ScratchDir::replace(&scratch.path(file), text).unwrap();
        }
        UpstreamCerts {
            scratch,
            upstream,
            clients,
        }
    }

    pub(crate) fn path(&self, file: &str) -> String {
        path_in(&self.scratch, file)
    }
}

#[test]
fn a_tls_upstream_is_verified_given_our_certificate_resumed_and_closed_both_ways() {
    let certs = UpstreamCerts::new("upstream-tls-resume");
    let upstream = tls_echo(upstream_config(
        &certs.upstream,
        Some(&certs.clients.ca_cert_pem),
    ));
    let target = format!("tls://{}", upstream.addr());
    let (ca, cert, key) = (
        certs.path("upstream-ca.crt"),
        certs.path("client.crt"),
        certs.path("client.key"),
    );
    let mut server = Tlsvisor::serve(&[
        "--protocol",
        "proxy",
        "--upstream",
        &target,
        "--upstream-ca",
        &ca,
        "--upstream-sni",
        "localhost",
        "--upstream-cert",
        &cert,
        "--upstream-key",
        &key,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    for (n, expected) in [(1, HandshakeKind::Full), (2, HandshakeKind::Resumed)] {
        let mut client = server.connect().unwrap();
        let data = tlsvisor_actors::testing::upstream::pattern(n, 200_000);
        client.send(&data).unwrap();
        assert_eq!(client.receive(data.len()).unwrap(), data);
        if n == 1 {
            let listed = admin_json(&server, "/connections");
            let upstream_tls = &listed["connections"][0]["upstream_tls"];
            assert_eq!(upstream_tls["resumed"], false, "{listed}");
            assert!(upstream_tls["tls_version"].is_string(), "{listed}");
        }
        // Our close_notify goes on to the upstream as its own close_notify; the upstream's
        // answer comes back to us as close_notify.
        assert!(
            matches!(client.close(), CloseSeen::CloseNotifyThenEof),
            "connection {n}"
        );
        let seen = upstream.next_report(HANG).expect("the upstream saw it");
        assert_eq!(seen.handshake, Some(expected), "connection {n}: {seen:?}");
        assert!(seen.client_certificate, "{seen:?}");
        assert!(seen.close_notify, "connection {n}: {seen:?}");
        let line = &disposed(&server, n as usize)[n as usize - 1];
        assert_eq!(
            line["upstream_resumed"],
            expected == HandshakeKind::Resumed,
            "{line}"
        );
        assert!(
            ["peer_eof", "upstream_eof"].contains(&line["reason"].as_str().unwrap()),
            "{line}"
        );
    }
    // The line is written just before the registry applies the Dispose.
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 0.0));
    assert_eq!(server.scrape().disposed("upstream_tls_failed"), 0.0);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(HANG).unwrap().success());
}

#[test]
fn a_wrong_upstream_ca_is_upstream_tls_failed_and_takes_the_upstream_down() {
    let certs = UpstreamCerts::new("upstream-tls-wrong-ca");
    let upstream = tls_echo(upstream_config(&certs.upstream, None));
    let target = format!("tls://{}", upstream.addr());
    // The clients' CA, not the upstream's.
    let wrong = certs.path("other-ca.crt");
    let mut server = Tlsvisor::serve(&[
        "--protocol",
        "proxy",
        "--upstream",
        &target,
        "--upstream-ca",
        &wrong,
        "--upstream-sni",
        "localhost",
    ]);
    let mut client = server.connect().unwrap();
    // The client is closed gracefully once the upstream's handshake failed.
    let (bytes, seen) = client.receive_until_close();
    assert!(bytes.is_empty());
    assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    let line = &disposed(&server, 1)[0];
    assert_eq!(line["reason"], "upstream_tls_failed", "{line}");
    let seen = upstream.next_report(HANG).expect("the upstream saw it");
    assert_eq!(seen.handshake, None);
    // The line is written just before the registry applies the Dispose.
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("upstream_tls_failed")
        == 1.0));
    let metrics = server.scrape();
    let label = format!("{{upstream=\"{target}\"}}");
    assert_eq!(metrics.get(&format!("tlsvisor_upstream_up{label}")), 0.0);
    assert_eq!(
        metrics.get(&format!("tlsvisor_upstream_connect_failures_total{label}")),
        1.0
    );
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(HANG).unwrap().success());
}

#[test]
fn upstream_tls_options_are_checked_before_serving() {
    let certs = UpstreamCerts::new("upstream-tls-check");
    let (ca, cert, key) = (
        certs.path("upstream-ca.crt"),
        certs.path("client.crt"),
        certs.path("client.key"),
    );
    let tls = "tls://127.0.0.1:1";
    // (the arguments after `check --protocol proxy`, the exit code, what stderr must say)
    let cases: [(&[&str], i32, &[&str]); 8] = [
        (
            &["--upstream", "127.0.0.1:1", "--upstream-ca", &ca],
            1,
            &["need a TLS upstream"],
        ),
        (
            &["--upstream", tls, "--upstream-cert", &cert],
            1,
            &["--upstream-cert needs --upstream-key"],
        ),
        (
            &["--upstream", tls, "--upstream", "127.0.0.1:2"],
            1,
            &["every upstream"],
        ),
        // A CA file that holds no certificate names the flag and the file.
        (
            &["--upstream", tls, "--upstream-ca", &key],
            1,
            &["--upstream-ca", "client.key"],
        ),
        (&["--upstream", tls, "--upstream-ca", &ca], 0, &[]),
        // A unix upstream has no host name to verify: it needs --upstream-sni.
        (
            &[
                "--upstream",
                "tls://unix:/run/none.sock",
                "--upstream-ca",
                &ca,
            ],
            1,
            &["--upstream-sni"],
        ),
        // An unknown group names the flag; groups need a TLS upstream to be offered to.
        (
            &[
                "--upstream",
                tls,
                "--upstream-kx-groups",
                "X25519,ffdhe2048",
            ],
            1,
            &["--upstream-kx-groups", "ffdhe2048"],
        ),
        (
            &[
                "--upstream",
                "127.0.0.1:1",
                "--upstream-kx-groups",
                "X25519",
            ],
            1,
            &["need a TLS upstream"],
        ),
    ];
    for (args, code, says) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
            .arg("check")
            .args(["--protocol", "proxy"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        for said in says {
            assert!(stderr.contains(said), "{args:?}: {stderr}");
        }
    }
}

/// The upstream hop offers the build's groups, post-quantum first, unless
/// `--upstream-kx-groups` says otherwise; either way the client's hop keeps its own
/// (`--kx-groups`, here the default).
#[test]
fn the_upstream_hop_offers_post_quantum_first_or_the_groups_of_upstream_kx_groups() {
    let certs = UpstreamCerts::new("upstream-tls-groups");
    let upstream = tls_echo(upstream_config(&certs.upstream, None));
    let target = format!("tls://{}", upstream.addr());
    let ca = certs.path("upstream-ca.crt");
    for (groups, expected) in [
        (None, rustls::NamedGroup::X25519MLKEM768),
        (Some("X25519"), rustls::NamedGroup::X25519),
        (Some("secp384r1,X25519"), rustls::NamedGroup::secp384r1),
    ] {
        let mut args = vec![
            "--protocol",
            "proxy",
            "--upstream",
            &target,
            "--upstream-ca",
            &ca,
            "--upstream-sni",
            "localhost",
        ];
        if let Some(groups) = groups {
            args.extend(["--upstream-kx-groups", groups]);
        }
        let mut server = Tlsvisor::serve(&args);
        let mut client = server.connect().unwrap();
        client.send(b"ping").unwrap();
        assert_eq!(client.receive(4).unwrap(), b"ping");
        client.close();
        let seen = upstream.next_report(HANG).expect("the upstream saw it");
        assert_eq!(seen.kx_group, Some(expected), "{groups:?}: {seen:?}");
        let line = &disposed(&server, 1)[0];
        assert_eq!(line["kx_group"], "X25519MLKEM768", "{groups:?}: {line}");
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(HANG).unwrap().success());
    }
}

/// The plaintext listener's address (`--listen-plain`), from its log line.
fn plain_addr(server: &Tlsvisor) -> std::net::SocketAddr {
    let line = &server.logged("listening plain", 1)[0];
    line["listen_plain"].as_str().unwrap().parse().unwrap()
}

/// The ledger once it settled: every accepted connection disposed, none active.
fn assert_books_exact(server: &Tlsvisor, accepted: f64) {
    let settled = eventually(HANG, || {
        let m = server.scrape();
        m.get("tlsvisor_connections_active") == 0.0
            && m.get("tlsvisor_connections_accepted_total") == accepted
    });
    let m = server.scrape();
    assert!(
        settled,
        "accepted {} active {}",
        m.get("tlsvisor_connections_accepted_total"),
        m.get("tlsvisor_connections_active")
    );
    assert_eq!(m.sum("tlsvisor_connections_disposed_total"), accepted);
    assert_eq!(m.get("tlsvisor_dispose_duplicates_total"), 0.0);
    assert_eq!(m.get("tlsvisor_dispose_fallback_total"), 0.0);
}

#[test]
fn client_mode_carries_plaintext_over_tls_and_a_fin_becomes_close_notify() {
    let certs = UpstreamCerts::new("upstream-tls-client-mode");
    let upstream = tls_echo(upstream_config(&certs.upstream, None));
    let target = format!("tls://{}", upstream.addr());
    let ca = certs.path("upstream-ca.crt");
    let mut server = Tlsvisor::serve(&[
        "--protocol",
        "proxy",
        "--listen-plain",
        "127.0.0.1:0",
        "--upstream",
        &target,
        "--upstream-ca",
        &ca,
        "--upstream-sni",
        "localhost",
    ]);
    let plain = plain_addr(&server);
    let mut client = TcpStream::connect(plain).unwrap();
    client.set_read_timeout(Some(HANG)).unwrap();
    let data = tlsvisor_actors::testing::upstream::pattern(7, 4 << 20);
    let writer = {
        let (mut sending, data) = (client.try_clone().unwrap(), data.clone());
        std::thread::spawn(move || {
            sending.write_all(&data).unwrap();
            // The client's FIN: its clean end, passed on as the upstream's close_notify.
            sending.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "{} bytes back of {}", back.len(), data.len());
    let seen = upstream.next_report(HANG).expect("the upstream saw it");
    assert_eq!(seen.handshake, Some(HandshakeKind::Full), "{seen:?}");
    assert!(seen.close_notify, "{seen:?}");
    let line = &disposed(&server, 1)[0];
    assert!(line["upstream_tls_version"].is_string(), "{line}");
    assert!(
        line.get("tls_version").is_none(),
        "no TLS with the client: {line}"
    );
    assert_books_exact(&server, 1.0);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(HANG).unwrap().success());
}

#[test]
fn client_mode_needs_tls_upstreams() {
    let output = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args([
            "check",
            "--protocol",
            "proxy",
            "--upstream",
            "127.0.0.1:6379",
        ])
        .args(["--listen-plain", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("--listen-plain (client mode) needs"),
        "{stderr}"
    );
}

/// Against a real `redis-server --tls-port` that requires client certificates.
#[cfg(feature = "interop")]
mod interop {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::process::{Child, Command, Stdio};

    use tlsvisor_actors::testing::eventually;

    use super::{assert_books_exact, disposed, plain_addr, UpstreamCerts};
    use crate::common::{free_addr, Tlsvisor, HANG};

    /// A TLS-only redis on a free port, verifying clients against `certs`' client CA.
    struct TlsRedis {
        child: Child,
        addr: SocketAddr,
    }

    impl TlsRedis {
        fn start(certs: &UpstreamCerts) -> TlsRedis {
            let addr = free_addr();
            for (file, text) in [
                ("redis.crt", certs.upstream.server_cert_pem.as_str()),
                ("redis.key", certs.upstream.server_key_pem.as_str()),
            ] {
                tlsvisor_actors::testing::ScratchDir::replace(&certs.scratch.path(file), text)
                    .unwrap();
            }
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", "0"])
                .args(["--tls-port", &addr.port().to_string()])
                .args(["--tls-cert-file", &certs.path("redis.crt")])
                .args(["--tls-key-file", &certs.path("redis.key")])
                .args(["--tls-ca-cert-file", &certs.path("other-ca.crt")])
                .args(["--tls-auth-clients", "yes"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            let redis = TlsRedis { child, addr };
            assert!(
                eventually(HANG, || redis.cli(certs, &["PING"]) == "PONG"),
                "redis-server --tls-port did not answer"
            );
            redis
        }

        /// `redis-cli` straight to it over TLS, with the client certificate.
        fn cli(&self, certs: &UpstreamCerts, args: &[&str]) -> String {
            let out = Command::new("redis-cli")
                .args(["--tls", "--cacert", &certs.path("upstream-ca.crt")])
                .args(["--cert", &certs.path("client.crt")])
                .args(["--key", &certs.path("client.key")])
                .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
                .args(args)
                .stderr(Stdio::null())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }

        fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for TlsRedis {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// tlsvisor proxying to `redis` over TLS with the client certificate, with `extra` flags.
    fn tlsvisor_to(redis: &TlsRedis, certs: &UpstreamCerts, extra: &[&str]) -> Tlsvisor {
        let target = format!("tls://{}", redis.addr);
        let (ca, cert, key) = (
            certs.path("upstream-ca.crt"),
            certs.path("client.crt"),
            certs.path("client.key"),
        );
        let mut args = vec![
            "--protocol",
            "proxy",
            "--upstream",
            &target,
            "--upstream-ca",
            &ca,
            "--upstream-cert",
            &cert,
            "--upstream-key",
            &key,
            "--upstream-sni",
            "localhost",
        ];
        args.extend_from_slice(extra);
        Tlsvisor::serve(&args)
    }

    fn dev_ca_path() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt").to_string()
    }

    #[test]
    fn redis_cli_and_redis_benchmark_over_tls_both_hops() {
        let certs = UpstreamCerts::new("interop-upstream-tls-redis");
        let redis = TlsRedis::start(&certs);
        let mut server = tlsvisor_to(&redis, &certs, &[]);
        let port = server.listen.port().to_string();
        let ca = dev_ca_path();
        let tls_client = ["--tls", "--cacert", &ca, "--sni", "localhost", "-p", &port];
        let pong = Command::new("redis-cli")
            .args(tls_client)
            .arg("PING")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&pong.stdout).trim(), "PONG");
        let bench = Command::new("redis-benchmark")
            .args(tls_client)
            .args(["-q", "-n", "2000", "-c", "10", "-t", "get,set"])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&bench.stdout);
        assert!(bench.status.success(), "{report}");
        assert!(report.contains("SET") && report.contains("GET"), "{report}");
        // Resumed to the upstream: of the benchmark's connections, all but the first few
        // (before the first session ticket arrived) resumed their upstream session.
        let lines = server.logs_with("disposed");
        let resumed = lines
            .iter()
            .filter(|l| l["upstream_resumed"] == true)
            .count();
        assert!(resumed >= 1, "no upstream handshake resumed: {lines:?}");
        let accepted = server.scrape().get("tlsvisor_connections_accepted_total");
        assert_books_exact(&server, accepted);
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(HANG).unwrap().success());
    }

    #[test]
    fn client_mode_redis_cli_in_plaintext_32_mib_both_ways_and_kills_keep_the_books() {
        let certs = UpstreamCerts::new("interop-upstream-tls-client-mode");
        let mut redis = TlsRedis::start(&certs);
        let mut server = tlsvisor_to(&redis, &certs, &["--listen-plain", "127.0.0.1:0"]);
        let plain = plain_addr(&server);
        let port = plain.port().to_string();
        let cli = || {
            let mut c = Command::new("redis-cli");
            c.args(["-h", "127.0.0.1", "-p", &port]);
            c
        };
        let pong = cli().arg("PING").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&pong.stdout).trim(), "PONG");
        // 32 MiB up (SET from stdin) and back (GET), compared byte for byte.
        let value: Vec<u8> = tlsvisor_actors::testing::upstream::pattern(32, 32 << 20)
            .iter()
            .map(|b| b'a' + b % 26)
            .collect();
        let mut set = cli()
            .args(["-x", "SET", "big"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        set.stdin.take().unwrap().write_all(&value).unwrap();
        let set = set.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
        let got = cli().args(["--raw", "GET", "big"]).output().unwrap();
        let mut back = got.stdout;
        assert_eq!(
            back.pop(),
            Some(b'\n'),
            "redis-cli --raw ends with a newline"
        );
        assert!(
            back == value,
            "{} bytes back of {}",
            back.len(),
            value.len()
        );

        // A killed client: a real redis-cli blocked in SUBSCRIBE, SIGKILLed.
        let mut subscriber = cli()
            .args(["SUBSCRIBE", "news"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 9];
        subscriber
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        subscriber.kill().unwrap();
        subscriber.wait().unwrap();
        assert_books_exact(&server, 4.0);

        // A killed upstream: a live plaintext client, then redis SIGKILLed.
        let mut live = TcpStream::connect(plain).unwrap();
        live.set_read_timeout(Some(HANG)).unwrap();
        live.write_all(b"PING\r\n").unwrap();
        let mut pong = [0u8; 7];
        live.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"+PONG\r\n");
        redis.kill();
        let mut rest = Vec::new();
        // The client is closed (a FIN, or a reset), never left hanging.
        let _ = live.read_to_end(&mut rest);
        assert_books_exact(&server, 5.0);
        let lines = disposed(&server, 5);
        let last = &lines[4];
        assert!(
            ["upstream_eof", "upstream_error"].contains(&last["reason"].as_str().unwrap()),
            "{last}"
        );
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(HANG).unwrap().success());
    }

    /// A `[[service]]` for `name` proxying to `redis` over TLS with the client certificate,
    /// with `extra` keys (its plaintext listeners).
    fn redis_service(certs: &UpstreamCerts, name: &str, redis: &TlsRedis, extra: &str) -> String {
        let (cert, key, _) = crate::common::certs::issue_into(
            &certs.scratch,
            &certs.upstream,
            &format!("svc-{name}"),
            &[name],
        );
        format!(
            "[[service]]\nnames = [{name:?}]\ncert = {cert:?}\nkey = {key:?}\n\
             upstream = \"tls://{}\"\nupstream-ca = {:?}\nupstream-cert = {:?}\n\
             upstream-key = {:?}\nupstream-sni = \"localhost\"\n{extra}\n",
            redis.addr,
            certs.path("upstream-ca.crt"),
            certs.path("client.crt"),
            certs.path("client.key"),
        )
    }

    #[test]
    fn redis_cli_over_a_services_unix_socket_and_another_services_tcp_reach_their_own_tls_redis() {
        let certs = UpstreamCerts::new("interop-client-mode-services");
        let (redis_a, redis_b) = (TlsRedis::start(&certs), TlsRedis::start(&certs));
        let sock = certs.path("redis-a.sock");
        let a = redis_service(
            &certs,
            "a.test",
            &redis_a,
            &format!("listen-plain = \"unix:{sock}\""),
        );
        let b = redis_service(
            &certs,
            "b.test",
            &redis_b,
            "listen = [\"127.0.0.1:0\"]\nplain = true",
        );
        let config = certs.path("tlsvisor.toml");
        tlsvisor_actors::testing::ScratchDir::replace(config.as_ref(), &format!("{a}\n{b}"))
            .unwrap();
        let mut server = Tlsvisor::spawn(&[
            "serve",
            "--config",
            &config,
            "--metrics-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]);
        let plain = server.logged("listening plain", 2);
        let b_port = plain
            .iter()
            .find(|l| l["service"] == "b.test")
            .map(|l| {
                l["listen_plain"]
                    .as_str()
                    .unwrap()
                    .parse::<SocketAddr>()
                    .unwrap()
                    .port()
            })
            .unwrap()
            .to_string();
        let over_unix = || {
            let mut c = Command::new("redis-cli");
            c.args(["-s", &sock]);
            c
        };
        let over_tcp = || {
            let mut c = Command::new("redis-cli");
            c.args(["-h", "127.0.0.1", "-p", &b_port]);
            c
        };
        let out = |mut c: Command, args: &[&str]| {
            String::from_utf8_lossy(&c.args(args).output().unwrap().stdout)
                .trim()
                .to_string()
        };
        assert_eq!(out(over_unix(), &["PING"]), "PONG");
        assert_eq!(out(over_unix(), &["SET", "who", "a"]), "OK");
        assert_eq!(out(over_tcp(), &["SET", "who", "b"]), "OK");
        // Each reached its own service's redis, seen straight from each over TLS.
        assert_eq!(redis_a.cli(&certs, &["GET", "who"]), "a");
        assert_eq!(redis_b.cli(&certs, &["GET", "who"]), "b");

        // A redis-cli blocked in SUBSCRIBE over the unix socket: a.test's, peer `unix`.
        let mut subscriber = over_unix()
            .args(["SUBSCRIBE", "news"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 9];
        subscriber
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        let body = crate::common::try_http_get(server.admin_listen(), "/connections").unwrap();
        let live: serde_json::Value = serde_json::from_str(&body).unwrap();
        let live = live
            .as_array()
            .cloned()
            .unwrap_or_else(|| live["connections"].as_array().cloned().unwrap());
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(
            (live[0]["service"].as_str(), live[0]["peer"].as_str()),
            (Some("a.test"), Some("unix"))
        );
        // SIGKILL of the client: its connection is disposed, the books exact.
        subscriber.kill().unwrap();
        subscriber.wait().unwrap();
        assert_books_exact(&server, 4.0);
        let lines = disposed(&server, 4);
        let services: Vec<&str> = lines
            .iter()
            .map(|l| l["service"].as_str().unwrap())
            .collect();
        assert_eq!(
            services,
            ["a.test", "a.test", "b.test", "a.test"],
            "{lines:?}"
        );
        assert!(lines
            .iter()
            .filter(|l| l["service"] == "a.test")
            .all(|l| l["peer"] == "unix"));
        let m = server.scrape();
        assert_eq!(
            m.get("tlsvisor_service_connections_total{service=\"a.test\"}"),
            3.0
        );
        assert_eq!(
            m.get("tlsvisor_service_connections_total{service=\"b.test\"}"),
            1.0
        );
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(HANG).unwrap().success());
        assert!(
            !std::path::Path::new(&sock).exists(),
            "the socket's file is removed at exit"
        );
    }
}
