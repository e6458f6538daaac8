//! A ledger written by a released fleet-station (`fixtures/ledger/v2.*`, see its README) opens
//! with this code: `station ledger export` and `station ledger orphans` print what that release
//! printed, its unfinished devices resume with their tokens and sealed keys, and a ledger this
//! code creates has that release's schema (so the release opens it too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::cli::{StationConfig, ledger};
use crate::common::fixtures;
use fleet_station::keys::KeySource;
use fleet_station::ledger::{DeviceState, Ledger, LedgerError, LedgerView, Resume, Transition};

/// The fixture's ledger and key file copied to `dir/ledger.db` (opening a ledger takes its
/// lock and sets its mode: the committed file is never opened in place).
fn released_ledger(dir: &Path) -> PathBuf {
    let path = dir.join("ledger.db");
    let from = fixtures().join("ledger");
    std::fs::copy(from.join("v2.db"), &path).unwrap();
    std::fs::copy(from.join("v2.db.key"), dir.join("ledger.db.key")).unwrap();
    path
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("ledger").join(name)).unwrap()
}

/// What `station ledger <what…>` prints; it must succeed.
fn ledger_output(config: &Path, what: &[&str]) -> String {
    let out = ledger(config, what);
    assert!(
        out.status.success(),
        "`station ledger {}`: {}",
        what.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn export_and_orphans_print_what_the_release_printed() {
    let dir = tempfile::tempdir().unwrap();
    released_ledger(dir.path());
    let config = StationConfig::embedded(dir.path()).write();
    assert_eq!(
        ledger_output(&config, &["export", "--format", "csv"]),
        golden("v2.export.csv")
    );
    assert_eq!(
        ledger_output(&config, &["export", "--format", "json"]),
        golden("v2.export.json")
    );
    assert_eq!(
        ledger_output(&config, &["orphans"]),
        golden("v2.orphans.sh")
    );
}

fn pem(what: &str, serial: &str) -> String {
    format!("-----BEGIN {what}-----\nFIXTURE-ONLY {serial}\n-----END {what}-----\n")
}

fn fixture_configuration() -> BTreeMap<String, String> {
    [("Fleet", "fixture"), ("LocationUrl", "https://example.aws")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a resume point holds, secrets exposed: (state, key source, private key, public key
/// sha256, certificate id, certificate PEM, token, token expiry, thing, configuration).
type Seen = (
    DeviceState,
    Option<KeySource>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    BTreeMap<String, String>,
);

fn seen(r: Resume) -> Seen {
    (
        r.state,
        r.key_source,
        r.private_key.map(|k| k.expose().to_string()),
        r.public_key_sha256,
        r.certificate_id,
        r.certificate_pem,
        r.token.map(|t| t.expose().to_string()),
        r.token_expires_ms,
        r.thing_name,
        r.device_configuration,
    )
}

const TOKEN_EXPIRY: i64 = 4_102_444_800_000;

#[tokio::test]
async fn its_unfinished_devices_resume_where_the_release_left_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = released_ledger(dir.path());
    let ledger = Ledger::open(&path, "upgraded-station").unwrap();
    let unfinished: Vec<String> = ledger
        .unfinished()
        .unwrap()
        .into_iter()
        .map(|d| d.serial)
        .collect();
    assert_eq!(unfinished, ["FX-0003", "FX-0004", "FX-0005", "FX-0008"]);

    let resume = |serial: &'static str| {
        let ledger = ledger.clone();
        async move {
            let begun = ledger.begin(serial, "jig-9").await.unwrap();
            (begun.id, begun.resume.map(seen))
        }
    };
    let (issued_id, issued) = resume("FX-0003").await;
    assert_eq!(
        issued,
        Some((
            DeviceState::CertificateIssued,
            Some(KeySource::Pool),
            Some(pem("PRIVATE KEY", "FX-0003")),
            Some("03".repeat(32)),
            Some("03".repeat(32)),
            Some(pem("CERTIFICATE", "FX-0003")),
            Some("token-of-FX-0003".into()),
            Some(TOKEN_EXPIRY),
            None,
            BTreeMap::new(),
        ))
    );
    assert_eq!(
        resume("FX-0004").await.1,
        Some((
            DeviceState::KeyReserved,
            Some(KeySource::Pool),
            Some(pem("PRIVATE KEY", "FX-0004")),
            Some("04".repeat(32)),
            None,
            None,
            None,
            None,
            None,
            BTreeMap::new(),
        ))
    );
    assert_eq!(
        resume("FX-0005").await.1,
        Some((
            DeviceState::Registered,
            Some(KeySource::Aws),
            Some(pem("RSA PRIVATE KEY", "FX-0005")),
            Some("a5".repeat(32)),
            Some("05".repeat(32)),
            Some(pem("CERTIFICATE", "FX-0005")),
            Some("token-of-FX-0005".into()),
            Some(TOKEN_EXPIRY),
            Some("FX-0005".into()),
            fixture_configuration(),
        ))
    );
    assert_eq!(
        resume("FX-0008").await.1,
        Some((
            DeviceState::Written,
            Some(KeySource::Device),
            None,
            Some("08".repeat(32)),
            Some("08".repeat(32)),
            Some(pem("CERTIFICATE", "FX-0008")),
            Some("token-of-FX-0008".into()),
            Some(TOKEN_EXPIRY),
            Some("FX-0008".into()),
            fixture_configuration(),
        ))
    );
    // A device back at `started`, a failed and an interrupted one start afresh.
    for serial in ["FX-0007", "FX-0002", "FX-0006"] {
        assert_eq!(resume(serial).await.1, None, "{serial}");
    }
    let again = ledger.device("FX-0002").unwrap().unwrap();
    assert_eq!((again.state, again.attempts), (DeviceState::Started, 2));
    // A verified board is refused, naming its thing.
    let refused = ledger.begin("FX-0001", "jig-9").await;
    assert!(
        matches!(&refused, Err(LedgerError::AlreadyProvisioned { serial, thing })
            if serial == "FX-0001" && thing == "FX-0001"),
        "{refused:?}"
    );

    // The resumed device goes on to the end; the orphans are the release's.
    ledger
        .record(
            issued_id,
            Transition::Registered {
                thing_name: "FX-0003".into(),
                device_configuration: fixture_configuration(),
            },
        )
        .await
        .unwrap();
    ledger.record(issued_id, Transition::Written).await.unwrap();
    ledger
        .record(issued_id, Transition::Verified)
        .await
        .unwrap();
    let done = ledger.device("FX-0003").unwrap().unwrap();
    assert_eq!(
        (
            done.state,
            done.thing_name.as_deref(),
            done.station.as_str()
        ),
        (DeviceState::Verified, Some("FX-0003"), "upgraded-station")
    );
    let events: Vec<String> = ledger
        .events(issued_id)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        events,
        [
            "started",
            "key_reserved",
            "certificate_issued",
            "resumed",
            "registered",
            "written",
            "verified"
        ]
    );
    let noted = ledger.events(1).unwrap().pop().unwrap();
    assert_eq!(
        (noted.0.as_str(), noted.1.as_deref()),
        (
            "post_provision_check",
            Some("connected with the new certificate")
        )
    );
    let orphans: Vec<(Option<String>, String, String)> = ledger
        .orphans()
        .unwrap()
        .into_iter()
        .map(|o| (o.certificate_id, o.status, o.serial))
        .collect();
    let cert = |n: &str| Some(n.repeat(32));
    assert_eq!(
        orphans,
        [
            (cert("02"), "active".into(), "FX-0002".into()),
            (None, "pending".into(), "FX-0004".into()),
            (cert("06"), "pending".into(), "FX-0006".into()),
            (cert("07"), "pending".into(), "FX-0007".into()),
            (None, "unknown".into(), "FX-0009".into()),
        ]
    );
}

/// `(type, name, table, sql)` of every schema object.
type SchemaObjects = Vec<(String, String, String, Option<String>)>;

/// The schema objects of a SQLite file, and its `user_version`.
fn schema_of(path: &Path) -> (SchemaObjects, i64) {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut stmt = c
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    let objects = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let version = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    (objects, version)
}

/// The indexes this code makes whenever it opens a ledger, beside the released schema. They
/// change nothing stored and carry no schema version, so the release still opens the file.
const INDEXES_MADE_AT_OPEN: &[&str] = &["orphans_serial"];

/// `schema` without [`INDEXES_MADE_AT_OPEN`].
fn released_part((objects, version): (SchemaObjects, i64)) -> (SchemaObjects, i64) {
    let objects = objects
        .into_iter()
        .filter(|(kind, name, ..)| {
            !(kind == "index" && INDEXES_MADE_AT_OPEN.contains(&name.as_str()))
        })
        .collect();
    (objects, version)
}

fn index_names(path: &Path) -> Vec<String> {
    schema_of(path)
        .0
        .into_iter()
        .filter(|(kind, ..)| kind == "index")
        .map(|(_, name, ..)| name)
        .collect()
}

#[test]
fn a_new_ledger_has_the_released_schema() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.db");
    drop(Ledger::open(&new, "st").unwrap());
    let released = released_ledger(dir.path());
    assert_eq!(released_part(schema_of(&new)), schema_of(&released));
    // Opening the released ledger adds the indexes and changes nothing else in its schema.
    let untouched = tempfile::tempdir().unwrap();
    let before = schema_of(&released_ledger(untouched.path()));
    drop(Ledger::open(&released, "st").unwrap());
    assert_eq!(released_part(schema_of(&released)), before);
    for index in INDEXES_MADE_AT_OPEN {
        assert!(
            index_names(&new).iter().any(|n| n == index),
            "{index} in a new ledger"
        );
        assert!(
            index_names(&released).iter().any(|n| n == index),
            "{index} in the released ledger once opened"
        );
    }
    assert_eq!(LedgerView::open(&new).unwrap().devices().unwrap(), []);
}
