//! The station's send window for a pipelined write (PUT frames and the COMMIT behind them),
//! without I/O: which frames are in flight, how many wire bytes they hold in the board's RX
//! buffer, when each times out, and which must be retransmitted when a later frame is
//! answered first.
//!
//! Rules (see `docs/jig-protocol.md`, "Pipelined write"): the wire bytes of unanswered
//! frames never exceed the board's announced RX buffer; the board handles frames and sends
//! answers in arrival order, so an answer to a frame sent later than an unanswered one
//! means that one (or its answer) was lost and it is resent at once.

use std::collections::VecDeque;
use std::time::Instant;

/// One unacknowledged frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InFlight {
    pub seq: u16,
    /// Caller's index of the chunk this frame carries.
    pub chunk: usize,
    pub wire_len: usize,
    /// Times this frame was sent.
    pub tries: u32,
    pub deadline: Instant,
    /// Send order; a retransmission gets a new, larger one.
    order: u64,
}

#[derive(Debug)]
pub(crate) struct PutWindow {
    budget: usize,
    bytes: usize,
    /// Ordered by `order` (oldest send first).
    frames: VecDeque<InFlight>,
    next_order: u64,
}

impl PutWindow {
    /// `budget`: the board's RX buffer size in bytes.
    pub(crate) fn new(budget: usize) -> PutWindow {
        PutWindow {
            budget,
            bytes: 0,
            frames: VecDeque::new(),
            next_order: 0,
        }
    }

    /// Whether a frame of `wire_len` bytes may be sent now. An empty window always accepts
    /// one frame, so progress is possible even if a frame alone exceeds the budget.
    pub(crate) fn can_send(&self, wire_len: usize) -> bool {
        self.frames.is_empty() || self.bytes + wire_len <= self.budget
    }

    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Wire bytes currently unacknowledged.
    pub(crate) fn bytes_in_flight(&self) -> usize {
        self.bytes
    }

    pub(crate) fn contains(&self, seq: u16) -> bool {
        self.frames.iter().any(|f| f.seq == seq)
    }

    pub(crate) fn get(&self, seq: u16) -> Option<&InFlight> {
        self.frames.iter().find(|f| f.seq == seq)
    }

    /// Records a first transmission.
    pub(crate) fn sent(&mut self, seq: u16, chunk: usize, wire_len: usize, deadline: Instant) {
        let order = self.bump();
        self.bytes += wire_len;
        self.frames.push_back(InFlight {
            seq,
            chunk,
            wire_len,
            tries: 1,
            deadline,
            order,
        });
    }

    /// Records a retransmission of `seq`; returns the frame with its updated try count.
    pub(crate) fn resent(&mut self, seq: u16, deadline: Instant) -> Option<InFlight> {
        let pos = self.frames.iter().position(|f| f.seq == seq)?;
        let mut f = self.frames.remove(pos)?;
        f.tries += 1;
        f.deadline = deadline;
        f.order = self.bump();
        self.frames.push_back(f);
        Some(f)
    }

    /// Moves the deadline of `seq` (e.g. to back off after BUSY) without resending.
    pub(crate) fn postpone(&mut self, seq: u16, deadline: Instant) {
        if let Some(f) = self.frames.iter_mut().find(|f| f.seq == seq) {
            f.deadline = deadline;
        }
    }

    /// Removes `seq` on its acknowledgement. Returns it and the sequence numbers of frames
    /// sent before it that are still unacknowledged (to resend now), or `None` if `seq` is
    /// not in flight (a late duplicate ack).
    pub(crate) fn ack(&mut self, seq: u16) -> Option<(InFlight, Vec<u16>)> {
        let pos = self.frames.iter().position(|f| f.seq == seq)?;
        let f = self.frames.remove(pos)?;
        self.bytes -= f.wire_len;
        let skipped = self.frames.iter().take(pos).map(|g| g.seq).collect();
        Some((f, skipped))
    }

    /// The frame in flight that was sent (or resent) longest ago.
    pub(crate) fn oldest(&self) -> Option<u16> {
        self.frames.front().map(|f| f.seq)
    }

    /// The earliest deadline among frames in flight.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.frames.iter().map(|f| f.deadline).min()
    }

    /// Sequence numbers whose deadline has passed at `now`, oldest send first.
    pub(crate) fn expired(&self, now: Instant) -> Vec<u16> {
        self.frames
            .iter()
            .filter(|f| f.deadline <= now)
            .map(|f| f.seq)
            .collect()
    }

    fn bump(&mut self) -> u64 {
        let o = self.next_order;
        self.next_order += 1;
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn budget_bounds_bytes_in_flight() {
        let t = Instant::now();
        let mut w = PutWindow::new(1000);
        assert!(w.can_send(5000), "an empty window takes one frame");
        w.sent(1, 0, 400, t);
        w.sent(2, 1, 400, t);
        assert!(!w.can_send(400));
        assert!(w.can_send(200));
        assert_eq!(w.bytes_in_flight(), 800);
        let (f, skipped) = w.ack(1).unwrap();
        assert_eq!((f.seq, f.chunk), (1, 0));
        assert!(skipped.is_empty());
        assert_eq!(w.bytes_in_flight(), 400);
        assert!(w.can_send(600));
        assert!(w.ack(1).is_none(), "duplicate ack is ignored");
    }

    #[test]
    fn later_ack_reports_skipped_frames_once() {
        let t = Instant::now();
        let mut w = PutWindow::new(10_000);
        for seq in 1..=4 {
            w.sent(seq, seq as usize, 100, t);
        }
        // Frame 1's ack was lost; 2's arrives.
        let (_, skipped) = w.ack(2).unwrap();
        assert_eq!(skipped, vec![1]);
        let f = w.resent(1, t + Duration::from_secs(1)).unwrap();
        assert_eq!(f.tries, 2);
        // 3's ack: 1 was resent after 3 was sent, so it is not skipped again.
        let (_, skipped) = w.ack(3).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn deadlines_and_expiry() {
        let t = Instant::now();
        let mut w = PutWindow::new(10_000);
        w.sent(1, 0, 10, t + Duration::from_millis(50));
        w.sent(2, 1, 10, t + Duration::from_millis(10));
        assert_eq!(w.next_deadline(), Some(t + Duration::from_millis(10)));
        assert_eq!(w.expired(t + Duration::from_millis(20)), vec![2]);
        w.postpone(2, t + Duration::from_millis(100));
        assert!(w.expired(t + Duration::from_millis(20)).is_empty());
        assert_eq!(w.expired(t + Duration::from_millis(60)), vec![1]);
        assert_eq!(w.oldest(), Some(1));
        w.resent(1, t);
        assert_eq!(w.oldest(), Some(2), "a resent frame is the newest");
    }
}
