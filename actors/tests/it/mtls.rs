//! Client certificates (mTLS) over real handshakes: who is admitted, who is refused as
//! `client_auth_failed`, and the identity sessions and the proxy's upstream see.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tlsvisor_actors::testing::{
    client_config, client_config_with_cert, ScratchDir, TestServer, TestUpstream, TlsClient,
};
use tlsvisor_actors::{
    AllowList, ClientAuth, ClientAuthMode, ClientIdentity, ConnInfo, DevCerts, DisposeReason, Echo,
    Protocol, ProxyConfig, ProxyHeader, Session, SessionError, TlsSource,
};

/// A ceiling only a hang reaches.
const HANG: Duration = Duration::from_secs(20);

/// Echoes and records the client identity of every session.
#[derive(Clone, Default)]
struct Identities(Arc<Mutex<Vec<Option<ClientIdentity>>>>);

impl Protocol for Identities {
    fn name(&self) -> &'static str {
        "identities"
    }

    fn open(&self, info: &ConnInfo) -> Result<Box<dyn Session>, SessionError> {
        self.0.lock().unwrap().push(info.tls.client.clone());
        Echo.open(info)
    }
}

/// A TLS source with a `localhost` certificate verifying clients from `certs`' CA under
/// `client_auth` (its `ca` path is filled in here).
fn mtls_source(scratch: &ScratchDir, certs: &DevCerts, mut client_auth: ClientAuth) -> TlsSource {
    let ca = scratch.path("client-ca.crt");
    ScratchDir::replace(&ca, &certs.ca_cert_pem).unwrap();
    let (cert, key) = (scratch.path("server.crt"), scratch.path("server.key"));
    let (cert_pem, key_pem) = certs.issue_server(&["localhost"]).unwrap();
    ScratchDir::replace(&cert, &cert_pem).unwrap();
    ScratchDir::replace(&key, &key_pem).unwrap();
    client_auth.ca = ca;
    let mut source = TlsSource::single(&cert, &key);
    source.client_auth = Some(client_auth);
    source
}

/// A server of `Identities` verifying clients as [`mtls_source`] says.
fn serve(
    scratch: &ScratchDir,
    certs: &DevCerts,
    client_auth: ClientAuth,
) -> (TestServer, Identities) {
    let source = mtls_source(scratch, certs, client_auth);
    let identities = Identities::default();
    let server = TestServer::builder()
        .certs(certs.clone())
        .tls(source.load().unwrap())
        .start(identities.clone());
    (server, identities)
}

/// Whether a client with `cert` (PEM pair, or none) gets an echo back. With TLS 1.3 the client
/// finishes its handshake before the server has checked its certificate, so the refusal shows
/// on the first read.
fn admitted(server: &TestServer, cert: Option<&(String, String)>) -> bool {
    let ca = server.certs().ca_cert_pem.as_bytes();
    let config = match cert {
        Some((cert, key)) => client_config_with_cert(ca, cert.as_bytes(), key.as_bytes()),
        None => client_config(ca),
    }
    .unwrap();
    match TlsClient::connect(server.addr(), config) {
        Ok(mut client) => client.echo(b"who am i").is_ok(),
        Err(_) => false,
    }
}

fn serial(cert_pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    tlsvisor_actors::testing::CertificateFacts::from_der(&der)
        .unwrap()
        .serial_hex
}

#[test]
fn required_client_certificates_allow_listed_and_revoked() {
    let scratch = ScratchDir::new("mtls-require").unwrap();
    let certs = DevCerts::generate().unwrap();
    let alice = certs.issue_client("alice", &[], &[]).unwrap();
    let revoked = certs.issue_client("alice", &[], &[]).unwrap();
    let bob = certs.issue_client("bob", &[], &[]).unwrap();
    let service = certs
        .issue_client("svc", &[], &["spiffe://test/service"])
        .unwrap();
    let other_ca = DevCerts::generate().unwrap();
    let stranger = other_ca.issue_client("alice", &[], &[]).unwrap();
    let crl = scratch.path("revoked.crl");
    let crl_pem = certs.crl(&[&serial(&revoked.0)]).unwrap();
    ScratchDir::replace(&crl, &crl_pem).unwrap();
    let mut client_auth = ClientAuth::new("");
    client_auth.crls = vec![crl];
    client_auth.allow = AllowList {
        cns: vec!["alice".into()],
        uri_sans: vec!["spiffe://test/service".into()],
        ..AllowList::default()
    };
    let (server, identities) = serve(&scratch, &certs, client_auth);

    assert!(admitted(&server, Some(&alice)), "alice: allowed CN");
    assert!(admitted(&server, Some(&service)), "an allowed URI SAN");
    assert!(!admitted(&server, None), "no certificate");
    assert!(!admitted(&server, Some(&stranger)), "another CA");
    assert!(!admitted(&server, Some(&revoked)), "revoked by the CRL");
    assert!(!admitted(&server, Some(&bob)), "an unlisted CN");
    server.wait_disposed(6, HANG);
    let reasons = server.disposal_reasons();
    assert_eq!(&reasons[..2], [DisposeReason::PeerEof; 2]);
    assert_eq!(&reasons[2..], [DisposeReason::ClientAuthFailed; 4]);
    assert_eq!(
        server
            .snapshot()
            .ledger
            .disposed(DisposeReason::ClientAuthFailed),
        4
    );
    let seen = identities.0.lock().unwrap().clone();
    let alice_id = seen[0].clone().expect("alice's identity");
    assert_eq!(alice_id.cn.as_deref(), Some("alice"));
    assert_eq!(alice_id.serial, serial(&alice.0));
    let service_id = seen[1].clone().expect("the service's identity");
    assert_eq!(service_id.uri_sans, ["spiffe://test/service"]);
    assert_eq!(seen.len(), 2, "no session opened for a refused client");
}

#[test]
fn optional_client_certificates_admit_anonymous_clients_but_not_bad_certificates() {
    let scratch = ScratchDir::new("mtls-optional").unwrap();
    let certs = DevCerts::generate().unwrap();
    let mut client_auth = ClientAuth::new("");
    client_auth.mode = ClientAuthMode::Optional;
    let (server, identities) = serve(&scratch, &certs, client_auth);
    let carol = certs.issue_client("carol", &["carol.test"], &[]).unwrap();
    let stranger = DevCerts::generate()
        .unwrap()
        .issue_client("carol", &[], &[])
        .unwrap();
    assert!(admitted(&server, None));
    assert!(admitted(&server, Some(&carol)), "any verified client");
    assert!(!admitted(&server, Some(&stranger)));
    server.wait_disposed(3, HANG);
    assert_eq!(
        server.disposal_reasons()[2],
        DisposeReason::ClientAuthFailed
    );
    let seen = identities.0.lock().unwrap().clone();
    assert_eq!(seen[0], None);
    let carol_id = seen[1].clone().unwrap();
    assert_eq!(carol_id.dns_sans, ["carol.test"]);
}

#[test]
fn a_bad_client_ca_file_is_an_error_naming_it() {
    let scratch = ScratchDir::new("mtls-bad-ca").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key) = (scratch.path("server.crt"), scratch.path("server.key"));
    let (cert_pem, key_pem) = certs.issue_server(&["localhost"]).unwrap();
    ScratchDir::replace(&cert, &cert_pem).unwrap();
    ScratchDir::replace(&key, &key_pem).unwrap();
    let ca = scratch.path("client-ca.crt");
    ScratchDir::replace(&ca, "no certificate here").unwrap();
    let mut source = TlsSource::single(&cert, &key);
    source.client_auth = Some(ClientAuth::new(&ca));
    let error = source.load().unwrap_err().to_string();
    assert!(error.contains("client-ca.crt"), "{error}");
    assert!(
        source.files().contains(&ca),
        "--watch-certs watches the CA too"
    );
}

#[test]
fn the_proxy_v2_header_carries_alpn_sni_and_the_client_cn() {
    let scratch = ScratchDir::new("mtls-proxy").unwrap();
    let certs = DevCerts::generate().unwrap();
    let mut source = mtls_source(&scratch, &certs, ClientAuth::new(""));
    source.policy.alpn = vec!["http/1.1".into()];
    let up = TestUpstream::start(|mut s: std::net::TcpStream| {
        use std::io::Read;
        let mut fixed = [0u8; 16];
        s.read_exact(&mut fixed).unwrap();
        let mut rest = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
        s.read_exact(&mut rest).unwrap();
        rest
    });
    let mut proxy = ProxyConfig::new(up.addr().to_string());
    proxy.proxy_header = Some(ProxyHeader::V2);
    let server = TestServer::builder()
        .certs(certs.clone())
        .tls(source.load().unwrap())
        .start_proxy(proxy);
    let (cert, key) = certs.issue_client("alice", &[], &[]).unwrap();
    let mut config = (*client_config_with_cert(
        certs.ca_cert_pem.as_bytes(),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .unwrap())
    .clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let _client = TlsClient::connect(server.addr(), Arc::new(config)).unwrap();
    let after_addresses = up.next_report(HANG).unwrap().split_off(12);
    // PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, then PP2_TYPE_SSL: client = SSL | CERT_CONN, verify = 0
    // (a verified certificate), version, cipher, PP2_SUBTYPE_SSL_CN (0x22).
    let mut expected = vec![0x01, 0x00, 8];
    expected.extend_from_slice(b"http/1.1");
    expected.extend_from_slice(&[0x02, 0x00, 9]);
    expected.extend_from_slice(b"localhost");
    let mut ssl = vec![0x03, 0, 0, 0, 0, 0x21, 0x00, 7];
    ssl.extend_from_slice(b"TLSv1.3");
    ssl.extend_from_slice(&[0x23, 0x00, 22]);
    ssl.extend_from_slice(b"TLS_AES_256_GCM_SHA384");
    ssl.extend_from_slice(&[0x22, 0x00, 5]);
    ssl.extend_from_slice(b"alice");
    expected.extend_from_slice(&[0x20, 0x00, ssl.len() as u8]);
    expected.extend_from_slice(&ssl);
    assert_eq!(after_addresses, expected);
}

#[test]
fn the_client_cas_expiry_is_reported_with_the_server_certificates() {
    let scratch = ScratchDir::new("mtls-expiry").unwrap();
    let certs = DevCerts::generate().unwrap();
    let loaded = mtls_source(&scratch, &certs, ClientAuth::new(""))
        .load()
        .unwrap();
    let names: Vec<_> = loaded
        .certificates()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let ca = scratch.path("client-ca.crt").display().to_string();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[1], format!("{ca}#0"));
}
