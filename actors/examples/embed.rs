//! tlsvisor inside a larger actix system: the sessions of a TLS line protocol hand every line
//! to an actor of the application (a `Journal`) by message and answer with what the journal
//! replied (an async reply: the client is not read again meanwhile), and the two are shut down
//! together, in order: the TLS server first (no new line can arrive), then the journal is asked
//! what it got, then the system stops.
//!
//! `cargo run -p tlsvisor-actors --features testing --example embed` serves on a free port,
//! sends three lines from a client and exits.

use std::time::Duration;

use actix::prelude::*;
use tlsvisor_actors::testing::{client_config, TlsClient};
use tlsvisor_actors::{
    AsyncReply, ConnId, ConnInfo, DevCerts, Flow, Protocol, Server, ServerConfig, Session,
    SessionError,
};

/// The application's own actor: it keeps every line any client sent.
#[derive(Default)]
struct Journal {
    lines: Vec<(ConnId, String)>,
}

impl Actor for Journal {
    type Context = Context<Self>;
}

/// Session → journal: one line a client sent. The answer is how many lines the journal holds.
#[derive(Message)]
#[rtype(result = "usize")]
struct Append(ConnId, String);

impl Handler<Append> for Journal {
    type Result = usize;

    fn handle(&mut self, Append(id, line): Append, _ctx: &mut Self::Context) -> usize {
        self.lines.push((id, line));
        self.lines.len()
    }
}

/// Anyone → journal: how many lines it holds.
#[derive(Message)]
#[rtype(result = "usize")]
struct Count;

impl Handler<Count> for Journal {
    type Result = usize;

    fn handle(&mut self, _msg: Count, _ctx: &mut Self::Context) -> usize {
        self.lines.len()
    }
}

/// The protocol: every line goes to the journal, and the client gets `logged N` back, N being
/// the journal's answer.
struct Logged {
    journal: Addr<Journal>,
}

impl Protocol for Logged {
    fn name(&self) -> &'static str {
        "logged"
    }

    fn open(&self, info: &ConnInfo) -> Result<Box<dyn Session>, SessionError> {
        Ok(Box::new(LoggedSession {
            id: info.id,
            journal: self.journal.clone(),
            line: Vec::new(),
        }))
    }
}

struct LoggedSession {
    id: ConnId,
    journal: Addr<Journal>,
    line: Vec<u8>,
}

impl Session for LoggedSession {
    fn on_data(&mut self, _input: &[u8], _reply: &mut Vec<u8>) -> Result<Flow, SessionError> {
        Err(SessionError(
            "every chunk goes through on_data_async".into(),
        ))
    }

    /// Each complete line goes to the journal; the reply waits for the journal's answers. The
    /// future holds no borrow of the session: what it needs is moved in.
    fn on_data_async(&mut self, input: &[u8]) -> Option<AsyncReply> {
        let mut lines = Vec::new();
        for &byte in input {
            if byte == b'\n' {
                lines.push(String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned());
            } else {
                self.line.push(byte);
            }
        }
        let (journal, id) = (self.journal.clone(), self.id);
        Some(Box::pin(async move {
            let mut reply = Vec::new();
            for line in lines {
                let count = journal
                    .send(Append(id, line))
                    .await
                    .map_err(|e| SessionError(format!("journal unavailable: {e}")))?;
                reply.extend_from_slice(format!("logged {count}\n").as_bytes());
            }
            Ok((reply, Flow::Continue))
        }))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = DevCerts::generate()?;
    let tls = certs.server_tls()?;
    let ca = certs.ca_cert_pem.clone();
    actix_rt::System::new().block_on(async move {
        let journal = Journal::default().start();
        let protocol = Logged {
            journal: journal.clone(),
        };
        let server = Server::builder(ServerConfig::default(), tls, protocol)
            .listen("127.0.0.1:0".parse()?)
            .start()?;
        let addr = server.local_addr();

        // A client on a thread of its own (it blocks): three lines, three answers.
        let client = std::thread::spawn(move || -> std::io::Result<()> {
            let mut client = TlsClient::connect(addr, client_config(ca.as_bytes())?)?;
            for (n, line) in ["first", "second", "third"].iter().enumerate() {
                client.send(format!("{line}\n").as_bytes())?;
                assert_eq!(client.receive(9)?, format!("logged {}\n", n + 1).as_bytes());
            }
            client.close();
            Ok(())
        });
        while !client.is_finished() {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        client.join().map_err(|_| "the client panicked")??;

        // In order: the TLS server first, so no session can append any more...
        let report = server.shutdown(Duration::from_secs(2)).await;
        // ...then the application's actors, which have every line by now.
        let lines = journal.send(Count).await?;
        println!("journal holds {lines} lines; tlsvisor shut down with {report:?}");
        assert_eq!(lines, 3);
        System::current().stop();
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
