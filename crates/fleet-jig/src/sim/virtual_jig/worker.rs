//! The virtual jig's board thread: it places boards from the queue and takes them off,
//! reads what the station writes off the pty into the [`Uart`], hands the board each frame
//! that has arrived (with the faults in force), queues the board's answers on the line and
//! writes them to the pty when they are through, and sleeps exactly until the next thing is
//! due (a byte, a busy board becoming free, a wake-up from the [`VirtualJig`](super::VirtualJig)
//! handle).

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use super::pty::Pty;
use super::{Request, Shared, VirtualJigConfig, lock, sys};
use crate::error::JigError;
use crate::sim::board::{Board, BoardFaults, BoardSpec, Outcome};
use crate::sim::faults::{FaultPlan, RxFault, TxFault};
use crate::sim::uart::{RxFrame, Uart};
use crate::wire::codec::{self, CodecError};
use crate::wire::protocol::cmd;

/// A frame the board handles later: after a stall, or after the flash time of a PUT.
struct Deferred {
    at: Instant,
    index: u64,
    frame: (u8, u16, u32, Vec<u8>),
}

/// Most bytes the line holds before the board stops reading the pty (the station is far
/// ahead of the line; the pty's own buffer then fills).
const LINE_CAP: usize = 64 * 1024;
/// A station that does not read its port for this long loses what the board sends.
const TX_GIVE_UP: Duration = Duration::from_secs(1);
/// How often an empty jig looks for the next board.
const PLACE_POLL: Duration = Duration::from_millis(10);
/// Most of the board thread's own lateness (the host was busy) that the emulated line makes
/// up for; anything later than this is charged to the line as a slow board.
const LATE_MAX: Duration = Duration::from_millis(2);

/// The board thread's state.
pub(super) struct Worker {
    config: VirtualJigConfig,
    /// The stable path.
    link: PathBuf,
    /// `None` while unplugged.
    pty: Option<Pty>,
    /// The last wait said the pty has bytes (or we have not waited yet).
    readable: bool,
    boards: Receiver<BoardSpec>,
    queue_closed: bool,
    board: Option<Board>,
    /// A rebooting board ignores the line until then.
    awake_at: Instant,
    /// The line both ways and the board's RX buffer.
    uart: Uart,
    /// The board is busy until this frame is handled.
    deferred: Option<Deferred>,
    tx_blocked_since: Option<Instant>,
    plan: FaultPlan,
    out: Vec<u8>,
    read_buf: Vec<u8>,
    requests: Receiver<Request>,
    wake: UnixStream,
    shared: Arc<Shared>,
}

impl Worker {
    /// The board thread for a jig whose adapter is plugged in as `pty` behind `link`; it
    /// takes boards from `boards` and requests from `requests`, and is woken through `wake`.
    pub(super) fn new(
        config: VirtualJigConfig,
        link: PathBuf,
        pty: Pty,
        boards: Receiver<BoardSpec>,
        requests: Receiver<Request>,
        wake: UnixStream,
        shared: Arc<Shared>,
    ) -> Worker {
        Worker {
            uart: Uart::new(config.baud, config.params.rx_buffer),
            plan: FaultPlan::new(config.faults.clone()),
            config,
            link,
            pty: Some(pty),
            readable: true,
            boards,
            queue_closed: false,
            board: None,
            awake_at: Instant::now(),
            deferred: None,
            tx_blocked_since: None,
            out: Vec::with_capacity(codec::MAX_WIRE),
            read_buf: vec![0; 8192],
            requests,
            wake,
            shared,
        }
    }

    /// Serves the jig until [`Shared::stop`] is set.
    pub(super) fn run(&mut self) {
        sys::precise_timers();
        while !self.shared.stop.load(Ordering::SeqCst) {
            self.serve_requests();
            let take_off = lock(&self.shared.take_off).take();
            if let Some(serial) = take_off
                && self
                    .board
                    .as_ref()
                    .is_some_and(|b| b.spec().serial == serial)
            {
                self.remove_board();
            }
            if self.board.is_none() {
                self.place_next();
            }
            if self.readable {
                self.read_pty(Instant::now());
            }
            self.advance(Instant::now());
            self.flush_tx(Instant::now());
            let wake_at = self.next_wake();
            self.wait(wake_at);
        }
    }

    fn serve_requests(&mut self) {
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Unplug(ack) => {
                    self.unplug_port();
                    let _ = ack.send(());
                }
                Request::Replug(ack) => {
                    let _ = ack.send(self.replug_port());
                }
            }
        }
    }

    fn unplug_port(&mut self) {
        if self.pty.is_none() {
            return;
        }
        // The device node goes first: from now on opening the path fails.
        let _ = std::fs::remove_file(&self.link);
        self.pty = None;
        self.uart.rx.clear();
        self.uart.tx.clear();
        self.tx_blocked_since = None;
        self.reset_board_rx();
        if let Some(b) = self.board.as_mut() {
            b.reboot();
        }
        lock(&self.shared.stats).unplugs += 1;
        tracing::info!(path = %self.link.display(), "virtual jig: adapter unplugged");
    }

    fn replug_port(&mut self) -> Result<(), JigError> {
        if self.pty.is_some() {
            return Ok(());
        }
        self.pty = Some(Pty::open(&self.link)?);
        self.readable = true;
        self.awake_at = Instant::now() + self.config.boot_time;
        lock(&self.shared.stats).replugs += 1;
        tracing::info!(path = %self.link.display(), "virtual jig: adapter plugged back");
        Ok(())
    }

    /// The board's RX side starts empty (new board, reboot, power loss).
    fn reset_board_rx(&mut self) {
        self.uart.reset_rx();
        self.deferred = None;
    }

    fn place_next(&mut self) {
        if self.queue_closed {
            return;
        }
        match self.boards.try_recv() {
            Ok(spec) => {
                let serial = spec.serial.clone();
                match Board::new(spec, self.config.params, &self.config.flash_dir) {
                    Ok(board) => {
                        self.board = Some(board);
                        self.awake_at = Instant::now();
                        self.reset_board_rx();
                        *lock(&self.shared.current) = Some(serial.clone());
                        let mut s = lock(&self.shared.stats);
                        s.boards_placed += 1;
                        s.serials.push(serial);
                    }
                    Err(e) => {
                        tracing::error!(serial = %serial, error = %e, "virtual jig: cannot place board")
                    }
                }
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => self.queue_closed = true,
        }
    }

    fn remove_board(&mut self) {
        if self.board.take().is_some() {
            self.reset_board_rx();
            *lock(&self.shared.current) = None;
            lock(&self.shared.stats).boards_removed += 1;
        }
    }

    /// Whether to read the pty now. Unpaced, the pty's buffer stands in for the line and a
    /// busy board reads nothing (flow control by the kernel).
    fn wants_input(&self) -> bool {
        self.pty.is_some()
            && self.uart.rx.len() < LINE_CAP
            && (self.uart.rx.is_paced() || (self.deferred.is_none() && self.uart.rx.is_empty()))
    }

    /// Takes what the station has written off the pty, stamped with `now`.
    fn read_pty(&mut self, now: Instant) {
        self.readable = false;
        while self.wants_input() {
            let Some(pty) = self.pty.as_ref() else { return };
            let max = if self.uart.rx.is_paced() {
                self.read_buf.len()
            } else {
                self.uart.room().clamp(1, self.read_buf.len())
            };
            match sys::read(pty.master.as_raw_fd(), &mut self.read_buf[..max]) {
                Ok(0) => return,
                Ok(n) => {
                    self.uart.rx.push(&self.read_buf[..n], now);
                    lock(&self.shared.stats).bytes_received += n as u64;
                    if n < max {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "virtual jig: pty read failed; the adapter is gone");
                    self.unplug_port();
                    return;
                }
            }
        }
    }

    /// Moves the board's clock to `now`: bytes arrive, frames are handled, in time order.
    fn advance(&mut self, now: Instant) {
        loop {
            let byte_due = self.uart.rx.next_due().filter(|t| *t <= now);
            let busy_until = self.deferred.as_ref().map(|d| d.at);
            match (byte_due, busy_until) {
                (None, None) => break,
                (None, Some(at)) if at > now => break,
                // A byte arrives while the board is busy: into the RX buffer (if it fits).
                (Some(b), Some(at)) if b < at => {
                    // Strictly before the board is free again, and no later than now.
                    let before = at.checked_sub(Duration::from_nanos(1)).unwrap_or(at);
                    self.hold(before.min(now).max(b));
                }
                (_, Some(at)) if at <= now => {
                    self.finish_deferred();
                    self.drain_held(at);
                }
                (Some(_), None) => self.receive(now),
                _ => break,
            }
        }
    }

    /// Bytes through the line by `until` go into the busy board's RX buffer; what does not
    /// fit is lost.
    fn hold(&mut self, until: Instant) {
        let lost = self.uart.hold(until);
        if lost > 0 {
            lock(&self.shared.stats).rx_overrun_bytes += lost;
        }
    }

    /// The board is free: bytes through by `now` go straight to the frame assembler, and each
    /// frame is handled when its delimiter arrives.
    fn receive(&mut self, now: Instant) {
        while self.deferred.is_none() {
            let Some(received) = self.uart.receive(now) else {
                return;
            };
            if received.overrun > 0 {
                lock(&self.shared.stats).rx_overrun_bytes += received.overrun;
            }
            if let Some(f) = received.frame {
                self.on_frame(f, received.at);
            }
        }
    }

    /// After a busy spell: the buffered bytes are handled, frame by frame, until the board is
    /// busy again or the buffer is empty.
    fn drain_held(&mut self, at: Instant) {
        while self.deferred.is_none() {
            let Some(frame) = self.uart.drain_held() else {
                return;
            };
            if let Some(f) = frame {
                self.on_frame(f, at);
            }
        }
    }

    fn finish_deferred(&mut self) {
        if let Some(d) = self.deferred.take() {
            self.handle(d.index, d.frame, d.at);
        }
    }

    /// A frame has arrived at `at` (line time).
    fn on_frame(&mut self, frame: RxFrame, at: Instant) {
        if self.board.is_none() || at < self.awake_at {
            return; // nobody listening: bytes fall on the floor
        }
        if let Some(f) = lock(&self.shared.pending_faults).take() {
            self.plan = FaultPlan::new(f);
        }
        let (index, rx_fault, stall) = self.plan.on_receive();
        if rx_fault != RxFault::None {
            lock(&self.shared.stats).faults_injected += 1;
        }
        self.out.clear();
        match (frame, rx_fault) {
            (_, RxFault::Unplug) => {
                tracing::info!("virtual jig: fault: board pulled off the jig");
                self.remove_board();
            }
            (_, RxFault::Reboot) => {
                tracing::info!("virtual jig: fault: board rebooted");
                if let Some(b) = self.board.as_mut() {
                    b.reboot();
                }
                self.reset_board_rx();
                self.awake_at = Instant::now() + self.config.boot_time;
            }
            (_, RxFault::Drop) => {}
            (Err(CodecError::BadCrc { code, seq, .. }), _)
            | (Ok((code, seq, ..)), RxFault::Corrupt) => {
                lock(&self.shared.stats).frames_dropped += 1;
                if let Some(b) = self.board.as_mut() {
                    b.nak_bad_crc(code, seq, &mut self.out);
                }
                self.respond(index, Outcome::Continue, at);
            }
            (Err(_), _) => {
                // Bad COBS or length: the board cannot tell what it was; drop silently.
                lock(&self.shared.stats).frames_dropped += 1;
            }
            (Ok((code, seq, ..)), RxFault::Nak(error)) => {
                lock(&self.shared.stats).frames_received += 1;
                if let Some(b) = self.board.as_mut() {
                    b.nak_with(code, seq, error, &mut self.out);
                }
                self.respond(index, Outcome::Continue, at);
            }
            (Ok(frame), RxFault::None) => {
                lock(&self.shared.stats).frames_received += 1;
                let mut busy = stall;
                if frame.0 == cmd::PUT {
                    busy += self.config.put_process_time;
                }
                if busy.is_zero() {
                    self.handle(index, frame, at);
                } else {
                    self.deferred = Some(Deferred {
                        at: at + busy,
                        index,
                        frame,
                    });
                }
            }
        }
    }

    /// The board acts on a valid frame it has from `at` (line time) and answers.
    fn handle(
        &mut self,
        index: u64,
        (code, seq, crc, payload): (u8, u16, u32, Vec<u8>),
        at: Instant,
    ) {
        let config = self.plan.config();
        let faults = BoardFaults {
            refuse_commit: config.refuse_commit,
            power_cut_in_commit: config.power_cut_in_commit,
            flip_bit_in: config.flip_bit_in,
        };
        let Some(board) = self.board.as_mut() else {
            return;
        };
        board.faults = faults;
        let f = codec::Frame {
            code,
            seq,
            payload: &payload,
            crc,
        };
        self.out.clear();
        let started = Instant::now();
        let outcome = board.handle(&f, &mut self.out);
        // The board's own work (a flash write) is real time; how late this thread got to the
        // frame is the host's scheduling, not the emulated board's: the answer starts on the
        // line after the work, counted from when the frame arrived.
        let done = at.max(started - started.saturating_duration_since(at).min(LATE_MAX))
            + started.elapsed();
        self.respond(index, outcome, done);
    }

    /// Queues the answer in `self.out` for the line, its first bit going out at `ready` (or
    /// now, if that is earlier — never before the line is free), and carries out `outcome`.
    fn respond(&mut self, index: u64, outcome: Outcome, ready: Instant) {
        if outcome == Outcome::PowerCut {
            tracing::info!("virtual jig: fault: power cut during COMMIT");
            self.remove_board();
            return;
        }
        if !self.out.is_empty() {
            let now = ready.min(Instant::now());
            match self.plan.on_transmit(index) {
                TxFault::None => self.uart.tx.push(&self.out, now),
                TxFault::Corrupt => {
                    lock(&self.shared.stats).faults_injected += 1;
                    self.uart.tx.push(&codec::corrupt_crc(&self.out), now);
                }
                TxFault::DropBytes => {
                    lock(&self.shared.stats).faults_injected += 1;
                    let mut w = std::mem::take(&mut self.out);
                    let mid = w.len() / 2;
                    w.drain(mid.saturating_sub(1)..(mid + 2).min(w.len().saturating_sub(1)));
                    self.uart.tx.push(&w, now);
                    self.out = w;
                }
            }
            lock(&self.shared.stats).frames_sent += 1;
        }
        if outcome == Outcome::Reboot {
            let has_identity = self.board.as_ref().is_some_and(|b| b.has_identity());
            if has_identity {
                // Provisioned: the operator takes it off; the next one goes on the jig.
                self.remove_board();
                self.place_next();
            } else if let Some(b) = self.board.as_mut() {
                b.reboot();
                self.reset_board_rx();
                self.awake_at = Instant::now() + self.config.boot_time;
            }
        }
    }

    /// Hands the station every byte whose time on the line is over.
    fn flush_tx(&mut self, now: Instant) {
        let Some(pty) = self.pty.as_ref() else {
            self.uart.tx.clear();
            return;
        };
        let fd = pty.master.as_raw_fd();
        loop {
            let ready = self.uart.tx.ready(now);
            if ready.is_empty() {
                self.tx_blocked_since = None;
                return;
            }
            match sys::write(fd, ready) {
                Ok(n) => {
                    if self.config.record_tx {
                        lock(&self.shared.tx_log).extend_from_slice(&ready[..n]);
                    }
                    lock(&self.shared.stats).bytes_sent += n as u64;
                    let partial = n < ready.len();
                    self.uart.tx.consume(n);
                    if partial {
                        self.tx_blocked_since.get_or_insert(now);
                        return;
                    }
                    self.tx_blocked_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let since = *self.tx_blocked_since.get_or_insert(now);
                    if now.duration_since(since) >= TX_GIVE_UP {
                        // Nobody reads the port: a UART just sends into the void.
                        self.uart.tx.clear();
                        self.tx_blocked_since = None;
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "virtual jig: pty write failed; the adapter is gone");
                    self.unplug_port();
                    return;
                }
            }
        }
    }

    /// When the board next has something to do (`None`: only when woken).
    fn next_wake(&self) -> Option<Instant> {
        wake_at(
            &self.uart,
            self.deferred.as_ref().map(|d| d.at),
            self.pty.is_some(),
            self.tx_blocked_since,
            (self.board.is_none() && !self.queue_closed).then(|| Instant::now() + PLACE_POLL),
        )
    }

    /// Sleeps until `until`, new bytes from the station, room to send, or a wake-up.
    fn wait(&mut self, until: Option<Instant>) {
        let timeout = until.map(|t| t.saturating_duration_since(Instant::now()));
        if timeout == Some(Duration::ZERO) {
            // Something is due already; look at the pty again on the way.
            self.readable = true;
            return;
        }
        let mut fds = [sys::PollFd::new(self.wake.as_raw_fd(), true, false); 2];
        let mut n = 1;
        if let Some(pty) = &self.pty {
            let input = self.wants_input();
            let output = self.tx_blocked_since.is_some();
            if input || output {
                fds[1] = sys::PollFd::new(pty.master.as_raw_fd(), input, output);
                n = 2;
            }
        }
        if let Err(e) = sys::poll(&mut fds[..n], timeout) {
            tracing::warn!(error = %e, "virtual jig: poll failed");
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        if fds[0].readable() {
            let mut sink = [0u8; 64];
            while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        }
        if n == 2 {
            if fds[1].hung_up() {
                tracing::warn!("virtual jig: the pty hung up; the adapter is gone");
                self.unplug_port();
            } else {
                self.readable = fds[1].readable();
            }
        }
    }
}

/// When the board thread must next wake (`None`: only when woken): the board free again
/// (`busy_until`) or else the next frame's delimiter through; with the adapter plugged in
/// (`plugged`), the next answer's last byte (long answers every millisecond's worth), or when
/// a blocked pty is given up (`tx_blocked_since`); and a look for the next board
/// (`look_for_board`). Exactly those instants: the UART model's, never a coarser tick.
fn wake_at(
    uart: &Uart,
    busy_until: Option<Instant>,
    plugged: bool,
    tx_blocked_since: Option<Instant>,
    look_for_board: Option<Instant>,
) -> Option<Instant> {
    let mut at: Option<Instant> = None;
    let mut at_least = |t: Option<Instant>| {
        if let Some(t) = t {
            at = Some(at.map_or(t, |a| a.min(t)));
        }
    };
    match busy_until {
        // Busy: bytes are buffered when the board is free again (lazily, same result).
        Some(free) => at_least(Some(free)),
        // Free: the next frame is complete when its delimiter arrives.
        None => at_least(uart.rx_due()),
    }
    if plugged && !uart.tx.is_empty() {
        match tx_blocked_since {
            Some(since) => at_least(Some(since + TX_GIVE_UP)),
            // Each answer as its last byte arrives; long ones every millisecond.
            None => at_least(uart.tx_due()),
        }
    }
    at_least(look_for_board);
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::uart::time_of;

    /// A HASH and its HASH_ACK on a 2 Mbaud line: 280 µs of line time in all.
    fn fast_line_with_a_small_frame_each_way(t: Instant) -> (Uart, usize, usize) {
        let mut uart = Uart::new(2_000_000, 4096);
        let (mut hash, mut ack) = (Vec::new(), Vec::new());
        codec::encode_frame(cmd::HASH, 1, &[1], &[], &mut hash).unwrap();
        codec::encode_frame(0x85, 1, &[1; 37], &[], &mut ack).unwrap();
        uart.rx.push(&hash, t);
        uart.tx.push(&ack, t + Duration::from_micros(10));
        (uart, hash.len(), ack.len())
    }

    /// The board thread wakes when a small frame's last byte is through, not at the next
    /// millisecond: a fast line pays no millisecond tax per frame.
    #[test]
    fn a_small_frame_pays_no_millisecond_tax() {
        let t = Instant::now();
        let (mut uart, hash, ack) = fast_line_with_a_small_frame_each_way(t);
        let frame_in = t + time_of(hash, 2_000_000);
        assert_eq!(wake_at(&uart, None, true, None, None), Some(frame_in));
        assert!(frame_in - t < Duration::from_micros(100));
        // The frame is taken: next, the answer's last byte.
        uart.rx.clear();
        let answer_out = t + Duration::from_micros(10) + time_of(ack, 2_000_000);
        assert_eq!(wake_at(&uart, None, true, None, None), Some(answer_out));
        assert!(answer_out - t < Duration::from_micros(300));
    }

    #[test]
    fn a_busy_board_a_blocked_pty_and_an_empty_jig_set_their_own_wake_ups() {
        let t = Instant::now();
        let (mut uart, _, _) = fast_line_with_a_small_frame_each_way(t);
        let answer_out = uart.tx_due();
        let free = t + Duration::from_millis(30);
        // Busy: the frame on its way waits for the board; the answer still goes out.
        assert_eq!(wake_at(&uart, Some(free), true, None, None), answer_out);
        // Unplugged: nothing to send to; the board is free at `free`.
        assert_eq!(wake_at(&uart, Some(free), false, None, None), Some(free));
        // Nobody reads the pty: the answer is given up after TX_GIVE_UP.
        uart.rx.clear();
        assert_eq!(
            wake_at(&uart, None, true, Some(t), None),
            Some(t + TX_GIVE_UP)
        );
        // An empty jig looks for its next board; an idle one sleeps until woken.
        let idle = Uart::new(2_000_000, 4096);
        assert_eq!(wake_at(&idle, None, true, None, Some(free)), Some(free));
        assert_eq!(wake_at(&idle, None, true, None, None), None);
    }
}
