//! The actor tax of the supervision tree, without TLS or sockets: what the registry costs per
//! connection, what one Reader→Connection hop costs, and how many bytes of actor state a
//! connection carries. `cargo bench --bench actor_tax`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tlsvisor_actors::bench_hooks;

/// One Register and one Dispose, as every connection sends them, `batch` at a time, then a
/// round trip so the registry has applied them all.
fn registry_register_and_dispose(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry");
    let batch = 1000u64;
    group.throughput(Throughput::Elements(batch));
    group.bench_function("register+dispose", |b| {
        let system = actix_rt::System::new();
        b.iter_custom(|iterations| {
            system.block_on(bench_hooks::register_and_dispose(iterations, batch))
        });
    });
    group.finish();
}

/// One hop as a reader makes it: send a chunk and wait for the reply, on one arbiter.
fn reader_to_connection_hop(c: &mut Criterion) {
    let mut group = c.benchmark_group("hop");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reader->connection send+reply", |b| {
        let system = actix_rt::System::new();
        b.iter_custom(|iterations| system.block_on(bench_hooks::reader_hops(iterations)));
    });
    group.finish();
}

/// The size of the actor structs (their heap parts, buffers and rustls, come on top).
fn actor_state_bytes(_c: &mut Criterion) {
    let sizes: Vec<String> = bench_hooks::actor_state_bytes()
        .iter()
        .map(|(name, bytes)| format!("{name} {bytes} B"))
        .collect();
    println!(
        "actor state per connection without TLS: {}",
        sizes.join(", ")
    );
}

// criterion_group! writes an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    use super::*;

    criterion_group! {
        name = benches;
        config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
        targets = registry_register_and_dispose, reader_to_connection_hop, actor_state_bytes
    }
}

criterion_main!(group::benches);
