//! The binary's certificate handling end to end: `--watch-certs` reloads, the reload metrics
//! and the error line of a broken reload.

use std::path::Path;

use crate::common;
use crate::common::certs::{alice_only, issue_into, path_in};
use crate::common::{Tlsvisor, HANG};
use tlsvisor_actors::testing::CertificateFacts;
use tlsvisor_actors::testing::{
    client_config, client_config_accepting_any, eventually, ScratchDir, TlsClient,
};
use tlsvisor_actors::DevCerts;

fn replace(path: &str, text: &str) {
    ScratchDir::replace(path.as_ref(), text).unwrap();
}

/// The serial of the certificate a fresh client is served, as `name`.
fn served_serial(server: &Tlsvisor, ca: &str, name: &str) -> Option<String> {
    let config = client_config(ca.as_bytes()).ok()?;
    let client = TlsClient::connect_as(server.listen, config, name).ok()?;
    let cert = client.server_certificate()?;
    Some(CertificateFacts::from_der(&cert).unwrap().serial_hex)
}

#[test]
fn watch_certs_reloads_changed_files_and_keeps_the_old_on_a_broken_key() {
    let scratch = ScratchDir::new("bin-watch").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key, first) = issue_into(&scratch, &certs, "server", &["localhost"]);
    let server = Tlsvisor::serve(&["--cert", &cert, "--key", &key, "--watch-certs"]);
    let ca = certs.ca_cert_pem.clone();
    assert_eq!(
        served_serial(&server, &ca, "localhost"),
        Some(first.serial_hex.clone())
    );
    let metrics = server.scrape();
    let expiry = format!("tlsvisor_certificate_expiry_timestamp_seconds{{name=\"{cert}\"}}");
    assert_eq!(metrics.get(&expiry), first.not_after_unix as f64);
    assert_eq!(
        metrics.get("tlsvisor_tls_reloads_total{result=\"ok\"}"),
        0.0
    );

    let mut live =
        TlsClient::connect(server.listen, client_config(ca.as_bytes()).unwrap()).unwrap();
    let (_, _, second) = issue_into(&scratch, &certs, "server", &["localhost"]);
    assert!(
        eventually(HANG, || served_serial(&server, &ca, "localhost")
            == Some(second.serial_hex.clone())),
        "the new certificate is served"
    );
    assert_eq!(live.echo(b"kept").unwrap(), b"kept");
    assert_eq!(
        server
            .scrape()
            .get("tlsvisor_tls_reloads_total{result=\"ok\"}"),
        1.0
    );

    replace(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_tls_reloads_total{result=\"failed\"}")
        == 1.0));
    // One error line per failed reload.
    let failures = server.logged("TLS reload failed; keeping the previous configuration", 1);
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains(&key), "the line names the file: {error}");
    assert_eq!(
        served_serial(&server, &ca, "localhost"),
        Some(second.serial_hex)
    );
    assert_eq!(live.echo(b"still kept").unwrap(), b"still kept");
    assert!(Path::new(&cert).exists());
}

#[test]
fn a_broken_certificate_at_start_is_an_error_naming_the_file() {
    let scratch = ScratchDir::new("bin-start").unwrap();
    let (cert, key) = (
        path_in(&scratch, "server.crt"),
        path_in(&scratch, "server.key"),
    );
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &cert,
            "--key",
            &key,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&cert), "{stderr}");
}

#[test]
fn repeated_cert_and_key_serve_names_by_sni_and_strict_refuses_others() {
    let scratch = ScratchDir::new("bin-sni").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert0, key0, default) = issue_into(&scratch, &certs, "0", &["localhost"]);
    let (cert1, key1, a) = issue_into(&scratch, &certs, "1", &["a.test"]);
    let (cert2, key2, b) = issue_into(&scratch, &certs, "2", &["*.b.test"]);
    let flags = [
        "--cert", &cert0, "--key", &key0, "--cert", &cert1, "--key", &key1, "--cert", &cert2,
        "--key", &key2,
    ];
    let ca = certs.ca_cert_pem.clone();
    let server = Tlsvisor::serve(&flags);
    assert_eq!(
        served_serial(&server, &ca, "a.test"),
        Some(a.serial_hex.clone())
    );
    assert_eq!(
        served_serial(&server, &ca, "w.b.test"),
        Some(b.serial_hex.clone())
    );
    assert_eq!(
        served_serial(&server, &ca, "localhost"),
        Some(default.serial_hex.clone())
    );
    let any = client_config_accepting_any().unwrap();
    let unknown = TlsClient::connect_as(server.listen, any.clone(), "c.test").unwrap();
    let served = CertificateFacts::from_der(&unknown.server_certificate().unwrap()).unwrap();
    assert_eq!(served.serial_hex, default.serial_hex);
    let metrics = server.scrape();
    for cert in [&cert0, &cert1, &cert2] {
        let key = format!("tlsvisor_certificate_expiry_timestamp_seconds{{name=\"{cert}\"}}");
        assert!(metrics.get(&key) > 0.0);
    }
    drop(server);

    let strict: Vec<&str> = flags.iter().copied().chain(["--sni-strict"]).collect();
    let server = Tlsvisor::serve(&strict);
    let refused = TlsClient::connect_as(server.listen, any, "c.test").err();
    assert!(
        format!("{refused:?}").contains("UnrecognisedName"),
        "{refused:?}"
    );
    assert_eq!(served_serial(&server, &ca, "a.test"), Some(a.serial_hex));
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("handshake_failed")
        == 1.0));
}

#[test]
fn overlapping_certificates_are_a_start_up_error_naming_both_files() {
    let scratch = ScratchDir::new("bin-overlap").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert0, key0, _) = issue_into(&scratch, &certs, "0", &["a.test"]);
    let (cert1, key1, _) = issue_into(&scratch, &certs, "1", &["a.test", "z.test"]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args([
            "--cert", &cert0, "--key", &key0, "--cert", &cert1, "--key", &key1,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&cert0) && stderr.contains(&cert1),
        "{stderr}"
    );
}

#[test]
fn the_disposed_line_carries_the_negotiated_fields_and_never_none() {
    let server = Tlsvisor::serve(&["--alpn", "h2,http/1.1", "--tls-min-version", "1.3"]);
    let mut config = (*client_config(&common::dev_ca()).unwrap()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = TlsClient::connect(server.listen, std::sync::Arc::new(config)).unwrap();
    assert_eq!(client.echo(b"fields").unwrap(), b"fields");
    client.close();
    // Not TLS at all: a failed handshake.
    let mut plain = std::net::TcpStream::connect(server.listen).unwrap();
    std::io::Write::write_all(&mut plain, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let _ = std::io::Read::read(&mut plain, &mut [0u8; 64]);
    assert!(eventually(HANG, || server.logs_with("disposed").len() == 2));
    let lines = server.logs_with("disposed");
    let (open, failed) = if lines[0]["reason"] == "peer_eof" {
        (&lines[0], &lines[1])
    } else {
        (&lines[1], &lines[0])
    };
    assert_eq!(open["reason"], "peer_eof");
    assert_eq!(open["close_notify"], true);
    assert_eq!(open["tls_version"], "TLSv1.3");
    assert_eq!(open["alpn"], "h2");
    assert_eq!(open["sni"], "localhost");
    assert!(open["cipher"].as_str().unwrap().starts_with("TLS13_"));
    assert!(open["handshake_ms"].is_u64());
    assert_eq!(
        (open["bytes_in"].as_u64(), open["bytes_out"].as_u64()),
        (Some(6), Some(6))
    );
    assert_eq!(failed["reason"], "handshake_failed");
    let failed = failed.as_object().unwrap();
    for key in ["close_notify", "tls_version", "alpn", "handshake_ms"] {
        assert!(!failed.contains_key(key), "{key} in {failed:?}");
    }
    assert!(
        failed
            .values()
            .all(|v| v.as_str() != Some("None") && !v.is_null()),
        "{failed:?}"
    );
}

#[test]
fn an_unknown_policy_name_is_a_start_up_error_listing_the_valid_ones() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kx-groups",
            "X25519,ffdhe2048",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ffdhe2048") && stderr.contains("secp384r1"),
        "{stderr}"
    );
}

#[test]
fn client_certificates_are_verified_and_the_identity_is_logged() {
    let scratch = ScratchDir::new("bin-mtls").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key, _) = issue_into(&scratch, &certs, "server", &["localhost"]);
    let ca = path_in(&scratch, "client-ca.crt");
    replace(&ca, &certs.ca_cert_pem);
    let (alice_cert, alice_key) = certs.issue_client("alice", &[], &[]).unwrap();
    let (bob_cert, bob_key) = certs.issue_client("bob", &[], &[]).unwrap();
    let (revoked_cert, revoked_key) = certs.issue_client("alice", &[], &[]).unwrap();
    let crl = path_in(&scratch, "clients.crl");
    let revoked_serial = common::certs::info_of_pem(&revoked_cert).serial_hex;
    replace(&crl, &certs.crl(&[&revoked_serial]).unwrap());
    let mut flags = alice_only(&cert, &key, &ca);
    flags.extend(["--client-crl", &crl, "--allow-cn", "carol"]);
    let server = Tlsvisor::serve(&flags);
    let attempt = |cert: &str, key: &str| {
        let config = tlsvisor_actors::testing::client_config_with_cert(
            certs.ca_cert_pem.as_bytes(),
            cert.as_bytes(),
            key.as_bytes(),
        )
        .unwrap();
        TlsClient::connect(server.listen, config).and_then(|mut c| c.echo(b"mtls").map(|_| c))
    };
    let alice = attempt(&alice_cert, &alice_key).expect("alice is admitted");
    alice.close();
    assert!(attempt(&bob_cert, &bob_key).is_err(), "bob is not listed");
    assert!(attempt(&revoked_cert, &revoked_key).is_err(), "revoked");
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("client_auth_failed")
        == 2.0));
    let expiry = format!("tlsvisor_certificate_expiry_timestamp_seconds{{name=\"{ca}#0\"}}");
    assert!(
        server.scrape().get(&expiry) > 0.0,
        "the client CA's expiry is exposed"
    );
    assert!(eventually(HANG, || server.logs_with("disposed").len() == 3));
    let lines = server.logs_with("disposed");
    let admitted = lines.iter().find(|l| l["reason"] == "peer_eof").unwrap();
    assert_eq!(admitted["client_cn"], "alice");
    let alice_serial = common::certs::info_of_pem(&alice_cert).serial_hex;
    assert_eq!(admitted["client_serial"], alice_serial.as_str());
}

#[test]
fn client_auth_flags_without_a_client_ca_are_refused() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--allow-cn", "alice"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--client-ca"), "{stderr}");
}

#[test]
fn sighup_reloads_the_files_and_a_broken_key_keeps_the_old_certificate() {
    let scratch = ScratchDir::new("bin-sighup").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key, first) = issue_into(&scratch, &certs, "server", &["localhost"]);
    let server = Tlsvisor::serve(&["--cert", &cert, "--key", &key]);
    // A control on the same files, with --watch-certs: once it serves the new certificate, the
    // change was there to be seen for as long as a watcher needs.
    let watching = Tlsvisor::serve(&["--cert", &cert, "--key", &key, "--watch-certs"]);
    let ca = certs.ca_cert_pem.clone();
    let mut live =
        TlsClient::connect(server.listen, client_config(ca.as_bytes()).unwrap()).unwrap();
    let (_, _, second) = issue_into(&scratch, &certs, "server", &["localhost"]);
    assert!(
        eventually(HANG, || served_serial(&watching, &ca, "localhost")
            == Some(second.serial_hex.clone())),
        "the watching control reloads the new certificate"
    );
    drop(watching);
    // Without --watch-certs nothing changes until the signal.
    assert_eq!(
        served_serial(&server, &ca, "localhost"),
        Some(first.serial_hex)
    );
    assert_eq!(
        server
            .scrape()
            .get("tlsvisor_tls_reloads_total{result=\"ok\"}"),
        0.0
    );
    server.signal(libc::SIGHUP);
    assert!(eventually(HANG, || served_serial(
        &server,
        &ca,
        "localhost"
    ) == Some(second.serial_hex.clone())));
    assert_eq!(live.echo(b"kept").unwrap(), b"kept");

    replace(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    server.signal(libc::SIGHUP);
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_tls_reloads_total{result=\"failed\"}")
        == 1.0));
    let metrics = server.scrape();
    assert_eq!(
        metrics.get("tlsvisor_tls_reloads_total{result=\"ok\"}"),
        1.0
    );
    let failures = server.logged("TLS reload failed; keeping the previous configuration", 1);
    assert!(failures[0]["error"].as_str().unwrap().contains(&key));
    assert_eq!(
        served_serial(&server, &ca, "localhost"),
        Some(second.serial_hex)
    );
    assert_eq!(live.echo(b"still kept").unwrap(), b"still kept");
    // The probes close; the live client stays, through both reloads.
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 1.0));
}

/// `POST path` on `admin` with curl: (status, body).
fn post(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "-X",
            "POST",
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("http://{admin}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    (status.parse().unwrap(), body.to_string())
}

/// Issue 17, finding 4: a FIFO put where the certificate was (its open would wait for a
/// writer, on the signal-handling thread) and `/dev/zero` (it never ends) fail a reload at
/// once, by SIGHUP and by `POST /reload`, saying why; the server serves on and stops promptly.
#[test]
fn a_fifo_or_a_device_as_certificate_fails_a_reload_at_once_saying_why() {
    let scratch = ScratchDir::new("bin-reload-fifo").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key, first) = issue_into(&scratch, &certs, "server", &["localhost"]);
    let mut server = Tlsvisor::serve(&[
        "--cert",
        &cert,
        "--key",
        &key,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = server.admin_listen();
    let ca = certs.ca_cert_pem.clone();
    std::fs::remove_file(&cert).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&cert).status();
    assert!(made.unwrap().success());
    server.signal(libc::SIGHUP);
    let failures = server.logged("TLS reload failed; keeping the previous configuration", 1);
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains(&cert) && error.contains("a FIFO"), "{error}");
    let started = std::time::Instant::now();
    let (status, body) = post(admin, "/reload");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("a FIFO"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    std::fs::remove_file(&cert).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cert).unwrap();
    let (status, body) = post(admin, "/reload");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("a character device"), "{body}");
    assert_eq!(
        server
            .scrape()
            .get("tlsvisor_tls_reloads_total{result=\"failed\"}"),
        3.0
    );
    assert_eq!(
        served_serial(&server, &ca, "localhost"),
        Some(first.serial_hex)
    );
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(std::time::Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// Issue 17, finding 4: a reload stuck reading (as on a hung network mount; here the fault
/// `TLSVISOR_RELOAD_FAULT=hang`) neither holds up the stop signals nor piles up: a second
/// reload is refused at once (409), the stuck one is given up after its deadline and counted
/// as failed, and SIGTERM still stops the server promptly.
#[cfg(feature = "fault-injection")]
#[test]
fn a_stuck_reload_holds_up_neither_signals_nor_the_admin_api() {
    let limits = common::Limits {
        env: vec![("TLSVISOR_RELOAD_FAULT", "hang")],
        ..common::Limits::default()
    };
    let mut server = Tlsvisor::serve_with(&["--admin-listen", "127.0.0.1:0"], &limits);
    let admin = server.admin_listen();
    server.signal(libc::SIGHUP);
    server.logged("reload requested", 1);
    let started = std::time::Instant::now();
    let (status, body) = post(admin, "/reload");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("another reload is still running"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Served meanwhile, and scraped.
    assert_eq!(
        server.connect().unwrap().echo(b"served").unwrap(),
        b"served"
    );
    let failures = server.logged("TLS reload failed; keeping the previous configuration", 1);
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("took longer than 10s"), "{error}");
    assert_eq!(
        server
            .scrape()
            .get("tlsvisor_tls_reloads_total{result=\"failed\"}"),
        1.0
    );
    // The reading thread is still stuck: the stop signal is handled all the same.
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(std::time::Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// Issue 17, finding 9: an expired certificate is served (see `TlsWarning` for why) with a
/// loud warning at start and at every reload that serves it.
#[test]
fn an_expired_certificate_is_served_with_a_warning_at_start_and_on_reload() {
    let scratch = ScratchDir::new("bin-expired").unwrap();
    let (pem, key_pem) = common::certs::dated_certificate(2000, 2001);
    let (cert, key) = (path_in(&scratch, "old.crt"), path_in(&scratch, "old.key"));
    replace(&cert, &pem);
    replace(&key, &key_pem);
    let server = Tlsvisor::serve(&["--cert", &cert, "--key", &key]);
    let line = "CERTIFICATE OUTSIDE ITS VALIDITY PERIOD: serving it all the same";
    let warned = server.logged(line, 1);
    assert_eq!(warned[0]["file"], cert.as_str());
    assert!(
        warned[0]["detail"]
            .as_str()
            .unwrap()
            .contains("expired at 2001-01-01T00:00:00Z"),
        "{warned:?}"
    );
    server.signal(libc::SIGHUP);
    server.logged("TLS configuration reloaded", 1);
    server.logged(line, 2);
}

/// Issue 17, finding 9: a CA certificate put in place of the server's (reloading one broke
/// every handshake) or a client-only one is refused by the reload, which keeps the
/// certificate in use.
#[test]
fn a_reload_refuses_a_ca_or_client_only_certificate_and_keeps_serving_the_old_one() {
    let scratch = ScratchDir::new("bin-reload-ca").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key, first) = issue_into(&scratch, &certs, "server", &["localhost"]);
    let server = Tlsvisor::serve(&["--cert", &cert, "--key", &key]);
    let ca = certs.ca_cert_pem.clone();
    let (client_cert, client_key) = certs.issue_client("alice", &["localhost"], &[]).unwrap();
    let wrong = [
        (
            certs.ca_cert_pem.clone(),
            certs.ca_key_pem.clone(),
            "CA certificate",
        ),
        (client_cert, client_key, "does not include serverAuth"),
    ];
    for (n, (wrong_cert, wrong_key, why)) in wrong.into_iter().enumerate() {
        replace(&cert, &wrong_cert);
        replace(&key, &wrong_key);
        server.signal(libc::SIGHUP);
        let failures = server.logged(
            "TLS reload failed; keeping the previous configuration",
            n + 1,
        );
        let error = failures[n]["error"].as_str().unwrap();
        assert!(
            error.contains(&cert) && error.contains("not a server certificate"),
            "{error}"
        );
        assert!(error.contains(why), "{error}");
        assert_eq!(
            served_serial(&server, &ca, "localhost"),
            Some(first.serial_hex.clone())
        );
    }
}
