//! Criterion bench of the station's key pool: how fast 1 and 2 crossbeam workers make key
//! pairs + CSRs, for P-256 and RSA-2048. Each iteration drains a batch of keys from a pool
//! whose stock is smaller than the batch, so generation, not the stock, is measured.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fleet_station::keys::KeyAlgorithm;
use fleet_station::keys::KeyPool;
use fleet_station::keys::pool::PoolConfig;

fn drain(pool: &KeyPool, n: usize) {
    for _ in 0..n {
        pool.take_blocking().expect("key");
    }
}

fn bench(c: &mut Criterion) {
    for (alg, name, batch) in [
        (KeyAlgorithm::P256, "P-256", 400usize),
        (KeyAlgorithm::Rsa2048, "RSA-2048", 8),
    ] {
        let mut group = c.benchmark_group(format!("key_pool/{name}"));
        group.throughput(Throughput::Elements(batch as u64));
        if alg == KeyAlgorithm::Rsa2048 {
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(20));
        }
        for workers in [1usize, 2] {
            let pool = KeyPool::start(&PoolConfig {
                algorithm: alg,
                workers,
                stock: 64,
                common_name: "bench".into(),
            });
            group.bench_with_input(BenchmarkId::new("workers", workers), &batch, |b, &n| {
                b.iter(|| drain(&pool, n))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
