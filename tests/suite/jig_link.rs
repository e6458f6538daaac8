//! Station ↔ virtual board over real ptys: the normal paths (HELLO, the pipelined write with
//! its COMMIT right behind the PUTs and the read-back digest in COMMIT's answer, verify,
//! read-back, GEN_CSR, ERASE, RESET and board swap, empty jig, RX buffer and overrun, the
//! sim-board entry point).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::jig_support::{
    Fixture, Identity, IoEvent, RawPort, command, frames, response, settings,
};
use fleet_station::jig::wire::protocol;
use fleet_station::jig::wire::{Command, Response};
use fleet_station::jig::{
    BoardParams, BoardSpec, CsrSubject, JigError, JigLink, PortSettings, SimBoardOptions, Slot,
    SlotWrite, VirtualJigConfig, line_time, serve_sim_board,
};
use rcgen::PublicKeyData;

#[test]
fn write_verify_and_read_back_match_flash_file() {
    let fx = Fixture::new(&["VB-000001"], |_| {});
    let mut link = fx.link();
    let info = link.hello().unwrap();
    assert_eq!(info.serial, "VB-000001");
    assert_eq!(info.protocol_version, 1);
    assert!(!info.has_identity());
    assert_eq!(info.thing_name, None);
    assert_eq!((info.max_chunk, info.rx_buffer), (4092, 4096));

    let id = Identity::new("a");
    let mut calls = Vec::new();
    let report = link
        .write_identity(&id.items(), &mut |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(report.bytes, id.total());
    assert_eq!(report.slots.len(), 5);
    assert!(!report.board_key_committed);
    assert_eq!(report.generation, 1);
    assert!(report.verified, "the read-back digest matched");
    assert_eq!(report.commit_rounds, 1);
    assert_eq!(calls.first(), Some(&(0, id.total())));
    assert_eq!(calls.last(), Some(&(id.total(), id.total())));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));

    link.verify(&id.items()).unwrap();
    for item in id.items() {
        if item.slot == Slot::PrivateKey {
            continue;
        }
        assert_eq!(
            link.read_slot(item.slot).unwrap(),
            item.data,
            "{}",
            item.slot
        );
    }
    assert!(matches!(
        link.read_slot(Slot::PrivateKey),
        Err(JigError::AccessDenied {
            slot: Slot::PrivateKey,
            ..
        })
    ));

    // What the board holds on "flash".
    let path = fx.jig.flash_path("VB-000001");
    id.assert_in(&fx.flash("VB-000001"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // HELLO now reports the identity.
    let info = link.hello().unwrap();
    assert!(info.has_identity());
    assert_eq!(info.thing_name.as_deref(), Some("thing-a"));

    // A verify against other content fails and says which slot.
    let other = Identity::new("b");
    match link.verify(&other.items()) {
        Err(JigError::VerifyMismatch { slot, .. }) => assert_eq!(slot, Slot::Certificate),
        other => panic!("expected a mismatch, got {other:?}"),
    }

    let stats = link.stats();
    assert_eq!(stats.crc_errors, 0);
    assert!(stats.frames_sent > id.puts(link.put_chunk().unwrap()));
    assert!(stats.wire_bytes_written > id.total() as u64);
    assert!(stats.payload_bytes_written >= id.total() as u64);
}

#[test]
fn the_commit_goes_out_right_behind_the_puts_before_any_answer() {
    let fx = Fixture::new(&["PL-1"], |_| {});
    let (mut link, log) = fx.recorded_link(&settings());
    link.hello().unwrap();
    // What the line writes fits the board's RX buffer: one burst.
    let id = Identity::line_sized("pipelined");
    assert!(id.total() < 2000, "{}", id.total());
    let chunk = link.put_chunk().unwrap();
    log.clear();
    let report = link.write_and_verify(&id.items(), &mut |_, _| {}).unwrap();
    assert!(report.verified);
    assert_eq!(report.commit_rounds, 1);

    // Every PUT and the COMMIT were on their way before the board had answered anything.
    let sent = log.written_before_first_read();
    let puts = id.puts(chunk) as usize;
    assert_eq!(puts, 1, "one PUT frame carries all the slots");
    let commands: Vec<Command<'_>> = sent.iter().map(command).collect();
    assert_eq!(commands.len(), puts + 1, "{commands:?}");
    assert_eq!(report.frames_sent, puts as u64 + 1, "nothing else was sent");
    // The PUTs carry the slots back to back, in the order COMMIT lists them.
    let image: Vec<u8> = id.items().iter().flat_map(|i| i.data.to_vec()).collect();
    let mut staged = Vec::new();
    for c in &commands[..puts] {
        let Command::Put { offset, data } = c else {
            panic!("expected a PUT, got {c:?}")
        };
        assert_eq!(*offset as usize, staged.len());
        staged.extend_from_slice(data);
    }
    assert_eq!(staged, image);
    // COMMIT: the five staged slots with their lengths, then the digest over them.
    let digest = protocol::commit_digest(id.items().iter().map(|i| (i.slot, i.data)));
    let Command::Commit {
        entries,
        digest: sent_digest,
    } = &commands[puts]
    else {
        panic!("expected a COMMIT, got {:?}", commands[puts])
    };
    let listed: Vec<(Slot, usize)> = entries.iter().map(|e| (e.slot, e.len as usize)).collect();
    let items: Vec<(Slot, usize)> = id.items().iter().map(|i| (i.slot, i.data.len())).collect();
    assert_eq!(listed, items);
    assert_eq!(*sent_digest, digest);

    // The board answered each PUT and the COMMIT, in that order; the COMMIT's answer is the
    // last thing read and carries the same digest, read back from its flash.
    let received: Vec<u8> = log
        .events()
        .into_iter()
        .filter_map(|e| match e {
            IoEvent::Read(b) => Some(b),
            IoEvent::Wrote(_) => None,
        })
        .flatten()
        .collect();
    let answers = frames(&received);
    let answers: Vec<Response<'_>> = answers.iter().map(response).collect();
    assert_eq!(answers.len(), puts + 1, "{answers:?}");
    assert!(
        answers[..puts]
            .iter()
            .all(|a| matches!(a, Response::PutAck { .. })),
        "{answers:?}"
    );
    assert!(
        matches!(answers[puts], Response::CommitAck { digest: d, .. } if d == digest),
        "{answers:?}"
    );
}

#[test]
fn with_a_small_rx_buffer_the_window_still_puts_the_commit_before_the_last_answer() {
    let fx = Fixture::new(&["PL-2"], |c| {
        c.params = BoardParams {
            max_chunk: 256,
            rx_buffer: 1024,
        }
    });
    let (mut link, log) = fx.recorded_link(&settings());
    link.hello().unwrap();
    let id = Identity::new("windowed");
    log.clear();
    link.write_and_verify(&id.items(), &mut |_, _| {}).unwrap();
    id.assert_in(&fx.flash("PL-2"));
    // Replay the conversation: the COMMIT was written while PUTs were still unanswered.
    let (mut written, mut answered) = (0usize, 0usize);
    let mut commit_written_with_unanswered = None;
    for e in log.events() {
        match e {
            IoEvent::Wrote(b) => {
                for frame in frames(&b) {
                    if matches!(command(&frame), Command::Commit { .. }) {
                        commit_written_with_unanswered = Some(written - answered);
                    }
                    written += 1;
                }
            }
            IoEvent::Read(b) => answered += frames(&b).len(),
        }
    }
    let unanswered = commit_written_with_unanswered.expect("a COMMIT was written");
    assert!(unanswered >= 1, "COMMIT waited for every PUT_ACK");
    assert_eq!(written as u64, id.puts(256) + 1);
}

#[test]
fn gen_csr_key_stays_on_the_board_and_commits_with_the_certificate() {
    let fx = Fixture::new(&["VB-000002"], |c| c.record_tx = true);
    let mut link = fx.link();
    let subject = CsrSubject {
        common_name: "thing-csr".into(),
        organization: "Acme Factory".into(),
        serial_number: "VB-000002".into(),
        ..CsrSubject::default()
    };
    let pem = link.gen_csr(&subject).unwrap();
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
    let cn = csr
        .params
        .distinguished_name
        .get(&rcgen::DnType::CommonName)
        .cloned();
    assert_eq!(cn, Some(rcgen::DnValue::Utf8String("thing-csr".into())));
    assert!(link.hello().unwrap().has_staged_key());

    // The station writes everything but the key; COMMIT takes the board's key with them.
    let id = Identity::new("csr");
    let items: Vec<SlotWrite<'_>> = id
        .items()
        .into_iter()
        .filter(|i| i.slot != Slot::PrivateKey)
        .collect();
    let report = link.write_identity(&items, &mut |_, _| {}).unwrap();
    assert!(report.board_key_committed);
    link.verify(&items).unwrap();

    let flash = fx.flash("VB-000002");
    assert!(flash.has_identity());
    let key_pem = std::str::from_utf8(flash.private_key().unwrap()).unwrap();
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    assert_eq!(
        key.der_bytes(),
        csr.public_key.der_bytes(),
        "CSR is for the key on the board"
    );

    // The private key never crossed the wire: no frame the board sent (= every byte the
    // station received) holds the PKCS#8 DER, the PEM, or the raw 32-byte scalar.
    let pkcs8 = key.serialize_der();
    let scalar = p256_scalar(&pkcs8);
    let log = fx.jig.tx_log();
    assert!(!log.is_empty());
    let received: Vec<u8> = frames(&log)
        .into_iter()
        .flat_map(|(_, payload)| payload)
        .collect();
    for (what, needle) in [
        ("scalar", &scalar[..]),
        ("pkcs8", &pkcs8[..]),
        ("pem", key_pem.as_bytes()),
    ] {
        assert!(
            !contains(&received, needle),
            "{what} found in decoded frames"
        );
        assert!(!contains(&log, needle), "{what} found on the raw wire");
    }
}

/// The private scalar inside a P-256 PKCS#8 DER: the OCTET STRING `04 20 <32 bytes>`.
fn p256_scalar(pkcs8: &[u8]) -> Vec<u8> {
    let pos = pkcs8
        .windows(2)
        .position(|w| w == [0x04, 0x20])
        .expect("EC private key octet string");
    pkcs8[pos + 2..pos + 34].to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn empty_jig_reports_no_board() {
    let fx = Fixture::new(&[], |_| {});
    let mut link = fx.link();
    let started = Instant::now();
    match link.hello() {
        Err(JigError::NoBoard { tries, .. }) => assert_eq!(tries, settings().retries + 1),
        other => panic!("expected NoBoard, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(link.stats().frames_received, 0);
    assert!(link.stats().timeouts >= 4);
}

#[test]
fn reset_of_a_provisioned_board_places_the_next_one() {
    let fx = Fixture::new(&["LINE-01", "LINE-02"], |_| {});
    let mut link = fx.link();
    assert_eq!(link.hello().unwrap().serial, "LINE-01");

    // RESET before an identity: the board reboots and stays on the jig.
    link.reset().unwrap();
    assert_eq!(link.hello().unwrap().serial, "LINE-01");

    let id = Identity::new("one");
    link.write_identity(&id.items(), &mut |_, _| {}).unwrap();
    link.reset().unwrap();
    let next = link.hello().unwrap();
    assert_eq!(next.serial, "LINE-02");
    assert!(!next.has_identity());
    id.assert_in(&fx.flash("LINE-01"));
    assert!(!fx.jig.flash_path("LINE-02").exists());

    // Provision the second one too; then the jig is empty.
    let id2 = Identity::new("two");
    link.write_identity(&id2.items(), &mut |_, _| {}).unwrap();
    link.reset().unwrap();
    assert!(matches!(link.hello(), Err(JigError::NoBoard { .. })));
    id2.assert_in(&fx.flash("LINE-02"));
    let stats = fx.jig.stats();
    assert_eq!(stats.serials, vec!["LINE-01", "LINE-02"]);
    assert_eq!(stats.boards_removed, 2);
}

#[test]
fn taking_a_failed_board_off_places_the_next_one() {
    let fx = Fixture::new(&["FAIL-01", "NEXT-02"], |_| {});
    let mut link = fx.link();
    assert_eq!(link.hello().unwrap().serial, "FAIL-01");
    // No identity: RESET alone leaves the board on the jig; the operator takes it off.
    link.reset().unwrap();
    fx.jig.take_off("NEXT-02"); // not on the jig: nothing happens
    assert_eq!(link.hello().unwrap().serial, "FAIL-01");
    fx.jig.take_off("FAIL-01");
    // The fixture thread acts on it before the next frame it reads; a HELLO already in
    // flight may still reach the old board, so look a few times.
    let serial = (0..10)
        .map(|_| link.hello().unwrap().serial)
        .find(|s| s != "FAIL-01")
        .expect("the next board was placed");
    assert_eq!(serial, "NEXT-02");
    assert!(
        !fx.jig.flash_path("FAIL-01").exists(),
        "nothing was written to the failed board"
    );
    assert_eq!(fx.jig.stats().boards_removed, 1);
}

#[test]
fn erase_clears_live_slots() {
    let fx = Fixture::new(&["E-1"], |_| {});
    let mut link = fx.link();
    let id = Identity::new("e");
    link.write_identity(&id.items(), &mut |_, _| {}).unwrap();
    link.erase(&[Slot::Certificate, Slot::PrivateKey]).unwrap();
    assert_eq!(link.hash(Slot::Certificate).unwrap().0, 0);
    assert!(link.read_slot(Slot::Certificate).unwrap().is_empty());
    let flash = fx.flash("E-1");
    assert_eq!(flash.certificate(), None);
    assert_eq!(flash.private_key(), None);
    assert_eq!(flash.root_ca(), Some(&id.root_ca[..]));
    assert!(!link.hello().unwrap().has_identity());
}

#[test]
fn port_can_be_closed_and_reopened() {
    let fx = Fixture::new(&["R-1"], |_| {});
    let id = Identity::new("r");
    {
        let mut link = fx.link();
        link.write_identity(&id.items(), &mut |_, _| {}).unwrap();
    }
    let mut link = fx.link();
    assert!(link.hello().unwrap().has_identity());
    link.verify(&id.items()).unwrap();
}

/// 115200 baud, a small RX buffer and a flash slower than the line (30 ms per 256-byte PUT,
/// which takes 23 ms to arrive): a sender that ignores the RX buffer loses bytes.
fn slow_board(c: &mut VirtualJigConfig) {
    c.baud = 115_200;
    c.params = BoardParams {
        max_chunk: 256,
        rx_buffer: 1024,
    };
    c.put_process_time = Duration::from_millis(30);
}

#[test]
fn board_paces_to_the_baud_rate_and_the_window_prevents_overrun() {
    let fx = Fixture::new(&["P-1"], slow_board);
    // A generous timeout: a retransmission (e.g. on a loaded machine) would put the same
    // frame on the line twice and could overrun the buffer legitimately.
    let paced = PortSettings {
        baud: 115_200,
        timeout: Duration::from_secs(1),
        ..settings()
    };
    let mut link = JigLink::open(fx.jig.path(), &paced).unwrap();
    let info = link.hello().unwrap();
    assert_eq!((info.max_chunk, info.rx_buffer), (256, 1024));
    let id = Identity::new("paced");
    let before = link.stats().wire_bytes_written;
    let report = link.write_identity(&id.items(), &mut |_, _| {}).unwrap();
    let wire = link.stats().wire_bytes_written - before;
    let floor = line_time(wire as usize, 115_200);
    assert!(
        report.elapsed >= floor.mul_f64(0.9),
        "{:?} for {wire} bytes, the line needs {floor:?}",
        report.elapsed
    );
    link.verify(&id.items()).unwrap();
    id.assert_in(&fx.flash("P-1"));
    let stats = fx.jig.stats();
    assert_eq!(stats.rx_overrun_bytes, 0, "{stats:?}");
    assert_eq!(stats.frames_dropped, 0, "{stats:?}");
}

#[test]
fn a_sender_that_ignores_the_rx_buffer_overruns_the_board() {
    // The board needs 80 ms per PUT while the line delivers ~920 bytes in that time: bytes
    // pile up in its 1 KiB RX buffer until they overflow.
    let fx = Fixture::new(&["P-2"], |c| {
        slow_board(c);
        c.put_process_time = Duration::from_millis(80);
    });
    let mut raw = RawPort::open(&fx, 115_200);
    // HELLO, then 12 PUTs of 256 bytes (about 3 KiB) in one go, against a 1 KiB buffer.
    let data = vec![0x5Au8; 256];
    let mut burst = vec![Command::Hello { version: 1 }];
    burst.extend((0..12u32).map(|i| Command::Put {
        offset: i * 256,
        data: &data,
    }));
    raw.burst(&burst);
    // Collect answers until the board has been quiet for a while.
    let answers = frames(&raw.read_until_quiet(Duration::from_millis(800)));
    let acks = answers
        .iter()
        .filter(|a| matches!(response(a), Response::PutAck { .. }))
        .count();
    let stats = fx.jig.stats();
    assert!(stats.rx_overrun_bytes > 0, "{stats:?}");
    assert!(acks < 12, "{acks} acks: some PUTs must have been lost");
}

#[test]
fn sim_board_serves_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let options = SimBoardOptions {
        flash_dir: dir.path().to_path_buf(),
        serial_prefix: "SIM-".into(),
        first: 7,
        baud: 0,
        ..SimBoardOptions::default()
    };
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    let (path_tx, path_rx) = crossbeam_channel::bounded(1);
    let server = std::thread::spawn(move || {
        serve_sim_board(&options, stop_rx, |jig| {
            path_tx.send(jig.path().to_string()).unwrap()
        })
    });
    let path = path_rx.recv().unwrap();
    let mut link = JigLink::open(&path, &settings()).unwrap();
    assert_eq!(link.hello().unwrap().serial, "SIM-000007");
    drop(link);
    stop_tx.send(()).unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn list_ports_works_without_hardware() {
    let ports = fleet_station::jig::list_ports().unwrap();
    assert!(ports.iter().all(|p| !p.path.is_empty()));
}

/// A board whose firmware carries a root CA: HASH finds the slots it holds byte for byte (a
/// stale CA, an empty slot or the key are not held), a write of the rest leaves the held slot
/// as it was and the whole identity is on the board, verified.
#[test]
fn held_slots_are_found_by_digest_and_a_write_without_them_keeps_them() {
    let id = Identity::line_sized("held");
    let board = |serial: &str, ca: &[u8]| {
        let mut spec = BoardSpec::new(serial);
        spec.firmware_slots = vec![(Slot::RootCa, ca.to_vec())];
        spec
    };

    let fx = Fixture::with_boards(vec![board("VB-HELD", &id.root_ca)], |_| {});
    let mut link = fx.link();
    assert_eq!(link.hello().unwrap().serial, "VB-HELD");
    assert_eq!(link.held(&id.items()).unwrap(), vec![Slot::RootCa]);
    let rest: Vec<SlotWrite<'_>> = id
        .items()
        .into_iter()
        .filter(|i| i.slot != Slot::RootCa)
        .collect();
    let report = link.write_and_verify(&rest, &mut |_, _| {}).unwrap();
    assert!(report.verified);
    assert_eq!(report.bytes, id.total() - id.root_ca.len());
    assert!(!report.slots.iter().any(|(s, _)| *s == Slot::RootCa));
    id.assert_in(&fx.flash("VB-HELD"));
    // Now it holds everything but the key, which is never reported held.
    let mut held = link.held(&id.items()).unwrap();
    held.sort();
    assert_eq!(
        held,
        [
            Slot::Certificate,
            Slot::RootCa,
            Slot::DeviceConfig,
            Slot::ThingName
        ]
    );

    // Firmware with another root CA: nothing is held, everything is written.
    let stale = Identity::line_sized("stale");
    let fx = Fixture::with_boards(vec![board("VB-STALE", &stale.root_ca)], |_| {});
    let mut link = fx.link();
    link.hello().unwrap();
    assert_eq!(link.held(&id.items()).unwrap(), Vec::<Slot>::new());
    link.write_and_verify(&id.items(), &mut |_, _| {}).unwrap();
    id.assert_in(&fx.flash("VB-STALE"));
}
