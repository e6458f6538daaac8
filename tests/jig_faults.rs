//! Station ↔ virtual board over real ptys with injected faults: every fault either heals by
//! retransmission (and the board ends verified) or fails cleanly with the board's flash
//! holding the previous identity, never a mix.

mod jig_support;

use std::time::Duration;

use fleet_station::jig::{ErrorCode, FaultConfig, Flash, JigError, JigLink, PortSettings};
use jig_support::{Fixture, Identity};

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
    fx.jig.set_faults(FaultConfig {
        stall: Some((b.puts(1024), Duration::from_millis(700))),
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
