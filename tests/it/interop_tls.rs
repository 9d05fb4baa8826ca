//! Certificates and TLS policy against Debian's `openssl s_client`. Run with
//! `--features interop` (`.ci/run` installs openssl).

use std::process::{Command, Output, Stdio};

use crate::common::certs::{alice_only, info_of_pem, issue_into};
use crate::common::{Tlsvisor, HANG};
use tlsvisor_actors::testing::{eventually, ScratchDir};
use tlsvisor_actors::DevCerts;

/// One `openssl s_client` handshake to `server` with `args` (stdin closed at once, so it ends
/// right after the handshake).
fn s_client(server: &Tlsvisor, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(["s_client", "-connect", &server.listen.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed (apt-get install openssl)")
}

/// The serial of the certificate s_client printed.
fn served_serial(output: &Output) -> Option<String> {
    let text = String::from_utf8_lossy(&output.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    Some(info_of_pem(&text[begin..end]).serial_hex)
}

/// A server with `localhost` (the default), `a.test` and `b.test`; returns it with the three
/// serials and the CA file.
fn three_names(scratch: &ScratchDir, extra: &[&str]) -> (Tlsvisor, [String; 3], String) {
    let certs = DevCerts::generate().unwrap();
    let ca = scratch.path("ca.crt").display().to_string();
    std::fs::write(&ca, &certs.ca_cert_pem).unwrap();
    let (c0, k0, i0) = issue_into(scratch, &certs, "0", &["localhost"]);
    let (c1, k1, i1) = issue_into(scratch, &certs, "1", &["a.test"]);
    let (c2, k2, i2) = issue_into(scratch, &certs, "2", &["b.test"]);
    let mut flags = vec![
        "--cert", &c0, "--key", &k0, "--cert", &c1, "--key", &k1, "--cert", &c2, "--key", &k2,
    ];
    flags.extend_from_slice(extra);
    let serials = [i0.serial_hex, i1.serial_hex, i2.serial_hex];
    (Tlsvisor::serve(&flags), serials, ca)
}

#[test]
fn openssl_servername_gets_its_own_certificate_and_no_sni_the_default() {
    let scratch = ScratchDir::new("interop-sni").unwrap();
    let (server, serials, ca) = three_names(&scratch, &[]);
    for (name, serial) in [("a.test", &serials[1]), ("b.test", &serials[2])] {
        let verified = [
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-verify_hostname",
            name,
        ];
        let output = s_client(
            &server,
            &[&["-servername", name][..], &verified[..]].concat(),
        );
        assert!(output.status.success(), "{output:?}");
        assert_eq!(served_serial(&output).as_ref(), Some(serial), "{name}");
    }
    let output = s_client(&server, &["-noservername"]);
    assert_eq!(served_serial(&output).as_ref(), Some(&serials[0]));
    let output = s_client(&server, &["-servername", "c.test"]);
    assert_eq!(served_serial(&output).as_ref(), Some(&serials[0]));
}

#[test]
fn openssl_unknown_servername_with_sni_strict_gets_unrecognized_name() {
    let scratch = ScratchDir::new("interop-sni-strict").unwrap();
    let (server, serials, _) = three_names(&scratch, &["--sni-strict"]);
    let output = s_client(&server, &["-servername", "c.test"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unrecognized name"), "{stderr}");
    let output = s_client(&server, &["-servername", "a.test"]);
    assert_eq!(served_serial(&output).as_ref(), Some(&serials[1]));
}

#[test]
fn openssl_alpn_version_and_suites_follow_the_policy() {
    let server = Tlsvisor::serve(&[
        "--alpn",
        "h2,http/1.1",
        "--tls-min-version",
        "1.3",
        "--cipher-suites",
        "TLS_AES_256_GCM_SHA384,TLS_CHACHA20_POLY1305_SHA256",
    ]);
    let output = s_client(
        &server,
        &["-alpn", "http/1.1,h2", "-servername", "localhost"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ALPN protocol: h2"), "{stdout}");
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    let output = s_client(&server, &["-alpn", "spdy/3"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no application protocol"), "{stderr}");
    let output = s_client(&server, &["-tls1_2"]);
    assert!(!output.status.success(), "TLS 1.2 is refused");
    let output = s_client(&server, &["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("TLS_CHACHA20_POLY1305_SHA256"), "{stdout}");
    let output = s_client(&server, &["-ciphersuites", "TLS_AES_128_GCM_SHA256"]);
    assert!(
        !output.status.success(),
        "a suite the server does not offer"
    );
    assert!(eventually(HANG, || server
        .logs_with("disposed")
        .iter()
        .any(|d| d["reason"] == "handshake_failed")));
}

#[test]
fn openssl_client_certificates_admitted_and_refused() {
    let scratch = ScratchDir::new("interop-mtls").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (cert, key, _) = issue_into(&scratch, &certs, "server", &["localhost"]);
    let ca = scratch.path("ca.crt").display().to_string();
    std::fs::write(&ca, &certs.ca_cert_pem).unwrap();
    let write = |name: &str, pem: &str| {
        let path = scratch.path(name).display().to_string();
        std::fs::write(&path, pem).unwrap();
        path
    };
    let (alice_cert, alice_key) = certs.issue_client("alice", &[], &[]).unwrap();
    let (alice_cert, alice_key) = (
        write("alice.crt", &alice_cert),
        write("alice.key", &alice_key),
    );
    let (bob_cert, bob_key) = certs.issue_client("bob", &[], &[]).unwrap();
    let (bob_cert, bob_key) = (write("bob.crt", &bob_cert), write("bob.key", &bob_key));
    let server = Tlsvisor::serve(&alice_only(&cert, &key, &ca));
    let mut alice = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &server.listen.to_string(),
            "-quiet",
            "-no_ign_eof",
        ])
        .args(["-CAfile", &ca, "-cert", &alice_cert, "-key", &alice_key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::{BufRead, Write};
    let mut stdin = alice.stdin.take().unwrap();
    stdin.write_all(b"alice here\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(alice.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "alice here\n");
    drop(stdin); // s_client sends close_notify on stdin EOF
    let _ = alice.wait();
    for args in [&[][..], &["-cert", &bob_cert, "-key", &bob_key][..]] {
        let output = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &server.listen.to_string(),
                "-CAfile",
                &ca,
            ])
            .args(args)
            .stdin(Stdio::piped())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!stdout.contains("alice here"));
    }
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("client_auth_failed")
        == 2.0));
}

/// `openssl s_client` that sends a line, waits for its echo (so the TLS 1.3 tickets sent after
/// the handshake have arrived), then closes; returns everything it printed.
fn s_client_echo(server: &Tlsvisor, args: &[&str]) -> String {
    use std::io::{BufRead, Write};
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &server.listen.to_string()])
        .args([
            "-CAfile",
            concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt"),
        ])
        .args(["-servername", "localhost", "-no_ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ticket echo\n").unwrap();
    let mut printed = String::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line == "ticket echo" {
            break;
        }
    }
    drop(stdin);
    let _ = child.wait();
    printed
}

#[test]
fn openssl_session_from_one_instance_resumes_on_another_sharing_the_ticket_key_file() {
    let scratch = ScratchDir::new("interop-tickets").unwrap();
    let keys = scratch.path("tickets.key").display().to_string();
    let key = Command::new("openssl")
        .args(["rand", "-hex", "48"])
        .output()
        .unwrap();
    std::fs::write(&keys, &key.stdout).unwrap();
    let session = scratch.path("session.pem").display().to_string();
    let a = Tlsvisor::serve(&["--ticket-key-file", &keys]);
    let b = Tlsvisor::serve(&["--ticket-key-file", &keys]);
    let c = Tlsvisor::serve(&[]);
    for version in ["-tls1_3", "-tls1_2"] {
        let first = s_client_echo(&a, &[version, "-sess_out", &session]);
        assert!(first.contains("New, TLSv1"), "{first}");
        let again = s_client_echo(&b, &[version, "-sess_in", &session]);
        assert!(again.contains("Reused, TLSv1"), "{version}: {again}");
        let elsewhere = s_client_echo(&c, &[version, "-sess_in", &session]);
        assert!(elsewhere.contains("New, TLSv1"), "{version}: {elsewhere}");
    }
    assert!(eventually(HANG, || b
        .logs_with("disposed")
        .iter()
        .filter(|d| d["resumed"] == true)
        .count()
        == 2));
}

#[test]
fn openssl_status_request_gets_the_stapled_ocsp_response() {
    let scratch = ScratchDir::new("interop-ocsp").unwrap();
    let dir = scratch.path("certs").display().to_string();
    let generated = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args(["gen-certs", "--out", &dir])
        .output()
        .unwrap();
    assert!(generated.status.success());
    let file = |name: &str| format!("{dir}/{name}");
    std::fs::write(file("index.txt"), "").unwrap();
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").args(args).output().unwrap();
        assert!(output.status.success(), "{output:?}");
    };
    let (ca, cert, request) = (file("ca.crt"), file("server.crt"), file("req.der"));
    openssl(&[
        "ocsp",
        "-issuer",
        &ca,
        "-cert",
        &cert,
        "-no_nonce",
        "-reqout",
        &request,
    ]);
    openssl(&[
        "ocsp",
        "-index",
        &file("index.txt"),
        "-rsigner",
        &file("ca.crt"),
        "-rkey",
        &file("ca.key"),
        "-CA",
        &file("ca.crt"),
        "-reqin",
        &file("req.der"),
        "-respout",
        &file("resp.der"),
        "-ndays",
        "1",
    ]);
    let server = Tlsvisor::serve(&[
        "--cert",
        &file("server.crt"),
        "--key",
        &file("server.key"),
        "--ocsp-response",
        &file("resp.der"),
    ]);
    let output = s_client(&server, &["-status", "-servername", "localhost"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("OCSP Response Status: successful"),
        "{stdout}"
    );
    // A file that is not DER is refused at start, naming it.
    let refused = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &file("server.crt"),
        ])
        .args([
            "--key",
            &file("server.key"),
            "--ocsp-response",
            &file("ca.crt"),
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("ca.crt"));
}

#[test]
fn curl_with_a_client_certificate_through_the_proxy_to_a_real_http_server() {
    let scratch = ScratchDir::new("interop-curl").unwrap();
    let site = scratch.path("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "hello through tlsvisor\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut http = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&site)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is installed");
    let upstream = format!("127.0.0.1:{port}");
    assert!(eventually(HANG, || std::net::TcpStream::connect(&upstream).is_ok()));

    let certs = DevCerts::generate().unwrap();
    let (cert, key, _) = issue_into(&scratch, &certs, "server", &["localhost"]);
    let ca = scratch.path("ca.crt").display().to_string();
    std::fs::write(&ca, &certs.ca_cert_pem).unwrap();
    let (alice_cert, alice_key) = certs.issue_client("alice", &[], &[]).unwrap();
    let alice = scratch.path("alice.pem").display().to_string();
    std::fs::write(&alice, format!("{alice_cert}{alice_key}")).unwrap();
    let mut flags = alice_only(&cert, &key, &ca);
    flags.extend([
        "--protocol",
        "proxy",
        "--upstream",
        &upstream,
        "--alpn",
        "http/1.1",
    ]);
    let server = Tlsvisor::serve(&flags);
    let curl = |extra: &[&str]| {
        let url = format!("https://localhost:{}/hello.txt", server.listen.port());
        let resolve = format!("localhost:{}:127.0.0.1", server.listen.port());
        Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--cacert", &ca])
            .args(["--resolve", &resolve, &url])
            .args(extra)
            .output()
            .expect("curl is installed")
    };
    let fetched = curl(&["--cert", &alice]);
    let _ = http.kill();
    assert!(fetched.status.success(), "{fetched:?}");
    assert_eq!(
        String::from_utf8_lossy(&fetched.stdout),
        "hello through tlsvisor\n"
    );
    assert!(!curl(&[]).status.success(), "no client certificate");
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("client_auth_failed")
        == 1.0));
    let _ = http.wait();
}

/// testssl.sh (Debian's `testssl.sh` package) against the default configuration: protocols,
/// cipher suites and the known vulnerabilities rate nothing worse than OK. (Its certificate
/// findings are about the development certificate, not the server, and are not scanned here.)
#[test]
fn testssl_rates_protocols_ciphers_and_vulnerabilities_ok() {
    let scratch = ScratchDir::new("interop-testssl").unwrap();
    let report = scratch.path("testssl.json");
    let server = Tlsvisor::serve(&[]);
    let output = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "off", "--jsonfile"])
        .arg(&report)
        .args(["-p", "-e", "-U", &server.listen.to_string()])
        .output()
        .expect("testssl is installed (apt-get install testssl.sh)");
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&report).expect("testssl wrote its report"))
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert!(findings.len() > 20, "{findings:?}");
    let bad: Vec<_> = findings
        .iter()
        .filter(|f| ["MEDIUM", "HIGH", "CRITICAL"].contains(&f["severity"].as_str().unwrap_or("")))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn an_ecdsa_and_an_rsa_certificate_for_one_name_each_client_gets_one_it_can_verify() {
    let scratch = ScratchDir::new("interop-rsa").unwrap();
    let certs = DevCerts::generate().unwrap();
    let (ecdsa_cert, ecdsa_key, ecdsa) = issue_into(&scratch, &certs, "ecdsa", &["localhost"]);
    let file = |name: &str| scratch.path(name).display().to_string();
    std::fs::write(file("ca.crt"), &certs.ca_cert_pem).unwrap();
    std::fs::write(file("ca.key"), &certs.ca_key_pem).unwrap();
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").args(args).output().unwrap();
        assert!(output.status.success(), "{output:?}");
    };
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &file("rsa.key"),
        "-out",
        &file("rsa.csr"),
        "-subj",
        "/CN=rsa",
        "-addext",
        "subjectAltName=DNS:localhost",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &file("rsa.csr"),
        "-CA",
        &file("ca.crt"),
        "-CAkey",
        &file("ca.key"),
        "-copy_extensions",
        "copyall",
        "-days",
        "30",
        "-out",
        &file("rsa.crt"),
    ]);
    let rsa = info_of_pem(&std::fs::read_to_string(file("rsa.crt")).unwrap());
    let (rsa_cert, rsa_key) = (file("rsa.crt"), file("rsa.key"));
    let server = Tlsvisor::serve(&[
        "--cert",
        &ecdsa_cert,
        "--key",
        &ecdsa_key,
        "--cert",
        &rsa_cert,
        "--key",
        &rsa_key,
    ]);
    let ca = file("ca.crt");
    for (sigalgs, serial) in [
        ("ECDSA+SHA256", &ecdsa.serial_hex),
        ("rsa_pss_rsae_sha256", &rsa.serial_hex),
    ] {
        let args = [
            "-servername",
            "localhost",
            "-CAfile",
            &ca,
            "-sigalgs",
            sigalgs,
        ];
        let output = s_client(&server, &args);
        assert_eq!(served_serial(&output).as_ref(), Some(serial), "{sigalgs}");
    }
}
