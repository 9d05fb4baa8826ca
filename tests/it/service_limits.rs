//! Limits per service (`[[service]]` keys named like the flags): a service's own
//! `max-connections` refuses its next client with a fatal `internal_error` alert and the reason
//! `service_limit` while another service on the same port still accepts, frees a seat when a
//! client ends, and a reload that lowers it closes no live connection; a service's own
//! `idle-timeout` ends its idle clients and not the default service's (and its own
//! `max-lifetime` and a proxy service's own `half-close-timeout` end its clients where the
//! server has none, and its own `upstream-connect-timeout` gives up on an upstream that never
//! answers before the server's would); `tlsvisor check`
//! refuses a value out of bounds naming the file and the service. Real TLS clients over real
//! sockets; every test ends with the books exact.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tlsvisor_actors::testing::{
    client_config, eventually, CloseSeen, ScratchDir, TestUpstream, TlsClient,
};
use tlsvisor_actors::DevCerts;

use crate::common::certs::{issue_into, path_in};
use crate::common::{Tlsvisor, HANG};

/// A CA, a default certificate for `localhost`, and a config file of services.
struct Fixture {
    scratch: ScratchDir,
    certs: DevCerts,
    config: String,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let scratch = ScratchDir::new(name).unwrap();
        let certs = DevCerts::generate().unwrap();
        let config = path_in(&scratch, "tlsvisor.toml");
        Fixture {
            scratch,
            certs,
            config,
        }
    }

    /// Writes the config file: `top` (top-level keys) with a default certificate, then one
    /// echo service per `(name, keys)`, each with a certificate for its name.
    fn write(&self, top: &str, services: &[(&str, &str)]) {
        let (cert, key, _) = issue_into(&self.scratch, &self.certs, "default", &["localhost"]);
        let mut text = format!("cert = {cert:?}\nkey = {key:?}\n{top}\n");
        for (name, keys) in services {
            let (cert, key, _) = issue_into(&self.scratch, &self.certs, name, &[name]);
            text += &format!(
                "[[service]]\nnames = [{name:?}]\ncert = {cert:?}\nkey = {key:?}\n{keys}\n"
            );
        }
        ScratchDir::replace(self.config.as_ref(), &text).unwrap();
    }

    fn serve(&self) -> Tlsvisor {
        Tlsvisor::serve(&["--config", &self.config])
    }

    fn client(&self) -> Arc<ClientConfig> {
        client_config(self.certs.ca_cert_pem.as_bytes()).unwrap()
    }
}

/// A client of `sni` that completed its handshake and one echo round trip.
fn echoing(server: &Tlsvisor, config: &Arc<ClientConfig>, sni: &str) -> std::io::Result<TlsClient> {
    let mut client = TlsClient::connect_as(server.listen, Arc::clone(config), sni)?;
    assert_eq!(client.echo(sni.as_bytes())?, sni.as_bytes());
    client.tcp().set_read_timeout(Some(HANG))?;
    Ok(client)
}

/// What the client of `sni` was told when refused (its handshake must fail).
fn refused(server: &Tlsvisor, config: &Arc<ClientConfig>, sni: &str) -> String {
    match TlsClient::connect_as(server.listen, Arc::clone(config), sni) {
        Ok(mut client) => match client.echo(b"x") {
            Ok(_) => panic!("{sni}: a client over the service's max-connections was served"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

fn service_figure(server: &Tlsvisor, family: &str, service: &str) -> f64 {
    server
        .scrape()
        .get(&format!("{family}{{service=\"{service}\"}}"))
}

/// Waits until `service` counts `n` live connections.
fn active_becomes(server: &Tlsvisor, service: &str, n: f64) {
    let family = "tlsvisor_service_connections_active";
    assert!(
        eventually(HANG, || service_figure(server, family, service) == n),
        "{service}: {} active, expected {n}",
        service_figure(server, family, service)
    );
}

/// Once nothing is live: every accepted connection disposed once, no service counting one.
fn books_exact(server: &Tlsvisor) {
    assert!(
        eventually(HANG, || server.scrape().get("tlsvisor_connections_active")
            == 0.0),
        "connections left"
    );
    server.scrape().assert_books_exact();
    assert!(
        eventually(HANG, || server
            .scrape()
            .sum("tlsvisor_service_connections_active")
            == 0.0),
        "a service still counts an active connection"
    );
}

/// The `disposed` lines with `reason`, once there are `n`.
fn disposed(server: &Tlsvisor, reason: &str, n: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    assert!(
        eventually(HANG, || {
            lines = server
                .logs_with("disposed")
                .into_iter()
                .filter(|l| l["reason"] == reason)
                .collect();
            lines.len() >= n
        }),
        "{n} disposals as {reason}: {lines:?}"
    );
    assert_eq!(lines.len(), n, "{lines:?}");
    lines
}

#[test]
fn a_full_service_refuses_with_an_alert_while_another_on_the_port_accepts() {
    let fixture = Fixture::new("bin-service-max-connections");
    let capped = [("capped.test", "max-connections = 2"), ("other.test", "")];
    fixture.write("", &capped);
    let server = fixture.serve();
    let config = fixture.client();

    let first = echoing(&server, &config, "capped.test").unwrap();
    let mut second = echoing(&server, &config, "capped.test").unwrap();
    // The third is told, in a fatal alert before any ServerHello; the books say why.
    let said = refused(&server, &config, "capped.test");
    assert!(said.contains("InternalError"), "{said}");
    let lines = disposed(&server, "service_limit", 1);
    assert_eq!(lines[0]["service"], "capped.test");
    assert_eq!(server.scrape().disposed("service_limit"), 1.0);
    let family = "tlsvisor_service_connections_refused_total";
    assert_eq!(service_figure(&server, family, "capped.test"), 1.0);
    // Another service on the same port, and the default, still accept.
    let mut other: Vec<TlsClient> = (0..3)
        .map(|_| echoing(&server, &config, "other.test").unwrap())
        .collect();
    other.push(echoing(&server, &config, "localhost").unwrap());
    active_becomes(&server, "capped.test", 2.0);

    // One of the two ends: its seat is free for a new client.
    assert!(matches!(first.close(), CloseSeen::CloseNotifyThenEof));
    active_becomes(&server, "capped.test", 1.0);
    let mut third = echoing(&server, &config, "capped.test").unwrap();
    assert!(refused(&server, &config, "capped.test").contains("InternalError"));

    // A reload lowering the cap to 1 closes neither live client: it only refuses new ones,
    // until the live count is under it.
    let lowered = [("capped.test", "max-connections = 1"), ("other.test", "")];
    fixture.write("", &lowered);
    server.signal(libc::SIGHUP);
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_tls_reloads_total{result=\"ok\"}")
        == 1.0));
    for client in [&mut second, &mut third] {
        assert_eq!(client.echo(b"kept").unwrap(), b"kept");
    }
    assert!(refused(&server, &config, "capped.test").contains("InternalError"));
    assert!(matches!(second.close(), CloseSeen::CloseNotifyThenEof));
    active_becomes(&server, "capped.test", 1.0);
    assert!(refused(&server, &config, "capped.test").contains("InternalError"));
    assert!(matches!(third.close(), CloseSeen::CloseNotifyThenEof));
    active_becomes(&server, "capped.test", 0.0);
    let last = echoing(&server, &config, "capped.test").unwrap();

    disposed(&server, "service_limit", 4);
    assert_eq!(service_figure(&server, family, "capped.test"), 4.0);
    assert_eq!(service_figure(&server, family, "other.test"), 0.0);
    for client in other.into_iter().chain([last]) {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    books_exact(&server);
}

#[test]
fn a_services_own_timeouts_end_its_clients_and_not_the_defaults() {
    let fixture = Fixture::new("bin-service-idle-timeout");
    // The server's idle timeout is long; the service's own is short; a second service turns
    // it off for itself.
    fixture.write(
        "idle-timeout = \"1h\"",
        &[
            ("quick.test", "idle-timeout = \"1s\""),
            ("forever.test", "idle-timeout = \"0\""),
            ("brief.test", "max-lifetime = \"1s\""),
        ],
    );
    let server = fixture.serve();
    let config = fixture.client();
    let mut on_default = echoing(&server, &config, "localhost").unwrap();
    let mut forever = echoing(&server, &config, "forever.test").unwrap();
    let started = Instant::now();
    let mut quick = echoing(&server, &config, "quick.test").unwrap();

    // The quick one, idle, is closed gracefully as idle_timeout after about a second.
    assert!(matches!(
        quick.read_until_close(),
        CloseSeen::CloseNotifyThenEof
    ));
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < HANG,
        "closed after {after:?}"
    );
    let lines = disposed(&server, "idle_timeout", 1);
    assert_eq!(lines[0]["service"], "quick.test");
    // A service's own lifetime (the server has none) ends its client however busy.
    let mut brief = echoing(&server, &config, "brief.test").unwrap();
    let born = Instant::now();
    let ended = loop {
        match brief.echo(b"busy") {
            Ok(_) if born.elapsed() < HANG => std::thread::sleep(Duration::from_millis(100)),
            _ => break born.elapsed(),
        }
    };
    assert!(
        ended >= Duration::from_millis(800) && ended < HANG,
        "ended after {ended:?}"
    );
    let lines = disposed(&server, "max_lifetime", 1);
    assert_eq!(lines[0]["service"], "brief.test");
    drop(brief);
    // Idle as long as it and more, the others are still served.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(on_default.echo(b"still").unwrap(), b"still");
    assert_eq!(forever.echo(b"still").unwrap(), b"still");
    disposed(&server, "idle_timeout", 1);
    for client in [on_default, forever] {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    books_exact(&server);
}

/// A proxy service's own `half-close-timeout = "1s"` where the server has none: the client
/// finishes first, the upstream trickles and never finishes, and the connection is closed
/// about a second later as `half_close_timeout`.
#[test]
fn a_services_own_half_close_timeout_bounds_its_half_closed_connections() {
    let upstream = TestUpstream::start(|mut stream: TcpStream| {
        let mut buf = [0u8; 1024];
        while let Ok(1..) = stream.read(&mut buf) {}
        while stream.write_all(b".").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let fixture = Fixture::new("bin-service-half-close");
    let keys = format!(
        "upstream = \"{}\"\nhalf-close-timeout = \"1s\"",
        upstream.addr()
    );
    fixture.write("", &[("tunnel.test", &keys)]);
    let server = fixture.serve();
    let mut client = TlsClient::connect_as(server.listen, fixture.client(), "tunnel.test").unwrap();
    client.send(b"request").unwrap();
    client.finish_sending().unwrap();
    let finished = Instant::now();
    let (trickled, seen) = client.receive_until_close();
    let took = finished.elapsed();
    assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    assert!(!trickled.is_empty(), "upstream → client flowed meanwhile");
    assert!(
        took >= Duration::from_millis(900) && took < HANG,
        "closed {took:?} after the client finished"
    );
    let lines = disposed(&server, "half_close_timeout", 1);
    assert_eq!(lines[0]["service"], "tunnel.test");
    books_exact(&server);
}

/// A loopback address whose connects go unanswered: a listener with a backlog of none whose one
/// queue place is taken and that never accepts, so the kernel drops every further SYN (no RST:
/// the connect waits, as to a host behind a firewall). Returned with the filler that holds the
/// place and the listener, both to be kept.
fn unanswered_upstream() -> (std::net::SocketAddr, std::net::TcpListener, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A backlog of 0 (std listens with 128): the accept queue is full after one connection.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    // SAFETY: `fd` is the listener's own open socket, listening already; this only resizes
    // its queue.
    assert_eq!(unsafe { libc::listen(fd, 0) }, 0);
    let addr = listener.local_addr().unwrap();
    let filler = TcpStream::connect(addr).unwrap();
    let tried = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    assert!(tried.is_err(), "a second connect must go unanswered");
    (addr, listener, filler)
}

#[test]
fn a_services_own_upstream_connect_timeout_gives_up_before_the_servers() {
    let (addr, _listener, _filler) = unanswered_upstream();
    let fixture = Fixture::new("bin-service-connect-timeout");
    let keys = format!("upstream = \"{addr}\"\nupstream-connect-timeout = \"300ms\"");
    // The server's own is far longer: a client that waited for it would be past the ceiling.
    fixture.write(
        "upstream-connect-timeout = \"60s\"",
        &[("quick.test", &keys)],
    );
    let server = fixture.serve();
    let started = Instant::now();
    let mut client = TlsClient::connect_as(server.listen, fixture.client(), "quick.test").unwrap();
    client.send(b"PING\r\n").unwrap();
    client.tcp().set_read_timeout(Some(HANG)).unwrap();
    let (answer, _) = client.receive_until_close();
    let took = started.elapsed();
    assert!(answer.is_empty(), "no byte from an upstream never reached");
    assert!(took < Duration::from_secs(30), "closed after {took:?}");
    let lines = disposed(&server, "upstream_connect_failed", 1);
    assert_eq!(lines[0]["service"], "quick.test");
    // The attempt gave up at the service's timeout, not the server's (the error says which).
    let failed = server.logged("upstream connect failed", 1);
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.ends_with("no connection within 300ms"), "{error}");
    books_exact(&server);
}

/// `tlsvisor check --config FILE`: (exit success, stderr).
fn check(config: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args(["check", "--config", config])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_refuses_a_service_limit_out_of_bounds_naming_the_file_and_the_service() {
    let fixture = Fixture::new("bin-service-limits-check");
    let good = "max-connections = 10\nidle-timeout = \"30s\"\nmax-lifetime = \"0\"\n\
                half-close-timeout = \"5s\"\nupstream = \"127.0.0.1:1\"\n\
                upstream-connect-timeout = \"1s\"";
    fixture.write("", &[("b.test", good)]);
    let (ok, said) = check(&fixture.config);
    assert!(ok, "{said}");
    let cases = [
        ("max-connections = 0", "max-connections must be at least 1"),
        (
            "max-connections = 4611686018427387904",
            "max-connections must be below 2^61",
        ),
        ("max-connections = -1", "max-connections"),
        ("idle-timeout = \"25h\"", "idle-timeout must be at most 24h"),
        (
            "max-lifetime = \"100000d\"",
            "max-lifetime must be at most 24h",
        ),
        ("half-close-timeout = \"soon\"", "durations read like"),
        (
            "upstream = \"127.0.0.1:1\"\nupstream-connect-timeout = \"0\"",
            "upstream-connect-timeout must be above zero",
        ),
    ];
    for (keys, problem) in cases {
        fixture.write("", &[("b.test", keys)]);
        let (ok, said) = check(&fixture.config);
        assert!(!ok, "{keys}: {said}");
        assert!(
            said.contains("tlsvisor.toml")
                && said.contains("service b.test")
                && said.contains(problem),
            "{keys}: {said}"
        );
    }
    // A value past what TOML's integers hold is the file's own error, with its line.
    fixture.write("", &[("b.test", "max-connections = 99999999999999999999")]);
    let (ok, said) = check(&fixture.config);
    assert!(!ok && said.contains("tlsvisor.toml"), "{said}");
}
