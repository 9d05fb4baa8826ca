//! The binary's certificate handling end to end: `--watch-certs` reloads, the reload metrics
//! and the error line of a broken reload.

mod common;

use std::path::Path;

use common::{Tlsvisor, HANG};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tlsvisor_actors::testing::{client_config, eventually, ScratchDir, TlsClient};
use tlsvisor_actors::{CertificateInfo, DevCerts};

fn replace(path: &str, text: &str) {
    ScratchDir::replace(path.as_ref(), text).unwrap();
}

fn path_in(scratch: &ScratchDir, file: &str) -> String {
    scratch.path(file).display().to_string()
}

fn info_of_pem(pem: &str) -> CertificateInfo {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    CertificateInfo::from_der(&der).unwrap()
}

/// The serial of the certificate a fresh client is served, as `name`.
fn served_serial(server: &Tlsvisor, ca: &str, name: &str) -> Option<String> {
    let config = client_config(ca.as_bytes()).ok()?;
    let client = TlsClient::connect_as(server.listen, config, name).ok()?;
    let cert = client.server_certificate()?;
    Some(CertificateInfo::from_der(&cert).unwrap().serial_hex)
}

fn issue(certs: &DevCerts, cert: &str, key: &str) -> CertificateInfo {
    let (cert_pem, key_pem) = certs.issue_server(&["localhost"]).unwrap();
    replace(cert, &cert_pem);
    replace(key, &key_pem);
    info_of_pem(&cert_pem)
}

#[test]
fn watch_certs_reloads_changed_files_and_keeps_the_old_on_a_broken_key() {
    let scratch = ScratchDir::new("bin-watch").unwrap();
    let (cert, key) = (
        path_in(&scratch, "server.crt"),
        path_in(&scratch, "server.key"),
    );
    let certs = DevCerts::generate().unwrap();
    let first = issue(&certs, &cert, &key);
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
    let second = issue(&certs, &cert, &key);
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
    let failures = server.logs_with("TLS reload failed; keeping the previous configuration");
    assert_eq!(failures.len(), 1, "one error line per failed reload");
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
