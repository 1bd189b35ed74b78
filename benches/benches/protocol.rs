//! Protocol micro-benchmarks: snapshot encoding in both codecs (8/32/128 players, 32–256-byte
//! states), decoding of client messages and of snapshots (in full, and the summary a measuring
//! load-generator client decodes), the per-message work of server and clients.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tickrelay_protocol::{ClientMessage, Codec, Payload, PlayerState, ServerMessage, Snapshot};

fn snapshot(players: u32, state_size: usize) -> ServerMessage {
    ServerMessage::Snapshot(Snapshot {
        tick: 123_456,
        server_time_us: 1_700_000_000_000_000,
        keyframe: true,
        players: (1..=players)
            .map(|id| PlayerState {
                id,
                seq: u64::from(id) * 1000,
                data: Payload::from(vec![id as u8; state_size]),
            })
            .collect(),
        removed: Vec::new(),
    })
}

fn encode_snapshots(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_encode");
    for codec in Codec::ALL {
        for players in [8u32, 32, 128] {
            for state_size in [32usize, 256] {
                let message = snapshot(players, state_size);
                let mut buffer = Vec::with_capacity(64 * 1024);
                group.throughput(Throughput::Elements(u64::from(players)));
                let id = BenchmarkId::new(codec.name(), format!("{players}p_{state_size}B"));
                group.bench_with_input(id, &message, |b, message| {
                    b.iter(|| {
                        buffer.clear();
                        codec.encode_into(black_box(message), &mut buffer).unwrap();
                        black_box(buffer.len())
                    })
                });
            }
        }
    }
    group.finish();
}

fn decode_client_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_decode");
    let messages = [
        (
            "state_32B",
            ClientMessage::State {
                seq: 42,
                data: Payload::from(vec![7u8; 32]),
            },
        ),
        (
            "state_256B",
            ClientMessage::State {
                seq: 42,
                data: Payload::from(vec![7u8; 256]),
            },
        ),
        (
            "ping",
            ClientMessage::Ping {
                client_time: 1.7e15,
            },
        ),
        (
            "join",
            ClientMessage::Join {
                lobby: "arena-42".into(),
                name: "player-one".into(),
                ticket: None,
                role: None,
                resume: None,
                offset: None,
            },
        ),
    ];
    for codec in Codec::ALL {
        for (name, message) in &messages {
            let bytes = codec.encode(message).unwrap();
            group.bench_with_input(BenchmarkId::new(codec.name(), name), &bytes, |b, bytes| {
                b.iter(|| codec.decode_client(black_box(bytes)).unwrap())
            });
        }
    }
    group.finish();
}

fn decode_snapshots(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_decode");
    for codec in Codec::ALL {
        for players in [8u32, 64] {
            let bytes = codec.encode(&snapshot(players, 32)).unwrap();
            group.bench_with_input(
                BenchmarkId::new(codec.name(), format!("{players}p_32B")),
                &bytes,
                |b, bytes| b.iter(|| codec.decode_server(black_box(bytes)).unwrap()),
            );
        }
    }
    group.finish();
}

/// What every simulated load-generator client does per received snapshot.
fn decode_snapshot_summary(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let bytes = Codec::MessagePack.encode(&snapshot(8, 32)).unwrap();
    group.bench_function("snapshot_summary", |b| {
        b.iter(|| {
            Codec::MessagePack
                .decode_snapshot_summary(black_box(&bytes))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    encode_snapshots,
    decode_client_messages,
    decode_snapshots,
    decode_snapshot_summary
);
criterion_main!(benches);
