//! Lobby tick micro-benchmarks: one real tick (state updates applied, delta or keyframe
//! built, encoded once per codec, handed to every member's outbox) for lobbies of 8 to 256.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn lobby_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("lobby_tick");
    for members in [8usize, 64, 256] {
        group.throughput(Throughput::Elements(members as u64));
        // Every member moved (the standard workload), as a delta and as a keyframe.
        for (name, keyframes) in [("delta", false), ("keyframe", true)] {
            let mut tick = tickrelay_server::bench_tick(members, members, 32, 0, keyframes);
            group.bench_function(
                BenchmarkId::new(format!("all_moved_{name}"), members),
                |b| b.iter(|| black_box(tick())),
            );
        }
        // Nobody moved: the empty delta every member still gets.
        let mut idle = tickrelay_server::bench_tick(members, 0, 32, 0, false);
        group.bench_function(BenchmarkId::new("idle_delta", members), |b| {
            b.iter(|| black_box(idle()))
        });
        // A quarter of the members on JSON: two encodings per tick.
        let mut mixed = tickrelay_server::bench_tick(members, members, 32, 4, false);
        group.bench_function(BenchmarkId::new("all_moved_mixed_codecs", members), |b| {
            b.iter(|| black_box(mixed()))
        });
    }
    group.finish();
}

criterion_group!(benches, lobby_tick);
criterion_main!(benches);
