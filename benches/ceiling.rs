//! `cargo bench --bench ceiling`: how close the engine runs to its crypto limit, in one run.
//!
//! 1. The crypto ceiling. Single-thread cost of the per-device crypto both sides must do:
//!    the station's P-256 key + CSR (`KeyMaterial::generate`, the key pool's code) plus the
//!    emulator's CSR parse + verify + certificate sign (`CertificateAuthority::sign_csr`).
//!    Scaled to the machine's cores (`std::thread::available_parallelism`), that is the most
//!    devices/s this machine could provision if nothing but that crypto ran. TLS handshakes are
//!    left out: sessions are reused, so they are not a per-device cost.
//! 2. End-to-end: `station loadtest --devices N --sessions M` in this process (embedded emulator,
//!    real sockets and TLS, ledger and registry in a fresh temporary directory), its
//!    `throughput_per_s` as summary.json reports it, and the process CPU time per device; for
//!    each session count M (the line's default 16 and 64), run interleaved. The best median
//!    counts: sessions are the engine's concurrency (one request in flight each).
//! 3. `end-to-end / ceiling`. The machine is shared and its speed drifts by tens of percent
//!    within minutes, so the two are measured as pairs: the crypto ceiling is measured again
//!    right before each load test, each load test's rate is divided by its own ceiling, and
//!    the median of those ratios counts (for the session count with the best median). The
//!    ratio of the medians is printed beside it.
//!
//! Environment: FLEET_BENCH_DEVICES (default 5000), FLEET_BENCH_SESSIONS (comma-separated
//! session counts, default `16,64`: the `provision.sessions` default and the count where this
//! 2-core machine peaked), FLEET_BENCH_RUNS (load tests per count, default 3; the median counts),
//! FLEET_BENCH_CRYPTO_SECS (seconds per half of a crypto measurement, default 1).

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use fleet_station::emulator::ca::CertificateAuthority;
use fleet_station::keys::{KeyAlgorithm, KeyMaterial};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Median cost in µs of one call of `f`, over batches of 50 calls for about `secs` seconds.
fn per_call_us(secs: f64, mut f: impl FnMut()) -> (f64, usize) {
    const BATCH: usize = 50;
    for _ in 0..BATCH {
        f(); // warm-up
    }
    let mut batches = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs || batches.len() < 5 {
        let t = Instant::now();
        for _ in 0..BATCH {
            f();
        }
        batches.push(t.elapsed().as_secs_f64() * 1e6 / BATCH as f64);
    }
    let calls = batches.len() * BATCH;
    (median(batches), calls)
}

/// User + system CPU time this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    fleet_station::allocator::no_huge_pages();
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we use. Under
    // `cargo test` (no `--bench`) run a small smoke version so the target stays exercised.
    let benching = std::env::args().any(|a| a == "--bench");
    let devices: usize = env_or("FLEET_BENCH_DEVICES", if benching { 5000 } else { 50 });
    let sessions: Vec<usize> = std::env::var("FLEET_BENCH_SESSIONS")
        .unwrap_or_else(|_| "16,64".into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("FLEET_BENCH_SESSIONS={v:?} is not a count"))
        })
        .collect();
    let runs: usize = env_or("FLEET_BENCH_RUNS", if benching { 3 } else { 1 });
    let crypto_secs: f64 = env_or("FLEET_BENCH_CRYPTO_SECS", if benching { 1.0 } else { 0.1 });
    assert!(
        devices > 0 && !sessions.is_empty() && !sessions.contains(&0) && runs > 0,
        "counts must be positive"
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    println!("ceiling: crypto limit vs end-to-end load test");
    println!(
        "machine: {cores} cores (available_parallelism), load average at start {}",
        loadavg()
    );

    // --- 1. crypto ceiling ---------------------------------------------------------------
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path()).expect("CA");
    // Distinct CSRs, as real traffic has (each is parsed and verified from scratch anyway).
    let csrs: Vec<String> = (0..64)
        .map(|i| {
            KeyMaterial::generate(KeyAlgorithm::P256, &format!("LT-bench-{i:07}"))
                .expect("key")
                .csr_pem()
                .to_string()
        })
        .collect();
    let crypto = Crypto {
        ca: &ca,
        csrs: &csrs,
        secs: crypto_secs,
        cores,
    };
    let first = crypto.measure();
    println!();
    println!(
        "crypto, one thread (median of 50-call batches; measured again before each load test):"
    );
    println!(
        "  station  P-256 key + CSR (KeyMaterial::generate)       {:8.1} µs  ({} calls)",
        first.key_us, first.key_n
    );
    println!(
        "  emulator CSR verify + certificate sign (CA::sign_csr) {:8.1} µs  ({} calls)",
        first.sign_us, first.sign_n
    );
    println!(
        "  per device                                             {:8.1} µs",
        first.device_us()
    );
    println!(
        "  ceiling = {cores} cores × 1e6 / {:.1} µs       = {:8.0} devices/s",
        first.device_us(),
        first.ceiling
    );

    // --- 2. end-to-end ---------------------------------------------------------------------
    // Each session carries one request at a time (AWS's replies name no request), so the
    // sessions are the engine's concurrency: the load tests of each count run interleaved,
    // and the count with the best median is the engine's end-to-end figure.
    println!();
    println!(
        "end-to-end: station loadtest --devices {devices} --sessions {}, embedded emulator, fresh state, {runs} run(s) each, interleaved:",
        sessions
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let rt = support::runtime();
    let mut rates = vec![Vec::new(); sessions.len()];
    let mut cpu_per_device = vec![Vec::new(); sessions.len()];
    let mut ratios = vec![Vec::new(); sessions.len()];
    let mut ceilings = vec![first.ceiling];
    let mut crypto_us = vec![first.device_us()];
    for run in 1..=runs {
        for (k, &m) in sessions.iter().enumerate() {
            // The first load test pairs with the measurement printed above.
            let c = if run == 1 && k == 0 {
                first
            } else {
                let c = crypto.measure();
                ceilings.push(c.ceiling);
                crypto_us.push(c.device_us());
                c
            };
            let cpu0 = cpu_time();
            let r = support::loadtest(&rt, devices, m);
            let cpu = (cpu_time() - cpu0).as_secs_f64();
            let s = &r.summary;
            let stage = |name: &str| s.stages.get(name).map(|st| st.p99_ms).unwrap_or(f64::NAN);
            println!(
                "  run {run}, {m:3} sessions: crypto {:.1} µs (ceiling {:.0}/s), {:8.1} devices/s = {:.3} of it ({} devices in {:.3} s; wall with start-up {:.3} s), CPU {:.2} cores = {:.0} µs/device, p99 create {:.1} ms, register {:.1} ms, end-to-end {:.1} ms, retries {}, throttled {}",
                c.device_us(),
                c.ceiling,
                s.throughput_per_s,
                s.throughput_per_s / c.ceiling,
                s.devices.provisioned,
                s.elapsed_s,
                r.wall.as_secs_f64(),
                cpu / r.wall.as_secs_f64(),
                cpu * 1e6 / devices as f64,
                stage("create_certificate"),
                stage("register_thing"),
                stage("end_to_end"),
                s.retries,
                s.throttled,
            );
            rates[k].push(s.throughput_per_s);
            cpu_per_device[k].push(cpu * 1e6 / devices as f64);
            ratios[k].push(s.throughput_per_s / c.ceiling);
        }
    }
    let medians: Vec<(usize, f64, f64, f64)> = sessions
        .iter()
        .enumerate()
        .map(|(k, &m)| {
            (
                m,
                median(rates[k].clone()),
                median(cpu_per_device[k].clone()),
                median(ratios[k].clone()),
            )
        })
        .collect();
    let &(best_sessions, e2e, cpu_us, ratio) = medians
        .iter()
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .expect("at least one session count");
    let ceiling = median(ceilings.clone());
    let (low, high) = ceilings
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), &c| (l.min(c), h.max(c)));

    // --- 3. ratio ----------------------------------------------------------------------------
    println!();
    println!("summary:");
    println!(
        "  crypto ceiling (median of {})  {ceiling:8.0} devices/s  ({:.1} µs of crypto per device, {cores} cores; {low:.0}-{high:.0})",
        ceilings.len(),
        median(crypto_us)
    );
    for &(m, rate, cpu, r) in &medians {
        println!(
            "  end-to-end, {m:3} sessions (median) {rate:8.1} devices/s  ({cpu:.0} µs of CPU per device)  ratio {r:.3} (median of pairs), {:.3} (of medians)",
            rate / ceiling
        );
    }
    println!(
        "  end-to-end (best, {best_sessions} sessions) {e2e:8.1} devices/s  ({cpu_us:.0} µs of CPU per device)"
    );
    println!("  end-to-end / ceiling  {ratio:8.3}  (median of the paired ratios)");
    println!("  load average at end   {}", loadavg());
}

/// The crypto ceiling's measurement: what it needs, kept to measure it again.
struct Crypto<'a> {
    ca: &'a CertificateAuthority,
    csrs: &'a [String],
    secs: f64,
    cores: usize,
}

/// One measurement of the crypto ceiling.
#[derive(Clone, Copy)]
struct CryptoCost {
    key_us: f64,
    key_n: usize,
    sign_us: f64,
    sign_n: usize,
    /// Devices/s on every core if nothing but this crypto ran.
    ceiling: f64,
}

impl CryptoCost {
    fn device_us(&self) -> f64 {
        self.key_us + self.sign_us
    }
}

impl Crypto<'_> {
    fn measure(&self) -> CryptoCost {
        let (key_us, key_n) = per_call_us(self.secs, || {
            black_box(KeyMaterial::generate(KeyAlgorithm::P256, "LT-bench-0000001").expect("key"));
        });
        let mut i = 0;
        let (sign_us, sign_n) = per_call_us(self.secs, || {
            i = (i + 1) % self.csrs.len();
            black_box(
                self.ca
                    .sign_csr(self.csrs[i].as_bytes())
                    .expect("CSR signs"),
            );
        });
        CryptoCost {
            key_us,
            key_n,
            sign_us,
            sign_n,
            ceiling: self.cores as f64 * 1e6 / (key_us + sign_us),
        }
    }
}
