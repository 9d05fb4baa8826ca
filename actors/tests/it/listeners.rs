//! One server, several listening sockets: an IPv4 address, an IPv6 one (or a second IPv4
//! port where `::1` cannot be bound), and a socket handed over already listening. They share
//! one set of workers, registries, admission limits and books.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tlsvisor_actors::testing::{client_config, eventually, AsyncTlsClient, CloseSeen};
use tlsvisor_actors::{DevCerts, Echo, Server, ServerConfig};

use crate::support;

/// A ceiling only a hang reaches.
const HANG: Duration = Duration::from_secs(20);

/// `[::1]:0` where the host has IPv6 loopback, else a second IPv4 port (said on stderr).
fn second_address() -> SocketAddr {
    match TcpListener::bind("[::1]:0") {
        Ok(_) => "[::1]:0".parse().unwrap(),
        Err(e) => {
            eprintln!("::1 cannot be bound ({e}); using a second IPv4 port instead");
            "127.0.0.1:0".parse().unwrap()
        }
    }
}

#[actix_rt::test]
async fn several_listeners_share_the_workers_the_registries_and_the_limits() {
    let certs = DevCerts::generate().unwrap();
    let mut config = ServerConfig::default();
    config.workers = 2;
    // Three connections in all, whatever the listener: the limit is the server's.
    config.max_connections = 3;
    let handed_over = TcpListener::bind("127.0.0.1:0").unwrap();
    let handed_addr = handed_over.local_addr().unwrap();
    let server = Server::builder(config, certs.server_tls().unwrap(), Echo)
        .listen(([127, 0, 0, 1], 0).into())
        .listen(second_address())
        .listener(handed_over.try_clone().unwrap())
        .start()
        .unwrap();
    let addrs = server.local_addrs().to_vec();
    assert_eq!(addrs.len(), 3);
    assert_eq!(server.local_addr(), addrs[0]);
    assert_eq!(
        addrs[2], handed_addr,
        "the handed-over socket keeps its address"
    );
    assert!(addrs.iter().all(|a| a.port() != 0), "{addrs:?}");
    let client = client_config(certs.ca_cert_pem.as_bytes()).unwrap();

    // One client on each listener: all served, all in the one registry and ledger.
    let mut clients = Vec::new();
    for (n, addr) in addrs.iter().enumerate() {
        let mut c = AsyncTlsClient::connect(*addr, client.clone())
            .await
            .unwrap();
        let payload = format!("via listener {n}");
        assert_eq!(
            c.echo(payload.as_bytes()).await.unwrap(),
            payload.as_bytes()
        );
        clients.push(c);
    }
    assert_eq!(server.live_connections().await.len(), 3);
    let ledger = server.stats().ledger();
    assert_eq!((ledger.accepted, ledger.active), (3, 3));

    // At the limit a fourth client, on the first listener, waits in the backlog...
    let waiting = {
        let (addr, client) = (addrs[0], client.clone());
        actix_rt::spawn(async move {
            let mut c = AsyncTlsClient::connect(addr, client).await?;
            c.echo(b"fourth").await?;
            Ok::<_, std::io::Error>(c)
        })
    };
    // It is in the first listener's accept queue: not accepted, so not served.
    support::accept_queue_reaches(addrs[0].port(), 1, HANG).await;
    assert!(
        !waiting.is_finished(),
        "over max_connections: not served yet"
    );
    assert_eq!(server.stats().ledger().accepted, 3);
    // ...and the slot a client of *another* listener frees is the one it gets.
    let second = clients.remove(1);
    assert!(matches!(
        second.close().await,
        CloseSeen::CloseNotifyThenEof
    ));
    let fourth = tokio::time::timeout(HANG, waiting)
        .await
        .expect("the waiting client is served once a slot frees")
        .unwrap()
        .expect("its echo");
    clients.push(fourth);
    let ledger = server.stats().ledger();
    assert_eq!(ledger.accepted, 4);
    assert_eq!(ledger.accepted, ledger.active + ledger.disposed_total());
    assert_eq!(server.live_connections().await.len(), 3);

    // Shutdown closes every connection, on every listener, and stops every bound listener;
    // the handed-over socket stays listening for whoever gave it.
    let report = server.shutdown(Duration::from_secs(2)).await;
    assert_eq!(report.left_registered, 0);
    assert_eq!(report.asked_to_close, 3);
    for mut c in clients {
        assert!(matches!(
            c.read_until_close().await,
            CloseSeen::CloseNotifyThenEof
        ));
    }
    for addr in &addrs[..2] {
        assert!(
            eventually(HANG, || TcpStream::connect(addr).is_err()),
            "{addr} no longer listens"
        );
    }
    assert!(
        TcpStream::connect(handed_addr).is_ok(),
        "the shared socket still listens"
    );
}

#[actix_rt::test]
async fn a_bind_failure_names_the_address_and_leaves_nothing_listening() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let certs = DevCerts::generate().unwrap();
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let first = free.local_addr().unwrap();
    drop(free);
    let tls = certs.server_tls().unwrap();
    let error = match Server::builder(ServerConfig::default(), tls, Echo)
        .listen(first)
        .listen(taken_addr)
        .start()
    {
        Ok(_) => panic!("the second address is taken"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains(&taken_addr.to_string()), "{error}");
    assert!(
        TcpStream::connect(first).is_err(),
        "the first socket was closed again"
    );
}

/// At `max_connections = 1` the one free slot must go to whichever listener a client waits
/// on: a quiet listener must not sit on it while clients queue on a busy one. And a pause
/// holds every listener.
#[actix_rt::test]
async fn at_the_limit_a_quiet_listener_does_not_keep_the_slot_from_a_busy_one() {
    let certs = DevCerts::generate().unwrap();
    let mut config = ServerConfig::default();
    config.workers = 1;
    config.max_connections = 1;
    let server = Server::builder(config, certs.server_tls().unwrap(), Echo)
        .listen(([127, 0, 0, 1], 0).into())
        .listen(([127, 0, 0, 1], 0).into())
        .start()
        .unwrap();
    let (busy, quiet) = (server.local_addrs()[0], server.local_addrs()[1]);
    let client = client_config(certs.ca_cert_pem.as_bytes()).unwrap();
    // Each client is served only once the one before it is disposed and its slot is free.
    for (round, addr) in [busy, busy, busy, busy, quiet, busy]
        .into_iter()
        .enumerate()
    {
        // Kept from its slot by a quiet listener, a client would wait for ever: HANG tells.
        let served = tokio::time::timeout(HANG, async {
            let mut c = AsyncTlsClient::connect(addr, client.clone()).await?;
            c.echo(b"one at a time").await?;
            Ok::<_, std::io::Error>(c.close().await)
        })
        .await;
        let seen = served
            .unwrap_or_else(|_| panic!("round {round} on {addr}: not served within {HANG:?}"))
            .unwrap();
        assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    }
    assert_eq!(server.stats().ledger().accepted, 6);

    // Pause covers every listener: a client of the second one waits until resume.
    let handle = server.handle();
    assert!(handle.pause());
    let waiting = actix_rt::spawn(async move {
        let mut c = AsyncTlsClient::connect(quiet, client).await?;
        c.echo(b"after resume").await
    });
    support::accept_queue_reaches(quiet.port(), 1, HANG).await;
    assert!(!waiting.is_finished(), "paused: not served");
    assert_eq!(server.stats().ledger().accepted, 6);
    assert!(handle.resume());
    let back = tokio::time::timeout(HANG, waiting).await.unwrap().unwrap();
    assert_eq!(back.unwrap(), b"after resume");
    server.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn the_test_harness_serves_several_addresses_with_one_ledger() {
    let server = tlsvisor_actors::testing::TestServer::builder()
        .also_listen(second_address())
        .start(Echo);
    let addrs = server.addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0], server.addr());
    for addr in &addrs {
        let mut client = server.connect_to(*addr).unwrap();
        assert_eq!(client.echo(b"ping").unwrap(), b"ping");
        assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    }
    let snapshot = server.wait_disposed(2, HANG);
    assert_eq!(snapshot.ledger.accepted, 2);
    assert_eq!(server.assert_each_disposed_once().len(), 2);
}

/// Issue 17, finding 2: a drain over a period the clock cannot reach, with a live connection,
/// neither panics (a close time past `Instant`'s range overflowed) nor closes anything; a
/// `resume` ends it at once.
#[actix_rt::test]
async fn a_drain_over_any_period_never_panics_and_resume_ends_it() {
    let certs = DevCerts::generate().unwrap();
    let mut config = ServerConfig::default();
    config.workers = 1;
    let server = Server::builder(config, certs.server_tls().unwrap(), Echo)
        .listen(([127, 0, 0, 1], 0).into())
        .start()
        .unwrap();
    let client = client_config(certs.ca_cert_pem.as_bytes()).unwrap();
    let mut c = AsyncTlsClient::connect(server.local_addrs()[0], client)
        .await
        .unwrap();
    assert_eq!(c.echo(b"live").await.unwrap(), b"live");
    let handle = server.handle();
    for period in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        let draining = actix_rt::spawn(handle.drain(period));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !draining.is_finished(),
            "{period:?}: still waiting to close"
        );
        assert_eq!(c.echo(b"still served").await.unwrap(), b"still served");
        assert!(handle.resume());
        let asked = tokio::time::timeout(HANG, draining).await.unwrap().unwrap();
        assert_eq!(asked, 0, "{period:?}: resume ended it before any close");
    }
    let accept_for = actix_rt::spawn(handle.drain_accepting_for(Duration::MAX, Duration::MAX));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Still accepting (not paused yet): `resume` ends the drain all the same.
    handle.resume();
    let asked = tokio::time::timeout(HANG, accept_for)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(asked, 0);
    server.shutdown(Duration::from_secs(1)).await;
}
