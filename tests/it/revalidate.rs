//! Live revalidation (issue 20, item 1): a reload that changes the client-certificate policy
//! reaches the connections already open. A revoked client (CRL) or one dropped from the
//! allow-list is closed gracefully as `credentials_revoked`, the others untouched; a client
//! certificate that expires while connected is closed at its `notAfter` as
//! `client_certificate_expired`; `--revalidate-live off` keeps today's behaviour; `POST
//! /revalidate` runs a pass on demand. Real TLS clients over real sockets, the real binary and
//! real signals (an allow-list edited in the config file and SIGHUP, and one replaced through
//! the library's `TlsReloader`).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::certs::{info_of_pem, issue_into, path_in};
use crate::common::{raise_open_files_limit, Tlsvisor, HANG};
use tlsvisor_actors::testing::{
    client_config_with_cert, eventually, CloseSeen, ScratchDir, TestServer, TlsClient,
};
use tlsvisor_actors::{
    AllowList, CertificateFiles, ClientAuth, DevCerts, DisposeReason, Echo, TlsSource,
};

/// Connections each client certificate holds open.
const PER_CLIENT: usize = 100;

/// The ceiling on "closed within a second" (the machine is shared and slow): only a hang, or a
/// pass that does not happen, reaches it. The measured time is printed.
const CLOSED_WITHIN: Duration = Duration::from_secs(10);

fn replace(path: &str, text: &str) {
    ScratchDir::replace(path.as_ref(), text).unwrap();
}

/// One client certificate and its key (PEM).
struct Client {
    cert: String,
    key: String,
}

impl Client {
    fn issue(certs: &DevCerts, cn: &str) -> Client {
        let (cert, key) = certs.issue_client(cn, &[], &[]).unwrap();
        Client { cert, key }
    }

    fn serial(&self) -> String {
        info_of_pem(&self.cert).serial_hex
    }

    fn connect(&self, certs: &DevCerts, addr: SocketAddr) -> std::io::Result<TlsClient> {
        let config = client_config_with_cert(
            certs.ca_cert_pem.as_bytes(),
            self.cert.as_bytes(),
            self.key.as_bytes(),
        )?;
        let mut client = TlsClient::connect(addr, config)?;
        // An mTLS refusal arrives after the client's last flight: only a round trip shows it.
        client.echo(b"hello")?;
        // A read that never ends fails the test instead of hanging it.
        client.tcp().set_read_timeout(Some(HANG))?;
        Ok(client)
    }

    /// `n` connections, each of which echoed once.
    fn crowd(&self, certs: &DevCerts, addr: SocketAddr, n: usize) -> Vec<TlsClient> {
        (0..n)
            .map(|i| {
                self.connect(certs, addr)
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"))
            })
            .collect()
    }
}

/// Waits until every client in `crowd` sees the server close, each with `close_notify` then a
/// FIN; returns how long that took from `since`.
fn all_closed_gracefully(crowd: Vec<TlsClient>, since: Instant) -> Duration {
    for (i, mut client) in crowd.into_iter().enumerate() {
        let seen = client.read_until_close();
        assert!(
            matches!(seen, CloseSeen::CloseNotifyThenEof),
            "client {i}: {seen:?}"
        );
    }
    since.elapsed()
}

fn all_still_echo(crowd: &mut [TlsClient]) {
    for (i, client) in crowd.iter_mut().enumerate() {
        assert_eq!(
            client
                .echo(b"still here")
                .unwrap_or_else(|e| panic!("{i}: {e}")),
            b"still here"
        );
    }
}

/// `POST path` on `admin` with curl, with a bearer token or without: (status, body).
fn post(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args([
        "-s",
        "--max-time",
        "30",
        "-X",
        "POST",
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command
        .arg(format!("http://{admin}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    (status.parse().expect("a status"), body.to_string())
}

fn revalidated(server: &Tlsvisor, result: &str) -> f64 {
    server.scrape().get(&format!(
        "tlsvisor_connections_revalidated_total{{result=\"{result}\"}}"
    ))
}

/// Every connection ended once, through its stop hook: the books balance and nothing was a
/// duplicate, a fallback or lost.
fn books_exact(server: &Tlsvisor) {
    assert!(
        eventually(HANG, || server.scrape().get("tlsvisor_connections_active")
            == 0.0),
        "connections left"
    );
    server.scrape().assert_books_exact();
}

/// A server verifying clients of `certs`'s CA with the CRL at `crl`, an admin API asking for
/// `token`, and `extra` flags.
struct Mtls {
    scratch: ScratchDir,
    certs: DevCerts,
    crl: String,
    token: String,
}

impl Mtls {
    fn new(name: &str) -> Mtls {
        let scratch = ScratchDir::new(name).unwrap();
        let certs = DevCerts::generate().unwrap();
        let crl = path_in(&scratch, "clients.crl");
        // With a CRL, a client whose CA has none is refused: start with an empty one.
        replace(&crl, &certs.crl(&[]).unwrap());
        Mtls {
            scratch,
            certs,
            crl,
            token: "revalidate-token".into(),
        }
    }

    fn serve(&self, extra: &[&str]) -> Tlsvisor {
        let (cert, key, _) = issue_into(&self.scratch, &self.certs, "server", &["localhost"]);
        let ca = path_in(&self.scratch, "client-ca.crt");
        replace(&ca, &self.certs.ca_cert_pem);
        let token_file = path_in(&self.scratch, "admin.token");
        replace(&token_file, &self.token);
        let mut flags = vec![
            "--cert",
            &cert,
            "--key",
            &key,
            "--client-ca",
            &ca,
            "--client-crl",
            &self.crl,
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            &token_file,
        ];
        flags.extend_from_slice(extra);
        Tlsvisor::serve(&flags)
    }

    fn revoke(&self, clients: &[&Client]) {
        let serials: Vec<String> = clients.iter().map(|c| c.serial()).collect();
        let serials: Vec<&str> = serials.iter().map(String::as_str).collect();
        replace(&self.crl, &self.certs.crl(&serials).unwrap());
    }
}

#[test]
fn a_client_revoked_by_crl_is_closed_on_reload_and_the_others_stay() {
    raise_open_files_limit();
    let mtls = Mtls::new("bin-revalidate-crl");
    let server = mtls.serve(&[]);
    let admin = server.admin_listen();
    let (alice, bob) = (
        Client::issue(&mtls.certs, "alice"),
        Client::issue(&mtls.certs, "bob"),
    );
    let revoked = alice.crowd(&mtls.certs, server.listen, PER_CLIENT);
    let mut kept = bob.crowd(&mtls.certs, server.listen, PER_CLIENT);
    // Asked without the token: refused, as every admin route is, and nothing checked.
    assert_eq!(post(admin, "/revalidate", None).0, 401);
    assert_eq!(revalidated(&server, "kept"), 0.0);

    mtls.revoke(&[&alice]);
    let reloaded = Instant::now();
    server.signal(libc::SIGHUP);
    let took = all_closed_gracefully(revoked, reloaded);
    eprintln!("CRL reload → last of {PER_CLIENT} revoked connections closed: {took:?}");
    assert!(took < CLOSED_WITHIN, "{took:?}");
    all_still_echo(&mut kept);
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("credentials_revoked")
        == PER_CLIENT as f64));
    assert_eq!(revalidated(&server, "kept"), PER_CLIENT as f64);
    assert_eq!(revalidated(&server, "closed"), PER_CLIENT as f64);
    let passes = server.logged("live connections revalidated", 1);
    assert_eq!(passes[0]["trigger"], "reload");
    assert_eq!(passes[0]["kept"], PER_CLIENT as u64);
    assert_eq!(passes[0]["closed"], PER_CLIENT as u64);
    assert!(passes[0]["duration_ms"].as_f64().is_some());
    // A new handshake agrees with the pass.
    assert!(alice.connect(&mtls.certs, server.listen).is_err());

    // On demand, with the token: the same policy, nothing more to close.
    let (status, body) = post(admin, "/revalidate", Some(&mtls.token));
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["kept"], PER_CLIENT as u64, "{body}");
    assert_eq!(report["closed"], 0, "{body}");
    assert_eq!(report["complete"], true, "{body}");
    assert_eq!(revalidated(&server, "kept"), 2.0 * PER_CLIENT as f64);
    assert_eq!(revalidated(&server, "closed"), PER_CLIENT as f64);
    all_still_echo(&mut kept);

    for client in kept {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    books_exact(&server);
    let metrics = server.scrape();
    assert_eq!(metrics.disposed("credentials_revoked"), PER_CLIENT as f64);
    assert_eq!(metrics.disposed("peer_eof"), PER_CLIENT as f64);
    // Alice's refused handshake after the reload.
    assert_eq!(metrics.disposed("client_auth_failed"), 1.0);
}

#[test]
fn with_revalidate_live_off_a_reload_closes_nothing() {
    let mtls = Mtls::new("bin-revalidate-off");
    let server = mtls.serve(&["--revalidate-live", "off"]);
    let admin = server.admin_listen();
    let alice = Client::issue(&mtls.certs, "alice");
    let mut live = alice.crowd(&mtls.certs, server.listen, 3);
    mtls.revoke(&[&alice]);
    server.signal(libc::SIGHUP);
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_tls_reloads_total{result=\"ok\"}")
        == 1.0));
    // The new policy is in force for new handshakes...
    assert!(alice.connect(&mtls.certs, server.listen).is_err());
    // ...and only for them.
    all_still_echo(&mut live);
    let (status, body) = post(admin, "/revalidate", Some(&mtls.token));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("--revalidate-live off"), "{body}");
    all_still_echo(&mut live);
    assert_eq!(revalidated(&server, "kept"), 0.0);
    assert_eq!(revalidated(&server, "closed"), 0.0);
    assert!(server.logs_with("live connections revalidated").is_empty());
    for client in live {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    books_exact(&server);
    assert_eq!(server.scrape().disposed("credentials_revoked"), 0.0);
}

#[test]
fn a_client_certificate_that_expires_while_connected_is_closed_at_its_not_after() {
    let mtls = Mtls::new("bin-revalidate-expiry");
    let server = mtls.serve(&[]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Long enough for a debug build's handshake on a busy machine, short for a test.
    let not_after = now + 5;
    let (cert, key) = mtls.certs.issue_client_until("brief", not_after).unwrap();
    let brief = Client { cert, key };
    let lasting = Client::issue(&mtls.certs, "lasting");
    let mut expiring = brief.connect(&mtls.certs, server.listen).unwrap();
    let mut other = lasting.connect(&mtls.certs, server.listen).unwrap();
    let seen = expiring.read_until_close();
    let closed_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    let late = closed_at.as_secs_f64() - not_after as f64;
    eprintln!("closed {late:.3} s after notAfter");
    // At its notAfter: not before (the clock's second), not long after.
    assert!(late > -1.0 && late < 5.0, "{late}");
    assert_eq!(other.echo(b"unexpired").unwrap(), b"unexpired");
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("client_certificate_expired")
        == 1.0));
    assert!(matches!(other.close(), CloseSeen::CloseNotifyThenEof));
    books_exact(&server);
    let lines = server.logs_with("disposed");
    let expired = lines
        .iter()
        .find(|l| l["reason"] == "client_certificate_expired")
        .expect("its disposal line");
    assert_eq!(expired["client_cn"], "brief");
}

/// The allow-list through the library: an embedder reloads a source without a name, and the
/// connections of that name close; the books are checked per id by the harness's audit.
#[test]
fn a_name_removed_from_the_allow_list_is_closed_on_reload() {
    raise_open_files_limit();
    let scratch = ScratchDir::new("lib-revalidate-allow").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (server_cert, server_key) = (
        path_in(&scratch, "server.crt"),
        path_in(&scratch, "server.key"),
    );
    replace(&server_cert, &certs.server_cert_pem);
    replace(&server_key, &certs.server_key_pem);
    let ca = path_in(&scratch, "ca.crt");
    replace(&ca, &certs.ca_cert_pem);
    let source = |names: &[&str]| {
        let mut client_auth = ClientAuth::new(&ca);
        client_auth.allow = AllowList {
            cns: names.iter().map(|n| n.to_string()).collect(),
            ..AllowList::default()
        };
        TlsSource {
            certificates: vec![CertificateFiles::new(&server_cert, &server_key)],
            client_auth: Some(client_auth),
            ..TlsSource::default()
        }
    };
    let server = TestServer::builder()
        .certs(certs.clone())
        .tls(source(&["alice", "bob"]).load().unwrap())
        .start(Echo);
    let (alice, bob) = (Client::issue(&certs, "alice"), Client::issue(&certs, "bob"));
    let mut kept = alice.crowd(&certs, server.addr(), PER_CLIENT);
    let dropped = bob.crowd(&certs, server.addr(), PER_CLIENT);

    // The same policy loaded again: no pass (nothing changed), nothing closed.
    server
        .tls_reloader()
        .reload_from(&source(&["alice", "bob"]))
        .unwrap();
    let reloaded = Instant::now();
    server
        .tls_reloader()
        .reload_from(&source(&["alice"]))
        .unwrap();
    let took = all_closed_gracefully(dropped, reloaded);
    eprintln!("allow-list reload → last of {PER_CLIENT} connections closed: {took:?}");
    assert!(took < CLOSED_WITHIN, "{took:?}");
    all_still_echo(&mut kept);
    let snapshot = server.wait_for("the dropped name's connections disposed", HANG, |s| {
        s.ledger.disposed(DisposeReason::CredentialsRevoked) == PER_CLIENT as u64
    });
    assert_eq!(snapshot.revalidated_kept, PER_CLIENT as u64);
    assert_eq!(snapshot.revalidated_closed, PER_CLIENT as u64);
    let report = server.revalidate().expect("on by default");
    assert_eq!(
        (report.kept, report.closed, report.complete),
        (PER_CLIENT as u64, 0, true)
    );

    for client in kept {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    let snapshot = server.wait_idle(HANG);
    assert!(snapshot.ledger.is_balanced());
    assert_eq!(
        snapshot.ledger.disposed(DisposeReason::CredentialsRevoked),
        PER_CLIENT as u64
    );
    assert_eq!(
        snapshot.ledger.disposed(DisposeReason::PeerEof),
        PER_CLIENT as u64
    );
    assert_eq!(
        (
            snapshot.ledger.duplicates,
            snapshot.ledger.fallbacks,
            snapshot.dispose_lost
        ),
        (0, 0, 0)
    );
    // Every id disposed exactly once, through its stop hook.
    let records = server.assert_each_disposed_once();
    assert_eq!(records.len(), 2 * PER_CLIENT);
}

/// The allow-list in the config file, edited and reloaded with SIGHUP: the name taken out is
/// closed as `credentials_revoked`, the other stays; a config file broken by the next edit
/// refuses the reload whole and changes nothing.
#[test]
fn a_name_removed_from_the_config_files_allow_list_is_closed_on_sighup() {
    raise_open_files_limit();
    let mtls = Mtls::new("bin-revalidate-allow-file");
    let config = path_in(&mtls.scratch, "tlsvisor.toml");
    let with = |names: &str| format!("allow-cn = [{names}]\n");
    replace(&config, &with("\"alice\", \"bob\""));
    let server = mtls.serve(&["--config", &config]);
    let (alice, bob) = (
        Client::issue(&mtls.certs, "alice"),
        Client::issue(&mtls.certs, "bob"),
    );
    let mut kept = alice.crowd(&mtls.certs, server.listen, 20);
    let dropped = bob.crowd(&mtls.certs, server.listen, 20);

    replace(&config, &with("\"alice\""));
    let reloaded = Instant::now();
    server.signal(libc::SIGHUP);
    let took = all_closed_gracefully(dropped, reloaded);
    eprintln!("allow-list edit + SIGHUP → last of 20 dropped connections closed: {took:?}");
    all_still_echo(&mut kept);
    assert!(bob.connect(&mtls.certs, server.listen).is_err());
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("credentials_revoked")
        == 20.0));

    // A broken edit: the reload is refused, naming the file, and alice stays admitted.
    replace(&config, "allow-cn = [\"alice\"\n");
    server.signal(libc::SIGHUP);
    let refused = server.logged("TLS reload failed; keeping the previous configuration", 1);
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("tlsvisor.toml"),
        "{}",
        refused[0]
    );
    all_still_echo(&mut kept);
    alice.connect(&mtls.certs, server.listen).unwrap();

    for client in kept {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    books_exact(&server);
}
