//! Criterion bench of the jig codec: encode and decode (COBS + CRC-32 + PUT parsing) of a
//! full PUT frame: 1024 bytes of data, the ~2 KB the station puts in one frame with a 4 KiB
//! board RX buffer (a whole identity), and the protocol's largest PUT (4092 bytes of data).
//!
//! And `jig_round_trip/hash_2mbaud`: one HASH and its answer through a virtual jig's pty at
//! 2 Mbaud, whose 56 wire bytes take 280 µs on the line. What it costs beyond that is waking
//! the board thread and the reader; a board thread that paced bytes in millisecond batches
//! would show here as a millisecond per round trip. (The rule itself, that the board thread
//! wakes at a frame's exact line time, is unit-tested on its schedule.)

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fleet_station::jig::wire::codec::{self, FrameAssembler};
use fleet_station::jig::wire::{Command, Message};
use fleet_station::jig::{BoardSpec, PortSettings, Slot, VirtualJig, VirtualJigConfig, open_port};

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

fn round_trip(c: &mut Criterion) {
    let baud = 2_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut config = VirtualJigConfig::new(dir.path());
    config.baud = baud;
    let (boards, queue) = crossbeam_channel::unbounded();
    boards.send(BoardSpec::new("BENCH-1")).unwrap();
    let jig = VirtualJig::spawn(config, queue).unwrap();
    let settings = PortSettings {
        baud,
        ..PortSettings::default()
    };
    let mut port = open_port(jig.path(), &settings).unwrap();
    port.set_timeout(Duration::from_secs(2)).unwrap();
    let (mut head, mut wire, mut buf) = (Vec::new(), Vec::new(), [0u8; 512]);
    let mut asm = FrameAssembler::new();
    let mut seq = 0u16;
    // One command out, then read until its answer is whole.
    let mut exchange = |command: &Command<'_>| {
        seq = seq.wrapping_add(1);
        wire.clear();
        command.encode(seq, &mut head, &mut wire).unwrap();
        port.write_all(&wire).unwrap();
        loop {
            let n = port.read(&mut buf).expect("the board answers");
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (used, event) = asm.push(rest);
                rest = &rest[used..];
                if let Some(frame) = event {
                    assert_eq!(frame.expect("a valid answer").seq, seq);
                    return;
                }
            }
        }
    };
    exchange(&Command::Hello { version: 1 });
    let hash = Command::Hash {
        slots: vec![Slot::Certificate],
    };
    c.bench_function("jig_round_trip/hash_2mbaud", |b| {
        b.iter(|| exchange(black_box(&hash)))
    });
}

criterion_group!(benches, bench, round_trip);
criterion_main!(benches);
