//! Telemetry: every stage reports [`Event`]s on one bounded channel; a single aggregator task
//! turns them into latency histograms, counters and a [`Snapshot`] published on a watch
//! channel. Consumers (the headless [`progress`] printer now, the dashboard later) read
//! snapshots; none of them can steer the pipeline.
//!
//! - [`summary`]: the end-of-run `summary.json` built from the aggregate.
//! - [`progress`]: the headless progress printer.

pub mod progress;
pub mod summary;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::provision::FailureCode;
use tokio::sync::{mpsc, watch};

/// The timed stages of a device's provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Waiting for key material (a ready key from the pool).
    Keygen,
    /// `CreateCertificateFromCsr` round trip (including retries).
    CreateCertificate,
    /// `RegisterThing` round trip (including retries).
    RegisterThing,
    /// Writing, committing and verifying the credentials on the board.
    JigWrite,
    /// From the board's HELLO to its verified identity.
    EndToEnd,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Keygen,
        Stage::CreateCertificate,
        Stage::RegisterThing,
        Stage::JigWrite,
        Stage::EndToEnd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Keygen => "keygen",
            Stage::CreateCertificate => "create_certificate",
            Stage::RegisterThing => "register_thing",
            Stage::JigWrite => "jig_write",
            Stage::EndToEnd => "end_to_end",
        }
    }
}

/// Something that happened in the pipeline.
#[derive(Debug, Clone)]
pub enum Event {
    DeviceStarted {
        serial: String,
        jig: String,
    },
    StageTime {
        stage: Stage,
        elapsed: Duration,
    },
    DeviceProvisioned {
        serial: String,
    },
    DeviceFailed {
        serial: String,
        reason: FailureCode,
    },
    /// The station stopped while the device was in flight; it keeps its state and resumes.
    DeviceInterrupted {
        serial: String,
    },
    /// The endpoint cannot be reached: devices wait for it.
    EndpointUnreachable {
        reason: String,
    },
    /// The endpoint is reachable again after `after`.
    EndpointReachable {
        after: Duration,
    },
    /// Another connection took over one of the station's client ids.
    SessionTakenOver {
        client_id: String,
    },
    Retry {
        api: &'static str,
    },
    Throttled {
        api: &'static str,
    },
    KeyStock {
        level: usize,
        capacity: usize,
    },
    /// A board's credentials were written, committed and verified.
    JigWrite {
        jig: String,
        /// Slot bytes written (the payload).
        payload_bytes: u64,
        /// From the first PUT to the verified read-back.
        elapsed: Duration,
        /// The port's line rate (0 = unpaced virtual line).
        baud: u32,
        /// Frames sent again (CRC errors, timeouts) and whole-write retries.
        retries: u64,
    },
    /// A board failed at the jig (write or verify failed twice).
    JigFailed {
        jig: String,
    },
    /// A jig's port went away or came back.
    JigConnection {
        jig: String,
        connected: bool,
    },
}

/// What one jig did in a run.
#[derive(Debug, Clone, Default)]
pub struct JigTotals {
    pub boards: u64,
    pub payload_bytes: u64,
    pub write_time: Duration,
    /// Σ baud/10 × write time: the bytes the line could have carried meanwhile.
    pub capacity_bytes: f64,
    pub retries: u64,
    pub failed_boards: u64,
    pub disconnects: u64,
    pub connected: bool,
}

/// A cheap, cloneable handle for emitting events.
#[derive(Clone)]
pub struct Telemetry {
    tx: mpsc::Sender<Event>,
}

impl Telemetry {
    /// Emits from async code (waits if the aggregator is behind: back-pressure, not loss).
    pub async fn emit(&self, e: Event) {
        let _ = self.tx.send(e).await;
    }

    /// Emits from a plain thread.
    pub fn emit_blocking(&self, e: Event) {
        let _ = self.tx.blocking_send(e);
    }
}

/// What consumers see, refreshed a few times a second.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub elapsed: Duration,
    /// Time from the start to the last finished device (the throughput denominator).
    pub busy: Duration,
    pub started: u64,
    pub provisioned: u64,
    pub failed: u64,
    pub interrupted: u64,
    pub retries: u64,
    pub throttled: u64,
    /// Why the endpoint cannot be reached, and since when (devices are paused).
    pub endpoint_down: Option<(String, Duration)>,
    pub key_stock: (usize, usize),
    pub jig_bytes: u64,
    /// Jigs whose port is currently gone.
    pub jigs_disconnected: usize,
    /// Median end-to-end latency so far.
    pub p50_end_to_end: Duration,
}

impl Snapshot {
    pub fn in_flight(&self) -> u64 {
        self.started
            .saturating_sub(self.provisioned + self.failed + self.interrupted)
    }
}

/// Everything the aggregator learned; returned when the event channel closes.
pub struct Aggregate {
    pub started_at: Instant,
    /// When the last device finished (provisioned or failed); the run's throughput is
    /// measured up to here, not up to the teardown.
    pub last_done_at: Option<Instant>,
    pub finished_at: Instant,
    pub histograms: BTreeMap<Stage, Histogram<u64>>,
    pub started: u64,
    pub provisioned: u64,
    pub failed: u64,
    pub interrupted: u64,
    pub retries: u64,
    pub throttled: u64,
    pub failures: BTreeMap<String, u64>,
    /// Endpoint outages: how many, and their total length.
    pub outages: u64,
    pub outage_time: Duration,
    /// Since when, and why, the endpoint is unreachable now.
    pub down: Option<(Instant, String)>,
    /// Client ids another connection took over.
    pub takeovers: u64,
    pub jig_bytes: u64,
    pub jigs: BTreeMap<String, JigTotals>,
}

impl Aggregate {
    fn new() -> Aggregate {
        let histograms = Stage::ALL
            .iter()
            .map(|s| {
                // Microseconds, up to one hour, 3 significant figures.
                let h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
                (*s, h)
            })
            .collect();
        let now = Instant::now();
        Aggregate {
            started_at: now,
            last_done_at: None,
            finished_at: now,
            histograms,
            started: 0,
            provisioned: 0,
            failed: 0,
            interrupted: 0,
            retries: 0,
            throttled: 0,
            failures: BTreeMap::new(),
            outages: 0,
            outage_time: Duration::ZERO,
            down: None,
            takeovers: 0,
            jig_bytes: 0,
            jigs: BTreeMap::new(),
        }
    }

    fn apply(&mut self, e: Event, key_stock: &mut (usize, usize)) {
        match e {
            Event::DeviceStarted { .. } => self.started += 1,
            Event::StageTime { stage, elapsed } => {
                let us = (elapsed.as_micros() as u64).clamp(1, 3_600_000_000);
                if let Some(h) = self.histograms.get_mut(&stage) {
                    let _ = h.record(us);
                }
            }
            Event::DeviceProvisioned { .. } => {
                self.provisioned += 1;
                self.last_done_at = Some(Instant::now());
            }
            Event::DeviceFailed { reason, .. } => {
                self.failed += 1;
                self.last_done_at = Some(Instant::now());
                *self.failures.entry(reason.to_string()).or_default() += 1;
            }
            Event::DeviceInterrupted { .. } => self.interrupted += 1,
            Event::EndpointUnreachable { reason } => {
                if self.down.is_none() {
                    self.outages += 1;
                    self.down = Some((Instant::now(), reason));
                }
            }
            Event::EndpointReachable { after } => {
                self.down = None;
                self.outage_time += after;
            }
            Event::SessionTakenOver { .. } => self.takeovers += 1,
            Event::Retry { .. } => self.retries += 1,
            Event::Throttled { .. } => self.throttled += 1,
            Event::KeyStock { level, capacity } => *key_stock = (level, capacity),
            Event::JigWrite {
                jig,
                payload_bytes,
                elapsed,
                baud,
                retries,
            } => {
                self.jig_bytes += payload_bytes;
                let j = self.jigs.entry(jig).or_default();
                j.boards += 1;
                j.payload_bytes += payload_bytes;
                j.write_time += elapsed;
                j.capacity_bytes += f64::from(baud) / 10.0 * elapsed.as_secs_f64();
                j.retries += retries;
            }
            Event::JigFailed { jig } => self.jigs.entry(jig).or_default().failed_boards += 1,
            Event::JigConnection { jig, connected } => {
                let j = self.jigs.entry(jig).or_default();
                if j.connected && !connected {
                    j.disconnects += 1;
                }
                j.connected = connected;
            }
        }
    }

    fn snapshot(&self, key_stock: (usize, usize)) -> Snapshot {
        Snapshot {
            elapsed: self.started_at.elapsed(),
            busy: self
                .last_done_at
                .map_or(Duration::ZERO, |t| t.duration_since(self.started_at)),
            started: self.started,
            provisioned: self.provisioned,
            failed: self.failed,
            interrupted: self.interrupted,
            retries: self.retries,
            throttled: self.throttled,
            endpoint_down: self
                .down
                .as_ref()
                .map(|(since, why)| (why.clone(), since.elapsed())),
            key_stock,
            jig_bytes: self.jig_bytes,
            jigs_disconnected: self.jigs.values().filter(|j| !j.connected).count(),
            p50_end_to_end: Duration::from_micros(
                self.histograms[&Stage::EndToEnd].value_at_quantile(0.5),
            ),
        }
    }
}

/// Starts the aggregator. It ends, returning the aggregate, when every [`Telemetry`] handle
/// has been dropped.
pub fn start() -> (
    Telemetry,
    watch::Receiver<Snapshot>,
    tokio::task::JoinHandle<Aggregate>,
) {
    let (tx, mut rx) = mpsc::channel::<Event>(65_536);
    let (snap_tx, snap_rx) = watch::channel(Snapshot::default());
    let task = tokio::spawn(async move {
        let mut agg = Aggregate::new();
        let mut key_stock = (0, 0);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => agg.apply(e, &mut key_stock),
                    None => break,
                },
                _ = tick.tick() => {
                    let _ = snap_tx.send(agg.snapshot(key_stock));
                }
            }
        }
        agg.finished_at = Instant::now();
        let _ = snap_tx.send(agg.snapshot(key_stock));
        agg
    });
    (Telemetry { tx }, snap_rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn aggregates_counts_failures_and_latencies() {
        let (t, _snap, task) = start();
        t.emit(Event::DeviceStarted {
            serial: "a".into(),
            jig: "j".into(),
        })
        .await;
        t.emit(Event::DeviceStarted {
            serial: "b".into(),
            jig: "j".into(),
        })
        .await;
        for ms in [10, 20, 30] {
            t.emit(Event::StageTime {
                stage: Stage::RegisterThing,
                elapsed: Duration::from_millis(ms),
            })
            .await;
        }
        t.emit(Event::DeviceProvisioned { serial: "a".into() })
            .await;
        t.emit(Event::DeviceFailed {
            serial: "b".into(),
            reason: FailureCode::Jig(crate::jig::JigFailure::VerifyMismatch),
        })
        .await;
        t.emit(Event::Throttled {
            api: "RegisterThing",
        })
        .await;
        drop(t);
        let agg = task.await.unwrap();
        assert_eq!(
            (agg.started, agg.provisioned, agg.failed, agg.throttled),
            (2, 1, 1, 1)
        );
        assert_eq!(agg.failures["jig:verify_mismatch"], 1);
        let h = &agg.histograms[&Stage::RegisterThing];
        assert_eq!(h.len(), 3);
        assert!((19_900..=20_100).contains(&h.value_at_quantile(0.5)));
    }
}
