//! Idle memory that stays idle: a connection that streamed and went quiet costs what a
//! never-used idle connection costs, measured from outside on the real binary.

use std::sync::Arc;

use crate::common;
use crate::common::{dev_ca, Tlsvisor, HANG};
use tlsvisor_actors::testing::{client_config, eventually, leak, TlsClient};

const CONNECTIONS: usize = 2_000;
const STREAMED: usize = 256 * 1024;
const CHUNK: usize = 16 * 1024;

fn rss(server: &Tlsvisor) -> f64 {
    leak::rss_bytes(server.pid()).unwrap() as f64
}

/// Opens `CONNECTIONS` clients, each echoing `bytes` (in 16 KiB round trips, so neither side
/// waits on a full socket buffer) before it goes quiet, and returns them alive.
fn open(server: &Tlsvisor, bytes: usize) -> Vec<TlsClient> {
    let config = client_config(&dev_ca()).unwrap();
    let chunk = vec![0x5a_u8; CHUNK];
    (0..CONNECTIONS)
        .map(|_| {
            let mut client = TlsClient::connect(server.listen, Arc::clone(&config)).unwrap();
            assert_eq!(client.echo(b"x").unwrap(), b"x");
            for _ in 0..bytes / CHUNK {
                assert_eq!(client.echo(&chunk).unwrap().len(), CHUNK);
            }
            client
        })
        .collect()
}

#[test]
fn a_connection_that_streamed_and_went_quiet_costs_what_an_idle_one_does() {
    common::raise_open_files_limit();
    let server = Tlsvisor::serve(&[]);
    let active = |n: usize| {
        eventually(HANG, || {
            server.scrape().get("tlsvisor_connections_active") == n as f64
        })
    };
    let baseline = rss(&server);
    let idle = open(&server, 0);
    assert!(active(CONNECTIONS));
    let after_idle = rss(&server);
    let streamed = open(&server, STREAMED);
    assert!(active(2 * CONNECTIONS));
    let after_streamed = rss(&server);
    let per_idle = (after_idle - baseline) / CONNECTIONS as f64 / 1024.0;
    let per_streamed = (after_streamed - after_idle) / CONNECTIONS as f64 / 1024.0;
    eprintln!(
        "RSS per connection: {per_idle:.1} KiB never used, {per_streamed:.1} KiB after \
         echoing 256 KiB and going quiet"
    );
    assert!(
        per_streamed - per_idle <= 2.0,
        "a quiet connection that streamed keeps {per_streamed:.1} KiB, an idle one \
         {per_idle:.1} KiB"
    );
    drop((idle, streamed));
}
