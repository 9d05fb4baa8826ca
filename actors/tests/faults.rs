//! The named fault-injection points, each switched on for one server instance.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tlsvisor_actors::testing::{CloseSeen, TestServer};
use tlsvisor_actors::{DisposeReason, Echo, FaultPoint};

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
    assert_eq!(snap.ledger.disposed_for(DisposeReason::StartFailed), 3);
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
    assert!(
        started.elapsed() < grace + Duration::from_secs(3),
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
        s.ledger.disposed_for(DisposeReason::SessionPanic) == 1
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
    assert_eq!(snap.ledger.disposed_for(DisposeReason::SessionPanic), 1);
    assert_eq!(snap.ledger.duplicates, 0);
    // Whichever path ran (actix's hook while dropping, or the guard), it ran once.
    let records = server.disposals();
    assert_eq!(records.len(), 1, "{records:?}");

    let mut after = server.connect().unwrap();
    assert_eq!(after.echo(b"worker survived").unwrap(), b"worker survived");
}

#[test]
fn accept_errors_are_counted_and_accepting_goes_on() {
    let server = TestServer::start(Echo);
    server.faults().enable(FaultPoint::AcceptError);
    assert!(server.connect().is_err());
    server.wait_for("an accept error", HANG, |s| s.accept_errors >= 1);
    server.faults().disable(FaultPoint::AcceptError);
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"ok").unwrap(), b"ok");
    assert_eq!(server.snapshot().ledger.accepted, 1);
}
