//! The journal through the public API: a device's life and audit trail, resume points, and
//! orphans — each certificate AWS may hold listed once, with what AWS holds.

use super::*;
use crate::ledger::{
    DeviceRow, DeviceState, KeySource, LedgerError, OrphanStatus, Transition, export,
};

async fn records_a_full_life_and_its_audit_trail(s: Scratch) {
    let ledger = s.open("st-1").unwrap();
    let id = ledger.begin("SN-1", "jig-1").await.unwrap().id;
    ledger.record(id, key_reserved()).await.unwrap();
    ledger.record(id, issued(&"c".repeat(64))).await.unwrap();
    ledger.record(id, registered("SN-1")).await.unwrap();
    ledger.record(id, Transition::Written).await.unwrap();
    ledger.record(id, Transition::Verified).await.unwrap();
    let d = ledger.device("SN-1").unwrap().unwrap();
    assert_eq!(d.state, DeviceState::Verified);
    assert_eq!(d.thing_name.as_deref(), Some("SN-1"));
    assert_eq!(d.certificate_id.as_deref(), Some("c".repeat(64).as_str()));
    assert_eq!(d.station, "st-1");
    assert_eq!(d.key_source.as_deref(), Some("pool"));
    let states = event_names(&ledger, id);
    assert_eq!(
        states,
        [
            "started",
            "key_reserved",
            "certificate_issued",
            "registered",
            "written",
            "verified"
        ]
    );
    assert!(ledger.orphans().unwrap().is_empty());
    // A verified board is not provisioned again.
    assert!(matches!(
        ledger.begin("SN-1", "jig-2").await,
        Err(LedgerError::AlreadyProvisioned { .. })
    ));
}

fn blocking_calls_work_from_threads_and_survive_reopen(s: Scratch) {
    {
        let ledger = s.open("st").unwrap();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let l = ledger.clone();
                std::thread::spawn(move || {
                    let id = l.begin_blocking(&format!("SN-{i}"), "j").unwrap().id;
                    l.record_blocking(id, Transition::Failed { reason: "r".into() })
                        .unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
    let ledger = s.open("st").unwrap();
    let all = ledger.devices().unwrap();
    assert_eq!(all.len(), 8);
    assert!(all.iter().all(|d| d.state == DeviceState::Failed));
    // A failed board may be tried again: same row, fresh start, one more attempt.
    let b = ledger.begin_blocking("SN-0", "j").unwrap();
    assert!(b.resume.is_none());
    let row = ledger.device("SN-0").unwrap().unwrap();
    assert_eq!(
        (row.id, row.attempts, row.state),
        (b.id, 2, DeviceState::Started)
    );
}

async fn an_unfinished_device_resumes_with_its_token_and_key(s: Scratch) {
    {
        let ledger = s.open("st").unwrap();
        let id = ledger.begin("SN-R", "j1").await.unwrap().id;
        ledger.record(id, key_reserved()).await.unwrap();
        ledger.record(id, issued("cert-r")).await.unwrap();
        // The station dies here.
    }
    let ledger = s.open("st").unwrap();
    assert_eq!(ledger.unfinished().unwrap().len(), 1);
    let b = ledger.begin("SN-R", "j2").await.unwrap();
    let r = b.resume.expect("resume point");
    assert_eq!(r.state, DeviceState::CertificateIssued);
    assert_eq!(r.certificate_id.as_deref(), Some("cert-r"));
    assert_eq!(r.token.unwrap().expose(), "token-secret-value");
    assert_eq!(
        r.private_key.unwrap().expose(),
        "-----BEGIN PRIVATE KEY-----PLAINTEXT-KEY"
    );
    assert_eq!(r.key_source, Some(KeySource::Pool));
    let states = event_names(&ledger, b.id);
    assert_eq!(states.last().unwrap(), "resumed");
}

async fn abandoned_and_failed_certificates_become_orphans(s: Scratch) {
    let ledger = s.open("st").unwrap();

    // A token that can no longer be used: the certificate is abandoned (pending), and the
    // device gets a new one.
    let a = ledger.begin("SN-A", "j").await.unwrap().id;
    ledger.record(a, key_reserved()).await.unwrap();
    ledger.record(a, issued("cert-a1")).await.unwrap();
    ledger
        .record(
            a,
            Transition::CertificateAbandoned {
                reason: "token expired".into(),
                status: OrphanStatus::Pending,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ledger.device("SN-A").unwrap().unwrap().state,
        DeviceState::Started
    );
    assert_eq!(ledger.device("SN-A").unwrap().unwrap().certificate_id, None);
    ledger.record(a, key_reserved()).await.unwrap();
    ledger.record(a, issued("cert-a2")).await.unwrap();

    // A registered certificate whose board failed: active orphan with its thing.
    let b = ledger.begin("SN-B", "j").await.unwrap().id;
    ledger.record(b, key_reserved()).await.unwrap();
    ledger.record(b, issued("cert-b")).await.unwrap();
    ledger.record(b, registered("thing-b")).await.unwrap();
    ledger
        .record(
            b,
            Transition::Failed {
                reason: "jig:verify".into(),
            },
        )
        .await
        .unwrap();

    // A crash between "key reserved" and the reply: AWS may hold a pending certificate.
    let c = ledger.begin("SN-C", "j").await.unwrap().id;
    ledger.record(c, key_reserved()).await.unwrap();
    ledger
        .record(
            c,
            Transition::Failed {
                reason: "interrupted".into(),
            },
        )
        .await
        .unwrap();

    let orphans = ledger.orphans().unwrap();
    let summary: Vec<(Option<&str>, &str, &str)> = orphans
        .iter()
        .map(|o| {
            (
                o.certificate_id.as_deref(),
                o.status.as_str(),
                o.serial.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("cert-a1"), "pending", "SN-A"),
            (Some("cert-b"), "active", "SN-B"),
            (None, "unknown", "SN-C"),
        ]
    );
    assert_eq!(orphans[1].thing_name.as_deref(), Some("thing-b"));
    assert!(orphans[2].public_key_sha256.is_some());
}

// ---- orphans: each listed once, with what AWS holds ----

async fn a_second_kill_in_flight_records_the_key_once_and_starts_afresh(s: Scratch) {
    let ledger = s.open("st").unwrap();
    let id = ledger.begin("SN-K", "j").await.unwrap().id;
    ledger.record(id, key_reserved_with("aa")).await.unwrap();
    // Killed with the request in flight; on resume the engine abandons it.
    let r = ledger.begin("SN-K", "j").await.unwrap().resume.unwrap();
    assert_eq!(r.state, DeviceState::KeyReserved);
    ledger
        .record(id, abandoned(OrphanStatus::Unknown))
        .await
        .unwrap();
    // The device holds no key material any more: the engine reserves a fresh key.
    let d = ledger.device("SN-K").unwrap().unwrap();
    assert_eq!(
        (d.state, d.key_source, d.certificate_id),
        (DeviceState::Started, None, None)
    );
    assert_eq!(s.secrets_of("SN-K"), (None, None, None));
    assert!(ledger.unfinished().unwrap().is_empty());
    // Killed again before the new key is reserved: the next run starts it afresh, and a
    // second abandonment has nothing left to record.
    let b = ledger.begin("SN-K", "j").await.unwrap();
    assert!(
        b.resume.is_none(),
        "a device at `started` resumes as a fresh start"
    );
    ledger
        .record(id, abandoned(OrphanStatus::Unknown))
        .await
        .unwrap();
    assert_eq!(
        orphan_summary(&ledger),
        [(
            None,
            "unknown".to_string(),
            "SN-K".to_string(),
            Some("aa".repeat(32)),
            None,
        )]
    );
    // A fresh key in flight at the next kill is a second, different orphan.
    ledger.record(id, key_reserved_with("bb")).await.unwrap();
    ledger
        .record(id, abandoned(OrphanStatus::Unknown))
        .await
        .unwrap();
    assert_eq!(orphan_summary(&ledger).len(), 2);
    assert_eq!(orphan_summary(&ledger)[1].3, Some("bb".repeat(32)));
    let last = ledger.events(id).unwrap().pop().unwrap();
    assert_eq!(last.0, "started");
    assert!(
        last.1
            .unwrap()
            .starts_with("certificate abandoned (unknown): ")
    );
}

async fn the_same_orphan_is_never_listed_twice(s: Scratch) {
    let ledger = s.open("st").unwrap();
    let id = ledger.begin("SN-D", "j").await.unwrap().id;
    ledger.record(id, key_reserved_with("cc")).await.unwrap();
    // A lost request, then the same key abandoned: one row for the key.
    ledger.note_lost_request(id, "timed out").await.unwrap();
    ledger
        .record(id, abandoned(OrphanStatus::Unknown))
        .await
        .unwrap();
    // The same certificate id recorded again (a row written straight into the journal, as
    // an older version could leave) is not added a second time.
    ledger.record(id, key_reserved_with("dd")).await.unwrap();
    ledger.record(id, issued("cert-d")).await.unwrap();
    s.execute(
        "INSERT INTO orphans (certificate_id, public_key_sha256, serial, status, reason, recorded_ms)
         VALUES ('cert-d', NULL, 'SN-D', 'pending', 'earlier', 0)",
    );
    ledger
        .record(id, Transition::Failed { reason: "r".into() })
        .await
        .unwrap();
    let ids: Vec<Option<String>> = orphan_summary(&ledger).into_iter().map(|o| o.0).collect();
    assert_eq!(ids, [None, Some("cert-d".to_string())]);
}

async fn an_active_orphan_gets_its_thing_from_the_next_registration(s: Scratch) {
    let ledger = s.open("st").unwrap();
    let other = ledger.begin("SN-O", "j").await.unwrap().id;
    ledger.record(other, key_reserved()).await.unwrap();
    ledger.record(other, issued("c-other")).await.unwrap();
    ledger
        .record(other, abandoned(OrphanStatus::Active))
        .await
        .unwrap();

    let id = ledger.begin("SN-T", "j").await.unwrap().id;
    ledger.record(id, key_reserved()).await.unwrap();
    ledger.record(id, issued("c1")).await.unwrap();
    // Resumed: RegisterThing refuses the token within its hour, so a lost attempt used it.
    ledger
        .record(id, abandoned(OrphanStatus::Active))
        .await
        .unwrap();
    ledger.record(id, key_reserved_with("ee")).await.unwrap();
    ledger.record(id, issued("c2")).await.unwrap();
    ledger
        .record(id, abandoned(OrphanStatus::Pending))
        .await
        .unwrap();
    let thingless = orphan_summary(&ledger);
    assert!(thingless.iter().all(|o| o.4.is_none()), "{thingless:?}");
    ledger.record(id, key_reserved_with("ff")).await.unwrap();
    ledger.record(id, issued("c3")).await.unwrap();
    ledger.record(id, registered("thing-t")).await.unwrap();
    let things: Vec<(Option<String>, String, Option<String>)> = orphan_summary(&ledger)
        .into_iter()
        .map(|o| (o.0, o.1, o.4))
        .collect();
    assert_eq!(
        things,
        [
            // Another device's orphan keeps waiting for its own registration.
            (Some("c-other".into()), "active".into(), None),
            (Some("c1".into()), "active".into(), Some("thing-t".into())),
            // A pending certificate was never attached to a thing.
            (Some("c2".into()), "pending".into(), None),
        ]
    );
}

async fn an_interrupted_device_orphans_what_it_holds_and_starts_over(s: Scratch) {
    let ledger = s.open("st").unwrap();
    let interrupted = || Transition::Interrupted {
        reason: "load test interrupted".into(),
    };
    let issued_dev = ledger.begin("LT-1", "loadtest").await.unwrap().id;
    ledger.record(issued_dev, key_reserved()).await.unwrap();
    ledger.record(issued_dev, issued("c-issued")).await.unwrap();
    let registered_dev = ledger.begin("LT-2", "loadtest").await.unwrap().id;
    ledger.record(registered_dev, key_reserved()).await.unwrap();
    ledger
        .record(registered_dev, issued("c-reg"))
        .await
        .unwrap();
    ledger
        .record(registered_dev, registered("thing-2"))
        .await
        .unwrap();
    let in_flight = ledger.begin("LT-3", "loadtest").await.unwrap().id;
    ledger
        .record(in_flight, key_reserved_with("99"))
        .await
        .unwrap();
    let fresh = ledger.begin("LT-4", "loadtest").await.unwrap().id;
    for id in [issued_dev, registered_dev, in_flight, fresh] {
        ledger.record(id, interrupted()).await.unwrap();
    }
    for serial in ["LT-1", "LT-2", "LT-3", "LT-4"] {
        let d = ledger.device(serial).unwrap().unwrap();
        assert_eq!(d.state, DeviceState::Interrupted, "{serial}");
        assert_eq!(d.reason.as_deref(), Some("load test interrupted"));
        let (token, sealed, _) = s.secrets_of(serial);
        assert_eq!((token, sealed), (None, None), "{serial}");
    }
    assert_eq!(
        orphan_summary(&ledger),
        [
            (
                Some("c-issued".into()),
                "pending".into(),
                "LT-1".into(),
                Some("ab".repeat(32)),
                None
            ),
            (
                Some("c-reg".into()),
                "active".into(),
                "LT-2".into(),
                Some("ab".repeat(32)),
                Some("thing-2".into())
            ),
            (
                None,
                "unknown".into(),
                "LT-3".into(),
                Some("99".repeat(32)),
                None
            ),
        ]
    );
    assert!(ledger.unfinished().unwrap().is_empty());
    // The export says so.
    let mut csv = Vec::new();
    export::write_csv(&ledger, export::Filter::default(), &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.matches(",interrupted,").count(), 4, "{csv}");
    // Placed again, an interrupted board starts over like a failed one.
    let b = ledger.begin("LT-2", "j").await.unwrap();
    assert!(b.resume.is_none());
    let d = ledger.device("LT-2").unwrap().unwrap();
    assert_eq!(
        (d.state, d.attempts, d.reason),
        (DeviceState::Started, 2, None)
    );
}

async fn a_lost_certificate_request_is_listed_once_as_pending(s: Scratch) {
    let ledger = s.open("st").unwrap();
    let id = ledger.begin("SN-L", "j").await.unwrap().id;
    // No key on record yet: nothing to list.
    ledger.note_lost_request(id, "timed out").await.unwrap();
    assert!(ledger.orphans().unwrap().is_empty());
    ledger.record(id, key_reserved_with("12")).await.unwrap();
    ledger
        .note_lost_request(id, "no answer within 10 s")
        .await
        .unwrap();
    // The retry with the same key loses its answer too.
    ledger
        .note_lost_request(id, "connection closed after the publish")
        .await
        .unwrap();
    let orphans = ledger.orphans().unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(
        (
            orphans[0].certificate_id.as_deref(),
            orphans[0].status.as_str(),
            orphans[0].public_key_sha256.clone(),
            orphans[0].reason.as_str()
        ),
        (
            None,
            "pending",
            Some("12".repeat(32)),
            "no answer within 10 s"
        )
    );
    assert_eq!(
        ledger.device("SN-L").unwrap().unwrap().state,
        DeviceState::KeyReserved
    );
    // Then the retry is answered: the device goes on with its certificate.
    ledger.record(id, issued("c-l")).await.unwrap();
    assert_eq!(ledger.orphans().unwrap().len(), 1);
    let events = event_names(&ledger, id);
    assert_eq!(
        events,
        [
            "started",
            "key_reserved",
            "request_lost",
            "request_lost",
            "certificate_issued"
        ]
    );
}

async fn a_key_released_before_its_request_was_sent_leaves_no_orphan(s: Scratch) {
    let ledger = s.open("st").unwrap();
    let id = ledger.begin("SN-R", "jig").await.unwrap().id;
    ledger.record(id, key_reserved()).await.unwrap();
    let released = || Transition::KeyReleased {
        reason: "stopped".into(),
    };
    ledger.record(id, released()).await.unwrap();
    let d = ledger.device("SN-R").unwrap().unwrap();
    assert_eq!(d.state, DeviceState::Started);
    assert_eq!(d.key_source, None);
    assert!(ledger.orphans().unwrap().is_empty());
    // A device that holds a certificate keeps it (and its state).
    ledger.record(id, key_reserved()).await.unwrap();
    ledger.record(id, issued(&"d".repeat(64))).await.unwrap();
    ledger.record(id, released()).await.unwrap();
    let d = ledger.device("SN-R").unwrap().unwrap();
    assert_eq!(d.state, DeviceState::CertificateIssued);
    assert_eq!(d.certificate_id.as_deref(), Some("d".repeat(64).as_str()));
}

async fn unfinished_lists_exactly_the_devices_that_resume_in_the_order_first_seen(s: Scratch) {
    let ledger = s.open("st").unwrap();
    // One device left in each state a device can be left in.
    let begin = |serial: &'static str| {
        let ledger = ledger.clone();
        async move { ledger.begin(serial, "j").await.unwrap().id }
    };
    begin("SN-started").await;
    let id = begin("SN-key").await;
    ledger.record(id, key_reserved()).await.unwrap();
    let id = begin("SN-issued").await;
    ledger.record(id, key_reserved()).await.unwrap();
    ledger.record(id, issued("c-issued")).await.unwrap();
    let id = begin("SN-registered").await;
    ledger.record(id, key_reserved()).await.unwrap();
    ledger.record(id, issued("c-registered")).await.unwrap();
    ledger.record(id, registered("t-registered")).await.unwrap();
    let id = begin("SN-written").await;
    ledger.record(id, key_reserved()).await.unwrap();
    ledger.record(id, issued("c-written")).await.unwrap();
    ledger.record(id, registered("t-written")).await.unwrap();
    ledger.record(id, Transition::Written).await.unwrap();
    let id = begin("SN-verified").await;
    ledger.record(id, key_reserved()).await.unwrap();
    ledger.record(id, issued("c-verified")).await.unwrap();
    ledger.record(id, registered("t-verified")).await.unwrap();
    ledger.record(id, Transition::Written).await.unwrap();
    ledger.record(id, Transition::Verified).await.unwrap();
    let id = begin("SN-failed").await;
    let reason = "test".to_string();
    ledger
        .record(
            id,
            Transition::Failed {
                reason: reason.clone(),
            },
        )
        .await
        .unwrap();
    let id = begin("SN-interrupted").await;
    ledger
        .record(id, Transition::Interrupted { reason })
        .await
        .unwrap();

    let serials = |rows: Vec<DeviceRow>| rows.into_iter().map(|d| d.serial).collect::<Vec<_>>();
    let unfinished = serials(ledger.unfinished().unwrap());
    assert_eq!(
        unfinished,
        ["SN-key", "SN-issued", "SN-registered", "SN-written"]
    );
    // The same as reading every device and keeping those that resume.
    let filtered: Vec<DeviceRow> = ledger
        .devices()
        .unwrap()
        .into_iter()
        .filter(|d| d.state.resumes())
        .collect();
    assert_eq!(unfinished, serials(filtered));
    assert_eq!(ledger.unfinished_count().unwrap(), 4);
}

on_both_stores!(async records_a_full_life_and_its_audit_trail, an_unfinished_device_resumes_with_its_token_and_key, abandoned_and_failed_certificates_become_orphans, a_second_kill_in_flight_records_the_key_once_and_starts_afresh, the_same_orphan_is_never_listed_twice, an_active_orphan_gets_its_thing_from_the_next_registration, an_interrupted_device_orphans_what_it_holds_and_starts_over, a_lost_certificate_request_is_listed_once_as_pending, a_key_released_before_its_request_was_sent_leaves_no_orphan, unfinished_lists_exactly_the_devices_that_resume_in_the_order_first_seen);
on_both_stores!(sync blocking_calls_work_from_threads_and_survive_reopen);
