//! Certificates and TLS policy over real handshakes: reloads while connections live.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::{Arc, Mutex};
use tlsvisor_actors::testing::{
    client_config, client_config_accepting_any, CertificateFacts, ScratchDir, TestServer, TlsClient,
};

use tlsvisor_actors::{
    CertificateFiles, ConnInfo, DevCerts, DisposeReason, Echo, LoadedTls, Protocol, Session,
    SessionError, TlsPolicy, TlsSource, TlsVersion,
};

/// A ceiling only a hang reaches.
const HANG: Duration = Duration::from_secs(20);

fn replace(path: &Path, text: &str) {
    ScratchDir::replace(path, text).unwrap();
}

/// A server of `Echo` serving a fresh certificate from files in `scratch`.
struct FromFiles {
    certs: DevCerts,
    cert: PathBuf,
    key: PathBuf,
    serial: String,
    source: TlsSource,
    server: TestServer,
}

fn serve_from_files(scratch: &ScratchDir) -> FromFiles {
    let (cert, key) = (scratch.path("server.crt"), scratch.path("server.key"));
    let certs = DevCerts::generate().unwrap();
    let serial = rotate(&certs, &cert, &key);
    let source = TlsSource::single(&cert, &key);
    let server = TestServer::builder()
        .certs(certs.clone())
        .tls(source.load().unwrap())
        .start(Echo);
    FromFiles {
        certs,
        cert,
        key,
        serial,
        source,
        server,
    }
}

/// Issues a new `localhost` certificate into `cert`/`key`; returns its serial.
fn rotate(certs: &DevCerts, cert: &Path, key: &Path) -> String {
    let (cert_pem, key_pem) = certs.issue_server(&["localhost"]).unwrap();
    replace(cert, &cert_pem);
    replace(key, &key_pem);
    info_of_pem(&cert_pem).serial_hex
}

fn info_of_pem(pem: &str) -> CertificateFacts {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    CertificateFacts::from_der(&der).unwrap()
}

fn served_serial(client: &TlsClient) -> String {
    let cert = client
        .server_certificate()
        .expect("the server sent a certificate");
    CertificateFacts::from_der(&cert).unwrap().serial_hex
}

#[test]
fn reloads_keep_live_connections_and_new_clients_see_the_new_certificate() {
    const LIVE: usize = 500;
    const RELOADS: usize = 20;
    let scratch = ScratchDir::new("reload").unwrap();
    let FromFiles {
        certs,
        cert,
        key,
        mut serial,
        source,
        server,
    } = serve_from_files(&scratch);
    let reloader = server.tls_reloader();
    let pem = std::fs::read_to_string(&cert).unwrap();
    let expiry = vec![(cert.display().to_string(), info_of_pem(&pem).not_after_unix)];
    assert_eq!(reloader.snapshot().certificate_expiry, expiry);

    let mut live: Vec<TlsClient> = (0..LIVE).map(|_| server.connect().unwrap()).collect();
    server.wait_for("all live", HANG, |s| s.ledger.active == LIVE as u64);

    // The books are read after every reload and every echo (over 10,000 times): never
    // unbalanced, never fewer than the live clients, nothing disposed but the probes that close
    // themselves.
    let books_hold = || {
        let ledger = server.snapshot().ledger;
        assert!(ledger.is_balanced(), "ledger blinked: {ledger:?}");
        assert!(
            ledger.active >= LIVE as u64,
            "a live connection went: {ledger:?}"
        );
        assert_eq!(
            ledger.disposed_total(),
            ledger.disposed(DisposeReason::PeerEof),
            "{ledger:?}"
        );
    };
    for round in 0..RELOADS {
        let previous = serial.clone();
        serial = rotate(&certs, &cert, &key);
        assert_ne!(serial, previous);
        reloader.reload(source.load().unwrap());
        books_hold();
        for (i, client) in live.iter_mut().enumerate() {
            let msg = format!("round {round} client {i}");
            assert_eq!(client.echo(msg.as_bytes()).unwrap(), msg.as_bytes());
            books_hold();
        }
        let probe = server.connect().unwrap();
        assert_eq!(served_serial(&probe), serial, "round {round}");
        assert!(matches!(
            probe.close(),
            tlsvisor_actors::testing::CloseSeen::CloseNotifyThenEof
        ));
    }
    let snapshot = reloader.snapshot();
    assert_eq!(
        (snapshot.reloads_ok, snapshot.reloads_failed),
        (RELOADS as u64, 0)
    );
    for client in live.iter_mut() {
        assert_eq!(client.echo(b"still here").unwrap(), b"still here");
    }
    // The last probe's disposal may trail its client's close by a moment.
    server.wait_for("only the live clients active", HANG, |s| {
        s.ledger.active == LIVE as u64
    });
    drop(live);
    server.wait_idle(HANG);
    server.assert_each_disposed_once();
}

#[test]
fn a_broken_reload_keeps_the_old_certificate_and_names_the_file() {
    let scratch = ScratchDir::new("broken").unwrap();
    let FromFiles {
        certs,
        cert,
        key,
        serial,
        source,
        server,
    } = serve_from_files(&scratch);
    let reloader = server.tls_reloader();
    let mut live = server.connect().unwrap();

    // A key that is not PEM, then a key that belongs to another certificate.
    let (_, other_key) = certs.issue_server(&["localhost"]).unwrap();
    let (new_cert, _) = certs.issue_server(&["localhost"]).unwrap();
    for (cert_pem, key_pem) in [
        (None, "not a key\n".to_string()),
        (Some(new_cert), other_key),
    ] {
        if let Some(cert_pem) = cert_pem {
            replace(&cert, &cert_pem);
        }
        replace(&key, &key_pem);
        let error = reloader.reload_from(&source).unwrap_err();
        assert!(
            error.to_string().contains(&key.display().to_string()),
            "the error names the key file: {error}"
        );
        let probe = server.connect().unwrap();
        assert_eq!(served_serial(&probe), serial);
        assert_eq!(live.echo(b"unaffected").unwrap(), b"unaffected");
    }
    let missing = TlsSource::single(scratch.path("nope.crt"), &key)
        .load()
        .unwrap_err();
    assert!(missing.to_string().contains("nope.crt"), "{missing}");
    let snapshot = reloader.snapshot();
    assert_eq!((snapshot.reloads_ok, snapshot.reloads_failed), (0, 2));
    drop(live);
    server.wait_disposed(3, HANG);
    server.assert_each_disposed_once();
}

#[test]
fn a_plain_rustls_config_can_be_swapped_in() {
    let server = TestServer::start(Echo);
    let other = DevCerts::generate().unwrap();
    server
        .tls_reloader()
        .reload(LoadedTls::from_config(Arc::clone(
            other.server_tls().unwrap().config(),
        )));
    // The server now presents a certificate of another CA: the old trust fails, the new works.
    assert!(server.connect().is_err());
    let config = client_config(other.ca_cert_pem.as_bytes()).unwrap();
    let mut client = TlsClient::connect(server.addr(), config).unwrap();
    assert_eq!(client.echo(b"new ca").unwrap(), b"new ca");
}

/// Certificates for the default `localhost`, `a.test` and `*.b.test`, written into `scratch`.
fn three_names(scratch: &ScratchDir, certs: &DevCerts) -> (TlsSource, Vec<String>) {
    let mut source = TlsSource::default();
    let mut serials = Vec::new();
    for (i, names) in [&["localhost"][..], &["a.test"], &["*.b.test"]]
        .iter()
        .enumerate()
    {
        let (cert, key) = (
            scratch.path(&format!("{i}.crt")),
            scratch.path(&format!("{i}.key")),
        );
        let (cert_pem, key_pem) = certs.issue_server(names).unwrap();
        replace(&cert, &cert_pem);
        replace(&key, &key_pem);
        serials.push(info_of_pem(&cert_pem).serial_hex);
        source.certificates.push(CertificateFiles::new(cert, key));
    }
    (source, serials)
}

#[test]
fn sni_picks_the_certificate_by_san_and_the_first_is_the_default() {
    let scratch = ScratchDir::new("sni").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (source, serials) = three_names(&scratch, &certs);
    let server = TestServer::builder()
        .certs(certs.clone())
        .tls(source.load().unwrap())
        .start(Echo);
    let trusted = client_config(certs.ca_cert_pem.as_bytes()).unwrap();
    for (name, serial) in [
        ("localhost", &serials[0]),
        ("a.test", &serials[1]),
        ("x.b.test", &serials[2]),
        ("X.B.Test", &serials[2]),
    ] {
        let mut client = TlsClient::connect_as(server.addr(), trusted.clone(), name).unwrap();
        assert_eq!(&served_serial(&client), serial, "{name}");
        assert_eq!(client.echo(name.as_bytes()).unwrap(), name.as_bytes());
    }
    // A name nobody serves, or a wildcard's own domain, or two labels deep: the default.
    let any = client_config_accepting_any().unwrap();
    for name in ["c.test", "b.test", "y.x.b.test"] {
        let client = TlsClient::connect_as(server.addr(), any.clone(), name).unwrap();
        assert_eq!(served_serial(&client), serials[0], "{name}");
    }
    // No SNI at all (an IP address as the name sends none): the default.
    let client = TlsClient::connect_as(server.addr(), any, "127.0.0.1").unwrap();
    assert_eq!(served_serial(&client), serials[0]);
}

#[test]
fn sni_strict_refuses_an_unknown_name_with_unrecognized_name() {
    let scratch = ScratchDir::new("sni-strict").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (mut source, serials) = three_names(&scratch, &certs);
    source.sni_strict = true;
    let server = TestServer::builder()
        .certs(certs.clone())
        .tls(source.load().unwrap())
        .start(Echo);
    let any = client_config_accepting_any().unwrap();
    let error = TlsClient::connect_as(server.addr(), any.clone(), "c.test")
        .err()
        .expect("c.test is refused");
    assert!(
        format!("{error:?}").contains("AlertReceived(UnrecognisedName)"),
        "{error:?}"
    );
    for (name, serial) in [("x.b.test", &serials[2]), ("127.0.0.1", &serials[0])] {
        let client = TlsClient::connect_as(server.addr(), any.clone(), name).unwrap();
        assert_eq!(
            &served_serial(&client),
            serial,
            "{name} (an IP sends no SNI: the default)"
        );
    }
    server.wait_disposed(3, HANG);
    let reasons = server.disposal_reasons();
    assert_eq!(reasons[0], DisposeReason::HandshakeFailed);
}

#[test]
fn overlapping_or_unselectable_certificates_are_refused_naming_the_files() {
    let scratch = ScratchDir::new("sni-overlap").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (mut source, _) = three_names(&scratch, &certs);
    let (cert, key) = (scratch.path("3.crt"), scratch.path("3.key"));
    let (cert_pem, key_pem) = certs.issue_server(&["z.test", "a.test"]).unwrap();
    replace(&cert, &cert_pem);
    replace(&key, &key_pem);
    source
        .certificates
        .push(CertificateFiles::new(cert.clone(), key.clone()));
    let error = source.load().unwrap_err().to_string();
    assert!(
        error.contains("1.crt") && error.contains("3.crt"),
        "{error}"
    );
    assert!(error.contains("a.test"), "{error}");

    let (cert_pem, key_pem) = certs.issue_server(&[]).unwrap();
    replace(&cert, &cert_pem);
    replace(&key, &key_pem);
    let error = source.load().unwrap_err().to_string();
    assert!(
        error.contains("3.crt") && error.contains("no DNS name"),
        "{error}"
    );
}

/// A protocol that echoes and records the `ConnInfo` of every session it opens.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<ConnInfo>>>);

impl Protocol for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn open(&self, info: &ConnInfo) -> Result<Box<dyn Session>, SessionError> {
        self.0.lock().unwrap().push(info.clone());
        Echo.open(info)
    }
}

/// A server of `Recording` with a fresh `localhost` certificate and `policy`.
fn serve_policy(scratch: &ScratchDir, policy: TlsPolicy) -> (TestServer, Recording) {
    let certs = DevCerts::generate().unwrap();
    let (cert, key) = (scratch.path("server.crt"), scratch.path("server.key"));
    rotate(&certs, &cert, &key);
    let mut source = TlsSource::single(&cert, &key);
    source.policy = policy;
    let recording = Recording::default();
    let server = TestServer::builder()
        .certs(certs)
        .tls(source.load().unwrap())
        .start(recording.clone());
    (server, recording)
}

/// A client config trusting the server's CA, with `alpn` and only `versions`.
fn client_with(
    server: &TestServer,
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = server.certs().ca_cert_pem.as_bytes();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca).unwrap())
        .unwrap();
    let provider = Arc::new(tlsvisor_actors::crypto_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

#[test]
fn alpn_is_negotiated_in_the_servers_order_and_no_common_protocol_is_refused() {
    let scratch = ScratchDir::new("alpn").unwrap();
    let policy = TlsPolicy {
        alpn: vec!["h2".into(), "http/1.1".into()],
        prefer_server_cipher_order: true,
        ..TlsPolicy::default()
    };
    let (server, recording) = serve_policy(&scratch, policy);
    let both = client_with(&server, &["http/1.1", "h2"], rustls::ALL_VERSIONS);
    let mut client = TlsClient::connect(server.addr(), both).unwrap();
    assert_eq!(client.connection().alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(client.echo(b"alpn").unwrap(), b"alpn");
    let old = client_with(&server, &["http/1.1"], rustls::ALL_VERSIONS);
    let mut client_11 = TlsClient::connect(server.addr(), old).unwrap();
    assert_eq!(
        client_11.connection().alpn_protocol(),
        Some(&b"http/1.1"[..])
    );
    // Each echo returns once its session is open: the recording keeps the connect order.
    assert_eq!(client_11.echo(b"1.1").unwrap(), b"1.1");
    let none = client_with(&server, &[], rustls::ALL_VERSIONS);
    let mut no_alpn = TlsClient::connect(server.addr(), none).unwrap();
    assert_eq!(no_alpn.echo(b"none").unwrap(), b"none");
    drop(no_alpn);
    let other = client_with(&server, &["spdy/3"], rustls::ALL_VERSIONS);
    let refused = TlsClient::connect(server.addr(), other).err();
    assert!(
        format!("{refused:?}").contains("AlertReceived(NoApplicationProtocol)"),
        "{refused:?}"
    );
    drop((client, client_11));
    server.wait_disposed(4, HANG);
    let reasons = server.disposal_reasons();
    assert_eq!(reasons[3], DisposeReason::HandshakeFailed);
    let infos = recording.0.lock().unwrap().clone();
    let alpns: Vec<_> = infos.iter().map(|i| i.tls.alpn.clone()).collect();
    assert_eq!(alpns, [Some("h2".into()), Some("http/1.1".into()), None]);
    assert_eq!(infos[0].tls.server_name.as_deref(), Some("localhost"));
    assert_eq!(infos[0].tls.version, Some("TLSv1.3"));
}

#[test]
fn min_version_and_cipher_suites_are_enforced_and_reported() {
    let scratch = ScratchDir::new("policy").unwrap();
    let policy = TlsPolicy {
        min_version: TlsVersion::Tls13,
        cipher_suites: vec!["TLS_CHACHA20_POLY1305_SHA256".into()],
        kx_groups: vec!["secp384r1".into()],
        ..TlsPolicy::default()
    };
    let (server, recording) = serve_policy(&scratch, policy);
    let tls12 = client_with(&server, &[], &[&rustls::version::TLS12]);
    assert!(TlsClient::connect(server.addr(), tls12).is_err());
    let any = client_with(&server, &[], rustls::ALL_VERSIONS);
    let mut client = TlsClient::connect(server.addr(), any).unwrap();
    assert_eq!(client.echo(b"policy").unwrap(), b"policy");
    let info = recording.0.lock().unwrap()[0].tls.clone();
    assert_eq!(info.version, Some("TLSv1.3"));
    assert_eq!(info.cipher_suite, Some("TLS13_CHACHA20_POLY1305_SHA256"));
    let group = client.connection().negotiated_key_exchange_group().unwrap();
    assert_eq!(group.name(), rustls::NamedGroup::secp384r1);

    let tls12_only = TlsPolicy {
        cipher_suites: vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()],
        ..TlsPolicy::default()
    };
    let (server, recording) = serve_policy(&ScratchDir::new("policy12").unwrap(), tls12_only);
    let any = client_with(&server, &[], rustls::ALL_VERSIONS);
    let mut client = TlsClient::connect(server.addr(), any).unwrap();
    // The echo comes back once the session is open, so it is recorded by then.
    assert_eq!(client.echo(b"1.2").unwrap(), b"1.2");
    let info = recording.0.lock().unwrap()[0].tls.clone();
    assert_eq!(info.version, Some("TLSv1.2"));
    assert_eq!(
        info.cipher_suite,
        Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
    );
}

#[test]
fn a_ticket_from_one_server_resumes_on_another_sharing_the_key_file() {
    let scratch = ScratchDir::new("tickets").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key) = (scratch.path("server.crt"), scratch.path("server.key"));
    rotate(&certs, &cert, &key);
    let shared = scratch.path("tickets.key");
    replace(&shared, &format!("{}\n", "5a".repeat(48)));
    let other = scratch.path("other.key");
    replace(&other, &format!("{}\n", "a5".repeat(48)));
    let start = |keys: &Path| {
        let mut source = TlsSource::single(&cert, &key);
        source.ticket_key_file = Some(keys.to_path_buf());
        let recording = Recording::default();
        let server = TestServer::builder()
            .certs(certs.clone())
            .tls(source.load().unwrap())
            .start(recording.clone());
        (server, recording)
    };
    let (a, _) = start(&shared);
    let (b, b_sessions) = start(&shared);
    let (c, c_sessions) = start(&other);
    // One client configuration: one session cache, keyed by the server name.
    let config = client_config(certs.ca_cert_pem.as_bytes()).unwrap();
    let kind = |server: &TestServer| {
        let mut client = TlsClient::connect(server.addr(), config.clone()).unwrap();
        // The echo also reads the tickets the server sends after the handshake.
        assert_eq!(client.echo(b"t").unwrap(), b"t");
        client.connection().handshake_kind()
    };
    assert_eq!(kind(&a), Some(rustls::HandshakeKind::Full));
    assert_eq!(kind(&b), Some(rustls::HandshakeKind::Resumed));
    assert!(b_sessions.0.lock().unwrap()[0].tls.resumed);
    // Another key: the ticket does not open, a full handshake still serves the client.
    assert_eq!(kind(&c), Some(rustls::HandshakeKind::Full));
    assert!(!c_sessions.0.lock().unwrap()[0].tls.resumed);
}
