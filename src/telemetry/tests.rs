//! Tests of the telemetry aggregator: events in, snapshots and the summary's aggregate out.

use super::*;

#[tokio::test]
async fn totals_are_cut_after_the_events_sent_before_and_the_step_is_shown() {
    let (t, snap, task) = start();
    let call = |result| Event::ApiCall {
        api: ApiKind::RegisterThing,
        result,
        serial: "a".into(),
    };
    t.emit(Event::Step {
        label: "step 1".into(),
    })
    .await;
    t.emit(call(ApiResult::Accepted)).await;
    let first = t.totals().await.unwrap();
    t.emit(call(ApiResult::Rejected {
        status: 429,
        error_code: "Throttling".into(),
    }))
    .await;
    t.emit(Event::Throttled {
        api: ApiKind::RegisterThing,
    })
    .await;
    let second = t.totals().await.unwrap();
    assert_eq!(first.api_results.values().sum::<u64>(), 1);
    assert_eq!(second.api_results.values().sum::<u64>(), 2);
    assert_eq!(second.throttled_by_api["register_thing"], 1);
    assert!(first.throttled_by_api.is_empty());
    drop(t);
    task.await.unwrap();
    assert_eq!(snap.borrow().step.as_deref(), Some("step 1"));
}

#[tokio::test]
async fn aggregates_counts_failures_and_latencies() {
    let (t, _snap, task) = start();
    t.emit(Event::DeviceStarted {
        serial: "a".into(),
        jig: "j".into(),
    })
    .await;
    t.emit(Event::DeviceStarted {
        serial: "b".into(),
        jig: "j".into(),
    })
    .await;
    for ms in [10, 20, 30] {
        t.emit(Event::StageTime {
            stage: Stage::RegisterThing,
            elapsed: Duration::from_millis(ms),
        })
        .await;
    }
    t.emit(Event::DeviceProvisioned { serial: "a".into() })
        .await;
    t.emit(Event::DeviceFailed {
        serial: "b".into(),
        reason: FailureCode::Jig(crate::jig::JigFailure::VerifyMismatch),
    })
    .await;
    t.emit(Event::Throttled {
        api: ApiKind::RegisterThing,
    })
    .await;
    drop(t);
    let agg = task.await.unwrap();
    assert_eq!(
        (agg.started, agg.provisioned, agg.failed, agg.throttled),
        (2, 1, 1, 1)
    );
    assert_eq!(agg.failures["jig:verify_mismatch"], 1);
    let h = &agg.histograms[&Stage::RegisterThing];
    assert_eq!(h.len(), 3);
    assert!((19_900..=20_100).contains(&h.value_at_quantile(0.5)));
}

#[test]
fn jigs_failures_api_results_and_seconds_are_kept_for_the_surfaces() {
    let mut agg = Aggregate::new();
    let mut stock = (0, 0);
    let started = |serial: &str, jig: &str| Event::DeviceStarted {
        serial: serial.into(),
        jig: jig.into(),
    };
    let call = |serial: &str, result: ApiResult| Event::ApiCall {
        api: ApiKind::RegisterThing,
        result,
        serial: serial.into(),
    };
    agg.apply(started("SN-1", "jig-a"), &mut stock);
    agg.apply(started("SN-2", "jig-b"), &mut stock);
    agg.apply(
        Event::JigProgress {
            jig: "jig-a".into(),
            done: 300,
            total: 1200,
        },
        &mut stock,
    );
    let shared = Shared::default();
    let snap = agg.snapshot(stock, &shared);
    assert_eq!(snap.jigs["jig-a"].current.as_deref(), Some("SN-1"));
    assert_eq!(snap.jigs["jig-a"].progress, Some((300, 1200)));
    assert_eq!(snap.in_flight(), 2);

    agg.apply(call("SN-2", ApiResult::Timeout), &mut stock);
    agg.apply(
        call(
            "SN-2",
            ApiResult::Rejected {
                status: 400,
                error_code: "InvalidParameters".into(),
            },
        ),
        &mut stock,
    );
    agg.apply(
        Event::DeviceFailed {
            serial: "SN-2".into(),
            reason: FailureCode::Rejected {
                api: ApiKind::RegisterThing,
                error_code: "InvalidParameters".into(),
            },
        },
        &mut stock,
    );
    agg.apply(call("SN-1", ApiResult::Accepted), &mut stock);
    agg.apply(
        Event::DeviceProvisioned {
            serial: "SN-1".into(),
        },
        &mut stock,
    );
    let snap = agg.snapshot(stock, &shared);
    // The failure names its stage, reason and the requests the device sent.
    let f = &snap.recent_failures[0];
    assert_eq!(
        (f.serial.as_str(), f.stage, f.reason.as_str(), f.attempts),
        (
            "SN-2",
            "register_thing",
            "register_thing:InvalidParameters",
            2
        )
    );
    // Each jig shows how its last board ended, and holds no board now.
    assert_eq!(
        snap.jigs["jig-b"].last,
        Some(JigOutcome::Failed {
            serial: "SN-2".into(),
            reason: "register_thing:InvalidParameters".into()
        })
    );
    assert_eq!(snap.jigs["jig-a"].current, None);
    assert_eq!(
        snap.jigs["jig-a"].last,
        Some(JigOutcome::Provisioned {
            serial: "SN-1".into()
        })
    );
    // Results by API and label; both devices ended in the current second.
    assert_eq!(snap.api_results[&("register_thing", "timeout".into())], 1);
    assert_eq!(
        snap.api_results[&("register_thing", "InvalidParameters".into())],
        1
    );
    assert_eq!(snap.api_results[&("register_thing", "accepted".into())], 1);
    assert_eq!(
        snap.seconds.last(),
        Some(&Second {
            provisioned: 1,
            failed: 1
        })
    );
    assert_eq!(snap.in_flight(), 0);
}

#[test]
fn a_requeued_failure_no_longer_counts_until_the_device_ends_again() {
    let mut agg = Aggregate::new();
    let mut stock = (0, 0);
    let shared = Shared::default();
    let failed = |serial: &str| Event::DeviceFailed {
        serial: serial.into(),
        reason: FailureCode::Jig(crate::jig::JigFailure::Timeout),
    };
    for serial in ["SN-1", "SN-2"] {
        agg.apply(
            Event::DeviceStarted {
                serial: serial.into(),
                jig: "j".into(),
            },
            &mut stock,
        );
        agg.apply(failed(serial), &mut stock);
    }
    // An unknown serial changes nothing.
    agg.apply(
        Event::Requeued {
            serial: "SN-9".into(),
        },
        &mut stock,
    );
    agg.apply(
        Event::Requeued {
            serial: "SN-1".into(),
        },
        &mut stock,
    );
    let snap = agg.snapshot(stock, &shared);
    assert_eq!(
        (snap.started, snap.failed, snap.requeued, snap.in_flight()),
        (1, 1, 1, 0)
    );
    assert_eq!(snap.failures["jig:timeout"], 1);
    // The failure log keeps both failures.
    assert_eq!(snap.recent_failures.len(), 2);
    agg.apply(
        Event::DeviceStarted {
            serial: "SN-1".into(),
            jig: "j".into(),
        },
        &mut stock,
    );
    agg.apply(
        Event::DeviceProvisioned {
            serial: "SN-1".into(),
        },
        &mut stock,
    );
    let snap = agg.snapshot(stock, &shared);
    assert_eq!((snap.started, snap.provisioned, snap.failed), (2, 1, 1));
}

#[test]
fn snapshot_counts_endpoint_outages_once_each() {
    let mut agg = Aggregate::new();
    let mut stock = (0, 0);
    let down = || Event::EndpointUnreachable {
        reason: "connection refused".into(),
    };
    agg.apply(down(), &mut stock);
    agg.apply(down(), &mut stock);
    let snap = agg.snapshot(stock, &Shared::default());
    assert_eq!(snap.outages, 1);
    assert!(snap.endpoint_down.is_some());
    agg.apply(
        Event::EndpointReachable {
            after: Duration::from_secs(1),
        },
        &mut stock,
    );
    agg.apply(down(), &mut stock);
    assert_eq!(agg.snapshot(stock, &Shared::default()).outages, 2);
}

#[test]
fn session_gauges_count_while_held() {
    let g = Arc::new(SessionGauges::default());
    let a = g.connected();
    let b = g.busy();
    let c = g.connected();
    assert_eq!(
        (
            g.connected.load(Ordering::Relaxed),
            g.busy.load(Ordering::Relaxed)
        ),
        (2, 1)
    );
    drop((a, b));
    assert_eq!(
        (
            g.connected.load(Ordering::Relaxed),
            g.busy.load(Ordering::Relaxed)
        ),
        (1, 0)
    );
    drop(c);
    assert_eq!(g.connected.load(Ordering::Relaxed), 0);
}

#[test]
fn every_failure_code_names_its_stage() {
    let jig = FailureCode::Jig(crate::jig::JigFailure::Timeout);
    assert_eq!(jig.stage(), Some(Stage::JigWrite));
    assert_eq!(
        FailureCode::GaveUp(ApiKind::CreateKeysAndCertificate).stage(),
        Some(Stage::CreateCertificate)
    );
    assert_eq!(FailureCode::PostCheckConnect.stage(), None);
}
