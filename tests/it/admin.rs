//! The admin API (`--admin-listen`) over real HTTP (curl) against the binary: listing and
//! closing connections, pause and resume, drain, readiness, the token. Every scrape checks
//! `accepted == active + disposed`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{Tlsvisor, HANG};
use serde_json::Value;
use tlsvisor_actors::testing::{eventually, CloseSeen, TlsClient};

/// The binary with the admin API on a free port; its address from the log.
fn serve_admin(extra: &[&str]) -> (Tlsvisor, SocketAddr) {
    let mut args = vec!["--admin-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Tlsvisor::serve(&args);
    let admin = server.admin_listen();
    (server, admin)
}

/// One request with curl: (status, body).
fn curl(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
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
    let output = command
        .arg(format!("http://{admin}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    (status.parse().expect("a status"), body.to_string())
}

fn json(admin: SocketAddr, method: &str, path: &str) -> Value {
    let (status, body) = curl(admin, method, path, None);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {body}"
    );
    serde_json::from_str(&body).unwrap()
}

fn ready_status(admin: SocketAddr) -> u16 {
    curl(admin, "GET", "/health/ready", None).0
}

/// Whether a handshake started by [`connect_in_background`] has not finished yet.
fn still_waiting(waiting: &mpsc::Receiver<std::io::Result<TlsClient>>) -> bool {
    matches!(waiting.try_recv(), Err(mpsc::TryRecvError::Empty))
}

/// Starts a handshake on another thread; its result arrives on the channel.
fn connect_in_background(server: &Tlsvisor) -> mpsc::Receiver<std::io::Result<TlsClient>> {
    let (tx, rx) = mpsc::channel();
    let (listen, ca) = (server.listen, common::dev_ca());
    std::thread::spawn(move || {
        let config = tlsvisor_actors::testing::client_config(&ca).unwrap();
        let _ = tx.send(TlsClient::connect(listen, config));
    });
    rx
}

#[test]
fn lists_100_connections_finds_each_client_by_port_and_closes_one_by_id() {
    let (server, admin) = serve_admin(&["--workers", "2"]);
    let mut clients: Vec<TlsClient> = (0..100)
        .map(|_| {
            let mut client = server.connect().unwrap();
            assert_eq!(client.echo(b"hello").unwrap(), b"hello");
            client
        })
        .collect();
    server.scrape();

    // One page of all of them, and the same set page by page.
    let all = json(admin, "GET", "/connections?limit=1000");
    let listed = all["connections"].as_array().unwrap();
    assert_eq!(listed.len(), 100, "{all}");
    assert!(all["next_after"].is_null());
    let mut paged = Vec::new();
    let mut path = "/connections?limit=30".to_string();
    loop {
        let page = json(admin, "GET", &path);
        paged.extend(page["connections"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_u64() {
            Some(after) => path = format!("/connections?limit=30&after={after}"),
            None => break,
        }
    }
    let ids = |list: &[Value]| -> Vec<(u64, String)> {
        list.iter()
            .map(|c| (c["id"].as_u64().unwrap(), c["peer"].to_string()))
            .collect()
    };
    assert_eq!(
        ids(&paged),
        ids(listed),
        "pages list the same connections in id order"
    );
    assert!(ids(listed).windows(2).all(|w| w[0].0 < w[1].0));

    let by_port: HashMap<u16, &Value> = listed
        .iter()
        .map(|c| {
            let peer: SocketAddr = c["peer"].as_str().unwrap().parse().unwrap();
            (peer.port(), c)
        })
        .collect();
    let mut workers = std::collections::HashSet::new();
    for client in &clients {
        let port = client.tcp().local_addr().unwrap().port();
        let found = by_port
            .get(&port)
            .unwrap_or_else(|| panic!("client port {port} not listed"));
        assert_eq!(found["state"], "open", "{found}");
        assert_eq!(found["bytes_in"], 5, "{found}");
        assert_eq!(found["bytes_out"], 5, "{found}");
        assert_eq!(found["sni"], "localhost", "{found}");
        assert!(found["tls_version"].as_str().unwrap().starts_with("TLSv1."));
        workers.insert(found["worker"].as_u64().unwrap());
    }
    assert!(workers.iter().all(|w| *w < 2), "{workers:?}");

    // Close one by id: its client sees close_notify, the reason is `killed`.
    let victim = clients.remove(17);
    let port = victim.tcp().local_addr().unwrap().port();
    let id = by_port[&port]["id"].as_u64().unwrap();
    let one = json(admin, "GET", &format!("/connections/{id}"));
    assert_eq!(one["peer"], by_port[&port]["peer"]);
    let (status, body) = curl(admin, "DELETE", &format!("/connections/{id}"), None);
    assert_eq!(status, 202, "{body}");
    let mut victim = victim;
    assert!(
        matches!(victim.read_until_close(), CloseSeen::CloseNotifyThenEof),
        "a graceful close"
    );
    assert!(eventually(HANG, || server
        .scrape()
        .0
        .get("tlsvisor_connections_disposed_total{reason=\"killed\"}")
        == Some(&1.0)));
    assert!(eventually(HANG, || server
        .logs_with("disposed")
        .iter()
        .any(|l| l["conn_id"] == id && l["reason"] == "killed")));
    assert_eq!(
        curl(admin, "GET", &format!("/connections/{id}"), None).0,
        404
    );
    assert_eq!(
        curl(admin, "DELETE", &format!("/connections/{id}"), None).0,
        404
    );

    // A forced close: no close_notify.
    let mut forced = clients.remove(0);
    let port = forced.tcp().local_addr().unwrap().port();
    let id = by_port[&port]["id"].as_u64().unwrap();
    let (status, _) = curl(
        admin,
        "DELETE",
        &format!("/connections/{id}?force=true"),
        None,
    );
    assert_eq!(status, 202);
    assert!(!matches!(
        forced.read_until_close(),
        CloseSeen::CloseNotifyThenEof
    ));
    for client in &mut clients {
        assert_eq!(client.echo(b"others").unwrap(), b"others");
    }
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 98.0));
}

#[test]
fn pause_holds_new_clients_in_the_backlog_and_resume_lets_them_in() {
    let (server, admin) = serve_admin(&[]);
    let mut live = server.connect().unwrap();
    assert_eq!(ready_status(admin), 200);

    assert_eq!(json(admin, "POST", "/pause")["paused"], true);
    assert_eq!(ready_status(admin), 503);
    let before = server.scrape().get("tlsvisor_connections_accepted_total");
    // The TCP connect completes (the kernel's backlog), the handshake waits: both connections
    // sit in the accept queue, so neither has been accepted.
    assert!(TcpStream::connect(server.listen).is_ok());
    let waiting = connect_in_background(&server);
    common::wait_accept_queue(server.listen.port(), 2);
    assert!(still_waiting(&waiting), "a handshake finished while paused");
    assert_eq!(live.echo(b"still served").unwrap(), b"still served");
    let metrics = server.scrape();
    assert_eq!(metrics.get("tlsvisor_connections_accepted_total"), before);
    assert!(metrics.get("tlsvisor_acceptors_paused") >= 1.0);

    assert_eq!(json(admin, "POST", "/resume")["paused"], false);
    let mut admitted = waiting
        .recv_timeout(HANG)
        .expect("the waiting client is served after resume")
        .unwrap();
    assert_eq!(admitted.echo(b"in").unwrap(), b"in");
    assert_eq!(ready_status(admin), 200);
    server.scrape();
}

#[test]
fn drain_turns_readiness_off_first_then_closes_every_connection_gracefully() {
    let (server, admin) = serve_admin(&[]);
    let clients: Vec<TlsClient> = (0..10).map(|_| server.connect().unwrap()).collect();
    assert_eq!(ready_status(admin), 200);
    let (tx, rx) = mpsc::channel();
    for mut client in clients {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let seen = client.read_until_close();
            let _ = tx.send((
                Instant::now(),
                matches!(seen, CloseSeen::CloseNotifyThenEof),
            ));
        });
    }
    drop(tx);

    // Ten connections over 5 s: the server asks the n-th to close n steps of 500 ms after the
    // drain began (its schedule is absolute: a slow machine makes closes later, never earlier).
    let (period, step) = (Duration::from_secs(5), Duration::from_millis(500));
    let asked_at = Instant::now();
    let (status, body) = curl(admin, "POST", "/drain?period=5s", None);
    assert_eq!(status, 202, "{body}");
    // Readiness is off as the drain is acknowledged.
    assert_eq!(ready_status(admin), 503);
    let mut closes = Vec::new();
    while let Ok(close) = rx.recv_timeout(HANG) {
        closes.push(close);
        server.scrape();
    }
    assert_eq!(closes.len(), 10);
    assert!(asked_at.elapsed() < HANG);
    assert!(
        closes.iter().all(|(_, graceful)| *graceful),
        "every client sees close_notify then FIN"
    );
    let mut at: Vec<Duration> = closes.iter().map(|(t, _)| *t - asked_at).collect();
    at.sort();
    for (n, at) in at.iter().enumerate() {
        assert!(
            *at >= step * (n as u32 + 1),
            "readiness is off a step before the first close, and the n-th close waits n steps: \
             close {n} came {at:?} after the drain was asked"
        );
    }
    assert!(
        at[9] - at[0] >= period / 2,
        "closes are spread over the period: {:?}",
        at[9] - at[0]
    );
    assert!(eventually(HANG, || server.scrape().disposed("shutdown") == 10.0));

    // Drained: still paused (a new client waits in the accept queue) and not ready until
    // resumed.
    assert_eq!(ready_status(admin), 503);
    let waiting = connect_in_background(&server);
    common::wait_accept_queue(server.listen.port(), 1);
    assert!(
        still_waiting(&waiting),
        "a handshake finished while drained"
    );
    json(admin, "POST", "/resume");
    assert_eq!(ready_status(admin), 200);
    assert!(waiting.recv_timeout(HANG).unwrap().is_ok());
    server.scrape();
}

#[test]
fn drain_with_accept_for_keeps_serving_new_clients_while_a_balancer_catches_up() {
    let (server, admin) = serve_admin(&[]);
    let mut before = server.connect().unwrap();
    // Wide enough that the late client below comes within it on a loaded machine too.
    let accept_for = Duration::from_secs(6);
    let drain = format!("/drain?accept_for={}s&period=1s", accept_for.as_secs());
    // Taken before the request: the server's accept_for cannot have begun earlier.
    let asked_at = Instant::now();
    let (status, body) = curl(admin, "POST", &drain, None);
    assert_eq!(status, 202, "{body}");
    // Not ready at once, but a client the balancer sends before its next check is served.
    assert_eq!(ready_status(admin), 503);
    let mut late = server.connect().unwrap();
    assert_eq!(late.echo(b"served").unwrap(), b"served");
    assert!(
        asked_at.elapsed() < accept_for,
        "the late client came within accept_for"
    );
    assert_eq!(before.echo(b"still").unwrap(), b"still");
    // Then paused, and both (the one accepted meanwhile too) are closed gracefully.
    for client in [&mut before, &mut late] {
        assert!(matches!(
            client.read_until_close(),
            CloseSeen::CloseNotifyThenEof
        ));
    }
    assert!(asked_at.elapsed() >= accept_for);
    assert!(eventually(HANG, || server.scrape().disposed("shutdown") == 2.0));
    let waiting = connect_in_background(&server);
    common::wait_accept_queue(server.listen.port(), 1);
    assert!(
        still_waiting(&waiting),
        "a handshake finished after accept_for"
    );
    // A bad duration is refused, and changes nothing.
    assert_eq!(curl(admin, "POST", "/drain?accept_for=soon", None).0, 400);
    json(admin, "POST", "/resume");
    assert!(waiting.recv_timeout(HANG).unwrap().is_ok());
    server.scrape();
}

#[test]
fn the_token_is_required_everywhere_but_health() {
    let dir = std::env::temp_dir().join(format!("tlsvisor-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let (server, admin) = serve_admin(&["--admin-token-file", token_file.to_str().unwrap()]);
    let _client = server.connect().unwrap();

    for (method, path) in [
        ("GET", "/connections"),
        ("GET", "/connections/0"),
        ("DELETE", "/connections/0"),
        ("POST", "/pause"),
        ("POST", "/drain"),
        ("POST", "/reload"),
        ("GET", "/metrics"),
    ] {
        assert_eq!(curl(admin, method, path, None).0, 401, "{method} {path}");
        assert_eq!(
            curl(admin, method, path, Some("wrong")).0,
            401,
            "{method} {path}"
        );
    }
    assert_eq!(curl(admin, "GET", "/health/live", None).0, 200);
    assert_eq!(curl(admin, "GET", "/health/ready", None).0, 200);
    let (status, body) = curl(admin, "GET", "/connections", Some("s3cret-token"));
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["connections"].as_array().unwrap().len(), 1);
    let (status, metrics) = curl(admin, "GET", "/metrics", Some("s3cret-token"));
    assert_eq!(status, 200);
    let metrics = common::Metrics::parse(&metrics);
    assert_eq!(metrics.get("tlsvisor_admin_unauthorized_total"), 14.0);
    assert_eq!(
        server.scrape().get("tlsvisor_admin_unauthorized_total"),
        14.0
    );
    let (status, body) = curl(admin, "POST", "/reload", Some("s3cret-token"));
    assert_eq!(status, 200, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readiness_goes_off_as_soon_as_a_shutdown_starts() {
    let (mut server, admin) = serve_admin(&["--shutdown-grace", "3s"]);
    // A client that ignores close_notify keeps the shutdown in its grace period.
    let _stubborn = server.connect().unwrap();
    assert_eq!(ready_status(admin), 200);
    server.signal(libc::SIGTERM);
    assert!(eventually(HANG, || server
        .logs_with("signal received: shutting down")
        .len()
        == 1));
    let (status, body) = curl(admin, "GET", "/health/ready", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["stopping"],
        true
    );
    assert_eq!(curl(admin, "GET", "/health/live", None).0, 200);
    let status = server
        .wait_exit(HANG)
        .expect("exits after the grace period");
    assert!(status.success(), "{status:?}");
}

/// One request with curl and the given `Authorization` header value: the status.
fn curl_authorization(admin: SocketAddr, method: &str, path: &str, value: &str) -> u16 {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "30", "-X", method])
        .args([
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: {value}"),
        ])
        .arg(format!("http://{admin}{path}"))
        .output()
        .expect("run curl");
    String::from_utf8(output.stdout).unwrap().parse().unwrap()
}

/// Issue 17, finding 8: the token is checked before the path and the query are parsed (an
/// unauthenticated client learns nothing and is counted), the scheme's case does not matter,
/// and the refusals' warning lines are rate-limited.
#[test]
fn authentication_comes_before_parsing_and_its_warnings_are_rate_limited() {
    let dir = std::env::temp_dir().join(format!("tlsvisor-admin-first-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let (server, admin) = serve_admin(&["--admin-token-file", token_file.to_str().unwrap()]);
    // Every refused request of this test is logged through one throttle: the first refusal is
    // after this instant.
    let first_refusal = Instant::now();

    let unauthenticated = [
        ("DELETE", "/connections/abc"),
        ("GET", "/connections/abc"),
        ("GET", "/connections?limit=abc"),
        ("DELETE", "/connections/1?force=maybe"),
        ("POST", "/drain?period=banana"),
        ("GET", "/no-such-path"),
        ("PUT", "/health/live/extra"),
    ];
    for (method, path) in unauthenticated {
        let (status, body) = curl(admin, method, path, None);
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(!body.contains("abc") && !body.contains("banana"), "{body}");
    }
    let counted = server.scrape().get("tlsvisor_admin_unauthorized_total");
    assert_eq!(counted, unauthenticated.len() as f64);

    // RFC 7235: the scheme is case-insensitive.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} s3cret-token");
        assert_eq!(
            curl_authorization(admin, "GET", "/connections", &value),
            200,
            "{value}"
        );
    }
    assert_eq!(
        curl_authorization(admin, "GET", "/connections", "Basic s3cret-token"),
        401
    );
    assert_eq!(
        curl_authorization(admin, "GET", "/connections", "bearers3cret-token"),
        401
    );
    // Authenticated, a bad id is the handler's answer again.
    assert_eq!(
        curl_authorization(admin, "DELETE", "/connections/abc", "bearer s3cret-token"),
        404
    );

    // A burst of refusals: one warning line a second at most, each saying how many it left
    // out; every refusal is counted all the same.
    let started = Instant::now();
    for _ in 0..60 {
        assert_eq!(curl(admin, "GET", "/connections", Some("wrong")).0, 401);
    }
    let elapsed = started.elapsed();
    let before = server.scrape().get("tlsvisor_admin_unauthorized_total");
    assert_eq!(before, (unauthenticated.len() + 2 + 60) as f64);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(curl(admin, "GET", "/nope", None).0, 401);
    let lines = server.logs_with("admin request refused: missing or wrong token");
    // One line a second at most from the first refusal to the last: over T seconds, at most
    // the whole seconds in T plus the first line and one for a second boundary crossed.
    let most = first_refusal.elapsed().as_secs() as usize + 2;
    assert!(
        !lines.is_empty() && lines.len() <= most,
        "{} lines in {elapsed:?}: {lines:?}",
        lines.len()
    );
    let left_out: u64 = lines
        .iter()
        .map(|l| l["suppressed_since_last"].as_u64().unwrap())
        .sum();
    assert!(
        eventually(HANG, || {
            let lines = server.logs_with("admin request refused: missing or wrong token");
            let left_out: u64 = lines
                .iter()
                .map(|l| l["suppressed_since_last"].as_u64().unwrap())
                .sum();
            lines.len() as u64 + left_out == (unauthenticated.len() + 2 + 60 + 1) as u64
        }),
        "{left_out} left out, {} lines",
        lines.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 17, finding 2: a drain period or accept_for past a day (or past what a `Duration`
/// holds) is refused with a 400, nothing is drained, and a sane one still works.
#[test]
fn drain_refuses_periods_past_a_day_without_a_panic() {
    let (server, admin) = serve_admin(&[]);
    let mut client = server.connect().unwrap();
    for query in [
        "period=18446744073709551615s",
        "period=500000000000y",
        "period=25h",
        "accept_for=18446744073709551615s",
    ] {
        let (status, body) = curl(admin, "POST", &format!("/drain?{query}"), None);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(ready_status(admin), 200, "{query}: nothing drained");
    }
    assert_eq!(client.echo(b"still served").unwrap(), b"still served");
    let (status, body) = curl(admin, "POST", "/drain?period=24h", None);
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["period_ms"], 86_400_000);
    assert_eq!(ready_status(admin), 503);
    json(admin, "POST", "/resume");
    assert_eq!(client.echo(b"after resume").unwrap(), b"after resume");
    server.scrape();
}

/// Issue 17, finding 5: neither the admin nor the metrics socket can be shared: another socket
/// asking for `SO_REUSEPORT` (as any process of the same user could) cannot bind their port.
#[test]
fn no_other_socket_can_bind_the_admin_or_metrics_port() {
    let (server, admin) = serve_admin(&[]);
    let metrics = server.metrics.unwrap();
    for addr in [admin, metrics] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.set_reuseport(true).unwrap();
        let bound = socket.bind(addr);
        assert_eq!(
            bound.as_ref().map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::AddrInUse),
            "{addr}: {bound:?}"
        );
    }
    assert_eq!(curl(admin, "GET", "/health/live", None).0, 200);
}
