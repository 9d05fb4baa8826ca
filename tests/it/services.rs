//! Services by name (`[[service]]` in the config file): a ClientHello's SNI chooses the
//! service (exact name, then `*.` wildcard, then the default; `unrecognized_name` under
//! `--sni-strict`), each with its own certificate and client CA; `/connections`, the
//! `disposed` line and `tlsvisor_service_connections_*{service}` say which service served a
//! connection; SIGHUP reloads the whole table (services added, changed, removed; the default's
//! protocol and upstream group too) while live connections keep theirs, and a broken table
//! changes nothing. `interop` routes real `redis-cli --tls --sni` clients to two
//! `redis-server`s through one port.

use std::sync::Arc;

use rustls::ClientConfig;
use serde_json::Value;
use tlsvisor_actors::testing::{
    client_config, client_config_accepting_any, client_config_with_cert, eventually, CloseSeen,
    ScratchDir, TlsClient,
};
use tlsvisor_actors::DevCerts;

use crate::common::certs::{issue_into, path_in};
use crate::common::{raise_open_files_limit, try_http_get, Tlsvisor, HANG};

/// Connections held open per service through the reloads.
const PER_SERVICE: usize = 100;

/// Reloads that add, change and remove services under the live connections.
const RELOADS: usize = 20;

/// A scratch folder with a CA, a default certificate for `localhost`, one per service name,
/// and the config file the test rewrites.
struct Fixture {
    scratch: ScratchDir,
    certs: DevCerts,
    config: String,
    /// `cert = ...`, `key = ...` of the default service (the top level).
    top: String,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let scratch = ScratchDir::new(name).unwrap();
        let certs = DevCerts::generate().unwrap();
        let (cert, key, _) = issue_into(&scratch, &certs, "default", &["localhost"]);
        let config = path_in(&scratch, "tlsvisor.toml");
        let top = format!("cert = {cert:?}\nkey = {key:?}\n");
        Fixture {
            scratch,
            certs,
            config,
            top,
        }
    }

    /// A `[[service]]` table for `names` with a certificate for them (issued anew into
    /// `{stem}.crt`) and the `extra` keys.
    fn service(&self, stem: &str, names: &[&str], extra: &str) -> String {
        let (cert, key, _) = issue_into(&self.scratch, &self.certs, stem, names);
        format!("[[service]]\nnames = {names:?}\ncert = {cert:?}\nkey = {key:?}\n{extra}\n")
    }

    /// Writes the config file: the default's keys, then `services`.
    fn write(&self, services: &[String]) {
        self.write_with_default("", services);
    }

    /// Writes the config file: the default's certificate and its `default` keys, then
    /// `services`.
    fn write_with_default(&self, default: &str, services: &[String]) {
        let text = format!("{}{default}\n{}", self.top, services.join("\n"));
        ScratchDir::replace(self.config.as_ref(), &text).unwrap();
    }

    fn serve(&self, extra: &[&str]) -> Tlsvisor {
        let mut args = vec!["--config", &self.config, "--admin-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Tlsvisor::serve(&args)
    }

    /// A client trusting the CA that issued every certificate here.
    fn client(&self) -> Arc<ClientConfig> {
        client_config(self.certs.ca_cert_pem.as_bytes()).unwrap()
    }

    /// The same, without session resumption: every handshake sees the certificate of the
    /// service its name chooses now (the ticket keys are process-wide, so a ticket of a
    /// name's old service would resume in its new one without a certificate).
    fn fresh_client(&self) -> Arc<ClientConfig> {
        let mut config = (*self.client()).clone();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// Connects asking for `sni` (verified against the CA of `config`) and echoes once: an mTLS
/// refusal arrives after the client's last flight, so only a round trip shows it.
fn echoing(server: &Tlsvisor, config: &Arc<ClientConfig>, sni: &str) -> std::io::Result<TlsClient> {
    let mut client = TlsClient::connect_as(server.listen, Arc::clone(config), sni)?;
    let echoed = client.echo(sni.as_bytes())?;
    assert_eq!(echoed, sni.as_bytes());
    client.tcp().set_read_timeout(Some(HANG))?;
    Ok(client)
}

/// `GET path` on the admin API, as JSON.
fn admin_json(server: &Tlsvisor, path: &str) -> Value {
    let body = try_http_get(server.admin_listen(), path).unwrap();
    serde_json::from_str(&body).unwrap()
}

/// The `service` of every live connection, in id order.
fn live_services(server: &Tlsvisor) -> Vec<String> {
    let listing = admin_json(server, "/connections?limit=10000");
    listing["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["service"].as_str().unwrap_or("").to_string())
        .collect()
}

fn service_total(server: &Tlsvisor, service: &str) -> f64 {
    server.scrape().get(&format!(
        "tlsvisor_service_connections_total{{service=\"{service}\"}}"
    ))
}

/// Every connection ended once, through its stop hook: the books balance and nothing was a
/// duplicate, a fallback or lost; no service counts a connection still active.
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

#[test]
fn the_sni_chooses_the_service_and_each_service_has_its_own_client_ca() {
    let fixture = Fixture::new("bin-services-by-name");
    // A second CA: b.test admits its clients, a.test admits only those of the first CA.
    let other = DevCerts::generate().unwrap();
    let (ca_a, ca_b) = (
        path_in(&fixture.scratch, "ca-a.pem"),
        path_in(&fixture.scratch, "ca-b.pem"),
    );
    ScratchDir::replace(ca_a.as_ref(), &fixture.certs.ca_cert_pem).unwrap();
    ScratchDir::replace(ca_b.as_ref(), &other.ca_cert_pem).unwrap();
    let require = |ca: &str| format!("client-ca = {ca:?}\nclient-auth = \"require\"");
    fixture.write(&[
        fixture.service("a", &["a.test"], &require(&ca_a)),
        fixture.service("b", &["b.test"], &require(&ca_b)),
        fixture.service("c", &["*.c.test"], "alpn = \"h2,http/1.1\""),
    ]);
    let server = fixture.serve(&[]);
    let (bob_cert, bob_key) = other.issue_client("bob", &[], &[]).unwrap();
    let bob = client_config_with_cert(
        fixture.certs.ca_cert_pem.as_bytes(),
        bob_cert.as_bytes(),
        bob_key.as_bytes(),
    )
    .unwrap();

    // Bob's certificate: accepted by b.test (its CA), refused by a.test (another CA).
    let mut on_b = echoing(&server, &bob, "b.test").unwrap();
    assert!(
        echoing(&server, &bob, "a.test").is_err(),
        "a.test must refuse a certificate of b.test's CA"
    );
    // The wildcard stands for one label, in any case; the bare parent is not a match.
    let mut on_c = echoing(&server, &fixture.client(), "X.C.test").unwrap();
    let any = client_config_accepting_any().unwrap();
    let mut on_default = echoing(&server, &any, "c.test").unwrap();
    let mut unknown = echoing(&server, &any, "unknown.test").unwrap();
    assert_eq!(
        live_services(&server),
        ["b.test", "*.c.test", "default", "default"]
    );
    let connection = admin_json(&server, "/connections?limit=1");
    let id = connection["connections"][0]["id"].as_u64().unwrap();
    assert_eq!(
        admin_json(&server, &format!("/connections/{id}"))["service"],
        "b.test"
    );
    for client in [&mut on_b, &mut on_c, &mut on_default, &mut unknown] {
        assert_eq!(client.echo(b"still").unwrap(), b"still");
    }
    for client in [on_b, on_c, on_default, unknown] {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    let disposed = server.logged("disposed", 5);
    let mut services: Vec<&str> = disposed
        .iter()
        .map(|line| line["service"].as_str().unwrap_or("none"))
        .collect();
    services.sort_unstable();
    assert_eq!(
        services,
        ["*.c.test", "a.test", "b.test", "default", "default"]
    );
    assert_eq!(service_total(&server, "b.test"), 1.0);
    assert_eq!(service_total(&server, "default"), 2.0);
    books_exact(&server);
    drop(server);

    // Under --sni-strict a name no service and no default certificate serves is refused with
    // unrecognized_name; the services' names are served.
    let strict = fixture.serve(&["--sni-strict"]);
    let refused = TlsClient::connect_as(strict.listen, Arc::clone(&any), "unknown.test")
        .err()
        .expect("unknown.test must be refused under --sni-strict")
        .to_string();
    assert!(refused.contains("UnrecognisedName"), "{refused}");
    echoing(&strict, &fixture.client(), "y.c.test").unwrap();
    echoing(&strict, &fixture.client(), "localhost").unwrap();
}

/// Which services a reload's table holds: the file rewritten before SIGHUP number `round`.
fn table_of_round(fixture: &Fixture, round: usize) -> Vec<String> {
    // a.test gains a second name halfway; b.test's certificate is issued anew every time
    // (and its ALPN list changes); *.c.test goes away for four rounds; d.test comes and goes.
    let a_names: &[&str] = match round < RELOADS / 2 {
        true => &["a.test"],
        false => &["a.test", "a2.test"],
    };
    let alpn = match round % 2 {
        0 => "",
        _ => "alpn = \"x-echo\"",
    };
    let mut services = vec![
        fixture.service("a", a_names, ""),
        fixture.service("b", &["b.test"], alpn),
    ];
    if !(8..12).contains(&round) {
        services.push(fixture.service("c", &["*.c.test"], ""));
    }
    if round % 2 == 1 {
        services.push(fixture.service("d", &["d.test"], ""));
    }
    services
}

/// The default service of round `round`: a proxy to `upstream` every third round from the
/// first, an echo server otherwise (so its protocol and its group change under its live
/// connections).
fn default_of_round(round: usize, upstream: std::net::SocketAddr) -> (String, &'static str) {
    match round % 3 {
        1 => (
            format!("protocol = \"proxy\"\nupstream = \"{upstream}\"\n"),
            "proxy",
        ),
        _ => (String::new(), "echo"),
    }
}

#[test]
fn live_connections_keep_their_services_through_twenty_reloads_of_the_table() {
    raise_open_files_limit();
    let fixture = Fixture::new("bin-services-reload");
    let upstream =
        tlsvisor_actors::testing::TestUpstream::start(tlsvisor_actors::testing::upstream::echo);
    fixture.write(&table_of_round(&fixture, 0));
    // A --max-connections that fits the descriptors whether the default forwards or not (a
    // reload that makes it forward is refused otherwise).
    let server = fixture.serve(&["--max-connections", "2000"]);
    let shared = fixture.client();
    let mut live: Vec<TlsClient> = ["a.test", "b.test", "x.c.test", "localhost"]
        .iter()
        .flat_map(|sni| (0..PER_SERVICE).map(|_| echoing(&server, &shared, sni).unwrap()))
        .collect();
    let client = fixture.fresh_client();

    for round in 1..=RELOADS {
        let (default, protocol) = default_of_round(round, upstream.addr());
        fixture.write_with_default(&default, &table_of_round(&fixture, round));
        server.signal(libc::SIGHUP);
        let reloaded = server.logged("TLS configuration reloaded", round);
        assert_eq!(reloaded[round - 1]["listeners"], "unchanged");
        assert_eq!(reloaded[round - 1]["protocol"], protocol, "round {round}");
        if round == 1 {
            // Connections of the proxying default, kept through the rounds that follow.
            live.extend((0..PER_SERVICE).map(|_| echoing(&server, &shared, "localhost").unwrap()));
        }
        for (i, connection) in live.iter_mut().enumerate() {
            let echoed = connection.echo(b"still here");
            assert_eq!(
                echoed.unwrap_or_else(|e| panic!("round {round}, connection {i}: {e}")),
                b"still here"
            );
        }
        // New connections see the new table: d.test is served only in the rounds that have
        // it (otherwise the default's `localhost` certificate fails the client's check).
        assert_eq!(
            echoing(&server, &client, "d.test").is_ok(),
            round % 2 == 1,
            "round {round}"
        );
        assert_eq!(
            echoing(&server, &client, "y.c.test").is_ok(),
            !(8..12).contains(&round),
            "round {round}"
        );
        assert_eq!(
            echoing(&server, &client, "a2.test").is_ok(),
            round >= RELOADS / 2,
            "round {round}"
        );
        echoing(&server, &client, "b.test").unwrap();
    }

    // A broken table (d.test claims b.test too) is refused whole, naming the service and the
    // file: the table of the last round stays.
    let mut broken = table_of_round(&fixture, RELOADS + 1);
    broken.push(fixture.service("e", &["e.test", "b.test"], ""));
    fixture.write(&broken);
    server.signal(libc::SIGHUP);
    let refused = server.logged("TLS reload failed; keeping the previous configuration", 1);
    let error = refused[0]["error"].as_str().unwrap();
    assert!(
        error.contains("tlsvisor.toml")
            && error.contains("service e.test")
            && error.contains("b.test"),
        "{error}"
    );
    assert!(echoing(&server, &client, "e.test").is_err());
    assert!(
        echoing(&server, &client, "d.test").is_err(),
        "round 20 had no d.test"
    );
    echoing(&server, &client, "a2.test").unwrap();
    let metrics = server.scrape();
    assert_eq!(
        metrics.get("tlsvisor_tls_reloads_total{result=\"ok\"}"),
        RELOADS as f64
    );
    assert_eq!(
        metrics.get("tlsvisor_tls_reloads_total{result=\"failed\"}"),
        1.0
    );

    // The live connections still say the service they started with.
    let services = live_services(&server);
    for (label, n) in [
        ("a.test", PER_SERVICE),
        ("b.test", PER_SERVICE),
        ("*.c.test", PER_SERVICE),
        ("default", 2 * PER_SERVICE),
    ] {
        assert_eq!(
            services.iter().filter(|s| *s == label).count(),
            n,
            "{label}: {services:?}"
        );
        assert!(service_total(&server, label) >= PER_SERVICE as f64);
    }
    for connection in &mut live {
        assert_eq!(connection.echo(b"last").unwrap(), b"last");
    }
    for (i, connection) in live.into_iter().enumerate() {
        let seen = connection.close();
        assert!(
            matches!(seen, CloseSeen::CloseNotifyThenEof),
            "connection {i}: {seen:?}"
        );
    }
    // The default's connections of round 1 went through the upstream to the end, whatever the
    // default became after them.
    for n in 0..PER_SERVICE {
        let report = upstream.next_report(HANG);
        let echoed = report.unwrap_or_else(|| panic!("the upstream saw only {n} clients end"));
        assert!(echoed.unwrap() > 0);
    }
    books_exact(&server);
}

/// Real clients on both sides: `redis-cli --tls --sni` through one port to two redis servers.
#[cfg(feature = "interop")]
mod interop {
    use std::process::Command;

    use super::*;
    use crate::common::redis::Redis;

    /// `redis-cli` over TLS asking for `sni`, trusting `ca`: its output, trimmed.
    fn redis_cli(server: &Tlsvisor, ca: &str, sni: &str, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", ca, "--sni", sni, "-h", "127.0.0.1"])
            .args(["-p", &server.listen.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed (apt-get install redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `redis-cli` straight to `redis` (plaintext).
    fn set_directly(redis: &Redis, key: &str, value: &str) {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &redis.addr().port().to_string()])
            .args(["SET", key, value])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }

    #[test]
    fn interop_two_names_on_one_port_reach_two_redis_servers() {
        let fixture = Fixture::new("bin-services-redis");
        let (first, second) = (Redis::start(), Redis::start());
        set_directly(&first, "who", "first");
        set_directly(&second, "who", "second");
        let upstream = |redis: &Redis| format!("upstream = {:?}", redis.upstream());
        fixture.write(&[
            fixture.service("a", &["a.test"], &upstream(&first)),
            fixture.service("b", &["b.test"], &upstream(&second)),
        ]);
        let server = fixture.serve(&[]);
        let ca = path_in(&fixture.scratch, "ca.pem");
        ScratchDir::replace(ca.as_ref(), &fixture.certs.ca_cert_pem).unwrap();
        assert_eq!(redis_cli(&server, &ca, "a.test", &["GET", "who"]), "first");
        assert_eq!(redis_cli(&server, &ca, "b.test", &["GET", "who"]), "second");
        // An unknown name goes to the default service, which echoes: redis-cli reads its own
        // command back as an array.
        let echoed = redis_cli(&server, &ca, "localhost", &["GET", "who"]);
        assert!(
            echoed.contains("who") && !echoed.contains("first"),
            "{echoed}"
        );
        let disposed = server.logged("disposed", 3);
        let services: Vec<&str> = disposed
            .iter()
            .map(|line| line["service"].as_str().unwrap_or("none"))
            .collect();
        assert_eq!(services, ["a.test", "b.test", "default"]);
        books_exact(&server);
    }
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
fn check_refuses_a_bad_service_table_naming_the_service_and_the_file() {
    let fixture = Fixture::new("bin-services-check");
    let a = fixture.service("a", &["a.test"], "");
    fixture.write(&[a.clone(), fixture.service("b", &["b.test"], "")]);
    let (ok, said) = check(&fixture.config);
    assert!(ok, "{said}");

    let cases = [
        (
            fixture.service("b", &["b.test"], "colour = \"blue\""),
            "colour",
        ),
        (fixture.service("b", &["b.test", "A.test"], ""), "a.test"),
        (
            fixture.service("b", &["b.test"], "protocol = \"proxy\""),
            "upstream",
        ),
        (
            fixture
                .service("b", &["b.test"], "")
                .replace("names = [\"b.test\"]", "names = [\"b.test\", \"b.*.test\"]"),
            "left-most",
        ),
        (
            fixture.service(
                "b",
                &["b.test"],
                "upstream-sni = \"x\"\nupstream = \"127.0.0.1:1\"",
            ),
            "--upstream-sni",
        ),
    ];
    for (b, problem) in cases {
        fixture.write(&[a.clone(), b]);
        let (ok, said) = check(&fixture.config);
        assert!(!ok, "{problem}: {said}");
        assert!(
            said.contains("tlsvisor.toml")
                && said.contains("service b.test")
                && said.contains(problem),
            "{problem}: {said}"
        );
    }
    // A name no certificate of its service covers is a warning, not a refusal.
    let (cert, key, _) = issue_into(&fixture.scratch, &fixture.certs, "other", &["other.test"]);
    let uncovered = format!("[[service]]\nnames = [\"c.test\"]\ncert = {cert:?}\nkey = {key:?}\n");
    fixture.write(&[a, uncovered]);
    let (ok, said) = check(&fixture.config);
    assert!(ok, "{said}");
    assert!(
        said.contains("warning") && said.contains("c.test"),
        "{said}"
    );
}

/// A client certificate of `certs`'s CA for `cn`, as a client configuration.
fn identity(fixture: &Fixture, cn: &str) -> Arc<ClientConfig> {
    let (cert, key) = fixture.certs.issue_client(cn, &[], &[]).unwrap();
    let ca = fixture.certs.ca_cert_pem.as_bytes();
    client_config_with_cert(ca, cert.as_bytes(), key.as_bytes()).unwrap()
}

#[test]
fn a_reload_revalidates_only_the_services_whose_policy_changed_and_a_removed_group_drains() {
    let fixture = Fixture::new("bin-services-revalidate");
    let ca = path_in(&fixture.scratch, "ca.pem");
    ScratchDir::replace(ca.as_ref(), &fixture.certs.ca_cert_pem).unwrap();
    let upstream =
        tlsvisor_actors::testing::TestUpstream::start(tlsvisor_actors::testing::upstream::echo);
    let allowing = |names: &str| format!("client-ca = {ca:?}\nallow-cn = [{names}]");
    let proxy = format!("upstream = \"{}\"", upstream.addr());
    fixture.write(&[
        fixture.service("a", &["a.test"], &allowing("\"alice\", \"bob\"")),
        fixture.service("b", &["b.test"], &allowing("\"bob\"")),
        fixture.service("p", &["p.test"], &proxy),
    ]);
    let server = fixture.serve(&[]);
    let (alice, bob) = (identity(&fixture, "alice"), identity(&fixture, "bob"));
    let open = |config: &Arc<ClientConfig>, sni: &str| -> Vec<TlsClient> {
        (0..5)
            .map(|_| echoing(&server, config, sni).unwrap())
            .collect()
    };
    let mut alice_on_a = open(&alice, "a.test");
    let bob_on_a = open(&bob, "a.test");
    let mut bob_on_b = open(&bob, "b.test");
    let mut proxied = open(&fixture.client(), "p.test");

    // a.test drops bob; b.test keeps its policy (it still admits bob); p.test goes away.
    fixture.write(&[
        fixture.service("a", &["a.test"], &allowing("\"alice\"")),
        fixture.service("b", &["b.test"], &allowing("\"bob\"")),
    ]);
    server.signal(libc::SIGHUP);
    server.logged("TLS configuration reloaded", 1);
    for (i, mut client) in bob_on_a.into_iter().enumerate() {
        let seen = client.read_until_close();
        assert!(
            matches!(seen, CloseSeen::CloseNotifyThenEof),
            "bob on a.test {i}: {seen:?}"
        );
    }
    for client in alice_on_a
        .iter_mut()
        .chain(&mut bob_on_b)
        .chain(&mut proxied)
    {
        assert_eq!(client.echo(b"kept").unwrap(), b"kept");
    }
    assert!(
        eventually(HANG, || server.scrape().disposed("credentials_revoked")
            == 5.0),
        "the five connections of bob on a.test, and only those"
    );
    assert!(echoing(&server, &bob, "a.test").is_err());
    echoing(&server, &bob, "b.test").unwrap();
    // The removed upstream group serves its live connections to their normal end.
    for client in proxied {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    for _ in 0..5 {
        let echoed = upstream
            .next_report(HANG)
            .expect("the upstream saw each client end");
        assert_eq!(echoed.unwrap(), 10, "the bytes of `p.test` and `kept`");
    }
    for client in alice_on_a.into_iter().chain(bob_on_b) {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    books_exact(&server);
}

#[test]
fn watch_certs_reloads_when_a_services_certificate_changes() {
    let fixture = Fixture::new("bin-services-watch");
    fixture.write(&[fixture.service("b", &["b.test"], "")]);
    let server = fixture.serve(&["--watch-certs"]);
    let before = echoing(&server, &fixture.fresh_client(), "b.test").unwrap();
    let serial = |client: &TlsClient| {
        let der = client.server_certificate().unwrap();
        tlsvisor_actors::testing::CertificateFacts::from_der(&der)
            .unwrap()
            .serial_hex
    };
    let first = serial(&before);
    let (_, _, issued) = issue_into(&fixture.scratch, &fixture.certs, "b", &["b.test"]);
    server.logged("TLS configuration reloaded", 1);
    let after = echoing(&server, &fixture.fresh_client(), "b.test").unwrap();
    assert_eq!(serial(&after), issued.serial_hex);
    assert_ne!(serial(&after), first);
}

#[test]
fn watch_certs_watches_the_files_of_a_service_a_reload_added() {
    let fixture = Fixture::new("bin-services-watch-added");
    let b = fixture.service("b", &["b.test"], "");
    fixture.write(std::slice::from_ref(&b));
    let server = fixture.serve(&["--watch-certs"]);
    server.logged("watching certificate files", 1);
    // c.test comes with a reload; the watcher takes its files from the file it names them in.
    fixture.write(&[b, fixture.service("c", &["c.test"], "")]);
    server.signal(libc::SIGHUP);
    server.logged("TLS configuration reloaded", 1);
    let watching = server.logged("watching certificate files", 2);
    assert_eq!(
        watching[1]["files"],
        watching[0]["files"].as_u64().unwrap() + 2
    );
    echoing(&server, &fixture.fresh_client(), "c.test").unwrap();
    // A renewal of c.test's certificate is now reloaded without a signal.
    let (_, _, renewed) = issue_into(&fixture.scratch, &fixture.certs, "c", &["c.test"]);
    server.logged("TLS configuration reloaded", 2);
    let after = echoing(&server, &fixture.fresh_client(), "c.test").unwrap();
    let der = after.server_certificate().unwrap();
    let served = tlsvisor_actors::testing::CertificateFacts::from_der(&der).unwrap();
    assert_eq!(served.serial_hex, renewed.serial_hex);
}

#[test]
fn a_reload_says_when_the_files_listeners_differ_from_the_bound_ones() {
    let fixture = Fixture::new("bin-services-listeners");
    let listen = |addrs: &str| format!("listen = [{addrs}]\n");
    let b = fixture.service("b", &["b.test"], "");
    let write = |addrs: &str| {
        let text = format!("{}{}\n{b}", listen(addrs), fixture.top);
        ScratchDir::replace(fixture.config.as_ref(), &text).unwrap();
    };
    write("\"127.0.0.1:0\"");
    let server = Tlsvisor::spawn(&["serve", "--config", &fixture.config, "--log-format", "json"]);
    write("\"127.0.0.1:0\", \"127.0.0.2:0\"");
    server.signal(libc::SIGHUP);
    let reloaded = server.logged("TLS configuration reloaded", 1);
    assert_eq!(reloaded[0]["listeners"], "listeners differ; needs SIGUSR2");
    assert_eq!(reloaded[0]["services"], 1);
    // The listeners bound at start still serve, with the reloaded table.
    echoing(&server, &fixture.fresh_client(), "b.test").unwrap();
}
