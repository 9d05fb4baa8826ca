//! `--runtime-faults`: rules installed with curl through the admin API (`POST /faults`), each
//! action observed by a real TLS client over a real socket (rustls here; openssl s_client and
//! redis-cli through the proxy in `interop`), the match fields, the expiry, and the refusals.
//! After each, the books are exact: every connection disposed once, with its reason.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tlsvisor_actors::testing::{client_config, eventually, CloseSeen, TlsClient};

use crate::common::{dev_ca, Tlsvisor, HANG};

/// The binary serving echo with `--runtime-faults` and the admin API on loopback.
fn serve_faults(extra: &[&str]) -> (Tlsvisor, SocketAddr) {
    let mut args = vec!["--admin-listen", "127.0.0.1:0", "--runtime-faults"];
    args.extend_from_slice(extra);
    let server = Tlsvisor::serve(&args);
    let admin = server.admin_listen();
    (server, admin)
}

/// One request with curl: (status, body).
fn curl(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args([
        "-s",
        "--max-time",
        "30",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if let Some(body) = body {
        command.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let output = command
        .arg(format!("http://{admin}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    (status.parse().expect("a status"), body.to_string())
}

/// Installs a rule; its id.
fn install(admin: SocketAddr, rule: &str) -> u64 {
    let (status, body) = curl(admin, "POST", "/faults", Some(rule), None);
    assert_eq!(status, 201, "POST /faults {rule}: {body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    answer["id"].as_u64().expect("an id")
}

/// `GET /faults`.
fn rules(admin: SocketAddr) -> Vec<Value> {
    let (status, body) = curl(admin, "GET", "/faults", None, None);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    answer["faults"].as_array().unwrap().clone()
}

/// How often rule `id` fired, as `GET /faults` says.
fn fired(admin: SocketAddr, id: u64) -> u64 {
    rules(admin)
        .iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["fired"].as_u64())
        .expect("the rule is listed")
}

fn connect(server: &Tlsvisor) -> std::io::Result<TlsClient> {
    TlsClient::connect(server.listen, client_config(&dev_ca()).unwrap())
}

/// Waits until every connection is disposed, then checks the books: `accepted == disposed`,
/// no duplicate, fallback or lost `Dispose`, and `fault_injected` exactly `injected` times.
fn books_exact(server: &Tlsvisor, injected: f64) {
    assert!(
        eventually(HANG, || server.scrape().get("tlsvisor_connections_active")
            == 0.0),
        "connections left active"
    );
    let m = server.scrape();
    assert_eq!(
        m.get("tlsvisor_connections_accepted_total"),
        m.sum("tlsvisor_connections_disposed_total")
    );
    for family in [
        "tlsvisor_dispose_duplicates_total",
        "tlsvisor_dispose_fallback_total",
        "tlsvisor_dispose_lost_total",
    ] {
        assert_eq!(m.get(family), 0.0, "{family}");
    }
    assert_eq!(m.disposed("fault_injected"), injected);
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
    )
}

#[test]
fn handshake_delay_stall_and_reset_are_what_the_client_sees() {
    let (server, admin) = serve_faults(&["--handshake-timeout", "5s"]);

    // Delay: the handshake takes at least the delay, then the connection works.
    let id = install(
        admin,
        r#"{"match": {"at_most": 1}, "action": {"type": "delay_handshake", "delay": "800ms"},
            "expires_in": "1m"}"#,
    );
    let started = Instant::now();
    let mut client = connect(&server).expect("a delayed handshake completes");
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(client.echo(b"ping").unwrap(), b"ping");
    assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    assert_eq!(fired(admin, id), 1);

    // Stall: the client gives up (its own 2 s) before the server's 5 s handshake timeout,
    // which then ends it as handshake_timeout.
    let id = install(
        admin,
        r#"{"match": {"at_most": 1}, "action": {"type": "stall_handshake"}, "expires_in": "1m"}"#,
    );
    let (done, outcome) = mpsc::channel();
    let listen = server.listen;
    std::thread::spawn(move || {
        let _ = done.send(TlsClient::connect(listen, client_config(&dev_ca()).unwrap()).is_ok());
    });
    assert!(
        outcome.recv_timeout(Duration::from_secs(2)).is_err(),
        "a stalled handshake answered within 2 s"
    );
    assert_eq!(fired(admin, id), 1);
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("handshake_timeout")
        == 1.0));

    // Reset: the client's handshake fails with a reset.
    let id = install(
        admin,
        r#"{"match": {"at_most": 1}, "action": {"type": "reset_handshake"}, "expires_in": "1m"}"#,
    );
    let error = connect(&server).err().expect("a reset handshake fails");
    assert!(is_reset(&error), "not a reset: {error:?}");
    assert_eq!(fired(admin, id), 1);
    books_exact(&server, 1.0);
}

#[test]
fn latency_and_bandwidth_slow_each_chunk() {
    let (server, admin) = serve_faults(&[]);
    let latency = install(
        admin,
        r#"{"match": {"at_most": 1}, "action": {"type": "latency", "delay": "300ms",
            "direction": "to_client"}, "expires_in": "1m"}"#,
    );
    let mut slow = connect(&server).unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(slow.echo(b"ping").unwrap(), b"ping");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    // The rule hit one connection: the next is not slowed.
    let mut fast = connect(&server).unwrap();
    assert_eq!(fast.echo(b"ping").unwrap(), b"ping");
    assert_eq!(fired(admin, latency), 1);

    // 40,000 bytes at 20,000 bytes a second: at least 2 s.
    install(
        admin,
        r#"{"match": {"at_most": 1}, "action": {"type": "bandwidth", "bytes_per_second": 20000},
            "expires_in": "1m"}"#,
    );
    let mut paced = connect(&server).unwrap();
    let data = vec![7u8; 40_000];
    let started = Instant::now();
    assert_eq!(paced.echo(&data).unwrap(), data);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for client in [slow, fast, paced] {
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    books_exact(&server, 0.0);
}

#[test]
fn truncate_reset_and_early_close_notify_after_n_bytes() {
    let (server, admin) = serve_faults(&[]);
    let data = vec![b'x'; 100];

    // Truncate: exactly 10 bytes, then a FIN without close_notify.
    install(
        admin,
        r#"{"match": {"at_most": 1}, "action": {"type": "truncate", "after_bytes": 10},
            "expires_in": "1m"}"#,
    );
    let mut client = connect(&server).unwrap();
    client.send(&data).unwrap();
    let (received, seen) = client.receive_until_close();
    assert_eq!(received.len(), 10);
    assert!(matches!(seen, CloseSeen::EofWithoutCloseNotify), "{seen:?}");

    // Early close_notify: exactly 10 bytes, then close_notify and a FIN.
    install(
        admin,
        r#"{"match": {"at_most": 1}, "action": {"type": "close_notify", "after_bytes": 10},
            "expires_in": "1m"}"#,
    );
    let mut client = connect(&server).unwrap();
    client.send(&data).unwrap();
    let (received, seen) = client.receive_until_close();
    assert_eq!(received.len(), 10);
    assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");

    // Reset after 10 bytes: the client sees a reset.
    install(
        admin,
        r#"{"match": {"at_most": 1}, "action": {"type": "reset_after", "after_bytes": 10},
            "expires_in": "1m"}"#,
    );
    let mut client = connect(&server).unwrap();
    client.send(&data).unwrap();
    let (_, seen) = client.receive_until_close();
    assert!(
        matches!(&seen, CloseSeen::Error(e) if is_reset(e)),
        "not a reset: {seen:?}"
    );

    // After 0 bytes: at once, before anything is written.
    install(
        admin,
        r#"{"match": {"at_most": 1}, "action": {"type": "truncate", "after_bytes": 0},
            "expires_in": "1m"}"#,
    );
    let mut client = connect(&server).unwrap();
    let (received, seen) = client.receive_until_close();
    assert!(received.is_empty());
    assert!(matches!(seen, CloseSeen::EofWithoutCloseNotify), "{seen:?}");
    books_exact(&server, 4.0);
}

#[test]
fn the_match_fields_select_the_connections() {
    let (server, admin) = serve_faults(&[]);
    let config = client_config(&dev_ca()).unwrap();
    let reset = |client: std::io::Result<TlsClient>| matches!(client, Err(e) if is_reset(&e));

    // SNI: only `localhost` (the name the client asks for); another name is not hit.
    let other = install(
        admin,
        r#"{"match": {"sni": "other.example"}, "action": {"type": "reset_handshake"},
            "expires_in": "1m"}"#,
    );
    let ok = connect(&server).unwrap();
    assert_eq!(fired(admin, other), 0);
    let by_name = install(
        admin,
        r#"{"match": {"sni": "LOCALHOST", "at_most": 1}, "action": {"type": "reset_handshake"},
            "expires_in": "1m"}"#,
    );
    assert!(reset(connect(&server)));
    assert_eq!(fired(admin, by_name), 1);

    // Peer network: a client bound to 127.0.0.2 is hit, one from 127.0.0.1 is not.
    let by_peer = install(
        admin,
        r#"{"match": {"peer": "127.0.0.2/32"}, "action": {"type": "reset_handshake"},
            "expires_in": "1m"}"#,
    );
    let from = |ip: &str| -> IpAddr { ip.parse().unwrap() };
    let kept = TlsClient::connect_from(from("127.0.0.1"), server.listen, config.clone()).unwrap();
    assert!(reset(TlsClient::connect_from(
        from("127.0.0.2"),
        server.listen,
        config.clone()
    )));
    assert_eq!(fired(admin, by_peer), 1);
    let (status, _) = curl(admin, "DELETE", &format!("/faults/{by_peer}"), None, None);
    assert_eq!(status, 200);
    let (status, _) = curl(admin, "DELETE", &format!("/faults/{by_peer}"), None, None);
    assert_eq!(status, 404);

    // The listener: this one is hit.
    let by_listener = install(
        admin,
        &format!(
            r#"{{"match": {{"listener": "{}", "at_most": 1}}, "action": {{"type": "reset_handshake"}},
                "expires_in": "1m"}}"#,
            server.listen
        ),
    );
    assert!(reset(connect(&server)));
    assert_eq!(fired(admin, by_listener), 1);

    // Probability 0: never; at most 2: two of five.
    let never = install(
        admin,
        r#"{"match": {"probability": 0}, "action": {"type": "reset_handshake"},
            "expires_in": "1m"}"#,
    );
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(connect(&server).expect("probability 0 never fires"));
    }
    assert_eq!(fired(admin, never), 0);
    let twice = install(
        admin,
        r#"{"match": {"at_most": 2}, "action": {"type": "reset_handshake"}, "expires_in": "1m"}"#,
    );
    let resets = (0..5).filter(|_| reset(connect(&server))).count();
    assert_eq!(resets, 2);
    assert_eq!(fired(admin, twice), 2);
    drop((ok, kept, clients));
    books_exact(&server, 5.0);
}

#[test]
fn an_expired_rule_stops_firing_and_is_no_longer_listed() {
    let (server, admin) = serve_faults(&[]);
    let id = install(
        admin,
        r#"{"action": {"type": "reset_handshake"}, "expires_in": "1s"}"#,
    );
    assert!(matches!(connect(&server), Err(e) if is_reset(&e)));
    let listed = rules(admin);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id);
    assert!(listed[0]["expires_in_ms"].as_u64().unwrap() <= 1000);
    assert!(eventually(HANG, || rules(admin).is_empty()));
    let client = connect(&server).expect("an expired rule no longer fires");
    drop(client);
    books_exact(&server, 1.0);
}

#[test]
fn bad_rules_are_refused_with_a_reason() {
    let (_server, admin) = serve_faults(&[]);
    for (rule, why) in [
        (r#"{"action": {"type": "stall_handshake"}}"#, "expires_in"),
        (
            r#"{"action": {"type": "stall_handshake"}, "expires_in": "48h"}"#,
            "24h",
        ),
        (
            r#"{"match": {"probability": 2}, "action": {"type": "stall_handshake"}, "expires_in": "1m"}"#,
            "probability",
        ),
        (
            r#"{"action": {"type": "bandwidth", "bytes_per_second": 0}, "expires_in": "1m"}"#,
            "bytes_per_second",
        ),
        (
            r#"{"action": {"type": "explode"}, "expires_in": "1m"}"#,
            "explode",
        ),
        ("not json", "expected"),
    ] {
        let (status, body) = curl(admin, "POST", "/faults", Some(rule), None);
        assert_eq!(status, 400, "{rule}: {body}");
        assert!(body.contains(why), "{rule}: {body}");
    }
    let huge = format!(
        r#"{{"match": {{"sni": "{}"}}, "action": {{"type": "stall_handshake"}}, "expires_in": "1m"}}"#,
        "a".repeat(10_000)
    );
    assert_eq!(curl(admin, "POST", "/faults", Some(&huge), None).0, 413);
    assert!(rules(admin).is_empty());
}

#[test]
fn without_the_flag_faults_are_404_and_without_the_token_401() {
    let server = Tlsvisor::serve(&["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_listen();
    assert_eq!(curl(admin, "GET", "/faults", None, None).0, 404);
    let rule = r#"{"action": {"type": "reset_handshake"}, "expires_in": "1m"}"#;
    assert_eq!(curl(admin, "POST", "/faults", Some(rule), None).0, 404);
    assert_eq!(curl(admin, "DELETE", "/faults/1", None, None).0, 404);
    drop(server);

    let dir = tlsvisor_actors::testing::ScratchDir::new("runtime-faults-token").unwrap();
    let token = dir.path("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (_server, admin) = serve_faults(&["--admin-token-file", token.to_str().unwrap()]);
    assert_eq!(curl(admin, "GET", "/faults", None, None).0, 401);
    assert_eq!(curl(admin, "POST", "/faults", Some(rule), None).0, 401);
    assert_eq!(
        curl(admin, "POST", "/faults", Some(rule), Some("wrong")).0,
        401
    );
    assert_eq!(
        curl(admin, "POST", "/faults", Some(rule), Some("s3cret")).0,
        201
    );
    assert_eq!(curl(admin, "GET", "/faults", None, Some("s3cret")).0, 200);
}

#[test]
fn refused_at_start_without_a_token_off_loopback_or_without_the_admin_api() {
    let run = |command: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
            .arg(command)
            .args(["--log-format", "json", "--runtime-faults"])
            .args(args)
            .output()
            .expect("run tlsvisor")
    };
    for command in ["check", "serve"] {
        let off_loopback = run(
            command,
            &["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"],
        );
        assert!(
            !off_loopback.status.success(),
            "{command}: {off_loopback:?}"
        );
        let said = String::from_utf8_lossy(&off_loopback.stdout).to_string()
            + &String::from_utf8_lossy(&off_loopback.stderr);
        assert!(
            said.contains("--runtime-faults needs --admin-token-file"),
            "{said}"
        );

        let no_admin = run(command, &["--listen", "127.0.0.1:0"]);
        assert!(!no_admin.status.success(), "{command}: {no_admin:?}");
        let said = String::from_utf8_lossy(&no_admin.stdout).to_string()
            + &String::from_utf8_lossy(&no_admin.stderr);
        assert!(
            said.contains("--runtime-faults needs --admin-listen"),
            "{said}"
        );
    }
    let on_loopback = run("check", &["--admin-listen", "127.0.0.1:0"]);
    assert!(on_loopback.status.success(), "{on_loopback:?}");
}

/// The same faults seen by the clients people test with: openssl s_client, and redis-cli
/// through the proxy to a real redis-server.
#[cfg(feature = "interop")]
mod interop {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::{books_exact, fired, install, serve_faults};
    use crate::common::redis::Redis;

    /// openssl s_client against `addr`, sending `input`: (exit success, stdout+stderr).
    fn s_client(addr: std::net::SocketAddr, input: &[u8], extra: &[&str]) -> (bool, String) {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt");
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "localhost",
            ])
            .args(["-CAfile", ca, "-verify_return_error", "-ign_eof"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    #[test]
    fn openssl_sees_a_reset_handshake_and_a_truncated_stream() {
        let (server, admin) = serve_faults(&[]);
        let id = install(
            admin,
            r#"{"match": {"at_most": 1}, "action": {"type": "reset_handshake"}, "expires_in": "1m"}"#,
        );
        let (ok, said) = s_client(server.listen, b"", &[]);
        assert!(!ok, "{said}");
        assert!(
            said.contains("reset") || said.contains("errno=104") || said.contains("104"),
            "{said}"
        );
        assert_eq!(fired(admin, id), 1);

        // Truncated after 5 bytes: openssl reports the missing close_notify (EOF).
        install(
            admin,
            r#"{"match": {"at_most": 1}, "action": {"type": "truncate", "after_bytes": 5},
                "expires_in": "1m"}"#,
        );
        let (_, said) = s_client(server.listen, b"hello world\n", &["-quiet"]);
        assert!(
            said.contains("hello") && !said.contains("hello world"),
            "{said}"
        );
        assert!(said.contains("unexpected eof"), "{said}");
        books_exact(&server, 2.0);
    }

    /// redis-cli over TLS through the proxy to redis-server.
    fn redis_cli(addr: std::net::SocketAddr, args: &[&str]) -> std::process::Output {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt");
        Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                ca,
                "--sni",
                "localhost",
                "-h",
                "127.0.0.1",
            ])
            .args(["-p", &addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed")
    }

    #[test]
    fn redis_cli_through_the_proxy_sees_latency_and_an_early_close() {
        let redis = Redis::start();
        let upstream = redis.upstream();
        let (server, admin) = serve_faults(&["--protocol", "proxy", "--upstream", &upstream]);
        let plain = redis_cli(server.listen, &["PING"]);
        assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "PONG");

        // 400 ms on each chunk either way: PING's round trip takes at least 800 ms.
        install(
            admin,
            r#"{"match": {"at_most": 1}, "action": {"type": "latency", "delay": "400ms"},
                "expires_in": "1m"}"#,
        );
        let started = Instant::now();
        let slow = redis_cli(server.listen, &["PING"]);
        assert_eq!(String::from_utf8_lossy(&slow.stdout).trim(), "PONG");
        assert!(started.elapsed() >= Duration::from_millis(800));

        // close_notify after 4 bytes of the reply: redis-cli gets "+PON" and a clean close,
        // which it reports as an error.
        install(
            admin,
            r#"{"match": {"at_most": 1}, "action": {"type": "close_notify", "after_bytes": 4},
                "expires_in": "1m"}"#,
        );
        let cut = redis_cli(server.listen, &["PING"]);
        let said = String::from_utf8_lossy(&cut.stdout).to_string()
            + &String::from_utf8_lossy(&cut.stderr);
        assert!(!said.contains("PONG"), "{said}");
        books_exact(&server, 1.0);
        drop(redis);
    }
}
