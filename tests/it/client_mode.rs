//! Client mode by service (issue 18, item 4): a `[[service]]`'s own plaintext listeners
//! (`listen-plain`, or `listen` with `plain = true`), on TCP or a unix socket, each client that
//! service's connection from its accept; the default TLS listener opened only when no listener
//! at all is named; a leftover unix socket file replaced, a live one refused, the file removed
//! at exit; `tlsvisor check` refusing what serve refuses; the reload's listener line counting
//! the services' plain listeners. The upstreams are real TLS servers (rustls) on real sockets;
//! the SIGUSR2 handover of plain listeners is in `process.rs`, redis in `upstream_tls.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tlsvisor_actors::testing::{eventually, ScratchDir, TestUpstream};

use crate::common::certs::{issue_into, path_in};
use crate::common::{try_http_get, Tlsvisor, HANG};
use crate::upstream_tls::{tls_echo, upstream_config, Seen, UpstreamCerts};

/// Certificates for the upstreams and the services, and the config file, in one scratch folder.
struct Fixture {
    certs: UpstreamCerts,
    config: String,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let certs = UpstreamCerts::new(name);
        let config = certs.path("tlsvisor.toml");
        Fixture { certs, config }
    }

    /// A TLS echo upstream for `localhost`, certified by the fixture's upstream CA.
    fn upstream(&self) -> TestUpstream<Seen> {
        tls_echo(upstream_config(&self.certs.upstream, None))
    }

    /// A path for a unix socket in the scratch folder.
    fn socket(&self, name: &str) -> PathBuf {
        PathBuf::from(self.certs.path(name))
    }

    /// A `[[service]]` for `name` proxying to `upstream` over TLS, with `extra` keys.
    fn service(&self, name: &str, upstream: &TestUpstream<Seen>, extra: &str) -> String {
        let (cert, key, _) = issue_into(&self.certs.scratch, &self.certs.upstream, name, &[name]);
        format!(
            "[[service]]\nnames = [{name:?}]\ncert = {cert:?}\nkey = {key:?}\n\
             upstream = \"tls://{}\"\nupstream-ca = {:?}\nupstream-sni = \"localhost\"\n{extra}\n",
            upstream.addr(),
            self.certs.path("upstream-ca.crt"),
        )
    }

    fn write(&self, text: &str) {
        ScratchDir::replace(self.config.as_ref(), text).unwrap();
    }

    /// `tlsvisor serve` on the config file, with metrics and the admin API, and no `--listen`.
    fn serve(&self) -> Tlsvisor {
        Tlsvisor::spawn(&[
            "serve",
            "--config",
            &self.config,
            "--metrics-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
    }

    fn check(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
            .args(["check", "--config", &self.config])
            .output()
            .unwrap()
    }
}

/// The `listen_plain` address of the plaintext listener of `service`, from its log line.
fn plain_listener_of(server: &Tlsvisor, service: &str) -> String {
    let mut found = None;
    assert!(
        eventually(HANG, || {
            found = (server.logs_with("listening plain").iter())
                .find(|l| l["service"] == service)
                .map(|l| l["listen_plain"].as_str().unwrap().to_string());
            found.is_some()
        }),
        "no plaintext listener for {service}: {:?}",
        server.logs()
    );
    found.unwrap()
}

/// The live connections of `/connections`.
fn connections(server: &Tlsvisor) -> Vec<Value> {
    let body = try_http_get(server.admin_listen(), "/connections").unwrap();
    let json: Value = serde_json::from_str(&body).unwrap();
    match json {
        Value::Array(list) => list,
        other => other["connections"].as_array().cloned().unwrap_or_default(),
    }
}

/// Sends `data` on `stream`, reads it echoed back, then (the client's FIN) reads to the end.
fn echo_then_finish<S: Read + Write>(stream: &mut S, data: &[u8], finish: impl FnOnce(&S)) {
    stream.write_all(data).unwrap();
    let mut back = vec![0; data.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
    finish(stream);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

/// Waits until every accepted connection is disposed, then checks the books.
fn books_settle_exact(server: &Tlsvisor, accepted: f64) {
    let settled = eventually(HANG, || {
        let m = server.scrape();
        m.get("tlsvisor_connections_active") == 0.0
            && m.get("tlsvisor_connections_accepted_total") == accepted
    });
    assert!(
        settled,
        "{:?}",
        server.scrape().get("tlsvisor_connections_active")
    );
    server.scrape().assert_books_exact();
}

#[test]
fn two_services_own_plain_listeners_reach_their_own_tls_upstreams_and_name_the_service() {
    let fixture = Fixture::new("client-mode-two-services");
    let (up_a, up_b) = (fixture.upstream(), fixture.upstream());
    let a_sock = fixture.socket("a.sock");
    let a_listen = format!("listen-plain = \"unix:{}\"", a_sock.display());
    let a = fixture.service("a.test", &up_a, &a_listen);
    // The other spelling: a listener of the service, plain.
    let b = fixture.service("b.test", &up_b, "listen = [\"127.0.0.1:0\"]\nplain = true");
    fixture.write(&format!("{a}\n{b}"));
    let mut server = fixture.serve();
    assert_eq!(
        plain_listener_of(&server, "a.test"),
        format!("unix:{}", a_sock.display())
    );
    let b_addr = plain_listener_of(&server, "b.test");
    // Only plaintext listeners were asked for: no default TLS listener opened beside them.
    assert!(
        server.logs_with("listening").is_empty(),
        "{:?}",
        server.logs()
    );

    // a.test over its unix socket: a.test's connection from the start.
    let mut client = UnixStream::connect(&a_sock).unwrap();
    client.set_read_timeout(Some(HANG)).unwrap();
    client.write_all(b"to a").unwrap();
    let mut back = [0; 4];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"to a");
    let live = connections(&server);
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["service"], "a.test", "{live:?}");
    assert_eq!(live[0]["peer"], "unix", "{live:?}");
    assert_eq!(live[0]["protocol"], "proxy", "{live:?}");
    echo_then_finish(&mut client, b"more", |c| {
        c.shutdown(std::net::Shutdown::Write).unwrap()
    });
    let seen = up_a.next_report(HANG).expect("a.test's upstream saw it");
    assert!(seen.close_notify, "the FIN became close_notify: {seen:?}");

    // b.test over TCP.
    let mut client = TcpStream::connect(&b_addr).unwrap();
    client.set_read_timeout(Some(HANG)).unwrap();
    client.write_all(b"to b").unwrap();
    client.read_exact(&mut back).unwrap();
    let live = connections(&server);
    assert_eq!(live[0]["service"], "b.test", "{live:?}");
    assert_eq!(live[0]["peer"], client.local_addr().unwrap().to_string());
    echo_then_finish(&mut client, b"tail", |c| {
        c.shutdown(std::net::Shutdown::Write).unwrap()
    });
    assert!(up_b.next_report(HANG).is_some(), "b.test's upstream saw it");
    // Neither reached the other's upstream.
    assert!(up_a.next_report(Duration::from_millis(200)).is_none());
    assert!(up_b.next_report(Duration::from_millis(200)).is_none());

    let lines = server.logged("disposed", 2);
    assert_eq!(
        (lines[0]["service"].as_str(), lines[0]["peer"].as_str()),
        (Some("a.test"), Some("unix"))
    );
    assert_eq!(lines[1]["service"], "b.test");
    assert!(lines.iter().all(|l| l["reason"] == "peer_eof"), "{lines:?}");
    books_settle_exact(&server, 2.0);
    let m = server.scrape();
    for service in ["a.test", "b.test"] {
        let total = format!("tlsvisor_service_connections_total{{service=\"{service}\"}}");
        assert_eq!(m.get(&total), 1.0, "{total}");
    }
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(HANG).unwrap().success());
    // A clean exit removes the unix socket's file.
    assert!(!a_sock.exists(), "{} left behind", a_sock.display());
}

#[test]
fn a_client_killed_mid_stream_on_a_unix_listener_leaves_the_books_exact() {
    let fixture = Fixture::new("client-mode-unix-kill");
    let upstream = fixture.upstream();
    let sock = fixture.socket("k.sock");
    let listen = format!("listen-plain = \"unix:{}\"", sock.display());
    fixture.write(&fixture.service("k.test", &upstream, &listen));
    let mut server = fixture.serve();
    plain_listener_of(&server, "k.test");
    // Real client processes, killed mid-stream: each sends more than the socket buffers
    // take at once (the echo comes back unread) and sleeps.
    const CLIENT: &str = "import socket, sys, time\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        s.sendall(b'x' * 70000)\n\
        time.sleep(600)\n";
    let mut children: Vec<_> = (0..3)
        .map(|_| {
            Command::new("python3")
                .args(["-c", CLIENT])
                .arg(&sock)
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(
        eventually(HANG, || server.scrape().get("tlsvisor_connections_active")
            == 3.0),
        "three clients connected"
    );
    for child in &mut children {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
    }
    books_settle_exact(&server, 3.0);
    let lines = server.logged("disposed", 3);
    assert!(
        lines
            .iter()
            .all(|l| l["service"] == "k.test" && l["peer"] == "unix"),
        "{lines:?}"
    );
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(HANG).unwrap().success());
}

#[test]
fn a_leftover_unix_socket_file_is_replaced_and_a_live_ones_owner_is_not_robbed() {
    let fixture = Fixture::new("client-mode-stale-socket");
    let upstream = fixture.upstream();
    let sock = fixture.socket("stale.sock");
    // A leftover of a killed process: the file, nothing listening.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let target = format!("tls://{}", upstream.addr());
    let ca = fixture.certs.path("upstream-ca.crt");
    let listen = format!("unix:{}", sock.display());
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--protocol",
            "proxy",
            "--upstream",
            &target,
            "--upstream-ca",
            &ca,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--upstream-sni", "localhost", "--listen-plain", &listen].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let first_args = args(&["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]);
    let mut first: Vec<&str> = vec!["serve"];
    first.extend(first_args.iter().map(String::as_str));
    let mut server = Tlsvisor::spawn(&first);
    let mut client = UnixStream::connect(&sock).unwrap();
    client.set_read_timeout(Some(HANG)).unwrap();
    echo_then_finish(&mut client, b"served", |c| {
        c.shutdown(std::net::Shutdown::Write).unwrap()
    });

    // A second process on the same path: refused, naming it; the first keeps its socket.
    let second = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .arg("serve")
        .args(args(&[]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&listen) && stderr.contains("another process listens"),
        "{stderr}"
    );
    let mut client = UnixStream::connect(&sock).unwrap();
    client.set_read_timeout(Some(HANG)).unwrap();
    echo_then_finish(&mut client, b"still", |c| {
        c.shutdown(std::net::Shutdown::Write).unwrap()
    });
    // The second process's probe (does anything listen here?) was a connection too.
    books_settle_exact(&server, 3.0);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(HANG).unwrap().success());
    assert!(!sock.exists());

    // A path that is not a socket is never removed.
    let file = fixture.socket("not-a-socket");
    std::fs::write(&file, "keep").unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args([
            "serve",
            "--protocol",
            "proxy",
            "--upstream",
            &target,
            "--upstream-ca",
            &ca,
        ])
        .args(["--upstream-sni", "localhost"])
        .args(["--listen-plain", &format!("unix:{}", file.display())])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

#[test]
fn an_explicit_listen_still_opens_beside_plain_listeners() {
    let fixture = Fixture::new("client-mode-explicit-listen");
    let upstream = fixture.upstream();
    let target = format!("tls://{}", upstream.addr());
    let ca = fixture.certs.path("upstream-ca.crt");
    let server = Tlsvisor::serve(&[
        "--protocol",
        "proxy",
        "--upstream",
        &target,
        "--upstream-ca",
        &ca,
        "--upstream-sni",
        "localhost",
        "--listen-plain",
        "127.0.0.1:0",
    ]);
    // `serve` passes --listen 127.0.0.1:0: it opens, beside the plaintext one.
    assert_eq!(server.listening().len(), 1);
    assert_eq!(server.logs_with("listening plain").len(), 1);
}

#[test]
fn check_refuses_listen_without_plain_and_plain_listeners_a_service_cannot_serve() {
    let fixture = Fixture::new("client-mode-check");
    let upstream = fixture.upstream();
    let refused = |service: String, expected: &str| {
        fixture.write(&service);
        let out = fixture.check();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&fixture.config), "names the file: {stderr}");
        assert!(
            stderr.contains("service a.test"),
            "names the service: {stderr}"
        );
        assert!(stderr.contains(expected), "{stderr}");
    };
    refused(
        fixture.service("a.test", &upstream, "listen = [\"127.0.0.1:7001\"]"),
        "listen needs plain = true",
    );
    refused(
        fixture.service("a.test", &upstream, "plain = true"),
        "plain = true needs listen",
    );
    // An echo service (no upstream), and a proxy to a plaintext upstream.
    let (cert, key, _) = issue_into(
        &fixture.certs.scratch,
        &fixture.certs.upstream,
        "e",
        &["a.test"],
    );
    refused(
        format!(
            "[[service]]\nnames = [\"a.test\"]\ncert = {cert:?}\nkey = {key:?}\n\
             listen-plain = \"127.0.0.1:7002\"\n"
        ),
        "listen-plain (client mode) needs protocol = \"proxy\" and TLS upstreams",
    );
    refused(
        format!(
            "[[service]]\nnames = [\"a.test\"]\ncert = {cert:?}\nkey = {key:?}\n\
             upstream = \"127.0.0.1:6379\"\nlisten-plain = \"127.0.0.1:7003\"\n"
        ),
        "listen-plain (client mode) needs protocol = \"proxy\" and TLS upstreams",
    );
    refused(
        fixture.service("a.test", &upstream, "listen-plain = \"unix:relative.sock\""),
        "must be absolute",
    );
    // Two listeners on one path.
    let sock = path_in(&fixture.certs.scratch, "twice.sock");
    let one = fixture.service(
        "a.test",
        &upstream,
        &format!("listen-plain = \"unix:{sock}\""),
    );
    let two = fixture.service(
        "b.test",
        &upstream,
        &format!("listen-plain = \"unix:{sock}\""),
    );
    fixture.write(&format!("{one}\n{two}"));
    let out = fixture.check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("same plaintext listener"), "{stderr}");
    // Both spellings, on a proxy to TLS upstreams: accepted.
    let good = fixture.service(
        "a.test",
        &upstream,
        "listen = [\"127.0.0.1:7004\"]\nplain = true\nlisten-plain = \"unix:/tmp/never-bound.sock\"",
    );
    fixture.write(&good);
    let out = fixture.check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reload_counts_the_services_plain_listeners() {
    let fixture = Fixture::new("client-mode-reload");
    let upstream = fixture.upstream();
    let service = |extra: &str| fixture.service("a.test", &upstream, extra);
    fixture.write(&service("listen-plain = \"127.0.0.1:0\""));
    let server = fixture.serve();
    plain_listener_of(&server, "a.test");
    server.signal(libc::SIGHUP);
    let reloaded = server.logged("TLS configuration reloaded", 1);
    assert_eq!(reloaded[0]["listeners"], "unchanged");
    let moved = fixture.socket("moved.sock");
    fixture.write(&service(&format!(
        "listen-plain = \"unix:{}\"",
        moved.display()
    )));
    server.signal(libc::SIGHUP);
    let reloaded = server.logged("TLS configuration reloaded", 2);
    assert_eq!(reloaded[1]["listeners"], "listeners differ; needs SIGUSR2");
    assert!(!moved.exists(), "a reload binds nothing");
}

#[test]
fn a_plain_listeners_service_removed_by_a_reload_refuses_its_clients_until_sigusr2() {
    let fixture = Fixture::new("client-mode-service-removed");
    let upstream = fixture.upstream();
    let sock = fixture.socket("gone.sock");
    let listen = format!("listen-plain = \"unix:{}\"", sock.display());
    fixture.write(&fixture.service("gone.test", &upstream, &listen));
    let server = fixture.serve();
    plain_listener_of(&server, "gone.test");
    let mut client = UnixStream::connect(&sock).unwrap();
    client.set_read_timeout(Some(HANG)).unwrap();
    echo_then_finish(&mut client, b"while it is there", |c| {
        c.shutdown(std::net::Shutdown::Write).unwrap()
    });
    // The service goes; its listener stays bound (only SIGUSR2 binds or unbinds).
    fixture.write(&fixture.service("other.test", &upstream, ""));
    server.signal(libc::SIGHUP);
    let reloaded = server.logged("TLS configuration reloaded", 1);
    assert_eq!(reloaded[0]["listeners"], "listeners differ; needs SIGUSR2");
    // Its next client is refused, never served by another service.
    let mut client = UnixStream::connect(&sock).unwrap();
    client.set_read_timeout(Some(HANG)).unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(rest.is_empty());
    let lines = server.logged("disposed", 2);
    assert_eq!(lines[1]["reason"], "start_failed", "{lines:?}");
    assert_eq!(lines[1]["peer"], "unix");
    assert_eq!(server.logs_with("a plaintext listener's service is gone or no longer proxies to TLS upstreams (a reload changed it; the listener needs SIGUSR2): refusing its client").len(), 1);
    books_settle_exact(&server, 2.0);
    assert!(
        upstream.next_report(HANG).is_some(),
        "the first client reached it"
    );
    assert!(
        upstream.next_report(Duration::from_millis(200)).is_none(),
        "the second did not"
    );
}
