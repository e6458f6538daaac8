//! Criterion bench of the jig codec: encode and decode (COBS + CRC-32 + PUT parsing) of a
//! full PUT frame: 1024 bytes of data, the ~2 KB the station puts in one frame with a 4 KiB
//! board RX buffer (a whole identity), and the protocol's largest PUT (4092 bytes of data).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fleet_station::jig::wire::codec::{self, FrameAssembler};
use fleet_station::jig::wire::{Command, Message};

fn data(len: usize) -> Vec<u8> {
    // PEM-like bytes with some zeros, so COBS has work to do.
    (0..len)
        .map(|i| {
            if i % 97 == 0 {
                0
            } else {
                b'A' + (i % 26) as u8
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("jig_codec");
    for len in [1024usize, 2020, codec::MAX_PAYLOAD - 4] {
        let payload = data(len);
        let put = Command::Put {
            offset: 4096,
            data: &payload,
        };
        let (mut head, mut wire) = (Vec::new(), Vec::with_capacity(codec::MAX_WIRE));
        group.throughput(Throughput::Bytes(len as u64));

        group.bench_with_input(BenchmarkId::new("encode_put", len), &put, |b, put| {
            b.iter(|| {
                wire.clear();
                black_box(put)
                    .encode(black_box(0x1234), &mut head, &mut wire)
                    .unwrap();
                black_box(wire.len())
            })
        });

        wire.clear();
        put.encode(0x1234, &mut head, &mut wire).unwrap();
        let mut asm = FrameAssembler::new();
        group.bench_with_input(BenchmarkId::new("decode_put", len), &wire, |b, wire| {
            b.iter(|| {
                let (used, event) = asm.push(black_box(wire));
                let frame = event.unwrap().unwrap();
                match Command::decode(&frame).unwrap() {
                    Command::Put { data, .. } => black_box((used, data.len())),
                    _ => unreachable!(),
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
