//! The actor tax of the supervision tree, without TLS or sockets: what the registry costs per
//! connection, what one Reader→Connection hop costs, and how many bytes of actor state a
//! connection carries. `cargo bench --bench actor_tax`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slog::{o, Logger};
use tlsvisor_actors::messages::{Inbound, LiveConnections, Register, Side};
use tlsvisor_actors::{
    ClientReader, ConnId, Connection, Dispose, DisposeReason, DisposedVia, HandlerRegistry, Stats,
    UpstreamReader,
};

/// One Register and one Dispose, as every connection sends them, `batch` at a time, then a
/// round trip so the registry has applied them all.
fn registry_register_and_dispose(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry");
    let batch = 1000u64;
    group.throughput(Throughput::Elements(batch));
    group.bench_function("register+dispose", |b| {
        let system = actix_rt::System::new();
        b.iter_custom(|iterations| {
            system.block_on(async {
                let stats = Arc::new(Stats::default());
                let log = Logger::root(slog::Discard, o!());
                let registry = HandlerRegistry::new(stats, log).start();
                // A mailbox with no actor behind it: the registry only keeps its weak address.
                let mailbox = Context::<Connection>::new();
                let weak = mailbox.address().downgrade();
                let started = Instant::now();
                let mut next = 0u64;
                for _ in 0..iterations {
                    for _ in 0..batch {
                        let id = ConnId(next);
                        next += 1;
                        registry.do_send(Register {
                            id,
                            peer: ([127, 0, 0, 1], 1).into(),
                            connection: weak.clone(),
                        });
                        registry.do_send(Dispose {
                            id,
                            reason: DisposeReason::PeerEof,
                            via: DisposedVia::StopHook,
                        });
                    }
                    let live = registry.send(LiveConnections).await.unwrap();
                    assert!(live.is_empty());
                }
                started.elapsed()
            })
        });
    });
    group.finish();
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

/// One hop as a reader makes it: send a chunk and wait for the reply, on one arbiter.
fn reader_to_connection_hop(c: &mut Criterion) {
    let mut group = c.benchmark_group("hop");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reader->connection send+reply", |b| {
        let system = actix_rt::System::new();
        b.iter_custom(|iterations| {
            system.block_on(async {
                let sink: Recipient<Inbound> = Sink.start().recipient();
                let chunk = bytes::Bytes::from_static(&[0u8; 4096]);
                let started = Instant::now();
                for _ in 0..iterations {
                    sink.send(Inbound {
                        side: Side::Client,
                        bytes: chunk.clone(),
                    })
                    .await
                    .unwrap();
                }
                started.elapsed()
            })
        });
    });
    group.finish();
}

/// The size of the actor structs (their heap parts, buffers and rustls, come on top).
fn actor_state_bytes(_c: &mut Criterion) {
    println!(
        "actor state per connection without TLS: Connection {} B, ClientReader {} B, \
         UpstreamReader {} B",
        std::mem::size_of::<Connection>(),
        std::mem::size_of::<ClientReader>(),
        std::mem::size_of::<UpstreamReader>(),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = registry_register_and_dispose, reader_to_connection_hop, actor_state_bytes
}
criterion_main!(benches);
