//! Each way a connection ends, over real sockets and real TLS, asserting its disposal reason and
//! that every accepted id is disposed exactly once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tlsvisor_actors::testing::{eventually, leak, CloseSeen, TestServer, TlsClient};
use tlsvisor_actors::{
    AsyncReply, CloseMode, ConnId, ConnInfo, DisposeReason, Echo, Flow, Protocol, Session,
    SessionError,
};

use crate::support;

/// A ceiling only a hang reaches.
const HANG: Duration = Duration::from_secs(20);

fn reasons(server: &TestServer) -> Vec<DisposeReason> {
    server
        .assert_each_disposed_once()
        .values()
        .map(|r| r.reason)
        .collect()
}

#[test]
fn garnet_parity_abrupt_client_drops_leave_the_registry() {
    let server = TestServer::start(Echo);
    let mut clients: Vec<_> = (0..5).map(|_| server.connect().unwrap()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let msg = format!("hello {i}");
        assert_eq!(client.echo(msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    server.wait_for("5 active", HANG, |s| s.ledger.active == 5);
    let before = server.snapshot().ledger.disposed_total();

    for client in clients {
        client.drop_abruptly();
    }
    let after = server.wait_idle(HANG);
    assert_eq!(after.ledger.disposed_total(), before + 5);

    let mut fresh = server.connect().unwrap();
    assert_eq!(fresh.echo(b"still serving").unwrap(), b"still serving");
    drop(fresh);
    server.wait_idle(HANG);
    assert!(reasons(&server)
        .iter()
        .all(|r| *r == DisposeReason::PeerEof));
    assert_eq!(leak::close_wait_on_port(server.addr().port()).unwrap(), 0);
}

#[test]
fn clean_close_is_peer_eof_and_the_client_sees_close_notify() {
    let server = TestServer::start(Echo);
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"ping").unwrap(), b"ping");
    match client.close() {
        CloseSeen::CloseNotifyThenEof => {}
        other => panic!("expected close_notify then EOF, got {other:?}"),
    }
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::PeerEof]);
}

#[test]
fn eof_without_close_notify_is_peer_eof() {
    let server = TestServer::start(Echo);
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"ping").unwrap(), b"ping");
    client.tcp().shutdown(std::net::Shutdown::Write).unwrap();
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::PeerEof]);
    assert_eq!(leak::close_wait_on_port(server.addr().port()).unwrap(), 0);
}

#[test]
fn bytes_sent_before_close_are_all_echoed() {
    let server = TestServer::start(Echo);
    let mut client = server.connect().unwrap();
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    client.send(&payload).unwrap();
    assert_eq!(client.receive(payload.len()).unwrap(), payload);
    assert!(matches!(client.close(), CloseSeen::CloseNotifyThenEof));
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::PeerEof]);
}

/// A bare FIN (no `close_notify`) may be a client that died, or one that half-closed and still
/// reads: the close must not skip what such a client can still read. Everything it sent before
/// is echoed to it, then `close_notify` and a FIN.
#[test]
fn a_client_half_closed_with_a_bare_fin_still_gets_every_byte_and_close_notify() {
    let server = TestServer::start(Echo);
    let mut client = server.connect().unwrap();
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    client.send(&payload).unwrap();
    client.tcp().shutdown(std::net::Shutdown::Write).unwrap();
    let (echoed, close) = client.receive_until_close();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the echo differs from what was sent");
    assert!(matches!(close, CloseSeen::CloseNotifyThenEof), "{close:?}");
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::PeerEof]);
}

#[test]
fn garbage_instead_of_client_hello_is_handshake_failed() {
    let server = TestServer::start(Echo);
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(HANG)).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The server answers with an alert or nothing, then closes: the read ends.
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::HandshakeFailed]);
    assert_eq!(server.snapshot().handshakes_in_progress, 0);
}

#[test]
fn corrupted_record_mid_stream_is_reader_error() {
    let server = TestServer::start(Echo);
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"before").unwrap(), b"before");
    // An application-data record whose ciphertext is noise: decryption must fail.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x30];
    record.extend((0..0x30).map(|i| (i * 37 + 11) as u8));
    client
        .tcp()
        .try_clone()
        .unwrap()
        .write_all(&record)
        .unwrap();
    assert!(!matches!(
        client.read_until_close(),
        CloseSeen::CloseNotifyThenEof
    ));
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::ReaderError]);
}

#[test]
fn silent_client_is_handshake_timeout() {
    let server = TestServer::builder()
        .config(|c| c.handshake_timeout = Duration::from_millis(300))
        .start(Echo);
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(HANG)).unwrap();
    server.wait_for("the handshake to start", HANG, |s| {
        s.handshakes_in_progress == 1
    });
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::HandshakeTimeout]);
    assert_eq!(server.snapshot().handshakes_in_progress, 0);
}

#[test]
fn idle_client_is_closed_gracefully_with_idle_timeout() {
    let server = TestServer::builder()
        .config(|c| c.idle_timeout = Some(Duration::from_millis(300)))
        .start(Echo);
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"once").unwrap(), b"once");
    match client.read_until_close() {
        CloseSeen::CloseNotifyThenEof => {}
        other => panic!("expected close_notify then EOF, got {other:?}"),
    }
    drop(client);
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::IdleTimeout]);
}

#[test]
fn shutdown_closes_live_clients_with_close_notify_not_reset() {
    let server = TestServer::start(Echo);
    let port = server.addr().port();
    let mut clients: Vec<_> = (0..5).map(|_| server.connect().unwrap()).collect();
    for client in &mut clients {
        assert_eq!(client.echo(b"live").unwrap(), b"live");
    }
    server.wait_for("5 active", HANG, |s| s.ledger.active == 5);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| std::thread::spawn(move || client.read_until_close()))
        .collect();

    let started = Instant::now();
    let report = server.shutdown(Duration::from_secs(5));
    for reader in readers {
        match reader.join().unwrap() {
            CloseSeen::CloseNotifyThenEof => {}
            other => panic!("expected close_notify then EOF, got {other:?}"),
        }
    }
    assert_eq!(report.asked_to_close, 5);
    assert_eq!(report.forced, 0);
    assert_eq!(report.left_registered, 0);
    assert!(started.elapsed() < HANG);
    // The port is free again once shutdown is done.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port freed by shutdown");
}

#[test]
fn shutdown_forces_clients_that_never_finish_within_grace() {
    let server = TestServer::builder()
        .config(|c| c.close_timeout = Duration::from_secs(30))
        .start(Echo);
    // Clients that complete the handshake and then never read nor close.
    let clients: Vec<_> = (0..3).map(|_| server.connect().unwrap()).collect();
    server.wait_for("3 open", HANG, |s| {
        s.ledger.active == 3 && s.handshakes_in_progress == 0
    });
    let started = Instant::now();
    let report = server.shutdown(Duration::from_millis(300));
    let took = started.elapsed();
    assert_eq!(report.forced, 3, "{report:?}");
    assert_eq!(report.left_registered, 0, "{report:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    drop(clients);
}

/// At `max_connections` the acceptors stop accepting: a new client waits in the kernel's
/// backlog (its TCP connect completes, its handshake does not start) and is served as soon as a
/// live connection leaves, instead of being accepted and closed.
#[test]
fn connections_over_the_limit_wait_in_the_backlog_until_one_leaves() {
    let server = TestServer::builder()
        .config(|c| c.max_connections = 2)
        .start(Echo);
    let mut a = server.connect().unwrap();
    let mut b = server.connect().unwrap();
    let certs = server.certs().ca_cert_pem.clone();
    let addr = server.addr();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiting = std::thread::spawn(move || {
        let config = tlsvisor_actors::testing::client_config(certs.as_bytes()).unwrap();
        let mut client = TlsClient::connect(addr, config).unwrap();
        done_tx.send(()).unwrap();
        assert_eq!(client.echo(b"c").unwrap(), b"c");
    });
    server.wait_for("an acceptor paused at the limit", HANG, |s| {
        s.acceptors_paused >= 1
    });
    // The third client is in the accept queue: not accepted, so not through its handshake.
    assert!(
        eventually(HANG, || support::accept_queue(addr.port()) == 1),
        "the third client waits in the backlog"
    );
    assert!(
        done_rx.try_recv().is_err(),
        "the third client must wait while two are live"
    );
    let snap = server.snapshot();
    assert_eq!(snap.ledger.accepted, 2);
    assert_eq!(
        snap.rejected_total(),
        0,
        "nothing is rejected at this limit"
    );
    assert_eq!(a.echo(b"a").unwrap(), b"a");
    assert_eq!(b.echo(b"b").unwrap(), b"b");
    drop(a);
    done_rx
        .recv_timeout(HANG)
        .expect("served once a slot is free");
    waiting.join().unwrap();
    drop(b);
    server.wait_disposed(3, HANG);
    server.wait_for("the acceptors polling again", HANG, |s| {
        s.acceptors_paused == 0
    });
    server.assert_each_disposed_once();
}

#[test]
fn a_killed_connection_is_closed_gracefully_with_reason_killed() {
    let server = TestServer::start(Echo);
    let mut victim = server.connect().unwrap();
    let mut bystander = server.connect().unwrap();
    assert_eq!(victim.echo(b"v").unwrap(), b"v");
    assert_eq!(bystander.echo(b"b").unwrap(), b"b");
    server.kill(ConnId(0), CloseMode::Graceful);
    match victim.read_until_close() {
        CloseSeen::CloseNotifyThenEof => {}
        other => panic!("expected close_notify then EOF, got {other:?}"),
    }
    drop(victim);
    server.wait_for("the kill", HANG, |s| {
        s.ledger.disposed(DisposeReason::Killed) == 1
    });
    assert_eq!(bystander.echo(b"still here").unwrap(), b"still here");
    drop(bystander);
    server.wait_idle(HANG);
    let by_id = server.assert_each_disposed_once();
    assert_eq!(by_id[&ConnId(0)].reason, DisposeReason::Killed);
    assert_eq!(by_id[&ConnId(1)].reason, DisposeReason::PeerEof);
}

#[test]
fn each_worker_registers_its_own_connections_and_kills_reach_them() {
    let server = TestServer::builder().config(|c| c.workers = 2).start(Echo);
    // The kernel picks the worker: connect until both have some (bounded; with both acceptors
    // woken for every connection, 200 all going one way does not happen). Eight at a time: one
    // by one, the worker that just served the last client is awake and the other asleep, and
    // on a loaded machine the awake one can win every race for the next.
    let mut clients = Vec::new();
    let by_worker = loop {
        let batch: Vec<TlsClient> = std::thread::scope(|scope| {
            let connecting: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| server.connect().unwrap()))
                .collect();
            connecting.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for mut client in batch {
            assert_eq!(client.echo(b"x").unwrap(), b"x");
            clients.push(client);
        }
        let n = clients.len() as u64;
        server.wait_for("all registered", HANG, |s| s.ledger.active == n);
        let by_worker = server.live_by_worker();
        if by_worker.iter().all(|ids| !ids.is_empty()) || clients.len() == 200 {
            break by_worker;
        }
    };
    assert_eq!(by_worker.len(), 2, "one registry per worker");
    assert!(
        by_worker.iter().all(|ids| !ids.is_empty()),
        "200 connections, all on one worker: {by_worker:?}"
    );
    let n = clients.len() as u64;
    let mut all: Vec<ConnId> = by_worker.concat();
    all.sort();
    assert_eq!(
        all,
        (0..n).map(ConnId).collect::<Vec<_>>(),
        "each id in exactly one registry"
    );

    assert_eq!(
        server.live_connections(),
        all,
        "the fan-out sees every worker"
    );
    assert!(
        !server.kill(ConnId(999), CloseMode::Graceful),
        "no such connection"
    );
    for id in all {
        assert!(
            server.kill(id, CloseMode::Graceful),
            "{id} is live on some worker"
        );
    }
    for client in &mut clients {
        let seen = client.read_until_close();
        assert!(
            matches!(seen, CloseSeen::CloseNotifyThenEof),
            "expected close_notify then EOF, got {seen:?}"
        );
    }
    drop(clients);
    server.wait_idle(HANG);
    let by_id = server.assert_each_disposed_once();
    assert_eq!(by_id.len() as u64, n);
    assert!(by_id.values().all(|r| r.reason == DisposeReason::Killed));
}

#[test]
fn a_client_that_never_reads_its_echo_is_writer_error() {
    let server = TestServer::builder()
        .config(|c| c.idle_timeout = Some(Duration::from_millis(500)))
        .start(Echo);
    let mut client = server.connect().unwrap();
    // Keep sending, never read: the echoes fill every buffer and the server's write stalls.
    client
        .send_until_blocked(Duration::from_millis(200), usize::MAX)
        .unwrap();
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::WriterError]);
    assert_eq!(leak::close_wait_on_port(server.addr().port()).unwrap(), 0);
}

#[test]
fn a_graceful_kill_ends_even_while_a_write_to_the_client_is_stalled() {
    // No idle timeout: only the close's own deadline can end a write the client never reads.
    let server = TestServer::builder()
        .config(|c| {
            c.idle_timeout = None;
            c.close_timeout = Duration::from_millis(300);
        })
        .start(Echo);
    let mut client = server.connect().unwrap();
    // Keep sending, never read: the echoes fill every buffer and the server's write stalls.
    client
        .send_until_blocked(Duration::from_millis(200), usize::MAX)
        .unwrap();
    server.kill(ConnId(0), CloseMode::Graceful);
    server.wait_disposed(1, HANG);
    assert_eq!(reasons(&server), vec![DisposeReason::Killed]);
}

/// Answers `bye` to anything and ends the connection ([`Flow::Close`]); refuses every
/// connection with an odd id when `refuse_odd_ids` is set (a fallible `open`).
#[derive(Clone, Copy)]
struct Bye {
    refuse_odd_ids: bool,
}

impl Protocol for Bye {
    fn name(&self) -> &'static str {
        "bye"
    }

    fn open(&self, info: &ConnInfo) -> Result<Box<dyn Session>, SessionError> {
        if self.refuse_odd_ids && info.id.0 % 2 == 1 {
            return Err(SessionError("odd id".into()));
        }
        Ok(Box::new(*self))
    }
}

impl Session for Bye {
    fn on_data(&mut self, _input: &[u8], reply: &mut Vec<u8>) -> Result<Flow, SessionError> {
        reply.extend_from_slice(b"bye\n");
        Ok(Flow::Close)
    }
}

#[test]
fn a_session_can_answer_and_then_close() {
    let server = TestServer::start(Bye {
        refuse_odd_ids: false,
    });
    let mut client = server.connect().unwrap();
    client.send(b"QUIT\n").unwrap();
    let (last, seen) = client.receive_until_close();
    assert_eq!(last, b"bye\n", "the last reply is written before the close");
    assert!(
        matches!(seen, CloseSeen::CloseNotifyThenEof),
        "then a graceful close: {seen:?}"
    );
    drop(client);
    server.wait_disposed(1, HANG);
    let reasons: Vec<_> = server
        .assert_each_disposed_once()
        .values()
        .map(|r| r.reason)
        .collect();
    assert_eq!(reasons, vec![DisposeReason::SessionClosed]);
}

#[test]
fn a_protocol_can_refuse_a_connection() {
    let server = TestServer::start(Bye {
        refuse_odd_ids: true,
    });
    let (mut refused, mut served) = (0, 0);
    // One at a time, so ids go 0, 1, 2, 3 in this order.
    for id in 0..4 {
        let mut client = server.connect().unwrap();
        if id % 2 == 1 {
            // Refused after the handshake: close_notify, and nothing else.
            let (data, seen) = client.receive_until_close();
            assert!(data.is_empty(), "a refused client gets no data");
            assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
            refused += 1;
        } else {
            client.send(b"hi\n").unwrap();
            assert_eq!(client.receive_until_close().0, b"bye\n");
            served += 1;
        }
    }
    server.wait_disposed(refused + served, HANG);
    let records = server.assert_each_disposed_once();
    let protocol_errors = records
        .values()
        .filter(|r| r.reason == DisposeReason::ProtocolError)
        .count() as u64;
    assert_eq!(protocol_errors, refused);
}

/// Answers each chunk upper-cased after an async pause (as a query to another actor would
/// take); `quit` is answered `BYE` and closes, `panic` panics inside the async reply.
struct Later;

impl Protocol for Later {
    fn name(&self) -> &'static str {
        "later"
    }

    fn open(&self, _info: &ConnInfo) -> Result<Box<dyn Session>, SessionError> {
        Ok(Box::new(Later))
    }
}

impl Session for Later {
    fn on_data(&mut self, _input: &[u8], _reply: &mut Vec<u8>) -> Result<Flow, SessionError> {
        Err(SessionError(
            "every chunk goes through on_data_async".into(),
        ))
    }

    fn on_data_async(&mut self, input: &[u8]) -> Option<AsyncReply> {
        let input = input.to_vec();
        Some(Box::pin(async move {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
            match &input[..] {
                b"quit" => Ok((b"BYE".to_vec(), Flow::Close)),
                b"panic" => panic!("injected panic in an async reply"),
                _ => Ok((input.to_ascii_uppercase(), Flow::Continue)),
            }
        }))
    }
}

#[test]
fn a_session_can_answer_after_async_work() {
    let server = TestServer::start(Later);
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"abc").unwrap(), b"ABC");
    // Back to back: each answer is written before the next chunk is read, in order.
    client.send(b"one").unwrap();
    client.send(b"two").unwrap();
    assert_eq!(client.receive(6).unwrap(), b"ONETWO");
    client.send(b"quit").unwrap();
    let (last, seen) = client.receive_until_close();
    assert_eq!(last, b"BYE");
    assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    drop(client);

    let mut victim = server.connect().unwrap();
    victim.send(b"panic").unwrap();
    let (nothing, seen) = victim.receive_until_close();
    assert!(nothing.is_empty());
    assert!(matches!(seen, CloseSeen::CloseNotifyThenEof), "{seen:?}");
    drop(victim);

    server.wait_disposed(2, HANG);
    let mut reasons: Vec<_> = server
        .assert_each_disposed_once()
        .values()
        .map(|r| r.reason)
        .collect();
    reasons.sort_by_key(|r| r.as_str());
    assert_eq!(
        reasons,
        vec![DisposeReason::SessionClosed, DisposeReason::SessionPanic]
    );
}
