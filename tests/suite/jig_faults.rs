//! Station ↔ virtual board over real ptys with injected faults: every fault either heals by
//! retransmission (and the board ends verified) or fails cleanly with the board's flash
//! holding the previous identity, never a mix. A PUT lost before the pipelined COMMIT makes
//! the board refuse that COMMIT; the link resends what is missing and commits again. A flash
//! that reads back different from what was sent is reported with the slot that differs.

use crate::jig_support;

use std::time::Duration;

use crate::jig_support::{Fixture, Identity};
use fleet_station::jig::{ErrorCode, FaultConfig, Flash, JigError, JigLink, PortSettings, Slot};

/// Writes identity A without faults, then arms `faults` (indices count from the next frame).
fn provisioned(serial: &str, faults: FaultConfig) -> (Fixture, JigLink, Identity) {
    let fx = Fixture::new(&[serial], |_| {});
    let mut link = fx.link();
    let a = Identity::new("old");
    link.write_identity(&a.items(), &mut |_, _| {}).unwrap();
    a.assert_in(&fx.flash(serial));
    fx.jig.set_faults(faults);
    (fx, link, a)
}

#[test]
fn corrupted_frames_both_ways_are_retried_and_the_board_ends_verified() {
    let fx = Fixture::new(&["F-1"], |c| {
        c.faults = FaultConfig {
            corrupt_tx_at: Some(2),
            corrupt_rx_at: Some(4),
            corrupt_tx_probability: 0.05,
            seed: 7,
            ..FaultConfig::default()
        }
    });
    let mut link = fx.link();
    let id = Identity::new("crc");
    link.write_identity(&id.items(), &mut |_, _| {}).unwrap();
    link.verify(&id.items()).unwrap();
    id.assert_in(&fx.flash("F-1"));
    let stats = link.stats();
    assert!(stats.crc_errors >= 1, "{stats:?}");
    assert!(stats.naks_crc >= 1, "{stats:?}");
    assert!(stats.retransmissions >= 2, "{stats:?}");
    assert!(fx.jig.stats().faults_injected >= 2);
}

#[test]
fn lost_frames_and_dropped_bytes_are_retransmitted() {
    let fx = Fixture::new(&["F-2"], |c| {
        c.faults = FaultConfig {
            drop_rx_at: Some(2),
            drop_tx_bytes_at: Some(5),
            ..FaultConfig::default()
        }
    });
    let mut link = fx.link();
    let id = Identity::new("drop");
    link.write_identity(&id.items(), &mut |_, _| {}).unwrap();
    link.verify(&id.items()).unwrap();
    id.assert_in(&fx.flash("F-2"));
    let stats = link.stats();
    assert!(stats.retransmissions >= 2, "{stats:?}");
    assert!(
        stats.crc_errors >= 1,
        "the cut answer is dropped: {stats:?}"
    );
}

#[test]
fn busy_nak_is_retried() {
    let (fx, mut link, _) = provisioned(
        "F-3",
        FaultConfig {
            nak_at: Some((1, ErrorCode::Busy)),
            ..FaultConfig::default()
        },
    );
    let b = Identity::new("new");
    link.write_identity(&b.items(), &mut |_, _| {}).unwrap();
    link.verify(&b.items()).unwrap();
    b.assert_in(&fx.flash("F-3"));
    assert!(link.stats().retransmissions >= 1);
}

#[test]
fn stalled_commit_is_retransmitted_but_committed_once() {
    let fx = Fixture::new(&["F-4"], |_| {});
    // A short COMMIT timeout, so the station retransmits COMMIT while the board stalls.
    let settings = PortSettings {
        long_timeout: Duration::from_millis(250),
        ..jig_support::settings()
    };
    let mut link = JigLink::open(fx.jig.path(), &settings).unwrap();
    let a = Identity::new("old");
    link.write_identity(&a.items(), &mut |_, _| {}).unwrap();
    let before = fx.flash("F-4").generation();

    // After arming, frames are the PUTs, then COMMIT.
    let b = Identity::new("new");
    let chunk = link.put_chunk().unwrap();
    fx.jig.set_faults(FaultConfig {
        stall: Some((b.puts(chunk), Duration::from_millis(700))),
        ..FaultConfig::default()
    });
    let report = link.write_identity(&b.items(), &mut |_, _| {}).unwrap();
    assert!(report.retransmissions >= 1, "{report:?}");
    let flash = fx.flash("F-4");
    b.assert_in(&flash);
    assert_eq!(
        flash.generation(),
        before + 1,
        "the replayed COMMIT did not run twice"
    );
    assert_eq!(report.generation, before + 1);
}

#[test]
fn refused_commit_leaves_flash_unchanged() {
    let (fx, mut link, a) = provisioned(
        "F-5",
        FaultConfig {
            refuse_commit: true,
            ..FaultConfig::default()
        },
    );
    let before = fx.flash("F-5").generation();
    let b = Identity::new("new");
    match link.write_identity(&b.items(), &mut |_, _| {}) {
        Err(e @ JigError::CommitRefused { .. }) => {
            assert!(e.to_string().contains("COMMIT_REFUSED"), "{e}");
            let help = miette::Diagnostic::help(&e)
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(help.contains("previous identity is intact"), "{help}");
        }
        other => panic!("expected CommitRefused, got {other:?}"),
    }
    let flash = fx.flash("F-5");
    a.assert_in(&flash);
    assert_eq!(flash.generation(), before);
    link.verify(&a.items()).unwrap();
}

#[test]
fn unplug_mid_write_keeps_the_previous_identity() {
    let (fx, mut link, a) = provisioned(
        "F-6",
        FaultConfig {
            unplug_at: Some(3),
            ..FaultConfig::default()
        },
    );
    let b = Identity::new("new");
    let err = link.write_identity(&b.items(), &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, JigError::Timeout { .. }), "{err:?}");
    a.assert_in(&fx.flash("F-6"));
    assert_eq!(fx.jig.current_board(), None);
    assert!(matches!(link.hello(), Err(JigError::NoBoard { .. })));
}

#[test]
fn reboot_mid_write_keeps_the_previous_identity_and_a_rewrite_succeeds() {
    let (fx, mut link, a) = provisioned(
        "F-7",
        FaultConfig {
            reboot_at: Some(3),
            ..FaultConfig::default()
        },
    );
    let b = Identity::new("new");
    let err = link.write_identity(&b.items(), &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, JigError::BoardRebooted { .. }), "{err:?}");
    a.assert_in(&fx.flash("F-7"));
    // The operator's retry: HELLO again and rewrite.
    link.hello().unwrap();
    link.write_identity(&b.items(), &mut |_, _| {}).unwrap();
    link.verify(&b.items()).unwrap();
    b.assert_in(&fx.flash("F-7"));
}

#[test]
fn power_cut_during_commit_keeps_the_previous_identity() {
    let (fx, mut link, a) = provisioned(
        "F-8",
        FaultConfig {
            power_cut_in_commit: true,
            ..FaultConfig::default()
        },
    );
    let b = Identity::new("new");
    assert!(link.write_identity(&b.items(), &mut |_, _| {}).is_err());
    // A torn temp file may be left next to it; the flash file itself is the old identity.
    let path = fx.jig.flash_path("F-8");
    let leftovers = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 1, "the interrupted write went to the spare file");
    a.assert_in(&Flash::load(&path).unwrap());
}

#[test]
fn a_link_that_garbles_everything_is_reported_as_such() {
    let fx = Fixture::new(&["F-9"], |c| {
        c.faults = FaultConfig {
            corrupt_tx_probability: 1.0,
            ..FaultConfig::default()
        }
    });
    let mut link = fx.link();
    match link.hello() {
        Err(JigError::Garbled {
            crc_errors, tries, ..
        }) => {
            assert_eq!(tries, 4);
            assert!(crc_errors >= 4);
        }
        other => panic!("expected Garbled, got {other:?}"),
    }
}

#[test]
fn a_put_lost_or_garbled_before_the_pipelined_commit_is_resent_and_committed_again() {
    // The line's identity goes out as one PUT and the COMMIT in one burst; the bigger test
    // identity as several PUTs, two in flight at a time, the COMMIT right behind the last.
    let small = Identity::line_sized("new");
    let big = Identity::new("new");
    let fx = Fixture::new(&["F-10"], |_| {});
    let mut link = fx.link();
    link.hello().unwrap();
    let chunk = link.put_chunk().unwrap();
    drop(link);
    assert_eq!(small.puts(chunk), 1);
    let puts = big.puts(chunk);
    assert!(puts >= 3, "{puts} PUTs");
    // Frame indices after arming: the PUTs (0..puts), then the COMMIT.
    let cases: Vec<(&str, &Identity, FaultConfig, u32)> = vec![
        (
            "the PUT garbled (NAK BAD_CRC): nothing staged when the COMMIT behind it arrives",
            &small,
            FaultConfig {
                corrupt_rx_at: Some(0),
                ..FaultConfig::default()
            },
            2,
        ),
        (
            "the PUT lost on the line: INCOMPLETE",
            &small,
            FaultConfig {
                drop_rx_at: Some(0),
                ..FaultConfig::default()
            },
            2,
        ),
        (
            "a middle PUT lost: a gap in the staged data, HASH_MISMATCH",
            &big,
            FaultConfig {
                drop_rx_at: Some(1),
                ..FaultConfig::default()
            },
            2,
        ),
        (
            "the COMMIT itself lost: retransmitted with the same seq",
            &small,
            FaultConfig {
                drop_rx_at: Some(1),
                ..FaultConfig::default()
            },
            1,
        ),
        (
            "the COMMIT's answer garbled: the board replays it",
            &small,
            FaultConfig {
                corrupt_tx_at: Some(1),
                ..FaultConfig::default()
            },
            1,
        ),
    ];
    for (i, (what, new, faults, rounds)) in cases.into_iter().enumerate() {
        let serial = format!("F-10-{i}");
        let (fx, mut link, _old) = provisioned(&serial, faults);
        let before = fx.flash(&serial).generation();
        let report = link
            .write_and_verify(&new.items(), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert!(report.verified, "{what}");
        assert_eq!(report.commit_rounds, rounds, "{what}: {report:?}");
        assert!(report.retransmissions >= 1, "{what}: {report:?}");
        let flash = fx.flash(&serial);
        new.assert_in(&flash);
        assert_eq!(flash.generation(), before + 1, "{what}: committed once");
    }
}

#[test]
fn a_read_back_that_differs_is_reported_with_the_slot_that_differs() {
    let (fx, mut link, _old) = provisioned(
        "F-11",
        FaultConfig {
            flip_bit_in: Some(Slot::RootCa),
            ..FaultConfig::default()
        },
    );
    let new = Identity::new("new");
    match link.write_and_verify(&new.items(), &mut |_, _| {}) {
        Err(e @ JigError::VerifyMismatch { .. }) => {
            let JigError::VerifyMismatch { slot, .. } = &e else {
                unreachable!()
            };
            assert_eq!(*slot, Slot::RootCa, "{e}");
            assert!(e.to_string().contains("root_ca"), "{e}");
        }
        other => panic!("expected a verify mismatch, got {other:?}"),
    }
    // The board did commit (atomically, all five slots), but the root CA it holds has a
    // flipped bit.
    let flash = fx.flash("F-11");
    assert_eq!(flash.certificate(), Some(&new.cert[..]));
    assert_eq!(flash.slot(Slot::ThingName), Some(&new.thing[..]));
    assert_ne!(flash.root_ca(), Some(&new.root_ca[..]));
    assert_eq!(flash.root_ca().map(<[u8]>::len), Some(new.root_ca.len()));
    // write_identity reports the same write as not verified; verify() names the slot.
    let report = link.write_identity(&new.items(), &mut |_, _| {}).unwrap();
    assert!(!report.verified);
    assert!(matches!(
        link.verify(&new.items()),
        Err(JigError::VerifyMismatch {
            slot: Slot::RootCa,
            ..
        })
    ));
    // A good flash again: the rewrite verifies.
    fx.jig.set_faults(FaultConfig::default());
    let report = link.write_and_verify(&new.items(), &mut |_, _| {}).unwrap();
    assert!(report.verified);
    new.assert_in(&fx.flash("F-11"));
}
