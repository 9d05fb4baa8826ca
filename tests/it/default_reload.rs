//! A reload rebuilds the default service too: its protocol and its upstream group (with TLS,
//! health, retry and PROXY settings), validated whole before the swap, while its live
//! connections keep the group they started with. `/metrics` shows every service's upstreams:
//! the default's labelled `upstream` alone (as before services existed), a named service's
//! `service` and `upstream`; an upstream a reload keeps keeps its counters. `interop`: real
//! `redis-server` upstreams, real SIGHUP and `POST /reload`, real scrapes.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use rustls::ClientConfig;
use tlsvisor_actors::testing::{client_config, ScratchDir, TestUpstream, TlsClient};
use tlsvisor_actors::DevCerts;

use crate::common::certs::{issue_into, path_in};
use crate::common::{Limits, Tlsvisor, HANG};

/// A scratch folder with a CA, a certificate for `localhost` (the default service) and one for
/// the named services, and the config file the tests rewrite.
struct Fixture {
    scratch: ScratchDir,
    certs: DevCerts,
    config: String,
    /// `cert = ...`, `key = ...` of the default service.
    top: String,
    /// `cert = ...`, `key = ...` for a named service (covers `a.test`, `b.test`, `c.test`).
    named: String,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let scratch = ScratchDir::new(name).unwrap();
        let certs = DevCerts::generate().unwrap();
        let (cert, key, _) = issue_into(&scratch, &certs, "default", &["localhost"]);
        let top = format!("cert = {cert:?}\nkey = {key:?}\n");
        let (cert, key, _) = issue_into(&scratch, &certs, "named", &["a.test", "b.test", "c.test"]);
        let named = format!("cert = {cert:?}\nkey = {key:?}\n");
        let config = path_in(&scratch, "tlsvisor.toml");
        Fixture {
            scratch,
            certs,
            config,
            top,
            named,
        }
    }

    /// Writes the config file: the default's certificate, `default` (its other top-level
    /// keys), then a `[[service]]` per (name, upstream).
    fn write(&self, default: &str, services: &[(&str, String)]) {
        let mut text = format!("{}{default}\n", self.top);
        for (name, upstream) in services {
            text.push_str(&format!(
                "[[service]]\nnames = [{name:?}]\n{}upstream = {upstream:?}\n",
                self.named,
            ));
        }
        ScratchDir::replace(self.config.as_ref(), &text).unwrap();
    }

    fn serve(&self, extra: &[&str]) -> Tlsvisor {
        let mut args = vec!["--config", &self.config, "--admin-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Tlsvisor::serve(&args)
    }

    fn client(&self) -> Arc<ClientConfig> {
        client_config(self.certs.ca_cert_pem.as_bytes()).unwrap()
    }
}

/// The default service's keys to proxy to `upstream`.
fn proxying_to(upstream: &str) -> String {
    format!("protocol = \"proxy\"\nupstream = {upstream:?}\n")
}

/// A client of `server` asking for `sni`.
fn connect(server: &Tlsvisor, config: &Arc<ClientConfig>, sni: &str) -> TlsClient {
    let client = TlsClient::connect_as(server.listen, Arc::clone(config), sni).unwrap();
    client.tcp().set_read_timeout(Some(HANG)).unwrap();
    client
}

/// `POST /reload` on the admin API: the status and the body.
fn post_reload(admin: SocketAddr) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "-X",
            "POST",
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("http://{admin}/reload"))
        .output()
        .expect("run curl");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    (status.parse().expect("a status"), body.to_string())
}

#[test]
fn a_reload_that_turns_an_echo_server_into_a_proxy_must_fit_the_descriptors() {
    let fixture = Fixture::new("bin-default-reload-descriptors");
    let upstream = TestUpstream::start(tlsvisor_actors::testing::upstream::echo);
    let proxy = proxying_to(&upstream.addr().to_string());
    fixture.write("", &[]);
    // Echo: 600 connections need 700 descriptors of the 1000; forwarding, they need 1300.
    let limits = Limits {
        nofile: Some(1_000),
        ..Limits::default()
    };
    let args = [
        "--config",
        &fixture.config,
        "--admin-listen",
        "127.0.0.1:0",
        "--max-connections",
        "600",
    ];
    let server = Tlsvisor::serve_with(&args, &limits);
    let config = fixture.client();
    fixture.write(&proxy, &[]);
    let (status, body) = post_reload(server.admin_listen());
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("--max-connections 600 needs 1300 open files"),
        "{body}"
    );
    // Still echoing.
    let mut client = connect(&server, &config, "localhost");
    assert_eq!(client.echo(b"GET who\r\n").unwrap(), b"GET who\r\n");

    // Under a --max-connections the limit holds, the same reload is taken.
    fixture.write("", &[]);
    let args = [
        "--config",
        &fixture.config,
        "--admin-listen",
        "127.0.0.1:0",
        "--max-connections",
        "400",
    ];
    let server = Tlsvisor::serve_with(&args, &limits);
    fixture.write(&proxy, &[]);
    let (status, body) = post_reload(server.admin_listen());
    assert_eq!(status, 200, "{body}");
    let reloaded = server.logged("TLS configuration reloaded", 1);
    assert_eq!(reloaded[0]["protocol"], "proxy");
    let mut client = connect(&server, &config, "localhost");
    assert_eq!(client.echo(b"through").unwrap(), b"through");
    drop(client);
    let echoed = upstream
        .next_report(HANG)
        .expect("the upstream saw the client end");
    assert_eq!(echoed.unwrap(), 7, "`through`, through the proxy");
}

/// The default service's keys for a proxy to a `tls://` upstream verified against the CA file
/// `ca` (nothing needs to listen there: these tests only read files).
fn tls_proxy(ca: &str) -> String {
    format!("protocol = \"proxy\"\nupstream = \"tls://localhost:9\"\nupstream-ca = {ca:?}\n")
}

#[test]
fn with_plaintext_listeners_bound_the_default_stays_a_proxy_to_tls_upstreams() {
    let fixture = Fixture::new("bin-default-reload-client-mode");
    let ca = path_in(&fixture.scratch, "upstream-ca.pem");
    ScratchDir::replace(ca.as_ref(), &fixture.certs.ca_cert_pem).unwrap();
    let client_mode = format!("listen-plain = [\"127.0.0.1:0\"]\n{}", tls_proxy(&ca));
    fixture.write(&client_mode, &[]);
    let server = fixture.serve(&[]);
    // The file drops its plaintext listener and the default becomes an echo server: the
    // listener is still bound (only SIGUSR2 or a restart unbinds it), so this is refused.
    fixture.write("", &[]);
    let (status, body) = post_reload(server.admin_listen());
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("plaintext listeners (client mode) need the default service to proxy"),
        "{body}"
    );
    // The same file with its default still a TLS proxy is taken, and says what it left.
    fixture.write(&tls_proxy(&ca), &[]);
    let (status, body) = post_reload(server.admin_listen());
    assert_eq!(status, 200, "{body}");
    let reloaded = server.logged("TLS configuration reloaded", 1);
    assert_eq!(reloaded[0]["needs_sigusr2"], "listen-plain");
    assert_eq!(reloaded[0]["listeners"], "listeners differ; needs SIGUSR2");
}

#[test]
fn watch_certs_reloads_when_the_default_upstream_ca_changes() {
    let fixture = Fixture::new("bin-default-reload-watch-upstream-ca");
    let ca = path_in(&fixture.scratch, "upstream-ca.pem");
    ScratchDir::replace(ca.as_ref(), &fixture.certs.ca_cert_pem).unwrap();
    fixture.write(&tls_proxy(&ca), &[]);
    let server = fixture.serve(&["--watch-certs"]);
    let another = DevCerts::generate().unwrap();
    ScratchDir::replace(ca.as_ref(), &another.ca_cert_pem).unwrap();
    let reloaded = server.logged("TLS configuration reloaded", 1);
    assert_eq!(reloaded[0]["protocol"], "proxy");
    // A CA file that no longer parses is refused, naming it; the configuration stays.
    ScratchDir::replace(ca.as_ref(), "not a certificate\n").unwrap();
    let failed = server.logged("TLS reload failed; keeping the previous configuration", 1);
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("upstream-ca.pem"), "{error}");
}

/// Real `redis-server` upstreams.
#[cfg(feature = "interop")]
mod interop {
    use std::process::Command;

    use tlsvisor_actors::testing::{eventually, CloseSeen};

    use super::*;
    use crate::common::redis::Redis;
    use crate::common::Metrics;

    /// Stores `who = value` in `redis`, straight (not through the proxy).
    fn set_directly(redis: &Redis, value: &str) {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &redis.addr().port().to_string()])
            .args(["SET", "who", value])
            .output()
            .expect("redis-cli is installed (apt-get install redis-tools)");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }

    /// Two redis servers, `who` set to `first` and `second`.
    fn two_redis() -> (Redis, Redis) {
        let (first, second) = (Redis::start(), Redis::start());
        set_directly(&first, "first");
        set_directly(&second, "second");
        (first, second)
    }

    /// `GET who` over `client`: which redis answered.
    fn who(client: &mut TlsClient) -> String {
        client.send(b"GET who\r\n").unwrap();
        let header = read_line(client);
        assert!(header.starts_with('$'), "a bulk string: {header:?}");
        read_line(client)
    }

    fn read_line(client: &mut TlsClient) -> String {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            line.extend(client.receive(1).unwrap());
        }
        String::from_utf8(line).unwrap().trim_end().to_string()
    }

    /// The samples of the `tlsvisor_upstream_*` families, as `name{labels}` → value.
    fn upstream_samples(metrics: &Metrics) -> Vec<(String, f64)> {
        let mut samples: Vec<(String, f64)> = (metrics.0.iter())
            .filter(|(key, _)| key.starts_with("tlsvisor_upstream_"))
            .map(|(key, value)| (key.clone(), *value))
            .collect();
        samples.sort_by(|a, b| a.0.cmp(&b.0));
        samples
    }

    /// Whether any upstream sample names `upstream`.
    fn shows(metrics: &Metrics, upstream: &str) -> bool {
        (metrics.0.keys()).any(|key| {
            key.starts_with("tlsvisor_upstream_")
                && key.contains(&format!("upstream=\"{upstream}\""))
        })
    }

    /// Every connection ended once, through its stop hook.
    fn books_exact(server: &Tlsvisor) {
        assert!(
            eventually(HANG, || server.scrape().get("tlsvisor_connections_active")
                == 0.0),
            "connections left"
        );
        server.scrape().assert_books_exact();
    }

    #[test]
    fn interop_a_reload_switches_the_default_upstream_while_live_connections_keep_the_first() {
        let fixture = Fixture::new("bin-default-reload-switch");
        let (first, second) = two_redis();
        fixture.write(&proxying_to(&first.upstream()), &[]);
        let server = fixture.serve(&[]);
        let config = fixture.client();
        let mut live: Vec<TlsClient> = (0..5)
            .map(|_| connect(&server, &config, "localhost"))
            .collect();
        for client in &mut live {
            assert_eq!(who(client), "first");
        }

        fixture.write(&proxying_to(&second.upstream()), &[]);
        server.signal(libc::SIGHUP);
        let reloaded = server.logged("TLS configuration reloaded", 1);
        assert_eq!(reloaded[0]["protocol"], "proxy");
        assert_eq!(reloaded[0]["needs_sigusr2"], "none");
        // New clients reach the second redis; the live ones keep the first, and keep working.
        for _ in 0..3 {
            assert_eq!(who(&mut connect(&server, &config, "localhost")), "second");
        }
        for client in &mut live {
            assert_eq!(who(client), "first");
            assert_eq!(who(client), "first");
        }
        // The first's series stay while its connections live, and the second's are there.
        let metrics = server.scrape();
        let active = |redis: &Redis| {
            format!(
                "tlsvisor_upstream_connections_active{{upstream=\"{}\"}}",
                redis.upstream()
            )
        };
        assert_eq!(
            metrics.get(&active(&first)),
            5.0,
            "{:?}",
            upstream_samples(&metrics)
        );
        assert!(shows(&metrics, &second.upstream()));
        for client in live {
            assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
        }
        assert!(
            eventually(HANG, || !shows(&server.scrape(), &first.upstream())),
            "the first's group is gone with its last connection: {:?}",
            upstream_samples(&server.scrape())
        );
        // Back to the first, through the admin API this time.
        fixture.write(&proxying_to(&first.upstream()), &[]);
        let (status, body) = post_reload(server.admin_listen());
        assert_eq!(status, 200, "{body}");
        assert_eq!(who(&mut connect(&server, &config, "localhost")), "first");
        books_exact(&server);
    }

    #[test]
    fn interop_a_reload_with_a_broken_default_upstream_ca_changes_nothing() {
        let fixture = Fixture::new("bin-default-reload-broken-ca");
        let (first, second) = two_redis();
        fixture.write(&proxying_to(&first.upstream()), &[]);
        let server = fixture.serve(&[]);
        let config = fixture.client();
        let mut live = connect(&server, &config, "localhost");
        assert_eq!(who(&mut live), "first");

        let broken = path_in(&fixture.scratch, "broken-ca.pem");
        ScratchDir::replace(broken.as_ref(), "not a certificate\n").unwrap();
        let tls_upstream = format!(
            "protocol = \"proxy\"\nupstream = \"tls://{}\"\nupstream-ca = {broken:?}\n",
            second.addr()
        );
        fixture.write(&tls_upstream, &[]);
        let (status, body) = post_reload(server.admin_listen());
        assert_eq!(status, 500, "{body}");
        assert!(
            body.contains("broken-ca.pem"),
            "the error names the file: {body}"
        );
        server.signal(libc::SIGHUP);
        let failed = server.logged("TLS reload failed; keeping the previous configuration", 2);
        for line in &failed {
            let error = line["error"].as_str().unwrap();
            assert!(error.contains("broken-ca.pem"), "{error}");
            assert!(error.contains("default service"), "{error}");
        }
        // Nothing changed: the live client and new ones still reach the first redis.
        assert_eq!(who(&mut live), "first");
        assert_eq!(who(&mut connect(&server, &config, "localhost")), "first");
        let metrics = server.scrape();
        assert_eq!(
            metrics.get("tlsvisor_tls_reloads_total{result=\"failed\"}"),
            2.0
        );
        assert!(!shows(&metrics, &second.upstream()));
        drop(live);
        books_exact(&server);
    }

    #[test]
    fn interop_every_group_has_its_series_and_a_kept_upstream_keeps_its_counters() {
        let fixture = Fixture::new("bin-default-reload-series");
        let (first, second) = two_redis();
        // One address in two groups (the default's and a.test's): two pools, two series.
        fixture.write(
            &proxying_to(&first.upstream()),
            &[("a.test", first.upstream()), ("b.test", second.upstream())],
        );
        let server = fixture.serve(&[]);
        let config = fixture.client();
        assert_eq!(who(&mut connect(&server, &config, "localhost")), "first");
        assert_eq!(who(&mut connect(&server, &config, "a.test")), "first");
        assert_eq!(who(&mut connect(&server, &config, "a.test")), "first");
        books_exact(&server);

        let (one, two) = (first.upstream(), second.upstream());
        let opened = |service: Option<&str>, upstream: &str| {
            let service = service.map_or(String::new(), |s| format!("service=\"{s}\","));
            format!("tlsvisor_upstream_connections_total{{{service}upstream=\"{upstream}\"}}")
        };
        let bytes_in = format!(
            "tlsvisor_upstream_bytes_total{{upstream=\"{one}\",direction=\"client_to_upstream\"}}"
        );
        let up = format!("tlsvisor_upstream_up{{upstream=\"{one}\"}}");
        let before = server.scrape();
        assert_eq!(before.get(&opened(None, &one)), 1.0);
        assert_eq!(before.get(&opened(Some("a.test"), &one)), 2.0);
        assert_eq!(before.get(&opened(Some("b.test"), &two)), 0.0);
        assert_eq!(
            before.get(&up),
            1.0,
            "the default's lines keep their label set"
        );
        assert_eq!(before.get(&bytes_in), 9.0, "one `GET who\\r\\n`");
        assert_eq!(
            before.get(&format!(
                "tlsvisor_upstream_up{{service=\"b.test\",upstream=\"{two}\"}}"
            )),
            1.0
        );

        // b.test goes, c.test comes; the default and a.test are rewritten as they were.
        fixture.write(
            &proxying_to(&first.upstream()),
            &[("a.test", first.upstream()), ("c.test", second.upstream())],
        );
        server.signal(libc::SIGHUP);
        server.logged("TLS configuration reloaded", 1);
        let after = server.scrape();
        assert_eq!(
            after.get(&opened(None, &one)),
            1.0,
            "not reset by the reload"
        );
        assert_eq!(after.get(&opened(Some("a.test"), &one)), 2.0);
        assert_eq!(after.get(&bytes_in), 9.0);
        assert_eq!(after.get(&opened(Some("c.test"), &two)), 0.0);
        assert!(
            !upstream_samples(&after)
                .iter()
                .any(|(key, _)| key.contains("service=\"b.test\"")),
            "b.test had no connection left: its series went with it: {:?}",
            upstream_samples(&after)
        );
        // And they go on counting from there.
        assert_eq!(who(&mut connect(&server, &config, "localhost")), "first");
        assert_eq!(who(&mut connect(&server, &config, "c.test")), "second");
        books_exact(&server);
        let counted = server.scrape();
        assert_eq!(counted.get(&opened(None, &one)), 2.0);
        assert_eq!(counted.get(&opened(Some("c.test"), &two)), 1.0);
    }
}
