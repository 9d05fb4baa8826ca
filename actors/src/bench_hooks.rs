//! What `benches/actor_tax.rs` measures, through the crate's own paths: the registry messages
//! and actor types it times are crate-private, so the bench cannot (and must not) forge them.
//! Hidden from the documentation; not part of the supported API.

use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use slog::{o, Logger};

use crate::connection::actor::Connection;
use crate::connection::messages::{Inbound, Side};
use crate::connection::reader::Reader;
use crate::supervision::conn_id::ConnId;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::messages::LiveConnections;
use crate::supervision::registration::Registration;
use crate::supervision::registry::HandlerRegistry;

/// `batch` connections registered and disposed as every connection is (a `Registration`
/// each), `rounds` times, each round ending with a round trip so the registry applied them
/// all. Must run inside an actix system. Returns the time taken.
pub async fn register_and_dispose(rounds: u64, batch: u64) -> Duration {
    let stats = std::sync::Arc::new(crate::supervision::stats::Stats::default());
    let log = Logger::root(slog::Discard, o!());
    let registry = HandlerRegistry::new(std::sync::Arc::clone(&stats), log.clone()).start();
    // A mailbox with no actor behind it: the registry only keeps its weak address.
    let mailbox = Context::<Connection>::new();
    let weak = mailbox.address().downgrade();
    let started = Instant::now();
    let mut next = 0;
    for _ in 0..rounds {
        for _ in 0..batch {
            let peer = ([127, 0, 0, 1], 1).into();
            let mut registration = Registration::new(
                ConnId(next),
                peer,
                weak.clone(),
                registry.clone(),
                std::sync::Arc::clone(&stats),
                log.clone(),
            );
            registration.dispose(DisposeReason::PeerEof);
            next += 1;
        }
        let live = registry.send(LiveConnections).await.unwrap_or_default();
        assert!(live.is_empty(), "every registration disposed");
    }
    started.elapsed()
}

/// Stands in for a Connection: replies to each chunk at once.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Inbound> for Sink {
    type Result = ();

    fn handle(&mut self, msg: Inbound, _ctx: &mut Self::Context) {
        std::hint::black_box(msg.bytes.len());
    }
}

/// `hops` chunks of 4 KiB sent as a reader sends them, each waiting for its reply, on one
/// arbiter. Must run inside an actix system. Returns the time taken.
pub async fn reader_hops(hops: u64) -> Duration {
    let sink: Recipient<Inbound> = Sink.start().recipient();
    let chunk = Bytes::from_static(&[0u8; 4096]);
    let started = Instant::now();
    for _ in 0..hops {
        let sent = sink.send(Inbound {
            side: Side::Client,
            bytes: chunk.clone(),
        });
        if sent.await.is_err() {
            break;
        }
    }
    started.elapsed()
}

/// The size in bytes of the actor structs of one connection (their heap parts, buffers and
/// rustls, come on top): `Connection`, its client reader, a proxy's upstream reader.
pub fn actor_state_bytes() -> [(&'static str, usize); 3] {
    [
        ("Connection", std::mem::size_of::<Connection>()),
        ("ClientReader", std::mem::size_of::<Reader>()),
        ("UpstreamReader", std::mem::size_of::<Reader>()),
    ]
}
