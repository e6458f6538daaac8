//! Unit tests of the ledger through [`Ledger`] and [`LedgerView`], and the helpers every
//! ledger test shares (here and in `sqlite/tests.rs`): transitions as the engine records
//! them, a scratch ledger, summaries of what was recorded, and the raw file.
//!
//! - `journal`: states, the audit trail, resume points, orphans (each listed once).
//! - `key_file`: the key file a ledger's sealed keys need.

mod journal;
mod key_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params};

use super::{KeySource, LedgerView, OrphanStatus, Transition};
use crate::fleet::payloads::Secret;

/// A temporary directory with the path of a ledger in it (not created yet).
pub(crate) fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    (dir, path)
}

pub(crate) fn issued(cert: &str) -> Transition {
    Transition::CertificateIssued {
        certificate_id: cert.into(),
        certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
        token: Secret::new("token-secret-value"),
        token_expires_ms: 5,
        private_key: None,
        public_key_sha256: None,
    }
}

pub(crate) fn key_reserved() -> Transition {
    key_reserved_with("ab")
}

/// A pool key whose public key's sha256 is `pk` repeated.
pub(crate) fn key_reserved_with(pk: &str) -> Transition {
    Transition::KeyReserved {
        source: KeySource::Pool,
        public_key_sha256: Some(pk.repeat(32)),
        private_key: Some(Secret::new("-----BEGIN PRIVATE KEY-----PLAINTEXT-KEY")),
    }
}

pub(crate) fn abandoned(status: OrphanStatus) -> Transition {
    Transition::CertificateAbandoned {
        reason: "the station stopped while its certificate request was in flight".into(),
        status,
    }
}

pub(crate) fn registered(thing: &str) -> Transition {
    let mut config = BTreeMap::new();
    config.insert("LocationUrl".to_string(), "https://example.aws".to_string());
    Transition::Registered {
        thing_name: thing.into(),
        device_configuration: config,
    }
}

/// (certificate id, status, serial, public key sha256, thing) of every orphan.
pub(crate) type OrphanSummary = (
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
);

pub(crate) fn orphan_summary(ledger: &LedgerView) -> Vec<OrphanSummary> {
    ledger
        .orphans()
        .unwrap()
        .into_iter()
        .map(|o| {
            (
                o.certificate_id,
                o.status,
                o.serial,
                o.public_key_sha256,
                o.thing_name,
            )
        })
        .collect()
}

/// What device `id`'s audit trail says happened, oldest first.
pub(crate) fn event_names(ledger: &LedgerView, id: i64) -> Vec<String> {
    ledger
        .events(id)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect()
}

/// A read-only connection to the ledger file itself.
pub(crate) fn raw(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// Raw columns the public rows do not show: token, sealed key, public key sha256.
pub(crate) fn secrets_of(
    path: &Path,
    serial: &str,
) -> (Option<String>, Option<Vec<u8>>, Option<String>) {
    raw(path)
        .query_row(
            "SELECT token, sealed_key, public_key_sha256 FROM devices WHERE serial = ?1",
            params![serial],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}
