//! A small key-value store over TLS, one command per line: `SET key value`, `GET key`,
//! `DEL key`, `QUIT` (answered `BYE`, then the server closes). An unknown command is answered
//! `ERR ...` and the connection closed: a session's last word before it hangs up. Run it with `cargo run -p tlsvisor-actors --features testing --example kv`: it
//! serves on a free port, runs a client through a few commands, and shuts down. Its leak test,
//! at the bottom, is what a protocol author writes with the public testkit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tlsvisor_actors::testing::TestServer;
use tlsvisor_actors::{ConnInfo, Flow, Protocol, Session, SessionError};

/// The longest line a client may send; a longer one ends its connection (`protocol_error`).
const MAX_LINE: usize = 4096;

/// The store, shared by every connection of every worker.
#[derive(Clone, Default)]
struct Kv {
    store: Arc<Mutex<HashMap<String, String>>>,
}

impl Protocol for Kv {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn open(&self, _info: &ConnInfo) -> Result<Box<dyn Session>, SessionError> {
        Ok(Box::new(KvSession {
            store: Arc::clone(&self.store),
            line: Vec::new(),
        }))
    }
}

/// One client: the bytes of the line it is still sending.
struct KvSession {
    store: Arc<Mutex<HashMap<String, String>>>,
    line: Vec<u8>,
}

impl KvSession {
    /// Runs one command, appending its answer; whether the connection goes on.
    fn execute(&self, line: &str, reply: &mut Vec<u8>) -> Flow {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let mut words = line.splitn(3, ' ');
        let (answer, flow) = match (words.next(), words.next(), words.next()) {
            (Some("SET"), Some(key), Some(value)) => {
                store.insert(key.to_string(), value.to_string());
                ("OK".to_string(), Flow::Continue)
            }
            (Some("GET"), Some(key), None) => {
                let value = store.get(key).cloned().unwrap_or("NIL".into());
                (value, Flow::Continue)
            }
            (Some("DEL"), Some(key), None) => match store.remove(key) {
                Some(_) => ("1".to_string(), Flow::Continue),
                None => ("0".to_string(), Flow::Continue),
            },
            (Some("QUIT"), None, None) => ("BYE".to_string(), Flow::Close),
            _ => (format!("ERR unknown command {line:.40}"), Flow::Close),
        };
        reply.extend_from_slice(answer.as_bytes());
        reply.push(b'\n');
        flow
    }
}

impl Session for KvSession {
    fn on_data(&mut self, input: &[u8], reply: &mut Vec<u8>) -> Result<Flow, SessionError> {
        for &byte in input {
            if byte != b'\n' {
                self.line.push(byte);
                if self.line.len() > MAX_LINE {
                    return Err(SessionError("line too long".into()));
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8(line).map_err(|_| SessionError("not UTF-8".into()))?;
            if self.execute(line.trim_end_matches('\r'), reply) == Flow::Close {
                return Ok(Flow::Close);
            }
        }
        Ok(Flow::Continue)
    }
}

fn main() {
    let server = TestServer::start(Kv::default());
    let mut client = server.connect().expect("connect");
    for (command, answer) in [
        ("SET colour blue\n", "OK\n"),
        ("GET colour\n", "blue\n"),
        ("DEL colour\n", "1\n"),
        ("GET colour\n", "NIL\n"),
    ] {
        client.send(command.as_bytes()).expect("send");
        let got = client.receive(answer.len()).expect("receive");
        println!(
            "{} -> {}",
            command.trim(),
            String::from_utf8_lossy(&got).trim()
        );
        assert_eq!(got, answer.as_bytes());
    }
    client.send(b"QUIT\n").expect("send");
    let (last, seen) = client.receive_until_close();
    println!(
        "QUIT -> {} then {seen:?}",
        String::from_utf8_lossy(&last).trim()
    );
    assert_eq!(last, b"BYE\n");
    // Our end of the close: the server lingers (bounded) until the client's FIN.
    drop(client);
    let report = server.shutdown(Duration::from_secs(2));
    println!("shut down: {report:?}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlsvisor_actors::testing::{eventually, leak};

    /// Clients that vanish mid-command leave nothing behind: every connection disposed once,
    /// no socket left half-closed.
    #[test]
    fn clients_that_vanish_leave_nothing_behind() {
        let server = TestServer::start(Kv::default());
        for _ in 0..50 {
            let mut client = server.connect().unwrap();
            client.send(b"SET half-a-comm").unwrap();
            client.drop_abruptly();
        }
        server.wait_disposed(50, Duration::from_secs(20));
        server.assert_each_disposed_once();
        let port = server.addr().port();
        assert!(eventually(
            Duration::from_secs(20),
            || leak::close_wait_on_port(port).unwrap() == 0
        ));
    }
}
