//! Criterion bench of the whole engine: N synthetic devices (default 500,
//! `FLEET_BENCH_E2E_DEVICES`) provisioned through the in-process emulator exactly as
//! `station loadtest --devices N --sessions 16` does it (no jigs; real sockets, real TLS,
//! SQLite ledger and registry in a fresh temporary directory each iteration). One iteration
//! is one whole load test including the emulator's start; the throughput is devices/s.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let devices: usize = std::env::var("FLEET_BENCH_E2E_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let sessions = 16;
    let rt = support::runtime();
    let mut group = c.benchmark_group("end_to_end");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(devices as u64));
    group.bench_function(
        format!("loadtest {devices} devices, {sessions} sessions"),
        |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| support::loadtest(&rt, devices, sessions).wall)
                    .sum()
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
