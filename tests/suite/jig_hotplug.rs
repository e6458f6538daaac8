//! Hot-unplug of a jig's USB adapter, at the link level: the virtual jig's path is stable
//! (like `/dev/ttyUSB0`), a link on an unplugged adapter fails cleanly, opening the path fails
//! until the adapter is back, and a write cut by an unplug leaves the board's flash with the
//! old identity or the new one, never a mix; after replug the write completes.

use crate::jig_support::{Fixture, Identity, settings};
use fleet_station::jig::{CsrSubject, JigError, JigLink, PortSettings, VirtualJigConfig};

/// A line slow enough that a write takes a few hundred milliseconds.
fn slow_line(c: &mut VirtualJigConfig) {
    c.baud = 115_200;
}

fn slow_settings() -> PortSettings {
    PortSettings {
        baud: 115_200,
        ..settings()
    }
}

/// Either identity, whole; panics on a mix.
fn old_or_new(fx: &Fixture, serial: &str, old: &Identity, new: &Identity) -> &'static str {
    let flash = fx.flash(serial);
    if old.is_in(&flash) {
        "old"
    } else if new.is_in(&flash) {
        "new"
    } else {
        panic!("the flash of {serial} holds neither identity whole: {flash:?}")
    }
}

#[test]
fn an_unplugged_adapter_fails_cleanly_and_comes_back_at_the_same_path() {
    let fx = Fixture::new(&["HP-1"], |_| {});
    let path = fx.jig.path().to_string();
    let mut link = fx.link();
    let id = Identity::new("hp1");
    link.write_and_verify(&id.items(), &mut |_, _| {}).unwrap();

    fx.jig.unplug();
    assert_eq!(fx.jig.path(), path, "the path does not change");
    // The open link fails at once, with an I/O error naming the port (no panic, no hang).
    match link.hello() {
        Err(e @ JigError::Io { .. }) => assert!(e.to_string().contains(&path), "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    // So does a write.
    assert!(matches!(
        link.write_identity(&id.items(), &mut |_, _| {}),
        Err(JigError::Io { .. })
    ));
    drop(link);
    // Nothing to open while the adapter is out.
    for _ in 0..3 {
        match JigLink::open(&path, &settings()) {
            Err(JigError::Open { port, .. }) => assert_eq!(port, path),
            other => panic!("expected the open to fail, got {other:?}"),
        }
    }

    fx.jig.replug().unwrap();
    let mut link = JigLink::open(&path, &settings()).unwrap();
    let info = link.hello().unwrap();
    assert_eq!(info.serial, "HP-1", "the same board is on the jig");
    assert!(info.has_identity(), "its flash survived");
    link.verify(&id.items()).unwrap();
    let stats = fx.jig.stats();
    assert_eq!((stats.unplugs, stats.replugs), (1, 1));
}

#[test]
fn unplug_in_the_middle_of_a_write_leaves_old_or_new_and_a_rewrite_completes() {
    let fx = Fixture::new(&["HP-2"], slow_line);
    let path = fx.jig.path().to_string();
    let old = Identity::new("old");
    let new = Identity::new("new");
    let mut link = JigLink::open(&path, &slow_settings()).unwrap();
    link.write_and_verify(&old.items(), &mut |_, _| {}).unwrap();
    let chunk = link.put_chunk().unwrap();
    let puts = new.puts(chunk);
    assert!(puts >= 2, "the identity takes several PUTs ({puts})");

    // Pull the adapter after the k-th PUT is acknowledged: mid-stream, and (k = all) with the
    // COMMIT on its way or just done.
    for k in 1..=puts {
        let mut acks = 0;
        let target = k;
        let jig = &fx.jig;
        let result = link.write_and_verify(&new.items(), &mut |done, _| {
            if done > 0 {
                acks += 1;
                if acks == target {
                    jig.unplug();
                }
            }
        });
        let outcome = match result {
            // The COMMIT_ACK may have been on the pty already when the adapter went.
            Ok(report) => {
                assert!(report.verified);
                "committed"
            }
            Err(JigError::Io { .. }) => "cut",
            Err(e) => panic!("after {k} acks: unexpected error {e:?}"),
        };
        let held = old_or_new(&fx, "HP-2", &old, &new);
        if k < puts {
            // PUTs were still on the line: the COMMIT behind them never arrived.
            assert_eq!((outcome, held), ("cut", "old"), "after {k} of {puts} acks");
        } else if outcome == "committed" {
            assert_eq!(held, "new");
        }
        drop(link);
        assert!(JigLink::open(&path, &slow_settings()).is_err());

        fx.jig.replug().unwrap();
        link = JigLink::open(&path, &slow_settings()).unwrap();
        assert_eq!(link.hello().unwrap().serial, "HP-2");
        // Back to the old identity for the next round, written in full.
        link.write_and_verify(&old.items(), &mut |_, _| {}).unwrap();
        old.assert_in(&fx.flash("HP-2"));
    }

    // And a last uninterrupted write of the new identity.
    let report = link.write_and_verify(&new.items(), &mut |_, _| {}).unwrap();
    assert!(report.verified);
    new.assert_in(&fx.flash("HP-2"));
    assert_eq!(fx.jig.stats().unplugs, puts);
}

#[test]
fn a_board_on_an_unplugged_jig_loses_staged_data_not_its_flash() {
    // The adapter powers the board: an unplug is a power cycle for it.
    let fx = Fixture::new(&["HP-3"], |_| {});
    let id = Identity::new("kept");
    let mut link = fx.link();
    link.write_and_verify(&id.items(), &mut |_, _| {}).unwrap();
    let generation = fx.flash("HP-3").generation();
    link.gen_csr(&CsrSubject {
        common_name: "HP-3".into(),
        ..CsrSubject::default()
    })
    .unwrap();
    assert!(link.hello().unwrap().has_staged_key());
    drop(link);

    fx.jig.unplug();
    fx.jig.unplug(); // a second pull is a no-op
    fx.jig.replug().unwrap();
    fx.jig.replug().unwrap(); // so is a second plug
    let mut link = JigLink::open(fx.jig.path(), &settings()).unwrap();
    // The board ignores the line while it boots; HELLO is retried until it answers.
    let info = link.hello().unwrap();
    assert!(info.has_identity());
    assert!(!info.has_staged_key(), "the generated key was in RAM");
    assert_eq!(fx.flash("HP-3").generation(), generation);
    link.verify(&id.items()).unwrap();
    let stats = fx.jig.stats();
    assert_eq!((stats.unplugs, stats.replugs), (1, 1));
}
