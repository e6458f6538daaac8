//! The virtual board's line model, measured from the station's side of a real pty: nothing
//! crosses the line faster than the baud rate allows (the floor: a command and its answer take
//! at least their wire bytes × the byte time), and nothing waits for bytes that are not
//! coming (a small frame is answered within its line time plus scheduling, not after a
//! millisecond-long pacing batch).

mod jig_support;

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_station::jig::link::port::{line_time, open_port};
use fleet_station::jig::wire::codec::FrameAssembler;
use fleet_station::jig::wire::{Command, Message, Response};
use fleet_station::jig::{PortSettings, Slot};
use jig_support::{Fixture, Identity, settings};

/// The timing tests run one at a time, so they do not slow each other down.
static TIMING: Mutex<()> = Mutex::new(());

fn at_baud(baud: u32) -> impl FnOnce(&mut fleet_station::jig::VirtualJigConfig) {
    move |c| c.baud = baud
}

/// A raw port on the jig: one command out, one answer back, timed from the write to the last
/// byte of the answer. Returns (answer code, wire bytes out, wire bytes in, elapsed).
struct Raw {
    port: Box<dyn serialport::SerialPort>,
    seq: u16,
}

impl Raw {
    fn open(fx: &Fixture, baud: u32) -> Raw {
        let settings = PortSettings { baud, ..settings() };
        let mut raw = Raw {
            port: open_port(fx.jig.path(), &settings).unwrap(),
            seq: 100,
        };
        raw.port.set_timeout(Duration::from_secs(2)).unwrap();
        raw.exchange(&Command::Hello { version: 1 });
        raw
    }

    fn exchange(&mut self, command: &Command<'_>) -> (u8, usize, usize, Duration) {
        self.seq += 1;
        let (mut head, mut wire) = (Vec::new(), Vec::new());
        command.encode(self.seq, &mut head, &mut wire).unwrap();
        let started = Instant::now();
        self.port.write_all(&wire).unwrap();
        let mut asm = FrameAssembler::new();
        let mut buf = [0u8; 8192];
        let mut received = 0;
        loop {
            let n = self.port.read(&mut buf).expect("the board answers");
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (used, ev) = asm.push(rest);
                received += used;
                rest = &rest[used..];
                if let Some(frame) = ev {
                    let elapsed = started.elapsed();
                    let frame = frame.expect("a valid answer");
                    assert_eq!(frame.seq, self.seq);
                    Response::decode(&frame).expect("a well-formed answer");
                    assert!(rest.is_empty(), "nothing but the answer arrived");
                    return (frame.code, wire.len(), received, elapsed);
                }
            }
        }
    }
}

#[test]
fn nothing_crosses_the_line_faster_than_the_baud_rate() {
    let _one_at_a_time = TIMING.lock().unwrap_or_else(|e| e.into_inner());
    for baud in [115_200u32, 921_600] {
        let fx = Fixture::new(&["FLOOR-1"], at_baud(baud));
        let id = Identity::new("floor");
        let link_settings = PortSettings { baud, ..settings() };
        // A whole write: every byte the station sent crossed, then COMMIT's answer did.
        let mut link = fleet_station::jig::JigLink::open(fx.jig.path(), &link_settings).unwrap();
        let report = link.write_and_verify(&id.items(), &mut |_, _| {}).unwrap();
        let commit_ack = fleet_station::jig::wire::codec::wire_len_for_payload(
            5 + fleet_station::jig::wire::protocol::DIGEST_LEN,
        );
        let floor = line_time(report.wire_bytes_written as usize + commit_ack, baud);
        assert!(
            report.elapsed >= floor,
            "{baud} baud: a write of {} wire bytes took {:?}, the line needs {floor:?}",
            report.wire_bytes_written,
            report.elapsed
        );
        drop(link);

        let mut raw = Raw::open(&fx, baud);
        // A small command and a small answer.
        for _ in 0..5 {
            let (code, out, back, elapsed) = raw.exchange(&Command::Hash {
                slots: vec![Slot::ThingName],
            });
            assert_eq!(code, fleet_station::jig::wire::protocol::rsp::HASH_ACK);
            let floor = line_time(out + back, baud);
            assert!(
                elapsed >= floor,
                "{baud} baud: HASH in {elapsed:?}, floor {floor:?}"
            );
        }
        // A small command and a long answer: the board's sending is paced too.
        let (code, out, back, elapsed) = raw.exchange(&Command::Read {
            slot: Slot::DeviceConfig,
            offset: 0,
            len: 2000,
        });
        assert_eq!(code, fleet_station::jig::wire::protocol::rsp::READ_ACK);
        assert!(back > 2000);
        let floor = line_time(out + back, baud);
        assert!(
            elapsed >= floor,
            "{baud} baud: READ in {elapsed:?}, floor {floor:?}"
        );
    }
}

#[test]
fn a_small_frame_pays_no_millisecond_tax() {
    let _one_at_a_time = TIMING.lock().unwrap_or_else(|e| e.into_inner());
    // A fast line, where a pacing batch of a millisecond would dwarf the frames' line time.
    let baud = 2_000_000;
    let fx = Fixture::new(&["TAX-1"], at_baud(baud));
    let mut raw = Raw::open(&fx, baud);
    let mut samples = Vec::new();
    let mut floor = Duration::ZERO;
    for _ in 0..41 {
        let (_, out, back, elapsed) = raw.exchange(&Command::Hash {
            slots: vec![Slot::Certificate],
        });
        floor = line_time(out + back, baud);
        assert!(elapsed >= floor, "{elapsed:?} < {floor:?}");
        samples.push(elapsed);
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    // 56 wire bytes take 280 µs at 2 Mbaud; waking the board thread and the reader costs
    // tens of microseconds, a millisecond batch would cost a millisecond.
    assert!(
        median < floor + Duration::from_micros(400),
        "median HASH round trip {median:?} for a line time of {floor:?}"
    );
}
