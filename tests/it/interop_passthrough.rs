//! `--protocol passthrough` with the programs people run: `openssl s_server` as the TLS
//! backend, `openssl s_client -servername` through the front (it sees the backend's own
//! certificate), `curl http://` refused as `not_tls`, and `openssl s_client` processes
//! SIGKILLed mid-stream. Run with `--features interop`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;

use tlsvisor_actors::testing::{eventually, leak, ScratchDir};
use tlsvisor_actors::DevCerts;

use crate::common::certs::{issue_into, path_in};
use crate::common::{http_get, Tlsvisor, HANG};

/// A child process whose stdout lines arrive on a channel (read on a thread of their own, so
/// a test waits for a line with a deadline).
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(command: &mut Command) -> Lines {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is installed");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { child, lines }
    }

    /// Waits for a line containing `text`; every line read until then.
    fn until(&self, text: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + HANG;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {text:?}: {seen:?}");
    }

    fn send(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SHA-256 fingerprint of the certificate PEM in `pem`, as openssl prints it.
fn fingerprint(pem: &str) -> String {
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A free TCP port on loopback (bound and released: a small race, as in the other tests).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn passthrough_front(upstream: &str) -> Tlsvisor {
    Tlsvisor::serve(&[
        "--protocol",
        "passthrough",
        "--upstream",
        upstream,
        "--admin-listen",
        "127.0.0.1:0",
    ])
}

#[test]
fn openssl_s_client_through_the_front_sees_the_s_server_backends_certificate() {
    let scratch = ScratchDir::new("interop-passthrough").unwrap();
    let certs = DevCerts::generate().unwrap();
    let ca = path_in(&scratch, "ca.crt");
    ScratchDir::replace(ca.as_ref(), &certs.ca_cert_pem).unwrap();
    let (cert, key, _) = issue_into(&scratch, &certs, "backend", &["backend.test"]);
    let port = free_port();
    let accept = format!("127.0.0.1:{port}");
    // -rev: each line comes back reversed, so the answer is the backend's, not an echo.
    let backend = Lines::spawn(Command::new("openssl").args([
        "s_server", "-accept", &accept, "-cert", &cert, "-key", &key, "-rev",
    ]));
    backend.until("ACCEPT");
    let server = passthrough_front(&accept);

    let mut client = Lines::spawn(Command::new("openssl").args([
        "s_client",
        "-connect",
        &server.listen.to_string(),
        "-servername",
        "backend.test",
        "-CAfile",
        &ca,
        "-verify_return_error",
        "-ign_eof",
    ]));
    let mut said = client.until("Verify return code");
    client.send("hello through\n");
    said.extend(client.until("hguorht olleh"));
    let text = said.join("\n");
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate shown");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    let backend_pem = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(
        fingerprint(&text[begin..end]),
        fingerprint(&backend_pem),
        "the backend's own certificate, not the front's: {text}"
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    let listed = http_get(server.admin_listen(), "/connections");
    assert!(listed.contains("\"protocol\":\"passthrough\""), "{listed}");
    assert!(listed.contains("\"sni\":\"backend.test\""), "{listed}");
    drop(client);
    let disposed = server.logged("disposed", 1);
    assert_eq!(disposed[0]["sni"], "backend.test");
    assert_eq!(disposed[0]["protocol"], "passthrough");
}

#[test]
fn curl_speaking_http_to_a_passthrough_port_is_refused_as_not_tls() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let server = passthrough_front(&upstream.local_addr().unwrap().to_string());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .arg(format!("http://{}/", server.listen))
        .output()
        .expect("curl is installed");
    assert!(!out.status.success(), "curl got no HTTP answer");
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
    assert!(upstream.accept().is_err(), "nothing was forwarded");
}

#[test]
fn openssl_clients_sigkilled_mid_stream_leave_nothing_registered_and_no_close_wait() {
    const CLIENTS: usize = 20;
    // A second tlsvisor is the backend here: s_server serves one client at a time.
    let backend = Tlsvisor::serve(&[]);
    let server = passthrough_front(&backend.listen.to_string());
    let dev_ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt");
    let mut clients: Vec<Lines> = (0..CLIENTS)
        .map(|_| {
            Lines::spawn(Command::new("openssl").args([
                "s_client",
                "-connect",
                &server.listen.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
                dev_ca,
                "-verify_return_error",
                "-quiet",
            ]))
        })
        .collect();
    for client in &mut clients {
        client.send("mid-stream\n");
        client.until("mid-stream");
    }
    assert_eq!(
        server.scrape().get("tlsvisor_connections_active"),
        CLIENTS as f64
    );
    for client in &mut clients {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(client.child.id() as i32, libc::SIGKILL) },
            0
        );
    }
    drop(clients);
    let admin = server.admin_listen();
    assert!(eventually(HANG, || {
        server.scrape().get("tlsvisor_connections_active") == 0.0
            && http_get(admin, "/connections").contains("\"connections\":[]")
    }));
    server.scrape().assert_books_exact();
    let (port, upstream) = (server.listen.port(), backend.listen.port());
    assert!(
        eventually(HANG, || {
            leak::close_wait_on_port(port).unwrap() == 0
                && leak::sockets_to_remote_port(upstream, leak::TcpState::CloseWait).unwrap() == 0
        }),
        "CLOSE-WAIT left on the front's sockets"
    );
}

/// Shows `-servername sni` through `front` and returns the fingerprint of the certificate
/// `openssl s_client` was served, with the line sent after the handshake answered as `expect`.
fn served_fingerprint(front: &Tlsvisor, sni: &str, ca: &str, expect: &str) -> String {
    let mut client = Lines::spawn(Command::new("openssl").args([
        "s_client",
        "-connect",
        &front.listen.to_string(),
        "-servername",
        sni,
        "-CAfile",
        ca,
        "-ign_eof",
    ]));
    let mut said = client.until("Verify return code");
    client.send("by name\n");
    said.extend(client.until(expect));
    let text = said.join("\n");
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate shown");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    fingerprint(&text[begin..end])
}

#[test]
fn two_names_on_one_port_pass_through_to_two_backends_and_other_names_end_here() {
    let scratch = ScratchDir::new("interop-passthrough-by-name").unwrap();
    let certs = DevCerts::generate().unwrap();
    let ca = path_in(&scratch, "ca.crt");
    ScratchDir::replace(ca.as_ref(), &certs.ca_cert_pem).unwrap();
    let mut backends = Vec::new();
    let mut table = String::new();
    for name in ["a.test", "b.test"] {
        let (cert, key, _) = issue_into(&scratch, &certs, name, &[name]);
        let accept = format!("127.0.0.1:{}", free_port());
        let backend = Lines::spawn(Command::new("openssl").args([
            "s_server", "-accept", &accept, "-cert", &cert, "-key", &key, "-rev",
        ]));
        backend.until("ACCEPT");
        table.push_str(&format!(
            "[[service]]\nnames = [\"{name}\"]\nprotocol = \"passthrough\"\nupstream = \"{accept}\"\n\n"
        ));
        backends.push((backend, std::fs::read_to_string(&cert).unwrap()));
    }
    // The default service terminates, with the development certificate, and echoes.
    let config = path_in(&scratch, "tlsvisor.toml");
    ScratchDir::replace(config.as_ref(), &table).unwrap();
    let front = Tlsvisor::serve(&["--config", &config, "--admin-listen", "127.0.0.1:0"]);

    for (name, (_, pem)) in ["a.test", "b.test"].iter().zip(&backends) {
        assert_eq!(
            served_fingerprint(&front, name, &ca, "eman yb"),
            fingerprint(pem),
            "{name}: its own backend's certificate, answered by that backend"
        );
    }
    let dev_ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt");
    let dev_pem = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/certs/server.crt"))
        .expect("the development certificate is checked in");
    assert_eq!(
        served_fingerprint(&front, "localhost", dev_ca, "by name"),
        fingerprint(&dev_pem),
        "another name: terminated here by the default service, and echoed"
    );
    let disposed = front.logged("disposed", 3);
    let mut protocols: Vec<_> = disposed
        .iter()
        .map(|line| {
            (
                line["service"].as_str().unwrap_or("").to_string(),
                line["protocol"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    protocols.sort();
    assert_eq!(
        protocols,
        [
            ("a.test".to_string(), "passthrough".to_string()),
            ("b.test".to_string(), "passthrough".to_string()),
            ("default".to_string(), "echo".to_string()),
        ]
    );
    let m = front.scrape();
    assert_eq!(m.get("tlsvisor_connections_accepted_total"), 3.0);
    assert_eq!(m.sum("tlsvisor_connections_disposed_total"), 3.0);
    assert_eq!(m.get("tlsvisor_dispose_duplicates_total"), 0.0);
    assert_eq!(m.get("tlsvisor_dispose_lost_total"), 0.0);
    drop(backends);
}
