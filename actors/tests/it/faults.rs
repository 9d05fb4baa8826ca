//! The named fault-injection points, each switched on for one server instance.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tlsvisor_actors::testing::DisposedVia;
use tlsvisor_actors::testing::{eventually, leak, CloseSeen, TestServer};
use tlsvisor_actors::{CloseMode, ConnId, DisposeReason, Echo, FaultPoint, RejectReason};

/// A ceiling only a hang reaches.
const HANG: Duration = Duration::from_secs(20);

fn only_reason(server: &TestServer) -> Vec<DisposeReason> {
    server
        .assert_each_disposed_once()
        .values()
        .map(|r| r.reason)
        .collect()
}

/// Garnet PR 1694's `DisposeCallsDisposeImplWithoutSaeaBackup`: connections registered and
/// never started must still leave the registry, and shutdown must not hang on them.
#[test]
fn registered_but_never_started_connections_leave_the_registry() {
    let server = TestServer::start(Echo);
    server.faults().enable(FaultPoint::AfterRegisterBeforeStart);
    let raw: Vec<_> = (0..3)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    let snap = server.wait_for("3 accepted, 0 active", HANG, |s| {
        s.ledger.accepted == 3 && s.ledger.active == 0
    });
    assert_eq!(snap.ledger.disposed(DisposeReason::StartFailed), 3);
    assert_eq!(only_reason(&server), vec![DisposeReason::StartFailed; 3]);

    server
        .faults()
        .disable(FaultPoint::AfterRegisterBeforeStart);
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"after").unwrap(), b"after");
    drop(client);

    let grace = Duration::from_secs(2);
    let started = Instant::now();
    let report = server.shutdown(grace);
    // Hung on the never-started connections, it would not return at all.
    assert!(
        started.elapsed() < HANG,
        "shutdown overran its deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(report.left_registered, 0);
    drop(raw);
}

#[test]
fn injected_handshake_failure_is_handshake_failed() {
    let server = TestServer::start(Echo);
    server.faults().enable(FaultPoint::DuringHandshake);
    assert!(server.connect().is_err());
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), vec![DisposeReason::HandshakeFailed]);
    assert_eq!(server.snapshot().handshakes_in_progress, 0);
}

#[test]
fn injected_reader_failure_is_reader_error() {
    let server = TestServer::start(Echo);
    server.faults().enable(FaultPoint::ReaderError);
    let mut client = server.connect().unwrap();
    let _ = client.read_until_close();
    server.wait_disposed(1, HANG);
    assert_eq!(only_reason(&server), vec![DisposeReason::ReaderError]);
}

#[test]
fn session_panic_closes_only_that_connection() {
    let server = TestServer::start(Echo);
    let mut bystander = server.connect().unwrap();
    assert_eq!(bystander.echo(b"before").unwrap(), b"before");

    server.faults().enable(FaultPoint::SessionPanic);
    let mut victim = server.connect().unwrap();
    victim.send(b"boom").unwrap();
    match victim.read_until_close() {
        CloseSeen::CloseNotifyThenEof => {}
        other => panic!("a panicked session still closes gracefully, got {other:?}"),
    }
    drop(victim);
    server.wait_for("the victim disposed", HANG, |s| {
        s.ledger.disposed(DisposeReason::SessionPanic) == 1
    });
    server.faults().disable(FaultPoint::SessionPanic);

    assert_eq!(bystander.echo(b"after").unwrap(), b"after");
    drop(bystander);
    server.wait_idle(HANG);
    let mut reasons = only_reason(&server);
    reasons.sort_by_key(|r| r.as_str());
    assert_eq!(
        reasons,
        vec![DisposeReason::PeerEof, DisposeReason::SessionPanic]
    );
}

/// The stop hook skipped (as actix would skip it in a broken state): the registration's Drop
/// disposes the connection as a counted fallback, and the reader, parked in a read on a client
/// that stays connected and silent, stops with the connection that owns its handle: the client
/// sees its connection closed and nothing is left open on the server's port.
#[test]
fn without_its_stop_hook_a_connection_is_still_disposed_and_its_socket_closed() {
    let server = TestServer::start(Echo);
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"before").unwrap(), b"before");
    server.faults().enable(FaultPoint::SkipStopHook);
    assert!(server.kill(ConnId(0), CloseMode::Force));
    let snap = server.wait_disposed(1, HANG);
    assert_eq!(
        snap.ledger.fallbacks, 1,
        "disposed by the registration's Drop"
    );
    assert_eq!(snap.ledger.disposed(DisposeReason::Shutdown), 1);
    // The client only reads: only the server closing the socket can end this.
    match client.read_until_close() {
        CloseSeen::EofWithoutCloseNotify | CloseSeen::Error(_) => {}
        other => panic!("a forced close without the hook: {other:?}"),
    }
    let port = server.addr().port();
    assert!(
        eventually(HANG, || {
            leak::sockets_on_local_port(port, leak::TcpState::Established).unwrap() == 0
                && leak::close_wait_on_port(port).unwrap() == 0
        }),
        "the server's socket is closed"
    );
    server.faults().disable(FaultPoint::SkipStopHook);
    let records = server.disposals();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].via, DisposedVia::Fallback);
}

#[test]
fn a_panic_in_the_connection_actor_still_disposes_once() {
    let server = TestServer::start(Echo);
    server.faults().enable(FaultPoint::ConnectionPanic);
    let mut victim = server.connect().unwrap();
    victim.send(b"boom").unwrap();
    let _ = victim.read_until_close();
    drop(victim);
    let snap = server.wait_disposed(1, HANG);
    server.faults().disable(FaultPoint::ConnectionPanic);
    assert_eq!(snap.ledger.disposed(DisposeReason::SessionPanic), 1);
    assert_eq!(snap.ledger.duplicates, 0);
    // Whichever path ran (actix's hook while dropping, or the guard), it ran once.
    let records = server.disposals();
    assert_eq!(records.len(), 1, "{records:?}");

    let mut after = server.connect().unwrap();
    assert_eq!(after.echo(b"worker survived").unwrap(), b"worker survived");
}

/// `accept(2)` failing with `EMFILE` (the `accept_error` point produces the real error and
/// leaves the client in the backlog): the acceptor sheds the waiting client on the spare
/// descriptor (a prompt close, not a hang), backs off, and accepts again.
#[test]
fn emfile_at_accept_sheds_the_waiting_client_and_accepting_resumes() {
    // One worker: every injected EMFILE meets exactly one waiting client.
    let server = TestServer::builder().config(|c| c.workers = 1).start(Echo);
    server.faults().enable_times(FaultPoint::AcceptError, 3);
    for attempt in 0..3 {
        let shed = server
            .connect()
            .err()
            .unwrap_or_else(|| panic!("client {attempt} is shed"));
        // Left hanging, the client would fail on its own I/O timeout instead.
        assert!(
            !matches!(
                shed.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "a shed client is closed at once, not left hanging: {shed}"
        );
        // The shedding is over (the error is counted after it) before the next client comes:
        // a client arriving during it would be shed with this one.
        server.wait_for("the failed accept counted", HANG, |s| {
            s.accept_errors == attempt + 1
        });
    }
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"after").unwrap(), b"after");
    let snap = server.snapshot();
    assert_eq!(snap.accept_errors, 3);
    assert_eq!(
        snap.rejected(RejectReason::FdExhausted),
        3,
        "three shed as fd_exhausted"
    );
    assert_eq!(snap.rejected(RejectReason::PerIpLimit), 0);
    assert_eq!(snap.ledger.accepted, 1, "a shed client is never registered");
    assert_eq!(snap.worker_accepted, vec![1]);
    assert_eq!(snap.acceptors_paused, 0);
}

/// With two workers, an EMFILE episode on both leaves each of them accepting afterwards.
#[test]
fn after_an_emfile_episode_every_worker_accepts() {
    let server = TestServer::builder().config(|c| c.workers = 2).start(Echo);
    server.faults().enable_times(FaultPoint::AcceptError, 8);
    let mut shed = 0;
    let mut clients = Vec::new();
    // Each worker woken by a client consumes one injected failure; some meet no client.
    while clients.len() < 200 {
        match server.connect() {
            Ok(mut client) => {
                assert_eq!(client.echo(b"x").unwrap(), b"x");
                clients.push(client);
                let by_worker = server.snapshot().worker_accepted;
                if by_worker.iter().all(|n| *n > 0) {
                    break;
                }
            }
            Err(_) => shed += 1,
        }
    }
    let snap = server.wait_for("the acceptors polling again", HANG, |s| {
        s.acceptors_paused == 0
    });
    assert!(shed >= 1, "the episode shed clients");
    assert_eq!(
        snap.rejected(RejectReason::FdExhausted),
        shed,
        "each shed client counted as fd_exhausted"
    );
    assert!(
        snap.worker_accepted.iter().all(|n| *n > 0),
        "every worker accepts after the episode: {:?}",
        snap.worker_accepted
    );
    drop(clients);
    server.wait_idle(HANG);
    server.assert_each_disposed_once();
}
