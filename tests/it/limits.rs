//! The limits runbooks assume (issue 20, item 4), against the real binary with real clients:
//! the server-wide handshake rate (accepting slows, nothing is refused), the per-IP handshake
//! rate (refused as `per_ip_limit`, another address unaffected), `--max-lifetime` (a graceful
//! close at D ± 10 %, spread), `--half-close-timeout` (both directions), and what
//! `--idle-timeout` counts (a byte in either direction). Every test ends with the books:
//! every accepted connection disposed once, under its reason, no duplicate, fallback or lost
//! disposal.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio_rustls::TlsConnector;

use crate::common::{dev_ca, Metrics, Tlsvisor, HANG};
use tlsvisor_actors::testing::{client_config, eventually, CloseSeen, TestUpstream, TlsClient};

/// Waits until no connection is live, then checks the books in one scrape: every accepted
/// connection disposed (under some reason), none twice, none by the fallback, none lost.
/// Returns that scrape.
fn books_exact(server: &Tlsvisor) -> Metrics {
    let mut last = server.scrape();
    assert!(
        eventually(HANG, || {
            last = server.scrape();
            last.get("tlsvisor_connections_active") == 0.0
        }),
        "{} connections still live",
        last.get("tlsvisor_connections_active")
    );
    // The scrape that saw none live: the books of one instant.
    let m = last;
    assert_eq!(
        m.get("tlsvisor_connections_accepted_total"),
        m.sum("tlsvisor_connections_disposed_total"),
        "accepted == disposed once none is live"
    );
    assert_eq!(m.get("tlsvisor_dispose_duplicates_total"), 0.0);
    assert_eq!(m.get("tlsvisor_dispose_fallback_total"), 0.0);
    assert_eq!(m.get("tlsvisor_dispose_lost_total"), 0.0);
    m
}

/// The `disposed` log lines with `reason`, once there are `n` of them.
fn disposed_lines(server: &Tlsvisor, reason: &str, n: usize) -> Vec<serde_json::Value> {
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

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// --- the server-wide handshake rate ------------------------------------------------------

/// What the flood offered and got.
#[derive(Debug, Default)]
struct Flood {
    /// Connections started (a TCP connect and a handshake each).
    attempts: AtomicUsize,
    /// Handshakes the clients completed.
    completed: AtomicUsize,
}

/// `--max-handshake-rate 100` under a flood of 1,000 new connections a second (each one a
/// task that connects, completes its handshake and closes, or gives up after 2 s): the
/// accepts counted over two seconds in the middle stay near 100 a second (wide margins), the
/// flood was really offered (1,000 attempts a second), the acceptors were seen waiting for
/// their turn, and nothing was rejected: the clients over the rate waited in the backlog.
#[test]
fn the_handshake_rate_holds_under_a_flood_and_refuses_no_one() {
    const RATE: f64 = 100.0;
    let server = Tlsvisor::serve(&[
        "--max-handshake-rate",
        "100",
        // Only the rate is under test: no per-client limit may refuse anyone here.
        "--max-handshakes-per-ip",
        "0",
    ]);
    let addr = server.listen;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let flood = Arc::new(Flood::default());
    let stop = Arc::new(AtomicBool::new(false));
    let connector = TlsConnector::from(client_config(&dev_ca()).unwrap());
    {
        let (flood, stop) = (Arc::clone(&flood), Arc::clone(&stop));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                flood.attempts.fetch_add(1, Ordering::Relaxed);
                let (flood, connector) = (Arc::clone(&flood), connector.clone());
                tokio::spawn(async move {
                    let attempt = async {
                        let tcp = tokio::net::TcpStream::connect(addr).await?;
                        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                        let mut tls = connector.connect(name, tcp).await?;
                        flood.completed.fetch_add(1, Ordering::Relaxed);
                        tokio::io::AsyncWriteExt::shutdown(&mut tls).await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), attempt).await;
                });
            }
        });
    }
    // One second for the backlog to fill and the rate to settle, then two measured.
    std::thread::sleep(Duration::from_secs(1));
    let (before, started) = (server.scrape(), Instant::now());
    let completed_before = flood.completed.load(Ordering::Relaxed);
    let attempts_before = flood.attempts.load(Ordering::Relaxed);
    let mut paused_seen = false;
    while started.elapsed() < Duration::from_secs(2) {
        paused_seen |= server.scrape().get("tlsvisor_acceptors_paused") > 0.0;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (after, window) = (server.scrape(), started.elapsed());
    let completed = flood.completed.load(Ordering::Relaxed) - completed_before;
    let attempts = flood.attempts.load(Ordering::Relaxed) - attempts_before;
    stop.store(true, Ordering::SeqCst);
    // Every client goes: those still waiting in the backlog are accepted at the rate and end
    // as failed handshakes (the client is gone).
    runtime.shutdown_timeout(Duration::from_secs(1));
    // Nothing may be left in the backlog when the books are read.
    crate::common::wait_accept_queue(addr.port(), 0);

    let accepted = after.get("tlsvisor_connections_accepted_total")
        - before.get("tlsvisor_connections_accepted_total");
    let offered = attempts as f64 / secs(window);
    let accepted_rate = accepted / secs(window);
    eprintln!(
        "handshake rate 100/s: offered {offered:.0}/s, accepted {accepted_rate:.0}/s, \
         completed by the clients {:.0}/s over {:.2} s",
        completed as f64 / secs(window),
        secs(window)
    );
    assert!(offered > 700.0, "the flood offered {offered:.0}/s");
    // At most the rate, its burst (10) and one turn per worker waiting, with a wide margin.
    let most = RATE * secs(window) * 1.25 + 20.0;
    assert!(accepted <= most, "{accepted} accepted in {window:?}");
    assert!(
        completed as f64 <= most,
        "{completed} handshakes completed in {window:?}"
    );
    // And it serves at about the rate, not far below (a loaded machine may lag a little).
    assert!(
        accepted >= RATE * secs(window) * 0.5,
        "{accepted} accepted in {window:?}"
    );
    assert!(paused_seen, "the acceptors waited for their turn");
    let m = books_exact(&server);
    assert_eq!(
        m.sum("tlsvisor_connections_rejected_total"),
        0.0,
        "nothing is refused for the server-wide rate"
    );
}

// --- the per-IP handshake rate -------------------------------------------------------------

/// Connects a TLS client from `source`; `Err` if the server refused it (closed at accept).
fn try_connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TlsClient> {
    TlsClient::connect_from(source, addr, client_config(&dev_ca())?)
}

/// `--max-handshake-rate-per-ip 5`: 127.0.0.1 opening 30 connections at once gets about its
/// second's worth (5) and the rest are refused, each counted as `per_ip_limit`; meanwhile
/// 127.0.0.2 opens its own 5 without a refusal. A second later 127.0.0.1 is served again.
#[test]
fn over_its_handshake_rate_one_address_is_refused_and_another_is_not() {
    let server = Tlsvisor::serve(&["--max-handshake-rate-per-ip", "5"]);
    let (one, two): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    let started = Instant::now();
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        match try_connect_from(one, server.listen).and_then(|mut c| c.echo(b"1").map(|_| c)) {
            Ok(client) => kept.push(client),
            Err(_) => refused += 1,
        }
    }
    let took = started.elapsed();
    let admitted = kept.len();
    // The burst, plus what refilled while the 30 were tried (5 a second), plus one.
    let most = 5 + (secs(took) * 5.0).ceil() as usize + 1;
    assert!(
        (5..=most).contains(&admitted),
        "{admitted} admitted of 30 in {took:?}"
    );
    // Another address is unaffected, while the first is over its rate.
    for _ in 0..5 {
        let mut client = try_connect_from(two, server.listen).expect("127.0.0.2 is admitted");
        assert_eq!(client.echo(b"2").unwrap(), b"2");
        kept.push(client);
    }
    let m = server.scrape();
    assert_eq!(
        m.get("tlsvisor_connections_rejected_total{reason=\"per_ip_limit\"}"),
        refused as f64,
        "each refusal counted once as per_ip_limit"
    );
    // The bucket refills: after a second and a half 127.0.0.1 is served again.
    std::thread::sleep(Duration::from_millis(1_500));
    let mut again = try_connect_from(one, server.listen).expect("served once refilled");
    assert_eq!(again.echo(b"3").unwrap(), b"3");
    eprintln!("per-IP rate 5/s: 127.0.0.1 {admitted} of 30 admitted in {took:?}, {refused} refused; 127.0.0.2 5 of 5");
    drop(again);
    drop(kept);
    let m = books_exact(&server);
    // Refused at accept: never on the books.
    assert_eq!(
        m.get("tlsvisor_connections_accepted_total"),
        (admitted + 5 + 1) as f64
    );
}

// --- max lifetime --------------------------------------------------------------------------

/// `--max-lifetime 2s`: 20 idle connections opened together each see `close_notify` and a FIN
/// between 1.8 s and 2.2 s (plus a margin) after they connected, with the reason
/// `max_lifetime`, and not all at the same instant (the ±10 % spread).
#[test]
fn each_connection_closes_gracefully_at_its_lifetime_spread_by_ten_percent() {
    const CLIENTS: usize = 20;
    let lifetime = Duration::from_secs(2);
    let server = Tlsvisor::serve(&["--max-lifetime", "2s"]);
    let addr = server.listen;
    let (tx, rx) = mpsc::channel();
    for _ in 0..CLIENTS {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut client = TlsClient::connect(addr, client_config(&dev_ca()).unwrap()).unwrap();
            assert_eq!(client.echo(b"hello").unwrap(), b"hello");
            let seen = client.read_until_close();
            let _ = tx.send((started.elapsed(), seen));
        });
    }
    drop(tx);
    let ends: Vec<(Duration, CloseSeen)> = (0..CLIENTS)
        .map(|_| rx.recv_timeout(HANG).expect("every client sees its end"))
        .collect();
    let mut lives: Vec<Duration> = ends.iter().map(|(d, _)| *d).collect();
    lives.sort();
    eprintln!(
        "max lifetime 2 s: closed between {:?} and {:?} after connecting",
        lives[0],
        lives[CLIENTS - 1]
    );
    for (life, seen) in &ends {
        assert!(
            matches!(seen, CloseSeen::CloseNotifyThenEof),
            "a graceful close: {seen:?}"
        );
        // The client's clock started before the accept: never early. Late by a margin only.
        assert!(*life >= lifetime.mul_f64(0.9), "closed after {life:?}");
        assert!(
            *life <= lifetime.mul_f64(1.1) + Duration::from_millis(1_500),
            "closed after {life:?}"
        );
    }
    // Spread over 400 ms: 20 connections opened within a few milliseconds close over more
    // than 100 ms (loosely; uniform spreading gives ~360 ms).
    let spread = lives[CLIENTS - 1] - lives[0];
    assert!(
        spread >= Duration::from_millis(100),
        "closed within {spread:?}"
    );
    disposed_lines(&server, "max_lifetime", CLIENTS);
    let m = books_exact(&server);
    assert_eq!(m.disposed("max_lifetime"), CLIENTS as f64);
}

// --- half-close ----------------------------------------------------------------------------

/// Times the upstream handlers report, as seen by the upstream.
#[derive(Debug)]
struct UpstreamSaw {
    /// From its own FIN (or the client's EOF reaching it) to the end of the connection.
    waited: Duration,
}

/// `--half-close-timeout 1s`, the client finishing first: the client sends a request and
/// `close_notify` (its end reaches the upstream as a FIN); the upstream answers a byte every
/// 100 ms and never finishes, so the idle timeout (30 s) never fires; the connection closes
/// ~1 s after the client's end, the client sees `close_notify`, the reason is
/// `half_close_timeout`.
#[test]
fn a_client_that_finished_first_gives_the_upstream_its_half_close_timeout() {
    let upstream = TestUpstream::start(|mut stream: TcpStream| {
        let mut buf = [0u8; 1024];
        // The request, then the client's end (EOF).
        while let Ok(1..) = stream.read(&mut buf) {}
        let eof_at = Instant::now();
        // Never finishes: trickles until the proxy closes its side.
        while stream.write_all(b".").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
        UpstreamSaw {
            waited: eof_at.elapsed(),
        }
    });
    let target = upstream.addr().to_string();
    let server = Tlsvisor::serve(&[
        "--protocol",
        "proxy",
        "--upstream",
        &target,
        "--half-close-timeout",
        "1s",
        "--idle-timeout",
        "30s",
    ]);
    let mut client = server.connect().unwrap();
    client.send(b"request").unwrap();
    client.finish_sending().unwrap();
    let finished = Instant::now();
    let (trickled, seen) = client.receive_until_close();
    let took = finished.elapsed();
    eprintln!(
        "half-close (client first), 1 s: closed {took:?} after the client's close_notify, {} \
         bytes trickled meanwhile",
        trickled.len()
    );
    assert!(
        matches!(seen, CloseSeen::CloseNotifyThenEof),
        "a graceful close: {seen:?}"
    );
    assert!(!trickled.is_empty(), "upstream → client flowed meanwhile");
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_millis(3_000),
        "closed {took:?} after the client finished"
    );
    let saw = upstream
        .next_report(HANG)
        .expect("the upstream's side ends");
    assert!(saw.waited <= Duration::from_secs(4), "{saw:?}");
    disposed_lines(&server, "half_close_timeout", 1);
    let m = books_exact(&server);
    assert_eq!(m.disposed("half_close_timeout"), 1.0);
}

/// `--half-close-timeout 1s`, the upstream finishing first: it answers and sends its FIN
/// (passed on as `close_notify`); the client keeps sending a byte every 100 ms and never
/// finishes; ~1 s after its FIN the upstream sees its own end (the proxy's FIN) and the
/// connection is disposed as `half_close_timeout`.
#[test]
fn an_upstream_that_finished_first_gives_the_client_its_half_close_timeout() {
    let upstream = TestUpstream::start(|mut stream: TcpStream| {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf);
        stream.write_all(b"answer").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let fin_at = Instant::now();
        // The client's bytes keep coming until the proxy closes (EOF).
        while let Ok(1..) = stream.read(&mut buf) {}
        UpstreamSaw {
            waited: fin_at.elapsed(),
        }
    });
    let target = upstream.addr().to_string();
    let server = Tlsvisor::serve(&[
        "--protocol",
        "proxy",
        "--upstream",
        &target,
        "--half-close-timeout",
        "1s",
        "--idle-timeout",
        "30s",
    ]);
    let mut client = server.connect().unwrap();
    client.send(b"request").unwrap();
    let (answer, seen) = client.receive_until_close();
    assert_eq!(answer, b"answer");
    assert!(
        matches!(seen, CloseSeen::CloseNotifyThenEof),
        "the upstream's FIN reaches the client as close_notify: {seen:?}"
    );
    // The client's direction stays open: it keeps sending until the proxy is gone.
    let sending = std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < HANG && client.send(b".").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let saw = upstream
        .next_report(HANG)
        .expect("the upstream sees its end");
    eprintln!(
        "half-close (upstream first), 1 s: the upstream's side ended {:?} after its FIN",
        saw.waited
    );
    assert!(
        saw.waited >= Duration::from_millis(900) && saw.waited <= Duration::from_millis(3_000),
        "{saw:?}"
    );
    disposed_lines(&server, "half_close_timeout", 1);
    let m = books_exact(&server);
    assert_eq!(m.disposed("half_close_timeout"), 1.0);
    sending.join().unwrap();
}

// --- idle timeout: a byte either way -------------------------------------------------------

/// `--idle-timeout 1s`, a proxied client that only sends (to an upstream that reads and never
/// answers) for 3 s stays; then, silent both ways, it is closed ~1 s after its last byte with
/// `close_notify` and the reason `idle_timeout`.
#[test]
fn a_client_that_only_sends_is_not_idle() {
    let upstream = TestUpstream::start(|mut stream: TcpStream| {
        let mut buf = [0u8; 1024];
        while let Ok(1..) = stream.read(&mut buf) {}
    });
    let target = upstream.addr().to_string();
    let server = Tlsvisor::serve(&[
        "--protocol",
        "proxy",
        "--upstream",
        &target,
        "--idle-timeout",
        "1s",
    ]);
    let mut client = server.connect().unwrap();
    let started = Instant::now();
    let mut last_byte = started;
    while started.elapsed() < Duration::from_secs(3) {
        client.send(b"ping").expect("still open while it sends");
        last_byte = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(server.scrape().get("tlsvisor_connections_active"), 1.0);
    let seen = client.read_until_close();
    let quiet = last_byte.elapsed();
    eprintln!("idle 1 s, a client that only sends: kept 3 s, closed {quiet:?} after its last byte");
    assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    assert!(
        quiet >= Duration::from_millis(900) && quiet <= Duration::from_millis(3_000),
        "{quiet:?}"
    );
    disposed_lines(&server, "idle_timeout", 1);
    books_exact(&server);
}

/// `--idle-timeout 1s`, a proxied client that only receives (a subscriber): the upstream
/// sends a line every 200 ms for 3 s and the client, which sends nothing after its first
/// request, stays and gets every line; once the upstream goes quiet too, the connection is
/// closed ~1 s after the last line with `close_notify` and the reason `idle_timeout`.
#[test]
fn a_client_that_only_receives_is_not_idle() {
    const LINES: usize = 15;
    let upstream = TestUpstream::start(|mut stream: TcpStream| {
        let mut buf = [0u8; 64];
        let _ = stream.read(&mut buf);
        let mut quiet_from = Instant::now();
        for _ in 0..LINES {
            if stream.write_all(b"message\n").is_err() {
                break;
            }
            quiet_from = Instant::now();
            std::thread::sleep(Duration::from_millis(200));
        }
        // Silent both ways now; the proxy's close arrives as EOF.
        while let Ok(1..) = stream.read(&mut buf) {}
        quiet_from.elapsed()
    });
    let target = upstream.addr().to_string();
    let server = Tlsvisor::serve(&[
        "--protocol",
        "proxy",
        "--upstream",
        &target,
        "--idle-timeout",
        "1s",
    ]);
    let mut client = server.connect().unwrap();
    client.send(b"SUBSCRIBE news\r\n").unwrap();
    let (received, seen) = client.receive_until_close();
    let quiet = upstream
        .next_report(HANG)
        .expect("the upstream sees the end");
    eprintln!(
        "idle 1 s, a client that only receives: {} bytes over 3 s, closed {quiet:?} after \
         the last one",
        received.len()
    );
    assert_eq!(
        received.len(),
        LINES * b"message\n".len(),
        "every line arrived"
    );
    assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    assert!(
        quiet >= Duration::from_millis(900) && quiet <= Duration::from_millis(3_000),
        "{quiet:?}"
    );
    disposed_lines(&server, "idle_timeout", 1);
    books_exact(&server);
}

/// The same with real programs: `redis-cli SUBSCRIBE` through the proxy (over TLS: `redis-cli
/// --tls`) receives what a second `redis-cli PUBLISH`es straight to redis every 300 ms for
/// 3 s with `--idle-timeout 1s`, and is cut only once the publisher stops.
#[cfg(feature = "interop")]
mod interop {
    use super::*;
    use crate::common::redis::Redis;
    use std::process::{Command, Stdio};

    #[test]
    fn a_redis_subscriber_stays_while_messages_come_and_is_cut_when_they_stop() {
        let redis = Redis::start();
        let target = redis.upstream();
        let server = Tlsvisor::serve(&[
            "--protocol",
            "proxy",
            "--upstream",
            &target,
            "--idle-timeout",
            "1s",
        ]);
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt");
        let port = server.listen.port().to_string();
        let subscriber = Command::new("redis-cli")
            .args(["--tls", "--cacert", ca, "--sni", "localhost"])
            .args(["-h", "127.0.0.1", "-p", &port, "SUBSCRIBE", "news"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli is installed");
        // Subscribed once redis counts it.
        assert!(eventually(HANG, || redis.connected_clients() >= 2));
        let published_from = Instant::now();
        let (mut published, mut last_message) = (0, Instant::now());
        while published_from.elapsed() < Duration::from_secs(3) {
            let out = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &redis.addr().port().to_string()])
                .args(["PUBLISH", "news", &format!("message-{published}")])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "1",
                "one subscriber"
            );
            published += 1;
            last_message = Instant::now();
            std::thread::sleep(Duration::from_millis(300));
        }
        let output = subscriber.wait_with_output().unwrap();
        let quiet = last_message.elapsed();
        let text = String::from_utf8_lossy(&output.stdout);
        eprintln!(
            "idle 1 s, redis-cli SUBSCRIBE: {published} messages, cut {quiet:?} after the last"
        );
        for n in 0..published {
            assert!(text.contains(&format!("message-{n}")), "{text}");
        }
        // Cut once quiet both ways for the idle timeout (1 s), not before; late by a margin.
        assert!(
            quiet >= Duration::from_millis(900) && quiet <= Duration::from_secs(4),
            "{quiet:?}"
        );
        disposed_lines(&server, "idle_timeout", 1);
        books_exact(&server);
    }
}
