//! The key pool: crossbeam worker threads that keep a bounded stock of ready key material.
//!
//! Workers block when the stock is full (back-pressure, no unbounded queue) and stop when the
//! pool is dropped. Taking a key from async code never blocks the reactor: a ready key is
//! taken at once; an empty stock is waited on in `spawn_blocking`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use super::KeyAlgorithm;
use super::{KeyError, KeyMaterial};

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub algorithm: KeyAlgorithm,
    pub workers: usize,
    pub stock: usize,
    /// Common name put in each CSR's subject.
    pub common_name: String,
}

/// A running key pool.
pub struct KeyPool {
    rx: Receiver<Result<KeyMaterial, KeyError>>,
    stop: Arc<AtomicBool>,
    generated: Arc<AtomicU64>,
    gen_nanos: Arc<AtomicU64>,
    workers: Vec<JoinHandle<()>>,
    capacity: usize,
}

impl KeyPool {
    /// Starts `cfg.workers` workers (none with `workers = 0`: a pool that is never used, for
    /// lines whose keys come from the boards or from AWS; taking from it fails).
    pub fn start(cfg: &PoolConfig) -> KeyPool {
        let (tx, rx) = crossbeam_channel::bounded(cfg.stock.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let generated = Arc::new(AtomicU64::new(0));
        let gen_nanos = Arc::new(AtomicU64::new(0));
        let workers = (0..cfg.workers)
            .map(|i| {
                let (tx, stop, generated, gen_nanos) = (
                    tx.clone(),
                    stop.clone(),
                    generated.clone(),
                    gen_nanos.clone(),
                );
                let (alg, cn) = (cfg.algorithm, cfg.common_name.clone());
                std::thread::Builder::new()
                    .name(format!("keygen-{i}"))
                    .spawn(move || worker(alg, &cn, &tx, &stop, &generated, &gen_nanos))
                    .expect("spawn key worker")
            })
            .collect();
        KeyPool {
            rx,
            stop,
            generated,
            gen_nanos,
            workers,
            capacity: cfg.stock.max(1),
        }
    }

    /// Ready keys in stock now.
    pub fn stock(&self) -> usize {
        self.rx.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keys generated so far and their mean generation time.
    pub fn generated(&self) -> (u64, Duration) {
        let n = self.generated.load(Ordering::Relaxed);
        let nanos = self.gen_nanos.load(Ordering::Relaxed);
        (n, Duration::from_nanos(nanos.checked_div(n).unwrap_or(0)))
    }

    /// Takes a key, waiting (off the reactor) if the stock is empty.
    pub async fn take(self: &Arc<Self>) -> Result<KeyMaterial, KeyError> {
        if let Ok(k) = self.rx.try_recv() {
            return k;
        }
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.take_blocking())
            .await
            .map_err(|e| KeyError(format!("key wait task failed: {e}")))?
    }

    /// Takes a key from a plain thread.
    pub fn take_blocking(&self) -> Result<KeyMaterial, KeyError> {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(k) => return k,
                Err(RecvTimeoutError::Timeout)
                    if !self.stop.load(Ordering::Relaxed) && !self.workers.is_empty() => {}
                Err(_) => return Err(KeyError("the key pool has stopped".into())),
            }
        }
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock workers waiting on a full stock.
        while self.rx.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(
    alg: KeyAlgorithm,
    common_name: &str,
    tx: &Sender<Result<KeyMaterial, KeyError>>,
    stop: &AtomicBool,
    generated: &AtomicU64,
    gen_nanos: &AtomicU64,
) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut item = KeyMaterial::generate(alg, common_name);
        generated.fetch_add(1, Ordering::Relaxed);
        gen_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        loop {
            match tx.send_timeout(item, Duration::from_millis(100)) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(back)) if !stop.load(Ordering::Relaxed) => {
                    item = back
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(stock: usize) -> PoolConfig {
        PoolConfig {
            algorithm: KeyAlgorithm::P256,
            workers: 2,
            stock,
            common_name: "t".into(),
        }
    }

    #[test]
    fn stock_is_bounded_and_keys_are_distinct() {
        let pool = KeyPool::start(&cfg(4));
        let a = pool.take_blocking().unwrap();
        let b = pool.take_blocking().unwrap();
        assert_ne!(a.spki_der(), b.spki_der());
        assert!(pool.stock() <= 4);
        assert_eq!(pool.capacity(), 4);
    }

    #[test]
    fn a_pool_without_workers_refuses_at_once() {
        let pool = KeyPool::start(&PoolConfig {
            workers: 0,
            ..cfg(4)
        });
        assert!(pool.take_blocking().is_err());
        assert_eq!(pool.generated().0, 0);
    }

    #[tokio::test]
    async fn async_take_waits_for_workers() {
        let pool = Arc::new(KeyPool::start(&cfg(1)));
        for _ in 0..5 {
            pool.take().await.unwrap();
        }
        assert!(pool.generated().0 >= 5);
    }
}
