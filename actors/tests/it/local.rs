//! The testkit inside the caller's own actix system: a test server next to the application's
//! own actors, async clients, and a leak check scoped to that one server.

use std::time::Duration;

use actix::prelude::*;
use tlsvisor_actors::testing::{CloseSeen, TestServer};
use tlsvisor_actors::{DisposeReason, Echo};

/// A ceiling only a hang reaches.
const HANG: Duration = Duration::from_secs(20);

/// An application actor living in the same system as the server under test.
struct Counter(usize);

impl Actor for Counter {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "usize")]
struct Bump;

impl Handler<Bump> for Counter {
    type Result = usize;

    fn handle(&mut self, _msg: Bump, _ctx: &mut Self::Context) -> usize {
        self.0 += 1;
        self.0
    }
}

#[actix_rt::test]
async fn a_test_server_runs_in_the_callers_own_system() {
    let counter = Counter(0).start();
    let server = TestServer::builder().start_local(Echo).unwrap();
    let mut clients = Vec::new();
    for i in 0..10u8 {
        let mut client = server.connect().await.unwrap();
        assert_eq!(client.echo(&[i; 100]).await.unwrap(), vec![i; 100]);
        // The application's actor answers while the server's connections are live.
        assert_eq!(counter.send(Bump).await.unwrap(), i as usize + 1);
        clients.push(client);
    }
    server
        .wait_for("10 live", HANG, |s| s.ledger.active == 10)
        .await;
    assert_eq!(server.server_sockets().unwrap().established, 10);
    for client in clients {
        let seen = client.close().await;
        assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    }
    let snap = server
        .wait_for("all disposed", HANG, |s| {
            s.ledger.disposed_total() == 10 && s.ledger.active == 0
        })
        .await;
    assert_eq!(snap.ledger.disposed(DisposeReason::PeerEof), 10);
    server.assert_each_disposed_once();
    let sockets = server.server_sockets().unwrap();
    assert!(
        sockets.is_clean(),
        "nothing left open on its port: {sockets:?}"
    );
    let report = server.shutdown(Duration::from_secs(2)).await;
    assert_eq!(report.left_registered, 0);
}

#[actix_rt::test]
async fn the_async_client_sees_the_graceful_close_of_a_shutdown() {
    let server = TestServer::builder().start_local(Echo).unwrap();
    let mut client = server.connect().await.unwrap();
    assert_eq!(client.echo(b"hello").await.unwrap(), b"hello");
    server
        .wait_for("registered", HANG, |s| s.ledger.active == 1)
        .await;
    let handle = server.handle();
    let closing = actix_rt::spawn(async move { client.read_until_close().await });
    assert_eq!(
        handle
            .close_all(tlsvisor_actors::CloseMode::Graceful, HANG)
            .await,
        1
    );
    let seen = closing.await.unwrap();
    assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    server
        .wait_for("disposed", HANG, |s| s.ledger.active == 0)
        .await;
    assert_eq!(
        server.snapshot().ledger.disposed(DisposeReason::Shutdown),
        1
    );
    server.shutdown(Duration::from_secs(2)).await;
}

/// Found by the `admin_query` fuzz target (`POST /drain?period=18446744073709551615s`): a drain
/// whose period is too long to add to the clock panicked in its task ("overflow when adding
/// duration to instant"), so nothing was closed and the server stayed paused. Such a period
/// only means "close late": the drain waits, and the connection is still served.
#[actix_rt::test]
async fn a_drain_over_a_period_past_the_clocks_end_waits_instead_of_panicking() {
    let server = TestServer::builder().start_local(Echo).unwrap();
    let mut client = server.connect().await.unwrap();
    assert_eq!(client.echo(b"hello").await.unwrap(), b"hello");
    server
        .wait_for("registered", HANG, |s| s.ledger.active == 1)
        .await;
    let handle = server.handle();
    for period in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        let drain = actix_rt::spawn(handle.drain_accepting_for(Duration::ZERO, period));
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !drain.is_finished(),
            "the drain over {period:?} ended (or panicked) at once"
        );
        drain.abort();
        assert!(handle.resume());
    }
    assert_eq!(client.echo(b"still served").await.unwrap(), b"still served");
    assert_eq!(server.snapshot().ledger.active, 1);
    server.shutdown(Duration::from_secs(2)).await;
}
