//! Unit tests of the ledger: states, audit trail, resume points, orphans, secrets at rest.

use super::*;

fn issued(cert: &str) -> Transition {
    Transition::CertificateIssued {
        certificate_id: cert.into(),
        certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
        token: Secret::new("token-secret-value"),
        token_expires_ms: 5,
        private_key: None,
        public_key_sha256: None,
    }
}

fn key_reserved() -> Transition {
    Transition::KeyReserved {
        source: KeySource::Pool,
        public_key_sha256: Some("ab".repeat(32)),
        private_key: Some(Secret::new("-----BEGIN PRIVATE KEY-----PLAINTEXT-KEY")),
    }
}

fn registered(thing: &str) -> Transition {
    let mut config = BTreeMap::new();
    config.insert("LocationUrl".to_string(), "https://example.aws".to_string());
    Transition::Registered {
        thing_name: thing.into(),
        device_configuration: config,
    }
}

#[tokio::test]
async fn records_a_full_life_and_its_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("l.db"), "st-1").unwrap();
    let id = ledger.begin("SN-1", "jig-1").await.unwrap().id;
    use std::os::unix::fs::PermissionsExt;
    for f in ["l.db", "l.db-wal", "l.db.key"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
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
    let states: Vec<String> = ledger
        .events(id)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
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

#[test]
fn blocking_calls_work_from_threads_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    {
        let ledger = Ledger::open(&path, "st").unwrap();
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
    let ledger = Ledger::open(&path, "st").unwrap();
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

#[tokio::test]
async fn an_unfinished_device_resumes_with_its_token_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    {
        let ledger = Ledger::open(&path, "st").unwrap();
        let id = ledger.begin("SN-R", "j1").await.unwrap().id;
        ledger.record(id, key_reserved()).await.unwrap();
        ledger.record(id, issued("cert-r")).await.unwrap();
        // The station dies here.
    }
    let ledger = Ledger::open(&path, "st").unwrap();
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
    let states: Vec<String> = ledger
        .events(b.id)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(states.last().unwrap(), "resumed");

    // The private key is not in the database file in clear.
    drop(ledger);
    let mut raw = std::fs::read(&path).unwrap();
    raw.extend(std::fs::read(dir.path().join("l.db-wal")).unwrap_or_default());
    assert!(
        !raw.windows(14)
            .any(|w| w == b"PLAINTEXT-KEY\0" || w == b"PLAINTEXT-KEY-")
    );
    assert!(!raw.windows(13).any(|w| w == b"PLAINTEXT-KEY"));
}

#[tokio::test]
async fn abandoned_and_failed_certificates_become_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("l.db"), "st").unwrap();

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
        DeviceState::KeyReserved
    );
    assert_eq!(ledger.device("SN-A").unwrap().unwrap().certificate_id, None);
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
