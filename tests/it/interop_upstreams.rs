//! Several upstreams and a unix-socket upstream, with real `redis-server`s behind the binary:
//! least-connections spreading, an upstream killed and brought back, a unix socket, every
//! upstream down. Run with `--features interop` (`.ci/run` installs redis).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::common;
use crate::common::redis::{Redis, RedisAddr};
use crate::common::{Metrics, Tlsvisor, HANG};
use tlsvisor_actors::testing::{client_config, eventually, CloseSeen, TlsClient};

/// A client of the proxy that has had its `PING` answered (so its upstream is connected).
fn pinged_client(server: &Tlsvisor) -> std::io::Result<TlsClient> {
    let mut client = server.connect()?;
    client.tcp().set_read_timeout(Some(HANG))?;
    client.send(b"PING\r\n")?;
    let answer = client.receive(7)?;
    if answer != b"+PONG\r\n" {
        return Err(std::io::Error::other(format!("answer {answer:?}")));
    }
    Ok(client)
}

/// One upstream's sample of a per-upstream family.
fn of(metrics: &Metrics, family: &str, upstream: &str) -> f64 {
    metrics.get(&format!("{family}{{upstream=\"{upstream}\"}}"))
}

fn serve_proxy(upstreams: &[String]) -> Tlsvisor {
    let mut args = vec!["--protocol", "proxy"];
    for upstream in upstreams {
        args.extend(["--upstream", upstream.as_str()]);
    }
    Tlsvisor::serve(&args)
}

#[test]
fn clients_spread_evenly_over_two_redis_upstreams() {
    let (a, b) = (Redis::start(), Redis::start());
    let server = serve_proxy(&[a.upstream(), b.upstream()]);
    let clients: Vec<TlsClient> = (0..20).map(|_| pinged_client(&server).unwrap()).collect();

    let m = server.scrape();
    for redis in [&a, &b] {
        let upstream = redis.upstream();
        assert_eq!(
            of(&m, "tlsvisor_upstream_connections_active", &upstream),
            10.0
        );
        assert_eq!(
            of(&m, "tlsvisor_upstream_connections_total", &upstream),
            10.0
        );
        assert_eq!(of(&m, "tlsvisor_upstream_up", &upstream), 1.0);
        // Redis sees the same: ten proxied clients and this query.
        assert_eq!(redis.connected_clients(), 11, "{upstream}");
        let sent = format!(
            "tlsvisor_upstream_bytes_total{{upstream=\"{upstream}\",direction=\"client_to_upstream\"}}"
        );
        assert_eq!(m.get(&sent), 10.0 * 6.0, "10 PINGs of 6 bytes");
    }
    drop(clients);
    assert!(eventually(HANG, || server
        .scrape()
        .sum("tlsvisor_upstream_connections_active")
        == 0.0));
}

/// When a client started, and whether its `PING` was answered.
type ClientRun = (Instant, Result<(), String>);

/// Client loops on `threads` threads, each connecting, `PING`ing and closing until `stop`;
/// every client's start and whether it was answered.
fn client_loops(
    server: &Tlsvisor,
    threads: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<ClientRun>>> {
    (0..threads)
        .map(|_| {
            let (listen, stop) = (server.listen, Arc::clone(stop));
            let config = client_config(&common::dev_ca()).unwrap();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) && seen.len() < 100_000 {
                    let started = Instant::now();
                    let answered = TlsClient::connect(listen, Arc::clone(&config))
                        .and_then(|mut client| {
                            client.tcp().set_read_timeout(Some(HANG))?;
                            client.send(b"PING\r\n")?;
                            client.receive(7)
                        })
                        .map_err(|e| e.to_string())
                        .and_then(|answer| match &answer[..] {
                            b"+PONG\r\n" => Ok(()),
                            _ => Err(format!("answer {answer:?}")),
                        });
                    seen.push((started, answered));
                }
                seen
            })
        })
        .collect()
}

#[test]
fn a_killed_upstream_is_skipped_without_failing_a_client_and_used_again_once_back() {
    let (a, mut b) = (Redis::start(), Redis::start());
    let (up_a, up_b) = (a.upstream(), b.upstream());
    let server = serve_proxy(&[up_a.clone(), up_b.clone()]);
    let stop = Arc::new(AtomicBool::new(false));
    let loops = client_loops(&server, 4, &stop);
    // The loops are under way: both upstreams have taken clients.
    let opened = |m: &Metrics, up: &str| of(m, "tlsvisor_upstream_connections_total", up);
    assert!(eventually(HANG, || {
        let m = server.scrape();
        opened(&m, &up_a) >= 10.0 && opened(&m, &up_b) >= 10.0
    }));

    // SIGKILL mid-run: once it is gone, every client that starts is served, by the other
    // upstream (the first sent to the dead one is retried there). Clients that were talking to
    // it as it died may fail: their upstream vanished.
    b.kill();
    let killed_at = Instant::now();
    assert!(eventually(HANG, || of(
        &server.scrape(),
        "tlsvisor_upstream_up",
        &up_b
    ) == 0.0));
    // Clients go on being served, all by the upstream left.
    let opened_a = opened(&server.scrape(), &up_a);
    assert!(eventually(HANG, || opened(&server.scrape(), &up_a) >= opened_a + 20.0));
    let m = server.scrape();
    assert_eq!(of(&m, "tlsvisor_upstream_up", &up_a), 1.0);
    assert_eq!(m.disposed("upstream_connect_failed"), 0.0);

    // Back on the same port: once its backoff (1 s) is over, a client probes it and it is up.
    let _b = Redis::start_at(RedisAddr::Tcp(b.addr()));
    let restarted_at = Instant::now();
    assert!(
        eventually(HANG, || of(&server.scrape(), "tlsvisor_upstream_up", &up_b)
            == 1.0),
        "the restarted upstream never came back up"
    );
    let back_after = restarted_at.elapsed();
    let opened_b = of(
        &server.scrape(),
        "tlsvisor_upstream_connections_total",
        &up_b,
    );
    // And it takes new clients again.
    assert!(eventually(HANG, || of(
        &server.scrape(),
        "tlsvisor_upstream_connections_total",
        &up_b
    ) >= opened_b + 20.0));
    stop.store(true, Ordering::Relaxed);
    let clients: Vec<ClientRun> = loops.into_iter().flat_map(|l| l.join().unwrap()).collect();

    let after_kill: Vec<_> = clients.iter().filter(|(t, _)| *t >= killed_at).collect();
    let failed: Vec<_> = after_kill.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} clients failed: {:?}",
        failed.len(),
        after_kill.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(
        after_kill.len() >= 50,
        "only {} clients after the kill",
        after_kill.len()
    );
    let m = server.scrape();
    assert_eq!(m.disposed("upstream_connect_failed"), 0.0);
    assert!(of(&m, "tlsvisor_upstream_connect_failures_total", &up_b) >= 1.0);
    assert_eq!(
        of(&m, "tlsvisor_upstream_connect_failures_total", &up_a),
        0.0
    );
    // The log is written asynchronously: the up line may trail the gauge.
    assert!(eventually(HANG, || !server
        .logs_with("upstream up")
        .is_empty()));
    assert_eq!(server.logs_with("upstream down").len(), 1);
    assert_eq!(server.logs_with("upstream up").len(), 1);
    eprintln!(
        "{} clients after the kill, none failed; {} before it; up again {back_after:?} after the restart",
        after_kill.len(),
        clients.len() - after_kill.len()
    );

    // Held connections spread over both again (once the loops' connections are gone).
    assert!(eventually(HANG, || server
        .scrape()
        .sum("tlsvisor_upstream_connections_active")
        == 0.0));
    let held: Vec<TlsClient> = (0..10).map(|_| pinged_client(&server).unwrap()).collect();
    let m = server.scrape();
    assert_eq!(of(&m, "tlsvisor_upstream_connections_active", &up_b), 5.0);
    assert_eq!(of(&m, "tlsvisor_upstream_connections_active", &up_a), 5.0);
    drop(held);
}

#[test]
fn a_unix_socket_redis_is_served_through_upstream_unix() {
    let dir = std::env::temp_dir().join(format!("tlsvisor-unix-upstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Redis::start_unix(&dir.join("redis.sock"));
    let upstream = redis.upstream();
    let server = serve_proxy(std::slice::from_ref(&upstream));

    let mut client = pinged_client(&server).unwrap();
    client.send(b"SET greeting hello\r\n").unwrap();
    assert_eq!(client.receive(5).unwrap(), b"+OK\r\n");
    client.send(b"GET greeting\r\n").unwrap();
    assert_eq!(client.receive(11).unwrap(), b"$5\r\nhello\r\n");
    let m = server.scrape();
    assert_eq!(
        of(&m, "tlsvisor_upstream_connections_active", &upstream),
        1.0
    );
    assert_eq!(redis.connected_clients(), 2);

    assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    assert!(eventually(HANG, || redis.connected_clients() == 1));
    assert!(eventually(HANG, || server.scrape().disposed("peer_eof") == 1.0));
    drop(redis);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_upstream_down_gives_clients_upstream_connect_failed_promptly_and_leaks_nothing() {
    let (mut a, mut b) = (Redis::start(), Redis::start());
    let upstreams = [a.upstream(), b.upstream()];
    let server = serve_proxy(&upstreams);
    pinged_client(&server).unwrap();
    let fds_before = server.scrape().get("process_open_fds");
    a.kill();
    b.kill();

    const CLIENTS: usize = 10;
    for i in 0..CLIENTS {
        let started = Instant::now();
        let mut client = server.connect().unwrap();
        client.tcp().set_read_timeout(Some(HANG)).unwrap();
        match client.read_until_close() {
            CloseSeen::CloseNotifyThenEof => {}
            other => panic!("client {i}: expected close_notify then EOF, got {other:?}"),
        }
        eprintln!("client {i}: closed after {:?}", started.elapsed());
    }
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("upstream_connect_failed")
        == CLIENTS as f64));
    // Refused connects fail at once: both attempts of each client were refused, neither waited
    // out the connect timeout (5 s, "no connection within"). The warning is written once a
    // second at most, with how many were left out: never more lines than clients, and the
    // lines account for no more failures than there were.
    assert!(eventually(HANG, || !server
        .logs_with("upstream connect failed")
        .is_empty()));
    let lines = server.logs_with("upstream connect failed");
    let accounted: u64 = lines
        .iter()
        .map(|l| 1 + l["suppressed"].as_u64().unwrap())
        .sum();
    assert!(accounted <= CLIENTS as u64, "{lines:?}");
    for line in lines {
        let error = line["error"].as_str().unwrap().to_lowercase();
        assert_eq!(error.matches("refused").count(), 2, "{line}");
        assert!(!error.contains("no connection within"), "{line}");
    }
    let m = server.scrape();
    assert_eq!(m.get("tlsvisor_connections_active"), 0.0);
    assert_eq!(m.get("tlsvisor_upstream_connections_open"), 0.0);
    for upstream in &upstreams {
        assert_eq!(of(&m, "tlsvisor_upstream_up", upstream), 0.0);
        assert_eq!(
            of(&m, "tlsvisor_upstream_connections_active", upstream),
            0.0
        );
    }
    // Each client was tried on both: the choice, then the retry on the other.
    let failures = m.sum("tlsvisor_upstream_connect_failures_total");
    assert_eq!(failures, 2.0 * CLIENTS as f64);
    assert!(
        eventually(HANG, || server.scrape().get("process_open_fds")
            <= fds_before),
        "descriptors leaked"
    );
    server.logged("upstream down", 2);
}
