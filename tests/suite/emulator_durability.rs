//! Durability of the emulator, as AWS gives it: a reply that follows a registry change goes
//! out only once that change is committed, so a `station emulate` killed with SIGKILL the
//! moment a reply arrives has lost nothing after a restart; a commit that fails is not
//! acknowledged (500); and a killed emulator restarts at once on the same port, state
//! directory, CA and claim identity (while a port another emulator listens on stays refused).
//!
//! The storage delay fault (`storage_delay_ms`) makes every commit slow, so a reply sent
//! before its commit would always be caught by the kill.

use crate::api_support;
use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api_support::{claim_client_at, create_from_csr, csr_for};
use crate::common::{RawClient, Seen, StandaloneEmulator, TestEmulator, free_port};
use fleet_station::emulator::faults::FaultConfig;
use fleet_station::emulator::registry::{CertStatus, Registry};
use fleet_station::emulator::{Emulator, EmulatorConfig, EmulatorError};
use fleet_station::fleet::{
    CreateCertificateFromCsrResponse, ErrorResponse, Format, RegisterThingResponse,
};
use fleet_station::shutdown::Shutdown;
use rcgen::KeyPair;

/// Its policy allows a provisioned device to connect (see `fixtures/templates`).
const TEMPLATE: &str = "PySampleTemplate";

const SLOW_DISK: &str = "[emulator.faults]\nstorage_delay_ms = 400";

/// A standalone emulator that is killed if the test ends early.
struct Guard(StandaloneEmulator);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.kill();
    }
}

async fn claim_client(port: u16, tls: Arc<rustls::ClientConfig>) -> RawClient {
    claim_client_at(port, tls, "durability-claim", &[TEMPLATE]).await
}

async fn create_certificate(
    c: &mut RawClient,
    key: &KeyPair,
) -> Result<CreateCertificateFromCsrResponse, ErrorResponse> {
    create_from_csr(c, Format::Json, &csr_for(key)).await
}

async fn register(
    c: &mut RawClient,
    token: &str,
    serial: &str,
) -> Result<RegisterThingResponse, ErrorResponse> {
    let params = [("SerialNumber", serial), ("DeviceLocation", "Seattle")];
    api_support::register(c, TEMPLATE, Format::Json, token, &params).await
}

#[tokio::test]
async fn a_thing_whose_register_reply_arrived_survives_a_sigkill_at_that_moment() {
    let dir = tempfile::tempdir().unwrap();
    let mut emu = Guard(StandaloneEmulator::start_on(
        dir.path(),
        free_port(),
        SLOW_DISK,
    ));
    let mut c = claim_client(emu.0.port, emu.0.claim_tls()).await;
    let key = KeyPair::generate().unwrap();
    let created = create_certificate(&mut c, &key).await.unwrap();
    let registered = register(&mut c, created.certificate_ownership_token.expose(), "D1")
        .await
        .unwrap();
    // The moment the accepted reply is here: SIGKILL.
    emu.0.kill();
    assert_eq!(registered.thing_name.as_deref(), Some("ThingPrefix_D1"));

    // Restarted on the same state: the device's certificate is ACTIVE under the template's
    // policy, so the device connects.
    emu.0.restart();
    let tls = emu.0.tls_with(
        created.certificate_pem.as_bytes(),
        key.serialize_pem().as_bytes(),
    );
    let mut device = RawClient::connect(emu.0.port, "ThingPrefix_D1", tls);
    device.connected().await;

    emu.0.kill();
    let registry = Registry::open(&dir.path().join("emulator/registry.db")).unwrap();
    let cert = registry
        .certificate(&created.certificate_id)
        .unwrap()
        .expect("the certificate survived");
    assert_eq!(cert.status, CertStatus::Active);
    assert!(cert.things.contains("ThingPrefix_D1"), "{cert:?}");
    let thing = registry
        .thing("ThingPrefix_D1")
        .unwrap()
        .expect("the thing survived");
    assert!(thing.principals.contains(&created.certificate_id));
    assert_eq!(cert.policies.len(), 1, "{cert:?}");
    for policy in &cert.policies {
        assert!(
            registry.policy(policy).unwrap().is_some(),
            "policy {policy} survived"
        );
    }
}

#[tokio::test]
async fn a_certificate_whose_reply_arrived_survives_a_sigkill_and_its_token_registers() {
    let dir = tempfile::tempdir().unwrap();
    let mut emu = Guard(StandaloneEmulator::start_on(
        dir.path(),
        free_port(),
        SLOW_DISK,
    ));
    let mut c = claim_client(emu.0.port, emu.0.claim_tls()).await;
    let key = KeyPair::generate().unwrap();
    let created = create_certificate(&mut c, &key).await.unwrap();
    emu.0.kill();

    emu.0.restart();
    let mut c = claim_client(emu.0.port, emu.0.claim_tls()).await;
    let registered = register(&mut c, created.certificate_ownership_token.expose(), "D2")
        .await
        .expect("the token survived the kill");
    assert_eq!(registered.thing_name.as_deref(), Some("ThingPrefix_D2"));
}

#[tokio::test]
async fn replies_wait_for_the_commit_of_their_changes() {
    let emu = TestEmulator::start().await;
    emu.emulator.set_faults(FaultConfig {
        storage_delay_ms: 300,
        ..FaultConfig::default()
    });
    let db = emu.dir.path().join("emulator/registry.db");
    let on_disk = |table: &str, key: &str| -> bool {
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        c.query_row(
            &format!("SELECT count(*) FROM {table} WHERE key = ?1"),
            [key],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    };
    let mut c = claim_client(emu.port(), emu.claim_tls()).await;
    let key = KeyPair::generate().unwrap();
    let started = Instant::now();
    let created = create_certificate(&mut c, &key).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(on_disk("certificates", &created.certificate_id));

    let started = Instant::now();
    register(&mut c, created.certificate_ownership_token.expose(), "D3")
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(on_disk("things", "ThingPrefix_D3"));
}

#[tokio::test]
async fn a_change_that_cannot_be_committed_is_not_acknowledged() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(emu.port(), emu.claim_tls()).await;
    // The disk refuses every later change: the certificates table is gone.
    rusqlite::Connection::open(emu.dir.path().join("emulator/registry.db"))
        .unwrap()
        .execute_batch("DROP TABLE certificates")
        .unwrap();
    let e = create_certificate(&mut c, &KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        (e.status_code, e.error_code.as_str()),
        (500, "InternalFailure")
    );
}

/// The registry is read when a request needs a record, not at start: a row that does not parse
/// fails that request as a failed commit does (500), and nothing else.
#[tokio::test]
async fn a_corrupt_registry_row_fails_the_request_that_reads_it_with_500() {
    let dir = tempfile::tempdir().unwrap();
    let mut emu = Guard(StandaloneEmulator::start_on(dir.path(), free_port(), ""));
    let mut c = claim_client(emu.0.port, emu.0.claim_tls()).await;
    let created = create_certificate(&mut c, &KeyPair::generate().unwrap())
        .await
        .unwrap();
    let other = create_certificate(&mut c, &KeyPair::generate().unwrap())
        .await
        .unwrap();
    emu.0.kill();
    rusqlite::Connection::open(dir.path().join("emulator/registry.db"))
        .unwrap()
        .execute(
            "UPDATE certificates SET json = '{\"id\": 7' WHERE key = ?1",
            [&created.certificate_id],
        )
        .unwrap();

    emu.0.restart();
    let mut c = claim_client(emu.0.port, emu.0.claim_tls()).await;
    let e = register(&mut c, created.certificate_ownership_token.expose(), "D9")
        .await
        .unwrap_err();
    assert_eq!(
        (e.status_code, e.error_code.as_str()),
        (500, "InternalFailure")
    );
    // The other records still serve.
    register(&mut c, other.certificate_ownership_token.expose(), "D10")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_killed_emulator_restarts_at_once_on_the_same_port_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut emu = Guard(StandaloneEmulator::start_on(dir.path(), port, ""));
    assert_eq!(emu.0.port, port);
    let ca = std::fs::read(&emu.0.ca).unwrap();
    let tls = emu.0.claim_tls();
    // A live connection at the kill leaves the emulator's side of it behind in the kernel
    // (FIN_WAIT/TIME_WAIT) on that port.
    let mut c = claim_client(port, tls.clone()).await;
    emu.0.kill();
    match c.next().await {
        Seen::Down(_) => {}
        other => panic!("expected the connection to drop, got {other:?}"),
    }

    emu.0.restart();
    assert_eq!(emu.0.port, port);
    assert_eq!(std::fs::read(&emu.0.ca).unwrap(), ca, "the CA was reloaded");
    // The same claim identity (the TLS config made before the kill) is still accepted.
    let mut c = claim_client(port, tls).await;
    let created = create_certificate(&mut c, &KeyPair::generate().unwrap())
        .await
        .unwrap();
    assert_eq!(created.certificate_id.len(), 64);

    // And once more, right away.
    emu.0.restart();
    assert_eq!(emu.0.port, port);
    claim_client(port, emu.0.claim_tls()).await;
}

#[tokio::test]
async fn a_port_another_emulator_listens_on_is_still_refused() {
    let first = TestEmulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = EmulatorConfig {
        listen: format!("127.0.0.1:{}", first.port()),
        state_dir: dir.path().join("emulator"),
        templates: common::fixtures().join("templates"),
        ..EmulatorConfig::default()
    };
    match Emulator::start(&cfg, Shutdown::new()).await {
        Err(EmulatorError::Listen { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse)
        }
        Err(other) => panic!("expected a listen error, got {other}"),
        Ok(_) => panic!("two emulators listen on one port"),
    }
}
