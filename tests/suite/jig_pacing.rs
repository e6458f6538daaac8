//! The virtual board's line model, measured from the station's side of a real pty: nothing
//! crosses the line faster than the baud rate allows (the floor: a command and its answer take
//! at least their wire bytes × the byte time), for a whole write, for small frames and for a
//! long answer, at ordinary and at fast line rates.
//!
//! That nothing waits for bytes that are not coming (a small frame is answered at its line
//! time, not after a millisecond-long pacing batch) is a property of the UART model's
//! schedule, asserted on the model itself (`sim/uart.rs`) rather than on a wall clock the
//! machine's load decides; `benches/jig_codec.rs` measures the round trip.

use std::sync::Mutex;

use crate::jig_support::{Fixture, Identity, RawPort, response, settings};
use fleet_station::jig::wire::codec::wire_len_for_payload;
use fleet_station::jig::wire::protocol::DIGEST_LEN;
use fleet_station::jig::wire::{Command, Response};
use fleet_station::jig::{JigLink, PortSettings, Slot, VirtualJigConfig, line_time};

/// The timing tests run one at a time, so they do not slow each other down.
static TIMING: Mutex<()> = Mutex::new(());

fn at_baud(baud: u32) -> impl FnOnce(&mut VirtualJigConfig) {
    move |c| c.baud = baud
}

#[test]
fn nothing_crosses_the_line_faster_than_the_baud_rate() {
    let _one_at_a_time = TIMING.lock().unwrap_or_else(|e| e.into_inner());
    for baud in [115_200u32, 921_600] {
        let fx = Fixture::new(&["FLOOR-1"], at_baud(baud));
        let id = Identity::new("floor");
        let link_settings = PortSettings { baud, ..settings() };
        // A whole write: every byte the station sent crossed, then COMMIT's answer did.
        let mut link = JigLink::open(fx.jig.path(), &link_settings).unwrap();
        let report = link.write_and_verify(&id.items(), &mut |_, _| {}).unwrap();
        let commit_ack = wire_len_for_payload(5 + DIGEST_LEN);
        let floor = line_time(report.wire_bytes_written as usize + commit_ack, baud);
        assert!(
            report.elapsed >= floor,
            "{baud} baud: a write of {} wire bytes took {:?}, the line needs {floor:?}",
            report.wire_bytes_written,
            report.elapsed
        );
        drop(link);

        let mut raw = RawPort::hello(&fx, baud);
        // A small command and a small answer.
        for _ in 0..5 {
            let trip = raw.exchange(&Command::Hash {
                slots: vec![Slot::ThingName],
            });
            assert!(matches!(response(&trip.answer), Response::HashAck { .. }));
            let floor = line_time(trip.wire_out + trip.wire_in, baud);
            assert!(
                trip.elapsed >= floor,
                "{baud} baud: HASH in {:?}, floor {floor:?}",
                trip.elapsed
            );
        }
        // A small command and a long answer: the board's sending is paced too.
        let trip = raw.exchange(&Command::Read {
            slot: Slot::DeviceConfig,
            offset: 0,
            len: 2000,
        });
        assert!(matches!(response(&trip.answer), Response::ReadAck { .. }));
        assert!(trip.wire_in > 2000);
        let floor = line_time(trip.wire_out + trip.wire_in, baud);
        assert!(
            trip.elapsed >= floor,
            "{baud} baud: READ in {:?}, floor {floor:?}",
            trip.elapsed
        );
    }
}

#[test]
fn small_frames_on_a_fast_line_are_answered_one_by_one_never_early() {
    let _one_at_a_time = TIMING.lock().unwrap_or_else(|e| e.into_inner());
    // A fast line, where a pacing batch of a millisecond would dwarf the frames' line time:
    // every round trip is whole (the answer and nothing else) and takes at least its line
    // time. How far above the floor it lands is the host's scheduling, not asserted here.
    let baud = 2_000_000;
    let fx = Fixture::new(&["TAX-1"], at_baud(baud));
    let mut raw = RawPort::hello(&fx, baud);
    for _ in 0..41 {
        let trip = raw.exchange(&Command::Hash {
            slots: vec![Slot::Certificate],
        });
        assert!(matches!(response(&trip.answer), Response::HashAck { .. }));
        let floor = line_time(trip.wire_out + trip.wire_in, baud);
        assert!(trip.elapsed >= floor, "{:?} < {floor:?}", trip.elapsed);
    }
}
