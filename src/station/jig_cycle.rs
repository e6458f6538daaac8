//! The cycle of one jig, on its own OS thread: wait for a board → read its identity →
//! get credentials from the provisioning engine → write, commit, verify → report → release
//! the board and wait for the next one. The board is reached through its port's driver
//! ([`JigDriver`]: our jig protocol, or a standard firmware's commands); this file knows the
//! trait only.
//!
//! The ledger sees every step before the next one starts: `begin` when the board is seen,
//! the engine's steps, then `written` once COMMIT is answered and `verified` once the digest
//! the board read back after committing matched (both come with COMMIT's answer). A ledger
//! that cannot record a step stops the line (raised on the run's [`Halt`]); a board whose
//! device was interrupted by a stop keeps its ledger state and resumes on the next run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::command::{FeedGate, FeedState, PAUSED_POLL, RetryBook};
use crate::halt::Halt;
use crate::jig::{
    CsrSubject, DriverKind, DriverOptions, JigDriver, JigError, PortSettings, Slot, SlotWrite,
};
use crate::keys::KeySource;
use crate::ledger::{DeviceState, Ledger, LedgerError, Transition};
use crate::provision::{
    BoardIdentity, Credentials, DeviceFailure, DeviceJob, FailureCode, KeyPlan, NotProvisioned,
};
use crate::shutdown::Shutdown;
use crate::telemetry::{Event, Stage, Telemetry};

/// How many times a board's write + verify is tried before the board is failed.
const WRITE_ATTEMPTS: u32 = 2;

/// Counts finished boards and says when the line has done its job.
pub struct LineProgress {
    done: AtomicU64,
    /// Boards to finish; grows when the operator sends failed boards round again.
    target: Option<AtomicU64>,
    /// Triggered when `target` boards are finished.
    pub finished: Shutdown,
}

impl LineProgress {
    pub fn new(target: Option<u64>) -> LineProgress {
        let finished = Shutdown::new();
        if target == Some(0) {
            finished.trigger();
        }
        LineProgress {
            done: AtomicU64::new(0),
            target: target.map(AtomicU64::new),
            finished,
        }
    }

    fn board_done(&self) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if self
            .target
            .as_ref()
            .is_some_and(|t| n >= t.load(Ordering::SeqCst))
        {
            self.finished.trigger();
        }
    }

    /// `n` more boards to finish (failed boards the operator sent round again).
    pub fn add_target(&self, n: u64) {
        if let Some(t) = &self.target {
            t.fetch_add(n, Ordering::SeqCst);
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }
}

/// What every jig thread shares.
#[derive(Clone)]
pub struct LineContext {
    pub ledger: Ledger,
    pub telemetry: Telemetry,
    pub jobs: mpsc::Sender<DeviceJob>,
    pub root_ca_pem: Arc<Vec<u8>>,
    pub progress: Arc<LineProgress>,
    /// The run's stop (Ctrl-C, or a problem raised by a stage): start nothing new.
    pub halt: Halt,
    /// Takes a finished board (jig name, serial) off its jig. Set for the virtual line, where
    /// it stands in for the operator; on a real line the operator does it by hand.
    pub release: Option<ReleaseHook>,
    /// Where device keys come from.
    pub key_source: KeySource,
    /// Station id, put in the subject of board-made CSRs.
    pub station_id: String,
    /// The operator's feed: paused, no new board starts; stopping, the jig's cycle ends
    /// after its board in flight.
    pub feed: FeedGate,
    /// Failed boards, and those the operator re-armed for one more try.
    pub retry: Arc<RetryBook>,
    /// Leave out of each write the slots the board already holds (`jigs.skip_held`).
    pub skip_held: bool,
}

/// See [`LineContext::release`].
pub type ReleaseHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl LineContext {
    fn stopping(&self) -> bool {
        self.halt.shutdown().is_triggered()
            || self.progress.finished.is_triggered()
            || self.feed.state() == FeedState::Stopping
    }
}

/// The failure code of a jig error (the last segment of its diagnostic code).
fn jig_code(e: &JigError) -> FailureCode {
    FailureCode::Jig(e.failure())
}

/// One jig of the line: a named port, its line settings and its driver.
#[derive(Debug, Clone)]
pub struct JigPort {
    pub name: String,
    pub path: String,
    pub settings: PortSettings,
    pub driver: DriverKind,
    pub options: DriverOptions,
}

impl JigPort {
    /// Whether the root CA is written to this jig's boards (an `nrf91-at` or `zephyr-cred`
    /// port may leave it to the firmware: `write_root_ca = false`).
    pub fn writes_root_ca(&self) -> bool {
        match self.driver {
            DriverKind::FleetJig => true,
            DriverKind::Nrf91At => self.options.nrf91.write_root_ca,
            DriverKind::ZephyrCred => self.options.zephyr.write_root_ca,
        }
    }
}

/// Runs the line cycle on one port until the line is done or the station stops.
pub fn run_jig(port: &JigPort, ctx: &LineContext) {
    let (name, path, settings) = (port.name.as_str(), port.path.as_str(), &port.settings);
    // No silent success: say once which items this jig's boards are not given.
    let unwritten: Vec<String> = [Slot::DeviceConfig, Slot::ThingName, Slot::RootCa]
        .into_iter()
        .filter(|s| !port.driver.writes(*s) || (*s == Slot::RootCa && !port.writes_root_ca()))
        .map(|s| s.to_string())
        .collect();
    if !unwritten.is_empty() {
        tracing::warn!(
            jig = name,
            driver = %port.driver,
            not_written = %unwritten.join(", "),
            "this driver's boards have no place for these items: they are not written, and \
             'verified' covers the items written (see docs/jig-drivers.md)"
        );
    }
    let mut link: Option<Box<dyn JigDriver>> = None;
    // The board this jig finished last, and whether it was verified.
    let mut last: Option<(String, bool)> = None;
    // The jig has been seen empty since then (an operator took the board off).
    let mut emptied = false;
    let mut reported_disconnect = false;
    while !ctx.stopping() {
        let l = match link.as_mut() {
            Some(l) => l,
            None => match port.driver.open(path, settings, &port.options) {
                Ok(l) => {
                    if reported_disconnect {
                        tracing::info!(jig = name, "port is back");
                        reported_disconnect = false;
                    }
                    ctx.telemetry.emit_blocking(Event::JigConnection {
                        jig: name.to_string(),
                        connected: true,
                    });
                    link.insert(l)
                }
                Err(e) => {
                    if !reported_disconnect {
                        tracing::warn!(jig = name, error = %e, "jig port unavailable (disconnected); waiting for it");
                        ctx.telemetry.emit_blocking(Event::JigConnection {
                            jig: name.to_string(),
                            connected: false,
                        });
                        reported_disconnect = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            },
        };
        let info = match l.identify() {
            Ok(info) => info,
            Err(JigError::NoBoard { .. }) => {
                emptied = true;
                continue;
            }
            Err(e) => {
                tracing::warn!(jig = name, error = %e, "jig link failed; reopening the port");
                ctx.telemetry.emit_blocking(Event::JigConnection {
                    jig: name.to_string(),
                    connected: false,
                });
                link = None;
                continue;
            }
        };
        if let Some((serial, verified)) = &last
            && *serial == info.serial
        {
            // The board just finished is still there (or rebooted, or was put back). Only a
            // failed board that was taken off and put back on a real line, or one the
            // operator re-armed (`r`), is tried again; a virtual line's simulated operator
            // puts one back only when it is re-armed.
            let retry = !verified
                && ((emptied && ctx.release.is_none()) || ctx.retry.take_armed(&info.serial));
            if !retry {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        if ctx.feed.state() == FeedState::Paused {
            // A new board waits on the jig while the operator has paused the feed.
            std::thread::sleep(PAUSED_POLL);
            continue;
        }
        emptied = false;
        let board = BoardIdentity {
            serial: info.serial.clone(),
            mac: info.mac.clone(),
            hw_rev: info.hw_rev.clone(),
            jig: name.to_string(),
        };
        let verified = match provision_board(l.as_mut(), &board, ctx, settings.baud) {
            Ok(Board::Done { verified }) => verified,
            // The station is stopping; the device keeps its state for the next run.
            Ok(Board::Interrupted) => return,
            Err(e) => {
                // Nothing may run ahead of the ledger: the whole line stops.
                ctx.halt.raise(e);
                return;
            }
        };
        // Release the board (it reboots into its new identity; a virtual fixture then places
        // the next board).
        if let Err(e) = l.release() {
            tracing::debug!(jig = name, error = %e, "the board did not acknowledge its release");
        }
        if let Some(release) = &ctx.release {
            release(name, &info.serial);
        }
        last = Some((info.serial, verified));
    }
}

/// How a board left the jig's cycle.
enum Board {
    /// Finished: verified (now, or already before), or failed.
    Done { verified: bool },
    /// The station stopped while its device was in flight.
    Interrupted,
}

/// Provisions the board on the jig. A board the ledger shows verified is never provisioned
/// again (it counts as verified). Errors are the ledger's: they stop the line.
fn provision_board(
    link: &mut dyn JigDriver,
    board: &BoardIdentity,
    ctx: &LineContext,
    baud: u32,
) -> Result<Board, LedgerError> {
    let started = Instant::now();
    let begun = match ctx.ledger.begin_blocking(&board.serial, &board.jig) {
        Ok(b) => b,
        Err(e @ LedgerError::AlreadyProvisioned { .. }) => {
            // Not provisioned again (it would orphan its identity). On a real line the
            // operator is told and the jig waits for the next board; a virtual line counts it
            // as a board this run did not provision (its queue holds no other copy).
            tracing::warn!(jig = %board.jig, serial = %board.serial, "{e}");
            if ctx.release.is_some() {
                ctx.telemetry.emit_blocking(Event::DeviceFailed {
                    serial: board.serial.clone(),
                    reason: FailureCode::AlreadyProvisioned,
                });
                ctx.progress.board_done();
            }
            return Ok(Board::Done { verified: true });
        }
        Err(e @ LedgerError::HeldElsewhere { .. }) => {
            // Another station sharing the ledger works on this serial now: not provisioned
            // here (a second certificate for one serial). The operator is told who holds it;
            // the board is tried again once taken off and put back (or re-armed), when that
            // station may have finished it or let it go. A virtual line counts it as failed.
            tracing::warn!(jig = %board.jig, serial = %board.serial, "{e}");
            ctx.telemetry.emit_blocking(Event::DeviceFailed {
                serial: board.serial.clone(),
                reason: FailureCode::HeldElsewhere,
            });
            if ctx.release.is_some() {
                ctx.progress.board_done();
            }
            return Ok(Board::Done { verified: false });
        }
        Err(e) => return Err(e),
    };
    let device_id = begun.id;
    if let Some(r) = &begun.resume {
        tracing::info!(jig = %board.jig, serial = %board.serial, from = r.state.as_str(), "resuming an unfinished board");
    }
    ctx.telemetry.emit_blocking(Event::DeviceStarted {
        serial: board.serial.clone(),
        jig: board.jig.clone(),
    });

    let outcome = key_plan(link, board, begun.resume.as_ref().map(|r| r.state), ctx)
        .map_err(NotProvisioned::Failed)
        .and_then(|key| {
            let (reply, rx) = oneshot::channel();
            let job = DeviceJob {
                device_id,
                board: board.clone(),
                key,
                resume: begun.resume,
                reply,
            };
            // An engine that is gone has stopped: the device was not started there.
            if ctx.jobs.blocking_send(job).is_err() {
                return Err(NotProvisioned::Interrupted);
            }
            rx.blocking_recv()
                .unwrap_or(Err(NotProvisioned::Interrupted))
        });
    let result = match outcome {
        Ok(creds) => write_and_verify(link, device_id, &creds, ctx, &board.jig, baud)?,
        Err(NotProvisioned::Failed(f)) => Err(f),
        Err(NotProvisioned::Interrupted) => {
            tracing::info!(jig = %board.jig, serial = %board.serial, "interrupted: the board resumes where it stopped on the next run");
            ctx.telemetry.emit_blocking(Event::DeviceInterrupted {
                serial: board.serial.clone(),
            });
            return Ok(Board::Interrupted);
        }
    };
    let verified = result.is_ok();
    match result {
        Ok(()) => {
            ctx.telemetry.emit_blocking(Event::StageTime {
                stage: Stage::EndToEnd,
                elapsed: started.elapsed(),
            });
            ctx.telemetry.emit_blocking(Event::DeviceProvisioned {
                serial: board.serial.clone(),
            });
        }
        Err(DeviceFailure { code, message }) => {
            tracing::warn!(jig = %board.jig, serial = %board.serial, reason = %code, "{message}");
            ctx.ledger.record_blocking(
                device_id,
                Transition::Failed {
                    reason: format!("{code}: {message}"),
                },
            )?;
            ctx.telemetry.emit_blocking(Event::DeviceFailed {
                serial: board.serial.clone(),
                reason: code,
            });
            ctx.retry.failed(&board.serial);
        }
    }
    ctx.progress.board_done();
    Ok(Board::Done { verified })
}

/// Where this board's key comes from. With `keys.source = "device"` the board makes a key
/// and returns its CSR (GEN_CSR) — unless it already committed one (a resumed board at
/// `written`).
fn key_plan(
    link: &mut dyn JigDriver,
    board: &BoardIdentity,
    resumed_at: Option<DeviceState>,
    ctx: &LineContext,
) -> Result<KeyPlan, DeviceFailure> {
    match ctx.key_source {
        KeySource::Pool => Ok(KeyPlan::Pool),
        KeySource::Aws => Ok(KeyPlan::Aws),
        KeySource::Device if resumed_at == Some(DeviceState::Written) => Ok(KeyPlan::Committed),
        KeySource::Device => {
            let subject = CsrSubject {
                common_name: board.serial.clone(),
                organization: String::new(),
                organizational_unit: ctx.station_id.clone(),
                country: String::new(),
                serial_number: board.serial.clone(),
            };
            let started = Instant::now();
            let csr_pem = link.gen_csr(&subject).map_err(|e| DeviceFailure {
                code: jig_code(&e),
                message: format!("the board could not make its key and CSR: {e}"),
            })?;
            ctx.telemetry.emit_blocking(Event::StageTime {
                stage: Stage::Keygen,
                elapsed: started.elapsed(),
            });
            Ok(KeyPlan::Device { csr_pem })
        }
    }
}

/// The slot contents for a board.
fn slot_contents(creds: &Credentials, root_ca: &[u8]) -> Vec<(Slot, Vec<u8>)> {
    let config: BTreeMap<&str, &str> = creds
        .device_configuration
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    vec![
        (Slot::Certificate, creds.certificate_pem.as_bytes().to_vec()),
        (Slot::RootCa, root_ca.to_vec()),
        (
            Slot::DeviceConfig,
            serde_json::to_vec(&config).expect("a string map serializes"),
        ),
        (Slot::ThingName, creds.thing_name.as_bytes().to_vec()),
    ]
}

/// The slots that are the same from board to board: worth asking the board whether it
/// already holds them (the root CA its firmware bakes in, a configuration that did not
/// change). The certificate, key and thing name are new with each identity.
const SHARED_SLOTS: [Slot; 2] = [Slot::RootCa, Slot::DeviceConfig];

/// Leaves out of `items` the shared slots the board already holds, byte for byte (HASH:
/// length and SHA-256); returns the bytes left out. Those slots are verified by that digest
/// and are not touched by the COMMIT of the others, so the identity is still verified as a
/// whole. A board that cannot answer gets every slot written.
fn skip_held(link: &mut dyn JigDriver, items: &mut Vec<SlotWrite<'_>>, jig: &str) -> u64 {
    let asked: Vec<SlotWrite<'_>> = items
        .iter()
        .filter(|i| SHARED_SLOTS.contains(&i.slot))
        .map(|i| SlotWrite {
            slot: i.slot,
            data: i.data,
        })
        .collect();
    let held = match link.held(&asked) {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(jig, error = %e, "the board did not say which slots it holds; writing them all");
            return 0;
        }
    };
    let mut skipped = 0;
    items.retain(|i| {
        let keep = !held.contains(&i.slot);
        if !keep {
            skipped += i.data.len() as u64;
        }
        keep
    });
    skipped
}

/// Writes and verifies the identity: `Ok(Err(failure))` when the board failed at the jig;
/// `Err` when the ledger could not record a step.
fn write_and_verify(
    link: &mut dyn JigDriver,
    device_id: i64,
    creds: &Credentials,
    ctx: &LineContext,
    jig: &str,
    baud: u32,
) -> Result<Result<(), DeviceFailure>, LedgerError> {
    let started = Instant::now();
    let contents = slot_contents(creds, &ctx.root_ca_pem);
    // Only the items the driver's board has a place for (see docs/jig-drivers.md).
    let kind = link.kind();
    let mut items: Vec<SlotWrite<'_>> = contents
        .iter()
        .filter(|(slot, _)| kind.writes(*slot))
        .map(|(slot, data)| SlotWrite { slot: *slot, data })
        .collect();
    // The private key (station- or AWS-made) is borrowed straight from its zeroizing
    // holder; a board-made key is already on the board and is committed with the rest.
    if let Some(key) = &creds.private_key {
        items.push(SlotWrite {
            slot: Slot::PrivateKey,
            data: key.expose().as_bytes(),
        });
    }
    let retransmissions_before = link.retransmissions();
    // The line time runs from the question of what the board holds (or the first PUT of the
    // first attempt) to the verified read-back.
    let line_started = Instant::now();
    let skipped_bytes = if ctx.skip_held {
        skip_held(link, &mut items, jig)
    } else {
        0
    };
    let mut last = None;
    for attempt in 0..WRITE_ATTEMPTS {
        if attempt > 0 {
            ctx.telemetry
                .emit_blocking(Event::Retry { api: "jig_write" });
        }
        // One pipelined stream: PUTs, COMMIT, and COMMIT's answer carrying the digest the
        // board read back from its flash, compared by the link.
        // A few progress events per write (every tenth of it), not one per frame.
        let mut shown = None;
        let mut progress = |done: usize, total: usize| {
            let tenth = (done * 10).checked_div(total).unwrap_or(10);
            if shown != Some(tenth) {
                shown = Some(tenth);
                ctx.telemetry.emit_blocking(Event::JigProgress {
                    jig: jig.to_string(),
                    done: done as u64,
                    total: total as u64,
                });
            }
        };
        match link.write_and_verify(&items, &mut progress) {
            Ok(report) => {
                let line_time = line_started.elapsed();
                // COMMIT answered: the board holds the identity; the digest matched: verified.
                ctx.ledger.record_blocking(device_id, Transition::Written)?;
                ctx.ledger
                    .record_blocking(device_id, Transition::Verified)?;
                ctx.telemetry.emit_blocking(Event::StageTime {
                    stage: Stage::JigWrite,
                    elapsed: started.elapsed(),
                });
                ctx.telemetry.emit_blocking(Event::JigWrite {
                    jig: jig.to_string(),
                    payload_bytes: report.bytes as u64,
                    skipped_bytes,
                    elapsed: line_time,
                    baud,
                    retries: link.retransmissions() - retransmissions_before + u64::from(attempt),
                });
                return Ok(Ok(()));
            }
            Err(e @ (JigError::VerifyMismatch { .. } | JigError::DigestMismatch { .. })) => {
                // COMMIT was answered, or each item was stored as its command answered (the
                // board holds what its digest shows, which is not what was sent): the
                // credentials are on the board, unverified.
                ctx.ledger.record_blocking(device_id, Transition::Written)?;
                last = Some(e);
            }
            Err(e) => last = Some(e),
        }
    }
    ctx.telemetry.emit_blocking(Event::JigFailed {
        jig: jig.to_string(),
    });
    let e = last.expect("at least one attempt ran");
    Ok(Err(DeviceFailure::new(
        jig_code(&e),
        format!("writing the identity failed twice: {e}"),
    )))
}
